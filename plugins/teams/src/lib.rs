//! `teams`: a certplane notifier that posts events to a Microsoft Teams
//! chat or channel as Adaptive Cards, through a Workflows (Power Automate)
//! webhook: a flow started by "When a Teams webhook request is received"
//! that posts the card it receives. (The retired Office 365 connectors and
//! their MessageCard format are not supported.)
//!
//! Secrets:
//! - `webhook_url` (required): the flow's HTTP trigger URL, e.g.
//!   `https://prod-NN.westeurope.logic.azure.com:443/workflows/…/triggers/manual/paths/invoke?api-version=…&sig=…`
//!   or one on `*.webhook.office.com` / `*.powerplatform.com`. Its `sig`
//!   lets anyone post, so it is a secret, never a setting, and it never
//!   appears in errors or logs (they name `scheme://host:port` only). The
//!   instance's host grants must name its scheme, host and port.
//!
//! Settings (all optional):
//! - `min_severity`: `trace`, `debug`, `info` (default), `warn` or `error`;
//!   events below it are dropped without a request.
//! - `events`: the event kinds to send (see `docs/events.md`); default all.
//!   Other kinds are dropped without a request.
//!
//! The body is a Teams message with one Adaptive Card (version 1.2):
//! `{"type": "message", "attachments": [{"contentType":
//! "application/vnd.microsoft.card.adaptive", "content": {"type":
//! "AdaptiveCard", "$schema", "version": "1.2", "body": [title, summary,
//! facts]}}]}`. The title is a bold `TextBlock` coloured by severity
//! (`attention` for error, `warning` for warn, `good` for info); the summary
//! a wrapping `TextBlock`; the facts a `FactSet` of the details
//! (certificate, DNS names, not-after, expiry stage, target, agent, last
//! heartbeat, job, issuer, owner, serial, reason) and of the event (kind,
//! subject, time, id). Values are one line each and cut with `…` (by bytes:
//! Workflows refuses messages over 28 KB): summary 1500, reason 3000, DNS
//! names 1500, others 256.
//!
//! Outcomes: 2xx is success (Workflows answers `202 Accepted`). Redirects
//! are not followed and are `invalid-config`. `400` is `rejected`; `401`,
//! `403` and `404` are `invalid-config` (wrong or regenerated URL, flow off
//! or deleted: the operator must fix the secret or the flow); `429` is
//! `rate-limited` with the `Retry-After` hint; `408`, 5xx and transport
//! failures are `transient`; other 4xx `rejected`.

use certplane_sdk::notifier::{Event, Notifier};
use certplane_sdk::notify::{self, parse_details, text_at};
use certplane_sdk::{ConnectorError, Level, PluginInfo, http, log, settings};
use serde::Deserialize;
use serde_json::{Value, json};

/// The connector's name; equals the manifest's `name`.
pub const NAME: &str = "teams";

/// Name of the secret holding the Workflows webhook URL.
pub const WEBHOOK_URL: &str = "webhook_url";

/// The attachment content type of an Adaptive Card.
pub const ADAPTIVE_CARD: &str = "application/vnd.microsoft.card.adaptive";
/// The card version: 1.2 renders in every Teams client.
pub const CARD_VERSION: &str = "1.2";

/// How much of an error answer a message quotes.
const QUOTED_BYTES: usize = 256;

/// Limits on texts, in bytes, that keep a card far below Workflows' 28 KB
/// even when JSON escaping doubles them.
pub const MAX_TITLE: usize = 256;
/// See [`MAX_TITLE`].
pub const MAX_SUMMARY: usize = 1500;
/// See [`MAX_TITLE`].
pub const MAX_REASON: usize = 3000;
/// See [`MAX_TITLE`].
pub const MAX_DNS_NAMES: usize = 1500;
/// See [`MAX_TITLE`].
pub const MAX_FACT: usize = 256;

pub use certplane_sdk::notify::{KINDS, origin, parse_level, rfc3339, scrub, title};

