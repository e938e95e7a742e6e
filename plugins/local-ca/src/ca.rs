//! The certificate authority itself: loading the CA certificate and key,
//! checking they belong together, and building and signing leaf
//! certificates. Target-independent: unit-tested natively, with the
//! in-guest [`CaKey`] where the component uses the host's signing.

use core::time::Duration;
use std::time::{SystemTime, UNIX_EPOCH};

use const_oid::AssociatedOid;
use const_oid::db::{rfc4519, rfc5280, rfc5912, rfc8410};
use der::asn1::{Any, BitString, GeneralizedTime, Ia5String, OctetString, SetOfVec, UtcTime};
use der::{Decode, Encode, Tag};
use sha2::{Digest, Sha256};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::Certificate;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::certificate::{TbsCertificate, Version};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

use crate::crypto::{CaCrypto, Scheme, signature_algorithm};
use crate::csr::{self, VerifiedCsr};
use crate::names;

/// How far notBefore is back-dated, for clocks that run slightly behind.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Longest CN the X.509 upper bound allows (`ub-common-name`).
const MAX_CN_LEN: usize = 64;

/// Why the CA could not do what was asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaError {
    /// The CA certificate or key (settings and secrets) are unusable.
    Config(String),
    /// This request cannot be signed.
    Rejected(String),
}

impl CaError {
    fn config(msg: impl Into<String>) -> Self {
        CaError::Config(msg.into())
    }
    fn rejected(msg: impl Into<String>) -> Self {
        CaError::Rejected(msg.into())
    }
}

/// The CA's private key, parsed in the guest (RustCrypto): the native
/// unit tests' [`CaCrypto`]. The component asks the host instead
/// ([`crate::crypto::HostCrypto`]), which is ~50x faster.
pub enum CaKey {
    /// ECDSA P-256; signs with ecdsa-with-SHA256.
    P256(p256::ecdsa::SigningKey),
    /// ECDSA P-384; signs with ecdsa-with-SHA384.
    P384(p384::ecdsa::SigningKey),
    /// Ed25519.
    Ed25519(ed25519_dalek::SigningKey),
    /// RSA; signs with sha256WithRSAEncryption (PKCS#1 v1.5).
    Rsa(Box<rsa::RsaPrivateKey>),
}

impl CaKey {
    /// Parses a PEM private key: PKCS#8 (`PRIVATE KEY`: P-256, P-384,
    /// Ed25519, RSA), SEC1 (`EC PRIVATE KEY`: P-256, P-384) or PKCS#1
    /// (`RSA PRIVATE KEY`). Encrypted keys are refused.
    pub fn from_pem(text: &str) -> Result<CaKey, String> {
        let blocks = certplane_sdk::pem::parse_blocks(text).map_err(|e| e.to_string())?;
        let block = blocks
            .iter()
            .find(|b| b.label.ends_with("PRIVATE KEY"))
            .ok_or_else(|| "no PRIVATE KEY PEM block found".to_string())?;
        let der = block.der.as_slice();
        match block.label.as_str() {
            "PRIVATE KEY" => Self::from_pkcs8(der),
            "EC PRIVATE KEY" => {
                if let Ok(k) = p256::SecretKey::from_sec1_der(der) {
                    Ok(CaKey::P256(k.into()))
                } else if let Ok(k) = p384::SecretKey::from_sec1_der(der) {
                    Ok(CaKey::P384(k.into()))
                } else {
                    Err("EC PRIVATE KEY is not a valid P-256 or P-384 key".into())
                }
            }
            "RSA PRIVATE KEY" => {
                use rsa::pkcs1::DecodeRsaPrivateKey;
                rsa::RsaPrivateKey::from_pkcs1_der(der)
                    .map(|k| CaKey::Rsa(Box::new(k)))
                    .map_err(|e| format!("RSA PRIVATE KEY does not parse: {e}"))
            }
            "ENCRYPTED PRIVATE KEY" => Err("the key is encrypted; store it unencrypted in the \
                 secret (the host encrypts secrets at rest), e.g. `openssl pkcs8 -topk8 -nocrypt`"
                .into()),
            other => Err(format!("unsupported key PEM label {other:?}")),
        }
    }

