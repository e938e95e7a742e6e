//! Helpers shared by the notifier connectors: the event kinds of
//! `docs/events.md` and their titles, the `min_severity` / `events` filter
//! settings, timestamps, reading the details of an event and its labelled
//! facts, posting to a webhook whose URL is a secret, and the one-line
//! quotes of an answer that errors show.

use core::time::Duration;

use serde_json::{Value, json};

use crate::notifier::Event;
use crate::{ConnectorError, Level, RateLimit, http, log};

/// The event kinds of `docs/events.md`, with the words a title uses.
pub const KINDS: [(&str, &str); 13] = [
    ("certificate.issued", "Certificate issued"),
    ("certificate.renewed", "Certificate renewed"),
    ("certificate.expiring", "Certificate expiring"),
    ("certificate.expired", "Certificate expired"),
    ("issuance.failed", "Issuance failed"),
    ("deployment.failed", "Deployment failed"),
    ("deployment.recovered", "Deployment recovered"),
    ("verification.mismatch", "Verification mismatch"),
    ("verification.recovered", "Verification recovered"),
    ("agent.offline", "Agent offline"),
    ("agent.online", "Agent back online"),
    ("agent.retired", "Agent retired"),
    ("job.failed", "Job failed"),
];

/// Whether `kind` is one of [`KINDS`].
pub fn is_known_kind(kind: &str) -> bool {
    KINDS.iter().any(|(k, _)| *k == kind)
}

/// The title's words for a kind; an unknown kind is shown by name, reduced
/// to the characters kinds are made of.
pub fn title(kind: &str) -> String {
    match KINDS.iter().find(|(k, _)| *k == kind) {
        Some((_, t)) => (*t).to_string(),
        None => {
            let name: String = kind
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                .take(100)
                .collect();
            if name.is_empty() {
                "Event".into()
            } else {
                format!("Event {name}")
            }
        }
    }
}

/// A severity by its lower-case name (`warning` too).
pub fn parse_level(name: &str) -> Option<Level> {
    Some(match name.to_ascii_lowercase().as_str() {
        "trace" => Level::Trace,
        "debug" => Level::Debug,
        "info" => Level::Info,
        "warn" | "warning" => Level::Warn,
        "error" => Level::Error,
        _ => return None,
    })
}

/// Contract levels in ascending order (trace 0 ... error 4).
pub fn rank(level: Level) -> u8 {
    match level {
        Level::Trace => 0,
        Level::Debug => 1,
        Level::Info => 2,
        Level::Warn => 3,
        Level::Error => 4,
    }
}

/// The `min_severity` setting: `info` when absent; `invalid-config` naming
/// the setting when it is not a severity.
pub fn min_severity_setting(value: Option<&str>) -> Result<Level, ConnectorError> {
    match value.map(str::trim) {
        None => Ok(Level::Info),
        Some(name) => parse_level(name).ok_or_else(|| {
            ConnectorError::invalid_config(format!(
                "setting `min_severity`: {name:?} is not one of trace, debug, info, warn, error"
            ))
        }),
    }
}

/// The `events` setting: `None` (every kind) when absent; `invalid-config`
/// when it is empty or names a kind not in [`KINDS`].
pub fn events_setting(value: Option<Vec<String>>) -> Result<Option<Vec<String>>, ConnectorError> {
    match value {
        None => Ok(None),
        Some(list) if list.is_empty() => Err(ConnectorError::invalid_config(
            "setting `events` is empty, which would send nothing: omit it to send every kind",
        )),
        Some(list) => {
            if let Some(unknown) = list.iter().find(|k| !is_known_kind(k)) {
                let known: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
                return Err(ConnectorError::invalid_config(format!(
                    "setting `events`: {unknown:?} is not an event kind; known kinds: {}",
                    known.join(", ")
                )));
            }
            Ok(Some(list))
        }
    }
}

/// Why `event` is not sent under the `min_severity` and `events` settings,
/// or `None` when it is.
pub fn skip_reason(
    min_severity: Level,
    events: Option<&[String]>,
    event: &Event,
) -> Option<String> {
    if rank(event.severity) < rank(min_severity) {
        return Some(format!(
            "severity {} is below min_severity {}",
            log::level_name(event.severity),
            log::level_name(min_severity)
        ));
    }
    match events {
        Some(kinds) if !kinds.contains(&event.kind) => {
            Some(format!("kind {} is not in `events`", event.kind))
        }
        _ => None,
    }
}

