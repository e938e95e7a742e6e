//! Placing an order (RFC 8555 section 7.4): newOrder, one challenge chosen
//! per pending authorization, the challenges handed to the host for
//! publication, and a pending order back to the host.

use certplane_sdk::{ConnectorError, log, pem};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::account;
use crate::ari;
use crate::authz::{self, Authorization, AuthzState, ChosenChallenge};
use crate::bindings::{CertificateRequest, IssueResult, challenges, context};
use crate::jws::{Payload, b64};
use crate::nonce::{self, Client, Directory};
use crate::problem::{AcmeError, Problem};
use crate::settings::{ChallengeType, Options, Settings};
use crate::state::{OrderState, Phase, STATE_VERSION};

/// Seconds the host gets to publish challenges before the next poll.
pub const PUBLISH_RETRY_SECS: u32 = 2;

/// An order object.
#[derive(Debug, Clone, Deserialize)]
pub struct AcmeOrder {
    /// `pending`, `ready`, `processing`, `valid`, `invalid`.
    pub status: String,
    /// Authorization URLs.
    #[serde(default)]
    pub authorizations: Vec<String>,
    /// Where to send the CSR.
    #[serde(default)]
    pub finalize: String,
    /// The certificate URL, once valid.
    #[serde(default)]
    pub certificate: Option<String>,
    /// Why the order is invalid.
    #[serde(default)]
    pub error: Option<Problem>,
}

/// `submit`: places the order and presents its challenges.
pub fn submit(request: &CertificateRequest) -> Result<IssueResult, ConnectorError> {
    let settings = Settings::load()?;
    let options = Options::from_json(&context::options())?;
    let names = identifiers(request)?;
    let csr = csr_der(&request.csr_pem)?;
    let directory = Directory::fetch(&settings.directory_url)?;
    let key = account::load_or_create_key()?;
    let mut client = Client::new(directory.new_nonce.as_str(), key);
    let account_url = account::ensure(&mut client, &directory, &settings)?;

    let predecessor = context::predecessor();
    let replaces = ari::replaces(
        &directory,
        predecessor.as_ref().map(|p| p.certificate_pem.as_str()),
    );
    let profile = options.profile.or(settings.profile.clone());
    let (order_url, order) = new_order(&mut client, &directory, &names, replaces, profile)
        .map_err(|e| submit_error(e, "placing the order (newOrder)"))?;
    if order.status == "invalid" {
        return Err(ConnectorError::rejected(format!(
            "the CA created order {order_url} invalid: {}",
            order
                .error
                .as_ref()
                .map_or("no reason given".into(), Problem::describe)
        )));
    }
    log::info!(
        "ACME order {order_url} placed for {} ({})",
        names.join(", "),
        order.status
    );

    let preferred = options
        .preferred_challenge
        .or(settings.preferred_challenge)
        .map(ChallengeType::kind);
    let thumbprint = client.key().thumbprint();
    let mut states = Vec::with_capacity(order.authorizations.len());
    let mut to_present = Vec::new();
    for url in &order.authorizations {
        let response = client
            .get(url)
            .map_err(|e| submit_error(e, "reading an authorization"))?;
        let authz: Authorization =
            nonce::json(&response).map_err(|e| submit_error(e, "reading an authorization"))?;
        let identifier = authz.identifier.value.clone();
        match authz.status.as_str() {
            "valid" => states.push(AuthzState {
                url: url.clone(),
                identifier,
                challenge: None,
            }),
            "pending" => {
                let routed = challenges::supported(&identifier);
                let (kind, challenge) = authz::choose(&authz, &routed, preferred)
                    .map_err(ConnectorError::invalid_config)?;
                let token = challenge.token.as_deref().unwrap_or_default();
                let publish = authz::to_publish(kind, &identifier, token, &thumbprint);
                states.push(AuthzState {
                    url: url.clone(),
                    identifier,
                    challenge: Some(ChosenChallenge {
                        url: challenge.url.clone(),
                        id: publish.id.clone(),
                        kind: authz::acme_type(kind).into(),
                    }),
                });
                to_present.push(publish);
            }
            other => {
                return Err(ConnectorError::rejected(format!(
                    "the authorization for {} is {other}",
                    authz::display_name(&authz)
                )));
            }
        }
    }
    if !to_present.is_empty() {
        challenges::present(&to_present)?;
    }
    let state = OrderState {
        v: STATE_VERSION,
        phase: if to_present.is_empty() {
            Phase::Validating
        } else {
            Phase::Publishing
        },
        directory_url: settings.directory_url,
        new_nonce: directory.new_nonce,
        account_url,
        order_url,
        finalize: order.finalize,
        csr: b64(&csr),
        authz: states,
        withdrawn: false,
    };
    Ok(IssueResult::Pending(state.to_order(PUBLISH_RETRY_SECS)?))
}

/// newOrder; a CA that refuses `replaces` because another order already
/// replaced the predecessor (a retried job) gets the order without it.
fn new_order(
    client: &mut Client,
    directory: &Directory,
    names: &[String],
    replaces: Option<String>,
    profile: Option<String>,
) -> Result<(String, AcmeOrder), AcmeError> {
    let payload = order_payload(names, replaces.as_deref(), profile.as_deref());
    let response = match client.post(&directory.new_order, Payload::Json(&payload)) {
        Err(e) if replaces.is_some() && e.is("alreadyReplaced") => {
            log::warn!("the predecessor was already replaced; ordering without `replaces`");
            let payload = order_payload(names, None, profile.as_deref());
            client.post(&directory.new_order, Payload::Json(&payload))?
        }
        other => other?,
    };
    let url = nonce::location(&response, "newOrder")?;
    Ok((url, nonce::json(&response)?))
}

