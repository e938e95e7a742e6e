//! Private key and CSR generation.
//!
//! Agents generate the private keys of the certificates they serve; the host
//! does the same in "host key mode", for targets it reaches itself. ECDSA and Ed25519 keys come from `rcgen`
//! (ring); ring cannot generate RSA keys, so RSA keys are generated with the
//! pure-Rust `rsa` crate and handed to `rcgen` as PKCS#8 for signing the CSR.
//!
//! RSA generation is slow, especially in debug builds (RSA-4096 takes
//! seconds): call [`generate_key_and_csr`] from a blocking thread
//! (`tokio::task::spawn_blocking`) in async code.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType, SignatureAlgorithm};
use rsa::pkcs8::der::zeroize::Zeroizing;
use rsa::pkcs8::{EncodePrivateKey as _, LineEnding};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Key algorithm (and size) of a generated private key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum KeyType {
    /// ECDSA on NIST P-256, CSR signed with SHA-256. The default.
    #[default]
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    /// ECDSA on NIST P-384, CSR signed with SHA-384.
    #[serde(rename = "ecdsa-p384")]
    EcdsaP384,
    /// RSA 2048-bit, CSR signed with PKCS#1 v1.5 SHA-256.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    /// RSA 3072-bit, CSR signed with PKCS#1 v1.5 SHA-256.
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    /// RSA 4096-bit, CSR signed with PKCS#1 v1.5 SHA-256.
    #[serde(rename = "rsa-4096")]
    Rsa4096,
    /// Ed25519.
    #[serde(rename = "ed25519")]
    Ed25519,
}

impl KeyType {
    /// Every key type, in declaration order.
    pub const ALL: [KeyType; 6] = [
        KeyType::EcdsaP256,
        KeyType::EcdsaP384,
        KeyType::Rsa2048,
        KeyType::Rsa3072,
        KeyType::Rsa4096,
        KeyType::Ed25519,
    ];

    /// The canonical name (`ecdsa-p256`, `rsa-2048`, `ed25519`, ...), the
    /// same as the serde representation.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::EcdsaP384 => "ecdsa-p384",
            KeyType::Rsa2048 => "rsa-2048",
            KeyType::Rsa3072 => "rsa-3072",
            KeyType::Rsa4096 => "rsa-4096",
            KeyType::Ed25519 => "ed25519",
        }
    }

    /// RSA modulus size in bits, or `None` for non-RSA key types.
    pub fn rsa_bits(self) -> Option<usize> {
        match self {
            KeyType::Rsa2048 => Some(2048),
            KeyType::Rsa3072 => Some(3072),
            KeyType::Rsa4096 => Some(4096),
            KeyType::EcdsaP256 | KeyType::EcdsaP384 | KeyType::Ed25519 => None,
        }
    }

    fn signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => &rcgen::PKCS_RSA_SHA256,
            KeyType::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not one of the [`KeyType`] names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown key type {0:?} (expected one of ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096, ed25519)"
)]
pub struct UnknownKeyType(pub String);

impl FromStr for KeyType {
    type Err = UnknownKeyType;

    /// Parses the canonical names exactly (lower case), as serde does.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyType::ALL
            .into_iter()
            .find(|key_type| key_type.as_str() == s)
            .ok_or_else(|| UnknownKeyType(s.to_owned()))
    }
}

/// A PKCS#8 private key in PEM form (`-----BEGIN PRIVATE KEY-----`).
///
/// `Debug` does not print the key, and the text is zeroized on drop
/// (best effort: copies made by the underlying libraries are not).
#[derive(Clone)]
pub struct PrivateKeyPem(Zeroizing<String>);

impl PrivateKeyPem {
    /// The PEM text. Handle with care: this is the secret.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKeyPem(<redacted>)")
    }
}

/// A freshly generated private key and the CSR for it.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    /// Key algorithm.
    pub key_type: KeyType,
    /// The private key, PKCS#8 PEM.
    pub private_key_pem: PrivateKeyPem,
    /// The PKCS#10 CSR, PEM (`-----BEGIN CERTIFICATE REQUEST-----`), signed
    /// with the private key and requesting the given SANs.
    pub csr_pem: String,
    /// Lowercase hex SHA-256 of the DER `SubjectPublicKeyInfo`: equals
    /// [`crate::pem::certificate_public_key_sha256`] of any certificate
    /// issued for this key.
    pub public_key_sha256: String,
}

