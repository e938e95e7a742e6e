//! The `pagerduty` notifier on the real runtime, granted only the address
//! of `certplane_testkit::fake_pagerduty::FakePagerDuty`, which validates
//! every event the way PagerDuty documents the Events API v2 and keeps the
//! incidents they open and resolve: one test per event kind of
//! `docs/events.md`, retries, every failure mode's error class, an
//! ungranted URL, and the routing key kept out of errors and logs.

use std::io::Write;
use std::sync::{Arc, Mutex};

use certplane_runtime::harness::Harness;
use certplane_runtime::notifier::Event;
use certplane_runtime::{CallError, ConnectorError, InstanceConfig, Level, Plugin, PluginInstance};
use certplane_testkit::fake_pagerduty::{FakePagerDuty, Incident, IncidentState, PdFault};
use serde_json::{Value, json};

use crate::common::{instance, load};
use crate::notify_events::{OCCURRED_AT, alert};

const CERT: &str = "c0ffee00-0000-4000-8000-000000000001";
const TARGET: &str = "7a26e700-0000-4000-8000-000000000002";
const TARGET_2: &str = "7a26e700-0000-4000-8000-000000000003";
const AGENT: &str = "a6e47000-0000-4000-8000-000000000004";

struct World {
    pd: FakePagerDuty,
    plugin: Arc<Plugin>,
    _harness: Harness,
}

async fn world() -> World {
    let pd = FakePagerDuty::start();
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "pagerduty").await;
    World {
        pd,
        plugin,
        _harness: harness,
    }
}

impl World {
    /// An instance with `extra` settings over `events_url`, the fake's key
    /// and a grant of the fake's address only.
    fn notifier(&self, extra: Value) -> PluginInstance {
        self.notifier_with_key(extra, self.pd.routing_key())
    }