    fn from_pkcs8(der: &[u8]) -> Result<CaKey, String> {
        use p256::pkcs8::DecodePrivateKey;
        let info = p256::pkcs8::PrivateKeyInfo::try_from(der)
            .map_err(|e| format!("PKCS#8 key does not parse: {e}"))?;
        match info.algorithm.oid {
            rfc5912::ID_EC_PUBLIC_KEY => match info.algorithm.parameters_oid() {
                Ok(rfc5912::SECP_256_R_1) => p256::SecretKey::from_pkcs8_der(der)
                    .map(|k| CaKey::P256(k.into()))
                    .map_err(|e| format!("P-256 key does not parse: {e}")),
                Ok(rfc5912::SECP_384_R_1) => p384::SecretKey::from_pkcs8_der(der)
                    .map(|k| CaKey::P384(k.into()))
                    .map_err(|e| format!("P-384 key does not parse: {e}")),
                Ok(other) => Err(format!(
                    "EC key on curve {} is not supported (use P-256, P-384, Ed25519 or RSA)",
                    csr::algorithm_name(&other)
                )),
                Err(_) => Err("EC key names no curve".into()),
            },
            rfc8410::ID_ED_25519 => ed25519_dalek::SigningKey::from_pkcs8_der(der)
                .map(CaKey::Ed25519)
                .map_err(|e| format!("Ed25519 key does not parse: {e}")),
            rfc5912::RSA_ENCRYPTION => rsa::RsaPrivateKey::from_pkcs8_der(der)
                .map(|k| CaKey::Rsa(Box::new(k)))
                .map_err(|e| format!("RSA key does not parse: {e}")),
            other => Err(format!(
                "key type {} is not supported (use P-256, P-384, Ed25519 or RSA)",
                csr::algorithm_name(&other)
            )),
        }
    }

    /// The scheme this key signs with.
    pub fn scheme(&self) -> Scheme {
        match self {
            CaKey::P256(_) => Scheme::EcdsaP256Sha256,
            CaKey::P384(_) => Scheme::EcdsaP384Sha384,
            CaKey::Ed25519(_) => Scheme::Ed25519,
            CaKey::Rsa(_) => Scheme::RsaPkcs1Sha256,
        }
    }

    /// Signs `msg`, returning the signature as it goes into the certificate's
    /// BIT STRING (DER `Ecdsa-Sig-Value` for ECDSA).
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, String> {
        use signature::{SignatureEncoding, Signer};
        match self {
            CaKey::P256(k) => {
                let sig: p256::ecdsa::DerSignature = k.try_sign(msg).map_err(|e| e.to_string())?;
                Ok(sig.to_vec())
            }
            CaKey::P384(k) => {
                let sig: p384::ecdsa::DerSignature = k.try_sign(msg).map_err(|e| e.to_string())?;
                Ok(sig.to_vec())
            }
            CaKey::Ed25519(k) => Ok(k.try_sign(msg).map_err(|e| e.to_string())?.to_vec()),
            CaKey::Rsa(k) => {
                use signature::RandomizedSigner;
                let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new((**k).clone());
                let sig = signer
                    .try_sign_with_rng(&mut rand_core::OsRng, msg)
                    .map_err(|e| e.to_string())?;
                Ok(sig.to_vec())
            }
        }
    }

    /// This key's public key.
    pub fn public_key(&self) -> Result<SubjectPublicKeyInfoOwned, String> {
        use spki::EncodePublicKey;
        let der = match self {
            CaKey::P256(k) => p256::PublicKey::from(k.verifying_key()).to_public_key_der(),
            CaKey::P384(k) => p384::PublicKey::from(k.verifying_key()).to_public_key_der(),
            CaKey::Ed25519(k) => k.verifying_key().to_public_key_der(),
            CaKey::Rsa(k) => rsa::RsaPublicKey::from(&**k).to_public_key_der(),
        }
        .map_err(|e| e.to_string())?;
        SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).map_err(|e| e.to_string())
    }
}

impl CaCrypto for CaKey {
    fn ca_key(&self) -> Result<(Scheme, SubjectPublicKeyInfoOwned), String> {
        Ok((self.scheme(), self.public_key()?))
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        CaKey::sign(self, message)
    }

    fn verify(
        &self,
        key: &SubjectPublicKeyInfoOwned,
        algorithm: &const_oid::ObjectIdentifier,
        message: &[u8],
        signature: &[u8],
    ) -> Result<bool, String> {
        csr::verify_in_guest(key, algorithm, message, signature)
    }
}

