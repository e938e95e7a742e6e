//! The 1.1 `signing` import: signatures made natively by the host with a
//! private key held in one of the calling instance's own secrets, and
//! signature checks on public data (a CSR's proof of possession).
//!
//! A connector names a secret, never a key: the lookup goes through the
//! calling instance's secrets only, so no instance can sign with another's
//! key. Parsing a key (and ring's consistency checks on it) costs far more
//! than a signature, so parsed keys are kept in a bounded [`KeyCache`] per
//! runtime, keyed by plugin, instance and the SHA-256 of the secret value:
//! a rotated secret is a new entry, and the old one ages out.
//!
//! ring signs and verifies where it can (ECDSA P-256/P-384, Ed25519, RSA of
//! 2048–4096 bits, verification of RSA up to 8192 bits); RustCrypto covers
//! the shapes ring refuses, so every key and CSR the in-guest code accepted
//! still works: EC keys without an embedded public key and SEC1 keys (made
//! into PKCS#8 once), RSA signing keys outside ring's sizes, ECDSA with
//! SHA-512 and compressed EC points.

use std::collections::BTreeMap;
use std::sync::Arc;

use ring::rand::SystemRandom;
use ring::signature::{self as ring_sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use sha2::{Digest, Sha256, Sha512};
use spki::der::asn1::{BitString, ObjectIdentifier};
use spki::der::{Any, Decode, Encode};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned, SubjectPublicKeyInfoRef};

use crate::bindings::issuer::certplane::connector::signing::{self, SignatureScheme, SigningKey};
use crate::bindings::types::ConnectorError;
use crate::call_state::CallState;
use crate::instance::Secret;

/// Longest message `sign` and `verify` take. A certificate's TBS part is a
/// few KiB; the bound keeps one host call (hashing happens outside the
/// guest's epoch deadline) to about a millisecond.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Parsed keys a runtime keeps by default ([`crate::RuntimeConfig`]).
pub const DEFAULT_KEY_CACHE_ENTRIES: u64 = 256;

/// How long a parsed key unused by any call is kept.
pub const KEY_IDLE: std::time::Duration = std::time::Duration::from_secs(3600);

const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const ID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const ECDSA_WITH_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.4");
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");

/// What signs for a parsed key.
enum Signer {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
    Rsa(RsaKeyPair),
    /// RSA keys ring does not sign with (under 2048 or over 4096 bits, a
    /// small public exponent).
    RsaOther(Box<rsa::pkcs1v15::SigningKey<Sha256>>),
}

/// A private key parsed from a secret, ready to sign.
pub struct ParsedKey {
    scheme: SignatureScheme,
    spki_der: Vec<u8>,
    signer: Signer,
}

impl std::fmt::Debug for ParsedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedKey")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

