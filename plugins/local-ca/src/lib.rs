//! `local-ca`: a certplane issuer that signs CSRs with a CA certificate and
//! key held in its own settings and secrets. It issues synchronously: `submit`
//! returns the certificate, never a pending order.
//!
//! Settings:
//! - `ca_certificate_pem` (required): the signing CA certificate, PEM,
//!   optionally followed by its own issuers (nearest first); all of them are
//!   returned as the chain.
//! - `validity_days` (default 90, at most 825): validity when the request
//!   does not ask for one.
//! - `max_validity_days` (optional, at most 825): cap on requested validity.
//!
//! Secret `ca_private_key_pem`: the CA key, PKCS#8 PEM (ECDSA P-256/P-384,
//! Ed25519 or RSA; SEC1 `EC PRIVATE KEY` and PKCS#1 `RSA PRIVATE KEY` are
//! accepted too).
//!
//! The component never reads the key: the host signs with it and checks
//! CSR signatures natively (the contract's `signing` import, through
//! [`crypto::HostCrypto`]); the guest builds and encodes the certificate.
//!
//! The certificate logic lives in [`ca`], [`csr`] and [`names`], which do not
//! depend on the WebAssembly target and are unit-tested natively, signing
//! in-process with [`ca::CaKey`].

pub mod ca;
pub mod crypto;
pub mod csr;
pub mod names;

use std::time::SystemTime;

use certplane_sdk::issuer::{
    CertificateRequest, IssueResult, IssuedCertificate, Issuer, Order, RevocationRequest,
};
use certplane_sdk::{ConnectorError, PluginInfo, log, settings};
use serde::Deserialize;

use crate::ca::{CaError, LeafRequest, LocalCa};
use crate::crypto::HostCrypto;

/// The connector's name; equals the manifest's `name`.
pub const NAME: &str = "local-ca";

/// Default validity when neither the request nor the settings say.
pub const DEFAULT_VALIDITY_DAYS: u32 = 90;

/// Hard upper bound on validity (the CA/Browser Forum's historical 825 days).
pub const MAX_VALIDITY_DAYS: u32 = 825;

/// Name of the secret holding the CA key.
pub const KEY_SECRET: &str = "ca_private_key_pem";

/// JSON Schema (draft 2020-12) of the settings.
pub const SETTINGS_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "local-ca settings",
  "type": "object",
  "properties": {
    "ca_certificate_pem": {
      "type": "string",
      "description": "PEM of the CA certificate that signs (basicConstraints CA:TRUE), optionally followed by its issuers, nearest first. Its key goes into the secret ca_private_key_pem."
    },
    "validity_days": {
      "type": "integer",
      "minimum": 1,
      "maximum": 825,
      "default": 90,
      "description": "Validity of issued certificates when the request does not ask for one."
    },
    "max_validity_days": {
      "type": "integer",
      "minimum": 1,
      "maximum": 825,
      "description": "Longest validity granted to a request; longer requests are shortened."
    }
  },
  "required": ["ca_certificate_pem"],
  "additionalProperties": false
}"#;

/// The instance settings.
#[derive(Clone, Debug, Deserialize)]
pub struct Settings {
    /// The CA certificate (and optional issuers), PEM.
    pub ca_certificate_pem: String,
    /// Default validity in days.
    #[serde(default)]
    pub validity_days: Option<u32>,
    /// Cap on requested validity in days.
    #[serde(default)]
    pub max_validity_days: Option<u32>,
}

impl Settings {
    /// Checks the numeric settings and returns (default days, cap in days).
    pub fn validity(&self) -> Result<(u32, u32), ConnectorError> {
        let check = |name: &str, v: u32| {
            if (1..=MAX_VALIDITY_DAYS).contains(&v) {
                Ok(v)
            } else {
                Err(ConnectorError::invalid_config(format!(
                    "setting `{name}` = {v} is out of range (1..={MAX_VALIDITY_DAYS})"
                )))
            }
        };
        let max = check(
            "max_validity_days",
            self.max_validity_days.unwrap_or(MAX_VALIDITY_DAYS),
        )?;
        let default = check(
            "validity_days",
            self.validity_days.unwrap_or(DEFAULT_VALIDITY_DAYS.min(max)),
        )?;
        if default > max {
            return Err(ConnectorError::invalid_config(format!(
                "setting `validity_days` = {default} exceeds `max_validity_days` = {max}"
            )));
        }
        Ok((default, max))
    }

    /// Validity for a request asking for `requested` days: the request's
    /// value (or the default), shortened to the cap.
    pub fn days_for(&self, requested: Option<u32>) -> Result<u32, ConnectorError> {
        let (default, max) = self.validity()?;
        match requested {
            Some(0) => Err(ConnectorError::rejected("validity-days must be at least 1")),
            Some(d) => Ok(d.min(max)),
            None => Ok(default),
        }
    }
}

fn ca_error(e: CaError) -> ConnectorError {
    match e {
        CaError::Config(m) => ConnectorError::invalid_config(m),
        CaError::Rejected(m) => ConnectorError::rejected(m),
    }
}

/// Loads the settings and the CA (its key held by the host), and checks
/// the CA can sign now.
fn load() -> Result<(Settings, LocalCa<HostCrypto>), ConnectorError> {
    let s: Settings = settings::settings()?;
    s.validity()?;
    let ca = LocalCa::new(&s.ca_certificate_pem, HostCrypto::new(KEY_SECRET)).map_err(ca_error)?;
    ca.check_usable(SystemTime::now()).map_err(ca_error)?;
    Ok((s, ca))
}

/// The exported issuer.
pub struct LocalCaIssuer;

