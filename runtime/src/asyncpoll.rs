//! Polling driver for asynchronous CA orders (the seed's `asyncpoll` contract).
//!
//! A connector never sleeps or loops: when an issuer's `submit` returns a
//! pending order, the host drives the waiting with [`poll_until`], calling the
//! connector's `poll` once per attempt. This module is generic over that poll
//! step, so it knows nothing about WebAssembly, orders or databases.
//!
//! # Contract
//!
//! * **Backoff.** The wait after attempt 1, 2, 3, 4 and 5+ of a fresh session
//!   is 5 s, 15 s, 45 s, 2 m 15 s and 5 m (the cap); see [`backoff_delay`].
//! * **Jitter.** Every backoff wait is multiplied by a uniform factor in
//!   `[1 - jitter, 1 + jitter]`, ±20 % by default ([`DEFAULT_JITTER`]);
//!   `jitter = 0.0` gives exact timing. See [`jittered`].
//! * **MaxWait.** A session ends as [`PollOutcome::StillPending`] with
//!   [`PendingReason::MaxWait`] once its deadline (session start + MaxWait,
//!   measured on tokio's clock) is reached. MaxWait resolves as per-call
//!   ([`PollPolicy::max_wait`]) > process-wide ([`set_default_max_wait`]) >
//!   [`DEFAULT_MAX_WAIT`] (10 min); see [`resolve_max_wait`].
//! * **Cancellation** by the caller through a [`CancellationToken`] ends the
//!   session as `StillPending` with [`PendingReason::Cancelled`].
//! * **Outcomes.** [`PollOutcome::Done`], [`PollOutcome::Failed`] or
//!   [`PollOutcome::StillPending`]; transient errors keep polling and the last
//!   one is kept in the `StillPending` outcome.
//! * **Retry-after.** A pending (or transient) step may carry a hint that
//!   replaces the next backoff wait, bounded by the time left before the
//!   deadline.
//!
//! # Timing rules
//!
//! * The first poll is made at session start, or after
//!   [`PollPolicy::first_wait`] when one is set. Without a first wait a
//!   session always polls at least once, even with a MaxWait of zero, so a
//!   tiny MaxWait can never starve an order of polls.
//! * Every later poll is started only if the wait before it ended strictly
//!   before the deadline. A wait that would cross the deadline is shortened to
//!   end exactly at it, and the session then ends as `StillPending(MaxWait)`
//!   **without** polling again: no poll is ever started at or after the
//!   deadline.
//! * A poll already in flight is never interrupted, neither by the deadline
//!   nor by cancellation; its result is honoured (`Ready` still yields
//!   `Done`, `Fatal` still yields `Failed`). The poll itself is expected to be
//!   bounded by its own call deadline (the sandbox enforces one).
//! * Cancellation is checked before every poll and observed promptly during
//!   every wait. When cancellation and the deadline coincide, cancellation
//!   wins.
//! * A retry-after hint is used as given (no jitter: the CA asked for that
//!   time), raised to at least [`MIN_RETRY_AFTER`] so a misbehaving connector
//!   cannot make the host spin, and shortened to the time left before the
//!   deadline.
//! * Every wait, hinted or not, consumes one backoff step: the wait after
//!   attempt `n` of a session uses step `start_step + n - 1`.
//!
//! # Resuming a session
//!
//! When a session ends `StillPending`, the host persists the order together
//! with [`PollOutcome::StillPending::next_step`] and
//! [`PollOutcome::StillPending::resume_after`]. A later session for the same
//! order (after MaxWait, a cancellation or a host restart) passes them back
//! through [`PollPolicy::resume`]: it waits out the rest of the interrupted
//! wait and then continues the backoff where it stopped instead of restarting
//! at 5 s. A slow order (hours at some CAs) is therefore not hammered with
//! 5 s / 15 s / 45 s polls on every resume.
//!
//! # Tracing
//!
//! A `debug` event is emitted for every wait (fields `attempt`, `step`,
//! `delay_ms`, `hinted`) and for every transient error; an `info` event for
//! the end of a session (fields `outcome`, `attempts`, `waited_ms`, and for
//! `StillPending` also `reason`, `next_step`, `resume_after_ms`).

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

/// MaxWait of a session when neither the call nor the process overrides it:
/// 10 minutes.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(10 * 60);

/// Jitter applied to backoff waits by [`PollPolicy::default`]: ±20 %.
pub const DEFAULT_JITTER: f64 = 0.2;

/// Backoff waits of a fresh session, indexed by backoff step (see
/// [`backoff_delay`]). The last entry is the cap used for every later step.
pub const BACKOFF_SCHEDULE: [Duration; 5] = [
    Duration::from_secs(5),
    Duration::from_secs(15),
    Duration::from_secs(45),
    Duration::from_secs(135),
    Duration::from_secs(300),
];

