//! Crash windows: a real `certplane serve` process, built with the
//! `fault-points` feature, is aborted at every fault point inside the job
//! outcomes of an issuance (order receipt, order placed, order still
//! pending, issued, deployed, notification sent, failed), restarted, and
//! then must show exactly one certificate version, one order at the fake CA
//! (which counts orders over HTTP), one queued `certificate.issued`
//! notification per notifier, every job finished and nothing stuck. Plus a
//! burst of certificates with random SIGKILLs of the host.
//!
//! The binary is `target/debug/certplane`, built with the tests (the test
//! build turns on `certplane-host/fault-points`); a binary without the feature
//! refuses to start when a fault point is armed, so these tests cannot pass
//! against it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use certplane_client::{ApiClient, ClientOptions};
use certplane_host::store::{ApiScope, NewApiKey, Store};
use certplane_runtime::harness::{TestResponse, TestServer};
use certplane_testkit::fake_ca::{FakeCa, Fault};
use certplane_testkit::stack::free_port;
use certplane_testkit::{Backend, TestDb, count, plugin_cache_dir, plugin_dir_with_fixtures};
use serde_json::{Value, json};

/// The fault points an issuance in this scenario passes, in order. Every
/// point listed in `certplane_host::faults` that an issuance with an async
/// CA, a host-deployed target and a webhook notifier can reach.
const ISSUANCE_POINTS: &[&str] = &[
    "order_receipt.committed",
    "order_placed.job",
    "order_placed.audit",
    "order_placed.committed",
    "order_pending.job",
    "order_pending.audit",
    "order_pending.committed",
    "issued.job",
    "issued.version_row",
    "issued.version",
    "issued.follow_ups",
    "issued.audit",
    "issued.notifications",
    "issued.committed",
    "deployed.job",
    "deployed.audit",
    "deployed.committed",
    "notification_sent.committed",
];

/// Points of a failed first attempt (the CA answers the first submit with
/// a transient error), then retried to success.
const FAILURE_POINTS: &[&str] = &["failed.job", "failed.audit", "failed.committed"];

/// Points of the outcomes agents report: a CSR for a job awaiting one, and
/// a deployment's result. The host is aborted while answering the agent;
/// the agent retries after the restart (a replay when it had committed).
const AGENT_POINTS: &[&str] = &[
    "csr_received.job",
    "csr_received.audit",
    "csr_received.committed",
    "agent_result.job",
    "agent_result.audit",
    "agent_result.committed",
];

/// Bootstrap token of the test agent.
const BOOTSTRAP: &str = "bt-crash-test-agent";

/// Points of a poll that fails transiently: the order stays, back to
/// Polling with the error kept (the `order_pending` outcome).
const POLL_ERROR_POINTS: &[&str] = &["order_pending.job@2", "order_pending.committed@2"];

fn host_bin() -> PathBuf {
    certplane_testkit::target_bin(
        "certplane",
        "cargo build -p certplane --bin certplane --features certplane-host/fault-points",
    )
}

/// One scenario: its directory, database, fake CA, webhook receiver and
/// the host process (restarted at will).
struct Scenario {
    root: tempfile::TempDir,
    db: TestDb,
    plugins: tempfile::TempDir,
    ca: FakeCa,
    hook: TestServer,
    /// The host's port. It changes when a restart finds it taken (see
    /// [`Scenario::start`]); clients read it at each request.
    port: Arc<AtomicU16>,
    admin_key: String,
    config: PathBuf,
}

