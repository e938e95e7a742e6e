//! Building runtime plugin instances from stored instance rows, and mapping
//! connector failures onto job outcomes.

use std::collections::BTreeMap;
use std::sync::Arc;

use certplane_proto::ErrorClass;
use certplane_runtime::asyncpoll::{MAX_RETRY_AFTER, MIN_RETRY_AFTER};
use certplane_runtime::{
    CallError, InstanceConfig, InstanceLimits, Plugin, PluginInstance, PluginKind,
};
use chrono::{DateTime, Utc};

use crate::engine::Engine;
use crate::store::{JobFailure, StoreError};

/// Grants as stored in the `grants` JSON column.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct StoredGrants {
    hosts: Vec<String>,
    directories: Vec<StoredDir>,
    /// The operator's limits for this instance.
    limits: InstanceLimits,
    /// TLS of the connector's own HTTPS.
    tls: Option<crate::grants::TlsGrant>,
    /// Named actions (targets), defined in the host's `[actions]`.
    actions: Vec<String>,
}

#[derive(Debug, serde::Deserialize)]
struct StoredDir {
    path: std::path::PathBuf,
    guest_path: String,
    #[serde(default)]
    writable: bool,
}

/// Instances built from stored rows, by sealing owner, with a digest of
/// what they were built from. Building one opens the sealed secrets,
/// parses the grants and settings and builds the redactor: tens of
/// microseconds that every job of a busy instance would otherwise repeat.
/// A row that changed (settings, secrets, grants) or a reloaded plugin
/// builds afresh; an instance is immutable and shared by concurrent calls.
#[derive(Debug, Default)]
pub struct InstanceCache {
    built: std::sync::Mutex<std::collections::HashMap<String, ([u8; 32], PluginInstance)>>,
}

/// Instances kept at most; beyond it the cache starts over (connector rows
/// are few; this only bounds a pathological churn of ids).
const INSTANCE_CACHE_MAX: usize = 4096;

impl InstanceCache {
    fn get(&self, owner: &str, digest: &[u8; 32], plugin: &Arc<Plugin>) -> Option<PluginInstance> {
        let built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        built
            .get(owner)
            .filter(|(d, i)| d == digest && Arc::ptr_eq(i.plugin(), plugin))
            .map(|(_, i)| i.clone())
    }

    fn put(&self, owner: &str, digest: [u8; 32], instance: &PluginInstance) {
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if built.len() >= INSTANCE_CACHE_MAX && !built.contains_key(owner) {
            built.clear();
        }
        built.insert(owner.to_owned(), (digest, instance.clone()));
    }
}