impl ParsedKey {
    /// Parses a PEM private key: PKCS#8 (`PRIVATE KEY`: P-256, P-384,
    /// Ed25519, RSA), SEC1 (`EC PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE
    /// KEY`). The first private key block counts; encrypted keys are
    /// refused. Errors never quote the key.
    pub fn from_pem(text: &str) -> Result<ParsedKey, String> {
        let mut reader = text.as_bytes();
        loop {
            match rustls_pemfile::read_one(&mut reader) {
                Ok(Some(rustls_pemfile::Item::Pkcs8Key(k))) => {
                    return Self::from_pkcs8(k.secret_pkcs8_der());
                }
                Ok(Some(rustls_pemfile::Item::Sec1Key(k))) => {
                    return Self::from_sec1(k.secret_sec1_der());
                }
                Ok(Some(rustls_pemfile::Item::Pkcs1Key(k))) => {
                    return Self::from_pkcs1(k.secret_pkcs1_der());
                }
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return Err("the PEM text is malformed".into()),
            }
        }
        if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            return Err(
                "the key is encrypted; store it unencrypted in the secret (the host \
                 encrypts secrets at rest), e.g. `openssl pkcs8 -topk8 -nocrypt`"
                    .into(),
            );
        }
        Err("no PRIVATE KEY PEM block found".into())
    }

    fn from_pkcs8(der: &[u8]) -> Result<ParsedKey, String> {
        let info = rsa::pkcs8::PrivateKeyInfo::try_from(der)
            .map_err(|e| format!("PKCS#8 key does not parse: {e}"))?;
        match info.algorithm.oid {
            ID_EC_PUBLIC_KEY => match info.algorithm.parameters_oid() {
                Ok(SECP256R1) => Self::ecdsa(der, SignatureScheme::EcdsaP256Sha256, || {
                    use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
                    p256::SecretKey::from_pkcs8_der(der)
                        .and_then(|k| k.to_pkcs8_der())
                        .map(|d| d.as_bytes().to_vec())
                        .map_err(|e| format!("P-256 key does not parse: {e}"))
                }),
                Ok(SECP384R1) => Self::ecdsa(der, SignatureScheme::EcdsaP384Sha384, || {
                    use p384::pkcs8::{DecodePrivateKey, EncodePrivateKey};
                    p384::SecretKey::from_pkcs8_der(der)
                        .and_then(|k| k.to_pkcs8_der())
                        .map(|d| d.as_bytes().to_vec())
                        .map_err(|e| format!("P-384 key does not parse: {e}"))
                }),
                Ok(other) => Err(format!(
                    "EC key on curve {other} is not supported (use P-256, P-384, Ed25519 or RSA)"
                )),
                Err(_) => Err("EC key names no curve".into()),
            },
            ID_ED25519 => {
                let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                    .map_err(|e| format!("Ed25519 key does not parse: {e}"))?;
                Ok(ParsedKey {
                    scheme: SignatureScheme::Ed25519,
                    spki_der: spki_der(ID_ED25519, None, pair.public_key().as_ref())?,
                    signer: Signer::Ed25519(pair),
                })
            }
            RSA_ENCRYPTION => match RsaKeyPair::from_pkcs8(der) {
                Ok(pair) => Self::rsa(pair),
                Err(_) => {
                    use rsa::pkcs8::DecodePrivateKey;
                    let key = rsa::RsaPrivateKey::from_pkcs8_der(der)
                        .map_err(|e| format!("RSA key does not parse: {e}"))?;
                    Self::rsa_other(key)
                }
            },
            other => Err(format!(
                "key type {other} is not supported (use P-256, P-384, Ed25519 or RSA)"
            )),
        }
    }

    fn from_sec1(der: &[u8]) -> Result<ParsedKey, String> {
        use p256::pkcs8::EncodePrivateKey;
        if let Ok(key) = p256::SecretKey::from_sec1_der(der) {
            let pkcs8 = key.to_pkcs8_der().map_err(|e| e.to_string())?;
            return Self::ecdsa(pkcs8.as_bytes(), SignatureScheme::EcdsaP256Sha256, || {
                Err("P-256 key is not usable".into())
            });
        }
        if let Ok(key) = p384::SecretKey::from_sec1_der(der) {
            let pkcs8 = key.to_pkcs8_der().map_err(|e| e.to_string())?;
            return Self::ecdsa(pkcs8.as_bytes(), SignatureScheme::EcdsaP384Sha384, || {
                Err("P-384 key is not usable".into())
            });
        }
        Err("EC PRIVATE KEY is not a valid P-256 or P-384 key".into())
    }

    fn from_pkcs1(der: &[u8]) -> Result<ParsedKey, String> {
        match RsaKeyPair::from_der(der) {
            Ok(pair) => Self::rsa(pair),
            Err(_) => {
                use rsa::pkcs1::DecodeRsaPrivateKey;
                let key = rsa::RsaPrivateKey::from_pkcs1_der(der)
                    .map_err(|e| format!("RSA PRIVATE KEY does not parse: {e}"))?;
                Self::rsa_other(key)
            }
        }
    }

    /// An ECDSA key from PKCS#8 for ring; ring wants the public key inside
    /// it, so a key without one is re-encoded by `reencode` (RustCrypto
    /// derives it) and tried once more.
    fn ecdsa(
        pkcs8: &[u8],
        scheme: SignatureScheme,
        reencode: impl FnOnce() -> Result<Vec<u8>, String>,
    ) -> Result<ParsedKey, String> {
        let (alg, curve) = match scheme {
            SignatureScheme::EcdsaP256Sha256 => {
                (&ring_sig::ECDSA_P256_SHA256_ASN1_SIGNING, SECP256R1)
            }
            _ => (&ring_sig::ECDSA_P384_SHA384_ASN1_SIGNING, SECP384R1),
        };
        let rng = SystemRandom::new();
        let pair = match EcdsaKeyPair::from_pkcs8(alg, pkcs8, &rng) {
            Ok(pair) => pair,
            Err(_) => {
                let full = reencode()?;
                EcdsaKeyPair::from_pkcs8(alg, &full, &rng)
                    .map_err(|e| format!("EC key is not usable: {e}"))?
            }
        };
        let params = Any::encode_from(&curve).map_err(|e| e.to_string())?;
        Ok(ParsedKey {
            scheme,
            spki_der: spki_der(ID_EC_PUBLIC_KEY, Some(params), pair.public_key().as_ref())?,
            signer: Signer::Ecdsa(pair),
        })
    }

    fn rsa(pair: RsaKeyPair) -> Result<ParsedKey, String> {
        Ok(ParsedKey {
            scheme: SignatureScheme::RsaPkcs1Sha256,
            spki_der: spki_der(
                RSA_ENCRYPTION,
                Some(Any::null()),
                pair.public_key().as_ref(),
            )?,
            signer: Signer::Rsa(pair),
        })
    }

    fn rsa_other(key: rsa::RsaPrivateKey) -> Result<ParsedKey, String> {
        use rsa::pkcs8::EncodePublicKey;
        let spki_der = key
            .to_public_key()
            .to_public_key_der()
            .map_err(|e| e.to_string())?
            .into_vec();
        Ok(ParsedKey {
            scheme: SignatureScheme::RsaPkcs1Sha256,
            spki_der,
            signer: Signer::RsaOther(Box::new(rsa::pkcs1v15::SigningKey::new(key))),
        })
    }

    /// The scheme this key signs with.
    pub fn scheme(&self) -> SignatureScheme {
        self.scheme
    }

    /// The public key, a DER `SubjectPublicKeyInfo`.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// Signs `message` as it goes into an X.509 signature BIT STRING.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let rng = SystemRandom::new();
        match &self.signer {
            Signer::Ecdsa(pair) => pair
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| "ECDSA signing failed (no randomness?)".to_string()),
            Signer::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            Signer::Rsa(pair) => {
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(&ring_sig::RSA_PKCS1_SHA256, &rng, message, &mut signature)
                    .map_err(|_| "RSA signing failed".to_string())?;
                Ok(signature)
            }
            Signer::RsaOther(key) => {
                use rsa::signature::{RandomizedSigner, SignatureEncoding};
                key.try_sign_with_rng(&mut rsa::rand_core::OsRng, message)
                    .map(|s| s.to_vec())
                    .map_err(|e| format!("RSA signing failed: {e}"))
            }
        }
    }
}

