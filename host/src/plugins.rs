//! The host's plugin registry: every connector loaded from the plugin
//! directory at start-up, and construction of runtime instances from stored
//! instance rows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::RwLock;

use certplane_runtime::{
    LimitPolicy, LoadError, Plugin, PluginKind, Runtime, RuntimeConfig, RuntimeError,
};

/// Loaded plugins by name; [`PluginRegistry::reload`] swaps in what the
/// plugin directory holds now, without a restart.
pub struct PluginRegistry {
    runtime: Runtime,
    dir: PathBuf,
    loaded: RwLock<Loaded>,
}

#[derive(Default, Clone)]
struct Loaded {
    plugins: BTreeMap<String, Arc<Plugin>>,
    failures: Vec<String>,
}

impl std::fmt::Debug for PluginRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let loaded = self.snapshot();
        f.debug_struct("PluginRegistry")
            .field("plugins", &loaded.plugins.keys().collect::<Vec<_>>())
            .field("failures", &loaded.failures)
            .finish()
    }
}

/// Why the registry could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The runtime failed to start.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The plugin directory could not be read.
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    /// Plugins new to the registry.
    pub added: Vec<String>,
    /// Plugins whose component changed (another digest).
    pub replaced: Vec<String>,
    /// Plugins whose manifest is gone from the directory.
    pub removed: Vec<String>,
    /// Plugins unchanged.
    pub unchanged: Vec<String>,
    /// Load failures, one message each. A plugin whose new version fails
    /// to load keeps running its loaded version.
    pub failures: Vec<String>,
}

impl PluginRegistry {
    /// Starts a runtime (compiled cache under `cache_dir`) and loads every
    /// manifest in `plugin_dir`. A plugin that fails to load is logged and
    /// listed in [`PluginRegistry::failures`]; the others still load. A
    /// missing directory yields an empty registry with a warning.
    pub async fn load(
        plugin_dir: &Path,
        cache_dir: Option<&Path>,
    ) -> Result<PluginRegistry, RegistryError> {
        Self::load_with(plugin_dir, cache_dir, &LimitPolicy::default()).await
    }

    /// [`PluginRegistry::load`] with the host's `[limits]` (the global
    /// memory budget of concurrent calls).
    pub async fn load_with(
        plugin_dir: &Path,
        cache_dir: Option<&Path>,
        limits: &LimitPolicy,
    ) -> Result<PluginRegistry, RegistryError> {
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: cache_dir.map(Path::to_path_buf),
            memory_budget_bytes: limits.memory_budget_mib.saturating_mul(1024 * 1024),
            ..RuntimeConfig::default()
        })?;
        let registry = PluginRegistry {
            runtime,
            dir: plugin_dir.to_path_buf(),
            loaded: RwLock::new(Loaded::default()),
        };
        registry.reload().await?;
        Ok(registry)
    }

    /// Loads the plugin directory again and swaps the result in: calls
    /// already running finish on the version they started with, later
    /// calls use the new one.
    pub async fn reload(&self) -> Result<ReloadReport, RegistryError> {
        let mut report = ReloadReport::default();
        if !self.dir.is_dir() {
            tracing::warn!(dir = %self.dir.display(), "plugin directory does not exist; no connectors loaded");
        }
        let (found, failed) = if self.dir.is_dir() {
            self.runtime.load_dir(&self.dir).await?
        } else {
            (Vec::new(), Vec::new())
        };
        let old = self.snapshot();
        let mut plugins = BTreeMap::new();
        for plugin in found {
            let name = plugin.name().to_string();
            match old.plugins.get(&name) {
                None => report.added.push(name.clone()),
                Some(p) if p.sha256() == plugin.sha256() => report.unchanged.push(name.clone()),
                Some(_) => report.replaced.push(name.clone()),
            }
            plugins.insert(name, plugin);
        }
        report.failures = failed.iter().map(ToString::to_string).collect();
        for (name, plugin) in &old.plugins {
            if plugins.contains_key(name) {
                continue;
            }
            let manifest = self.dir.join(format!("{name}.toml"));
            if manifest.exists() {
                // Its new version failed to load: keep serving the old one.
                plugins.insert(name.clone(), plugin.clone());
            } else {
                report.removed.push(name.clone());
            }
        }
        let loaded = Loaded {
            plugins,
            failures: report.failures.clone(),
        };
        tracing::info!(
            dir = %self.dir.display(),
            loaded = loaded.plugins.len(),
            failed = loaded.failures.len(),
            added = ?report.added,
            replaced = ?report.replaced,
            removed = ?report.removed,
            "plugins loaded"
        );
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        Ok(report)
    }

    fn snapshot(&self) -> Loaded {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The runtime the plugins run on.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// All loaded plugins, by name.
    pub fn list(&self) -> Vec<Arc<Plugin>> {
        self.snapshot().plugins.into_values().collect()
    }

    /// Load failures, one message each.
    pub fn failures(&self) -> Vec<String> {
        self.snapshot().failures
    }

    /// A plugin by name, if loaded.
    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .plugins
            .get(name)
            .cloned()
    }

    /// A plugin by name that must be of `kind`.
    pub fn get_kind(&self, name: &str, kind: PluginKind) -> Result<Arc<Plugin>, String> {
        match self.get(name) {
            Some(p) if p.kind() == kind => Ok(p),
            Some(p) => Err(format!(
                "plugin {name} is a {} connector, not a {kind}",
                p.kind()
            )),
            None => Err(format!("no {kind} plugin named {name} is loaded")),
        }
    }
}
