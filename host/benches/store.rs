//! Store benchmark (not a test): claim throughput and the renewal sweep on
//! SQLite and PostgreSQL. Run (release):
//!
//! ```text
//! cargo bench -p certplane-host --bench store -- [--backend sqlite|postgres|both]
//!     [--jobs 100000] [--certs 1000000] [--window-secs 1] [--batch1-secs 10]
//! ```
//!
//! Claims: for each claimants ∈ {1, 4, 8} × batch ∈ {1, 100}, 100,000 pending
//! host jobs are added to ONE table that keeps every earlier round's rows (a
//! sustained run, not a fresh table) and claimed by N tasks on one store
//! (pool of N connections). Batch 100 drains everything; batch 1 runs for
//! `--batch1-secs`. Prints overall and median-per-window jobs/s and checks
//! that no job was claimed twice.
//!
//! Renewal: 1,000,000 active certificates, 10 % inside their renewal
//! window; times the first sweep (creates 100,000 jobs), the idle re-sweep,
//! and a sweep where every remaining certificate is due.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use certplane_host::store::{JobType, NewJob, NewPluginInstance, PoolRef, Store, StoreOptions};

#[derive(Debug, Clone)]
struct Args {
    backends: Vec<&'static str>,
    jobs: usize,
    certs: usize,
    window: Duration,
    batch1: Duration,
}

