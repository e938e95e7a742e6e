//! Native unit tests: settings, the planned file contents, and the whole
//! deploy / remove transaction against a scripted stand-in for nginx in a
//! temporary directory. The real nginx runs in
//! `runtime/tests/runtime/nginx.rs`.

use std::cell::RefCell;
use std::fs;
use std::path::{Path, PathBuf};

use certplane_sdk::actions::ActionOutput;

use super::*;
use crate::files::{self, Journal, JournalFile, journal_path};
use crate::txn::Actions;

const LEAF: &str = include_str!("../../sdk/testdata/leaf.pem");
const INTERMEDIATE: &str = include_str!("../../sdk/testdata/intermediate.pem");
const ROOT: &str = include_str!("../../sdk/testdata/root.pem");
/// A key block nginx would accept (the stand-in below checks only this).
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nAAEC\n-----END PRIVATE KEY-----\n";
const KEY2: &str = "-----BEGIN PRIVATE KEY-----\nAAED\n-----END PRIVATE KEY-----\n";
/// A key block the stand-in refuses, as nginx refuses a key that does not
/// fit the certificate.
const BAD_KEY: &str = "-----BEGIN PRIVATE KEY-----\nup8=\n-----END PRIVATE KEY-----\n";

fn settings(json: &str) -> Settings {
    Settings::from_json(json).unwrap()
}

fn bundle(id: &str, leaf: &str, chain: &[&str]) -> CertificateBundle {
    CertificateBundle {
        certificate_id: id.into(),
        dns_names: vec!["leaf.example.com".into()],
        certificate_pem: leaf.into(),
        chain_pem: chain.iter().map(|c| c.to_string()).collect(),
        fingerprint_sha256: pem::certificate_fingerprint_sha256(leaf).unwrap(),
    }
}

/// What the stand-in's test action does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TestMode {
    /// Like `nginx -t` for a server block naming the files: both must exist
    /// and the key must not be [`BAD_KEY`].
    Check,
    /// Like `nginx -t` once the server block is gone: always passes.
    Pass,
    /// Like an action killed at its timeout.
    Hang,
}

/// A scripted nginx: the actions it grants, how its test and reload
/// behave, every call in order, and what the files held at each test.
struct FakeNginx {
    base: PathBuf,
    files: (PathBuf, PathBuf),
    granted: Vec<&'static str>,
    test: TestMode,
    reload_fails: bool,
    calls: RefCell<Vec<String>>,
    seen_at_test: RefCell<Vec<Option<Vec<u8>>>>,
}

impl FakeNginx {
    fn new(base: &Path) -> FakeNginx {
        FakeNginx {
            base: base.to_path_buf(),
            files: ("web/fullchain.pem".into(), "web/privkey.pem".into()),
            granted: vec!["nginx-test", "nginx-reload", "other-test"],
            test: TestMode::Check,
            reload_fails: false,
            calls: RefCell::new(Vec::new()),
            seen_at_test: RefCell::new(Vec::new()),
        }
    }

    fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    fn check(&self) -> ActionOutput {
        let cert = fs::read(self.base.join(&self.files.0)).ok();
        let key = fs::read(self.base.join(&self.files.1)).ok();
        self.seen_at_test.borrow_mut().push(cert.clone());
        let fail = |stderr: String| ActionOutput {
            exit_code: Some(1),
            stdout: String::new(),
            stderr,
        };
        match (cert, key) {
            (None, _) | (_, None) => {
                fail("nginx: [emerg] cannot load certificate: No such file or directory\n".into())
            }
            (_, Some(k)) if k == BAD_KEY.as_bytes() => fail(
                "nginx: [emerg] SSL_CTX_use_PrivateKey() failed (SSL: key values mismatch)\n\
                 nginx: configuration file /etc/nginx/nginx.conf test failed\n"
                    .into(),
            ),
            _ => ActionOutput {
                exit_code: Some(0),
                stdout: String::new(),
                stderr: "nginx: configuration file /etc/nginx/nginx.conf test is successful\n"
                    .into(),
            },
        }
    }
}

impl Actions for FakeNginx {
    fn granted(&self, name: &str) -> bool {
        self.granted.contains(&name)
    }

