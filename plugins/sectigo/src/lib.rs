//! Issuer connector for Sectigo Certificate Manager (SCM), over its REST
//! API (`docs/connectors/sectigo.md` has the operator's view).
//!
//! - `validate-config`: `GET /ssl/v1/types`; `cert_type` must be one of the
//!   account's types and `term` one of its terms.
//! - `submit`: the same check (cheap, and it refuses a bad configuration
//!   before a paid order), then `POST /ssl/v1/enroll`; the answer's `sslId`
//!   becomes a pending order. Never enrolls for an order the host already
//!   holds: the host polls those.
//! - `poll`: `GET /ssl/v1/collect/{sslId}/pem`. SCM error -183 means "not
//!   issued yet": the order stays pending, unless `GET /ssl/v1/{sslId}`
//!   says it was declined, rejected, invalid, revoked or expired. Error -192
//!   (revoked) and every other code are `rejected`.
//! - `revoke`: `POST /ssl/v1/revoke/{sslId}` with the `ca-certificate-id`
//!   returned at issuance.

pub mod config;
pub mod enroll;
pub mod errors;
pub mod order;
pub mod revoke;
pub mod scm;

use certplane_sdk::issuer::{CertificateRequest, IssueResult, Issuer, Order, RevocationRequest};
use certplane_sdk::{ConnectorError, PluginInfo, log};

use crate::config::{Credentials, SECRET_LOGIN, SECRET_PASSWORD, SETTINGS_SCHEMA, Settings};
use crate::scm::{Collected, Scm};

/// The connector's name; equals the manifest's `name`.
pub const NAME: &str = "sectigo";

fn client() -> Result<(Settings, Scm), ConnectorError> {
    let settings = Settings::load()?;
    let scm = Scm::new(&settings, Credentials::load()?);
    Ok((settings, scm))
}

/// The exported issuer.
pub struct Sectigo;

impl Issuer for Sectigo {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Orders, collects and revokes SSL certificates through Sectigo \
                          Certificate Manager (SCM REST API)"
                .into(),
            settings_schema: SETTINGS_SCHEMA.into(),
            secret_names: vec![SECRET_LOGIN.into(), SECRET_PASSWORD.into()],
        }
    }

    fn validate_config() -> Result<(), ConnectorError> {
        let (settings, scm) = client()?;
        let types = scm.types()?;
        enroll::check_type(&types, settings.cert_type, settings.term)?;
        Ok(())
    }

    fn submit(request: CertificateRequest) -> Result<IssueResult, ConnectorError> {
        let (settings, scm) = client()?;
        let types = scm.types()?;
        let cert_type = enroll::check_type(&types, settings.cert_type, settings.term)?;
        let term = enroll::choose_term(cert_type, settings.term, request.validity_days)?;
        let body = enroll::enroll_request(&settings, &request, term)?;
        let enrolled = scm.enroll(&body)?;
        log::info!(
            "SCM order sslId {} placed for certificate {} ({}; type {}, {} days)",
            enrolled.ssl_id,
            request.certificate_id,
            body.subj_alt_names,
            settings.cert_type,
            term
        );
        order::pending(&enrolled, settings.poll_interval_secs)
    }

    fn poll(pending: Order) -> Result<IssueResult, ConnectorError> {
        let state = order::OrderState::from_order(&pending)?;
        let (settings, scm) = client()?;
        match scm.collect(state.ssl_id)? {
            Collected::Ready(bundle) => order::issued(&bundle, state.ssl_id),
            Collected::NotYet => {
                // A declined order stays "not collectable" for ever: its
                // status is the only way to learn that it ended.
                match scm.status(state.ssl_id) {
                    Ok(s) if order::is_final(&s.status) => Err(ConnectorError::rejected(format!(
                        "SCM order sslId {} ended with status {:?}; it will never be issued",
                        state.ssl_id, s.status
                    ))),
                    Ok(s) => {
                        log::debug!("SCM order sslId {} is {:?}", state.ssl_id, s.status);
                        Ok(order::still_pending(pending, settings.poll_interval_secs))
                    }
                    Err(e) => {
                        // The collect already said "wait"; a failed look at
                        // the status is no reason to fail the poll.
                        log::warn!(
                            "SCM order sslId {}: status check failed ({}: {}); still waiting",
                            state.ssl_id,
                            e.kind(),
                            e.message()
                        );
                        Ok(order::still_pending(pending, settings.poll_interval_secs))
                    }
                }
            }
        }
    }

    fn revoke(request: RevocationRequest) -> Result<(), ConnectorError> {
        let ssl_id = revoke::ssl_id(&request)?;
        let (_, scm) = client()?;
        let reason = revoke::reason(&request);
        scm.revoke(ssl_id, &reason)?;
        log::info!("SCM certificate sslId {ssl_id} revoked: {reason}");
        Ok(())
    }
}

certplane_sdk::export_issuer!(Sectigo);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_matches() {
        let manifest = include_str!("../plugin.toml");
        assert!(manifest.contains(&format!("name = \"{NAME}\"")));
        assert!(manifest.contains("kind = \"issuer\""));
        assert!(manifest.contains("world = \"1.1.0\""));
        assert!(manifest.contains("\"https://cert-manager.com\""));
        assert!(manifest.contains(&format!("version = \"{}\"", env!("CARGO_PKG_VERSION"))));
        let info = Sectigo::describe();
        assert_eq!(info.name, NAME);
        assert_eq!(info.secret_names, vec!["login", "password"]);
    }
}
