//! Revocation jobs: the issuer connector's `revoke` for one certificate
//! version.

use certplane_runtime::issuer::{RevocationReason, RevocationRequest};
use serde_json::json;

use super::connectors::{failure_for, issuer_instance, observed};
use super::ending::{Ending, end_claimed_logged, host_actor};
use super::versions::{load_version, split_pem};
use crate::engine::Engine;
use crate::store::{Job, JobFailure};

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
pub async fn process(engine: &Engine, job: Job) {
    let result = revoke(engine, &job).await;
    let serial = result.as_ref().ok().cloned();
    let ending = Ending {
        kind: "revoked",
        result: result.map(|_| ()),
        verification: None,
        actor: host_actor(),
        actions: ("certificate.revoked", "revocation.failed"),
        details: json!({
            "certificate_id": job.certificate_id,
            "serial": serial,
            "version_id": job.certificate_version_id,
        }),
    };
    end_claimed_logged(engine, &job, ending).await;
}

async fn revoke(engine: &Engine, job: &Job) -> Result<String, JobFailure> {
    let (cert, version) = load_version(engine, job).await?;
    let issuer = issuer_instance(engine, &cert.issuer_id)
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
    observed(engine, &issuer, "revoke", |i| async move {
        i.revoke(&request).await
    })
    .await
    .map_err(|e| failure_for(&e, chrono::Utc::now()))?;
    Ok(version.serial)
}
