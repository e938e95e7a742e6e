//! The end-to-end stack: a real host (`serve`, over HTTPS with its
//! development certificate, in process on its own thread) on SQLite or on
//! a fresh PostgreSQL database, a local-CA issuer, and agents configured
//! like an operator would, granted one temporary directory each.
//! PostgreSQL tests never skip: an unreachable server fails them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use certplane::demo::brisk_scheduler;
use certplane_agent::AgentConfig;
use certplane_agent::config::BackoffConfig;
use certplane_host::config::{HostConfig, JobSettings};
use serde_json::{Value, json};

pub use certplane::demo::stack::{LocalHost, free_port};
pub use certplane::demo::web::FileTlsServer;
pub use certplane::demo::{get, post};

use crate::{Backend, TestDb, plugin_cache_dir, plugin_dir, test_ca};

/// A host with a local-CA issuer, ready for agents.
pub struct Stack {
    pub host: LocalHost,
    pub root: tempfile::TempDir,
    pub bootstrap_token: String,
    pub issuer_id: String,
    pub backend: Backend,
    /// Where host and agents load plugins from.
    pub plugin_dir: PathBuf,
    _fixtures: Option<tempfile::TempDir>,
    _db: Option<TestDb>,
}

impl Stack {
    /// A host on `backend` with test-friendly timings: brisk scheduler
    /// loops, `lease_secs` job leases, retries after 200 ms.
    pub async fn new(backend: Backend, lease_secs: u64) -> Stack {
        Self::with_fixtures(backend, lease_secs, &[]).await
    }