    fn notifier_with_key(&self, extra: Value, key: &str) -> PluginInstance {
        let mut settings = json!({"events_url": self.pd.url()});
        if let (Some(s), Some(e)) = (settings.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        let config = InstanceConfig::new("pagerduty-1")
            .with_settings(settings)
            .unwrap()
            .with_secret("routing_key", key)
            .with_hosts(&[self.pd.grant()])
            .unwrap();
        instance(&self.plugin, config)
    }

    /// The one incident with `key` (its dedup key without the prefix).
    fn incident(&self, key: &str) -> Incident {
        let all = self.pd.incidents_with_key(&format!("certplane:{key}"));
        assert_eq!(all.len(), 1, "incidents of {key}: {all:#?}");
        all.into_iter().next().unwrap()
    }
}

fn connector_error(result: Result<(), CallError>) -> ConnectorError {
    match result {
        Err(CallError::Connector { error, .. }) => error,
        other => panic!("expected a connector error, got {other:?}"),
    }
}

// ---- events as the host builds them (docs/events.md) ----

fn certificate() -> Value {
    json!({
        "id": CERT,
        "name": "web-prod",
        "dns_names": ["www.example.com", "example.com"],
        "owner": "team-web",
        "issuer_id": "1550e700-0000-4000-8000-000000000005",
        "issuer": "letsencrypt",
        "serial": "04a1",
        "not_after": "2027-03-01T12:00:00Z"
    })
}

fn target(id: &str, name: &str) -> Value {
    json!({"id": id, "name": name, "plugin": "nginx", "agent_id": AGENT})
}

fn agent() -> Value {
    json!({"id": AGENT, "name": "edge-1", "last_heartbeat_at": "2026-12-02T07:50:00Z"})
}

fn event(id: &str, kind: &str, severity: Level, summary: &str, details: Value) -> Event {
    let subject = if kind.starts_with("agent.") {
        format!("agent/{AGENT}")
    } else {
        format!("certificate/{CERT}")
    };
    let mut details = details;
    details["schema_version"] = json!(1);
    Event {
        id: id.into(),
        kind: kind.into(),
        severity,
        summary: summary.into(),
        subject,
        occurred_at: OCCURRED_AT,
        details: details.to_string(),
    }
}

fn issuance_failed(id: &str) -> Event {
    event(
        id,
        "issuance.failed",
        Level::Error,
        "web-prod: issuance failed: CA refused the order",
        json!({
            "certificate": certificate(),
            "job": {"id": "j-1", "type": "issuance", "attempts": 8},
            "reason": "CA refused the order",
            "alerts": [alert(&format!("issuance:{CERT}"), "triggered")],
        }),
    )
}

fn certificate_issued(id: &str, resolves_issuance: bool) -> Event {
    let alerts = if resolves_issuance {
        json!([alert(&format!("issuance:{CERT}"), "resolved")])
    } else {
        json!([])
    };
    event(
        id,
        "certificate.issued",
        Level::Info,
        "web-prod: certificate issued",
        json!({"certificate": certificate(), "alerts": alerts}),
    )
}

fn certificate_renewed(id: &str) -> Event {
    event(
        id,
        "certificate.renewed",
        Level::Info,
        "web-prod: certificate renewed",
        json!({
            "certificate": certificate(),
            "alerts": [alert(&format!("expiry:{CERT}"), "resolved"),
                       alert(&format!("issuance:{CERT}"), "resolved")],
        }),
    )
}

fn certificate_expiring(id: &str, stage: &str, hours_left: u64) -> Event {
    let severity = if stage == "1d" {
        Level::Error
    } else {
        Level::Warn
    };
    event(
        id,
        "certificate.expiring",
        severity,
        &format!("web-prod expires in {hours_left} hours"),
        json!({
            "certificate": certificate(),
            "expiring": {"stage": stage, "hours_left": hours_left},
            "alerts": [alert(&format!("expiry:{CERT}"), "triggered")],
        }),
    )
}

fn certificate_expired(id: &str) -> Event {
    event(
        id,
        "certificate.expired",
        Level::Error,
        "web-prod has expired",
        json!({
            "certificate": certificate(),
            "alerts": [alert(&format!("expiry:{CERT}"), "triggered")],
        }),
    )
}

fn deployment_failed(id: &str, target_id: &str, target_name: &str) -> Event {
    event(
        id,
        "deployment.failed",
        Level::Error,
        &format!("web-prod: deployment to {target_name} failed"),
        json!({
            "certificate": certificate(),
            "target": target(target_id, target_name),
            "job": {"id": "j-2", "type": "deploy", "attempts": 3},
            "reason": "action nginx-test exited with status 1: bad config",
            "alerts": [alert(&format!("deployment:{CERT}:{target_id}"), "triggered")],
        }),
    )
}

fn deployment_recovered(id: &str, target_id: &str, target_name: &str) -> Event {
    event(
        id,
        "deployment.recovered",
        Level::Info,
        &format!("web-prod: deployment to {target_name} recovered"),
        json!({
            "certificate": certificate(),
            "target": target(target_id, target_name),
            "alerts": [alert(&format!("deployment:{CERT}:{target_id}"), "resolved")],
        }),
    )
}

fn verification_mismatch(id: &str) -> Event {
    event(
        id,
        "verification.mismatch",
        Level::Error,
        "web-prod: edge-nginx serves another certificate",
        json!({
            "certificate": certificate(),
            "target": target(TARGET, "edge-nginx"),
            "job": {"id": "j-3", "type": "deploy", "attempts": 1},
            "reason": "served fingerprint 9f86... is not the deployed ab12...",
            "alerts": [alert(&format!("verification:{CERT}:{TARGET}"), "triggered")],
        }),
    )
}

fn verification_recovered(id: &str) -> Event {
    event(
        id,
        "verification.recovered",
        Level::Info,
        "web-prod: edge-nginx serves the deployed certificate again",
        json!({
            "certificate": certificate(),
            "target": target(TARGET, "edge-nginx"),
            "alerts": [alert(&format!("verification:{CERT}:{TARGET}"), "resolved")],
        }),
    )
}

fn agent_event(id: &str, kind: &str, severity: Level, state: &str) -> Event {
    event(
        id,
        kind,
        severity,
        &format!("agent edge-1: {kind}"),
        json!({"agent": agent(), "alerts": [alert(&format!("agent:{AGENT}"), state)]}),
    )
}

fn job_failed(id: &str) -> Event {
    event(
        id,
        "job.failed",
        Level::Error,
        "web-prod: revocation failed",
        json!({
            "certificate": certificate(),
            "job": {"id": "j-4", "type": "revoke", "attempts": 8},
            "reason": "CA unavailable",
        }),
    )
}

// ---- one test per event kind ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuance_failed_opens_an_error_incident() {
    let w = world().await;
    w.notifier(json!({}))
        .notify(&issuance_failed("n-1"))
        .await
        .unwrap();

