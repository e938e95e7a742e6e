//! The `teams` connector on the real runtime, its instance granted only the
//! fake Workflows webhook's address: one Adaptive Card per event kind of
//! `docs/events.md` (built with the documented `details`), checked the way
//! the Workflows trigger checks messages; filtering; hostile text; the size
//! limit; every failure mode's error class; an ungranted URL. The webhook
//! URL (its `sig`) is the secret: no error may show it.

use certplane_runtime::notifier::Event;
use certplane_runtime::{CallError, ConnectorError, InstanceConfig, Level};
use certplane_testkit::fake_chat::{
    ADAPTIVE_CARD, ChatFault, FakeChat, TEAMS_MAX_MESSAGE_BYTES, teams_card, teams_facts,
    validate_teams_message,
};
use serde_json::{Value, json};

use crate::common::instance;
use crate::notify_events::{self as events, ChatWorld as World, agent_event, event, failing_event};

async fn world() -> World {
    World::start(
        "teams",
        FakeChat::teams(),
        validate_teams_message,
        assert_no_leak,
    )
    .await
}

fn assert_no_leak(credential: &str, text: &str) {
    assert!(!text.contains(credential), "the sig leaked: {text}");
    assert!(!text.contains("/workflows/"), "the path leaked: {text}");
}

/// The card's title block.
fn title(message: &Value) -> &Value {
    &teams_card(message)["body"][0]
}

fn fact(message: &Value, label: &str) -> Option<String> {
    teams_facts(message)
        .into_iter()
        .find(|(l, _)| l == label)
        .map(|(_, v)| v)
}