/// Whether two encodings hold the same public key: equal as decoded, or
/// (EC) the same point, compressed in one of them.
fn same_key(a: &SubjectPublicKeyInfoOwned, b: &SubjectPublicKeyInfoOwned) -> bool {
    if a == b {
        return true;
    }
    if a.algorithm.oid != b.algorithm.oid {
        return false;
    }
    if a.algorithm.oid != rfc5912::ID_EC_PUBLIC_KEY {
        // RSA's NULL parameters may be absent in one of them.
        return a.subject_public_key == b.subject_public_key;
    }
    let (Some(pa), Some(pb)) = (
        a.subject_public_key.as_bytes(),
        b.subject_public_key.as_bytes(),
    ) else {
        return false;
    };
    match (csr::curve_oid(&a.algorithm), csr::curve_oid(&b.algorithm)) {
        (Some(rfc5912::SECP_256_R_1), Some(rfc5912::SECP_256_R_1)) => {
            match (
                p256::PublicKey::from_sec1_bytes(pa),
                p256::PublicKey::from_sec1_bytes(pb),
            ) {
                (Ok(x), Ok(y)) => x == y,
                _ => false,
            }
        }
        (Some(rfc5912::SECP_384_R_1), Some(rfc5912::SECP_384_R_1)) => {
            match (
                p384::PublicKey::from_sec1_bytes(pa),
                p384::PublicKey::from_sec1_bytes(pb),
            ) {
                (Ok(x), Ok(y)) => x == y,
                _ => false,
            }
        }
        _ => false,
    }
}

/// A loaded CA: its certificate (plus any issuers given after it) and
/// what signs with its key.
pub struct LocalCa<C = CaKey> {
    cert: Certificate,
    cert_pem: String,
    /// Certificates after the first in `ca_certificate_pem`, as given.
    extra_chain: Vec<String>,
    crypto: C,
    scheme: Scheme,
    /// The CA certificate's subjectKeyIdentifier, when it has one.
    ski: Option<Vec<u8>>,
}

/// What to put into a leaf certificate.
#[derive(Clone, Debug)]
pub struct LeafRequest<'a> {
    /// The PEM CSR; only its public key is used (after its signature
    /// verifies).
    pub csr_pem: &'a str,
    /// Subject CN (may be empty).
    pub common_name: &'a str,
    /// DNS SANs.
    pub dns_names: &'a [String],
    /// IP SANs, textual.
    pub ip_addresses: &'a [String],
    /// Validity in days (already capped by the instance's maximum).
    pub validity_days: u32,
}

/// A signed leaf.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The leaf, PEM.
    pub certificate_pem: String,
    /// The CA certificate, then any further certificates given with it.
    pub chain_pem: Vec<String>,
    /// Serial number, lower-case hex of its value (no sign byte).
    pub serial_hex: String,
    /// Whether notAfter was shortened to the CA's own notAfter.
    pub clamped_to_ca: bool,
}

impl LocalCa<CaKey> {
    /// Loads the CA certificate (`ca_certificate_pem`: the signing CA first,
    /// optionally followed by its issuers) and the key from its PEM, and
    /// checks that the key belongs to the certificate. Errors are
    /// configuration errors.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<LocalCa<CaKey>, CaError> {
        // The certificate's problems are reported first.
        Self::certificates(cert_pem)?;
        let key = CaKey::from_pem(key_pem)
            .map_err(|e| CaError::config(format!("ca_private_key_pem: {e}")))?;
        LocalCa::new(cert_pem, key)
    }
}

impl<C: CaCrypto> LocalCa<C> {
    /// The CA certificate (with any issuers after it) and `crypto`, which
    /// signs with the CA key; checks that the key belongs to the
    /// certificate. Errors are configuration errors.
    pub fn new(cert_pem: &str, crypto: C) -> Result<LocalCa<C>, CaError> {
        let (cert, certs) = Self::certificates(cert_pem)?;
        let (scheme, public_key) = crypto.ca_key().map_err(CaError::Config)?;
        if !same_key(&public_key, &cert.tbs_certificate.subject_public_key_info) {
            return Err(CaError::config(format!(
                "ca_private_key_pem ({}) does not belong to the CA certificate {} (its public \
                 key is {})",
                scheme.key_name(),
                cert.tbs_certificate.subject,
                key_description(&cert.tbs_certificate.subject_public_key_info),
            )));
        }
        let ski = find_extension::<SubjectKeyIdentifier>(&cert)
            .map_err(CaError::config)?
            .map(|s| s.0.as_bytes().to_vec());
        Ok(LocalCa {
            cert_pem: certs[0].to_pem(),
            extra_chain: certs[1..].iter().map(|c| c.to_pem()).collect(),
            cert,
            crypto,
            scheme,
            ski,
        })
    }

