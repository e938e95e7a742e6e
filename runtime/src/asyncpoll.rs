//! The polling rules for asynchronous CA orders, as one pure function.
//!
//! A connector never sleeps or loops: when an issuer's `submit` returns a
//! pending order, the host persists the order and asks [`plan_next_poll`]
//! when to poll it next; the answer is stored with the order, so any
//! replica, after any restart, continues the same schedule. This module
//! knows nothing about WebAssembly, orders or databases, and holds no state.
//!
//! # Rules
//!
//! * **Backoff.** Without a hint, the wait after answer 1, 2, 3, 4 and 5+ of
//!   an order is 5 s, 15 s, 45 s, 2 m 15 s and 5 m (the cap); see
//!   [`backoff_delay`]. Every wait consumes one step.
//! * **Jitter.** Every backoff wait is multiplied by a uniform factor in
//!   `[1 - jitter, 1 + jitter]`, ±20 % ([`DEFAULT_JITTER`]); see
//!   [`jittered`]. Hints are not jittered (the CA asked for that time).
//! * **Hints.** A retry-after hint (a pending answer's, or a rate limit's)
//!   replaces the backoff wait, clamped to
//!   [`MIN_RETRY_AFTER`]..=[`MAX_RETRY_AFTER`], so neither "retry now" nor
//!   `u32::MAX` seconds can break the schedule.
//! * **Transient errors** keep polling the same order on the backoff
//!   schedule; the caller keeps the error as the order's last error.
//! * **MaxWait.** A poll session lasts at most MaxWait (default 10 min,
//!   [`DEFAULT_MAX_WAIT`]) from the first pending answer. When the next
//!   wait would end after the session's deadline, the session ends as
//!   `max_wait_reached`: the order is *not* abandoned, the same order is
//!   polled again after that wait in a new session (deadline moved by
//!   MaxWait), and the backoff step carries on where it was, so a slow order
//!   is not hammered with 5 s polls on every new session.

use std::time::{Duration, SystemTime};

/// MaxWait of a poll session unless configured otherwise: 10 minutes.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(10 * 60);

/// Jitter applied to backoff waits: ±20 %.
pub const DEFAULT_JITTER: f64 = 0.2;

/// Backoff waits indexed by step; the last entry is the cap.
pub const BACKOFF_SCHEDULE: [Duration; 5] = [
    Duration::from_secs(5),
    Duration::from_secs(15),
    Duration::from_secs(45),
    Duration::from_secs(135),
    Duration::from_secs(300),
];

/// Smallest wait a hint can ask for: a connector answering "retry now"
/// cannot turn polling into a busy loop.
pub const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Largest wait a hint can ask for: one hour.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The backoff wait of a zero-based `step`, without jitter: 5 s, 15 s,
/// 45 s, 2 m 15 s, then 5 m for every later step.
#[must_use]
pub fn backoff_delay(step: u32) -> Duration {
    let last = BACKOFF_SCHEDULE.len() - 1;
    let index = usize::try_from(step).map_or(last, |s| s.min(last));
    BACKOFF_SCHEDULE[index]
}

/// `delay` multiplied by `1 + jitter * (2 * unit - 1)`: a uniform `unit` in
/// `[0, 1)` gives a uniform factor in `[1 - jitter, 1 + jitter]`. Inputs are
/// sanitised: `jitter` is clamped to `[0, 1]` (NaN is 0), `unit` to
/// `[0, 1]` (NaN is 0.5, the neutral value).
#[must_use]
pub fn jittered(delay: Duration, jitter: f64, unit: f64) -> Duration {
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
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

/// What [`plan_next_poll`] needs to know.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PollInput {
    /// Now.
    pub now: SystemTime,
    /// Backoff step of the order (0 after its first pending answer).
    pub step: u32,
    /// Retry-after hint of the answer, if any.
    pub hint: Option<Duration>,
    /// Deadline of the current session; `None` when the order was just
    /// placed (the session starts now).
    pub session_deadline: Option<SystemTime>,
    /// MaxWait of a session.
    pub max_wait: Duration,
    /// A uniform random number in `[0, 1)` for the jitter.
    pub unit: f64,
}

/// When to poll next, and what to store with the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollPlan {
    /// The next poll.
    pub next_poll_at: SystemTime,
    /// The step to store with the order.
    pub next_step: u32,
    /// The session deadline to store with the order.
    pub session_deadline: SystemTime,
    /// The session reached MaxWait and a new one starts with this plan.
    pub max_wait_reached: bool,
}

