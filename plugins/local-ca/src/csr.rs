//! Parsing of PKCS#10 certificate signing requests and verification of their
//! self-signature (proof that the requester holds the private key). What
//! checks the signature is a [`CaCrypto`]: the host in the component; the
//! RustCrypto code here (`verify_in_guest`) in native tests.

use const_oid::ObjectIdentifier;
use const_oid::db::{rfc5912, rfc8410};
use der::asn1::AnyRef;
use der::{Decode, Encode, Header, SliceReader};
use sha2::{Digest, Sha256, Sha384, Sha512};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::request::CertReq;

use crate::crypto::CaCrypto;

/// Smallest RSA modulus accepted in a CSR.
pub const MIN_RSA_BITS: usize = 2048;

/// The kind of key a CSR carries; decides the leaf's key usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA on P-256.
    P256,
    /// ECDSA on P-384.
    P384,
    /// Ed25519.
    Ed25519,
    /// RSA (any accepted size).
    Rsa,
}

impl KeyKind {
    /// Whether certificates for this key get `keyEncipherment` (RSA key
    /// transport in TLS 1.2).
    pub fn key_encipherment(self) -> bool {
        self == KeyKind::Rsa
    }
}

/// A CSR whose signature verified.
#[derive(Clone, Debug)]
pub struct VerifiedCsr {
    /// The requester's public key, copied into the certificate as is.
    pub public_key: SubjectPublicKeyInfoOwned,
    /// What kind of key it is.
    pub kind: KeyKind,
}

/// Parses a PEM CSR (`CERTIFICATE REQUEST` or the older `NEW CERTIFICATE
/// REQUEST` label) and verifies its self-signature. Supported: ECDSA P-256
/// and P-384 with SHA-256/384/512, Ed25519, and RSA PKCS#1 v1.5 with
/// SHA-256/384/512 (RSA keys of at least 2048 bits).
///
/// Every failure is a message for a `rejected` error.
pub fn parse_and_verify(csr_pem: &str, crypto: &impl CaCrypto) -> Result<VerifiedCsr, String> {
    let blocks = certplane_sdk::pem::parse_blocks(csr_pem).map_err(|e| format!("CSR: {e}"))?;
    let block = blocks
        .iter()
        .find(|b| b.label == "CERTIFICATE REQUEST" || b.label == "NEW CERTIFICATE REQUEST")
        .ok_or_else(|| "CSR: no CERTIFICATE REQUEST PEM block found".to_string())?;
    let der = &block.der;
    let req = CertReq::from_der(der).map_err(|e| format!("CSR does not parse: {e}"))?;
    let signed = raw_info(der).map_err(|e| format!("CSR does not parse: {e}"))?;
    let signature = req
        .signature
        .as_bytes()
        .ok_or_else(|| "CSR signature has unused bits".to_string())?;
    let kind = key_kind(&req.info.public_key, &req.algorithm.oid)?;
    let verified = crypto
        .verify(&req.info.public_key, &req.algorithm.oid, &signed, signature)
        .map_err(|e| format!("CSR: {e}"))?;
    if !verified {
        return Err(bad_signature());
    }
    Ok(VerifiedCsr {
        public_key: req.info.public_key,
        kind,
    })
}

/// The DER bytes of `certificationRequestInfo` exactly as they were signed.
fn raw_info(der: &[u8]) -> der::Result<Vec<u8>> {
    let mut reader = SliceReader::new(der)?;
    let _outer = Header::decode(&mut reader)?;
    let info = AnyRef::decode(&mut reader)?;
    info.to_der()
}

#[derive(Clone, Copy)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn digest(self, msg: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => Sha256::digest(msg).to_vec(),
            Hash::Sha384 => Sha384::digest(msg).to_vec(),
            Hash::Sha512 => Sha512::digest(msg).to_vec(),
        }
    }
}

fn ecdsa_hash(alg: &ObjectIdentifier) -> Option<Hash> {
    match *alg {
        rfc5912::ECDSA_WITH_SHA_256 => Some(Hash::Sha256),
        rfc5912::ECDSA_WITH_SHA_384 => Some(Hash::Sha384),
        rfc5912::ECDSA_WITH_SHA_512 => Some(Hash::Sha512),
        _ => None,
    }
}

fn rsa_hash(alg: &ObjectIdentifier) -> Option<Hash> {
    match *alg {
        rfc5912::SHA_256_WITH_RSA_ENCRYPTION => Some(Hash::Sha256),
        rfc5912::SHA_384_WITH_RSA_ENCRYPTION => Some(Hash::Sha384),
        rfc5912::SHA_512_WITH_RSA_ENCRYPTION => Some(Hash::Sha512),
        _ => None,
    }
}

/// The named curve in an `id-ecPublicKey` algorithm identifier's parameters.
pub fn curve_oid(alg: &spki::AlgorithmIdentifierOwned) -> Option<ObjectIdentifier> {
    alg.parameters
        .as_ref()?
        .decode_as::<ObjectIdentifier>()
        .ok()
}

