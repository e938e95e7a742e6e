//! Per-call resource limits and the store-side limiter that enforces them.

use std::time::Duration;

/// Default wall-clock deadline of one plugin call.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);
/// Default linear-memory cap of one plugin instance.
pub const DEFAULT_MEMORY_BYTES: u64 = 64 * 1024 * 1024;

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
