//! The host's plugin registry: every connector loaded from the plugin
//! directory at start-up, and construction of runtime instances from stored
//! instance rows.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use certplane_runtime::{LoadError, Plugin, PluginKind, Runtime, RuntimeConfig, RuntimeError};

/// Loaded plugins by name.
pub struct PluginRegistry {
    runtime: Runtime,
    plugins: BTreeMap<String, Arc<Plugin>>,
    failures: Vec<String>,
}

impl std::fmt::Debug for PluginRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRegistry")
            .field("plugins", &self.plugins.keys().collect::<Vec<_>>())
            .field("failures", &self.failures)
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

impl PluginRegistry {
    /// Starts a runtime (compiled cache under `cache_dir`) and loads every
    /// manifest in `plugin_dir`. A plugin that fails to load is logged and
    /// listed in [`PluginRegistry::failures`]; the others still load. A
    /// missing directory yields an empty registry with a warning.
    pub async fn load(
        plugin_dir: &Path,
        cache_dir: Option<&Path>,
    ) -> Result<PluginRegistry, RegistryError> {
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: cache_dir.map(Path::to_path_buf),
            ..RuntimeConfig::default()
        })?;
        let mut registry = PluginRegistry {
            runtime,
            plugins: BTreeMap::new(),
            failures: Vec::new(),
        };
        if !plugin_dir.is_dir() {
            tracing::warn!(dir = %plugin_dir.display(), "plugin directory does not exist; no connectors loaded");
            return Ok(registry);
        }
        let (loaded, failed) = registry.runtime.load_dir(plugin_dir).await?;
        for plugin in loaded {
            registry.plugins.insert(plugin.name().to_string(), plugin);
        }
        registry.failures = failed.iter().map(ToString::to_string).collect();
        tracing::info!(
            dir = %plugin_dir.display(),
            loaded = registry.plugins.len(),
            failed = registry.failures.len(),
            "plugins loaded"
        );
        Ok(registry)
    }

    /// The runtime the plugins run on.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// All loaded plugins, by name.
    pub fn list(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.plugins.values()
    }

    /// Load failures, one message each.
    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    /// A plugin by name, if loaded.
    pub fn get(&self, name: &str) -> Option<&Arc<Plugin>> {
        self.plugins.get(name)
    }

    /// A plugin by name that must be of `kind`.
    pub fn get_kind(&self, name: &str, kind: PluginKind) -> Result<&Arc<Plugin>, String> {
        match self.plugins.get(name) {
            Some(p) if p.kind() == kind => Ok(p),
            Some(p) => Err(format!(
                "plugin {name} is a {} connector, not a {kind}",
                p.kind()
            )),
            None => Err(format!("no {kind} plugin named {name} is loaded")),
        }
    }
}