    fn run(&self, name: &str) -> Result<ActionOutput, ConnectorError> {
        assert!(self.granted(name), "ran ungranted {name}");
        self.calls.borrow_mut().push(name.to_string());
        let ok = ActionOutput {
            exit_code: Some(0),
            stdout: String::new(),
            stderr: String::new(),
        };
        match name {
            "nginx-test" => match self.test {
                TestMode::Check => Ok(self.check()),
                TestMode::Pass => Ok(ok),
                TestMode::Hang => Err(ConnectorError::transient(
                    "action nginx-test was killed after 1s (its timeout or the call's deadline)",
                )),
            },
            "other-test" => Ok(ActionOutput {
                exit_code: Some(3),
                stdout: "other test says no\n".into(),
                stderr: String::new(),
            }),
            "nginx-reload" if self.reload_fails => Ok(ActionOutput {
                exit_code: Some(1),
                stdout: String::new(),
                stderr: "nginx: [error] open() \"/run/nginx.pid\" failed (2: No such file or \
                         directory)\n"
                    .into(),
            }),
            _ => Ok(ok),
        }
    }
}

fn names() -> ActionNames {
    settings("{}").action_names(&Options::default())
}

fn plan(b: &CertificateBundle, key: &str) -> Vec<Planned> {
    let (cert, keyf) = settings("{}").paths(&b.certificate_id).unwrap();
    planned_files(b, key, &cert, &keyf).unwrap()
}

/// A file's bytes, modification time, inode and mode.
type FileState = (Vec<u8>, std::time::SystemTime, u64, u32);

/// Every entry under `dir` (files with their [`FileState`]), sorted.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Option<FileState>)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.push((p.clone(), None));
            out.extend(snapshot(&p));
        } else {
            let meta = fs::metadata(&p).unwrap();
            let state = (
                fs::read(&p).unwrap(),
                meta.modified().unwrap(),
                meta.ino(),
                meta.mode(),
            );
            out.push((p.clone(), Some(state)));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn bytes_of(snapshot: &[(PathBuf, Option<FileState>)]) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    snapshot
        .iter()
        .map(|(p, s)| (p.clone(), s.as_ref().map(|s| s.0.clone())))
        .collect()
}

fn deploy(
    base: &Path,
    nginx: &FakeNginx,
    b: &CertificateBundle,
    key: &str,
) -> Result<Vec<String>, ConnectorError> {
    txn::deploy(base, &b.certificate_id, &plan(b, key), &names(), nginx)
}

fn remove(base: &Path, nginx: &FakeNginx, id: &str) -> Result<Vec<String>, ConnectorError> {
    let rels = [
        PathBuf::from(format!("{id}/fullchain.pem")),
        PathBuf::from(format!("{id}/privkey.pem")),
    ];
    txn::remove(base, id, &rels, &names(), nginx)
}

