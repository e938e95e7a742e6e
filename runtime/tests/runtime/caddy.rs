//! The `caddy` connector on the real runtime against a real Caddy 2
//! (`certplane_testkit::caddy`, one per test), granted only Caddy's admin
//! address (and, in files mode, one directory). What Caddy serves is
//! checked with a TLS handshake on its HTTPS port, whose connection policy
//! selects certificates by the `certplane` tag.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use certplane_runtime::harness::Harness;
use certplane_runtime::target::{CertificateBundle, DeployResult};
use certplane_runtime::{CallError, ConnectorError, InstanceConfig, Plugin, PluginInstance};
use certplane_testkit::caddy::{AdminProxy, Caddy, Proxied, ProxyAction, fingerprint_sha256};
use serde_json::{Value, json};

use crate::common::{instance, load};

const WWW: &str = "www.example.test";
const API: &str = "api.example.test";
/// The guest path of the granted directory in files mode.
const GUEST_DIR: &str = "/caddy-certs";

/// A leaf and its key, issued by a fresh test CA.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    chain_pem: Vec<String>,
    fingerprint: String,
}

fn leaf(names: &[&str]) -> Leaf {
    let (ca_pem, ca_key_pem) = certplane_testkit::test_ca();
    let ca_key = rcgen::KeyPair::from_pem(&ca_key_pem).unwrap();
    // Rebuilt from its PEM the CA has the same subject and key, so the
    // leaf chains to `ca_pem`.
    let ca = rcgen::CertificateParams::from_ca_cert_pem(&ca_pem)
        .unwrap()
        .self_signed(&ca_key)
        .unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        chain_pem: vec![ca_pem],
        fingerprint: fingerprint_sha256(cert.der()),
    }
}

fn bundle(id: &str, leaf: &Leaf, name: &str) -> CertificateBundle {
    CertificateBundle {
        certificate_id: id.into(),
        dns_names: vec![name.into()],
        certificate_pem: leaf.cert_pem.clone(),
        chain_pem: leaf.chain_pem.clone(),
        fingerprint_sha256: leaf.fingerprint.clone(),
    }
}

async fn plugin() -> (Harness, Arc<Plugin>) {
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "caddy").await;
    (harness, plugin)
}

/// An API-mode instance for `admin_url`, granted `grant` only.
fn api_instance(plugin: &Arc<Plugin>, admin_url: &str, grant: &str) -> PluginInstance {
    instance(
        plugin,
        InstanceConfig::new("caddy-api")
            .with_settings(
                json!({"admin_url": admin_url, "verify_host": "127.0.0.1", "verify_port": 8443}),
            )
            .unwrap()
            .with_hosts(&[grant])
            .unwrap(),
    )
}

/// A files-mode instance granted Caddy's admin address and `dir`.
fn files_instance(plugin: &Arc<Plugin>, caddy: &Caddy, dir: &Path) -> PluginInstance {
    instance(
        plugin,
        InstanceConfig::new("caddy-files")
            .with_settings(
                json!({"admin_url": caddy.admin_url(), "mode": "files", "directory": GUEST_DIR}),
            )
            .unwrap()
            .with_hosts(&[caddy.grant()])
            .unwrap()
            .with_dir(dir, GUEST_DIR, true),
    )
}

fn connector_error<T: std::fmt::Debug>(result: Result<T, CallError>) -> ConnectorError {
    match result {
        Err(CallError::Connector { error, .. }) => error,
        other => panic!("expected a connector error, got {other:?}"),
    }
}

/// Deploys `leaf` for `name` as certificate `id` through `target`, which
/// must succeed.
async fn deploy(target: &PluginInstance, id: &str, leaf: &Leaf, name: &str) -> DeployResult {
    target
        .deploy(&bundle(id, leaf, name), &leaf.key_pem, "{}")
        .await
        .unwrap()
}

