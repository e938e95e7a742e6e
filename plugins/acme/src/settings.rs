//! The instance's settings and secret, and the per-certificate options.

use certplane_sdk::{ConnectorError, http, settings};
use serde::Deserialize;

use crate::bindings::ChallengeKind;
use crate::jws::b64_decode_lenient;

/// The secret holding the external account binding's MAC key.
pub const EAB_SECRET: &str = "eab_hmac_key";

/// JSON Schema (draft 2020-12) of the settings.
pub const SETTINGS_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "acme settings",
  "type": "object",
  "properties": {
    "directory_url": {
      "type": "string",
      "pattern": "^https?://[^\\s/?#@]+(/[^\\s]*)?$",
      "description": "The CA's ACME directory, e.g. https://acme-v02.api.letsencrypt.org/directory. Grant its scheme, host and port to the instance."
    },
    "contact": {
      "type": "array",
      "items": {"type": "string", "pattern": "^mailto:[^\\s,]+@[^\\s,]+$"},
      "maxItems": 10,
      "description": "Contact URLs registered with the account (one address per mailto:)."
    },
    "terms_of_service_agreed": {
      "type": "boolean",
      "const": true,
      "description": "You agree to the CA's terms of service (its directory's meta.termsOfService)."
    },
    "eab_kid": {
      "type": "string",
      "minLength": 1,
      "description": "Key id of the external account binding the CA issued (ZeroSSL, Google, commercial CAs); its MAC key goes into the secret eab_hmac_key."
    },
    "preferred_challenge": {
      "type": "string",
      "enum": ["http-01", "dns-01"],
      "description": "Challenge type to use when both are routed for a name; default: the first route the host lists."
    },
    "profile": {
      "type": "string",
      "minLength": 1,
      "maxLength": 64,
      "description": "Certificate profile to request (newOrder 'profile'), when the CA offers profiles."
    }
  },
  "required": ["directory_url", "terms_of_service_agreed"],
  "additionalProperties": false
}"#;

/// A challenge type the operator may prefer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ChallengeType {
    /// `http-01`.
    #[serde(rename = "http-01")]
    Http01,
    /// `dns-01`.
    #[serde(rename = "dns-01")]
    Dns01,
}

impl ChallengeType {
    /// The contract's kind.
    pub fn kind(self) -> ChallengeKind {
        match self {
            ChallengeType::Http01 => ChallengeKind::Http01,
            ChallengeType::Dns01 => ChallengeKind::Dns01,
        }
    }
}

/// The instance settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The CA's directory URL.
    pub directory_url: String,
    /// Contact URLs (`mailto:`).
    #[serde(default)]
    pub contact: Vec<String>,
    /// Must be true.
    #[serde(default)]
    pub terms_of_service_agreed: bool,
    /// External account binding key id.
    #[serde(default)]
    pub eab_kid: Option<String>,
    /// Preferred challenge type.
    #[serde(default)]
    pub preferred_challenge: Option<ChallengeType>,
    /// Certificate profile.
    #[serde(default)]
    pub profile: Option<String>,
}

/// Per-certificate options (`context.options`), overriding the settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Preferred challenge type for this certificate.
    #[serde(default)]
    pub preferred_challenge: Option<ChallengeType>,
    /// Certificate profile for this certificate.
    #[serde(default)]
    pub profile: Option<String>,
}

impl Options {
    /// Reads the options JSON object.
    pub fn from_json(json: &str) -> Result<Options, ConnectorError> {
        let json = if json.trim().is_empty() { "{}" } else { json };
        serde_json::from_str(json).map_err(|e| {
            ConnectorError::invalid_config(format!(
                "invalid certificate options for the acme issuer (known: preferred_challenge, profile): {e}"
            ))
        })
    }
}

impl Settings {
    /// The instance's settings, checked.
    pub fn load() -> Result<Settings, ConnectorError> {
        Settings::from_json(&settings::settings_json())
    }

    /// Reads and checks a settings object.
    pub fn from_json(json: &str) -> Result<Settings, ConnectorError> {
        let s: Settings = settings::settings_from_json(json)?;
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> Result<(), ConnectorError> {
        http::parse_url(&self.directory_url).map_err(|e| e.context("setting `directory_url`"))?;
        if !self.terms_of_service_agreed {
            return Err(ConnectorError::invalid_config(
                "setting `terms_of_service_agreed` must be true: read the CA's terms of service \
                 (its directory's meta.termsOfService) and agree to them",
            ));
        }
        for c in &self.contact {
            let ok = c
                .strip_prefix("mailto:")
                .is_some_and(|addr| addr.contains('@') && !addr.contains([',', ' ']));
            if !ok {
                return Err(ConnectorError::invalid_config(format!(
                    "setting `contact`: {c:?} is not a mailto: URL with one address"
                )));
            }
        }
        if self.eab_kid.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err(ConnectorError::invalid_config("setting `eab_kid` is empty"));
        }
        if self.profile.as_deref().is_some_and(|p| p.trim().is_empty()) {
            return Err(ConnectorError::invalid_config("setting `profile` is empty"));
        }
        Ok(())
    }

