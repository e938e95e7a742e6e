//! Notifications end to end: the `webhook` notifier connector delivering
//! through the host's `notifications` loop to a local receiver that checks
//! the Standard Webhooks signature of every request, on SQLite and
//! PostgreSQL; exactly-once delivery with two hosts on one PostgreSQL
//! database; and the failure mapping (500 retried, 410 failed for good).

use certplane_testkit::both_backends;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use certplane_host::api::AppState;
use certplane_host::engine;
use certplane_host::plugins::PluginRegistry;
use certplane_host::store::{
    JobFailure, JobType, KeySource, NewCertificate, NewJob, NewNotification, NewPluginInstance,
    Notification, NotificationStatus, Store, StoreOptions,
};
use certplane_runtime::Level;
use certplane_runtime::harness::{RecordedRequest, TestResponse, TestServer};
use certplane_testkit::Backend;
use certplane_testkit::app::TestApp;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

fn signing_key() -> Vec<u8> {
    STANDARD
        .decode(SECRET.strip_prefix("whsec_").unwrap())
        .unwrap()
}

/// What a Standard Webhooks receiver checks: the three headers, a recent
/// timestamp and one matching `v1` signature over `id.timestamp.body`.
fn verify(req: &RecordedRequest) -> Result<String, String> {
    let id = req.header("webhook-id").ok_or("no webhook-id")?;
    let ts = req
        .header("webhook-timestamp")
        .ok_or("no webhook-timestamp")?;
    let sigs = req
        .header("webhook-signature")
        .ok_or("no webhook-signature")?;
    let ts_num: i64 = ts.parse().map_err(|_| format!("bad timestamp {ts:?}"))?;
    let now = chrono::Utc::now().timestamp();
    if (now - ts_num).abs() > 300 {
        return Err(format!("timestamp {ts} too far from now {now}"));
    }
    let mut signed = format!("{id}.{ts}.").into_bytes();
    signed.extend_from_slice(&req.body);
    let expected = format!(
        "v1,{}",
        STANDARD.encode(hmac_sha256(&signing_key(), &signed))
    );
    if !sigs.split(' ').any(|s| s == expected) {
        return Err(format!("signature {sigs:?} does not match {expected:?}"));
    }
    Ok(id.to_owned())
}

#[test]
fn receiver_verifier_matches_the_standard_webhooks_vector() {
    let req = RecordedRequest {
        method: "POST".into(),
        path: "/".into(),
        headers: vec![],
        body: br#"{"email":"test@example.com","username":"test_user"}"#.to_vec(),
    };
    let mut signed = b"msg_27UH4WbU6Z5A5EzD8u03UvzRbpk.1649367553.".to_vec();
    signed.extend_from_slice(&req.body);
    assert_eq!(
        STANDARD.encode(hmac_sha256(&signing_key(), &signed)),
        "tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
    );
}

async fn app(backend: Backend) -> TestApp {
    TestApp::with_config(backend, |c| {
        c.scheduler.notifications_ms = 100;
    })
    .await
}

/// A `webhook` notifier posting to `server`, its signing secret sealed for
/// `notifier/<id>`.
async fn create_webhook(state: &AppState, server: &TestServer) -> String {
    create_webhook_to(state, "hook", &server.url(), &server.grant()).await
}

/// A `webhook` notifier called `name` posting to `base_url` (granted by
/// `grant`).
pub(crate) async fn create_webhook_to(
    state: &AppState,
    name: &str,
    base_url: &str,
    grant: &str,
) -> String {
    let id = uuid::Uuid::now_v7().to_string();
    let sealed = state
        .secrets
        .seal_map(
            &BTreeMap::from([("signing_secret".to_string(), SECRET.to_string())]),
            &format!("notifier/{id}"),
        )
        .unwrap();
    state
        .store
        .create_notifier_with_id(
            &id,
            NewPluginInstance {
                settings: serde_json::json!({ "url": format!("{base_url}/hooks/certplane") }),
                encrypted_secrets: Some(sealed.into_bytes()),
                grants: serde_json::json!({ "hosts": [grant] }),
                ..NewPluginInstance::new(name, "webhook", "0.1.0")
            },
        )
        .await
        .unwrap();
    id
}

async fn enqueue(store: &Store, notifier_id: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let row = store
            .enqueue_notification(NewNotification {
                notifier_id: notifier_id.to_owned(),
                event_type: "certificate.expiring".into(),
                subject: Some(format!("certificate/c{i}")),
                payload: serde_json::json!({
                    "summary": format!("certificate c{i} expires soon"),
                    "severity": "warn",
                    "occurred_at": 1_649_367_553,
                    "details": { "n": i },
                }),
                max_attempts: 5,
            })
            .await
            .unwrap();
        ids.push(row.id);
    }
    ids
}

