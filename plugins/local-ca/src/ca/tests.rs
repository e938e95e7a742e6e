use super::*;
use std::path::PathBuf;

fn data(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn ca(kind: &str) -> LocalCa {
    LocalCa::load(
        &data(&format!("ca-{kind}.pem")),
        &data(&format!("ca-{kind}.key")),
    )
    .unwrap_or_else(|e| panic!("{kind}: {e:?}"))
}

fn now() -> SystemTime {
    SystemTime::now()
}

const SERIAL: [u8; 16] = [0x9f, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

fn request<'a>(csr: &'a str, dns: &'a [String], ips: &'a [String]) -> LeafRequest<'a> {
    LeafRequest {
        csr_pem: csr,
        common_name: "www.example.com",
        dns_names: dns,
        ip_addresses: ips,
        validity_days: 90,
    }
}

fn parse(pem: &str) -> Certificate {
    let blocks = certplane_sdk::pem::certificates(pem).unwrap();
    Certificate::from_der(&blocks[0].der).unwrap()
}

fn ext<T: AssociatedOid + for<'a> Decode<'a>>(cert: &Certificate) -> (T, bool) {
    let e = cert
        .tbs_certificate
        .extensions
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.extn_id == T::OID)
        .unwrap_or_else(|| panic!("missing extension {}", T::OID));
    (T::from_der(e.extn_value.as_bytes()).unwrap(), e.critical)
}

/// Checks the leaf's signature with the CA certificate's public key.
fn verify_signature(leaf: &Certificate, ca: &LocalCa) {
    let tbs = leaf.tbs_certificate.to_der().unwrap();
    crate::csr::verify(
        &ca.cert.tbs_certificate.subject_public_key_info,
        &leaf.signature_algorithm.oid,
        &tbs,
        leaf.signature.as_bytes().unwrap(),
    )
    .unwrap_or_else(|e| panic!("leaf signature: {e}"));
}