/// What every card carries: the envelope, a bold title coloured by
/// severity, the summary, and the event's kind, time and id as facts.
fn assert_common(message: &Value, event: &Event, title_text: &str, color: &str) {
    assert_eq!(message["type"], "message");
    assert_eq!(message["attachments"][0]["contentType"], ADAPTIVE_CARD);
    let card = teams_card(message);
    assert_eq!(card["type"], "AdaptiveCard");
    assert_eq!(card["version"], "1.2");
    assert_eq!(
        card["$schema"],
        "http://adaptivecards.io/schemas/adaptive-card.json"
    );
    let body = card["body"].as_array().unwrap();
    assert_eq!(body.len(), 3, "{card}");
    assert_eq!(
        body[0],
        json!({"type": "TextBlock", "text": title_text, "weight": "Bolder",
               "size": "Medium", "color": color, "wrap": true})
    );
    assert_eq!(
        body[1],
        json!({"type": "TextBlock", "text": event.summary, "wrap": true})
    );
    assert_eq!(body[2]["type"], "FactSet");
    assert_eq!(fact(message, "Event").as_deref(), Some(event.kind.as_str()));
    assert_eq!(
        fact(message, "Time").as_deref(),
        Some("2026-12-02T08:00:00Z")
    );
    assert_eq!(
        fact(message, "Event id").as_deref(),
        Some(event.id.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_issued() {
    let w = world().await;
    let e = events::certificate_issued();
    let m = w.deliver(json!({}), &e).await;
    assert_common(&m, &e, "Certificate issued: web-prod", "Good");
    assert_eq!(fact(&m, "Certificate").as_deref(), Some("web-prod"));
    assert_eq!(
        fact(&m, "DNS names").as_deref(),
        Some("www.example.com, example.com")
    );
    assert_eq!(
        fact(&m, "Not after").as_deref(),
        Some("2027-03-01T12:00:00Z")
    );
    assert_eq!(fact(&m, "Issuer").as_deref(), Some("letsencrypt"));
    assert_eq!(fact(&m, "Serial").as_deref(), Some("04a1"));
    assert_eq!(fact(&m, "Owner").as_deref(), Some("team-web"));
    assert_eq!(fact(&m, "Job").as_deref(), Some("issuance, 1 attempt"));
    assert_eq!(fact(&m, "Reason"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_renewed() {
    let w = world().await;
    let e = events::certificate_renewed();
    let m = w.deliver(json!({}), &e).await;
    assert_common(&m, &e, "Certificate renewed: web-prod", "Good");
    assert_eq!(
        fact(&m, "Not after").as_deref(),
        Some("2027-03-01T12:00:00Z")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_expiring_is_a_warning_then_an_error_at_the_last_stage() {
    let w = world().await;
    let warn = events::certificate_expiring(Level::Warn, "web-prod expires in 6 days", "7d", 150);
    let m = w.deliver(json!({}), &warn).await;
    assert_common(&m, &warn, "Certificate expiring: web-prod", "Warning");
    assert_eq!(
        fact(&m, "Expiry warning").as_deref(),
        Some("7d stage, 150 hours left")
    );
    let last = events::certificate_expiring(Level::Error, "web-prod expires in 20 hours", "1d", 20);
    let m = w.deliver(json!({}), &last).await;
    assert_common(&m, &last, "Certificate expiring: web-prod", "Attention");
    assert_eq!(
        fact(&m, "Expiry warning").as_deref(),
        Some("1d stage, 20 hours left")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_expired() {
    let w = world().await;
    let e = events::certificate_expired();
    let m = w.deliver(json!({}), &e).await;
    assert_common(&m, &e, "Certificate expired: web-prod", "Attention");
    assert_eq!(fact(&m, "Owner"), None);
    assert!(!m.to_string().contains("null"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuance_failed() {
    let w = world().await;
    let e = events::issuance_failed("letsencrypt: rejectedIdentifier: example.com is blocked");
    let m = w.deliver(json!({}), &e).await;
    assert_common(&m, &e, "Issuance failed: web-prod", "Attention");
    assert_eq!(fact(&m, "Job").as_deref(), Some("issuance, 5 attempts"));
    assert_eq!(fact(&m, "Not after"), None);
    assert_eq!(fact(&m, "Serial"), None);
    assert_eq!(
        fact(&m, "Reason").as_deref(),
        Some("letsencrypt: rejectedIdentifier: example.com is blocked")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_failed() {
    let w = world().await;
    let e = events::deployment_failed(
        "action nginx-test exited with status 1:\nnginx: [emerg] cannot load certificate",
    );
    let m = w.deliver(json!({}), &e).await;
    assert_common(&m, &e, "Deployment failed: web-prod", "Attention");
    assert_eq!(fact(&m, "Target").as_deref(), Some("edge-nginx (nginx)"));
    assert_eq!(fact(&m, "Agent").as_deref(), Some("edge-1"));
    assert_eq!(
        fact(&m, "Last heartbeat").as_deref(),
        Some("2026-12-02T07:40:00Z")
    );
    assert_eq!(fact(&m, "Job").as_deref(), Some("deploy, 3 attempts"));
    assert_eq!(
        fact(&m, "Reason").as_deref(),
        Some("action nginx-test exited with status 1: nginx: [emerg] cannot load certificate")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_recovered() {
    let w = world().await;
    let e = events::deployment_recovered();
    let m = w.deliver(json!({}), &e).await;
    assert_common(&m, &e, "Deployment recovered: web-prod", "Good");
    assert_eq!(fact(&m, "Target").as_deref(), Some("edge-nginx (nginx)"));
    assert_eq!(fact(&m, "Agent").as_deref(), Some("edge-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_mismatch() {
    let w = world().await;
    let e = events::verification_mismatch();
    let m = w.deliver(json!({}), &e).await;
    assert_common(&m, &e, "Verification mismatch: web-prod", "Attention");
    assert_eq!(fact(&m, "Agent").as_deref(), Some("host"));
    assert_eq!(
        fact(&m, "Reason").as_deref(),
        Some("www.example.com:443 served SHA-256 ab12… instead of cd34…")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_recovered() {
    let w = world().await;
    let e = events::verification_recovered(false);
    let m = w.deliver(json!({}), &e).await;
    assert_common(&m, &e, "Verification recovered: web-prod", "Good");
    assert_eq!(fact(&m, "Target").as_deref(), Some("edge-nginx (nginx)"));
    assert_eq!(fact(&m, "Agent").as_deref(), Some("agt-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_offline() {
    let w = world().await;
    let e = agent_event(
        "agent.offline",
        Level::Error,
        "agent edge-1 is offline",
        "triggered",
    );
    let m = w.deliver(json!({}), &e).await;
    assert_common(&m, &e, "Agent offline: edge-1", "Attention");
    let facts = teams_facts(&m);
    let labels: Vec<&str> = facts.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(
        labels,
        [
            "Agent",
            "Last heartbeat",
            "Event",
            "Subject",
            "Time",
            "Event id"
        ]
    );
    assert_eq!(fact(&m, "Subject").as_deref(), Some("agent/agt-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_online() {
    let w = world().await;
    let e = agent_event(
        "agent.online",
        Level::Info,
        "agent edge-1 is back",
        "resolved",
    );
    let m = w.deliver(json!({}), &e).await;
    assert_common(&m, &e, "Agent back online: edge-1", "Good");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_retired() {
    let w = world().await;
    let e = agent_event(
        "agent.retired",
        Level::Warn,
        "agent edge-1 was retired",
        "resolved",
    );
    let m = w.deliver(json!({}), &e).await;
    assert_common(&m, &e, "Agent retired: edge-1", "Warning");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_failed() {
    let w = world().await;
    let e = events::job_failed();
    let m = w.deliver(json!({}), &e).await;
    assert_common(&m, &e, "Job failed: web-prod", "Attention");
    assert_eq!(fact(&m, "Job").as_deref(), Some("revocation, 4 attempts"));
    assert_eq!(fact(&m, "Reason").as_deref(), Some("letsencrypt: HTTP 503"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_events_send_nothing() {
    let w = world().await;
    let messages = w.assert_filters().await;
    // The second is agent.offline's.
    assert_eq!(title(&messages[1])["text"], "Agent offline: edge-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_secret_are_checked_without_posting() {
    let w = world().await;
    w.notifier(json!({"min_severity": "warn", "events": ["deployment.failed"]}))
        .validate_config()
        .await
        .unwrap();
    let e = agent_event("agent.offline", Level::Error, "offline", "triggered");
    for settings in [
        json!({"min_severity": "urgent"}),
        json!({"events": ["deployment.broke"]}),
        json!({"events": []}),
        json!({"mention": "<!channel>"}),
    ] {
        for result in [
            w.notifier(settings.clone()).validate_config().await,
            w.notifier(settings.clone()).notify(&e).await,
        ] {
            match result {
                Err(CallError::Connector {
                    error: ConnectorError::InvalidConfig(_),
                    ..
                }) => {}
                other => panic!("{settings}: expected invalid-config, got {other:?}"),
            }
        }
    }
    // A URL with a stray newline, and no URL.
    let err = w
        .notifier_to(json!({}), &format!("{}\n", w.chat.url()))
        .validate_config()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("whitespace"), "{err}");
    assert_no_leak(w.chat.credential(), &err.to_string());
    let config = InstanceConfig::new("teams-no-secret")
        .with_hosts(&[w.chat.grant()])
        .unwrap();
    match instance(&w.plugin, config).notify(&e).await {
        Err(CallError::Connector {
            error: ConnectorError::InvalidConfig(m),
            ..
        }) => assert!(m.contains("webhook_url"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(w.chat.requests().is_empty(), "{:?}", w.chat.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_stays_data() {
    let w = world().await;
    let name = "web\"}]}, {\"type\": \"Action.OpenUrl\"} <at>everyone</at> [click](https://evil.example) **bold**";
    let e = event(
        "deployment.failed",
        Level::Error,
        &format!("deploying {name}\nfailed"),
        json!({
            "certificate": {"id": "c1", "name": name, "dns_names": ["a\\b.example.com"]},
            "target": {"id": "t1", "name": "tgt\u{0}\u{7}x", "plugin": "nginx"},
            "reason": "line 1\r\nline 2\ttab",
        }),
    );
    let m = w.deliver(json!({}), &e).await;
    // Still one card with three elements: nothing in the data became
    // structure.
    assert_eq!(teams_card(&m)["body"].as_array().unwrap().len(), 3);
    assert_eq!(fact(&m, "Certificate").as_deref(), Some(name));
    assert_eq!(title(&m)["text"], format!("Deployment failed: {name}"));
    assert_eq!(
        teams_card(&m)["body"][1]["text"],
        format!("deploying {name} failed")
    );
    assert_eq!(fact(&m, "DNS names").as_deref(), Some("a\\b.example.com"));
    assert_eq!(fact(&m, "Target").as_deref(), Some("tgt  x (nginx)"));
    assert_eq!(fact(&m, "Reason").as_deref(), Some("line 1  line 2 tab"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_events_stay_under_the_message_limit() {
    let w = world().await;
    let names: Vec<String> = (0..3000).map(|i| format!("host-{i}.example.com")).collect();
    let quotes = |n: usize| "\"".repeat(n);
    let mut e = event(
        "deployment.failed",
        Level::Error,
        &quotes(50_000),
        json!({
            "certificate": {"id": "c1", "name": quotes(5000), "dns_names": names,
                            "issuer": quotes(5000), "owner": "é".repeat(5000),
                            "serial": quotes(5000), "not_after": quotes(5000)},
            "target": {"id": "t1", "name": quotes(5000), "plugin": "nginx"},
            "agent": {"id": "a1", "name": quotes(5000), "last_heartbeat_at": quotes(5000)},
            "job": {"id": "j1", "type": quotes(5000), "attempts": 3},
            "expiring": {"stage": quotes(5000), "hours_left": 1},
            "reason": quotes(100_000),
        }),
    );
    e.id = quotes(5000);
    e.subject = quotes(5000);
    // The fake refuses messages over Teams' limit, so acceptance is the
    // check.
    let m = w.deliver(json!({}), &e).await;
    let sent = &w.chat.requests()[0];
    assert!(
        sent.body.len() <= TEAMS_MAX_MESSAGE_BYTES,
        "{}",
        sent.body.len()
    );
    assert!(fact(&m, "Reason").unwrap().ends_with('…'));
    assert!(fact(&m, "DNS names").unwrap().ends_with('…'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_200_is_success_too() {
    let w = world().await;
    w.chat.fail_next(ChatFault {
        status: 200,
        body: String::new(),
        headers: vec![],
    });
    w.notifier(json!({}))
        .notify(&failing_event())
        .await
        .unwrap();
    assert_eq!(w.chat.requests()[0].status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_card_is_rejected() {
    let w = world().await;
    w.chat.fail_next(ChatFault::json_error(
        400,
        "InvalidRequestContent",
        "The input body for trigger 'manual' of type 'Request' did not match its schema definition.",
    ));
    match w.failure(json!({}), &failing_event()).await {
        ConnectorError::Rejected(m) => {
            assert!(
                m.contains("HTTP 400: InvalidRequestContent: The input body"),
                "{m}"
            );
            assert!(m.contains(&format!("POST {}", w.chat.grant())), "{m}");
        }
        other => panic!("expected rejected, got {other:?}"),
    }
    assert!(w.chat.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_url_or_a_disabled_flow_is_invalid_config() {
    let w = world().await;
    // The fake's own answers: a wrong `sig` (401), another workflow (404).
    let url = w.chat.url();
    let wrong_sig = url.replace(w.chat.credential(), "not-the-signature");
    let other_flow = url.replace("/workflows/", "/workflows/0");
    for (bad, status) in [(wrong_sig, 401), (other_flow, 404)] {
        match w
            .notifier_to(json!({}), &bad)
            .notify(&failing_event())
            .await
        {
            Err(CallError::Connector {
                error: ConnectorError::InvalidConfig(m),
                ..
            }) => {
                assert!(m.contains(&format!("HTTP {status}")), "{m}");
                assert_no_leak(w.chat.credential(), &m);
                assert!(!m.contains("not-the-signature"), "{m}");
            }
            other => panic!("{status}: expected invalid-config, got {other:?}"),
        }
    }
    // A flow whose owner lost access answers 403.
    w.chat.fail_next(ChatFault::json_error(
        403,
        "AuthorizationFailed",
        "The client does not have authorization to perform this action.",
    ));
    assert!(matches!(
        w.failure(json!({}), &failing_event()).await,
        ConnectorError::InvalidConfig(_)
    ));
    assert_eq!(w.chat.requests().len(), 3);
    assert!(w.chat.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_carry_retry_after() {
    let w = world().await;
    w.chat.fail_next(
        ChatFault::json_error(429, "WorkflowRequestsThrottled", "Rate limit is exceeded.")
            .with_header("retry-after", "12"),
    );
    match w.failure(json!({}), &failing_event()).await {
        ConnectorError::RateLimited(r) => {
            assert_eq!(r.retry_after_secs, Some(12));
            assert!(
                r.message.contains("WorkflowRequestsThrottled"),
                "{}",
                r.message
            );
        }
        other => panic!("expected rate-limited, got {other:?}"),
    }
    w.notifier(json!({}))
        .notify(&failing_event())
        .await
        .unwrap();
    assert_eq!(w.chat.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_transport_failures_are_transient() {
    let w = world().await;
    for status in [500, 502] {
        w.chat
            .fail_next(ChatFault::json_error(status, "BadGateway", "upstream"));
        match w.failure(json!({}), &failing_event()).await {
            ConnectorError::Transient(m) => assert!(m.contains(&format!("HTTP {status}")), "{m}"),
            other => panic!("{status}: expected transient, got {other:?}"),
        }
    }
    w.assert_refused_is_transient().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let w = world().await;
    w.chat.fail_next(
        ChatFault::json_error(307, "Moved", "moved")
            .with_header("location", &format!("{}/elsewhere", w.chat.grant())),
    );
    match w.failure(json!({}), &failing_event()).await {
        ConnectorError::InvalidConfig(m) => assert!(m.contains("not followed"), "{m}"),
        other => panic!("expected invalid-config, got {other:?}"),
    }
    assert_eq!(w.chat.requests().len(), 1, "{:?}", w.chat.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ungranted_webhook_url_is_denied() {
    world()
        .await
        .assert_ungranted_is_denied("https://prod-00.westeurope.logic.azure.com")
        .await;
}
