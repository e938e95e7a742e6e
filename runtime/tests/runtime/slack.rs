//! The `slack` connector on the real runtime, its instance granted only the
//! fake Slack webhook's address: one delivery per event kind of
//! `docs/events.md` (built with the documented `details`), checked the way
//! Slack checks messages; filtering; hostile text that must neither ping nor
//! break the message; Slack's limits; every failure mode's error class; an
//! ungranted URL. The webhook URL is the secret: no error may show its
//! token.

use certplane_runtime::notifier::Event;
use certplane_runtime::{CallError, ConnectorError, InstanceConfig, Level};
use certplane_testkit::fake_chat::{
    ChatFault, FakeChat, slack_ampersands_escaped, slack_controls, slack_texts, slack_unescape,
    validate_slack_message,
};
use serde_json::{Value, json};

use crate::common::instance;
use crate::notify_events::{
    self as events, ChatWorld as World, OCCURRED_AT, agent_event, event, failing_event,
};

async fn world() -> World {
    World::start(
        "slack",
        FakeChat::slack(),
        validate_slack_message,
        |credential, text| assert!(!text.contains(credential), "the token leaked: {text}"),
    )
    .await
}

fn header(message: &Value) -> String {
    let b = &message["blocks"][0];
    assert_eq!(b["type"], "header", "{message}");
    b["text"]["text"].as_str().unwrap().to_string()
}

