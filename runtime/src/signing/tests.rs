use super::*;
use x509_parser::prelude::{FromDer, X509Certificate, X509CertificationRequest};

/// The local-ca connector's OpenSSL-made test keys and CSRs (public,
/// test-only): the same files its in-guest code was tested with.
fn data(name: &str) -> String {
    let path = format!(
        "{}/../plugins/local-ca/testdata/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn pem_der(text: &str) -> Vec<u8> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes()).expect("PEM");
    pem.contents
}

/// The SubjectPublicKeyInfo of a test CA certificate, as the certificate
/// encodes it.
fn ca_spki(kind: &str) -> Vec<u8> {
    let der = pem_der(&data(&format!("ca-{kind}.pem")));
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    cert.public_key().raw.to_vec()
}

fn oid_of(scheme: SignatureScheme) -> &'static str {
    match scheme {
        SignatureScheme::EcdsaP256Sha256 => "1.2.840.10045.4.3.2",
        SignatureScheme::EcdsaP384Sha384 => "1.2.840.10045.4.3.3",
        SignatureScheme::Ed25519 => "1.3.101.112",
        SignatureScheme::RsaPkcs1Sha256 => "1.2.840.113549.1.1.11",
    }
}

fn secrets(pairs: &[(&str, &str)]) -> BTreeMap<String, Secret> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Secret::new(*v)))
        .collect()
}

fn invalid_config(result: Result<impl std::fmt::Debug, ConnectorError>) -> String {
    match result {
        Err(ConnectorError::InvalidConfig(m)) => m,
        other => panic!("expected invalid-config, got {other:?}"),
    }
}