fn spki_der(
    oid: ObjectIdentifier,
    parameters: Option<Any>,
    public_key: &[u8],
) -> Result<Vec<u8>, String> {
    SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned { oid, parameters },
        subject_public_key: BitString::from_bytes(public_key).map_err(|e| e.to_string())?,
    }
    .to_der()
    .map_err(|e| e.to_string())
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct KeyId {
    plugin: Arc<str>,
    instance: Arc<str>,
    digest: [u8; 32],
}

/// Parsed signing keys of a runtime's instances, at most a configured
/// number (least recently and least often used go first); a key unused
/// for [`KEY_IDLE`] is dropped, so the key of a deleted instance or a
/// rotated secret does not stay in memory for good.
#[derive(Clone)]
pub struct KeyCache {
    keys: moka::sync::Cache<KeyId, Arc<ParsedKey>>,
}

impl KeyCache {
    /// A cache of at most `entries` keys.
    pub fn new(entries: u64) -> Self {
        KeyCache {
            keys: moka::sync::Cache::builder()
                .max_capacity(entries)
                .time_to_idle(KEY_IDLE)
                .build(),
        }
    }

    /// Keys held now (after pending evictions are applied).
    pub fn len(&self) -> u64 {
        self.keys.run_pending_tasks();
        self.keys.entry_count()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key held in the secret `name` of this instance (`secrets`),
    /// parsed once. `invalid-config` when the instance has no such secret
    /// or it holds no usable key.
    pub(crate) fn key(
        &self,
        caller: &Caller<'_>,
        name: &str,
    ) -> Result<Arc<ParsedKey>, ConnectorError> {
        let Some(secret) = caller.secrets.get(name) else {
            return Err(ConnectorError::InvalidConfig(format!(
                "this instance has no secret {:?} to sign with",
                shown(name)
            )));
        };
        let id = KeyId {
            plugin: Arc::clone(caller.plugin),
            instance: Arc::clone(caller.instance),
            digest: Sha256::digest(secret.expose().as_bytes()).into(),
        };
        self.keys
            .try_get_with(id, || {
                let key = ParsedKey::from_pem(secret.expose())?;
                tracing::debug!(
                    plugin = &**caller.plugin,
                    instance = &**caller.instance,
                    secret = name,
                    scheme = ?key.scheme,
                    "signing key parsed"
                );
                Ok(Arc::new(key))
            })
            .map_err(|e: Arc<String>| {
                ConnectorError::InvalidConfig(format!(
                    "secret {:?} is not a usable private key: {e}",
                    shown(name)
                ))
            })
    }
}

/// A guest-supplied name as it may appear in an error.
fn shown(name: &str) -> String {
    name.chars().take(64).collect()
}

fn too_long(what: &str, len: usize) -> ConnectorError {
    ConnectorError::Rejected(format!(
        "{what} of {len} bytes is longer than the {MAX_MESSAGE_BYTES} bytes the host takes"
    ))
}

/// Whether `signature` over `message` verifies with the public key
/// `spki_der` under the X.509 signature algorithm `algorithm` (a dotted
/// OID). See the WIT for what answers what.
pub fn verify(
    spki_der: &[u8],
    algorithm: &str,
    message: &[u8],
    signature: &[u8],
) -> Result<bool, ConnectorError> {
    if message.len() > MAX_MESSAGE_BYTES {
        return Err(too_long("a message", message.len()));
    }
    if take_made_here(spki_der, algorithm, message, signature) {
        return Ok(true);
    }
    let key = SubjectPublicKeyInfoRef::from_der(spki_der)
        .map_err(|e| ConnectorError::Rejected(format!("the public key does not parse: {e}")))?;
    let alg = ObjectIdentifier::new(algorithm).map_err(|_| {
        ConnectorError::Unsupported(format!(
            "signature algorithm {:?} is not an OID",
            shown(algorithm)
        ))
    })?;
    let Some(point) = key.subject_public_key.as_bytes() else {
        return Err(ConnectorError::Rejected(
            "the public key has unused bits".into(),
        ));
    };
    let unfit = |kind: &str| {
        Err(ConnectorError::Unsupported(format!(
            "signature algorithm {alg} does not fit a {kind} key"
        )))
    };
    let ring_alg: &dyn ring_sig::VerificationAlgorithm = match key.algorithm.oid {
        ID_EC_PUBLIC_KEY => {
            let curve = key
                .algorithm
                .parameters_oid()
                .map_err(|_| ConnectorError::Rejected("the EC public key names no curve".into()))?;
            let uncompressed = point.first() == Some(&4);
            match (curve, alg) {
                (SECP256R1, ECDSA_WITH_SHA256) if uncompressed => &ring_sig::ECDSA_P256_SHA256_ASN1,
                (SECP256R1, ECDSA_WITH_SHA384) if uncompressed => &ring_sig::ECDSA_P256_SHA384_ASN1,
                (SECP384R1, ECDSA_WITH_SHA256) if uncompressed => &ring_sig::ECDSA_P384_SHA256_ASN1,
                (SECP384R1, ECDSA_WITH_SHA384) if uncompressed => &ring_sig::ECDSA_P384_SHA384_ASN1,
                (SECP256R1 | SECP384R1, ECDSA_WITH_SHA256 | ECDSA_WITH_SHA384)
                | (SECP256R1 | SECP384R1, ECDSA_WITH_SHA512) => {
                    return ecdsa_prehashed(curve, alg, point, message, signature);
                }
                (SECP256R1 | SECP384R1, _) => return unfit("ECDSA"),
                (other, _) => {
                    return Err(ConnectorError::Unsupported(format!(
                        "EC curve {other} is not supported (P-256 and P-384 are)"
                    )));
                }
            }
        }
        ID_ED25519 if alg == ID_ED25519 => {
            if point.len() != 32 {
                return Err(ConnectorError::Rejected(
                    "the Ed25519 public key is not 32 bytes".into(),
                ));
            }
            &ring_sig::ED25519
        }
        ID_ED25519 => return unfit("Ed25519"),
        RSA_ENCRYPTION => {
            let bits = rsa_modulus_bits(point)?;
            if bits < 2048 {
                return Err(ConnectorError::Rejected(format!(
                    "the RSA key has {bits} bits; at least 2048 are required"
                )));
            }
            if bits > 8192 {
                return Err(ConnectorError::Unsupported(format!(
                    "the RSA key has {bits} bits; at most 8192 are supported"
                )));
            }
            match alg {
                SHA256_WITH_RSA => &ring_sig::RSA_PKCS1_2048_8192_SHA256,
                SHA384_WITH_RSA => &ring_sig::RSA_PKCS1_2048_8192_SHA384,
                SHA512_WITH_RSA => &ring_sig::RSA_PKCS1_2048_8192_SHA512,
                _ => return unfit("RSA (PKCS#1 v1.5)"),
            }
        }
        other => {
            return Err(ConnectorError::Unsupported(format!(
                "public key type {other} is not supported (P-256, P-384, Ed25519 and RSA are)"
            )));
        }
    };
    Ok(ring_sig::UnparsedPublicKey::new(ring_alg, point)
        .verify(message, signature)
        .is_ok())
}

/// ECDSA checks ring does not do (SHA-512, compressed points), with
/// RustCrypto on the message's digest.
fn ecdsa_prehashed(
    curve: ObjectIdentifier,
    alg: ObjectIdentifier,
    point: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<bool, ConnectorError> {
    let digest = match alg {
        ECDSA_WITH_SHA256 => Sha256::digest(message).to_vec(),
        ECDSA_WITH_SHA384 => sha2::Sha384::digest(message).to_vec(),
        _ => Sha512::digest(message).to_vec(),
    };
    let invalid =
        |curve: &str| ConnectorError::Rejected(format!("the {curve} public key is invalid"));
    if curve == SECP256R1 {
        use p256::ecdsa::signature::hazmat::PrehashVerifier;
        let key =
            p256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| invalid("P-256"))?;
        Ok(p256::ecdsa::Signature::from_der(signature)
            .is_ok_and(|sig| key.verify_prehash(&digest, &sig).is_ok()))
    } else {
        use p384::ecdsa::signature::hazmat::PrehashVerifier;
        let key =
            p384::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| invalid("P-384"))?;
        Ok(p384::ecdsa::Signature::from_der(signature)
            .is_ok_and(|sig| key.verify_prehash(&digest, &sig).is_ok()))
    }
}