/// Why key or CSR generation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    /// Neither DNS names nor IP addresses were given.
    #[error("a CSR needs at least one DNS name or IP address")]
    NoNames,
    /// A DNS name is not a valid IA5 (ASCII) string.
    #[error("DNS name {name:?} is not valid in a certificate: {reason}")]
    InvalidDnsName {
        /// The offending name.
        name: String,
        /// rcgen's message.
        reason: String,
    },
    /// The RSA key could not be generated or encoded.
    #[error("RSA-{bits} key generation failed: {reason}")]
    Rsa {
        /// Modulus size.
        bits: usize,
        /// Underlying message.
        reason: String,
    },
    /// rcgen failed to generate the key, load it, or build the CSR.
    #[error("{key_type} key/CSR generation failed: {source}")]
    Rcgen {
        /// Key algorithm.
        key_type: KeyType,
        /// Underlying error.
        #[source]
        source: rcgen::Error,
    },
}

/// Generates a private key of `key_type` and a CSR for it.
///
/// The CSR's subject is `CN=<common_name>` (no subject when `common_name`
/// is empty) and it requests the given DNS names (wildcards allowed) and IP
/// addresses as subject alternative names. At least one name is required.
///
/// RSA keys take from milliseconds (release) to seconds (debug, RSA-4096):
/// run this on a blocking thread in async code.
pub fn generate_key_and_csr(
    key_type: KeyType,
    common_name: &str,
    dns_names: &[String],
    ip_addresses: &[IpAddr],
) -> Result<GeneratedKey, KeygenError> {
    if dns_names.is_empty() && ip_addresses.is_empty() {
        return Err(KeygenError::NoNames);
    }
    let rcgen_err = |source| KeygenError::Rcgen { key_type, source };

    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    if !common_name.is_empty() {
        subject.push(DnType::CommonName, common_name);
    }
    params.distinguished_name = subject;
    params.subject_alt_names = dns_names
        .iter()
        .map(|name| {
            name.clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|err: rcgen::Error| KeygenError::InvalidDnsName {
                    name: name.clone(),
                    reason: err.to_string(),
                })
        })
        .chain(ip_addresses.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
        .collect::<Result<_, _>>()?;

    let key_pair = match key_type.rsa_bits() {
        Some(bits) => {
            let pem = generate_rsa_pkcs8_pem(bits)?;
            KeyPair::from_pkcs8_pem_and_sign_algo(&pem, key_type.signature_algorithm())
                .map_err(rcgen_err)?
        }
        None => KeyPair::generate_for(key_type.signature_algorithm()).map_err(rcgen_err)?,
    };
    let csr = params.serialize_request(&key_pair).map_err(rcgen_err)?;
    let csr_pem = csr.pem().map_err(rcgen_err)?;
    Ok(GeneratedKey {
        key_type,
        private_key_pem: PrivateKeyPem(Zeroizing::new(key_pair.serialize_pem())),
        csr_pem,
        public_key_sha256: hex::encode(Sha256::digest(key_pair.public_key_der())),
    })
}

