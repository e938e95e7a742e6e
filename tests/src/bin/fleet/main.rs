//! `fleet`: many agents long-polling one host.
//!
//! Starts a release `certplane serve` (plain HTTP or TLS; SQLite, or a
//! fresh PostgreSQL database with `--postgres`), registers `--agents`
//! agents through the API with the bootstrap token, then runs each as
//! `certplane-agent` does (its `HostApi`: one kept HTTP/2 connection, a
//! work long poll parked on the host, a heartbeat every interval with
//! jitter) for `--secs`, and reports registration time and refusals,
//! heartbeat latency, long-poll returns, errors by kind, connections, the
//! host's memory, CPU and open files, and this process's CPU. Exits
//! non-zero when any request failed or a target is missed (heartbeat p99,
//! host peak RSS); a watchdog kills the host and exits when the whole run
//! outlasts its bound.
//!
//! ```sh
//! cargo build --release -p certplane --bin certplane -p certplane-e2e --bin fleet
//! flock /tmp/cp/bench.lock target/release/fleet --agents 10000 --secs 180 [--tls] [--postgres URL]
//! ```

mod agents;
mod host;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;

use agents::{Errors, Schedule};
use host::{Host, HostOptions, Usage};

#[derive(Debug, Parser)]
#[command(about = "Many simulated agents long-polling one certplane host")]
struct Args {
    /// Agents to register and run.
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// How long the agents run after registering, in seconds.
    #[arg(long, default_value_t = 180)]
    secs: u64,
    /// Serve TLS (the host's development certificate, trusted by CA file).
    #[arg(long)]
    tls: bool,
    /// PostgreSQL admin URL: the host gets a fresh database, dropped after
    /// the run (default: SQLite in a temporary directory).
    #[arg(long)]
    postgres: Option<String>,
    /// The `certplane` binary.
    #[arg(long, default_value = "target/release/certplane")]
    certplane: PathBuf,
    /// Seconds between an agent's heartbeats (the agent's default).
    #[arg(long, default_value_t = 30)]
    heartbeat_secs: u64,
    /// Heartbeat jitter, a fraction of the interval either way.
    #[arg(long, default_value_t = 0.1)]
    jitter: f64,
    /// Longest a work poll waits on the host (the agent's default).
    #[arg(long, default_value_t = 30)]
    poll_wait_secs: u64,
    /// Registrations in flight at once.
    #[arg(long, default_value_t = 64)]
    register_concurrency: usize,
    /// `[agents] registration_per_address_per_second` of the host: all
    /// simulated agents come from 127.0.0.1, each standing for a machine,
    /// so the address gets a token's default allowance.
    #[arg(long, default_value_t = 500)]
    per_address_per_second: u32,
    /// `[agents] registration_per_address_burst` of the host.
    #[arg(long, default_value_t = 5000)]
    per_address_burst: u32,
    /// Target: heartbeat p99 at most this many milliseconds.
    #[arg(long, default_value_t = 50.0)]
    max_p99_ms: f64,
    /// Target: host peak RSS at most this many MiB.
    #[arg(long, default_value_t = 512)]
    max_rss_mib: u64,
}

