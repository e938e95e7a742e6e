//! `digicert`: a certplane issuer that orders TLS certificates from DigiCert
//! CertCentral through its Services API v2.
//!
//! - `validate-config`: `GET /user/me` with the API key (`X-DC-DEVKEY`).
//! - `submit`: `POST /order/certificate/{product}` with the common name,
//!   every DNS name (CertCentral does not read names from the CSR), the
//!   CSR and the instance's settings. Issued at once (the answer carries
//!   `certificate_id` and `certificate_chain`) → the certificate; otherwise
//!   a pending order whose id is CertCentral's order id.
//! - `poll`: only ever `GET /order/certificate/{order_id}` of that order
//!   (never a second order), then, once it is issued,
//!   `GET /certificate/{id}/download/format/pem_all`; the chain is put in
//!   order by issuer and subject, not by file order.
//! - `revoke`: `PUT /certificate/{ca-certificate-id}/revoke`.
//!
//! Settings and their schema are in [`config`], wire types in [`api`], the
//! calls in [`client`], error mapping in [`errors`], orders in [`order`],
//! PEM handling in [`chain`]. Everything but the export builds natively and
//! is unit-tested there; `docs/connectors/digicert.md` is the operator's
//! guide.

pub mod api;
pub mod chain;
pub mod client;
pub mod config;
pub mod errors;
pub mod order;

use certplane_sdk::issuer::{
    CertificateRequest, IssueResult, Issuer, Order, RevocationReason, RevocationRequest,
};
use certplane_sdk::{ConnectorError, PluginInfo, log, settings};

use crate::api::{RevokeRequest, parse_id};
use crate::client::{Client, Revoked};
use crate::config::{API_KEY_SECRET, SETTINGS_SCHEMA, Settings};
use crate::order::{OrderState, Progress};

/// The connector's name; equals the manifest's `name`.
pub const NAME: &str = "digicert";

/// Settings, and a client with the instance's API key.
fn load() -> Result<(Settings, Client), ConnectorError> {
    let s = Settings::from_json(&settings::settings_json())?;
    let key = settings::required_secret(API_KEY_SECRET)?;
    let client = Client::new(s.base_url()?, key.trim());
    Ok((s, client))
}

/// The host's job id, stable across retries and restarts; `None` outside a
/// job, on a host without the 1.1 `context` import's answer, and natively.
fn job_id() -> Option<String> {
    #[cfg(target_arch = "wasm32")]
    {
        certplane_sdk::bindings::target::certplane::connector::context::current_job().map(|j| j.id)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        None
    }
}

/// The text CertCentral keeps with a revocation.
pub fn revocation_comments(request: &RevocationRequest) -> String {
    let reason = match request.reason {
        RevocationReason::Unspecified => "unspecified",
        RevocationReason::KeyCompromise => "key compromise",
        RevocationReason::CaCompromise => "CA compromise",
        RevocationReason::AffiliationChanged => "affiliation changed",
        RevocationReason::Superseded => "superseded",
        RevocationReason::CessationOfOperation => "cessation of operation",
    };
    format!(
        "Revoked by certplane: {reason} (serial {})",
        request.serial_hex
    )
}

/// The exported issuer.
pub struct Digicert;