/// The size of an RSA public key's modulus, from its PKCS#1 encoding.
fn rsa_modulus_bits(public_key: &[u8]) -> Result<usize, ConnectorError> {
    let key = rsa::pkcs1::RsaPublicKey::from_der(public_key)
        .map_err(|e| ConnectorError::Rejected(format!("the RSA public key does not parse: {e}")))?;
    let n = key.modulus.as_bytes();
    let Some(first) = n.iter().position(|b| *b != 0) else {
        return Ok(0);
    };
    Ok((n.len() - first) * 8 - n[first].leading_zeros() as usize)
}

/// Who asks: the calling instance, whose secrets alone are looked up.
pub(crate) struct Caller<'a> {
    pub(crate) plugin: &'a Arc<str>,
    pub(crate) instance: &'a Arc<str>,
    pub(crate) secrets: &'a BTreeMap<String, Secret>,
}

impl KeyCache {
    /// `key-info`: the scheme and public key of the caller's key `name`.
    pub(crate) fn key_info(
        &self,
        caller: &Caller<'_>,
        name: &str,
    ) -> Result<SigningKey, ConnectorError> {
        let key = self.key(caller, name)?;
        Ok(SigningKey {
            scheme: key.scheme,
            spki_der: key.spki_der.clone(),
        })
    }

