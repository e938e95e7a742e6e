//! The instance's settings and secrets, and the JSON Schema the host checks
//! settings against before `validate-config` runs.

use certplane_sdk::{ConnectorError, http, settings};
use serde::{Deserialize, Serialize};

/// Default `base_url`: Sectigo's shared SCM instance.
pub const DEFAULT_BASE_URL: &str = "https://cert-manager.com/api";

/// Default `poll_interval_secs`: SCM orders are approved by people or by
/// validation jobs that take minutes, so polling faster only costs requests.
pub const DEFAULT_POLL_INTERVAL_SECS: u32 = 60;

/// SCM keeps order comments short; longer text is cut rather than refused.
pub const MAX_COMMENTS_CHARS: usize = 1024;

/// Secret names, also the header names SCM reads them from.
pub const SECRET_LOGIN: &str = "login";
/// See [`SECRET_LOGIN`].
pub const SECRET_PASSWORD: &str = "password";

/// JSON Schema (draft 2020-12) of the settings.
pub const SETTINGS_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "Sectigo Certificate Manager issuer settings",
  "type": "object",
  "additionalProperties": false,
  "required": ["customer_uri", "org_id", "cert_type", "term"],
  "properties": {
    "base_url": {
      "type": "string",
      "pattern": "^https?://[^\\s/?#@]+(/[^\\s?#]*)?$",
      "default": "https://cert-manager.com/api",
      "description": "SCM REST API base URL, without a trailing /ssl/v1"
    },
    "customer_uri": {
      "type": "string",
      "minLength": 1,
      "maxLength": 128,
      "pattern": "^[A-Za-z0-9._~-]+$",
      "description": "Your SCM customer URI (sent as the customerUri header)"
    },
    "org_id": {
      "type": "integer",
      "minimum": 1,
      "maximum": 2147483647,
      "description": "Id of the SCM organization or department the certificates are ordered for"
    },
    "cert_type": {
      "type": "integer",
      "minimum": 1,
      "maximum": 2147483647,
      "description": "SSL certificate type id, as listed by GET /ssl/v1/types"
    },
    "term": {
      "type": "integer",
      "minimum": 1,
      "maximum": 3650,
      "description": "Term in days; must be one of the certificate type's terms"
    },
    "comments": {
      "type": "string",
      "maxLength": 1024,
      "description": "Order comments; default: the certplane certificate id"
    },
    "external_requester": {
      "type": "string",
      "minLength": 3,
      "maxLength": 254,
      "pattern": "^[^\\s@,]+@[^\\s@,]+$",
      "description": "E-mail address of the requester shown in SCM"
    },
    "custom_fields": {
      "type": "array",
      "maxItems": 64,
      "items": {
        "type": "object",
        "additionalProperties": false,
        "required": ["name", "value"],
        "properties": {
          "name": {"type": "string", "minLength": 1, "maxLength": 256},
          "value": {"type": "string", "maxLength": 4096}
        }
      },
      "description": "SCM custom fields sent with every enrollment"
    },
    "poll_interval_secs": {
      "type": "integer",
      "minimum": 1,
      "maximum": 86400,
      "default": 60,
      "description": "Seconds to wait between checks of a pending order"
    }
  }
}"#;

/// One SCM custom field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomField {
    /// The field's name as defined in SCM.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// The settings, as the schema describes them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// SCM REST API base URL.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// The customer URI.
    pub customer_uri: String,
    /// Organization (or department) id.
    pub org_id: i64,
    /// Certificate type id.
    pub cert_type: i64,
    /// Term in days.
    pub term: u32,
    /// Order comments.
    #[serde(default)]
    pub comments: Option<String>,
    /// Requester e-mail.
    #[serde(default)]
    pub external_requester: Option<String>,
    /// Custom fields.
    #[serde(default)]
    pub custom_fields: Vec<CustomField>,
    /// Seconds between polls of a pending order.
    #[serde(default = "default_poll_interval")]
    pub poll_interval_secs: u32,
}

fn default_base_url() -> String {
    DEFAULT_BASE_URL.to_string()
}

fn default_poll_interval() -> u32 {
    DEFAULT_POLL_INTERVAL_SECS
}

impl Settings {
    /// Parses and checks settings given as JSON text.
    pub fn from_json(json: &str) -> Result<Settings, ConnectorError> {
        let s: Settings = settings::settings_from_json(json)?;
        s.check()?;
        Ok(s)
    }

    /// The settings of this instance.
    pub fn load() -> Result<Settings, ConnectorError> {
        Settings::from_json(&settings::settings_json())
    }

    /// What serde cannot express. The host already checked the schema; this
    /// repeats what matters, because a bad value here ends up in an HTTP
    /// header or URL where it would fail far less clearly.
    fn check(&self) -> Result<(), ConnectorError> {
        http::parse_url(&self.base_url).map_err(|e| e.context("setting `base_url`"))?;
        let bad = |name: &str, why: &str| {
            Err(ConnectorError::invalid_config(format!(
                "setting `{name}` {why}"
            )))
        };
        if self.base_url.contains(['?', '#']) {
            return bad("base_url", "must not hold a query string or fragment");
        }
        if self.customer_uri.is_empty()
            || self.customer_uri.len() > 128
            || !self
                .customer_uri
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
        {
            return bad(
                "customer_uri",
                "must be 1 to 128 characters of letters, digits, `.`, `_`, `~` or `-`",
            );
        }
        if self.org_id < 1 || self.org_id > i64::from(i32::MAX) {
            return bad("org_id", "must be a positive SCM organization id");
        }
        if self.cert_type < 1 || self.cert_type > i64::from(i32::MAX) {
            return bad("cert_type", "must be a positive SCM certificate type id");
        }
        if self.term == 0 || self.term > 3650 {
            return bad("term", "must be between 1 and 3650 days");
        }
        if let Some(email) = &self.external_requester
            && !plausible_email(email)
        {
            return bad("external_requester", "must be one e-mail address");
        }
        if self.custom_fields.iter().any(|f| f.name.trim().is_empty()) {
            return bad("custom_fields", "holds a field without a name");
        }
        if self.poll_interval_secs == 0 || self.poll_interval_secs > 86_400 {
            return bad("poll_interval_secs", "must be between 1 and 86400");
        }
        Ok(())
    }

