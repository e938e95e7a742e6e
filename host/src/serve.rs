//! `certplane serve`: opens the store (migrating it), loads the plugins,
//! starts the scheduler and the HTTPS API, and shuts all of it down
//! gracefully on SIGINT/SIGTERM.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, auth};
use crate::config::HostConfig;
use crate::plugins::PluginRegistry;
use crate::secrets::SecretBox;
use crate::store::{ApiScope, NewApiKey, Store, StoreOptions};

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

/// Opens and migrates the store named by the configuration.
pub async fn open_store(config: &HostConfig) -> anyhow::Result<Store> {
    let options = StoreOptions {
        instance_id: config
            .instance_id
            .clone()
            .unwrap_or_else(|| format!("host-{}", uuid::Uuid::new_v4().simple())),
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

/// Issues the first admin key once per data directory and prints it: the
/// only time the plaintext is ever shown.
async fn bootstrap_admin_key(store: &Store, data_dir: &Path) -> anyhow::Result<()> {
    let marker = data_dir.join("admin-key-issued");
    if marker.exists() {
        return Ok(());
    }
    let (key, hash) = auth::new_api_key();
    store
        .create_api_key(NewApiKey {
            name: "bootstrap-admin".into(),
            key_hash: hash,
            scopes: vec![ApiScope::Admin],
            expires_at: None,
        })
        .await?;
    std::fs::write(&marker, b"the first admin key was printed at first start\n")?;
    println!("First start: admin API key (shown once, store it now):\n  {key}");
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
    prepare_data_dir(&config.data_dir)?;
    let store = open_store(&config).await?;
    bootstrap_admin_key(&store, &config.data_dir).await?;
    let secrets = SecretBox::load_or_create(&config.data_dir.join("secrets.key"))?;
    let cache_dir = config
        .plugin_cache_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.join("plugin-cache"));
    let plugins = PluginRegistry::load(&config.plugin_dir, Some(&cache_dir)).await?;
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
    let scheduler = crate::jobs::start(state.clone(), shutdown.child_token());
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
    crate::server::serve(listener, api::router(state), tls, shutdown.clone(), grace).await?;
    let report = scheduler.shutdown(grace).await;
    tracing::info!(?report, "scheduler stopped");
    store.close().await;
    Ok(())
}
