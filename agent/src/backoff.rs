//! Reconnect backoff: exponential with "equal jitter" (each delay is drawn
//! from the upper half of the current step), capped.
//!
//! Hand-written rather than a crate: it is a dozen lines, the agent needs
//! it only between whole poll cycles (no retry-wrapper of futures), and the
//! jitter spreads many agents reconnecting to a restarted host.

use std::time::Duration;

use rand::Rng as _;

use crate::config::BackoffConfig;

/// The delays between failed attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Starts at `config.initial_ms`, doubles up to `config.max_secs`.
    pub fn new(config: BackoffConfig) -> Backoff {
        let initial = Duration::from_millis(config.initial_ms);
        let max = Duration::from_secs(config.max_secs).max(initial);
        Backoff {
            initial,
            max,
            step: initial,
        }
    }

    /// The next delay: a random duration in `[step/2, step]`; the step then
    /// doubles, up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        let jitter_ms = rand::rng().random_range(0..=half.as_millis().max(1) as u64);
        half + Duration::from_millis(jitter_ms)
    }

    /// Back to the initial step after a success.
    pub fn reset(&mut self) {
        self.step = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_jittered_and_cap() {
        let mut b = Backoff::new(BackoffConfig {
            initial_ms: 1000,
            max_secs: 8,
        });
        let steps = [1000u64, 2000, 4000, 8000, 8000, 8000];
        for step in steps {
            let d = b.next_delay().as_millis() as u64;
            assert!(
                d >= step / 2 && d <= step + 1,
                "{d} not in [{}, {step}]",
                step / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1001));
    }

    #[test]
    fn jitter_spreads_delays() {
        let config = BackoffConfig {
            initial_ms: 10_000,
            max_secs: 10,
        };
        let delays: std::collections::BTreeSet<_> =
            (0..20).map(|_| Backoff::new(config).next_delay()).collect();
        assert!(delays.len() > 5, "delays were not jittered: {delays:?}");
    }
}
