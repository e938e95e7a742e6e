//! The epoch ticker: advances the engine's epoch every tick while at least
//! one plugin call is running (the deadline callback and cooperative yields
//! run on epochs) and sleeps while none is, so an idle host or agent does
//! not wake a hundred times a second. A plain thread rather than a tokio
//! task: it must keep ticking while every tokio worker runs guest code.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::Thread;
use std::time::Duration;

use wasmtime::Engine;

use crate::error::RuntimeError;

/// Longest the ticker sleeps between checks when idle; wake-ups normally
/// come from [`EpochTicker::running`], this only bounds a missed one.
const IDLE_PARK: Duration = Duration::from_secs(1);

struct Shared {
    active: AtomicUsize,
    stop: AtomicBool,
    /// Epoch increments so far (for tests and diagnostics).
    ticks: AtomicU64,
}

/// Owns the ticker thread; stops it when dropped.
pub(crate) struct EpochTicker {
    shared: Arc<Shared>,
    thread: Thread,
}

/// Keeps the ticker ticking while it lives (one per call's store).
pub(crate) struct TickGuard(Arc<Shared>);

impl Drop for TickGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl EpochTicker {
    /// Starts the ticker thread for `engine` with a `tick` period.
    pub(crate) fn start(engine: Engine, tick: Duration) -> Result<EpochTicker, RuntimeError> {
        let shared = Arc::new(Shared {
            active: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
        });
        let state = shared.clone();
        let handle = std::thread::Builder::new()
            .name("certplane-epoch".into())
            .spawn(move || {
                while !state.stop.load(Ordering::Acquire) {
                    if state.active.load(Ordering::Acquire) == 0 {
                        // An unpark between the check and the park is kept
                        // as a token, so a call starting now is not missed.
                        std::thread::park_timeout(IDLE_PARK);
                        continue;
                    }
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                    state.ticks.fetch_add(1, Ordering::Relaxed);
                }
            })
            .map_err(|e| RuntimeError::Engine(format!("cannot start epoch ticker: {e}")))?;
        Ok(EpochTicker {
            shared,
            thread: handle.thread().clone(),
        })
    }

    /// Marks a call as running until the guard drops.
    pub(crate) fn running(&self) -> TickGuard {
        if self.shared.active.fetch_add(1, Ordering::AcqRel) == 0 {
            self.thread.unpark();
        }
        TickGuard(self.shared.clone())
    }

    /// Epoch increments so far.
    #[cfg(test)]
    pub(crate) fn ticks(&self) -> u64 {
        self.shared.ticks.load(Ordering::Relaxed)
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        Engine::new(&config).unwrap()
    }

    /// The epoch advances only while a guard is alive.
    #[test]
    fn ticks_only_while_a_call_runs() {
        let ticker = EpochTicker::start(engine(), Duration::from_millis(1)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(ticker.ticks(), 0, "ticked while idle");

        let guard = ticker.running();
        let second = ticker.running();
        std::thread::sleep(Duration::from_millis(50));
        let during = ticker.ticks();
        assert!(
            during >= 5,
            "only {during} ticks in 50 ms of a running call"
        );
        drop(guard);
        std::thread::sleep(Duration::from_millis(20));
        assert!(ticker.ticks() > during, "stopped with a call still running");

        drop(second);
        std::thread::sleep(Duration::from_millis(20));
        let after = ticker.ticks();
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            ticker.ticks() <= after + 1,
            "kept ticking after the last call"
        );
    }
}
