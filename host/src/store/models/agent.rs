//! Agents and their retirement.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::store::codec::text_enum;
use crate::store::models::ActorType;

/// Id of the built-in sentinel agent (the host itself). Seeded by a
/// migration; host-executed jobs carry this `agent_id`; it can never be
/// retired.
pub const SENTINEL_AGENT_ID: &str = "host";

text_enum! {
    /// Life-cycle state of an agent.
    pub enum AgentStatus ("agent status") {
        /// Registered and allowed to work.
        Active => "active",
        /// Soft-retired: gets no work, heartbeats answer 410 Gone.
        Retired => "retired",
    }
}

/// An agent row.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Agent {
    /// Agent id (`"host"` for the sentinel, UUID text otherwise).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Hash of the agent credential (`None` for the sentinel).
    #[serde(skip)]
    pub credential_hash: Option<String>,
    /// True for built-in agents that can never be retired.
    pub sentinel: bool,
    /// Active or retired.
    pub status: AgentStatus,
    /// Last heartbeat received.
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// Registration time.
    pub created_at: DateTime<Utc>,
    /// Retirement time.
    pub retired_at: Option<DateTime<Utc>>,
    /// Why it was retired.
    pub retired_reason: Option<String>,
}

/// Input of [`crate::store::Store::register_agent`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewAgent {
    /// Display name.
    pub name: String,
    /// Hash of the agent's credential (the caller hashes).
    pub credential_hash: String,
}

/// What still depends on an agent (blocks a plain retirement).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AgentDependencies {
    /// Targets of the agent not retired.
    pub active_targets: i64,
    /// Active certificates whose key-holding or deployment target is an
    /// active target of the agent.
    pub active_certificates: i64,
    /// Open jobs (pending, awaiting CSR/approval, polling, running) routed to
    /// the agent, directly, through their target, or (awaiting CSR) through
    /// their certificate's target.
    pub pending_jobs: i64,
}

impl AgentDependencies {
    /// True when nothing depends on the agent.
    pub fn is_empty(&self) -> bool {
        self.active_targets == 0 && self.active_certificates == 0 && self.pending_jobs == 0
    }
}

/// Input of [`crate::store::Store::retire_agent`].
#[derive(Debug, Clone, PartialEq)]
pub struct RetireAgent {
    /// Retire even with dependencies: also retires the agent's targets (same
    /// timestamp and reason) and cancels its open jobs. Requires `reason`.
    pub force: bool,
    /// Why (required with `force`).
    pub reason: Option<String>,
    /// Who asks (audited).
    pub actor: String,
    /// Kind of actor.
    pub actor_type: ActorType,
    /// Notices queued with the retirement (`agent.retired`), only when it
    /// happens.
    pub notices: Vec<crate::store::Notice>,
    /// With `force`: the target the certificates whose keys the agent held
    /// move to (instead of being disabled). Another agent's target gets a
    /// new key there by a renewal made due at once; a target the host runs
    /// makes the host generate the key (`key_source` becomes `host`).
    pub move_to_target: Option<String>,
}

/// Result of a retirement request. Suggested HTTP mapping in brackets.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RetireOutcome {
    /// Retired now [200].
    Retired {
        /// The agent as retired.
        agent: Agent,
        /// Targets retired with it (force only).
        targets_retired: u64,
        /// Open jobs cancelled with it (force only).
        jobs_cancelled: u64,
        /// Certificates whose keys it held, disabled with
        /// `disabled_reason` (force without `move_to_target`).
        certificates_disabled: u64,
        /// Certificates whose keys it held, moved to `move_to_target` and
        /// due for a renewal there.
        certificates_moved: u64,
    },
    /// Was already retired; nothing changed [200, the agent as it is].
    AlreadyRetired {
        /// The agent.
        agent: Agent,
    },
    /// Dependencies block a plain retirement [409].
    Blocked(AgentDependencies),
    /// `force` without a non-empty `reason` [400].
    ReasonRequired,
    /// `move_to_target` is unusable (unknown, retired, on this agent, or
    /// given without `force`) [422]; nothing changed.
    BadMoveTarget(String),
    /// Sentinel agents cannot be retired, even with force [403].
    Sentinel,
    /// No such agent [404].
    NotFound,
}

/// Result of [`crate::store::Store::record_heartbeat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeartbeatOutcome {
    /// Recorded.
    Recorded,
    /// The agent is retired [410 Gone].
    Retired,
    /// No such agent.
    NotFound,
}