#[test]
fn every_key_form_signs_what_its_certificate_verifies() {
    for (file, ca, scheme) in [
        ("ca-p256.key", "p256", SignatureScheme::EcdsaP256Sha256),
        ("ca-p256.sec1.key", "p256", SignatureScheme::EcdsaP256Sha256),
        ("ca-p384.key", "p384", SignatureScheme::EcdsaP384Sha384),
        ("ca-ed25519.key", "ed25519", SignatureScheme::Ed25519),
        ("ca-rsa.key", "rsa", SignatureScheme::RsaPkcs1Sha256),
    ] {
        let key = ParsedKey::from_pem(&data(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(key.scheme(), scheme, "{file}");
        assert_eq!(key.spki_der(), ca_spki(ca), "{file}: the certificate's key");
        let message = b"tbsCertificate bytes";
        let signature = key.sign(message).unwrap();
        assert!(
            verify(&ca_spki(ca), oid_of(scheme), message, &signature).unwrap(),
            "{file}"
        );
        assert!(
            !verify(&ca_spki(ca), oid_of(scheme), b"another message", &signature).unwrap(),
            "{file}: a signature over something else"
        );
        if let SignatureScheme::EcdsaP256Sha256 | SignatureScheme::EcdsaP384Sha384 = scheme {
            // DER Ecdsa-Sig-Value: SEQUENCE of two INTEGERs.
            assert_eq!(signature[0], 0x30, "{file}");
        }
        if scheme == SignatureScheme::Ed25519 {
            assert_eq!(signature.len(), 64);
        }
    }
}

/// 32 bytes of the P-256 test CA's private scalar.
fn p256_scalar() -> Vec<u8> {
    use p256::pkcs8::DecodePrivateKey;
    p256::SecretKey::from_pkcs8_der(&pem_der(&data("ca-p256.key")))
        .unwrap()
        .to_bytes()
        .to_vec()
}

#[test]
fn ec_keys_without_their_public_key_still_load() {
    // ECPrivateKey { version 1, privateKey } and nothing else: no curve,
    // no public key (ring wants the public key; the host derives it).
    let mut sec1 = vec![0x30, 0x25, 0x02, 0x01, 0x01, 0x04, 0x20];
    sec1.extend(p256_scalar());
    let key = ParsedKey::from_sec1(&sec1).unwrap();
    assert_eq!(key.spki_der(), ca_spki("p256"));

    // The same inside PKCS#8 (id-ecPublicKey, P-256).
    let mut pkcs8 = vec![
        0x30, 0x41, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02,
        0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x04, 0x27,
    ];
    pkcs8.extend(&sec1);
    let key = ParsedKey::from_pkcs8(&pkcs8).unwrap();
    assert_eq!(key.spki_der(), ca_spki("p256"));
    let signature = key.sign(b"m").unwrap();
    assert!(verify(&ca_spki("p256"), oid_of(key.scheme()), b"m", &signature).unwrap());
}

#[test]
fn rsa_keys_ring_refuses_sign_with_rustcrypto() {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::signature::Verifier;
    // 1024 bits: under ring's 2048-bit floor for signing keys.
    let small = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
    let text = small.to_pkcs1_pem(Default::default()).unwrap();
    let key = ParsedKey::from_pem(&text).unwrap();
    assert!(matches!(key.signer, Signer::RsaOther(_)));
    assert_eq!(key.scheme(), SignatureScheme::RsaPkcs1Sha256);
    let signature = key.sign(b"m").unwrap();
    let verifier = rsa::pkcs1v15::VerifyingKey::<Sha256>::new(small.to_public_key());
    verifier
        .verify(
            b"m",
            &rsa::pkcs1v15::Signature::try_from(signature.as_slice()).unwrap(),
        )
        .expect("PKCS#1 v1.5 SHA-256 signature");
    // A CSR with such a key is refused by name, not as a bad signature.
    let err = verify(key.spki_der(), oid_of(key.scheme()), b"m", &signature).unwrap_err();
    assert!(
        matches!(&err, ConnectorError::Rejected(m) if m.contains("1024 bits")),
        "{err:?}"
    );
}

#[test]
fn unusable_keys_are_refused_without_quoting_them() {
    for (text, needle) in [
        (data("ca-p256.encrypted.key"), "encrypted"),
        (data("ca-p256.pem"), "no PRIVATE KEY PEM block"),
        ("not a key at all".to_string(), "no PRIVATE KEY PEM block"),
    ] {
        let err = ParsedKey::from_pem(&text).unwrap_err();
        assert!(err.contains(needle), "{needle}: {err}");
    }
    let short = b"\x30\x03\x02\x01\x00";
    for (err, needle) in [
        (ParsedKey::from_pkcs8(short), "PKCS#8 key does not parse"),
        (
            ParsedKey::from_sec1(short),
            "not a valid P-256 or P-384 key",
        ),
        (
            ParsedKey::from_pkcs1(short),
            "RSA PRIVATE KEY does not parse",
        ),
    ] {
        let err = err.unwrap_err();
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

#[test]
fn csr_signatures_of_every_supported_kind_verify_and_tampering_does_not() {
    for (file, expect) in [
        ("csr-p256.pem", true),
        ("csr-p256-sha384.pem", true),
        ("csr-p384.pem", true),
        ("csr-ed25519.pem", true),
        ("csr-rsa.pem", true),
        ("csr-p256-tampered.pem", false),
    ] {
        let der = pem_der(&data(file));
        let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
        let got = verify(
            csr.certification_request_info.subject_pki.raw,
            &csr.signature_algorithm.algorithm.to_id_string(),
            csr.certification_request_info.raw,
            &csr.signature_value.data,
        )
        .unwrap_or_else(|e| panic!("{file}: {e:?}"));
        assert_eq!(got, expect, "{file}");
    }
    // P-521 and RSASSA-PSS are not for this CA: an answer, not a panic.
    for file in ["csr-p521.pem", "csr-rsa-pss.pem"] {
        let der = pem_der(&data(file));
        let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
        let err = verify(
            csr.certification_request_info.subject_pki.raw,
            &csr.signature_algorithm.algorithm.to_id_string(),
            csr.certification_request_info.raw,
            &csr.signature_value.data,
        )
        .unwrap_err();
        assert!(
            matches!(err, ConnectorError::Unsupported(_)),
            "{file}: {err:?}"
        );
    }
}

#[test]
fn ecdsa_with_sha512_and_compressed_points_verify_through_rustcrypto() {
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    use p256::pkcs8::DecodePrivateKey;
    let signing = p256::ecdsa::SigningKey::from_pkcs8_der(&pem_der(&data("ca-p256.key"))).unwrap();
    let message = b"certificationRequestInfo";
    let sig: p256::ecdsa::Signature = signing.sign_prehash(&Sha512::digest(message)).unwrap();
    let der_sig = sig.to_der();
    let spki = ca_spki("p256");
    assert!(verify(&spki, "1.2.840.10045.4.3.4", message, der_sig.as_bytes()).unwrap());
    assert!(!verify(&spki, "1.2.840.10045.4.3.4", b"other", der_sig.as_bytes()).unwrap());

    // The same key with its point compressed, SHA-256.
    let point = signing.verifying_key().to_encoded_point(true);
    let params = Any::encode_from(&SECP256R1).unwrap();
    let compressed = spki_der(ID_EC_PUBLIC_KEY, Some(params), point.as_bytes()).unwrap();
    let sig: p256::ecdsa::Signature = signing.sign_prehash(&Sha256::digest(message)).unwrap();
    assert!(
        verify(
            &compressed,
            "1.2.840.10045.4.3.2",
            message,
            sig.to_der().as_bytes()
        )
        .unwrap()
    );
    // And a compressed point that is not on the curve is a bad key.
    let mut bad = point.as_bytes().to_vec();
    bad[1..].fill(0xff);
    let params = Any::encode_from(&SECP256R1).unwrap();
    let bad = spki_der(ID_EC_PUBLIC_KEY, Some(params), &bad).unwrap();
    assert!(matches!(
        verify(
            &bad,
            "1.2.840.10045.4.3.2",
            message,
            sig.to_der().as_bytes()
        ),
        Err(ConnectorError::Rejected(_))
    ));
}

#[test]
fn hostile_verify_input_gets_answers_not_panics() {
    let spki = ca_spki("p256");
    let ed = ca_spki("ed25519");
    let big = vec![0u8; MAX_MESSAGE_BYTES + 1];
    assert!(matches!(
        verify(&spki, "1.2.840.10045.4.3.2", &big, b"sig"),
        Err(ConnectorError::Rejected(m)) if m.contains("longer than")
    ));
    assert!(matches!(
        verify(b"\x30\x00", "1.2.840.10045.4.3.2", b"m", b"sig"),
        Err(ConnectorError::Rejected(_))
    ));
    assert!(matches!(
        verify(&[0xff; 4096], "1.2.840.10045.4.3.2", b"m", b"sig"),
        Err(ConnectorError::Rejected(_))
    ));
    assert!(matches!(
        verify(&spki, &"x".repeat(100_000), b"m", b"sig"),
        Err(ConnectorError::Unsupported(m)) if m.len() < 200
    ));
    // An algorithm that does not fit the key.
    assert!(matches!(
        verify(&spki, "1.2.840.113549.1.1.11", b"m", b"sig"),
        Err(ConnectorError::Unsupported(_))
    ));
    assert!(matches!(
        verify(&ed, "1.2.840.10045.4.3.2", b"m", b"sig"),
        Err(ConnectorError::Unsupported(_))
    ));
    // Malformed signatures are a plain "no".
    for sig in [&b""[..], b"\x30", &[0xff; 10_000], &[0x30; 64]] {
        assert!(!verify(&spki, "1.2.840.10045.4.3.2", b"m", sig).unwrap());
        assert!(!verify(&ed, "1.3.101.112", b"m", sig).unwrap());
        assert!(!verify(&ca_spki("rsa"), "1.2.840.113549.1.1.11", b"m", sig).unwrap());
    }
    // A truncated Ed25519 key.
    let short = spki_der(ID_ED25519, None, &[1; 31]).unwrap();
    assert!(matches!(
        verify(&short, "1.3.101.112", b"m", &[0; 64]),
        Err(ConnectorError::Rejected(_))
    ));
}

#[test]
fn a_caller_reaches_only_its_own_secrets() {
    let cache = KeyCache::new(16);
    let plugin: Arc<str> = "local-ca".into();
    let (a, b): (Arc<str>, Arc<str>) = ("issuer/a".into(), "issuer/b".into());
    let a_secrets = secrets(&[("ca_private_key_pem", &data("ca-p256.key"))]);
    let b_secrets = secrets(&[("ca_private_key_pem", &data("ca-p384.key"))]);
    let none = secrets(&[("api_token", "t0ken")]);
    let caller = |instance, secrets| Caller {
        plugin: &plugin,
        instance,
        secrets,
    };

    // A's key is parsed and cached first.
    let info = cache
        .key_info(&caller(&a, &a_secrets), "ca_private_key_pem")
        .unwrap();
    assert_eq!(info.spki_der, ca_spki("p256"));
    // B names the same secret name and gets its own key, never A's.
    let info = cache
        .key_info(&caller(&b, &b_secrets), "ca_private_key_pem")
        .unwrap();
    assert_eq!(info.scheme, SignatureScheme::EcdsaP384Sha384);
    assert_eq!(info.spki_der, ca_spki("p384"));
    let sig = cache
        .sign(&caller(&b, &b_secrets), "ca_private_key_pem", b"m")
        .unwrap();
    assert!(verify(&ca_spki("p384"), "1.2.840.10045.4.3.3", b"m", &sig).unwrap());
    // An instance without that secret gets nothing, under A's id or its own.
    for instance in [&a, &b] {
        let m = invalid_config(cache.sign(&caller(instance, &none), "ca_private_key_pem", b"m"));
        assert!(m.contains("\"ca_private_key_pem\""), "{m}");
    }
    // A secret that is no key: named, its value not quoted.
    let m = invalid_config(cache.key_info(&caller(&a, &none), "api_token"));
    assert!(m.contains("\"api_token\"") && !m.contains("t0ken"), "{m}");
    // A huge name is cut in the message.
    let m = invalid_config(cache.key_info(&caller(&a, &none), &"n".repeat(10_000)));
    assert!(m.len() < 200, "{m}");
}

#[test]
fn the_cache_is_bounded_and_keyed_by_the_secret_value() {
    let cache = KeyCache::new(2);
    let plugin: Arc<str> = "local-ca".into();
    let instance: Arc<str> = "issuer/a".into();
    let keys = [
        "ca-p256.key",
        "ca-p384.key",
        "ca-ed25519.key",
        "ca-p256.sec1.key",
    ];
    for (file, ca) in keys.iter().zip(["p256", "p384", "ed25519", "p256"]) {
        // The same instance, its secret's value changed each time: the new
        // value's key answers at once.
        let s = secrets(&[("k", &data(file))]);
        let caller = Caller {
            plugin: &plugin,
            instance: &instance,
            secrets: &s,
        };
        assert_eq!(
            cache.key_info(&caller, "k").unwrap().spki_der,
            ca_spki(ca),
            "{file}"
        );
        assert!(cache.len() <= 2, "{} keys held", cache.len());
    }
    assert!(!cache.is_empty());
}

#[test]
fn sign_refuses_oversized_messages_before_touching_the_key() {
    let cache = KeyCache::new(4);
    let plugin: Arc<str> = "local-ca".into();
    let instance: Arc<str> = "issuer/a".into();
    let s = secrets(&[("k", &data("ca-rsa.key"))]);
    let caller = Caller {
        plugin: &plugin,
        instance: &instance,
        secrets: &s,
    };
    let big = vec![7u8; MAX_MESSAGE_BYTES + 1];
    assert!(matches!(
        cache.sign(&caller, "k", &big),
        Err(ConnectorError::Rejected(m)) if m.contains("longer than")
    ));
    assert!(cache.is_empty(), "the key was not even parsed");
    // At the bound, and empty, both sign.
    let max = vec![7u8; MAX_MESSAGE_BYTES];
    let sig = cache.sign(&caller, "k", &max).unwrap();
    assert!(verify(&ca_spki("rsa"), "1.2.840.113549.1.1.11", &max, &sig).unwrap());
    cache.sign(&caller, "k", b"").unwrap();
}

#[test]
fn a_signature_made_through_sign_is_taken_once_and_only_as_made() {
    let cache = KeyCache::new(4);
    let plugin: Arc<str> = "local-ca".into();
    let instance: Arc<str> = "issuer/made-here".into();
    let keys = secrets(&[("ca_private_key_pem", &data("ca-p256.key"))]);
    let caller = Caller {
        plugin: &plugin,
        instance: &instance,
        secrets: &keys,
    };
    let message = b"made here: tbsCertificate";
    let signature = cache.sign(&caller, "ca_private_key_pem", message).unwrap();
    let (spki, alg) = (ca_spki("p256"), oid_of(SignatureScheme::EcdsaP256Sha256));
    // Another algorithm, key, message or signature is not what was made.
    let p384 = oid_of(SignatureScheme::EcdsaP384Sha384);
    assert!(!take_made_here(&spki, p384, message, &signature));
    assert!(!take_made_here(&ca_spki("p384"), alg, message, &signature));
    assert!(!take_made_here(
        &spki,
        alg,
        b"made here: another",
        &signature
    ));
    let mut flipped = signature.clone();
    if let Some(last) = flipped.last_mut() {
        *last ^= 1;
    }
    assert!(!take_made_here(&spki, alg, message, &flipped));
    // Exactly as made: once.
    assert!(take_made_here(&spki, alg, message, &signature));
    assert!(!take_made_here(&spki, alg, message, &signature));
    // Checked the slow way after that, with the same answer.
    assert!(verify(&spki, alg, message, &signature).unwrap());
}

#[test]
fn verify_answers_from_the_record_of_signatures_made_here_first() {
    let key = ParsedKey::from_pem(&data("ca-p256.key")).unwrap();
    let (spki, alg) = (ca_spki("p256"), oid_of(SignatureScheme::EcdsaP256Sha256));
    // A real signature, over another message than the one it is presented
    // with: wrong, and verify says so.
    let signature = key.sign(b"record: the message signed").unwrap();
    let presented = b"record: the message presented";
    assert!(!verify(&spki, alg, presented, &signature).unwrap());
    // Recorded as made here over the presented message, it is taken on
    // trust once (only code that made a signature records it), then
    // verified again.
    remember_made_here(&spki, alg, presented, &signature);
    assert!(verify(&spki, alg, presented, &signature).unwrap());
    assert!(!verify(&spki, alg, presented, &signature).unwrap());
}
