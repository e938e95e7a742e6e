//! PEM certificates and SHA-256 fingerprints.

use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use sha2::{Digest as _, Sha256};

/// Why certificates could not be read from PEM.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The PEM text could not be parsed.
    #[error("{origin}: invalid PEM: {reason}")]
    Invalid {
        /// The file, or `PEM text`.
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No `CERTIFICATE` block was found.
    #[error("{origin}: no CERTIFICATE block found")]
    NoCertificate {
        /// The file, or `PEM text`.
        origin: String,
    },
    /// A certificate's DER could not be parsed.
    #[error("certificate cannot be parsed: {0}")]
    Der(String),
}

/// Every certificate in a PEM file, in file order; at least one.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let pem = std::fs::read(path).map_err(|source| PemError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    certificates_from(&pem, &path.display().to_string())
}

/// Every certificate in PEM text, in order; at least one.
pub fn parse_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    certificates_from(pem.as_bytes(), "PEM text")
}

fn certificates_from(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Invalid {
            origin: origin.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            origin: origin.to_owned(),
        });
    }
    Ok(certs)
}

/// Lowercase hex SHA-256 of a certificate's DER encoding.
pub fn fingerprint_sha256(cert_der: &[u8]) -> String {
    hex::encode(Sha256::digest(cert_der))
}

/// Lowercase hex SHA-256 of the DER `SubjectPublicKeyInfo` of a certificate:
/// the same value [`crate::keygen::GeneratedKey::public_key_sha256`] gives
/// for the key it certifies, so a stored key can be found from the issued
/// certificate alone.
pub fn certificate_public_key_sha256(cert_der: &[u8]) -> Result<String, PemError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|e| PemError::Der(e.to_string()))?;
    Ok(hex::encode(Sha256::digest(cert.public_key().raw)))
}

/// Normalises a fingerprint for comparison: hex digits only, lower case
/// (colons and spaces dropped).
pub fn normalise_fingerprint(f: &str) -> String {
    f.chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Splits a PEM bundle into its certificate blocks, each with its armour,
/// in order (leaf first as stored). Text outside the blocks is dropped.
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
    use super::*;

    #[test]
    fn pem_bundles_split_into_blocks() {
        let a = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n";
        let b = "-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n";
        let blocks = split_pem(&format!("{a}{b}"));
        assert_eq!(blocks, vec![a.to_string(), b.to_string()]);
        assert!(split_pem("junk").is_empty());
    }

    #[test]
    fn fingerprints_normalise() {
        assert_eq!(normalise_fingerprint("AB:cd ef"), "abcdef");
    }

    #[test]
    fn empty_pem_is_refused() {
        assert!(matches!(
            parse_certificates("nothing here"),
            Err(PemError::NoCertificate { .. })
        ));
    }
}