    /// The first certificate of `cert_pem`, decoded, and all of them.
    fn certificates(
        cert_pem: &str,
    ) -> Result<(Certificate, Vec<certplane_sdk::pem::PemBlock>), CaError> {
        // As `pem::certificates`, without decoding the first certificate
        // twice: this runs on every call.
        let config = |e: String| CaError::config(format!("ca_certificate_pem: {e}"));
        let certs: Vec<_> = certplane_sdk::pem::parse_blocks(cert_pem)
            .map_err(|e| config(e.to_string()))?
            .into_iter()
            .filter(|b| b.label == "CERTIFICATE")
            .collect();
        let mut decoded = None;
        for (i, c) in certs.iter().enumerate() {
            let cert = Certificate::from_der(&c.der)
                .map_err(|e| config(format!("certificate #{} does not parse: {e}", i + 1)))?;
            decoded.get_or_insert(cert);
        }
        let cert = decoded.ok_or_else(|| config("no CERTIFICATE block found".into()))?;
        Ok((cert, certs))
    }

    /// The scheme the CA key signs with.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The CA certificate's subject, RFC 4514 style.
    pub fn subject(&self) -> String {
        self.cert.tbs_certificate.subject.to_string()
    }

    /// Whether the CA certificate has a subjectKeyIdentifier (leaves then
    /// get a matching authorityKeyIdentifier).
    pub fn has_ski(&self) -> bool {
        self.ski.is_some()
    }

    /// Checks that the certificate may sign certificates at `now`:
    /// basicConstraints cA=TRUE, keyCertSign when keyUsage is present, a
    /// pathLenConstraint that allows end-entity certificates, and a validity
    /// period that covers `now`.
    pub fn check_usable(&self, now: SystemTime) -> Result<(), CaError> {
        let subject = self.subject();
        match find_extension::<BasicConstraints>(&self.cert).map_err(CaError::config)? {
            Some(bc) if bc.ca => {}
            _ => {
                return Err(CaError::config(format!(
                    "ca_certificate_pem: {subject} is not a CA certificate (no basicConstraints \
                     with CA:TRUE)"
                )));
            }
        }
        if let Some(ku) = find_extension::<KeyUsage>(&self.cert).map_err(CaError::config)?
            && !ku.key_cert_sign()
        {
            return Err(CaError::config(format!(
                "ca_certificate_pem: {subject} may not sign certificates (its keyUsage lacks \
                 keyCertSign)"
            )));
        }
        let validity = &self.cert.tbs_certificate.validity;
        if now < validity.not_before.to_system_time() {
            return Err(CaError::config(format!(
                "ca_certificate_pem: {subject} is not valid before {}",
                validity.not_before
            )));
        }
        if now >= validity.not_after.to_system_time() {
            return Err(CaError::config(format!(
                "ca_certificate_pem: {subject} expired on {}",
                validity.not_after
            )));
        }
        Ok(())
    }

