//! The instance settings: their JSON Schema, their typed form and the checks
//! the schema cannot express.

use certplane_sdk::{ConnectorError, http};
use serde::{Deserialize, Deserializer};

/// CertCentral's production Services API.
pub const DEFAULT_BASE_URL: &str = "https://www.digicert.com/services/v2";

/// Name of the secret holding the CertCentral API key.
pub const API_KEY_SECRET: &str = "api_key";

/// Seconds between polls of a pending order unless `poll_interval_secs`
/// says otherwise: OV/EV validation takes hours, DV minutes, and each poll
/// spends requests of a rate limit shared by the whole API key.
pub const DEFAULT_POLL_INTERVAL_SECS: u32 = 60;

/// JSON Schema (draft 2020-12) of the settings.
pub const SETTINGS_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "digicert settings",
  "type": "object",
  "properties": {
    "base_url": {
      "type": "string",
      "pattern": "^https?://[^/?#@\\s]+(/[^?#\\s]*)?$",
      "default": "https://www.digicert.com/services/v2",
      "description": "CertCentral Services API v2 base URL (EU: https://certcentral.digicert.eu/services/v2). Plain http:// is accepted only for loopback test servers. The instance's grants must name its scheme, host and port."
    },
    "product": {
      "type": "string",
      "pattern": "^[a-z0-9_]{1,64}$",
      "description": "Product name id ordered at POST /order/certificate/{product}, e.g. ssl_basic, ssl_plus, ssl_multi_domain, ssl_securesite_flex, ssl_ev_basic, private_ssl_plus, ssl_dv_geotrust_flex, ssl_dv_rapidssl."
    },
    "organization_id": {
      "type": "integer",
      "minimum": 1,
      "description": "CertCentral organization id (organization.id). Required for every product except the DV ones (ssl_dv_*)."
    },
    "validity_years": {
      "type": "integer",
      "minimum": 1,
      "maximum": 3,
      "description": "Order validity in years (order_validity.years; 2 and 3 need a Multi-year Plan). Excludes validity_days. A request asking for fewer days is ordered in days instead."
    },
    "validity_days": {
      "type": "integer",
      "minimum": 1,
      "maximum": 1095,
      "description": "Order validity in days (order_validity.days), cut to the request's validity-days when that is shorter. Excludes validity_years. With neither, the request's validity-days is sent, else one year. DigiCert shortens public TLS certificates to the current industry maximum."
    },
    "signature_hash": {
      "type": "string",
      "enum": ["sha256", "sha384", "sha512"],
      "default": "sha256",
      "description": "Signature hash of the issued certificate (certificate.signature_hash)."
    },
    "server_platform_id": {
      "type": "integer",
      "minimum": -1,
      "description": "certificate.server_platform.id (-1 is 'other'); omitted when not set."
    },
    "payment_method": {
      "type": "string",
      "enum": ["balance", "card", "profile", "wire_transfer"],
      "description": "How the order is paid; omitted when not set (the account's default applies)."
    },
    "skip_approval": {
      "type": "boolean",
      "default": true,
      "description": "Ask CertCentral to skip the approval step for orders and revocations (the API key's user must be allowed to)."
    },
    "comments": {
      "type": "string",
      "maxLength": 512,
      "description": "Text put in front of the order comments; the connector appends the certificate and job ids."
    },
    "poll_interval_secs": {
      "type": "integer",
      "minimum": 1,
      "maximum": 3600,
      "default": 60,
      "description": "Seconds the host waits between polls of a pending order."
    }
  },
  "required": ["product"],
  "not": {"required": ["validity_years", "validity_days"]},
  "if": {"properties": {"product": {"pattern": "^ssl_dv_"}}},
  "else": {"required": ["organization_id"]},
  "additionalProperties": false
}"#;

/// `signature_hash`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SignatureHash {
    /// SHA-256.
    #[default]
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl SignatureHash {
    /// The value CertCentral expects.
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureHash::Sha256 => "sha256",
            SignatureHash::Sha384 => "sha384",
            SignatureHash::Sha512 => "sha512",
        }
    }
}

