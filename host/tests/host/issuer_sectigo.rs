//! The `sectigo` issuer through the host, against the test kit's fake
//! Sectigo Certificate Manager, on SQLite and PostgreSQL: the issuer is
//! created through the API (schema and `validate-config`), a host restart
//! while the SCM order is pending resumes that order (one enrollment at the
//! fake), and a revocation through the API reaches SCM with the order's
//! sslId.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use certplane_host::api::AppState;
use certplane_host::engine;
use certplane_host::plugins::PluginRegistry;
use certplane_host::store::{
    Certificate, Job, JobStatus, JobType, KeySource, NewCertificate, Store, StoreOptions,
};
use certplane_testkit::Backend;
use certplane_testkit::app::TestApp;
use certplane_testkit::fake_sectigo::{self, FakeSectigo};
use certplane_testkit::jobs::wait_for_job;
use certplane_testkit::plugin_dir_with_fixtures;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const NAME: &str = "www.sectigo.test";

struct Setup {
    app: TestApp,
    scm: FakeSectigo,
    cert: Certificate,
    _plugins: tempfile::TempDir,
}

/// A sectigo issuer created through the API, granted only the fake, and
/// one host-key certificate for it.
async fn setup(backend: Backend, pending_collects: u32) -> Setup {
    let scm = FakeSectigo::start().await;
    scm.set_pending_collects(pending_collects);
    let plugins = plugin_dir_with_fixtures(&[]);
    let dir = plugins.path().to_path_buf();
    let app = TestApp::with_config(backend, |c| {
        c.plugin_dir = dir;
        c.scheduler.jobs_ms = 100;
        c.scheduler.order_poll_ms = 100;
        c.scheduler.renewal_ms = 100;
    })
    .await;
    let reply = app
        .post(
            "/api/v1/issuers",
            &app.operator,
            json!({
                "name": "sectigo",
                "plugin": "sectigo",
                "settings": scm.settings(),
                "secrets": { "login": fake_sectigo::LOGIN, "password": fake_sectigo::PASSWORD },
                "grants": { "hosts": [scm.grant()] },
            }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(
        scm.requests(),
        vec!["GET /api/ssl/v1/types".to_string()],
        "creating the issuer ran validate-config"
    );
    let issuer_id = reply.json["id"].as_str().unwrap().to_string();
    let cert = app
        .store
        .create_certificate(NewCertificate {
            name: "sectigo-web".into(),
            common_name: NAME.into(),
            sans: vec![NAME.into(), "sectigo.test".into()],
            key_type: "ecdsa-p256".into(),
            key_source: KeySource::Host,
            issuer_id,
            target_id: None,
            renew_before_secs: 86_400,
            owner: None,
        })
        .await
        .unwrap();
    Setup {
        app,
        scm,
        cert,
        _plugins: plugins,
    }
}

async fn wait_for(
    store: &Store,
    cert: &Certificate,
    job_type: JobType,
    what: &str,
    done: impl Fn(&Job) -> bool,
) -> Job {
    let within = Duration::from_secs(40);
    wait_for_job(store, &cert.id, job_type, what, within, done).await
}

async fn restart_mid_order_resumes_the_same_enrollment(backend: Backend) {
    // Three -183 answers one second apart: time enough to stop the host.
    let s = setup(backend, 3).await;
    let first = engine::start(s.app.state.engine.clone(), CancellationToken::new());
    let polling = wait_for(&s.app.store, &s.cert, JobType::Issuance, "Polling", |j| {
        j.status == JobStatus::Polling
    })
    .await;
    let report = first.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_clean(), "{report:?}");
    let order_id = polling.order_id.clone().expect("order persisted");
    let orders = s.scm.orders();
    assert_eq!(orders.len(), 1);
    assert_eq!(order_id, orders[0].ssl_id.to_string(), "order id = sslId");
    assert!(
        orders[0].certificate_pem.is_none(),
        "stopped before the certificate was collected"
    );

    // A new host process: new store pool (another lease owner), new plugin
    // registry, same database and secrets key.
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
    let done = wait_for(
        &store2,
        &s.cert,
        JobType::Issuance,
        "Completed after restart",
        |j| j.status == JobStatus::Completed,
    )
    .await;
    second.shutdown(Duration::from_secs(5)).await;
    assert_eq!(done.order_id.as_deref(), Some(order_id.as_str()));
    assert_eq!(s.scm.enrollments(), 1, "exactly one enrollment at SCM");
    assert_eq!(s.scm.enrollments_for(NAME), 1);
    assert_eq!(s.scm.enroll_requests().len(), 1);
    let order = &s.scm.orders()[0];
    assert!(
        order.collects >= 4,
        "three -183 answers, then the certificate"
    );
    let cert = store2.get_certificate(&s.cert.id).await.unwrap().unwrap();
    assert!(cert.current_version_id.is_some(), "the version is current");
}

async fn revoke_through_the_api_reaches_scm_with_the_ssl_id(backend: Backend) {
    let s = setup(backend, 0).await;
    let scheduler = engine::start(s.app.state.engine.clone(), CancellationToken::new());
    let issued = wait_for(&s.app.store, &s.cert, JobType::Issuance, "issued", |j| {
        j.status == JobStatus::Completed
    })
    .await;
    let ssl_id = s.scm.orders()[0].ssl_id;
    assert_eq!(issued.order_id, Some(ssl_id.to_string()));
    let serial = s.scm.orders()[0].serial_hex.clone().unwrap();

    let reply = s
        .app
        .post(
            &format!("/api/v1/certificates/{}/revoke", s.cert.id),
            &s.app.operator,
            json!({ "reason": "key-compromise" }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let revoked = wait_for(
        &s.app.store,
        &s.cert,
        JobType::Revocation,
        "the revocation job's end",
        |j| matches!(j.status, JobStatus::Completed | JobStatus::Failed),
    )
    .await;
    scheduler.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        revoked.status,
        JobStatus::Completed,
        "{:?}",
        revoked.last_error
    );
    let revocations = s.scm.revocations();
    assert_eq!(revocations.len(), 1);
    assert_eq!(revocations[0].ssl_id, ssl_id);
    let reason = &revocations[0].reason;
    assert!(
        reason.starts_with("Key compromise (revoked through certplane")
            && reason.to_ascii_lowercase().contains(&serial),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_restart_mid_order_resumes_the_same_enrollment() {
    restart_mid_order_resumes_the_same_enrollment(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_order_resumes_the_same_enrollment() {
    restart_mid_order_resumes_the_same_enrollment(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_revoke_through_the_api_reaches_scm_with_the_ssl_id() {
    revoke_through_the_api_reaches_scm_with_the_ssl_id(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_revoke_through_the_api_reaches_scm_with_the_ssl_id() {
    revoke_through_the_api_reaches_scm_with_the_ssl_id(Backend::Postgres).await;
}