/// JSON Schema (draft 2020-12) of the settings.
pub const SETTINGS_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "teams settings",
  "type": "object",
  "properties": {
    "min_severity": {
      "enum": ["trace", "debug", "info", "warn", "error"],
      "default": "info",
      "description": "Events below this severity are not sent."
    },
    "events": {
      "type": "array",
      "minItems": 1,
      "uniqueItems": true,
      "items": {
        "enum": [
          "certificate.issued", "certificate.renewed", "certificate.expiring",
          "certificate.expired", "issuance.failed", "deployment.failed",
          "deployment.recovered", "verification.mismatch",
          "verification.recovered", "agent.offline", "agent.online",
          "agent.retired", "job.failed"
        ]
      },
      "description": "Event kinds to send; all when omitted."
    }
  },
  "additionalProperties": false
}"#;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    #[serde(default)]
    min_severity: Option<String>,
    #[serde(default)]
    events: Option<Vec<String>>,
}

/// The instance's settings, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Events below this are not sent.
    pub min_severity: Level,
    /// The kinds to send; `None` sends every kind.
    pub events: Option<Vec<String>>,
}

impl Settings {
    /// Parses and checks the settings object (JSON text); `invalid-config`
    /// naming the setting otherwise.
    pub fn from_json(json: &str) -> Result<Settings, ConnectorError> {
        let raw: RawSettings = settings::settings_from_json(json)?;
        let min_severity = notify::min_severity_setting(raw.min_severity.as_deref())?;
        let events = notify::events_setting(raw.events)?;
        Ok(Settings {
            min_severity,
            events,
        })
    }

    /// Why `event` is not sent, or `None` when it is.
    pub fn skip_reason(&self, event: &Event) -> Option<String> {
        notify::skip_reason(self.min_severity, self.events.as_deref(), event)
    }
}

/// Checks the `webhook_url` secret: an absolute http(s) URL. Messages never
/// quote it: its `sig` is the credential.
pub fn webhook_url(secret: &str) -> Result<String, ConnectorError> {
    if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConnectorError::invalid_config(format!(
            "secret `{WEBHOOK_URL}` contains whitespace or control characters: store the URL alone"
        )));
    }
    http::parse_url(secret).map_err(|_| {
        ConnectorError::invalid_config(format!(
            "secret `{WEBHOOK_URL}` is not an absolute https:// URL (copy the HTTP URL of the \
             flow's \"When a Teams webhook request is received\" trigger)"
        ))
    })?;
    Ok(secret.to_string())
}

/// `text` as one line (control characters become spaces), cut to at most
/// `max` bytes on a character boundary, ending in `…` when cut.
pub fn fit(text: &str, max: usize) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() <= max {
        return line;
    }
    let ellipsis = '…'.len_utf8();
    let mut end = max.saturating_sub(ellipsis);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

/// The Adaptive Card text colour that styles a severity.
pub fn color(level: Level) -> &'static str {
    match level {
        Level::Error => "Attention",
        Level::Warn => "Warning",
        Level::Info => "Good",
        Level::Debug | Level::Trace => "Default",
    }
}

/// The labelled facts of an event's details, most useful first (those of
/// [`notify::facts`], then the reason), each cut to its limit.
pub fn facts(details: &Value) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = notify::facts(details)
        .into_iter()
        .map(|(label, v)| {
            let max = if label == "DNS names" {
                MAX_DNS_NAMES
            } else {
                MAX_FACT
            };
            (label, fit(&v, max))
        })
        .collect();
    if let Some(reason) = text_at(details, "/reason") {
        out.push(("Reason", fit(&reason, MAX_REASON)));
    }
    out
}

/// The message for one event (see the crate docs).
pub fn message(event: &Event) -> Value {
    let (details, raw) = parse_details(&event.details);
    let mut title = title(&event.kind);
    let about = text_at(&details, "/certificate/name")
        .or_else(|| text_at(&details, "/agent/name"))
        .or_else(|| text_at(&details, "/certificate/id"));
    if let Some(about) = about {
        title = format!("{title}: {about}");
    }
    let summary = if event.summary.trim().is_empty() {
        title.clone()
    } else {
        event.summary.clone()
    };

    let mut facts = facts(&details);
    if let Some(raw) = raw {
        facts.push(("Details", fit(&raw, MAX_REASON)));
    }
    facts.push(("Event", fit(&event.kind, MAX_FACT)));
    if !event.subject.trim().is_empty() {
        facts.push(("Subject", fit(&event.subject, MAX_FACT)));
    }
    facts.push(("Time", rfc3339(event.occurred_at)));
    facts.push(("Event id", fit(&event.id, MAX_FACT)));
    let facts: Vec<Value> = facts
        .into_iter()
        .map(|(title, value)| json!({"title": title, "value": value}))
        .collect();

    json!({
        "type": "message",
        "attachments": [{
            "contentType": ADAPTIVE_CARD,
            "content": {
                "type": "AdaptiveCard",
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "version": CARD_VERSION,
                "body": [
                    {
                        "type": "TextBlock",
                        "text": fit(&title, MAX_TITLE),
                        "weight": "Bolder",
                        "size": "Medium",
                        "color": color(event.severity),
                        "wrap": true,
                    },
                    {
                        "type": "TextBlock",
                        "text": fit(&summary, MAX_SUMMARY),
                        "wrap": true,
                    },
                    {
                        "type": "FactSet",
                        "facts": facts,
                    },
                ],
            },
        }],
    })
}