impl Issuer for Digicert {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Orders TLS certificates from DigiCert CertCentral (Services API v2)"
                .into(),
            settings_schema: SETTINGS_SCHEMA.into(),
            secret_names: vec![API_KEY_SECRET.into()],
        }
    }

    fn validate_config() -> Result<(), ConnectorError> {
        let (_, client) = load()?;
        client.check_key()
    }

    fn submit(request: CertificateRequest) -> Result<IssueResult, ConnectorError> {
        let (s, client) = load()?;
        let body = order::order_request(&s, &request, job_id().as_deref())?;
        let created = client.place_order(&s.product, &body)?;
        log::info!(
            "DigiCert order {} placed for {} ({})",
            created.id,
            body.certificate.common_name,
            s.product
        );
        let state = OrderState {
            order_id: created.id.0,
            product: s.product.clone(),
            common_name: body.certificate.common_name,
        };
        order::placed(created, state, s.poll_interval())
    }

    fn poll(pending: Order) -> Result<IssueResult, ConnectorError> {
        let (s, client) = load()?;
        let state = OrderState::of(&pending)?;
        let details = client.order(state.order_id)?;
        match order::progress(&details.status) {
            Progress::Issued => {
                let Some(certificate_id) = details.certificate.and_then(|c| c.id) else {
                    log::info!(
                        "DigiCert order {} is {} but has no certificate id yet",
                        state.order_id,
                        details.status
                    );
                    return state.pending(s.poll_interval());
                };
                let pem_all = client.download_pem_all(certificate_id.0)?;
                let issued = order::downloaded(state.order_id, certificate_id.0, &pem_all)?;
                Ok(IssueResult::Issued(issued))
            }
            Progress::Pending => {
                if !order::known_pending(&details.status) {
                    log::warn!(
                        "DigiCert order {} has status {:?}, unknown to this connector; polling on",
                        state.order_id,
                        details.status
                    );
                }
                state.pending(s.poll_interval())
            }
            Progress::Failed => Err(ConnectorError::rejected(format!(
                "DigiCert order {} is {}; it will not be issued",
                state.order_id, details.status
            ))),
        }
    }

    fn revoke(request: RevocationRequest) -> Result<(), ConnectorError> {
        let Some(raw_id) = request.ca_certificate_id.as_deref() else {
            return Err(ConnectorError::rejected(
                "DigiCert needs the certificate id; this version has none (it was not issued \
                 through this connector, or by a host that does not keep the id): revoke it in \
                 CertCentral",
            ));
        };
        let Some(certificate_id) = parse_id(raw_id.trim()) else {
            return Err(ConnectorError::rejected(format!(
                "ca-certificate-id {raw_id:?} is not a DigiCert certificate id"
            )));
        };
        let (s, client) = load()?;
        let body = RevokeRequest {
            comments: revocation_comments(&request),
            skip_approval: s.skip_approval,
        };
        match client.revoke(certificate_id, &body)? {
            Revoked::Done => log::info!("DigiCert certificate {certificate_id} revoked"),
            Revoked::AwaitingApproval { request_id, status } => log::warn!(
                "DigiCert certificate {certificate_id}: revocation request {} is {} and needs \
                 approval in CertCentral before the certificate is revoked",
                request_id.map_or_else(|| "?".into(), |i| i.to_string()),
                status.as_deref().unwrap_or("pending")
            ),
        }
        Ok(())
    }
}

certplane_sdk::export_issuer!(Digicert);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_matches_the_manifest() {
        let info = Digicert::describe();
        assert_eq!(info.name, NAME);
        assert_eq!(info.secret_names, vec!["api_key".to_string()]);
        let manifest = include_str!("../plugin.toml");
        assert!(manifest.contains("name = \"digicert\""));
        assert!(manifest.contains("world = \"1.1.0\""));
    }

    #[test]
    fn revocation_without_a_certificate_id_is_rejected_before_any_call() {
        let e = Digicert::revoke(RevocationRequest {
            certificate_pem: String::new(),
            serial_hex: "0a".into(),
            ca_certificate_id: None,
            reason: RevocationReason::Superseded,
        })
        .unwrap_err();
        assert_eq!(e.kind(), "rejected");
        assert!(
            e.message()
                .starts_with("DigiCert needs the certificate id; this version has none")
        );
        let e = Digicert::revoke(RevocationRequest {
            certificate_pem: String::new(),
            serial_hex: "0a".into(),
            ca_certificate_id: Some("../user/me".into()),
            reason: RevocationReason::Superseded,
        })
        .unwrap_err();
        assert_eq!(e.kind(), "rejected");
    }

    #[test]
    fn revocation_comments_name_reason_and_serial() {
        let c = revocation_comments(&RevocationRequest {
            certificate_pem: String::new(),
            serial_hex: "0a1b".into(),
            ca_certificate_id: Some("1".into()),
            reason: RevocationReason::KeyCompromise,
        });
        assert_eq!(c, "Revoked by certplane: key compromise (serial 0a1b)");
    }
}
