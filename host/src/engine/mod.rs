//! The engine: the work itself. Issuance, order polling, deployment,
//! verification, revocation, notification and expiry, and the scheduler
//! loops that drive them (job processor, async-CA order polling, the
//! set-based renewal sweep, retries of failed jobs and the lease reaper).
//! Each loop is woken at once by the API or by the loop that created its
//! work, and otherwise runs on its jittered interval.
//!
//! API boundary: the engine takes an [`Engine`] context (store, plugins,
//! secrets, wake-ups, metrics, configuration) and never the API's state;
//! nothing here imports axum or `crate::api`. Every job outcome is one
//! engine function that both the API (agent reports) and the host's own
//! loops call, and it commits through one store transaction
//! ([`crate::store::Outcome`]).

pub mod agent_health;
pub mod agent_reports;
pub mod challenges;
pub mod connectors;
pub mod deploy;
pub mod ending;
pub mod error;
pub mod events;
pub mod expiry;
pub mod issuance;
pub mod lifecycle;
pub mod notify;
pub mod plugin_exec;
pub mod renewals;
pub mod revoke;
pub mod runner;
pub mod verification;
pub mod versions;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::HostConfig;
use crate::metrics::Metrics;
use crate::plugins::PluginRegistry;
use crate::scheduler::ticker::{LoopSpec, Scheduler, TickReport};
use crate::secrets::SecretBox;
use crate::store::{JobStatus, Store};
use crate::wake::Wake;

/// What the engine works with. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    /// The database.
    pub store: Store,
    /// Configuration in force.
    pub config: Arc<HostConfig>,
    /// Loaded connector plugins.
    pub plugins: Arc<PluginRegistry>,
    /// Wake-up signals for loops and long-polls.
    pub wake: Arc<Wake>,
    /// Seals connector secrets and host-held private keys.
    pub secrets: Arc<SecretBox>,
    /// Metrics recorded in process.
    pub metrics: Arc<Metrics>,
    /// The job tasks running in this process.
    pub runner: Arc<runner::JobRunner>,
    /// The threads connector calls run on.
    pub plugin_exec: Arc<plugin_exec::PluginExec>,
    /// Connector instances built from stored rows.
    pub instances: Arc<connectors::InstanceCache>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine over its parts, with fresh wake-up signals and metrics.
    pub fn new(
        store: Store,
        config: Arc<HostConfig>,
        plugins: Arc<PluginRegistry>,
        secrets: Arc<SecretBox>,
    ) -> Self {
        Engine {
            runner: Arc::new(runner::JobRunner::new(config.jobs.max_concurrent)),
            plugin_exec: Arc::new(plugin_exec::PluginExec::new()),
            instances: Arc::default(),
            store,
            config,
            plugins,
            wake: Arc::new(Wake::default()),
            secrets,
            metrics: Arc::new(Metrics::default()),
        }
    }
}

/// Jobs one tick of the processor claims at most.
const BATCH: u32 = 16;
/// With fewer free slots than this while jobs run, a claim waits
/// [`COALESCE_FOR`] for more to free up first.
const COALESCE_BELOW: usize = 4;
/// How long a claim waits for slots to free up (the latency it may add).
const COALESCE_FOR: std::time::Duration = std::time::Duration::from_millis(2);

fn spec(name: &'static str, interval_ms: u64, engine: &Engine) -> LoopSpec {
    LoopSpec::new(name, Duration::from_millis(interval_ms)).with_tick_timeout(
        Duration::from_millis(engine.config.scheduler.tick_timeout_ms),
    )
}

fn report(processed: usize, limit: u32) -> TickReport {
    if processed as u64 >= u64::from(limit) {
        TickReport::more_pending(processed as u64)
    } else {
        TickReport::done(processed as u64)
    }
}

