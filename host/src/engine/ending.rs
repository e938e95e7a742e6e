//! Ending a claimed job that has no further state to move through
//! (deployments, verifications, revocations): success or failure, with the
//! verification record and the audit row, as one outcome.

use serde_json::Value;

use super::Engine;
use crate::store::{
    ActorType, Committed, Guard, Job, JobEnd, JobFailure, JobStatus, JobUpdate, NewAuditEvent,
    Outcome, StoreResult,
};

/// How a claimed job ended.
pub struct Ending {
    /// Outcome kind on success (`deployed`, `verified`, `revoked`, ...);
    /// a failure is the `failed` outcome.
    pub kind: &'static str,
    /// Success, or why not.
    pub result: Result<(), JobFailure>,
    /// The verification record to store with it.
    pub verification: Option<Value>,
    /// Who ended it (`host`, or the reporting agent's id).
    pub actor: (String, ActorType),
    /// Audit action on success and on failure.
    pub actions: (&'static str, &'static str),
    /// Audit details (the failure's error is added).
    pub details: Value,
    /// The job's open alert conditions as read with its claimed batch;
    /// `None`: read when the job ends ([`super::events::deployment_notices`]).
    pub open_alerts: Option<Vec<String>>,
}

/// Commits `ending` for the holder of the job's lease. `Ok(None)`: the
/// lease was lost and nothing was written.
pub async fn end_claimed(
    engine: &Engine,
    job: &Job,
    ending: Ending,
) -> StoreResult<Option<Committed>> {
    let Some(lease) = job.lease() else {
        return Ok(None);
    };
    let Ending {
        kind,
        result,
        verification,
        actor,
        actions,
        mut details,
        open_alerts,
    } = ending;
    let notices = super::events::deployment_notices(
        engine,
        job,
        result.is_ok(),
        verification.as_ref(),
        open_alerts,
    )
    .await?;
    let (kind, end, action) = match result {
        Ok(()) => (kind, JobEnd::Complete, actions.0),
        Err(failure) => {
            tracing::warn!(job = %job.id, job_type = %job.job_type, error = %failure.error, permanent = failure.permanent, "job failed");
            if let Value::Object(map) = &mut details {
                map.insert("error".into(), Value::String(failure.error.clone()));
                map.insert("permanent".into(), Value::Bool(failure.permanent));
            }
            ("failed", JobEnd::Fail(failure), actions.1)
        }
    };
    let mut outcome = Outcome::new(kind, Guard::Lease(lease), end);
    outcome.update = JobUpdate {
        verification_result: verification,
        ..JobUpdate::default()
    };
    outcome.notices = notices;
    outcome.audit.push(NewAuditEvent {
        actor: actor.0,
        actor_type: actor.1,
        action: action.into(),
        subject_type: "job".into(),
        subject_id: Some(job.id.clone()),
        details,
    });
    let committed = engine.store.commit_outcome(outcome).await?;
    if committed.is_none() {
        tracing::warn!(job = %job.id, "lost the lease before recording the job's end");
    }
    Ok(committed)
}

/// Whether the claimed deployment `job` puts a version other than the
/// certificate's current one (`current_version_id`): one recorded later
/// replaced it, and its own deployments carry it to the same targets.
/// `None` when the job names no version or the certificate has none.
pub fn superseded_by<'a>(job: &Job, current_version_id: Option<&'a str>) -> Option<&'a str> {
    if job.job_type != crate::store::JobType::Deployment {
        return None;
    }
    match (job.certificate_version_id.as_deref(), current_version_id) {
        (Some(own), Some(current)) if own != current => Some(current),
        _ => None,
    }
}

/// Ends the claimed deployment `job` without deploying because version
/// `current` replaced the one it carries: Cancelled, with the reason and
/// an audit row, in one outcome. A deployment retried after a newer
/// version was recorded (and deployed) would otherwise put the older one
/// back on its target. `Ok(None)`: the lease was lost, nothing written.
pub async fn end_superseded(
    engine: &Engine,
    job: &Job,
    current: &str,
    actor: (String, ActorType),
) -> StoreResult<Option<Committed>> {
    let Some(lease) = job.lease() else {
        return Ok(None);
    };
    let own = job.certificate_version_id.as_deref().unwrap_or_default();
    let reason =
        format!("superseded: version {own} was not deployed because version {current} replaced it");
    tracing::info!(job = %job.id, version = own, current, "deployment superseded by a newer version; not deploying");
    let mut outcome = Outcome::new(
        "superseded",
        Guard::Lease(lease),
        JobEnd::Move(JobStatus::Cancelled),
    );
    outcome.update = JobUpdate {
        last_error: Some(reason),
        ..JobUpdate::default()
    };
    outcome.audit.push(NewAuditEvent {
        actor: actor.0,
        actor_type: actor.1,
        action: "deployment.superseded".into(),
        subject_type: "job".into(),
        subject_id: Some(job.id.clone()),
        details: serde_json::json!({
            "target_id": job.target_id,
            "certificate_version_id": own,
            "current_version_id": current,
        }),
    });
    engine.store.commit_outcome(outcome).await
}

/// [`end_claimed`] for the host's own loops: a database error is logged
/// and the lease left to lapse (the reaper retries the job).
pub async fn end_claimed_logged(engine: &Engine, job: &Job, ending: Ending) {
    if let Err(e) = end_claimed(engine, job, ending).await {
        tracing::error!(job = %job.id, error = %e, "cannot record the job's end; its lease will lapse and it will be retried");
    }
}

/// The host as the actor of an ending.
pub fn host_actor() -> (String, ActorType) {
    ("host".into(), ActorType::System)
}
