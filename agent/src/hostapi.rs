//! The host's agent API as the agent uses it: registration, heartbeat, work
//! poll, CSR submission, result reports and challenge reports, with the
//! answers sorted into what the agent must do about them ([`HostError`]).

use std::time::Duration;

use certplane_client::{ApiClient, ClientError, ClientOptions, Trust};
use serde_json::Value;

/// `User-Agent` of the agent's requests.
const USER_AGENT: &str = concat!("certplane-agent/", env!("CARGO_PKG_VERSION"));
/// Limit on a request that does not wait on the host.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Slack on top of a long poll's wait before the request is given up.
const POLL_SLACK: Duration = Duration::from_secs(15);

/// What went wrong talking to the host, by what the agent does about it.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// 410 Gone: the agent was retired. Stop, exit 0.
    #[error("the host retired this agent: {0}")]
    Retired(String),
    /// 401/403: the credential or bootstrap token is refused. Retrying will
    /// not help; the operator must act.
    #[error("the host refused the agent's credentials: {0}")]
    Unauthorized(String),
    /// The host or the network is unavailable (connection, timeout, 5xx,
    /// 429): retry with backoff.
    #[error("host unavailable: {0}")]
    Unavailable(String),
    /// The host refused this one request (404, 409, 422, ...): the job it
    /// concerns moved on or the request was wrong; do not retry it as is.
    #[error("the host refused the request: {0}")]
    Refused(String),
    /// The agent's configuration cannot produce a client (URL, trust).
    #[error("{0}")]
    Setup(String),
}

impl HostError {
    fn from_client(e: ClientError) -> HostError {
        match &e {
            ClientError::Api { status, .. } | ClientError::UnexpectedStatus { status, .. } => {
                match *status {
                    410 => HostError::Retired(e.to_string()),
                    401 | 403 => HostError::Unauthorized(e.to_string()),
                    429 | 500.. => HostError::Unavailable(e.to_string()),
                    _ => HostError::Refused(e.to_string()),
                }
            }
            ClientError::InvalidUrl { .. }
            | ClientError::InvalidPin(_)
            | ClientError::NoTrust(_)
            | ClientError::CaFile(_)
            | ClientError::TlsConfig(_) => HostError::Setup(e.to_string()),
            // A pinned fingerprint that no longer matches is not something
            // retrying fixes, but the host may be mid-rotation; treat it as
            // unavailable so the agent keeps trying (and logging why).
            _ => HostError::Unavailable(e.to_string()),
        }
    }
}

/// The protocol's registration, heartbeat and work-poll types, as the host
/// serves them (one definition, shared with the host).
pub use certplane_proto::agent::{
    AgentJob, ChallengeReport, ChallengeReportAccepted, ChallengeTask, HeartbeatReply,
    JobCertificate, JobCertificateVersion, JobTarget, Registered, WorkReply as Work,
};
use certplane_proto::agent::{CsrRequest, HeartbeatRequest, RegisterRequest, WorkQuery};

/// What the agent reports at the end of a job (the protocol's one
/// definition, shared with the host).
pub use certplane_proto::agent::{ResultRequest as JobReport, Verification as ReportVerification};

/// An authenticated client of the agent API. Its requests (and its
/// clones') share one connection to the host: HTTP/2 multiplexes the
/// parked long poll and the heartbeats, so an agent holds one socket on the
/// host.
#[derive(Debug, Clone)]
pub struct HostApi {
    client: ApiClient,
    /// The same connection, with a limit that outlasts a long poll.
    poll_client: ApiClient,
}

fn client(
    base_url: &str,
    trust: Option<Trust>,
    token: &str,
    timeout: Duration,
) -> Result<ApiClient, HostError> {
    ApiClient::new(ClientOptions {
        base_url: base_url.to_owned(),
        api_key: token.to_owned(),
        trust,
        timeout,
        user_agent: USER_AGENT.to_owned(),
    })
    .map_err(HostError::from_client)
}

/// Registers with a bootstrap token (unauthenticated call).
pub async fn register(
    base_url: &str,
    trust: Option<Trust>,
    name: &str,
    bootstrap_token: &str,
) -> Result<Registered, HostError> {
    let client = client(base_url, trust, "", REQUEST_TIMEOUT)?;
    let body = encode(&RegisterRequest {
        name: name.to_owned(),
        bootstrap_token: bootstrap_token.to_owned(),
    })?;
    let reply = client
        .post("/agents/register", Some(&body))
        .await
        .map_err(HostError::from_client)?;
    parse(reply.json)
}

fn parse<T: serde::de::DeserializeOwned>(json: Option<Value>) -> Result<T, HostError> {
    serde_json::from_value(json.unwrap_or(Value::Null))
        .map_err(|e| HostError::Unavailable(format!("unexpected answer from the host: {e}")))
}

fn encode<T: serde::Serialize>(body: &T) -> Result<Value, HostError> {
    serde_json::to_value(body)
        .map_err(|e| HostError::Setup(format!("cannot encode the request: {e}")))
}