/// Fails jobs waiting in `status` for longer than `ttl_secs` with `reason`
/// (the retry loop brings them back while attempts last); returns how many.
async fn expire_waits(
    engine: &Engine,
    status: JobStatus,
    ttl_secs: u64,
    reason: String,
) -> Result<u64, crate::store::StoreError> {
    let cutoff = chrono::Utc::now() - chrono::Duration::seconds(ttl_secs as i64);
    let expired = engine
        .store
        .expire_waiting_jobs(status, cutoff, &reason, 500)
        .await?;
    if expired > 0 {
        tracing::warn!(expired, %status, ttl_secs, "waits expired; the jobs will be retried");
    }
    Ok(expired)
}

/// Wakes the long polls of agents with work that appeared since `since`.
async fn wake_agents_with_work(
    engine: &Engine,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<(), crate::store::StoreError> {
    for agent in engine.store.agents_with_new_work_since(since).await? {
        engine.wake.wake_agent(&agent);
    }
    Ok(())
}

/// Claims as many jobs as there are free slots (at most [`BATCH`]) and
/// runs each as its own task: the tick does not wait for them, so one slow
/// call never holds back the next claim. The slots are taken before the
/// claim and the claimed batch is started in a task of its own, so a tick
/// cancelled (timed out, shut down) after its claim committed cannot leave
/// claimed jobs leased and not running.
async fn claim_and_run<F, Fut, C>(
    engine: &Engine,
    what: &'static str,
    claim: F,
) -> crate::scheduler::ticker::TickResult
where
    F: FnOnce(u32) -> Fut,
    Fut: Future<Output = Result<C, crate::store::StoreError>>,
    C: Into<crate::store::HostClaimed>,
{
    let free = engine.runner.free_slots();
    if free == 0 {
        // A finishing job wakes the loop again.
        return Ok(TickReport::done(0));
    }
    if free < COALESCE_BELOW && engine.runner.running() > 0 {
        // Busy: a job that just finished woke the loop. Let a few more
        // finish so one claim takes several jobs; at a thousand jobs a
        // second claiming them one by one would cost a commit each.
        tokio::time::sleep(COALESCE_FOR).await;
    }
    let Some(slots) = engine.runner.reserve(BATCH as usize) else {
        return Ok(TickReport::done(0));
    };
    let want = u32::try_from(slots.num_permits()).unwrap_or(BATCH);
    let started = std::time::Instant::now();
    let claimed = match claim(want).await {
        Ok(claimed) => claimed.into(),
        Err(e) => {
            engine.runner.release(&engine.wake, slots);
            return Err(e.into());
        }
    };
    engine.metrics.observe_claim(what, started.elapsed());
    let n = claimed.jobs.len();
    if n > 0 {
        let runner = engine.runner.clone();
        runner.track(start_batch(engine.clone(), claimed, slots));
    } else {
        engine.runner.release(&engine.wake, slots);
    }
    Ok(report(n, want))
}

/// Starts each job of a claimed batch in one of `slots` (one per job).
async fn start_batch(
    engine: Engine,
    claimed: crate::store::HostClaimed,
    mut slots: tokio::sync::OwnedSemaphorePermit,
) {
    let jobs = claimed.jobs;
    let n = jobs.len();
    // The batch's rows came with the claim, or are read in one read; if
    // that read fails, each job reads its own (and meets the same database
    // error there, where its own failure handling applies).
    let read = match claimed.inputs {
        Some(inputs) => Ok(inputs),
        None => engine.store.job_inputs(&jobs).await,
    };
    let mut inputs = match read {
        Ok(inputs) => inputs,
        Err(e) => {
            tracing::warn!(error = %e, jobs = n, "cannot read the claimed jobs' rows together; each job reads its own");
            Default::default()
        }
    };
    for job in jobs {
        let own = inputs.remove(&job.id);
        // The claim asked for at most as many jobs as slots were held, so
        // a slot is split off; waiting for one is only a fallback.
        let slot = match slots.split(1) {
            Some(slot) => slot,
            None => match engine.runner.slot().await {
                Some(slot) => slot,
                None => return,
            },
        };
        engine.runner.spawn(&engine, job, own, slot);
    }
    if slots.num_permits() > 0 {
        engine.runner.release(&engine.wake, slots);
    }
}

/// Claims up to `limit` host jobs, deployments before anything else: a
/// deployment finishes what an issuance started, so in a storm certificates
/// reach their targets while the rest are still being issued instead of
/// all waiting for the whole issuance backlog. Deployments to targets
/// already busy in this process ([`runner::JobRunner::busy_targets`]) are
/// left pending.
async fn claim_deployments_first(
    engine: &Engine,
    limit: u32,
) -> Result<crate::store::HostClaimed, crate::store::StoreError> {
    let busy = engine.runner.busy_targets();
    let deployments_first = !engine.runner.deployment_claim_futile(&busy);
    let claimed = engine
        .store
        .claim_host_jobs_deployments_first(limit, &busy, deployments_first)
        .await?;
    if deployments_first {
        engine
            .runner
            .deployment_claim_found(&busy, claimed.deployments);
    }
    Ok(claimed)
}

/// Starts every loop; cancel `token` (or call `shutdown`) to stop them.
/// Shutdown lets running jobs finish within its grace period and stops
/// them after it.
pub fn start(engine: Engine, token: CancellationToken) -> Scheduler {
    let mut scheduler = Scheduler::with_cancellation(token);
    let (tasks, stop) = engine.runner.drain_handles();
    scheduler.drain_tasks("jobs", tasks, stop);
    let s = &engine.config.scheduler;

    let st = engine.clone();
    scheduler.spawn_loop(
        spec("jobs", s.jobs_ms, &engine),
        Some(engine.wake.jobs.clone()),
        move || {
            let st = st.clone();
            async move {
                claim_and_run(&st, "claim_pending_jobs", |n| {
                    claim_deployments_first(&st, n)
                })
                .await
            }
        },
    );

    let st = engine.clone();
    scheduler.spawn_loop(
        spec("order-poll", s.order_poll_ms, &engine),
        Some(engine.wake.orders.clone()),
        move || {
            let st = st.clone();
            async move { claim_and_run(&st, "claim_due_polls", |n| st.store.claim_due_polls(n)).await }
        },
    );

    let st = engine.clone();
    let alarm = Arc::new(renewals::RenewalAlarm::new(engine.wake.renewals.clone()));
    let renewal_interval = Duration::from_millis(s.renewal_ms);
    scheduler.spawn_loop(
        spec("renewals", s.renewal_ms, &engine),
        Some(engine.wake.renewals.clone()),
        move || {
            let (st, alarm) = (st.clone(), alarm.clone());
            async move { renewals::tick(&st, &alarm, renewal_interval).await }
        },
    );

    let st = engine.clone();
    scheduler.spawn_loop(spec("retry", s.retry_ms, &engine), None, move || {
        let st = st.clone();
        async move {
            let started = crate::store::now();
            let retried = st.store.retry_failed_jobs(500).await?;
            if retried > 0 {
                st.wake.wake_jobs();
                // Retried agent jobs (failed reports, reaped leases of a
                // vanished agent) go back to their agents at once.
                wake_agents_with_work(&st, started).await?;
            }
            Ok(report(retried as usize, 500))
        }
    });

    let st = engine.clone();
    scheduler.spawn_loop(spec("reaper", s.reaper_ms, &engine), None, move || {
        let st = st.clone();
        async move {
            let reaped = st.store.reap_expired_leases(500).await?;
            for job in &reaped {
                tracing::warn!(job = %job.id, error = ?job.last_error, "expired lease reaped");
            }
            let ttl = st.config.agents.csr_ttl_secs;
            let expired = expire_waits(
                &st,
                JobStatus::AwaitingCsr,
                ttl,
                format!("no CSR from the agent within {ttl} s"),
            )
            .await?;
            let ttl = st.config.jobs.approval_ttl_secs;
            let unapproved = expire_waits(
                &st,
                JobStatus::AwaitingApproval,
                ttl,
                format!("not approved within {ttl} s"),
            )
            .await?;
            Ok(report(reaped.len() + (expired + unapproved) as usize, 500))
        }
    });

    // One queue per notifier, deliveries in their own tasks (see notify).
    notify::spawn_loop(
        &mut scheduler,
        &engine,
        spec("notifications", s.notifications_ms, &engine),
    );

    let st = engine.clone();
    scheduler.spawn_loop(
        spec(
            "challenges",
            st.config.challenges.check_interval_ms.max(50),
            &engine,
        ),
        Some(engine.wake.challenges.clone()),
        move || {
            let st = st.clone();
            async move {
                let n = challenges::tick(&st).await?;
                Ok(report(n, 64))
            }
        },
    );

    let st = engine.clone();
    scheduler.spawn_loop(
        spec("renewal-info", s.renewal_info_ms, &engine),
        None,
        move || {
            let st = st.clone();
            async move {
                let n = lifecycle::tick(&st).await?;
                Ok(report(n, 100))
            }
        },
    );

    let st = engine.clone();
    scheduler.spawn_loop(
        spec("agent-health", s.agent_health_ms, &engine),
        None,
        move || {
            let st = st.clone();
            async move {
                let n = agent_health::tick(&st).await?;
                Ok(TickReport::done(n as u64))
            }
        },
    );

    let st = engine.clone();
    scheduler.spawn_loop(spec("expiry", s.expiry_ms, &engine), None, move || {
        let st = st.clone();
        async move {
            let n = expiry::tick(&st).await?;
            Ok(TickReport::done(n as u64))
        }
    });

    scheduler
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layers below the API never reach up into it: no axum, no
    /// `crate::api` in the engine, the store, the pipeline or the metrics.
    #[test]
    fn nothing_below_the_api_imports_it() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut stack: Vec<std::path::PathBuf> =
            ["engine", "store", "pipeline", "metrics.rs", "wake.rs"]
                .iter()
                .map(|p| src.join(p))
                .collect();
        // Split so that this test's own source does not match.
        let needles = [concat!("ax", "um"), concat!("crate::", "api")];
        let mut checked = 0;
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                for entry in std::fs::read_dir(&path).unwrap() {
                    stack.push(entry.unwrap().path());
                }
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                assert!(
                    !needles.iter().any(|n| code.contains(n)),
                    "{}:{}: {line}",
                    path.display(),
                    n + 1
                );
            }
            checked += 1;
        }
        assert!(checked > 10, "only {checked} files checked");
    }

    async fn engine_with_slots(slots: usize) -> Engine {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let mut config = HostConfig::default();
        config.jobs.max_concurrent = slots;
        let plugins = PluginRegistry::load(std::path::Path::new("/nonexistent-plugins"), None)
            .await
            .unwrap();
        Engine::new(
            store,
            Arc::new(config),
            Arc::new(plugins),
            Arc::new(SecretBox::generate()),
        )
    }

    #[tokio::test]
    async fn a_claim_asks_only_for_slots_no_other_claim_holds() {
        let engine = engine_with_slots(3).await;
        let (entered_tx, entered) = tokio::sync::oneshot::channel::<u32>();
        let (finish, finish_rx) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn({
            let engine = engine.clone();
            async move {
                claim_and_run(&engine, "first", |n| async move {
                    let _ = entered_tx.send(n);
                    let _ = finish_rx.await;
                    Ok(Vec::new())
                })
                .await
                .is_ok()
            }
        });
        assert_eq!(
            entered.await.unwrap(),
            3,
            "the first claim asks for every free slot"
        );

        // While the first claim is under way its slots are taken: another
        // loop's claim must not ask for them too (its jobs would wait for
        // a slot, leased, and be lost if its tick were cancelled).
        let asked = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let seen = asked.clone();
        claim_and_run(&engine, "second", |n| {
            seen.store(n, std::sync::atomic::Ordering::SeqCst);
            async { Ok(Vec::new()) }
        })
        .await
        .unwrap();
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 0);

        finish.send(()).unwrap();
        assert!(first.await.unwrap());
        // Slots claimed for and not used are given back.
        assert_eq!(engine.runner.free_slots(), 3);
        assert_eq!(engine.runner.running(), 0);
    }
}
