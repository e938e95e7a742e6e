//! `webhook`: a certplane notifier that POSTs every event as JSON to one URL,
//! signed per [Standard Webhooks](https://www.standardwebhooks.com/).
//!
//! Settings:
//! - `url` (required): the receiver, `http://` or `https://`. The instance's
//!   grants must name its scheme, host and port.
//!
//! Secrets:
//! - `signing_secret` (required): `whsec_` followed by the base64 of the
//!   HMAC key, as Standard Webhooks libraries generate it.
//!
//! Every request carries
//! - `webhook-id`: the event's id, the same across the host's retries, so
//!   receivers can deduplicate;
//! - `webhook-timestamp`: the send time in Unix seconds;
//! - `webhook-signature`: `v1,<base64 HMAC-SHA256>` over
//!   `"{id}.{timestamp}.{raw body}"`.
//!
//! The body is
//! `{"type": kind, "timestamp": RFC 3339 of occurred-at, "data": {"id",
//! "subject", "summary", "severity", "details"}}`.
//!
//! Outcomes: 2xx is success. Redirects are not followed: a 3xx is
//! `rejected`, naming the `Location` so the operator can fix `url`. 410 is
//! `invalid-config` (the endpoint is gone: the host disables the notifier
//! until its configuration is updated). 429, 502, 503 and
//! 504 are `rate-limited`, with the `Retry-After` hint when given. Other 5xx
//! and transport failures are `transient`; other 4xx are `rejected`.

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use certplane_sdk::notifier::{Event, Notifier};
use certplane_sdk::{ConnectorError, PluginInfo, http, log, notify, settings};
use core::time::Duration;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// The connector's name; equals the manifest's `name`.
pub const NAME: &str = "webhook";

/// Prefix of a Standard Webhooks signing secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Name of the signing secret.
pub const SIGNING_SECRET: &str = "signing_secret";

/// Connect timeout of a delivery.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to wait for the receiver's answer.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The receiver's answer is only quoted in errors: keep little of it.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// JSON Schema (draft 2020-12) of the settings.
pub const SETTINGS_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "webhook settings",
  "type": "object",
  "required": ["url"],
  "properties": {
    "url": {
      "type": "string",
      "format": "uri",
      "description": "Receiver URL (http or https). Grant its scheme, host and port to the instance."
    }
  },
  "additionalProperties": false
}"#;

/// A base64 decoder that accepts the secret with or without padding.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The HMAC key of a `whsec_...` secret (the prefix is optional).
///
/// Fails with `invalid-config` when the rest is not base64 or is empty; the
/// message never contains the secret.
pub fn signing_key(secret: &str) -> Result<Vec<u8>, ConnectorError> {
    let encoded = secret.trim();
    let encoded = encoded.strip_prefix(SECRET_PREFIX).unwrap_or(encoded);
    let key = LENIENT.decode(encoded).map_err(|e| {
        ConnectorError::invalid_config(format!(
            "secret `{SIGNING_SECRET}` must be `{SECRET_PREFIX}` followed by base64: {e}"
        ))
    })?;
    if key.is_empty() {
        return Err(ConnectorError::invalid_config(format!(
            "secret `{SIGNING_SECRET}` holds an empty key"
        )));
    }
    Ok(key)
}

/// The `webhook-signature` value: `v1,` and the base64 HMAC-SHA256 of
/// `"{id}.{timestamp}.{body}"` under `key`.
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length; the error case cannot happen.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The contract's severity as a lower-case word.
pub use certplane_sdk::log::level_name as severity_name;
pub use certplane_sdk::notify::rfc3339;

/// The JSON body of one event.
pub fn payload(event: &Event) -> Value {
    let details = if event.details.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str(&event.details)
            .unwrap_or_else(|_| Value::String(event.details.clone()))
    };
    json!({
        "type": event.kind,
        "timestamp": rfc3339(event.occurred_at),
        "data": {
            "id": event.id,
            "subject": event.subject,
            "summary": event.summary,
            "severity": severity_name(event.severity),
            "details": details,
        }
    })
}