/// `payment_method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaymentMethod {
    /// The account balance.
    Balance,
    /// The card on file.
    Card,
    /// The payment profile.
    Profile,
    /// Wire transfer.
    WireTransfer,
}

impl PaymentMethod {
    /// The value CertCentral expects.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentMethod::Balance => "balance",
            PaymentMethod::Card => "card",
            PaymentMethod::Profile => "profile",
            PaymentMethod::WireTransfer => "wire_transfer",
        }
    }
}

/// Deserializes one of `all` by its `as_str` name; serde's own message for
/// an unknown variant does not name the setting.
fn one_of<'de, D, T>(
    d: D,
    setting: &str,
    all: &[T],
    name: fn(T) -> &'static str,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Copy,
{
    let text = String::deserialize(d)?;
    all.iter()
        .copied()
        .find(|v| name(*v) == text)
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|v| name(*v)).collect();
            serde::de::Error::custom(format!(
                "setting `{setting}` = {text:?} is not one of {}",
                names.join(", ")
            ))
        })
}

fn de_signature_hash<'de, D: Deserializer<'de>>(d: D) -> Result<SignatureHash, D::Error> {
    use SignatureHash::*;
    one_of(
        d,
        "signature_hash",
        &[Sha256, Sha384, Sha512],
        SignatureHash::as_str,
    )
}

fn de_payment_method<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PaymentMethod>, D::Error> {
    use PaymentMethod::*;
    let all = [Balance, Card, Profile, WireTransfer];
    one_of(d, "payment_method", &all, PaymentMethod::as_str).map(Some)
}

/// The instance settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// API base URL.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Product name id.
    pub product: String,
    /// Organization id.
    #[serde(default)]
    pub organization_id: Option<u64>,
    /// Validity in years.
    #[serde(default)]
    pub validity_years: Option<u32>,
    /// Validity in days.
    #[serde(default)]
    pub validity_days: Option<u32>,
    /// Signature hash.
    #[serde(default, deserialize_with = "de_signature_hash")]
    pub signature_hash: SignatureHash,
    /// Server platform id.
    #[serde(default)]
    pub server_platform_id: Option<i64>,
    /// Payment method.
    #[serde(default, deserialize_with = "de_payment_method")]
    pub payment_method: Option<PaymentMethod>,
    /// Skip the approval step.
    #[serde(default = "yes")]
    pub skip_approval: bool,
    /// Operator comments.
    #[serde(default)]
    pub comments: Option<String>,
    /// Poll interval hint in seconds.
    #[serde(default)]
    pub poll_interval_secs: Option<u32>,
}

fn yes() -> bool {
    true
}

/// What goes into `order_validity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// `{"years": n}`
    Years(u32),
    /// `{"days": n}`
    Days(u32),
}

impl Settings {
    /// Parses a settings object and applies every check.
    pub fn from_json(json: &str) -> Result<Settings, ConnectorError> {
        let s: Settings = certplane_sdk::settings::settings_from_json(json)?;
        s.check()?;
        Ok(s)
    }

