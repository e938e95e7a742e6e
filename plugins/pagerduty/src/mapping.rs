//! From a certplane event to the Events API v2 requests it needs (see the
//! crate docs for the rules). Pure: everything here runs in native tests.

use certplane_sdk::notifier::Event;
use certplane_sdk::{ConnectorError, Level, pem};
use serde_json::{Map, Value, json};

use crate::config::Settings;

/// Every dedup key this connector sends starts with this, so its incidents
/// never collide with another tool's on the same integration.
pub const DEDUP_PREFIX: &str = "certplane:";

/// PagerDuty's limit on `dedup_key`, in characters.
pub const MAX_DEDUP_KEY_CHARS: usize = 255;

/// PagerDuty's limit on `payload.summary`, in characters.
pub const MAX_SUMMARY_CHARS: usize = 1024;

/// What one request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Opens an incident, or adds to the open one with the same key.
    Trigger,
    /// Resolves the open incident with the key (PagerDuty drops it when
    /// there is none).
    Resolve,
}

impl Action {
    /// The `event_action` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Trigger => "trigger",
            Action::Resolve => "resolve",
        }
    }
}

/// One Events API v2 request, without the routing key.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// `event_action`.
    pub action: Action,
    /// `dedup_key`.
    pub dedup_key: String,
    /// `payload` of a trigger; `None` for a resolve.
    pub payload: Option<Value>,
}

impl Planned {
    /// The request body.
    pub fn body(&self, routing_key: &str) -> Value {
        let mut body = json!({
            "routing_key": routing_key,
            "event_action": self.action.as_str(),
            "dedup_key": self.dedup_key,
        });
        if let Some(payload) = &self.payload {
            body["payload"] = payload.clone();
        }
        body
    }
}

/// The `dedup_key` of a condition key (or of `event:<id>`): the prefix and
/// the key, or, when that exceeds PagerDuty's 255 characters, the prefix,
/// the key's first characters, `#` and the SHA-256 of the whole key, so a
/// long key still maps to one stable, distinct value for trigger and
/// resolve alike.
pub fn dedup_key(key: &str) -> String {
    let full = format!("{DEDUP_PREFIX}{key}");
    if full.chars().count() <= MAX_DEDUP_KEY_CHARS {
        return full;
    }
    let digest = pem::fingerprint_sha256(key.as_bytes());
    let keep = MAX_DEDUP_KEY_CHARS - DEDUP_PREFIX.len() - 1 - digest.len();
    let head: String = key.chars().take(keep).collect();
    format!("{DEDUP_PREFIX}{head}#{digest}")
}

/// PagerDuty's severity of a trigger: `critical` for an expired
/// certificate (an outage, whatever its level), else by the event's level:
/// error → `error`, warn → `warning`, anything lower → `info`.
pub fn pd_severity(kind: &str, level: Level) -> &'static str {
    if kind == "certificate.expired" {
        return "critical";
    }
    match level {
        Level::Error => "error",
        Level::Warn => "warning",
        Level::Info | Level::Debug | Level::Trace => "info",
    }
}

/// The summary on one line, cut to PagerDuty's 1024 characters; the kind
/// and subject when the event has none (PagerDuty requires one).
pub fn summary(event: &Event) -> String {
    let line: String = event
        .summary
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let line = line.trim();
    let line = if line.is_empty() {
        format!("{} {}", event.kind, event.subject)
    } else {
        line.to_string()
    };
    if line.chars().count() <= MAX_SUMMARY_CHARS {
        return line;
    }
    let mut cut: String = line.chars().take(MAX_SUMMARY_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// The state of a condition in `details.alerts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    /// The condition is (still) wrong.
    Triggered,
    /// The condition cleared.
    Resolved,
}

/// One entry of `details.alerts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// The condition's stable key, e.g. `expiry:<certificate id>`.
    pub key: String,
    /// Opened or cleared.
    pub state: AlertState,
}

