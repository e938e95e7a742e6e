//! Plugin call cost: a fresh instance from the `InstancePre` + one export
//! call, warm compiled cache, against a bare-wasmtime floor measured in the
//! same run.
//!
//! The floor runs on the runtime's own `Engine` (same pooling allocator,
//! keep-resident sizes, PAGEMAP_SCAN setting, epoch interruption), the same
//! component and the same generated bindings: per iteration a fresh `Store`
//! holding a default `WasiCtx`, a `WasiHttpCtx` and a `ResourceTable`, an epoch deadline,
//! `instantiate_async` from an `InstancePre`, the export call. That is the
//! least a wasmtime embedder running a WASI component does per call; the
//! certplane side adds its sandbox (captured output, preopens, egress hooks,
//! memory limiter, deadline callback and timeout, ticker guard, outcome
//! classification). Floor and certplane batches alternate, so load on the
//! machine hits both alike. Target: certplane median ≤ 1.1× the floor.
//!
//! Run: `scripts/build-plugins && cargo bench -p certplane-runtime --bench plugin_call`
//! Env: `CERTPLANE_BENCH_CALLS` (per side and case, default 20000),
//! `CERTPLANE_BENCH_KEEP_RESIDENT=<memory bytes>,<table bytes>` (overrides
//! the runtime's keep-resident defaults, e.g. `0,0` for plain `madvise`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use certplane_runtime::bindings::issuer::IssuerPre;
use certplane_runtime::bindings::issuer::certplane::connector::{config, log, signing};
use certplane_runtime::bindings::target::TargetPre;
use certplane_runtime::bindings::target::certplane::connector::actions;
use certplane_runtime::bindings::types::{ConnectorError, Level};
use certplane_runtime::{InstanceConfig, Plugin, PluginInstance, Runtime, RuntimeConfig};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Alternating floor/certplane batches per case.
const ROUNDS: usize = 10;

fn manifest(dir: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(dir)
        .join(format!("{name}.toml"))
}

struct Stats {
    p50: Duration,
    p90: Duration,
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn summarize(label: &str, mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p) as usize];
    let stats = Stats {
        p50: pct(0.50),
        p90: pct(0.90),
    };
    println!(
        "{label:<44} n={:<6} median={:>7.2} µs  p90={:>7.2} µs  p99={:>8.2} µs  min={:>7.2} µs",
        samples.len(),
        us(stats.p50),
        us(stats.p90),
        us(pct(0.99)),
        us(samples[0])
    );
    stats
}

async fn time_batch<F, Fut>(n: usize, samples: &mut Vec<Duration>, call: &mut F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    for _ in 0..n {
        let t = Instant::now();
        call().await;
        samples.push(t.elapsed());
    }
}

/// Runs `floor` and `certplane` in alternating batches (after a warm-up of
/// each) and prints both distributions and the ratio of the medians.
async fn compare<F, FFut, C, CFut>(label: &str, n: usize, mut floor: F, mut certplane: C) -> f64
where
    F: FnMut() -> FFut,
    FFut: Future<Output = ()>,
    C: FnMut() -> CFut,
    CFut: Future<Output = ()>,
{
    let warm = (n / 10).max(1);
    for _ in 0..warm {
        floor().await;
        certplane().await;
    }
    let per_round = n.div_ceil(ROUNDS);
    let (mut f, mut c) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for round in 0..ROUNDS {
        // Alternate which side goes first so neither always follows the other.
        if round % 2 == 0 {
            time_batch(per_round, &mut f, &mut floor).await;
            time_batch(per_round, &mut c, &mut certplane).await;
        } else {
            time_batch(per_round, &mut c, &mut certplane).await;
            time_batch(per_round, &mut f, &mut floor).await;
        }
    }
    let floor = summarize(&format!("{label}: bare wasmtime floor"), f);
    let cp = summarize(&format!("{label}: certplane PluginInstance"), c);
    let ratio = us(cp.p50) / us(floor.p50);
    println!(
        "{label}: certplane / floor = {ratio:.3}x median, {:.3}x p90 (target ≤ 1.10x)\n",
        us(cp.p90) / us(floor.p90)
    );
    ratio
}

