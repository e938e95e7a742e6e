//! The `acme` issuer through the host against real Pebble (validation on,
//! nonce rejection at its default), on SQLite and PostgreSQL: http-01
//! served by the host's own responder, dns-01 through a `cloudflare-dns`
//! solver instance whose (fake) Cloudflare publishes into
//! `pebble-challtestsrv`, and challenges withdrawn when the job ends —
//! issued or cancelled.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use certplane_host::engine;
use certplane_host::store::{Certificate, Job, JobStatus, JobType, Store};
use certplane_testkit::Backend;
use certplane_testkit::app::TestApp;
use certplane_testkit::fake_cloudflare::FakeCloudflare;
use certplane_testkit::jobs::{job_of, wait_for_job};
use certplane_testkit::pebble::{Pebble, PebbleOptions};
use certplane_testkit::plugin_dir_with_fixtures;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use x509_parser::prelude::*;

struct Setup {
    app: TestApp,
    pebble: Pebble,
    responder: SocketAddr,
    _plugins: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A host whose responder listens where Pebble validates http-01, checking
/// dns-01 through Pebble's DNS server.
async fn setup(backend: Backend, serve_responder: bool) -> Setup {
    let http_port = free_port();
    let pebble = Pebble::start(PebbleOptions {
        http_port: Some(http_port),
        ..PebbleOptions::default()
    });
    let responder = SocketAddr::from(([127, 0, 0, 1], http_port));
    let plugins = plugin_dir_with_fixtures(&[]);
    let dir = plugins.path().to_path_buf();
    let dns = pebble.dns_addr();
    let app = TestApp::with_config(backend, |c| {
        c.plugin_dir = dir;
        c.scheduler.jobs_ms = 100;
        c.scheduler.order_poll_ms = 100;
        c.challenges.http_listen = Some(responder);
        c.challenges.dns_resolvers = vec![dns];
        c.challenges.check_interval_ms = 100;
    })
    .await;
    if serve_responder {
        // What `serve` does for `[challenges] http_listen`.
        let listener = tokio::net::TcpListener::bind(responder).await.unwrap();
        let app_router = certplane_host::api::acme_challenge::responder_app(app.state.clone());
        tokio::spawn(certplane_host::server::serve(
            listener,
            app_router,
            None,
            CancellationToken::new(),
            Duration::from_secs(1),
        ));
    }
    Setup {
        app,
        pebble,
        responder,
        _plugins: plugins,
    }
}

/// An ACME issuer created through the API with `challenges` routes.
async fn acme_issuer(s: &Setup, name: &str, challenges: Value) -> String {
    let reply = s
        .app
        .post(
            "/api/v1/issuers",
            &s.app.operator,
            json!({
                "name": name,
                "plugin": "acme",
                "settings": {
                    "directory_url": s.pebble.directory_url(),
                    "terms_of_service_agreed": true,
                    "contact": ["mailto:ops@example.test"],
                },
                "grants": {
                    "hosts": [s.pebble.grant()],
                    "tls": { "extra_roots_pem": [s.pebble.tls_root_pem()] },
                    "challenges": challenges,
                },
            }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    reply.json["id"].as_str().unwrap().to_string()
}

async fn certificate(s: &Setup, name: &str, issuer: &str, names: &[&str]) -> Certificate {
    certificate_with(s, name, issuer, names, json!({})).await
}

async fn certificate_with(
    s: &Setup,
    name: &str,
    issuer: &str,
    names: &[&str],
    issuer_options: Value,
) -> Certificate {
    let reply = s
        .app
        .post(
            "/api/v1/certificates",
            &s.app.operator,
            json!({
                "name": name,
                "common_name": names[0],
                "sans": names,
                "issuer_id": issuer,
                "key_source": "host",
                "issuer_options": issuer_options,
            }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    s.app
        .store
        .get_certificate(reply.json["id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap()
}

async fn issuance(store: &Store, cert: &Certificate) -> Option<Job> {
    job_of(store, &cert.id, JobType::Issuance).await
}

async fn wait_job(
    store: &Store,
    cert: &Certificate,
    what: &str,
    done: impl Fn(&Job) -> bool,
) -> Job {
    let within = Duration::from_secs(90);
    wait_for_job(store, &cert.id, JobType::Issuance, what, within, done).await
}

/// Waits until every challenge of `job` is withdrawn; returns them.
async fn withdrawn(store: &Store, job: &str) -> Vec<certplane_host::store::ChallengeRow> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = store.job_challenges(job).await.unwrap();
        if !rows.is_empty() && rows.iter().all(|r| r.state == "withdrawn") {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "challenges not withdrawn: {:?}",
            rows.iter()
                .map(|r| (&r.challenge_id, &r.state, &r.message))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The leaf of the current version certifies `names` and chains to
/// Pebble's issuing root.
async fn assert_issued_by_pebble(s: &Setup, cert: &Certificate, names: &[&str]) {
    let cert = s
        .app
        .store
        .get_certificate(&cert.id)
        .await
        .unwrap()
        .unwrap();
    let version_id = cert.current_version_id.clone().expect("a current version");
    let version = s
        .app
        .store
        .list_certificate_versions(&cert.id)
        .await
        .unwrap()
        .into_iter()
        .find(|v| v.id == version_id)
        .unwrap();
    assert!(
        version
            .ca_certificate_id
            .as_deref()
            .is_some_and(|id| id.starts_with("https://")),
        "the ACME certificate URL is kept as the CA's id: {:?}",
        version.ca_certificate_id
    );
    assert!(version.ca_order_id.is_some(), "the order is kept");
    let ders: Vec<Vec<u8>> = certplane_pki::pem::split_pem(&version.pem_chain)
        .iter()
        .map(|block| der_of(block))
        .collect();
    let (_, leaf) = X509Certificate::from_der(&ders[0]).unwrap();
    let mut sans: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    sans.sort();
    let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    want.sort();
    assert_eq!(sans, want);
    // Chain: leaf <- intermediate(s) <- Pebble's root.
    let root_der = der_of(&s.pebble.issuing_root_pem());
    let (_, root) = X509Certificate::from_der(&root_der).unwrap();
    let mut issued_by = leaf;
    for link in &ders[1..] {
        let (_, next) = X509Certificate::from_der(link).unwrap();
        issued_by
            .verify_signature(Some(next.public_key()))
            .expect("each link signs the one before");
        issued_by = next;
    }
    issued_by
        .verify_signature(Some(root.public_key()))
        .expect("the chain ends at Pebble's issuing root");
}

/// The DER of one PEM certificate.
fn der_of(pem: &str) -> Vec<u8> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .expect("PEM")
        .1
        .contents
}

async fn http_01_through_the_host_responder(backend: Backend) {
    let s = setup(backend, true).await;
    let issuer = acme_issuer(&s, "acme-http", json!({ "http_01": "host" })).await;
    let names = ["www.acme-http.test", "acme-http.test"];
    let cert = certificate(&s, "acme-http", &issuer, &names).await;
    let scheduler = engine::start(s.app.state.engine.clone(), CancellationToken::new());
    let job = wait_job(&s.app.store, &cert, "issued", |j| {
        matches!(j.status, JobStatus::Completed | JobStatus::Failed)
    })
    .await;
    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.last_error);
    assert_issued_by_pebble(&s, &cert, &names).await;

    // Every challenge was http-01 through the host, and is gone now.
    let rows = withdrawn(&s.app.store, &job.id).await;
    assert!(
        rows.iter()
            .all(|r| r.kind == "http-01" && r.route == "host"),
        "{rows:?}"
    );
    for row in &rows {
        let url = format!(
            "http://{}/.well-known/acme-challenge/{}",
            s.responder, row.name
        );
        let status = reqwest_status(&url).await;
        assert_eq!(status, 404, "{url} still answers after withdrawal");
    }

    // The account was created once and kept in the instance's store: a
    // second certificate reuses it.
    let stored = s
        .app
        .store
        .plugin_store(&format!("issuer/{issuer}"))
        .await
        .unwrap();
    assert!(!stored.is_empty(), "the ACME account lives in the store");
    let second = certificate(&s, "acme-http-2", &issuer, &["two.acme-http.test"]).await;
    let job = wait_job(&s.app.store, &second, "second issued", |j| {
        matches!(j.status, JobStatus::Completed | JobStatus::Failed)
    })
    .await;
    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.last_error);
    let after = s
        .app
        .store
        .plugin_store(&format!("issuer/{issuer}"))
        .await
        .unwrap();
    assert_eq!(stored, after, "no second account");
    scheduler.shutdown(Duration::from_secs(5)).await;
}

/// A GET's status code, over a plain connection (no proxies, no redirects).
async fn reqwest_status(url: &str) -> u16 {
    let uri: axum::http::Uri = url.parse().unwrap();
    let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap_or(80));
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = hyper::Request::get(uri.path())
        .header("host", "www.acme-http.test")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    sender
        .send_request(request)
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn dns_01_through_the_cloudflare_solver(backend: Backend) {
    let s = setup(backend, true).await;
    let cloudflare = FakeCloudflare::start(Some(s.pebble.challtestsrv_mgmt())).await;
    cloudflare.add_zone("acme-dns.test");
    let reply = s
        .app
        .post(
            "/api/v1/dns-solvers",
            &s.app.operator,
            json!({
                "name": "cloudflare",
                "plugin": "cloudflare-dns",
                "settings": { "base_url": cloudflare.url() },
                "secrets": { "api_token": cloudflare.token() },
                "grants": { "hosts": [cloudflare.grant()] },
            }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let solver = reply.json["id"].as_str().unwrap().to_string();
    let issuer = acme_issuer(
        &s,
        "acme-dns",
        json!({
            "http_01": "host",
            "dns_01": [ { "zone": "acme-dns.test", "solver": solver } ],
        }),
    )
    .await;
    // A wildcard needs dns-01; the apex could take http-01, but this
    // certificate's issuer options prefer dns-01 (options reach the
    // connector through `context.options`).
    let names = ["acme-dns.test", "*.acme-dns.test"];
    let cert = certificate_with(
        &s,
        "acme-dns",
        &issuer,
        &names,
        json!({ "preferred_challenge": "dns-01" }),
    )
    .await;
    let scheduler = engine::start(s.app.state.engine.clone(), CancellationToken::new());
    let job = wait_job(&s.app.store, &cert, "issued", |j| {
        matches!(j.status, JobStatus::Completed | JobStatus::Failed)
    })
    .await;
    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.last_error);
    assert_issued_by_pebble(&s, &cert, &names).await;
    let rows = withdrawn(&s.app.store, &job.id).await;
    assert!(
        rows.iter()
            .all(|r| r.kind == "dns-01" && r.route == format!("dns:{solver}")),
        "{rows:?}"
    );
    scheduler.shutdown(Duration::from_secs(5)).await;
    assert!(
        cloudflare.creates() >= 1,
        "records were published through Cloudflare"
    );
    assert_eq!(
        cloudflare.deletes(),
        cloudflare.creates(),
        "every record was cleaned up"
    );
    assert!(
        cloudflare.records().is_empty(),
        "no TXT record left: {:?}",
        cloudflare.records()
    );
}

async fn a_cancelled_job_withdraws_its_challenges(backend: Backend) {
    // The plain listener Pebble and the publisher would use is not served:
    // the publisher's check keeps failing, so the challenges stay pending
    // and the job keeps polling until it is cancelled.
    let s = setup(backend, false).await;
    let issuer = acme_issuer(&s, "acme-cancel", json!({ "http_01": "host" })).await;
    let cert = certificate(&s, "acme-cancel", &issuer, &["cancel.acme-http.test"]).await;
    let scheduler = engine::start(s.app.state.engine.clone(), CancellationToken::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    let (job, rows) = loop {
        if let Some(job) = issuance(&s.app.store, &cert).await {
            let rows = s.app.store.job_challenges(&job.id).await.unwrap();
            if !rows.is_empty() {
                break (job, rows);
            }
        }
        assert!(Instant::now() < deadline, "no challenge presented");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // While live, the responder (here through the API listener) serves it.
    let token = &rows[0].name;
    let path = format!("/.well-known/acme-challenge/{token}");
    let live = s.app.get(&path, "").await;
    assert_eq!(live.status, StatusCode::OK);
    assert_eq!(live.text, rows[0].value);

    let reply = s
        .app
        .post(
            &format!("/api/v1/jobs/{}/cancel", job.id),
            &s.app.operator,
            json!({}),
        )
        .await;
    assert!(reply.status.is_success(), "{} {}", reply.status, reply.text);
    let rows = withdrawn(&s.app.store, &job.id).await;
    scheduler.shutdown(Duration::from_secs(5)).await;
    assert!(!rows.is_empty());
    let job = s.app.store.get_job(&job.id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Cancelled);
    assert_eq!(
        s.app.get(&path, "").await.status,
        StatusCode::NOT_FOUND,
        "a withdrawn challenge is not served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_http_01_through_the_host_responder() {
    http_01_through_the_host_responder(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_http_01_through_the_host_responder() {
    http_01_through_the_host_responder(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_dns_01_through_the_cloudflare_solver() {
    dns_01_through_the_cloudflare_solver(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dns_01_through_the_cloudflare_solver() {
    dns_01_through_the_cloudflare_solver(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_cancelled_job_withdraws_its_challenges() {
    a_cancelled_job_withdraws_its_challenges(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_cancelled_job_withdraws_its_challenges() {
    a_cancelled_job_withdraws_its_challenges(Backend::Postgres).await;
}

async fn a_restart_mid_order_resumes_the_same_order(backend: Backend) {
    // The responder is not served at first: the order waits on its
    // challenges while the first host stops.
    let s = setup(backend, false).await;
    let issuer = acme_issuer(&s, "acme-restart", json!({ "http_01": "host" })).await;
    let names = ["restart.acme-http.test"];
    let cert = certificate(&s, "acme-restart", &issuer, &names).await;
    let first = engine::start(s.app.state.engine.clone(), CancellationToken::new());
    let polling = wait_job(&s.app.store, &cert, "an order placed", |j| {
        j.status == JobStatus::Polling && j.order_id.is_some()
    })
    .await;
    let report = first.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_clean(), "{report:?}");
    let order = polling.order_id.clone().unwrap();

    // A new host process on the same database; now the responder answers.
    let listener = tokio::net::TcpListener::bind(s.responder).await.unwrap();
    let store2 = Store::connect_with(
        &s.app.db.url,
        certplane_host::store::StoreOptions {
            instance_id: "second-host".into(),
            ..certplane_testkit::test_options()
        },
    )
    .await
    .unwrap();
    let registry =
        certplane_host::plugins::PluginRegistry::load(&s.app.state.config.plugin_dir, None)
            .await
            .unwrap();
    let state2 = certplane_host::api::AppState::new(
        store2.clone(),
        s.app.state.config.clone(),
        std::sync::Arc::new(registry),
        s.app.state.secrets.clone(),
    );
    tokio::spawn(certplane_host::server::serve(
        listener,
        certplane_host::api::acme_challenge::responder_app(state2.clone()),
        None,
        CancellationToken::new(),
        Duration::from_secs(1),
    ));
    let second = engine::start(state2.engine.clone(), CancellationToken::new());
    let done = wait_job(&store2, &cert, "issued after the restart", |j| {
        matches!(j.status, JobStatus::Completed | JobStatus::Failed)
    })
    .await;
    second.shutdown(Duration::from_secs(5)).await;
    assert_eq!(done.status, JobStatus::Completed, "{:?}", done.last_error);
    assert_eq!(
        done.order_id.as_deref(),
        Some(order.as_str()),
        "the restarted host finished the same ACME order"
    );
    assert_issued_by_pebble(&s, &cert, &names).await;
    let version = store2
        .list_certificate_versions(&cert.id)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(version.ca_order_id.as_deref(), Some(order.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_restart_mid_order_resumes_the_same_order() {
    a_restart_mid_order_resumes_the_same_order(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_restart_mid_order_resumes_the_same_order() {
    a_restart_mid_order_resumes_the_same_order(Backend::Postgres).await;
}

/// A leaf for `name` with an authority key identifier (ACME renewal
/// information names a certificate by it), signed by a throwaway CA.
fn leaf_with_aki(name: &str) -> String {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    params.use_authority_key_identifier_extension = true;
    params.signed_by(&key, &ca, &ca_key).unwrap().pem()
}

async fn renewal_information_moves_the_renewal_earlier(backend: Backend) {
    let ari = certplane_testkit::fake_ari::FakeAri::start();
    let plugins = plugin_dir_with_fixtures(&[]);
    let dir = plugins.path().to_path_buf();
    let app = TestApp::with_config(backend, |c| c.plugin_dir = dir).await;
    let reply = app
        .post(
            "/api/v1/issuers",
            &app.operator,
            json!({
                "name": "acme-ari",
                "plugin": "acme",
                "settings": {
                    "directory_url": ari.directory_url(),
                    "terms_of_service_agreed": true,
                },
                "grants": { "hosts": [ari.grant()] },
            }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let issuer = reply.json["id"].as_str().unwrap().to_string();
    let cert = app
        .store
        .create_certificate(certplane_host::store::NewCertificate {
            name: "ari".into(),
            common_name: "ari.test".into(),
            sans: vec!["ari.test".into()],
            key_type: "ecdsa-p256".into(),
            key_source: certplane_host::store::KeySource::Host,
            issuer_id: issuer,
            target_id: None,
            renew_before_secs: 86_400,
            owner: None,
        })
        .await
        .unwrap();
    let now = chrono::Utc::now();
    app.store
        .record_certificate_version(certplane_host::store::NewCertificateVersion {
            certificate_id: cert.id.clone(),
            serial: "01".into(),
            pem_chain: leaf_with_aki("ari.test"),
            not_before: now,
            not_after: now + chrono::Duration::days(90),
            fingerprint_sha256: "ab".repeat(32),
            encrypted_private_key: None,
            job_id: None,
            ca_certificate_id: None,
            ca_order_id: None,
            renew_before_secs: None,
        })
        .await
        .unwrap();
    let engine = &app.state.engine;

    // The CA knows no window for it yet: nothing moves, the host asks the
    // certificate by its RFC 9773 identifier.
    engine::lifecycle::tick(engine).await.unwrap();
    let asked = ari.asked();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(asked[0].contains('.'), "certID is AKI.serial: {}", asked[0]);
    let before = app.store.get_certificate(&cert.id).await.unwrap().unwrap();
    assert!(before.renew_at > now + chrono::Duration::days(80));
    assert!(before.renewal_info_at.unwrap() > now, "asked again later");

    // The CA suggests renewing in a day or two (a revocation, say).
    let (start, end) = (
        now + chrono::Duration::days(1),
        now + chrono::Duration::days(2),
    );
    ari.set_window(
        &asked[0],
        certplane_testkit::fake_ari::RenewalWindow {
            start: start.to_rfc3339(),
            end: end.to_rfc3339(),
            explanation_url: Some("https://ca.example/incident".into()),
            retry_after: Some("7200".into()),
        },
    );
    app.store
        .record_renewal_info(&cert.id, None, now - chrono::Duration::seconds(1))
        .await
        .unwrap();
    engine::lifecycle::tick(engine).await.unwrap();
    let after = app.store.get_certificate(&cert.id).await.unwrap().unwrap();
    let slack = chrono::Duration::seconds(1);
    assert!(
        after.renew_at >= start - slack && after.renew_at <= end + slack,
        "renew_at {} within [{start}, {end}]",
        after.renew_at
    );
    let next = after.renewal_info_at.unwrap();
    assert!(
        next > now + chrono::Duration::minutes(110) && next < now + chrono::Duration::minutes(130),
        "the CA's Retry-After sets the next check: {next}"
    );

    // A later, wider window never moves the renewal later again.
    ari.set_window(
        &asked[0],
        certplane_testkit::fake_ari::RenewalWindow {
            start: (now + chrono::Duration::days(30)).to_rfc3339(),
            end: (now + chrono::Duration::days(31)).to_rfc3339(),
            explanation_url: None,
            retry_after: None,
        },
    );
    app.store
        .record_renewal_info(&cert.id, None, now - chrono::Duration::seconds(1))
        .await
        .unwrap();
    engine::lifecycle::tick(engine).await.unwrap();
    let last = app.store.get_certificate(&cert.id).await.unwrap().unwrap();
    assert_eq!(last.renew_at, after.renew_at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_renewal_information_moves_the_renewal_earlier() {
    renewal_information_moves_the_renewal_earlier(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_renewal_information_moves_the_renewal_earlier() {
    renewal_information_moves_the_renewal_earlier(Backend::Postgres).await;
}
