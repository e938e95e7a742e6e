//! The bundled connectors on the real runtime, and the load-time checks.

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::common::{instance, load, manifest};
use certplane_runtime::harness::Harness;
use certplane_runtime::issuer::{CertificateRequest, IssueResult};
use certplane_runtime::{
    CacheOutcome, CallError, ConnectorError, InstanceConfig, LoadError, Runtime, RuntimeConfig,
};
use certplane_testkit::{test_ca, test_csr};
use x509_parser::prelude::*;

fn local_ca_config(ca_cert: &str, ca_key: &str) -> InstanceConfig {
    InstanceConfig::new("local-ca-1")
        .with_settings(serde_json::json!({ "ca_certificate_pem": ca_cert, "validity_days": 30 }))
        .unwrap()
        .with_secret("ca_private_key_pem", ca_key)
}

fn request(csr: &str, names: &[&str]) -> CertificateRequest {
    CertificateRequest {
        csr_pem: csr.to_string(),
        common_name: names[0].to_string(),
        dns_names: names.iter().map(|n| n.to_string()).collect(),
        ip_addresses: vec![],
        validity_days: Some(30),
        certificate_id: "web-1".into(),
    }
}

fn der_of(pem_text: &str) -> Vec<u8> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).expect("PEM");
    pem.contents
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_ca_signs_csrs_of_every_key_type() {
    let (ca_cert, ca_key) = test_ca();
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "local-ca").await;
    let ca = instance(&plugin, local_ca_config(&ca_cert, &ca_key));
    ca.validate_config().await.unwrap();
    let ca_der = der_of(&ca_cert);
    let (_, ca_x509) = X509Certificate::from_der(&ca_der).unwrap();

    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ] {
        let names = ["www.example.com", "example.com"];
        let (csr, _key) = test_csr(&names, alg);
        let IssueResult::Issued(issued) = ca.submit(&request(&csr, &names)).await.unwrap() else {
            panic!("local CA returned pending");
        };
        let leaf_der = der_of(&issued.certificate_pem);
        let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
        assert_eq!(leaf.issuer(), ca_x509.subject());
        let sans: Vec<String> = leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            sans,
            vec!["DNSName(www.example.com)", "DNSName(example.com)"]
        );
        // The leaf certifies the CSR's key.
        let csr_der = der_of(&csr);
        let (_, parsed_csr) = X509CertificationRequest::from_der(&csr_der).unwrap();
        assert_eq!(
            leaf.public_key().raw,
            parsed_csr.certification_request_info.subject_pki.raw
        );
        assert!(!leaf.is_ca());
        assert_eq!(issued.chain_pem.len(), 1);
        assert_eq!(der_of(&issued.chain_pem[0]), ca_der);
        // The CA's signature on the leaf verifies.
        leaf.verify_signature(Some(ca_x509.public_key()))
            .expect("leaf signature verifies against the CA key");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_ca_reports_config_and_request_errors_by_class() {
    let (ca_cert, ca_key) = test_ca();
    let (_, other_key) = test_ca();
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "local-ca").await;

    // Key that does not match the certificate → invalid-config.
    let bad = instance(&plugin, local_ca_config(&ca_cert, &other_key));
    let err = bad.validate_config().await.unwrap_err();
    assert!(
        matches!(
            &err,
            CallError::Connector {
                error: ConnectorError::InvalidConfig(_),
                ..
            }
        ),
        "{err:?}"
    );
    // Missing secret → invalid-config.
    let missing = instance(
        &plugin,
        InstanceConfig::new("x")
            .with_settings(serde_json::json!({ "ca_certificate_pem": ca_cert }))
            .unwrap(),
    );
    assert!(matches!(
        missing.validate_config().await.unwrap_err(),
        CallError::Connector {
            error: ConnectorError::InvalidConfig(_),
            ..
        }
    ));
    // Garbage CSR → rejected.
    let ca = instance(&plugin, local_ca_config(&ca_cert, &ca_key));
    let err = ca
        .submit(&request(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            &["a.example.com"],
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            CallError::Connector {
                error: ConnectorError::Rejected(_),
                ..
            }
        ),
        "{err:?}"
    );
    // Revocation is not something a CRL-less CA does.
    let (csr, _) = test_csr(&["a.example.com"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let IssueResult::Issued(issued) = ca.submit(&request(&csr, &["a.example.com"])).await.unwrap()
    else {
        panic!("pending");
    };
    let err = ca
        .revoke(&certplane_runtime::issuer::RevocationRequest {
            certificate_pem: issued.certificate_pem,
            serial_hex: "01".into(),
            ca_certificate_id: None,
            reason: certplane_runtime::issuer::RevocationReason::Superseded,
        })
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        CallError::Connector {
            error: ConnectorError::Unsupported(_),
            ..
        }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pem_files_writes_only_into_its_granted_directory() {
    let (ca_cert, ca_key) = test_ca();
    let harness = Harness::new().unwrap();
    let ca = instance(
        &load(&harness, "local-ca").await,
        local_ca_config(&ca_cert, &ca_key),
    );
    let names = ["www.example.com"];
    let (csr, key) = test_csr(&names, &rcgen::PKCS_ECDSA_P256_SHA256);
    let IssueResult::Issued(issued) = ca.submit(&request(&csr, &names)).await.unwrap() else {
        panic!("pending");
    };

    let dir = tempfile::tempdir().unwrap();
    let target = instance(
        &load(&harness, "pem-files").await,
        InstanceConfig::new("files-1")
            .with_settings(serde_json::json!({ "directory": "/certs" }))
            .unwrap()
            .with_dir(dir.path(), "/certs", true),
    );
    target.validate_config().await.unwrap();
    let bundle = certplane_runtime::target::CertificateBundle {
        certificate_id: "web-1".into(),
        dns_names: vec!["www.example.com".into()],
        certificate_pem: issued.certificate_pem.clone(),
        chain_pem: issued.chain_pem.clone(),
        fingerprint_sha256: {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(der_of(&issued.certificate_pem)))
        },
    };
    let result = target.deploy(&bundle, &key, "{}").await.unwrap();
    assert!(!result.changed.is_empty());
    let written = dir.path().join("web-1");
    let cert = std::fs::read_to_string(written.join("cert.pem")).unwrap();
    assert_eq!(der_of(&cert), der_of(&issued.certificate_pem));
    let fullchain = std::fs::read_to_string(written.join("fullchain.pem")).unwrap();
    assert!(
        fullchain.starts_with(issued.certificate_pem.trim_end())
            || der_of(&fullchain) == der_of(&issued.certificate_pem)
    );
    assert_eq!(
        std::fs::read_to_string(written.join("privkey.pem"))
            .unwrap()
            .trim(),
        key.trim()
    );
    // Idempotent.
    target.deploy(&bundle, &key, "{}").await.unwrap();
    // Remove cleans up; removing again is fine.
    target.remove("web-1", "{}").await.unwrap();
    assert!(!written.join("cert.pem").exists());
    target.remove("web-1", "{}").await.unwrap();

    // A read-only grant makes validate-config fail with invalid-config.
    let ro_dir = tempfile::tempdir().unwrap();
    let err = instance(
        &load(&harness, "pem-files").await,
        InstanceConfig::new("files-ro").with_dir(ro_dir.path(), "/certs", false),
    )
    .validate_config()
    .await
    .unwrap_err();
    assert!(
        matches!(
            &err,
            CallError::Connector {
                error: ConnectorError::InvalidConfig(_),
                ..
            }
        ),
        "{err:?}"
    );
}

/// Copies a packaged plugin into a temp dir with its manifest edited.
fn tampered(
    name: &str,
    edit: impl Fn(String) -> String,
) -> (tempfile::TempDir, std::path::PathBuf) {
    let src = manifest(name);
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&src).unwrap();
    let wasm = src.with_extension("wasm");
    std::fs::copy(&wasm, dir.path().join(wasm.file_name().unwrap())).unwrap();
    let path = dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, edit(text)).unwrap();
    (dir, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_refuses_bad_plugins_and_says_why() {
    let harness = Harness::new().unwrap();
    let bad_digest = |t: String| {
        let line = t
            .lines()
            .find(|l| l.starts_with("sha256"))
            .unwrap()
            .to_string();
        t.replace(&line, &format!("sha256 = \"{}\"", "0".repeat(64)))
    };
    let (_d, path) = tampered("local-ca", bad_digest);
    let err = harness.runtime().load_plugin(&path).await.unwrap_err();
    assert!(matches!(err, LoadError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("SHA-256"), "{err}");

    let (_d, path) = tampered("pem-files", |t| {
        t.replace("kind = \"target\"", "kind = \"issuer\"")
    });
    let err = harness.runtime().load_plugin(&path).await.unwrap_err();
    assert!(matches!(err, LoadError::WrongKind { .. }), "{err}");
    assert!(err.to_string().contains("issuer-api"), "{err}");

    let (_d, path) = tampered("local-ca", |t| {
        t.replace("world = \"1.1.0\"", "world = \"2.0.0\"")
    });
    let err = harness.runtime().load_plugin(&path).await.unwrap_err();
    assert!(matches!(err, LoadError::IncompatibleWorld { .. }), "{err}");

    // A newer minor version than the host's contract is refused too: it
    // may import what this host does not provide.
    let (_d, path) = tampered("local-ca", |t| {
        t.replace("world = \"1.1.0\"", "world = \"1.2.0\"")
    });
    let err = harness.runtime().load_plugin(&path).await.unwrap_err();
    assert!(matches!(err, LoadError::IncompatibleWorld { .. }), "{err}");

    let (_d, path) = tampered("local-ca", |t| {
        t.replace("name = \"local-ca\"", "name = \"imposter\"")
    });
    let err = harness.runtime().load_plugin(&path).await.unwrap_err();
    assert!(matches!(err, LoadError::Describe { .. }), "{err}");

    // Older minor versions of the same major keep loading.
    let (_d, path) = tampered("local-ca", |t| t);
    assert!(harness.runtime().load_plugin(&path).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_start_loads_the_compiled_cache() {
    let cache = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..RuntimeConfig::default()
    };
    let first = Runtime::new(config.clone()).unwrap();
    let p = first.load_plugin(&manifest("local-ca")).await.unwrap();
    assert_eq!(p.cache_outcome(), CacheOutcome::Compiled);
    drop((p, first));
    let second = Runtime::new(config).unwrap();
    let started = std::time::Instant::now();
    let p = second.load_plugin(&manifest("local-ca")).await.unwrap();
    assert_eq!(p.cache_outcome(), CacheOutcome::Hit);
    eprintln!("cached load took {:?}", started.elapsed());
    // A corrupt artifact is discarded and recompiled, not trusted.
    for entry in std::fs::read_dir(cache.path()).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    let third = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let p = third.load_plugin(&manifest("local-ca")).await.unwrap();
    assert_eq!(p.cache_outcome(), CacheOutcome::Compiled);
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn plugin_logs_land_in_tracing_with_plugin_and_instance() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "hostile").await;
    let i = instance(
        &plugin,
        InstanceConfig::new("inst-42")
            .with_settings(serde_json::json!({"mode": "log"}))
            .unwrap(),
    );
    // The guard is per-thread: run the call on this thread.
    let changed = i
        .deploy(&crate::common::dummy_bundle(), "k", "{}")
        .await
        .unwrap()
        .changed;
    assert_eq!(changed, vec!["logged".to_string()]);
    let out = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for level in ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"] {
        assert!(
            out.lines()
                .any(|l| l.contains(level) && l.contains("plugin=\"hostile\"")
                    || l.contains(level) && l.contains("plugin=hostile")),
            "no {level} line from the plugin in:\n{out}"
        );
    }
    assert!(out.contains("inst-42"), "instance id missing:\n{out}");
}
