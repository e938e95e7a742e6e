//! Directory grants through symlinks, with the real pem-files connector:
//! a link a connector planted in its own directory does not widen a later
//! grant, and a path swapped after the check is not used.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use certplane_agent::config::{AllowedDir, ConnectorGrants};
use certplane_agent::grants::{self, GrantRefused, TargetCallError};
use certplane_runtime::target::CertificateBundle;
use certplane_runtime::{InstanceConfig, Plugin, Runtime, RuntimeConfig};
use certplane_testkit::{plugin_cache_dir, plugin_dir, test_ca};
use serde_json::json;

async fn pem_files() -> Arc<Plugin> {
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(plugin_cache_dir()),
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let (loaded, _) = runtime.load_dir(&plugin_dir()).await.expect("plugins");
    loaded
        .into_iter()
        .find(|p| p.name() == "pem-files")
        .expect("pem-files is packaged")
}

/// `<tmp>/allowed/site` (inside the allowed `<tmp>/allowed`) and
/// `<tmp>/outside`.
struct Tree(tempfile::TempDir);

impl Tree {
    fn new() -> Tree {
        let tree = Tree(tempfile::tempdir().expect("temp dir"));
        std::fs::create_dir_all(tree.p("allowed/site")).expect("site");
        std::fs::create_dir_all(tree.p("outside")).expect("outside");
        tree
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.0.path().join(rel)
    }

    fn allowance(&self) -> ConnectorGrants {
        ConnectorGrants {
            directories: vec![AllowedDir {
                path: self.p("allowed"),
                writable: true,
            }],
            ..ConnectorGrants::default()
        }
    }

    fn check(&self, rel: &str) -> Result<grants::CheckedGrants, GrantRefused> {
        let request = json!({ "directories": [
            { "path": self.p(rel), "guest_path": "/certs", "writable": true }
        ] });
        grants::check("pem-files", &request, Some(&self.allowance()))
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn bundle(cert_pem: &str) -> CertificateBundle {
    CertificateBundle {
        certificate_id: "cert-1".into(),
        dns_names: vec!["site.test".into()],
        certificate_pem: cert_pem.to_owned(),
        chain_pem: Vec::new(),
        fingerprint_sha256: String::new(),
    }
}

fn config() -> InstanceConfig {
    InstanceConfig::new("target/t1")
        .with_settings(json!({ "directory": "/certs" }))
        .expect("settings")
}

#[tokio::test]
async fn a_planted_escape_link_fails_the_deployment_and_writes_nothing_outside() {
    let plugin = pem_files().await;
    let t = Tree::new();
    let (cert, key) = test_ca();

    // The directory as granted works.
    let checked = t.check("allowed/site").expect("site is allowed");
    let instance = checked
        .instance(plugin.clone(), config())
        .expect("instance");
    instance
        .deploy(&bundle(&cert), &key, "{}")
        .await
        .expect("deployed");
    assert_eq!(entries(&t.p("allowed/site")), ["cert-1"]);

    // What a hostile connector can leave in its own directory.
    symlink("../../outside", t.p("allowed/site/esc")).expect("plant");
    symlink("/etc", t.p("allowed/site/etc")).expect("plant");
    for rel in ["allowed/site/esc", "allowed/site/etc"] {
        let err = t.check(rel).expect_err("a grant through the link");
        assert!(matches!(err, GrantRefused::Escapes { .. }), "{rel}: {err}");
        assert!(err.to_string().starts_with("grant refused"), "{err}");
    }
    assert_eq!(entries(&t.p("outside")), Vec::<String>::new());
}

#[tokio::test]
async fn a_symlink_swapped_in_between_check_and_deployment_is_refused() {
    let plugin = pem_files().await;
    let t = Tree::new();
    let (cert, key) = test_ca();
    let checked = t.check("allowed/site").expect("site is allowed");
    let instance = checked.instance(plugin, config()).expect("instance");

    std::fs::rename(t.p("allowed/site"), t.p("allowed/site.old")).expect("move away");
    symlink("../outside", t.p("allowed/site")).expect("swap in a link");

    let err = instance
        .deploy(&bundle(&cert), &key, "{}")
        .await
        .expect_err("the swapped path is not used");
    assert!(
        matches!(err, TargetCallError::Refused(GrantRefused::Changed { .. })),
        "{err}"
    );
    let err = instance
        .remove("cert-1", "{}")
        .await
        .expect_err("nor for removal");
    assert!(matches!(err, TargetCallError::Refused(_)), "{err}");
    assert_eq!(entries(&t.p("outside")), Vec::<String>::new());
    assert_eq!(entries(&t.p("allowed/site.old")), Vec::<String>::new());
}

#[tokio::test]
async fn a_link_that_stays_inside_deploys_into_its_real_directory() {
    let plugin = pem_files().await;
    let t = Tree::new();
    let (cert, key) = test_ca();
    symlink("site", t.p("allowed/alias")).expect("link");
    let checked = t.check("allowed/alias").expect("alias stays inside");
    assert_eq!(
        checked.directories()[0].real_path(),
        std::fs::canonicalize(t.p("allowed/site")).expect("real")
    );
    let instance = checked.instance(plugin, config()).expect("instance");
    instance
        .deploy(&bundle(&cert), &key, "{}")
        .await
        .expect("deployed");
    assert_eq!(entries(&t.p("allowed/site")), ["cert-1"]);
}
