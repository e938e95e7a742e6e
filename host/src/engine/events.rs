//! The events the host tells notifiers about (`docs/events.md`): their
//! kinds, the alert conditions they open and clear, and the `details`
//! every notifier gets, built in one place so every kind has the same
//! shape.

use certplane_runtime::Level;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::notify::{Announcement, notice};
use crate::engine::Engine;
use crate::store::{
    Agent, AlertChange, Certificate, Job, JobType, Notice, SendWhen, StoreResult, Target,
};

/// Version of the `details` schema.
pub const SCHEMA_VERSION: u32 = 1;

/// Event kinds.
pub mod kind {
    /// The first version of a certificate.
    pub const ISSUED: &str = "certificate.issued";
    /// A later version.
    pub const RENEWED: &str = "certificate.renewed";
    /// Close to expiry and not renewed.
    pub const EXPIRING: &str = "certificate.expiring";
    /// Expired.
    pub const EXPIRED: &str = "certificate.expired";
    /// An issuance or renewal failed for good.
    pub const ISSUANCE_FAILED: &str = "issuance.failed";
    /// A deployment failed for good.
    pub const DEPLOYMENT_FAILED: &str = "deployment.failed";
    /// A deployment succeeded after one had failed.
    pub const DEPLOYMENT_RECOVERED: &str = "deployment.recovered";
    /// The endpoint serves another certificate than the one deployed.
    pub const VERIFICATION_MISMATCH: &str = "verification.mismatch";
    /// The endpoint serves the deployed certificate again.
    pub const VERIFICATION_RECOVERED: &str = "verification.recovered";
    /// An agent went silent.
    pub const AGENT_OFFLINE: &str = "agent.offline";
    /// A silent agent was heard again.
    pub const AGENT_ONLINE: &str = "agent.online";
    /// An agent was retired.
    pub const AGENT_RETIRED: &str = "agent.retired";
    /// Any other job failed for good (revocations).
    pub const JOB_FAILED: &str = "job.failed";
}

/// Key of the expiry condition of a certificate.
pub fn expiry_key(certificate_id: &str) -> String {
    format!("expiry:{certificate_id}")
}

/// Key of the issuance condition of a certificate.
pub fn issuance_key(certificate_id: &str) -> String {
    format!("issuance:{certificate_id}")
}

/// Keys of the deployment and verification conditions of a certificate on
/// a target (defined with the store, whose batch reads look them up).
pub use crate::store::{deployment_key, verification_key};

/// Key of the condition of a silent agent.
pub fn agent_key(agent_id: &str) -> String {
    format!("agent:{agent_id}")
}

/// What an event is about, as loaded from the store.
#[derive(Debug, Default)]
pub struct About {
    /// The certificate.
    pub certificate: Option<Certificate>,
    /// Its issuer's name.
    pub issuer_name: Option<String>,
    /// The serial of the version the event is about, when known.
    pub serial: Option<String>,
    /// The target.
    pub target: Option<Target>,
    /// The agent (the target's, or the one the event is about).
    pub agent: Option<Agent>,
}

impl About {
    /// Loads the certificate (and its issuer's name), the target and the
    /// agent named; an id that no longer exists is left out.
    pub async fn load(
        engine: &Engine,
        certificate_id: Option<&str>,
        target_id: Option<&str>,
        agent_id: Option<&str>,
    ) -> StoreResult<About> {
        let certificate = match certificate_id {
            Some(id) => engine.store.get_certificate(id).await?,
            None => None,
        };
        About::of(engine, certificate, target_id, agent_id).await
    }

    /// [`About::load`] with the certificate already at hand (its issuer's
    /// name is still read).
    pub async fn of(
        engine: &Engine,
        certificate: Option<Certificate>,
        target_id: Option<&str>,
        agent_id: Option<&str>,
    ) -> StoreResult<About> {
        let mut about = About::default();
        if let Some(cert) = &certificate {
            about.issuer_name = engine
                .store
                .get_issuer(&cert.issuer_id)
                .await?
                .map(|i| i.name);
        }
        about.certificate = certificate;
        if let Some(id) = target_id {
            about.target = engine.store.get_target(id).await?;
        }
        let agent_id = agent_id.or(about.target.as_ref().map(|t| t.agent_id.as_str()));
        if let Some(id) = agent_id.filter(|id| *id != crate::store::SENTINEL_AGENT_ID) {
            about.agent = engine.store.get_agent(id).await?;
        }
        Ok(about)
    }

    /// The `details` object of an event about this, with the job, the
    /// reason and kind-specific `extra` fields.
    pub fn details(&self, job: Option<&Job>, reason: Option<&str>, extra: Value) -> Value {
        let mut details = Map::new();
        details.insert("schema_version".into(), json!(SCHEMA_VERSION));
        if let Some(c) = &self.certificate {
            details.insert(
                "certificate".into(),
                json!({
                    "id": c.id,
                    "name": c.name,
                    "dns_names": c.sans,
                    "owner": c.owner,
                    "issuer_id": c.issuer_id,
                    "issuer": self.issuer_name,
                    "serial": self.serial,
                    "not_after": c.not_after.map(rfc3339),
                }),
            );
        }
        if let Some(t) = &self.target {
            details.insert(
                "target".into(),
                json!({
                    "id": t.id,
                    "name": t.name,
                    "plugin": t.plugin_name,
                    "agent_id": t.agent_id,
                }),
            );
        }
        if let Some(a) = &self.agent {
            details.insert(
                "agent".into(),
                json!({
                    "id": a.id,
                    "name": a.name,
                    "last_heartbeat_at": a.last_heartbeat_at.map(rfc3339),
                }),
            );
        }
        if let Some(j) = job {
            details.insert(
                "job".into(),
                json!({ "id": j.id, "type": j.job_type.to_string(), "attempts": j.attempts }),
            );
        }
        if let Some(reason) = reason {
            details.insert("reason".into(), json!(reason));
        }
        if let Value::Object(extra) = extra {
            details.extend(extra);
        }
        Value::Object(details)
    }