/// The answer as one short line for messages: Workflows' JSON error as
/// `code: message`, anything else as text.
fn quoted(body: &[u8]) -> String {
    let from_json = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        let code = v.pointer("/error/code").and_then(Value::as_str);
        let message = v.pointer("/error/message").and_then(Value::as_str);
        match (code, message) {
            (Some(c), Some(m)) => Some(format!("{c}: {m}")),
            (Some(c), None) => Some(c.to_string()),
            (None, Some(m)) => Some(m.to_string()),
            (None, None) => None,
        }
    });
    let text = match from_json {
        Some(t) => t,
        None => String::from_utf8_lossy(&body[..body.len().min(QUOTED_BYTES)]).into_owned(),
    };
    fit(text.trim(), QUOTED_BYTES).trim().to_string()
}

/// The outcome of a delivery from the answer (see the crate docs).
/// `request` names the request in messages (`POST https://host:port`).
pub fn outcome(
    request: &str,
    status: u16,
    retry_after: Option<u32>,
    body: &[u8],
) -> Result<(), ConnectorError> {
    let what = notify::status_line(request, status, &quoted(body));
    match status {
        200..=299 => Ok(()),
        300..=399 => Err(ConnectorError::invalid_config(format!(
            "{what}; the delivery was redirected, which is not followed: check the secret `{WEBHOOK_URL}`"
        ))),
        401 | 403 | 404 => Err(ConnectorError::invalid_config(format!(
            "{what}; the Workflows URL is wrong or was regenerated, or the flow is off or deleted: \
             copy the trigger's URL again into the secret `{WEBHOOK_URL}`"
        ))),
        408 => Err(ConnectorError::transient(what)),
        429 => Err(ConnectorError::rate_limited(retry_after, what)),
        400..=499 => Err(ConnectorError::rejected(format!(
            "{what}; the flow refused this card"
        ))),
        _ => Err(ConnectorError::transient(what)),
    }
}

/// The connector.
pub struct Teams;

impl Notifier for Teams {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description:
                "Posts events to Microsoft Teams as Adaptive Cards through a Workflows webhook"
                    .into(),
            settings_schema: SETTINGS_SCHEMA.into(),
            secret_names: vec![WEBHOOK_URL.into()],
        }
    }

    /// Checks settings and the secret without posting: every request to the
    /// flow runs it and shows a card.
    fn validate_config() -> Result<(), ConnectorError> {
        Settings::from_json(&settings::settings_json())?;
        let url = webhook_url(&settings::required_secret(WEBHOOK_URL)?)?;
        if !url.starts_with("https://") {
            log::warn!(
                "secret `{WEBHOOK_URL}` is a plain http:// URL: its signature travels unencrypted"
            );
        }
        Ok(())
    }

    fn notify(event: Event) -> Result<(), ConnectorError> {
        let settings = Settings::from_json(&settings::settings_json())?;
        if let Some(why) = settings.skip_reason(&event) {
            log::debug!("not sending {} ({}): {why}", event.id, event.kind);
            return Ok(());
        }
        let url = webhook_url(&settings::required_secret(WEBHOOK_URL)?)?;
        let (request, response) = notify::post_to_webhook(&url, &message(&event), &event)?;
        outcome(
            &request,
            response.status(),
            response.retry_after_secs(),
            response.body(),
        )
    }
}

