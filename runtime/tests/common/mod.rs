//! Shared helpers for the runtime's integration tests: locating the built
//! plugins and making test certificates.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use certplane_runtime::harness::Harness;
use certplane_runtime::{InstanceConfig, Plugin, PluginInstance};

/// Repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Manifest of a packaged connector; panics with the fix when it is missing
/// (these tests never skip silently).
pub fn manifest(name: &str) -> PathBuf {
    let dir = if name == "hostile" {
        "test-plugins"
    } else {
        "plugins"
    };
    let path = repo_root()
        .join("target")
        .join(dir)
        .join(format!("{name}.toml"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-plugins first",
        path.display()
    );
    path
}

pub async fn load(harness: &Harness, name: &str) -> Arc<Plugin> {
    harness.load(manifest(name)).await.expect("plugin loads")
}

pub fn instance(plugin: &Arc<Plugin>, config: InstanceConfig) -> PluginInstance {
    PluginInstance::new(plugin.clone(), config).expect("valid instance config")
}

/// A bundle for target calls whose content does not matter.
pub fn dummy_bundle() -> certplane_runtime::target::CertificateBundle {
    certplane_runtime::target::CertificateBundle {
        certificate_id: "web-1".into(),
        dns_names: vec!["www.example.com".into()],
        certificate_pem: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into(),
        chain_pem: vec![],
        fingerprint_sha256: "00".repeat(32),
    }
}

/// A self-signed ECDSA P-256 CA: (certificate PEM, PKCS#8 key PEM).
pub fn test_ca() -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "certplane test CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A CSR for `names` with a fresh key of `alg`: (CSR PEM, key PEM).
pub fn test_csr(names: &[&str], alg: &'static rcgen::SignatureAlgorithm) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let csr = params.serialize_request(&key).unwrap();
    (csr.pem().unwrap(), key.serialize_pem())
}