/// Smallest wait a retry-after hint can ask for: 1 second. A shorter hint
/// (including zero) is raised to this, so a connector that keeps answering
/// "retry now" cannot turn the session into a busy loop.
pub const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Instants further away than this are clamped to it (tokio uses the same
/// horizon for its own "far future"), so huge durations never overflow.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// Sentinel stored in [`PROCESS_MAX_WAIT_NANOS`] for "no process-wide
/// override".
const NO_OVERRIDE: u64 = u64::MAX;

/// Process-wide MaxWait override in nanoseconds, or [`NO_OVERRIDE`].
static PROCESS_MAX_WAIT_NANOS: AtomicU64 = AtomicU64::new(NO_OVERRIDE);

/// The backoff wait for a zero-based backoff `step`.
///
/// Step 0 is the wait after the first poll of a fresh session: steps 0, 1, 2,
/// 3 and 4+ give 5 s, 15 s, 45 s, 2 m 15 s and 5 m (the cap), without jitter.
/// Pure and total: any `step` is valid.
#[must_use]
pub fn backoff_delay(step: u32) -> Duration {
    let last = BACKOFF_SCHEDULE.len() - 1;
    let index = usize::try_from(step).map_or(last, |s| s.min(last));
    BACKOFF_SCHEDULE[index]
}

/// Applies jitter to `delay` using the random number `unit`.
///
/// Returns `delay` multiplied by `1 + jitter * (2 * unit - 1)`, i.e. a factor
/// that sweeps `[1 - jitter, 1 + jitter]` linearly as `unit` goes from 0 to 1.
/// With `unit` drawn uniformly from `[0, 1)` the factor is uniform, which is
/// how [`poll_until`] calls it.
///
/// Inputs are sanitised rather than rejected: `jitter` is clamped to
/// `[0, 1]` (NaN counts as 0) and `unit` to `[0, 1]` (NaN counts as 0.5, the
/// neutral value). `jitter == 0` returns `delay` exactly. A result too large
/// for a [`Duration`] saturates to [`Duration::MAX`].
#[must_use]
pub fn jittered(delay: Duration, jitter: f64, unit: f64) -> Duration {
    let jitter = sanitize_jitter(jitter);
    if jitter == 0.0 {
        return delay;
    }
    let unit = if unit.is_nan() {
        0.5
    } else {
        unit.clamp(0.0, 1.0)
    };
    let factor = 1.0 + jitter * (2.0 * unit - 1.0);
    Duration::try_from_secs_f64(delay.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

/// Resolves a session's MaxWait from its two possible overrides.
///
/// Priority: `per_call` > `process_wide` > [`DEFAULT_MAX_WAIT`]. Pure; pass
/// [`default_max_wait_override`] as `process_wide` to use the process-wide
/// setting (which is what [`PollPolicy::effective_max_wait`] does).
#[must_use]
pub fn resolve_max_wait(per_call: Option<Duration>, process_wide: Option<Duration>) -> Duration {
    per_call.or(process_wide).unwrap_or(DEFAULT_MAX_WAIT)
}

/// Sets (`Some`) or clears (`None`) the process-wide MaxWait override.
///
/// It applies to sessions started afterwards whose [`PollPolicy::max_wait`]
/// is `None`; a session reads it once, when it starts. The value is kept with
/// nanosecond precision; durations above roughly 584 years saturate.
pub fn set_default_max_wait(max_wait: Option<Duration>) {
    let nanos = match max_wait {
        None => NO_OVERRIDE,
        Some(d) => u64::try_from(d.as_nanos()).map_or(NO_OVERRIDE - 1, |n| n.min(NO_OVERRIDE - 1)),
    };
    PROCESS_MAX_WAIT_NANOS.store(nanos, Ordering::Relaxed);
}

/// The current process-wide MaxWait override, if one is set (see
/// [`set_default_max_wait`]).
#[must_use]
pub fn default_max_wait_override() -> Option<Duration> {
    match PROCESS_MAX_WAIT_NANOS.load(Ordering::Relaxed) {
        NO_OVERRIDE => None,
        nanos => Some(Duration::from_nanos(nanos)),
    }
}

/// How one poll session behaves. Cheap to copy; build it with
/// [`PollPolicy::default`] and the `with_*` / [`resume`](PollPolicy::resume)
/// methods, or with a struct literal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PollPolicy {
    /// Per-call MaxWait (e.g. configured per issuer). `None` falls back to the
    /// process-wide override, then to [`DEFAULT_MAX_WAIT`]; see
    /// [`resolve_max_wait`].
    pub max_wait: Option<Duration>,
    /// Jitter fraction applied to every backoff wait: each wait is multiplied
    /// by a uniform factor in `[1 - jitter, 1 + jitter]`. `0.0` gives exact
    /// timing. Clamped to `[0, 1]`; NaN counts as `0`. Retry-after hints are
    /// never jittered.
    pub jitter: f64,
    /// Backoff step of the first wait of this session: `0` for a fresh order
    /// (first wait 5 s), or the [`next_step`](PollOutcome::StillPending::next_step)
    /// reported by the previous session of the same order when resuming.
    pub start_step: u32,
    /// Wait before the first poll, e.g. the retry-after hint returned by
    /// `submit`, or the [`resume_after`](PollOutcome::StillPending::resume_after)
    /// of the previous session. Never jittered, counted against MaxWait, and
    /// observed for cancellation. If it reaches the deadline the session ends
    /// `StillPending(MaxWait)` without polling. `None` (or zero) polls at once.
    pub first_wait: Option<Duration>,
}

impl Default for PollPolicy {
    /// A fresh session: MaxWait from the process-wide override or the default,
    /// ±20 % jitter, backoff from step 0, first poll immediately.
    fn default() -> Self {
        Self {
            max_wait: None,
            jitter: DEFAULT_JITTER,
            start_step: 0,
            first_wait: None,
        }
    }
}

impl PollPolicy {
    /// Sets the per-call MaxWait (`None`: use the process-wide setting or the
    /// default).
    #[must_use]
    pub fn with_max_wait(mut self, max_wait: Option<Duration>) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// Sets the jitter fraction (`0.0` for exact timing).
    #[must_use]
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets the wait before the first poll.
    #[must_use]
    pub fn with_first_wait(mut self, first_wait: Option<Duration>) -> Self {
        self.first_wait = first_wait;
        self
    }

    /// Continues an earlier session of the same order: starts the backoff at
    /// `next_step` and waits `resume_after` before the first poll. Pass the
    /// fields of the previous [`PollOutcome::StillPending`] (shortened by the
    /// time that has passed since, if the caller tracks it).
    #[must_use]
    pub fn resume(mut self, next_step: u32, resume_after: Duration) -> Self {
        self.start_step = next_step;
        self.first_wait = Some(resume_after);
        self
    }

    /// The MaxWait this policy gives a session started now:
    /// [`resolve_max_wait`] of [`max_wait`](Self::max_wait) and the current
    /// process-wide override.
    #[must_use]
    pub fn effective_max_wait(&self) -> Duration {
        resolve_max_wait(self.max_wait, default_max_wait_override())
    }
}

/// Result of one poll attempt, returned by the step closure of
/// [`poll_until`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollStep<T, E> {
    /// The order is complete: the session ends with [`PollOutcome::Done`].
    Ready(T),
    /// The order is still being processed. `retry_after`, if given, replaces
    /// the next backoff wait (see the module docs for its bounds).
    Pending {
        /// The CA's hint of when to poll again, measured from now.
        retry_after: Option<Duration>,
    },
    /// The poll failed in a way worth retrying (network error, 5xx, rate
    /// limit). Polling continues and `error` is kept as the session's last
    /// error. `retry_after` works as for [`PollStep::Pending`], e.g. for a
    /// rate limit that names its own retry time.
    Transient {
        /// What went wrong with this attempt.
        error: E,
        /// The CA's hint of when to poll again, measured from now.
        retry_after: Option<Duration>,
    },
    /// The order failed for good (rejected, unauthorized, ...): the session
    /// ends with [`PollOutcome::Failed`].
    Fatal(E),
}

impl<T, E> PollStep<T, E> {
    /// `Pending` without a retry-after hint.
    #[must_use]
    pub fn pending() -> Self {
        Self::Pending { retry_after: None }
    }

    /// `Pending` with a retry-after hint.
    #[must_use]
    pub fn pending_after(retry_after: Duration) -> Self {
        Self::Pending {
            retry_after: Some(retry_after),
        }
    }

    /// `Transient` without a retry-after hint.
    #[must_use]
    pub fn transient(error: E) -> Self {
        Self::Transient {
            error,
            retry_after: None,
        }
    }
}

/// Why a session ended while the order was still pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PendingReason {
    /// The session's MaxWait deadline was reached.
    MaxWait,
    /// The caller cancelled the session.
    Cancelled,
}