#[test]
fn settings_defaults_and_checks() {
    let d = settings("{}");
    assert_eq!(d.directory, "/certs");
    assert_eq!(
        (d.cert_file.as_str(), d.key_file.as_str()),
        ("<id>/fullchain.pem", "<id>/privkey.pem")
    );
    assert_eq!(
        d.action_names(&Options::default()),
        ActionNames {
            test: "nginx-test".into(),
            reload: "nginx-reload".into()
        }
    );
    assert_eq!(
        d.paths("web").unwrap(),
        ("web/fullchain.pem".into(), "web/privkey.pem".into())
    );
    assert!(d.endpoint(&["a.example".into()]).is_none());
    assert_eq!(d.paths("Web/..").unwrap_err().kind(), "rejected");

    for bad in [
        r#"{"directory":" "}"#,
        r#"{"cert_file":"/etc/nginx/<id>.pem"}"#,
        r#"{"key_file":"../<id>.key"}"#,
        r#"{"test_action":"Nginx Test"}"#,
        r#"{"reload_action":""}"#,
        r#"{"verify_port":443}"#,
        r#"{"server_name":"x"}"#,
        r#"{"verify_host":"h","verify_port":0}"#,
        r#"{"reload":"nginx-reload"}"#,
    ] {
        let e = Settings::from_json(bad).unwrap_err();
        assert_eq!(e.kind(), "invalid-config", "{bad}: {e:?}");
    }

    let v = settings(r#"{"verify_host":"127.0.0.1","cert_file":"<id>.pem","key_file":"<id>.pem"}"#);
    let e = v.endpoint(&["www.example.com".into()]).unwrap();
    assert_eq!(
        (e.host.as_str(), e.port, e.server_name.as_str()),
        ("127.0.0.1", 443, "www.example.com")
    );
    assert_eq!(
        v.paths("api").unwrap(),
        ("api.pem".into(), "api.pem".into())
    );
    let v = settings(r#"{"verify_host":"lb","verify_port":8443,"server_name":"sni.example"}"#);
    let e = v.endpoint(&[]).unwrap();
    assert_eq!((e.port, e.server_name.as_str()), (8443, "sni.example"));
}

#[test]
fn options_name_other_actions_only() {
    let s = settings(r#"{"test_action":"t1"}"#);
    assert_eq!(Options::from_json("").unwrap(), Options::default());
    assert_eq!(Options::from_json("{}").unwrap(), Options::default());
    let o = Options::from_json(r#"{"reload_action":"reload-blue"}"#).unwrap();
    assert_eq!(
        s.action_names(&o),
        ActionNames {
            test: "t1".into(),
            reload: "reload-blue".into()
        }
    );
    for bad in [
        r#"{"reload_command":"/usr/sbin/nginx -s reload"}"#,
        r#"{"test_action":"/usr/sbin/nginx -t"}"#,
        r#"{"test_action":7}"#,
        "[1]",
        "not json",
    ] {
        let e = Options::from_json(bad).unwrap_err();
        assert_eq!(e.kind(), "invalid-config", "{bad}: {e:?}");
    }
}

#[test]
fn planned_files_hold_the_full_chain_and_the_key() {
    let b = bundle("web", LEAF, &[INTERMEDIATE]);
    let planned = plan(&b, KEY);
    assert_eq!(planned.len(), 2);
    assert_eq!(planned[0].rel, PathBuf::from("web/privkey.pem"));
    assert_eq!(planned[0].contents, KEY.as_bytes());
    assert_eq!(planned[1].rel, PathBuf::from("web/fullchain.pem"));
    let fullchain = String::from_utf8(planned[1].contents.clone()).unwrap();
    assert!(pem::same_blocks(
        &fullchain,
        &format!("{LEAF}{INTERMEDIATE}")
    ));
    assert_eq!(
        pem::certificate_fingerprint_sha256(&fullchain).unwrap(),
        b.fingerprint_sha256,
        "the leaf comes first"
    );

    // One file for both: the key, then the full chain.
    let one = planned_files(&b, KEY, Path::new("web.pem"), Path::new("web.pem")).unwrap();
    assert_eq!(one.len(), 1);
    let text = String::from_utf8(one[0].contents.clone()).unwrap();
    assert!(text.starts_with(KEY), "{text}");
    assert!(text.ends_with(&fullchain), "{text}");

    // What the connector can tell without nginx is refused before any
    // file is touched.
    let garbage = CertificateBundle {
        certificate_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
        ..b.clone()
    };
    let wrong_fp = CertificateBundle {
        fingerprint_sha256: "00".repeat(32),
        ..b.clone()
    };
    let bad_chain = CertificateBundle {
        chain_pem: vec!["junk".into()],
        ..b.clone()
    };
    for (what, bb, key) in [
        ("garbage certificate", &garbage, KEY),
        ("fingerprint", &wrong_fp, KEY),
        ("chain", &bad_chain, KEY),
        ("no key", &b, LEAF),
        ("key not PEM", &b, "secret"),
    ] {
        let e = planned_files(bb, key, Path::new("c"), Path::new("k")).unwrap_err();
        assert_eq!(e.kind(), "rejected", "{what}: {e:?}");
    }
}

#[test]
fn deploy_tests_then_reloads_and_a_repeat_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let nginx = FakeNginx::new(base);
    let b = bundle("web", LEAF, &[INTERMEDIATE]);
    let changed = deploy(base, &nginx, &b, KEY).unwrap();
    assert_eq!(changed.len(), 3, "{changed:?}");
    assert!(changed[2].starts_with("reloaded nginx"), "{changed:?}");
    assert_eq!(nginx.calls(), ["nginx-test", "nginx-reload"]);
    // The test saw the new files already in place.
    let fullchain = fs::read(base.join("web/fullchain.pem")).unwrap();
    assert_eq!(
        nginx.seen_at_test.borrow()[0].as_deref(),
        Some(&fullchain[..])
    );
    assert_eq!(
        fs::read(base.join("web/privkey.pem")).unwrap(),
        KEY.as_bytes()
    );
    assert!(!journal_path(base, "web").exists());

    let before = snapshot(base);
    assert!(deploy(base, &nginx, &b, KEY).unwrap().is_empty());
    assert_eq!(nginx.calls().len(), 2, "no test, no reload the second time");
    assert_eq!(snapshot(base), before);

    // A renewal replaces both files; nothing stale or temporary remains.
    let b2 = bundle("web", INTERMEDIATE, &[ROOT]);
    let changed = deploy(base, &nginx, &b2, KEY2).unwrap();
    assert_eq!(changed.len(), 3, "{changed:?}");
    assert_eq!(nginx.calls().len(), 4);
    let names: Vec<_> = snapshot(base).into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        names,
        [
            base.join("web"),
            base.join("web/fullchain.pem"),
            base.join("web/privkey.pem")
        ]
    );
    assert_eq!(
        fs::read(base.join("web/privkey.pem")).unwrap(),
        KEY2.as_bytes()
    );
    let text = fs::read_to_string(base.join("web/fullchain.pem")).unwrap();
    assert!(pem::same_blocks(&text, &format!("{INTERMEDIATE}{ROOT}")));
}

#[test]
fn a_refused_test_brings_back_the_very_same_files() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let nginx = FakeNginx::new(base);
    // Files the operator put there, with bytes the connector would never
    // write (CRLF, a comment): they must come back exactly.
    fs::create_dir(base.join("web")).unwrap();
    fs::write(base.join("web/fullchain.pem"), format!("# old\r\n{LEAF}")).unwrap();
    fs::write(base.join("web/privkey.pem"), "old key\r\n").unwrap();
    // A mode the connector could not set again (WASI sets none).
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::Permissions::from_mode(0o600);
        fs::set_permissions(base.join("web/privkey.pem"), mode).unwrap();
    }
    let before = snapshot(base);

    let b = bundle("web", INTERMEDIATE, &[ROOT]);
    let e = deploy(base, &nginx, &b, BAD_KEY).unwrap_err();
    assert_eq!(e.kind(), "rejected", "{e:?}");
    assert!(e.message().contains("key values mismatch"), "{e:?}");
    assert!(
        e.message()
            .contains("action nginx-test exited with status 1"),
        "{e:?}"
    );
    assert_eq!(
        nginx.calls(),
        ["nginx-test"],
        "no reload after a failed test"
    );
    assert_eq!(snapshot(base), before);
}

