//! The instance's settings and secret, and the JSON Schema the host checks
//! settings against before the connector ever sees them.

use certplane_sdk::{ConnectorError, Level, http, notify, settings};
use serde::Deserialize;

/// PagerDuty's Events API v2 endpoint.
pub const DEFAULT_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// `payload.source` when the operator sets none.
pub const DEFAULT_SOURCE: &str = "certplane";

/// Name of the secret holding the integration key.
pub const ROUTING_KEY: &str = "routing_key";

/// Length of an Events API v2 integration key (service or ruleset).
pub const ROUTING_KEY_LEN: usize = 32;

/// JSON Schema (draft 2020-12) of the settings.
pub const SETTINGS_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "pagerduty settings",
  "type": "object",
  "properties": {
    "events_url": {
      "type": "string",
      "format": "uri",
      "pattern": "^https?://[^/?#@]+(/[^?#]*)?$",
      "default": "https://events.pagerduty.com/v2/enqueue",
      "description": "The Events API v2 enqueue URL (change it only for a proxy or a test double). Grant its scheme, host and port to the instance."
    },
    "min_severity": {
      "enum": ["info", "warn", "error"],
      "default": "warn",
      "description": "Events below this severity trigger nothing. Resolutions are always sent: they only ever close incidents this connector opened."
    },
    "source": {
      "type": "string",
      "minLength": 1,
      "maxLength": 255,
      "default": "certplane",
      "description": "payload.source of every trigger: the system having the problem, as PagerDuty shows it."
    },
    "component": {
      "type": "string",
      "maxLength": 255,
      "description": "payload.component of every trigger. When unset: the target's name, else the agent's name, when the event names one."
    },
    "group": {
      "type": "string",
      "maxLength": 255,
      "description": "payload.group of every trigger (unset: none)."
    },
    "class": {
      "type": "string",
      "maxLength": 255,
      "description": "payload.class of every trigger. When unset: the event's kind, e.g. deployment.failed."
    },
    "send_unalerted": {
      "type": "boolean",
      "default": false,
      "description": "Also trigger an incident for events that open no condition (job.failed, ...), at or above min_severity, deduplicated by the event's id. Nothing resolves those incidents: people do."
    }
  },
  "additionalProperties": false
}"#;

/// The lowest severity that triggers an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MinSeverity {
    /// Every event.
    Info,
    /// Warnings and errors.
    #[default]
    Warn,
    /// Errors only.
    Error,
}

impl MinSeverity {
    /// Whether an event of `level` is at or above this threshold.
    pub fn admits(self, level: Level) -> bool {
        // `MinSeverity` starts at info, rank 2.
        notify::rank(level) >= self as u8 + 2
    }
}

/// The settings, with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where events are POSTed.
    #[serde(default = "default_events_url")]
    pub events_url: String,
    /// The lowest severity that triggers.
    #[serde(default)]
    pub min_severity: MinSeverity,
    /// `payload.source`.
    #[serde(default = "default_source")]
    pub source: String,
    /// `payload.component` override.
    #[serde(default)]
    pub component: Option<String>,
    /// `payload.group`.
    #[serde(default)]
    pub group: Option<String>,
    /// `payload.class` override.
    #[serde(default)]
    pub class: Option<String>,
    /// Trigger on events without conditions too.
    #[serde(default)]
    pub send_unalerted: bool,
}

fn default_events_url() -> String {
    DEFAULT_EVENTS_URL.to_string()
}

fn default_source() -> String {
    DEFAULT_SOURCE.to_string()
}

/// A blank optional text is the same as an absent one.
fn non_blank(value: Option<String>) -> Option<String> {
    value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

impl Settings {
    /// Parses and checks a settings object given as JSON text. The host has
    /// already checked the schema; the checks that matter are repeated so a
    /// connector called with unchecked settings fails with a clear message
    /// rather than PagerDuty's.
    pub fn from_json(json: &str) -> Result<Settings, ConnectorError> {
        let mut s: Settings = settings::settings_from_json(json)?;
        let url = s.events_url.trim();
        if url.contains('?') || url.contains('#') {
            return Err(ConnectorError::invalid_config(format!(
                "setting `events_url` = {:?} must not hold a query or fragment",
                http::redact_url(url)
            )));
        }
        http::parse_url(url)?;
        s.events_url = url.to_string();
        s.source = s.source.trim().to_string();
        if s.source.is_empty() {
            return Err(ConnectorError::invalid_config("setting `source` is empty"));
        }
        s.component = non_blank(s.component);
        s.group = non_blank(s.group);
        s.class = non_blank(s.class);
        Ok(s)
    }

    /// The instance's settings, read from the host.
    pub fn load() -> Result<Settings, ConnectorError> {
        Settings::from_json(&settings::settings_json())
    }
}

/// Checks an integration key: 32 ASCII letters or digits, surrounding
/// whitespace ignored. The message never contains the key.
pub fn check_routing_key(value: &str) -> Result<String, ConnectorError> {
    let key = value.trim();
    if key.len() != ROUTING_KEY_LEN || !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ConnectorError::invalid_config(format!(
            "secret `{ROUTING_KEY}` must be the {ROUTING_KEY_LEN}-character integration key of an \
             Events API v2 integration (letters and digits; got {} characters{}); a REST API \
             token is not a routing key",
            key.chars().count(),
            if key.bytes().all(|b| b.is_ascii_alphanumeric()) {
                ""
            } else {
                ", some of them not letters or digits"
            }
        )));
    }
    Ok(key.to_string())
}

