//! The issuance pipeline against an asynchronous CA (the `slow-ca` test
//! connector): the order is persisted and polled with the asyncpoll backoff
//! and the connector's retry-after hint, a host restart mid-polling resumes
//! the same order, and each connector error class ends the job as the
//! contract says.

use std::sync::Arc;
use std::time::Duration;

use certplane_host::api::AppState;
use certplane_host::engine;
use certplane_host::plugins::PluginRegistry;
use certplane_host::store::{
    Certificate, Job, JobStatus, JobType, KeySource, NewCertificate, Store, StoreOptions,
};
use certplane_testkit::Backend;
use certplane_testkit::app::TestApp;
use certplane_testkit::jobs::wait_for_job;
use certplane_testkit::plugin_dir_with_fixtures;
use tokio_util::sync::CancellationToken;

struct Setup {
    app: TestApp,
    cert: Certificate,
    _plugins: tempfile::TempDir,
}

/// A slow-ca issuer with `settings` merged in, and one host-key certificate.
async fn setup(backend: Backend, settings: serde_json::Value) -> Setup {
    let plugins = plugin_dir_with_fixtures(&["slow-ca"]);
    let dir = plugins.path().to_path_buf();
    let app = TestApp::with_config(backend, |c| {
        c.plugin_dir = dir;
        c.scheduler.jobs_ms = 100;
        c.scheduler.order_poll_ms = 100;
        c.scheduler.renewal_ms = 100;
    })
    .await;
    let issuer = certplane_testkit::ca_issuer(&app.state, "slow-ca", settings).await;
    let cert = app
        .store
        .create_certificate(NewCertificate {
            name: "slow".into(),
            common_name: "slow.pipeline.test".into(),
            sans: vec!["slow.pipeline.test".into()],
            key_type: "ecdsa-p256".into(),
            key_source: KeySource::Host,
            issuer_id: issuer.id,
            target_id: None,
            renew_before_secs: 86_400,
            owner: None,
        })
        .await
        .unwrap();
    Setup {
        app,
        cert,
        _plugins: plugins,
    }
}

async fn wait_for(
    store: &Store,
    cert: &Certificate,
    what: &str,
    done: impl Fn(&Job) -> bool,
) -> Job {
    let within = Duration::from_secs(40);
    wait_for_job(store, &cert.id, JobType::Issuance, what, within, done).await
}

async fn orders_placed(store: &Store, job: &Job) -> i64 {
    certplane_testkit::count(
        store,
        &format!(
            "SELECT COUNT(*) FROM audit_events WHERE subject_id = '{}' AND action = 'issuance.order_placed'",
            job.id
        ),
    )
    .await
}

async fn async_order_is_polled_until_issued(backend: Backend) {
    let s = setup(
        backend,
        serde_json::json!({ "pending_polls": 2, "retry_after_secs": 1 }),
    )
    .await;
    let scheduler = engine::start(s.app.state.engine.clone(), CancellationToken::new());
    let polling = wait_for(&s.app.store, &s.cert, "Polling", |j| {
        j.status == JobStatus::Polling
    })
    .await;
    let order_id = polling.order_id.clone().expect("order persisted");
    assert!(polling.order_state.is_some() && polling.csr_pem.is_some());
    // The host keeps the sealed private key in the job; the API never shows it.
    let shown = s
        .app
        .get(&format!("/api/v1/jobs/{}", polling.id), &s.app.reader)
        .await;
    assert_eq!(shown.status, axum::http::StatusCode::OK, "{}", shown.text);
    assert!(!shown.text.contains("sealed_key"), "{}", shown.text);
    assert!(
        polling
            .payload
            .as_ref()
            .is_some_and(|p| p.get("sealed_key").is_some())
    );
    let next = polling.next_poll_at.expect("next poll time");
    let delay = next - polling.updated_at;
    assert!(
        delay >= chrono::Duration::milliseconds(900)
            && delay <= chrono::Duration::milliseconds(1100),
        "the connector's 1 s retry-after hint replaces the 5 s backoff: {delay}"
    );
    let done = wait_for(&s.app.store, &s.cert, "Completed", |j| {
        j.status == JobStatus::Completed
    })
    .await;
    assert_eq!(
        done.order_id.as_deref(),
        Some(order_id.as_str()),
        "same order throughout"
    );
    assert_eq!(done.attempts, 1);
    assert_eq!(
        orders_placed(&s.app.store, &done).await,
        1,
        "one order placed"
    );
    let cert = s
        .app
        .store
        .get_certificate(&s.cert.id)
        .await
        .unwrap()
        .unwrap();
    assert!(cert.current_version_id.is_some());
    scheduler.shutdown(Duration::from_secs(5)).await;
}

