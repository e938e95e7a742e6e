//! A loaded plugin: verified manifest, compiled component and the
//! pre-linked `InstancePre` every call instantiates from.

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::bindings::dns_solver::DnsSolverPre;
use crate::bindings::issuer::IssuerPre;
use crate::bindings::lifecycle::exports::certplane::connector::issuer_lifecycle::GuestIndices as LifecycleIndices;
use crate::bindings::notifier::NotifierPre;
use crate::bindings::target::TargetPre;
use crate::bindings::types::PluginInfo;
use crate::cache::CacheOutcome;
use crate::call_state::CallState;
use crate::engine::Runtime;
use crate::error::LoadError;
use crate::instance::{InstanceConfig, PluginInstance};
use crate::manifest::{Manifest, PluginKind};

/// The kind-specific pre-instantiated component.
pub(crate) enum PluginPre {
    /// An issuer, and its `issuer-lifecycle` export when it has one.
    Issuer(IssuerPre<CallState>, Option<LifecycleIndices>),
    Target(TargetPre<CallState>),
    Notifier(NotifierPre<CallState>),
    DnsSolver(DnsSolverPre<CallState>),
}

/// A connector that passed every load check and is ready to instantiate.
pub struct Plugin {
    pub(crate) runtime: Runtime,
    pub(crate) manifest: Manifest,
    pub(crate) name: Arc<str>,
    pub(crate) pre: PluginPre,
    info: PluginInfo,
    cache: CacheOutcome,
    /// The host interfaces the component imports, by unversioned name
    /// (`store`, `context`, `challenges`, ...).
    imports: std::collections::BTreeSet<String>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version)
            .field("kind", &self.manifest.kind)
            .field("sha256", &self.manifest.sha256)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// Machine name (manifest `name`, equal to `describe().name`).
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// Connector version.
    pub fn version(&self) -> &str {
        &self.manifest.version
    }

    /// Whether this issuer exports the optional `issuer-lifecycle`
    /// interface (renewal windows, order cancellation).
    pub fn has_lifecycle(&self) -> bool {
        matches!(self.pre, PluginPre::Issuer(_, Some(_)))
    }

    /// Which world it implements.
    pub fn kind(&self) -> PluginKind {
        self.manifest.kind
    }

    /// Verified SHA-256 of the component, lower-case hex.
    pub fn sha256(&self) -> &str {
        &self.manifest.sha256
    }

    /// The manifest it was loaded from.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// What `describe()` returned at load time.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// Whether the component imports the host interface `name` of the
    /// contract (`store`, `context`, `challenges`, ...). What a component
    /// does not import it can never ask for, so the host need not prepare
    /// it for a call (read the instance's store, the job's challenges).
    pub fn imports_interface(&self, name: &str) -> bool {
        self.imports.contains(name)
    }

    /// Whether this load used the compiled-artifact cache.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.cache
    }

    pub(crate) async fn load(runtime: &Runtime, manifest_path: &Path) -> Result<Plugin, LoadError> {
        let manifest = Manifest::from_file(manifest_path)?;
        manifest.check_compatible()?;
        let path = manifest.component_path.clone();
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|source| LoadError::Io {
                path: path.clone(),
                source,
            })?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != manifest.sha256 {
            return Err(LoadError::DigestMismatch {
                plugin: manifest.name.clone(),
                path,
                expected: manifest.sha256.clone(),
                actual,
            });
        }

        // Compilation is CPU-bound and may take a second: keep it off the
        // async workers.
        let inner = runtime.inner.clone();
        let digest = manifest.sha256.clone();
        let (component, cache) =
            tokio::task::spawn_blocking(move || inner.cache.load(&inner.engine, &digest, &bytes))
                .await
                .map_err(|e| LoadError::Compile {
                    plugin: manifest.name.clone(),
                    reason: e.to_string(),
                })?
                .map_err(|e| LoadError::Compile {
                    plugin: manifest.name.clone(),
                    reason: format!("{e:#}"),
                })?;

        let imports = contract_imports(&component, &runtime.inner.engine);
        let instance_pre = runtime
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link {
                plugin: manifest.name.clone(),
                reason: format!("{e:#}"),
            })?;
        let wrong_kind = |e: wasmtime::Error| LoadError::WrongKind {
            plugin: manifest.name.clone(),
            kind: manifest.kind,
            reason: format!(
                "does not export {} ({e:#})",
                manifest.kind.export_interface()
            ),
        };
        let pre = match manifest.kind {
            PluginKind::Issuer => {
                // Optional since 1.1: probed, never required.
                let lifecycle = LifecycleIndices::new(&instance_pre).ok();
                PluginPre::Issuer(IssuerPre::new(instance_pre).map_err(wrong_kind)?, lifecycle)
            }
            PluginKind::Target => {
                PluginPre::Target(TargetPre::new(instance_pre).map_err(wrong_kind)?)
            }
            PluginKind::Notifier => {
                PluginPre::Notifier(NotifierPre::new(instance_pre).map_err(wrong_kind)?)
            }
            PluginKind::DnsSolver => {
                PluginPre::DnsSolver(DnsSolverPre::new(instance_pre).map_err(wrong_kind)?)
            }
        };

        // `describe` runs on the plugin itself, so build it with the
        // manifest's claims first and replace them with the real answer.
        let provisional = PluginInfo {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            description: manifest.description.clone(),
            settings_schema: "{}".to_string(),
            secret_names: Vec::new(),
        };
        let name: Arc<str> = Arc::from(manifest.name.as_str());
        let plugin = Arc::new(Plugin {
            runtime: runtime.clone(),
            manifest,
            name,
            pre,
            info: provisional,
            cache,
            imports,
        });
        let plugin_name = plugin.manifest.name.clone();
        let describe_err = |reason: String| LoadError::Describe {
            plugin: plugin_name.clone(),
            reason,
        };
        let instance = PluginInstance::new(plugin.clone(), InstanceConfig::new("load-check"))
            .map_err(|e| describe_err(e.to_string()))?;
        let info = instance
            .describe()
            .await
            .map_err(|e| describe_err(format!("describe() failed: {e}")))?;
        drop(instance);
        if info.name != plugin.manifest.name {
            return Err(describe_err(format!(
                "describe() says its name is {:?} but the manifest says {:?}",
                info.name, plugin.manifest.name
            )));
        }
        if serde_json::from_str::<serde_json::Value>(&info.settings_schema).is_err() {
            return Err(describe_err(
                "describe().settings-schema is not valid JSON".into(),
            ));
        }
        let mut plugin = Arc::try_unwrap(plugin)
            .map_err(|_| describe_err("internal: plugin still shared after load check".into()))?;
        plugin.info = info;
        tracing::info!(
            plugin = %plugin.manifest.name,
            version = %plugin.manifest.version,
            kind = %plugin.manifest.kind,
            cache = ?plugin.cache,
            "plugin loaded"
        );
        Ok(plugin)
    }
}

/// The contract's interfaces `component` imports, by unversioned name:
/// `certplane:connector/store@1.1.0` is `store`.
fn contract_imports(
    component: &wasmtime::component::Component,
    engine: &wasmtime::Engine,
) -> std::collections::BTreeSet<String> {
    component
        .component_type()
        .imports(engine)
        .filter_map(|(name, _)| {
            let interface = name.strip_prefix("certplane:connector/")?;
            let unversioned = interface.split('@').next().unwrap_or(interface);
            Some(unversioned.to_owned())
        })
        .collect()
}
