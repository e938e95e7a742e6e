//! Following an order (RFC 8555 sections 7.5.1, 7.4, 7.4.2): answer the
//! challenges once the host reports them published, finalize with the CSR
//! once the order is ready, download the chain once it is valid. One step
//! per call; every wait is a pending order with the CA's `Retry-After`.
//!
//! Also `cancel`: withdraw the challenges and deactivate the
//! authorizations we were proving (section 7.5.2; ACME has no order
//! cancellation).

use certplane_sdk::{ConnectorError, log, pem};
use serde_json::json;

use crate::account;
use crate::authz::{AcmeChallenge, Authorization};
use crate::bindings::{ChallengeState, IssueResult, IssuedCertificate, Order, challenges};
use crate::jws::Payload;
use crate::nonce::{self, Client};
use crate::order::{AcmeOrder, PUBLISH_RETRY_SECS};
use crate::problem::AcmeError;
use crate::state::{OrderState, Phase};

/// Default wait while the CA validates or issues.
pub const ORDER_RETRY_SECS: u32 = 1;

/// The media type of a PEM chain download.
pub const PEM_CHAIN: &str = "application/pem-certificate-chain";

/// `poll`: one step of the order.
pub fn poll(order: &Order) -> Result<IssueResult, ConnectorError> {
    let mut state = OrderState::parse(&order.state)?;
    let mut client = client_for(&state).ok_or_else(|| {
        ConnectorError::rejected(
            "the ACME account key that placed this order is gone from the instance's store; \
             the order cannot continue",
        )
    })?;
    match state.phase {
        Phase::Publishing => publishing(&mut client, &mut state),
        Phase::Validating | Phase::Finalizing => advance(&mut client, &mut state),
    }
}

fn client_for(state: &OrderState) -> Option<Client> {
    let mut client = Client::new(state.new_nonce.as_str(), account::stored_key()?);
    client.kid = Some(state.account_url.clone());
    Some(client)
}

/// An error while following the order: an account the CA no longer knows
/// takes its orders with it, so that one is final.
fn poll_error(error: AcmeError, context: &str) -> ConnectorError {
    if account::account_gone(&error) {
        return ConnectorError::rejected(format!(
            "{context}: the CA no longer knows the ACME account that placed this order; it was \
             forgotten and a new order under a new registration is needed"
        ));
    }
    error.into_error(context)
}

fn pending(state: &OrderState, retry_after_secs: u32) -> Result<IssueResult, ConnectorError> {
    Ok(IssueResult::Pending(state.to_order(retry_after_secs)?))
}

/// Waits for the host to publish our challenges, then answers them.
fn publishing(client: &mut Client, state: &mut OrderState) -> Result<IssueResult, ConnectorError> {
    let ids = state.challenge_ids();
    let statuses = challenges::status(&ids);
    for status in &statuses {
        if status.state == ChallengeState::Failed {
            let why = status.message.as_deref().unwrap_or("no reason given");
            let what = state
                .authz
                .iter()
                .find_map(|a| {
                    let c = a.challenge.as_ref().filter(|c| c.id == status.id)?;
                    Some(format!(
                        "the {} challenge for {} ({})",
                        c.kind, a.identifier, c.id
                    ))
                })
                .unwrap_or_else(|| format!("challenge {}", status.id));
            return Err(publication_failed(&what, why));
        }
    }
    let ready = ids.iter().all(|id| {
        statuses
            .iter()
            .any(|s| &s.id == id && s.state == ChallengeState::Ready)
    });
    if !ready {
        return pending(state, PUBLISH_RETRY_SECS);
    }
    for authz in &state.authz {
        let Some(chosen) = &authz.challenge else {
            continue;
        };
        let context = format!(
            "answering the {} challenge for {}",
            chosen.kind, authz.identifier
        );
        answer(client, &chosen.url, &context)?;
    }
    log::info!(
        "challenges of {} answered; the CA validates",
        state.order_url
    );
    state.phase = Phase::Validating;
    pending(state, ORDER_RETRY_SECS)
}

