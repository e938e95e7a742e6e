//! A host running in-process for the demo and end-to-end tests: the real
//! `serve` start-up (migrations, development TLS certificate, plugins,
//! scheduler, HTTPS listener) on a loopback port, plus an admin API client
//! that trusts it by pinned fingerprint.
//!
//! `serve::run_until` runs on a thread with its own tokio runtime, as the
//! process it normally is (its start-up future is also not `Send`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use certplane_agent::AgentConfig;
use certplane_agent::config::{
    AllowedDir, BackoffConfig, ConnectorGrants, TrustConfig, VerifyConfig,
};
use certplane_client::{ApiClient, ClientOptions, Trust};
use tokio_util::sync::CancellationToken;

use certplane_host::api::auth;
use certplane_host::config::HostConfig;
use certplane_host::store::{ApiScope, NewApiKey};

/// How long start-up may take before it is reported as failed.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running host.
pub struct LocalHost {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// SHA-256 fingerprint of the host's development certificate.
    pub pin_sha256: String,
    /// An admin-scoped client of the API.
    pub admin: ApiClient,
    /// The admin key `admin` sends.
    pub admin_key: String,
    config: HostConfig,
    shutdown: CancellationToken,
    thread: Option<JoinHandle<Result<(), String>>>,
}

/// A free loopback port (bound, then released for the server to take).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl LocalHost {
    /// Starts a host with `config` (its `listen` address must be a free
    /// loopback port, see [`free_port`]; TLS is the development
    /// certificate) and waits until it accepts connections. An admin key is
    /// minted into the store beforehand instead of being printed: the
    /// database's bootstrap admin key when it has none yet (so `serve`
    /// does not print one), else one more admin key.
    pub async fn start(config: HostConfig) -> anyhow::Result<LocalHost> {
        certplane_host::serve::prepare_data_dir(&config.data_dir)?;
        let dev = certplane_host::tls::ensure_dev_certificate(&config.data_dir, &[])?;
        let store = certplane_host::serve::open_store(&config).await?;
        let (admin_key, hash) = auth::new_api_key();
        let new_key = NewApiKey {
            name: "local-admin".into(),
            key_hash: hash,
            scopes: vec![ApiScope::Admin],
            expires_at: None,
        };
        // Claiming the bootstrap key keeps `serve` from printing one; a
        // database that had it already (another replica, a restart) gets a
        // plain admin key for this client.
        if store
            .claim_bootstrap_admin_key(new_key.clone())
            .await?
            .is_none()
        {
            store.create_api_key(new_key).await?;
        }
        store.close().await;
        let mut host = LocalHost {
            url: format!("https://{}", config.listen),
            pin_sha256: dev.fingerprint_sha256,
            admin: client(&config, &admin_key, &dev_trust(&config))?,
            admin_key,
            config,
            shutdown: CancellationToken::new(),
            thread: None,
        };
        host.spawn().await?;
        Ok(host)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        self.shutdown = CancellationToken::new();
        let config = self.config.clone();
        let token = self.shutdown.clone();
        let thread = std::thread::Builder::new()
            .name("certplane-host".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(certplane_host::serve::run_until(config, token))
                    .map_err(|e| format!("{e:#}"))
            })?;
        self.thread = Some(thread);
        let started = Instant::now();
        while tokio::net::TcpStream::connect(self.config.listen)
            .await
            .is_err()
        {
            if self.thread.as_ref().is_some_and(JoinHandle::is_finished) {
                let outcome = self.join().await;
                bail!("the host stopped during start-up: {outcome:?}");
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "the host did not listen on {} within {START_TIMEOUT:?}",
                    self.config.listen
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// An agent configuration for this host: named `name`, registering
    /// with `bootstrap_token`, trusting the host by its pinned development
    /// certificate, and allowing the pem-files connector to write
    /// `deploy_dir` and nothing else. Timings are brisk for a local run
    /// (heartbeat 5 s, polls of 10 s, 20 verification attempts 100 ms
    /// apart); callers adjust them before checking it with
    /// [`AgentConfig::from_value`].
    pub fn agent_config(
        &self,
        name: &str,
        bootstrap_token: &str,
        state_dir: PathBuf,
        plugins: (PathBuf, Option<PathBuf>),
        deploy_dir: PathBuf,
    ) -> AgentConfig {
        let (plugin_dir, plugin_cache_dir) = plugins;
        AgentConfig {
            host_url: self.url.clone(),
            trust: TrustConfig {
                ca_file: None,
                pin_sha256: Some(self.pin_sha256.clone()),
            },
            bootstrap_token: Some(bootstrap_token.to_owned()),
            name: Some(name.to_owned()),
            state_dir,
            plugin_dir,
            plugin_cache_dir,
            heartbeat_secs: 5,
            poll_wait_secs: 10,
            backoff: BackoffConfig::default(),
            verify: VerifyConfig {
                attempts: 20,
                interval_ms: 100,
                timeout_secs: 2,
            },
            connectors: BTreeMap::from([(
                "pem-files".to_owned(),
                ConnectorGrants {
                    directories: vec![AllowedDir {
                        path: deploy_dir,
                        writable: true,
                    }],
                    ..ConnectorGrants::default()
                },
            )]),
            limits: Default::default(),
            challenges: Default::default(),
            actions: Default::default(),
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// A client of the API sending `token` (an API key or agent credential).
    pub fn client(&self, token: &str) -> anyhow::Result<ApiClient> {
        client(&self.config, token, &dev_trust(&self.config))
    }

    /// Stops the host gracefully and waits for it.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.join().await
    }

    /// Stops and starts the host again on the same port and data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.spawn().await
    }

    async fn join(&mut self) -> anyhow::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .context("waiting for the host thread")?
            .map_err(|_| anyhow::anyhow!("the host thread panicked"))?
            .map_err(|e| anyhow::anyhow!("the host failed: {e}"))
    }
}

impl Drop for LocalHost {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn dev_trust(config: &HostConfig) -> Trust {
    Trust::CaFile(config.data_dir.join("tls/dev-cert.pem"))
}

fn client(config: &HostConfig, token: &str, trust: &Trust) -> anyhow::Result<ApiClient> {
    Ok(ApiClient::new(ClientOptions {
        base_url: format!("https://{}", config.listen),
        api_key: token.to_owned(),
        trust: Some(trust.clone()),
        timeout: Duration::from_secs(30),
        user_agent: concat!("certplane-demo/", env!("CARGO_PKG_VERSION")).into(),
    })?)
}
