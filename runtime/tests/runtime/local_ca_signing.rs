//! local-ca through the host's `signing` import: the CA key stays with the
//! host (parsed once per instance and secret value), the guest builds the
//! certificate. Every issued leaf is checked natively against its CA
//! certificate.

use std::sync::Arc;

use crate::common::{instance, load};
use crate::plugins::der_of;
use certplane_runtime::harness::Harness;
use certplane_runtime::issuer::{CertificateRequest, IssueResult, IssuedCertificate};
use certplane_runtime::{
    CallError, ConnectorError, InstanceConfig, Plugin, PluginInstance, RuntimeConfig,
};
use certplane_testkit::{repo_root, test_ca, test_csr};
use x509_parser::prelude::*;

/// The local-ca connector's OpenSSL-made test CAs (public, test-only).
fn data(name: &str) -> String {
    let path = repo_root().join("plugins/local-ca/testdata").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn config(id: &str, ca_cert: &str, ca_key: Option<&str>) -> InstanceConfig {
    let config = InstanceConfig::new(id)
        .with_settings(serde_json::json!({ "ca_certificate_pem": ca_cert, "validity_days": 30 }))
        .unwrap();
    match ca_key {
        Some(key) => config.with_secret("ca_private_key_pem", key),
        None => config,
    }
}

/// The request of `plugins::request` for the one name these tests use.
fn request(csr: &str) -> CertificateRequest {
    crate::plugins::request(csr, &["www.example.com"])
}

async fn issue(ca: &PluginInstance, csr: &str) -> IssuedCertificate {
    match ca.submit(&request(csr)).await {
        Ok(IssueResult::Issued(issued)) => issued,
        other => panic!("local CA did not issue: {other:?}"),
    }
}

/// Whether `leaf` carries a signature of `ca_cert`'s key, checked natively.
fn signed_by(leaf_pem: &str, ca_cert: &str) -> bool {
    let leaf_der = der_of(leaf_pem);
    let ca_der = der_of(ca_cert);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    leaf.issuer() == ca.subject() && leaf.verify_signature(Some(ca.public_key())).is_ok()
}

fn config_error(result: Result<impl std::fmt::Debug, CallError>) -> String {
    match result {
        Err(CallError::Connector {
            error: ConnectorError::InvalidConfig(m),
            ..
        }) => m,
        other => panic!("expected invalid-config, got {other:?}"),
    }
}

async fn local_ca(harness: &Harness) -> Arc<Plugin> {
    load(harness, "local-ca").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ca_key_type_issues_certificates_that_verify_natively() {
    let harness = Harness::new().unwrap();
    let plugin = local_ca(&harness).await;
    for (cert, key) in [
        ("ca-p256.pem", "ca-p256.key"),
        ("ca-p256.pem", "ca-p256.sec1.key"),
        ("ca-p384.pem", "ca-p384.key"),
        ("ca-ed25519.pem", "ca-ed25519.key"),
        ("ca-rsa.pem", "ca-rsa.key"),
    ] {
        let ca_cert = data(cert);
        let ca = instance(&plugin, config("local-ca-1", &ca_cert, Some(&data(key))));
        ca.validate_config()
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let (csr, _) = test_csr(&["www.example.com"], alg);
            let issued = issue(&ca, &csr).await;
            assert!(signed_by(&issued.certificate_pem, &ca_cert), "{key}");
            assert_eq!(der_of(&issued.chain_pem[0]), der_of(&ca_cert), "{key}");
            // The leaf certifies the CSR's key.
            let csr_der = der_of(&csr);
            let (_, parsed) = X509CertificationRequest::from_der(&csr_der).unwrap();
            let leaf_der = der_of(&issued.certificate_pem);
            let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
            assert_eq!(
                leaf.public_key().raw,
                parsed.certification_request_info.subject_pki.raw
            );
        }
        // An RSA CSR (OpenSSL-made, 2048 bits) verified by the host too.
        let issued = issue(&ca, &data("csr-rsa.pem")).await;
        assert!(signed_by(&issued.certificate_pem, &ca_cert), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_unusable_key_is_a_configuration_error_naming_the_secret() {
    let harness = Harness::new().unwrap();
    let plugin = local_ca(&harness).await;
    let ca_cert = data("ca-p256.pem");
    let (csr, _) = test_csr(&["www.example.com"], &rcgen::PKCS_ECDSA_P256_SHA256);

    let missing = instance(&plugin, config("local-ca-1", &ca_cert, None));
    let m = config_error(missing.validate_config().await);
    assert!(m.contains("\"ca_private_key_pem\""), "{m}");
    let m = config_error(missing.submit(&request(&csr)).await);
    assert!(m.contains("\"ca_private_key_pem\""), "{m}");

    for (value, needle) in [
        ("not a key".to_string(), "no PRIVATE KEY PEM block"),
        (data("ca-p256.encrypted.key"), "encrypted"),
        (ca_cert.clone(), "no PRIVATE KEY PEM block"),
    ] {
        let bad = instance(&plugin, config("local-ca-1", &ca_cert, Some(&value)));
        let m = config_error(bad.submit(&request(&csr)).await);
        assert!(
            m.contains("\"ca_private_key_pem\" is not a usable private key") && m.contains(needle),
            "{needle}: {m}"
        );
    }
    // A key of another CA.
    let other = instance(
        &plugin,
        config("local-ca-1", &ca_cert, Some(&data("ca-p384.key"))),
    );
    let m = config_error(other.validate_config().await);
    assert!(m.contains("does not belong to the CA certificate"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_signs_only_with_its_own_secret() {
    let harness = Harness::new().unwrap();
    let plugin = local_ca(&harness).await;
    let (cert_a, key_a) = test_ca();
    let (cert_b, key_b) = test_ca();
    let a = instance(&plugin, config("issuer/a", &cert_a, Some(&key_a)));
    let b = instance(&plugin, config("issuer/b", &cert_b, Some(&key_b)));
    let (csr, _) = test_csr(&["www.example.com"], &rcgen::PKCS_ECDSA_P256_SHA256);

    // Both keys are parsed and cached, side by side.
    let from_a = issue(&a, &csr).await;
    let from_b = issue(&b, &csr).await;
    assert!(signed_by(&from_a.certificate_pem, &cert_a));
    assert!(!signed_by(&from_a.certificate_pem, &cert_b));
    assert!(signed_by(&from_b.certificate_pem, &cert_b));
    assert!(!signed_by(&from_b.certificate_pem, &cert_a));

    // B configured with A's certificate signs with B's key, so the key does
    // not belong: A's cached key is out of B's reach.
    let b_as_a = instance(&plugin, config("issuer/b", &cert_a, Some(&key_b)));
    let m = config_error(b_as_a.submit(&request(&csr)).await);
    assert!(m.contains("does not belong to the CA certificate"), "{m}");
    // Without the secret, nothing signs: not under its own id, not even
    // under A's id while A's key is cached.
    for id in ["issuer/c", "issuer/a"] {
        let bare = instance(&plugin, config(id, &cert_a, None));
        let m = config_error(bare.submit(&request(&csr)).await);
        assert!(m.contains("no secret \"ca_private_key_pem\""), "{id}: {m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_cache_is_bounded_and_follows_a_changed_secret() {
    let harness = Harness::with_config(RuntimeConfig {
        signing_key_cache_entries: 2,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let plugin = local_ca(&harness).await;
    let (csr, _) = test_csr(&["www.example.com"], &rcgen::PKCS_ECDSA_P256_SHA256);
    for round in 0..4 {
        // One instance id throughout; its CA (certificate and key) rotated
        // every round: each issuance must use the new key at once.
        let (cert, key) = test_ca();
        let ca = instance(&plugin, config("issuer/rotating", &cert, Some(&key)));
        let issued = issue(&ca, &csr).await;
        assert!(signed_by(&issued.certificate_pem, &cert), "round {round}");
        let held = harness.runtime().signing_keys_cached();
        assert!((1..=2).contains(&held), "round {round}: {held} keys held");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrs_with_bad_or_unsupported_signatures_are_still_rejected() {
    let harness = Harness::new().unwrap();
    let plugin = local_ca(&harness).await;
    let ca = instance(
        &plugin,
        config(
            "local-ca-1",
            &data("ca-p256.pem"),
            Some(&data("ca-p256.key")),
        ),
    );
    for (file, needle) in [
        ("csr-p256-tampered.pem", "does not verify"),
        ("csr-p521.pem", "P-521"),
        ("csr-rsa-pss.pem", "RSASSA-PSS"),
        ("csr-ca-key.pem", "CA's own public key"),
    ] {
        match ca.submit(&request(&data(file))).await {
            Err(CallError::Connector {
                error: ConnectorError::Rejected(m),
                ..
            }) => assert!(m.contains(needle), "{file}: {m}"),
            other => panic!("{file}: {other:?}"),
        }
    }
    // A CSR whose signature bytes were flipped after signing.
    let (csr, _) = test_csr(&["www.example.com"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let mut der = der_of(&csr);
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let flipped = pem_of("CERTIFICATE REQUEST", &der);
    match ca.submit(&request(&flipped)).await {
        Err(CallError::Connector {
            error: ConnectorError::Rejected(m),
            ..
        }) => assert!(m.contains("does not verify"), "{m}"),
        other => panic!("{other:?}"),
    }
}

fn pem_of(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}
