//! The `digicert` issuer through the host, against the test kit's fake
//! CertCentral, on SQLite and PostgreSQL: issuer and certificate are
//! created through the API (settings schema, `validate-config` over HTTP),
//! a host restart while the DigiCert order is pending resumes that very
//! order (the fake sees one order), and a revocation through the API
//! reaches CertCentral with DigiCert's certificate id.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use certplane_host::api::AppState;
use certplane_host::engine;
use certplane_host::plugins::PluginRegistry;
use certplane_host::store::{Job, JobStatus, JobType, Store, StoreOptions};
use certplane_testkit::app::TestApp;
use certplane_testkit::fake_digicert::{FAKE_ORGANIZATION_ID, FakeDigicert};
use certplane_testkit::jobs::wait_for_job;
use certplane_testkit::{Backend, plugin_dir_with_fixtures};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const NAME: &str = "www.digicert-host.test";

struct Setup {
    app: TestApp,
    dc: FakeDigicert,
    cert_id: String,
    _plugins: tempfile::TempDir,
}

/// A digicert issuer created through the API, granted only the fake, and
/// one host-key certificate for it.
async fn setup(backend: Backend) -> Setup {
    let dc = FakeDigicert::start().await;
    let plugins = plugin_dir_with_fixtures(&[]);
    let dir = plugins.path().to_path_buf();
    let app = TestApp::with_config(backend, |c| {
        c.plugin_dir = dir;
        c.scheduler.jobs_ms = 100;
        c.scheduler.order_poll_ms = 100;
        c.scheduler.renewal_ms = 100;
    })
    .await;

    // The schema refuses what the connector cannot use, before any call.
    let refused = app
        .post(
            "/api/v1/issuers",
            &app.operator,
            json!({
                "name": "digicert-bad",
                "plugin": "digicert",
                "settings": { "base_url": dc.url(), "product": "ssl_basic" },
                "secrets": { "api_key": dc.api_key() },
                "grants": { "hosts": [dc.grant()] },
            }),
        )
        .await;
    assert!(
        refused.status.is_client_error(),
        "an OV product without organization_id: {}",
        refused.text
    );
    assert!(refused.text.contains("organization_id"), "{}", refused.text);

    let reply = app
        .post(
            "/api/v1/issuers",
            &app.operator,
            json!({
                "name": "digicert",
                "plugin": "digicert",
                "settings": {
                    "base_url": dc.url(),
                    "product": "ssl_basic",
                    "organization_id": FAKE_ORGANIZATION_ID,
                    "poll_interval_secs": 1,
                },
                "secrets": { "api_key": dc.api_key() },
                "grants": { "hosts": [dc.grant()] },
            }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert!(!reply.text.contains(&dc.api_key()), "the key leaks");
    assert_eq!(dc.refused_keys(), 0, "validate-config used the key");
    let issuer_id = reply.json["id"].as_str().unwrap().to_string();

    let reply = app
        .post(
            "/api/v1/certificates",
            &app.operator,
            json!({
                "name": "digicert-web",
                "common_name": NAME,
                "sans": [NAME, "digicert-host.test"],
                "issuer_id": issuer_id,
                "key_source": "host",
            }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let cert_id = reply.json["id"].as_str().unwrap().to_string();
    Setup {
        app,
        dc,
        cert_id,
        _plugins: plugins,
    }
}

async fn wait_for(
    store: &Store,
    cert_id: &str,
    job_type: JobType,
    what: &str,
    done: impl Fn(&Job) -> bool,
) -> Job {
    let within = Duration::from_secs(60);
    wait_for_job(store, cert_id, job_type, what, within, done).await
}

/// A second host process on the same database: new pool (another lease
/// owner), new plugin registry, the same secrets key.
async fn second_host(app: &TestApp) -> AppState {
    let store = Store::connect_with(
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
    AppState::new(
        store,
        app.state.config.clone(),
        Arc::new(registry),
        app.state.secrets.clone(),
    )
}

async fn restart_resumes_the_order_and_revoke_reaches_digicert(backend: Backend) {
    let s = setup(backend).await;
    // Pending long enough to stop the first host while the order waits.
    s.dc.set_pending_polls(u32::MAX);
    let first = engine::start(s.app.state.engine.clone(), CancellationToken::new());
    let polling = wait_for(
        &s.app.store,
        &s.cert_id,
        JobType::Issuance,
        "Polling",
        |j| j.status == JobStatus::Polling,
    )
    .await;
    assert!(
        s.dc.wait_for(Duration::from_secs(20), |dc| dc.polls() >= 1)
            .await,
        "the first host polled the order"
    );
    let report = first.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_clean(), "{report:?}");
    let orders = s.dc.orders();
    assert_eq!(orders.len(), 1, "one order before the restart");
    let order = &orders[0];
    assert_eq!(
        polling.order_id.as_deref(),
        Some(order.id.to_string().as_str()),
        "the job holds DigiCert's order id"
    );
    assert_eq!(order.common_name, NAME);
    assert_eq!(
        order.dns_names,
        vec![NAME.to_string(), "digicert-host.test".to_string()]
    );
    assert!(
        order
            .comments
            .as_deref()
            .is_some_and(|c| c.contains(&s.cert_id)),
        "{:?}",
        order.comments
    );

    // The restarted host issues the same order: no second order.
    s.dc.set_pending_polls(0);
    let state2 = second_host(&s.app).await;
    let store2 = state2.store.clone();
    let second = engine::start(state2.engine.clone(), CancellationToken::new());
    let done = wait_for(
        &store2,
        &s.cert_id,
        JobType::Issuance,
        "Completed after the restart",
        |j| j.status == JobStatus::Completed,
    )
    .await;
    assert_eq!(done.order_id, polling.order_id, "the same order throughout");
    assert_eq!(
        (s.dc.orders_placed(), s.dc.submits(), s.dc.orders_for(NAME)),
        (1, 1, 1),
        "exactly one order at DigiCert"
    );
    let issued = s.dc.orders().remove(0);
    assert_eq!(issued.status, "issued");
    let certificate_id = issued.certificate_id.expect("DigiCert certificate id");
    assert_eq!(s.dc.downloads(), 1);

    // The version in force is DigiCert's leaf (leaf first, then the
    // intermediate).
    let view = s
        .app
        .get(
            &format!("/api/v1/certificates/{}", s.cert_id),
            &s.app.reader,
        )
        .await;
    assert_eq!(view.status, StatusCode::OK, "{}", view.text);
    let pem_chain = view.json["versions"][0]["pem_chain"]
        .as_str()
        .expect("a version")
        .to_string();
    let stored = certplane_pki::pem::parse_certificates(&pem_chain).unwrap();
    let leaf = issued.certificate_pem.expect("leaf at the fake");
    let expected = [
        certplane_pki::pem::parse_certificates(&leaf).unwrap(),
        certplane_pki::pem::parse_certificates(&s.dc.intermediate_pem()).unwrap(),
    ]
    .concat();
    assert_eq!(stored, expected, "leaf, then the intermediate, no root");

    // Revocation through the API reaches CertCentral with the certificate
    // id the connector returned at issuance.
    let reply = s
        .app
        .post(
            &format!("/api/v1/certificates/{}/revoke", s.cert_id),
            &s.app.operator,
            json!({ "reason": "superseded" }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let revoked = wait_for(
        &store2,
        &s.cert_id,
        JobType::Revocation,
        "the revocation to end",
        |j| matches!(j.status, JobStatus::Completed | JobStatus::Failed),
    )
    .await;
    second.shutdown(Duration::from_secs(5)).await;
    let revocations = s.dc.revocations();
    assert_eq!(
        revocations.len(),
        1,
        "one revocation at DigiCert; job ended {:?} with {:?}",
        revoked.status,
        revoked.last_error
    );
    assert_eq!(revocations[0].certificate_id, certificate_id);
    assert!(
        revocations[0].comments.contains("superseded"),
        "{:?}",
        revocations[0].comments
    );
    assert_eq!(
        revoked.status,
        JobStatus::Completed,
        "{:?}",
        revoked.last_error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_restart_resumes_the_order_and_revoke_reaches_digicert() {
    restart_resumes_the_order_and_revoke_reaches_digicert(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_resumes_the_order_and_revoke_reaches_digicert() {
    restart_resumes_the_order_and_revoke_reaches_digicert(Backend::Postgres).await;
}