/// The event's `details` as a JSON object (`{}` when empty). Anything else
/// is `rejected`: the same event will never map.
pub fn details(event: &Event) -> Result<Map<String, Value>, ConnectorError> {
    if event.details.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(&event.details) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ConnectorError::rejected(format!(
            "event {} ({}): details are not a JSON object",
            event.id, event.kind
        ))),
        Err(e) => Err(ConnectorError::rejected(format!(
            "event {} ({}): details are not JSON: {e}",
            event.id, event.kind
        ))),
    }
}

/// The conditions of `details.alerts`, in order. A malformed list is
/// `rejected`; an entry with a state other than `triggered` or `resolved`
/// (a newer host's) is skipped, so it cannot block the ones understood.
pub fn alerts(event: &Event, details: &Map<String, Value>) -> Result<Vec<Alert>, ConnectorError> {
    let bad = |why: String| {
        ConnectorError::rejected(format!(
            "event {} ({}): details.alerts {why}",
            event.id, event.kind
        ))
    };
    let list = match details.get("alerts") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(bad("is not a list".into())),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let key = entry
            .get("key")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| bad(format!("entry {i} has no key")))?;
        let state = match entry.get("state").and_then(Value::as_str) {
            Some("triggered") => AlertState::Triggered,
            Some("resolved") => AlertState::Resolved,
            other => {
                certplane_sdk::log::warn!(
                    "event {} ({}): condition {key} has state {other:?}, which this connector \
                     does not know; skipped",
                    event.id,
                    event.kind
                );
                continue;
            }
        };
        out.push(Alert {
            key: key.to_string(),
            state,
        });
    }
    Ok(out)
}

/// `details.<object>.name` when it is a non-empty string.
fn name_of<'a>(details: &'a Map<String, Value>, object: &str) -> Option<&'a str> {
    details
        .get(object)?
        .get("name")?
        .as_str()
        .map(str::trim)
        .filter(|n| !n.is_empty())
}

/// `payload.custom_details`: what the event is about, for the responder.
fn custom_details(event: &Event, details: &Map<String, Value>, condition: Option<&str>) -> Value {
    let mut out = Map::new();
    out.insert("event_id".into(), json!(event.id));
    out.insert("kind".into(), json!(event.kind));
    out.insert("subject".into(), json!(event.subject));
    if let Some(key) = condition {
        out.insert("condition".into(), json!(key));
    }
    for field in [
        "certificate",
        "target",
        "agent",
        "job",
        "reason",
        "expiring",
    ] {
        if let Some(v) = details.get(field).filter(|v| !v.is_null()) {
            out.insert(field.into(), v.clone());
        }
    }
    Value::Object(out)
}

/// The `payload` of a trigger.
fn payload(
    event: &Event,
    details: &Map<String, Value>,
    settings: &Settings,
    condition: Option<&str>,
) -> Value {
    let mut p = json!({
        "summary": summary(event),
        "source": settings.source,
        "severity": pd_severity(&event.kind, event.severity),
        "timestamp": crate::rfc3339(event.occurred_at),
        "class": settings.class.as_deref().unwrap_or(&event.kind),
        "custom_details": custom_details(event, details, condition),
    });
    let component = settings
        .component
        .as_deref()
        .or_else(|| name_of(details, "target"))
        .or_else(|| name_of(details, "agent"));
    if let Some(c) = component {
        p["component"] = json!(c);
    }
    if let Some(g) = &settings.group {
        p["group"] = json!(g);
    }
    p
}