impl Args {
    /// The whole run's bound: host start, registration at the configured
    /// limits, the run, the last polls and heartbeats, shutdown.
    fn bound(&self) -> Duration {
        let register = 60 + self.agents as u64 / u64::from(self.per_address_per_second.max(1));
        Duration::from_secs(120 + register + self.secs + self.heartbeat_secs + 60)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let bound = args.bound();
    std::thread::spawn(move || {
        std::thread::sleep(bound);
        eprintln!("fleet: the run outlasted its bound of {bound:?}; killing the host");
        let pid = host::HOST_PID.load(Ordering::SeqCst);
        if pid != 0 {
            // SAFETY: kill(2) on our child's pid, not reaped while the
            // run is still going.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        std::process::exit(3);
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleet: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("fleet: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the fleet; `Ok(false)` when an error occurred or a target was
/// missed.
async fn run(args: Args) -> anyhow::Result<bool> {
    let host = Host::start(&HostOptions {
        binary: args.certplane.clone(),
        tls: args.tls,
        postgres: args.postgres.clone(),
        per_address: (args.per_address_per_second, args.per_address_burst),
    })
    .await?;
    println!(
        "host: pid {} at {} ({}, {}); registration per address {}/s burst {}, per token defaults",
        host.pid,
        host.base_url,
        if args.tls { "TLS" } else { "plain HTTP" },
        if args.postgres.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        args.per_address_per_second,
        args.per_address_burst,
    );
    let result = drive(&args, &host).await;
    if !matches!(result, Ok(true)) {
        let tail = host.stderr_tail(20);
        if !tail.is_empty() {
            println!("host log (last lines):\n{tail}");
        }
    }
    host.stop().await?;
    result
}

async fn drive(args: &Args, host: &Host) -> anyhow::Result<bool> {
    let errors = Arc::new(Errors::default());
    let cpu_before = Usage::of("self")?.cpu;
    let host_before = host.usage()?;
    let registration = agents::register(
        &host.base_url,
        host.trust.clone(),
        args.agents,
        args.register_concurrency,
        errors.clone(),
    )
    .await;
    println!(
        "registration: {} of {} agents in {:.1} s ({:.0}/s), {} refusals (429, retried after 1 s)",
        registration.credentials.len(),
        args.agents,
        registration.elapsed.as_secs_f64(),
        registration.credentials.len() as f64 / registration.elapsed.as_secs_f64().max(0.001),
        registration.refusals,
    );
    let after_registration = host.usage()?;
    let schedule = Schedule {
        until: tokio::time::Instant::now() + Duration::from_secs(args.secs),
        heartbeat: Duration::from_secs(args.heartbeat_secs),
        jitter: args.jitter,
        poll_wait: Duration::from_secs(args.poll_wait_secs),
    };
    // Sample the host while the fleet runs: peak open files, and RSS at
    // the end of the run (before the agents let go).
    let sampler = {
        let pid = host.pid.to_string();
        tokio::spawn(async move {
            let mut peak_fds = 0;
            let mut last = Usage::default();
            while tokio::time::Instant::now() < schedule.until {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Ok(u) = Usage::of(&pid) {
                    peak_fds = peak_fds.max(u.fds);
                    last = u;
                }
            }
            (peak_fds, last)
        })
    };
    let activity = agents::run(
        &host.base_url,
        host.trust.clone(),
        &registration.credentials,
        schedule,
        errors.clone(),
    )
    .await?;
    let (peak_fds, at_end) = sampler.await?;
    let host_after = host.usage()?;
    let cpu_after = Usage::of("self")?.cpu;

    let mut beats = activity
        .heartbeats_us
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    beats.sort_unstable();
    let pct = |p: f64| -> f64 {
        if beats.is_empty() {
            return f64::NAN;
        }
        let i = ((beats.len() as f64 * p).ceil() as usize).clamp(1, beats.len()) - 1;
        f64::from(beats[i]) / 1000.0
    };
    let (p50, p90, p99) = (pct(0.50), pct(0.90), pct(0.99));
    let max = beats.last().map_or(f64::NAN, |m| f64::from(*m) / 1000.0);
    let run_secs = args.secs as f64;
    println!(
        "heartbeats: {} ({:.0}/s), p50 {p50:.2} ms, p90 {p90:.2} ms, p99 {p99:.2} ms, max {max:.2} ms",
        beats.len(),
        beats.len() as f64 / run_secs,
    );
    println!(
        "long polls returned: {} ({:.0}/s), {} early (not parked)",
        activity.polls_returned.load(Ordering::Relaxed),
        activity.polls_returned.load(Ordering::Relaxed) as f64 / run_secs,
        activity.polls_early.load(Ordering::Relaxed),
    );
    println!(
        "connections opened by the agents: {} for {} agents; host open files: {} at start, {} at peak",
        activity.connections.load(Ordering::Relaxed),
        registration.credentials.len(),
        host_before.fds,
        peak_fds,
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "host memory: VmRSS {:.0} MiB before, {:.0} MiB after registration, {:.0} MiB at the end of the run; VmHWM {:.0} MiB",
        mib(host_before.rss_kib),
        mib(after_registration.rss_kib),
        mib(at_end.rss_kib.max(host_after.rss_kib)),
        mib(host_after.hwm_kib),
    );
    let host_cpu = host_after.cpu.saturating_sub(host_before.cpu);
    let own_cpu = cpu_after.saturating_sub(cpu_before);
    println!(
        "CPU: host {:.1} s ({:.0} % of one core over registration and run), load generator {:.1} s",
        host_cpu.as_secs_f64(),
        100.0 * host_cpu.as_secs_f64() / (registration.elapsed.as_secs_f64() + run_secs),
        own_cpu.as_secs_f64(),
    );
    let by_kind = errors.snapshot();
    println!("errors: {}", errors.total());
    for (kind, (count, example)) in &by_kind {
        println!("  {kind}: {count} (first: {example})");
    }

    let mut ok = true;
    let mut miss = |what: String| {
        println!("MISSED: {what}");
        ok = false;
    };
    if errors.total() > 0 {
        miss(format!("{} errors", errors.total()));
    }
    if registration.credentials.len() < args.agents {
        miss(format!(
            "only {} of {} agents registered",
            registration.credentials.len(),
            args.agents
        ));
    }
    // No heartbeat at all (NaN) misses the target too.
    if p99.is_nan() || p99 > args.max_p99_ms {
        miss(format!(
            "heartbeat p99 {p99:.2} ms > {} ms",
            args.max_p99_ms
        ));
    }
    if mib(host_after.hwm_kib) > args.max_rss_mib as f64 {
        miss(format!(
            "host peak RSS {:.0} MiB > {} MiB",
            mib(host_after.hwm_kib),
            args.max_rss_mib
        ));
    }
    if ok {
        println!(
            "targets met: 0 errors, heartbeat p99 ≤ {} ms, host RSS ≤ {} MiB",
            args.max_p99_ms, args.max_rss_mib
        );
    }
    Ok(ok)
}