/// The leaf Caddy presents for `name`. A handshake that fails is tried
/// again for a moment: while Caddy swaps in a new configuration, a
/// connection the outgoing server accepted can end in an `InternalError`
/// alert even though the admin API has already answered. A leaf that
/// differs is returned at once, so callers still see what is served.
fn served(caddy: &Caddy, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match caddy.served_fingerprint(name) {
            Ok(fingerprint) => return fingerprint,
            Err(e) if Instant::now() > deadline => panic!("{e}\n{}", caddy.log()),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_mode_deploys_replaces_and_removes() {
    let caddy = Caddy::start();
    let (_h, plugin) = plugin().await;
    let target = api_instance(&plugin, &caddy.admin_url(), &caddy.grant());
    target.validate_config().await.unwrap();

    // A first certificate: added to a configuration without certificates.
    assert_eq!(caddy.certificates(), Value::Null);
    let a = leaf(&[WWW]);
    let result = deploy(&target, "web", &a, WWW).await;
    assert_eq!(
        result.changed,
        ["caddy: added load_pem entry (certplane:web)"]
    );
    let verify = result.verify_at.unwrap();
    assert_eq!(
        (
            verify.host.as_str(),
            verify.port,
            verify.server_name.as_str()
        ),
        ("127.0.0.1", 8443, WWW)
    );
    assert_eq!(served(&caddy, WWW), a.fingerprint);
    let entries = caddy.entries_tagged("load_pem", "certplane:web");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["tags"], json!(["certplane", "certplane:web"]));
    assert!(
        entries[0]["certificate"]
            .as_str()
            .unwrap()
            .starts_with(&a.cert_pem[..40])
    );

    // The same again: nothing written, the configuration as it was.
    let before = caddy.config();
    let again = deploy(&target, "web", &a, WWW).await;
    assert!(again.changed.is_empty(), "{:?}", again.changed);
    assert_eq!(caddy.config(), before);

    // A renewal of the same certificate id replaces its entry in place.
    let b = leaf(&[WWW]);
    let result = deploy(&target, "web", &b, WWW).await;
    assert_eq!(
        result.changed,
        ["caddy: replaced load_pem[0] (certplane:web)"]
    );
    assert_eq!(served(&caddy, WWW), b.fingerprint);
    assert_eq!(caddy.entries_tagged("load_pem", "certplane:web").len(), 1);
    assert_eq!(
        caddy.certificates()["load_pem"].as_array().unwrap().len(),
        1
    );

    // A second certificate id coexists.
    let c = leaf(&[API]);
    let result = deploy(&target, "api", &c, API).await;
    assert_eq!(
        result.changed,
        ["caddy: added load_pem entry (certplane:api)"]
    );
    assert_eq!(served(&caddy, API), c.fingerprint);
    assert_eq!(served(&caddy, WWW), b.fingerprint);

    // Removing one leaves the other.
    let removed = target.remove("web", "{}").await.unwrap();
    assert_eq!(removed, ["caddy: removed load_pem[0] (certplane:web)"]);
    assert!(caddy.entries_tagged("load_pem", "certplane:web").is_empty());
    assert_eq!(caddy.entries_tagged("load_pem", "certplane:api").len(), 1);
    assert_ne!(served(&caddy, WWW), b.fingerprint);
    assert_eq!(served(&caddy, API), c.fingerprint);
    // Absent: not an error, nothing changed.
    assert!(target.remove("web", "{}").await.unwrap().is_empty());
    assert!(
        target
            .remove("never-deployed", "{}")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_mode_deploys_replaces_and_removes() {
    let caddy = Caddy::start();
    let (_h, plugin) = plugin().await;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().canonicalize().unwrap();
    let target = files_instance(&plugin, &caddy, &base);
    target.validate_config().await.unwrap();

    let a = leaf(&[WWW]);
    let result = deploy(&target, "web", &a, WWW).await;
    let fullchain = base.join("web/fullchain.pem");
    let privkey = base.join("web/privkey.pem");
    assert_eq!(
        result.changed,
        [
            format!("wrote {}", privkey.display()),
            format!("wrote {}", fullchain.display()),
            "caddy: added load_files entry (certplane:web)".to_string(),
        ]
    );
    assert!(result.verify_at.is_none());
    assert_eq!(served(&caddy, WWW), a.fingerprint);
    assert_eq!(
        std::fs::read_to_string(&fullchain).unwrap(),
        format!("{}{}", a.cert_pem, a.chain_pem[0])
    );
    assert_eq!(std::fs::read_to_string(&privkey).unwrap(), a.key_pem);
    // The entry names the real paths, and the leaf it was told to load.
    let entries = caddy.entries_tagged("load_files", "certplane:web");
    assert_eq!(
        entries,
        [json!({
            "certificate": fullchain.display().to_string(),
            "key": privkey.display().to_string(),
            "format": "pem",
            "tags": ["certplane", "certplane:web", format!("certplane:sha256:{}", a.fingerprint)],
        })]
    );

    // The same again: no file rewritten, no configuration change.
    let before = caddy.config();
    let modified = std::fs::metadata(&fullchain).unwrap().modified().unwrap();
    let again = deploy(&target, "web", &a, WWW).await;
    assert!(again.changed.is_empty(), "{:?}", again.changed);
    assert_eq!(caddy.config(), before);
    assert_eq!(
        std::fs::metadata(&fullchain).unwrap().modified().unwrap(),
        modified
    );

    // A renewal: both files rewritten, the entry replaced, the new leaf served.
    let b = leaf(&[WWW]);
    let result = deploy(&target, "web", &b, WWW).await;
    assert_eq!(result.changed.len(), 3, "{:?}", result.changed);
    assert_eq!(
        result.changed[2],
        "caddy: replaced load_files[0] (certplane:web)"
    );
    assert_eq!(served(&caddy, WWW), b.fingerprint);
    assert_eq!(caddy.entries_tagged("load_files", "certplane:web").len(), 1);

    // A second certificate id coexists.
    let c = leaf(&[API]);
    deploy(&target, "api", &c, API).await;
    assert_eq!(served(&caddy, API), c.fingerprint);
    assert_eq!(served(&caddy, WWW), b.fingerprint);

    // Removing one: its entry, files and directory go; the other stays.
    let removed = target.remove("web", "{}").await.unwrap();
    assert_eq!(
        removed,
        [
            "caddy: removed load_files[0] (certplane:web)".to_string(),
            format!("removed {}", fullchain.display()),
            format!("removed {}", privkey.display()),
            format!("removed {}", base.join("web").display()),
        ]
    );
    assert!(
        caddy
            .entries_tagged("load_files", "certplane:web")
            .is_empty()
    );
    assert!(!base.join("web").exists());
    assert!(base.join("api/fullchain.pem").exists());
    assert_eq!(served(&caddy, API), c.fingerprint);
    assert!(target.remove("web", "{}").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_mode_reloads_caddy_when_only_the_files_changed() {
    let caddy = Caddy::start();
    let (_h, plugin) = plugin().await;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().canonicalize().unwrap();
    let target = files_instance(&plugin, &caddy, &base);
    let a = leaf(&[WWW]);
    deploy(&target, "web", &a, WWW).await;

    // Someone else puts another pair into the files and makes Caddy load
    // them: the entry (and its fingerprint tag) still says `a`.
    let stray = leaf(&[WWW]);
    std::fs::write(
        base.join("web/fullchain.pem"),
        format!("{}{}", stray.cert_pem, stray.chain_pem[0]),
    )
    .unwrap();
    std::fs::write(base.join("web/privkey.pem"), &stray.key_pem).unwrap();
    let config = caddy.config();
    let (status, body) = caddy
        .admin()
        .request_with(
            "POST",
            "/load",
            Some(&config),
            &[("Cache-Control", "must-revalidate")],
        )
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(served(&caddy, WWW), stray.fingerprint);

    // Deploying `a` again rewrites the files; Caddy's JSON needs no change,
    // yet Caddy must reload them.
    let result = deploy(&target, "web", &a, WWW).await;
    assert_eq!(result.changed.len(), 3, "{:?}", result.changed);
    assert_eq!(
        result.changed[2],
        "caddy: reloaded load_files[0] (certplane:web)"
    );
    assert_eq!(caddy.config(), config);
    assert_eq!(served(&caddy, WWW), a.fingerprint);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_modes_leaves_no_entry_of_the_other_mode() {
    let caddy = Caddy::start();
    let (_h, plugin) = plugin().await;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().canonicalize().unwrap();
    let a = leaf(&[WWW]);
    api_instance(&plugin, &caddy.admin_url(), &caddy.grant())
        .deploy(&bundle("web", &a, WWW), &a.key_pem, "{}")
        .await
        .unwrap();
    let b = leaf(&[WWW]);
    let result = files_instance(&plugin, &caddy, &base)
        .deploy(&bundle("web", &b, WWW), &b.key_pem, "{}")
        .await
        .unwrap();
    assert_eq!(
        &result.changed[2..],
        [
            "caddy: added load_files entry (certplane:web)",
            "caddy: removed load_pem[0] (certplane:web)",
        ]
    );
    assert!(caddy.entries_tagged("load_pem", "certplane:web").is_empty());
    assert_eq!(caddy.entries_tagged("load_files", "certplane:web").len(), 1);
    assert_eq!(served(&caddy, WWW), b.fingerprint);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_pair_is_rejected_and_the_previous_certificate_stays() {
    let caddy = Caddy::start();
    let (_h, plugin) = plugin().await;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().canonicalize().unwrap();
    let api = api_instance(&plugin, &caddy.admin_url(), &caddy.grant());
    let files = files_instance(&plugin, &caddy, &base);
    let a = leaf(&[WWW]);
    let c = leaf(&[API]);
    deploy(&api, "web", &a, WWW).await;
    deploy(&files, "api", &c, API).await;
    let before = caddy.config();
    let files_before = (
        std::fs::read_to_string(base.join("api/fullchain.pem")).unwrap(),
        std::fs::read_to_string(base.join("api/privkey.pem")).unwrap(),
    );

    // A new leaf with the key of another: Caddy refuses to load it.
    let b = leaf(&[WWW]);
    let err = connector_error(api.deploy(&bundle("web", &b, WWW), &a.key_pem, "{}").await);
    assert!(matches!(err, ConnectorError::Rejected(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("private key does not match public key"),
        "{err}"
    );
    assert_eq!(served(&caddy, WWW), a.fingerprint);
    assert_eq!(caddy.config(), before);

    // In files mode the previous files are put back too.
    let d = leaf(&[API]);
    let err = connector_error(
        files
            .deploy(&bundle("api", &d, API), &c.key_pem, "{}")
            .await,
    );
    assert!(matches!(err, ConnectorError::Rejected(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("private key does not match public key"),
        "{err}"
    );
    assert_eq!(served(&caddy, API), c.fingerprint);
    assert_eq!(caddy.config(), before);
    assert_eq!(
        (
            std::fs::read_to_string(base.join("api/fullchain.pem")).unwrap(),
            std::fs::read_to_string(base.join("api/privkey.pem")).unwrap(),
        ),
        files_before
    );

    // A first deploy that Caddy refuses leaves no files at all.
    let e = leaf(&["new.example.test"]);
    connector_error(
        files
            .deploy(&bundle("new", &e, "new.example.test"), &c.key_pem, "{}")
            .await,
    );
    assert!(!base.join("new").exists());
}

/// A foreign `load_pem` entry (the operator's own certificate).
fn foreign_entry(tag: &str) -> Value {
    let f = leaf(&["manual.example.test"]);
    json!({"certificate": f.cert_pem, "key": f.key_pem, "tags": [tag]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_between_read_and_write_is_not_overwritten() {
    let caddy = Caddy::start();
    let (_h, plugin) = plugin().await;
    let admin = caddy.admin();
    admin.must(
        "PUT",
        "/config/apps/tls/certificates/load_pem",
        Some(&json!([foreign_entry("manual")])),
    );
    let a = leaf(&[WWW]);
    api_instance(&plugin, &caddy.admin_url(), &caddy.grant())
        .deploy(&bundle("web", &a, WWW), &a.key_pem, "{}")
        .await
        .unwrap();
    assert_eq!(caddy.entries_tagged("load_pem", "certplane:web").len(), 1);

    // The connector plans `PATCH load_pem/1`; before it arrives, the
    // operator deletes their own entry (index 0), so index 1 is gone and
    // certplane's entry is at 0.
    let writes = Arc::new(AtomicUsize::new(0));
    let proxy = {
        let (admin, writes) = (admin.clone(), writes.clone());
        AdminProxy::start(&caddy, move |method, _path| {
            if method != "GET" && writes.fetch_add(1, Ordering::SeqCst) == 0 {
                admin.must("DELETE", "/config/apps/tls/certificates/load_pem/0", None);
            }
            ProxyAction::Forward
        })
    };
    let b = leaf(&[WWW]);
    let result = api_instance(&plugin, &proxy.url(), &proxy.grant())
        .deploy(&bundle("web", &b, WWW), &b.key_pem, "{}")
        .await
        .unwrap();
    let certs = "/config/apps/tls/certificates".to_string();
    assert_eq!(
        seen(&proxy),
        [
            ("GET".into(), certs.clone(), 200, true),
            ("PATCH".into(), format!("{certs}/load_pem/1"), 412, true),
            ("GET".into(), certs.clone(), 200, true),
            ("PATCH".into(), format!("{certs}/load_pem/0"), 200, true),
        ]
    );
    assert_eq!(
        result.changed,
        ["caddy: replaced load_pem[0] (certplane:web)"]
    );
    // The operator's deletion stands; certplane's entry was replaced.
    let entries = caddy.certificates()["load_pem"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["tags"], json!(["certplane", "certplane:web"]));
    assert_eq!(served(&caddy, WWW), b.fingerprint);
}

/// The requests a proxy saw: (method, path, status, answered).
fn seen(proxy: &AdminProxy) -> Vec<(String, String, u16, bool)> {
    proxy
        .requests()
        .into_iter()
        .map(|p| (p.method, p.path, p.status, p.answered))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_without_an_answer_is_checked_before_it_is_repeated() {
    let caddy = Caddy::start();
    let (_h, plugin) = plugin().await;
    let certs = "/config/apps/tls/certificates".to_string();
    // The first write of each deploy loses what `lose` says.
    let deploy_losing = |lose: ProxyAction, id: &'static str, name: &'static str| {
        let writes = AtomicUsize::new(0);
        let proxy = AdminProxy::start(&caddy, move |method, _path| {
            if method != "GET" && writes.fetch_add(1, Ordering::SeqCst) == 0 {
                lose
            } else {
                ProxyAction::Forward
            }
        });
        let target = api_instance(&plugin, &proxy.url(), &proxy.grant());
        let cert = leaf(&[name]);
        async move {
            let result = deploy(&target, id, &cert, name).await;
            (proxy, cert, result)
        }
    };

    // Caddy applied the write, the answer was lost: the connector reads
    // again, finds its entry, and writes nothing more.
    let (proxy, a, result) = deploy_losing(ProxyAction::DropAnswer, "web", WWW).await;
    assert_eq!(
        result.changed,
        ["caddy: added load_pem entry (certplane:web)"]
    );
    assert_eq!(
        seen(&proxy),
        [
            ("GET".into(), certs.clone(), 200, true),
            ("PUT".into(), format!("{certs}/load_pem"), 200, false),
            ("GET".into(), certs.clone(), 200, true),
        ]
    );
    assert_eq!(caddy.entries_tagged("load_pem", "certplane:web").len(), 1);
    assert_eq!(served(&caddy, WWW), a.fingerprint);

    // The request was lost before Caddy saw it: the connector reads again,
    // still needs the write, and sends it again.
    let (proxy, c, result) = deploy_losing(ProxyAction::DropRequest, "api", API).await;
    assert_eq!(
        result.changed,
        ["caddy: added load_pem entry (certplane:api)"]
    );
    assert_eq!(
        seen(&proxy),
        [
            ("GET".into(), certs.clone(), 200, true),
            ("POST".into(), format!("{certs}/load_pem"), 0, false),
            ("GET".into(), certs.clone(), 200, true),
            ("POST".into(), format!("{certs}/load_pem"), 200, true),
        ]
    );
    assert_eq!(caddy.entries_tagged("load_pem", "certplane:api").len(), 1);
    assert_eq!(served(&caddy, API), c.fingerprint);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_that_keeps_changing_is_transient() {
    let caddy = Caddy::start();
    let (_h, plugin) = plugin().await;
    let admin = caddy.admin();
    // Before every write of the connector, another party replaces the
    // operator's certificates with a new set.
    let proxy = {
        let admin = admin.clone();
        let round = AtomicUsize::new(0);
        AdminProxy::start(&caddy, move |method, _path| {
            if method != "GET" {
                let n = round.fetch_add(1, Ordering::SeqCst);
                admin.must(
                    "PATCH",
                    "/config/apps/tls/certificates",
                    Some(&json!({"load_pem": [foreign_entry(&format!("manual-{n}"))]})),
                );
            }
            ProxyAction::Forward
        })
    };
    admin.must(
        "PUT",
        "/config/apps/tls/certificates/load_pem",
        Some(&json!([foreign_entry("manual")])),
    );
    let a = leaf(&[WWW]);
    let err = connector_error(
        api_instance(&plugin, &proxy.url(), &proxy.grant())
            .deploy(&bundle("web", &a, WWW), &a.key_pem, "{}")
            .await,
    );
    assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
    assert!(
        err.to_string().contains("changed under each of 5 attempts"),
        "{err}"
    );
    let writes: Vec<Proxied> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .collect();
    assert_eq!(writes.len(), 5, "{writes:?}");
    assert!(writes.iter().all(|w| w.status == 412), "{writes:?}");
    assert!(caddy.entries_tagged("load_pem", "certplane:web").is_empty());
    assert_eq!(caddy.entries_tagged("load_pem", "manual-4").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_down_is_transient() {
    let mut caddy = Caddy::start();
    let (_h, plugin) = plugin().await;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().canonicalize().unwrap();
    let api = api_instance(&plugin, &caddy.admin_url(), &caddy.grant());
    let files = files_instance(&plugin, &caddy, &base);
    caddy.stop();

    let a = leaf(&[WWW]);
    let err = connector_error(api.validate_config().await);
    assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
    assert!(err.to_string().contains("connection refused"), "{err}");
    let err = connector_error(api.deploy(&bundle("web", &a, WWW), &a.key_pem, "{}").await);
    assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
    let err = connector_error(api.remove("web", "{}").await);
    assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
    // Files mode: nothing staged is left when Caddy was not reached.
    let err = connector_error(
        files
            .deploy(&bundle("web", &a, WWW), &a.key_pem, "{}")
            .await,
    );
    assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
    assert!(!base.join("web").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ungranted_admin_url_is_denied() {
    let caddy = Caddy::start();
    let (_h, plugin) = plugin().await;
    // Granted another loopback port only.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let grant = format!("http://{}", other.local_addr().unwrap());
    let target = api_instance(&plugin, &caddy.admin_url(), &grant);
    let a = leaf(&[WWW]);
    for result in [
        target.validate_config().await.map(drop),
        target
            .deploy(&bundle("web", &a, WWW), &a.key_pem, "{}")
            .await
            .map(|_: DeployResult| ()),
    ] {
        match result {
            Err(CallError::CapabilityDenied { denials, error, .. }) => {
                assert!(
                    denials
                        .iter()
                        .any(|d| d.contains(&caddy.admin_addr().to_string())),
                    "{denials:?}"
                );
                assert!(
                    matches!(error, Some(ConnectorError::InvalidConfig(_))),
                    "{error:?}"
                );
            }
            other => panic!("expected a denial, got {other:?}"),
        }
    }
    assert_eq!(caddy.certificates(), Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_config_refuses_what_the_operator_must_fix() {
    let caddy = Caddy::start();
    let (_h, plugin) = plugin().await;
    let config = |settings: Value| {
        InstanceConfig::new("caddy-x")
            .with_settings(settings)
            .unwrap()
            .with_hosts(&[caddy.grant()])
            .unwrap()
    };
    let url = caddy.admin_url();
    for settings in [
        json!({"admin_url": "127.0.0.1:2019"}),
        json!({"admin_url": url, "mode": "files"}),
        json!({"admin_url": url, "tag_prefix": "a:b"}),
        json!({"admin_url": url, "directory": GUEST_DIR}),
        // Files mode with a directory that is not granted.
        json!({"admin_url": url, "mode": "files", "directory": GUEST_DIR}),
    ] {
        let err = connector_error(
            instance(&plugin, config(settings.clone()))
                .validate_config()
                .await,
        );
        assert!(
            matches!(err, ConnectorError::InvalidConfig(_)),
            "{settings}: {err:?}"
        );
    }
    // An admin URL that is not Caddy's admin API (a path Caddy does not
    // serve).
    let err = connector_error(
        instance(
            &plugin,
            config(json!({"admin_url": format!("{url}/not-the-api")})),
        )
        .validate_config()
        .await,
    );
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    // A good files-mode configuration passes and leaves no probe file.
    let dir = tempfile::tempdir().unwrap();
    files_instance(&plugin, &caddy, dir.path())
        .validate_config()
        .await
        .unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
