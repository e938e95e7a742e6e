//! `acme`: a certplane issuer for any ACME CA (RFC 8555): Let's Encrypt,
//! ZeroSSL, Google Trust Services, step-ca, Pebble... with ACME Renewal
//! Information (RFC 9773). It implements the contract's
//! `issuer-with-lifecycle` world. See `docs/connectors/acme.md`.
//!
//! The flow never waits inside a call: `submit` registers the account (once
//! per instance, kept in the instance's store), places the order and hands
//! one challenge per name to the host to publish (`challenges.present`),
//! then returns a pending order whose `state` says what comes next; each
//! `poll` takes one step (answer the challenges once the host reports them
//! ready, finalize once the order is ready, download once it is valid).
//!
//! Modules: [`jws`] (ES256 and HS256 signatures, JWK thumbprints), [`nonce`]
//! (directory and the nonce-keeping client), [`problem`] (ACME errors to
//! connector errors), [`account`], [`order`] (submit), [`authz`] (challenge
//! choice), [`poll`] (poll and cancel), [`state`] (the order state),
//! [`revoke`], [`ari`] (renewal information), [`settings`].

pub mod account;
pub mod ari;
pub mod authz;
pub mod bindings;
pub mod jws;
pub mod nonce;
pub mod order;
pub mod poll;
pub mod problem;
pub mod revoke;
pub mod settings;
pub mod state;

use certplane_sdk::{ConnectorError, PluginInfo};

use crate::bindings::{
    CertificateRequest, IssueResult, IssuerApi, Lifecycle, Order, RenewalInfo, RevocationRequest,
};
use crate::nonce::Directory;
use crate::settings::{EAB_SECRET, SETTINGS_SCHEMA, Settings};

/// The connector's name; equals the manifest's `name`.
pub const NAME: &str = "acme";

/// The component.
pub struct Acme;

impl IssuerApi for Acme {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Issues certificates from an ACME CA (RFC 8555) with http-01 or dns-01 \
                          challenges published by the host, and renewal information (RFC 9773)"
                .into(),
            settings_schema: SETTINGS_SCHEMA.into(),
            secret_names: vec![EAB_SECRET.into()],
        }
    }

    fn validate_config() -> Result<(), ConnectorError> {
        let settings = Settings::load()?;
        let eab = settings.eab()?;
        let directory = Directory::fetch(&settings.directory_url)?;
        if directory.meta.external_account_required == Some(true) && eab.is_none() {
            return Err(ConnectorError::invalid_config(
                "this CA requires an external account binding: set `eab_kid` and the secret \
                 `eab_hmac_key` to the values the CA issued",
            ));
        }
        Ok(())
    }

    fn submit(request: CertificateRequest) -> Result<IssueResult, ConnectorError> {
        order::submit(&request)
    }

    fn poll(order: Order) -> Result<IssueResult, ConnectorError> {
        poll::poll(&order)
    }

    fn revoke(request: RevocationRequest) -> Result<(), ConnectorError> {
        revoke::revoke(&request)
    }
}

impl Lifecycle for Acme {
    fn renewal_window(certificate_pem: String) -> Result<Option<RenewalInfo>, ConnectorError> {
        let settings = Settings::load()?;
        let directory = Directory::fetch(&settings.directory_url)?;
        Ok(
            ari::renewal_window(&directory, &certificate_pem)?.map(|w| RenewalInfo {
                start: w.start,
                end: w.end,
                explanation_url: w.explanation_url,
                retry_after_secs: w.retry_after_secs,
            }),
        )
    }

    fn cancel(order_id: String, state: String) -> Result<(), ConnectorError> {
        poll::cancel(&order_id, &state)
    }
}

// Export names such as `certplane:connector/issuer-api@1.1.0#submit` are not
// valid native symbols: export only when building the component.
#[cfg(target_arch = "wasm32")]
bindings::export!(Acme with_types_in bindings);