    /// `sign`: `message` signed with the caller's key `name`.
    pub(crate) fn sign(
        &self,
        caller: &Caller<'_>,
        name: &str,
        message: &[u8],
    ) -> Result<Vec<u8>, ConnectorError> {
        if message.len() > MAX_MESSAGE_BYTES {
            return Err(too_long("a message", message.len()));
        }
        let key = self.key(caller, name)?;
        let signature = key.sign(message).map_err(ConnectorError::Transient)?;
        remember_made_here(
            key.spki_der(),
            &scheme_algorithm(key.scheme).to_string(),
            message,
            &signature,
        );
        Ok(signature)
    }
}

/// The X.509 signature algorithm a signature of `scheme` goes under.
fn scheme_algorithm(scheme: SignatureScheme) -> ObjectIdentifier {
    match scheme {
        SignatureScheme::EcdsaP256Sha256 => ECDSA_WITH_SHA256,
        SignatureScheme::EcdsaP384Sha384 => ECDSA_WITH_SHA384,
        SignatureScheme::Ed25519 => ID_ED25519,
        SignatureScheme::RsaPkcs1Sha256 => SHA256_WITH_RSA,
    }
}

/// Signatures made in this process (by the `sign` import, or by the host
/// for its own CSRs), each until it is checked once: checking such a
/// signature again (a CA verifying the CSR the host made, the host
/// verifying the leaf its local CA signed through `sign`) costs a hash
/// instead of an ECDSA verification, about a tenth of the machine in a mass
/// issuance (BENCHMARKS.md, issue 13). Keyed by the SHA-256 of the public
/// key, the algorithm, the message and the signature, so only those exact
/// bytes match, and only code that signed them can add them. Bounded:
/// emptied when full (an entry not checked within a few thousand
/// signatures is merely verified the slow way).
static MADE_HERE: std::sync::Mutex<std::collections::BTreeSet<[u8; 32]>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Signatures [`MADE_HERE`] keeps at most.
const MADE_HERE_MAX: usize = 4096;