/// The integration key, from the instance's secrets.
pub fn routing_key() -> Result<String, ConnectorError> {
    check_routing_key(&settings::required_secret(ROUTING_KEY)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn defaults_apply() {
        let s = Settings::from_json("{}").unwrap();
        assert_eq!(s.events_url, DEFAULT_EVENTS_URL);
        assert_eq!(s.min_severity, MinSeverity::Warn);
        assert_eq!(s.source, "certplane");
        assert_eq!((s.component, s.group, s.class), (None, None, None));
        assert!(!s.send_unalerted);
    }

    #[test]
    fn values_are_read_and_normalised() {
        let s = Settings::from_json(
            r#"{"events_url":" http://127.0.0.1:9/v2/enqueue ","min_severity":"error",
                "source":" pki ","component":"  ","group":"web","class":"certs",
                "send_unalerted":true}"#,
        )
        .unwrap();
        assert_eq!(s.events_url, "http://127.0.0.1:9/v2/enqueue");
        assert_eq!(s.min_severity, MinSeverity::Error);
        assert_eq!(s.source, "pki");
        assert_eq!(s.component, None);
        assert_eq!(s.group.as_deref(), Some("web"));
        assert_eq!(s.class.as_deref(), Some("certs"));
        assert!(s.send_unalerted);
    }

    #[test]
    fn bad_settings_are_invalid_config() {
        for (json, needle) in [
            (r#"{"events_url":"ftp://x/y"}"#, "only http and https"),
            (r#"{"events_url":"https://x/v2/enqueue?k=1"}"#, "query"),
            (r#"{"min_severity":"warning"}"#, "unknown variant"),
            (r#"{"source":"  "}"#, "`source` is empty"),
            (r#"{"routing_key":"x"}"#, "unknown field"),
            (r#"{"send_unalerted":"yes"}"#, "invalid type"),
        ] {
            let e = Settings::from_json(json).unwrap_err();
            assert_eq!(e.kind(), "invalid-config", "{json}");
            assert!(e.message().contains(needle), "{json}: {}", e.message());
            assert!(!e.message().contains("k=1"), "{}", e.message());
        }
    }

    #[test]
    fn min_severity_thresholds() {
        use Level::*;
        let admitted = |m: MinSeverity| {
            [Trace, Debug, Info, Warn, Error]
                .into_iter()
                .filter(|l| m.admits(*l))
                .count()
        };
        assert_eq!(admitted(MinSeverity::Info), 3);
        assert_eq!(admitted(MinSeverity::Warn), 2);
        assert_eq!(admitted(MinSeverity::Error), 1);
        assert!(MinSeverity::Warn.admits(Warn));
        assert!(!MinSeverity::Warn.admits(Info));
        assert!(MinSeverity::Error.admits(Error));
    }

    #[test]
    fn routing_keys() {
        let good = "R0123456789abcdefABCDEF012345678";
        assert_eq!(good.len(), 32);
        assert_eq!(check_routing_key(&format!(" {good}\n")).unwrap(), good);
        for bad in [
            "short",
            "0123456789abcdef0123456789abcdef0",
            "0123456789abcdef-123456789abcdef",
            "",
        ] {
            let e = check_routing_key(bad).unwrap_err();
            assert_eq!(e.kind(), "invalid-config", "{bad}");
            assert!(e.message().contains("`routing_key`"), "{}", e.message());
            if !bad.is_empty() {
                assert!(!e.message().contains(bad), "{}", e.message());
            }
        }
    }

    #[test]
    fn schema_is_json_with_the_defaults_the_code_applies() {
        let schema: Value = serde_json::from_str(SETTINGS_SCHEMA).unwrap();
        let props = &schema["properties"];
        assert_eq!(props["events_url"]["default"], DEFAULT_EVENTS_URL);
        assert_eq!(props["source"]["default"], DEFAULT_SOURCE);
        assert_eq!(props["min_severity"]["default"], "warn");
        assert_eq!(props["send_unalerted"]["default"], false);
        assert_eq!(schema["additionalProperties"], false);
        let names: Vec<&str> = props
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        // Every property the schema allows is a field deny_unknown_fields
        // accepts, and the other way round.
        let all = r#"{"events_url":"https://e/v2/enqueue","min_severity":"info","source":"s",
            "component":"c","group":"g","class":"k","send_unalerted":true}"#;
        let v: Value = serde_json::from_str(all).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut names = names;
        keys.sort_unstable();
        names.sort_unstable();
        assert_eq!(keys, names);
        Settings::from_json(all).unwrap();
    }
}