/// The host's configuration: plain HTTP on loopback, brisk loops, short
/// retries, the compiled-plugin cache shared by every run.
fn write_config(root: &Path, plugins: &Path, db_url: &str, port: u16) -> PathBuf {
    let text = format!(
        r#"
data_dir = "{data}"
database_url = "{db_url}"
listen = "127.0.0.1:{port}"
plugin_dir = "{plugins}"
plugin_cache_dir = "{cache}"
order_max_wait_secs = 600

[tls]
plain_http = true

[scheduler]
renewal_ms = 100
jobs_ms = 100
retry_ms = 100
reaper_ms = 100
notifications_ms = 100
order_poll_ms = 100
expiry_ms = 60000

[agents]
bootstrap_tokens = ["{BOOTSTRAP}"]

[jobs]
lease_secs = 30
retry_base_ms = 100
retry_cap_secs = 1

[limits]
max_deadline_secs = 20
"#,
        data = root.join("data").display(),
        plugins = plugins.display(),
        cache = plugin_cache_dir().display(),
    );
    let path = root.join("certplane.toml");
    std::fs::write(&path, text).unwrap();
    path
}

impl Scenario {
    async fn new(backend: Backend) -> Scenario {
        let root = tempfile::tempdir().unwrap();
        let db = TestDb::new(backend).await;
        let store = db.migrated().await;
        let (admin_key, hash) = certplane_host::api::auth::new_api_key();
        store
            .create_api_key(NewApiKey {
                name: "crash-test".into(),
                key_hash: hash,
                scopes: vec![ApiScope::Admin],
                expires_at: None,
            })
            .await
            .unwrap();
        store.close().await;
        let ca = FakeCa::start().await;
        ca.set_pending_polls(2);
        ca.set_retry_after_secs(Some(1));
        let hook = TestServer::start(|_| TestResponse::text(204, ""))
            .await
            .unwrap();
        let port = free_port().unwrap();
        let plugins = plugin_dir_with_fixtures(&["http-ca"]);
        let config = write_config(root.path(), plugins.path(), &db.url, port);
        Scenario {
            root,
            db,
            plugins,
            ca,
            hook,
            port: Arc::new(AtomicU16::new(port)),
            admin_key,
            config,
        }
    }

    fn client(&self) -> ApiClient {
        client(&self.port, &self.admin_key, "certplane-crash-test")
    }

    /// Starts the host, armed at `fault` if given, and waits until it
    /// answers (or, armed, until it answers or dies).
    ///
    /// The port was free when the scenario began, but the host is down
    /// between a crash and its restart, and the kernel may hand the port to
    /// any other process's connection meanwhile. A host that cannot bind it
    /// is started again on a new port: the crash windows are about the
    /// host's outcomes, not about port allocation.
    async fn start(&self, fault: Option<&str>) -> Host {
        for _ in 0..5 {
            match self.try_start(fault).await {
                Ok(host) => return host,
                Err(taken) => {
                    let port = free_port().unwrap();
                    eprintln!("port {taken} was taken; the host starts again on {port}");
                    self.port.store(port, Ordering::SeqCst);
                    write_config(self.root.path(), self.plugins.path(), &self.db.url, port);
                }
            }
        }
        panic!("the host found its port taken five times:\n{}", self.log());
    }