#[test]
fn a_refused_first_deploy_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    fs::write(base.join("unrelated.conf"), "keep").unwrap();
    let before = snapshot(base);
    let nginx = FakeNginx::new(base);
    let e = deploy(base, &nginx, &bundle("web", LEAF, &[]), BAD_KEY).unwrap_err();
    assert_eq!(e.kind(), "rejected", "{e:?}");
    assert_eq!(
        snapshot(base),
        before,
        "files and the created directory are gone"
    );
}

#[test]
fn a_hanging_test_or_a_failed_reload_restores_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let mut nginx = FakeNginx::new(base);
    deploy(base, &nginx, &bundle("web", LEAF, &[INTERMEDIATE]), KEY).unwrap();
    let before = snapshot(base);
    let b2 = bundle("web", INTERMEDIATE, &[ROOT]);

    nginx.test = TestMode::Hang;
    let e = deploy(base, &nginx, &b2, KEY2).unwrap_err();
    assert_eq!(e.kind(), "transient", "{e:?}");
    assert_eq!(snapshot(base), before);

    nginx.test = TestMode::Check;
    nginx.reload_fails = true;
    let e = deploy(base, &nginx, &b2, KEY2).unwrap_err();
    assert_eq!(e.kind(), "transient", "{e:?}");
    assert!(e.message().contains("nginx.pid"), "{e:?}");
    assert_eq!(snapshot(base), before);

    // The retry does it all again, since the files are the old ones.
    nginx.reload_fails = false;
    let calls = nginx.calls().len();
    assert_eq!(deploy(base, &nginx, &b2, KEY2).unwrap().len(), 3);
    assert_eq!(nginx.calls()[calls..], ["nginx-test", "nginx-reload"]);
}