/// A readable name for a signature or key algorithm OID.
pub fn algorithm_name(oid: &ObjectIdentifier) -> String {
    let name = match *oid {
        rfc5912::ECDSA_WITH_SHA_256 => "ecdsa-with-SHA256",
        rfc5912::ECDSA_WITH_SHA_384 => "ecdsa-with-SHA384",
        rfc5912::ECDSA_WITH_SHA_512 => "ecdsa-with-SHA512",
        rfc5912::SHA_256_WITH_RSA_ENCRYPTION => "sha256WithRSAEncryption",
        rfc5912::SHA_384_WITH_RSA_ENCRYPTION => "sha384WithRSAEncryption",
        rfc5912::SHA_512_WITH_RSA_ENCRYPTION => "sha512WithRSAEncryption",
        rfc5912::ID_RSASSA_PSS => "RSASSA-PSS",
        rfc5912::SHA_1_WITH_RSA_ENCRYPTION => "sha1WithRSAEncryption",
        rfc5912::ID_EC_PUBLIC_KEY => "id-ecPublicKey",
        rfc5912::RSA_ENCRYPTION => "rsaEncryption",
        rfc8410::ID_ED_25519 => "Ed25519",
        rfc8410::ID_ED_448 => "Ed448",
        rfc5912::SECP_256_R_1 => "P-256",
        rfc5912::SECP_384_R_1 => "P-384",
        rfc5912::SECP_521_R_1 => "P-521",
        _ => return oid.to_string(),
    };
    name.to_string()
}

fn bad_signature() -> String {
    "CSR signature does not verify (the request was altered or not signed by the key it carries)"
        .to_string()
}

/// What kind of key `spki` is, when this CA certifies such keys and
/// `sig_alg` is a signature algorithm of that key; the reason otherwise.
/// Checks no signature.
pub(crate) fn key_kind(
    spki: &SubjectPublicKeyInfoOwned,
    sig_alg: &ObjectIdentifier,
) -> Result<KeyKind, String> {
    let key_bytes = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| "CSR public key has unused bits".to_string())?;
    let mismatch = |key: &str| {
        format!(
            "CSR signature algorithm {} does not fit its {key} key",
            algorithm_name(sig_alg)
        )
    };
    match spki.algorithm.oid {
        rfc5912::ID_EC_PUBLIC_KEY => {
            let curve = curve_oid(&spki.algorithm)
                .ok_or_else(|| "CSR EC public key names no curve".to_string())?;
            ecdsa_hash(sig_alg).ok_or_else(|| mismatch("ECDSA"))?;
            match curve {
                rfc5912::SECP_256_R_1 => Ok(KeyKind::P256),
                rfc5912::SECP_384_R_1 => Ok(KeyKind::P384),
                other => Err(format!(
                    "CSR key curve {} is not supported (use P-256, P-384, Ed25519 or RSA)",
                    algorithm_name(&other)
                )),
            }
        }
        rfc8410::ID_ED_25519 => {
            if *sig_alg != rfc8410::ID_ED_25519 {
                return Err(mismatch("Ed25519"));
            }
            if key_bytes.len() != 32 {
                return Err("CSR Ed25519 public key is not 32 bytes".to_string());
            }
            Ok(KeyKind::Ed25519)
        }
        rfc5912::RSA_ENCRYPTION => {
            rsa_hash(sig_alg).ok_or_else(|| {
                if *sig_alg == rfc5912::ID_RSASSA_PSS {
                    "CSR is signed with RSASSA-PSS, which this CA does not verify; sign it with \
                     PKCS#1 v1.5 (sha256WithRSAEncryption)"
                        .to_string()
                } else {
                    mismatch("RSA")
                }
            })?;
            let key = rsa::pkcs1::RsaPublicKey::from_der(key_bytes)
                .map_err(|e| format!("CSR RSA public key is invalid: {e}"))?;
            let bits = modulus_bits(key.modulus.as_bytes());
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "CSR RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"
                ));
            }
            Ok(KeyKind::Rsa)
        }
        other => Err(format!(
            "CSR key type {} is not supported (use P-256, P-384, Ed25519 or RSA)",
            algorithm_name(&other)
        )),
    }
}

/// The bit length of a big-endian unsigned integer.
fn modulus_bits(n: &[u8]) -> usize {
    match n.iter().position(|b| *b != 0) {
        Some(first) => (n.len() - first) * 8 - n[first].leading_zeros() as usize,
        None => 0,
    }
}

/// Checks a CSR's signature: its key kind, then the signature itself with
/// the RustCrypto crates, in the guest.
#[cfg(test)]
pub(crate) fn verify(
    spki: &SubjectPublicKeyInfoOwned,
    sig_alg: &ObjectIdentifier,
    msg: &[u8],
    sig: &[u8],
) -> Result<KeyKind, String> {
    let kind = key_kind(spki, sig_alg)?;
    if !verify_in_guest(spki, sig_alg, msg, sig)? {
        return Err(bad_signature());
    }
    Ok(kind)
}