    /// The external account binding: key id and MAC key, when configured.
    pub fn eab(&self) -> Result<Option<(String, Vec<u8>)>, ConnectorError> {
        eab_from(self.eab_kid.as_deref(), settings::secret(EAB_SECRET))
    }
}

/// The binding from the `eab_kid` setting and the secret's value.
pub fn eab_from(
    kid: Option<&str>,
    secret: Option<String>,
) -> Result<Option<(String, Vec<u8>)>, ConnectorError> {
    let secret = secret.filter(|s| !s.trim().is_empty());
    match (kid, secret) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConnectorError::invalid_config(format!(
            "setting `eab_kid` is set but the secret `{EAB_SECRET}` (the CA's MAC key, base64url) is missing"
        ))),
        (None, Some(_)) => Err(ConnectorError::invalid_config(format!(
            "the secret `{EAB_SECRET}` is set but the setting `eab_kid` is not"
        ))),
        (Some(kid), Some(secret)) => {
            let key = b64_decode_lenient(&secret).map_err(|e| {
                ConnectorError::invalid_config(format!("secret `{EAB_SECRET}` is {e}"))
            })?;
            if key.is_empty() {
                return Err(ConnectorError::invalid_config(format!(
                    "secret `{EAB_SECRET}` decodes to nothing"
                )));
            }
            Ok(Some((kid.to_string(), key)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"{"directory_url":"https://ca.example/dir","terms_of_service_agreed":true}"#;

    #[test]
    fn settings_are_checked() {
        let s = Settings::from_json(OK).unwrap();
        assert!(s.contact.is_empty() && s.eab_kid.is_none());
        let s = Settings::from_json(
            r#"{"directory_url":"https://ca.example/dir","terms_of_service_agreed":true,
                "contact":["mailto:ops@example.com"],"preferred_challenge":"dns-01","profile":"shortlived"}"#,
        )
        .unwrap();
        assert_eq!(s.preferred_challenge, Some(ChallengeType::Dns01));
        for (bad, needle) in [
            (
                r#"{"directory_url":"https://ca/dir"}"#,
                "terms_of_service_agreed",
            ),
            (
                r#"{"directory_url":"https://ca/dir","terms_of_service_agreed":false}"#,
                "terms_of_service_agreed",
            ),
            (
                r#"{"directory_url":"ftp://ca/dir","terms_of_service_agreed":true}"#,
                "directory_url",
            ),
            (
                r#"{"directory_url":"https://ca/dir","terms_of_service_agreed":true,"contact":["ops@example.com"]}"#,
                "contact",
            ),
            (
                r#"{"directory_url":"https://ca/dir","terms_of_service_agreed":true,"contact":["mailto:a@x,b@x"]}"#,
                "contact",
            ),
            (
                r#"{"directory_url":"https://ca/dir","terms_of_service_agreed":true,"preferred_challenge":"tls-alpn-01"}"#,
                "unknown variant",
            ),
            (
                r#"{"directory_url":"https://ca/dir","terms_of_service_agreed":true,"extra":1}"#,
                "unknown field",
            ),
        ] {
            let e = Settings::from_json(bad).unwrap_err();
            assert_eq!(e.kind(), "invalid-config", "{bad}");
            assert!(e.message().contains(needle), "{bad}: {}", e.message());
        }
    }

    #[test]
    fn the_schema_is_json_and_names_every_setting() {
        let schema: serde_json::Value = serde_json::from_str(SETTINGS_SCHEMA).unwrap();
        let props = schema["properties"].as_object().unwrap();
        for name in [
            "directory_url",
            "contact",
            "terms_of_service_agreed",
            "eab_kid",
            "preferred_challenge",
            "profile",
        ] {
            assert!(props.contains_key(name), "{name}");
        }
        assert_eq!(schema["additionalProperties"], false);
    }

    #[test]
    fn eab_needs_both_halves() {
        assert_eq!(eab_from(None, None).unwrap(), None);
        assert_eq!(eab_from(None, Some(" ".into())).unwrap(), None);
        let e = eab_from(Some("kid-1"), None).unwrap_err();
        assert!(e.message().contains("eab_hmac_key"), "{}", e.message());
        assert_eq!(e.kind(), "invalid-config");
        assert_eq!(
            eab_from(None, Some("AAAA".into())).unwrap_err().kind(),
            "invalid-config"
        );
        assert_eq!(
            eab_from(Some("kid-1"), Some("!!".into()))
                .unwrap_err()
                .kind(),
            "invalid-config"
        );
        let (kid, key) = eab_from(Some("kid-1"), Some("AQID".into()))
            .unwrap()
            .unwrap();
        assert_eq!((kid.as_str(), key), ("kid-1", vec![1, 2, 3]));
    }

    #[test]
    fn options_override_or_fail_clearly() {
        assert!(Options::from_json("").unwrap().profile.is_none());
        let o = Options::from_json(r#"{"preferred_challenge":"http-01"}"#).unwrap();
        assert_eq!(o.preferred_challenge, Some(ChallengeType::Http01));
        let e = Options::from_json(r#"{"challenge":"http-01"}"#).unwrap_err();
        assert_eq!(e.kind(), "invalid-config");
    }
}
