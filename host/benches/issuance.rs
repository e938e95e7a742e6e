//! Issuance throughput benchmark (not a test): certificates created through
//! the HTTP API until every one is issued and deployed, on SQLite and
//! PostgreSQL. Run (release):
//!
//! ```text
//! cargo bench -p certplane-host --bench issuance -- [--certs 10000]
//!     [--backend sqlite|postgres|both] [--concurrency 16] [--floor-calls 2000]
//!     [--plugin-dir DIR] [--stall-secs 180] [--deploy-dir DIR] [--no-storm]
//!     [--db-connections N] [--max-jobs N] [--instance-concurrency N]
//!     [--create-batch N]
//! ```
//!
//! After the mass issuance, unless `--no-storm`, every certificate is
//! renewed at once (`POST /certificates/renew` with the issuer): timed until
//! the last renewed version is deployed, each certificate checked to have
//! exactly one renewal and one more deployment. The database transactions
//! per certificate come from the host's own counters
//! (`certplane_store_transactions_total` in `/metrics`); the native floor is
//! ECDSA P-256 signing with ring on one core in the same process.
//!
//! Scenario: an in-process host (the real `serve` start-up as
//! `demo::stack::LocalHost` does it: HTTPS with the development certificate
//! on a loopback port, scheduler loops, a 2-worker runtime) in host key mode with a
//! `local-ca` issuer and one `pem-files` target run by the host itself (the
//! built-in `host` agent) writing into a temporary directory granted to it.
//! `--certs` certificates are created with `POST /certificates` (or, with
//! `--create-batch N`, N at a time with `POST /certificates/batch`),
//! `--concurrency` requests in flight, and the run is timed from the first
//! request until the last deployment job finished (its own `finished_at`);
//! the API is polled cheaply (`GET /jobs?job_type=…&status=…&per_page=1`, its `total`) to
//! see when that happened. Afterwards every job is read back through the
//! API for per-stage latencies, and every certificate must have a version.
//!
//! Also printed: process CPU seconds (getrusage) over the timed window and
//! the share of the bench's own client thread, RSS, and a floor measured in
//! the same process before any host runs: the local-ca `submit` export
//! called in a loop through `certplane_runtime` (one instance, one CSR), so
//! `certs/s ÷ floor` says how much of the connector's own speed the
//! pipeline delivers.
//!
//! PostgreSQL: `CERTPLANE_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); a fresh
//! `certplane_bench_<uuid>` database is created and dropped afterwards.
//! Plugins: `--plugin-dir`, else `CERTPLANE_PLUGIN_DIR`, else
//! `target/plugins` of this workspace (`scripts/build-plugins`).
//!
//! The host's tracing stays silent unless `CERTPLANE_BENCH_LOG` holds a
//! filter (`RUST_LOG` syntax, e.g. `info,sqlx=warn`: sqlx warns of every
//! statement slower than a second), written to stderr; the bench prints its
//! own progress every few seconds and reads failures from the API.
//!
//! Only public, long-lived interfaces are used (the HTTP API, through a
//! small hyper + tokio-rustls client with kept-alive connections; `HostConfig`, `serve::{prepare_data_dir,
//! open_store, run_until}`, `tls::ensure_dev_certificate`,
//! `api::auth::new_api_key` and `Store::create_api_key` to start the host;
//! `certplane_runtime` and `certplane_pki` for the floor), so the same file
//! measures the code before and after internal refactors (it does not use
//! `demo::stack::LocalHost` itself, which moves with the demo).

/// The `certplane` binary's allocator, so the host measured here allocates
/// as the one operators run.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::cell::Cell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use certplane_host::config::HostConfig;
use certplane_host::store::{ApiScope, NewApiKey};
use certplane_pki::keygen::{KeyType, generate_key_and_csr};
use certplane_runtime::issuer::{CertificateRequest, IssueResult};
use certplane_runtime::{InstanceConfig, PluginInstance, Runtime, RuntimeConfig};
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// How often progress lines are printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How often completion is polled. The times reported come from the jobs'
/// own timestamps, so polling sooner would not sharpen them; it would only
/// load the host: at 30,000 jobs one filtered `GET /jobs` count costs the
/// host about 80 ms of a reader connection (a scan and a sort), and polling
/// every 200 ms took 10 of the 35 s of a 10,000 storm's database time.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// Largest API page.
const PAGE: usize = 500;

#[derive(Debug, Clone)]
struct Args {
    certs: usize,
    backends: Vec<&'static str>,
    concurrency: usize,
    floor_calls: usize,
    plugin_dir: PathBuf,
    cache_dir: PathBuf,
    stall: Duration,
    /// After the mass issuance, renew every certificate at once.
    storm: bool,
    /// Where the pem-files target writes (default: the run's temporary
    /// directory); e.g. a tmpfs to leave the disk's inode allocation out.
    deploy_root: Option<PathBuf>,
    /// The host's `database.max_connections` (default: the host's default).
    db_connections: Option<u32>,
    /// The host's `jobs.max_concurrent` (default: the host's default).
    max_jobs: Option<usize>,
    /// `limits.concurrency` granted to the issuer and the target (default:
    /// the host's `limits.default_concurrency`).
    instance_concurrency: Option<u32>,
    /// Certificates per `POST /certificates/batch`; 0: one
    /// `POST /certificates` each.
    create_batch: usize,
}