impl fmt::Display for PendingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MaxWait => "max wait reached",
            Self::Cancelled => "cancelled",
        })
    }
}

/// How a poll session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollOutcome<T, E> {
    /// A poll returned [`PollStep::Ready`].
    Done(T),
    /// A poll returned [`PollStep::Fatal`].
    Failed(E),
    /// The order is still pending; the caller should persist it and resume
    /// later (see [`PollPolicy::resume`]).
    StillPending {
        /// Whether MaxWait or cancellation ended the session.
        reason: PendingReason,
        /// The most recent [`PollStep::Transient`] error of this session, if
        /// any. A later `Pending` answer does not clear it.
        last_error: Option<E>,
        /// Polls made in this session (0 if it ended before the first poll).
        attempts: u32,
        /// Time from session start to its end on tokio's clock: waits plus
        /// the time spent inside polls.
        waited: Duration,
        /// Backoff step a resumed session should start from
        /// ([`PollPolicy::start_step`]).
        next_step: u32,
        /// Unserved part of the wait that was in progress when the session
        /// ended: how long after the end of this session the next poll is due.
        /// Zero if no wait was pending.
        resume_after: Duration,
    },
}

/// How a wait ended.
enum WaitEnd {
    /// The full wait elapsed before the deadline: poll again.
    Elapsed,
    /// The session must end; the payload is the unserved rest of the wait.
    Stop(PendingReason, Duration),
}