#[test]
fn ungranted_actions_are_invalid_config_before_any_file_is_touched() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let mut nginx = FakeNginx::new(base);
    nginx.granted = vec!["nginx-reload"];
    let e = deploy(base, &nginx, &bundle("web", LEAF, &[]), KEY).unwrap_err();
    assert_eq!(e.kind(), "invalid-config", "{e:?}");
    assert!(e.message().contains("\"nginx-test\""), "{e:?}");
    assert!(snapshot(base).is_empty());
    let e = remove(base, &nginx, "web").unwrap_err();
    assert_eq!(e.kind(), "invalid-config", "{e:?}");
    assert!(nginx.calls().is_empty());
}

#[test]
fn a_directory_that_is_not_there_is_invalid_config() {
    let tmp = tempfile::tempdir().unwrap();
    let nginx = FakeNginx::new(tmp.path());
    let missing = tmp.path().join("missing");
    let e = deploy(&missing, &nginx, &bundle("web", LEAF, &[]), KEY).unwrap_err();
    assert_eq!(e.kind(), "invalid-config", "{e:?}");
    assert!(e.message().contains("must grant"), "{e:?}");
    let e = remove(&missing, &nginx, "web").unwrap_err();
    assert_eq!(e.kind(), "invalid-config", "{e:?}");
    fs::write(&missing, "a file").unwrap();
    let e = deploy(&missing, &nginx, &bundle("web", LEAF, &[]), KEY).unwrap_err();
    assert_eq!(e.kind(), "invalid-config", "{e:?}");
    assert!(nginx.calls().is_empty());
}

#[test]
fn options_pick_another_granted_test_action() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let nginx = FakeNginx::new(base);
    let o = Options::from_json(r#"{"test_action":"other-test"}"#).unwrap();
    let names = settings("{}").action_names(&o);
    let b = bundle("web", LEAF, &[]);
    let e = txn::deploy(base, "web", &plan(&b, KEY), &names, &nginx).unwrap_err();
    assert_eq!(e.kind(), "rejected", "{e:?}");
    assert!(e.message().contains("other test says no"), "{e:?}");
    assert_eq!(nginx.calls(), ["other-test"]);
    assert!(snapshot(base).is_empty());
}

/// What a deploy stopped at its deadline right after writing leaves: the
/// pending journal, the backups and the new files.
fn interrupt(base: &Path, id: &str, planned: &[Planned]) {
    let journal = Journal {
        committed: false,
        files: planned
            .iter()
            .map(|p| JournalFile {
                rel: p.rel.clone(),
                existed: base.join(&p.rel).exists(),
            })
            .collect(),
        created_dirs: vec![],
    };
    journal.write(base, id).unwrap();
    for (p, f) in planned.iter().zip(&journal.files) {
        files::replace(&base.join(&p.rel), &p.contents, f.existed).unwrap();
    }
}

#[test]
fn an_interrupted_deploy_is_rolled_back_and_then_reloaded() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let nginx = FakeNginx::new(base);
    let old = bundle("web", LEAF, &[INTERMEDIATE]);
    deploy(base, &nginx, &old, KEY).unwrap();
    let confirmed = snapshot(base);

    let new = bundle("web", INTERMEDIATE, &[ROOT]);
    interrupt(base, "web", &plan(&new, KEY2));
    assert_ne!(snapshot(base), confirmed);

    // The same bundle again: the files already match, yet nginx may never
    // have loaded them, so it is tested and reloaded.
    let calls = nginx.calls().len();
    let changed = deploy(base, &nginx, &new, KEY2).unwrap();
    assert_eq!(
        changed[0], "rolled back an interrupted change",
        "{changed:?}"
    );
    assert!(
        changed.last().unwrap().starts_with("reloaded"),
        "{changed:?}"
    );
    assert_eq!(nginx.calls()[calls..], ["nginx-test", "nginx-reload"]);
    assert!(!journal_path(base, "web").exists());
    assert!(deploy(base, &nginx, &new, KEY2).unwrap().is_empty());
    let confirmed = snapshot(base);

    // An interrupted broken change, then that change refused: the very
    // files nginx last accepted come back.
    interrupt(base, "web", &plan(&old, BAD_KEY));
    let e = deploy(base, &nginx, &old, BAD_KEY).unwrap_err();
    assert_eq!(e.kind(), "rejected", "{e:?}");
    assert_eq!(snapshot(base), confirmed);

    // An interrupted first deploy, then a remove: the files it wrote go,
    // and with nothing left there is nothing to test or reload.
    let tmp = tempfile::tempdir().unwrap();
    let fresh = tmp.path();
    fs::create_dir(fresh.join("web")).unwrap();
    interrupt(fresh, "web", &plan(&old, KEY));
    let fresh_nginx = FakeNginx::new(fresh);
    let changed = remove(fresh, &fresh_nginx, "web").unwrap();
    assert_eq!(
        changed[0], "rolled back an interrupted change",
        "{changed:?}"
    );
    assert_eq!(snapshot(fresh), [(fresh.join("web"), None)]);
    assert!(fresh_nginx.calls().is_empty());
}