    /// The rules beyond serde's: the ones the schema states, again, because
    /// a connector must not trust that the host checked them, and the URL.
    pub fn check(&self) -> Result<(), ConnectorError> {
        let bad = |m: String| Err(ConnectorError::invalid_config(m));
        self.base_url()?;
        let product_ok = !self.product.is_empty()
            && self.product.len() <= 64
            && self
                .product
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !product_ok {
            return bad(format!(
                "setting `product` = {:?} is not a CertCentral product name id ([a-z0-9_], e.g. ssl_basic)",
                self.product
            ));
        }
        if self.organization_id.is_none() && !self.is_dv() {
            return bad(format!(
                "setting `organization_id` is required for product {:?} (only ssl_dv_* products order without an organization)",
                self.product
            ));
        }
        if self.organization_id == Some(0) {
            return bad("setting `organization_id` must be at least 1".into());
        }
        match (self.validity_years, self.validity_days) {
            (Some(_), Some(_)) => {
                return bad(
                    "settings `validity_years` and `validity_days` exclude each other; set one"
                        .into(),
                );
            }
            (Some(y), None) if !(1..=3).contains(&y) => {
                return bad(format!(
                    "setting `validity_years` = {y} is out of range (1..=3)"
                ));
            }
            (None, Some(d)) if !(1..=1095).contains(&d) => {
                return bad(format!(
                    "setting `validity_days` = {d} is out of range (1..=1095)"
                ));
            }
            _ => {}
        }
        if let Some(p) = self.server_platform_id
            && p < -1
        {
            return bad(format!(
                "setting `server_platform_id` = {p} is invalid (-1 or a platform id)"
            ));
        }
        if let Some(c) = &self.comments
            && c.chars().count() > 512
        {
            return bad("setting `comments` is longer than 512 characters".into());
        }
        if let Some(s) = self.poll_interval_secs
            && !(1..=3600).contains(&s)
        {
            return bad(format!(
                "setting `poll_interval_secs` = {s} is out of range (1..=3600)"
            ));
        }
        Ok(())
    }

    /// DV products are ordered without an organization.
    pub fn is_dv(&self) -> bool {
        self.product.starts_with("ssl_dv_")
    }

    /// The base URL without a trailing slash. Refuses plain HTTP except to
    /// loopback: the API key travels in a header.
    pub fn base_url(&self) -> Result<String, ConnectorError> {
        let url = self
            .base_url
            .as_deref()
            .unwrap_or(DEFAULT_BASE_URL)
            .trim_end_matches('/');
        let parts = http::parse_url(url)?;
        if parts.path_with_query.contains('?') {
            return Err(ConnectorError::invalid_config(format!(
                "setting `base_url` = {:?} must not carry a query string",
                http::redact_url(url)
            )));
        }
        if !parts.https && !is_loopback(&parts.authority) {
            return Err(ConnectorError::invalid_config(format!(
                "setting `base_url` = {url:?} uses plain http; CertCentral needs https (http is accepted only for loopback test servers)"
            )));
        }
        Ok(url.to_string())
    }

    /// `order_validity` for a request that asks for `requested_days`: the
    /// operator's setting (what the account pays for), shortened to the
    /// request's days when those are fewer (the host refuses a certificate
    /// that lives longer than it asked for); with no setting the request's
    /// days, else one year.
    pub fn validity(&self, requested_days: Option<u32>) -> Validity {
        let configured = match (self.validity_years, self.validity_days) {
            (Some(y), _) => Some(Validity::Years(y)),
            (None, Some(d)) => Some(Validity::Days(d)),
            (None, None) => None,
        };
        match (configured, requested_days.filter(|d| *d > 0)) {
            (Some(Validity::Years(y)), Some(r)) if u64::from(r) < u64::from(y) * 365 => {
                Validity::Days(r)
            }
            (Some(Validity::Days(d)), Some(r)) => Validity::Days(d.min(r)),
            (Some(v), _) => v,
            (None, Some(r)) => Validity::Days(r),
            (None, None) => Validity::Years(1),
        }
    }

    /// Seconds to suggest between polls.
    pub fn poll_interval(&self) -> u32 {
        self.poll_interval_secs
            .unwrap_or(DEFAULT_POLL_INTERVAL_SECS)
    }
}

