//! Verification of deployments on the wire: what is stored about a probe,
//! what a verdict means for the deployment job, and the host-side probe for
//! targets the host deploys itself (agents probe their own and report).
//!
//! The stored record (`jobs.verification_result`) has the same shape
//! whoever probed: `status`, `observed_fingerprint`, `expected_fingerprint`,
//! `fingerprint_matches`, `detail`, `endpoint`, `reported_by`,
//! `checked_at`.

use certplane_agent::verify::{self, Endpoint, Verdict};
use certplane_pki::pem::normalise_fingerprint;
use chrono::Utc;
use serde_json::{Value, json};

use super::versions::load_version;
use crate::api::AppState;
use crate::store::{Job, JobFailure};

/// A probe's verdict as the API and the store name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The endpoint serves the expected certificate.
    Verified,
    /// The endpoint serves another certificate.
    Mismatch,
    /// The endpoint could not be reached.
    Unreachable,
}

impl Status {
    /// `verified`, `mismatch` or `unreachable`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Verified => "verified",
            Status::Mismatch => "mismatch",
            Status::Unreachable => "unreachable",
        }
    }
}

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
    state: &AppState,
    endpoint: &Endpoint,
    expected: &str,
) -> (Value, Option<JobFailure>) {
    let verdict = verify::probe(endpoint, expected, state.config.verify.policy()).await;
    let status = match verdict {
        Verdict::Verified { .. } => Status::Verified,
        Verdict::Mismatch { .. } => Status::Mismatch,
        Verdict::Unreachable { .. } => Status::Unreachable,
    };
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
/// deployment recorded, stores the record on this job and completes or
/// fails it.
pub async fn process(state: &AppState, job: Job) {
    let Some(lease) = job.lease() else { return };
    let outcome = async {
        let (_, version) = load_version(state, &job).await?;
        let parent = match &job.parent_job_id {
            Some(id) => state
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
        let (value, failure) = probe(state, &endpoint, &version.fingerprint_sha256).await;
        match state.store.set_job_verification(&lease, value).await {
            Ok(true) => {}
            Ok(false) => return Err(JobFailure::transient("the lease was lost")),
            Err(e) => return Err(JobFailure::transient(format!("database: {e}"))),
        }
        failure.map_or(Ok(()), Err)
    }
    .await;
    let result = match outcome {
        Ok(()) => state.store.complete_job(&lease).await.map(|_| ()),
        Err(f) => {
            tracing::warn!(job = %job.id, error = %f.error, "verification failed");
            state.store.fail_job(&lease, f).await.map(|_| ())
        }
    };
    if let Err(e) = result {
        tracing::error!(job = %job.id, error = %e, "cannot record the verification outcome");
    }
}
