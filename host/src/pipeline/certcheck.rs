//! Checks on a certificate returned by an issuer connector.
//!
//! Nothing a connector returns is trusted (design brief, "Security model"):
//! before the host stores or deploys a certificate, [`check_issued`] parses
//! the leaf and the chain and checks that
//!
//! 1. every PEM holds exactly one `CERTIFICATE` block whose DER parses as
//!    X.509 with no trailing bytes (nothing else in the text but whitespace);
//! 2. the CSR's own signature verifies (proof of possession; not checked
//!    again for a CSR the host made from a key it generated) and the leaf
//!    certifies exactly the CSR's SubjectPublicKeyInfo (byte-for-byte);
//! 3. the leaf is an end-entity certificate: no `CA:true`, no
//!    `keyCertSign`/`cRLSign` key usage, `serverAuth` when an EKU is present;
//! 4. the validity period is sane: `notBefore <= now + 5 min`,
//!    `notAfter > now`, `notAfter > notBefore`, lifetime at most 825 days and
//!    at most the requested validity plus one day;
//! 5. the leaf's SANs are exactly the requested DNS names and IP addresses
//!    (DNS compared ASCII case-insensitively, a wildcard only matching the
//!    identical wildcard; a missing name and an extra name are both errors);
//! 6. the chain links up: each certificate's issuer DN equals the next one's
//!    subject DN and its signature verifies with the next one's key, every
//!    chain element is a CA allowed to sign certificates (key usage, path
//!    length) and currently valid; a self-signed root is only accepted as the
//!    last element and is dropped from the stored chain (a signature
//!    between two CA certificates that verified is remembered for the
//!    process, by the exact bytes signed, the signature and the signer's
//!    key: the same chain comes back with every certificate). An empty chain is
//!    only accepted when the caller passes a trust anchor that signed the
//!    leaf; when a trust anchor is passed, the top of the chain must be
//!    signed by it.
//!
//! These checks establish that the result is well formed and belongs to the
//! request; they do not decide whether a CA is trusted (that stays with the
//! TLS clients, or with the `trust_anchor` a caller passes for a local CA).

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, TimeDelta, Utc};
use sha2::{Digest as _, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::error::X509Error;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer as _;
use x509_parser::time::ASN1Time;

/// Accepted clock skew between the CA and the host for `notBefore`.
pub const CLOCK_SKEW: TimeDelta = TimeDelta::minutes(5);

/// Longest accepted leaf lifetime (`notAfter - notBefore`), in days.
pub const MAX_LIFETIME_DAYS: i64 = 825;

/// Extra lifetime tolerated on top of a requested validity, in days (CAs
/// commonly backdate `notBefore` or round `notAfter`).
pub const REQUESTED_VALIDITY_SLACK_DAYS: i64 = 1;

/// Largest accepted PEM text for one certificate or CSR, in bytes.
pub const MAX_PEM_LEN: usize = 64 * 1024;

/// Most chain elements (intermediates plus an optional root) accepted.
pub const MAX_CHAIN_LEN: usize = 8;

const CERTIFICATE_LABEL: &str = "CERTIFICATE";
const CSR_LABELS: &[&str] = &["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"];

/// What the host asked for and what the issuer connector returned.
#[derive(Debug, Clone, Copy)]
pub struct IssuedInput<'a> {
    /// The PKCS#10 CSR (PEM) that was sent to the issuer.
    pub csr_pem: &'a str,
    /// Requested DNS subject alternative names (wildcards included).
    pub dns_names: &'a [String],
    /// Requested IP address subject alternative names.
    pub ip_addresses: &'a [IpAddr],
    /// The leaf certificate returned by the issuer (one PEM block).
    pub leaf_pem: &'a str,
    /// The chain returned by the issuer: one PEM block each, nearest to the
    /// leaf first. A self-signed root may end it; it is checked and dropped.
    pub chain_pem: &'a [String],
    /// Optional CA certificate (PEM) the chain must lead to, e.g. the local
    /// CA. Required when `chain_pem` is empty.
    pub trust_anchor_pem: Option<&'a str>,
    /// The current time.
    pub now: DateTime<Utc>,
    /// Validity requested from the issuer, in days, if any.
    pub validity_days: Option<u32>,
    /// The host made the CSR itself from a key it generated (host key
    /// mode): its signature is not verified again, since it proves only
    /// that its maker holds the key, which the host knows. A CSR from an
    /// agent is always verified.
    pub csr_made_by_host: bool,
}

/// A leaf certificate and chain that passed every check of [`check_issued`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedCertificate {
    /// DER encoding of the leaf.
    pub leaf_der: Vec<u8>,
    /// Canonical PEM encoding of the leaf (re-encoded from `leaf_der`).
    pub leaf_pem: String,
    /// Canonical PEM of each intermediate, nearest to the leaf first; roots
    /// are removed.
    pub chain_pem: Vec<String>,
    /// Serial number: lower-case hex of its big-endian bytes, without
    /// separators and without the DER sign-padding `00` byte.
    pub serial_hex: String,
    /// Lower-case hex SHA-256 of `leaf_der`.
    pub fingerprint_sha256: String,
    /// Start of the validity period.
    pub not_before: DateTime<Utc>,
    /// End of the validity period.
    pub not_after: DateTime<Utc>,
    /// DNS SANs as they appear in the leaf.
    pub dns_names: Vec<String>,
    /// IP address SANs as they appear in the leaf.
    pub ip_addresses: Vec<IpAddr>,
    /// Issuer DN of the leaf (RFC 4514-style string).
    pub issuer: String,
    /// Subject DN of the leaf (RFC 4514-style string).
    pub subject: String,
}

/// Which input an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRole {
    /// The submitted CSR.
    Csr,
    /// The leaf certificate.
    Leaf,
    /// Chain element at this index (0 = issuer of the leaf).
    Chain(usize),
    /// The caller-provided trust anchor.
    TrustAnchor,
}

impl fmt::Display for CertRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Csr => f.write_str("CSR"),
            Self::Leaf => f.write_str("leaf certificate"),
            Self::Chain(index) => write!(f, "chain certificate #{index}"),
            Self::TrustAnchor => f.write_str("trust anchor"),
        }
    }
}

