//! The agent protocol's registration, heartbeat and work poll: what an
//! agent sends to register (`POST /agents/register`), what the host
//! answers to a heartbeat (`POST /agents/heartbeat`) and the jobs a work
//! poll hands out (`GET /agents/work`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

/// Body of `POST /agents/register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Display name of the agent (usually its host name).
    pub name: String,
    /// One of the host's configured bootstrap tokens.
    pub bootstrap_token: String,
}

/// Answer of a registration: the credential is shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Registered {
    /// The new agent's id.
    pub agent_id: String,
    /// `cpa_<agent-id>.<secret>`: send as `Authorization: Bearer ...`.
    pub credential: String,
}

/// Body of `POST /agents/heartbeat`; an empty body is a heartbeat that
/// holds no job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// The jobs this agent holds: the one it runs and those handed out
    /// with it and queued behind it. Their leases are extended while they
    /// run, so a long batch is not taken back (and run a second time)
    /// when the first lease ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_jobs: Vec<String>,
}

/// Answer of a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatReply {
    /// The caller.
    pub agent_id: String,
    /// The host's clock, for the agent to detect skew.
    pub server_time: DateTime<Utc>,
    /// This agent's jobs cancelled in the last ten minutes (newest first,
    /// at most 100): a job among them that the agent is running stops.
    /// Absent from older hosts.
    #[serde(default)]
    pub cancelled_jobs: Vec<String>,
}

/// `GET /agents/work` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WorkQuery {
    /// Hold the request open up to this many seconds while there is no work
    /// (default 0; capped at the host's `api.long_poll_max_secs`).
    pub wait_secs: Option<u64>,
    /// Most jobs to claim (1–100, default 10).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

impl WorkQuery {
    /// The query string's parameters (unset ones left out).
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        if let Some(wait) = self.wait_secs {
            pairs.push(("wait_secs", wait.to_string()));
        }
        if let Some(limit) = self.limit {
            pairs.push(("limit", limit.to_string()));
        }
        pairs
    }
}

/// The certificate a job is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobCertificate {
    /// Certificate id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Subject common name.
    pub common_name: String,
    /// Subject alternative names the CSR must request.
    pub sans: Vec<String>,
    /// Key type to generate (`ecdsa-p256`, `rsa-2048`, ...).
    pub key_type: String,
    /// The operator's per-certificate options for target connectors (a
    /// JSON object, passed to `deploy` and `remove`). Absent from older
    /// hosts: `{}`.
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub target_options: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// The certificate version a job deploys or verifies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobCertificateVersion {
    /// Version id.
    pub id: String,
    /// Serial number (hex).
    pub serial: String,
    /// Leaf plus chain, PEM.
    pub pem_chain: String,
    /// SHA-256 of the leaf DER (hex): what the endpoint must serve.
    pub fingerprint_sha256: String,
    /// Validity start.
    pub not_before: DateTime<Utc>,
    /// Validity end.
    pub not_after: DateTime<Utc>,
}

/// The target connector instance a job runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobTarget {
    /// Target id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Connector plugin name.
    pub plugin_name: String,
    /// Connector plugin version.
    pub plugin_version: String,
    /// SHA-256 of the component the host has loaded under that name and
    /// version (`null` when the host does not have it): the agent should run
    /// only a component with this digest.
    pub plugin_sha256: Option<String>,
    /// Non-secret settings.
    pub settings: Value,
    /// Capability grants (directories, hosts).
    pub grants: Value,
    /// Decrypted secrets of the instance.
    pub secrets: BTreeMap<String, String>,
}

/// One job handed to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentJob {
    /// Job id.
    pub id: String,
    /// `issuance`, `renewal`, `deployment`, `verification`, `revocation`.
    pub job_type: String,
    /// `running` (claimed, leased to the agent) or `awaiting_csr` (answer
    /// with `POST /agents/jobs/{id}/csr`).
    pub status: String,
    /// Attempt number of the lease (running jobs).
    pub attempt: i32,
    /// When the lease lapses unless the result arrives (running jobs).
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Free-form job input.
    pub payload: Option<Value>,
    /// The certificate concerned.
    pub certificate: Option<JobCertificate>,
    /// The certificate version to deploy or verify.
    pub certificate_version: Option<JobCertificateVersion>,
    /// The target to run.
    pub target: Option<JobTarget>,
}

/// Answer of a work poll.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkReply {
    /// Claimed jobs first, then jobs awaiting a CSR; possibly empty.
    pub jobs: Vec<AgentJob>,
    /// http-01 challenges this agent serves from its webroot that want
    /// action: publish (then report) or withdraw. Absent from older hosts;
    /// older agents ignore it.
    #[serde(default)]
    pub challenges: Vec<super::challenges::ChallengeTask>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_work_reply_round_trips() {
        let reply = WorkReply {
            challenges: Vec::new(),
            jobs: vec![AgentJob {
                id: "j1".into(),
                job_type: "deployment".into(),
                status: "running".into(),
                attempt: 2,
                lease_expires_at: Some(Utc::now()),
                payload: None,
                certificate: Some(JobCertificate {
                    id: "c1".into(),
                    name: "web".into(),
                    common_name: "a.example".into(),
                    sans: vec!["a.example".into()],
                    key_type: "ecdsa-p256".into(),
                    target_options: serde_json::json!({"reload": "nginx"}),
                }),
                certificate_version: None,
                target: Some(JobTarget {
                    id: "t1".into(),
                    name: "files".into(),
                    plugin_name: "pem-files".into(),
                    plugin_version: "1.0.0".into(),
                    plugin_sha256: None,
                    settings: serde_json::json!({ "directory": "/certs" }),
                    grants: serde_json::json!({}),
                    secrets: BTreeMap::new(),
                }),
            }],
        };
        let json = serde_json::to_value(&reply).unwrap();
        assert_eq!(json["jobs"][0]["target"]["plugin_sha256"], Value::Null);
        assert_eq!(json["jobs"][0]["payload"], Value::Null);
        let back: WorkReply = serde_json::from_value(json).unwrap();
        assert_eq!(back, reply);
        // An older host sends no challenges.
        let old: WorkReply = serde_json::from_str(r#"{"jobs":[]}"#).unwrap();
        assert!(old.challenges.is_empty());
    }

    #[test]
    fn the_work_query_leaves_unset_parameters_out() {
        let query = WorkQuery {
            wait_secs: Some(30),
            limit: None,
        };
        assert_eq!(query.pairs(), vec![("wait_secs", "30".to_owned())]);
        assert!(WorkQuery::default().pairs().is_empty());
    }
}