/// The newOrder body.
pub fn order_payload(names: &[String], replaces: Option<&str>, profile: Option<&str>) -> Value {
    let identifiers: Vec<Value> = names
        .iter()
        .map(|n| json!({"type": "dns", "value": n}))
        .collect();
    let mut payload = json!({ "identifiers": identifiers });
    if let Some(r) = replaces {
        payload["replaces"] = json!(r);
    }
    if let Some(p) = profile {
        payload["profile"] = json!(p);
    }
    payload
}

/// An error of a request signed by the stored account during `submit`:
/// when the CA no longer knows the account it is forgotten and the error is
/// transient, so the host's retry registers again.
pub fn submit_error(error: AcmeError, context: &str) -> ConnectorError {
    if account::account_gone(&error) {
        return ConnectorError::transient(format!(
            "{context}: the CA no longer knows the stored ACME account; it was forgotten and the \
             next attempt registers again"
        ));
    }
    error.into_error(context)
}

/// The names to order: the DNS names, plus the common name when it is a
/// DNS name not among them; lower-case, without a trailing dot, once each.
pub fn identifiers(request: &CertificateRequest) -> Result<Vec<String>, ConnectorError> {
    if !request.ip_addresses.is_empty() {
        return Err(ConnectorError::rejected(format!(
            "the acme connector orders DNS names only; IP addresses ({}) are not supported",
            request.ip_addresses.join(", ")
        )));
    }
    let mut names: Vec<String> = Vec::new();
    let cn = Some(request.common_name.as_str()).filter(|cn| looks_like_dns_name(cn));
    for name in request.dns_names.iter().map(String::as_str).chain(cn) {
        let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() {
            continue;
        }
        if !looks_like_dns_name(&name) {
            return Err(ConnectorError::rejected(format!(
                "{name:?} is not a DNS name an ACME CA can validate"
            )));
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Err(ConnectorError::rejected(
            "the request names no DNS name to order",
        ));
    }
    Ok(names)
}

fn looks_like_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.parse::<std::net::IpAddr>().is_err()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The DER bytes of the request's CSR.
pub fn csr_der(csr_pem: &str) -> Result<Vec<u8>, ConnectorError> {
    let blocks = pem::parse_blocks(csr_pem)
        .map_err(|e| ConnectorError::rejected(format!("the request's CSR: {e}")))?;
    blocks
        .into_iter()
        .find(|b| b.label == "CERTIFICATE REQUEST" || b.label == "NEW CERTIFICATE REQUEST")
        .map(|b| b.der)
        .ok_or_else(|| {
            ConnectorError::rejected("the request's CSR has no CERTIFICATE REQUEST block")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(cn: &str, dns: &[&str], ips: &[&str]) -> CertificateRequest {
        CertificateRequest {
            csr_pem: String::new(),
            common_name: cn.into(),
            dns_names: dns.iter().map(|s| s.to_string()).collect(),
            ip_addresses: ips.iter().map(|s| s.to_string()).collect(),
            validity_days: None,
            certificate_id: "c".into(),
        }
    }

    #[test]
    fn identifiers_are_normalised_and_checked() {
        let r = request(
            "WWW.example.com",
            &["www.example.com.", "*.Example.com"],
            &[],
        );
        assert_eq!(
            identifiers(&r).unwrap(),
            vec!["www.example.com".to_string(), "*.example.com".to_string()]
        );
        let r = request("api.example.com", &["www.example.com"], &[]);
        assert_eq!(identifiers(&r).unwrap().len(), 2);
        // A common name that is not a DNS name is not ordered.
        let r = request("My Service", &["www.example.com"], &[]);
        assert_eq!(
            identifiers(&r).unwrap(),
            vec!["www.example.com".to_string()]
        );
        assert_eq!(
            identifiers(&request("x", &[], &["10.0.0.1"]))
                .unwrap_err()
                .kind(),
            "rejected"
        );
        assert_eq!(
            identifiers(&request("", &[], &[])).unwrap_err().kind(),
            "rejected"
        );
        assert_eq!(
            identifiers(&request("", &["a b.example"], &[]))
                .unwrap_err()
                .kind(),
            "rejected"
        );
        assert_eq!(
            identifiers(&request("", &["10.0.0.1"], &[]))
                .unwrap_err()
                .kind(),
            "rejected"
        );
    }

    #[test]
    fn order_payload_shape() {
        let names = vec!["a.example".to_string()];
        assert_eq!(
            order_payload(&names, None, None),
            json!({"identifiers": [{"type": "dns", "value": "a.example"}]})
        );
        assert_eq!(
            order_payload(&names, Some("aYhb.AIdl"), Some("shortlived")),
            json!({"identifiers": [{"type": "dns", "value": "a.example"}],
                   "replaces": "aYhb.AIdl", "profile": "shortlived"})
        );
    }

    #[test]
    fn csr_blocks() {
        let pem = pem::encode("CERTIFICATE REQUEST", &[1, 2, 3]);
        assert_eq!(csr_der(&pem).unwrap(), vec![1, 2, 3]);
        let pem = pem::encode("CERTIFICATE", &[1]);
        assert_eq!(csr_der(&pem).unwrap_err().kind(), "rejected");
        assert_eq!(csr_der("junk").unwrap_err().kind(), "rejected");
    }
}