fn parse_args() -> Args {
    let mut args = Args {
        backends: vec!["sqlite", "postgres"],
        jobs: 100_000,
        certs: 1_000_000,
        window: Duration::from_secs(1),
        batch1: Duration::from_secs(10),
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < raw.len() {
        let value = raw.get(i + 1).cloned().unwrap_or_default();
        match raw[i].as_str() {
            "--backend" => {
                args.backends = match value.as_str() {
                    "sqlite" => vec!["sqlite"],
                    "postgres" => vec!["postgres"],
                    _ => vec!["sqlite", "postgres"],
                };
                i += 1;
            }
            "--jobs" => {
                args.jobs = value.parse().unwrap_or(args.jobs);
                i += 1;
            }
            "--certs" => {
                args.certs = value.parse().unwrap_or(args.certs);
                i += 1;
            }
            "--window-secs" => {
                args.window = Duration::from_secs_f64(value.parse().unwrap_or(1.0));
                i += 1;
            }
            "--batch1-secs" => {
                args.batch1 = Duration::from_secs_f64(value.parse().unwrap_or(10.0));
                i += 1;
            }
            _ => {} // e.g. --bench passed by cargo
        }
        i += 1;
    }
    args
}

fn pg_admin_url() -> String {
    std::env::var("CERTPLANE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh database; returns (url, cleanup).
async fn fresh_db(backend: &str, dir: &std::path::Path, tag: &str) -> (String, Option<String>) {
    match backend {
        "sqlite" => (
            format!("sqlite://{}/{tag}.db?mode=rwc", dir.display()),
            None,
        ),
        _ => {
            use sqlx::{Connection, Executor};
            let admin = pg_admin_url();
            let name = format!("certplane_bench_{tag}");
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("PostgreSQL reachable");
            conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                .await
                .expect("drop");
            conn.execute(format!("CREATE DATABASE {name}").as_str())
                .await
                .expect("create");
            let mut url = url::Url::parse(&admin).expect("url");
            url.set_path(&format!("/{name}"));
            (url.to_string(), Some(name))
        }
    }
}

async fn drop_db(name: Option<String>) {
    use sqlx::{Connection, Executor};
    if let Some(name) = name {
        let mut conn = sqlx::PgConnection::connect(&pg_admin_url())
            .await
            .expect("pg");
        let _ = conn
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await;
    }
}

async fn raw(store: &Store, sql: &str) {
    match store.pool() {
        PoolRef::Sqlite(p) => {
            sqlx::query(sql).execute(p).await.expect("sql");
        }
        PoolRef::Postgres(p) => {
            sqlx::query(sql).execute(p).await.expect("sql");
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn bench_claims(backend: &str, args: &Args, dir: &std::path::Path) {
    let (url, name) = fresh_db(backend, dir, "claims").await;
    let setup = Store::connect(&url).await.expect("connect");
    setup.migrate().await.expect("migrate");
    println!(
        "\n## {backend}: claims ({} pending jobs per round, sustained table)",
        args.jobs
    );
    println!(
        "{:<10} {:<6} {:>12} {:>14} {:>10}",
        "claimants", "batch", "jobs/s", "median jobs/s", "claimed"
    );
    for &batch in &[100u32, 1] {
        for &claimants in &[1usize, 4, 8] {
            let seed: Vec<NewJob> = (0..args.jobs)
                .map(|_| NewJob::new(JobType::Renewal))
                .collect();
            setup.create_jobs(&seed).await.expect("seed");
            if backend == "postgres" {
                raw(&setup, "ANALYZE jobs").await;
            }
            let store = Store::connect_with(
                &url,
                StoreOptions {
                    max_connections: claimants as u32,
                    ..StoreOptions::default()
                },
            )
            .await
            .expect("connect");
            let stop = Arc::new(AtomicBool::new(false));
            let deadline = if batch == 1 { Some(args.batch1) } else { None };
            let start = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..claimants {
                let store = store.clone();
                let stop = stop.clone();
                tasks.push(tokio::spawn(async move {
                    let mut ids = Vec::new();
                    let mut stamps = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let got = store.claim_pending_jobs(None, batch).await.expect("claim");
                        if got.is_empty() {
                            break;
                        }
                        stamps.push((Instant::now(), got.len()));
                        ids.extend(got.into_iter().map(|j| j.id));
                    }
                    (ids, stamps)
                }));
            }
            if let Some(d) = deadline {
                let stop = stop.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    stop.store(true, Ordering::Relaxed);
                });
            }
            let mut seen = HashSet::new();
            let mut windows: Vec<f64> = Vec::new();
            let mut all_stamps = Vec::new();
            for t in tasks {
                let (ids, stamps) = t.await.expect("task");
                for id in ids {
                    assert!(seen.insert(id), "double claim!");
                }
                all_stamps.extend(stamps);
            }
            let elapsed = start.elapsed();
            stop.store(true, Ordering::Relaxed);
            // Per-window rates (complete windows only).
            let n_windows = (elapsed.as_secs_f64() / args.window.as_secs_f64()).floor() as usize;
            if n_windows > 0 {
                let mut counts = vec![0usize; n_windows];
                for (t, n) in &all_stamps {
                    let w = (t.duration_since(start).as_secs_f64() / args.window.as_secs_f64())
                        as usize;
                    if w < n_windows {
                        counts[w] += n;
                    }
                }
                windows = counts
                    .into_iter()
                    .map(|c| c as f64 / args.window.as_secs_f64())
                    .collect();
            }
            let rate = seen.len() as f64 / elapsed.as_secs_f64();
            println!(
                "{:<10} {:<6} {:>12.0} {:>14.0} {:>10}",
                claimants,
                batch,
                rate,
                median(windows),
                seen.len()
            );
            store.close().await;
            // Leave no pending rows for the next round.
            raw(
                &setup,
                "UPDATE jobs SET status = 'completed' WHERE status = 'pending'",
            )
            .await;
        }
    }
    setup.close().await;
    drop_db(name).await;
}

async fn bench_renewal(backend: &str, args: &Args, dir: &std::path::Path) {
    let (url, name) = fresh_db(backend, dir, "renewal").await;
    let store = Store::connect(&url).await.expect("connect");
    store.migrate().await.expect("migrate");
    let issuer = store
        .create_issuer(NewPluginInstance::new("bench-ca", "local-ca", "1.0.0"))
        .await
        .expect("issuer");
    let n = args.certs;
    let due = n / 10;
    let t = Instant::now();
    // 10 % due (renew_at in the past), 90 % due in 60 days; all issued.
    match backend {
        "sqlite" => {
            raw(&store, &format!(
                "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n})
                 INSERT INTO certificates (id, name, common_name, sans, key_type, key_source, issuer_id,
                     renew_before_secs, status, current_version_id, not_after, renew_at, created_at, updated_at)
                 SELECT 'c' || i, 'cert-' || i, 'c' || i || '.test', '[]', 'ecdsa-p256', 'host', '{}',
                     2592000, 'active', 'v' || i, '2099-01-01T00:00:00.000000Z',
                     CASE WHEN i <= {due} THEN '2000-01-01T00:00:00.000000Z' ELSE '2098-01-01T00:00:00.000000Z' END,
                     '2000-01-01T00:00:00.000000Z', '2000-01-01T00:00:00.000000Z' FROM s",
                issuer.id
            )).await;
        }
        _ => {
            raw(&store, &format!(
                "INSERT INTO certificates (id, name, common_name, sans, key_type, key_source, issuer_id,
                     renew_before_secs, status, current_version_id, not_after, renew_at, created_at, updated_at)
                 SELECT 'c' || i, 'cert-' || i, 'c' || i || '.test', '[]', 'ecdsa-p256', 'host', '{}',
                     2592000, 'active', 'v' || i, now() + interval '90 days',
                     CASE WHEN i <= {due} THEN now() - interval '1 day' ELSE now() + interval '60 days' END,
                     now(), now() FROM generate_series(1, {n}) i",
                issuer.id
            )).await;
            raw(&store, "VACUUM ANALYZE certificates").await;
        }
    }
    println!(
        "\n## {backend}: renewal sweep over {n} certificates (seeded in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let created = store
        .enqueue_due_renewals(5, u32::MAX)
        .await
        .expect("sweep");
    println!(
        "first sweep ({} % due):      {:>8} jobs in {:>7.3} s",
        10,
        created,
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let again = store
        .enqueue_due_renewals(5, u32::MAX)
        .await
        .expect("sweep");
    println!(
        "idle re-sweep:               {:>8} jobs in {:>7.3} s",
        again,
        t.elapsed().as_secs_f64()
    );
    raw(&store, "UPDATE certificates SET renew_at = created_at").await;
    if backend == "postgres" {
        raw(&store, "VACUUM ANALYZE certificates").await;
    }
    let t = Instant::now();
    let rest = store
        .enqueue_due_renewals(5, u32::MAX)
        .await
        .expect("sweep");
    println!(
        "all due (rest of the 1M):    {:>8} jobs in {:>7.3} s",
        rest,
        t.elapsed().as_secs_f64()
    );
    store.close().await;
    drop_db(name).await;
}

fn main() {
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        println!("# certplane store benchmark: {args:?}");
        for backend in &args.backends {
            bench_claims(backend, &args, dir.path()).await;
        }
        for backend in &args.backends {
            bench_renewal(backend, &args, dir.path()).await;
        }
    });
}
