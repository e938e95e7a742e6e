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

pub(crate) fn request(csr: &str, names: &[&str]) -> CertificateRequest {
    CertificateRequest {
        csr_pem: csr.to_string(),
        common_name: names[0].to_string(),
        dns_names: names.iter().map(|n| n.to_string()).collect(),
        ip_addresses: vec![],
        validity_days: Some(30),
        certificate_id: "web-1".into(),
    }
}

pub(crate) fn der_of(pem_text: &str) -> Vec<u8> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).expect("PEM");
    pem.contents
}

/// The host prepares only what a connector imports (its store, the job's
/// challenges), so what `imports_interface` says must match the component.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_report_the_contract_interfaces_they_import() {
    let harness = Harness::new().unwrap();
    let local_ca = load(&harness, "local-ca").await;
    assert!(local_ca.imports_interface("signing"));
    assert!(local_ca.imports_interface("log"));
    for unused in ["store", "context", "challenges", "actions"] {
        assert!(
            !local_ca.imports_interface(unused),
            "local-ca imports {unused}?"
        );
    }
    let acme = load(&harness, "acme").await;
    for used in ["store", "context", "challenges"] {
        assert!(acme.imports_interface(used), "acme does not import {used}?");
    }
    let pem_files = load(&harness, "pem-files").await;
    assert!(pem_files.imports_interface("actions"));
    assert!(!pem_files.imports_interface("store"));
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

// pem-files' post-deploy action: an action the operator defines (argv) and
// grants by name; the connector only names it, from its settings or a
// certificate's options.

/// A self-signed certificate for `id`, as a bundle, and its key.
fn pem_files_bundle(id: &str) -> (certplane_runtime::target::CertificateBundle, String) {
    use sha2::Digest;
    let certified = rcgen::generate_simple_self_signed(vec!["www.example.com".to_string()])
        .expect("certificate");
    let bundle = certplane_runtime::target::CertificateBundle {
        certificate_id: id.into(),
        dns_names: vec!["www.example.com".into()],
        certificate_pem: certified.cert.pem(),
        chain_pem: vec![],
        fingerprint_sha256: hex::encode(sha2::Sha256::digest(certified.cert.der())),
    };
    (bundle, certified.key_pair.serialize_pem())
}

/// An action running `script` with `/bin/sh` (the operator's definition).
fn shell_action(script: &str) -> certplane_runtime::actions::ActionSpec {
    certplane_runtime::actions::ActionSpec {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        timeout: std::time::Duration::from_secs(10),
        env: std::collections::BTreeMap::new(),
        working_dir: None,
    }
}

/// An action that appends a line to `log` each time it runs.
fn logging_action(log: &std::path::Path) -> certplane_runtime::actions::ActionSpec {
    shell_action(&format!("echo ran >> '{}'", log.display()))
}