/// The polling rules (see the module documentation).
#[must_use]
pub fn plan_next_poll(input: PollInput) -> PollPlan {
    let deadline = input
        .session_deadline
        .unwrap_or_else(|| add(input.now, input.max_wait));
    let wait = match input.hint {
        Some(hint) => hint.clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER),
        None => jittered(backoff_delay(input.step), DEFAULT_JITTER, input.unit),
    };
    let next_poll_at = add(input.now, wait);
    let next_step = input.step.saturating_add(1);
    if next_poll_at <= deadline {
        PollPlan {
            next_poll_at,
            next_step,
            session_deadline: deadline,
            max_wait_reached: false,
        }
    } else {
        PollPlan {
            next_poll_at,
            next_step,
            session_deadline: add(next_poll_at, input.max_wait),
            max_wait_reached: true,
        }
    }
}

fn add(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_add(d).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(step: u32, hint: Option<u64>) -> PollInput {
        PollInput {
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
            step,
            hint: hint.map(Duration::from_secs),
            session_deadline: None,
            max_wait: DEFAULT_MAX_WAIT,
            unit: 0.5,
        }
    }

    fn wait(plan: &PollPlan, input: &PollInput) -> Duration {
        plan.next_poll_at.duration_since(input.now).unwrap()
    }

    #[test]
    fn backoff_schedule_then_cap() {
        let secs: Vec<u64> = (0..8).map(|s| backoff_delay(s).as_secs()).collect();
        assert_eq!(secs, [5, 15, 45, 135, 300, 300, 300, 300]);
        assert_eq!(backoff_delay(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let d = Duration::from_secs(100);
        assert_eq!(jittered(d, 0.2, 0.0), Duration::from_secs(80));
        assert_eq!(jittered(d, 0.2, 1.0), Duration::from_secs(120));
        assert_eq!(jittered(d, 0.2, f64::NAN), d);
        assert_eq!(jittered(d, f64::NAN, 0.9), d);
        for i in 0..100 {
            let j = jittered(d, DEFAULT_JITTER, f64::from(i) / 100.0);
            assert!(j >= Duration::from_secs(80) && j <= Duration::from_secs(120));
        }
    }

    #[test]
    fn first_answer_starts_the_session_and_follows_the_backoff() {
        let i = input(0, None);
        let plan = plan_next_poll(i);
        assert_eq!(wait(&plan, &i), Duration::from_secs(5));
        assert_eq!(plan.next_step, 1);
        assert_eq!(plan.session_deadline, i.now + DEFAULT_MAX_WAIT);
        assert!(!plan.max_wait_reached);
    }

    #[test]
    fn hints_replace_the_backoff_and_are_clamped() {
        let i = input(3, Some(20));
        assert_eq!(wait(&plan_next_poll(i), &i), Duration::from_secs(20));
        let i = input(0, Some(0));
        assert_eq!(wait(&plan_next_poll(i), &i), MIN_RETRY_AFTER);
        let i = input(0, Some(u64::from(u32::MAX)));
        let plan = plan_next_poll(i);
        assert_eq!(wait(&plan, &i), MAX_RETRY_AFTER);
        // An hour is past the ten-minute MaxWait: the session ends, and
        // the same order is polled after the hour in a new session.
        assert!(plan.max_wait_reached);
        assert_eq!(plan.session_deadline, plan.next_poll_at + DEFAULT_MAX_WAIT);
    }

    #[test]
    fn max_wait_ends_the_session_without_abandoning_the_order() {
        let mut i = input(0, None);
        let mut plan = plan_next_poll(i);
        let mut sessions = 0;
        for _ in 0..20 {
            i = PollInput {
                now: plan.next_poll_at,
                step: plan.next_step,
                session_deadline: Some(plan.session_deadline),
                ..i
            };
            plan = plan_next_poll(i);
            assert!(plan.next_poll_at > i.now);
            if plan.max_wait_reached {
                sessions += 1;
                // The step carries on at the cap instead of restarting.
                assert_eq!(wait(&plan, &i), Duration::from_secs(300));
            }
        }
        assert!(sessions >= 2, "MaxWait must fire for a slow order");
    }

    #[test]
    fn a_wait_ending_exactly_at_the_deadline_stays_in_the_session() {
        let mut i = input(0, Some(600));
        i.session_deadline = Some(i.now + Duration::from_secs(600));
        assert!(!plan_next_poll(i).max_wait_reached);
        i.hint = Some(Duration::from_secs(601));
        assert!(plan_next_poll(i).max_wait_reached);
    }
}
