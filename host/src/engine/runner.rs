//! Running claimed jobs: each job is its own task under a host-wide
//! concurrency limit, so a slow connector call holds only its own slot and
//! the claim loops keep claiming for the others; each connector instance
//! has its own concurrency limit on top; a running job is stopped when it
//! is cancelled (by this replica's API at once, by another replica's within
//! [`WATCH_INTERVAL`]) or when its lease is lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::Engine;
use crate::store::{Job, JobInputs, JobLease, JobStatus};

/// How often a running job checks that it is still its replica's to run:
/// the bound on how late a cancellation made on another replica stops it.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// How many lease lengths a job running in this process may keep its
/// lease by renewing it (an hour at the default 300 s lease): far beyond
/// what its calls take, each bounded by its deadline and the deadline by
/// the lease, so only a job stuck in this process reaches it.
pub const MAX_HOLD_LEASES: u32 = 12;

/// How much of a lease of `length` may be left before it is renewed: half,
/// and at least three [`WATCH_INTERVAL`]s so a short lease is renewed in
/// time.
pub fn renew_within(length: Duration) -> Duration {
    (length / 2).max(WATCH_INTERVAL * 3)
}

/// How long a job may keep its lease of `length` by renewing it.
pub fn hold_limit(length: Duration) -> Duration {
    length.saturating_mul(MAX_HOLD_LEASES)
}

/// How long a claim of deployments that found none beside the same busy
/// targets is not run again (see [`JobRunner::deployment_claim_futile`]).
pub const FUTILE_FOR: Duration = Duration::from_millis(50);

