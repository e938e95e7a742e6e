//! Outcomes reported by agents: a CSR for a job awaiting one, and the
//! result of a deployment or verification the agent ran. Both commit as one
//! outcome, and both are idempotent: a report delivered twice (the first
//! answer was lost on the way back) changes nothing the second time and is
//! answered as a replay.

use certplane_proto::agent::{CsrAccepted, ResultAccepted, ResultOutcome, ResultRequest};
use chrono::Utc;
use serde_json::json;

use super::Engine;
use super::connectors::failure_of;
use super::ending::{Ending, end_claimed};
use super::error::{EngineError, EngineResult};
use super::verification;
use crate::pipeline::csrcheck::check_csr;
use crate::store::{
    ActorType, Certificate, Guard, Job, JobEnd, JobStatus, JobUpdate, NewAuditEvent, Outcome,
};

/// The job, if agent `agent_id` holds the key of its certificate (the
/// certificate's key-holding target is one of its active targets). Any
/// other job is "not found", so an agent learns nothing about others' work.
async fn key_holder_job(
    engine: &Engine,
    agent_id: &str,
    job_id: &str,
) -> EngineResult<(Job, Certificate)> {
    let missing = || EngineError::NotFound(format!("job {job_id}"));
    let job = engine.store.get_job(job_id).await?.ok_or_else(missing)?;
    let cert_id = job.certificate_id.as_deref().ok_or_else(missing)?;
    let cert = engine
        .store
        .get_certificate(cert_id)
        .await?
        .ok_or_else(missing)?;
    let target_id = cert.target_id.as_deref().ok_or_else(missing)?;
    let target = engine
        .store
        .get_target(target_id)
        .await?
        .ok_or_else(missing)?;
    if target.agent_id != agent_id || target.retired_at.is_some() {
        return Err(missing());
    }
    Ok((job, cert))
}

/// A CSR already accepted for this job, repeated: answered, not applied.
fn csr_replay(job: &Job, csr_pem: &str) -> Option<CsrAccepted> {
    (job.status != JobStatus::AwaitingCsr && job.csr_pem.as_deref() == Some(csr_pem)).then(|| {
        CsrAccepted {
            job_id: job.id.clone(),
            status: job.status.to_string(),
            replayed: true,
        }
    })
}

/// Agent `agent_id` submits the CSR of a job awaiting one: AwaitingCsr →
/// Pending with the CSR, audited, in one outcome.
pub async fn submit_csr(
    engine: &Engine,
    agent_id: &str,
    job_id: &str,
    csr_pem: String,
) -> EngineResult<CsrAccepted> {
    let (job, cert) = key_holder_job(engine, agent_id, job_id).await?;
    if let Some(replay) = csr_replay(&job, &csr_pem) {
        return Ok(replay);
    }
    if job.status != JobStatus::AwaitingCsr {
        return Err(EngineError::InvalidState(format!(
            "job {job_id} is {}, not awaiting a CSR",
            job.status
        )));
    }
    check_csr(&csr_pem, &cert).map_err(EngineError::Invalid)?;
    let mut outcome = Outcome::new(
        "csr_received",
        Guard::Status {
            job_id: job_id.to_owned(),
            status: JobStatus::AwaitingCsr,
        },
        JobEnd::Move(JobStatus::Pending),
    );
    outcome.update = JobUpdate {
        csr_pem: Some(csr_pem.clone()),
        run_at: Some(Utc::now()),
        ..JobUpdate::default()
    };
    outcome.audit.push(NewAuditEvent {
        actor: agent_id.to_owned(),
        actor_type: ActorType::Agent,
        action: "job.csr_submitted".into(),
        subject_type: "job".into(),
        subject_id: Some(job_id.to_owned()),
        details: json!({ "certificate_id": cert.id, "from": "awaiting_csr", "to": "pending" }),
    });
    if engine.store.commit_outcome(outcome).await?.is_none() {
        // Someone moved the job meanwhile: the same CSR racing itself is a
        // replay; anything else is a conflict.
        let now = engine.store.get_job(job_id).await?;
        return match now.as_ref().and_then(|j| csr_replay(j, &csr_pem)) {
            Some(replay) => Ok(replay),
            None => Err(EngineError::InvalidState(format!(
                "job {job_id} is no longer awaiting a CSR"
            ))),
        };
    }
    engine.wake.wake_jobs();
    Ok(CsrAccepted {
        job_id: job_id.to_owned(),
        status: JobStatus::Pending.to_string(),
        replayed: false,
    })
}