    /// The base URL without a trailing slash.
    pub fn base(&self) -> &str {
        self.base_url.trim_end_matches('/')
    }
}

fn plausible_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && s.len() <= 254
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',')
}

/// The API credentials. `Debug` never shows them.
#[derive(Clone)]
pub struct Credentials {
    /// SCM API login (an SCM admin with API access).
    pub login: String,
    /// Its password.
    pub password: String,
}

impl core::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Credentials")
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The secrets of this instance.
    pub fn load() -> Result<Credentials, ConnectorError> {
        let login = settings::required_secret(SECRET_LOGIN)?;
        let password = settings::required_secret(SECRET_PASSWORD)?;
        Credentials::new(login, password)
    }

    /// Checks that both values can travel as HTTP header values.
    pub fn new(login: String, password: String) -> Result<Credentials, ConnectorError> {
        for (name, value) in [(SECRET_LOGIN, &login), (SECRET_PASSWORD, &password)] {
            if value.chars().any(|c| c.is_control()) {
                return Err(ConnectorError::invalid_config(format!(
                    "secret `{name}` holds control characters (a stray newline?)"
                )));
            }
        }
        Ok(Credentials { login, password })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{"customer_uri":"acme","org_id":7,"cert_type":224,"term":365}"#;

    #[test]
    fn defaults_apply() {
        let s = Settings::from_json(MINIMAL).unwrap();
        assert_eq!(s.base(), "https://cert-manager.com/api");
        assert_eq!(s.poll_interval_secs, 60);
        assert!(s.comments.is_none() && s.external_requester.is_none());
        assert!(s.custom_fields.is_empty());
    }

    #[test]
    fn every_field_reads() {
        let s = Settings::from_json(
            r#"{"base_url":"http://127.0.0.1:9/api/","customer_uri":"c-1","org_id":1,
                "cert_type":2,"term":730,"comments":"hi","external_requester":"a@b.example",
                "custom_fields":[{"name":"cost center","value":"42"}],"poll_interval_secs":5}"#,
        )
        .unwrap();
        assert_eq!(s.base(), "http://127.0.0.1:9/api");
        assert_eq!(s.custom_fields[0].name, "cost center");
        assert_eq!(s.poll_interval_secs, 5);
    }

    #[test]
    fn bad_values_are_invalid_config_naming_the_setting() {
        for (json, setting) in [
            (r#"{"org_id":7,"cert_type":224,"term":365}"#, "customer_uri"),
            (
                r#"{"customer_uri":"a b","org_id":7,"cert_type":224,"term":365}"#,
                "customer_uri",
            ),
            (
                r#"{"customer_uri":"a","org_id":0,"cert_type":224,"term":365}"#,
                "org_id",
            ),
            (
                r#"{"customer_uri":"a","org_id":1,"cert_type":-1,"term":365}"#,
                "cert_type",
            ),
            (
                r#"{"customer_uri":"a","org_id":1,"cert_type":1,"term":0}"#,
                "term",
            ),
            (
                r#"{"customer_uri":"a","org_id":1,"cert_type":1,"term":1,"base_url":"ftp://x"}"#,
                "base_url",
            ),
            (
                r#"{"customer_uri":"a","org_id":1,"cert_type":1,"term":1,"external_requester":"nobody"}"#,
                "external_requester",
            ),
            (
                r#"{"customer_uri":"a","org_id":1,"cert_type":1,"term":1,"custom_fields":[{"name":" ","value":"x"}]}"#,
                "custom_fields",
            ),
            (
                r#"{"customer_uri":"a","org_id":1,"cert_type":1,"term":1,"poll_interval_secs":0}"#,
                "poll_interval_secs",
            ),
            (
                r#"{"customer_uri":"a","org_id":1,"cert_type":1,"term":1,"extra":1}"#,
                "extra",
            ),
        ] {
            let e = Settings::from_json(json).unwrap_err();
            assert_eq!(e.kind(), "invalid-config", "{json}");
            assert!(e.message().contains(setting), "{json}: {}", e.message());
        }
    }

    #[test]
    fn schema_describes_every_setting() {
        let schema: serde_json::Value = serde_json::from_str(SETTINGS_SCHEMA).unwrap();
        assert_eq!(schema["additionalProperties"], false);
        let props = schema["properties"].as_object().unwrap();
        for name in [
            "base_url",
            "customer_uri",
            "org_id",
            "cert_type",
            "term",
            "comments",
            "external_requester",
            "custom_fields",
            "poll_interval_secs",
        ] {
            assert!(props.contains_key(name), "{name}");
        }
        assert_eq!(props.len(), 9);
        assert_eq!(props["base_url"]["default"], DEFAULT_BASE_URL);
        assert_eq!(
            props["poll_interval_secs"]["default"],
            DEFAULT_POLL_INTERVAL_SECS
        );
    }

    #[test]
    fn credentials_refuse_newlines_and_hide_the_password() {
        let e = Credentials::new("u".into(), "p\n".into()).unwrap_err();
        assert!(e.message().contains("`password`"));
        assert!(!e.message().contains("p\n"));
        let c = Credentials::new("u".into(), "hunter2".into()).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