async fn wait_for(
    store: &Store,
    id: &str,
    what: &str,
    done: impl Fn(&Notification) -> bool,
) -> Notification {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = store.get_notification(id).await.unwrap().unwrap();
        if done(&n) {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?} after {} attempts ({:?})",
            n.status,
            n.attempts,
            n.last_error
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Lets any (wrong) extra delivery arrive before counting requests.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(600)).await;
}

async fn delivered_once_with_a_valid_signature(backend: Backend) {
    let app = app(backend).await;
    let server = TestServer::start(|_| TestResponse::text(204, ""))
        .await
        .unwrap();
    let notifier = create_webhook(&app.state, &server).await;
    let enqueued = engine::notify::notify_all(
        &app.state,
        "certificate.issued",
        "certificate/web",
        "certificate web issued",
        Level::Info,
        serde_json::json!({ "serial": "01ab" }),
    )
    .await
    .unwrap();
    assert_eq!(enqueued, 1);
    let (rows, _) = app
        .store
        .list_notifications(None, None, 0, 10)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].notifier_id, notifier);
    let id = rows[0].id.clone();

    let scheduler = engine::start(app.state.engine.clone(), CancellationToken::new());
    let sent = wait_for(&app.store, &id, "sent", |n| {
        n.status == NotificationStatus::Sent
    })
    .await;
    settle().await;
    scheduler.shutdown(Duration::from_secs(5)).await;

    assert_eq!(sent.attempts, 1);
    assert!(sent.sent_at.is_some());
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "exactly one delivery");
    let req = &requests[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/hooks/certplane");
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(
        verify(req),
        Ok(id.clone()),
        "webhook-id is the notification id"
    );
    let body = req.json().unwrap();
    assert_eq!(body["type"], "certificate.issued");
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'), "{body}");
    assert_eq!(body["data"]["id"], id.as_str());
    assert_eq!(body["data"]["subject"], "certificate/web");
    assert_eq!(body["data"]["summary"], "certificate web issued");
    assert_eq!(body["data"]["severity"], "info");
    assert_eq!(
        body["data"]["details"],
        serde_json::json!({ "serial": "01ab" })
    );
}

async fn server_error_is_retried_then_sent_once(backend: Backend) {
    let app = app(backend).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let server = TestServer::start(move |_| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            TestResponse::text(500, "oops")
        } else {
            TestResponse::text(200, "ok")
        }
    })
    .await
    .unwrap();
    let notifier = create_webhook(&app.state, &server).await;
    let id = enqueue(&app.store, &notifier, 1).await.remove(0);

    let scheduler = engine::start(app.state.engine.clone(), CancellationToken::new());
    let sent = wait_for(&app.store, &id, "sent after a retry", |n| {
        n.status == NotificationStatus::Sent
    })
    .await;
    settle().await;
    scheduler.shutdown(Duration::from_secs(5)).await;

    assert_eq!(sent.attempts, 2);
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "one failed attempt, one success");
    for req in &requests {
        assert_eq!(verify(req), Ok(id.clone()), "same webhook-id on the retry");
    }
}