/// Cross-checks with OpenSSL when it is installed (it is on the dev and CI
/// machines; the test does not depend on it otherwise).
fn openssl_verify(ca_pem: &str, leaf_pem: &str) {
    let Ok(out) = std::process::Command::new("openssl")
        .arg("version")
        .output()
    else {
        return;
    };
    if !out.status.success() {
        return;
    }
    let dir = std::env::temp_dir().join(format!(
        "local-ca-test-{}-{}",
        std::process::id(),
        certplane_sdk::pem::fingerprint_sha256(leaf_pem.as_bytes())
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
    std::fs::write(dir.join("leaf.pem"), leaf_pem).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["verify", "-x509_strict", "-purpose", "sslserver", "-CAfile"])
        .arg(dir.join("ca.pem"))
        .arg(dir.join("leaf.pem"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn issues_for_every_ca_and_csr_key_type() {
    let dns = vec!["www.example.com".to_string(), "API.example.com".to_string()];
    let ips = vec!["192.0.2.10".to_string(), "2001:db8::1".to_string()];
    for ca_kind in ["p256", "p384", "ed25519", "rsa"] {
        let ca = ca(ca_kind);
        ca.check_usable(now()).unwrap();
        assert!(ca.has_ski());
        for csr_kind in ["p256", "p384", "ed25519", "rsa"] {
            let csr = data(&format!("csr-{csr_kind}.pem"));
            let t = now();
            let issued = ca
                .issue(&request(&csr, &dns, &ips), t, &SERIAL)
                .unwrap_or_else(|e| panic!("{ca_kind}/{csr_kind}: {e:?}"));
            let what = format!("CA {ca_kind}, CSR {csr_kind}");
            assert_eq!(
                issued.chain_pem,
                vec![data(&format!("ca-{ca_kind}.pem"))],
                "{what}"
            );
            assert!(!issued.clamped_to_ca);
            let leaf = parse(&issued.certificate_pem);
            let tbs = &leaf.tbs_certificate;

            assert_eq!(tbs.version, Version::V3);
            assert_eq!(tbs.issuer, ca.cert.tbs_certificate.subject, "{what}");
            assert_eq!(tbs.subject.to_string(), "CN=www.example.com", "{what}");
            assert_eq!(issued.serial_hex, "9f0102030405060708090a0b0c0d0e0f");
            // Positive: a leading zero byte keeps the sign bit clear.
            assert_eq!(tbs.serial_number.as_bytes()[0], 0x00);

            let expect_alg = match ca_kind {
                "p256" => rfc5912::ECDSA_WITH_SHA_256,
                "p384" => rfc5912::ECDSA_WITH_SHA_384,
                "ed25519" => rfc8410::ID_ED_25519,
                _ => rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
            };
            assert_eq!(leaf.signature_algorithm.oid, expect_alg, "{what}");
            assert_eq!(tbs.signature, leaf.signature_algorithm);

            let nb = tbs.validity.not_before.to_system_time();
            let na = tbs.validity.not_after.to_system_time();
            let secs = |a: SystemTime, b: SystemTime| {
                a.duration_since(b)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or_else(|e| -(e.duration().as_secs() as i64))
            };
            assert!((secs(t, nb) - 300).abs() <= 1, "{what}: notBefore");
            assert!((secs(na, t) - 90 * 86_400).abs() <= 1, "{what}: notAfter");
            assert!(matches!(tbs.validity.not_after, Time::UtcTime(_)));

            let (bc, crit) = ext::<BasicConstraints>(&leaf);
            assert!(!bc.ca && crit && bc.path_len_constraint.is_none());
            let (ku, crit) = ext::<KeyUsage>(&leaf);
            assert!(crit && ku.digital_signature() && !ku.key_cert_sign());
            assert_eq!(ku.key_encipherment(), csr_kind == "rsa", "{what}");
            let (eku, crit) = ext::<ExtendedKeyUsage>(&leaf);
            assert!(!crit);
            assert_eq!(
                eku.0,
                vec![rfc5280::ID_KP_SERVER_AUTH, rfc5280::ID_KP_CLIENT_AUTH]
            );
            let (san, crit) = ext::<SubjectAltName>(&leaf);
            assert!(!crit);
            let names: Vec<String> = san
                .0
                .iter()
                .map(|g| match g {
                    GeneralName::DnsName(n) => n.to_string(),
                    GeneralName::IpAddress(o) => format!("ip:{:?}", o.as_bytes()),
                    other => panic!("{other:?}"),
                })
                .collect();
            let mut v6 = [0u8; 16];
            v6[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
            v6[15] = 1;
            assert_eq!(
                names,
                vec![
                    "www.example.com".to_string(),
                    "api.example.com".to_string(),
                    format!("ip:{:?}", [192u8, 0, 2, 10]),
                    format!("ip:{:?}", v6),
                ],
                "{what}: the CSR's own SANs must not appear"
            );
            let (ski, _) = ext::<SubjectKeyIdentifier>(&leaf);
            let spki_bits = tbs
                .subject_public_key_info
                .subject_public_key
                .as_bytes()
                .unwrap();
            assert_eq!(ski.0.as_bytes(), key_identifier(spki_bits).as_slice());
            let (aki, _) = ext::<AuthorityKeyIdentifier>(&leaf);
            assert_eq!(
                aki.key_identifier.unwrap().as_bytes(),
                ca.ski.as_deref().unwrap(),
                "{what}: AKI must be the CA's SKI"
            );

            verify_signature(&leaf, &ca);
            openssl_verify(&data(&format!("ca-{ca_kind}.pem")), &issued.certificate_pem);
        }
    }
}

#[test]
fn p384_csr_signed_with_sha384_and_p256_with_sha384_are_accepted() {
    let ca = ca("p256");
    let dns = vec!["a.example.com".to_string()];
    for csr in ["csr-p256-sha384.pem", "csr-p384.pem"] {
        ca.issue(&request(&data(csr), &dns, &[]), now(), &SERIAL)
            .unwrap_or_else(|e| panic!("{csr}: {e:?}"));
    }
}

#[test]
fn names_rules() {
    let ca = ca("p256");
    let csr = data("csr-p256.pem");
    // CN not among the SANs is added to them.
    let dns = vec!["a.example.com".to_string()];
    let issued = ca.issue(&request(&csr, &dns, &[]), now(), &SERIAL).unwrap();
    let (san, _) = ext::<SubjectAltName>(&parse(&issued.certificate_pem));
    assert_eq!(san.0.len(), 2);

    // Only a CN: it becomes the only SAN.
    let mut r = request(&csr, &[], &[]);
    r.common_name = "solo.example.com";
    let issued = ca.issue(&r, now(), &SERIAL).unwrap();
    let (san, _) = ext::<SubjectAltName>(&parse(&issued.certificate_pem));
    assert_eq!(san.0.len(), 1);

    // A CN longer than 64 characters stays out of the subject; SAN critical.
    let long = format!("{}.example.com", "a".repeat(60));
    let dns = vec![long.clone()];
    let mut r = request(&csr, &dns, &[]);
    r.common_name = &long;
    let leaf = parse(&ca.issue(&r, now(), &SERIAL).unwrap().certificate_pem);
    assert!(leaf.tbs_certificate.subject.0.is_empty());
    assert!(
        ext::<SubjectAltName>(&leaf).1,
        "SAN must be critical with an empty subject"
    );

    // IP common name.
    let mut r = request(&csr, &[], &[]);
    r.common_name = "192.0.2.1";
    let leaf = parse(&ca.issue(&r, now(), &SERIAL).unwrap().certificate_pem);
    assert_eq!(leaf.tbs_certificate.subject.to_string(), "CN=192.0.2.1");

    // Invalid names are rejected.
    for bad in [
        "bad_name.example.com",
        "*.com",
        "example.com.",
        "-x.example",
    ] {
        let dns = vec![bad.to_string()];
        match ca.issue(&request(&csr, &dns, &[]), now(), &SERIAL) {
            Err(CaError::Rejected(m)) => assert!(m.contains("not a valid DNS name"), "{m}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
    let ips = vec!["999.1.1.1".to_string()];
    assert!(matches!(
        ca.issue(&request(&csr, &["a.example".to_string()], &ips), now(), &SERIAL),
        Err(CaError::Rejected(m)) if m.contains("not a valid IP address")
    ));
    let mut r = request(&csr, &[], &[]);
    r.common_name = "My Service";
    assert!(
        matches!(ca.issue(&r, now(), &SERIAL), Err(CaError::Rejected(m)) if m.starts_with("common-name:"))
    );
    r.common_name = "";
    assert!(
        matches!(ca.issue(&r, now(), &SERIAL), Err(CaError::Rejected(m)) if m.contains("names no DNS name"))
    );
    // Wildcards are fine.
    let dns = vec!["*.example.com".to_string()];
    let mut r = request(&csr, &dns, &[]);
    r.common_name = "*.example.com";
    ca.issue(&r, now(), &SERIAL).unwrap();
}

#[test]
fn csr_problems_are_rejections() {
    let ca = ca("p384");
    let dns = vec!["a.example.com".to_string()];
    for (file, needle) in [
        ("csr-p256-tampered.pem", "does not verify"),
        ("csr-p521.pem", "P-521"),
        ("csr-rsa-pss.pem", "RSASSA-PSS"),
    ] {
        match ca.issue(&request(&data(file), &dns, &[]), now(), &SERIAL) {
            Err(CaError::Rejected(m)) => assert!(m.contains(needle), "{file}: {m}"),
            other => panic!("{file}: {other:?}"),
        }
    }
    let p256 = self::ca("p256");
    match p256.issue(&request(&data("csr-ca-key.pem"), &dns, &[]), now(), &SERIAL) {
        Err(CaError::Rejected(m)) => assert!(m.contains("CA's own public key"), "{m}"),
        other => panic!("{other:?}"),
    }
    let csr = data("csr-p256.pem");
    let mut r = request(&csr, &dns, &[]);
    r.validity_days = 0;
    assert!(matches!(
        ca.issue(&r, now(), &SERIAL),
        Err(CaError::Rejected(_))
    ));
}

#[test]
fn validity_is_clamped_to_the_ca_and_expired_cas_refuse() {
    let ca = ca("p256");
    let ca_end = ca.cert.tbs_certificate.validity.not_after.to_system_time();
    let t = ca_end - Duration::from_secs(10 * 86_400);
    let dns = vec!["a.example.com".to_string()];
    let issued = ca
        .issue(&request(&data("csr-p256.pem"), &dns, &[]), t, &SERIAL)
        .unwrap();
    assert!(issued.clamped_to_ca);
    let leaf = parse(&issued.certificate_pem);
    assert_eq!(
        leaf.tbs_certificate.validity.not_after.to_system_time(),
        ca_end
    );

    let later = ca_end + Duration::from_secs(1);
    match ca.issue(&request(&data("csr-p256.pem"), &dns, &[]), later, &SERIAL) {
        Err(CaError::Config(m)) => assert!(m.contains("expired on"), "{m}"),
        other => panic!("{other:?}"),
    }
    let before =
        ca.cert.tbs_certificate.validity.not_before.to_system_time() - Duration::from_secs(60);
    assert!(
        matches!(ca.check_usable(before), Err(CaError::Config(m)) if m.contains("not valid before"))
    );
}

#[test]
fn times_switch_to_generalized_in_2050() {
    let t2049 = UNIX_EPOCH + Duration::from_secs(2_524_607_999);
    assert!(matches!(x509_time(t2049).unwrap(), Time::UtcTime(_)));
    let t2050 = UNIX_EPOCH + Duration::from_secs(2_524_608_000);
    assert!(matches!(x509_time(t2050).unwrap(), Time::GeneralTime(_)));
}

#[test]
fn configuration_errors_are_precise() {
    let cfg = |cert: &str, key: &str| match LocalCa::load(cert, key) {
        Err(CaError::Config(m)) => m,
        Ok(_) => panic!("loaded"),
        Err(other) => panic!("{other:?}"),
    };
    let m = cfg(&data("ca-p256.pem"), &data("ca-p384.key"));
    assert!(m.contains("does not belong to the CA certificate"), "{m}");
    assert!(m.contains("id-ecPublicKey P-256"), "{m}");
    let m = cfg(&data("ca-rsa.pem"), &data("ca-ed25519.key"));
    assert!(m.contains("(Ed25519) does not belong"), "{m}");
    let m = cfg("not pem", &data("ca-p256.key"));
    assert!(
        m.starts_with("ca_certificate_pem: no PEM block found"),
        "{m}"
    );
    let m = cfg(&data("ca-p256.pem"), "");
    assert!(m.starts_with("ca_private_key_pem:"), "{m}");
    let m = cfg(&data("ca-p256.pem"), &data("ca-p256.encrypted.key"));
    assert!(m.contains("encrypted"), "{m}");
    let m = cfg(&data("ca-p256.pem"), &data("ca-p256.pem"));
    assert!(m.contains("no PRIVATE KEY PEM block"), "{m}");

    // SEC1 keys load.
    LocalCa::load(&data("ca-p256.pem"), &data("ca-p256.sec1.key")).unwrap();

    // A certificate without CA:TRUE loads (the key matches) but is unusable.
    let notca = LocalCa::load(&data("notca-p256.pem"), &data("ca-p256.key")).unwrap();
    match notca.check_usable(now()) {
        Err(CaError::Config(m)) => assert!(m.contains("is not a CA certificate"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn extra_certificates_follow_the_ca_in_the_chain() {
    let bundle = format!("{}{}", data("ca-p256.pem"), data("ca-rsa.pem"));
    let ca = LocalCa::load(&bundle, &data("ca-p256.key")).unwrap();
    let dns = vec!["a.example.com".to_string()];
    let issued = ca
        .issue(
            &request(&data("csr-ed25519.pem"), &dns, &[]),
            now(),
            &SERIAL,
        )
        .unwrap();
    assert_eq!(
        issued.chain_pem,
        vec![data("ca-p256.pem"), data("ca-rsa.pem")]
    );
}

/// A [`CaCrypto`] standing in for the host: delegates to an in-guest key,
/// counts signatures, and answers CSR checks with `verdict` when set.
struct Host {
    key: CaKey,
    verdict: Option<Result<bool, String>>,
    signed: std::cell::Cell<u32>,
}

impl CaCrypto for Host {
    fn ca_key(&self) -> Result<(Scheme, SubjectPublicKeyInfoOwned), String> {
        self.key.ca_key()
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.signed.set(self.signed.get() + 1);
        CaCrypto::sign(&self.key, message)
    }
    fn verify(
        &self,
        key: &SubjectPublicKeyInfoOwned,
        algorithm: &const_oid::ObjectIdentifier,
        message: &[u8],
        signature: &[u8],
    ) -> Result<bool, String> {
        match &self.verdict {
            Some(v) => v.clone(),
            None => self.key.verify(key, algorithm, message, signature),
        }
    }
}

fn host(kind: &str, verdict: Option<Result<bool, String>>) -> Host {
    Host {
        key: CaKey::from_pem(&data(&format!("ca-{kind}.key"))).unwrap(),
        verdict,
        signed: Default::default(),
    }
}

#[test]
fn the_crypto_seam_signs_checks_csrs_and_passes_key_errors_on() {
    let dns = vec!["a.example.com".to_string()];
    let csr = data("csr-p256.pem");
    for kind in ["p256", "p384", "ed25519", "rsa"] {
        let ca = LocalCa::new(&data(&format!("ca-{kind}.pem")), host(kind, None)).unwrap();
        let issued = ca.issue(&request(&csr, &dns, &[]), now(), &SERIAL).unwrap();
        assert_eq!(ca.crypto.signed.get(), 1, "{kind}");
        let leaf = parse(&issued.certificate_pem);
        assert_eq!(
            leaf.signature_algorithm,
            crate::crypto::signature_algorithm(ca.scheme())
        );
        let native = self::ca(kind);
        verify_signature(&leaf, &native);
    }
    // The checker's "no" rejects the CSR, whatever its signature; nothing
    // is signed.
    let ca = LocalCa::new(&data("ca-p256.pem"), host("p256", Some(Ok(false)))).unwrap();
    match ca.issue(&request(&csr, &dns, &[]), now(), &SERIAL) {
        Err(CaError::Rejected(m)) => assert!(m.starts_with("CSR signature does not verify"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(ca.crypto.signed.get(), 0);
    // A checker that cannot check says why.
    let ca = LocalCa::new(
        &data("ca-p256.pem"),
        host("p256", Some(Err("the public key does not parse".into()))),
    )
    .unwrap();
    match ca.issue(&request(&csr, &dns, &[]), now(), &SERIAL) {
        Err(CaError::Rejected(m)) => assert_eq!(m, "CSR: the public key does not parse"),
        other => panic!("{other:?}"),
    }

    // The host's word about a missing key reaches the operator unchanged.
    struct NoKey;
    impl CaCrypto for NoKey {
        fn ca_key(&self) -> Result<(Scheme, SubjectPublicKeyInfoOwned), String> {
            Err("this instance has no secret \"ca_private_key_pem\" to sign with".into())
        }
        fn sign(&self, _: &[u8]) -> Result<Vec<u8>, String> {
            unreachable!("no key, no signature")
        }
        fn verify(
            &self,
            _: &SubjectPublicKeyInfoOwned,
            _: &const_oid::ObjectIdentifier,
            _: &[u8],
            _: &[u8],
        ) -> Result<bool, String> {
            unreachable!("no key, no CA")
        }
    }
    match LocalCa::new(&data("ca-p256.pem"), NoKey) {
        Err(CaError::Config(m)) => {
            assert_eq!(
                m,
                "this instance has no secret \"ca_private_key_pem\" to sign with"
            )
        }
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("loaded without a key"),
    }
}

#[test]
fn a_compressed_ca_point_is_the_same_key() {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let cert = parse(&data("ca-p256.pem"));
    let spki = &cert.tbs_certificate.subject_public_key_info;
    let point = p256::PublicKey::from_sec1_bytes(spki.subject_public_key.as_bytes().unwrap())
        .unwrap()
        .to_encoded_point(true);
    let compressed = SubjectPublicKeyInfoOwned {
        algorithm: spki.algorithm.clone(),
        subject_public_key: BitString::from_bytes(point.as_bytes()).unwrap(),
    };
    assert_ne!(&compressed, spki);
    assert!(same_key(&compressed, spki));
    let other = parse(&data("ca-p384.pem"));
    assert!(!same_key(
        &compressed,
        &other.tbs_certificate.subject_public_key_info
    ));
    let ed = parse(&data("ca-ed25519.pem"));
    assert!(!same_key(spki, &ed.tbs_certificate.subject_public_key_info));
}
