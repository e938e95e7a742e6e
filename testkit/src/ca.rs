//! Throwaway certificate authorities and CSRs for tests.

/// A self-signed ECDSA P-256 CA: (certificate PEM, PKCS#8 key PEM).
pub fn test_ca() -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "certplane test CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("CA certificate");
    (cert.pem(), key.serialize_pem())
}

/// A CSR for `names` with a fresh key of `alg`: (CSR PEM, key PEM).
pub fn test_csr(names: &[&str], alg: &'static rcgen::SignatureAlgorithm) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(alg).expect("key");
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("CSR params");
    let csr = params.serialize_request(&key).expect("CSR");
    (csr.pem().expect("CSR PEM"), key.serialize_pem())
}
