//! The `nginx` target on the real runtime against a real nginx (Debian's,
//! a master with one worker from `certplane_testkit::nginx`): the instance
//! is granted only its certificate directory and the two actions that run
//! `nginx -t` and `nginx -s reload` of that nginx. What nginx serves is
//! checked with TLS handshakes; the actions are wrapped so the tests count
//! their runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use certplane_runtime::actions::ActionSpec;
use certplane_runtime::harness::Harness;
use certplane_runtime::target::CertificateBundle;
use certplane_runtime::{
    CallError, ConnectorError, InstanceConfig, Limits, Plugin, PluginInstance,
};
use certplane_testkit::nginx::{Leaf, Nginx, counted_argv, leaf, runs};
use serde_json::json;

use crate::common::{instance, load};

const ID: &str = "web-1";
const NAME: &str = "www.nginx.test";
/// How long a reload may take to show.
const RELOAD_WAIT: Duration = Duration::from_secs(10);
/// A private key block that is valid PEM but no key at all.
const GARBAGE_KEY: &str = "-----BEGIN PRIVATE KEY-----\nAAEC\n-----END PRIVATE KEY-----\n";

struct World {
    /// The directory granted to the instance as `/certs`; nginx's server
    /// block names `web-1/fullchain.pem` and `web-1/privkey.pem` in it.
    certs: tempfile::TempDir,
    /// Counter files of the wrapped actions.
    counters: tempfile::TempDir,
    first: Leaf,
    nginx: Nginx,
    plugin: Arc<Plugin>,
    _harness: Harness,
}

async fn world() -> World {
    let certs = tempfile::tempdir().unwrap();
    let first = leaf(&[NAME]);
    let dir = certs.path().join(ID);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("fullchain.pem"), first.fullchain_pem()).unwrap();
    std::fs::write(dir.join("privkey.pem"), &first.key_pem).unwrap();
    let nginx = Nginx::start(&dir.join("fullchain.pem"), &dir.join("privkey.pem"));
    assert_eq!(
        nginx.served_fingerprint(NAME).unwrap(),
        first.fingerprint_sha256
    );
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "nginx").await;
    World {
        certs,
        counters: tempfile::tempdir().unwrap(),
        first,
        nginx,
        plugin,
        _harness: harness,
    }
}

fn spec(argv: Vec<String>, timeout: Duration) -> ActionSpec {
    ActionSpec {
        argv,
        timeout,
        env: BTreeMap::new(),
        working_dir: None,
    }
}

fn bundle(leaf: &Leaf) -> CertificateBundle {
    CertificateBundle {
        certificate_id: ID.into(),
        dns_names: vec![NAME.into()],
        certificate_pem: leaf.cert_pem.clone(),
        chain_pem: leaf.chain_pem.clone(),
        fingerprint_sha256: leaf.fingerprint_sha256.clone(),
    }
}

fn connector_error<T: std::fmt::Debug>(result: Result<T, CallError>) -> ConnectorError {
    match result {
        Err(CallError::Connector { error, .. }) => error,
        other => panic!("expected a connector error, got {other:?}"),
    }
}

/// One file's bytes, modification time and inode.
type FileState = (Vec<u8>, SystemTime, u64);

impl World {
    fn test_counter(&self) -> PathBuf {
        self.counters.path().join("nginx-test")
    }

    fn reload_counter(&self) -> PathBuf {
        self.counters.path().join("nginx-reload")
    }

    /// `nginx-test` and `nginx-reload` of this nginx, each counted.
    fn actions(&self) -> BTreeMap<String, ActionSpec> {
        let timeout = Duration::from_secs(15);
        BTreeMap::from([
            (
                "nginx-test".to_string(),
                spec(
                    counted_argv(&self.test_counter(), &self.nginx.test_argv()),
                    timeout,
                ),
            ),
            (
                "nginx-reload".to_string(),
                spec(
                    counted_argv(&self.reload_counter(), &self.nginx.reload_argv()),
                    timeout,
                ),
            ),
        ])
    }

    /// `(test runs, reload runs)` so far.
    fn runs(&self) -> (usize, usize) {
        (runs(&self.test_counter()), runs(&self.reload_counter()))
    }

