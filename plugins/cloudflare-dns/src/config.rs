//! The instance's settings and secret, and the JSON Schema the host checks
//! settings against before the connector ever sees them.

use certplane_sdk::{ConnectorError, settings};
use serde::Deserialize;

/// Cloudflare's public API root.
pub const DEFAULT_BASE_URL: &str = "https://api.cloudflare.com/client/v4";

/// The shortest TTL Cloudflare accepts for a non-Enterprise zone (1 means
/// "automatic", which is 300 s: too slow for a challenge).
pub const MIN_TTL: u32 = 60;

/// Cloudflare's longest TTL.
pub const MAX_TTL: u32 = 86_400;

/// Name of the secret holding the API token.
pub const API_TOKEN: &str = "api_token";

/// JSON Schema (draft 2020-12) of the settings.
pub const SETTINGS_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "cloudflare-dns settings",
  "type": "object",
  "properties": {
    "base_url": {
      "type": "string",
      "format": "uri",
      "pattern": "^https?://[^/?#@]+(/[^?#]*)?$",
      "default": "https://api.cloudflare.com/client/v4",
      "description": "Root of the Cloudflare API v4 (no query, no credentials). Grant its scheme, host and port to the instance."
    },
    "zone_id": {
      "type": "string",
      "pattern": "^[0-9a-f]{32}$",
      "description": "The zone's id (Overview page of the zone). When unset, the zone is looked up by name with GET /zones?name=, which needs Zone:Read."
    },
    "ttl": {
      "type": "integer",
      "minimum": 60,
      "maximum": 86400,
      "default": 60,
      "description": "TTL in seconds of the TXT records created."
    }
  },
  "additionalProperties": false
}"#;

/// The settings, with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// API root without a trailing slash.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// The zone id when the operator pinned it.
    #[serde(default)]
    pub zone_id: Option<String>,
    /// TTL of created records.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
}

fn default_base_url() -> String {
    DEFAULT_BASE_URL.to_string()
}

fn default_ttl() -> u32 {
    MIN_TTL
}

impl Settings {
    /// Parses and checks a settings object given as JSON text. The host has
    /// already checked the schema; this repeats the checks that matter so a
    /// connector called with unchecked settings fails with a clear message
    /// rather than a confusing upstream error.
    pub fn from_json(json: &str) -> Result<Settings, ConnectorError> {
        let mut s: Settings = settings::settings_from_json(json)?;
        let trimmed = s.base_url.trim().trim_end_matches('/');
        if trimmed.is_empty() {
            return Err(ConnectorError::invalid_config(
                "setting `base_url` is empty",
            ));
        }
        if trimmed.contains('?') || trimmed.contains('#') {
            return Err(ConnectorError::invalid_config(format!(
                "setting `base_url` = {trimmed:?} must not hold a query or fragment"
            )));
        }
        certplane_sdk::http::parse_url(trimmed)?;
        s.base_url = trimmed.to_string();
        if let Some(id) = &s.zone_id {
            let id = id.trim();
            if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConnectorError::invalid_config(format!(
                    "setting `zone_id` = {id:?} is not a Cloudflare zone id (32 hex digits)"
                )));
            }
            s.zone_id = Some(id.to_ascii_lowercase());
        }
        if !(MIN_TTL..=MAX_TTL).contains(&s.ttl) {
            return Err(ConnectorError::invalid_config(format!(
                "setting `ttl` = {} is out of range ({MIN_TTL}..={MAX_TTL} seconds)",
                s.ttl
            )));
        }
        Ok(s)
    }

    /// The instance's settings, read from the host.
    pub fn load() -> Result<Settings, ConnectorError> {
        Settings::from_json(&settings::settings_json())
    }
}

/// The API token, from the instance's secrets.
pub fn api_token() -> Result<String, ConnectorError> {
    let token = settings::required_secret(API_TOKEN)?;
    let token = token.trim();
    // A token is sent in a header: refuse anything that could split it.
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConnectorError::invalid_config(format!(
            "secret `{API_TOKEN}` holds characters an API token cannot contain"
        )));
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply() {
        let s = Settings::from_json("{}").unwrap();
        assert_eq!(s.base_url, DEFAULT_BASE_URL);
        assert_eq!(s.zone_id, None);
        assert_eq!(s.ttl, 60);
    }

    #[test]
    fn values_are_normalised() {
        let s = Settings::from_json(
            r#"{"base_url":"http://127.0.0.1:8080/client/v4/","zone_id":"0123456789ABCDEF0123456789abcdef","ttl":120}"#,
        )
        .unwrap();
        assert_eq!(s.base_url, "http://127.0.0.1:8080/client/v4");
        assert_eq!(
            s.zone_id.as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(s.ttl, 120);
    }

    #[test]
    fn bad_values_name_the_setting() {
        for (json, setting) in [
            (r#"{"ttl":30}"#, "`ttl`"),
            (r#"{"ttl":100000}"#, "`ttl`"),
            (r#"{"zone_id":"example.com"}"#, "`zone_id`"),
            (r#"{"base_url":"https://x/v4?a=1"}"#, "`base_url`"),
            (r#"{"base_url":""}"#, "`base_url`"),
        ] {
            let e = Settings::from_json(json).unwrap_err();
            assert_eq!(e.kind(), "invalid-config", "{json}");
            assert!(e.message().contains(setting), "{json}: {}", e.message());
        }
        let e = Settings::from_json(r#"{"proxied":true}"#).unwrap_err();
        assert!(e.message().contains("proxied"), "{}", e.message());
        let e = Settings::from_json(r#"{"base_url":"ftp://x/"}"#).unwrap_err();
        assert_eq!(e.kind(), "invalid-config");
    }

    #[test]
    fn schema_is_json_and_names_every_setting() {
        let v: serde_json::Value = serde_json::from_str(SETTINGS_SCHEMA).unwrap();
        let props = v["properties"].as_object().unwrap();
        let mut names: Vec<&str> = props.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["base_url", "ttl", "zone_id"]);
        assert_eq!(v["additionalProperties"], false);
        assert_eq!(v["properties"]["ttl"]["minimum"], MIN_TTL);
    }
}
