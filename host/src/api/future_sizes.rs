//! What each parked agent long poll costs the host in memory: the futures
//! a poll holds while it waits. With ten thousand agents parked at once,
//! every kibibyte here is ten mebibytes of the host's resident set, so the
//! sizes are checked, not left to drift as the awaited store calls grow.

use std::mem::size_of;

/// The size of the future `f` returns, without calling it.
fn returned<F: FnOnce(A, B, C) -> R, A, B, C, R>(_: &F) -> usize {
    size_of::<R>()
}

/// Measured in the test profile, where futures are somewhat larger than in
/// release. Before the store calls were boxed the long poll's own future
/// was 7,896 bytes; the four `from_fn` layers it passed were 3,936 bytes
/// of futures (plus four per-layer allocations) before they became one.
const POLL_BUDGET: usize = 2 * 1024;
const GUARD_BUDGET: usize = 2 * 1024;

#[test]
fn a_parked_long_poll_holds_small_futures() {
    let poll = returned(&super::agents::poll_work);
    let guard = returned(&super::guard::guard);
    assert!(
        poll <= POLL_BUDGET,
        "the long poll's future is {poll} bytes (budget {POLL_BUDGET}): box the awaited call that grew it"
    );
    assert!(
        guard <= GUARD_BUDGET,
        "the request guard's future is {guard} bytes (budget {GUARD_BUDGET}): box the rarely awaited step that grew it"
    );
}
