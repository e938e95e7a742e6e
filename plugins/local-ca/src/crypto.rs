//! Where the CA's signatures are made and CSR signatures are checked.
//!
//! [`CaCrypto`] is the seam: in the component, [`HostCrypto`] asks the
//! host (the contract's `signing` import: native code, the key parsed once
//! per instance and never handed to the guest); in native unit tests,
//! [`CaKey`](crate::ca::CaKey) does the same work in-process with the
//! RustCrypto crates, from the key's PEM.

use const_oid::ObjectIdentifier;
use const_oid::db::{rfc5912, rfc8410};
use der::asn1::Any;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

pub use certplane_sdk::signing::SignatureScheme as Scheme;

/// Signs for the CA and checks CSR signatures.
pub trait CaCrypto {
    /// The scheme the CA key signs with and its public key. Errors are
    /// configuration errors (no key, not a key), for the operator.
    fn ca_key(&self) -> Result<(Scheme, SubjectPublicKeyInfoOwned), String>;

    /// Signs `message` (a TBSCertificate) with the CA key, returning the
    /// signature as it goes into the certificate's BIT STRING.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String>;

    /// Whether `signature` over `message` verifies with `key` under the
    /// signature algorithm `algorithm`. `Err` when the check cannot be
    /// made at all (a key that does not parse), with the reason.
    fn verify(
        &self,
        key: &SubjectPublicKeyInfoOwned,
        algorithm: &ObjectIdentifier,
        message: &[u8],
        signature: &[u8],
    ) -> Result<bool, String>;
}

/// The signature algorithm (with its parameters) a scheme puts into a
/// certificate.
pub fn signature_algorithm(scheme: Scheme) -> AlgorithmIdentifierOwned {
    let (oid, parameters) = match scheme {
        Scheme::EcdsaP256Sha256 => (rfc5912::ECDSA_WITH_SHA_256, None),
        Scheme::EcdsaP384Sha384 => (rfc5912::ECDSA_WITH_SHA_384, None),
        Scheme::Ed25519 => (rfc8410::ID_ED_25519, None),
        Scheme::RsaPkcs1Sha256 => (rfc5912::SHA_256_WITH_RSA_ENCRYPTION, Some(Any::null())),
    };
    AlgorithmIdentifierOwned { oid, parameters }
}

/// The CA key held by the host in one of this instance's secrets.
#[derive(Clone, Debug)]
pub struct HostCrypto {
    secret: &'static str,
}

impl HostCrypto {
    /// The key in the secret `secret`.
    pub fn new(secret: &'static str) -> Self {
        HostCrypto { secret }
    }
}

impl CaCrypto for HostCrypto {
    fn ca_key(&self) -> Result<(Scheme, SubjectPublicKeyInfoOwned), String> {
        use der::Decode;
        let key =
            certplane_sdk::signing::key_info(self.secret).map_err(|e| e.message().to_string())?;
        let spki = SubjectPublicKeyInfoOwned::from_der(&key.spki_der).map_err(|e| {
            format!(
                "the host's public key of {} does not parse: {e}",
                self.secret
            )
        })?;
        Ok((key.scheme, spki))
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        certplane_sdk::signing::sign(self.secret, message).map_err(|e| e.message().to_string())
    }

    fn verify(
        &self,
        key: &SubjectPublicKeyInfoOwned,
        algorithm: &ObjectIdentifier,
        message: &[u8],
        signature: &[u8],
    ) -> Result<bool, String> {
        use der::Encode;
        let spki = key.to_der().map_err(|e| e.to_string())?;
        certplane_sdk::signing::verify(&spki, &algorithm.to_string(), message, signature)
            .map_err(|e| e.message().to_string())
    }
}
