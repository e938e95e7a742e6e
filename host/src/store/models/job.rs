//! Jobs: the unit of work claimed by host replicas and agents.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::store::codec::text_enum;

text_enum! {
    /// Where a job is in its life cycle. The legal moves between these are in
    /// [`crate::store::job_state`].
    pub enum JobStatus ("job status") {
        /// Waiting to be claimed once `run_at` has come.
        Pending => "pending",
        /// Waiting for the agent holding the key to submit a CSR; returned in
        /// place (not claimed) to that agent.
        AwaitingCsr => "awaiting_csr",
        /// Waiting for a human to approve it (policy).
        AwaitingApproval => "awaiting_approval",
        /// An order is placed at an asynchronous CA; polled from `next_poll_at` on.
        Polling => "polling",
        /// Claimed by `lease_owner` until `lease_expires_at`.
        Running => "running",
        /// Done (terminal).
        Completed => "completed",
        /// Failed; returns to `Pending` at `run_at` while `attempts < max_attempts`.
        Failed => "failed",
        /// Cancelled (terminal).
        Cancelled => "cancelled",
    }
}

impl JobStatus {
    /// `Completed` and `Cancelled`: nothing moves a job out of these. (A
    /// `Failed` job is terminal only once its attempt budget is spent.)
    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Cancelled)
    }
}

text_enum! {
    /// What a job does.
    pub enum JobType ("job type") {
        /// First issuance of a certificate.
        Issuance => "issuance",
        /// Renewal of an issued certificate.
        Renewal => "renewal",
        /// Deploy a certificate version to one target.
        Deployment => "deployment",
        /// Probe the deployed endpoint and compare the served fingerprint.
        Verification => "verification",
        /// Revoke a certificate version at its CA.
        Revocation => "revocation",
    }
}

impl JobType {
    /// `Issuance` and `Renewal`: the jobs that issue a version, at most one
    /// open per certificate, counted by its `open_issuance`.
    pub fn issues(self) -> bool {
        matches!(self, JobType::Issuance | JobType::Renewal)
    }
}

/// A job row.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Job {
    /// UUID text.
    pub id: String,
    /// What the job does.
    pub job_type: JobType,
    /// Current state.
    pub status: JobStatus,
    /// Certificate the job is about, if any.
    pub certificate_id: Option<String>,
    /// Target the job deploys to / verifies, if any.
    pub target_id: Option<String>,
    /// Executor: `"host"` for host-side work, an agent id for agent work,
    /// `None` for "the agent of `target_id`".
    pub agent_id: Option<String>,
    /// Job that spawned this one (e.g. issuance → deployment).
    pub parent_job_id: Option<String>,
    /// Certificate version this job deploys/verifies/revokes.
    pub certificate_version_id: Option<String>,
    /// Free-form job input.
    #[sqlx(json(nullable))]
    pub payload: Option<Value>,
    /// Attempts so far; counted when the job is claimed.
    pub attempts: i32,
    /// Attempt budget.
    pub max_attempts: i32,
    /// Next attempt time.
    pub run_at: DateTime<Utc>,
    /// Who holds (or last held) the lease.
    pub lease_owner: Option<String>,
    /// When the current lease expires (only while `Running`).
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Last error, for operators.
    pub last_error: Option<String>,
    /// CSR submitted by the agent (PEM).
    pub csr_pem: Option<String>,
    /// CA-side order id of an asynchronous issuance.
    pub order_id: Option<String>,
    /// Opaque connector state of that order (string; JSON recommended).
    pub order_state: Option<String>,
    /// When the order is next polled.
    pub next_poll_at: Option<DateTime<Utc>>,
    /// MaxWait deadline of the current poll session.
    pub poll_deadline_at: Option<DateTime<Utc>>,
    /// Result of a verification job.
    #[sqlx(json(nullable))]
    pub verification_result: Option<Value>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Start of the current/last attempt.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached Completed, Failed or Cancelled.
    pub finished_at: Option<DateTime<Utc>>,
}

/// Payload keys the host keeps for itself (a sealed private key while an
/// order is pending); never shown through the API.
pub const PRIVATE_PAYLOAD_KEYS: &[&str] = &["sealed_key"];

impl Job {
    /// The payload without host-private keys, for API views.
    pub fn public_payload(&self) -> Option<Value> {
        let mut payload = self.payload.clone()?;
        if let Value::Object(map) = &mut payload {
            for key in PRIVATE_PAYLOAD_KEYS {
                map.remove(*key);
            }
        }
        Some(payload)
    }

    /// The lease token of a claimed job: required to renew, complete or fail
    /// it. `None` unless the job is `Running` with an owner.
    pub fn lease(&self) -> Option<JobLease> {
        match (&self.status, &self.lease_owner) {
            (JobStatus::Running, Some(owner)) => Some(JobLease {
                job_id: self.id.clone(),
                owner: owner.clone(),
                attempt: self.attempts,
            }),
            _ => None,
        }
    }
}