    let i = w.incident(&format!("issuance:{CERT}"));
    assert_eq!(i.state, IncidentState::Triggered);
    assert_eq!(i.triggers, 1);
    assert_eq!(i.severity, "error");
    assert_eq!(i.summary, "web-prod: issuance failed: CA refused the order");
    assert_eq!(i.routing_key, w.pd.routing_key());
    let p = &i.payload;
    assert_eq!(p["source"], "certplane");
    assert_eq!(p["class"], "issuance.failed");
    assert_eq!(p["timestamp"], "2026-12-02T08:00:00Z");
    assert!(p.get("component").is_none(), "{p}");
    let d = &p["custom_details"];
    assert_eq!(d["event_id"], "n-1");
    assert_eq!(d["condition"], format!("issuance:{CERT}"));
    assert_eq!(d["certificate"]["name"], "web-prod");
    assert_eq!(d["job"]["attempts"], 8);
    assert_eq!(d["reason"], "CA refused the order");

    let requests = w.pd.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(requests[0].line, "POST /v2/enqueue");
    assert_eq!(
        requests[0].content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(requests[0].status, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_issued_resolves_the_issuance_incident_and_alone_sends_nothing() {
    let w = world().await;
    let n = w.notifier(json!({}));
    // A first issuance with nothing open carries no alert: nothing is sent.
    n.notify(&certificate_issued("n-0", false)).await.unwrap();
    assert!(w.pd.requests().is_empty(), "{:#?}", w.pd.requests());

    n.notify(&issuance_failed("n-1")).await.unwrap();
    n.notify(&certificate_issued("n-2", true)).await.unwrap();
    let i = w.incident(&format!("issuance:{CERT}"));
    assert_eq!(i.state, IncidentState::Resolved);
    let events = w.pd.events();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].action, "resolve");
    assert_eq!(events[1].incident, Some(i.number));
    // A resolve carries no payload.
    assert!(
        events[1].body.get("payload").is_none(),
        "{}",
        events[1].body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_renewed_resolves_both_expiry_and_issuance() {
    let w = world().await;
    let n = w.notifier(json!({}));
    n.notify(&certificate_expiring("n-1", "7d", 150))
        .await
        .unwrap();
    n.notify(&issuance_failed("n-2")).await.unwrap();
    assert_eq!(w.pd.open_incidents().len(), 2);

    n.notify(&certificate_renewed("n-3")).await.unwrap();
    assert!(
        w.pd.open_incidents().is_empty(),
        "{:#?}",
        w.pd.open_incidents()
    );
    assert_eq!(
        w.incident(&format!("expiry:{CERT}")).state,
        IncidentState::Resolved
    );
    assert_eq!(
        w.incident(&format!("issuance:{CERT}")).state,
        IncidentState::Resolved
    );
    // One request per condition.
    let resolves: Vec<_> =
        w.pd.events()
            .into_iter()
            .filter(|e| e.action == "resolve")
            .map(|e| e.dedup_key)
            .collect();
    assert_eq!(
        resolves,
        [
            format!("certplane:expiry:{CERT}"),
            format!("certplane:issuance:{CERT}")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_expiring_stages_hit_one_incident() {
    let w = world().await;
    let n = w.notifier(json!({}));
    n.notify(&certificate_expiring("n-14d", "14d", 330))
        .await
        .unwrap();
    n.notify(&certificate_expiring("n-7d", "7d", 150))
        .await
        .unwrap();
    let i = w.incident(&format!("expiry:{CERT}"));
    assert_eq!(i.state, IncidentState::Triggered);
    assert_eq!(i.triggers, 2);
    assert_eq!(i.severity, "warning");
    assert_eq!(i.summary, "web-prod expires in 150 hours");
    assert_eq!(i.payload["custom_details"]["expiring"]["stage"], "7d");

    // The last stage is an error: the same incident, escalated.
    n.notify(&certificate_expiring("n-1d", "1d", 20))
        .await
        .unwrap();
    let i = w.incident(&format!("expiry:{CERT}"));
    assert_eq!((i.triggers, i.severity.as_str()), (3, "error"));
    assert_eq!(w.pd.incidents().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_expired_is_critical_on_the_expiry_incident() {
    let w = world().await;
    let n = w.notifier(json!({}));
    n.notify(&certificate_expired("n-1")).await.unwrap();
    let i = w.incident(&format!("expiry:{CERT}"));
    assert_eq!(i.severity, "critical");
    assert_eq!(i.payload["class"], "certificate.expired");

    // After the expiring warnings it lands on their incident.
    let w = world().await;
    let n = w.notifier(json!({}));
    n.notify(&certificate_expiring("n-1d", "1d", 20))
        .await
        .unwrap();
    n.notify(&certificate_expired("n-2")).await.unwrap();
    let i = w.incident(&format!("expiry:{CERT}"));
    assert_eq!((i.triggers, i.severity.as_str()), (2, "critical"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_failed_opens_one_incident_per_target() {
    let w = world().await;
    let n = w.notifier(json!({}));
    n.notify(&deployment_failed("n-1", TARGET, "edge-nginx"))
        .await
        .unwrap();
    n.notify(&deployment_failed("n-2", TARGET_2, "edge-caddy"))
        .await
        .unwrap();
    let a = w.incident(&format!("deployment:{CERT}:{TARGET}"));
    let b = w.incident(&format!("deployment:{CERT}:{TARGET_2}"));
    assert_ne!(a.number, b.number);
    assert_eq!(a.severity, "error");
    // The target's name is the component when the operator sets none.
    assert_eq!(a.payload["component"], "edge-nginx");
    assert_eq!(b.payload["component"], "edge-caddy");
    assert_eq!(
        a.payload["custom_details"]["reason"],
        "action nginx-test exited with status 1: bad config"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_recovered_resolves_only_its_target() {
    let w = world().await;
    let n = w.notifier(json!({}));
    n.notify(&deployment_failed("n-1", TARGET, "edge-nginx"))
        .await
        .unwrap();
    n.notify(&deployment_failed("n-2", TARGET_2, "edge-caddy"))
        .await
        .unwrap();
    n.notify(&deployment_recovered("n-3", TARGET, "edge-nginx"))
        .await
        .unwrap();
    assert_eq!(
        w.incident(&format!("deployment:{CERT}:{TARGET}")).state,
        IncidentState::Resolved
    );
    assert_eq!(
        w.incident(&format!("deployment:{CERT}:{TARGET_2}")).state,
        IncidentState::Triggered
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_mismatch_opens_an_incident() {
    let w = world().await;
    w.notifier(json!({}))
        .notify(&verification_mismatch("n-1"))
        .await
        .unwrap();
    let i = w.incident(&format!("verification:{CERT}:{TARGET}"));
    assert_eq!(i.state, IncidentState::Triggered);
    assert_eq!(i.severity, "error");
    assert_eq!(i.payload["class"], "verification.mismatch");
    assert_eq!(i.payload["component"], "edge-nginx");
    // Not the deployment's condition.
    assert!(
        w.pd.incidents_with_key(&format!("certplane:deployment:{CERT}:{TARGET}"))
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_recovered_resolves_the_mismatch() {
    let w = world().await;
    let n = w.notifier(json!({}));
    n.notify(&verification_mismatch("n-1")).await.unwrap();
    n.notify(&verification_recovered("n-2")).await.unwrap();
    assert_eq!(
        w.incident(&format!("verification:{CERT}:{TARGET}")).state,
        IncidentState::Resolved
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_offline_opens_an_agent_incident() {
    let w = world().await;
    w.notifier(json!({}))
        .notify(&agent_event(
            "n-1",
            "agent.offline",
            Level::Error,
            "triggered",
        ))
        .await
        .unwrap();
    let i = w.incident(&format!("agent:{AGENT}"));
    assert_eq!(i.state, IncidentState::Triggered);
    assert_eq!(i.severity, "error");
    assert_eq!(i.payload["component"], "edge-1");
    assert_eq!(
        i.payload["custom_details"]["subject"],
        format!("agent/{AGENT}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_online_resolves_the_agent_incident() {
    let w = world().await;
    let n = w.notifier(json!({}));
    n.notify(&agent_event(
        "n-1",
        "agent.offline",
        Level::Error,
        "triggered",
    ))
    .await
    .unwrap();
    n.notify(&agent_event("n-2", "agent.online", Level::Info, "resolved"))
        .await
        .unwrap();
    assert_eq!(
        w.incident(&format!("agent:{AGENT}")).state,
        IncidentState::Resolved
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_retired_resolves_the_agent_incident() {
    let w = world().await;
    let n = w.notifier(json!({}));
    n.notify(&agent_event(
        "n-1",
        "agent.offline",
        Level::Error,
        "triggered",
    ))
    .await
    .unwrap();
    // A warning, yet it opens nothing: it only clears the condition.
    n.notify(&agent_event(
        "n-2",
        "agent.retired",
        Level::Warn,
        "resolved",
    ))
    .await
    .unwrap();
    assert_eq!(
        w.incident(&format!("agent:{AGENT}")).state,
        IncidentState::Resolved
    );
    assert_eq!(w.pd.incidents().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_failed_sends_nothing_unless_send_unalerted() {
    let w = world().await;
    w.notifier(json!({}))
        .notify(&job_failed("n-1"))
        .await
        .unwrap();
    assert!(w.pd.requests().is_empty(), "{:#?}", w.pd.requests());

    let n = w.notifier(json!({"send_unalerted": true}));
    n.notify(&job_failed("n-1")).await.unwrap();
    let i = w.incident("event:n-1");
    assert_eq!(i.severity, "error");
    assert_eq!(i.payload["class"], "job.failed");
    assert_eq!(i.payload["custom_details"]["reason"], "CA unavailable");
    // Its retry is the same incident; another event another one.
    n.notify(&job_failed("n-1")).await.unwrap();
    n.notify(&job_failed("n-2")).await.unwrap();
    assert_eq!(w.incident("event:n-1").triggers, 2);
    assert_eq!(w.pd.incidents().len(), 2);
    // Info events without alerts stay below the default threshold.
    n.notify(&certificate_issued("n-3", false)).await.unwrap();
    assert_eq!(w.pd.events().len(), 3);
}

// ---- settings that change what is sent ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_severity_filters_triggers_never_resolutions() {
    let w = world().await;
    let n = w.notifier(json!({"min_severity": "error"}));
    n.notify(&certificate_expiring("n-14d", "14d", 330))
        .await
        .unwrap();
    n.notify(&certificate_expiring("n-7d", "7d", 150))
        .await
        .unwrap();
    assert!(w.pd.requests().is_empty(), "{:#?}", w.pd.requests());
    n.notify(&certificate_expiring("n-1d", "1d", 20))
        .await
        .unwrap();
    assert_eq!(w.incident(&format!("expiry:{CERT}")).triggers, 1);
    n.notify(&certificate_renewed("n-r")).await.unwrap();
    assert_eq!(
        w.incident(&format!("expiry:{CERT}")).state,
        IncidentState::Resolved
    );

    // `info` with send_unalerted: a first issuance is an info incident.
    let n = w.notifier(json!({"min_severity": "info", "send_unalerted": true,
                             "source": "pki.example", "group": "web", "class": "certs",
                             "component": "tls"}));
    n.notify(&certificate_issued("n-i", false)).await.unwrap();
    let i = w.incident("event:n-i");
    assert_eq!(i.severity, "info");
    let p = &i.payload;
    assert_eq!(
        (&p["source"], &p["group"], &p["class"], &p["component"]),
        (
            &json!("pki.example"),
            &json!("web"),
            &json!("certs"),
            &json!("tls")
        )
    );
}

// ---- retries ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_the_same_event_keep_one_incident() {
    let w = world().await;
    let n = w.notifier(json!({}));
    let failed = deployment_failed("n-1", TARGET, "edge-nginx");
    for _ in 0..3 {
        n.notify(&failed).await.unwrap();
    }
    let i = w.incident(&format!("deployment:{CERT}:{TARGET}"));
    assert_eq!(i.triggers, 3);
    let keys: Vec<_> = w.pd.events().into_iter().map(|e| e.dedup_key).collect();
    assert_eq!(
        keys,
        vec![format!("certplane:deployment:{CERT}:{TARGET}"); 3]
    );

    let recovered = deployment_recovered("n-2", TARGET, "edge-nginx");
    n.notify(&recovered).await.unwrap();
    n.notify(&recovered).await.unwrap();
    assert_eq!(w.pd.incidents().len(), 1);
    assert_eq!(
        w.incident(&format!("deployment:{CERT}:{TARGET}")).state,
        IncidentState::Resolved
    );
    // PagerDuty drops the repeated resolve: nothing open to apply it to.
    let last = w.pd.events().pop().unwrap();
    assert_eq!((last.action.as_str(), last.incident), ("resolve", None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_midway_fails_the_event_and_its_retry_completes_it() {
    let w = world().await;
    let n = w.notifier(json!({}));
    n.notify(&certificate_expiring("n-1", "7d", 150))
        .await
        .unwrap();
    n.notify(&issuance_failed("n-2")).await.unwrap();
    // The first resolve goes through, the second meets a 500.
    w.pd.fail_requests_after(1, 1, PdFault::ServerError);
    let renewed = certificate_renewed("n-3");
    let err = connector_error(n.notify(&renewed).await);
    assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
    assert!(err.to_string().contains("request 2 of 2"), "{err}");
    assert!(err.to_string().contains("HTTP 500"), "{err}");
    assert_eq!(
        w.incident(&format!("expiry:{CERT}")).state,
        IncidentState::Resolved
    );
    assert_eq!(
        w.incident(&format!("issuance:{CERT}")).state,
        IncidentState::Triggered
    );
    // The host's retry sends both again: harmless for the first.
    n.notify(&renewed).await.unwrap();
    assert!(w.pd.open_incidents().is_empty());
    assert_eq!(w.pd.incidents().len(), 2);
}

// ---- failure modes ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_rate_limited_with_the_hint() {
    let w = world().await;
    let n = w.notifier(json!({}));
    w.pd.fail_next_requests(
        1,
        PdFault::RateLimited {
            retry_after_secs: Some(42),
        },
    );
    match connector_error(n.notify(&issuance_failed("n-1")).await) {
        ConnectorError::RateLimited(r) => {
            assert_eq!(r.retry_after_secs, Some(42));
            assert!(r.message.contains("HTTP 429"), "{}", r.message);
            assert!(r.message.contains("throttle event"), "{}", r.message);
        }
        other => panic!("expected rate-limited, got {other:?}"),
    }
    // Without Retry-After the host's backoff decides.
    w.pd.fail_next_requests(
        1,
        PdFault::RateLimited {
            retry_after_secs: None,
        },
    );
    match connector_error(n.notify(&issuance_failed("n-1")).await) {
        ConnectorError::RateLimited(r) => assert_eq!(r.retry_after_secs, None),
        other => panic!("expected rate-limited, got {other:?}"),
    }
    assert!(w.pd.incidents().is_empty());
    n.notify(&issuance_failed("n-1")).await.unwrap();
    assert_eq!(w.pd.incidents().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_unreachable_endpoints_are_transient() {
    let w = world().await;
    let n = w.notifier(json!({}));
    w.pd.fail_next_requests(1, PdFault::ServerError);
    let err = connector_error(n.notify(&issuance_failed("n-1")).await);
    assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
    assert!(err.to_string().contains("Internal Server Error"), "{err}");
    assert!(w.pd.incidents().is_empty());

    // Nobody listening any more.
    let url = w.pd.url();
    let grant = w.pd.grant();
    drop(w.pd);
    let config = InstanceConfig::new("pagerduty-gone")
        .with_settings(json!({"events_url": url}))
        .unwrap()
        .with_secret(
            "routing_key",
            certplane_testkit::fake_pagerduty::ROUTING_KEY,
        )
        .with_hosts(&[grant])
        .unwrap();
    let err = connector_error(
        instance(&w.plugin, config)
            .notify(&issuance_failed("n-1"))
            .await,
    );
    assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_event_is_rejected_quoting_pagerduty() {
    let w = world().await;
    w.pd.fail_next_requests(
        1,
        PdFault::BadRequest("'payload.custom_details' is too large".into()),
    );
    let err = connector_error(w.notifier(json!({})).notify(&issuance_failed("n-1")).await);
    assert!(matches!(err, ConnectorError::Rejected(_)), "{err:?}");
    let text = err.to_string();
    for needle in [
        "HTTP 400",
        "invalid event",
        "Event object is invalid",
        "'payload.custom_details' is too large",
        &format!("trigger certplane:issuance:{CERT}"),
    ] {
        assert!(text.contains(needle), "{needle:?} missing in {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_routing_key_is_invalid_config() {
    let w = world().await;
    let unknown = "0123456789abcdef0123456789ABCDEF";
    let n = w.notifier_with_key(json!({}), unknown);
    // Well-formed: the local check passes, PagerDuty refuses it.
    n.validate_config().await.unwrap();
    let err = connector_error(n.notify(&issuance_failed("n-1")).await);
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("Invalid routing key"), "{text}");
    assert!(text.contains("secret `routing_key`"), "{text}");
    assert_eq!(w.pd.requests().len(), 1);
    assert_eq!(w.pd.requests()[0].status, 400);
    assert!(w.pd.incidents().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_routing_key_is_refused_before_any_request() {
    let w = world().await;
    // A REST API token, not an integration key.
    let n = w.notifier_with_key(json!({}), "u+AbCdEfGhIjKlMnOpQr");
    let err = connector_error(n.validate_config().await);
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    assert!(err.to_string().contains("routing_key"), "{err}");
    let err = connector_error(n.notify(&issuance_failed("n-1")).await);
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");

    let config = InstanceConfig::new("pagerduty-no-key")
        .with_settings(json!({"events_url": w.pd.url()}))
        .unwrap()
        .with_hosts(&[w.pd.grant()])
        .unwrap();
    let err = connector_error(instance(&w.plugin, config).validate_config().await);
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    assert!(
        err.to_string().contains("`routing_key` is required"),
        "{err}"
    );
    assert!(w.pd.requests().is_empty(), "{:#?}", w.pd.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_and_a_wrong_endpoint_are_invalid_config() {
    let w = world().await;
    for settings in [
        json!({"min_severity": "warning"}),
        json!({"source": " "}),
        json!({"events_url": "ftp://127.0.0.1/v2/enqueue"}),
        json!({"severity": "error"}),
    ] {
        let n = w.notifier(settings.clone());
        let err = connector_error(n.validate_config().await);
        assert!(
            matches!(err, ConnectorError::InvalidConfig(_)),
            "{settings}: {err:?}"
        );
        let err = connector_error(n.notify(&issuance_failed("n-1")).await);
        assert!(
            matches!(err, ConnectorError::InvalidConfig(_)),
            "{settings}: {err:?}"
        );
    }
    assert!(w.pd.requests().is_empty(), "{:#?}", w.pd.requests());

    // Granted, but not the Events API.
    let wrong = w.pd.url().replace("/v2/enqueue", "/v1/enqueue");
    let err = connector_error(
        w.notifier(json!({"events_url": wrong}))
            .notify(&issuance_failed("n-1"))
            .await,
    );
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    assert!(err.to_string().contains("`events_url`"), "{err}");
    assert_eq!(w.pd.requests()[0].line, "POST /v1/enqueue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_details_are_rejected_without_a_request() {
    let w = world().await;
    let mut e = issuance_failed("n-1");
    e.details = r#"{"alerts": "issuance"}"#.into();
    let err = connector_error(w.notifier(json!({})).notify(&e).await);
    assert!(matches!(err, ConnectorError::Rejected(_)), "{err:?}");
    assert!(err.to_string().contains("details.alerts"), "{err}");
    assert!(w.pd.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_summaries_and_keys_are_fitted_to_pagerduty_limits() {
    let w = world().await;
    let n = w.notifier(json!({}));
    let key = format!("deployment:{}:{TARGET}", "c".repeat(400));
    let mut failed = deployment_failed("n-1", TARGET, "edge-nginx");
    failed.summary = "x".repeat(3000);
    failed.details = json!({"alerts": [alert(&key, "triggered")]}).to_string();
    // The fake refuses a summary over 1024 or a key over 255 characters.
    n.notify(&failed).await.unwrap();
    let incidents = w.pd.incidents();
    assert_eq!(incidents.len(), 1);
    assert_eq!(incidents[0].summary.chars().count(), 1024);
    assert_eq!(incidents[0].dedup_key.chars().count(), 255);
    assert!(
        incidents[0]
            .dedup_key
            .starts_with("certplane:deployment:ccc")
    );
    // The resolve finds the same incident.
    let mut recovered = deployment_recovered("n-2", TARGET, "edge-nginx");
    recovered.details = json!({"alerts": [alert(&key, "resolved")]}).to_string();
    n.notify(&recovered).await.unwrap();
    assert_eq!(w.pd.incidents()[0].state, IncidentState::Resolved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ungranted_events_url_is_denied() {
    let w = world().await;
    let config = InstanceConfig::new("pagerduty-ungranted")
        .with_settings(json!({"events_url": w.pd.url()}))
        .unwrap()
        .with_secret("routing_key", w.pd.routing_key())
        .with_hosts(&["https://events.pagerduty.com"])
        .unwrap();
    let err = instance(&w.plugin, config)
        .notify(&issuance_failed("n-1"))
        .await
        .unwrap_err();
    let CallError::CapabilityDenied { denials, .. } = &err else {
        panic!("expected a capability denial, got {err:?}");
    };
    assert!(denials[0].contains("127.0.0.1"), "{denials:?}");
    // What the host acts on: a denial, never retried. (The connector's own
    // error depends on whether the SDK saw the refusal before writing the
    // body, which closes the stream; the class does not.)
    assert_eq!(err.class(), certplane_proto::ErrorClass::CapabilityDenied);
    assert!(!err.is_retryable());
    assert!(w.pd.requests().is_empty(), "{:#?}", w.pd.requests());
}

// ---- the routing key stays secret ----

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Current-thread runtime: the subscriber guard is per thread, and the
/// calls (plugin log lines included) run on this one.
#[tokio::test]
async fn the_routing_key_never_appears_in_errors_or_logs() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let w = world().await;
    let unknown = "Zz0123456789abcdef0123456789abcd";
    let mut errors = Vec::new();
    let good = w.notifier(json!({}));
    // Success (the connector logs each request), then every failure path.
    good.notify(&issuance_failed("n-1")).await.unwrap();
    good.notify(&certificate_renewed("n-2")).await.unwrap();
    for fault in [
        PdFault::ServerError,
        PdFault::RateLimited {
            retry_after_secs: Some(1),
        },
        PdFault::BadRequest("bad".into()),
    ] {
        w.pd.fail_next_requests(1, fault);
        errors.push(good.notify(&issuance_failed("n-3")).await.unwrap_err());
    }
    let bad_key = w.notifier_with_key(json!({}), unknown);
    errors.push(bad_key.notify(&issuance_failed("n-4")).await.unwrap_err());
    let malformed = w.notifier_with_key(json!({}), "my-secret-rest-api-token");
    errors.push(malformed.validate_config().await.unwrap_err());
    errors.push(malformed.notify(&issuance_failed("n-5")).await.unwrap_err());

    // The key did reach PagerDuty, in the bodies.
    assert!(
        w.pd.requests()
            .iter()
            .any(|r| r.body.contains(w.pd.routing_key()))
    );
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("HTTP 202") && logs.contains("pagerduty"),
        "the connector's log lines were not captured:\n{logs}"
    );
    let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    for secret in [
        w.pd.routing_key(),
        unknown,
        "my-secret-rest-api-token",
        // The runtime's redaction would hide a leak; the connector must not
        // even try.
        "[redacted:routing_key]",
    ] {
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
        for t in &texts {
            assert!(!t.contains(secret), "{secret} in the error {t}");
        }
    }
}
