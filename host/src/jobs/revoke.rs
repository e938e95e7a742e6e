//! Revocation jobs: the issuer connector's `revoke` for one certificate
//! version.

use certplane_runtime::issuer::{RevocationReason, RevocationRequest};
use serde_json::json;

use super::connectors::{failure_for, issuer_instance, observed};
use super::versions::{load_version, split_pem};
use crate::api::AppState;
use crate::store::{ActorType, Job, JobFailure, NewAuditEvent};

fn reason_of(job: &Job) -> RevocationReason {
    match job
        .payload
        .as_ref()
        .and_then(|p| p.get("reason"))
        .and_then(|r| r.as_str())
    {
        Some("key-compromise") => RevocationReason::KeyCompromise,
        Some("ca-compromise") => RevocationReason::CaCompromise,
        Some("affiliation-changed") => RevocationReason::AffiliationChanged,
        Some("superseded") => RevocationReason::Superseded,
        Some("cessation-of-operation") => RevocationReason::CessationOfOperation,
        _ => RevocationReason::Unspecified,
    }
}

/// Runs one claimed revocation job.
pub async fn process(state: &AppState, job: Job) {
    let Some(lease) = job.lease() else { return };
    match revoke(state, &job).await {
        Ok(serial) => {
            if let Err(e) = state.store.complete_job(&lease).await {
                tracing::error!(job = %job.id, error = %e, "cannot complete revocation job");
            }
            let event = NewAuditEvent {
                actor: "host".into(),
                actor_type: ActorType::System,
                action: "certificate.revoked".into(),
                subject_type: "certificate".into(),
                subject_id: job.certificate_id.clone(),
                details: json!({ "job_id": job.id, "serial": serial, "version_id": job.certificate_version_id }),
            };
            if let Err(e) = state.store.record_audit(event).await {
                tracing::error!(job = %job.id, error = %e, "cannot audit revocation");
            }
        }
        Err(failure) => {
            tracing::warn!(job = %job.id, error = %failure.error, "revocation failed");
            if let Err(e) = state.store.fail_job(&lease, failure).await {
                tracing::error!(job = %job.id, error = %e, "cannot record revocation failure");
            }
        }
    }
}

async fn revoke(state: &AppState, job: &Job) -> Result<String, JobFailure> {
    let (cert, version) = load_version(state, job).await?;
    let issuer = issuer_instance(state, &cert.issuer_id)
        .await
        .map_err(|e| JobFailure::transient(format!("database: {e}")))?
        .map_err(JobFailure::permanent)?;
    let leaf = split_pem(&version.pem_chain)
        .into_iter()
        .next()
        .ok_or_else(|| JobFailure::permanent("stored version has no certificate"))?;
    let request = RevocationRequest {
        certificate_pem: leaf,
        serial_hex: version.serial.clone(),
        ca_certificate_id: None,
        reason: reason_of(job),
    };
    observed(state, &issuer, "revoke", issuer.revoke(&request))
        .await
        .map_err(|e| failure_for(&e, chrono::Utc::now()))?;
    Ok(version.serial)
}