/// Proof of a claim: (job, owner, attempt). A worker whose lease was reaped
/// and whose job was claimed again cannot complete it: the attempt differs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct JobLease {
    /// The job.
    pub job_id: String,
    /// The lease owner (store instance id or agent id).
    pub owner: String,
    /// The attempt number counted by the claim.
    pub attempt: i32,
}

/// Input of [`crate::store::Store::create_job`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// What the job does.
    pub job_type: JobType,
    /// Initial status: `Pending` (default), `AwaitingCsr` or `AwaitingApproval`.
    pub status: JobStatus,
    /// Certificate, if any.
    pub certificate_id: Option<String>,
    /// Target, if any.
    pub target_id: Option<String>,
    /// Executor. `None`: the agent of `target_id` if there is one, else the
    /// host (`"host"`), resolved when the row is inserted.
    pub agent_id: Option<String>,
    /// Spawning job.
    pub parent_job_id: Option<String>,
    /// Certificate version concerned.
    pub certificate_version_id: Option<String>,
    /// Free-form input.
    pub payload: Option<Value>,
    /// Attempt budget (default 5).
    pub max_attempts: i32,
    /// First attempt time (`None`: now).
    pub run_at: Option<DateTime<Utc>>,
}

impl NewJob {
    /// A pending job of this type, runnable now, 5 attempts, host-routed
    /// unless a target or agent is set.
    pub fn new(job_type: JobType) -> Self {
        NewJob {
            job_type,
            status: JobStatus::Pending,
            certificate_id: None,
            target_id: None,
            agent_id: None,
            parent_job_id: None,
            certificate_version_id: None,
            payload: None,
            max_attempts: 5,
            run_at: None,
        }
    }

    /// Sets the certificate.
    pub fn certificate(mut self, id: impl Into<String>) -> Self {
        self.certificate_id = Some(id.into());
        self
    }

    /// Sets the target.
    pub fn target(mut self, id: impl Into<String>) -> Self {
        self.target_id = Some(id.into());
        self
    }

    /// Sets the executing agent.
    pub fn agent(mut self, id: impl Into<String>) -> Self {
        self.agent_id = Some(id.into());
        self
    }

    /// Sets the initial status.
    pub fn status(mut self, status: JobStatus) -> Self {
        self.status = status;
        self
    }

    /// Sets the first attempt time.
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Sets the payload.
    pub fn payload(mut self, payload: Value) -> Self {
        self.payload = Some(payload);
        self
    }
}

/// Optional column changes applied together with a conditional status
/// transition ([`crate::store::Store::transition_job`]). `None` leaves a
/// column as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobUpdate {
    /// Sets `last_error`.
    pub last_error: Option<String>,
    /// Sets `run_at` (next attempt time).
    pub run_at: Option<DateTime<Utc>>,
    /// Sets `csr_pem`.
    pub csr_pem: Option<String>,
    /// Sets `order_id`.
    pub order_id: Option<String>,
    /// Sets `order_state`.
    pub order_state: Option<String>,
    /// Sets `next_poll_at`.
    pub next_poll_at: Option<DateTime<Utc>>,
    /// Sets `poll_deadline_at`.
    pub poll_deadline_at: Option<DateTime<Utc>>,
    /// Sets `verification_result`.
    pub verification_result: Option<Value>,
    /// Sets `certificate_version_id`.
    pub certificate_version_id: Option<String>,
    /// Sets `payload`.
    pub payload: Option<Value>,
}

/// How a claimed job failed ([`crate::store::Store::fail_job`]).
#[derive(Debug, Clone, PartialEq)]
pub struct JobFailure {
    /// Error text kept in `last_error`.
    pub error: String,
    /// Permanent (e.g. the CA rejected the request): no more attempts.
    pub permanent: bool,
    /// Retry no earlier than this (e.g. a rate-limit's retry-after) instead
    /// of the exponential backoff.
    pub retry_at: Option<DateTime<Utc>>,
}

impl JobFailure {
    /// A transient failure, retried with backoff while the budget lasts.
    pub fn transient(error: impl Into<String>) -> Self {
        JobFailure {
            error: crate::store::codec::storable(&error.into()).into_owned(),
            permanent: false,
            retry_at: None,
        }
    }

    /// A permanent failure: the job stays `Failed`.
    pub fn permanent(error: impl Into<String>) -> Self {
        JobFailure {
            error: crate::store::codec::storable(&error.into()).into_owned(),
            permanent: true,
            retry_at: None,
        }
    }
}

/// Filter of [`crate::store::Store::list_jobs`]; all conditions are ANDed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFilter {
    /// Only this status.
    pub status: Option<JobStatus>,
    /// Only this type.
    pub job_type: Option<JobType>,
    /// Only jobs of this certificate.
    pub certificate_id: Option<String>,
    /// Only jobs with this `agent_id`.
    pub agent_id: Option<String>,
    /// At most this many rows (default 100), newest first.
    pub limit: Option<u32>,
    /// Rows to skip first (paging).
    pub offset: Option<u64>,
}