/// What an instance is built from, digested.
fn row_digest(
    kind: PluginKind,
    plugin_name: &str,
    settings: &serde_json::Value,
    encrypted_secrets: Option<&[u8]>,
    grants: &serde_json::Value,
) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    // Length-prefixed parts, so no two rows digest alike by shifting bytes
    // from one part into the next.
    for part in [
        kind.as_str().as_bytes(),
        plugin_name.as_bytes(),
        settings.to_string().as_bytes(),
        encrypted_secrets.unwrap_or_default(),
        grants.to_string().as_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// Builds the runtime instance of a stored issuer/target/notifier row, or
/// takes the one built from the same row before ([`InstanceCache`]).
/// `owner` is the secrets' sealing owner, e.g. `issuer/<id>`.
pub fn build_instance(
    engine: &Engine,
    kind: PluginKind,
    owner: &str,
    plugin_name: &str,
    settings: &serde_json::Value,
    encrypted_secrets: Option<&[u8]>,
    grants: &serde_json::Value,
) -> Result<PluginInstance, String> {
    let plugin = engine.plugins.get_kind(plugin_name, kind)?.clone();
    let digest = row_digest(kind, plugin_name, settings, encrypted_secrets, grants);
    if let Some(instance) = engine.instances.get(owner, &digest, &plugin) {
        return Ok(instance);
    }
    let instance = build_uncached(engine, plugin, owner, settings, encrypted_secrets, grants)?;
    engine.instances.put(owner, digest, &instance);
    Ok(instance)
}

fn build_uncached(
    engine: &Engine,
    plugin: Arc<Plugin>,
    owner: &str,
    settings: &serde_json::Value,
    encrypted_secrets: Option<&[u8]>,
    grants: &serde_json::Value,
) -> Result<PluginInstance, String> {
    let mut config = InstanceConfig::new(owner)
        .with_settings(settings.clone())
        .map_err(|e| format!("{owner}: {e}"))?;
    let mut opened: BTreeMap<String, String> = BTreeMap::new();
    if let Some(sealed) = encrypted_secrets {
        let sealed = std::str::from_utf8(sealed)
            .map_err(|_| format!("{owner}: secrets are not sealed text"))?;
        let map: BTreeMap<String, _> = engine
            .secrets
            .open_map(sealed, owner)
            .map_err(|e| format!("{owner}: cannot open secrets: {e}"))?;
        for (name, value) in map {
            opened.insert(name, value.as_str().to_string());
        }
    }
    let grants: StoredGrants = serde_json::from_value(grants.clone())
        .map_err(|e| format!("{owner}: malformed grants: {e}"))?;
    if let Some(tls) = &grants.tls {
        config = config.with_tls(
            tls.instance_tls(|name| opened.get(name).map(String::as_str))
                .map_err(|e| format!("{owner}: {e}"))?,
        );
    }
    for (name, value) in opened {
        config = config.with_secret(name, value);
    }
    config = config
        .with_hosts(&grants.hosts)
        .map_err(|e| format!("{owner}: {e}"))?;
    for dir in grants.directories {
        config = config.with_dir(dir.path, dir.guest_path, dir.writable);
    }
    config.grants.actions =
        certplane_runtime::actions::granted_specs(&grants.actions, &engine.config.actions)
            .map_err(|e| format!("{owner}: {e}"))?;
    let resolved = engine
        .config
        .limits
        .resolve(plugin.manifest(), &grants.limits)
        .map_err(|e| format!("{owner}: {e}"))?;
    config = config.with_limits(resolved.limits);
    engine
        .runner
        .set_instance_concurrency(owner, resolved.concurrency);
    PluginInstance::new(plugin, config).map_err(|e| format!("{owner}: {e}"))
}

/// The runtime instance of the issuer row `issuer_id`. The outer error is
/// the database's; the inner one says why the issuer cannot be used (gone,
/// plugin not loaded, unreadable secrets): a permanent condition.
pub async fn issuer_instance(
    engine: &Engine,
    issuer_id: &str,
) -> Result<Result<PluginInstance, String>, StoreError> {
    Ok(issuer_with_routes(engine, issuer_id)
        .await?
        .map(|issuer| issuer.instance))
}

/// [`issuer_instance`] and the issuer's challenge routes, from one read of
/// its row.
pub async fn issuer_with_routes(
    engine: &Engine,
    issuer_id: &str,
) -> Result<Result<IssuerInstance, String>, StoreError> {
    let row = engine.store.get_issuer(issuer_id).await?;
    Ok(issuer_from_row(engine, issuer_id, row))
}

/// [`issuer_with_routes`] from the issuer's row as already read (`None`:
/// the issuer `issuer_id` no longer exists).
pub fn issuer_from_row(
    engine: &Engine,
    issuer_id: &str,
    row: Option<crate::store::PluginInstance>,
) -> Result<IssuerInstance, String> {
    let Some(row) = row else {
        return Err(format!("issuer {issuer_id} no longer exists"));
    };
    let routes = super::challenges::routes_of(&row.grants);
    build_instance(
        engine,
        PluginKind::Issuer,
        &format!("issuer/{}", row.id),
        &row.plugin_name,
        &row.settings,
        row.encrypted_secrets.as_deref(),
        &row.grants,
    )
    .map(|instance| IssuerInstance {
        instance,
        routes,
        name: row.name,
    })
}

/// An issuer row made usable: its runtime instance, its challenge routes
/// and its name (for events), from one read of the row.
pub struct IssuerInstance {
    /// The runtime instance.
    pub instance: PluginInstance,
    /// Where its challenges are published.
    pub routes: crate::grants::ChallengeRoutes,
    /// The issuer's name.
    pub name: String,
}

/// Runs one connector call on the plugin threads ([`super::plugin_exec`])
/// within the instance's concurrency, and records its latency and outcome
/// in the host's metrics (`certplane_plugin_call_*`), labelled by plugin
/// and call. `call` gets its own handle on the instance.
pub async fn observed<T, F, Fut>(
    engine: &Engine,
    instance: &PluginInstance,
    call_name: &str,
    call: F,
) -> Result<T, CallError>
where
    T: Send + 'static,
    F: FnOnce(PluginInstance) -> Fut,
    Fut: Future<Output = Result<T, CallError>> + Send + 'static,
{
    // Waiting for the instance's own slot is not counted as call time.
    let _slot = engine.runner.instance_permit(instance.id()).await;
    let started = std::time::Instant::now();
    let result = engine
        .plugin_exec
        .run(instance.plugin().name(), call(instance.clone()))
        .await;
    engine.metrics.observe_plugin_call(
        instance.plugin().name(),
        call_name,
        started.elapsed(),
        result.as_ref().map(|_| ()),
    );
    result
}

/// How a failure of `class` ends the job: permanent classes fail it for
/// good, the others retry with backoff, or after the connector's hint
/// (clamped like every hint, see `certplane_runtime::asyncpoll`). The one
/// mapping of error classes to job outcomes, for the host's own connector
/// calls and for agents' reports alike.
pub fn failure_of(
    class: ErrorClass,
    message: String,
    retry_after_secs: Option<u32>,
    now: DateTime<Utc>,
) -> JobFailure {
    if class.is_permanent() {
        return JobFailure::permanent(message);
    }
    let mut failure = JobFailure::transient(message);
    failure.retry_at = retry_after_secs.map(|s| {
        let hint =
            std::time::Duration::from_secs(u64::from(s)).clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER);
        now + chrono::Duration::from_std(hint).unwrap_or(chrono::Duration::hours(1))
    });
    failure
}

