//! Contract compatibility: the current WIT is a semver-compatible upgrade of
//! every released one (`wit/1.0.0`), checked with `wit-component`'s
//! structural check, and a component built against 1.0 loads and runs on
//! this runtime.

use std::path::Path;

use certplane_runtime::harness::Harness;
use certplane_runtime::{CONTRACT_VERSION, InstanceConfig, PluginInstance};
use certplane_testkit::{repo_root, test_plugin_manifest};
use wit_parser::Resolve;

use crate::common::dummy_bundle;

/// The released contract versions kept frozen under `wit/`.
const RELEASED: &[&str] = &["1.0.0"];

/// The worlds a released version defines, all of which must still hold.
const WORLDS: &[&str] = &["issuer", "target", "notifier"];

/// A resolve holding one released version and the current WIT (given as
/// text, so a test can check a changed copy).
fn resolve_with(
    released: &str,
    current: &str,
) -> (Resolve, wit_parser::PackageId, wit_parser::PackageId) {
    let wit = repo_root().join("wit");
    let mut resolve = Resolve::default();
    let (old, _) = resolve
        .push_dir(wit.join(released))
        .unwrap_or_else(|e| panic!("wit/{released} parses: {e:#}"));
    // The current package's deps are the same WASI versions, already in
    // the resolve from the released directory's deps.
    let new = resolve
        .push_str(Path::new("connector.wit"), current)
        .unwrap_or_else(|e| panic!("wit/connector.wit parses: {e:#}"));
    (resolve, old, new)
}

fn check(released: &str, current: &str) -> Result<(), String> {
    let (resolve, old, new) = resolve_with(released, current);
    for world in WORLDS {
        let prev = resolve
            .select_world(&[old], Some(world))
            .map_err(|e| format!("{released} has no world {world}: {e:#}"))?;
        let next = resolve
            .select_world(&[new], Some(world))
            .map_err(|e| format!("the current contract drops world {world}: {e:#}"))?;
        wit_component::semver_check(resolve.clone(), prev, next)
            .map_err(|e| format!("world {world} is not compatible with {released}: {e:#}"))?;
    }
    Ok(())
}

fn current_wit() -> String {
    std::fs::read_to_string(repo_root().join("wit/connector.wit")).expect("wit/connector.wit")
}

#[test]
fn the_current_contract_is_a_semver_compatible_upgrade_of_every_release() {
    let current = current_wit();
    for released in RELEASED {
        check(released, &current).unwrap_or_else(|e| panic!("{e}"));
    }
    // The package version in wit/ is the version this runtime implements.
    assert!(
        current.contains(&format!("package certplane:connector@{CONTRACT_VERSION};")),
        "wit/connector.wit and CONTRACT_VERSION ({CONTRACT_VERSION}) disagree"
    );
}

#[test]
fn the_semver_check_catches_a_frozen_record_growing_a_field() {
    // What the compatibility rule forbids: a 1.0 record gains a field.
    let changed = current_wit().replace(
        "        certificate-id: string,\n    }\n\n    /// A certificate the CA has issued.",
        "        certificate-id: string,\n        profile: string,\n    }\n\n    /// A certificate the CA has issued.",
    );
    assert_ne!(changed, current_wit(), "the test's edit applies");
    let err = check("1.0.0", &changed).expect_err("a grown record is incompatible");
    assert!(err.contains("issuer"), "{err}");
}

#[test]
fn the_semver_check_catches_an_export_gaining_a_function() {
    let changed = current_wit().replace(
        "    /// Deliver one event. The host retries",
        "    ping: func() -> bool;\n\n    /// Deliver one event. The host retries",
    );
    assert_ne!(changed, current_wit(), "the test's edit applies");
    let err = check("1.0.0", &changed).expect_err("an exported function added is incompatible");
    assert!(err.contains("notifier"), "{err}");
}

#[tokio::test]
async fn a_component_built_against_1_0_runs_on_this_runtime() {
    let harness = Harness::new().expect("runtime");
    let plugin = harness
        .load(test_plugin_manifest("contract-1-0"))
        .await
        .expect("a 1.0 component loads on a 1.1 runtime");
    assert_eq!(plugin.manifest().world.to_string(), "1.0.0");
    assert!(!plugin.has_lifecycle());
    assert_eq!(plugin.info().name, "contract-1-0");

    let dir = tempfile::tempdir().unwrap();
    let instance = PluginInstance::new(
        plugin.clone(),
        InstanceConfig::new("compat")
            .with_settings(serde_json::json!({"dir": "/out"}))
            .unwrap()
            .with_dir(dir.path(), "/out", true),
    )
    .unwrap();
    instance.validate_config().await.expect("validate-config");
    let bundle = dummy_bundle();
    let result = instance
        .deploy(&bundle, "KEY", "{}")
        .await
        .expect("deploy through the 1.0 exports");
    assert_eq!(result.changed, vec!["/out/web-1.pem", "/out/web-1.key"]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("web-1.pem")).unwrap(),
        bundle.certificate_pem
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("web-1.key")).unwrap(),
        "KEY"
    );
    let removed = instance.remove("web-1", "{}").await.expect("remove");
    assert_eq!(removed.len(), 2);
    assert!(!dir.path().join("web-1.pem").exists());

    // A 1.0 error still crosses the boundary typed.
    let no_dir = PluginInstance::new(plugin, InstanceConfig::new("compat-bad")).unwrap();
    let err = no_dir.validate_config().await.expect_err("dir is required");
    assert!(err.to_string().contains("dir is required"), "{err}");
}