/// Store data of the floor: what `wasmtime-wasi` and `wasmtime-wasi-http`
/// need and nothing else.
struct Floor {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
}

impl WasiHttpView for Floor {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: wasmtime_wasi_http::default_hooks(),
        }
    }
}

impl WasiView for Floor {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

// certplane's own imports, inert: `describe` calls neither.
impl config::Host for Floor {
    fn get_setting(&mut self, _: String) -> Option<String> {
        None
    }
    fn settings_json(&mut self) -> String {
        "{}".into()
    }
    fn get_secret(&mut self, _: String) -> Option<String> {
        None
    }
}

impl log::Host for Floor {
    fn log(&mut self, _: Level, _: String) {}
}

// pem-files imports `actions`, local-ca `signing`; `describe` calls
// neither.
impl actions::Host for Floor {
    async fn granted(&mut self, _: String) -> bool {
        false
    }
    async fn run(&mut self, _: String) -> Result<actions::ActionOutput, ConnectorError> {
        Err(ConnectorError::Unsupported("floor".into()))
    }
}

impl signing::Host for Floor {
    fn key_info(&mut self, _: String) -> Result<signing::SigningKey, ConnectorError> {
        Err(ConnectorError::Unsupported("floor".into()))
    }
    fn sign(&mut self, _: String, _: Vec<u8>) -> Result<Vec<u8>, ConnectorError> {
        Err(ConnectorError::Unsupported("floor".into()))
    }
    fn verify(
        &mut self,
        _: Vec<u8>,
        _: String,
        _: Vec<u8>,
        _: Vec<u8>,
    ) -> Result<bool, ConnectorError> {
        Err(ConnectorError::Unsupported("floor".into()))
    }
}

/// Instantiates `plugin`'s component on `engine` with the same imports the
/// runtime's linker defines (WASI, wasi-http, certplane's `config`, `log`,
/// `actions` and `signing`, here inert).
fn floor_pre(engine: &Engine, plugin: &Plugin) -> wasmtime::component::InstancePre<Floor> {
    let component =
        Component::from_file(engine, &plugin.manifest().component_path).expect("component");
    let mut linker = Linker::<Floor>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("wasi");
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).expect("wasi-http");
    config::add_to_linker::<Floor, HasSelf<Floor>>(&mut linker, |t| t).expect("config");
    log::add_to_linker::<Floor, HasSelf<Floor>>(&mut linker, |t| t).expect("log");
    signing::add_to_linker::<Floor, HasSelf<Floor>>(&mut linker, |t| t).expect("signing");
    actions::add_to_linker::<Floor, HasSelf<Floor>>(&mut linker, |t| t).expect("actions");
    linker.instantiate_pre(&component).expect("instance pre")
}

fn floor_store(engine: &Engine) -> Store<Floor> {
    let mut store = Store::new(
        engine,
        Floor {
            wasi: WasiCtx::builder().build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
        },
    );
    // Epoch interruption is on in this engine, so a store needs a deadline;
    // the checks cost the same whatever the value.
    store.set_epoch_deadline(u64::MAX / 2);
    store
}

async fn floor_target_describe(engine: &Engine, pre: &TargetPre<Floor>) {
    let mut store = floor_store(engine);
    let b = pre
        .instantiate_async(&mut store)
        .await
        .expect("instantiate");
    b.certplane_connector_target_api()
        .call_describe(&mut store)
        .await
        .expect("describe");
}

async fn floor_issuer_describe(engine: &Engine, pre: &IssuerPre<Floor>) {
    let mut store = floor_store(engine);
    let b = pre
        .instantiate_async(&mut store)
        .await
        .expect("instantiate");
    b.certplane_connector_issuer_api()
        .call_describe(&mut store)
        .await
        .expect("describe");
}

