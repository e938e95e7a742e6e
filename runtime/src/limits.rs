//! Per-call resource limits and the store-side limiter that enforces them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default wall-clock deadline of one plugin call.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);
/// Default linear-memory cap of one plugin instance.
pub const DEFAULT_MEMORY_BYTES: u64 = 64 * 1024 * 1024;

/// Default global memory budget of a runtime: the sum of the memory caps of
/// the calls running at once. 1 GiB lets sixteen default-sized (64 MiB)
/// calls run together while keeping a host of modest size safe from a
/// burst of calls to a big plugin.
pub const DEFAULT_MEMORY_BUDGET_BYTES: u64 = 1024 * 1024 * 1024;

/// Most log lines one call may emit into the host's logs; the rest are
/// counted and reported in one "dropped" line when the call ends.
pub const DEFAULT_MAX_LOG_LINES: u32 = 1_000;
/// Most log bytes one call may emit into the host's logs.
pub const DEFAULT_MAX_LOG_BYTES: u64 = 256 * 1024;

/// Longest deadline any call may have, whatever the configuration says: a
/// guard against absurd operator settings.
pub const MAX_DEADLINE: Duration = Duration::from_secs(600);

/// Limits applied to every call of a plugin instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock budget of one call, covering both guest CPU time (enforced
    /// by epoch interruption) and time blocked in host calls such as HTTP
    /// (enforced by a timer around the call).
    pub deadline: Duration,
    /// Cap on the instance's linear memory, in bytes.
    pub memory_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: DEFAULT_DEADLINE,
            memory_bytes: DEFAULT_MEMORY_BYTES,
        }
    }
}

/// Tables can grow too; a guest has no business with more elements than this.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Store-side enforcement of [`Limits::memory_bytes`]. Records whether the cap
/// was hit so that the resulting trap can be reported as a memory-limit
/// error rather than a generic one.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    cap: usize,
    pub(crate) hit: bool,
}

impl MemoryLimiter {
    pub(crate) fn new(cap_bytes: u64) -> Self {
        MemoryLimiter {
            cap: usize::try_from(cap_bytes).unwrap_or(usize::MAX),
            hit: false,
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            // Refuse the growth (memory.grow returns -1) instead of trapping:
            // a guest that can cope with allocation failure may; one that
            // cannot aborts, and the flag tells us why.
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// The unit the memory budget counts in.
const MIB: u64 = 1024 * 1024;

/// The runtime-wide memory budget: each call holds its instance's memory
/// cap (rounded up to MiB) from before instantiation until its store is
/// gone, so the caps of the calls running at once never add up to more
/// than the budget. Calls beyond it wait (FIFO) rather than fail.
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    permits: Arc<Semaphore>,
    total_mib: u32,
}

/// Use of a runtime's memory budget at one moment, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudgetUsage {
    /// Bytes held by running calls (their memory caps, rounded up to MiB).
    pub in_use_bytes: u64,
    /// The budget, in bytes (rounded down to MiB).
    pub total_bytes: u64,
}

impl MemoryBudget {
    pub(crate) fn new(total_bytes: u64) -> Self {
        // Semaphore permits are counted in u32 by `acquire_many`; 4 PiB is
        // far beyond any real budget.
        let total_mib = u32::try_from(total_bytes / MIB).unwrap_or(u32::MAX);
        MemoryBudget {
            permits: Arc::new(Semaphore::new(total_mib as usize)),
            total_mib,
        }
    }

    /// MiB a call with a memory cap of `cap_bytes` holds.
    pub(crate) fn mib_for(cap_bytes: u64) -> u64 {
        cap_bytes.div_ceil(MIB)
    }

    /// Whether a call with cap `cap_bytes` can ever run under this budget.
    pub(crate) fn fits(&self, cap_bytes: u64) -> bool {
        Self::mib_for(cap_bytes) <= u64::from(self.total_mib)
    }

    /// Waits until `cap_bytes` of the budget are free and holds them until
    /// the permit is dropped. `None` when the cap can never fit (instances
    /// are checked at creation, so only a misconfigured caller sees it).
    pub(crate) async fn acquire(&self, cap_bytes: u64) -> Option<OwnedSemaphorePermit> {
        let mib = u32::try_from(Self::mib_for(cap_bytes)).ok()?;
        if mib > self.total_mib {
            return None;
        }
        // The semaphore is never closed, so this fails only if it were.
        self.permits.clone().acquire_many_owned(mib).await.ok()
    }

    pub(crate) fn usage(&self) -> MemoryBudgetUsage {
        let total = u64::from(self.total_mib);
        let free = self.permits.available_permits() as u64;
        MemoryBudgetUsage {
            in_use_bytes: total.saturating_sub(free) * MIB,
            total_bytes: total * MIB,
        }
    }
}
