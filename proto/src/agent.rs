//! The agent protocol, written once for the host (which serves it) and the
//! agent (which calls it): registration, heartbeat and the work poll
//! ([`work`]), and the job reports: what an agent sends at the end of a
//! job (`POST /agents/jobs/{id}/result`) and with a CSR
//! (`POST /agents/jobs/{id}/csr`), and where a deployment is verified.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ErrorClass;

pub mod challenges;
pub mod work;

pub use challenges::{
    ChallengeAction, ChallengeReport, ChallengeReportAccepted, ChallengeReportState, ChallengeTask,
};
pub use work::{
    AgentJob, HeartbeatReply, HeartbeatRequest, JobCertificate, JobCertificateVersion, JobTarget,
    RegisterRequest, Registered, WorkQuery, WorkReply,
};

/// Where to probe a deployment (mirrors the WIT `endpoint` record of the
/// target contract): the TCP address to connect to and the name to ask for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct Endpoint {
    /// Host name or IP literal to connect to.
    pub host: String,
    /// TCP port to connect to.
    pub port: u16,
    /// Server name sent as SNI, so that servers hosting several names
    /// present the certificate for this one. An IP literal sends no SNI.
    pub server_name: String,
}

impl std::fmt::Display for Endpoint {
    /// `host:port (SNI name)`, as operators read it in verification details.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{} (SNI {})", self.host, self.port, self.server_name)
    }
}

/// A probe's verdict, whoever probed (agent or host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerificationStatus {
    /// The endpoint serves the expected certificate.
    Verified,
    /// The endpoint serves another certificate.
    Mismatch,
    /// The endpoint could not be reached.
    Unreachable,
}

impl VerificationStatus {
    /// `verified`, `mismatch` or `unreachable`.
    pub fn as_str(self) -> &'static str {
        match self {
            VerificationStatus::Verified => "verified",
            VerificationStatus::Mismatch => "mismatch",
            VerificationStatus::Unreachable => "unreachable",
        }
    }
}

/// How a job ended on the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResultOutcome {
    /// Done.
    Success,
    /// Failed (see `error`).
    Failure,
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultError {
    /// The class the host acts on: permanent classes fail the job for good,
    /// the others are retried.
    pub class: ErrorClass,
    /// What went wrong.
    pub message: String,
    /// The connector's retry-after hint (rate limits), in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u32>,
}

/// What the endpoint probe saw after a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Verification {
    /// Verdict.
    pub status: VerificationStatus,
    /// SHA-256 (hex) of the leaf certificate the endpoint served.
    pub observed_fingerprint: Option<String>,
    /// Details for operators.
    pub detail: Option<String>,
    /// Where the probe connected (kept for later re-verification).
    pub endpoint: Option<Endpoint>,
}

/// Body of `POST /agents/jobs/{id}/result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultRequest {
    /// Success or failure.
    pub outcome: ResultOutcome,
    /// What the connector changed (files written, services reloaded, ...).
    #[serde(default)]
    pub changed: Vec<String>,
    /// Required with `failure`, refused with `success`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ResultError>,
    /// Endpoint probe result, if one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// The lease attempt the result belongs to (from the work poll); when
    /// given, a result of an older attempt is refused with 409.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
}

impl ResultRequest {
    /// A success of `attempt`.
    pub fn success(attempt: i32, changed: Vec<String>) -> Self {
        ResultRequest {
            outcome: ResultOutcome::Success,
            changed,
            error: None,
            verification: None,
            attempt: Some(attempt),
        }
    }

    /// A failure of `attempt`.
    pub fn failure(
        attempt: i32,
        class: ErrorClass,
        message: impl Into<String>,
        retry_after_secs: Option<u32>,
    ) -> Self {
        ResultRequest {
            outcome: ResultOutcome::Failure,
            changed: Vec::new(),
            error: Some(ResultError {
                class,
                message: message.into(),
                retry_after_secs,
            }),
            verification: None,
            attempt: Some(attempt),
        }
    }
}

/// Answer of a result report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResultAccepted {
    /// The job.
    pub job_id: String,
    /// Its new status (`completed` or `failed`).
    pub status: String,
    /// Whether it will be retried (failures below the attempt budget).
    pub will_retry: bool,
    /// True when this report repeats one the host had already recorded
    /// (the first answer was lost): nothing was changed again.
    #[serde(default)]
    pub replayed: bool,
}

/// Body of `POST /agents/jobs/{id}/csr`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CsrRequest {
    /// PKCS#10 CSR, PEM, signed with the key the agent generated.
    pub csr_pem: String,
}

/// Answer of a CSR submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CsrAccepted {
    /// The job.
    pub job_id: String,
    /// Its status (`pending`: the host issues next).
    pub status: String,
    /// True when this CSR repeats one the host had already accepted.
    #[serde(default)]
    pub replayed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_round_trips_and_old_agents_still_parse() {
        let mut report = ResultRequest::failure(3, ErrorClass::RateLimited, "slow", Some(30));
        report.verification = Some(Verification {
            status: VerificationStatus::Unreachable,
            observed_fingerprint: None,
            detail: Some("refused".into()),
            endpoint: Some(Endpoint {
                host: "127.0.0.1".into(),
                port: 443,
                server_name: "a.example".into(),
            }),
        });
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["error"]["class"], "rate-limited");
        assert_eq!(json["error"]["retry_after_secs"], 30);
        let back: ResultRequest = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
        // A 1.0 agent sends no retry-after and no attempt.
        let old: ResultRequest = serde_json::from_str(
            r#"{"outcome":"failure","changed":[],"error":{"class":"transient","message":"x"}}"#,
        )
        .unwrap();
        assert_eq!(old.error.unwrap().retry_after_secs, None);
    }
}