fn keep_resident_override(config: &mut RuntimeConfig) {
    let Ok(v) = std::env::var("CERTPLANE_BENCH_KEEP_RESIDENT") else {
        return;
    };
    let (mem, table) = v
        .split_once(',')
        .expect("CERTPLANE_BENCH_KEEP_RESIDENT=<memory bytes>,<table bytes>");
    config.memory_keep_resident_bytes = mem.parse().expect("memory bytes");
    config.table_keep_resident_bytes = table.parse().expect("table bytes");
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let cache = tempfile::tempdir().expect("tempdir");
        let mut config = RuntimeConfig {
            cache_dir: Some(cache.path().to_path_buf()),
            ..RuntimeConfig::default()
        };
        keep_resident_override(&mut config);
        println!(
            "keep resident: memory {} B, table {} B; PAGEMAP_SCAN auto (kernel {})\n",
            config.memory_keep_resident_bytes,
            config.table_keep_resident_bytes,
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
        );
        let runtime = Runtime::new(config).expect("runtime");
        let engine = runtime.engine().clone();
        // CERTPLANE_BENCH_CALLS shortens runs (quick checks, profilers).
        let n = std::env::var("CERTPLANE_BENCH_CALLS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        let load = |dir: &'static str, name: &'static str| {
            let runtime = runtime.clone();
            async move {
                runtime
                    .load_plugin(&manifest(dir, name))
                    .await
                    .expect("scripts/build-plugins first")
            }
        };

        let hostile: Arc<Plugin> = load("test-plugins", "hostile").await;
        let pem_files = load("plugins", "pem-files").await;
        let local_ca = load("plugins", "local-ca").await;
        let mut ratios = Vec::new();

        for plugin in [&hostile, &pem_files] {
            let pre = TargetPre::new(floor_pre(&engine, plugin)).expect("target pre");
            let instance = PluginInstance::new(plugin.clone(), InstanceConfig::new("bench"))
                .expect("instance");
            let label = format!("{} describe", plugin.name());
            ratios.push((
                label.clone(),
                compare(
                    &label,
                    n,
                    || floor_target_describe(&engine, &pre),
                    || async {
                        instance.describe().await.expect("describe");
                    },
                )
                .await,
            ));
        }
        {
            let pre = IssuerPre::new(floor_pre(&engine, &local_ca)).expect("issuer pre");
            let instance = PluginInstance::new(local_ca.clone(), InstanceConfig::new("bench"))
                .expect("instance");
            let label = "local-ca describe".to_string();
            ratios.push((
                label.clone(),
                compare(
                    &label,
                    n,
                    || floor_issuer_describe(&engine, &pre),
                    || async {
                        instance.describe().await.expect("describe");
                    },
                )
                .await,
            ));
        }

        // Reads its settings through certplane's `config` import, which the
        // floor does not have: certplane only.
        let ok = PluginInstance::new(
            hostile.clone(),
            InstanceConfig::new("bench")
                .with_settings(serde_json::json!({"mode": "ok"}))
                .expect("settings"),
        )
        .expect("instance");
        let bundle = certplane_runtime::target::CertificateBundle {
            certificate_id: "bench".into(),
            dns_names: vec!["bench.example".into()],
            certificate_pem: String::new(),
            chain_pem: vec![],
            fingerprint_sha256: String::new(),
        };
        let mut samples = Vec::with_capacity(n);
        let mut deploy = || async {
            ok.deploy(&bundle, "", "{}").await.expect("deploy");
        };
        time_batch(n / 10, &mut Vec::new(), &mut deploy).await;
        time_batch(n, &mut samples, &mut deploy).await;
        summarize("hostile deploy mode=ok (reads settings)", samples);

        println!();
        for (label, ratio) in ratios {
            println!("{label:<24} certplane / floor median = {ratio:.3}x");
        }
    });
}