    /// One start: the host, or the port it found taken.
    async fn try_start(&self, fault: Option<&str>) -> Result<Host, u16> {
        let log_path = self.root.path().join("host.log");
        let logged_before = std::fs::metadata(&log_path).map_or(0, |m| m.len() as usize);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut cmd = Command::new(host_bin());
        // Only this test's configuration reaches the host.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CERTPLANE_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg("serve")
            .env("CERTPLANE_CONFIG", &self.config)
            .env("RUST_LOG", "warn")
            .env_remove(certplane_host::faults::ENV)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(point) = fault {
            cmd.env(certplane_host::faults::ENV, point);
        }
        let child = cmd.spawn().expect("certplane starts");
        let mut host = Host { child };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.client().get("/plugins", &[]).await.is_ok() {
                return Ok(host);
            }
            if let Some(status) = host.child.try_wait().unwrap() {
                let text = std::fs::read(&log_path).unwrap_or_default();
                let this_start = String::from_utf8_lossy(&text[logged_before.min(text.len())..]);
                if this_start.contains("Address already in use") {
                    return Err(self.port.load(Ordering::SeqCst));
                }
                panic!(
                    "the host exited during start-up ({status}):\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the host did not start:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.root.path().join("host.log")).unwrap_or_default();
        let start = text.len().saturating_sub(6000);
        text[start..].to_string()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let reply = self
            .client()
            .post(path, Some(&body))
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        reply.json.unwrap_or(Value::Null)
    }

    /// Issuer (the fake CA), a pem-files target the host deploys itself,
    /// a webhook notifier.
    async fn configure(&self) -> (String, String) {
        let issuer = self
            .post(
                "/issuers",
                json!({
                    "name": "fake-ca",
                    "plugin": "http-ca",
                    "settings": { "url": self.ca.url() },
                    "grants": { "hosts": [self.ca.grant()] },
                }),
            )
            .await;
        let deploy_dir = self.root.path().join("deployed");
        std::fs::create_dir_all(&deploy_dir).unwrap();
        let target = self
            .post(
                "/targets",
                json!({
                    "name": "files",
                    "plugin": "pem-files",
                    "agent_id": "host",
                    "settings": { "directory": "/certs" },
                    "grants": { "directories": [
                        { "path": deploy_dir, "guest_path": "/certs", "writable": true }
                    ] },
                }),
            )
            .await;
        self.post(
            "/notifiers",
            json!({
                "name": "hook",
                "plugin": "webhook",
                "settings": { "url": format!("{}/hooks", self.hook.url()) },
                "secrets": { "signing_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" },
                "grants": { "hosts": [self.hook.grant()] },
            }),
        )
        .await;
        (
            issuer["id"].as_str().unwrap().to_owned(),
            target["id"].as_str().unwrap().to_owned(),
        )
    }

    async fn certificate(&self, name: &str, issuer: &str, target: &str) -> String {
        self.certificate_with_keys(name, issuer, target, "host")
            .await
    }

    async fn certificate_with_keys(
        &self,
        name: &str,
        issuer: &str,
        target: &str,
        key_source: &str,
    ) -> String {
        let cert = self
            .post(
                "/certificates",
                json!({
                    "name": name,
                    "common_name": format!("{name}.example.test"),
                    "sans": [format!("{name}.example.test")],
                    "key_type": "ecdsa-p256",
                    "key_source": key_source,
                    "issuer_id": issuer,
                    "target_ids": [target],
                }),
            )
            .await;
        cert["id"].as_str().unwrap().to_owned()
    }

    async fn store(&self) -> Store {
        self.db.store().await
    }

    /// Waits until every certificate has a version, every job finished and
    /// every notification was delivered, then checks exactly-once.
    async fn settle_and_check(&self, certs: &[String], what: &str) {
        let store = self.store().await;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let state = settled(&store, certs).await;
            if state.is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: did not settle: {}\nhost log:\n{}",
                state.unwrap_err(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for cert in certs {
            let versions = store.list_certificate_versions(cert).await.unwrap();
            assert_eq!(
                versions.len(),
                1,
                "{what}: certificate {cert} has {} versions",
                versions.len()
            );
            assert_eq!(
                self.ca.orders_for(cert),
                1,
                "{what}: certificate {cert} was ordered {} times at the CA",
                self.ca.orders_for(cert)
            );
            let issued = issued_notifications(&store, cert).await;
            assert_eq!(
                issued, 1,
                "{what}: {issued} certificate.issued notifications for {cert}"
            );
        }
        // Every delivery carries the id of its one notification: receivers
        // deduplicate on webhook-id (delivery itself is at-least-once).
        let ids: std::collections::BTreeSet<String> = self
            .hook
            .requests()
            .iter()
            .filter_map(|r| r.header("webhook-id").map(str::to_owned))
            .collect();
        assert_eq!(
            ids.len(),
            certs.len(),
            "{what}: distinct webhook ids {ids:?}"
        );
        store.close().await;
    }
}

/// `certificate.issued` notifications queued for certificate `cert`.
async fn issued_notifications(store: &Store, cert: &str) -> i64 {
    // Certificate ids are UUIDs the host generated: safe to inline.
    count(
        store,
        &format!(
            "SELECT COUNT(*) FROM notifications WHERE event_type = 'certificate.issued' \
             AND subject = 'certificate/{cert}'"
        ),
    )
    .await
}

/// `Ok` when nothing is left to do.
async fn settled(store: &Store, certs: &[String]) -> Result<(), String> {
    for cert in certs {
        let c = store.get_certificate(cert).await.unwrap().unwrap();
        if c.current_version_id.is_none() {
            return Err(format!("certificate {cert} has no version yet"));
        }
    }
    let open = count(
        store,
        "SELECT COUNT(*) FROM jobs WHERE status <> 'completed'",
    )
    .await;
    if open > 0 {
        return Err(format!("{open} jobs not completed"));
    }
    let deployments = count(
        store,
        "SELECT COUNT(*) FROM jobs WHERE job_type = 'deployment' AND status = 'completed'",
    )
    .await;
    if deployments < certs.len() as i64 {
        return Err(format!("{deployments} deployments done"));
    }
    let unsent = count(
        store,
        "SELECT COUNT(*) FROM notifications WHERE status <> 'sent'",
    )
    .await;
    if unsent > 0 {
        return Err(format!("{unsent} notifications not sent"));
    }
    Ok(())
}

struct Host {
    child: Child,
}

impl Host {
    /// Waits for the armed host to abort at its fault point.
    async fn aborted(&mut self, point: &str, scenario: &Scenario) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "fault point {point} was never reached:\n{}",
                scenario.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(unix)]
fn aborted_by_signal(status: ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(6)
}

/// Issues one certificate with the host aborting at `point`, then restarts
/// it and checks exactly-once.
async fn crash_at(backend: Backend, point: &str, prepare: impl Fn(&FakeCa)) {
    // (The e2e crate depends on the host with `fault-points`; the binary's
    // own check refuses an armed start without it.)
    let scenario = Scenario::new(backend).await;
    prepare(&scenario.ca);
    let mut host = scenario.start(Some(point)).await;
    let (issuer, target) = scenario.configure().await;
    let cert = scenario.certificate("web", &issuer, &target).await;
    let status = host.aborted(point, &scenario).await;
    #[cfg(unix)]
    assert!(
        aborted_by_signal(status),
        "{point}: the host exited with {status} instead of aborting:\n{}",
        scenario.log()
    );
    let _host = scenario.start(None).await;
    scenario
        .settle_and_check(&[cert], &format!("{backend:?} crash at {point}"))
        .await;
}

/// The points to run: all of `points`, or those named in
/// `CRASH_POINTS` (comma-separated) when debugging one.
fn selected<'a>(points: &[&'a str]) -> Vec<&'a str> {
    match std::env::var("CRASH_POINTS") {
        Ok(only) => points
            .iter()
            .copied()
            .filter(|p| only.split(',').any(|o| o.trim() == *p))
            .collect(),
        Err(_) => points.to_vec(),
    }
}