impl Issuer for LocalCaIssuer {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: env!("CARGO_PKG_DESCRIPTION").into(),
            settings_schema: SETTINGS_SCHEMA.into(),
            secret_names: vec![KEY_SECRET.into()],
        }
    }

    fn validate_config() -> Result<(), ConnectorError> {
        let (_, ca) = load()?;
        if !ca.has_ski() {
            log::warn!(
                "the CA certificate {} has no subjectKeyIdentifier; issued certificates will \
                 carry no authorityKeyIdentifier",
                ca.subject()
            );
        }
        log::info!(
            "local CA {} ({}) is ready to sign",
            ca.subject(),
            ca.scheme().key_name()
        );
        Ok(())
    }

    fn submit(request: CertificateRequest) -> Result<IssueResult, ConnectorError> {
        let (s, ca) = load()?;
        let validity_days = s.days_for(request.validity_days)?;
        let mut serial = [0u8; 16];
        getrandom::getrandom(&mut serial).map_err(|e| {
            ConnectorError::transient(format!("no randomness for the serial number: {e}"))
        })?;
        let leaf = LeafRequest {
            csr_pem: &request.csr_pem,
            common_name: &request.common_name,
            dns_names: &request.dns_names,
            ip_addresses: &request.ip_addresses,
            validity_days,
        };
        let issued = ca
            .issue(&leaf, SystemTime::now(), &serial)
            .map_err(ca_error)?;
        if issued.clamped_to_ca {
            log::warn!(
                "certificate {} was shortened to end with the CA certificate {}",
                request.certificate_id,
                ca.subject()
            );
        }
        log::info!(
            "issued serial {} for certificate {} ({} days)",
            issued.serial_hex,
            request.certificate_id,
            validity_days
        );
        Ok(IssueResult::Issued(IssuedCertificate {
            certificate_pem: issued.certificate_pem,
            chain_pem: issued.chain_pem,
            ca_certificate_id: None,
        }))
    }

    fn poll(order: Order) -> Result<IssueResult, ConnectorError> {
        Err(ConnectorError::rejected(format!(
            "the local CA issues synchronously and never returns pending orders, so order {:?} \
             cannot be polled; submit the request again",
            order.id
        )))
    }

    fn revoke(request: RevocationRequest) -> Result<(), ConnectorError> {
        Err(ConnectorError::unsupported(format!(
            "the local CA keeps no revocation list (CRL or OCSP), so serial {} cannot be \
             revoked here; remove the certificate from service and rotate it instead",
            request.serial_hex
        )))
    }
}

#[cfg(feature = "component")]
certplane_sdk::export_issuer!(LocalCaIssuer);

#[cfg(test)]
mod tests {
    use super::*;

    fn s(json: &str) -> Settings {
        settings::settings_from_json(json).unwrap()
    }

    #[test]
    fn validity_settings() {
        let base = r#""ca_certificate_pem":"x""#;
        assert_eq!(s(&format!("{{{base}}}")).validity().unwrap(), (90, 825));
        assert_eq!(
            s(&format!("{{{base},\"validity_days\":30}}"))
                .days_for(None)
                .unwrap(),
            30
        );
        assert_eq!(s(&format!("{{{base}}}")).days_for(Some(1000)).unwrap(), 825);
        let capped = s(&format!("{{{base},\"max_validity_days\":30}}"));
        assert_eq!(capped.validity().unwrap(), (30, 30));
        assert_eq!(capped.days_for(Some(90)).unwrap(), 30);
        assert_eq!(capped.days_for(Some(7)).unwrap(), 7);
        assert_eq!(capped.days_for(Some(0)).unwrap_err().kind(), "rejected");
        let e = s(&format!("{{{base},\"validity_days\":900}}"))
            .validity()
            .unwrap_err();
        assert_eq!(
            e.message(),
            "setting `validity_days` = 900 is out of range (1..=825)"
        );
        let e = s(&format!(
            "{{{base},\"validity_days\":60,\"max_validity_days\":30}}"
        ))
        .validity()
        .unwrap_err();
        assert_eq!(
            e.message(),
            "setting `validity_days` = 60 exceeds `max_validity_days` = 30"
        );
        let e = settings::settings_from_json::<Settings>("{}").unwrap_err();
        assert!(
            e.message().contains("ca_certificate_pem"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn describe_matches_manifest() {
        let info = LocalCaIssuer::describe();
        assert_eq!(info.name, NAME);
        assert_eq!(info.secret_names, vec![KEY_SECRET.to_string()]);
        let schema: serde_json::Value = serde_json::from_str(&info.settings_schema).unwrap();
        assert_eq!(schema["required"][0], "ca_certificate_pem");
        let manifest = include_str!("../plugin.toml");
        assert!(manifest.contains("name = \"local-ca\""));
        assert!(manifest.contains("kind = \"issuer\""));
        let version = format!("version = \"{}\"", env!("CARGO_PKG_VERSION"));
        assert!(
            manifest.contains(&version),
            "plugin.toml must say {version}"
        );
    }

    #[test]
    fn poll_and_revoke_explain_themselves() {
        let e = LocalCaIssuer::poll(Order {
            id: "o-1".into(),
            retry_after_secs: None,
            state: String::new(),
        })
        .unwrap_err();
        assert_eq!(e.kind(), "rejected");
        assert!(e.message().contains("never returns pending"));
        let e = LocalCaIssuer::revoke(RevocationRequest {
            certificate_pem: String::new(),
            serial_hex: "0a".into(),
            ca_certificate_id: None,
            reason: certplane_sdk::issuer::RevocationReason::Superseded,
        })
        .unwrap_err();
        assert_eq!(e.kind(), "unsupported");
        assert!(e.message().contains("no revocation list"));
    }
}