    fn config(&self, actions: BTreeMap<String, ActionSpec>) -> InstanceConfig {
        let mut config = InstanceConfig::new("nginx-1")
            .with_settings(json!({
                "directory": "/certs",
                "verify_host": "127.0.0.1",
                "verify_port": self.nginx.port(),
                "server_name": NAME,
            }))
            .unwrap()
            .with_dir(self.certs.path(), "/certs", true);
        config.grants.actions = actions;
        config
    }

    fn target(&self, actions: BTreeMap<String, ActionSpec>) -> PluginInstance {
        instance(&self.plugin, self.config(actions))
    }

    /// Every entry of the certificate directory (relative path, and for
    /// files their bytes, modification time and inode), sorted.
    fn files(&self) -> Vec<(PathBuf, Option<FileState>)> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<(PathBuf, Option<FileState>)>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let path = e.unwrap().path();
                let rel = path.strip_prefix(base).unwrap().to_path_buf();
                let meta = std::fs::metadata(&path).unwrap();
                if meta.is_dir() {
                    out.push((rel, None));
                    walk(base, &path, out);
                } else {
                    use std::os::unix::fs::MetadataExt;
                    let bytes = std::fs::read(&path).unwrap();
                    out.push((rel, Some((bytes, meta.modified().unwrap(), meta.ino()))));
                }
            }
        }
        let mut out = Vec::new();
        walk(self.certs.path(), self.certs.path(), &mut out);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn names(&self) -> Vec<String> {
        self.files()
            .into_iter()
            .map(|(p, _)| p.display().to_string())
            .collect()
    }

    fn served(&self) -> String {
        self.nginx
            .served_fingerprint(NAME)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.nginx.logs()))
    }

    fn wait_served(&self, leaf: &Leaf) {
        self.nginx
            .wait_for_fingerprint(NAME, &leaf.fingerprint_sha256, RELOAD_WAIT)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.nginx.logs()));
    }
}