    /// Verifies the CSR, validates the requested names, and builds and signs
    /// a leaf certificate valid from `now - 5 min` for `validity_days` (but
    /// never past the CA's own notAfter), with the serial number `serial`
    /// (random bytes, read as an unsigned big-endian integer).
    pub fn issue(
        &self,
        req: &LeafRequest<'_>,
        now: SystemTime,
        serial: &[u8; 16],
    ) -> Result<Issued, CaError> {
        self.check_usable(now)?;
        if req.validity_days == 0 {
            return Err(CaError::rejected("validity-days must be at least 1"));
        }
        let VerifiedCsr { public_key, kind } =
            csr::parse_and_verify(req.csr_pem, &self.crypto).map_err(CaError::Rejected)?;
        if public_key == self.cert.tbs_certificate.subject_public_key_info {
            return Err(CaError::rejected(
                "the CSR carries the CA's own public key; generate a new key for the leaf",
            ));
        }

        let (subject, sans) = subject_and_sans(req)?;
        let san_critical = subject.0.is_empty();

        let ca_not_after = self
            .cert
            .tbs_certificate
            .validity
            .not_after
            .to_system_time();
        let wanted = now + Duration::from_secs(u64::from(req.validity_days) * 86_400);
        let clamped_to_ca = wanted > ca_not_after;
        let not_after = if clamped_to_ca { ca_not_after } else { wanted };
        let not_before = now.checked_sub(BACKDATE).unwrap_or(now);
        let validity = Validity {
            not_before: x509_time(not_before)?,
            not_after: x509_time(not_after)?,
        };

        let serial_number = SerialNumber::new(serial)
            .map_err(|e| CaError::rejected(format!("cannot encode the serial number: {e}")))?;
        // The integer's value: without the 00 byte DER adds to keep it positive.
        let value = serial_number.as_bytes();
        let first = value.iter().position(|b| *b != 0).unwrap_or(value.len());
        let serial_hex = certplane_sdk::pem::hex(&value[first..]);

        let spki_bits = public_key
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| CaError::rejected("CSR public key has unused bits"))?;
        let mut usages = KeyUsages::DigitalSignature.into();
        if kind.key_encipherment() {
            usages |= KeyUsages::KeyEncipherment;
        }
        let mut extensions = vec![
            extension(
                &BasicConstraints {
                    ca: false,
                    path_len_constraint: None,
                },
                true,
            )?,
            extension(&KeyUsage(usages), true)?,
            extension(
                &ExtendedKeyUsage(vec![rfc5280::ID_KP_SERVER_AUTH, rfc5280::ID_KP_CLIENT_AUTH]),
                false,
            )?,
            extension(&SubjectAltName(sans), san_critical)?,
            extension(
                &SubjectKeyIdentifier(octets(&key_identifier(spki_bits))?),
                false,
            )?,
        ];
        if let Some(ski) = &self.ski {
            extensions.push(extension(
                &AuthorityKeyIdentifier {
                    key_identifier: Some(octets(ski)?),
                    authority_cert_issuer: None,
                    authority_cert_serial_number: None,
                },
                false,
            )?);
        }

        let signature_algorithm = signature_algorithm(self.scheme);
        let tbs = TbsCertificate {
            version: Version::V3,
            serial_number,
            signature: signature_algorithm.clone(),
            issuer: self.cert.tbs_certificate.subject.clone(),
            validity,
            subject,
            subject_public_key_info: public_key,
            issuer_unique_id: None,
            subject_unique_id: None,
            extensions: Some(extensions),
        };
        let tbs_der = tbs.to_der().map_err(encoding)?;
        let signature = self
            .crypto
            .sign(&tbs_der)
            .map_err(|e| CaError::config(format!("signing with the CA key failed: {e}")))?;
        // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm,
        // signature }, around the TBS bytes already encoded and signed.
        let algorithm_der = signature_algorithm.to_der().map_err(encoding)?;
        let signature_der = BitString::from_bytes(&signature)
            .and_then(|b| b.to_der())
            .map_err(encoding)?;
        let body = tbs_der.len() + algorithm_der.len() + signature_der.len();
        let mut der = der::Header::new(
            Tag::Sequence,
            der::Length::try_from(body).map_err(encoding)?,
        )
        .and_then(|h| h.to_der())
        .map_err(encoding)?;
        der.reserve(body);
        der.extend_from_slice(&tbs_der);
        der.extend_from_slice(&algorithm_der);
        der.extend_from_slice(&signature_der);

        let mut chain_pem = vec![self.cert_pem.clone()];
        chain_pem.extend(self.extra_chain.iter().cloned());
        Ok(Issued {
            certificate_pem: certplane_sdk::pem::encode("CERTIFICATE", &der),
            chain_pem,
            serial_hex,
            clamped_to_ca,
        })
    }
}

