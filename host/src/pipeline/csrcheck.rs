//! Checks on a CSR an agent submits for a certificate whose key it holds:
//! valid signature, exactly the certificate's names, its key type.

use std::collections::BTreeSet;
use std::net::IpAddr;

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer as _;
use x509_parser::public_key::PublicKey;

use crate::store::Certificate;

/// Parses a CSR and checks it against the certificate: valid signature,
/// exactly the certificate's names, and the certificate's key type.
pub fn check_csr(pem: &str, cert: &Certificate) -> Result<(), String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| format!("csr_pem is not PEM: {e}"))?;
    if pem.label != "CERTIFICATE REQUEST" && pem.label != "NEW CERTIFICATE REQUEST" {
        return Err(format!(
            "csr_pem holds a {:?} block, not a CERTIFICATE REQUEST",
            pem.label
        ));
    }
    let (_, csr) = X509CertificationRequest::from_der(&pem.contents)
        .map_err(|e| format!("csr_pem is not a PKCS#10 request: {e}"))?;
    csr.verify_signature()
        .map_err(|e| format!("the CSR's signature does not verify: {e}"))?;

    let mut requested = BTreeSet::new();
    if let Some(extensions) = csr.requested_extensions() {
        for ext in extensions {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    requested.insert(match name {
                        GeneralName::DNSName(d) => d.to_ascii_lowercase(),
                        GeneralName::IPAddress(bytes) => ip_text(bytes)?,
                        other => {
                            return Err(format!("the CSR requests an unsupported name {other}"));
                        }
                    });
                }
            }
        }
    }
    let expected: BTreeSet<String> = if cert.sans.is_empty() {
        BTreeSet::from([cert.common_name.to_ascii_lowercase()])
    } else {
        cert.sans.iter().map(|s| normalise_name(s)).collect()
    };
    if requested != expected {
        return Err(format!(
            "the CSR requests {requested:?}; the certificate needs exactly {expected:?}"
        ));
    }
    for cn in csr.certification_request_info.subject.iter_common_name() {
        let cn = cn
            .as_str()
            .map_err(|e| format!("the CSR's common name is not text: {e}"))?;
        let cn = cn.to_ascii_lowercase();
        if !expected.contains(&cn) && cn != cert.common_name.to_ascii_lowercase() {
            return Err(format!(
                "the CSR's common name {cn:?} is not one of the certificate's names"
            ));
        }
    }
    check_key_type(&csr, &cert.key_type)
}

fn normalise_name(name: &str) -> String {
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => name.to_ascii_lowercase(),
    }
}

fn ip_text(bytes: &[u8]) -> Result<String, String> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Ok(IpAddr::from(v4).to_string());
    }
    if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        return Ok(IpAddr::from(v6).to_string());
    }
    Err("the CSR requests a malformed IP address".into())
}

fn check_key_type(csr: &X509CertificationRequest<'_>, key_type: &str) -> Result<(), String> {
    let spki = &csr.certification_request_info.subject_pki;
    let key = spki.parsed().ok();
    let ok = match key_type {
        "ecdsa-p256" => matches!(&key, Some(PublicKey::EC(p)) if p.key_size() == 256),
        "ecdsa-p384" => matches!(&key, Some(PublicKey::EC(p)) if p.key_size() == 384),
        "ed25519" => spki.algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519,
        other => match other
            .strip_prefix("rsa-")
            .and_then(|b| b.parse::<usize>().ok())
        {
            Some(bits) => matches!(&key, Some(PublicKey::RSA(k)) if k.key_size() == bits),
            // A key type this host does not know: do not second-guess it.
            None => true,
        },
    };
    if ok {
        Ok(())
    } else {
        Err(format!("the CSR's key is not a {key_type} key"))
    }
}
