//! Fault points: places inside job outcomes where a crash test aborts the
//! process on purpose, to prove that a host killed there loses nothing and
//! does nothing twice once restarted.
//!
//! Compiled in only with the `fault-points` cargo feature (test builds);
//! otherwise [`point`] is an empty inline function. With the feature,
//! `CERTPLANE_FAULT_POINT=<kind>.<step>` (e.g. `issued.version`) makes the
//! process abort (no unwinding, no destructors, no commit) the first time
//! that point is reached; `<kind>.<step>@N` aborts at the N-th time.
//!
//! Every point an outcome can reach is listed in [`POINTS`]; a unit test
//! checks the list against the code, and the crash tests iterate over it.

/// Outcome kinds, each committing through [`crate::store::Store::commit_outcome`]
/// (or, for the order receipt and notification deliveries, one statement).
pub const KINDS: &[&str] = &[
    "order_placed",
    "order_pending",
    "issued",
    "failed",
    "csr_requested",
    "csr_received",
    "deployed",
    "superseded",
    "verified",
    "revoked",
    "agent_result",
    "notification_sent",
    "notification_failed",
];

/// The steps of an outcome transaction, in statement order: after the
/// job's own UPDATE, after the certificate version (two statements), after
/// the follow-up jobs, after the audit rows, after the notification rows,
/// and after the commit.
pub const STEPS: &[&str] = &[
    "job",
    "version_row",
    "version",
    "follow_ups",
    "audit",
    "notifications",
    "committed",
];

/// Every fault point: `order_receipt.committed` (the CA's order id is
/// recorded in one statement before the outcome that moves the job to
/// Polling) plus `<kind>.<step>` for every outcome kind and step. Not every
/// outcome reaches every step (only `issued` records a version).
pub fn points() -> Vec<String> {
    let mut all = vec!["order_receipt.committed".to_string()];
    for kind in KINDS {
        for step in STEPS {
            all.push(format!("{kind}.{step}"));
        }
    }
    all
}

/// Marks fault point `<kind>.<step>`.
#[cfg(not(feature = "fault-points"))]
#[inline(always)]
pub fn point(_kind: &str, _step: &str) {}

/// Whether this build has fault points (the `fault-points` feature).
pub const ENABLED: bool = cfg!(feature = "fault-points");

/// Marks fault point `<kind>.<step>`: aborts the process when it is the
/// armed point (see the module documentation).
#[cfg(feature = "fault-points")]
pub fn point(kind: &str, step: &str) {
    armed::hit(kind, step);
}

#[cfg(feature = "fault-points")]
mod armed {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Armed {
        name: String,
        at_hit: u64,
        hits: AtomicU64,
    }

    fn armed() -> Option<&'static Armed> {
        static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
        ARMED
            .get_or_init(|| {
                let spec = std::env::var(super::ENV).ok()?;
                let (name, at_hit) = match spec.split_once('@') {
                    Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
                    None => (spec, 1),
                };
                Some(Armed {
                    name,
                    at_hit,
                    hits: AtomicU64::new(0),
                })
            })
            .as_ref()
    }

    pub(super) fn hit(kind: &str, step: &str) {
        let Some(armed) = armed() else { return };
        let name = &armed.name;
        if name.len() != kind.len() + 1 + step.len()
            || !name.starts_with(kind)
            || !name.ends_with(step)
        {
            return;
        }
        if armed.hits.fetch_add(1, Ordering::SeqCst) + 1 == armed.at_hit {
            // Straight to stderr: the process aborts next, before any log
            // subscriber could flush.
            eprintln!("fault point {name} reached: aborting");
            std::process::abort();
        }
    }
}

/// The environment variable that arms a fault point.
pub const ENV: &str = "CERTPLANE_FAULT_POINT";

/// Refuses to run armed without the feature, so a crash test can never
/// pass against a build that cannot crash where it asks.
pub fn check_build() -> Result<(), String> {
    match std::env::var(ENV) {
        Ok(spec) if !ENABLED => Err(format!(
            "{ENV}={spec} is set but this build has no fault points (build with --features fault-points)"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    /// Every `faults::point(kind, step)` call in the host's source names a
    /// listed kind and step, so the crash tests cover every point there is.
    #[test]
    fn every_point_in_the_source_is_listed() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut stack = vec![root];
        let mut seen = 0;
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") || path.ends_with("faults.rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                for (i, _) in text.match_indices("faults::point(") {
                    let args: String = text[i + 14..].chars().take_while(|c| *c != ')').collect();
                    for arg in args.split(',') {
                        let arg = arg.trim();
                        if let Some(lit) = arg.strip_prefix('"').and_then(|a| a.strip_suffix('"')) {
                            assert!(
                                super::KINDS.contains(&lit)
                                    || super::STEPS.contains(&lit)
                                    || lit == "order_receipt",
                                "{}: fault point part {lit:?} is not listed",
                                path.display()
                            );
                            seen += 1;
                        }
                    }
                }
            }
        }
        assert!(seen > 0, "no fault point found in the source");
    }
}
