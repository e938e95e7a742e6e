//! Loading the certificate version a job works on.

use crate::api::AppState;
use crate::store::{Certificate, CertificateVersion, Job, JobFailure, StoreError};

fn store_err(e: StoreError) -> JobFailure {
    JobFailure::transient(format!("database: {e}"))
}

/// The certificate and the version named by a deployment or revocation job.
pub async fn load_version(
    state: &AppState,
    job: &Job,
) -> Result<(Certificate, CertificateVersion), JobFailure> {
    let cert_id = job.certificate_id.as_deref().ok_or_else(|| {
        JobFailure::permanent(format!("{} job without a certificate", job.job_type))
    })?;
    let version_id = job.certificate_version_id.as_deref().ok_or_else(|| {
        JobFailure::permanent(format!(
            "{} job without a certificate version",
            job.job_type
        ))
    })?;
    let cert = state
        .store
        .get_certificate(cert_id)
        .await
        .map_err(store_err)?
        .ok_or_else(|| JobFailure::permanent(format!("certificate {cert_id} not found")))?;
    let version = state
        .store
        .list_certificate_versions(cert_id)
        .await
        .map_err(store_err)?
        .into_iter()
        .find(|v| v.id == version_id)
        .ok_or_else(|| {
            JobFailure::permanent(format!("certificate version {version_id} not found"))
        })?;
    Ok((cert, version))
}

/// Splits a PEM bundle into its certificate blocks, each with its armour,
/// leaf first as stored.
pub fn split_pem(bundle: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    bundle
        .split_inclusive(END)
        .filter(|b| b.contains("-----BEGIN CERTIFICATE-----"))
        .map(|b| format!("{}\n", b.trim_start()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn pem_bundles_split_into_blocks() {
        let a = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n";
        let b = "-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n";
        let blocks = super::split_pem(&format!("{a}{b}"));
        assert_eq!(blocks, vec![a.to_string(), b.to_string()]);
        assert!(super::split_pem("junk").is_empty());
    }
}
