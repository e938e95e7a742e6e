//! Verification of deployments on the wire: what is stored about a probe,
//! what a verdict means for the deployment job, and the host-side probe for
//! targets the host deploys itself (agents probe their own and report).
//!
//! The stored record (`jobs.verification_result`) has the same shape
//! whoever probed: `status`, `observed_fingerprint`, `expected_fingerprint`,
//! `fingerprint_matches`, `detail`, `endpoint`, `reported_by`,
//! `checked_at`.

use certplane_pki::pem::normalise_fingerprint;
use certplane_probe::{self as verify, Endpoint};
use chrono::Utc;
use serde_json::{Value, json};

use super::ending::{Ending, end_claimed_logged, host_actor};
use super::versions::load_version;
use crate::engine::Engine;
use crate::store::{Job, JobFailure};

pub use certplane_proto::agent::VerificationStatus as Status;

/// The stored record of one probe.
pub fn record(
    status: Status,
    observed: Option<&str>,
    expected: Option<&str>,
    detail: Option<&str>,
    endpoint: Option<&Endpoint>,
    reported_by: &str,
) -> Value {
    let observed = observed.map(normalise_fingerprint);
    json!({
        "status": status.as_str(),
        "observed_fingerprint": observed,
        "expected_fingerprint": expected,
        "fingerprint_matches": match (&observed, expected) {
            (Some(o), Some(e)) => Some(*o == normalise_fingerprint(e)),
            _ => None,
        },
        "detail": detail,
        "endpoint": endpoint,
        "reported_by": reported_by,
        "checked_at": Utc::now(),
    })
}

/// What a verdict means for a deployment whose connector succeeded: a
/// mismatch needs an operator (the server loads other files or did not
/// reload) and is not retried; an unreachable endpoint may be restarting,
/// so the job is retried.
pub fn failure(status: Status, detail: Option<&str>) -> Option<JobFailure> {
    let detail = detail.unwrap_or("no detail");
    match status {
        Status::Verified => None,
        Status::Mismatch => Some(JobFailure::permanent(format!(
            "failed verification: the endpoint serves another certificate ({detail})"
        ))),
        Status::Unreachable => Some(JobFailure::transient(format!(
            "failed verification: the endpoint is unreachable ({detail})"
        ))),
    }
}

/// Probes `endpoint` from the host for `expected` (with the host's
/// `verify` settings) and returns the record and what it means for the job.
pub async fn probe(
    engine: &Engine,
    endpoint: &Endpoint,
    expected: &str,
) -> (Value, Option<JobFailure>) {
    let verdict = verify::probe(endpoint, expected, engine.config.verify.policy()).await;
    let status = verdict.verification_status();
    let detail = format!("{} at {endpoint}", verdict.detail());
    let value = record(
        status,
        verdict.observed_fingerprint(),
        Some(expected),
        Some(&detail),
        Some(endpoint),
        "host",
    );
    (value, failure(status, Some(&detail)))
}

/// Runs a host-side verification job: probes the endpoint the parent
/// deployment recorded, and stores the record with the job's end.
pub async fn process(engine: &Engine, job: Job) {
    let mut verification = None;
    let result = async {
        let (_, version) = load_version(engine, &job).await?;
        let parent = match &job.parent_job_id {
            Some(id) => engine
                .store
                .get_job(id)
                .await
                .map_err(|e| JobFailure::transient(format!("database: {e}")))?,
            None => None,
        };
        let endpoint: Endpoint = parent
            .and_then(|p| p.verification_result)
            .and_then(|r| serde_json::from_value(r["endpoint"].clone()).ok())
            .ok_or_else(|| {
                JobFailure::permanent(
                    "the deployment recorded no endpoint to verify (its connector named none)",
                )
            })?;
        let (value, failure) = probe(engine, &endpoint, &version.fingerprint_sha256).await;
        verification = Some(value);
        failure.map_or(Ok(()), Err)
    }
    .await;
    let ending = Ending {
        kind: "verified",
        result,
        verification,
        actor: host_actor(),
        actions: ("verification.completed", "verification.failed"),
        details: json!({ "parent_job_id": job.parent_job_id }),
        open_alerts: None,
    };
    end_claimed_logged(engine, &job, ending).await;
}