async fn gone_fails_permanently_and_disables_the_notifier(backend: Backend) {
    let app = app(backend).await;
    let server = TestServer::start(|_| TestResponse::text(410, "gone"))
        .await
        .unwrap();
    let notifier = create_webhook(&app.state, &server).await;
    let id = enqueue(&app.store, &notifier, 1).await.remove(0);

    let scheduler = engine::start(app.state.engine.clone(), CancellationToken::new());
    let failed = wait_for(&app.store, &id, "failed", |n| {
        n.status == NotificationStatus::Failed
    })
    .await;
    settle().await;
    scheduler.shutdown(Duration::from_secs(5)).await;

    assert_eq!(failed.attempts, 1, "not retried");
    let error = failed.last_error.unwrap_or_default();
    assert!(error.contains("the endpoint is gone"), "{error}");
    assert_eq!(server.requests().len(), 1);
    let after = app.store.get_notification(&id).await.unwrap().unwrap();
    assert_eq!(after.status, NotificationStatus::Failed);

    // The notifier is disabled (and audited): later events are not sent.
    let row = app.store.get_notifier(&notifier).await.unwrap().unwrap();
    assert!(row.disabled_at.is_some(), "the notifier was not disabled");
    let events = app
        .store
        .list_audit_events(Some("notifier"), Some(&notifier), 10)
        .await
        .unwrap();
    assert!(events.iter().any(|e| e.action == "notifier.disabled"));
    // A disabled notifier's queue waits (until it is enabled, updated or
    // cancelled): nothing is claimed or sent.
    let later = enqueue(&app.store, &notifier, 1).await.remove(0);
    let scheduler = engine::start(app.state.engine.clone(), CancellationToken::new());
    app.state.wake.notifications.notify_one();
    settle().await;
    scheduler.shutdown(Duration::from_secs(5)).await;
    let waiting = app.store.get_notification(&later).await.unwrap().unwrap();
    assert_eq!(
        (waiting.status, waiting.attempts),
        (NotificationStatus::Pending, 0),
        "a disabled notifier must not deliver"
    );
    assert_eq!(server.requests().len(), 1, "nothing more was sent");

    // A new configuration enables it again.
    let updated = app
        .store
        .update_notifier(
            &notifier,
            &row.settings,
            row.encrypted_secrets.clone(),
            &row.grants,
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert!(updated.disabled_at.is_none());
}

async fn rate_limited_waits_for_the_receivers_retry_after(backend: Backend) {
    let app = app(backend).await;
    let server =
        TestServer::start(|_| TestResponse::text(429, "slow down").header("retry-after", "120"))
            .await
            .unwrap();
    let notifier = create_webhook(&app.state, &server).await;
    let id = enqueue(&app.store, &notifier, 1).await.remove(0);

    let scheduler = engine::start(app.state.engine.clone(), CancellationToken::new());
    let pending = wait_for(&app.store, &id, "a failed attempt", |n| {
        n.attempts == 1 && n.status == NotificationStatus::Pending
    })
    .await;
    settle().await;
    scheduler.shutdown(Duration::from_secs(5)).await;

    let wait = pending.run_at - pending.updated_at;
    assert!(
        wait >= chrono::Duration::seconds(119) && wait <= chrono::Duration::seconds(121),
        "the next attempt waits for Retry-After (120 s), not the backoff: {wait}"
    );
    assert_eq!(server.requests().len(), 1, "no early retry");
}

/// A local-ca issuer whose CA key is sealed for `issuer/<id>`.
async fn create_local_ca(state: &AppState) -> String {
    certplane_testkit::ca_issuer(state, "local-ca", serde_json::json!({}))
        .await
        .id
}

async fn issuance_notifies(backend: Backend) {
    let app = TestApp::with_config(backend, |c| {
        c.scheduler.notifications_ms = 100;
        c.scheduler.jobs_ms = 100;
        c.scheduler.renewal_ms = 100;
    })
    .await;
    let server = TestServer::start(|_| TestResponse::text(200, "ok"))
        .await
        .unwrap();
    create_webhook(&app.state, &server).await;
    let issuer_id = create_local_ca(&app.state).await;
    let cert = app
        .store
        .create_certificate(NewCertificate {
            name: "web".into(),
            common_name: "web.notify.test".into(),
            sans: vec!["web.notify.test".into()],
            key_type: "ecdsa-p256".into(),
            key_source: KeySource::Host,
            issuer_id,
            target_id: None,
            renew_before_secs: 86_400,
            owner: None,
        })
        .await
        .unwrap();

    let scheduler = engine::start(app.state.engine.clone(), CancellationToken::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    let sent = loop {
        let (rows, _) = app
            .store
            .list_notifications(None, None, 0, 10)
            .await
            .unwrap();
        if let Some(n) = rows.iter().find(|n| n.status == NotificationStatus::Sent) {
            break n.clone();
        }
        assert!(Instant::now() < deadline, "no notification sent: {rows:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    settle().await;
    scheduler.shutdown(Duration::from_secs(5)).await;

    assert_eq!(sent.event_type, "certificate.issued");
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(verify(&requests[0]), Ok(sent.id.clone()));
    let body = requests[0].json().unwrap();
    assert_eq!(body["type"], "certificate.issued");
    assert_eq!(
        body["data"]["subject"],
        format!("certificate/{}", cert.id).as_str()
    );
    assert_eq!(
        body["data"]["details"]["certificate"]["id"],
        cert.id.as_str()
    );
    assert!(
        body["data"]["details"]["certificate"]["serial"].is_string(),
        "{body}"
    );
}

/// The expiry loop: a certificate entering a warning stage and a job that
/// failed for good are each notified once, however many ticks see them.
async fn expiry_and_failed_jobs_are_notified_once(backend: Backend) {
    let app = app(backend).await;
    let server = TestServer::start(|_| TestResponse::text(204, ""))
        .await
        .unwrap();
    let notifier = create_webhook(&app.state, &server).await;
    let issuer = certplane_testkit::fixtures::issuer(&app.store).await;
    let cert =
        certplane_testkit::fixtures::certificate(&app.store, &issuer.id, None, KeySource::Host)
            .await;
    certplane_testkit::fixtures::version_ending_in(&app.store, &cert.id, "01", 3).await;
    let mut new = NewJob::new(JobType::Revocation).certificate(cert.id.clone());
    new.max_attempts = 1;
    let job = app.store.create_job(new).await.unwrap();
    let claimed = app.store.claim_pending_jobs(None, 10).await.unwrap();
    let lease = claimed
        .iter()
        .find(|j| j.id == job.id)
        .unwrap()
        .lease()
        .unwrap();
    app.store
        .fail_job(&lease, JobFailure::permanent("the CA refused"))
        .await
        .unwrap();

    for _ in 0..3 {
        engine::expiry::tick(&app.state.engine).await.unwrap();
    }
    let of_kind = |kind: &str| {
        format!(
            "SELECT COUNT(*) FROM notifications WHERE notifier_id = '{notifier}' AND event_type = '{kind}'"
        )
    };
    assert_eq!(
        certplane_testkit::count(&app.store, &of_kind("certificate.expiring")).await,
        1
    );
    assert_eq!(
        certplane_testkit::count(&app.store, &of_kind("job.failed")).await,
        1
    );

    // Delivered, with the stage and the failure in the event.
    let scheduler = engine::start(app.state.engine.clone(), CancellationToken::new());
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.requests().len() < 2 {
        assert!(Instant::now() < deadline, "not delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    scheduler.shutdown(Duration::from_secs(5)).await;
    let bodies: Vec<serde_json::Value> = server
        .requests()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    let expiring = bodies
        .iter()
        .find(|b| b["type"] == "certificate.expiring")
        .unwrap();
    assert_eq!(expiring["data"]["details"]["expiring"]["stage"], "7d");
    let failed = bodies.iter().find(|b| b["type"] == "job.failed").unwrap();
    assert!(
        failed["data"]["summary"]
            .as_str()
            .unwrap()
            .contains("the CA refused"),
        "{failed}"
    );
}

/// A plugin directory whose `webhook` manifest asks for a `deadline_ms`
/// deadline instead of 15 s, so a hung receiver holds a delivery that long.
fn plugins_with_webhook_deadline(deadline_ms: u64) -> tempfile::TempDir {
    let dir = certplane_testkit::plugin_dir_with_fixtures(&[]);
    let manifest = dir.path().join("webhook.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let (before, after) = text.split_once("cpu_deadline_ms = ").unwrap();
    let rest = after.split_once('\n').map_or("", |(_, rest)| rest);
    std::fs::write(
        &manifest,
        format!("{before}cpu_deadline_ms = {deadline_ms}\n{rest}"),
    )
    .unwrap();
    dir
}

/// A receiver that accepts connections and never answers: every delivery
/// to it runs to the connector's deadline. Counts the connections.
pub(crate) async fn hung_receiver() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    (format!("http://127.0.0.1:{port}"), accepted)
}

/// Enqueues one notification for `notifier`, wakes the loop and returns
/// how long until `server` received it.
async fn delivery_latency(app: &TestApp, server: &TestServer, notifier: &str) -> Duration {
    let before = server.requests().len();
    let started = Instant::now();
    enqueue(&app.store, notifier, 1).await;
    app.state.wake.notifications.notify_one();
    loop {
        if server.requests().len() > before {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not delivered within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn count_of(store: &Store, notifier: &str, status: &str) -> i64 {
    certplane_testkit::count(
        store,
        &format!(
            "SELECT COUNT(*) FROM notifications WHERE notifier_id = '{notifier}' AND status = '{status}'"
        ),
    )
    .await
}

async fn wait_until_count(store: &Store, notifier: &str, status: &str, done: impl Fn(i64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = count_of(store, notifier, status).await;
        if done(n) {
            return;
        }
        assert!(Instant::now() < deadline, "{status}: {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A notifier whose receiver accepts and never answers (2 s deadline) beside
/// a healthy one: the healthy one's deliveries are not delayed while the
/// hung one is stuck; the operator disables the hung one and cancels its
/// queue through the API, after which nothing more reaches it; a disabled
/// queue waits and enabling delivers it.
async fn hung_notifier_does_not_delay_others_and_can_be_disabled_and_cancelled(backend: Backend) {
    let plugins = plugins_with_webhook_deadline(2_000);
    let app = TestApp::with_config(backend, |c| {
        c.scheduler.notifications_ms = 100;
        c.plugin_dir = plugins.path().to_path_buf();
    })
    .await;
    let server = TestServer::start(|_| TestResponse::text(204, ""))
        .await
        .unwrap();
    let healthy = create_webhook(&app.state, &server).await;
    let (hung_url, accepted) = hung_receiver().await;
    let hung = create_webhook_to(&app.state, "hung", &hung_url, &hung_url).await;
    let scheduler = engine::start(app.state.engine.clone(), CancellationToken::new());

    // Unloaded: the healthy notifier's latency alone.
    let mut unloaded = Vec::new();
    for _ in 0..3 {
        unloaded.push(delivery_latency(&app, &server, &healthy).await);
    }
    let baseline = *unloaded.iter().max().unwrap();

    // The hung notifier's queue: more than it may have in flight.
    const HUNG: i64 = 12;
    enqueue(&app.store, &hung, HUNG as usize).await;
    app.state.wake.notifications.notify_one();
    wait_until_count(&app.store, &hung, "sending", |n| n > 0).await;

    let bound = (baseline * 2).max(Duration::from_secs(1));
    let mut loaded = Vec::new();
    for _ in 0..5 {
        let latency = delivery_latency(&app, &server, &healthy).await;
        loaded.push(latency);
    }
    let stuck = count_of(&app.store, &hung, "sending").await;
    eprintln!(
        "healthy notifier latency: unloaded {unloaded:?}, beside a hung notifier {loaded:?} \
         (bound {bound:?}); hung notifier: {stuck} sending, {} connections",
        accepted.load(Ordering::SeqCst)
    );
    assert!(
        loaded.iter().all(|l| *l <= bound),
        "a hung notifier delayed a healthy one: {loaded:?} (unloaded {unloaded:?})"
    );
    assert!(
        stuck > 0 && stuck <= i64::from(app.state.config.limits.default_concurrency),
        "the hung notifier is stuck with at most its own slots: {stuck}"
    );
    assert_eq!(count_of(&app.store, &hung, "sent").await, 0);

    // Deleting it is refused, and the refusal says what to do.
    let r = app
        .call(
            Method::DELETE,
            &format!("/api/v1/notifiers/{hung}"),
            Some(&app.operator),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    let message = r.json["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("/api/v1/notifiers/{hung}/notifications/cancel"))
            && message.contains("cancel-pending"),
        "{message}"
    );

    // Disable: operators only, idempotent, audited once.
    let disable = format!("/api/v1/notifiers/{hung}/disable");
    let r = app.post(&disable, &app.reader, serde_json::json!({})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = app
        .post(&disable, &app.operator, serde_json::json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["changed"], true, "{}", r.json);
    assert!(r.json["disabled_at"].is_string(), "{}", r.json);
    // Its deliveries running here stop now, not at the connector's deadline:
    // back in its queue, which waits while it is disabled.
    let disabled_at = std::time::Instant::now();
    wait_until_count(&app.store, &hung, "sending", |n| n == 0).await;
    assert!(
        disabled_at.elapsed() < std::time::Duration::from_millis(1_500),
        "deliveries ran on for {:?} after the disable",
        disabled_at.elapsed()
    );
    let r = app
        .post(&disable, &app.operator, serde_json::json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["changed"], false, "{}", r.json);
    let r = app
        .post(
            "/api/v1/notifiers/no-such-notifier/disable",
            &app.operator,
            serde_json::json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    // Disabled: no new notification is queued for it.
    let queued = engine::notify::notify_all(
        &app.state,
        "certificate.issued",
        "certificate/web",
        "certificate web issued",
        Level::Info,
        serde_json::json!({}),
    )
    .await
    .unwrap();
    assert_eq!(queued, 1, "only the healthy notifier gets it");

    // Cancel its queue: everything not sent is cancelled now or, when in
    // flight, when its attempt ends.
    let cancel = format!("/api/v1/notifiers/{hung}/notifications/cancel");
    let r = app
        .post(&cancel, &app.operator, serde_json::json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let connections_at_cancel = accepted.load(Ordering::SeqCst);
    let cancelled = r.json["cancelled"].as_i64().unwrap();
    let in_flight = r.json["in_flight"].as_i64().unwrap();
    assert_eq!(cancelled + in_flight, HUNG, "{}", r.json);
    assert!(
        in_flight <= i64::from(app.state.config.limits.default_concurrency),
        "{}",
        r.json
    );
    let r = app
        .post(&cancel, &app.operator, serde_json::json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["cancelled"], 0, "nothing more to cancel: {}", r.json);

    // The attempts in flight end at the deadline, cancelled, not retried.
    wait_until_count(&app.store, &hung, "cancelled", |n| n == HUNG).await;
    app.state.wake.notifications.notify_one();
    settle().await;
    assert_eq!(count_of(&app.store, &hung, "cancelled").await, HUNG);
    assert_eq!(count_of(&app.store, &hung, "sent").await, 0);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        connections_at_cancel,
        "nothing reached the hung receiver after the cancel"
    );
    let actions: Vec<String> = app
        .store
        .list_audit_events(Some("notifier"), Some(&hung), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions.iter().filter(|a| *a == "notifier.disable").count(),
        1,
        "{actions:?}"
    );
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "notifier.notifications_cancel")
            .count(),
        1,
        "{actions:?}"
    );
    // Now it can go.
    let r = app
        .call(
            Method::DELETE,
            &format!("/api/v1/notifiers/{hung}"),
            Some(&app.operator),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // A disabled queue waits; enabling delivers it.
    let r = app
        .post(
            &format!("/api/v1/notifiers/{healthy}/disable"),
            &app.operator,
            serde_json::json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    settle().await;
    let before = server.requests().len();
    let waiting = enqueue(&app.store, &healthy, 2).await;
    app.state.wake.notifications.notify_one();
    settle().await;
    assert_eq!(server.requests().len(), before, "a disabled notifier sent");
    for id in &waiting {
        let n = app.store.get_notification(id).await.unwrap().unwrap();
        assert_eq!((n.status, n.attempts), (NotificationStatus::Pending, 0));
    }
    let r = app
        .post(
            &format!("/api/v1/notifiers/{healthy}/enable"),
            &app.operator,
            serde_json::json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["changed"], true, "{}", r.json);
    assert!(r.json["disabled_at"].is_null(), "{}", r.json);
    for id in &waiting {
        wait_for(&app.store, id, "sent after enable", |n| {
            n.status == NotificationStatus::Sent
        })
        .await;
    }
    let report = scheduler.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_clean(), "{report:?}");
}

/// Shutdown waits for deliveries in flight within the grace period (a hung
/// receiver's delivery ends at its 1 s deadline and is recorded), and stops
/// them after it, recorded as failed attempts to retry.
async fn shutdown_waits_for_deliveries_within_the_grace_period(backend: Backend) {
    let plugins = plugins_with_webhook_deadline(1_000);
    let app = TestApp::with_config(backend, |c| {
        c.scheduler.notifications_ms = 100;
        c.plugin_dir = plugins.path().to_path_buf();
    })
    .await;
    let (hung_url, _) = hung_receiver().await;
    let hung = create_webhook_to(&app.state, "hung", &hung_url, &hung_url).await;
    let ids = enqueue(&app.store, &hung, 2).await;

    let scheduler = engine::start(app.state.engine.clone(), CancellationToken::new());
    wait_until_count(&app.store, &hung, "sending", |n| n == 2).await;
    let claimed = app.store.get_notification(&ids[0]).await.unwrap().unwrap();
    let lease = claimed.lease_expires_at.unwrap() - claimed.updated_at;
    assert!(
        lease >= chrono::Duration::seconds(30),
        "the lease outlasts the deadline: {lease}"
    );
    let started = Instant::now();
    let report = scheduler.shutdown(Duration::from_secs(10)).await;
    assert!(report.is_clean(), "{report:?}");
    assert!(
        report.drained.contains(&"notification-deliveries"),
        "{report:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(count_of(&app.store, &hung, "sending").await, 0, "recorded");

    // A grace period shorter than the deadline: the deliveries are stopped
    // and given back to be retried at once, not left to their leases.
    let scheduler = engine::start(app.state.engine.clone(), CancellationToken::new());
    wait_until_count(&app.store, &hung, "sending", |n| n == 2).await;
    let started = Instant::now();
    let report = scheduler.shutdown(Duration::from_millis(100)).await;
    assert!(
        report.aborted.contains(&"notification-deliveries"),
        "{report:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(count_of(&app.store, &hung, "sending").await, 0);
    for id in &ids {
        let n = app.store.get_notification(id).await.unwrap().unwrap();
        assert_eq!(n.status, NotificationStatus::Pending);
        assert!(
            n.last_error.unwrap_or_default().contains("host shut down"),
            "{id}"
        );
    }
}

/// The store side of per-notifier queues: claims of one notifier only, with
/// the lease asked for; none for a disabled notifier; cancellation of
/// pending and in-flight notifications.
async fn per_notifier_claims_leases_and_cancellation(backend: Backend) {
    let app = app(backend).await;
    let store = &app.store;
    let mut notifiers = Vec::new();
    for name in ["a", "b"] {
        let id = uuid::Uuid::now_v7().to_string();
        store
            .create_notifier_with_id(&id, NewPluginInstance::new(name, "webhook", "0.1.0"))
            .await
            .unwrap();
        enqueue(store, &id, 3).await;
        notifiers.push(id);
    }
    let (a, b) = (&notifiers[0], &notifiers[1]);
    let audit = |action: &str, id: &str| certplane_host::store::NewAuditEvent {
        actor: "apikey:test".into(),
        actor_type: certplane_host::store::ActorType::ApiKey,
        action: action.into(),
        subject_type: "notifier".into(),
        subject_id: Some(id.to_owned()),
        details: serde_json::json!({}),
    };

    let mut due = store.notifiers_with_due_notifications().await.unwrap();
    due.sort();
    let mut both = notifiers.clone();
    both.sort();
    assert_eq!(due, both);
    let claimed = store
        .claim_notifier_notifications(a, 2, Duration::from_secs(3_600))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    for n in &claimed {
        assert_eq!(&n.notifier_id, a);
        let lease = n.lease_expires_at.unwrap() - n.updated_at;
        assert!(lease >= chrono::Duration::seconds(3_590), "{lease}");
    }

    // Disabled: nothing claimed, not due; idempotent and audited once.
    let (_, changed) = store
        .set_notifier_disabled(b, true, audit("notifier.disable", b))
        .await
        .unwrap()
        .unwrap();
    assert!(changed);
    let (row, changed) = store
        .set_notifier_disabled(b, true, audit("notifier.disable", b))
        .await
        .unwrap()
        .unwrap();
    assert!(!changed && row.disabled_at.is_some());
    assert!(
        store
            .set_notifier_disabled("no-such", true, audit("notifier.disable", "no-such"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .list_audit_events(Some("notifier"), Some(b), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        store
            .claim_notifier_notifications(b, 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.notifiers_with_due_notifications().await.unwrap(),
        vec![a.clone()]
    );

    // Cancel: pending now, in flight when the attempt ends.
    let counts = store
        .cancel_notifier_notifications(
            b,
            "cancelled by test",
            audit("notifier.notifications_cancel", b),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((counts.cancelled, counts.in_flight), (3, 0));
    let counts = store
        .cancel_notifier_notifications(
            a,
            "cancelled by test",
            audit("notifier.notifications_cancel", a),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((counts.cancelled, counts.in_flight), (1, 2));
    let failed = claimed[0].lease().unwrap();
    assert!(
        store
            .mark_notification_failed(&failed, "timed out", false, None)
            .await
            .unwrap()
    );
    let sent = claimed[1].lease().unwrap();
    assert!(store.mark_notification_sent(&sent).await.unwrap());
    let status = |id: &str| {
        let id = id.to_owned();
        async move { store.get_notification(&id).await.unwrap().unwrap().status }
    };
    assert_eq!(status(&claimed[0].id).await, NotificationStatus::Cancelled);
    assert_eq!(status(&claimed[1].id).await, NotificationStatus::Sent);
    assert_eq!(count_of(store, a, "cancelled").await, 2);
    assert_eq!(count_of(store, b, "cancelled").await, 3);
    assert_eq!(store.notifier_queue_counts(a).await.unwrap(), (0, 0));
    assert!(
        store
            .cancel_notifier_notifications(
                "no-such",
                "x",
                audit("notifier.notifications_cancel", "no-such")
            )
            .await
            .unwrap()
            .is_none()
    );
}

/// One notification's strong ETag: 304 while it waits in the queue, a new
/// tag once the queue is cancelled, and that one current in turn. (No
/// delivery loop runs here: only the cancellation changes it.)
async fn a_notification_has_an_etag_that_changes_with_it(backend: Backend) {
    let app = TestApp::new(backend).await;
    let notifier = app
        .store
        .create_notifier(NewPluginInstance::new("hook", "webhook", "0.1.0"))
        .await
        .unwrap();
    let id = enqueue(&app.store, &notifier.id, 1).await.remove(0);
    let first = app
        .get(&format!("/api/v1/notifications/{id}"), &app.reader)
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.json["status"], "pending");
    let tag = first.etag();
    assert!(
        tag.starts_with('"') && tag.ends_with('"'),
        "a strong tag: {tag}"
    );
    let r = app
        .get_if_none_match(&format!("/api/v1/notifications/{id}"), &app.reader, &tag)
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{}", r.text);
    assert!(r.text.is_empty(), "{}", r.text);
    assert_eq!(r.etag(), tag);

    let r = app
        .post(
            &format!("/api/v1/notifiers/{}/notifications/cancel", notifier.id),
            &app.operator,
            serde_json::json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["cancelled"], 1, "{}", r.text);
    let r = app
        .get_if_none_match(&format!("/api/v1/notifications/{id}"), &app.reader, &tag)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "cancelled");
    let new_tag = r.etag();
    assert_ne!(new_tag, tag);
    let r = app
        .get_if_none_match(
            &format!("/api/v1/notifications/{id}"),
            &app.reader,
            &new_tag,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{}", r.text);
}

both_backends!(
    a_notification_has_an_etag_that_changes_with_it,
    hung_notifier_does_not_delay_others_and_can_be_disabled_and_cancelled,
    shutdown_waits_for_deliveries_within_the_grace_period,
    per_notifier_claims_leases_and_cancellation,
    issuance_notifies,
    expiry_and_failed_jobs_are_notified_once,
    delivered_once_with_a_valid_signature,
    server_error_is_retried_then_sent_once,
    gone_fails_permanently_and_disables_the_notifier,
    rate_limited_waits_for_the_receivers_retry_after
);

/// Two hosts (two pools with their own lease owner, one database, one
/// secret key) dispatching 50 notifications: each is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_deliver_each_notification_exactly_once() {
    let app = app(Backend::Postgres).await;
    let server = TestServer::start(|_| TestResponse::text(200, "ok"))
        .await
        .unwrap();
    let notifier = create_webhook(&app.state, &server).await;

    let store2 = Store::connect_with(
        &app.db.url,
        StoreOptions {
            instance_id: "second-host".into(),
            ..certplane_testkit::test_options()
        },
    )
    .await
    .unwrap();
    let registry = PluginRegistry::load(&app.state.config.plugin_dir, None)
        .await
        .unwrap();
    let state2 = AppState::new(
        store2.clone(),
        app.state.config.clone(),
        Arc::new(registry),
        app.state.secrets.clone(),
    );
    let first = engine::start(app.state.engine.clone(), CancellationToken::new());
    let second = engine::start(state2.engine.clone(), CancellationToken::new());

    let ids = enqueue(&app.store, &notifier, 50).await;
    app.state.wake.notifications.notify_one();
    state2.wake.notifications.notify_one();

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sent = certplane_testkit::count(
            &app.store,
            "SELECT COUNT(*) FROM notifications WHERE status = 'sent'",
        )
        .await;
        if sent == 50 {
            break;
        }
        assert!(Instant::now() < deadline, "only {sent} of 50 sent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    settle().await;
    first.shutdown(Duration::from_secs(5)).await;
    second.shutdown(Duration::from_secs(5)).await;

    let requests = server.requests();
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    for req in &requests {
        let id = verify(req).unwrap_or_else(|e| panic!("bad delivery: {e}"));
        *per_id.entry(id).or_default() += 1;
    }
    let dupes: Vec<_> = per_id.iter().filter(|(_, n)| **n != 1).collect();
    assert!(dupes.is_empty(), "delivered more than once: {dupes:?}");
    assert_eq!(
        per_id.keys().cloned().collect::<BTreeSet<_>>(),
        ids.iter().cloned().collect::<BTreeSet<_>>(),
        "every notification delivered"
    );
    assert_eq!(requests.len(), 50);
    assert_eq!(
        certplane_testkit::count(
            &app.store,
            "SELECT COUNT(*) FROM notifications WHERE status = 'sent' AND attempts = 1",
        )
        .await,
        50
    );
    let by_owner = certplane_testkit::count(
        &app.store,
        "SELECT COUNT(DISTINCT lease_owner) FROM notifications",
    )
    .await;
    eprintln!("notifications delivered by {by_owner} host(s)");
}
