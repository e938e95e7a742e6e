//! `pagerduty`: a certplane notifier that opens and resolves PagerDuty
//! incidents through the [Events API v2](https://developer.pagerduty.com/docs/events-api-v2/overview).
//!
//! Settings (see [`config::SETTINGS_SCHEMA`]):
//! - `events_url` (default `https://events.pagerduty.com/v2/enqueue`): the
//!   instance's grants must name its scheme, host and port;
//! - `min_severity` (`info` | `warn` | `error`, default `warn`): events below
//!   it trigger nothing; resolutions are always sent;
//! - `source` (default `certplane`), `component`, `group`, `class`: the
//!   trigger payload's fields (`component` defaults to the target's, else
//!   the agent's name; `class` to the event's kind);
//! - `send_unalerted` (default `false`): also trigger on events that open
//!   no condition (see below).
//!
//! Secrets:
//! - `routing_key` (required): the 32-character integration key of an
//!   Events API v2 integration. It travels only in request bodies; it is
//!   never logged or put in an error.
//!
//! Mapping (see [`mapping::plan`]): every entry of `details.alerts` (see
//! `docs/events.md`) is one request. `triggered` → `event_action: trigger`,
//! `dedup_key` `certplane:<key>`, payload `{summary, source, severity,
//! timestamp, component, group, class, custom_details}`; `resolved` →
//! `event_action: resolve` with the same `dedup_key`. Severity: an expired
//! certificate is `critical`; otherwise error → `error`, warn → `warning`,
//! info → `info`. Events without alerts (`job.failed`, a first
//! `certificate.issued`) send nothing unless `send_unalerted` is set; then
//! they trigger with `dedup_key` `certplane:event:<event id>`, and only a
//! person resolves that incident. The host retries a failed event as a
//! whole with the same id; every request is then repeated with the same
//! `dedup_key`, which PagerDuty applies to the one open incident (a resolve
//! of a resolved incident is dropped), so retries open nothing new.
//!
//! Outcomes (see [`outcome`]): 2xx (PagerDuty answers 202) is success. 400
//! naming the routing key is `invalid-config` (the host disables the
//! notifier until its secret is fixed); any other 400 is `rejected`, quoting
//! PagerDuty's `status`, `message` and `errors`. 401/403 are `unauthorized`;
//! 404/405 and redirects (not followed) are `invalid-config`: `events_url`
//! is not the Events API. 429 is `rate-limited` with the `Retry-After` hint
//! when given (else the host's backoff); 5xx, 408 and transport failures
//! are `transient` (a 5xx with `Retry-After` is `rate-limited`); other 4xx
//! are `rejected`.

pub mod config;
pub mod mapping;

use core::time::Duration;

use certplane_sdk::notifier::{Event, Notifier};
use certplane_sdk::notify::{self, one_line};
use certplane_sdk::{ConnectorError, PluginInfo, http, log};
use serde::Deserialize;
use serde_json::Value;

use config::Settings;
use mapping::Planned;

/// The connector's name; equals the manifest's `name`.
pub const NAME: &str = "pagerduty";

/// Connect timeout of one request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to wait for PagerDuty's answer to one request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// PagerDuty's answers are small JSON objects, only quoted in errors.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// How much of an answer that is not PagerDuty's JSON an error quotes.
const BODY_SNIPPET: usize = 256;

pub use certplane_sdk::notify::rfc3339;

/// PagerDuty's JSON answer: `{"status", "message", "dedup_key"}` on
/// success, `{"status", "message", "errors": [...]}` on failure.
#[derive(Debug, Default, Deserialize)]
struct Answer {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    errors: Vec<Value>,
}

impl Answer {
    fn parse(body: &[u8]) -> Option<Answer> {
        serde_json::from_slice::<Answer>(body)
            .ok()
            .filter(|a| a.status.is_some() || a.message.is_some() || !a.errors.is_empty())
    }