impl HostApi {
    /// A client sending `credential`; work polls may wait `poll_wait`.
    pub fn new(
        base_url: &str,
        trust: Option<Trust>,
        credential: &str,
        poll_wait: Duration,
    ) -> Result<HostApi, HostError> {
        let client = client(base_url, trust, credential, REQUEST_TIMEOUT)?;
        Ok(HostApi {
            poll_client: client.with_timeout(poll_wait + POLL_SLACK),
            client,
        })
    }

    /// Connections to the host opened so far (one while it stays up).
    pub fn connections_opened(&self) -> u64 {
        self.client.connections_opened()
    }

    /// `POST /agents/heartbeat`, naming the jobs this agent holds (their
    /// leases are extended).
    pub async fn heartbeat(&self, held_jobs: &[String]) -> Result<HeartbeatReply, HostError> {
        // A list of strings always encodes; an empty one is left out, so
        // an idle agent's heartbeat stays bodiless.
        let body = (!held_jobs.is_empty()).then(|| {
            serde_json::to_value(HeartbeatRequest {
                held_jobs: held_jobs.to_vec(),
            })
            .unwrap_or_default()
        });
        let reply = self
            .client
            .post("/agents/heartbeat", body.as_ref())
            .await
            .map_err(HostError::from_client)?;
        parse(reply.json)
    }

    /// `GET /agents/work`: claims this agent's pending jobs and gets its
    /// challenge tasks, waiting up to `wait` for either.
    pub async fn work(&self, wait: Duration, limit: u32) -> Result<Work, HostError> {
        let query = WorkQuery {
            wait_secs: Some(wait.as_secs()),
            limit: Some(limit),
        };
        let reply = self
            .poll_client
            .get("/agents/work", &query.pairs())
            .await
            .map_err(HostError::from_client)?;
        parse::<Work>(reply.json)
    }

    /// `POST /agents/jobs/{id}/csr`.
    pub async fn submit_csr(&self, job_id: &str, csr_pem: &str) -> Result<(), HostError> {
        let body = encode(&CsrRequest {
            csr_pem: csr_pem.to_owned(),
        })?;
        self.client
            .post(&format!("/agents/jobs/{job_id}/csr"), Some(&body))
            .await
            .map_err(HostError::from_client)?;
        Ok(())
    }

    /// `POST /agents/jobs/{job_id}/challenges/{challenge_id}`.
    pub async fn report_challenge(
        &self,
        job_id: &str,
        challenge_id: &str,
        report: &ChallengeReport,
    ) -> Result<ChallengeReportAccepted, HostError> {
        let body = encode(report)?;
        let reply = self
            .client
            .post(
                &format!("/agents/jobs/{job_id}/challenges/{challenge_id}"),
                Some(&body),
            )
            .await
            .map_err(HostError::from_client)?;
        parse(reply.json)
    }

    /// `POST /agents/jobs/{id}/result`.
    pub async fn report(&self, job_id: &str, report: &JobReport) -> Result<(), HostError> {
        let body = encode(report)?;
        self.client
            .post(&format!("/agents/jobs/{job_id}/result"), Some(&body))
            .await
            .map_err(HostError::from_client)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certplane_proto::ErrorClass;

    fn api_error(status: u16) -> ClientError {
        ClientError::Api {
            status,
            code: "c".into(),
            message: "m".into(),
            param: None,
            details: None,
            request_id: "r".into(),
        }
    }

    #[test]
    fn statuses_sort_into_what_to_do() {
        assert!(matches!(
            HostError::from_client(api_error(410)),
            HostError::Retired(_)
        ));
        assert!(matches!(
            HostError::from_client(api_error(401)),
            HostError::Unauthorized(_)
        ));
        assert!(matches!(
            HostError::from_client(api_error(503)),
            HostError::Unavailable(_)
        ));
        assert!(matches!(
            HostError::from_client(api_error(429)),
            HostError::Unavailable(_)
        ));
        assert!(matches!(
            HostError::from_client(api_error(409)),
            HostError::Refused(_)
        ));
        let timeout = ClientError::Timeout {
            authority: "h:1".into(),
            secs: 1,
        };
        assert!(matches!(
            HostError::from_client(timeout),
            HostError::Unavailable(_)
        ));
    }

    #[test]
    fn reports_have_the_host_api_shape() {
        let mut report = JobReport::failure(3, ErrorClass::Transient, "boom", None);
        report.verification = Some(ReportVerification {
            status: certplane_proto::agent::VerificationStatus::Unreachable,
            observed_fingerprint: None,
            detail: Some("connection refused".into()),
            endpoint: None,
        });
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["outcome"], "failure");
        assert_eq!(v["error"]["class"], "transient");
        assert_eq!(v["attempt"], 3);
        assert_eq!(v["verification"]["status"], "unreachable");
        let ok = serde_json::to_value(JobReport::success(1, vec!["a".into()])).unwrap();
        assert!(ok.get("error").is_none());
    }
}