/// The outcome of a delivery from the receiver's status (see the crate
/// docs). `request` names the request in messages.
pub fn outcome(
    request: &str,
    status: u16,
    retry_after: Option<u32>,
    location: Option<&str>,
    body: &[u8],
) -> Result<(), ConnectorError> {
    let what = || notify::status_line(request, status, &notify::quoted(body, 256));
    match status {
        200..=299 => Ok(()),
        300..=399 => Err(ConnectorError::rejected(format!(
            "{}; redirected to {}, which is not followed: set `url` to the final address",
            what(),
            location.map(http::redact_url).unwrap_or("(no Location)")
        ))),
        // The configured URL will never work again: a configuration error,
        // on which the host disables the notifier until it is updated.
        410 => Err(ConnectorError::invalid_config(format!(
            "{}; the endpoint is gone: update `url`",
            what()
        ))),
        429 | 502 | 503 | 504 => Err(ConnectorError::rate_limited(retry_after, what())),
        500..=599 => Err(ConnectorError::transient(what())),
        400..=499 => Err(ConnectorError::rejected(what())),
        _ => Err(ConnectorError::transient(what())),
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The connector.
pub struct Webhook;

impl Notifier for Webhook {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Delivers events as JSON POSTs signed per Standard Webhooks".into(),
            settings_schema: SETTINGS_SCHEMA.into(),
            secret_names: vec![SIGNING_SECRET.into()],
        }
    }

    fn validate_config() -> Result<(), ConnectorError> {
        http::parse_url(&settings::required_setting("url")?)?;
        signing_key(&settings::required_secret(SIGNING_SECRET)?)?;
        Ok(())
    }

    fn notify(event: Event) -> Result<(), ConnectorError> {
        let url = settings::required_setting("url")?;
        http::parse_url(&url)?;
        let key = signing_key(&settings::required_secret(SIGNING_SECRET)?)?;
        let body = serde_json::to_vec(&payload(&event))
            .map_err(|e| ConnectorError::rejected(format!("cannot encode the event: {e}")))?;
        let timestamp = now_unix();
        let signature = sign(&key, &event.id, timestamp, &body);
        log::debug!(
            "delivering {} ({}) to {}",
            event.id,
            event.kind,
            http::redact_url(&url)
        );
        let response = http::Request::post(url.as_str())
            .header("content-type", "application/json")
            .header("webhook-id", event.id.as_str())
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .timeout(CONNECT_TIMEOUT, READ_TIMEOUT)
            .max_response_bytes(MAX_RESPONSE_BYTES)
            .body(body)
            .send()?;
        outcome(
            &format!("POST {}", http::redact_url(&url)),
            response.status(),
            response.retry_after_secs(),
            response.header("location"),
            response.body(),
        )
    }
}

certplane_sdk::export_notifier!(Webhook);

#[cfg(test)]
mod tests {
    use super::*;
    use certplane_sdk::Level;

    #[test]
    fn standard_webhooks_test_vector() {
        let key = signing_key("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        assert_eq!(
            sign(&key, "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1_649_367_553, body),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
        // The prefix is optional; a different timestamp changes the signature.
        let bare = signing_key("C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(bare, key);
        assert_ne!(
            sign(&key, "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1_649_367_554, body),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn bad_secrets_are_invalid_config_without_the_value() {
        for bad in ["whsec_!!!not-base64", "whsec_", "   "] {
            let e = signing_key(bad).unwrap_err();
            assert_eq!(e.kind(), "invalid-config", "{bad}");
            assert!(!e.message().contains("not-base64"), "{}", e.message());
        }
    }

    fn event(details: &str) -> Event {
        Event {
            id: "n-1".into(),
            kind: "certificate.issued".into(),
            severity: Level::Warn,
            summary: "issued web".into(),
            subject: "certificate/web".into(),
            occurred_at: 1_649_367_553,
            details: details.into(),
        }
    }

    #[test]
    fn body_shape() {
        let v = payload(&event(r#"{"serial":"01"}"#));
        assert_eq!(
            v,
            json!({
                "type": "certificate.issued",
                "timestamp": "2022-04-07T21:39:13Z",
                "data": {
                    "id": "n-1",
                    "subject": "certificate/web",
                    "summary": "issued web",
                    "severity": "warn",
                    "details": {"serial": "01"},
                }
            })
        );
        assert_eq!(
            payload(&event("")).pointer("/data/details"),
            Some(&json!({}))
        );
        assert_eq!(
            payload(&event("not json")).pointer("/data/details"),
            Some(&json!("not json"))
        );
    }

    #[test]
    fn status_outcomes() {
        let r = "POST http://x/hook";
        assert!(outcome(r, 200, None, None, b"").is_ok());
        assert!(outcome(r, 204, None, None, b"").is_ok());
        let e = outcome(r, 301, None, Some("https://y/new?tok=1"), b"").unwrap_err();
        assert_eq!(e.kind(), "rejected");
        assert!(e.message().contains("https://y/new"), "{}", e.message());
        assert!(!e.message().contains("tok=1"), "{}", e.message());
        let e = outcome(r, 410, None, None, b"gone").unwrap_err();
        assert_eq!(e.kind(), "invalid-config");
        assert!(e.message().contains("the endpoint is gone"));
        for status in [429, 502, 503, 504] {
            match outcome(r, status, Some(9), None, b"").unwrap_err() {
                ConnectorError::RateLimited(l) => assert_eq!(l.retry_after_secs, Some(9)),
                other => panic!("{status}: {other:?}"),
            }
        }
        match outcome(r, 503, None, None, b"").unwrap_err() {
            ConnectorError::RateLimited(l) => assert_eq!(l.retry_after_secs, None),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            outcome(r, 500, None, None, b"").unwrap_err().kind(),
            "transient"
        );
        assert_eq!(
            outcome(r, 501, None, None, b"").unwrap_err().kind(),
            "transient"
        );
        for status in [400, 401, 403, 404, 408, 422] {
            assert_eq!(
                outcome(r, status, None, None, b"").unwrap_err().kind(),
                "rejected",
                "{status}"
            );
        }
        let e = outcome(r, 400, None, None, b"bad\nfield").unwrap_err();
        assert_eq!(e.message(), "POST http://x/hook: HTTP 400: bad field");
    }
}