#[test]
fn a_committed_journal_is_only_cleaned_up() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let nginx = FakeNginx::new(base);
    let old = bundle("web", LEAF, &[INTERMEDIATE]);
    deploy(base, &nginx, &old, KEY).unwrap();
    // Stopped after nginx reloaded and the journal was marked committed.
    let new = bundle("web", INTERMEDIATE, &[ROOT]);
    interrupt(base, "web", &plan(&new, KEY2));
    let mut journal = Journal::read(base, "web").unwrap().unwrap();
    journal.committed = true;
    journal.write(base, "web").unwrap();

    let calls = nginx.calls().len();
    assert!(deploy(base, &nginx, &new, KEY2).unwrap().is_empty());
    assert_eq!(nginx.calls().len(), calls, "nothing to test or reload");
    let names: Vec<_> = snapshot(base).into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        names,
        [
            base.join("web"),
            base.join("web/fullchain.pem"),
            base.join("web/privkey.pem")
        ]
    );
}

#[test]
fn remove_deletes_tests_and_reloads_or_puts_the_files_back() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let mut nginx = FakeNginx::new(base);
    fs::write(base.join("other.pem"), "keep").unwrap();
    deploy(base, &nginx, &bundle("web", LEAF, &[INTERMEDIATE]), KEY).unwrap();
    let before = snapshot(base);

    // The server block still names the files: nginx -t fails without them.
    let e = remove(base, &nginx, "web").unwrap_err();
    assert_eq!(e.kind(), "rejected", "{e:?}");
    assert!(e.message().contains("server block"), "{e:?}");
    assert!(e.message().contains("cannot load certificate"), "{e:?}");
    assert_eq!(snapshot(base), before);
    assert_eq!(nginx.calls()[2..], ["nginx-test"]);

    // A failed reload puts them back too.
    nginx.test = TestMode::Pass;
    nginx.reload_fails = true;
    let e = remove(base, &nginx, "web").unwrap_err();
    assert_eq!(e.kind(), "transient", "{e:?}");
    assert_eq!(snapshot(base), before);

    // Once the configuration no longer names them they go, with their
    // directory.
    nginx.reload_fails = false;
    let changed = remove(base, &nginx, "web").unwrap();
    assert_eq!(
        changed.len(),
        4,
        "2 files, 1 directory, the reload: {changed:?}"
    );
    assert_eq!(
        bytes_of(&snapshot(base)),
        [(base.join("other.pem"), Some(b"keep".to_vec()))]
    );

    // Nothing to remove: no test, no reload.
    let calls = nginx.calls().len();
    assert!(remove(base, &nginx, "web").unwrap().is_empty());
    assert!(remove(base, &nginx, "never-deployed").unwrap().is_empty());
    assert_eq!(nginx.calls().len(), calls);
}

#[test]
fn describe_matches_the_manifest() {
    let info = Nginx::describe();
    assert_eq!(info.name, NAME);
    let schema: serde_json::Value = serde_json::from_str(&info.settings_schema).unwrap();
    // Every setting the schema knows deserializes, and nothing else does.
    for key in schema["properties"].as_object().unwrap().keys() {
        assert!(
            [
                "directory",
                "cert_file",
                "key_file",
                "test_action",
                "reload_action",
                "verify_host",
                "verify_port",
                "server_name"
            ]
            .contains(&key.as_str()),
            "{key}"
        );
    }
    let manifest = include_str!("../plugin.toml");
    assert!(manifest.contains("name = \"nginx\""));
    assert!(manifest.contains("kind = \"target\""));
    assert!(manifest.contains("world = \"1.1.0\""));
    assert!(manifest.contains("filesystem = \"read-write\""));
    let version = format!("version = \"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(
        manifest.contains(&version),
        "plugin.toml must say {version}"
    );
}