/// Runs one poll session for an order until it is done, fails, reaches its
/// MaxWait or is cancelled.
///
/// `step(attempt)` performs one poll; `attempt` counts from 1 within this
/// session. Between polls the session waits per `policy`: backoff with
/// jitter, or the retry-after hint of the previous step. The full rules
/// (deadline, cancellation, hints, resumption) are in the module docs.
///
/// The returned future is `Send` when `F`, `Fut`, `T` and `E` are. Timing
/// uses [`tokio::time`], so tests can drive it with a paused clock.
pub async fn poll_until<T, E, F, Fut>(
    policy: &PollPolicy,
    cancel: &CancellationToken,
    mut step: F,
) -> PollOutcome<T, E>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = PollStep<T, E>>,
    E: fmt::Debug,
{
    let start = Instant::now();
    let max_wait = policy.effective_max_wait();
    let deadline = add_clamped(start, max_wait);
    let jitter = sanitize_jitter(policy.jitter);
    let mut next_step = policy.start_step;
    let mut attempts: u32 = 0;
    let mut last_error: Option<E> = None;

    tracing::debug!(
        max_wait_ms = millis(max_wait),
        jitter,
        start_step = next_step,
        "asyncpoll: session started"
    );

    let still_pending = |reason: PendingReason,
                         last_error: Option<E>,
                         attempts: u32,
                         next_step: u32,
                         resume_after: Duration| {
        let waited = Instant::now().saturating_duration_since(start);
        tracing::info!(
            outcome = "still_pending",
            reason = %reason,
            attempts,
            waited_ms = millis(waited),
            next_step,
            resume_after_ms = millis(resume_after),
            "asyncpoll: session ended with the order still pending"
        );
        PollOutcome::StillPending {
            reason,
            last_error,
            attempts,
            waited,
            next_step,
            resume_after,
        }
    };

    if let Some(first) = policy.first_wait.filter(|d| !d.is_zero()) {
        tracing::debug!(
            attempt = 0u32,
            step = next_step,
            delay_ms = millis(first),
            hinted = true,
            "asyncpoll: waiting before the first poll"
        );
        if let WaitEnd::Stop(reason, rest) = wait(first, deadline, cancel).await {
            return still_pending(reason, last_error, attempts, next_step, rest);
        }
    }

    loop {
        if cancel.is_cancelled() {
            return still_pending(
                PendingReason::Cancelled,
                last_error,
                attempts,
                next_step,
                Duration::ZERO,
            );
        }
        attempts = attempts.saturating_add(1);
        let hint = match step(attempts).await {
            PollStep::Ready(value) => {
                tracing::info!(
                    outcome = "done",
                    attempts,
                    waited_ms = millis(Instant::now().saturating_duration_since(start)),
                    "asyncpoll: order completed"
                );
                return PollOutcome::Done(value);
            }
            PollStep::Fatal(error) => {
                tracing::info!(
                    outcome = "failed",
                    attempts,
                    waited_ms = millis(Instant::now().saturating_duration_since(start)),
                    error = ?error,
                    "asyncpoll: order failed"
                );
                return PollOutcome::Failed(error);
            }
            PollStep::Pending { retry_after } => retry_after,
            PollStep::Transient { error, retry_after } => {
                tracing::debug!(attempt = attempts, error = ?error, "asyncpoll: transient poll error");
                last_error = Some(error);
                retry_after
            }
        };

        let (delay, hinted) = match hint {
            Some(hint) => (hint.max(MIN_RETRY_AFTER), true),
            None => (
                jittered(backoff_delay(next_step), jitter, rand::random::<f64>()),
                false,
            ),
        };
        tracing::debug!(
            attempt = attempts,
            step = next_step,
            delay_ms = millis(delay),
            hinted,
            "asyncpoll: waiting before the next poll"
        );
        next_step = next_step.saturating_add(1);

        if let WaitEnd::Stop(reason, rest) = wait(delay, deadline, cancel).await {
            return still_pending(reason, last_error, attempts, next_step, rest);
        }
    }
}

/// Waits `delay` from now, shortened to end at `deadline`, or until `cancel`
/// fires. Returns [`WaitEnd::Elapsed`] only if the wait ended strictly before
/// the deadline without cancellation.
async fn wait(delay: Duration, deadline: Instant, cancel: &CancellationToken) -> WaitEnd {
    let now = Instant::now();
    let wake = add_clamped(now, delay);
    if cancel.is_cancelled() {
        return WaitEnd::Stop(PendingReason::Cancelled, delay);
    }
    if now >= deadline {
        return WaitEnd::Stop(PendingReason::MaxWait, delay);
    }
    tokio::select! {
        biased;
        () = cancel.cancelled() => {
            let rest = wake.saturating_duration_since(Instant::now());
            return WaitEnd::Stop(PendingReason::Cancelled, rest);
        }
        () = sleep_until(wake.min(deadline)) => {}
    }
    let now = Instant::now();
    if now >= deadline {
        WaitEnd::Stop(PendingReason::MaxWait, wake.saturating_duration_since(now))
    } else {
        WaitEnd::Elapsed
    }
}

/// `instant + duration`, clamped to [`FAR_FUTURE`] after `instant`.
fn add_clamped(instant: Instant, duration: Duration) -> Instant {
    let duration = duration.min(FAR_FUTURE);
    instant
        .checked_add(duration)
        .or_else(|| instant.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(instant)
}

/// Clamps a jitter fraction to `[0, 1]`, mapping NaN to 0.
fn sanitize_jitter(jitter: f64) -> f64 {
    if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    }
}