fn made_here_key(spki_der: &[u8], algorithm: &str, message: &[u8], signature: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in [spki_der, algorithm.as_bytes(), message, signature] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

/// Records that `signature` over `message` was just made in this process
/// with the private key of the public key `spki_der` (a DER
/// `SubjectPublicKeyInfo`), under the X.509 signature algorithm
/// `algorithm` (a dotted OID). Only for signatures this process made
/// itself: [`take_made_here`] trusts them without a check.
pub fn remember_made_here(spki_der: &[u8], algorithm: &str, message: &[u8], signature: &[u8]) {
    let key = made_here_key(spki_der, algorithm, message, signature);
    if let Ok(mut set) = MADE_HERE.lock() {
        if set.len() >= MADE_HERE_MAX {
            set.clear();
        }
        set.insert(key);
    }
}

/// Whether [`remember_made_here`] recorded exactly this signature (and
/// forgets it): then it verifies by construction.
pub fn take_made_here(spki_der: &[u8], algorithm: &str, message: &[u8], signature: &[u8]) -> bool {
    let key = made_here_key(spki_der, algorithm, message, signature);
    MADE_HERE.lock().is_ok_and(|mut set| set.remove(&key))
}

impl CallState {
    fn caller(&self) -> Caller<'_> {
        Caller {
            plugin: &self.plugin,
            instance: &self.instance,
            secrets: &self.secrets,
        }
    }
}

impl signing::Host for CallState {
    fn key_info(&mut self, secret_name: String) -> Result<SigningKey, ConnectorError> {
        self.keys.key_info(&self.caller(), &secret_name)
    }

    fn sign(&mut self, secret_name: String, message: Vec<u8>) -> Result<Vec<u8>, ConnectorError> {
        self.keys.sign(&self.caller(), &secret_name, &message)
    }

    fn verify(
        &mut self,
        spki_der: Vec<u8>,
        algorithm: String,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<bool, ConnectorError> {
        verify(&spki_der, &algorithm, &message, &signature)
    }
}

#[cfg(test)]
mod tests;