/// Runs `run` for each of `points`, two at a time. Each point's scenario
/// has its own database, port, fake CA, directory and host process, and a
/// point spends most of its time waiting (for the CA's polls, at least a
/// second each, or for the agent's), so a pair takes little longer than one.
async fn two_at_a_time<'a, F, Fut>(points: Vec<&'a str>, run: F)
where
    F: Fn(&'a str) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for pair in points.chunks(2) {
        match pair {
            [a, b] => {
                tokio::join!(run(a), run(b));
            }
            [a] => run(a).await,
            _ => {}
        }
    }
}

async fn every_issuance_point(backend: Backend) {
    two_at_a_time(selected(ISSUANCE_POINTS), |point| {
        crash_at(backend, point, |_| {})
    })
    .await;
}

/// A test agent speaking the agent protocol over HTTP: registers, then
/// keeps polling, answering CSR requests (one key and CSR per job, sent
/// again as is after a failure) and reporting deployments as done. Errors
/// (the host is down) are retried.
async fn fake_agent(
    port: Arc<AtomicU16>,
    target_name: String,
    ids: tokio::sync::mpsc::Sender<String>,
) {
    let client = |key: &str| client(&port, key, "certplane-crash-agent");
    let credential = loop {
        let body = json!({ "name": target_name, "bootstrap_token": BOOTSTRAP });
        if let Ok(reply) = client("").post("/agents/register", Some(&body)).await
            && let Some(json) = reply.json
        {
            let _ = ids
                .send(json["agent_id"].as_str().unwrap().to_owned())
                .await;
            break json["credential"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut csrs: std::collections::HashMap<String, String> = Default::default();
    loop {
        // Built per round: the host may come back on another port.
        let api = client(&credential);
        let work = match api
            .get("/agents/work", &[("wait_secs", "1".to_string())])
            .await
        {
            Ok(reply) => reply.json.unwrap_or(Value::Null),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        for job in work["jobs"].as_array().cloned().unwrap_or_default() {
            let id = job["id"].as_str().unwrap_or_default().to_owned();
            if job["status"] == "awaiting_csr" {
                let cert = &job["certificate"];
                let csr = csrs.entry(id.clone()).or_insert_with(|| {
                    let names: Vec<String> = cert["sans"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap().to_owned())
                        .collect();
                    certplane_pki::keygen::generate_key_and_csr(
                        certplane_pki::keygen::KeyType::EcdsaP256,
                        cert["common_name"].as_str().unwrap(),
                        &names,
                        &[],
                    )
                    .unwrap()
                    .csr_pem
                });
                let body = json!({ "csr_pem": csr });
                let _ = api
                    .post(&format!("/agents/jobs/{id}/csr"), Some(&body))
                    .await;
            } else if job["status"] == "running" {
                let body = json!({
                    "outcome": "success",
                    "changed": ["/certs/cert.pem"],
                    "attempt": job["attempt"],
                });
                let _ = api
                    .post(&format!("/agents/jobs/{id}/result"), Some(&body))
                    .await;
            }
        }
    }
}

/// A client of the host on the scenario's current port.
fn client(port: &AtomicU16, key: &str, user_agent: &str) -> ApiClient {
    ApiClient::new(ClientOptions {
        base_url: format!("http://127.0.0.1:{}", port.load(Ordering::SeqCst)),
        api_key: key.to_owned(),
        trust: None,
        timeout: Duration::from_secs(10),
        user_agent: user_agent.into(),
    })
    .unwrap()
}

/// One agent-key certificate with the host aborting at `point` while it
/// records what the agent reported.
async fn agent_crash_at(backend: Backend, point: &str) {
    let scenario = Scenario::new(backend).await;
    let mut host = scenario.start(Some(point)).await;
    let (issuer, _) = scenario.configure().await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let agent = tokio::spawn(fake_agent(scenario.port.clone(), "edge".into(), tx));
    let agent_id = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("the agent registers")
        .unwrap();
    let target = scenario
        .post(
            "/targets",
            json!({
                "name": "edge-files",
                "plugin": "pem-files",
                "agent_id": agent_id,
                "settings": { "directory": "/certs" },
                "grants": { "directories": [
                    { "path": "/srv/certs", "guest_path": "/certs", "writable": true }
                ] },
            }),
        )
        .await;
    let target = target["id"].as_str().unwrap().to_owned();
    let cert = scenario
        .certificate_with_keys("edge", &issuer, &target, "agent")
        .await;
    let status = host.aborted(point, &scenario).await;
    #[cfg(unix)]
    assert!(
        aborted_by_signal(status),
        "{point}: the host exited with {status} instead of aborting:\n{}",
        scenario.log()
    );
    let _host = scenario.start(None).await;
    scenario
        .settle_and_check(&[cert], &format!("{backend:?} agent crash at {point}"))
        .await;
    agent.abort();
}

async fn every_agent_point(backend: Backend) {
    two_at_a_time(selected(AGENT_POINTS), |point| {
        agent_crash_at(backend, point)
    })
    .await;
}

async fn every_failure_point(backend: Backend) {
    two_at_a_time(selected(FAILURE_POINTS), |point| {
        crash_at(backend, point, |ca| {
            ca.fail_next_submits(1, Fault::Transient)
        })
    })
    .await;
    two_at_a_time(selected(POLL_ERROR_POINTS), |point| {
        crash_at(backend, point, |ca| ca.fail_next_polls(1, Fault::Transient))
    })
    .await;
}

/// Every point a scenario here reaches is a listed fault point, and every
/// listed point of the outcomes these scenarios run is covered.
#[test]
fn the_scenarios_cover_listed_fault_points() {
    let all = certplane_host::faults::points();
    for point in ISSUANCE_POINTS
        .iter()
        .chain(FAILURE_POINTS)
        .chain(POLL_ERROR_POINTS)
        .chain(AGENT_POINTS)
    {
        let name = point.split('@').next().unwrap();
        assert!(all.iter().any(|p| p == name), "{name} is not a fault point");
    }
}

/// A burst of certificates while the host is SIGKILLed at random moments
/// and restarted: every certificate ends with one version, one
/// `certificate.issued` notification, and nothing stuck. (An order whose
/// HTTP request was in flight when the host died may be placed twice: the
/// host cannot know the CA accepted it. Orders are counted and reported.)
async fn burst_with_random_kills(backend: Backend) {
    const CERTS: usize = 40;
    const KILLS: usize = 4;
    let scenario = Scenario::new(backend).await;
    scenario.ca.set_pending_polls(1);
    let mut host = scenario.start(None).await;
    let (issuer, target) = scenario.configure().await;
    let mut certs = Vec::new();
    for i in 0..CERTS {
        certs.push(
            scenario
                .certificate(&format!("burst{i}"), &issuer, &target)
                .await,
        );
    }
    for _ in 0..KILLS {
        let wait = 150 + rand_below(900);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        host.kill();
        host = scenario.start(None).await;
    }
    let store = scenario.store().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match settled(&store, &certs).await {
            Ok(()) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "burst did not settle: {e}\n{}",
                scenario.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut extra_orders = 0;
    for cert in &certs {
        assert_eq!(
            store.list_certificate_versions(cert).await.unwrap().len(),
            1
        );
        let issued = issued_notifications(&store, cert).await;
        assert_eq!(issued, 1, "certificate.issued notifications for {cert}");
        let orders = scenario.ca.orders_for(cert);
        assert!(orders >= 1);
        extra_orders += orders - 1;
    }
    // Only an order whose request was in flight at a kill can be repeated.
    assert!(
        extra_orders <= KILLS as u64 * 16,
        "{extra_orders} extra orders for {KILLS} kills"
    );
    eprintln!(
        "{backend:?}: {CERTS} certificates, {KILLS} SIGKILLs: {} orders ({extra_orders} repeated after a kill mid-request)",
        scenario.ca.orders_placed()
    );
    store.close().await;
}

fn rand_below(n: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    u64::from(nanos) % n
}

mod sqlite {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_at_every_issuance_fault_point() {
        every_issuance_point(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_at_every_failure_fault_point() {
        every_failure_point(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn burst_with_random_sigkills() {
        burst_with_random_kills(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_at_every_agent_report_fault_point() {
        every_agent_point(Backend::Sqlite).await;
    }
}

mod postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_at_every_issuance_fault_point() {
        every_issuance_point(Backend::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_at_every_failure_fault_point() {
        every_failure_point(Backend::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn burst_with_random_sigkills() {
        burst_with_random_kills(Backend::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_at_every_agent_report_fault_point() {
        every_agent_point(Backend::Postgres).await;
    }
}
