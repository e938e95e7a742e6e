//! Plugin call latency: fresh instance from the `InstancePre` + one export
//! call, warm compiled cache. Target (design.md): median ≤ 10 µs.
//!
//! Run: `scripts/build-plugins && cargo bench -p certplane-runtime --bench plugin_call`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use certplane_runtime::{InstanceConfig, PluginInstance, Runtime, RuntimeConfig};

fn manifest(dir: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(dir)
        .join(format!("{name}.toml"))
}

fn summarize(label: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p) as usize];
    let (p50, p99) = (pct(0.50), pct(0.99));
    println!(
        "{label:<40} n={:<6} median={:>8.2} µs  p99={:>8.2} µs  min={:>8.2} µs",
        samples.len(),
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        samples[0].as_secs_f64() * 1e6
    );
    p50
}

async fn measure<F, Fut>(n: usize, mut call: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    for _ in 0..n / 10 {
        call().await;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        call().await;
        samples.push(t.elapsed());
    }
    samples
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let cache = tempfile::tempdir().expect("tempdir");
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: Some(cache.path().to_path_buf()),
            ..RuntimeConfig::default()
        })
        .expect("runtime");
        // CERTPLANE_BENCH_CALLS shortens runs (quick checks, profilers).
        let n = std::env::var("CERTPLANE_BENCH_CALLS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);

        let hostile = runtime
            .load_plugin(&manifest("test-plugins", "hostile"))
            .await
            .expect("scripts/build-plugins first");
        let ok = PluginInstance::new(
            hostile,
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
        let describe = summarize(
            "hostile describe (fresh instance + call)",
            measure(n, || async {
                ok.describe().await.expect("describe");
            })
            .await,
        );
        summarize(
            "hostile deploy mode=ok (reads settings)",
            measure(n, || async {
                ok.deploy(&bundle, "", "{}").await.expect("deploy");
            })
            .await,
        );

        let local_ca = runtime
            .load_plugin(&manifest("plugins", "local-ca"))
            .await
            .expect("local-ca");
        let ca = PluginInstance::new(local_ca, InstanceConfig::new("bench")).expect("instance");
        summarize(
            "local-ca describe (fresh instance + call)",
            measure(n, || async {
                ca.describe().await.expect("describe");
            })
            .await,
        );

        let target = Duration::from_micros(10);
        println!(
            "target median ≤ {:.0} µs: hostile describe is {:.2}x the target",
            target.as_secs_f64() * 1e6,
            describe.as_secs_f64() / target.as_secs_f64()
        );
    });
}