/// Why an issued certificate was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertCheckError {
    /// The PEM text exceeds [`MAX_PEM_LEN`].
    #[error("{role}: PEM text is {len} bytes, more than the {limit}-byte limit")]
    PemTooLarge {
        /// Input concerned.
        role: CertRole,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The text is not a well-formed PEM block.
    #[error("{role}: malformed PEM: {reason}")]
    MalformedPem {
        /// Input concerned.
        role: CertRole,
        /// What is wrong.
        reason: &'static str,
    },
    /// The PEM block has the wrong label (e.g. a private key).
    #[error("{role}: expected a PEM block labelled {expected:?}, found {found:?}")]
    UnexpectedPemLabel {
        /// Input concerned.
        role: CertRole,
        /// Label that was expected.
        expected: &'static str,
        /// Label that was found.
        found: String,
    },
    /// Something other than whitespace follows the PEM block (another block
    /// or garbage).
    #[error("{role}: unexpected content after the PEM block")]
    TrailingPemContent {
        /// Input concerned.
        role: CertRole,
    },
    /// The decoded bytes are not a valid DER structure of the expected type.
    #[error("{role}: does not parse as {expected}: {reason}")]
    MalformedDer {
        /// Input concerned.
        role: CertRole,
        /// What was expected ("an X.509 certificate", "a PKCS#10 CSR").
        expected: &'static str,
        /// Parser message.
        reason: String,
    },
    /// Bytes follow the DER structure inside the PEM block.
    #[error("{role}: {len} trailing bytes after the DER structure")]
    TrailingDer {
        /// Input concerned.
        role: CertRole,
        /// Number of trailing bytes.
        len: usize,
    },
    /// The chain has more than [`MAX_CHAIN_LEN`] elements.
    #[error("chain has {len} certificates, more than the limit of {limit}")]
    ChainTooLong {
        /// Number of chain elements.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The CSR's signature does not verify with its own key.
    #[error(
        "CSR signature does not verify with the CSR's own key (no proof of possession): {reason}"
    )]
    CsrSignatureInvalid {
        /// Verifier message.
        reason: String,
    },
    /// The leaf certifies a different public key than the CSR's.
    #[error("leaf public key does not match the CSR's public key")]
    KeyMismatch,
    /// The inner (TBS) and outer signature algorithms differ.
    #[error(
        "{role}: signature algorithm in the signed part ({inner}) differs from the outer one ({outer})"
    )]
    SignatureAlgorithmMismatch {
        /// Input concerned.
        role: CertRole,
        /// OID in `tbsCertificate.signature`.
        inner: String,
        /// OID in `signatureAlgorithm`.
        outer: String,
    },
    /// An extension needed for the checks is malformed or duplicated.
    #[error("{role}: invalid {extension} extension: {reason}")]
    InvalidExtension {
        /// Input concerned.
        role: CertRole,
        /// Extension name.
        extension: &'static str,
        /// Parser message.
        reason: String,
    },
    /// The leaf has `basicConstraints CA:true`.
    #[error("leaf certificate is a CA certificate (basicConstraints CA:true)")]
    LeafIsCa,
    /// The leaf's key usage allows signing certificates or CRLs.
    #[error("leaf certificate key usage allows signing certificates or CRLs")]
    LeafCanSignCertificates,
    /// The leaf has an EKU extension without `serverAuth`.
    #[error("leaf certificate extended key usage does not include serverAuth")]
    MissingServerAuth,
    /// A time field is outside the representable range.
    #[error("{role}: {field} is out of range")]
    InvalidTime {
        /// Input concerned.
        role: CertRole,
        /// Field name.
        field: &'static str,
    },
    /// `notAfter` is not after `notBefore`.
    #[error("{role}: notAfter {not_after} is not after notBefore {not_before}")]
    InvertedValidity {
        /// Input concerned.
        role: CertRole,
        /// `notBefore`.
        not_before: DateTime<Utc>,
        /// `notAfter`.
        not_after: DateTime<Utc>,
    },
    /// `notBefore` is later than now plus [`CLOCK_SKEW`].
    #[error(
        "{role}: not valid yet: notBefore {not_before} is later than now ({now}) plus 5 minutes of clock skew"
    )]
    NotYetValid {
        /// Input concerned.
        role: CertRole,
        /// `notBefore`.
        not_before: DateTime<Utc>,
        /// The `now` used for the check.
        now: DateTime<Utc>,
    },
    /// `notAfter` is not later than now.
    #[error("{role}: expired: notAfter {not_after} is not later than now ({now})")]
    Expired {
        /// Input concerned.
        role: CertRole,
        /// `notAfter`.
        not_after: DateTime<Utc>,
        /// The `now` used for the check.
        now: DateTime<Utc>,
    },
    /// The leaf lifetime exceeds the 825-day maximum or the requested
    /// validity plus one day.
    #[error("leaf lifetime is {lifetime_secs} s (about {} days), longer than {limit} ({max_days} days)", .lifetime_secs / 86_400)]
    LifetimeTooLong {
        /// `notAfter - notBefore` in seconds.
        lifetime_secs: i64,
        /// The applicable maximum, in days.
        max_days: i64,
        /// Which limit applied.
        limit: &'static str,
    },
    /// Neither DNS names nor IP addresses were requested.
    #[error("no DNS names or IP addresses were requested; nothing to check the leaf against")]
    NoNamesRequested,
    /// An IP address SAN is neither 4 nor 16 bytes.
    #[error("leaf certificate has an IP address SAN of {len} bytes")]
    MalformedIpSan {
        /// Length of the encoded address.
        len: usize,
    },
    /// The leaf's SANs differ from the requested names.
    #[error("leaf SANs do not match the request: {}", describe_san_mismatch(.missing, .unexpected))]
    SanMismatch {
        /// Requested names the leaf does not carry.
        missing: Vec<String>,
        /// Names in the leaf that were not requested (SANs of other types
        /// are listed as `type:value`).
        unexpected: Vec<String>,
    },
    /// The chain is empty and no trust anchor was given.
    #[error(
        "the issuer returned no chain and no trust anchor was given to check the leaf's signature against"
    )]
    EmptyChain,
    /// A certificate's issuer DN differs from the subject DN of the
    /// certificate that should have issued it.
    #[error("{role} was issued by \"{issuer}\" but {expected_signer} is \"{signer_subject}\"")]
    IssuerMismatch {
        /// The issued certificate.
        role: CertRole,
        /// Its issuer DN.
        issuer: String,
        /// The certificate expected to have issued it.
        expected_signer: CertRole,
        /// That certificate's subject DN.
        signer_subject: String,
    },
    /// A signature does not verify with the issuing certificate's key.
    #[error("{role}: signature does not verify with the public key of {signer}")]
    BadSignature {
        /// The signed certificate.
        role: CertRole,
        /// The certificate whose key was used.
        signer: CertRole,
    },
    /// The signature algorithm is not supported by the verifier.
    #[error("{role}: unsupported signature algorithm {algorithm}")]
    UnsupportedSignatureAlgorithm {
        /// The signed certificate or CSR.
        role: CertRole,
        /// Algorithm OID.
        algorithm: String,
    },
    /// A chain element or the trust anchor is not a CA certificate.
    #[error("{role} (\"{subject}\") is not a CA certificate (basicConstraints CA:true missing)")]
    NotCa {
        /// Input concerned.
        role: CertRole,
        /// Its subject DN.
        subject: String,
    },
    /// A CA certificate's key usage does not allow signing certificates.
    #[error("{role} (\"{subject}\") key usage does not allow signing certificates (keyCertSign)")]
    CaCannotSignCertificates {
        /// Input concerned.
        role: CertRole,
        /// Its subject DN.
        subject: String,
    },
    /// A chain element's path length constraint is exceeded.
    #[error("{role} allows at most {max_path_len} intermediates below it, but {below} follow")]
    PathLenExceeded {
        /// Input concerned.
        role: CertRole,
        /// Its `pathLenConstraint`.
        max_path_len: u32,
        /// Number of intermediates between it and the leaf.
        below: usize,
    },
    /// A self-signed certificate appears before the end of the chain.
    #[error("{role} is self-signed but is not the last element of the chain")]
    RootNotAtEnd {
        /// Input concerned.
        role: CertRole,
    },
}

fn describe_san_mismatch(missing: &[String], unexpected: &[String]) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing [{}]", missing.join(", ")));
    }
    if !unexpected.is_empty() {
        parts.push(format!("not requested [{}]", unexpected.join(", ")));
    }
    parts.join("; ")
}

/// Parses and checks an issued certificate against its request.
///
/// See the [module documentation](self) for the checks performed, in order.
/// The first failing check is reported.
pub fn check_issued(input: &IssuedInput<'_>) -> Result<CheckedCertificate, CertCheckError> {
    if input.chain_pem.len() > MAX_CHAIN_LEN {
        return Err(CertCheckError::ChainTooLong {
            len: input.chain_pem.len(),
            limit: MAX_CHAIN_LEN,
        });
    }

    // 1. Parse everything before looking at anything.
    let csr_der = decode_pem(input.csr_pem, CertRole::Csr, CSR_LABELS)?;
    let csr = parse_csr(&csr_der)?;
    let leaf_der = decode_pem(input.leaf_pem, CertRole::Leaf, &[CERTIFICATE_LABEL])?;
    let leaf = parse_certificate(&leaf_der, CertRole::Leaf)?;
    let chain_der = input
        .chain_pem
        .iter()
        .enumerate()
        .map(|(index, pem)| decode_pem(pem, CertRole::Chain(index), &[CERTIFICATE_LABEL]))
        .collect::<Result<Vec<_>, _>>()?;
    let chain = chain_der
        .iter()
        .enumerate()
        .map(|(index, der)| parse_certificate(der, CertRole::Chain(index)))
        .collect::<Result<Vec<_>, _>>()?;
    let anchor_der = input
        .trust_anchor_pem
        .map(|pem| decode_pem(pem, CertRole::TrustAnchor, &[CERTIFICATE_LABEL]))
        .transpose()?;
    let anchor = anchor_der
        .as_deref()
        .map(|der| parse_certificate(der, CertRole::TrustAnchor))
        .transpose()?;

    // 2. Proof of possession and key match.
    if !input.csr_made_by_host {
        csr.verify_signature().map_err(|err| match err {
            X509Error::SignatureUnsupportedAlgorithm => {
                CertCheckError::UnsupportedSignatureAlgorithm {
                    role: CertRole::Csr,
                    algorithm: csr.signature_algorithm.algorithm.to_id_string(),
                }
            }
            other => CertCheckError::CsrSignatureInvalid {
                reason: other.to_string(),
            },
        })?;
    }
    if leaf.public_key().raw != csr.certification_request_info.subject_pki.raw {
        return Err(CertCheckError::KeyMismatch);
    }

    // 3. End-entity profile.
    check_signature_algorithms_agree(&leaf, CertRole::Leaf)?;
    check_leaf_profile(&leaf)?;

    // 4. Validity.
    let (not_before, not_after) = validity(&leaf, CertRole::Leaf)?;
    check_current(not_before, not_after, input.now, CertRole::Leaf)?;
    check_lifetime(not_before, not_after, input.validity_days)?;

    // 5. Names.
    let names = leaf_names(&leaf)?;
    check_names(input, &names)?;

    // 6. Chain.
    let kept = check_chain(&leaf, &chain, anchor.as_ref(), input.now)?;

    let chain_pem = chain_der
        .iter()
        .take(kept)
        .map(|der| encode_pem(CERTIFICATE_LABEL, der))
        .collect();
    let fingerprint_sha256 = hex::encode(Sha256::digest(&leaf_der));
    Ok(CheckedCertificate {
        leaf_pem: encode_pem(CERTIFICATE_LABEL, &leaf_der),
        chain_pem,
        serial_hex: serial_hex(leaf.raw_serial()),
        fingerprint_sha256,
        not_before,
        not_after,
        dns_names: names.dns,
        ip_addresses: names.ips,
        issuer: leaf.issuer().to_string(),
        subject: leaf.subject().to_string(),
        leaf_der,
    })
}