/// `host[:port]` names the local machine.
fn is_loopback(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Settings, ConnectorError> {
        Settings::from_json(json)
    }

    #[test]
    fn minimal_settings_take_the_defaults() {
        let s = parse(r#"{"product":"ssl_basic","organization_id":7}"#).unwrap();
        assert_eq!(s.base_url().unwrap(), DEFAULT_BASE_URL);
        assert_eq!(s.signature_hash, SignatureHash::Sha256);
        assert!(s.skip_approval);
        assert_eq!(s.poll_interval(), 60);
        assert_eq!(s.validity(None), Validity::Years(1));
        assert_eq!(s.validity(Some(90)), Validity::Days(90));
    }

    #[test]
    fn configured_validity_is_cut_to_the_request() {
        let y = parse(r#"{"product":"ssl_basic","organization_id":7,"validity_years":2}"#).unwrap();
        assert_eq!(y.validity(None), Validity::Years(2));
        assert_eq!(y.validity(Some(730)), Validity::Years(2));
        assert_eq!(y.validity(Some(90)), Validity::Days(90));
        let d =
            parse(r#"{"product":"ssl_basic","organization_id":7,"validity_days":200}"#).unwrap();
        assert_eq!(d.validity(Some(90)), Validity::Days(90));
        assert_eq!(d.validity(Some(300)), Validity::Days(200));
        assert_eq!(d.validity(None), Validity::Days(200));
    }

    #[test]
    fn every_rule_names_its_setting() {
        for (json, needle) in [
            (r#"{"organization_id":7}"#, "missing field `product`"),
            (
                r#"{"product":"SSL Basic","organization_id":7}"#,
                "`product`",
            ),
            (
                r#"{"product":"ssl_basic"}"#,
                "`organization_id` is required",
            ),
            (
                r#"{"product":"ssl_basic","organization_id":0}"#,
                "`organization_id`",
            ),
            (
                r#"{"product":"ssl_basic","organization_id":7,"validity_years":1,"validity_days":30}"#,
                "exclude each other",
            ),
            (
                r#"{"product":"ssl_basic","organization_id":7,"validity_years":4}"#,
                "`validity_years`",
            ),
            (
                r#"{"product":"ssl_basic","organization_id":7,"validity_days":0}"#,
                "`validity_days`",
            ),
            (
                r#"{"product":"ssl_basic","organization_id":7,"signature_hash":"md5"}"#,
                "signature_hash",
            ),
            (
                r#"{"product":"ssl_basic","organization_id":7,"payment_method":"cash"}"#,
                "payment_method",
            ),
            (
                r#"{"product":"ssl_basic","organization_id":7,"server_platform_id":-5}"#,
                "`server_platform_id`",
            ),
            (
                r#"{"product":"ssl_basic","organization_id":7,"poll_interval_secs":0}"#,
                "`poll_interval_secs`",
            ),
            (
                r#"{"product":"ssl_basic","organization_id":7,"colour":"red"}"#,
                "unknown field `colour`",
            ),
            (
                r#"{"product":"ssl_basic","organization_id":7,"base_url":"http://ca.example.com/services/v2"}"#,
                "plain http",
            ),
            (
                r#"{"product":"ssl_basic","organization_id":7,"base_url":"ftp://x"}"#,
                "invalid URL",
            ),
        ] {
            let e = parse(json).unwrap_err();
            assert_eq!(e.kind(), "invalid-config", "{json}");
            assert!(e.message().contains(needle), "{json}: {}", e.message());
        }
    }

    #[test]
    fn dv_products_need_no_organization_and_loopback_may_use_http() {
        let s = parse(
            r#"{"product":"ssl_dv_geotrust_flex","base_url":"http://127.0.0.1:8080/services/v2/","payment_method":"wire_transfer"}"#,
        )
        .unwrap();
        assert!(s.is_dv());
        assert_eq!(s.base_url().unwrap(), "http://127.0.0.1:8080/services/v2");
        assert_eq!(
            s.payment_method.map(PaymentMethod::as_str),
            Some("wire_transfer")
        );
        assert!(
            is_loopback("[::1]:443")
                && is_loopback("localhost")
                && !is_loopback("127.0.0.1.example.com")
        );
    }

    #[test]
    fn the_schema_is_json_and_lists_every_field() {
        let schema: serde_json::Value = serde_json::from_str(SETTINGS_SCHEMA).unwrap();
        let props = schema["properties"].as_object().unwrap();
        for name in [
            "base_url",
            "product",
            "organization_id",
            "validity_years",
            "validity_days",
            "signature_hash",
            "server_platform_id",
            "payment_method",
            "skip_approval",
            "comments",
            "poll_interval_secs",
        ] {
            assert!(props.contains_key(name), "{name}");
        }
        assert_eq!(props.len(), 11);
        assert_eq!(schema["additionalProperties"], false);
    }
}