/// Unix seconds as RFC 3339 UTC (`2022-04-07T21:39:13Z`).
pub fn rfc3339(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let rem = unix_secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

/// A scalar of the details as text; `None` for absent, null, empty,
/// arrays and objects.
pub fn text_at(details: &Value, pointer: &str) -> Option<String> {
    match details.pointer(pointer)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `scheme://host[:port]` of a webhook URL: all of it that messages may
/// show.
pub fn origin(url: &str) -> String {
    match http::parse_url(url) {
        Ok(parts) => format!(
            "{}://{}",
            if parts.https { "https" } else { "http" },
            parts.authority
        ),
        Err(_) => "(the webhook URL)".into(),
    }
}

/// `err` with the webhook URL (in full or without its query, as the SDK
/// quotes it) replaced by `shown` in its message.
pub fn scrub(err: ConnectorError, url: &str, shown: &str) -> ConnectorError {
    let clean = |m: String| {
        let m = m.replace(url, shown);
        let bare = http::redact_url(url);
        if bare.is_empty() {
            m
        } else {
            m.replace(bare, shown)
        }
    };
    match err {
        ConnectorError::InvalidConfig(m) => ConnectorError::InvalidConfig(clean(m)),
        ConnectorError::Unauthorized(m) => ConnectorError::Unauthorized(clean(m)),
        ConnectorError::Rejected(m) => ConnectorError::Rejected(clean(m)),
        ConnectorError::Transient(m) => ConnectorError::Transient(clean(m)),
        ConnectorError::Unsupported(m) => ConnectorError::Unsupported(clean(m)),
        ConnectorError::RateLimited(r) => ConnectorError::RateLimited(RateLimit {
            retry_after_secs: r.retry_after_secs,
            message: clean(r.message),
        }),
    }
}

/// The labelled facts of an event's details, most useful first. Values are
/// raw (not yet escaped).
pub fn facts(details: &Value) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut push = |label: &'static str, value: Option<String>| {
        if let Some(v) = value {
            out.push((label, v));
        }
    };
    push(
        "Certificate",
        text_at(details, "/certificate/name").or_else(|| text_at(details, "/certificate/id")),
    );
    let names: Vec<&str> = details
        .pointer("/certificate/dns_names")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    push("DNS names", (!names.is_empty()).then(|| names.join(", ")));
    push("Not after", text_at(details, "/certificate/not_after"));
    let stage = text_at(details, "/expiring/stage");
    let hours = text_at(details, "/expiring/hours_left");
    push(
        "Expiry warning",
        match (stage, hours) {
            (Some(s), Some(h)) => Some(format!("{s} stage, {h} hours left")),
            (Some(s), None) => Some(format!("{s} stage")),
            (None, Some(h)) => Some(format!("{h} hours left")),
            (None, None) => None,
        },
    );
    let target = text_at(details, "/target/name").or_else(|| text_at(details, "/target/id"));
    let plugin = text_at(details, "/target/plugin");
    push(
        "Target",
        match (target, plugin) {
            (Some(t), Some(p)) => Some(format!("{t} ({p})")),
            (t, _) => t,
        },
    );
    push(
        "Agent",
        text_at(details, "/agent/name")
            .or_else(|| text_at(details, "/agent/id"))
            .or_else(|| text_at(details, "/target/agent_id")),
    );
    push(
        "Last heartbeat",
        text_at(details, "/agent/last_heartbeat_at"),
    );
    let job = text_at(details, "/job/type");
    let attempts = details.pointer("/job/attempts").and_then(Value::as_u64);
    push(
        "Job",
        match (job, attempts) {
            (Some(t), Some(1)) => Some(format!("{t}, 1 attempt")),
            (Some(t), Some(n)) => Some(format!("{t}, {n} attempts")),
            (t, _) => t,
        },
    );
    push("Issuer", text_at(details, "/certificate/issuer"));
    push("Owner", text_at(details, "/certificate/owner"));
    push("Serial", text_at(details, "/certificate/serial"));
    out
}

/// The event's details as JSON: an object, or `None` plus the raw text when
/// it is something else (for the notifier to show as it sees fit).
pub fn parse_details(details: &str) -> (Value, Option<String>) {
    if details.trim().is_empty() {
        return (json!({}), None);
    }
    match serde_json::from_str::<Value>(details) {
        Ok(v @ Value::Object(_)) => (v, None),
        _ => (json!({}), Some(details.to_string())),
    }
}

/// Connect timeout of a webhook delivery.
pub const WEBHOOK_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to wait for a webhook's answer.
pub const WEBHOOK_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Webhooks answer briefly: keep little of whatever comes back.
pub const WEBHOOK_MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// POSTs `message` (JSON) about `event` to a webhook whose URL is a secret.
/// Returns the request as messages may name it (`POST scheme://host:port`,
/// see [`origin`]) and the answer; an error shows no more of the URL than
/// that.
pub fn post_to_webhook(
    url: &str,
    message: &Value,
    event: &Event,
) -> Result<(String, http::Response), ConnectorError> {
    let shown = origin(url);
    let request = format!("POST {shown}");
    log::debug!("sending {} ({}) to {shown}", event.id, event.kind);
    let response = http::Request::post(url)
        .json(message)?
        .timeout(WEBHOOK_CONNECT_TIMEOUT, WEBHOOK_READ_TIMEOUT)
        .max_response_bytes(WEBHOOK_MAX_RESPONSE_BYTES)
        .send()
        .map_err(|e| scrub(e, url, &shown))?;
    Ok((request, response))
}

/// `text` as one line: control characters (line breaks too) become spaces,
/// and the ends are trimmed.
pub fn one_line(text: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    line.trim().to_string()
}

/// The first `max` bytes of an answer's body as one line, for messages.
pub fn quoted(body: &[u8], max: usize) -> String {
    one_line(&String::from_utf8_lossy(&body[..body.len().min(max)]))
}

/// How errors name a refused request: `POST https://host: HTTP 404`, then
/// `: said` when the answer said something.
pub fn status_line(request: &str, status: u16, said: &str) -> String {
    if said.is_empty() {
        format!("{request}: HTTP {status}")
    } else {
        format!("{request}: HTTP {status}: {said}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_649_367_553), "2022-04-07T21:39:13Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn titles() {
        assert_eq!(title("agent.online"), "Agent back online");
        assert_eq!(title("x y!"), "Event xy");
        assert_eq!(title("  "), "Event");
    }
}