    /// `status: message (error; error)`.
    fn explain(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        parts.extend(self.status.clone());
        parts.extend(self.message.clone());
        let mut text = parts.join(": ");
        let errors: Vec<String> = self
            .errors
            .iter()
            .map(|e| match e {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        if !errors.is_empty() {
            text.push_str(&format!(" ({})", errors.join("; ")));
        }
        one_line(&text)
    }
}

/// What the answer's body says: PagerDuty's fields when it is their JSON,
/// else the start of the body.
fn explain(body: &[u8]) -> String {
    match Answer::parse(body) {
        Some(a) => a.explain(),
        None => {
            let cut = &body[..body.len().min(BODY_SNIPPET)];
            let mut text = one_line(&String::from_utf8_lossy(cut));
            if body.len() > BODY_SNIPPET {
                text.push_str(" [...]");
            }
            text
        }
    }
}

/// The outcome of one request from PagerDuty's answer (see the crate docs).
/// `request` names the request in messages; it never holds the key.
pub fn outcome(
    request: &str,
    status: u16,
    retry_after: Option<u32>,
    location: Option<&str>,
    body: &[u8],
) -> Result<(), ConnectorError> {
    let what = || notify::status_line(request, status, &explain(body));
    match status {
        200..=299 => Ok(()),
        300..=399 => Err(ConnectorError::invalid_config(format!(
            "{}; redirected to {}, which is not followed: set `events_url` to the Events API v2 \
             enqueue URL",
            what(),
            location.map(http::redact_url).unwrap_or("(no Location)")
        ))),
        // PagerDuty refuses an unknown or malformed integration key with a
        // 400 like any invalid event; only the operator can fix it, and
        // every later event would fail the same way.
        400 if names_the_routing_key(body) => Err(ConnectorError::invalid_config(format!(
            "{}; check secret `{}`: it must be the integration key of an Events API v2 \
             integration",
            what(),
            config::ROUTING_KEY
        ))),
        401 | 403 => Err(ConnectorError::unauthorized(what())),
        404 | 405 => Err(ConnectorError::invalid_config(format!(
            "{}; this is not the Events API v2: check `events_url`",
            what()
        ))),
        408 => Err(ConnectorError::transient(what())),
        429 => Err(ConnectorError::rate_limited(retry_after, what())),
        500..=599 if retry_after.is_some() => {
            Err(ConnectorError::rate_limited(retry_after, what()))
        }
        500..=599 => Err(ConnectorError::transient(what())),
        // Any other invalid event (400) and the rest of 4xx: this event
        // will never be accepted as it is.
        400..=499 => Err(ConnectorError::rejected(what())),
        _ => Err(ConnectorError::transient(what())),
    }
}

/// Whether a 400 answer blames the routing (integration) key.
fn names_the_routing_key(body: &[u8]) -> bool {
    let text = match Answer::parse(body) {
        Some(a) => a.explain(),
        None => String::from_utf8_lossy(body).into_owned(),
    }
    .to_ascii_lowercase();
    ["routing_key", "routing key", "integration key"]
        .iter()
        .any(|needle| text.contains(needle))
}

/// Sends one request.
fn send(url: &str, routing_key: &str, planned: &Planned) -> Result<(), ConnectorError> {
    let body = serde_json::to_vec(&planned.body(routing_key))
        .map_err(|e| ConnectorError::rejected(format!("cannot encode the event: {e}")))?;
    let request = format!(
        "{} {}: POST {}",
        planned.action.as_str(),
        planned.dedup_key,
        http::redact_url(url)
    );
    let response = http::Request::post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .timeout(CONNECT_TIMEOUT, READ_TIMEOUT)
        .max_response_bytes(MAX_RESPONSE_BYTES)
        .body(body)
        .send()
        .map_err(|e| e.context(format!("{} {}", planned.action.as_str(), planned.dedup_key)))?;
    outcome(
        &request,
        response.status(),
        response.retry_after_secs(),
        response.header("location"),
        response.body(),
    )?;
    log::info!("{request}: HTTP {}", response.status());
    Ok(())
}

fn notify(event: &Event) -> Result<(), ConnectorError> {
    let settings = Settings::load()?;
    let routing_key = config::routing_key()?;
    let planned = mapping::plan(event, &settings)?;
    if planned.is_empty() {
        log::debug!(
            "event {} ({}): no condition to trigger or resolve; nothing sent",
            event.id,
            event.kind
        );
        return Ok(());
    }
    let total = planned.len();
    for (i, p) in planned.iter().enumerate() {
        // Stop at the first failure: the host retries the whole event, and
        // the requests already accepted are deduplicated by their key.
        send(&settings.events_url, &routing_key, p).map_err(|e| {
            if total > 1 {
                e.context(format!(
                    "event {} ({}), request {} of {total}",
                    event.id,
                    event.kind,
                    i + 1
                ))
            } else {
                e.context(format!("event {} ({})", event.id, event.kind))
            }
        })?;
    }
    Ok(())
}

/// The connector.
pub struct PagerDuty;

impl Notifier for PagerDuty {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Triggers and resolves PagerDuty incidents through the Events API v2"
                .into(),
            settings_schema: config::SETTINGS_SCHEMA.into(),
            secret_names: vec![config::ROUTING_KEY.into()],
        }
    }

    /// Local checks only: the Events API has no call that checks a key
    /// without raising an alert.
    fn validate_config() -> Result<(), ConnectorError> {
        Settings::load()?;
        config::routing_key()?;
        Ok(())
    }

    fn notify(event: Event) -> Result<(), ConnectorError> {
        notify(&event)
    }
}

