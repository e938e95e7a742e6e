//! PEM handling: split bundles into blocks, order certificate chains
//! leaf-first, and compute SHA-256 fingerprints.
//!
//! CAs hand certificates back in every order imaginable (root first, leaf
//! last, leaf in the middle). The contract wants the leaf separately and the
//! chain "nearest to the leaf first", so issuers typically do:
//!
//! ```
//! # fn demo(bundle: &str) -> Result<(), certplane_sdk::pem::PemError> {
//! use certplane_sdk::pem;
//!
//! let certs = pem::order_leaf_first(pem::certificates(bundle)?)?;
//! let (leaf, chain) = pem::split_leaf(certs)?;
//! let certificate_pem = leaf.to_pem();
//! let chain_pem: Vec<String> = chain
//!     .iter()
//!     .filter(|c| !c.is_self_signed())
//!     .map(|c| c.to_pem())
//!     .collect();
//! # let _ = (certificate_pem, chain_pem);
//! # Ok(()) }
//! ```

use core::fmt;

use sha2::{Digest, Sha256};
use x509_cert::der::{Decode, Encode};

/// The PEM label of an X.509 certificate.
pub const CERTIFICATE: &str = "CERTIFICATE";

/// Why PEM or certificate input could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PemError(String);

impl PemError {
    /// Creates an error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        PemError(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PemError {}

/// One PEM block: its label (`CERTIFICATE`, `PRIVATE KEY`, ...) and the DER
/// bytes it encodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PemBlock {
    /// The label between `-----BEGIN ` and `-----`.
    pub label: String,
    /// The decoded contents.
    pub der: Vec<u8>,
}

impl PemBlock {
    /// Creates a block.
    pub fn new(label: impl Into<String>, der: impl Into<Vec<u8>>) -> Self {
        PemBlock {
            label: label.into(),
            der: der.into(),
        }
    }

    /// Encodes the block as PEM with `\n` line endings and a trailing newline.
    pub fn to_pem(&self) -> String {
        encode(&self.label, &self.der)
    }

    /// Lower-case hex SHA-256 of the DER bytes (the certificate fingerprint
    /// for a `CERTIFICATE` block).
    pub fn fingerprint_sha256(&self) -> String {
        fingerprint_sha256(&self.der)
    }

    /// Whether this is a certificate whose subject equals its issuer (a root
    /// or another self-issued certificate). `false` for anything that does
    /// not parse as a certificate.
    pub fn is_self_signed(&self) -> bool {
        names(&self.der).is_some_and(|(subject, issuer)| subject == issuer)
    }
}

/// Splits text holding any number of PEM blocks into its blocks, in order.
/// Text outside blocks (comments, `Bag Attributes` lines) is ignored.
///
/// Fails when a block is malformed (bad base64, mismatched END line) or when
/// there is no block at all.
pub fn parse_blocks(text: &str) -> Result<Vec<PemBlock>, PemError> {
    let blocks = ::pem::parse_many(text.as_bytes())
        .map_err(|e| PemError::new(format!("malformed PEM: {e}")))?;
    if blocks.is_empty() {
        return Err(PemError::new("no PEM block found"));
    }
    Ok(blocks
        .into_iter()
        .map(|p| PemBlock::new(p.tag().to_string(), p.into_contents()))
        .collect())
}

/// The `CERTIFICATE` blocks of a bundle, in their original order; other
/// blocks (keys, parameters) are skipped. Each certificate must parse as
/// X.509; fails when there is none.
pub fn certificates(text: &str) -> Result<Vec<PemBlock>, PemError> {
    let certs: Vec<PemBlock> = parse_blocks(text)?
        .into_iter()
        .filter(|b| b.label == CERTIFICATE)
        .collect();
    if certs.is_empty() {
        return Err(PemError::new("no CERTIFICATE block found"));
    }
    for (i, c) in certs.iter().enumerate() {
        x509_cert::Certificate::from_der(&c.der)
            .map_err(|e| PemError::new(format!("certificate #{} does not parse: {e}", i + 1)))?;
    }
    Ok(certs)
}

/// Encodes DER bytes as one PEM block with `\n` line endings and a trailing
/// newline.
pub fn encode(label: &str, der: &[u8]) -> String {
    let config = ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF);
    ::pem::encode_config(&::pem::Pem::new(label, der), config)
}

/// Lower-case hex SHA-256 of `der` (64 characters).
pub fn fingerprint_sha256(der: &[u8]) -> String {
    hex(&Sha256::digest(der))
}

/// SHA-256 fingerprint of the first certificate in a PEM text.
pub fn certificate_fingerprint_sha256(text: &str) -> Result<String, PemError> {
    let certs = certificates(text)?;
    Ok(certs[0].fingerprint_sha256())
}

