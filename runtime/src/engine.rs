//! The process-wide [`Runtime`]: one wasmtime `Engine` with the pooling
//! allocator and epoch interruption, one `Linker` holding exactly the
//! imports connectors may use, the compiled-component cache and the TLS
//! client configuration for plugin HTTP.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasData, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::cli::{WasiCli, WasiCliView};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
use wasmtime_wasi::random::{WasiRandom, WasiRandomView};

use crate::cache::ComponentCache;
use crate::call_state::CallState;
use crate::error::{LoadError, RuntimeError};
use crate::limits::{Limits, MemoryBudget, MemoryBudgetUsage};
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
    /// Global memory budget, in bytes: the memory caps of the calls running
    /// at once add up to at most this; further calls wait for running ones
    /// to end. An instance whose own cap exceeds it is refused. Default
    /// [`crate::limits::DEFAULT_MEMORY_BUDGET_BYTES`] (1 GiB).
    pub memory_budget_bytes: u64,
    /// Most log lines one call may write to the host's logs (default
    /// [`crate::limits::DEFAULT_MAX_LOG_LINES`]); the rest are dropped and
    /// counted in one warning when the call ends.
    pub max_log_lines: u32,
    /// Most log bytes one call may write to the host's logs (default
    /// [`crate::limits::DEFAULT_MAX_LOG_BYTES`]).
    pub max_log_bytes: u64,
    /// Bytes of each pooled linear memory kept resident when its instance
    /// is dropped (Linux only): that much is reset in place instead of
    /// being handed back to the kernel, so the next call on the slot takes
    /// no page faults or `madvise`. With the kernel's `PAGEMAP_SCAN`
    /// (Linux ≥ 6.7, used when present) only the pages a call dirtied are
    /// reset; without it the first this-many bytes are `memset` every call,
    /// so keep it near a connector's working set. Each slot a call has used
    /// stays this much resident. Default 1 MiB; 0 restores `madvise`.
    pub memory_keep_resident_bytes: usize,
    /// The same for pooled tables (function tables are small: a connector's
    /// fit in a few KiB). Default 64 KiB.
    pub table_keep_resident_bytes: usize,
    /// Compile a component on several threads (faster cold starts; the
    /// compiler threads and their heaps stay around afterwards). Default
    /// true.
    pub parallel_compilation: bool,
    /// Signing keys (the `signing` import) kept parsed, across instances
    /// (default [`crate::signing::DEFAULT_KEY_CACHE_ENTRIES`]).
    pub signing_key_cache_entries: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            max_instances: 128,
            max_memory_bytes: 256 * 1024 * 1024,
            // A busy guest yields its tokio worker every tick: at 10 ms, two
            // spinning connectors sharing a 2-core host's workers made good
            // issuances 30x slower; at 1 ms, 4.7x (the host also runs calls
            // on threads of their own, which brings it within 2x).
            epoch_tick: Duration::from_millis(1),
            default_limits: Limits::default(),
            extra_roots_pem: Vec::new(),
            memory_budget_bytes: crate::limits::DEFAULT_MEMORY_BUDGET_BYTES,
            max_log_lines: crate::limits::DEFAULT_MAX_LOG_LINES,
            max_log_bytes: crate::limits::DEFAULT_MAX_LOG_BYTES,
            memory_keep_resident_bytes: 1024 * 1024,
            table_keep_resident_bytes: 64 * 1024,
            parallel_compilation: true,
            signing_key_cache_entries: crate::signing::DEFAULT_KEY_CACHE_ENTRIES,
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
    pub(crate) budget: MemoryBudget,
    pub(crate) keys: crate::signing::KeyCache,
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
        let tls = Arc::new(tls_config(&config.extra_roots_pem, None)?);
        let ticker = EpochTicker::start(engine.clone(), config.epoch_tick)?;
        let cache = ComponentCache::new(&engine, config.cache_dir.clone());
        let budget = MemoryBudget::new(config.memory_budget_bytes);
        let keys = crate::signing::KeyCache::new(config.signing_key_cache_entries);
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                cache,
                config,
                tls,
                ticker,
                budget,
                keys,
            }),
        })
    }

    /// The runtime's configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// The wasmtime engine every plugin runs on. Exposed so the plugin-call
    /// benchmark can measure a bare-wasmtime floor on the very same engine
    /// configuration (pool, keep-resident sizes, epoch interruption).
    pub fn engine(&self) -> &wasmtime::Engine {
        &self.inner.engine
    }

    /// How much of the global memory budget running calls hold now, and
    /// its total (for metrics).
    pub fn memory_budget(&self) -> MemoryBudgetUsage {
        self.inner.budget.usage()
    }

    /// How many parsed signing keys the runtime holds now (for metrics).
    pub fn signing_keys_cached(&self) -> u64 {
        self.inner.keys.len()
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
        .max_memory_size(max_memory)
        // A call dirties the same few pages of its slot every time; resetting
        // them in place is cheaper than `madvise` plus a page fault per page
        // on the next call. PAGEMAP_SCAN (where the kernel has it) limits the
        // reset to the pages actually written.
        .linear_memory_keep_resident(config.memory_keep_resident_bytes)
        .table_keep_resident(config.table_keep_resident_bytes)
        .pagemap_scan(Enabled::Auto);

    let mut cfg = Config::new();
    cfg.wasm_component_model(true)
        .epoch_interruption(true)
        // Connectors use the synchronous component model only; skipping the
        // concurrency machinery cuts per-call overhead (~0.5 µs → ~0.15 µs).
        .concurrency_support(false)
        .parallel_compilation(config.parallel_compilation)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&cfg).map_err(|e| RuntimeError::Engine(format!("{e:#}")))
}