certplane_sdk::export_notifier!(PagerDuty);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_matches_the_manifest() {
        let info = PagerDuty::describe();
        assert_eq!(info.name, NAME);
        assert_eq!(info.secret_names, ["routing_key"]);
        let manifest = include_str!("../plugin.toml");
        assert!(manifest.contains(&format!("name = \"{NAME}\"")));
        assert!(manifest.contains(&format!("version = \"{}\"", info.version)));
        assert!(manifest.contains("kind = \"notifier\""));
        assert!(manifest.contains("world = \"1.1.0\""));
        assert!(manifest.contains(config::DEFAULT_EVENTS_URL.trim_end_matches("/v2/enqueue")));
    }

    const R: &str = "trigger certplane:x: POST https://events.pagerduty.com/v2/enqueue";

    fn kind(r: Result<(), ConnectorError>) -> &'static str {
        r.unwrap_err().kind()
    }

    #[test]
    fn success_statuses() {
        let ok = br#"{"status":"success","message":"Event processed","dedup_key":"certplane:x"}"#;
        assert!(outcome(R, 202, None, None, ok).is_ok());
        assert!(outcome(R, 200, None, None, b"").is_ok());
    }

    #[test]
    fn a_bad_routing_key_is_invalid_config() {
        for errors in [
            r#"["Invalid routing key"]"#,
            r#"["Length of 'routing_key' is incorrect (should be 32 characters)"]"#,
        ] {
            let body = format!(
                r#"{{"status":"invalid event","message":"Event object is invalid","errors":{errors}}}"#
            );
            let e = outcome(R, 400, None, None, body.as_bytes()).unwrap_err();
            assert_eq!(e.kind(), "invalid-config", "{errors}");
            assert!(
                e.message().contains("secret `routing_key`"),
                "{}",
                e.message()
            );
            assert!(
                e.message().contains("Event object is invalid"),
                "{}",
                e.message()
            );
        }
    }

    #[test]
    fn other_400s_are_rejected_quoting_pagerduty() {
        let body = br#"{"status":"invalid event","message":"Event object is invalid","errors":["'payload.summary' is missing or blank","'payload.severity' is invalid"]}"#;
        let e = outcome(R, 400, None, None, body).unwrap_err();
        assert_eq!(e.kind(), "rejected");
        assert_eq!(
            e.message(),
            format!(
                "{R}: HTTP 400: invalid event: Event object is invalid ('payload.summary' is \
                 missing or blank; 'payload.severity' is invalid)"
            )
        );
        let e = outcome(R, 400, None, None, b"Bad Request\n").unwrap_err();
        assert_eq!(e.message(), format!("{R}: HTTP 400: Bad Request"));
        let e = outcome(R, 400, None, None, &[b'x'; 1000]).unwrap_err();
        assert!(e.message().ends_with(" [...]"), "{}", e.message());
        assert!(e.message().len() < 400, "{}", e.message());
    }

    #[test]
    fn other_statuses() {
        match outcome(R, 429, Some(30), None, b"").unwrap_err() {
            ConnectorError::RateLimited(l) => assert_eq!(l.retry_after_secs, Some(30)),
            other => panic!("{other:?}"),
        }
        match outcome(R, 429, None, None, b"").unwrap_err() {
            ConnectorError::RateLimited(l) => assert_eq!(l.retry_after_secs, None),
            other => panic!("{other:?}"),
        }
        match outcome(R, 503, Some(5), None, b"").unwrap_err() {
            ConnectorError::RateLimited(l) => assert_eq!(l.retry_after_secs, Some(5)),
            other => panic!("{other:?}"),
        }
        for s in [500, 502, 503, 504, 408] {
            assert_eq!(kind(outcome(R, s, None, None, b"")), "transient", "{s}");
        }
        for s in [401, 403] {
            assert_eq!(kind(outcome(R, s, None, None, b"")), "unauthorized", "{s}");
        }
        for s in [404, 405] {
            let e = outcome(R, s, None, None, b"").unwrap_err();
            assert_eq!(e.kind(), "invalid-config", "{s}");
            assert!(e.message().contains("`events_url`"), "{}", e.message());
        }
        let e = outcome(R, 301, None, Some("https://other/v2/enqueue?t=1"), b"").unwrap_err();
        assert_eq!(e.kind(), "invalid-config");
        assert!(
            e.message().contains("https://other/v2/enqueue"),
            "{}",
            e.message()
        );
        assert!(!e.message().contains("t=1"), "{}", e.message());
        for s in [402, 409, 413, 422] {
            assert_eq!(kind(outcome(R, s, None, None, b"")), "rejected", "{s}");
        }
        assert_eq!(kind(outcome(R, 101, None, None, b"")), "transient");
    }
}