fn target_dir() -> PathBuf {
    // <target>/release/deps/issuance-<hash>
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The command line; a malformed value is an error naming the flag.
const USAGE: &str = "\
usage: cargo bench -p certplane-host --bench issuance -- [--certs 10000]
    [--backend sqlite|postgres|both] [--concurrency 16] [--floor-calls 2000]
    [--plugin-dir DIR] [--stall-secs 180] [--deploy-dir DIR] [--no-storm]
    [--db-connections N] [--max-jobs N] [--instance-concurrency N]
    [--create-batch N]  (certificates per POST /certificates/batch; 0: one
                         POST /certificates each, the default)
";

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        certs: 10_000,
        backends: vec!["sqlite", "postgres"],
        concurrency: 16,
        floor_calls: 2000,
        plugin_dir: std::env::var_os("CERTPLANE_PLUGIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins")),
        cache_dir: target_dir().join("bench-plugin-cache"),
        stall: Duration::from_secs(180),
        storm: true,
        deploy_root: None,
        db_connections: None,
        max_jobs: None,
        instance_concurrency: None,
        create_batch: 0,
    };
    fn number<T: std::str::FromStr>(flag: &str, value: &str) -> anyhow::Result<T> {
        value
            .parse()
            .map_err(|_| anyhow::anyhow!("{flag} takes a number, not {value:?}"))
    }
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < raw.len() {
        let value = raw.get(i + 1).cloned().unwrap_or_default();
        let mut takes_value = true;
        match raw[i].as_str() {
            "--certs" => args.certs = number("--certs", &value)?,
            "--backend" => {
                args.backends = match value.as_str() {
                    "sqlite" => vec!["sqlite"],
                    "postgres" => vec!["postgres"],
                    "both" => vec!["sqlite", "postgres"],
                    other => bail!("--backend sqlite|postgres|both, not {other:?}"),
                }
            }
            "--concurrency" => args.concurrency = number("--concurrency", &value)?,
            "--floor-calls" => args.floor_calls = number("--floor-calls", &value)?,
            "--plugin-dir" => args.plugin_dir = PathBuf::from(value),
            "--deploy-dir" => args.deploy_root = Some(PathBuf::from(value)),
            "--db-connections" => args.db_connections = Some(number("--db-connections", &value)?),
            "--max-jobs" => args.max_jobs = Some(number("--max-jobs", &value)?),
            "--instance-concurrency" => {
                args.instance_concurrency = Some(number("--instance-concurrency", &value)?)
            }
            "--create-batch" => args.create_batch = number("--create-batch", &value)?,
            "--stall-secs" => args.stall = Duration::from_secs(number("--stall-secs", &value)?),
            "--no-storm" => {
                args.storm = false;
                takes_value = false;
            }
            // Passed by `cargo bench`.
            "--bench" => takes_value = false,
            "--help" | "-h" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
        i += if takes_value { 2 } else { 1 };
    }
    if args.certs == 0 || args.concurrency == 0 {
        bail!("--certs and --concurrency must be at least 1");
    }
    if args.create_batch > 1000 {
        bail!("--create-batch takes at most 1000 (the API's limit)");
    }
    Ok(args)
}

fn pg_admin_url() -> String {
    std::env::var("CERTPLANE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A throwaway CA: (certificate PEM, PKCS#8 key PEM).
fn bench_ca() -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "certplane bench CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

// ---------------------------------------------------------------- process stats

#[repr(C)]
#[derive(Default)]
struct Timeval {
    tv_sec: i64,
    tv_usec: i64,
}

#[repr(C)]
#[derive(Default)]
struct Rusage {
    ru_utime: Timeval,
    ru_stime: Timeval,
    /// ru_maxrss (KiB) first, then the other 13 longs.
    rest: [i64; 14],
}

unsafe extern "C" {
    fn getrusage(who: i32, usage: *mut Rusage) -> i32;
    fn sysconf(name: i32) -> i64;
}

/// (user + system CPU seconds, peak RSS in MiB since the start) of the whole
/// process.
fn process_usage() -> (f64, f64) {
    let mut u = Rusage::default();
    // SAFETY: RUSAGE_SELF (0) fills the struct, whose layout is Linux's on
    // 64-bit targets (two timevals and fourteen longs).
    let rc = unsafe { getrusage(0, &mut u) };
    if rc != 0 {
        return (f64::NAN, f64::NAN);
    }
    let secs = |t: &Timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        secs(&u.ru_utime) + secs(&u.ru_stime),
        u.rest[0] as f64 / 1024.0,
    )
}

/// CPU seconds of this (the bench's client) thread, from /proc.
fn this_thread_cpu() -> f64 {
    // SAFETY: plain libc call; _SC_CLK_TCK is 2 on Linux.
    let ticks = unsafe { sysconf(2) }.max(1) as f64;
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return f64::NAN;
    };
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return f64::NAN;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    match (field(14), field(15)) {
        (Some(u), Some(s)) => (u + s) / ticks,
        _ => f64::NAN,
    }
}

/// The 1-minute load average (other work on the machine skews a run).
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A `/proc/self/status` size in MiB (`VmRSS:` now, `VmHWM:` peak).
fn proc_status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS, so each
/// backend's peak is its own (not the floor's or the previous backend's).
/// Returns false when the kernel refused (then the peak is the process's).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", b"5").is_ok()
}

// ---------------------------------------------------------------- statistics

#[derive(Debug, Clone, Copy, Default)]
struct Dist {
    n: usize,
    p50: f64,
    p95: f64,
    max: f64,
}

fn dist(mut v: Vec<f64>) -> Dist {
    if v.is_empty() {
        return Dist::default();
    }
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    Dist {
        n: v.len(),
        p50: at(0.50),
        p95: at(0.95),
        max: v[v.len() - 1],
    }
}

fn ms(d: &Dist) -> String {
    format!(
        "median {:>8.1} ms  p95 {:>8.1} ms  max {:>8.1} ms  (n={})",
        d.p50, d.p95, d.max, d.n
    )
}

fn millis(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e3
}