/// The connector import surface: WASI CLI basics, clocks, random,
/// filesystem (only preopens the operator granted are ever present),
/// wasi-http behind the egress hook, and certplane's `config`, `log`,
/// `context`, `store`, `challenges`, `actions` and `signing`.
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
        use crate::bindings::issuer::certplane::connector::{
            challenges, config, context, log, store,
        };
        config::add_to_linker::<T, HasSelf<T>>(l, |t| t)?;
        log::add_to_linker::<T, HasSelf<T>>(l, |t| t)?;
        // Contract 1.1. A 1.0 component imports none of these; wasmtime
        // matches its `@1.0.0` imports of the others to these `@1.1.0`
        // definitions by semver.
        context::add_to_linker::<T, HasSelf<T>>(l, |t| t)?;
        store::add_to_linker::<T, HasSelf<T>>(l, |t| t)?;
        challenges::add_to_linker::<T, HasSelf<T>>(l, |t| t)?;
        crate::bindings::target::certplane::connector::actions::add_to_linker::<T, HasSelf<T>>(
            l,
            |t| t,
        )?;
        crate::bindings::issuer::certplane::connector::signing::add_to_linker::<T, HasSelf<T>>(
            l,
            |t| t,
        )?;
    }
    Ok(linker)
}

/// The client TLS configuration of plugin HTTPS: the Mozilla roots plus
/// `extra_roots_pem`, and a client certificate when one is given.
pub(crate) fn tls_config(
    extra_roots_pem: &[String],
    client: Option<(&str, &str)>,
) -> Result<rustls::ClientConfig, RuntimeError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for pem in extra_roots_pem {
        let mut found = false;
        for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
            let cert = cert.map_err(|e| RuntimeError::Tls(format!("extra root: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| RuntimeError::Tls(format!("extra root: {e}")))?;
            found = true;
        }
        if !found {
            return Err(RuntimeError::Tls(
                "extra root: no PEM certificate found".into(),
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RuntimeError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert_pem, key_pem)) => {
            let chain = rustls_pemfile::certs(&mut cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| RuntimeError::Tls(format!("client certificate: {e}")))?;
            if chain.is_empty() {
                return Err(RuntimeError::Tls(
                    "client certificate: no PEM certificate found".into(),
                ));
            }
            let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
                .map_err(|e| RuntimeError::Tls(format!("client key: {e}")))?
                .ok_or_else(|| RuntimeError::Tls("client key: no PEM private key found".into()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| RuntimeError::Tls(format!("client certificate and key: {e}")))
        }
    }
}
