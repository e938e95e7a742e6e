//! Loading the certificate version a job works on.

use crate::engine::Engine;
use crate::store::{Certificate, CertificateVersion, Job, JobFailure, StoreError};

fn store_err(e: StoreError) -> JobFailure {
    JobFailure::transient(format!("database: {e}"))
}

/// The certificate and the version named by a deployment or revocation job.
pub async fn load_version(
    engine: &Engine,
    job: &Job,
) -> Result<(Certificate, CertificateVersion), JobFailure> {
    let (cert_id, version_id) = job_version(job)?;
    let cert = engine
        .store
        .get_certificate(cert_id)
        .await
        .map_err(store_err)?
        .ok_or_else(|| JobFailure::permanent(format!("certificate {cert_id} not found")))?;
    let version = engine
        .store
        .get_certificate_version(cert_id, version_id)
        .await
        .map_err(store_err)?
        .ok_or_else(|| {
            JobFailure::permanent(format!("certificate version {version_id} not found"))
        })?;
    Ok((cert, version))
}

/// The certificate and version ids a deployment, verification or
/// revocation job works on.
pub fn job_version(job: &Job) -> Result<(&str, &str), JobFailure> {
    let cert_id = job.certificate_id.as_deref().ok_or_else(|| {
        JobFailure::permanent(format!("{} job without a certificate", job.job_type))
    })?;
    let version_id = job.certificate_version_id.as_deref().ok_or_else(|| {
        JobFailure::permanent(format!(
            "{} job without a certificate version",
            job.job_type
        ))
    })?;
    Ok((cert_id, version_id))
}

pub use certplane_pki::pem::split_pem;