/// Builds the subject (CN only) and the SAN list from the request: the
/// request's DNS names and IP addresses, de-duplicated, plus the CN when it
/// is a name not already listed. The CSR's own names are ignored.
fn subject_and_sans(req: &LeafRequest<'_>) -> Result<(Name, Vec<GeneralName>), CaError> {
    let mut dns: Vec<String> = Vec::new();
    for n in req.dns_names {
        let n = names::dns_name(n).map_err(CaError::Rejected)?;
        if !dns.contains(&n) {
            dns.push(n);
        }
    }
    let mut ips: Vec<Vec<u8>> = Vec::new();
    for ip in req.ip_addresses {
        let o = names::ip_address(ip).map_err(CaError::Rejected)?;
        if !ips.contains(&o) {
            ips.push(o);
        }
    }

    let cn = req.common_name.trim();
    let mut subject_cn = None;
    if !cn.is_empty() {
        if let Ok(o) = names::ip_address(cn) {
            if !ips.contains(&o) {
                ips.push(o);
            }
            subject_cn = Some(cn.to_string());
        } else {
            let n =
                names::dns_name(cn).map_err(|e| CaError::rejected(format!("common-name: {e}")))?;
            if !dns.contains(&n) {
                dns.push(n.clone());
            }
            subject_cn = Some(n);
        }
    }
    if dns.is_empty() && ips.is_empty() {
        return Err(CaError::rejected(
            "the request names no DNS name, IP address or common name to certify",
        ));
    }

    let mut sans = Vec::with_capacity(dns.len() + ips.len());
    for n in &dns {
        sans.push(GeneralName::DnsName(Ia5String::new(n).map_err(encoding)?));
    }
    for o in ips {
        sans.push(GeneralName::IpAddress(octets(&o)?));
    }

    let mut rdns = Vec::new();
    // Names longer than ub-common-name stay in the SAN only.
    if let Some(cn) = subject_cn.filter(|cn| cn.len() <= MAX_CN_LEN) {
        let atv = AttributeTypeAndValue {
            oid: rfc4519::CN,
            value: Any::new(Tag::Utf8String, cn.as_bytes()).map_err(encoding)?,
        };
        let set = SetOfVec::try_from(vec![atv]).map_err(encoding)?;
        rdns.push(RelativeDistinguishedName(set));
    }
    Ok((RdnSequence(rdns), sans))
}

/// A key identifier per RFC 7093 section 2 method 1: the left-most 160 bits
/// of the SHA-256 of the subjectPublicKey bits.
pub fn key_identifier(public_key_bits: &[u8]) -> Vec<u8> {
    Sha256::digest(public_key_bits)[..20].to_vec()
}

/// UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 4.1.2.5).
fn x509_time(t: SystemTime) -> Result<Time, CaError> {
    const Y2050: u64 = 2_524_608_000;
    let since = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| CaError::config("the clock is before 1970"))?;
    let since = Duration::from_secs(since.as_secs());
    if since.as_secs() < Y2050 {
        UtcTime::from_unix_duration(since)
            .map(Time::UtcTime)
            .map_err(encoding)
    } else {
        GeneralizedTime::from_unix_duration(since)
            .map(Time::GeneralTime)
            .map_err(encoding)
    }
}

fn extension<T: AssociatedOid + Encode>(value: &T, critical: bool) -> Result<Extension, CaError> {
    Ok(Extension {
        extn_id: T::OID,
        critical,
        extn_value: OctetString::new(value.to_der().map_err(encoding)?).map_err(encoding)?,
    })
}

fn octets(bytes: &[u8]) -> Result<OctetString, CaError> {
    OctetString::new(bytes).map_err(encoding)
}

fn encoding(e: der::Error) -> CaError {
    CaError::rejected(format!("cannot encode the certificate: {e}"))
}

fn find_extension<T>(cert: &Certificate) -> Result<Option<T>, String>
where
    T: AssociatedOid + for<'a> Decode<'a>,
{
    let Some(exts) = &cert.tbs_certificate.extensions else {
        return Ok(None);
    };
    match exts.iter().find(|e| e.extn_id == T::OID) {
        None => Ok(None),
        Some(e) => T::from_der(e.extn_value.as_bytes())
            .map(Some)
            .map_err(|err| {
                format!(
                    "ca_certificate_pem: extension {} is malformed: {err}",
                    T::OID
                )
            }),
    }
}

fn key_description(spki: &SubjectPublicKeyInfoOwned) -> String {
    let alg = csr::algorithm_name(&spki.algorithm.oid);
    match csr::curve_oid(&spki.algorithm) {
        Some(curve) if spki.algorithm.oid == rfc5912::ID_EC_PUBLIC_KEY => {
            format!("{alg} {}", csr::algorithm_name(&curve))
        }
        _ => alg,
    }
}

#[cfg(test)]
mod tests;
