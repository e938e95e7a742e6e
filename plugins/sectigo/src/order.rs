//! A placed order as the host keeps it between calls, and the turn of a
//! collected PEM bundle into the contract's issued certificate.

use certplane_sdk::issuer::{IssueResult, IssuedCertificate, Order};
use certplane_sdk::{ConnectorError, pem};
use serde::{Deserialize, Serialize};

use crate::scm::Enrolled;

/// Order statuses after which the certificate will never become
/// collectable: waiting on would wait for nothing.
pub const FINAL_STATUSES: &[&str] = &["Declined", "Rejected", "Invalid", "Revoked", "Expired"];

/// The `state` of a pending order: all `poll` needs to continue it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderState {
    /// SCM's certificate id of the order.
    pub ssl_id: u64,
    /// SCM's renewal id, kept for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_id: Option<String>,
}

impl OrderState {
    /// The state of a pending order; `rejected` when it is not ours (a
    /// connector change or a hand-edited row), since no poll can use it.
    pub fn from_order(order: &Order) -> Result<OrderState, ConnectorError> {
        let state: OrderState = serde_json::from_str(&order.state).map_err(|e| {
            ConnectorError::rejected(format!(
                "order {} has a state this connector cannot read ({e})",
                order.id
            ))
        })?;
        if state.ssl_id == 0 {
            return Err(ConnectorError::rejected(format!(
                "order {} has no SCM sslId in its state",
                order.id
            )));
        }
        Ok(state)
    }
}

/// The pending order for a fresh enrollment.
pub fn pending(enrolled: &Enrolled, retry_after_secs: u32) -> Result<IssueResult, ConnectorError> {
    let state = OrderState {
        ssl_id: enrolled.ssl_id,
        renew_id: enrolled.renew_id.clone(),
    };
    let state = serde_json::to_string(&state)
        .map_err(|e| ConnectorError::transient(format!("encoding the order state: {e}")))?;
    Ok(IssueResult::Pending(Order {
        id: enrolled.ssl_id.to_string(),
        retry_after_secs: Some(retry_after_secs),
        state,
    }))
}

/// The same order, still pending.
pub fn still_pending(order: Order, retry_after_secs: u32) -> IssueResult {
    IssueResult::Pending(Order {
        retry_after_secs: Some(retry_after_secs),
        ..order
    })
}

/// Whether an order status is final (compared case-insensitively: SCM's
/// spelling has varied between releases).
pub fn is_final(status: &str) -> bool {
    FINAL_STATUSES
        .iter()
        .any(|s| s.eq_ignore_ascii_case(status.trim()))
}

/// The leaf and its chain, leaf first, from a collected bundle in whatever
/// order SCM sent it; `ca-certificate-id` is the sslId, which revocation
/// needs.
pub fn issued(bundle: &str, ssl_id: u64) -> Result<IssueResult, ConnectorError> {
    let unusable = |e: pem::PemError| {
        ConnectorError::transient(format!(
            "certificate {ssl_id} was collected but the answer is not a usable PEM bundle: {e}"
        ))
    };
    let certs =
        pem::order_leaf_first(pem::certificates(bundle).map_err(unusable)?).map_err(unusable)?;
    let (leaf, chain) = pem::split_leaf(certs).map_err(unusable)?;
    Ok(IssueResult::Issued(IssuedCertificate {
        certificate_pem: leaf.to_pem(),
        chain_pem: chain.iter().map(pem::PemBlock::to_pem).collect(),
        ca_certificate_id: Some(ssl_id.to_string()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    // A root -> intermediate -> leaf chain (the SDK's test data).
    const ROOT: &str = include_str!("../../sdk/testdata/root.pem");
    const INTERMEDIATE: &str = include_str!("../../sdk/testdata/intermediate.pem");
    const LEAF: &str = include_str!("../../sdk/testdata/leaf.pem");

    #[test]
    fn pending_orders_carry_the_ssl_id() {
        let r = pending(
            &Enrolled {
                ssl_id: 4711,
                renew_id: Some("r".into()),
            },
            60,
        )
        .unwrap();
        let IssueResult::Pending(order) = r else {
            panic!("pending expected")
        };
        assert_eq!(order.id, "4711");
        assert_eq!(order.retry_after_secs, Some(60));
        let state = OrderState::from_order(&order).unwrap();
        assert_eq!(state.ssl_id, 4711);
        let v: serde_json::Value = serde_json::from_str(&order.state).unwrap();
        assert_eq!(v["sslId"], 4711);
        let again = still_pending(order.clone(), 5);
        let IssueResult::Pending(again) = again else {
            panic!()
        };
        assert_eq!(
            (again.id, again.state, again.retry_after_secs),
            (order.id, order.state, Some(5))
        );
    }

    #[test]
    fn foreign_state_is_rejected() {
        for state in [
            "",
            "{}",
            r#"{"id":"x"}"#,
            r#"{"sslId":0}"#,
            r#"{"sslId":"7"}"#,
        ] {
            let order = Order {
                id: "1".into(),
                retry_after_secs: None,
                state: state.into(),
            };
            assert_eq!(
                OrderState::from_order(&order).unwrap_err().kind(),
                "rejected",
                "{state}"
            );
        }
    }

    #[test]
    fn bundles_come_back_leaf_first_whatever_the_order() {
        for bundle in [
            format!("{ROOT}{LEAF}{INTERMEDIATE}"),
            format!("{INTERMEDIATE}\r\n{ROOT}\r\n{LEAF}"),
            format!("{LEAF}{INTERMEDIATE}{ROOT}"),
        ] {
            let IssueResult::Issued(c) = issued(&bundle, 9).unwrap() else {
                panic!("issued expected")
            };
            assert!(pem::same_blocks(&c.certificate_pem, LEAF));
            assert_eq!(c.chain_pem.len(), 2);
            assert!(pem::same_blocks(&c.chain_pem[0], INTERMEDIATE));
            assert!(pem::same_blocks(&c.chain_pem[1], ROOT));
            assert_eq!(c.ca_certificate_id.as_deref(), Some("9"));
        }
        let e = issued("<html>maintenance</html>", 9).unwrap_err();
        assert_eq!(e.kind(), "transient");
        assert!(e.message().contains("certificate 9"), "{}", e.message());
    }

    #[test]
    fn final_statuses() {
        for s in ["Declined", "rejected", "Invalid", "Revoked", "Expired"] {
            assert!(is_final(s), "{s}");
        }
        for s in [
            "Requested",
            "Approved",
            "Applied",
            "Issued",
            "Init",
            "SAApproved",
            "",
        ] {
            assert!(!is_final(s), "{s}");
        }
    }
}
