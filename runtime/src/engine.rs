//! The process-wide [`Runtime`]: one wasmtime `Engine` with the pooling
//! allocator and epoch interruption, one `Linker` holding exactly the
//! imports connectors may use, the compiled-component cache and the TLS
//! client configuration for plugin HTTP.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasData, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::cli::{WasiCli, WasiCliView};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
use wasmtime_wasi::random::{WasiRandom, WasiRandomView};

use crate::cache::ComponentCache;
use crate::call_state::CallState;
use crate::error::{LoadError, RuntimeError};
use crate::limits::Limits;
use crate::plugin::Plugin;
use crate::ticker::EpochTicker;

/// Settings of a [`Runtime`]. `Default` gives production defaults.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Directory for compiled artifacts; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Instances that may exist at once across all plugins (pool size).
    pub max_instances: u32,
    /// Ceiling for any instance's memory cap, in bytes.
    pub max_memory_bytes: u64,
    /// Epoch tick: the granularity of deadline checks.
    pub epoch_tick: Duration,
    /// Limits for instances whose manifest and configuration set none.
    pub default_limits: Limits,
    /// Extra PEM-encoded CA certificates trusted for plugin HTTPS, besides
    /// the Mozilla roots (a private CA's API, or a test server).
    pub extra_roots_pem: Vec<String>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            max_instances: 128,
            max_memory_bytes: 256 * 1024 * 1024,
            epoch_tick: Duration::from_millis(10),
            default_limits: Limits::default(),
            extra_roots_pem: Vec::new(),
        }
    }
}

/// Core wasm instances a connector component may contain: the main module
/// plus the shims and adapters wasm-component-ld adds.
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;

pub(crate) struct RuntimeInner {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<CallState>,
    pub(crate) cache: ComponentCache,
    pub(crate) config: RuntimeConfig,
    pub(crate) tls: Arc<rustls::ClientConfig>,
    pub(crate) ticker: EpochTicker,
}

/// Loads and runs connector plugins. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<RuntimeInner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct HasIo;
impl HasData for HasIo {
    type Data<'a> = &'a mut ResourceTable;
}

impl Runtime {
    /// Builds the engine, linker and epoch ticker.
    pub fn new(config: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        let engine = build_engine(&config)?;
        let linker = build_linker(&engine).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let tls = Arc::new(tls_config(&config.extra_roots_pem)?);
        let ticker = EpochTicker::start(engine.clone(), config.epoch_tick)?;
        let cache = ComponentCache::new(&engine, config.cache_dir.clone());
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                cache,
                config,
                tls,
                ticker,
            }),
        })
    }

    /// The runtime's configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// Loads the plugin described by the manifest at `manifest_path`:
    /// verifies the digest and contract version, compiles (or loads the
    /// cached artifact), links it against the connector imports, checks it
    /// exports its kind's interface and that `describe()` agrees with the
    /// manifest.
    pub async fn load_plugin(&self, manifest_path: &Path) -> Result<Arc<Plugin>, LoadError> {
        Plugin::load(self, manifest_path).await.map(Arc::new)
    }

    /// Loads every `*.toml` manifest in `dir`. Failures are returned beside
    /// the successes so one bad plugin does not hide the others.
    pub async fn load_dir(
        &self,
        dir: &Path,
    ) -> Result<(Vec<Arc<Plugin>>, Vec<LoadError>), LoadError> {
        let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut manifests: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|ext| ext == "toml"))
            .collect();
        manifests.sort();
        let mut loaded = Vec::new();
        let mut failed = Vec::new();
        for manifest in manifests {
            match self.load_plugin(&manifest).await {
                Ok(p) => loaded.push(p),
                Err(e) => {
                    tracing::error!(manifest = %manifest.display(), error = %e, "plugin not loaded");
                    failed.push(e);
                }
            }
        }
        Ok((loaded, failed))
    }
}

fn build_engine(config: &RuntimeConfig) -> Result<Engine, RuntimeError> {
    let mut pool = PoolingAllocationConfig::default();
    let max_memory = usize::try_from(config.max_memory_bytes)
        .map_err(|_| RuntimeError::Engine("max_memory_bytes does not fit in usize".into()))?;
    pool.total_component_instances(config.max_instances)
        .total_core_instances(config.max_instances * CORE_INSTANCES_PER_COMPONENT)
        .total_memories(config.max_instances * 2)
        .total_tables(config.max_instances * CORE_INSTANCES_PER_COMPONENT)
        .total_stacks(config.max_instances)
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(2)
        .max_tables_per_component(CORE_INSTANCES_PER_COMPONENT)
        .max_memory_size(max_memory);

    let mut cfg = Config::new();
    cfg.wasm_component_model(true)
        .epoch_interruption(true)
        // Connectors use the synchronous component model only; skipping the
        // concurrency machinery cuts per-call overhead (~0.5 µs → ~0.15 µs).
        .concurrency_support(false)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&cfg).map_err(|e| RuntimeError::Engine(format!("{e:#}")))
}

/// The connector import surface: WASI CLI basics, clocks, random,
/// filesystem (only preopens the operator granted are ever present),
/// wasi-http behind the egress hook, and certplane's `config` and `log`.
/// `wasi:sockets` is deliberately absent: a component that imports it fails
/// to link with a message naming the import.
fn build_linker(engine: &Engine) -> wasmtime::Result<Linker<CallState>> {
    use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random};
    use wasmtime_wasi_io::bindings::wasi::io;

    type T = CallState;
    let mut linker = Linker::<T>::new(engine);
    let l = &mut linker;
    io::error::add_to_linker::<T, HasIo>(l, |t| t.ctx().table)?;
    io::poll::add_to_linker::<T, HasIo>(l, |t| t.ctx().table)?;
    io::streams::add_to_linker::<T, HasIo>(l, |t| t.ctx().table)?;
    clocks::wall_clock::add_to_linker::<T, WasiClocks>(l, T::clocks)?;
    clocks::monotonic_clock::add_to_linker::<T, WasiClocks>(l, T::clocks)?;
    filesystem::types::add_to_linker::<T, WasiFilesystem>(l, T::filesystem)?;
    filesystem::preopens::add_to_linker::<T, WasiFilesystem>(l, T::filesystem)?;
    random::random::add_to_linker::<T, WasiRandom>(l, T::random)?;
    random::insecure::add_to_linker::<T, WasiRandom>(l, T::random)?;
    random::insecure_seed::add_to_linker::<T, WasiRandom>(l, T::random)?;
    cli::exit::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::environment::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stdin::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stdout::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stderr::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_input::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_output::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stdin::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stdout::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stderr::add_to_linker::<T, WasiCli>(l, T::cli)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(l)?;
    {
        use crate::bindings::issuer::certplane::connector::{config, log};
        config::add_to_linker::<T, HasSelf<T>>(l, |t| t)?;
        log::add_to_linker::<T, HasSelf<T>>(l, |t| t)?;
    }
    Ok(linker)
}

fn tls_config(extra_roots_pem: &[String]) -> Result<rustls::ClientConfig, RuntimeError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for pem in extra_roots_pem {
        for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
            let cert = cert.map_err(|e| RuntimeError::Tls(format!("extra root: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| RuntimeError::Tls(format!("extra root: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RuntimeError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