/// Decodes a single strict PEM block: optional surrounding whitespace, one
/// `-----BEGIN <label>-----` line, base64 lines, the matching END line, and
/// nothing else. Explanatory text and RFC 1421 headers are rejected.
fn decode_pem(
    text: &str,
    role: CertRole,
    labels: &[&'static str],
) -> Result<Vec<u8>, CertCheckError> {
    let malformed = |reason| CertCheckError::MalformedPem { role, reason };
    if text.len() > MAX_PEM_LEN {
        return Err(CertCheckError::PemTooLarge {
            role,
            len: text.len(),
            limit: MAX_PEM_LEN,
        });
    }
    let mut lines = text.trim().lines().map(str::trim_end);
    let first = lines.next().ok_or(malformed("empty input"))?;
    let label = first
        .strip_prefix("-----BEGIN ")
        .and_then(|rest| rest.strip_suffix("-----"))
        .ok_or(malformed("does not start with a -----BEGIN ...----- line"))?;
    let expected = labels.first().copied().unwrap_or(CERTIFICATE_LABEL);
    if !labels.contains(&label) {
        return Err(CertCheckError::UnexpectedPemLabel {
            role,
            expected,
            found: label.to_owned(),
        });
    }
    let mut body = String::new();
    let mut ended = false;
    for line in lines.by_ref() {
        if let Some(rest) = line.strip_prefix("-----END ") {
            if rest.strip_suffix("-----") != Some(label) {
                return Err(malformed("END line does not match the BEGIN line"));
            }
            ended = true;
            break;
        }
        if line.contains(':') {
            return Err(malformed("PEM headers are not accepted"));
        }
        body.push_str(line.trim_start());
    }
    if !ended {
        return Err(malformed("missing -----END ...----- line"));
    }
    if lines.next().is_some() {
        return Err(CertCheckError::TrailingPemContent { role });
    }
    if body.is_empty() {
        return Err(malformed("empty PEM body"));
    }
    BASE64
        .decode(body.as_bytes())
        .map_err(|_| malformed("body is not valid base64"))
}

fn encode_pem(label: &str, der: &[u8]) -> String {
    let b64 = BASE64.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    // Base64 output is ASCII, so 64-byte chunks are valid UTF-8.
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

fn parse_certificate(der: &[u8], role: CertRole) -> Result<X509Certificate<'_>, CertCheckError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|err| CertCheckError::MalformedDer {
            role,
            expected: "an X.509 certificate",
            reason: err.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(CertCheckError::TrailingDer {
            role,
            len: rest.len(),
        });
    }
    Ok(cert)
}

/// Records the signature of a CSR this process has just made (host key
/// mode) as made here (`certplane_runtime::signing`), so the issuer's check
/// of it through the `verify` import costs a hash. A CSR that does not
/// parse is left alone: the issuer says what is wrong with it.
pub fn remember_own_csr(csr_pem: &str) {
    let Ok(der) = decode_pem(csr_pem, CertRole::Csr, CSR_LABELS) else {
        return;
    };
    let Ok(csr) = parse_csr(&der) else {
        return;
    };
    let info = &csr.certification_request_info;
    certplane_runtime::signing::remember_made_here(
        info.subject_pki.raw,
        &csr.signature_algorithm.algorithm.to_id_string(),
        info.raw,
        &csr.signature_value.data,
    );
}

fn parse_csr(der: &[u8]) -> Result<X509CertificationRequest<'_>, CertCheckError> {
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|err| CertCheckError::MalformedDer {
            role: CertRole::Csr,
            expected: "a PKCS#10 certificate signing request",
            reason: err.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(CertCheckError::TrailingDer {
            role: CertRole::Csr,
            len: rest.len(),
        });
    }
    Ok(csr)
}

fn check_signature_algorithms_agree(
    cert: &X509Certificate<'_>,
    role: CertRole,
) -> Result<(), CertCheckError> {
    if cert.tbs_certificate.signature != cert.signature_algorithm {
        return Err(CertCheckError::SignatureAlgorithmMismatch {
            role,
            inner: cert.tbs_certificate.signature.algorithm.to_id_string(),
            outer: cert.signature_algorithm.algorithm.to_id_string(),
        });
    }
    Ok(())
}

fn invalid_extension(role: CertRole, extension: &'static str, err: X509Error) -> CertCheckError {
    CertCheckError::InvalidExtension {
        role,
        extension,
        reason: err.to_string(),
    }
}

fn check_leaf_profile(leaf: &X509Certificate<'_>) -> Result<(), CertCheckError> {
    let role = CertRole::Leaf;
    let basic = leaf
        .basic_constraints()
        .map_err(|err| invalid_extension(role, "basicConstraints", err))?;
    if basic.is_some_and(|ext| ext.value.ca) {
        return Err(CertCheckError::LeafIsCa);
    }
    let key_usage = leaf
        .key_usage()
        .map_err(|err| invalid_extension(role, "keyUsage", err))?;
    if key_usage.is_some_and(|ext| ext.value.key_cert_sign() || ext.value.crl_sign()) {
        return Err(CertCheckError::LeafCanSignCertificates);
    }
    let eku = leaf
        .extended_key_usage()
        .map_err(|err| invalid_extension(role, "extendedKeyUsage", err))?;
    if eku.is_some_and(|ext| !ext.value.server_auth) {
        return Err(CertCheckError::MissingServerAuth);
    }
    Ok(())
}

fn to_utc(
    time: ASN1Time,
    role: CertRole,
    field: &'static str,
) -> Result<DateTime<Utc>, CertCheckError> {
    DateTime::from_timestamp(time.timestamp(), 0).ok_or(CertCheckError::InvalidTime { role, field })
}

/// Returns `(notBefore, notAfter)`, rejecting an inverted period.
fn validity(
    cert: &X509Certificate<'_>,
    role: CertRole,
) -> Result<(DateTime<Utc>, DateTime<Utc>), CertCheckError> {
    let not_before = to_utc(cert.validity().not_before, role, "notBefore")?;
    let not_after = to_utc(cert.validity().not_after, role, "notAfter")?;
    if not_after <= not_before {
        return Err(CertCheckError::InvertedValidity {
            role,
            not_before,
            not_after,
        });
    }
    Ok((not_before, not_after))
}

fn check_current(
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
    now: DateTime<Utc>,
    role: CertRole,
) -> Result<(), CertCheckError> {
    // `now + 5 min` cannot overflow for any realistic clock; treat overflow
    // as "no upper bound" rather than failing.
    let latest_start = now
        .checked_add_signed(CLOCK_SKEW)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    if not_before > latest_start {
        return Err(CertCheckError::NotYetValid {
            role,
            not_before,
            now,
        });
    }
    if not_after <= now {
        return Err(CertCheckError::Expired {
            role,
            not_after,
            now,
        });
    }
    Ok(())
}

fn check_lifetime(
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
    validity_days: Option<u32>,
) -> Result<(), CertCheckError> {
    let lifetime_secs = (not_after - not_before).num_seconds();
    let (max_days, limit) = match validity_days {
        Some(days) if i64::from(days) + REQUESTED_VALIDITY_SLACK_DAYS < MAX_LIFETIME_DAYS => (
            i64::from(days) + REQUESTED_VALIDITY_SLACK_DAYS,
            "the requested validity plus one day",
        ),
        _ => (MAX_LIFETIME_DAYS, "the 825-day maximum"),
    };
    if lifetime_secs > max_days * 86_400 {
        return Err(CertCheckError::LifetimeTooLong {
            lifetime_secs,
            max_days,
            limit,
        });
    }
    Ok(())
}

/// SANs of the leaf, split by type.
struct LeafNames {
    /// DNS names, as in the certificate.
    dns: Vec<String>,
    /// IP addresses.
    ips: Vec<IpAddr>,
    /// SANs of any other type, formatted `type:value`.
    other: Vec<String>,
}

