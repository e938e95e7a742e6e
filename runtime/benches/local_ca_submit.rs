//! What one local-ca `submit` costs (a fresh instance, settings, CSR check,
//! certificate built and signed), for each CA key type, against the native
//! floor measured in the same run: the host's own signature of a
//! TBSCertificate-sized message with the same CA key plus the check of the
//! CSR's signature, in a loop (`certplane_runtime::signing`, the code the
//! `signing` import runs).
//!
//! Run: `scripts/build-plugins && cargo bench -p certplane-runtime --bench local_ca_submit`
//! Env: `CERTPLANE_BENCH_LOCAL_CA=<manifest>` (default
//! `target/plugins/local-ca.toml`; point it at an older build to compare),
//! `CERTPLANE_BENCH_CALLS` (submits per key type, default 2000),
//! `CERTPLANE_BENCH_KEEP_RESIDENT=<bytes>` (the runtime's
//! `memory_keep_resident_bytes`, default 1 MiB), `CERTPLANE_BENCH_KEYS`
//! (CA key types, default `p256,p384,ed25519,rsa`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use certplane_runtime::issuer::{CertificateRequest, IssueResult};
use certplane_runtime::signing::{ParsedKey, verify};
use certplane_runtime::{InstanceConfig, PluginInstance, Runtime, RuntimeConfig};
use x509_parser::prelude::{FromDer, X509CertificationRequest};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn data(name: &str) -> String {
    let path = repo("plugins/local-ca/testdata").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Median, p90 and minimum of `samples`, printed under `label`.
fn summarize(label: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p) as usize];
    println!(
        "{label:<34} n={:<5} median={:>8.1} µs  p90={:>8.1} µs  min={:>8.1} µs",
        samples.len(),
        us(pct(0.5)),
        us(pct(0.9)),
        us(samples[0])
    );
    pct(0.5)
}

/// The native work of one issuance: the CA's signature over a message the
/// size of a leaf's TBSCertificate, and the CSR's proof of possession.
fn native_floor(key: &ParsedKey, csr_pem: &str, n: usize) -> Vec<Duration> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes()).expect("CSR PEM");
    let (_, csr) = X509CertificationRequest::from_der(&pem.contents).expect("CSR");
    let info = &csr.certification_request_info;
    let algorithm = csr.signature_algorithm.algorithm.to_id_string();
    let tbs = vec![0x5a; 420];
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let signature = key.sign(&tbs).expect("sign");
        let ok = verify(
            info.subject_pki.raw,
            &algorithm,
            info.raw,
            &csr.signature_value.data,
        )
        .expect("verify");
        samples.push(t.elapsed());
        assert!(ok && !signature.is_empty());
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
        let mut config = RuntimeConfig {
            cache_dir: Some(cache.path().to_path_buf()),
            ..RuntimeConfig::default()
        };
        if let Ok(bytes) = std::env::var("CERTPLANE_BENCH_KEEP_RESIDENT") {
            config.memory_keep_resident_bytes = bytes.parse().expect("memory bytes");
        }
        let runtime = Runtime::new(config).expect("runtime");
        let manifest = std::env::var("CERTPLANE_BENCH_LOCAL_CA")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo("target/plugins/local-ca.toml"));
        let plugin = runtime
            .load_plugin(&manifest)
            .await
            .expect("scripts/build-plugins first");
        let n: usize = std::env::var("CERTPLANE_BENCH_CALLS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000);
        println!(
            "local-ca {} ({} bytes), {n} submits per CA key type, P-256 CSR\n",
            manifest.display(),
            std::fs::metadata(&plugin.manifest().component_path)
                .map(|m| m.len())
                .unwrap_or(0)
        );
        let csr = data("csr-p256.pem");
        let request = CertificateRequest {
            csr_pem: csr.clone(),
            common_name: "www.example.com".into(),
            dns_names: vec!["www.example.com".into(), "api.example.com".into()],
            ip_addresses: vec![],
            validity_days: Some(30),
            certificate_id: "bench".into(),
        };
        let mut rows = Vec::new();
        let kinds = std::env::var("CERTPLANE_BENCH_KEYS")
            .unwrap_or_else(|_| "p256,p384,ed25519,rsa".into());
        for kind in kinds.split(',') {
            let key_pem = data(&format!("ca-{kind}.key"));
            let instance = PluginInstance::new(
                plugin.clone(),
                InstanceConfig::new("issuer/bench")
                    .with_settings(serde_json::json!({
                        "ca_certificate_pem": data(&format!("ca-{kind}.pem")),
                    }))
                    .expect("settings")
                    .with_secret("ca_private_key_pem", key_pem.clone()),
            )
            .expect("instance");
            let submit = || async {
                match instance.submit(&request).await.expect("submit") {
                    IssueResult::Issued(_) => {}
                    IssueResult::Pending(_) => panic!("local-ca answered pending"),
                }
            };
            let calls = if kind == "rsa" { n / 4 } else { n }.max(10);
            for _ in 0..calls / 10 {
                submit().await;
            }
            let mut samples = Vec::with_capacity(calls);
            for _ in 0..calls {
                let t = Instant::now();
                submit().await;
                samples.push(t.elapsed());
            }
            let submit_p50 = summarize(&format!("{kind}: local-ca submit"), samples);
            let key = ParsedKey::from_pem(&key_pem).expect("CA key");
            let floor_p50 = summarize(
                &format!("{kind}: native sign + CSR verify"),
                native_floor(&key, &csr, calls),
            );
            rows.push((kind, submit_p50, floor_p50));
        }
        println!();
        for (kind, submit, floor) in rows {
            println!(
                "{kind:<8} submit median {:>8.1} µs, native floor {:>7.1} µs, {:>6.1}x",
                us(submit),
                us(floor),
                us(submit) / us(floor)
            );
        }
    });
}