/// The fields of the message as (label, value as the reader sees it).
fn fields(message: &Value) -> Vec<(String, String)> {
    message["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b.get("fields").and_then(Value::as_array))
        .flatten()
        .map(|f| {
            let text = f["text"].as_str().unwrap();
            let (label, value) = text.split_once('\n').unwrap();
            (label.trim_matches('*').to_string(), slack_unescape(value))
        })
        .collect()
}

fn field(message: &Value, label: &str) -> Option<String> {
    fields(message)
        .into_iter()
        .find(|(l, _)| l == label)
        .map(|(_, v)| v)
}

/// The text of the section whose text starts with `*label*`, as the reader
/// sees it.
fn section(message: &Value, label: &str) -> Option<String> {
    let head = format!("*{label}*\n");
    message["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "section")
        .filter_map(|b| b["text"]["text"].as_str())
        .find_map(|t| t.strip_prefix(&head).map(slack_unescape))
}

/// The summary section (the second block), as sent.
fn summary(message: &Value) -> String {
    message["blocks"][1]["text"]["text"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The control sequences other than the connector's date token.
fn pings(message: &Value) -> Vec<String> {
    slack_controls(message)
        .into_iter()
        .filter(|c| !c.starts_with("<!date^"))
        .collect()
}

/// What every message carries: the fallback line, the context line with
/// kind, id and time, escaped ampersands everywhere, and no control
/// sequence but the date token and the configured `mention`.
fn assert_common(message: &Value, event: &Event, mention: Option<&str>) {
    let text = message["text"].as_str().unwrap();
    assert!(!text.contains('\n'), "{text}");
    let blocks = message["blocks"].as_array().unwrap();
    let context = blocks.last().unwrap();
    assert_eq!(context["type"], "context");
    let line = context["elements"][0]["text"].as_str().unwrap();
    assert!(line.contains(&format!("`{}`", event.kind)), "{line}");
    assert!(line.contains(&event.id), "{line}");
    assert!(
        line.contains(&format!("<!date^{OCCURRED_AT}^")) && line.contains("|2026-12-02T08:00:00Z>"),
        "{line}"
    );
    for t in slack_texts(message) {
        assert!(slack_ampersands_escaped(&t), "{t}");
    }
    let expected: Vec<String> = match mention {
        // In the fallback line and in the summary section.
        Some(m) => vec![m.to_string(), m.to_string()],
        None => vec![],
    };
    assert_eq!(pings(message), expected, "{message}");
    if let Some(m) = mention {
        assert!(text.starts_with(&format!("{m} ")), "{text}");
        assert!(summary(message).starts_with(&format!("{m} ")));
    }
}

const MENTION: &str = "<!channel>";

fn with_mention() -> Value {
    json!({"mention": MENTION})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_issued() {
    let w = world().await;
    let e = events::certificate_issued();
    let m = w.deliver(with_mention(), &e).await;
    assert_common(&m, &e, None);
    assert_eq!(header(&m), ":large_green_circle: Certificate issued");
    assert_eq!(summary(&m), "web-prod issued by letsencrypt");
    assert_eq!(
        m["text"],
        ":large_green_circle: Certificate issued: web-prod issued by letsencrypt"
    );
    assert_eq!(field(&m, "Certificate").as_deref(), Some("web-prod"));
    assert_eq!(
        field(&m, "DNS names").as_deref(),
        Some("`www.example.com`, `example.com`")
    );
    assert_eq!(
        field(&m, "Not after").as_deref(),
        Some("2027-03-01T12:00:00Z")
    );
    assert_eq!(field(&m, "Issuer").as_deref(), Some("letsencrypt"));
    assert_eq!(field(&m, "Serial").as_deref(), Some("04a1"));
    assert_eq!(field(&m, "Job").as_deref(), Some("issuance, 1 attempt"));
    assert_eq!(section(&m, "Reason"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_renewed() {
    let w = world().await;
    let e = events::certificate_renewed();
    let m = w.deliver(with_mention(), &e).await;
    assert_common(&m, &e, None);
    assert_eq!(header(&m), ":large_green_circle: Certificate renewed");
    assert_eq!(field(&m, "Certificate").as_deref(), Some("web-prod"));
    assert_eq!(
        field(&m, "Not after").as_deref(),
        Some("2027-03-01T12:00:00Z")
    );
    assert_eq!(field(&m, "Owner").as_deref(), Some("team-web"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_expiring_warns_then_pages_at_the_last_stage() {
    let w = world().await;
    let warn = events::certificate_expiring(Level::Warn, "web-prod expires in 6 days", "7d", 150);
    let m = w.deliver(with_mention(), &warn).await;
    assert_common(&m, &warn, None);
    assert_eq!(header(&m), ":warning: Certificate expiring");
    assert_eq!(
        field(&m, "Expiry warning").as_deref(),
        Some("7d stage, 150 hours left")
    );
    assert_eq!(
        field(&m, "Not after").as_deref(),
        Some("2027-03-01T12:00:00Z")
    );

    let last = events::certificate_expiring(Level::Error, "web-prod expires in 20 hours", "1d", 20);
    let m = w.deliver(with_mention(), &last).await;
    assert_common(&m, &last, Some(MENTION));
    assert_eq!(header(&m), ":red_circle: Certificate expiring");
    assert_eq!(
        field(&m, "Expiry warning").as_deref(),
        Some("1d stage, 20 hours left")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_expired() {
    let w = world().await;
    let e = events::certificate_expired();
    let m = w.deliver(with_mention(), &e).await;
    assert_common(&m, &e, Some(MENTION));
    assert_eq!(header(&m), ":red_circle: Certificate expired");
    assert_eq!(field(&m, "Certificate").as_deref(), Some("web-prod"));
    assert_eq!(
        field(&m, "Not after").as_deref(),
        Some("2027-03-01T12:00:00Z")
    );
    // A null owner is left out, not shown as "null".
    assert_eq!(field(&m, "Owner"), None);
    assert!(!m.to_string().contains("null"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuance_failed() {
    let w = world().await;
    let e = events::issuance_failed(
        "letsencrypt: urn:ietf:params:acme:error:rejectedIdentifier: example.com is blocked",
    );
    let m = w.deliver(with_mention(), &e).await;
    assert_common(&m, &e, Some(MENTION));
    assert_eq!(header(&m), ":red_circle: Issuance failed");
    assert_eq!(field(&m, "Certificate").as_deref(), Some("web-prod"));
    assert_eq!(field(&m, "Job").as_deref(), Some("issuance, 5 attempts"));
    assert_eq!(field(&m, "Not after"), None);
    assert_eq!(field(&m, "Serial"), None);
    assert_eq!(
        section(&m, "Reason").as_deref(),
        Some("letsencrypt: urn:ietf:params:acme:error:rejectedIdentifier: example.com is blocked")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_failed() {
    let w = world().await;
    let e = events::deployment_failed(
        "action nginx-test exited with status 1: nginx: [emerg] cannot load certificate\nnginx: configuration file /etc/nginx/nginx.conf test failed",
    );
    let m = w.deliver(with_mention(), &e).await;
    assert_common(&m, &e, Some(MENTION));
    assert_eq!(header(&m), ":red_circle: Deployment failed");
    assert_eq!(field(&m, "Certificate").as_deref(), Some("web-prod"));
    assert_eq!(field(&m, "Target").as_deref(), Some("edge-nginx (nginx)"));
    assert_eq!(field(&m, "Agent").as_deref(), Some("edge-1"));
    assert_eq!(field(&m, "Job").as_deref(), Some("deploy, 3 attempts"));
    // The reason keeps its lines (it is a section, not a field).
    assert_eq!(
        section(&m, "Reason").as_deref(),
        Some(
            "action nginx-test exited with status 1: nginx: [emerg] cannot load certificate\nnginx: configuration file /etc/nginx/nginx.conf test failed"
        )
    );
    assert!(fields(&m).len() <= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_recovered() {
    let w = world().await;
    let e = events::deployment_recovered();
    let m = w.deliver(with_mention(), &e).await;
    assert_common(&m, &e, None);
    assert_eq!(header(&m), ":large_green_circle: Deployment recovered");
    assert_eq!(field(&m, "Target").as_deref(), Some("edge-nginx (nginx)"));
    assert_eq!(field(&m, "Agent").as_deref(), Some("edge-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_mismatch() {
    let w = world().await;
    let e = events::verification_mismatch();
    let m = w.deliver(with_mention(), &e).await;
    assert_common(&m, &e, Some(MENTION));
    assert_eq!(header(&m), ":red_circle: Verification mismatch");
    assert_eq!(field(&m, "Target").as_deref(), Some("edge-nginx (nginx)"));
    // Without an agent record, the target's runner is named.
    assert_eq!(field(&m, "Agent").as_deref(), Some("host"));
    assert_eq!(
        section(&m, "Reason").as_deref(),
        Some("www.example.com:443 served SHA-256 ab12… instead of cd34…")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_recovered() {
    let w = world().await;
    let e = events::verification_recovered(true);
    let m = w.deliver(with_mention(), &e).await;
    assert_common(&m, &e, None);
    assert_eq!(header(&m), ":large_green_circle: Verification recovered");
    assert_eq!(field(&m, "Target").as_deref(), Some("edge-nginx (nginx)"));
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
    let m = w.deliver(with_mention(), &e).await;
    assert_common(&m, &e, Some(MENTION));
    assert_eq!(header(&m), ":red_circle: Agent offline");
    assert_eq!(
        fields(&m),
        [
            ("Agent".to_string(), "edge-1".to_string()),
            (
                "Last heartbeat".to_string(),
                "2026-12-02T07:40:00Z".to_string()
            ),
        ]
    );
    assert!(
        m["blocks"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .to_string()
            .contains("agent/agt-1")
    );
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
    let m = w.deliver(with_mention(), &e).await;
    assert_common(&m, &e, None);
    assert_eq!(header(&m), ":large_green_circle: Agent back online");
    assert_eq!(field(&m, "Agent").as_deref(), Some("edge-1"));
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
    let m = w.deliver(with_mention(), &e).await;
    assert_common(&m, &e, None);
    assert_eq!(header(&m), ":warning: Agent retired");
    assert_eq!(field(&m, "Agent").as_deref(), Some("edge-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_failed() {
    let w = world().await;
    let e = events::job_failed();
    // Without `mention` an error pings nobody.
    let m = w.deliver(json!({}), &e).await;
    assert_common(&m, &e, None);
    assert_eq!(header(&m), ":red_circle: Job failed");
    assert_eq!(field(&m, "Job").as_deref(), Some("revocation, 4 attempts"));
    assert_eq!(
        section(&m, "Reason").as_deref(),
        Some("letsencrypt: HTTP 503")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_events_send_nothing() {
    let w = world().await;
    let messages = w.assert_filters().await;
    // The second is agent.offline's.
    assert_eq!(header(&messages[1]), ":red_circle: Agent offline");

    // Both settings at once: the kind must be listed and severe enough.
    let both = w.notifier(json!({"min_severity": "error", "events": ["agent.retired"]}));
    both.notify(&agent_event(
        "agent.retired",
        Level::Warn,
        "retired",
        "resolved",
    ))
    .await
    .unwrap();
    both.notify(&agent_event(
        "agent.offline",
        Level::Error,
        "offline",
        "triggered",
    ))
    .await
    .unwrap();
    assert_eq!(w.chat.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_secret_are_checked_without_posting() {
    let w = world().await;
    w.notifier(json!({"min_severity": "warn", "events": ["deployment.failed"], "mention": "<!here> <@U024BE7LH>"}))
        .validate_config()
        .await
        .unwrap();
    let e = agent_event("agent.offline", Level::Error, "offline", "triggered");
    for settings in [
        json!({"min_severity": "urgent"}),
        json!({"events": ["deployment.broke"]}),
        json!({"events": []}),
        json!({"mention": "@channel"}),
        json!({"mention": "<https://evil.example|click>"}),
        json!({"channel": "#certs"}),
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
    // Not an incoming webhook URL, or none at all.
    let trigger = w.chat.url().replace("/services/", "/triggers/");
    let err = w
        .notifier_to(json!({}), &trigger)
        .validate_config()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/services/"), "{err}");
    assert!(!err.to_string().contains(w.chat.credential()), "{err}");
    let config = InstanceConfig::new("slack-no-secret")
        .with_hosts(&[w.chat.grant()])
        .unwrap();
    let err = instance(&w.plugin, config).notify(&e).await.unwrap_err();
    match err {
        CallError::Connector {
            error: ConnectorError::InvalidConfig(m),
            ..
        } => assert!(m.contains("webhook_url"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(w.chat.requests().is_empty(), "{:?}", w.chat.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_neither_pings_nor_breaks_the_message() {
    let w = world().await;
    let name = "<!channel> & <@U024BE7LH> *bold* <https://evil.example|click>";
    let reason = "x < y && z > w: <!here> &amp; done";
    let e = event(
        "deployment.failed",
        Level::Error,
        &format!("deploying {name} failed"),
        json!({
            "certificate": {"id": "c1", "name": name, "dns_names": ["<!everyone>.example.com", "a`b.example.com"]},
            "target": {"id": "t1", "name": "<!subteam^SAZ94GDB8>", "plugin": "nginx", "agent_id": "host"},
            "agent": {"id": "a1", "name": "edge\n<!here>"},
            "reason": reason,
        }),
    );

    // Without `mention`: nothing pings or links at all.
    let m = w.deliver(json!({}), &e).await;
    assert_common(&m, &e, None);
    assert_eq!(field(&m, "Certificate").as_deref(), Some(name));
    assert_eq!(
        field(&m, "DNS names").as_deref(),
        Some("`<!everyone>.example.com`, `a'b.example.com`")
    );
    assert_eq!(
        field(&m, "Target").as_deref(),
        Some("<!subteam^SAZ94GDB8> (nginx)")
    );
    assert_eq!(field(&m, "Agent").as_deref(), Some("edge <!here>"));
    assert_eq!(section(&m, "Reason").as_deref(), Some(reason));
    assert_eq!(
        slack_unescape(&summary(&m)),
        format!("deploying {name} failed")
    );

    // With `mention`: exactly the operator's mention pings.
    let m = w.deliver(json!({"mention": "<!here>"}), &e).await;
    assert_common(&m, &e, Some("<!here>"));
    assert_eq!(field(&m, "Certificate").as_deref(), Some(name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_events_are_cut_to_slacks_limits() {
    let w = world().await;
    let names: Vec<String> = (0..3000).map(|i| format!("host-{i}.example.com")).collect();
    let mut e = event(
        "deployment.failed",
        Level::Error,
        &"summary & more ".repeat(1000),
        json!({
            "certificate": {"id": "c1", "name": "n".repeat(5000), "dns_names": names,
                            "not_after": "2027-03-01T12:00:00Z", "issuer": "i", "owner": "o", "serial": "s"},
            "target": {"id": "t1", "name": "t".repeat(3000), "plugin": "nginx"},
            "agent": {"id": "a1", "name": "edge-1", "last_heartbeat_at": "2026-12-02T07:40:00Z"},
            "job": {"id": "j1", "type": "deploy", "attempts": 3},
            "expiring": {"stage": "7d", "hours_left": 150},
            "reason": "<reason> ".repeat(2000),
        }),
    );
    e.id = "i".repeat(1000);
    // The fake refuses what Slack refuses, so acceptance is the check.
    let m = w.deliver(with_mention(), &e).await;
    assert_eq!(fields(&m).len(), 10);
    assert!(fields(&m).iter().all(|(_, v)| v.chars().count() <= 2000));
    let reason = section(&m, "Reason").unwrap();
    assert!(reason.ends_with('…'), "{reason}");
    assert!(summary(&m).ends_with('…'));
    assert!(summary(&m).starts_with(MENTION));
    assert_eq!(
        pings(&m),
        [MENTION.to_string(), MENTION.to_string()],
        "a cut never leaves a control sequence open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_payload_is_rejected() {
    let w = world().await;
    w.chat.fail_next(ChatFault::text(400, "invalid_payload"));
    let err = w.failure(json!({}), &failing_event()).await;
    match &err {
        ConnectorError::Rejected(m) => {
            assert!(m.contains("HTTP 400: invalid_payload"), "{m}");
            assert!(m.contains(&format!("POST {}", w.chat.grant())), "{m}");
        }
        other => panic!("expected rejected, got {other:?}"),
    }
    assert_eq!(w.chat.requests().len(), 1);
    assert!(w.chat.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_problems_are_invalid_config() {
    let w = world().await;
    for (status, code) in [
        (403, "action_prohibited"),
        (404, "channel_not_found"),
        (410, "channel_is_archived"),
    ] {
        w.chat.fail_next(ChatFault::text(status, code));
        match w.failure(json!({}), &failing_event()).await {
            ConnectorError::InvalidConfig(m) => {
                assert!(m.contains(&format!("HTTP {status}: {code}")), "{m}");
            }
            other => panic!("{status} {code}: expected invalid-config, got {other:?}"),
        }
    }
    assert!(w.chat.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_or_removed_webhook_is_named() {
    let w = world().await;
    // Same team and service, another token: Slack says invalid_token.
    let url = w.chat.url();
    let (base, _) = url.rsplit_once('/').unwrap();
    let revoked = w
        .notifier_to(json!({}), &format!("{base}/NotTheToken0000000000000"))
        .notify(&failing_event())
        .await
        .unwrap_err();
    match &revoked {
        CallError::Connector {
            error: ConnectorError::Unauthorized(m),
            ..
        } => assert!(m.contains("invalid_token"), "{m}"),
        other => panic!("expected unauthorized, got {other:?}"),
    }
    // Another service: no_service, the webhook is gone.
    let removed = w
        .notifier_to(json!({}), &url.replace("/B0FAKE0001/", "/B0GONE0001/"))
        .notify(&failing_event())
        .await
        .unwrap_err();
    match &removed {
        CallError::Connector {
            error: ConnectorError::InvalidConfig(m),
            ..
        } => assert!(m.contains("HTTP 404: no_service"), "{m}"),
        other => panic!("expected invalid-config, got {other:?}"),
    }
    for err in [revoked, removed] {
        assert!(!err.to_string().contains(w.chat.credential()), "{err}");
        assert!(!err.to_string().contains("NotTheToken"), "{err}");
    }
    assert_eq!(w.chat.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_carry_retry_after() {
    let w = world().await;
    w.chat
        .fail_next(ChatFault::text(429, "rate_limited").with_header("retry-after", "7"));
    match w.failure(json!({}), &failing_event()).await {
        ConnectorError::RateLimited(r) => {
            assert_eq!(r.retry_after_secs, Some(7));
            assert!(r.message.contains("HTTP 429"), "{}", r.message);
        }
        other => panic!("expected rate-limited, got {other:?}"),
    }
    // Once Slack lets us, the same event goes through.
    w.notifier(json!({}))
        .notify(&failing_event())
        .await
        .unwrap();
    assert_eq!(w.chat.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_transport_failures_are_transient() {
    let w = world().await;
    for status in [500, 503] {
        w.chat.fail_next(
            ChatFault::text(status, "service_unavailable").with_header("retry-after", "5"),
        );
        match w.failure(json!({}), &failing_event()).await {
            ConnectorError::Transient(m) => assert!(m.contains(&format!("HTTP {status}")), "{m}"),
            other => panic!("{status}: expected transient, got {other:?}"),
        }
    }
    // Nothing listens any more: connection refused.
    w.assert_refused_is_transient().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let w = world().await;
    let elsewhere = format!("{}/services/T0FAKE0001/B0FAKE0001/moved", w.chat.grant());
    w.chat
        .fail_next(ChatFault::text(302, "").with_header("location", &elsewhere));
    match w.failure(json!({}), &failing_event()).await {
        ConnectorError::InvalidConfig(m) => {
            assert!(m.contains("HTTP 302"), "{m}");
            assert!(m.contains("not followed"), "{m}");
        }
        other => panic!("expected invalid-config, got {other:?}"),
    }
    assert_eq!(w.chat.requests().len(), 1, "{:?}", w.chat.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ungranted_webhook_url_is_denied() {
    world()
        .await
        .assert_ungranted_is_denied("https://hooks.slack.com")
        .await;
}