fn runs(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// pem-files granted `dir` at /certs and `actions`, with `settings`.
fn pem_files_config(
    dir: &std::path::Path,
    settings: serde_json::Value,
    actions: &[(&str, certplane_runtime::actions::ActionSpec)],
) -> InstanceConfig {
    let mut config = InstanceConfig::new("files-actions")
        .with_settings(settings)
        .unwrap()
        .with_dir(dir, "/certs", true);
    for (name, spec) in actions {
        config.grants.actions.insert(name.to_string(), spec.clone());
    }
    config
}

fn connector_error_of<T: std::fmt::Debug>(result: Result<T, CallError>) -> ConnectorError {
    match result {
        Err(CallError::Connector { error, .. }) => error,
        other => panic!("expected a connector error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pem_files_runs_its_post_deploy_action_only_when_files_change() {
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "pem-files").await;
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (reload_log, other_log) = (logs.path().join("reload"), logs.path().join("other"));
    let target = instance(
        &plugin,
        pem_files_config(
            dir.path(),
            serde_json::json!({"directory": "/certs", "post_deploy_action": "reload"}),
            &[
                ("reload", logging_action(&reload_log)),
                ("reload-other", logging_action(&other_log)),
            ],
        ),
    );
    target.validate_config().await.unwrap();
    assert_eq!(runs(&reload_log), 0, "validate-config runs nothing");

    let (bundle, key) = pem_files_bundle("web-1");
    let result = target.deploy(&bundle, &key, "{}").await.unwrap();
    assert_eq!(runs(&reload_log), 1);
    assert_eq!(
        result.changed.last().map(String::as_str),
        Some("ran action reload")
    );
    assert!(dir.path().join("web-1/cert.pem").is_file());

    // The same bundle again: no file changes, the action does not run.
    let again = target.deploy(&bundle, &key, "{}").await.unwrap();
    assert!(again.changed.is_empty(), "{:?}", again.changed);
    assert_eq!(runs(&reload_log), 1);

    // A renewal changes files: it runs again.
    let (renewed, renewed_key) = pem_files_bundle("web-1");
    target.deploy(&renewed, &renewed_key, "{}").await.unwrap();
    assert_eq!(runs(&reload_log), 2);

    // A certificate's options name another granted action for it alone;
    // keys meant for other connectors are ignored.
    let options = r#"{"post_deploy_action": "reload-other", "reload": "nginx"}"#;
    let (api, api_key) = pem_files_bundle("api");
    target.deploy(&api, &api_key, options).await.unwrap();
    assert_eq!((runs(&reload_log), runs(&other_log)), (2, 1));

    // Remove runs it after removing something, not when nothing was there.
    let removed = target.remove("web-1", "{}").await.unwrap();
    assert!(
        removed.iter().any(|c| c.ends_with("cert.pem")),
        "{removed:?}"
    );
    assert_eq!(runs(&reload_log), 3);
    assert!(target.remove("web-1", "{}").await.unwrap().is_empty());
    assert_eq!(runs(&reload_log), 3);
    target.remove("api", options).await.unwrap();
    assert_eq!((runs(&reload_log), runs(&other_log)), (3, 2));
    // Nothing of certplane's is left in the directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    // Without the setting or an option, nothing runs.
    let plain = instance(
        &plugin,
        pem_files_config(
            dir.path(),
            serde_json::json!({"directory": "/certs"}),
            &[("reload", logging_action(&reload_log))],
        ),
    );
    plain.deploy(&bundle, &key, "{}").await.unwrap();
    assert_eq!(runs(&reload_log), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pem_files_refuses_an_ungranted_action_before_touching_files() {
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "pem-files").await;
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("reload");
    let target = instance(
        &plugin,
        pem_files_config(
            dir.path(),
            serde_json::json!({"directory": "/certs"}),
            &[("reload", logging_action(&log))],
        ),
    );
    let (bundle, key) = pem_files_bundle("web-1");
    let err = connector_error_of(
        target
            .deploy(&bundle, &key, r#"{"post_deploy_action": "reboot"}"#)
            .await,
    );
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    assert!(
        err.to_string().contains("options.post_deploy_action")
            && err.to_string().contains("reboot"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    assert_eq!(runs(&log), 0);

    // Not an action name at all: the same class.
    let err = connector_error_of(
        target
            .deploy(&bundle, &key, r#"{"post_deploy_action": "/sbin/reboot"}"#)
            .await,
    );
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");

    // The setting naming an ungranted action fails validate-config.
    let misconfigured = instance(
        &plugin,
        pem_files_config(
            dir.path(),
            serde_json::json!({"directory": "/certs", "post_deploy_action": "reload-nginx"}),
            &[("reload", logging_action(&log))],
        ),
    );
    let err = connector_error_of(misconfigured.validate_config().await);
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    assert!(err.to_string().contains("reload-nginx"), "{err}");
    let err = connector_error_of(misconfigured.remove("web-1", "{}").await);
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pem_files_reports_a_failing_action_and_runs_it_again_next_time() {
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "pem-files").await;
    let dir = tempfile::tempdir().unwrap();
    let failing = shell_action("echo checking; echo 'emerg: cannot load certificate' >&2; exit 3");
    let target = instance(
        &plugin,
        pem_files_config(
            dir.path(),
            serde_json::json!({"directory": "/certs", "post_deploy_action": "reload"}),
            &[("reload", failing)],
        ),
    );
    let (bundle, key) = pem_files_bundle("web-1");
    let err = connector_error_of(target.deploy(&bundle, &key, "{}").await);
    let ConnectorError::Rejected(message) = &err else {
        panic!("expected rejected, got {err:?}");
    };
    assert!(
        message.contains("action reload exited with status 3")
            && message.contains("emerg: cannot load certificate"),
        "{message}"
    );
    // The files stay written, and the action is recorded as owed.
    let cert = std::fs::read_to_string(dir.path().join("web-1/cert.pem")).unwrap();
    assert_eq!(der_of(&cert), der_of(&bundle.certificate_pem));
    assert!(dir.path().join(".web-1.certplane-action-pending").is_file());

    // Once the operator fixed what the action checks, the same deploy (no
    // file changes) runs it, and then no more.
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("reload");
    let fixed = instance(
        &plugin,
        pem_files_config(
            dir.path(),
            serde_json::json!({"directory": "/certs", "post_deploy_action": "reload"}),
            &[("reload", logging_action(&log))],
        ),
    );
    let result = fixed.deploy(&bundle, &key, "{}").await.unwrap();
    assert_eq!(result.changed, ["ran action reload"]);
    assert_eq!(runs(&log), 1);
    assert!(!dir.path().join(".web-1.certplane-action-pending").exists());
    assert!(
        fixed
            .deploy(&bundle, &key, "{}")
            .await
            .unwrap()
            .changed
            .is_empty()
    );
    assert_eq!(runs(&log), 1);
}
