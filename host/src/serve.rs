//! `certplane serve`: opens the store (migrating it), loads the plugins,
//! starts the scheduler and the HTTPS API, and shuts all of it down
//! gracefully on SIGINT/SIGTERM.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::HostConfig;
use crate::plugins::PluginRegistry;
use crate::store::{Store, StoreOptions};

/// Creates the data directory with owner-only permissions.
pub fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict permissions of {}", dir.display()))?;
    }
    Ok(())
}

/// Opens and migrates the store named by the configuration, as this
/// host's instance ([`crate::replica::instance_id`]; the data directory
/// must exist).
pub async fn open_store(config: &HostConfig) -> anyhow::Result<Store> {
    let options = StoreOptions {
        instance_id: crate::replica::instance_id(config)?,
        max_connections: config.database.max_connections,
        lease_duration: Duration::from_secs(config.jobs.lease_secs),
        backoff: crate::store::Backoff {
            base: Duration::from_millis(config.jobs.retry_base_ms),
            cap: Duration::from_secs(config.jobs.retry_cap_secs),
        },
        ..StoreOptions::default()
    };
    let store = Store::connect_with(&config.database_url(), options).await?;
    let report = store
        .migrate()
        .await
        .context("the database schema could not be brought up to date")?;
    if !report.applied.is_empty() {
        tracing::info!(applied = ?report.applied, "migrations applied");
    }
    Ok(store)
}

/// Issues the first admin key once per database (whichever replica claims
/// it first) and prints it: the only time the plaintext is ever shown.
async fn bootstrap_admin_key(store: &Store) -> anyhow::Result<()> {
    if let Some(key) = crate::replica::bootstrap_admin_key(store).await? {
        println!("First start: admin API key (shown once, store it now):\n  {key}");
    }
    Ok(())
}

/// Takes back what the previous run of this instance still held (see
/// [`Store::reap_own_leases`]): at once, instead of after the leases lapse.
async fn reclaim_own_work(store: &Store) -> anyhow::Result<()> {
    let reclaimed = store.reap_own_leases().await?;
    for job in &reclaimed.jobs {
        tracing::warn!(job = %job.id, job_type = %job.job_type, attempts = job.attempts,
            "job left running by the previous run of this host: failed, to be retried");
    }
    if !reclaimed.notifications.is_empty() {
        tracing::warn!(
            count = reclaimed.notifications.len(),
            "notifications left sending by the previous run of this host: queued again"
        );
    }
    Ok(())
}

async fn shutdown_signal(token: CancellationToken) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
    token.cancel();
}

/// `SIGHUP` reloads the plugin directory, as `POST /plugins/reload` does.
async fn reload_on_hangup(plugins: Arc<crate::plugins::PluginRegistry>, stop: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload plugins through the API");
            return;
        };
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                got = hangups.recv() => {
                    if got.is_none() {
                        return;
                    }
                    match plugins.reload().await {
                        Ok(report) => tracing::info!(?report, "plugins reloaded on SIGHUP"),
                        Err(e) => tracing::error!(error = %e, "plugin reload on SIGHUP failed"),
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (plugins, stop);
    }
}

/// Runs the host until a shutdown signal (SIGTERM, Ctrl-C).
pub async fn run(config: HostConfig) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_signal(shutdown.clone()));
    run_until(config, shutdown).await
}

/// Runs the host until `shutdown` is cancelled, then drains the server and
/// the scheduler within `scheduler.shutdown_grace_ms` (for embedding: the
/// demo, end-to-end tests).
pub async fn run_until(config: HostConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    crate::faults::check_build().map_err(anyhow::Error::msg)?;
    if let Ok(point) = std::env::var(crate::faults::ENV) {
        tracing::warn!(
            point,
            "fault point armed: this process will abort there (crash tests)"
        );
    }
    prepare_data_dir(&config.data_dir)?;
    let store = open_store(&config).await?;
    tracing::info!(instance_id = store.instance_id(), "this host's instance id");
    // The key check comes first: a host with the wrong key must neither
    // reclaim work nor spend the one-time admin key print.
    let secrets = crate::replica::open_secrets(&store, &config.secrets_key_file()).await?;
    reclaim_own_work(&store).await?;
    bootstrap_admin_key(&store).await?;
    let cache_dir = config
        .plugin_cache_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.join("plugin-cache"));
    let plugins =
        PluginRegistry::load_with(&config.plugin_dir, Some(&cache_dir), &config.limits).await?;
    let tls = if config.tls.plain_http {
        tracing::warn!("serving plain HTTP as configured (tls.plain_http = true)");
        None
    } else if let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) {
        Some(crate::tls::server_config(cert, key)?)
    } else {
        let dev = crate::tls::ensure_dev_certificate(&config.data_dir, &[])?;
        Some(crate::tls::server_config(&dev.cert_path, &dev.key_path)?)
    };
    let config = Arc::new(config);
    let state = AppState::new(
        store.clone(),
        config.clone(),
        Arc::new(plugins),
        Arc::new(secrets),
    );
    // Wake-ups to and from the other replicas (PostgreSQL). Linked before
    // the scheduler starts and the API listens, so no work created
    // elsewhere from then on goes unannounced; stopped only after the
    // scheduler has drained, so its last wake-ups still go out.
    let link_stop = CancellationToken::new();
    let replica_link = state.wake.connect_replicas(&store, link_stop.clone()).await;
    let scheduler = crate::engine::start(state.engine.clone(), shutdown.child_token());
    tokio::spawn(reload_on_hangup(state.plugins.clone(), shutdown.clone()));
    let (wake, stop) = (state.wake.clone(), shutdown.clone());
    tokio::spawn(async move {
        stop.cancelled().await;
        wake.stopping.cancel();
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(
        address = %config.listen,
        tls = tls.is_some(),
        "certplane host listening"
    );
    let grace = Duration::from_millis(config.scheduler.shutdown_grace_ms);
    let responder = match config.challenges.http_listen {
        Some(addr) => {
            let plain = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} ([challenges] http_listen)"))?;
            tracing::info!(address = %addr, "http-01 responder listening");
            let app = api::acme_challenge::responder_app(state.clone());
            let stop = shutdown.clone();
            Some(tokio::spawn(async move {
                if let Err(e) = crate::server::serve(plain, app, None, stop, grace).await {
                    tracing::error!(error = %e, "http-01 responder stopped");
                }
            }))
        }
        None => None,
    };
    crate::server::serve(listener, api::router(state), tls, shutdown.clone(), grace).await?;
    if let Some(responder) = responder {
        let _ = responder.await;
    }
    let report = scheduler.shutdown(grace).await;
    tracing::info!(?report, "scheduler stopped");
    link_stop.cancel();
    if let Some(link) = replica_link {
        link.join().await;
    }
    store.close().await;
    Ok(())
}