/// Whole milliseconds of `d` for log fields, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex as StdMutex};

    /// Serialises the tests that set the process-wide override or depend on
    /// it being unset. Every other test passes an explicit per-call MaxWait,
    /// so it is immune to the process-wide value.
    static PROCESS_WIDE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    const S: fn(u64) -> Duration = Duration::from_secs;

    type Outcome = PollOutcome<u32, String>;

    /// Exact timing, an explicit per-call MaxWait.
    fn exact(max_wait: Duration) -> PollPolicy {
        PollPolicy::default()
            .with_jitter(0.0)
            .with_max_wait(Some(max_wait))
    }

    /// Runs a session whose step answers from `script` (by attempt, the last
    /// entry repeating) and records the tokio instant of every poll relative
    /// to the session start.
    async fn run_script(
        policy: &PollPolicy,
        cancel: &CancellationToken,
        script: Vec<PollStep<u32, String>>,
    ) -> (Outcome, Vec<Duration>) {
        let start = Instant::now();
        let times = Arc::new(StdMutex::new(Vec::new()));
        let seen = Arc::clone(&times);
        let outcome = poll_until(policy, cancel, move |attempt| {
            let index = usize::try_from(attempt - 1).unwrap().min(script.len() - 1);
            let answer = script[index].clone();
            let mut seen = seen.lock().unwrap();
            assert_eq!(usize::try_from(attempt).unwrap(), seen.len() + 1);
            seen.push(start.elapsed());
            async move { answer }
        })
        .await;
        let times = times.lock().unwrap().clone();
        (outcome, times)
    }

    fn deltas(times: &[Duration]) -> Vec<Duration> {
        times
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]))
            .collect()
    }

    fn secs(list: &[u64]) -> Vec<Duration> {
        list.iter().copied().map(S).collect()
    }

    #[test]
    fn backoff_schedule_matches_contract() {
        let expected = [5, 15, 45, 135, 300, 300, 300];
        for (step, want) in expected.iter().enumerate() {
            assert_eq!(backoff_delay(u32::try_from(step).unwrap()), S(*want));
        }
        assert_eq!(backoff_delay(1_000), S(300));
        assert_eq!(backoff_delay(u32::MAX), S(300));
    }

    #[test]
    fn jitter_zero_is_exact() {
        for unit in [0.0, 0.3, 0.5, 0.999, 1.0, f64::NAN] {
            assert_eq!(jittered(S(45), 0.0, unit), S(45));
        }
        assert_eq!(jittered(Duration::MAX, 0.0, 1.0), Duration::MAX);
    }

    #[test]
    fn jitter_maps_unit_onto_factor_range() {
        assert_eq!(jittered(S(100), 0.2, 0.0), S(80));
        assert_eq!(jittered(S(100), 0.2, 0.5), S(100));
        assert_eq!(jittered(S(100), 0.2, 1.0), S(120));
        assert_eq!(jittered(S(100), 0.2, 0.25), S(90));
    }

    #[test]
    fn jitter_inputs_are_sanitised() {
        // Out-of-range units clamp to the ends of the range.
        assert_eq!(jittered(S(100), 0.2, -3.0), S(80));
        assert_eq!(jittered(S(100), 0.2, 7.0), S(120));
        assert_eq!(jittered(S(100), 0.2, f64::NAN), S(100));
        // Jitter clamps to [0, 1]; NaN and negative mean none.
        assert_eq!(jittered(S(100), f64::NAN, 0.0), S(100));
        assert_eq!(jittered(S(100), -0.5, 0.0), S(100));
        assert_eq!(jittered(S(100), 5.0, 1.0), S(200));
        assert_eq!(jittered(S(100), 5.0, 0.0), Duration::ZERO);
        // Overflow saturates instead of panicking.
        assert_eq!(jittered(Duration::MAX, 0.2, 1.0), Duration::MAX);
    }

    #[test]
    fn jitter_samples_stay_within_bounds_and_spread() {
        for step in 0..6 {
            let base = backoff_delay(step).as_secs_f64();
            let (mut lo, mut hi) = (f64::MAX, f64::MIN);
            let mut sum = 0.0;
            let n = 20_000;
            for _ in 0..n {
                let d = jittered(backoff_delay(step), DEFAULT_JITTER, rand::random::<f64>());
                let factor = d.as_secs_f64() / base;
                assert!((0.8..=1.2).contains(&factor), "factor {factor}");
                lo = lo.min(factor);
                hi = hi.max(factor);
                sum += factor;
            }
            // Uniform over [0.8, 1.2]: the extremes are approached and the
            // mean sits in the middle.
            assert!(lo < 0.81 && hi > 1.19, "range [{lo}, {hi}]");
            let mean = sum / f64::from(n);
            assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
        }
    }

    #[test]
    fn max_wait_resolution_priority() {
        assert_eq!(resolve_max_wait(None, None), DEFAULT_MAX_WAIT);
        assert_eq!(DEFAULT_MAX_WAIT, S(600));
        assert_eq!(resolve_max_wait(None, Some(S(60))), S(60));
        assert_eq!(resolve_max_wait(Some(S(120)), None), S(120));
        assert_eq!(resolve_max_wait(Some(S(120)), Some(S(60))), S(120));
        assert_eq!(
            resolve_max_wait(Some(Duration::ZERO), Some(S(60))),
            Duration::ZERO
        );
    }

    #[tokio::test(start_paused = true)]
    async fn process_wide_override_is_read_and_cleared() {
        let _guard = PROCESS_WIDE.lock().await;
        assert_eq!(default_max_wait_override(), None);
        assert_eq!(PollPolicy::default().effective_max_wait(), DEFAULT_MAX_WAIT);

        set_default_max_wait(Some(Duration::from_millis(61_500)));
        assert_eq!(
            default_max_wait_override(),
            Some(Duration::from_millis(61_500))
        );
        assert_eq!(
            PollPolicy::default().effective_max_wait(),
            Duration::from_millis(61_500)
        );
        assert_eq!(exact(S(120)).effective_max_wait(), S(120));

        // A session without a per-call value uses the process-wide one:
        // polls at 0, 5, 20, then the 45 s wait is cut at 61.5 s.
        let policy = PollPolicy::default().with_jitter(0.0);
        let (outcome, times) = run_script(
            &policy,
            &CancellationToken::new(),
            vec![PollStep::pending()],
        )
        .await;
        assert_eq!(times, secs(&[0, 5, 20]));
        assert!(matches!(
            outcome,
            PollOutcome::StillPending { reason: PendingReason::MaxWait, attempts: 3, waited, .. }
                if waited == Duration::from_millis(61_500)
        ));

        // Per-call beats process-wide in a real session too.
        let (outcome, _) = run_script(
            &exact(S(120)),
            &CancellationToken::new(),
            vec![PollStep::pending()],
        )
        .await;
        assert!(matches!(
            outcome,
            PollOutcome::StillPending { waited, .. } if waited == S(120)
        ));

        // Huge values saturate rather than wrap.
        set_default_max_wait(Some(Duration::MAX));
        assert!(default_max_wait_override().unwrap() > S(86_400 * 365 * 500));

        set_default_max_wait(None);
        assert_eq!(default_max_wait_override(), None);
        assert_eq!(PollPolicy::default().effective_max_wait(), DEFAULT_MAX_WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn default_max_wait_ends_session_at_ten_minutes() {
        let _guard = PROCESS_WIDE.lock().await;
        let policy = PollPolicy::default().with_jitter(0.0);
        let (outcome, times) = run_script(
            &policy,
            &CancellationToken::new(),
            vec![PollStep::pending()],
        )
        .await;
        // Polls at 0, 5, 20, 65, 200, 500; the next 300 s wait would end at
        // 800 s, so it is cut at 600 s and 200 s of it remain.
        assert_eq!(times, secs(&[0, 5, 20, 65, 200, 500]));
        assert_eq!(
            outcome,
            PollOutcome::StillPending {
                reason: PendingReason::MaxWait,
                last_error: None,
                attempts: 6,
                waited: S(600),
                next_step: 6,
                resume_after: S(200),
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn exact_waits_with_zero_jitter() {
        let (outcome, times) = run_script(
            &exact(S(3_600)),
            &CancellationToken::new(),
            vec![PollStep::pending()],
        )
        .await;
        assert_eq!(
            deltas(&times)[..7],
            secs(&[5, 15, 45, 135, 300, 300, 300])[..]
        );
        // 0, 5, 20, 65, 200, 500, 800, ..., 3500: 16 polls before 1 h.
        assert_eq!(times.len(), 16);
        assert!(matches!(
            outcome,
            PollOutcome::StillPending { attempts: 16, .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn jittered_waits_stay_within_twenty_percent() {
        let policy = PollPolicy::default().with_max_wait(Some(S(4 * 3_600)));
        for _ in 0..20 {
            let (_, times) = run_script(
                &policy,
                &CancellationToken::new(),
                vec![PollStep::pending()],
            )
            .await;
            for (i, delta) in deltas(&times).into_iter().enumerate() {
                let base = backoff_delay(u32::try_from(i).unwrap()).as_secs_f64();
                let got = delta.as_secs_f64();
                // tokio's timer has millisecond resolution.
                assert!(
                    got >= base * 0.8 && got <= base * 1.2 + 0.002,
                    "wait {i}: {got} s for base {base} s"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn wait_ending_exactly_at_deadline_does_not_poll() {
        let (outcome, times) = run_script(
            &exact(S(20)),
            &CancellationToken::new(),
            vec![PollStep::pending()],
        )
        .await;
        assert_eq!(times, secs(&[0, 5]));
        assert_eq!(
            outcome,
            PollOutcome::StillPending {
                reason: PendingReason::MaxWait,
                last_error: None,
                attempts: 2,
                waited: S(20),
                next_step: 2,
                resume_after: Duration::ZERO,
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ends_at_max_wait_keeping_last_transient_error() {
        let script = vec![
            PollStep::transient("first".to_string()),
            PollStep::pending(),
            PollStep::transient("second".to_string()),
            PollStep::pending(),
        ];
        let start = Instant::now();
        let (outcome, times) = run_script(&exact(S(100)), &CancellationToken::new(), script).await;
        // Transient errors follow the normal backoff: 0, 5, 20, 65; the 135 s
        // wait is cut at 100 s.
        assert_eq!(times, secs(&[0, 5, 20, 65]));
        assert_eq!(start.elapsed(), S(100));
        assert_eq!(
            outcome,
            PollOutcome::StillPending {
                reason: PendingReason::MaxWait,
                last_error: Some("second".to_string()),
                attempts: 4,
                waited: S(100),
                next_step: 4,
                resume_after: S(100),
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn max_wait_of_zero_still_polls_once() {
        let (outcome, times) = run_script(
            &exact(Duration::ZERO),
            &CancellationToken::new(),
            vec![PollStep::transient("boom".to_string())],
        )
        .await;
        assert_eq!(times, secs(&[0]));
        assert_eq!(
            outcome,
            PollOutcome::StillPending {
                reason: PendingReason::MaxWait,
                last_error: Some("boom".to_string()),
                attempts: 1,
                waited: Duration::ZERO,
                next_step: 1,
                resume_after: S(5),
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slow_poll_crossing_deadline_is_not_followed_by_another() {
        let start = Instant::now();
        let calls = Arc::new(StdMutex::new(0u32));
        let seen = Arc::clone(&calls);
        let outcome: Outcome = poll_until(&exact(S(60)), &CancellationToken::new(), |_| {
            *seen.lock().unwrap() += 1;
            async {
                tokio::time::sleep(S(70)).await;
                PollStep::pending()
            }
        })
        .await;
        assert_eq!(*calls.lock().unwrap(), 1);
        assert_eq!(start.elapsed(), S(70));
        assert!(matches!(
            outcome,
            PollOutcome::StillPending { reason: PendingReason::MaxWait, attempts: 1, waited, resume_after, .. }
                if waited == S(70) && resume_after == S(5)
        ));

        // A slow poll that completes after the deadline still counts.
        let outcome: Outcome = poll_until(&exact(S(60)), &CancellationToken::new(), |_| async {
            tokio::time::sleep(S(70)).await;
            PollStep::Ready(7)
        })
        .await;
        assert_eq!(outcome, PollOutcome::Done(7));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_hint_replaces_next_wait_without_jitter() {
        // Full jitter would make any backoff wait visibly inexact; the hinted
        // waits stay exact.
        let policy = PollPolicy::default()
            .with_jitter(0.2)
            .with_max_wait(Some(S(3_600)));
        let script = vec![
            PollStep::pending_after(S(7)),
            PollStep::Transient {
                error: "rate limited".to_string(),
                retry_after: Some(S(42)),
            },
            PollStep::Ready(1),
        ];
        let (outcome, times) = run_script(&policy, &CancellationToken::new(), script).await;
        assert_eq!(times, secs(&[0, 7, 49]));
        assert_eq!(outcome, PollOutcome::Done(1));

        // A hint consumes its backoff step: the wait after it is step 1.
        let script = vec![
            PollStep::pending_after(S(7)),
            PollStep::pending(),
            PollStep::Ready(1),
        ];
        let (_, times) = run_script(&exact(S(3_600)), &CancellationToken::new(), script).await;
        assert_eq!(deltas(&times), secs(&[7, 15]));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_hint_is_bounded_by_remaining_time() {
        let script = vec![PollStep::pending(), PollStep::pending_after(S(3_600))];
        let (outcome, times) = run_script(&exact(S(60)), &CancellationToken::new(), script).await;
        assert_eq!(times, secs(&[0, 5]));
        assert_eq!(
            outcome,
            PollOutcome::StillPending {
                reason: PendingReason::MaxWait,
                last_error: None,
                attempts: 2,
                waited: S(60),
                next_step: 2,
                // Hint due at 5 + 3600 s; the session ended at 60 s.
                resume_after: S(3_545),
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tiny_retry_after_hint_is_raised_to_minimum() {
        let script = vec![
            PollStep::pending_after(Duration::ZERO),
            PollStep::pending_after(Duration::from_millis(10)),
            PollStep::Ready(3),
        ];
        let (outcome, times) = run_script(&exact(S(60)), &CancellationToken::new(), script).await;
        assert_eq!(deltas(&times), vec![MIN_RETRY_AFTER, MIN_RETRY_AFTER]);
        assert_eq!(outcome, PollOutcome::Done(3));
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_mid_wait_ends_promptly() {
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(S(12)).await;
            trigger.cancel();
        });
        let start = Instant::now();
        let (outcome, times) = run_script(
            &exact(S(600)),
            &cancel,
            vec![
                PollStep::transient("flaky".to_string()),
                PollStep::pending(),
            ],
        )
        .await;
        // Polls at 0 and 5; cancelled 7 s into the 15 s wait.
        assert_eq!(times, secs(&[0, 5]));
        assert_eq!(start.elapsed(), S(12));
        assert_eq!(
            outcome,
            PollOutcome::StillPending {
                reason: PendingReason::Cancelled,
                last_error: Some("flaky".to_string()),
                attempts: 2,
                waited: S(12),
                next_step: 2,
                resume_after: S(8),
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_before_start_makes_no_poll() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let (outcome, times) = run_script(&exact(S(600)), &cancel, vec![PollStep::Ready(1)]).await;
        assert!(times.is_empty());
        assert_eq!(
            outcome,
            PollOutcome::StillPending {
                reason: PendingReason::Cancelled,
                last_error: None,
                attempts: 0,
                waited: Duration::ZERO,
                next_step: 0,
                resume_after: Duration::ZERO,
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn poll_in_flight_finishes_after_cancellation() {
        // Cancelled while the poll runs, which then succeeds: the result wins.
        let cancel = CancellationToken::new();
        let outcome: Outcome = poll_until(&exact(S(600)), &cancel, |_| {
            let cancel = cancel.clone();
            async move {
                tokio::time::sleep(S(2)).await;
                cancel.cancel();
                tokio::time::sleep(S(1)).await;
                PollStep::Ready(9)
            }
        })
        .await;
        assert_eq!(outcome, PollOutcome::Done(9));

        // Cancelled while the poll runs, which is still pending: no wait, no
        // further poll; the scheduled wait is reported for resumption.
        let cancel = CancellationToken::new();
        let start = Instant::now();
        let outcome: Outcome = poll_until(&exact(S(600)), &cancel, |_| {
            let cancel = cancel.clone();
            async move {
                cancel.cancel();
                PollStep::pending()
            }
        })
        .await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(
            outcome,
            PollOutcome::StillPending {
                reason: PendingReason::Cancelled,
                last_error: None,
                attempts: 1,
                waited: Duration::ZERO,
                next_step: 1,
                resume_after: S(5),
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn done_after_pending_attempts() {
        let script = vec![
            PollStep::pending(),
            PollStep::transient("blip".to_string()),
            PollStep::Ready(42),
        ];
        let start = Instant::now();
        let (outcome, times) = run_script(&exact(S(600)), &CancellationToken::new(), script).await;
        assert_eq!(times, secs(&[0, 5, 20]));
        assert_eq!(start.elapsed(), S(20));
        assert_eq!(outcome, PollOutcome::Done(42));
    }

    #[tokio::test(start_paused = true)]
    async fn fatal_error_fails_session() {
        let script = vec![
            PollStep::transient("blip".to_string()),
            PollStep::Fatal("rejected".to_string()),
            PollStep::Ready(1),
        ];
        let (outcome, times) = run_script(&exact(S(600)), &CancellationToken::new(), script).await;
        assert_eq!(times, secs(&[0, 5]));
        assert_eq!(outcome, PollOutcome::Failed("rejected".to_string()));
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_are_counted_from_one() {
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let outcome: Outcome = poll_until(&exact(S(600)), &CancellationToken::new(), |attempt| {
            log.lock().unwrap().push(attempt);
            async move {
                if attempt == 4 {
                    PollStep::Ready(attempt)
                } else {
                    PollStep::pending()
                }
            }
        })
        .await;
        assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(outcome, PollOutcome::Done(4));
    }

    #[tokio::test(start_paused = true)]
    async fn resume_continues_backoff_from_later_step() {
        let policy = exact(S(3_600)).resume(3, Duration::ZERO);
        let (_, times) = run_script(
            &policy,
            &CancellationToken::new(),
            vec![PollStep::pending()],
        )
        .await;
        assert_eq!(times[0], Duration::ZERO);
        assert_eq!(deltas(&times)[..3], secs(&[135, 300, 300])[..]);
    }

    #[tokio::test(start_paused = true)]
    async fn resume_round_trip_serves_the_rest_of_the_wait() {
        // First session: polls at 0, 5, 20, 65; ends at 100 s with 100 s of
        // the 135 s wait unserved.
        let (first, _) = run_script(
            &exact(S(100)),
            &CancellationToken::new(),
            vec![PollStep::pending()],
        )
        .await;
        let PollOutcome::StillPending {
            next_step,
            resume_after,
            ..
        } = first
        else {
            panic!("expected StillPending, got {first:?}");
        };
        assert_eq!((next_step, resume_after), (4, S(100)));

        // Second session resumes: first poll after the unserved 100 s, then
        // the backoff carries on at the cap.
        let policy = exact(S(1_000)).resume(next_step, resume_after);
        let (outcome, times) = run_script(
            &policy,
            &CancellationToken::new(),
            vec![PollStep::pending(), PollStep::pending(), PollStep::Ready(5)],
        )
        .await;
        assert_eq!(times, secs(&[100, 400, 700]));
        assert_eq!(outcome, PollOutcome::Done(5));
    }

    #[tokio::test(start_paused = true)]
    async fn first_wait_reaching_deadline_makes_no_poll() {
        let policy = exact(S(60)).with_first_wait(Some(S(90)));
        let (outcome, times) =
            run_script(&policy, &CancellationToken::new(), vec![PollStep::Ready(1)]).await;
        assert!(times.is_empty());
        assert_eq!(
            outcome,
            PollOutcome::StillPending {
                reason: PendingReason::MaxWait,
                last_error: None,
                attempts: 0,
                waited: S(60),
                next_step: 0,
                resume_after: S(30),
            }
        );

        // A first wait is not jittered and delays the first poll.
        let policy = PollPolicy::default()
            .with_max_wait(Some(S(60)))
            .with_first_wait(Some(S(30)));
        let (outcome, times) =
            run_script(&policy, &CancellationToken::new(), vec![PollStep::Ready(1)]).await;
        assert_eq!(times, secs(&[30]));
        assert_eq!(outcome, PollOutcome::Done(1));
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_during_first_wait() {
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(S(10)).await;
            trigger.cancel();
        });
        let policy = exact(S(600)).resume(2, S(45));
        let (outcome, times) = run_script(&policy, &cancel, vec![PollStep::Ready(1)]).await;
        assert!(times.is_empty());
        assert_eq!(
            outcome,
            PollOutcome::StillPending {
                reason: PendingReason::Cancelled,
                last_error: None,
                attempts: 0,
                waited: S(10),
                next_step: 2,
                resume_after: S(35),
            }
        );
    }

    #[test]
    fn session_future_is_send() {
        fn assert_send<X: Send>(_: &X) {}
        let policy = PollPolicy::default();
        let cancel = CancellationToken::new();
        let fut = poll_until(&policy, &cancel, |_| async {
            PollStep::<u32, String>::pending()
        });
        assert_send(&fut);
    }
}