fn leaf_names(leaf: &X509Certificate<'_>) -> Result<LeafNames, CertCheckError> {
    let mut names = LeafNames {
        dns: Vec::new(),
        ips: Vec::new(),
        other: Vec::new(),
    };
    let san = leaf
        .subject_alternative_name()
        .map_err(|err| invalid_extension(CertRole::Leaf, "subjectAltName", err))?;
    let Some(san) = san else {
        return Ok(names);
    };
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(dns) => names.dns.push((*dns).to_owned()),
            GeneralName::IPAddress(bytes) => names.ips.push(ip_from_bytes(bytes)?),
            GeneralName::RFC822Name(email) => names.other.push(format!("email:{email}")),
            GeneralName::URI(uri) => names.other.push(format!("uri:{uri}")),
            GeneralName::DirectoryName(dn) => names.other.push(format!("dirname:{dn}")),
            GeneralName::RegisteredID(oid) => names.other.push(format!("registered-id:{oid}")),
            GeneralName::OtherName(oid, _) => names.other.push(format!("othername:{oid}")),
            GeneralName::X400Address(_) => names.other.push("x400-address".to_owned()),
            GeneralName::EDIPartyName(_) => names.other.push("edi-party-name".to_owned()),
        }
    }
    Ok(names)
}

fn ip_from_bytes(bytes: &[u8]) -> Result<IpAddr, CertCheckError> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Ok(IpAddr::V4(Ipv4Addr::from(v4)));
    }
    if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        return Ok(IpAddr::V6(Ipv6Addr::from(v6)));
    }
    Err(CertCheckError::MalformedIpSan { len: bytes.len() })
}

/// Exact set comparison: DNS names ASCII case-insensitively, IPs by value.
/// A wildcard is just a name here, so `*.example.com` only matches a
/// requested `*.example.com`, never `www.example.com`.
fn check_names(input: &IssuedInput<'_>, names: &LeafNames) -> Result<(), CertCheckError> {
    if input.dns_names.is_empty() && input.ip_addresses.is_empty() {
        return Err(CertCheckError::NoNamesRequested);
    }
    let requested_dns: BTreeSet<String> = input
        .dns_names
        .iter()
        .map(|name| name.to_ascii_lowercase())
        .collect();
    let leaf_dns: BTreeSet<String> = names
        .dns
        .iter()
        .map(|name| name.to_ascii_lowercase())
        .collect();
    let requested_ips: BTreeSet<IpAddr> = input.ip_addresses.iter().copied().collect();
    let leaf_ips: BTreeSet<IpAddr> = names.ips.iter().copied().collect();

    let missing: Vec<String> = requested_dns
        .difference(&leaf_dns)
        .cloned()
        .chain(requested_ips.difference(&leaf_ips).map(IpAddr::to_string))
        .collect();
    let unexpected: Vec<String> = leaf_dns
        .difference(&requested_dns)
        .cloned()
        .chain(leaf_ips.difference(&requested_ips).map(IpAddr::to_string))
        .chain(names.other.iter().cloned())
        .collect();
    if missing.is_empty() && unexpected.is_empty() {
        Ok(())
    } else {
        Err(CertCheckError::SanMismatch {
            missing,
            unexpected,
        })
    }
}

fn is_self_issued(cert: &X509Certificate<'_>) -> bool {
    cert.subject().as_raw() == cert.issuer().as_raw()
}

/// Checks that `child` names `signer` as issuer and carries its signature.
fn check_signed_by(
    child: &X509Certificate<'_>,
    role: CertRole,
    signer: &X509Certificate<'_>,
    signer_role: CertRole,
) -> Result<(), CertCheckError> {
    if child.issuer().as_raw() != signer.subject().as_raw() {
        return Err(CertCheckError::IssuerMismatch {
            role,
            issuer: child.issuer().to_string(),
            expected_signer: signer_role,
            signer_subject: signer.subject().to_string(),
        });
    }
    // Signed in this process through the `sign` import (a local CA): by
    // construction a signature of the signer's key over exactly these bytes
    // under this algorithm.
    if certplane_runtime::signing::take_made_here(
        signer.public_key().raw,
        &child.signature_algorithm.algorithm.to_id_string(),
        child.tbs_certificate.as_ref(),
        &child.signature_value.data,
    ) {
        return Ok(());
    }
    // A CA certificate signed by another (or by itself) comes back with
    // every certificate of its issuer: verified once per process. A leaf
    // is new each time and always verified (unless signed here).
    let known = (role != CertRole::Leaf).then(|| signed_pair(child, signer));
    if known.is_some_and(|pair| VERIFIED_CA_LINKS.contains(&pair)) {
        return Ok(());
    }
    child
        .verify_signature(Some(signer.public_key()))
        .map(|()| {
            if let Some(pair) = known {
                VERIFIED_CA_LINKS.insert(pair);
            }
        })
        .map_err(|err| match err {
            X509Error::SignatureUnsupportedAlgorithm => {
                CertCheckError::UnsupportedSignatureAlgorithm {
                    role,
                    algorithm: child.signature_algorithm.algorithm.to_id_string(),
                }
            }
            _ => CertCheckError::BadSignature {
                role,
                signer: signer_role,
            },
        })
}

/// The certificate (to be signed, and its signature) and the signer's key
/// of a verified link, hashed.
fn signed_pair(child: &X509Certificate<'_>, signer: &X509Certificate<'_>) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in [
        child.tbs_certificate.as_ref(),
        &child.signature_value.data,
        signer.public_key().raw,
    ] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

/// Links between CA certificates whose signature verified, kept for the
/// life of the process. Bounded: emptied when full (a host sees a handful
/// of CA chains, so it never fills in practice).
struct VerifiedLinks(std::sync::Mutex<BTreeSet<[u8; 32]>>);

/// Links kept at most.
const VERIFIED_LINKS_MAX: usize = 4096;

static VERIFIED_CA_LINKS: VerifiedLinks = VerifiedLinks(std::sync::Mutex::new(BTreeSet::new()));

impl VerifiedLinks {
    fn contains(&self, pair: &[u8; 32]) -> bool {
        self.0.lock().is_ok_and(|set| set.contains(pair))
    }

    fn insert(&self, pair: [u8; 32]) {
        if let Ok(mut set) = self.0.lock() {
            if set.len() >= VERIFIED_LINKS_MAX {
                set.clear();
            }
            set.insert(pair);
        }
    }
}

/// Checks that `cert` is a CA allowed to sign certificates.
fn check_is_ca(cert: &X509Certificate<'_>, role: CertRole) -> Result<(), CertCheckError> {
    let basic = cert
        .basic_constraints()
        .map_err(|err| invalid_extension(role, "basicConstraints", err))?;
    if !basic.is_some_and(|ext| ext.value.ca) {
        return Err(CertCheckError::NotCa {
            role,
            subject: cert.subject().to_string(),
        });
    }
    let key_usage = cert
        .key_usage()
        .map_err(|err| invalid_extension(role, "keyUsage", err))?;
    if key_usage.is_some_and(|ext| !ext.value.key_cert_sign()) {
        return Err(CertCheckError::CaCannotSignCertificates {
            role,
            subject: cert.subject().to_string(),
        });
    }
    Ok(())
}

