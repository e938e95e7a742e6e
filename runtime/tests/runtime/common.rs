//! Shared helpers of the runtime's integration tests: loading the built
//! plugins (test CAs and CSRs come from the test kit).

use std::path::PathBuf;
use std::sync::Arc;

use certplane_runtime::harness::Harness;
use certplane_runtime::{InstanceConfig, Plugin, PluginInstance};
use certplane_testkit::repo_root;

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