/// Whether `sig` over `msg` verifies with `spki` under `sig_alg`, with the
/// RustCrypto crates; `Err` for a key or algorithm it cannot check.
pub(crate) fn verify_in_guest(
    spki: &SubjectPublicKeyInfoOwned,
    sig_alg: &ObjectIdentifier,
    msg: &[u8],
    sig: &[u8],
) -> Result<bool, String> {
    let key_bytes = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| "CSR public key has unused bits".to_string())?;
    let unsupported = || format!("cannot check a {} signature", algorithm_name(sig_alg));
    match spki.algorithm.oid {
        rfc5912::ID_EC_PUBLIC_KEY => {
            let hash = ecdsa_hash(sig_alg).ok_or_else(unsupported)?;
            let digest = hash.digest(msg);
            match curve_oid(&spki.algorithm) {
                Some(rfc5912::SECP_256_R_1) => {
                    use p256::ecdsa::signature::hazmat::PrehashVerifier;
                    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(key_bytes)
                        .map_err(|_| "CSR P-256 public key is invalid".to_string())?;
                    Ok(p256::ecdsa::Signature::from_der(sig)
                        .is_ok_and(|sig| key.verify_prehash(&digest, &sig).is_ok()))
                }
                Some(rfc5912::SECP_384_R_1) => {
                    use p384::ecdsa::signature::hazmat::PrehashVerifier;
                    let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(key_bytes)
                        .map_err(|_| "CSR P-384 public key is invalid".to_string())?;
                    Ok(p384::ecdsa::Signature::from_der(sig)
                        .is_ok_and(|sig| key.verify_prehash(&digest, &sig).is_ok()))
                }
                _ => Err(unsupported()),
            }
        }
        rfc8410::ID_ED_25519 => {
            let key_bytes: &[u8; 32] = key_bytes
                .try_into()
                .map_err(|_| "CSR Ed25519 public key is not 32 bytes".to_string())?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(key_bytes)
                .map_err(|_| "CSR Ed25519 public key is invalid".to_string())?;
            Ok(ed25519_dalek::Signature::from_slice(sig)
                .is_ok_and(|sig| key.verify_strict(msg, &sig).is_ok()))
        }
        rfc5912::RSA_ENCRYPTION => {
            use rsa::pkcs1::DecodeRsaPublicKey;
            let hash = rsa_hash(sig_alg).ok_or_else(unsupported)?;
            let key = rsa::RsaPublicKey::from_pkcs1_der(key_bytes)
                .map_err(|e| format!("CSR RSA public key is invalid: {e}"))?;
            let Ok(sig) = rsa::pkcs1v15::Signature::try_from(sig) else {
                return Ok(false);
            };
            Ok(match hash {
                Hash::Sha256 => verify_rsa::<Sha256>(key, msg, &sig),
                Hash::Sha384 => verify_rsa::<Sha384>(key, msg, &sig),
                Hash::Sha512 => verify_rsa::<Sha512>(key, msg, &sig),
            })
        }
        _ => Err(unsupported()),
    }
}

fn verify_rsa<D>(key: rsa::RsaPublicKey, msg: &[u8], sig: &rsa::pkcs1v15::Signature) -> bool
where
    D: Digest + const_oid::AssociatedOid,
{
    use rsa::signature::Verifier;
    rsa::pkcs1v15::VerifyingKey::<D>::new(key)
        .verify(msg, sig)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(name: &str) -> String {
        let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The in-guest checker (any key will do: verifying uses only the CSR's).
    fn ca_key() -> crate::ca::CaKey {
        crate::ca::CaKey::from_pem(&csr("ca-p256.key")).unwrap()
    }

    #[test]
    fn verifies_every_supported_key_type() {
        for (file, kind) in [
            ("csr-p256.pem", KeyKind::P256),
            ("csr-p256-sha384.pem", KeyKind::P256),
            ("csr-p384.pem", KeyKind::P384),
            ("csr-ed25519.pem", KeyKind::Ed25519),
            ("csr-rsa.pem", KeyKind::Rsa),
        ] {
            let v =
                parse_and_verify(&csr(file), &ca_key()).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(v.kind, kind, "{file}");
        }
    }

    #[test]
    fn refuses_tampered_and_unsupported() {
        let e = parse_and_verify(&csr("csr-p256-tampered.pem"), &ca_key()).unwrap_err();
        assert!(e.starts_with("CSR signature does not verify"), "{e}");
        let e = parse_and_verify(&csr("csr-p521.pem"), &ca_key()).unwrap_err();
        assert!(e.contains("curve P-521 is not supported"), "{e}");
        let e = parse_and_verify(&csr("csr-rsa-pss.pem"), &ca_key()).unwrap_err();
        assert!(e.contains("RSASSA-PSS"), "{e}");
        let e = parse_and_verify("garbage", &ca_key()).unwrap_err();
        assert_eq!(e, "CSR: no PEM block found");
        let e = parse_and_verify(&csr("ca-p256.pem"), &ca_key()).unwrap_err();
        assert_eq!(e, "CSR: no CERTIFICATE REQUEST PEM block found");
    }
}