/// The requests for `event`, in the order to send them:
///
/// - each `details.alerts` entry: `triggered` → a trigger with
///   `certplane:<key>` when the event's level is at least `min_severity`;
///   `resolved` → a resolve with the same key, always;
/// - no alerts at all: a trigger deduplicated by `certplane:event:<id>`
///   when `send_unalerted` is set and the level is at least `min_severity`;
///   else nothing.
pub fn plan(event: &Event, settings: &Settings) -> Result<Vec<Planned>, ConnectorError> {
    let details = details(event)?;
    let alerts = alerts(event, &details)?;
    let admitted = settings.min_severity.admits(event.severity);
    let has_alerts = details
        .get("alerts")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    if !has_alerts {
        if settings.send_unalerted && admitted {
            return Ok(vec![Planned {
                action: Action::Trigger,
                dedup_key: dedup_key(&format!("event:{}", event.id)),
                payload: Some(payload(event, &details, settings, None)),
            }]);
        }
        return Ok(Vec::new());
    }
    Ok(alerts
        .iter()
        .filter_map(|a| match a.state {
            AlertState::Triggered if admitted => Some(Planned {
                action: Action::Trigger,
                dedup_key: dedup_key(&a.key),
                payload: Some(payload(event, &details, settings, Some(&a.key))),
            }),
            AlertState::Triggered => None,
            AlertState::Resolved => Some(Planned {
                action: Action::Resolve,
                dedup_key: dedup_key(&a.key),
                payload: None,
            }),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MinSeverity;

    fn event(kind: &str, severity: Level, details: Value) -> Event {
        Event {
            id: "n-1".into(),
            kind: kind.into(),
            severity,
            summary: "web-prod: deployment to edge-nginx failed".into(),
            subject: "certificate/c1".into(),
            occurred_at: 1_649_367_553,
            details: details.to_string(),
        }
    }

    fn settings() -> Settings {
        Settings::from_json("{}").unwrap()
    }

    fn full_details(alerts: Value) -> Value {
        json!({
            "schema_version": 1,
            "certificate": {"id": "c1", "name": "web-prod", "dns_names": ["www.example.com"],
                            "owner": null, "serial": null},
            "target": {"id": "t1", "name": "edge-nginx", "plugin": "nginx", "agent_id": "a1"},
            "agent": {"id": "a1", "name": "edge-1"},
            "job": {"id": "j1", "type": "deploy", "attempts": 3},
            "reason": "action nginx-test exited with status 1",
            "alerts": alerts,
        })
    }

    #[test]
    fn a_triggered_condition_becomes_a_trigger() {
        let e = event(
            "deployment.failed",
            Level::Error,
            full_details(json!([{"key": "deployment:c1:t1", "state": "triggered"}])),
        );
        let plan = plan(&e, &settings()).unwrap();
        assert_eq!(plan.len(), 1);
        let body = plan[0].body("K");
        assert_eq!(
            body,
            json!({
                "routing_key": "K",
                "event_action": "trigger",
                "dedup_key": "certplane:deployment:c1:t1",
                "payload": {
                    "summary": "web-prod: deployment to edge-nginx failed",
                    "source": "certplane",
                    "severity": "error",
                    "timestamp": "2022-04-07T21:39:13Z",
                    "component": "edge-nginx",
                    "class": "deployment.failed",
                    "custom_details": {
                        "event_id": "n-1",
                        "kind": "deployment.failed",
                        "subject": "certificate/c1",
                        "condition": "deployment:c1:t1",
                        "certificate": {"id": "c1", "name": "web-prod",
                                        "dns_names": ["www.example.com"],
                                        "owner": null, "serial": null},
                        "target": {"id": "t1", "name": "edge-nginx", "plugin": "nginx",
                                   "agent_id": "a1"},
                        "agent": {"id": "a1", "name": "edge-1"},
                        "job": {"id": "j1", "type": "deploy", "attempts": 3},
                        "reason": "action nginx-test exited with status 1",
                    }
                }
            })
        );
    }

    #[test]
    fn settings_override_component_group_class_and_source() {
        let s = Settings::from_json(
            r#"{"source":"pki.example","component":"tls","group":"web","class":"certs"}"#,
        )
        .unwrap();
        let e = event(
            "agent.offline",
            Level::Error,
            json!({"agent": {"id": "a1", "name": "edge-1"},
                   "alerts": [{"key": "agent:a1", "state": "triggered"}]}),
        );
        let p = plan(&e, &s).unwrap()[0].payload.clone().unwrap();
        assert_eq!(p["source"], "pki.example");
        assert_eq!(p["component"], "tls");
        assert_eq!(p["group"], "web");
        assert_eq!(p["class"], "certs");
        // Without the setting, the agent's name is the component.
        let p = plan(&e, &settings()).unwrap()[0].payload.clone().unwrap();
        assert_eq!(p["component"], "edge-1");
        assert!(p.get("group").is_none());
    }

    #[test]
    fn resolutions_are_sent_whatever_the_threshold() {
        let e = event(
            "certificate.renewed",
            Level::Info,
            json!({"alerts": [{"key": "expiry:c1", "state": "resolved"},
                              {"key": "issuance:c1", "state": "resolved"}]}),
        );
        let s = Settings::from_json(r#"{"min_severity":"error"}"#).unwrap();
        let plan = plan(&e, &s).unwrap();
        assert_eq!(
            plan,
            vec![
                Planned {
                    action: Action::Resolve,
                    dedup_key: "certplane:expiry:c1".into(),
                    payload: None
                },
                Planned {
                    action: Action::Resolve,
                    dedup_key: "certplane:issuance:c1".into(),
                    payload: None
                },
            ]
        );
        assert_eq!(
            plan[0].body("K"),
            json!({"routing_key": "K", "event_action": "resolve",
                   "dedup_key": "certplane:expiry:c1"})
        );
    }

    #[test]
    fn triggers_below_the_threshold_are_not_sent() {
        let warn = event(
            "certificate.expiring",
            Level::Warn,
            json!({"expiring": {"stage": "14d", "hours_left": 330},
                   "alerts": [{"key": "expiry:c1", "state": "triggered"}]}),
        );
        assert_eq!(plan(&warn, &settings()).unwrap().len(), 1);
        let s = Settings::from_json(r#"{"min_severity":"error"}"#).unwrap();
        assert!(plan(&warn, &s).unwrap().is_empty());
        let last = event(
            "certificate.expiring",
            Level::Error,
            json!({"alerts": [{"key": "expiry:c1", "state": "triggered"}]}),
        );
        let p = plan(&last, &s).unwrap();
        assert_eq!(p[0].payload.as_ref().unwrap()["severity"], "error");
    }

    #[test]
    fn events_without_alerts_need_send_unalerted() {
        let e = event(
            "job.failed",
            Level::Error,
            json!({"job": {"id": "j9", "type": "revoke", "attempts": 8}, "reason": "CA down"}),
        );
        assert!(plan(&e, &settings()).unwrap().is_empty());
        let s = Settings::from_json(r#"{"send_unalerted":true}"#).unwrap();
        let p = plan(&e, &s).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].action, Action::Trigger);
        assert_eq!(p[0].dedup_key, "certplane:event:n-1");
        let payload = p[0].payload.as_ref().unwrap();
        assert_eq!(payload["severity"], "error");
        assert_eq!(payload["custom_details"]["reason"], "CA down");
        assert!(payload["custom_details"].get("condition").is_none());
        // An info event without alerts stays below the default threshold.
        let issued = event("certificate.issued", Level::Info, json!({"alerts": []}));
        assert!(plan(&issued, &s).unwrap().is_empty());
        let all = Settings::from_json(r#"{"send_unalerted":true,"min_severity":"info"}"#).unwrap();
        let p = plan(&issued, &all).unwrap();
        assert_eq!(p[0].payload.as_ref().unwrap()["severity"], "info");
        // Empty details are an event without alerts.
        let mut bare = issued.clone();
        bare.details = String::new();
        assert_eq!(plan(&bare, &all).unwrap().len(), 1);
    }

    #[test]
    fn severities() {
        assert_eq!(pd_severity("certificate.expired", Level::Error), "critical");
        assert_eq!(pd_severity("certificate.expired", Level::Warn), "critical");
        assert_eq!(pd_severity("certificate.expiring", Level::Warn), "warning");
        assert_eq!(pd_severity("certificate.expiring", Level::Error), "error");
        assert_eq!(pd_severity("agent.retired", Level::Warn), "warning");
        assert_eq!(pd_severity("certificate.issued", Level::Info), "info");
        assert_eq!(pd_severity("x", Level::Debug), "info");
        assert_eq!(pd_severity("x", Level::Trace), "info");
    }

    #[test]
    fn dedup_keys_fit_pagerduty() {
        assert_eq!(dedup_key("agent:a1"), "certplane:agent:a1");
        let exact = "k".repeat(MAX_DEDUP_KEY_CHARS - DEDUP_PREFIX.len());
        assert_eq!(dedup_key(&exact), format!("{DEDUP_PREFIX}{exact}"));
        let long = format!("deployment:{}:{}", "c".repeat(200), "t".repeat(200));
        let k = dedup_key(&long);
        assert_eq!(k.chars().count(), MAX_DEDUP_KEY_CHARS);
        assert!(k.starts_with("certplane:deployment:ccc"), "{k}");
        assert_eq!(k, dedup_key(&long), "stable");
        let other = format!("deployment:{}:{}x", "c".repeat(200), "t".repeat(199));
        assert_ne!(
            dedup_key(&other),
            k,
            "distinct keys with one prefix stay distinct"
        );
        let wide = "é".repeat(300);
        assert_eq!(dedup_key(&wide).chars().count(), MAX_DEDUP_KEY_CHARS);
    }

    #[test]
    fn summaries_fit_pagerduty() {
        let mut e = event("issuance.failed", Level::Error, json!({}));
        e.summary = "line one\nline two".into();
        assert_eq!(summary(&e), "line one line two");
        e.summary = "  ".into();
        assert_eq!(summary(&e), "issuance.failed certificate/c1");
        e.summary = "x".repeat(5000);
        let s = summary(&e);
        assert_eq!(s.chars().count(), MAX_SUMMARY_CHARS);
        assert!(s.ends_with('…'));
        e.summary = "ü".repeat(MAX_SUMMARY_CHARS);
        assert_eq!(summary(&e), "ü".repeat(MAX_SUMMARY_CHARS));
    }

    #[test]
    fn malformed_details_are_rejected() {
        for (details, needle) in [
            ("not json", "not JSON"),
            ("[1,2]", "not a JSON object"),
            (r#"{"alerts": {"key": "x"}}"#, "is not a list"),
            (
                r#"{"alerts": [{"state": "triggered"}]}"#,
                "entry 0 has no key",
            ),
            (
                r#"{"alerts": [{"key": " ", "state": "triggered"}]}"#,
                "entry 0 has no key",
            ),
        ] {
            let mut e = event("deployment.failed", Level::Error, json!({}));
            e.details = details.into();
            let err = plan(&e, &settings()).unwrap_err();
            assert_eq!(err.kind(), "rejected", "{details}");
            assert!(
                err.message().contains(needle),
                "{details}: {}",
                err.message()
            );
        }
    }

    #[test]
    fn unknown_alert_states_are_skipped_not_fatal() {
        let e = event(
            "deployment.failed",
            Level::Error,
            json!({"alerts": [{"key": "a", "state": "snoozed"},
                              {"key": "b", "state": "triggered"}]}),
        );
        let p = plan(&e, &settings()).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].dedup_key, "certplane:b");
        // Only unknown states: nothing to send, not an unalerted event.
        let e = event(
            "deployment.failed",
            Level::Error,
            json!({"alerts": [{"key": "a", "state": "snoozed"}]}),
        );
        let s = Settings {
            send_unalerted: true,
            min_severity: MinSeverity::Info,
            ..settings()
        };
        assert!(plan(&e, &s).unwrap().is_empty());
    }
}
