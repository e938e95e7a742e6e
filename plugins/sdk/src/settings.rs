//! Settings and secrets of the plugin instance a call runs for.
//!
//! Settings are the operator's non-secret configuration; the host stores them
//! as one JSON object per instance. Secrets (API keys, private keys) are
//! stored encrypted by the host and handed only to the instance they belong
//! to. Everything here reads through the contract's `config` import, so it
//! only works inside a component running under the host.
//!
//! Errors are [`ConnectorError::InvalidConfig`] with a message that names the
//! setting or secret; messages never contain a secret's value.
//!
//! ```no_run
//! use certplane_sdk::settings;
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Settings {
//!     base_url: String,
//!     #[serde(default)]
//!     product: Option<String>,
//! }
//!
//! fn load() -> Result<(Settings, String), certplane_sdk::ConnectorError> {
//!     let s: Settings = settings::settings()?;
//!     let key = settings::required_secret("api_key")?;
//!     Ok((s, key))
//! }
//! ```

use core::fmt::Display;
use core::str::FromStr;

use serde::de::DeserializeOwned;

use crate::ConnectorError;
use crate::bindings::target::certplane::connector::config;

/// One setting by name, as the host renders it: JSON strings without their
/// quotes, numbers and booleans in JSON notation, objects and arrays as
/// compact JSON. `None` when the operator did not set it.
pub fn setting(name: &str) -> Option<String> {
    config::get_setting(name)
}

/// One setting that must be present and non-empty.
///
/// Fails with `invalid-config` ("setting `name` is required") otherwise.
pub fn required_setting(name: &str) -> Result<String, ConnectorError> {
    require_present("setting", name, setting(name))
}

/// One setting parsed with [`FromStr`], `None` when it is not set (or set to
/// an empty string).
///
/// Fails with `invalid-config` naming the setting when it does not parse.
pub fn parse_setting<T>(name: &str) -> Result<Option<T>, ConnectorError>
where
    T: FromStr,
    T::Err: Display,
{
    parse_value(name, setting(name))
}

/// All settings of this instance as one JSON object (`{}` when there are
/// none).
pub fn settings_json() -> String {
    config::settings_json()
}

/// All settings deserialized into `T` (typically a `#[derive(Deserialize)]`
/// struct with `#[serde(default)]` on optional fields).
///
/// Fails with `invalid-config` carrying serde's message (which names the
/// offending field) when the settings do not match `T`.
pub fn settings<T: DeserializeOwned>() -> Result<T, ConnectorError> {
    settings_from_json(&settings_json())
}

/// Deserializes a settings object given as JSON text into `T`, with the same
/// error mapping as [`settings`]. Useful in native unit tests, where the
/// `config` import is not available.
pub fn settings_from_json<T: DeserializeOwned>(json: &str) -> Result<T, ConnectorError> {
    let json = if json.trim().is_empty() { "{}" } else { json };
    serde_json::from_str(json)
        .map_err(|e| ConnectorError::invalid_config(format!("invalid settings: {e}")))
}

/// One secret by name; `None` when the operator did not provide it.
pub fn secret(name: &str) -> Option<String> {
    config::get_secret(name)
}

/// One secret that must be present and non-empty.
///
/// Fails with `invalid-config` ("secret `name` is required") otherwise. The
/// message never contains the value.
pub fn required_secret(name: &str) -> Result<String, ConnectorError> {
    require_present("secret", name, secret(name))
}

fn require_present(
    what: &str,
    name: &str,
    value: Option<String>,
) -> Result<String, ConnectorError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        Some(_) => Err(ConnectorError::invalid_config(format!(
            "{what} `{name}` is empty"
        ))),
        None => Err(ConnectorError::invalid_config(format!(
            "{what} `{name}` is required but not set"
        ))),
    }
}

fn parse_value<T>(name: &str, value: Option<String>) -> Result<Option<T>, ConnectorError>
where
    T: FromStr,
    T::Err: Display,
{
    match value {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) => v.trim().parse::<T>().map(Some).map_err(|e| {
            ConnectorError::invalid_config(format!("setting `{name}` = {v:?} is invalid: {e}"))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn presence_rules() {
        assert_eq!(
            require_present("secret", "k", Some("v".into())).ok(),
            Some("v".to_string())
        );
        let e = require_present("secret", "k", Some("  ".into())).unwrap_err();
        assert_eq!(e.kind(), "invalid-config");
        assert_eq!(e.message(), "secret `k` is empty");
        let e = require_present("setting", "url", None).unwrap_err();
        assert_eq!(e.message(), "setting `url` is required but not set");
    }

    #[test]
    fn parsing() {
        assert_eq!(
            parse_value::<u32>("n", Some(" 42 ".into())).ok(),
            Some(Some(42))
        );
        assert_eq!(parse_value::<u32>("n", None).ok(), Some(None));
        assert_eq!(
            parse_value::<u32>("n", Some(String::new())).ok(),
            Some(None)
        );
        let e = parse_value::<u32>("n", Some("abc".into())).unwrap_err();
        assert!(e.message().starts_with("setting `n` = \"abc\" is invalid"));
    }

    #[test]
    fn typed_settings() {
        #[derive(Debug, Deserialize)]
        struct S {
            url: String,
            #[serde(default)]
            days: Option<u32>,
        }
        let s: S = settings_from_json(r#"{"url":"https://x","days":3}"#).unwrap();
        assert_eq!((s.url.as_str(), s.days), ("https://x", Some(3)));
        let e = settings_from_json::<S>("{}").unwrap_err();
        assert_eq!(e.kind(), "invalid-config");
        assert!(
            e.message().contains("missing field `url`"),
            "{}",
            e.message()
        );
    }
}
