//! Revocation jobs: the issuer connector's `revoke` for one certificate
//! version.

use certplane_runtime::issuer::{RevocationReason, RevocationRequest};
use serde_json::json;

use super::challenges;
use super::connectors::{failure_for, issuer_instance};
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
        open_alerts: None,
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
        // The CA's own id, kept with the version: CAs that revoke by id
        // (DigiCert, Sectigo) need it.
        ca_certificate_id: version.ca_certificate_id.clone(),
        reason: reason_of(job),
    };
    // The instance's store (an ACME account revokes what it ordered).
    let owner = format!("issuer/{}", cert.issuer_id);
    let store_err = |e| JobFailure::transient(format!("database: {e}"));
    let context = challenges::instance_context(engine, &issuer, &owner)
        .await
        .map_err(store_err)?;
    let (result, effects) =
        challenges::observed_with_effects(engine, &issuer, "revoke", |i| async move {
            i.revoke_with(&context, &request).await
        })
        .await;
    challenges::apply_effects(engine, &owner, None, &Default::default(), effects)
        .await
        .map_err(store_err)?;
    result.map_err(|e| failure_for(&e, chrono::Utc::now()))?;
    Ok(version.serial)
}