/// Generates an RSA key with the `rsa` crate (e = 65537) and returns it as
/// PKCS#8 PEM, the form rcgen/ring load.
fn generate_rsa_pkcs8_pem(bits: usize) -> Result<Zeroizing<String>, KeygenError> {
    let rsa_err = |reason: String| KeygenError::Rsa { bits, reason };
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
        .map_err(|err| rsa_err(err.to_string()))?;
    key.to_pkcs8_pem(LineEnding::LF)
        .map_err(|err| rsa_err(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer as _;

    fn names() -> Vec<String> {
        vec!["www.example.com".to_owned(), "*.example.com".to_owned()]
    }

    fn ips() -> Vec<IpAddr> {
        vec![
            IpAddr::from([192, 0, 2, 10]),
            "2001:db8::1".parse().unwrap(),
        ]
    }

    /// Generates, then checks that the CSR parses, verifies, carries the
    /// names, and that the key PEM loads back with the CSR's public key.
    fn roundtrip(key_type: KeyType) {
        let generated = generate_key_and_csr(key_type, "www.example.com", &names(), &ips())
            .unwrap_or_else(|err| panic!("{key_type}: {err}"));
        assert_eq!(generated.key_type, key_type);

        let pem = x509_parser::pem::parse_x509_pem(generated.csr_pem.as_bytes())
            .unwrap()
            .1;
        assert_eq!(pem.label, "CERTIFICATE REQUEST");
        let (rest, csr) = X509CertificationRequest::from_der(&pem.contents).unwrap();
        assert!(rest.is_empty());
        csr.verify_signature().unwrap();

        let cn: Vec<_> = csr
            .certification_request_info
            .subject
            .iter_common_name()
            .map(|attr| attr.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(cn, ["www.example.com"]);

        let mut dns = Vec::new();
        let mut ip = Vec::new();
        for ext in csr.requested_extensions().unwrap() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                        GeneralName::IPAddress(b) => ip.push(b.to_vec()),
                        other => panic!("unexpected SAN {other}"),
                    }
                }
            }
        }
        assert_eq!(dns, names());
        let expected_ips: Vec<Vec<u8>> = ips()
            .iter()
            .map(|addr| match addr {
                IpAddr::V4(v4) => v4.octets().to_vec(),
                IpAddr::V6(v6) => v6.octets().to_vec(),
            })
            .collect();
        assert_eq!(ip, expected_ips);

        let key_pem = generated.private_key_pem.expose_secret();
        assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let key = KeyPair::from_pem(key_pem).unwrap();
        assert_eq!(
            key.public_key_der(),
            csr.certification_request_info.subject_pki.raw
        );
        assert_eq!(key.algorithm(), key_type.signature_algorithm());
    }

    #[test]
    fn ecdsa_p256_roundtrip() {
        roundtrip(KeyType::EcdsaP256);
    }

    #[test]
    fn ecdsa_p384_roundtrip() {
        roundtrip(KeyType::EcdsaP384);
    }

    #[test]
    fn ed25519_roundtrip() {
        roundtrip(KeyType::Ed25519);
    }

    /// Only RSA-2048 is exercised: RSA-3072/4096 generation takes seconds
    /// to tens of seconds in unoptimised debug builds. They share the code
    /// path; only the modulus size differs.
    #[test]
    fn rsa_2048_roundtrip() {
        roundtrip(KeyType::Rsa2048);
    }

    #[test]
    fn key_type_names_roundtrip() {
        for key_type in KeyType::ALL {
            assert_eq!(key_type.as_str().parse::<KeyType>().unwrap(), key_type);
            assert_eq!(key_type.to_string(), key_type.as_str());
            let json = serde_json::to_string(&key_type).unwrap();
            assert_eq!(json, format!("\"{}\"", key_type.as_str()));
            assert_eq!(serde_json::from_str::<KeyType>(&json).unwrap(), key_type);
        }
        assert_eq!(KeyType::default(), KeyType::EcdsaP256);
        assert_eq!(
            "RSA-2048".parse::<KeyType>(),
            Err(UnknownKeyType("RSA-2048".to_owned()))
        );
        assert!(serde_json::from_str::<KeyType>("\"rsa-1024\"").is_err());
    }

    #[test]
    fn debug_redacts_private_key() {
        let generated = generate_key_and_csr(KeyType::EcdsaP256, "", &names(), &[]).unwrap();
        let debug = format!("{generated:?}");
        assert!(debug.contains("<redacted>"));
        assert!(!debug.contains("PRIVATE KEY"));
        assert!(
            !debug.contains(
                generated
                    .private_key_pem
                    .expose_secret()
                    .lines()
                    .nth(1)
                    .unwrap()
            )
        );
    }

    #[test]
    fn empty_common_name_gives_empty_subject() {
        let generated = generate_key_and_csr(KeyType::EcdsaP256, "", &[], &ips()).unwrap();
        let pem = x509_parser::pem::parse_x509_pem(generated.csr_pem.as_bytes())
            .unwrap()
            .1;
        let (_, csr) = X509CertificationRequest::from_der(&pem.contents).unwrap();
        assert_eq!(csr.certification_request_info.subject.iter().count(), 0);
    }

    #[test]
    fn rejects_no_names_and_bad_dns_names() {
        assert!(matches!(
            generate_key_and_csr(KeyType::EcdsaP256, "x", &[], &[]),
            Err(KeygenError::NoNames)
        ));
        assert!(matches!(
            generate_key_and_csr(KeyType::EcdsaP256, "x", &["bücher.example".to_owned()], &[]),
            Err(KeygenError::InvalidDnsName { .. })
        ));
    }
}
