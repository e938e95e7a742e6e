//! Periodic loop runner: jittered intervals, per-tick timeouts, no
//! overlapping ticks, wake-ups, and bounded graceful shutdown.
//!
//! A loop is a [`LoopSpec`] plus a [`Tick`] body (any
//! `Fn() -> impl Future<Output = Result<TickReport, TickError>>` closure
//! qualifies). [`Scheduler::spawn_loop`] runs it on its own tokio task:
//!
//! ```text
//! [initial_delay] tick  wait  tick  wait  tick ...
//!                      └ interval × U(1-jitter, 1+jitter), cut short by a wake-up
//! ```
//!
//! * **No overlap.** The task awaits its tick body before it waits again, so
//!   two ticks of one loop never run at the same time, whatever the tick
//!   duration, the interval or the number of wake-ups.
//! * **Timeout.** Each tick runs under `tokio::time::timeout(tick_timeout)`;
//!   a tick that runs out of time is dropped (its future is cancelled at its
//!   current `.await`), logged at `warn`, and the loop carries on. A tick
//!   that returns an error or panics is logged at `warn` too and the loop
//!   carries on.
//! * **Wake-ups.** A loop may be given an `Arc<Notify>`: `notify_one()`
//!   ends the current wait at once. Every wake-up is followed by a tick that
//!   *starts* after it: wake-ups issued before a tick starts are all served
//!   by that tick, and wake-ups issued while a tick runs are kept by `Notify`
//!   as a single permit, so exactly one more tick follows the running one.
//!   A tick that returns [`TickReport::more`] `= true` (it claimed a full
//!   batch, say) runs again without waiting.
//! * **Shutdown.** [`Scheduler::shutdown`] cancels every loop: no loop starts
//!   a new tick after that; ticks in flight may finish within the grace
//!   period and are aborted after it. The [`ShutdownReport`] names the loops
//!   that drained and the ones that were aborted.
//!
//! Every tick outcome is traced with the fields `loop` and `elapsed_ms`:
//! successes at `debug`, errors, panics and timeouts at `warn`.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, debug, info_span, warn};

/// Default relative jitter of a loop's interval (±10 %).
pub const DEFAULT_JITTER: f64 = 0.1;

/// What a loop is called and how often and how long it may run.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopSpec {
    /// Loop name, used in logs and in the [`ShutdownReport`].
    pub name: &'static str,
    /// Nominal time between the end of one tick and the start of the next.
    pub interval: Duration,
    /// Relative jitter in `[0, 1]`: each wait is
    /// `interval × uniform(1 - jitter, 1 + jitter)`. Out-of-range values are
    /// clamped, NaN counts as 0.
    pub jitter: f64,
    /// Longest a single tick may run before it is cancelled.
    pub tick_timeout: Duration,
    /// Wait before the first tick (zero: the first tick runs as soon as the
    /// loop is spawned, which lets a loop catch up on work left at startup).
    pub initial_delay: Duration,
}

impl LoopSpec {
    /// A loop with the given name and interval, [`DEFAULT_JITTER`], a tick
    /// timeout equal to the interval and no initial delay.
    pub fn new(name: &'static str, interval: Duration) -> Self {
        LoopSpec {
            name,
            interval,
            jitter: DEFAULT_JITTER,
            tick_timeout: interval,
            initial_delay: Duration::ZERO,
        }
    }

    /// Sets the relative jitter (see [`LoopSpec::jitter`]).
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets the per-tick timeout.
    pub fn with_tick_timeout(mut self, tick_timeout: Duration) -> Self {
        self.tick_timeout = tick_timeout;
        self
    }

    /// Sets the wait before the first tick.
    pub fn with_initial_delay(mut self, initial_delay: Duration) -> Self {
        self.initial_delay = initial_delay;
        self
    }
}

/// What one successful tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Items handled by the tick (jobs claimed, rows reaped, ...), for logs.
    pub processed: u64,
    /// More work is known to be pending (e.g. the tick claimed a full
    /// batch): run the next tick immediately instead of waiting.
    pub more: bool,
}

