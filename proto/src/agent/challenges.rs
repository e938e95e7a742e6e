//! http-01 challenges an agent serves (from its web server's webroot, or
//! from its own listener, as its `[challenges]` configuration says): the
//! tasks a work poll hands out (`WorkReply::challenges`) and the agent's
//! report on one (`POST /agents/jobs/{job_id}/challenges/{challenge_id}`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What the agent is to do with a challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChallengeAction {
    /// Publish the token (write the file, or serve it from the agent's
    /// listener), check it is served, report `ready` or `failed`.
    Publish,
    /// Stop serving the token (delete the file; a missing one is fine),
    /// report `withdrawn`.
    Withdraw,
}

/// One http-01 challenge routed to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChallengeTask {
    /// The job that presented it (the host's issuance job).
    pub job_id: String,
    /// The challenge's id within that job.
    pub challenge_id: String,
    /// The DNS name being validated: the `Host` the CA will ask for.
    pub identifier: String,
    /// The file name under `/.well-known/acme-challenge/` (base64url).
    pub token: String,
    /// The file's content.
    pub key_authorization: String,
    /// Publish or withdraw.
    pub action: ChallengeAction,
}

/// Where a challenge stands, as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChallengeReportState {
    /// The token is written and the local web server serves it.
    Ready,
    /// The token could not be published or is not served; see `message`.
    Failed,
    /// The token file is gone.
    Withdrawn,
}

impl ChallengeReportState {
    /// `ready`, `failed` or `withdrawn` (the host's challenge states).
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeReportState::Ready => "ready",
            ChallengeReportState::Failed => "failed",
            ChallengeReportState::Withdrawn => "withdrawn",
        }
    }
}

/// Body of `POST /agents/jobs/{job_id}/challenges/{challenge_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChallengeReport {
    /// The new state.
    pub state: ChallengeReportState,
    /// Why it failed, or anything worth keeping with the challenge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Answer of a challenge report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChallengeReportAccepted {
    /// The job.
    pub job_id: String,
    /// The challenge.
    pub challenge_id: String,
    /// The challenge's state on the host now: the reported one, or the one
    /// the host had already moved it to (timed out, withdrawn).
    pub state: String,
    /// False when the report changed nothing (a repeated report, or the
    /// host had moved the challenge on first).
    pub changed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_and_reports_have_their_wire_shape() {
        let task = ChallengeTask {
            job_id: "j".into(),
            challenge_id: "c".into(),
            identifier: "www.example.com".into(),
            token: "tok".into(),
            key_authorization: "tok.thumb".into(),
            action: ChallengeAction::Withdraw,
        };
        let json = serde_json::to_value(&task).unwrap();
        assert_eq!(json["action"], "withdraw");
        assert_eq!(serde_json::from_value::<ChallengeTask>(json).unwrap(), task);
        let report: ChallengeReport = serde_json::from_str(r#"{"state":"ready"}"#).unwrap();
        assert_eq!(report.state, ChallengeReportState::Ready);
        assert_eq!(report.message, None);
        assert!(serde_json::from_str::<ChallengeReport>(r#"{"state":"pending"}"#).is_err());
    }
}