/// Whether the job already ended the way `req` reports, for this agent and
/// attempt: a repeated report.
fn result_replay(job: &Job, agent_id: &str, req: &ResultRequest) -> Option<ResultAccepted> {
    let same_end = matches!(
        (job.status, req.outcome),
        (JobStatus::Completed, ResultOutcome::Success)
            | (JobStatus::Failed, ResultOutcome::Failure)
    );
    let same_holder = job.lease_owner.as_deref() == Some(agent_id)
        && req.attempt.is_none_or(|a| a == job.attempts);
    (same_end && same_holder).then(|| ResultAccepted {
        job_id: job.id.clone(),
        status: job.status.to_string(),
        will_retry: job.status == JobStatus::Failed && job.attempts < job.max_attempts,
        replayed: true,
    })
}

/// Agent `agent_id` reports how a job it held ended: the verification
/// record, the job's end and the audit row in one outcome.
pub async fn report_result(
    engine: &Engine,
    agent_id: &str,
    job_id: &str,
    req: ResultRequest,
) -> EngineResult<ResultAccepted> {
    let missing = || EngineError::NotFound(format!("job {job_id}"));
    let job = engine.store.get_job(job_id).await?.ok_or_else(missing)?;
    let executor = match (&job.agent_id, &job.target_id) {
        (Some(a), _) => Some(a.clone()),
        (None, Some(t)) => engine.store.get_target(t).await?.map(|t| t.agent_id),
        (None, None) => None,
    };
    if executor.as_deref() != Some(agent_id) {
        return Err(missing());
    }
    let result = match (req.outcome, &req.error) {
        // The connector succeeded but the endpoint may not serve the new
        // certificate: the verdict decides (see `verification::failure`).
        (ResultOutcome::Success, None) => match &req.verification {
            Some(v) => verification::failure(v.status, v.detail.as_deref()).map_or(Ok(()), Err),
            None => Ok(()),
        },
        (ResultOutcome::Failure, Some(e)) => Err(failure_of(
            e.class,
            format!("{}: {}", e.class, e.message),
            e.retry_after_secs,
            Utc::now(),
        )),
        (ResultOutcome::Success, Some(_)) => {
            return Err(EngineError::Invalid(
                "a successful result carries no error".into(),
            ));
        }
        (ResultOutcome::Failure, None) => {
            return Err(EngineError::Invalid(
                "a failed result needs an error".into(),
            ));
        }
    };
    if let Some(replay) = result_replay(&job, agent_id, &req) {
        return Ok(replay);
    }
    let conflict = |job: &Job| {
        EngineError::LeaseLost(format!(
            "job {job_id} is {} and not leased to this agent{}",
            job.status,
            req.attempt
                .map(|a| format!(" for attempt {a}"))
                .unwrap_or_default()
        ))
    };
    let holds_lease = job
        .lease()
        .is_some_and(|l| l.owner == agent_id && req.attempt.is_none_or(|a| a == l.attempt));
    if !holds_lease {
        return Err(conflict(&job));
    }

    let verification = match &req.verification {
        Some(v) => {
            let expected = match (&job.certificate_id, &job.certificate_version_id) {
                (Some(c), Some(vid)) => engine
                    .store
                    .list_certificate_versions(c)
                    .await?
                    .into_iter()
                    .find(|x| &x.id == vid)
                    .map(|x| x.fingerprint_sha256),
                _ => None,
            };
            Some(verification::record(
                v.status,
                v.observed_fingerprint.as_deref(),
                expected.as_deref(),
                v.detail.as_deref(),
                v.endpoint.as_ref(),
                agent_id,
            ))
        }
        None => None,
    };
    let will_retry = match &result {
        Ok(()) => false,
        Err(f) => !f.permanent && job.attempts < job.max_attempts,
    };
    let ending = Ending {
        kind: "agent_result",
        result,
        verification: verification.clone(),
        actor: (agent_id.to_owned(), ActorType::Agent),
        actions: ("job.complete", "job.fail"),
        details: json!({
            "attempt": job.attempts,
            "changed": req.changed,
            "error": req.error,
            "verification": verification,
            "will_retry": will_retry,
        }),
        open_alerts: None,
    };
    let Some(committed) = end_claimed(engine, &job, ending).await? else {
        let now = engine.store.get_job(job_id).await?.ok_or_else(missing)?;
        return match result_replay(&now, agent_id, &req) {
            Some(replay) => Ok(replay),
            None => Err(EngineError::LeaseLost(format!(
                "the lease on job {job_id} was lost"
            ))),
        };
    };
    // The host may have follow-up work (verification, notifications).
    engine.wake.wake_jobs();
    let status = committed.job.status;
    Ok(ResultAccepted {
        job_id: job_id.to_owned(),
        status: status.to_string(),
        will_retry: status == JobStatus::Failed
            && committed.job.attempts < committed.job.max_attempts,
        replayed: false,
    })
}