/// Checks the chain and returns how many leading elements to keep (the
/// chain without a trailing self-signed root).
fn check_chain(
    leaf: &X509Certificate<'_>,
    chain: &[X509Certificate<'_>],
    anchor: Option<&X509Certificate<'_>>,
    now: DateTime<Utc>,
) -> Result<usize, CertCheckError> {
    let mut has_root = false;
    for (index, cert) in chain.iter().enumerate() {
        let role = CertRole::Chain(index);
        check_signature_algorithms_agree(cert, role)?;
        check_is_ca(cert, role)?;
        if is_self_issued(cert) {
            if index + 1 != chain.len() {
                return Err(CertCheckError::RootNotAtEnd { role });
            }
            check_signed_by(cert, role, cert, role)?;
            has_root = true;
        }
    }

    // Links: leaf <- chain[0] <- chain[1] <- ...
    if let Some(first) = chain.first() {
        check_signed_by(leaf, CertRole::Leaf, first, CertRole::Chain(0))?;
    }
    for (index, pair) in chain.windows(2).enumerate() {
        if let [child, signer] = pair {
            check_signed_by(
                child,
                CertRole::Chain(index),
                signer,
                CertRole::Chain(index + 1),
            )?;
        }
    }

    let kept = chain.len() - usize::from(has_root);
    for (index, cert) in chain.iter().take(kept).enumerate() {
        let role = CertRole::Chain(index);
        let basic = cert
            .basic_constraints()
            .map_err(|err| invalid_extension(role, "basicConstraints", err))?;
        if let Some(max_path_len) = basic.and_then(|ext| ext.value.path_len_constraint) {
            // `index` intermediates sit between this one and the leaf.
            if u32::try_from(index).map_or(true, |below| below > max_path_len) {
                return Err(CertCheckError::PathLenExceeded {
                    role,
                    max_path_len,
                    below: index,
                });
            }
        }
        let (not_before, not_after) = validity(cert, role)?;
        check_current(not_before, not_after, now, role)?;
    }

    match anchor {
        Some(anchor) => {
            check_signature_algorithms_agree(anchor, CertRole::TrustAnchor)?;
            check_is_ca(anchor, CertRole::TrustAnchor)?;
            let (top, top_role) = match kept
                .checked_sub(1)
                .and_then(|i| chain.get(i).map(|c| (c, i)))
            {
                Some((cert, index)) => (cert, CertRole::Chain(index)),
                None => (leaf, CertRole::Leaf),
            };
            check_signed_by(top, top_role, anchor, CertRole::TrustAnchor)?;
        }
        None if chain.is_empty() => return Err(CertCheckError::EmptyChain),
        None => {}
    }
    Ok(kept)
}

/// Lower-case hex of the serial's big-endian bytes, without the DER
/// sign-padding leading zero bytes (at least one byte is kept).
fn serial_hex(raw: &[u8]) -> String {
    let first_significant = raw
        .iter()
        .position(|byte| *byte != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    hex::encode(raw.get(first_significant..).unwrap_or(raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::keygen::{self, KeyType};
    use chrono::TimeZone as _;
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
        DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
        date_time_ymd,
    };
    use std::time::Duration as StdDuration;

    const DAY: StdDuration = StdDuration::from_secs(86_400);
    const NAMES: [&str; 2] = ["www.example.com", "api.example.com"];

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2030, 6, 1, 0, 0, 0).unwrap()
    }

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    fn dn(common_name: &str) -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents
    }

    /// Flips the last byte (inside the signature) of a PEM object.
    fn tamper_signature(pem: &str, label: &str) -> String {
        let mut der = pem_der(pem);
        let last = der.len() - 1;
        der[last] ^= 0x01;
        encode_pem(label, &der)
    }

    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    fn ca_params(name: &str, constraint: BasicConstraints) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(name);
        params.is_ca = IsCa::Ca(constraint);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = date_time_ymd(2029, 1, 1);
        params.not_after = date_time_ymd(2035, 1, 1);
        params
    }

    fn root(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let cert = ca_params(name, BasicConstraints::Unconstrained)
            .self_signed(&key)
            .unwrap();
        Ca { cert, key }
    }

    fn sub_ca(params: CertificateParams, issuer: &Ca) -> Ca {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer.cert, &issuer.key).unwrap();
        Ca { cert, key }
    }

    fn intermediate(name: &str, issuer: &Ca) -> Ca {
        sub_ca(ca_params(name, BasicConstraints::Unconstrained), issuer)
    }

    /// Leaf parameters as a well-behaved CA would issue them: 90 days from
    /// the day before `now()`, serverAuth, exactly the given names.
    fn leaf_params(dns: &[&str], ips: &[IpAddr]) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(dns.first().copied().unwrap_or("ip"));
        params.subject_alt_names = dns
            .iter()
            .map(|name| SanType::DnsName((*name).try_into().unwrap()))
            .chain(ips.iter().map(|ip| SanType::IpAddress(*ip)))
            .collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = date_time_ymd(2030, 5, 31);
        params.not_after = date_time_ymd(2030, 5, 31) + DAY * 90;
        params
    }

    struct Pki {
        root: Ca,
        int: Ca,
    }

    fn pki() -> Pki {
        let root = root("Test Root");
        let int = intermediate("Test Intermediate", &root);
        Pki { root, int }
    }

    /// Everything `check_issued` needs, owned.
    struct Case {
        csr_pem: String,
        dns: Vec<String>,
        ips: Vec<IpAddr>,
        leaf_pem: String,
        chain: Vec<String>,
        anchor: Option<String>,
        now: DateTime<Utc>,
        validity_days: Option<u32>,
        csr_made_by_host: bool,
    }

    impl Case {
        fn check(&self) -> Result<CheckedCertificate, CertCheckError> {
            check_issued(&IssuedInput {
                csr_pem: &self.csr_pem,
                dns_names: &self.dns,
                ip_addresses: &self.ips,
                leaf_pem: &self.leaf_pem,
                chain_pem: &self.chain,
                trust_anchor_pem: self.anchor.as_deref(),
                now: self.now,
                validity_days: self.validity_days,
                csr_made_by_host: self.csr_made_by_host,
            })
        }

        fn err(&self) -> CertCheckError {
            match self.check() {
                Ok(checked) => panic!("expected an error, got {checked:?}"),
                Err(err) => {
                    // Every error renders a non-empty message.
                    assert!(!err.to_string().is_empty());
                    err
                }
            }
        }
    }

    /// Requests `NAMES` with a CSR for `key`; the intermediate issues a leaf
    /// from `leaf_params(NAMES)` after `edit` (to simulate a misbehaving CA).
    /// A CSR for `NAMES` signed with `key`.
    fn csr_for(key: &KeyPair) -> String {
        leaf_params(&NAMES, &[])
            .serialize_request(key)
            .unwrap()
            .pem()
            .unwrap()
    }

    fn case_with(pki: &Pki, key: &KeyPair, edit: impl FnOnce(&mut CertificateParams)) -> Case {
        let csr_pem = csr_for(key);
        let mut params = leaf_params(&NAMES, &[]);
        edit(&mut params);
        let leaf_pem = params
            .signed_by(key, &pki.int.cert, &pki.int.key)
            .unwrap()
            .pem();
        Case {
            csr_pem,
            dns: strings(&NAMES),
            ips: Vec::new(),
            leaf_pem,
            chain: vec![pki.int.cert.pem()],
            anchor: None,
            now: now(),
            validity_days: None,
            csr_made_by_host: false,
        }
    }

    fn case(pki: &Pki) -> Case {
        case_with(pki, &KeyPair::generate().unwrap(), |_| {})
    }

    // ---- happy paths -------------------------------------------------

    #[test]
    fn happy_path_p256_reports_everything() {
        let pki = pki();
        let key = KeyPair::generate().unwrap();
        let case = case_with(&pki, &key, |params| {
            params.serial_number = Some(SerialNumber::from_slice(&[0x8f, 0x01, 0xab]));
        });
        let checked = case.check().unwrap();

        let der = pem_der(&case.leaf_pem);
        assert_eq!(checked.leaf_der, der);
        assert_eq!(pem_der(&checked.leaf_pem), der);
        assert!(
            checked
                .leaf_pem
                .starts_with("-----BEGIN CERTIFICATE-----\n")
        );
        assert_eq!(
            checked.fingerprint_sha256,
            hex::encode(Sha256::digest(&der))
        );
        assert_eq!(checked.fingerprint_sha256.len(), 64);
        // DER encodes 0x8f01ab as 00 8f 01 ab; the padding byte is dropped.
        assert_eq!(checked.serial_hex, "8f01ab");
        assert_eq!(checked.chain_pem.len(), 1);
        assert_eq!(pem_der(&checked.chain_pem[0]), pki.int.cert.der().to_vec());
        assert_eq!(checked.dns_names, strings(&NAMES));
        assert!(checked.ip_addresses.is_empty());
        assert_eq!(checked.issuer, "CN=Test Intermediate");
        assert_eq!(checked.subject, "CN=www.example.com");
        assert_eq!(
            checked.not_before,
            Utc.with_ymd_and_hms(2030, 5, 31, 0, 0, 0).unwrap()
        );
        assert_eq!(
            checked.not_after,
            Utc.with_ymd_and_hms(2030, 8, 29, 0, 0, 0).unwrap()
        );
    }

    #[test]
    fn happy_path_p384_leaf() {
        let pki = pki();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        case_with(&pki, &key, |_| {}).check().unwrap();
    }

    #[test]
    fn happy_path_ed25519_leaf() {
        let pki = pki();
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        case_with(&pki, &key, |_| {}).check().unwrap();
    }

    /// End to end with host key mode: keygen makes an RSA-2048 key and CSR,
    /// the CA signs what the CSR asks for. (RSA-2048 only: larger keys are
    /// slow to generate in debug builds.)
    #[test]
    fn happy_path_rsa_leaf_from_keygen_csr() {
        let pki = pki();
        let ips = vec![IpAddr::from([192, 0, 2, 7])];
        let generated =
            keygen::generate_key_and_csr(KeyType::Rsa2048, NAMES[0], &strings(&NAMES), &ips)
                .unwrap();
        let mut request = CertificateSigningRequestParams::from_pem(&generated.csr_pem).unwrap();
        request.params.not_before = date_time_ymd(2030, 5, 31);
        request.params.not_after = date_time_ymd(2030, 5, 31) + DAY * 30;
        request.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = request.signed_by(&pki.int.cert, &pki.int.key).unwrap();
        let case = Case {
            csr_pem: generated.csr_pem.clone(),
            dns: strings(&NAMES),
            ips: ips.clone(),
            leaf_pem: leaf.pem(),
            chain: vec![pki.int.cert.pem(), pki.root.cert.pem()],
            anchor: None,
            now: now(),
            validity_days: Some(30),
            csr_made_by_host: false,
        };
        let checked = case.check().unwrap();
        assert_eq!(checked.ip_addresses, ips);
        assert_eq!(checked.chain_pem.len(), 1);
    }

    #[test]
    fn root_at_end_is_checked_and_dropped() {
        let pki = pki();
        let mut case = case(&pki);
        case.chain.push(pki.root.cert.pem());
        let checked = case.check().unwrap();
        assert_eq!(checked.chain_pem.len(), 1);
        assert_eq!(pem_der(&checked.chain_pem[0]), pki.int.cert.der().to_vec());

        // A tampered root is rejected even though it is dropped.
        case.chain[1] = tamper_signature(&pki.root.cert.pem(), "CERTIFICATE");
        assert_eq!(
            case.err(),
            CertCheckError::BadSignature {
                role: CertRole::Chain(1),
                signer: CertRole::Chain(1),
            }
        );
    }

    #[test]
    fn two_intermediates_keep_order() {
        let pki = pki();
        let int2 = intermediate("Test Issuing CA", &pki.int);
        let key = KeyPair::generate().unwrap();
        let mut case = case_with(&pki, &key, |_| {});
        case.leaf_pem = leaf_params(&NAMES, &[])
            .signed_by(&key, &int2.cert, &int2.key)
            .unwrap()
            .pem();
        case.chain = vec![int2.cert.pem(), pki.int.cert.pem(), pki.root.cert.pem()];
        let checked = case.check().unwrap();
        let chain: Vec<Vec<u8>> = checked.chain_pem.iter().map(|pem| pem_der(pem)).collect();
        assert_eq!(
            chain,
            vec![int2.cert.der().to_vec(), pki.int.cert.der().to_vec()]
        );

        // Wrong order: the leaf's issuer is not chain[0].
        case.chain = vec![pki.int.cert.pem(), int2.cert.pem()];
        assert!(matches!(
            case.err(),
            CertCheckError::IssuerMismatch {
                role: CertRole::Leaf,
                expected_signer: CertRole::Chain(0),
                ..
            }
        ));
    }

    #[test]
    fn crlf_and_surrounding_whitespace_are_accepted() {
        let pki = pki();
        let mut case = case(&pki);
        case.leaf_pem = format!("\n  {}\n\n", case.leaf_pem.replace('\n', "\r\n"));
        case.check().unwrap();
    }

    // ---- trust anchor / empty chain ----------------------------------

    #[test]
    fn empty_chain_needs_a_trust_anchor() {
        let pki = pki();
        let key = KeyPair::generate().unwrap();
        let mut case = case_with(&pki, &key, |_| {});
        // Leaf issued directly by the (local) root CA.
        case.leaf_pem = leaf_params(&NAMES, &[])
            .signed_by(&key, &pki.root.cert, &pki.root.key)
            .unwrap()
            .pem();
        case.chain.clear();
        assert_eq!(case.err(), CertCheckError::EmptyChain);

        case.anchor = Some(pki.root.cert.pem());
        let checked = case.check().unwrap();
        assert!(checked.chain_pem.is_empty());

        // Another CA with the same name but a different key.
        let impostor = root("Test Root");
        case.anchor = Some(impostor.cert.pem());
        assert_eq!(
            case.err(),
            CertCheckError::BadSignature {
                role: CertRole::Leaf,
                signer: CertRole::TrustAnchor,
            }
        );

        // A trust anchor that is not a CA.
        let mut not_ca = ca_params("Not A CA", BasicConstraints::Unconstrained);
        not_ca.is_ca = IsCa::ExplicitNoCa;
        let not_ca_key = KeyPair::generate().unwrap();
        case.anchor = Some(not_ca.self_signed(&not_ca_key).unwrap().pem());
        assert!(matches!(
            case.err(),
            CertCheckError::NotCa {
                role: CertRole::TrustAnchor,
                ..
            }
        ));
    }

    #[test]
    fn trust_anchor_must_sign_top_of_chain() {
        let pki = pki();
        let mut case = case(&pki);
        case.anchor = Some(pki.root.cert.pem());
        case.check().unwrap();

        case.chain.push(pki.root.cert.pem());
        case.check().unwrap();

        let other = root("Other Root");
        case.anchor = Some(other.cert.pem());
        assert!(matches!(
            case.err(),
            CertCheckError::IssuerMismatch {
                role: CertRole::Chain(0),
                expected_signer: CertRole::TrustAnchor,
                ..
            }
        ));
    }

    // ---- key / CSR ---------------------------------------------------

    #[test]
    fn wrong_key_is_rejected() {
        let pki = pki();
        let mut case = case(&pki);
        // CSR for another key.
        case.csr_pem = csr_for(&KeyPair::generate().unwrap());
        assert_eq!(case.err(), CertCheckError::KeyMismatch);
    }

    #[test]
    fn tampered_csr_is_rejected() {
        let pki = pki();
        let mut case = case(&pki);
        case.csr_pem = tamper_signature(&case.csr_pem, "CERTIFICATE REQUEST");
        assert!(matches!(
            case.err(),
            CertCheckError::CsrSignatureInvalid { .. }
        ));
    }

    #[test]
    fn a_csr_the_host_made_is_not_verified_again_but_must_match() {
        let pki = pki();
        let mut case = case(&pki);
        case.csr_made_by_host = true;
        case.csr_pem = tamper_signature(&case.csr_pem, "CERTIFICATE REQUEST");
        case.check().unwrap();
        case.csr_pem = csr_for(&KeyPair::generate().unwrap());
        assert_eq!(case.err(), CertCheckError::KeyMismatch);
    }

    #[test]
    fn a_verified_ca_link_is_remembered_but_not_a_changed_one() {
        let pki = pki();
        let mut case = case(&pki);
        case.chain.push(pki.root.cert.pem());
        case.check().unwrap();
        // Again, the links between the two CAs from memory.
        case.check().unwrap();
        // The intermediate with another signature is verified afresh.
        case.chain[0] = tamper_signature(&pki.int.cert.pem(), "CERTIFICATE");
        assert_eq!(
            case.err(),
            CertCheckError::BadSignature {
                role: CertRole::Chain(0),
                signer: CertRole::Chain(1),
            }
        );
        // So is the same intermediate under a root of the same name with
        // another key: the remembered link was to the first root's key.
        let impostor = root("Test Root");
        case.chain = vec![pki.int.cert.pem(), impostor.cert.pem()];
        assert_eq!(
            case.err(),
            CertCheckError::BadSignature {
                role: CertRole::Chain(0),
                signer: CertRole::Chain(1),
            }
        );
        // And a leaf is verified every time.
        let mut forged = case_with(&pki, &KeyPair::generate().unwrap(), |_| {});
        forged.leaf_pem = tamper_signature(&forged.leaf_pem, "CERTIFICATE");
        assert!(matches!(
            forged.err(),
            CertCheckError::BadSignature {
                role: CertRole::Leaf,
                ..
            }
        ));
    }

    #[test]
    fn a_leaf_signed_here_is_taken_once_and_only_as_signed() {
        let pki = pki();
        let mut case = case_with(&pki, &KeyPair::generate().unwrap(), |_| {});
        // A signature the check would refuse, recorded as made here: only
        // code that made a signature records it, so the record is trusted
        // (once), and a record under another algorithm is not this one.
        case.leaf_pem = tamper_signature(&case.leaf_pem, "CERTIFICATE");
        let der = decode_pem(&case.leaf_pem, CertRole::Leaf, &[CERTIFICATE_LABEL]).unwrap();
        let leaf = parse_certificate(&der, CertRole::Leaf).unwrap();
        let ca_der = decode_pem(
            &pki.int.cert.pem(),
            CertRole::Chain(0),
            &[CERTIFICATE_LABEL],
        )
        .unwrap();
        let ca = parse_certificate(&ca_der, CertRole::Chain(0)).unwrap();
        let record = |algorithm: &str| {
            certplane_runtime::signing::remember_made_here(
                ca.public_key().raw,
                algorithm,
                leaf.tbs_certificate.as_ref(),
                &leaf.signature_value.data,
            )
        };
        let bad = |e: CertCheckError| {
            matches!(
                e,
                CertCheckError::BadSignature {
                    role: CertRole::Leaf,
                    ..
                }
            )
        };
        record("1.2.840.10045.4.3.3");
        assert!(bad(case.err()), "recorded under another algorithm");
        record(&leaf.signature_algorithm.algorithm.to_id_string());
        case.check().unwrap();
        assert!(bad(case.err()), "a record is taken once");
    }

    #[test]
    fn a_csr_the_host_made_is_recorded_for_the_issuer() {
        let generated =
            keygen::generate_key_and_csr(KeyType::EcdsaP256, NAMES[0], &strings(&NAMES), &[])
                .unwrap();
        remember_own_csr(&generated.csr_pem);
        let der = decode_pem(&generated.csr_pem, CertRole::Csr, CSR_LABELS).unwrap();
        let csr = parse_csr(&der).unwrap();
        let info = &csr.certification_request_info;
        let taken = |signature: &[u8]| {
            certplane_runtime::signing::take_made_here(
                info.subject_pki.raw,
                &csr.signature_algorithm.algorithm.to_id_string(),
                info.raw,
                signature,
            )
        };
        let mut other = csr.signature_value.data.to_vec();
        if let Some(last) = other.last_mut() {
            *last ^= 1;
        }
        assert!(!taken(&other));
        assert!(taken(&csr.signature_value.data));
        assert!(!taken(&csr.signature_value.data));
    }

    #[test]
    fn certificate_instead_of_csr_is_rejected() {
        let pki = pki();
        let mut case = case(&pki);
        case.csr_pem = case.leaf_pem.clone();
        assert_eq!(
            case.err(),
            CertCheckError::UnexpectedPemLabel {
                role: CertRole::Csr,
                expected: "CERTIFICATE REQUEST",
                found: "CERTIFICATE".to_owned(),
            }
        );
    }

    // ---- SANs --------------------------------------------------------

    #[test]
    fn missing_san_is_rejected() {
        let pki = pki();
        let case = case_with(&pki, &KeyPair::generate().unwrap(), |params| {
            params.subject_alt_names.truncate(1);
        });
        assert_eq!(
            case.err(),
            CertCheckError::SanMismatch {
                missing: vec!["api.example.com".to_owned()],
                unexpected: vec![],
            }
        );
    }

    #[test]
    fn extra_san_is_rejected() {
        let pki = pki();
        let case = case_with(&pki, &KeyPair::generate().unwrap(), |params| {
            params
                .subject_alt_names
                .push(SanType::DnsName("evil.example.net".try_into().unwrap()));
            params
                .subject_alt_names
                .push(SanType::IpAddress(IpAddr::from([10, 0, 0, 1])));
            params
                .subject_alt_names
                .push(SanType::Rfc822Name("ops@example.com".try_into().unwrap()));
        });
        assert_eq!(
            case.err(),
            CertCheckError::SanMismatch {
                missing: vec![],
                unexpected: vec![
                    "evil.example.net".to_owned(),
                    "10.0.0.1".to_owned(),
                    "email:ops@example.com".to_owned(),
                ],
            }
        );
    }

    #[test]
    fn no_san_extension_means_everything_missing() {
        let pki = pki();
        let case = case_with(&pki, &KeyPair::generate().unwrap(), |params| {
            params.subject_alt_names.clear();
        });
        assert!(matches!(
            case.err(),
            CertCheckError::SanMismatch { missing, unexpected } if missing.len() == 2 && unexpected.is_empty()
        ));
    }

    #[test]
    fn dns_names_match_case_insensitively() {
        let pki = pki();
        let mut case = case(&pki);
        case.dns = strings(&["WWW.Example.COM", "api.example.com", "www.example.com"]);
        case.check().unwrap();
    }

    #[test]
    fn wildcard_only_matches_identical_wildcard() {
        let pki = pki();
        let key = KeyPair::generate().unwrap();
        let mut case = case_with(&pki, &key, |params| {
            params.subject_alt_names = vec![SanType::DnsName("*.example.com".try_into().unwrap())];
        });
        // Requested plain names are not covered by a wildcard SAN.
        assert_eq!(
            case.err(),
            CertCheckError::SanMismatch {
                missing: strings(&["api.example.com", "www.example.com"]),
                unexpected: strings(&["*.example.com"]),
            }
        );
        // Requesting the wildcard itself is fine.
        case.dns = strings(&["*.example.com"]);
        case.check().unwrap();
    }

    #[test]
    fn ip_sans_are_checked() {
        let pki = pki();
        let key = KeyPair::generate().unwrap();
        let v4 = IpAddr::from([192, 0, 2, 1]);
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let mut case = case_with(&pki, &key, |params| {
            params.subject_alt_names.push(SanType::IpAddress(v4));
            params.subject_alt_names.push(SanType::IpAddress(v6));
        });
        case.ips = vec![v4, v6];
        assert_eq!(case.check().unwrap().ip_addresses, vec![v4, v6]);

        case.ips.push(IpAddr::from([192, 0, 2, 2]));
        assert_eq!(
            case.err(),
            CertCheckError::SanMismatch {
                missing: vec!["192.0.2.2".to_owned()],
                unexpected: vec![],
            }
        );
    }

    #[test]
    fn nothing_requested_is_rejected() {
        let pki = pki();
        let mut case = case(&pki);
        case.dns.clear();
        assert_eq!(case.err(), CertCheckError::NoNamesRequested);
    }

    // ---- validity ----------------------------------------------------

    #[test]
    fn expired_leaf_is_rejected() {
        let pki = pki();
        let case = case_with(&pki, &KeyPair::generate().unwrap(), |params| {
            params.not_before = date_time_ymd(2030, 3, 1);
            params.not_after = date_time_ymd(2030, 6, 1); // == now
        });
        assert!(matches!(
            case.err(),
            CertCheckError::Expired {
                role: CertRole::Leaf,
                ..
            }
        ));
    }

    #[test]
    fn not_yet_valid_leaf_is_rejected_beyond_clock_skew() {
        let pki = pki();
        let key = KeyPair::generate().unwrap();
        let within = case_with(&pki, &key, |params| {
            params.not_before = date_time_ymd(2030, 6, 1) + StdDuration::from_secs(4 * 60);
        });
        within.check().unwrap();

        let beyond = case_with(&pki, &key, |params| {
            params.not_before = date_time_ymd(2030, 6, 1) + StdDuration::from_secs(6 * 60);
        });
        assert!(matches!(
            beyond.err(),
            CertCheckError::NotYetValid {
                role: CertRole::Leaf,
                ..
            }
        ));
    }

    #[test]
    fn inverted_validity_is_rejected() {
        let pki = pki();
        let case = case_with(&pki, &KeyPair::generate().unwrap(), |params| {
            params.not_before = date_time_ymd(2030, 7, 1);
            params.not_after = date_time_ymd(2030, 5, 1);
        });
        assert!(matches!(
            case.err(),
            CertCheckError::InvertedValidity {
                role: CertRole::Leaf,
                ..
            }
        ));
    }

    #[test]
    fn lifetime_over_825_days_is_rejected() {
        let pki = pki();
        let key = KeyPair::generate().unwrap();
        let max = case_with(&pki, &key, |params| {
            params.not_after = date_time_ymd(2030, 5, 31) + DAY * 825;
        });
        max.check().unwrap();

        let too_long = case_with(&pki, &key, |params| {
            params.not_after = date_time_ymd(2030, 5, 31) + DAY * 826;
        });
        assert_eq!(
            too_long.err(),
            CertCheckError::LifetimeTooLong {
                lifetime_secs: 826 * 86_400,
                max_days: 825,
                limit: "the 825-day maximum",
            }
        );
    }

    #[test]
    fn lifetime_over_requested_validity_is_rejected() {
        let pki = pki();
        let key = KeyPair::generate().unwrap();
        let mut ok = case_with(&pki, &key, |params| {
            params.not_after = date_time_ymd(2030, 5, 31) + DAY * 91;
        });
        ok.validity_days = Some(90);
        ok.check().unwrap();

        let mut too_long = case_with(&pki, &key, |params| {
            params.not_after = date_time_ymd(2030, 5, 31) + DAY * 91 + StdDuration::from_secs(1);
        });
        too_long.validity_days = Some(90);
        assert!(matches!(
            too_long.err(),
            CertCheckError::LifetimeTooLong { max_days: 91, .. }
        ));

        // A requested validity above the cap does not lift the cap.
        let mut capped = case_with(&pki, &key, |params| {
            params.not_after = date_time_ymd(2030, 5, 31) + DAY * 900;
        });
        capped.validity_days = Some(1000);
        assert!(matches!(
            capped.err(),
            CertCheckError::LifetimeTooLong { max_days: 825, .. }
        ));
    }

    // ---- leaf profile ------------------------------------------------

    #[test]
    fn ca_leaf_is_rejected() {
        let pki = pki();
        let case = case_with(&pki, &KeyPair::generate().unwrap(), |params| {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        });
        assert_eq!(case.err(), CertCheckError::LeafIsCa);
    }

    #[test]
    fn explicit_ca_false_is_accepted() {
        let pki = pki();
        let case = case_with(&pki, &KeyPair::generate().unwrap(), |params| {
            params.is_ca = IsCa::ExplicitNoCa;
        });
        case.check().unwrap();
    }

    #[test]
    fn leaf_with_cert_sign_usage_is_rejected() {
        let pki = pki();
        let case = case_with(&pki, &KeyPair::generate().unwrap(), |params| {
            params.key_usages.push(KeyUsagePurpose::KeyCertSign);
        });
        assert_eq!(case.err(), CertCheckError::LeafCanSignCertificates);
    }

    #[test]
    fn eku_without_server_auth_is_rejected() {
        let pki = pki();
        let key = KeyPair::generate().unwrap();
        let client_only = case_with(&pki, &key, |params| {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        });
        assert_eq!(client_only.err(), CertCheckError::MissingServerAuth);

        let no_eku = case_with(&pki, &key, |params| params.extended_key_usages.clear());
        no_eku.check().unwrap();
    }

    // ---- chain -------------------------------------------------------

    #[test]
    fn wrong_issuer_is_rejected() {
        let pki = pki();
        let other = intermediate("Other Intermediate", &pki.root);
        let mut case = case(&pki);
        case.chain = vec![other.cert.pem()];
        assert_eq!(
            case.err(),
            CertCheckError::IssuerMismatch {
                role: CertRole::Leaf,
                issuer: "CN=Test Intermediate".to_owned(),
                expected_signer: CertRole::Chain(0),
                signer_subject: "CN=Other Intermediate".to_owned(),
            }
        );
    }

    #[test]
    fn bad_leaf_signature_is_rejected() {
        let pki = pki();
        let mut case = case(&pki);
        case.leaf_pem = tamper_signature(&case.leaf_pem, "CERTIFICATE");
        assert_eq!(
            case.err(),
            CertCheckError::BadSignature {
                role: CertRole::Leaf,
                signer: CertRole::Chain(0),
            }
        );
    }

    #[test]
    fn impostor_intermediate_with_same_name_is_rejected() {
        let pki = pki();
        let impostor = intermediate("Test Intermediate", &pki.root);
        let mut case = case(&pki);
        case.chain = vec![impostor.cert.pem()];
        assert_eq!(
            case.err(),
            CertCheckError::BadSignature {
                role: CertRole::Leaf,
                signer: CertRole::Chain(0),
            }
        );
    }

    #[test]
    fn intermediate_not_signed_by_next_is_rejected() {
        let pki = pki();
        let impostor_root = root("Test Root");
        let mut case = case(&pki);
        case.chain.push(impostor_root.cert.pem());
        assert_eq!(
            case.err(),
            CertCheckError::BadSignature {
                role: CertRole::Chain(0),
                signer: CertRole::Chain(1),
            }
        );
    }

    #[test]
    fn non_ca_intermediate_is_rejected() {
        let pki = pki();
        let mut params = ca_params("Not A CA", BasicConstraints::Unconstrained);
        params.is_ca = IsCa::NoCa;
        let not_ca = sub_ca(params, &pki.root);
        let key = KeyPair::generate().unwrap();
        let mut case = case_with(&pki, &key, |_| {});
        case.leaf_pem = leaf_params(&NAMES, &[])
            .signed_by(&key, &not_ca.cert, &not_ca.key)
            .unwrap()
            .pem();
        case.chain = vec![not_ca.cert.pem()];
        assert_eq!(
            case.err(),
            CertCheckError::NotCa {
                role: CertRole::Chain(0),
                subject: "CN=Not A CA".to_owned(),
            }
        );
    }

    #[test]
    fn ca_without_cert_sign_usage_is_rejected() {
        let pki = pki();
        let mut params = ca_params("Signing Disabled", BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let ca = sub_ca(params, &pki.root);
        let key = KeyPair::generate().unwrap();
        let mut case = case_with(&pki, &key, |_| {});
        case.leaf_pem = leaf_params(&NAMES, &[])
            .signed_by(&key, &ca.cert, &ca.key)
            .unwrap()
            .pem();
        case.chain = vec![ca.cert.pem()];
        assert!(matches!(
            case.err(),
            CertCheckError::CaCannotSignCertificates {
                role: CertRole::Chain(0),
                ..
            }
        ));
    }

    #[test]
    fn path_length_is_enforced() {
        let pki = pki();
        let constrained = sub_ca(
            ca_params("Constrained", BasicConstraints::Constrained(0)),
            &pki.root,
        );
        let below = intermediate("Below Constrained", &constrained);
        let key = KeyPair::generate().unwrap();
        let mut case = case_with(&pki, &key, |_| {});
        case.leaf_pem = leaf_params(&NAMES, &[])
            .signed_by(&key, &below.cert, &below.key)
            .unwrap()
            .pem();
        case.chain = vec![
            below.cert.pem(),
            constrained.cert.pem(),
            pki.root.cert.pem(),
        ];
        assert_eq!(
            case.err(),
            CertCheckError::PathLenExceeded {
                role: CertRole::Chain(1),
                max_path_len: 0,
                below: 1,
            }
        );
    }

    #[test]
    fn root_before_end_is_rejected() {
        let pki = pki();
        let mut case = case(&pki);
        case.chain = vec![pki.int.cert.pem(), pki.root.cert.pem(), pki.root.cert.pem()];
        assert_eq!(
            case.err(),
            CertCheckError::RootNotAtEnd {
                role: CertRole::Chain(1)
            }
        );
    }

    #[test]
    fn expired_intermediate_is_rejected() {
        let pki = pki();
        let mut params = ca_params("Test Intermediate", BasicConstraints::Unconstrained);
        params.not_after = date_time_ymd(2030, 5, 1);
        let stale = sub_ca(params, &pki.root);
        let key = KeyPair::generate().unwrap();
        let mut case = case_with(&pki, &key, |_| {});
        case.leaf_pem = leaf_params(&NAMES, &[])
            .signed_by(&key, &stale.cert, &stale.key)
            .unwrap()
            .pem();
        case.chain = vec![stale.cert.pem()];
        assert!(matches!(
            case.err(),
            CertCheckError::Expired {
                role: CertRole::Chain(0),
                ..
            }
        ));
    }

    #[test]
    fn overlong_chain_is_rejected() {
        let pki = pki();
        let mut case = case(&pki);
        case.chain = vec![pki.int.cert.pem(); MAX_CHAIN_LEN + 1];
        assert!(matches!(case.err(), CertCheckError::ChainTooLong { .. }));
    }

    // ---- garbage -----------------------------------------------------

    #[test]
    fn garbage_pem_is_rejected() {
        let pki = pki();
        let base = case(&pki);
        let der = pem_der(&base.leaf_pem);
        let leaf_err = |leaf_pem: String| {
            let mut case = case(&pki);
            case.leaf_pem = leaf_pem;
            case.err()
        };

        assert!(matches!(
            leaf_err("not a certificate".to_owned()),
            CertCheckError::MalformedPem {
                role: CertRole::Leaf,
                ..
            }
        ));
        assert!(matches!(
            leaf_err(String::new()),
            CertCheckError::MalformedPem { .. }
        ));
        assert!(matches!(
            leaf_err(format!("subject=CN=www.example.com\n{}", base.leaf_pem)),
            CertCheckError::MalformedPem { .. }
        ));
        assert_eq!(
            leaf_err(format!("{}garbage\n", base.leaf_pem)),
            CertCheckError::TrailingPemContent {
                role: CertRole::Leaf
            }
        );
        assert_eq!(
            leaf_err(format!("{}{}", base.leaf_pem, base.leaf_pem)),
            CertCheckError::TrailingPemContent {
                role: CertRole::Leaf
            }
        );
        assert!(matches!(
            leaf_err(base.leaf_pem.replace("-----END CERTIFICATE-----", "")),
            CertCheckError::MalformedPem { .. }
        ));
        assert!(matches!(
            leaf_err(
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".to_owned()
            ),
            CertCheckError::MalformedPem { .. }
        ));
        assert!(matches!(
            leaf_err(KeyPair::generate().unwrap().serialize_pem()),
            CertCheckError::UnexpectedPemLabel {
                role: CertRole::Leaf,
                ..
            }
        ));
        assert!(matches!(
            leaf_err(encode_pem("CERTIFICATE", b"definitely not DER")),
            CertCheckError::MalformedDer {
                role: CertRole::Leaf,
                ..
            }
        ));
        let mut trailing = der.clone();
        trailing.extend_from_slice(&[0, 0]);
        assert_eq!(
            leaf_err(encode_pem("CERTIFICATE", &trailing)),
            CertCheckError::TrailingDer {
                role: CertRole::Leaf,
                len: 2
            }
        );
        assert!(matches!(
            leaf_err(" ".repeat(MAX_PEM_LEN + 1)),
            CertCheckError::PemTooLarge { .. }
        ));

        let mut case = case(&pki);
        case.chain = vec!["garbage".to_owned()];
        assert!(matches!(
            case.err(),
            CertCheckError::MalformedPem {
                role: CertRole::Chain(0),
                ..
            }
        ));
    }
}