/// The job tasks of one engine.
#[derive(Debug)]
pub struct JobRunner {
    slots: Arc<Semaphore>,
    capacity: usize,
    /// A claim loop found no free slot: wake the loops when one frees.
    starved: AtomicBool,
    tracker: TaskTracker,
    /// Cancelled when shutdown's grace period is over: stops every task.
    stop: CancellationToken,
    running: Mutex<HashMap<String, CancellationToken>>,
    instances: Mutex<HashMap<String, (u32, Arc<Semaphore>)>>,
    /// Work grouped under a name (a notifier's deliveries), stopped together.
    scopes: Mutex<HashMap<String, CancellationToken>>,
    /// Deployment jobs running in this process, by target id.
    deploying: Arc<Mutex<HashMap<String, usize>>>,
    /// The busy targets a deployment claim found nothing beside, and when.
    futile: Mutex<Option<(Vec<String>, tokio::time::Instant)>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these maps leaves it consistent (single
    // inserts and removes), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl JobRunner {
    /// A runner for at most `capacity` jobs at once.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        JobRunner {
            slots: Arc::new(Semaphore::new(capacity)),
            capacity,
            starved: AtomicBool::new(false),
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            running: Mutex::new(HashMap::new()),
            instances: Mutex::new(HashMap::new()),
            scopes: Mutex::new(HashMap::new()),
            deploying: Arc::default(),
            futile: Mutex::new(None),
        }
    }

    /// Slots free now (none held for it: see [`JobRunner::reserve`]).
    pub fn free_slots(&self) -> usize {
        let free = self.slots.available_permits();
        if free == 0 {
            self.starved.store(true, Ordering::SeqCst);
        }
        free
    }

    /// Takes up to `max` free slots for jobs about to be claimed; `None`
    /// when none is free (a finishing job then wakes the claim loops).
    /// A claim asks for no more jobs than it holds slots for, so a claimed
    /// job never waits for one: two claim loops reading the free slots
    /// apart could otherwise both claim them, and the jobs left waiting
    /// would be lost, leased but never run, if their tick were cancelled.
    pub fn reserve(&self, max: usize) -> Option<OwnedSemaphorePermit> {
        loop {
            let n = self.slots.available_permits().min(max);
            if n == 0 {
                self.starved.store(true, Ordering::SeqCst);
                return None;
            }
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            match self.slots.clone().try_acquire_many_owned(n) {
                Ok(permit) => return Some(permit),
                // Another loop took some in between: try what is left.
                Err(TryAcquireError::NoPermits) => {}
                Err(TryAcquireError::Closed) => return None,
            }
        }
    }

    /// Gives back slots reserved and not used, waking the claim loops that
    /// found none free meanwhile.
    pub fn release(&self, wake: &crate::wake::Wake, slots: OwnedSemaphorePermit) {
        drop(slots);
        if self.starved.swap(false, Ordering::SeqCst) {
            wake.wake_jobs();
            wake.wake_orders();
        }
    }

    /// Jobs running now. Slots a claim has reserved but not yet filled
    /// are not counted: they are taken, but nothing runs in them.
    pub fn running(&self) -> usize {
        locked(&self.running).len()
    }

    /// The tasks, for shutdown to wait on, and the token that stops them.
    pub fn drain_handles(&self) -> (TaskTracker, CancellationToken) {
        (self.tracker.clone(), self.stop.clone())
    }

    /// Stops the job `job_id` if it runs in this process; true if it did.
    pub fn cancel(&self, job_id: &str) -> bool {
        match locked(&self.running).get(job_id) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// The token of the work grouped under `scope` (e.g. `notifier/<id>`):
    /// work that selects on it stops when [`JobRunner::stop_scope`] is
    /// called; work started afterwards gets a fresh token.
    pub fn scope(&self, scope: &str) -> CancellationToken {
        locked(&self.scopes)
            .entry(scope.to_owned())
            .or_insert_with(|| self.stop.child_token())
            .clone()
    }

    /// Stops the work running under `scope` in this process.
    pub fn stop_scope(&self, scope: &str) {
        if let Some(token) = locked(&self.scopes).remove(scope) {
            token.cancel();
        }
    }

    /// Sets the concurrency of the connector instance `instance_id` (its
    /// sealing owner, e.g. `issuer/<id>`); a changed value takes effect for
    /// calls that start afterwards.
    pub fn set_instance_concurrency(&self, instance_id: &str, concurrency: u32) {
        let mut map = locked(&self.instances);
        match map.get(instance_id) {
            Some((n, _)) if *n == concurrency => {}
            _ => {
                map.insert(
                    instance_id.to_owned(),
                    (
                        concurrency,
                        Arc::new(Semaphore::new(concurrency.max(1) as usize)),
                    ),
                );
            }
        }
    }

    /// The concurrency registered for `instance_id`, if any.
    pub fn instance_concurrency(&self, instance_id: &str) -> Option<u32> {
        locked(&self.instances).get(instance_id).map(|(n, _)| *n)
    }

    /// Targets with no room for another deployment in this process: as
    /// many of their deployments run here as half the job slots, or twice
    /// the target's call slots (one waiting behind each call) where that
    /// is more. Claims leave their deployments alone, so a slow target
    /// cannot fill every job slot with deployments waiting for its call
    /// slots while issuance and other targets' deployments wait behind
    /// them; a fast one keeps enough queued to keep its call slots busy.
    pub fn busy_targets(&self) -> Vec<String> {
        let deploying = locked(&self.deploying);
        let instances = locked(&self.instances);
        deploying
            .iter()
            .filter(|(target, n)| {
                instances
                    .get(&format!("target/{target}"))
                    .is_some_and(|(slots, _)| {
                        **n >= (2 * (*slots).max(1) as usize).max(self.capacity / 2)
                    })
            })
            .map(|(target, _)| target.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Whether a claim of deployments beside `busy` (as
    /// [`JobRunner::busy_targets`] gives them) is not worth running now: the
    /// last one with the same busy targets, less than [`FUTILE_FOR`] ago,
    /// found none. Such a claim walks every pending deployment of the busy
    /// targets to find nothing; while one target's backlog grows, running
    /// it on every pass cost more database time than it saved (a
    /// PostgreSQL renewal storm of 10,000 took 20–30 % longer). Deployments
    /// to other targets meanwhile wait at most that long, or are claimed
    /// with the rest in their turn.
    pub fn deployment_claim_futile(&self, busy: &[String]) -> bool {
        locked(&self.futile)
            .as_ref()
            .is_some_and(|(last, at)| last == busy && at.elapsed() < FUTILE_FOR)
    }

    /// Records what a claim of deployments beside `busy` found.
    pub fn deployment_claim_found(&self, busy: &[String], found: usize) {
        *locked(&self.futile) =
            (found == 0 && !busy.is_empty()).then(|| (busy.to_vec(), tokio::time::Instant::now()));
    }

    /// Waits for a call slot of `instance_id`; `None` when the instance has
    /// no limit registered (not built through the engine).
    pub async fn instance_permit(&self, instance_id: &str) -> Option<OwnedSemaphorePermit> {
        let slots = locked(&self.instances)
            .get(instance_id)
            .map(|(_, s)| s.clone())?;
        slots.acquire_owned().await.ok()
    }

    /// Waits for one free slot; `None` only once the runner is gone.
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().acquire_owned().await.ok()
    }

    /// Runs `task` among the job tasks: shutdown waits for it (and its
    /// grace period's end stops it) like a job.
    pub fn track<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Runs `job` as its own task in `slot` (one slot split off a
    /// [`JobRunner::reserve`]d set); returns at once. `inputs` are the rows
    /// it works with when they were read with its claimed batch; without
    /// them the job reads its own.
    pub fn spawn(
        &self,
        engine: &Engine,
        job: Job,
        inputs: Option<JobInputs>,
        permit: OwnedSemaphorePermit,
    ) {
        let token = self.stop.child_token();
        locked(&self.running).insert(job.id.clone(), token.clone());
        let deploying = Deploying::start(self, &job);
        let engine = engine.clone();
        self.tracker.spawn(async move {
            let _deploying = deploying;
            let id = job.id.clone();
            let lease = job.lease();
            let expires = job.lease_expires_at;
            tokio::select! {
                () = dispatch(&engine, job, inputs) => {}
                () = token.cancelled() => {
                    tracing::warn!(job = %id, "running job stopped: cancelled or shutting down");
                }
                () = watch(&engine, &id, lease, expires) => {
                    tracing::warn!(job = %id, "running job stopped: cancelled elsewhere or its lease was lost");
                }
            }
            locked(&engine.runner.running).remove(&id);
            engine.runner.release(&engine.wake, permit);
        });
    }
}

/// A deployment counted against its target while it runs (see
/// [`JobRunner::busy_targets`]); dropping it ends the count.
struct Deploying {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    target: String,
}

impl Deploying {
    fn start(runner: &JobRunner, job: &Job) -> Option<Deploying> {
        if job.job_type != crate::store::JobType::Deployment {
            return None;
        }
        let target = job.target_id.clone()?;
        *locked(&runner.deploying).entry(target.clone()).or_default() += 1;
        Some(Deploying {
            counts: runner.deploying.clone(),
            target,
        })
    }
}

impl Drop for Deploying {
    fn drop(&mut self) {
        let mut deploying = locked(&self.counts);
        if let Some(n) = deploying.get_mut(&self.target) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                deploying.remove(&self.target);
            }
        }
    }
}

async fn dispatch(engine: &Engine, job: Job, inputs: Option<JobInputs>) {
    use crate::engine::{deploy, issuance, revoke, verification};
    use crate::store::JobType;
    match job.job_type {
        JobType::Issuance | JobType::Renewal => issuance::process(engine, job, inputs).await,
        JobType::Deployment => deploy::process(engine, job, inputs).await,
        JobType::Revocation => revoke::process(engine, job).await,
        JobType::Verification => verification::process(engine, job).await,
    }
}

/// Returns once the job is no longer running under `lease` (cancelled,
/// reaped, claimed again); never while it is. A database error counts as
/// "still ours": the outcome's own lease guard settles it.
///
/// While the job runs, its lease (ending at `expires`) is renewed whenever
/// less than half of it is left: a job that waits for its connector
/// instance's call slot behind others, or makes several calls, would
/// otherwise be reaped while it still works, lose an attempt, and have its
/// side effects repeated by the next holder. Renewals stop after
/// [`MAX_HOLD_LEASES`] lease lengths, so a job stuck in this process is
/// still taken back by the reaper.
async fn watch(
    engine: &Engine,
    id: &str,
    lease: Option<JobLease>,
    mut expires: Option<chrono::DateTime<chrono::Utc>>,
) {
    let Some(lease) = lease else {
        return std::future::pending().await;
    };
    let length = engine.store.options().lease_duration;
    let renew_within =
        chrono::Duration::from_std(renew_within(length)).unwrap_or(chrono::Duration::MAX);
    // `None` (no end) only for a lease too long to add to the clock.
    let hold_until = tokio::time::Instant::now().checked_add(hold_limit(length));
    loop {
        tokio::time::sleep(WATCH_INTERVAL).await;
        let due = expires.is_some_and(|at| at - crate::store::now() < renew_within);
        if due && hold_until.is_none_or(|end| tokio::time::Instant::now() < end) {
            match engine.store.renew_lease(&lease).await {
                // The guarded renewal found it running under this lease.
                Ok(Some(until)) => {
                    expires = Some(until);
                    continue;
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(job = %id, error = %e, "cannot renew the lease; carrying on");
                }
            }
        }
        match engine.store.get_job(id).await {
            Ok(Some(job))
                if job.status == JobStatus::Running
                    && job.lease_owner.as_deref() == Some(lease.owner.as_str())
                    && job.attempts == lease.attempt => {}
            Ok(_) => return,
            Err(e) => tracing::debug!(job = %id, error = %e, "cannot check the job; carrying on"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_futile_deployment_claim_is_skipped_briefly_for_the_same_busy_targets() {
        let runner = JobRunner::new(4);
        let busy = vec!["t1".to_owned()];
        assert!(!runner.deployment_claim_futile(&busy));
        runner.deployment_claim_found(&busy, 0);
        assert!(runner.deployment_claim_futile(&busy));
        // Other busy targets (one freed up, another filled): claim again.
        assert!(!runner.deployment_claim_futile(&[]));
        assert!(!runner.deployment_claim_futile(&["t1".to_owned(), "t2".to_owned()]));
        tokio::time::advance(FUTILE_FOR).await;
        assert!(!runner.deployment_claim_futile(&busy));
        // A claim that found work, or had no busy target, records nothing.
        runner.deployment_claim_found(&busy, 0);
        runner.deployment_claim_found(&busy, 3);
        assert!(!runner.deployment_claim_futile(&busy));
        runner.deployment_claim_found(&[], 0);
        assert!(!runner.deployment_claim_futile(&[]));
    }
}