/// [`failure_of`] for a failed connector call on the host.
pub fn failure_for(err: &CallError, now: DateTime<Utc>) -> JobFailure {
    failure_of(err.class(), err.to_string(), retry_after_secs(err), now)
}

/// The connector's retry-after hint in whole seconds.
pub fn retry_after_secs(err: &CallError) -> Option<u32> {
    err.retry_after()
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use certplane_runtime::{ConnectorError, RateLimit};

    fn connector(error: ConnectorError) -> CallError {
        CallError::Connector {
            plugin: "p".into(),
            error,
        }
    }

    #[test]
    fn connector_error_classes_map_to_job_outcomes() {
        let now = Utc::now();
        for (err, permanent) in [
            (connector(ConnectorError::Rejected("no".into())), true),
            (connector(ConnectorError::InvalidConfig("bad".into())), true),
            (connector(ConnectorError::Unauthorized("key".into())), true),
            (connector(ConnectorError::Unsupported("x".into())), true),
            (connector(ConnectorError::Transient("net".into())), false),
            (
                CallError::Trap {
                    plugin: "p".into(),
                    message: "unreachable".into(),
                },
                false,
            ),
            (
                CallError::Deadline {
                    plugin: "p".into(),
                    deadline: std::time::Duration::from_secs(5),
                },
                false,
            ),
            (
                CallError::MemoryLimit {
                    plugin: "p".into(),
                    limit_bytes: 1,
                },
                true,
            ),
        ] {
            assert_eq!(failure_for(&err, now).permanent, permanent, "{err}");
        }
        let limited = failure_for(
            &connector(ConnectorError::RateLimited(RateLimit {
                retry_after_secs: Some(120),
                message: "slow down".into(),
            })),
            now,
        );
        assert!(!limited.permanent);
        assert_eq!(limited.retry_at, Some(now + chrono::Duration::seconds(120)));
        // A hint of u32::MAX seconds is cut to an hour, not the year 2163.
        let huge = failure_of(ErrorClass::RateLimited, "x".into(), Some(u32::MAX), now);
        assert_eq!(huge.retry_at, Some(now + chrono::Duration::hours(1)));
        let tiny = failure_of(ErrorClass::Transient, "x".into(), Some(0), now);
        assert_eq!(tiny.retry_at, Some(now + chrono::Duration::seconds(1)));
    }
}