certplane_sdk::export_notifier!(Teams);

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(json: &str) -> Settings {
        Settings::from_json(json).unwrap()
    }

    fn event(kind: &str, severity: Level, details: Value) -> Event {
        Event {
            id: "n-1".into(),
            kind: kind.into(),
            severity,
            summary: "web-prod deployment to edge-nginx failed".into(),
            subject: "certificate/c0ffee".into(),
            occurred_at: 1_649_367_553,
            details: details.to_string(),
        }
    }

    fn card(message: &Value) -> &Value {
        &message["attachments"][0]["content"]
    }

    fn fact_list(message: &Value) -> Vec<(String, String)> {
        card(message)["body"][2]["facts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["title"].as_str().unwrap().to_string(),
                    f["value"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn settings_defaults_and_errors() {
        assert_eq!(
            settings("{}"),
            Settings {
                min_severity: Level::Info,
                events: None
            }
        );
        let s = settings(r#"{"min_severity":"error","events":["agent.offline"]}"#);
        assert_eq!(s.min_severity, Level::Error);
        assert_eq!(s.events, Some(vec!["agent.offline".to_string()]));
        for (bad, names) in [
            (r#"{"min_severity":"loud"}"#, "min_severity"),
            (r#"{"events":[]}"#, "events"),
            (r#"{"events":["agent.gone"]}"#, "agent.gone"),
            (r#"{"mention":"<!channel>"}"#, "mention"),
        ] {
            let e = Settings::from_json(bad).unwrap_err();
            assert_eq!(e.kind(), "invalid-config", "{bad}");
            assert!(e.message().contains(names), "{bad}: {}", e.message());
        }
    }

    #[test]
    fn the_schema_is_json_and_lists_every_kind() {
        let schema: Value = serde_json::from_str(SETTINGS_SCHEMA).unwrap();
        let listed: Vec<&str> = schema
            .pointer("/properties/events/items/enum")
            .and_then(Value::as_array)
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let known: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
        assert_eq!(listed, known);
    }

    #[test]
    fn filtering_by_severity_and_kind() {
        let s = settings(r#"{"min_severity":"warn","events":["certificate.expiring"]}"#);
        assert!(
            s.skip_reason(&event("certificate.expiring", Level::Info, json!({})))
                .is_some()
        );
        assert!(
            s.skip_reason(&event("certificate.expiring", Level::Warn, json!({})))
                .is_none()
        );
        assert!(
            s.skip_reason(&event("certificate.expired", Level::Error, json!({})))
                .is_some()
        );
    }

    #[test]
    fn webhook_urls() {
        let url = "https://prod-12.westeurope.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke?api-version=2016-06-01&sig=SECRETSIG";
        assert_eq!(webhook_url(url).unwrap(), url);
        assert_eq!(
            origin(url),
            "https://prod-12.westeurope.logic.azure.com:443"
        );
        for bad in [
            " https://x.example/y?sig=SECRETSIG",
            "x.example/?sig=SECRETSIG",
        ] {
            let e = webhook_url(bad).unwrap_err();
            assert_eq!(e.kind(), "invalid-config");
            assert!(!e.message().contains("SECRETSIG"), "{}", e.message());
        }
        let e = scrub(
            ConnectorError::transient(format!(
                "POST {}: connection refused",
                http::redact_url(url)
            )),
            url,
            &origin(url),
        );
        assert_eq!(
            e.message(),
            "POST https://prod-12.westeurope.logic.azure.com:443: connection refused"
        );
    }

    #[test]
    fn fitting_by_bytes() {
        assert_eq!(fit("a\nb", 10), "a b");
        assert_eq!(fit("abcdef", 6), "abcdef");
        assert_eq!(fit("abcdefg", 6), "abc…");
        let cut = fit(&"é".repeat(1000), 100);
        assert!(cut.len() <= 100 && cut.ends_with('…'), "{cut}");
    }

    fn deployment_details() -> Value {
        json!({
            "schema_version": 1,
            "certificate": {
                "id": "c0ffee", "name": "web-prod",
                "dns_names": ["www.example.com", "example.com"],
                "owner": null, "issuer": "letsencrypt", "serial": null,
                "not_after": "2027-03-01T12:00:00Z"
            },
            "target": {"id": "t1", "name": "edge-nginx", "plugin": "nginx", "agent_id": "host"},
            "job": {"id": "j1", "type": "deploy", "attempts": 1},
            "reason": "action nginx-test exited with status 1:\nemerg",
        })
    }

    #[test]
    fn card_shape() {
        let m = message(&event(
            "deployment.failed",
            Level::Error,
            deployment_details(),
        ));
        assert_eq!(m["type"], "message");
        assert_eq!(m["attachments"].as_array().unwrap().len(), 1);
        assert_eq!(m["attachments"][0]["contentType"], ADAPTIVE_CARD);
        let c = card(&m);
        assert_eq!(c["type"], "AdaptiveCard");
        assert_eq!(c["version"], "1.2");
        assert_eq!(
            c["$schema"],
            "http://adaptivecards.io/schemas/adaptive-card.json"
        );
        let body = c["body"].as_array().unwrap();
        assert_eq!(body.len(), 3);
        assert_eq!(
            body[0],
            json!({"type": "TextBlock", "text": "Deployment failed: web-prod",
                   "weight": "Bolder", "size": "Medium", "color": "Attention", "wrap": true})
        );
        assert_eq!(
            body[1],
            json!({"type": "TextBlock", "text": "web-prod deployment to edge-nginx failed", "wrap": true})
        );
        let facts = fact_list(&m);
        let expected: Vec<(String, String)> = [
            ("Certificate", "web-prod"),
            ("DNS names", "www.example.com, example.com"),
            ("Not after", "2027-03-01T12:00:00Z"),
            ("Target", "edge-nginx (nginx)"),
            ("Agent", "host"),
            ("Job", "deploy, 1 attempt"),
            ("Issuer", "letsencrypt"),
            ("Reason", "action nginx-test exited with status 1: emerg"),
            ("Event", "deployment.failed"),
            ("Subject", "certificate/c0ffee"),
            ("Time", "2022-04-07T21:39:13Z"),
            ("Event id", "n-1"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(facts, expected);
    }

    #[test]
    fn severity_colours() {
        for (level, colour) in [
            (Level::Error, "Attention"),
            (Level::Warn, "Warning"),
            (Level::Info, "Good"),
            (Level::Debug, "Default"),
        ] {
            let m = message(&event(
                "agent.retired",
                level,
                json!({"agent": {"name": "edge-1"}}),
            ));
            assert_eq!(card(&m)["body"][0]["color"], colour);
            assert_eq!(card(&m)["body"][0]["text"], "Agent retired: edge-1");
        }
    }

    #[test]
    fn huge_data_stays_small() {
        let names: Vec<String> = (0..2000).map(|i| format!("host-{i}.example.com")).collect();
        let details = json!({
            "certificate": {"name": "\"".repeat(5000), "dns_names": names,
                            "issuer": "\\".repeat(5000), "owner": "é".repeat(5000)},
            "target": {"name": "\"".repeat(5000), "plugin": "x"},
            "agent": {"name": "\"".repeat(5000), "last_heartbeat_at": "\"".repeat(5000)},
            "job": {"type": "\"".repeat(5000), "attempts": 2},
            "reason": "\"".repeat(50_000),
        });
        let mut e = event(&"k".repeat(5000), Level::Error, details);
        e.summary = "\"".repeat(50_000);
        e.id = "\"".repeat(5000);
        e.subject = "\"".repeat(5000);
        let body = serde_json::to_vec(&message(&e)).unwrap();
        assert!(body.len() < 28_000, "{}", body.len());
    }

    #[test]
    fn details_that_are_not_an_object_are_a_fact() {
        let mut e = event("job.failed", Level::Error, json!({}));
        e.details = "free form".into();
        let facts = fact_list(&message(&e));
        assert_eq!(facts[0], ("Details".to_string(), "free form".to_string()));
    }

    #[test]
    fn status_outcomes() {
        let r = "POST https://x.example";
        assert!(outcome(r, 200, None, b"").is_ok());
        assert!(outcome(r, 202, None, b"").is_ok());
        let e = outcome(
            r,
            400,
            None,
            br#"{"error":{"code":"InvalidRequestContent","message":"bad card"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.kind(), "rejected");
        assert!(
            e.message()
                .contains("HTTP 400: InvalidRequestContent: bad card"),
            "{}",
            e.message()
        );
        for status in [301, 401, 403, 404] {
            assert_eq!(
                outcome(r, status, None, b"").unwrap_err().kind(),
                "invalid-config",
                "{status}"
            );
        }
        match outcome(r, 429, Some(12), b"").unwrap_err() {
            ConnectorError::RateLimited(l) => assert_eq!(l.retry_after_secs, Some(12)),
            other => panic!("{other:?}"),
        }
        for status in [408, 500, 502, 503] {
            assert_eq!(
                outcome(r, status, None, b"").unwrap_err().kind(),
                "transient",
                "{status}"
            );
        }
        assert_eq!(outcome(r, 413, None, b"").unwrap_err().kind(), "rejected");
    }
}