fn time(v: &Value, field: &str) -> Option<DateTime<Utc>> {
    v[field]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

// ---------------------------------------------------------------- floor

#[derive(Debug, Clone, Copy)]
struct Floor {
    /// One task calling `submit` in a loop.
    sequential: f64,
    /// 16 tasks on a 2-worker runtime (the host's shape).
    parallel: f64,
    /// µs per ecdsa-p256 key + CSR (host key mode's extra work per cert).
    keygen_us: f64,
    /// Native ECDSA P-256 signatures per second on one core (ring), the
    /// cryptographic floor of a CA that signs each certificate once.
    native_signs: f64,
}

async fn local_ca_instance(
    args: &Args,
    runtime: &Runtime,
) -> anyhow::Result<(PluginInstance, CertificateRequest)> {
    let plugin = runtime
        .load_plugin(&args.plugin_dir.join("local-ca.toml"))
        .await
        .context("loading local-ca (scripts/build-plugins first?)")?;
    let (ca_cert, ca_key) = bench_ca()?;
    let instance = PluginInstance::new(
        plugin,
        InstanceConfig::new("bench-floor")
            .with_settings(json!({ "ca_certificate_pem": ca_cert, "validity_days": 90 }))?
            .with_secret("ca_private_key_pem", ca_key),
    )?;
    let cn = "floor.bench.certplane.test".to_owned();
    let key = generate_key_and_csr(KeyType::EcdsaP256, &cn, std::slice::from_ref(&cn), &[])?;
    let request = CertificateRequest {
        csr_pem: key.csr_pem.clone(),
        common_name: cn.clone(),
        dns_names: vec![cn],
        ip_addresses: vec![],
        validity_days: None,
        certificate_id: "bench-floor".into(),
    };
    Ok((instance, request))
}

async fn submit_ok(instance: &PluginInstance, request: &CertificateRequest) -> anyhow::Result<()> {
    match instance.submit(request).await? {
        IssueResult::Pending(_) => bail!("local-ca answered pending"),
        _ => Ok(()),
    }
}

fn measure_floor(args: &Args) -> anyhow::Result<Floor> {
    let n = args.floor_calls.max(16);
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(args.cache_dir.clone()),
        ..RuntimeConfig::default()
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (instance, request) = rt.block_on(local_ca_instance(args, &runtime))?;
    let instance = Arc::new(instance);
    let request = Arc::new(request);
    let sequential = rt.block_on(async {
        for _ in 0..n / 10 {
            submit_ok(&instance, &request).await?;
        }
        let started = Instant::now();
        let mut last = Instant::now();
        for i in 0..n {
            submit_ok(&instance, &request).await?;
            if last.elapsed() > PROGRESS_EVERY {
                println!("  floor (sequential): {i}/{n} calls");
                last = Instant::now();
            }
        }
        anyhow::Ok(n as f64 / started.elapsed().as_secs_f64())
    })?;
    drop(rt);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let parallel = rt.block_on(async {
        let tasks = 16;
        let started = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let (instance, request) = (instance.clone(), request.clone());
                tokio::spawn(async move {
                    for _ in 0..n / tasks {
                        submit_ok(&instance, &request).await?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for h in handles {
            h.await??;
        }
        anyhow::Ok((n / tasks * tasks) as f64 / started.elapsed().as_secs_f64())
    })?;
    drop(rt);

    let k = 500;
    let started = Instant::now();
    for i in 0..k {
        let cn = format!("k{i}.bench.certplane.test");
        generate_key_and_csr(KeyType::EcdsaP256, &cn, std::slice::from_ref(&cn), &[])?;
    }
    let keygen_us = started.elapsed().as_secs_f64() * 1e6 / k as f64;
    Ok(Floor {
        sequential,
        parallel,
        keygen_us,
        native_signs: native_signing_floor()?,
    })
}

/// ECDSA P-256 signatures per second, natively, one thread: signing a
/// TBSCertificate-sized message with a parsed key in a loop.
fn native_signing_floor() -> anyhow::Result<f64> {
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| anyhow::anyhow!("generating a P-256 key"))?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|e| anyhow::anyhow!("parsing the P-256 key: {e}"))?;
    let message = vec![0x5a_u8; 600];
    let n = 20_000;
    for _ in 0..n / 10 {
        key.sign(&rng, &message)
            .map_err(|_| anyhow::anyhow!("signing"))?;
    }
    let started = Instant::now();
    for _ in 0..n {
        key.sign(&rng, &message)
            .map_err(|_| anyhow::anyhow!("signing"))?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------- one backend

#[derive(Debug, Clone)]
struct Outcome {
    backend: &'static str,
    certs: usize,
    /// First request → last deployment's `finished_at`.
    elapsed_s: f64,
    /// First request → completion seen by the poller.
    wall_s: f64,
    /// First request → last create answered.
    create_s: f64,
    cert_to_job: Dist,
    issue_queue: Dist,
    issue_run: Dist,
    deploy_after_issue: Dist,
    deploy_queue: Dist,
    deploy_run: Dist,
    cert_to_deployed: Dist,
    extra_attempts: u64,
    cpu_s: f64,
    client_cpu_s: f64,
    rss_mib: f64,
    peak_rss_mib: f64,
    /// 1-minute load average before and after the timed run.
    load: (f64, f64),
    /// The host's database transactions per certificate over the run
    /// (reads, writes), from its own counters.
    transactions_per_cert: (f64, f64),
    /// Writes (outcomes; on SQLite also creates and claims) per group commit
    /// over the run.
    writes_per_group: Option<f64>,
    storm: Option<Storm>,
}

/// Every certificate renewed at once (`POST /certificates/renew`).
#[derive(Debug, Clone)]
struct Storm {
    certs: usize,
    /// Request → last renewal's deployment finished.
    elapsed_s: f64,
    /// Request → renewal job created (detection), per certificate.
    detect: Dist,
    /// Request → renewed certificate deployed, per certificate.
    deployed: Dist,
    /// Request → first renewed certificate deployed.
    first_deployed_s: f64,
    /// Request → last renewal issued.
    last_issued_s: f64,
    cpu_s: f64,
    transactions_per_cert: (f64, f64),
    writes_per_group: Option<f64>,
}

impl Outcome {
    fn certs_per_s(&self) -> f64 {
        self.certs as f64 / self.elapsed_s
    }
}

struct PgDatabase {
    name: String,
    url: String,
}

async fn create_pg_database() -> anyhow::Result<PgDatabase> {
    use sqlx::{Connection as _, Executor as _};
    let admin = pg_admin_url();
    let name = format!("certplane_bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn =
        tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect(&admin))
            .await
            .with_context(|| format!("PostgreSQL at {admin} did not answer within 10 s"))?
            .with_context(|| {
                format!("PostgreSQL unreachable at {admin} (set CERTPLANE_TEST_PG_URL)")
            })?;
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .with_context(|| format!("creating {name}"))?;
    let _ = conn.close().await;
    let mut url = url::Url::parse(&admin)?;
    url.set_path(&format!("/{name}"));
    Ok(PgDatabase {
        name,
        url: url.to_string(),
    })
}

async fn drop_pg_database(name: &str) {
    use sqlx::{Connection as _, Executor as _};
    match sqlx::PgConnection::connect(&pg_admin_url()).await {
        Ok(mut conn) => {
            if let Err(e) = conn
                .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                .await
            {
                eprintln!("warning: could not drop {name}: {e}");
            }
            let _ = conn.close().await;
        }
        Err(e) => eprintln!("warning: could not drop {name}: {e}"),
    }
}

// ---------------------------------------------------------------- API client

/// A minimal client of the host's `/api/v1` over HTTPS (HTTP/1.1, one
/// kept-alive connection per user), trusting the development certificate.
/// Written with hyper and tokio-rustls because those are what the host
/// crate depends on before and after the refactor (`certplane-client` is
/// not a dependency of every version).
#[derive(Clone)]
struct Api {
    addr: std::net::SocketAddr,
    tls: tokio_rustls::TlsConnector,
    key: String,
}

/// One connection of an [`Api`] user, opened on first use and again after
/// the server closed it.
#[derive(Default)]
struct Conn(Option<SendRequest<Full<Bytes>>>);

impl Api {
    fn new(addr: std::net::SocketAddr, ca_file: &Path, key: String) -> anyhow::Result<Api> {
        let pem =
            std::fs::read(ca_file).with_context(|| format!("reading {}", ca_file.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Api {
            addr,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            key,
        })
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
        let tls = self.tls.connect(name, tcp).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// Sends one request; a non-2xx answer is an error with its body.
    async fn send(
        &self,
        conn: &mut Conn,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let (status, body) = self
            .exchange(
                conn,
                method.clone(),
                &format!("/api/v1{path_and_query}"),
                body,
            )
            .await?;
        if !status.is_success() {
            bail!(
                "{method} {path_and_query}: {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        if body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&body)
            .with_context(|| format!("{method} {path_and_query}: the answer is not JSON"))
    }

    /// Database transactions the host has run so far (reads, writes), from
    /// its `certplane_store_transactions_total` counters.
    /// and the group commits (transactions, writes in them).
    async fn store_transactions(&self, conn: &mut Conn) -> anyhow::Result<StoreCounters> {
        let (status, body) = self.exchange(conn, Method::GET, "/metrics", None).await?;
        if !status.is_success() {
            bail!("GET /metrics: {status}");
        }
        let text = String::from_utf8_lossy(&body);
        let value = |prefix: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|v| v.trim().parse().ok())
        };
        let counter = |kind: &str| -> anyhow::Result<u64> {
            let prefix = format!("certplane_store_transactions_total{{kind=\"{kind}\"}} ");
            value(&prefix).with_context(|| format!("no {prefix}in /metrics"))
        };
        Ok(StoreCounters {
            reads: counter("read")?,
            writes: counter("write")?,
            groups: value("certplane_store_group_commits_total ").unwrap_or(0),
            grouped: value("certplane_store_grouped_writes_total ").unwrap_or(0),
        })
    }

    /// One exchange on `conn`: the status and the body.
    async fn exchange(
        &self,
        conn: &mut Conn,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
        let mut sender = match conn.0.take() {
            Some(mut s) => match s.ready().await {
                Ok(()) => s,
                // Closed by the server since the last request: reconnect.
                Err(_) => self.connect().await.context("connecting to the API")?,
            },
            None => self.connect().await.context("connecting to the API")?,
        };
        let mut request = Request::builder()
            .method(method.clone())
            .uri(path_and_query)
            .header(header::HOST, self.addr.to_string())
            .header(header::ACCEPT, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {}", self.key))
            .header(header::USER_AGENT, "certplane-bench-issuance");
        let bytes = match body {
            Some(v) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let response = sender
            .send_request(request.body(Full::new(bytes))?)
            .await
            .with_context(|| format!("{method} {path_and_query}"))?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        conn.0 = Some(sender);
        Ok((status, body))
    }

    async fn get(
        &self,
        conn: &mut Conn,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<Value> {
        let mut target = path.to_owned();
        if !query.is_empty() {
            let mut ser = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in query {
                ser.append_pair(k, v);
            }
            target.push('?');
            target.push_str(&ser.finish());
        }
        self.send(conn, Method::GET, &target, None).await
    }

    async fn post(&self, conn: &mut Conn, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(conn, Method::POST, path, Some(&body)).await
    }
}

/// `total` of a one-item page of `GET /jobs` with these filters.
async fn count_jobs(
    api: &Api,
    conn: &mut Conn,
    job_type: Option<&str>,
    status: Option<&str>,
) -> anyhow::Result<u64> {
    let mut query = vec![("per_page", "1".to_owned())];
    if let Some(t) = job_type {
        query.push(("job_type", t.to_owned()));
    }
    if let Some(s) = status {
        query.push(("status", s.to_owned()));
    }
    api.get(conn, "/jobs", &query)
        .await?
        .get("total")
        .and_then(Value::as_u64)
        .context("GET /jobs: no total")
}

/// Every item of a paginated listing.
async fn fetch_all(
    api: &Api,
    conn: &mut Conn,
    path: &str,
    filters: &[(&str, &str)],
) -> anyhow::Result<Vec<Value>> {
    let mut all = Vec::new();
    for page in 1.. {
        let mut query: Vec<(&str, String)> =
            filters.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        query.push(("per_page", PAGE.to_string()));
        query.push(("page", page.to_string()));
        let reply = api.get(conn, path, &query).await?;
        let items = reply["items"].as_array().cloned().unwrap_or_default();
        let len = items.len();
        all.extend(items);
        if len < PAGE {
            break;
        }
    }
    Ok(all)
}

async fn run_backend(args: &Args, backend: &'static str) -> anyhow::Result<Outcome> {
    let root = tempfile::Builder::new()
        .prefix("certplane-bench-issuance-")
        .tempdir()?;
    let pg = match backend {
        "postgres" => Some(create_pg_database().await?),
        _ => None,
    };
    if let Some(pg) = &pg {
        println!("[{backend}] database {}", pg.name);
    }
    let outcome = with_database(
        args,
        backend,
        root.path(),
        pg.as_ref().map(|p| p.url.clone()),
    )
    .await;
    if let Some(pg) = &pg {
        drop_pg_database(&pg.name).await;
    }
    outcome
}

/// The host in this process: the real `serve` start-up (migrations,
/// development TLS certificate, plugins, scheduler, HTTPS listener) on its
/// own thread and 2-worker tokio runtime, as `demo::stack::LocalHost` runs
/// it, with an admin key minted into the store beforehand. Built here from
/// `certplane_host::{serve, tls, api::auth, store}` so that the bench does
/// not depend on where the demo's helper lives.
struct BenchHost {
    url: String,
    admin: Api,
    listen: std::net::SocketAddr,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl BenchHost {
    async fn start(config: HostConfig) -> anyhow::Result<BenchHost> {
        certplane_host::serve::prepare_data_dir(&config.data_dir)?;
        let dev = certplane_host::tls::ensure_dev_certificate(&config.data_dir, &[])?;
        let store = certplane_host::serve::open_store(&config).await?;
        let (admin_key, hash) = certplane_host::api::auth::new_api_key();
        store
            .create_api_key(NewApiKey {
                name: "bench-admin".into(),
                key_hash: hash,
                scopes: vec![ApiScope::Admin],
                expires_at: None,
            })
            .await?;
        store.close().await;
        // Hosts that mark the first admin key by this file do not print one.
        std::fs::write(
            config.data_dir.join("admin-key-issued"),
            b"issued by the issuance bench\n",
        )?;
        let url = format!("https://{}", config.listen);
        let admin = Api::new(config.listen, &dev.cert_path, admin_key)?;
        let listen = config.listen;
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name("certplane-host".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(certplane_host::serve::run_until(config, token))
                    .map_err(|e| format!("{e:#}"))
            })?;
        let mut host = BenchHost {
            url,
            admin,
            listen,
            shutdown,
            thread: Some(thread),
        };
        let started = Instant::now();
        while tokio::net::TcpStream::connect(host.listen).await.is_err() {
            if host
                .thread
                .as_ref()
                .is_some_and(std::thread::JoinHandle::is_finished)
            {
                let outcome = host.stop().await;
                bail!("the host stopped during start-up: {outcome:?}");
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!("the host did not listen on {} within 120 s", host.listen);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(host)
    }

    /// Stops the host gracefully and waits for its thread.
    async fn stop(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .context("waiting for the host thread")?
            .map_err(|_| anyhow::anyhow!("the host thread panicked"))?
            .map_err(|e| anyhow::anyhow!("the host failed: {e}"))
    }
}

impl Drop for BenchHost {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn with_database(
    args: &Args,
    backend: &'static str,
    root: &Path,
    database_url: Option<String>,
) -> anyhow::Result<Outcome> {
    let mut config = HostConfig {
        data_dir: root.join("host"),
        database_url,
        plugin_dir: args.plugin_dir.clone(),
        plugin_cache_dir: Some(args.cache_dir.clone()),
        listen: format!("127.0.0.1:{}", free_port()?).parse()?,
        ..HostConfig::default()
    };
    // Wake-ups drive the work; the loops' own intervals only catch up.
    config.scheduler.jobs_ms = 500;
    config.scheduler.renewal_ms = 500;
    config.scheduler.retry_ms = 500;
    config.scheduler.reaper_ms = 500;
    config.scheduler.order_poll_ms = 500;
    config.scheduler.notifications_ms = 500;
    // One operator key sends every request: lift its rate limit.
    config.api.rate_limit_per_second = 1_000_000;
    config.api.rate_limit_burst = 1_000_000;
    config.log.level = "warn".into();
    if let Some(n) = args.db_connections {
        config.database.max_connections = n;
    }
    if let Some(n) = args.max_jobs {
        config.jobs.max_concurrent = n;
    }

    let started = Instant::now();
    let mut host = BenchHost::start(config).await?;
    println!(
        "[{backend}] host up at {} in {:.1} s",
        host.url,
        started.elapsed().as_secs_f64()
    );
    let outcome = with_host(args, backend, root, &host).await;
    let stopping = Instant::now();
    host.stop().await?;
    println!(
        "[{backend}] host stopped in {:.1} s",
        stopping.elapsed().as_secs_f64()
    );
    outcome
}

async fn with_host(
    args: &Args,
    backend: &'static str,
    root: &Path,
    host: &BenchHost,
) -> anyhow::Result<Outcome> {
    let api = &host.admin;
    let mut conn = Conn::default();
    let n = args.certs;
    let (ca_cert, ca_key) = bench_ca()?;
    let limits = match args.instance_concurrency {
        Some(n) => json!({ "concurrency": n }),
        None => json!({}),
    };
    let issuer = api
        .post(
            &mut conn,
            "/issuers",
            json!({
                "name": "bench-local-ca",
                "plugin": "local-ca",
                // 90 days: with 30 the certificates would be due for renewal (default
                // 30 days before expiry) the moment they are issued.
                "settings": { "ca_certificate_pem": ca_cert, "validity_days": 90 },
                "secrets": { "ca_private_key_pem": ca_key },
                "grants": { "limits": limits },
            }),
        )
        .await?;
    let issuer_id = issuer["id"].as_str().context("issuer id")?.to_owned();
    let deploy_holder = match &args.deploy_root {
        Some(dir) => Some(
            tempfile::Builder::new()
                .prefix("certplane-bench-deployed-")
                .tempdir_in(dir)?,
        ),
        None => None,
    };
    let deploy_dir = match &deploy_holder {
        Some(d) => d.path().to_path_buf(),
        None => root.join("deployed"),
    };
    std::fs::create_dir_all(&deploy_dir)?;
    let target = api
        .post(
            &mut conn,
            "/targets",
            json!({
                "name": "bench-files",
                "plugin": "pem-files",
                "agent_id": "host",
                "settings": { "directory": "/certs" },
                "grants": {
                    "directories": [
                        { "path": deploy_dir, "guest_path": "/certs", "writable": true }
                    ],
                    "limits": limits,
                },
            }),
        )
        .await?;
    let target_id = target["id"].as_str().context("target id")?.to_owned();
    println!(
        "[{backend}] local-ca issuer {issuer_id}, pem-files target {target_id} on agent `host`; \
         creating {n} certificates, {} requests in flight, {}",
        args.concurrency,
        match args.create_batch {
            0 => "one POST /certificates each".to_owned(),
            b => format!("{b} per POST /certificates/batch"),
        }
    );

    let created = Cell::new(0usize);
    let create_done: Cell<Option<Duration>> = Cell::new(None);
    let failed_create: Cell<bool> = Cell::new(false);
    let tx0 = api.store_transactions(&mut conn).await?;
    let load0 = loadavg();
    let peak_reset = reset_peak_rss();
    let (cpu0, _) = process_usage();
    let client0 = this_thread_cpu();
    let t0_utc = Utc::now();
    let t0 = Instant::now();

    // `concurrency` users, each on its own kept-alive connection, take the
    // next certificate number until all are created.
    let next = Cell::new(0usize);
    let cert_body = |i: usize| {
        json!({
            "name": format!("bench-{i:05}"),
            "common_name": format!("c{i}.bench.certplane.test"),
            "sans": [format!("c{i}.bench.certplane.test")],
            "key_type": "ecdsa-p256",
            "key_source": "host",
            "issuer_id": issuer_id,
            "target_ids": [target_id],
            "renew_before_days": 30,
        })
    };
    let per_request = args.create_batch.max(1);
    let user = || async {
        let mut conn = Conn::default();
        loop {
            let first = next.get();
            if first >= n || failed_create.get() {
                return anyhow::Ok(());
            }
            let end = (first + per_request).min(n);
            next.set(end);
            let sent = if args.create_batch == 0 {
                api.post(&mut conn, "/certificates", cert_body(first)).await
            } else {
                let items: Vec<Value> = (first..end).map(cert_body).collect();
                api.post(
                    &mut conn,
                    "/certificates/batch",
                    json!({ "certificates": items }),
                )
                .await
            };
            if let Err(e) = sent {
                failed_create.set(true);
                return Err(e);
            }
            created.set(created.get() + (end - first));
        }
    };
    let creator = async {
        let results = futures::future::join_all((0..args.concurrency).map(|_| user())).await;
        create_done.set(Some(t0.elapsed()));
        results.into_iter().collect::<anyhow::Result<Vec<()>>>()
    };

    let mut poll_conn = Conn::default();
    let poller = async {
        let conn = &mut poll_conn;
        let mut last_print = Instant::now();
        let mut last_change = Instant::now();
        let mut last_deployed = 0;
        loop {
            tokio::time::sleep(POLL_EVERY).await;
            if failed_create.get() {
                bail!("certificate creation failed");
            }
            let deployed = count_jobs(api, conn, Some("deployment"), Some("completed")).await?;
            if deployed != last_deployed {
                last_deployed = deployed;
                last_change = Instant::now();
            }
            if deployed >= n as u64 && create_done.get().is_some() {
                return anyhow::Ok(t0.elapsed());
            }
            let stalled = last_change.elapsed() > args.stall;
            if last_print.elapsed() >= PROGRESS_EVERY || stalled {
                last_print = Instant::now();
                let issued = count_jobs(api, conn, Some("issuance"), Some("completed")).await?;
                let failed = count_jobs(api, conn, None, Some("failed")).await?;
                let elapsed = t0.elapsed().as_secs_f64();
                println!(
                    "[{backend}] {elapsed:>6.1} s  created {:>5}/{n}  issued {issued:>5}  \
                     deployed {deployed:>5}  failed(now) {failed}  ({:.0} deployed/s, load {:.1})",
                    created.get(),
                    deployed as f64 / elapsed,
                    loadavg(),
                );
            }
            if stalled {
                let mut by_status = Vec::new();
                for s in [
                    "pending",
                    "running",
                    "polling",
                    "awaiting_csr",
                    "failed",
                    "completed",
                    "cancelled",
                ] {
                    by_status.push(format!(
                        "{s}={}",
                        count_jobs(api, conn, None, Some(s)).await?
                    ));
                }
                bail!(
                    "no deployment completed for {:?}; jobs: {}",
                    args.stall,
                    by_status.join(" ")
                );
            }
        }
    };

    let (created_result, polled) = tokio::join!(creator, poller);
    created_result?;
    let wall = polled?;
    let (cpu1, maxrss_mib) = process_usage();
    let tx1 = api.store_transactions(&mut conn).await?;
    let client1 = this_thread_cpu();
    let rss_mib = proc_status_mib("VmRSS:");
    let peak_rss_mib = if peak_reset {
        proc_status_mib("VmHWM:")
    } else {
        maxrss_mib
    };
    let load1 = loadavg();
    let create_s = create_done.get().unwrap_or_default().as_secs_f64();
    println!(
        "[{backend}] all {n} deployed (seen after {:.2} s); reading the jobs back",
        wall.as_secs_f64()
    );

    // Everything through the API, after the clock stopped.
    let certs = fetch_all(api, &mut conn, "/certificates", &[]).await?;
    let issuances = fetch_all(api, &mut conn, "/jobs", &[("job_type", "issuance")]).await?;
    let deployments = fetch_all(api, &mut conn, "/jobs", &[("job_type", "deployment")]).await?;
    let without_version = certs
        .iter()
        .filter(|c| c["current_version_id"].as_str().is_none())
        .count();
    if certs.len() != n || without_version > 0 {
        bail!(
            "{} certificates, {without_version} without a version (expected {n}, all issued)",
            certs.len()
        );
    }
    let done = |j: &&Value| j["status"] == "completed";
    if issuances.iter().filter(done).count() != n || deployments.iter().filter(done).count() != n {
        bail!(
            "expected {n} completed issuance and deployment jobs, found {} and {} \
             (of {} deployment jobs)",
            issuances.iter().filter(done).count(),
            deployments.iter().filter(done).count(),
            deployments.len()
        );
    }
    let renewals = count_jobs(api, &mut conn, Some("renewal"), None).await?;
    if renewals > 0 {
        bail!("{renewals} renewal jobs: the new certificates are already due for renewal");
    }
    let extra_attempts: u64 = issuances
        .iter()
        .chain(&deployments)
        .map(|j| j["attempts"].as_u64().unwrap_or(1).saturating_sub(1))
        .sum();

    let cert_created: HashMap<&str, DateTime<Utc>> = certs
        .iter()
        .filter_map(|c| Some((c["id"].as_str()?, time(c, "created_at")?)))
        .collect();
    let issued_at: HashMap<&str, DateTime<Utc>> = issuances
        .iter()
        .filter_map(|j| Some((j["certificate_id"].as_str()?, time(j, "finished_at")?)))
        .collect();
    let span = |v: &Value, a: &str, b: &str| Some(millis(time(v, a)?, time(v, b)?));
    let cert_to_job = dist(
        issuances
            .iter()
            .filter_map(|j| {
                let created = cert_created.get(j["certificate_id"].as_str()?)?;
                Some(millis(*created, time(j, "created_at")?))
            })
            .collect(),
    );
    let issue_queue = dist(
        issuances
            .iter()
            .filter_map(|j| span(j, "created_at", "started_at"))
            .collect(),
    );
    let issue_run = dist(
        issuances
            .iter()
            .filter_map(|j| span(j, "started_at", "finished_at"))
            .collect(),
    );
    let deploy_queue = dist(
        deployments
            .iter()
            .filter_map(|j| span(j, "created_at", "started_at"))
            .collect(),
    );
    let deploy_run = dist(
        deployments
            .iter()
            .filter_map(|j| span(j, "started_at", "finished_at"))
            .collect(),
    );
    let deploy_after_issue = dist(
        deployments
            .iter()
            .filter_map(|j| {
                let issued = issued_at.get(j["certificate_id"].as_str()?)?;
                Some(millis(*issued, time(j, "finished_at")?))
            })
            .collect(),
    );
    let cert_to_deployed = dist(
        deployments
            .iter()
            .filter_map(|j| {
                let created = cert_created.get(j["certificate_id"].as_str()?)?;
                Some(millis(*created, time(j, "finished_at")?))
            })
            .collect(),
    );
    let last_finished = deployments
        .iter()
        .filter_map(|j| time(j, "finished_at"))
        .max()
        .context("no deployment finished_at")?;
    let elapsed_s = millis(t0_utc, last_finished) / 1e3;
    let storm = if args.storm {
        Some(renewal_storm(args, backend, api, &issuer_id, n).await?)
    } else {
        None
    };

    Ok(Outcome {
        backend,
        certs: n,
        elapsed_s,
        wall_s: wall.as_secs_f64(),
        create_s,
        cert_to_job,
        issue_queue,
        issue_run,
        deploy_after_issue,
        deploy_queue,
        deploy_run,
        cert_to_deployed,
        extra_attempts,
        cpu_s: cpu1 - cpu0,
        client_cpu_s: client1 - client0,
        rss_mib,
        peak_rss_mib,
        load: (load0, load1),
        transactions_per_cert: per_cert(tx0, tx1, n),
        writes_per_group: per_group(tx0, tx1),
        storm,
    })
}

/// The host's store counters at one moment (`/metrics`).
#[derive(Debug, Clone, Copy)]
struct StoreCounters {
    reads: u64,
    writes: u64,
    /// The group commits and the writes in them.
    groups: u64,
    grouped: u64,
}

/// (reads, writes) per certificate between two counter readings.
fn per_cert(before: StoreCounters, after: StoreCounters, n: usize) -> (f64, f64) {
    let n = n.max(1) as f64;
    (
        after.reads.saturating_sub(before.reads) as f64 / n,
        after.writes.saturating_sub(before.writes) as f64 / n,
    )
}

/// Writes per group commit between two counter readings (`None` without
/// group commits).
fn per_group(before: StoreCounters, after: StoreCounters) -> Option<f64> {
    let groups = after.groups.saturating_sub(before.groups);
    (groups > 0).then(|| after.grouped.saturating_sub(before.grouped) as f64 / groups as f64)
}

/// Every certificate of the issuer renewed at once: timed from the request
/// until the last renewed version is deployed; checks that each got exactly
/// one renewal and one more deployment.
async fn renewal_storm(
    args: &Args,
    backend: &'static str,
    api: &Api,
    issuer_id: &str,
    n: usize,
) -> anyhow::Result<Storm> {
    let mut conn = Conn::default();
    let tx0 = api.store_transactions(&mut conn).await?;
    let (cpu0, _) = process_usage();
    let t0_utc = Utc::now();
    let t0 = Instant::now();
    let answer = api
        .post(
            &mut conn,
            "/certificates/renew",
            json!({ "issuer_id": issuer_id }),
        )
        .await?;
    let renewing = answer["renewing"].as_u64().unwrap_or(0);
    println!(
        "[{backend}] storm: {renewing} certificates due now (answered in {:.0} ms)",
        t0.elapsed().as_secs_f64() * 1e3
    );
    if renewing != n as u64 {
        bail!("{renewing} certificates made due, expected {n}");
    }
    let mut last_print = Instant::now();
    let mut last_change = Instant::now();
    let mut last = 0;
    loop {
        tokio::time::sleep(POLL_EVERY).await;
        let deployed = count_jobs(api, &mut conn, Some("deployment"), Some("completed")).await?;
        if deployed != last {
            last = deployed;
            last_change = Instant::now();
        }
        if deployed >= 2 * n as u64 {
            break;
        }
        if last_print.elapsed() >= PROGRESS_EVERY {
            last_print = Instant::now();
            let renewed = count_jobs(api, &mut conn, Some("renewal"), Some("completed")).await?;
            println!(
                "[{backend}] storm {:>6.1} s  renewed {renewed:>5}/{n}  deployed {:>5}/{n}",
                t0.elapsed().as_secs_f64(),
                deployed.saturating_sub(n as u64)
            );
        }
        if last_change.elapsed() > args.stall {
            bail!("storm: no deployment completed for {:?}", args.stall);
        }
    }
    let (cpu1, _) = process_usage();
    let tx1 = api.store_transactions(&mut conn).await?;
    let renewals = fetch_all(api, &mut conn, "/jobs", &[("job_type", "renewal")]).await?;
    let deployments = fetch_all(api, &mut conn, "/jobs", &[("job_type", "deployment")]).await?;
    let done = |j: &&Value| j["status"] == "completed";
    if renewals.len() != n || renewals.iter().filter(done).count() != n {
        bail!(
            "storm: {} renewal jobs, {} completed (expected {n} and {n})",
            renewals.len(),
            renewals.iter().filter(done).count()
        );
    }
    let renewal_ids: std::collections::HashSet<&str> =
        renewals.iter().filter_map(|j| j["id"].as_str()).collect();
    let storm_deploys: Vec<&Value> = deployments
        .iter()
        .filter(|d| {
            d["parent_job_id"]
                .as_str()
                .is_some_and(|p| renewal_ids.contains(p))
        })
        .collect();
    if storm_deploys.len() != n
        || storm_deploys
            .iter()
            .filter(|d| d["status"] == "completed")
            .count()
            != n
    {
        bail!(
            "storm: {} deployments of renewed versions (expected {n}, all completed)",
            storm_deploys.len()
        );
    }
    let detect = dist(
        renewals
            .iter()
            .filter_map(|j| Some(millis(t0_utc, time(j, "created_at")?)))
            .collect(),
    );
    let finished: Vec<f64> = storm_deploys
        .iter()
        .filter_map(|j| Some(millis(t0_utc, time(j, "finished_at")?)))
        .collect();
    let first_deployed_s = finished.iter().copied().fold(f64::MAX, f64::min) / 1e3;
    let elapsed_s = finished.iter().copied().fold(0.0, f64::max) / 1e3;
    let last_issued_s = renewals
        .iter()
        .filter_map(|j| Some(millis(t0_utc, time(j, "finished_at")?)))
        .fold(0.0, f64::max)
        / 1e3;
    Ok(Storm {
        certs: n,
        elapsed_s,
        detect,
        deployed: dist(finished),
        first_deployed_s,
        last_issued_s,
        cpu_s: cpu1 - cpu0,
        transactions_per_cert: per_cert(tx0, tx1, n),
        writes_per_group: per_group(tx0, tx1),
    })
}

fn print_outcome(o: &Outcome, floor: Option<&Floor>) {
    println!();
    println!("== {} : {} certificates ==", o.backend, o.certs);
    println!(
        "  throughput        {:>8.1} certs/s  (first POST → last deployment finished: {:.2} s; \
         completion seen after {:.2} s)",
        o.certs_per_s(),
        o.elapsed_s,
        o.wall_s
    );
    println!(
        "  creation          {:>8.1} POST /certificates per s (all answered after {:.2} s)",
        o.certs as f64 / o.create_s,
        o.create_s
    );
    if let Some(f) = floor {
        println!(
            "  vs floor          {:.3} of local-ca submit in a loop ({:.1} calls/s); {:.3} of 16 tasks on 2 workers ({:.1} calls/s)",
            o.certs_per_s() / f.sequential,
            f.sequential,
            o.certs_per_s() / f.parallel,
            f.parallel
        );
        println!(
            "  vs native         {:.4} of native P-256 signing on one core ({:.0} signatures/s)",
            o.certs_per_s() / f.native_signs,
            f.native_signs
        );
    }
    println!(
        "  database          {:.1} reads + {:.1} writes (transactions) per certificate",
        o.transactions_per_cert.0, o.transactions_per_cert.1
    );
    if let Some(g) = o.writes_per_group {
        println!(
            "  group commit      {g:.1} writes (outcomes; on SQLite also creates, claims) per transaction"
        );
    }
    println!(
        "  cert created → issuance job created      {}",
        ms(&o.cert_to_job)
    );
    println!(
        "  issuance created → started (queue)       {}",
        ms(&o.issue_queue)
    );
    println!(
        "  issuance started → finished              {}",
        ms(&o.issue_run)
    );
    println!(
        "  issuance finished → deployment finished  {}",
        ms(&o.deploy_after_issue)
    );
    println!(
        "    deployment created → started           {}",
        ms(&o.deploy_queue)
    );
    println!(
        "    deployment started → finished          {}",
        ms(&o.deploy_run)
    );
    println!(
        "  cert created → deployed (end to end)     {}",
        ms(&o.cert_to_deployed)
    );
    println!(
        "  CPU               {:.2} s process ({:.2} of 2 cores over the run, {:.2} ms/cert), \
         of which {:.2} s the bench's client thread",
        o.cpu_s,
        o.cpu_s / o.elapsed_s,
        o.cpu_s * 1e3 / o.certs as f64,
        o.client_cpu_s
    );
    println!(
        "  memory            RSS {:.0} MiB at the end, peak {:.0} MiB during the run (process VmHWM)",
        o.rss_mib, o.peak_rss_mib
    );
    println!("  retries           {} extra attempts", o.extra_attempts);
    if let Some(st) = &o.storm {
        println!(
            "  storm             {} renewed and deployed in {:.2} s ({:.0} certs/s); first deployed after {:.2} s, \
             last issued after {:.2} s",
            st.certs,
            st.elapsed_s,
            st.certs as f64 / st.elapsed_s,
            st.first_deployed_s,
            st.last_issued_s
        );
        println!(
            "    request → renewal job created           {}",
            ms(&st.detect)
        );
        println!(
            "    request → renewed version deployed      {}",
            ms(&st.deployed)
        );
        println!(
            "    CPU {:.2} s ({:.2} ms/cert); {:.1} reads + {:.1} writes per certificate",
            st.cpu_s,
            st.cpu_s * 1e3 / st.certs as f64,
            st.transactions_per_cert.0,
            st.transactions_per_cert.1
        );
        if let Some(g) = st.writes_per_group {
            println!(
                "    group commit {g:.1} writes (outcomes; on SQLite also creates, claims) per transaction"
            );
        }
    }
    println!(
        "  machine           1-min load average {:.2} before, {:.2} after ({} cores)",
        o.load.0,
        o.load.1,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if let Ok(filter) = std::env::var("CERTPLANE_BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    for plugin in ["local-ca", "pem-files"] {
        let manifest = args.plugin_dir.join(format!("{plugin}.toml"));
        if !manifest.exists() {
            bail!(
                "{} not found: run scripts/build-plugins or pass --plugin-dir",
                manifest.display()
            );
        }
    }
    println!(
        "issuance bench: {} certificates, backends {:?}, {} in flight, plugins {}, cores {}",
        args.certs,
        args.backends,
        args.concurrency,
        args.plugin_dir.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    println!(
        "floor: local-ca submit through certplane_runtime, {} calls",
        args.floor_calls
    );
    let floor = match measure_floor(&args) {
        Ok(f) => {
            println!(
                "floor: {:.1} calls/s in a loop, {:.1} calls/s with 16 tasks on 2 workers; \
                 ecdsa-p256 key + CSR {:.0} µs; native P-256 signing {:.0}/s",
                f.sequential, f.parallel, f.keygen_us, f.native_signs
            );
            Some(f)
        }
        Err(e) => {
            eprintln!("floor failed: {e:#}");
            None
        }
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let mut outcomes = Vec::new();
    let mut failed = false;
    for backend in &args.backends {
        println!();
        println!("[{backend}] starting (load average {:.2})", loadavg());
        match rt.block_on(run_backend(&args, backend)) {
            Ok(o) => {
                print_outcome(&o, floor.as_ref());
                outcomes.push(o);
            }
            Err(e) => {
                eprintln!("[{backend}] FAILED: {e:#}");
                failed = true;
            }
        }
    }

    println!();
    println!(
        "| backend | certs | certs/s | ÷ connector floor | ÷ native signing | issuance queue p50/p95 ms | issuance run p50/p95 ms | issued → deployed p50/p95 ms | CPU s | peak RSS MiB | load | storm s |"
    );
    println!(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for o in &outcomes {
        println!(
            "| {} | {} | {:.1} | {} | {} | {:.0} / {:.0} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} | {:.0} | {:.1}–{:.1} | {} |",
            o.backend,
            o.certs,
            o.certs_per_s(),
            floor.map_or("-".into(), |f| format!(
                "{:.3}",
                o.certs_per_s() / f.sequential
            )),
            floor.map_or("-".into(), |f| format!(
                "{:.4}",
                o.certs_per_s() / f.native_signs
            )),
            o.issue_queue.p50,
            o.issue_queue.p95,
            o.issue_run.p50,
            o.issue_run.p95,
            o.deploy_after_issue.p50,
            o.deploy_after_issue.p95,
            o.cpu_s,
            o.peak_rss_mib,
            o.load.0,
            o.load.1,
            o.storm
                .as_ref()
                .map_or("-".into(), |st| format!("{:.2}", st.elapsed_s)),
        );
    }
    if let Some(f) = floor {
        println!(
            "floor: local-ca submit {:.1} calls/s (loop), {:.1} calls/s (16 tasks, 2 workers)",
            f.sequential, f.parallel
        );
    }
    if failed {
        bail!("a backend failed (see above)");
    }
    Ok(())
}