/// POSTs `{}` to a challenge. A poll repeated after a failure may answer
/// a challenge twice; CAs that refuse the second answer (Pebble does) are
/// asked for the challenge instead, which is fine while it is processing
/// or valid.
fn answer(client: &mut Client, url: &str, context: &str) -> Result<(), ConnectorError> {
    let challenge: AcmeChallenge = match client.post(url, Payload::Json(&nonce::empty_object())) {
        Ok(response) => nonce::json(&response).map_err(|e| poll_error(e, context))?,
        Err(AcmeError::Problem(problem)) => {
            let response = client.get(url).map_err(|e| {
                poll_error(
                    e,
                    &format!(
                        "{context} (the CA refused the answer: {}; reading the challenge)",
                        problem.describe()
                    ),
                )
            })?;
            let current: AcmeChallenge =
                nonce::json(&response).map_err(|e| poll_error(e, context))?;
            if current.status == "pending" {
                return Err(poll_error(AcmeError::Problem(problem), context));
            }
            current
        }
        Err(e) => return Err(poll_error(e, context)),
    };
    if challenge.status == "invalid" {
        return Err(ConnectorError::rejected(format!(
            "{context}: the CA declared it invalid: {}",
            challenge
                .error
                .as_ref()
                .map_or("no reason given".into(), |p| p.describe())
        )));
    }
    Ok(())
}

/// The host could not publish a challenge (`what`). Its message decides:
/// a temporary condition is retried, anything else fails the order.
pub fn publication_failed(what: &str, why: &str) -> ConnectorError {
    let message = format!("the host could not publish {what}: {why}");
    let lower = why.to_ascii_lowercase();
    if lower.contains("transient") || lower.contains("temporar") {
        ConnectorError::transient(message)
    } else {
        ConnectorError::rejected(message)
    }
}

/// Reads the order and takes the step its status calls for.
fn advance(client: &mut Client, state: &mut OrderState) -> Result<IssueResult, ConnectorError> {
    let response = client
        .get(&state.order_url)
        .map_err(|e| poll_error(e, "reading the order"))?;
    let order: AcmeOrder =
        nonce::json(&response).map_err(|e| poll_error(e, "reading the order"))?;
    let retry = nonce::retry_after(&response, ORDER_RETRY_SECS);
    match order.status.as_str() {
        "pending" => pending(state, retry),
        "ready" => {
            withdraw_once(state);
            let response = client
                .post(&state.finalize, Payload::Json(&json!({"csr": state.csr})))
                .map_err(|e| poll_error(e, "finalizing the order"))?;
            state.phase = Phase::Finalizing;
            let order: AcmeOrder =
                nonce::json(&response).map_err(|e| poll_error(e, "finalizing the order"))?;
            match order.status.as_str() {
                "valid" => download(client, order.certificate),
                "invalid" => Err(invalid(client, state, &order)),
                _ => pending(state, nonce::retry_after(&response, ORDER_RETRY_SECS)),
            }
        }
        "processing" => {
            withdraw_once(state);
            state.phase = Phase::Finalizing;
            pending(state, retry)
        }
        "valid" => {
            withdraw_once(state);
            download(client, order.certificate)
        }
        // Pebble reports an order whose authorization was deactivated as
        // `deactivated` (RFC 8555 says `invalid`): final either way.
        "invalid" | "deactivated" | "expired" | "revoked" => {
            withdraw_once(state);
            Err(invalid(client, state, &order))
        }
        other => Err(ConnectorError::transient(format!(
            "the order {} is in a state this connector does not know: {other:?}",
            state.order_url
        ))),
    }
}

/// Once the CA has decided, the challenges are no longer needed.
fn withdraw_once(state: &mut OrderState) {
    if !state.withdrawn {
        let ids = state.challenge_ids();
        if !ids.is_empty() {
            challenges::withdraw(&ids);
        }
        state.withdrawn = true;
    }
}