/// SHA-256 fingerprints of the certificates in a PEM file, in order.
fn fingerprints(path: &Path) -> Vec<String> {
    use sha2::Digest;
    let text = std::fs::read(path).unwrap();
    x509_parser::pem::Pem::iter_from_buffer(&text)
        .map(|p| p.unwrap())
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| hex::encode(sha2::Sha256::digest(&p.contents)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_serves_the_new_leaf_and_a_repeat_changes_nothing() {
    let w = world().await;
    let target = w.target(w.actions());
    target.validate_config().await.unwrap();

    let second = leaf(&[NAME]);
    let result = target
        .deploy(&bundle(&second), &second.key_pem, "{}")
        .await
        .unwrap();
    assert_eq!(
        result.changed,
        [
            "wrote /certs/web-1/privkey.pem",
            "wrote /certs/web-1/fullchain.pem",
            "reloaded nginx (nginx-reload)"
        ]
    );
    let verify = result.verify_at.expect("verify-at");
    assert_eq!(
        (
            verify.host.as_str(),
            verify.port,
            verify.server_name.as_str()
        ),
        ("127.0.0.1", w.nginx.port(), NAME)
    );
    w.wait_served(&second);
    assert_eq!(w.runs(), (1, 1));
    assert_eq!(w.nginx.reloads(), 1, "{}", w.nginx.error_log());

    // The same bundle again: nothing rewritten, nothing run.
    let before = w.files();
    let result = target
        .deploy(&bundle(&second), &second.key_pem, "{}")
        .await
        .unwrap();
    assert!(result.changed.is_empty(), "{:?}", result.changed);
    assert_eq!(w.runs(), (1, 1), "no test and no reload");
    assert_eq!(w.files(), before, "same bytes, times and inodes");
    assert_eq!(w.nginx.reloads(), 1);

    // A renewal replaces both files: the new leaf is served, and nothing
    // of the previous certificate or of the transaction is left.
    let third = leaf(&[NAME]);
    target
        .deploy(&bundle(&third), &third.key_pem, "{}")
        .await
        .unwrap();
    w.wait_served(&third);
    assert_eq!(w.runs(), (2, 2));
    assert_eq!(
        w.names(),
        ["web-1", "web-1/fullchain.pem", "web-1/privkey.pem"]
    );
    let dir = w.certs.path().join(ID);
    let mut expected = vec![third.fingerprint_sha256.clone()];
    expected.extend(third.chain_pem.iter().map(|c| {
        let (_, p) = x509_parser::pem::parse_x509_pem(c.as_bytes()).unwrap();
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&p.contents))
    }));
    assert_eq!(fingerprints(&dir.join("fullchain.pem")), expected);
    let key = std::fs::read_to_string(dir.join("privkey.pem")).unwrap();
    assert_eq!(key.trim(), third.key_pem.trim());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_certificate_is_refused_with_nginx_s_words_and_rolled_back() {
    let w = world().await;
    let target = w.target(w.actions());
    let before = w.files();
    let other = leaf(&[NAME]);

    // A key that does not fit the certificate: only nginx can tell.
    let err = connector_error(target.deploy(&bundle(&other), &w.first.key_pem, "{}").await);
    assert!(matches!(err, ConnectorError::Rejected(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("key values mismatch"), "{msg}");
    assert!(
        msg.contains("action nginx-test exited with status 1"),
        "{msg}"
    );
    assert_eq!(w.files(), before, "rolled back byte for byte");
    assert_eq!(w.runs(), (1, 0), "tested, never reloaded");

    // A key that is PEM but nothing nginx can load.
    let err = connector_error(target.deploy(&bundle(&other), GARBAGE_KEY, "{}").await);
    assert!(matches!(err, ConnectorError::Rejected(_)), "{err:?}");
    assert!(
        err.to_string().contains("PEM_read_bio_PrivateKey() failed"),
        "{err}"
    );
    assert_eq!(w.files(), before);
    assert_eq!(w.runs(), (2, 0));

    // A certificate that is no certificate: refused before nginx is asked
    // or any file touched.
    let garbage = CertificateBundle {
        certificate_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
        ..bundle(&other)
    };
    let err = connector_error(target.deploy(&garbage, &other.key_pem, "{}").await);
    assert!(matches!(err, ConnectorError::Rejected(_)), "{err:?}");
    assert!(err.to_string().contains("certificate-pem"), "{err}");
    assert_eq!(w.files(), before);
    assert_eq!(w.runs(), (2, 0));

    // Through all of it nginx kept serving the first certificate and was
    // never reloaded.
    assert_eq!(w.served(), w.first.fingerprint_sha256);
    assert_eq!(w.nginx.reloads(), 0, "{}", w.nginx.error_log());
    // And the good certificate still goes through afterwards.
    target
        .deploy(&bundle(&other), &other.key_pem, "{}")
        .await
        .unwrap();
    w.wait_served(&other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_must_be_granted_and_options_only_pick_among_them() {
    let w = world().await;
    let before = w.files();
    let second = leaf(&[NAME]);

    // Only the reload is granted.
    let mut only_reload = w.actions();
    only_reload.remove("nginx-test");
    let target = w.target(only_reload);
    let err = connector_error(target.validate_config().await);
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    assert!(err.to_string().contains("test action"), "{err}");
    assert!(err.to_string().contains("nginx-test"), "{err}");
    let err = connector_error(target.deploy(&bundle(&second), &second.key_pem, "{}").await);
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    let err = connector_error(target.remove(ID, "{}").await);
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    assert_eq!(w.files(), before);
    assert_eq!(w.runs(), (0, 0));

    // Without the directory grant.
    let mut config = w.config(w.actions());
    config.grants.directories.clear();
    let no_dir = instance(&w.plugin, config);
    let err = connector_error(no_dir.validate_config().await);
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    assert!(err.to_string().contains("/certs"), "{err}");
    let err = connector_error(no_dir.deploy(&bundle(&second), &second.key_pem, "{}").await);
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    assert_eq!(w.runs(), (0, 0));

    // Options name granted actions, never commands.
    let mut actions = w.actions();
    actions.insert(
        "always-fails".into(),
        spec(vec!["/bin/false".into()], Duration::from_secs(5)),
    );
    let target = w.target(actions);
    for options in [
        json!({"test_action": "nginx-test-2"}),
        json!({"reload_action": "/usr/sbin/nginx -s reload"}),
        json!({"reload_command": ["/usr/sbin/nginx", "-s", "reload"]}),
    ] {
        let err = connector_error(
            target
                .deploy(&bundle(&second), &second.key_pem, &options.to_string())
                .await,
        );
        assert!(
            matches!(err, ConnectorError::InvalidConfig(_)),
            "{options}: {err:?}"
        );
    }
    let err = connector_error(
        target
            .deploy(
                &bundle(&second),
                &second.key_pem,
                &json!({"test_action": "always-fails"}).to_string(),
            )
            .await,
    );
    assert!(matches!(err, ConnectorError::Rejected(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("action always-fails exited with status 1"),
        "{err}"
    );
    assert_eq!(w.files(), before);
    assert_eq!(w.runs(), (0, 0), "the settings' actions were not used");
    assert_eq!(w.served(), w.first.fingerprint_sha256);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_test_action_is_transient_and_rolled_back() {
    let w = world().await;
    let before = w.files();
    let mut actions = w.actions();
    actions.insert(
        "nginx-test".into(),
        spec(
            vec!["/bin/sleep".into(), "30".into()],
            Duration::from_secs(1),
        ),
    );
    let target = w.target(actions);
    let second = leaf(&[NAME]);
    let started = Instant::now();
    let err = connector_error(target.deploy(&bundle(&second), &second.key_pem, "{}").await);
    assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
    assert!(err.to_string().contains("killed"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(w.files(), before);
    assert_eq!(w.runs(), (0, 0));
    assert_eq!(w.served(), w.first.fingerprint_sha256);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_stopped_at_its_deadline_is_rolled_back_by_the_next_call() {
    let w = world().await;
    // The test action outlives the call: the runtime stops the call
    // between writing the files and reloading nginx.
    let mut actions = w.actions();
    actions.insert(
        "nginx-test".into(),
        spec(
            counted_argv(
                &w.test_counter(),
                &["/bin/sleep".to_string(), "30".to_string()],
            ),
            Duration::from_secs(30),
        ),
    );
    let stopped = instance(
        &w.plugin,
        w.config(actions).with_limits(Limits {
            deadline: Duration::from_secs(2),
            memory_bytes: 32 << 20,
        }),
    );
    let second = leaf(&[NAME]);
    let result = stopped
        .deploy(&bundle(&second), &second.key_pem, "{}")
        .await;
    assert!(
        matches!(result, Err(CallError::Deadline { .. })),
        "{result:?}"
    );
    assert_eq!(w.runs(), (1, 0));
    let names = w.names();
    assert!(
        names.contains(&".certplane-nginx-web-1.journal".to_string()),
        "{names:?}"
    );
    assert_eq!(w.served(), w.first.fingerprint_sha256, "never reloaded");

    // The same bundle again: the files already hold it, but nginx never
    // loaded them; the next call rolls back, writes, tests and reloads.
    let target = w.target(w.actions());
    let result = target
        .deploy(&bundle(&second), &second.key_pem, "{}")
        .await
        .unwrap();
    assert_eq!(
        result.changed[0], "rolled back an interrupted change",
        "{result:?}"
    );
    assert_eq!(
        result.changed.last().unwrap(),
        "reloaded nginx (nginx-reload)"
    );
    w.wait_served(&second);
    assert_eq!(
        w.names(),
        ["web-1", "web-1/fullchain.pem", "web-1/privkey.pem"]
    );
    assert!(
        target
            .deploy(&bundle(&second), &second.key_pem, "{}")
            .await
            .unwrap()
            .changed
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_waits_until_the_configuration_no_longer_names_the_files() {
    let w = world().await;
    let target = w.target(w.actions());
    let before = w.files();

    // The server block still names the files: nginx -t fails without
    // them, so they are put back.
    let err = connector_error(target.remove(ID, "{}").await);
    assert!(matches!(err, ConnectorError::Rejected(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("remove the server block"), "{msg}");
    assert!(msg.contains("cannot load certificate"), "{msg}");
    assert_eq!(w.files(), before);
    assert_eq!(w.runs(), (1, 0));
    assert_eq!(w.served(), w.first.fingerprint_sha256);

    // The operator drops the server block; then the files go.
    w.nginx.drop_tls_server();
    w.nginx
        .wait_until_closed(RELOAD_WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", w.nginx.logs()));
    let changed = target.remove(ID, "{}").await.unwrap();
    assert_eq!(
        changed,
        [
            "removed /certs/web-1/fullchain.pem",
            "removed /certs/web-1/privkey.pem",
            "removed /certs/web-1",
            "reloaded nginx (nginx-reload)"
        ]
    );
    assert!(w.names().is_empty(), "{:?}", w.names());
    assert_eq!(w.runs(), (2, 1));

    // Nothing left to remove: nothing runs.
    assert!(target.remove(ID, "{}").await.unwrap().is_empty());
    assert_eq!(w.runs(), (2, 1));
}