impl TickReport {
    /// A tick that handled `processed` items and found no more work pending.
    pub fn done(processed: u64) -> Self {
        TickReport {
            processed,
            more: false,
        }
    }

    /// A tick that handled `processed` items and knows more work is pending.
    pub fn more_pending(processed: u64) -> Self {
        TickReport {
            processed,
            more: true,
        }
    }
}

/// Error returned by a tick body. It is logged (with its cause chain) and
/// the loop carries on at its normal interval.
pub type TickError = anyhow::Error;

/// Result of one tick body.
pub type TickResult = Result<TickReport, TickError>;

/// The body of a loop, run once per tick.
///
/// Implemented for every `Fn() -> Fut` closure whose future yields a
/// [`TickResult`], so a loop is usually registered as
/// `move || { let s = state.clone(); async move { s.run_once().await } }`.
pub trait Tick: Send + Sync + 'static {
    /// Runs one tick.
    fn tick(&self) -> impl Future<Output = TickResult> + Send;
}

impl<F, Fut> Tick for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = TickResult> + Send,
{
    fn tick(&self) -> impl Future<Output = TickResult> + Send {
        self()
    }
}

/// The wait before the next tick: `interval × (1 - jitter + 2 × jitter × unit)`.
///
/// `unit` is a uniform sample from `[0, 1)` (values outside `[0, 1]` are
/// clamped, NaN counts as 0); `jitter` is clamped to `[0, 1]`, NaN counts as
/// 0. The result lies in `[interval × (1 - jitter), interval × (1 + jitter)]`
/// and saturates at `Duration::MAX`.
pub fn jittered_interval(interval: Duration, jitter: f64, unit: f64) -> Duration {
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    let unit = if unit.is_nan() {
        0.0
    } else {
        unit.clamp(0.0, 1.0)
    };
    let factor = 1.0 - jitter + 2.0 * jitter * unit;
    Duration::try_from_secs_f64(interval.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

/// Which loops stopped in time when the scheduler shut down.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Loops that stopped within the grace period (any tick in flight finished).
    pub drained: Vec<&'static str>,
    /// Loops whose tick in flight outlasted the grace period and was aborted.
    pub aborted: Vec<&'static str>,
    /// Loops whose task had already ended abnormally (should not happen: a
    /// panicking tick is caught and logged, and the loop carries on).
    pub failed: Vec<&'static str>,
}

impl ShutdownReport {
    /// True when every loop drained.
    pub fn is_clean(&self) -> bool {
        self.aborted.is_empty() && self.failed.is_empty()
    }
}

/// Runs the host's periodic loops, each on its own tokio task.
///
/// Dropping a `Scheduler` without calling [`Scheduler::shutdown`] cancels
/// its loops (no new ticks start) without waiting for ticks in flight.
#[derive(Debug)]
pub struct Scheduler {
    cancel: CancellationToken,
    loops: Vec<(&'static str, JoinHandle<()>)>,
    /// Tasks the loops spawned (running jobs), drained after the loops.
    drains: Vec<(&'static str, TaskTracker, CancellationToken)>,
}

impl Default for Scheduler {
    fn default() -> Self {
        Self::new()
    }
}

impl Scheduler {
    /// A scheduler with no loops.
    pub fn new() -> Self {
        Self::with_cancellation(CancellationToken::new())
    }

    /// A scheduler whose loops also stop when `parent` is cancelled (e.g.
    /// the process-wide shutdown token). Cancelling the scheduler does not
    /// cancel `parent`.
    pub fn with_cancellation(parent: CancellationToken) -> Self {
        Scheduler {
            cancel: parent.child_token(),
            loops: Vec::new(),
            drains: Vec::new(),
        }
    }

    /// A token cancelled when the scheduler shuts down. Long tick bodies may
    /// watch it to stop early between items.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Names of the loops spawned so far, in spawn order.
    pub fn loop_names(&self) -> Vec<&'static str> {
        self.loops.iter().map(|(name, _)| *name).collect()
    }

    /// Spawns a loop running `tick` according to `spec`. `wake`, when given,
    /// lets other components run the loop's next tick immediately with
    /// `notify_one()`.
    ///
    /// Must be called from within a tokio runtime.
    pub fn spawn_loop<T: Tick>(&mut self, spec: LoopSpec, wake: Option<Arc<Notify>>, tick: T) {
        let name = spec.name;
        let span = info_span!("scheduler_loop", "loop" = name);
        let task = run_loop(spec, wake, tick, self.cancel.clone()).instrument(span);
        self.loops.push((name, tokio::spawn(task)));
    }

    /// Makes shutdown wait for the tasks in `tasks` (spawned by the loops,
    /// outliving their ticks) after the loops have stopped, within the same
    /// grace period, and cancel `stop` for those still running after it.
    pub fn drain_tasks(&mut self, name: &'static str, tasks: TaskTracker, stop: CancellationToken) {
        self.drains.push((name, tasks, stop));
    }

    /// Stops every loop: no new tick starts; ticks in flight get until
    /// `grace` has elapsed to finish and are aborted after that; then the
    /// loops' own tasks get what is left of `grace` and are cancelled after
    /// it. Returns once every loop task and every drained task has ended.
    pub async fn shutdown(mut self, grace: Duration) -> ShutdownReport {
        self.cancel.cancel();
        let deadline = Instant::now() + grace;
        let mut report = ShutdownReport::default();
        for (name, mut handle) in std::mem::take(&mut self.loops) {
            match tokio::time::timeout_at(deadline, &mut handle).await {
                Ok(Ok(())) => report.drained.push(name),
                Ok(Err(err)) => {
                    warn!("loop" = name, error = %err, "scheduler loop task had failed");
                    report.failed.push(name);
                }
                Err(_) => {
                    handle.abort();
                    // Wait for the abort so the tick's future is dropped
                    // before shutdown returns.
                    match handle.await {
                        Ok(()) => report.drained.push(name),
                        Err(_) => {
                            warn!(
                                "loop" = name,
                                grace_ms = millis(grace),
                                "tick still running after the shutdown grace period; aborted"
                            );
                            report.aborted.push(name);
                        }
                    }
                }
            }
        }
        for (name, tasks, stop) in std::mem::take(&mut self.drains) {
            tasks.close();
            if tokio::time::timeout_at(deadline, tasks.wait())
                .await
                .is_ok()
            {
                report.drained.push(name);
                continue;
            }
            warn!(
                "loop" = name,
                running = tasks.len(),
                "tasks still running after the shutdown grace period; stopping them"
            );
            stop.cancel();
            tasks.wait().await;
            report.aborted.push(name);
        }
        debug!(
            drained = report.drained.len(),
            aborted = report.aborted.len(),
            failed = report.failed.len(),
            "scheduler stopped"
        );
        report
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.cancel.cancel();
        for (_, _, stop) in &self.drains {
            stop.cancel();
        }
    }
}

async fn run_loop<T: Tick>(
    spec: LoopSpec,
    wake: Option<Arc<Notify>>,
    tick: T,
    cancel: CancellationToken,
) {
    debug!("loop" = spec.name, "loop started");
    let mut delay = spec.initial_delay;
    while wait(delay, wake.as_deref(), &cancel).await {
        if let Some(notify) = &wake {
            // Wake-ups issued before this tick starts are served by it: drop
            // a stored permit so they do not cause a redundant tick later.
            // One issued while the tick runs stores a new permit, so exactly
            // one more tick follows.
            let _ = notify.notified().now_or_never();
        }
        let report = run_tick(&spec, &tick).await;
        delay = if report.more {
            // Let other tasks run even if a tick keeps reporting more work.
            tokio::task::yield_now().await;
            Duration::ZERO
        } else {
            jittered_interval(spec.interval, spec.jitter, rand::random::<f64>())
        };
    }
    debug!("loop" = spec.name, "loop stopped");
}

/// Waits `delay` or until woken; false once the loop is cancelled.
async fn wait(delay: Duration, wake: Option<&Notify>, cancel: &CancellationToken) -> bool {
    if cancel.is_cancelled() {
        return false;
    }
    if delay.is_zero() {
        return true;
    }
    let woken = async {
        match wake {
            Some(notify) => notify.notified().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        () = cancel.cancelled() => false,
        () = woken => true,
        () = tokio::time::sleep(delay) => true,
    }
}

/// Runs one tick under the loop's timeout, catching errors and panics.
async fn run_tick<T: Tick>(spec: &LoopSpec, tick: &T) -> TickReport {
    let started = Instant::now();
    let body = AssertUnwindSafe(async { tick.tick().await }).catch_unwind();
    let outcome = tokio::time::timeout(spec.tick_timeout, body).await;
    let elapsed_ms = millis(started.elapsed());
    match outcome {
        Ok(Ok(Ok(report))) => {
            debug!(
                "loop" = spec.name,
                elapsed_ms,
                processed = report.processed,
                more = report.more,
                "tick done"
            );
            report
        }
        Ok(Ok(Err(err))) => {
            let error = format!("{err:#}");
            warn!("loop" = spec.name, elapsed_ms, error = %error, "tick failed");
            TickReport::default()
        }
        Ok(Err(panic)) => {
            let message = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("non-string panic payload");
            warn!(
                "loop" = spec.name,
                elapsed_ms,
                panic = message,
                "tick panicked"
            );
            TickReport::default()
        }
        Err(_) => {
            warn!(
                "loop" = spec.name,
                elapsed_ms,
                timeout_ms = millis(spec.tick_timeout),
                "tick timed out and was cancelled"
            );
            TickReport::default()
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

    fn counter() -> Arc<AtomicU64> {
        Arc::new(AtomicU64::new(0))
    }

    /// A loop body that counts its ticks and otherwise does nothing.
    fn counting(count: &Arc<AtomicU64>) -> impl Tick {
        let count = count.clone();
        move || {
            let count = count.clone();
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                Ok(TickReport::done(1))
            }
        }
    }

    #[test]
    fn jitter_bounds_are_exact() {
        let i = Duration::from_secs(10);
        assert_eq!(jittered_interval(i, 0.1, 0.0), Duration::from_secs(9));
        assert_eq!(jittered_interval(i, 0.1, 0.5), Duration::from_secs(10));
        assert_eq!(jittered_interval(i, 0.1, 1.0), Duration::from_secs(11));
        assert_eq!(jittered_interval(i, 0.0, 0.9), i);
        // Out-of-range and NaN inputs are clamped, never panic.
        assert_eq!(jittered_interval(i, 5.0, 0.0), Duration::ZERO);
        assert_eq!(jittered_interval(i, f64::NAN, 0.7), i);
        assert_eq!(jittered_interval(i, 0.1, f64::NAN), Duration::from_secs(9));
        assert_eq!(jittered_interval(i, -1.0, 0.3), i);
        assert_eq!(jittered_interval(Duration::MAX, 0.1, 1.0), Duration::MAX);
    }

    #[test]
    fn random_jitter_stays_within_ten_percent() {
        let i = Duration::from_millis(1000);
        let (mut lo, mut hi) = (Duration::MAX, Duration::ZERO);
        for _ in 0..10_000 {
            let d = jittered_interval(i, DEFAULT_JITTER, rand::random::<f64>());
            assert!(
                d >= Duration::from_millis(900) && d <= Duration::from_millis(1100),
                "{d:?}"
            );
            lo = lo.min(d);
            hi = hi.max(d);
        }
        // The samples actually spread over the range.
        assert!(lo < Duration::from_millis(920) && hi > Duration::from_millis(1080));
    }

    #[tokio::test(start_paused = true)]
    async fn ticks_run_on_the_jittered_interval() {
        let count = counter();
        let mut s = Scheduler::new();
        s.spawn_loop(
            LoopSpec::new("periodic", Duration::from_secs(10)),
            None,
            counting(&count),
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(count.load(Ordering::SeqCst), 1, "first tick runs at once");
        // Next tick no earlier than 9 s and no later than 11 s.
        tokio::time::sleep(Duration::from_millis(8_998)).await;
        assert_eq!(count.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(2_002)).await;
        assert_eq!(count.load(Ordering::SeqCst), 2);
        // 100 more intervals of 9..=11 s fit in 1,100 s and not in 900 s.
        tokio::time::sleep(Duration::from_secs(899)).await;
        let n = count.load(Ordering::SeqCst);
        assert!((82..=102).contains(&n), "{n} ticks");
        assert!(s.shutdown(Duration::from_secs(1)).await.is_clean());
    }

    #[tokio::test(start_paused = true)]
    async fn initial_delay_postpones_the_first_tick() {
        let count = counter();
        let mut s = Scheduler::new();
        let spec = LoopSpec::new("delayed", Duration::from_secs(60))
            .with_initial_delay(Duration::from_secs(5));
        s.spawn_loop(spec, None, counting(&count));
        tokio::time::sleep(Duration::from_millis(4_999)).await;
        assert_eq!(count.load(Ordering::SeqCst), 0);
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(count.load(Ordering::SeqCst), 1);
        s.shutdown(Duration::ZERO).await;
    }

    #[tokio::test(start_paused = true)]
    async fn ticks_of_one_loop_never_overlap() {
        let running = Arc::new(AtomicUsize::new(0));
        let max_running = Arc::new(AtomicUsize::new(0));
        let count = counter();
        let wake = Arc::new(Notify::new());
        let tick = {
            let (running, max_running, count) =
                (running.clone(), max_running.clone(), count.clone());
            move || {
                let (running, max_running, count) =
                    (running.clone(), max_running.clone(), count.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    max_running.fetch_max(now, Ordering::SeqCst);
                    count.fetch_add(1, Ordering::SeqCst);
                    // Three times the interval.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    // And ask to run again at once half of the time.
                    Ok(TickReport {
                        processed: 1,
                        more: count.load(Ordering::SeqCst) % 2 == 0,
                    })
                }
            }
        };
        let mut s = Scheduler::new();
        let spec = LoopSpec::new("slow", Duration::from_millis(100))
            .with_tick_timeout(Duration::from_secs(1));
        s.spawn_loop(spec, Some(wake.clone()), tick);
        // Hammer the loop with wake-ups while it runs.
        for _ in 0..500 {
            wake.notify_one();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let report = s.shutdown(Duration::from_secs(1)).await;
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(max_running.load(Ordering::SeqCst), 1);
        assert_eq!(running.load(Ordering::SeqCst), 0);
        // 5 s of 300 ms ticks back to back (wake-ups cut every wait short).
        let n = count.load(Ordering::SeqCst);
        assert!((16..=18).contains(&n), "{n} ticks");
    }

    #[tokio::test(start_paused = true)]
    async fn a_timed_out_tick_is_cancelled_and_the_loop_continues() {
        let count = counter();
        let finished = Arc::new(AtomicBool::new(false));
        let tick = {
            let (count, finished) = (count.clone(), finished.clone());
            move || {
                let (count, finished) = (count.clone(), finished.clone());
                async move {
                    if count.fetch_add(1, Ordering::SeqCst) == 0 {
                        // The first tick hangs.
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        finished.store(true, Ordering::SeqCst);
                    }
                    Ok(TickReport::done(0))
                }
            }
        };
        let mut s = Scheduler::new();
        let spec = LoopSpec::new("hang", Duration::from_secs(10))
            .with_jitter(0.0)
            .with_tick_timeout(Duration::from_secs(2));
        s.spawn_loop(spec, None, tick);
        tokio::time::sleep(Duration::from_millis(1_999)).await;
        assert_eq!(count.load(Ordering::SeqCst), 1);
        // Timed out at 2 s, next tick at 12 s.
        tokio::time::sleep(Duration::from_millis(10_002)).await;
        assert_eq!(count.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(
            !finished.load(Ordering::SeqCst),
            "the timed-out tick was dropped"
        );
        assert!(s.shutdown(Duration::from_secs(1)).await.is_clean());
    }

    #[tokio::test(start_paused = true)]
    async fn failing_and_panicking_ticks_do_not_stop_the_loop() {
        let count = counter();
        let tick = {
            let count = count.clone();
            move || {
                let n = count.fetch_add(1, Ordering::SeqCst);
                async move {
                    match n % 3 {
                        0 => Err(anyhow::anyhow!("database unavailable")),
                        1 => panic!("bug in tick {n}"),
                        _ => Ok(TickReport::done(1)),
                    }
                }
            }
        };
        let mut s = Scheduler::new();
        s.spawn_loop(
            LoopSpec::new("flaky", Duration::from_secs(1)).with_jitter(0.0),
            None,
            tick,
        );
        tokio::time::sleep(Duration::from_millis(5_500)).await;
        assert_eq!(count.load(Ordering::SeqCst), 6);
        let report = s.shutdown(Duration::from_secs(1)).await;
        assert_eq!(report.drained, vec!["flaky"]);
        assert!(report.is_clean());
    }

    #[tokio::test(start_paused = true)]
    async fn wake_runs_the_next_tick_immediately() {
        let count = counter();
        let wake = Arc::new(Notify::new());
        let mut s = Scheduler::new();
        s.spawn_loop(
            LoopSpec::new("jobs", Duration::from_secs(3600)),
            Some(wake.clone()),
            counting(&count),
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(count.load(Ordering::SeqCst), 1);
        wake.notify_one();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(count.load(Ordering::SeqCst), 2);
        // Several wake-ups while idle coalesce into one tick.
        wake.notify_one();
        wake.notify_one();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(count.load(Ordering::SeqCst), 3);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(count.load(Ordering::SeqCst), 3);
        s.shutdown(Duration::ZERO).await;
    }

    #[tokio::test(start_paused = true)]
    async fn wakes_during_a_tick_cause_exactly_one_more_tick() {
        let count = counter();
        let tick = {
            let count = count.clone();
            move || {
                let count = count.clone();
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Ok(TickReport::done(1))
                }
            }
        };
        let wake = Arc::new(Notify::new());
        let mut s = Scheduler::new();
        s.spawn_loop(
            LoopSpec::new("jobs", Duration::from_secs(3600)),
            Some(wake.clone()),
            tick,
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(count.load(Ordering::SeqCst), 1, "first tick running");
        for _ in 0..5 {
            wake.notify_one();
        }
        // The first tick ends at 1 s, the follow-up runs 1 s..2 s.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert_eq!(count.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(
            count.load(Ordering::SeqCst),
            2,
            "exactly one follow-up tick"
        );
        s.shutdown(Duration::ZERO).await;
    }

    #[tokio::test(start_paused = true)]
    async fn more_pending_runs_again_without_waiting() {
        let count = counter();
        let tick = {
            let count = count.clone();
            move || {
                let count = count.clone();
                async move {
                    // Five full batches, then an empty one.
                    let n = count.fetch_add(1, Ordering::SeqCst) % 6;
                    Ok(if n < 5 {
                        TickReport::more_pending(100)
                    } else {
                        TickReport::done(0)
                    })
                }
            }
        };
        let mut s = Scheduler::new();
        s.spawn_loop(LoopSpec::new("drain", Duration::from_secs(60)), None, tick);
        let start = Instant::now();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(count.load(Ordering::SeqCst), 6);
        assert!(start.elapsed() <= Duration::from_millis(1));
        tokio::time::sleep(Duration::from_secs(70)).await;
        assert_eq!(count.load(Ordering::SeqCst), 12);
        s.shutdown(Duration::ZERO).await;
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_drains_a_tick_that_fits_in_the_grace() {
        let count = counter();
        let finished = Arc::new(AtomicBool::new(false));
        let tick = {
            let (count, finished) = (count.clone(), finished.clone());
            move || {
                let (count, finished) = (count.clone(), finished.clone());
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    finished.store(true, Ordering::SeqCst);
                    Ok(TickReport::more_pending(1))
                }
            }
        };
        let mut s = Scheduler::new();
        let idle = counter();
        s.spawn_loop(
            LoopSpec::new("idle", Duration::from_secs(60)),
            None,
            counting(&idle),
        );
        s.spawn_loop(
            LoopSpec::new("busy", Duration::from_secs(60))
                .with_tick_timeout(Duration::from_secs(30)),
            None,
            tick,
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let start = Instant::now();
        let report = s.shutdown(Duration::from_secs(5)).await;
        assert!(
            finished.load(Ordering::SeqCst),
            "the in-flight tick completed"
        );
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(1_500),
            "returned when the tick ended"
        );
        assert_eq!(report.drained, vec!["idle", "busy"]);
        assert!(report.aborted.is_empty());
        // `more` was reported, but no new tick starts after shutdown.
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert_eq!(idle.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_aborts_a_tick_that_outlasts_the_grace() {
        let finished = Arc::new(AtomicBool::new(false));
        let tick = {
            let finished = finished.clone();
            move || {
                let finished = finished.clone();
                async move {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    finished.store(true, Ordering::SeqCst);
                    Ok(TickReport::done(1))
                }
            }
        };
        let mut s = Scheduler::new();
        let quick = counter();
        s.spawn_loop(
            LoopSpec::new("quick", Duration::from_secs(5)),
            None,
            counting(&quick),
        );
        s.spawn_loop(
            LoopSpec::new("stuck", Duration::from_secs(5))
                .with_tick_timeout(Duration::from_secs(120)),
            None,
            tick,
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let start = Instant::now();
        let report = s.shutdown(Duration::from_secs(3)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert_eq!(report.drained, vec!["quick"]);
        assert_eq!(report.aborted, vec!["stuck"]);
        assert!(!report.is_clean());
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(
            !finished.load(Ordering::SeqCst),
            "the aborted tick never completed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn parent_token_and_drop_stop_the_loops() {
        let parent = CancellationToken::new();
        let count = counter();
        let mut s = Scheduler::with_cancellation(parent.clone());
        s.spawn_loop(
            LoopSpec::new("a", Duration::from_secs(1)),
            None,
            counting(&count),
        );
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(count.load(Ordering::SeqCst), 2);
        parent.cancel();
        assert!(s.cancellation_token().is_cancelled());
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(count.load(Ordering::SeqCst), 2);
        assert_eq!(s.loop_names(), vec!["a"]);
        assert!(s.shutdown(Duration::ZERO).await.is_clean());

        let count = counter();
        let mut s = Scheduler::new();
        s.spawn_loop(
            LoopSpec::new("b", Duration::from_secs(1)),
            None,
            counting(&count),
        );
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        drop(s);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    /// A loop body written as a trait implementation rather than a closure.
    struct Sweeper {
        swept: Arc<AtomicU64>,
    }

    impl Tick for Sweeper {
        async fn tick(&self) -> TickResult {
            self.swept.fetch_add(1, Ordering::SeqCst);
            Ok(TickReport::done(1))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn trait_implementations_work_as_loop_bodies() {
        let swept = counter();
        let mut s = Scheduler::new();
        let sweeper = Sweeper {
            swept: swept.clone(),
        };
        s.spawn_loop(
            LoopSpec::new("sweep", Duration::from_secs(1)),
            None,
            sweeper,
        );
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert_eq!(swept.load(Ordering::SeqCst), 3);
        s.shutdown(Duration::ZERO).await;
    }
}