/// Why the order is invalid: its own error, and each failed challenge's.
fn invalid(client: &mut Client, state: &OrderState, order: &AcmeOrder) -> ConnectorError {
    let mut reasons = Vec::new();
    for authz in &state.authz {
        let Ok(response) = client.get(&authz.url) else {
            continue;
        };
        let Ok(found) = nonce::json::<Authorization>(&response) else {
            continue;
        };
        if found.status == "valid" || found.status == "pending" {
            continue;
        }
        let mut explained = false;
        for challenge in &found.challenges {
            if let Some(problem) = &challenge.error {
                reasons.push(format!(
                    "{} {}: {}",
                    authz.identifier,
                    challenge.kind,
                    problem.describe()
                ));
                explained = true;
            }
        }
        if !explained {
            reasons.push(format!(
                "{}: authorization {}",
                authz.identifier, found.status
            ));
        }
    }
    // The order's own error repeats an authorization's, when there is one.
    if reasons.is_empty() {
        reasons.push(
            order
                .error
                .as_ref()
                .map_or("no reason given".into(), |p| p.describe()),
        );
    }
    ConnectorError::rejected(format!(
        "the CA declared order {} {}: {}",
        state.order_url,
        order.status,
        reasons.join("; ")
    ))
}

/// Downloads the issued chain (POST-as-GET, PEM) and splits it.
fn download(client: &mut Client, url: Option<String>) -> Result<IssueResult, ConnectorError> {
    let url = url.ok_or_else(|| {
        ConnectorError::transient("the order is valid but names no certificate URL")
    })?;
    let response = client
        .post_with(&url, Payload::Empty, Some(PEM_CHAIN))
        .map_err(|e| poll_error(e, "downloading the certificate"))?;
    let unreadable = |e: pem::PemError| {
        ConnectorError::transient(format!("the certificate at {url} is unreadable: {e}"))
    };
    let certs = pem::certificates(response.text()?).map_err(unreadable)?;
    let (leaf, chain) =
        pem::split_leaf(pem::order_leaf_first(certs).map_err(unreadable)?).map_err(unreadable)?;
    log::info!("certificate issued: {url}");
    Ok(IssueResult::Issued(IssuedCertificate {
        certificate_pem: leaf.to_pem(),
        chain_pem: chain
            .iter()
            .filter(|c| !c.is_self_signed())
            .map(pem::PemBlock::to_pem)
            .collect(),
        ca_certificate_id: Some(url),
    }))
}

/// `cancel`: withdraw our challenges and deactivate the authorizations we
/// were proving, so the CA stops expecting them.
pub fn cancel(order_id: &str, state_text: &str) -> Result<(), ConnectorError> {
    let state = OrderState::parse(state_text)?;
    let ids = state.challenge_ids();
    if !ids.is_empty() {
        challenges::withdraw(&ids);
    }
    let Some(mut client) = client_for(&state) else {
        log::warn!("no ACME account key in the store; the authorizations of {order_id} stay");
        return Ok(());
    };
    let body = json!({"status": "deactivated"});
    let mut failed: Option<ConnectorError> = None;
    for authz in state.authz.iter().filter(|a| a.challenge.is_some()) {
        match client.post(&authz.url, Payload::Json(&body)) {
            Ok(_) => log::info!("authorization {} deactivated", authz.url),
            // Already invalid, expired or deactivated: nothing left to do.
            Err(AcmeError::Problem(p)) => log::info!(
                "authorization {} not deactivated: {}",
                authz.url,
                p.describe()
            ),
            Err(AcmeError::Other(e)) => {
                log::warn!(
                    "authorization {} not deactivated: {}",
                    authz.url,
                    e.message()
                );
                failed.get_or_insert(e.context(format!("deactivating {}", authz.url)));
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publication_failures_are_final_unless_temporary() {
        let e = publication_failed("challenge http01-x", "no agent serves www.example.com");
        assert_eq!(e.kind(), "rejected");
        assert_eq!(
            e.message(),
            "the host could not publish challenge http01-x: no agent serves www.example.com"
        );
        assert_eq!(
            publication_failed("dns01-x", "transient: DNS provider timed out").kind(),
            "transient"
        );
        assert_eq!(
            publication_failed("dns01-x", "Temporary failure in name resolution").kind(),
            "transient"
        );
    }
}