    /// The certificate's name for summaries (its id when it is gone).
    pub fn certificate_name(&self, fallback: &str) -> String {
        self.certificate
            .as_ref()
            .map_or_else(|| fallback.to_owned(), |c| c.name.clone())
    }

    /// The target's name for summaries.
    pub fn target_name(&self, fallback: &str) -> String {
        self.target
            .as_ref()
            .map_or_else(|| fallback.to_owned(), |t| t.name.clone())
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The notices a deployment or verification job's end implies: a
/// `verification.mismatch` when the endpoint served another certificate;
/// on success, the recoveries of the conditions it clears (only when one is
/// open, so a plain success reads nothing more than one index probe).
///
/// `read_open`: the job's open conditions as read with its claimed batch
/// (`DeploymentInputs::open_alerts`); `None` reads them now. Either way a
/// condition opened after the read (by another job of the same certificate
/// and target) is left for the next success to clear.
pub async fn deployment_notices(
    engine: &Engine,
    job: &Job,
    succeeded: bool,
    verification: Option<&Value>,
    read_open: Option<Vec<String>>,
) -> StoreResult<Vec<Notice>> {
    if !matches!(job.job_type, JobType::Deployment | JobType::Verification) {
        return Ok(Vec::new());
    }
    let (Some(cert_id), Some(target_id)) =
        (job.certificate_id.as_deref(), job.target_id.as_deref())
    else {
        return Ok(Vec::new());
    };
    let status = verification
        .and_then(|v| v.get("status"))
        .and_then(Value::as_str);
    let deployment = deployment_key(cert_id, target_id);
    let verification_cond = verification_key(cert_id, target_id);
    let mismatch = status == Some("mismatch");
    let open = match (succeeded, read_open) {
        (false, _) => Vec::new(),
        (true, Some(read)) => read
            .into_iter()
            .filter(|key| *key == deployment || *key == verification_cond)
            .collect(),
        (true, None) => {
            engine
                .store
                .alert_conditions_open(&[deployment.as_str(), verification_cond.as_str()])
                .await?
        }
    };
    if !mismatch && open.is_empty() {
        return Ok(Vec::new());
    }
    let about = About::load(engine, Some(cert_id), Some(target_id), None).await?;
    let name = about.certificate_name(cert_id);
    let target = about.target_name(target_id);
    let subject = format!("certificate/{cert_id}");
    let mut notices = Vec::new();
    if mismatch {
        let detail = verification
            .and_then(|v| v.get("detail"))
            .and_then(Value::as_str);
        let summary =
            format!("target {target} serves another certificate than {name} after its deployment");
        notices.push(notice(
            &Announcement {
                alerts: vec![AlertChange::Trigger(verification_cond.clone())],
                ..Announcement::new(
                    kind::VERIFICATION_MISMATCH,
                    &subject,
                    &summary,
                    Level::Error,
                    about.details(Some(job), detail, json!({ "verification": verification })),
                )
            },
            None,
        ));
    }
    if open.contains(&deployment) {
        let summary = format!("certificate {name} is deployed to target {target} again");
        notices.push(notice(
            &Announcement {
                alerts: vec![AlertChange::Resolve(deployment)],
                send_when: SendWhen::Resolved,
                ..Announcement::new(
                    kind::DEPLOYMENT_RECOVERED,
                    &subject,
                    &summary,
                    Level::Info,
                    about.details(Some(job), None, json!({})),
                )
            },
            None,
        ));
    }
    if open.contains(&verification_cond) && status == Some("verified") {
        let summary = format!("target {target} serves certificate {name} again");
        notices.push(notice(
            &Announcement {
                alerts: vec![AlertChange::Resolve(verification_cond)],
                send_when: SendWhen::Resolved,
                ..Announcement::new(
                    kind::VERIFICATION_RECOVERED,
                    &subject,
                    &summary,
                    Level::Info,
                    about.details(Some(job), None, json!({ "verification": verification })),
                )
            },
            None,
        ));
    }
    Ok(notices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_carry_the_schema_version_and_only_what_is_known() {
        let about = About::default();
        let d = about.details(
            None,
            Some("because"),
            json!({ "expiring": { "stage": "7d" } }),
        );
        assert_eq!(d["schema_version"], 1);
        assert_eq!(d["reason"], "because");
        assert_eq!(d["expiring"]["stage"], "7d");
        assert!(d.get("certificate").is_none() && d.get("agent").is_none());
    }

    #[test]
    fn condition_keys_name_what_they_are_about() {
        assert_eq!(deployment_key("c", "t"), "deployment:c:t");
        assert_eq!(agent_key("a"), "agent:a");
        assert_ne!(expiry_key("c"), issuance_key("c"));
    }
}