    /// [`Stack::new`] with the named test connectors beside the packaged
    /// ones, on the host and in every agent configuration.
    pub async fn with_fixtures(backend: Backend, lease_secs: u64, fixtures: &[&str]) -> Stack {
        let fixtures = (!fixtures.is_empty()).then(|| crate::plugin_dir_with_fixtures(fixtures));
        let plugin_dir = fixtures
            .as_ref()
            .map_or_else(plugin_dir, |d| d.path().to_path_buf());
        let root = tempfile::tempdir().unwrap();
        // SQLite: the host's default database in its data directory.
        let db = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(TestDb::new(Backend::Postgres).await),
        };
        let bootstrap_token = format!("bt-{}", uuid::Uuid::new_v4().simple());
        let mut config = HostConfig {
            data_dir: root.path().join("host"),
            database_url: db.as_ref().map(|db| db.url.clone()),
            plugin_dir: plugin_dir.clone(),
            plugin_cache_dir: Some(plugin_cache_dir()),
            listen: format!("127.0.0.1:{}", free_port().unwrap())
                .parse()
                .unwrap(),
            scheduler: brisk_scheduler(),
            jobs: JobSettings {
                lease_secs,
                retry_base_ms: 200,
                retry_cap_secs: 1,
                ..JobSettings::default()
            },
            ..HostConfig::default()
        };
        // Calls must end within a job's lease (the host refuses anything else).
        let deadline = lease_secs.saturating_sub(1).clamp(1, 60);
        config.limits.max_deadline_secs = deadline;
        config.limits.default_deadline_secs = deadline.min(10);
        config.verify.attempts = 3;
        config.verify.interval_ms = 100;
        config.scheduler.reaper_ms = 200;
        config.scheduler.retry_ms = 200;
        config.agents.bootstrap_tokens = vec![bootstrap_token.clone()];
        let host = LocalHost::start(config).await.expect("host starts");
        let (ca_cert, ca_key) = test_ca();
        let issuer = post(
            &host.admin,
            "/issuers",
            json!({
                "name": "e2e-ca",
                "plugin": "local-ca",
                "settings": { "ca_certificate_pem": ca_cert, "validity_days": 30 },
                "secrets": { "ca_private_key_pem": ca_key },
            }),
        )
        .await
        .unwrap();
        Stack {
            host,
            bootstrap_token,
            issuer_id: issuer["id"].as_str().unwrap().to_owned(),
            root,
            backend,
            plugin_dir,
            _fixtures: fixtures,
            _db: db,
        }
    }

    /// Directory `name` under the test's root (created).
    pub fn dir(&self, name: &str) -> PathBuf {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// An agent configuration named `name`: pinned host certificate,
    /// bootstrap token, its own state directory, fast verification, and the
    /// pem-files connector allowed to write `<root>/<name>-certs`.
    pub fn agent_config(&self, name: &str) -> AgentConfig {
        let mut config = self.host.agent_config(
            name,
            &self.bootstrap_token,
            self.root.path().join(format!("{name}-state")),
            (self.plugin_dir.clone(), Some(plugin_cache_dir())),
            self.dir(&format!("{name}-certs")),
        );
        config.heartbeat_secs = 2;
        config.poll_wait_secs = 5;
        config.backoff = BackoffConfig {
            initial_ms: 100,
            max_secs: 1,
        };
        config.verify.attempts = 5;
        AgentConfig::from_value(&config).unwrap()
    }

    /// The id of the (active) agent registered as `name`, once it is.
    pub async fn agent_id(&self, name: &str) -> String {
        let agent = wait_for(
            &format!("agent {name} to register"),
            Duration::from_secs(30),
            || async {
                let agents = get(&self.host.admin, "/agents?per_page=500").await.unwrap();
                agents["items"]
                    .as_array()
                    .and_then(|items| items.iter().find(|a| a["name"] == name))
                    .cloned()
            },
        )
        .await;
        agent["id"].as_str().unwrap().to_owned()
    }

    /// A pem-files target run by `agent_id`, writing into `deploy_dir`
    /// (granted read-write as `/certs`), verifying at `verify` (port, SNI).
    pub async fn pem_target(
        &self,
        name: &str,
        agent_id: &str,
        deploy_dir: &Path,
        verify: Option<(u16, &str)>,
    ) -> Value {
        let mut settings = json!({ "directory": "/certs" });
        if let Some((port, sni)) = verify {
            settings["verify_host"] = json!("127.0.0.1");
            settings["verify_port"] = json!(port);
            settings["server_name"] = json!(sni);
        }
        post(
            &self.host.admin,
            "/targets",
            json!({
                "name": name,
                "plugin": "pem-files",
                "agent_id": agent_id,
                "settings": settings,
                "grants": { "directories": [
                    { "path": deploy_dir, "guest_path": "/certs", "writable": true }
                ] },
            }),
        )
        .await
        .unwrap()
    }

    /// A managed certificate for `sans` with `key_type`, deployed to
    /// `target_id`.
    pub async fn certificate(
        &self,
        name: &str,
        sans: &[&str],
        key_type: &str,
        target_id: &str,
    ) -> Value {
        post(
            &self.host.admin,
            "/certificates",
            json!({
                "name": name,
                "common_name": sans[0],
                "sans": sans,
                "key_type": key_type,
                "issuer_id": self.issuer_id,
                "target_ids": [target_id],
            }),
        )
        .await
        .unwrap()
    }

    /// A pem-files target of `agent_id` writing into `deploy_dir` and
    /// verifying `dns_name` on 127.0.0.1:`port`, and an ECDSA P-256
    /// certificate `name` for `dns_name` deployed there: (target, cert).
    pub async fn site(
        &self,
        agent_id: &str,
        deploy_dir: &Path,
        port: u16,
        name: &str,
        dns_name: &str,
    ) -> (Value, Value) {
        let target = self
            .pem_target("files", agent_id, deploy_dir, Some((port, dns_name)))
            .await;
        let cert = self
            .certificate(
                name,
                &[dns_name],
                "ecdsa-p256",
                target["id"].as_str().unwrap(),
            )
            .await;
        (target, cert)
    }

    /// Jobs of a certificate (newest first).
    pub async fn jobs(&self, cert_id: &str) -> Vec<Value> {
        let jobs = get(
            &self.host.admin,
            &format!("/jobs?certificate_id={cert_id}&per_page=100"),
        )
        .await
        .unwrap();
        jobs["items"].as_array().cloned().unwrap_or_default()
    }

    /// Waits for a deployment job of `cert_id` that is `completed` or
    /// `failed` (a failed job may still be retried later).
    pub async fn deployment_done(&self, cert_id: &str, timeout: Duration) -> Value {
        wait_for("the deployment", timeout, || async {
            self.jobs(cert_id).await.into_iter().find(|j| {
                j["job_type"] == "deployment"
                    && (j["status"] == "completed" || j["status"] == "failed")
            })
        })
        .await
    }

    /// The stored verification of a deployment job.
    pub async fn verification(&self, job_id: &str) -> Value {
        get(&self.host.admin, &format!("/jobs/{job_id}/verification"))
            .await
            .unwrap()
    }

    /// The current version's leaf fingerprint.
    pub async fn current_fingerprint(&self, cert_id: &str) -> String {
        let detail = get(&self.host.admin, &format!("/certificates/{cert_id}"))
            .await
            .unwrap();
        let current = detail["current_version_id"].as_str().unwrap().to_owned();
        detail["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == current.as_str())
            .unwrap()["fingerprint_sha256"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// Polls `check` every 25 ms until it yields a value; panics after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