async fn restart_mid_polling_resumes_the_same_order(backend: Backend) {
    // Three polls one second apart: time enough to stop the first host.
    let s = setup(
        backend,
        serde_json::json!({ "pending_polls": 3, "retry_after_secs": 1 }),
    )
    .await;
    let first = engine::start(s.app.state.engine.clone(), CancellationToken::new());
    let polling = wait_for(&s.app.store, &s.cert, "Polling", |j| {
        j.status == JobStatus::Polling
    })
    .await;
    let report = first.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_clean(), "{report:?}");
    let order_id = polling.order_id.clone().unwrap();

    // A new host process: new store pool (another lease owner), new plugin
    // registry and secrets from the same key, same database.
    let store2 = Store::connect_with(
        &s.app.db.url,
        StoreOptions {
            instance_id: "second-host".into(),
            ..certplane_testkit::test_options()
        },
    )
    .await
    .unwrap();
    let registry = PluginRegistry::load(&s.app.state.config.plugin_dir, None)
        .await
        .unwrap();
    let state2 = AppState::new(
        store2.clone(),
        s.app.state.config.clone(),
        Arc::new(registry),
        s.app.state.secrets.clone(),
    );
    let second = engine::start(state2.engine, CancellationToken::new());
    let done = wait_for(&store2, &s.cert, "Completed after restart", |j| {
        j.status == JobStatus::Completed
    })
    .await;
    assert_eq!(
        done.order_id.as_deref(),
        Some(order_id.as_str()),
        "the restarted host polled the same order"
    );
    assert_eq!(
        orders_placed(&store2, &done).await,
        1,
        "no second order after the restart"
    );
    assert_eq!(done.attempts, 1);
    second.shutdown(Duration::from_secs(5)).await;
}

async fn connector_error_classes_end_jobs_as_specified(backend: Backend) {
    for (class, permanent) in [
        ("rejected", true),
        ("invalid-config", true),
        ("unauthorized", true),
        ("unsupported", true),
        ("transient", false),
        ("rate-limited", false),
    ] {
        let s = setup(
            backend,
            serde_json::json!({ "fail_with": class, "retry_after_secs": 120 }),
        )
        .await;
        let scheduler = engine::start(s.app.state.engine.clone(), CancellationToken::new());
        let failed = wait_for(&s.app.store, &s.cert, class, |j| {
            j.status == JobStatus::Failed
        })
        .await;
        scheduler.shutdown(Duration::from_secs(5)).await;
        assert!(
            failed.last_error.as_deref().unwrap_or("").contains(class),
            "{class}: {:?}",
            failed.last_error
        );
        if permanent {
            assert_eq!(
                failed.attempts, failed.max_attempts,
                "{class} spends the attempt budget"
            );
        } else {
            assert!(
                failed.attempts < failed.max_attempts,
                "{class} keeps its budget for retries"
            );
        }
        if class == "rate-limited" {
            let wait = failed.run_at - failed.updated_at;
            assert!(
                wait >= chrono::Duration::seconds(119) && wait <= chrono::Duration::seconds(121),
                "rate-limited retries after the connector's hint: {wait}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_async_order_is_polled_until_issued() {
    async_order_is_polled_until_issued(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_async_order_is_polled_until_issued() {
    async_order_is_polled_until_issued(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_restart_mid_polling_resumes_the_same_order() {
    restart_mid_polling_resumes_the_same_order(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_polling_resumes_the_same_order() {
    restart_mid_polling_resumes_the_same_order(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_connector_error_classes_end_jobs_as_specified() {
    connector_error_classes_end_jobs_as_specified(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connector_error_classes_end_jobs_as_specified() {
    connector_error_classes_end_jobs_as_specified(Backend::Postgres).await;
}
