//! The job state machine: which status changes are legal. Every change is
//! applied as one conditional UPDATE (`WHERE status = from`) by the
//! repository, so two actors can never both win the same move.
//!
//! ```text
//! Pending ──claim──▶ Running ──▶ Completed
//!    │  ▲               │ ├────▶ Failed ──retry (attempts < max)──▶ Pending
//!    │  └──release──────┘ ├────▶ Polling ──claim poll──▶ Running
//!    │                    └────▶ AwaitingCsr / AwaitingApproval
//! AwaitingCsr ──CSR arrives──▶ Pending
//! AwaitingApproval ──approved──▶ Pending
//! any non-terminal ──▶ Cancelled
//! ```

use crate::store::models::JobStatus;

/// True when `from → to` is a legal transition.
pub fn can_transition(from: JobStatus, to: JobStatus) -> bool {
    use JobStatus::*;
    if from.is_terminal() || from == to {
        return false;
    }
    matches!(
        (from, to),
        (_, Cancelled)
            | (Pending, Running | AwaitingCsr | AwaitingApproval)
            | (AwaitingCsr, Pending | Failed)
            | (AwaitingApproval, Pending | Failed)
            | (
                Running,
                Completed | Failed | Polling | Pending | AwaitingCsr | AwaitingApproval
            )
            | (Polling, Running | Completed | Failed)
            | (Failed, Pending)
    )
}

/// Every legal transition, for documentation and tests.
pub fn legal_transitions() -> Vec<(JobStatus, JobStatus)> {
    let mut out = Vec::new();
    for &from in JobStatus::ALL {
        for &to in JobStatus::ALL {
            if can_transition(from, to) {
                out.push((from, to));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobStatus::*;

    #[test]
    fn terminal_states_are_final() {
        for &to in JobStatus::ALL {
            assert!(!can_transition(Completed, to));
            assert!(!can_transition(Cancelled, to));
        }
    }

    #[test]
    fn main_path_is_legal() {
        assert!(can_transition(Pending, Running));
        assert!(can_transition(Running, Completed));
        assert!(can_transition(Running, Failed));
        assert!(can_transition(Failed, Pending));
        assert!(can_transition(AwaitingCsr, Pending));
        assert!(can_transition(Running, Polling));
        assert!(can_transition(Polling, Running));
        assert!(!can_transition(Completed, Pending));
        assert!(!can_transition(Pending, Completed));
        assert!(!can_transition(Failed, Completed));
    }
}