/// Lower-case hex encoding of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Orders certificates leaf-first: the leaf (a certificate that issued none
/// of the others), then its issuer, then that one's issuer, and so on.
/// Certificates that are not part of that path are appended in their
/// original order. Issuer and subject names are compared as DER bytes.
///
/// When several certificates qualify as leaf, the first one in input order
/// that is not self-signed wins. Fails only when a block does not parse as a certificate.
pub fn order_leaf_first(certs: Vec<PemBlock>) -> Result<Vec<PemBlock>, PemError> {
    let mut names_of = Vec::with_capacity(certs.len());
    for (i, c) in certs.iter().enumerate() {
        let n = names(&c.der)
            .ok_or_else(|| PemError::new(format!("certificate #{} does not parse", i + 1)))?;
        names_of.push(n);
    }
    let n = certs.len();
    // issuer_of[i] = index of the certificate that issued certificate i.
    let issuer_of: Vec<Option<usize>> = (0..n)
        .map(|i| (0..n).find(|&j| j != i && names_of[j].0 == names_of[i].1))
        .collect();
    let issues_someone = |j: usize| {
        (0..n).any(|i| i != j && issuer_of[i] == Some(j) && names_of[i].0 != names_of[i].1)
    };
    let self_signed = |j: usize| names_of[j].0 == names_of[j].1;
    let leaf = (0..n)
        .find(|&j| !issues_someone(j) && !self_signed(j))
        .or_else(|| (0..n).find(|&j| !issues_someone(j)))
        .unwrap_or(0);

    let mut order = Vec::with_capacity(n);
    let mut visited = vec![false; n];
    let mut cur = Some(leaf);
    while let Some(i) = cur {
        if visited[i] {
            break;
        }
        visited[i] = true;
        order.push(i);
        cur = issuer_of[i];
    }
    order.extend((0..n).filter(|&i| !visited[i]));

    let mut slots: Vec<Option<PemBlock>> = certs.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

/// Splits a leaf-first list into the leaf and the rest. Fails when the list
/// is empty.
pub fn split_leaf(mut certs: Vec<PemBlock>) -> Result<(PemBlock, Vec<PemBlock>), PemError> {
    if certs.is_empty() {
        return Err(PemError::new("no certificate"));
    }
    let leaf = certs.remove(0);
    Ok((leaf, certs))
}

/// Whether two PEM texts hold the same blocks (labels and DER bytes, in the
/// same order), whatever their line endings, wrapping or surrounding text.
/// `false` when either does not parse.
pub fn same_blocks(a: &str, b: &str) -> bool {
    match (parse_blocks(a), parse_blocks(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// (subject DER, issuer DER) of a certificate.
fn names(der: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let subject = cert.tbs_certificate.subject.to_der().ok()?;
    let issuer = cert.tbs_certificate.issuer.to_der().ok()?;
    Some((subject, issuer))
}

#[cfg(test)]
mod tests {
    use super::*;

    // A three-level chain (root -> intermediate -> leaf) made with openssl;
    // ECDSA P-256, valid 2025-2035. Only the names matter here.
    const ROOT: &str = include_str!("../testdata/root.pem");
    const INTERMEDIATE: &str = include_str!("../testdata/intermediate.pem");
    const LEAF: &str = include_str!("../testdata/leaf.pem");

    fn first(text: &str) -> PemBlock {
        certificates(text).unwrap().remove(0)
    }

    #[test]
    fn parse_and_encode_round_trip() {
        let bundle = format!("junk before\n{LEAF}\nBag Attributes: x\n{ROOT}");
        let blocks = parse_blocks(&bundle).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].label, "CERTIFICATE");
        let again = blocks[0].to_pem();
        assert!(again.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(again.ends_with("-----END CERTIFICATE-----\n"));
        assert!(!again.contains('\r'));
        assert!(same_blocks(&again, LEAF));
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse_blocks("nothing here").unwrap_err().message(),
            "no PEM block found"
        );
        let bad = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(
            parse_blocks(bad)
                .unwrap_err()
                .message()
                .starts_with("malformed PEM")
        );
        let not_cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(
            certificates(not_cert)
                .unwrap_err()
                .message()
                .starts_with("certificate #1 does not parse")
        );
        let key_only = encode("PRIVATE KEY", &[1, 2, 3]);
        assert_eq!(
            certificates(&key_only).unwrap_err().message(),
            "no CERTIFICATE block found"
        );
    }

    #[test]
    fn fingerprint_is_sha256_of_der() {
        let leaf = first(LEAF);
        let fp = leaf.fingerprint_sha256();
        assert_eq!(fp.len(), 64);
        assert!(
            fp.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(certificate_fingerprint_sha256(LEAF).unwrap(), fp);
        assert_eq!(
            fingerprint_sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn orders_any_permutation_leaf_first() {
        let (r, i, l) = (first(ROOT), first(INTERMEDIATE), first(LEAF));
        assert!(r.is_self_signed());
        assert!(!i.is_self_signed() && !l.is_self_signed());
        let perms = [
            vec![r.clone(), i.clone(), l.clone()],
            vec![r.clone(), l.clone(), i.clone()],
            vec![i.clone(), r.clone(), l.clone()],
            vec![i.clone(), l.clone(), r.clone()],
            vec![l.clone(), r.clone(), i.clone()],
            vec![l.clone(), i.clone(), r.clone()],
        ];
        for p in perms {
            let ordered = order_leaf_first(p).unwrap();
            assert_eq!(ordered, vec![l.clone(), i.clone(), r.clone()]);
        }
        // Unrelated certificates go last, in input order.
        let ordered = order_leaf_first(vec![r.clone(), l.clone()]).unwrap();
        assert_eq!(ordered, vec![l.clone(), r.clone()]);
        let (leaf, chain) = split_leaf(vec![l.clone(), i.clone()]).unwrap();
        assert_eq!((leaf, chain), (l, vec![i]));
        assert!(split_leaf(Vec::new()).is_err());
    }

    #[test]
    fn hex_encodes_lower_case() {
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
    }
}
