//! What a pending order carries from one call to the next: the host
//! persists it as the order's `state` and hands it back to `poll` (and to
//! `cancel`), so every URL and the CSR the next step needs are in it.

use certplane_sdk::ConnectorError;
use serde::{Deserialize, Serialize};

use crate::authz::AuthzState;
use crate::bindings::Order;

/// The state format written by this version.
pub const STATE_VERSION: u32 = 1;

/// The contract's bound on `order.state`.
pub const MAX_STATE_BYTES: usize = 64 * 1024;

/// Where an order stands on our side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The host is publishing our challenges; we wait for `ready`.
    Publishing,
    /// The challenges were answered; the CA is validating.
    Validating,
    /// The CSR was sent; the CA is issuing.
    Finalizing,
}

/// The order's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    /// [`STATE_VERSION`].
    pub v: u32,
    /// Where the order stands.
    pub phase: Phase,
    /// The directory the order was placed with.
    pub directory_url: String,
    /// Its `newNonce`, so a poll needs no directory request.
    pub new_nonce: String,
    /// The account that placed the order (the JWS `kid`).
    pub account_url: String,
    /// The order URL.
    pub order_url: String,
    /// The order's `finalize` URL.
    pub finalize: String,
    /// The CSR, base64url DER, as `finalize` wants it.
    pub csr: String,
    /// The order's authorizations.
    pub authz: Vec<AuthzState>,
    /// Whether our challenges were withdrawn already.
    #[serde(default)]
    pub withdrawn: bool,
}

impl OrderState {
    /// Reads a state written by [`OrderState::to_order`].
    pub fn parse(text: &str) -> Result<OrderState, ConnectorError> {
        let state: OrderState = serde_json::from_str(text).map_err(|e| {
            ConnectorError::rejected(format!(
                "the order state is not an acme connector's order ({e}); the order cannot continue"
            ))
        })?;
        if state.v != STATE_VERSION {
            return Err(ConnectorError::rejected(format!(
                "the order state has version {}, this connector reads {STATE_VERSION}",
                state.v
            )));
        }
        Ok(state)
    }

    /// The ids of the challenges we presented.
    pub fn challenge_ids(&self) -> Vec<String> {
        self.authz
            .iter()
            .filter_map(|a| a.challenge.as_ref().map(|c| c.id.clone()))
            .collect()
    }

    /// The pending order to hand back to the host.
    pub fn to_order(&self, retry_after_secs: u32) -> Result<Order, ConnectorError> {
        let state = serde_json::to_string(self).map_err(|e| {
            ConnectorError::rejected(format!("cannot serialize the order state: {e}"))
        })?;
        if state.len() > MAX_STATE_BYTES {
            return Err(ConnectorError::rejected(format!(
                "the order's state ({} bytes, {} authorizations) exceeds the host's {MAX_STATE_BYTES} \
                 bytes: request fewer names per certificate",
                state.len(),
                self.authz.len()
            )));
        }
        Ok(Order {
            id: self.order_url.clone(),
            retry_after_secs: Some(retry_after_secs),
            state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::ChosenChallenge;

    fn sample() -> OrderState {
        OrderState {
            v: STATE_VERSION,
            phase: Phase::Publishing,
            directory_url: "https://ca/dir".into(),
            new_nonce: "https://ca/nonce".into(),
            account_url: "https://ca/acct/1".into(),
            order_url: "https://ca/order/1".into(),
            finalize: "https://ca/order/1/finalize".into(),
            csr: "MIIB".into(),
            authz: vec![
                AuthzState {
                    url: "https://ca/authz/1".into(),
                    identifier: "a.example".into(),
                    challenge: Some(ChosenChallenge {
                        url: "https://ca/chal/1".into(),
                        id: "http01-tok".into(),
                        kind: "http-01".into(),
                    }),
                },
                AuthzState {
                    url: "https://ca/authz/2".into(),
                    identifier: "b.example".into(),
                    challenge: None,
                },
            ],
            withdrawn: false,
        }
    }

    #[test]
    fn round_trips_through_the_order() {
        let s = sample();
        let order = s.to_order(2).unwrap();
        assert_eq!(order.id, "https://ca/order/1");
        assert_eq!(order.retry_after_secs, Some(2));
        assert!(
            order.state.contains(r#""phase":"publishing""#),
            "{}",
            order.state
        );
        assert_eq!(OrderState::parse(&order.state).unwrap(), s);
        assert_eq!(s.challenge_ids(), vec!["http01-tok".to_string()]);
    }

    #[test]
    fn foreign_or_huge_states_are_refused() {
        assert_eq!(OrderState::parse("{}").unwrap_err().kind(), "rejected");
        let mut s = sample();
        s.v = 99;
        let text = serde_json::to_string(&s).unwrap();
        assert!(
            OrderState::parse(&text)
                .unwrap_err()
                .message()
                .contains("version 99")
        );
        let mut s = sample();
        s.csr = "A".repeat(MAX_STATE_BYTES);
        assert_eq!(s.to_order(1).unwrap_err().kind(), "rejected");
    }
}
