//! The `traefik` target on the real runtime, granted only its two
//! directories (no hosts, no actions). Traefik is not installed here: what
//! the connector writes is read back with an independent YAML parser and
//! checked against the file provider's documented format
//! (`tls.certificates[].certFile/keyFile`, paths Traefik can open).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use certplane_runtime::harness::Harness;
use certplane_runtime::target::CertificateBundle;
use certplane_runtime::{CallError, ConnectorError, InstanceConfig, Plugin, PluginInstance};
use serde_json::{Value, json};
use sha2::Digest;
use yaml_rust2::{Yaml, YamlLoader};

use crate::common::{instance, load};

/// The marker line the connector puts first in the file it owns.
const MARKER: &str = "# certplane-managed: traefik target";

/// A certificate chain as a CA hands it out.
struct Issued {
    leaf: String,
    intermediate: String,
    key: String,
}

/// A fresh root → intermediate → leaf chain for `names`.
fn issue(names: &[&str]) -> Issued {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
    let ca_params = |cn: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p
    };
    let root_key = KeyPair::generate_for(alg).unwrap();
    let root = ca_params("traefik test root")
        .self_signed(&root_key)
        .unwrap();
    let int_key = KeyPair::generate_for(alg).unwrap();
    let int = ca_params("traefik test intermediate")
        .signed_by(&int_key, &root, &root_key)
        .unwrap();
    let leaf_key = KeyPair::generate_for(alg).unwrap();
    let leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&leaf_key, &int, &int_key)
        .unwrap();
    Issued {
        leaf: leaf.pem(),
        intermediate: int.pem(),
        key: leaf_key.serialize_pem(),
    }
}

fn ders(pem_text: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem_text.as_bytes())
        .map(|p| p.unwrap().contents)
        .collect()
}

fn bundle(id: &str, issued: &Issued) -> CertificateBundle {
    CertificateBundle {
        certificate_id: id.into(),
        dns_names: vec!["www.example.com".into()],
        certificate_pem: issued.leaf.clone(),
        chain_pem: vec![issued.intermediate.clone()],
        fingerprint_sha256: hex::encode(sha2::Sha256::digest(&ders(&issued.leaf)[0])),
    }
}

/// A temporary root with a certificate directory and a watched directory.
struct World {
    _tmp: tempfile::TempDir,
    certs: PathBuf,
    dynamic: PathBuf,
    plugin: Arc<Plugin>,
    _harness: Harness,
}

async fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    // Real paths: the entries must name what Traefik would open.
    let root = tmp.path().canonicalize().unwrap();
    let certs = root.join("certs");
    let dynamic = root.join("dynamic");
    std::fs::create_dir(&certs).unwrap();
    std::fs::create_dir(&dynamic).unwrap();
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "traefik").await;
    World {
        _tmp: tmp,
        certs,
        dynamic,
        plugin,
        _harness: harness,
    }
}

impl World {
    /// An instance granted the certificate directory at `/certs` and the
    /// watched directory at `/traefik` (`dynamic_writable` for the latter),
    /// with `extra` settings.
    fn target_with(&self, extra: Value, dynamic_writable: bool) -> PluginInstance {
        let mut settings = json!({"directory": "/certs", "config_directory": "/traefik"});
        if let (Some(s), Some(e)) = (settings.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        let config = InstanceConfig::new("traefik-1")
            .with_settings(settings)
            .unwrap()
            .with_dir(&self.certs, "/certs", true)
            .with_dir(&self.dynamic, "/traefik", dynamic_writable);
        instance(&self.plugin, config)
    }

    fn target(&self) -> PluginInstance {
        self.target_with(json!({}), true)
    }

    fn config_path(&self) -> PathBuf {
        self.dynamic.join("certplane.yml")
    }

    /// The `tls.certificates` entries of the written file as
    /// `(certFile, keyFile)`, checked against the documented shape.
    fn entries(&self) -> Vec<(String, String)> {
        entries_of(&read(&self.config_path()))
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn entries_of(text: &str) -> Vec<(String, String)> {
    assert!(text.starts_with(MARKER), "no marker:\n{text}");
    let docs = YamlLoader::load_from_str(text).expect("valid YAML");
    assert_eq!(docs.len(), 1, "one document:\n{text}");
    let top = docs[0].as_hash().expect("a mapping at the top");
    assert_eq!(top.len(), 1, "only `tls`:\n{text}");
    let tls = docs[0]["tls"].as_hash().expect("tls is a mapping");
    assert_eq!(tls.len(), 1, "only `tls.certificates`:\n{text}");
    let list = docs[0]["tls"]["certificates"]
        .as_vec()
        .expect("tls.certificates is a list");
    list.iter()
        .map(|item| {
            let map = item.as_hash().expect("an entry is a mapping");
            assert_eq!(map.len(), 2, "certFile and keyFile only:\n{text}");
            let get = |k: &str| match &item[k] {
                Yaml::String(s) => s.clone(),
                other => panic!("{k} is {other:?}:\n{text}"),
            };
            (get("certFile"), get("keyFile"))
        })
        .collect()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

fn connector_error(result: Result<impl std::fmt::Debug, CallError>) -> ConnectorError {
    match result {
        Err(CallError::Connector { error, .. }) => error,
        other => panic!("expected a connector error, got {other:?}"),
    }
}

/// What deploying `issued` as `web-1` through `target` fails with.
async fn deploy_error(target: &PluginInstance, issued: &Issued) -> ConnectorError {
    connector_error(
        target
            .deploy(&bundle("web-1", issued), &issued.key, "{}")
            .await,
    )
}

/// The certificate file holds the leaf then the chain, the key file the
/// key, both at host paths in the certificate directory.
fn assert_serves(w: &World, entry: &(String, String), issued: &Issued) {
    let (cert_file, key_file) = entry;
    for f in [cert_file, key_file] {
        assert!(
            Path::new(f).parent() == Some(w.certs.as_path()),
            "{f} is not in {}",
            w.certs.display()
        );
        assert!(Path::new(f).is_file(), "{f} does not exist");
    }
    let want: Vec<Vec<u8>> = [ders(&issued.leaf), ders(&issued.intermediate)].concat();
    assert_eq!(ders(&read(Path::new(cert_file))), want, "leaf, then chain");
    assert_eq!(read(Path::new(key_file)).trim(), issued.key.trim());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_points_the_dynamic_configuration_at_new_files() {
    let w = world().await;
    let routers = w.dynamic.join("routers.yml");
    std::fs::write(&routers, "http:\n  routers: {}\n").unwrap();
    let routers_mtime = mtime(&routers);
    let target = w.target_with(json!({"verify_host": "127.0.0.1"}), true);
    target.validate_config().await.unwrap();

    // First deploy.
    let first = issue(&["www.example.com"]);
    let result = target
        .deploy(&bundle("web-1", &first), &first.key, "{}")
        .await
        .unwrap();
    assert_eq!(result.changed.len(), 3, "{:?}", result.changed);
    let verify = result.verify_at.expect("verify_at");
    assert_eq!(
        (
            verify.host.as_str(),
            verify.port,
            verify.server_name.as_str()
        ),
        ("127.0.0.1", 443, "www.example.com")
    );
    let entries = w.entries();
    assert_eq!(entries.len(), 1);
    assert_serves(&w, &entries[0], &first);
    assert_eq!(listing(&w.certs).len(), 2);
    // Nothing else in the watched directory: no lock, no temporary file,
    // the operator's file as it was.
    assert_eq!(listing(&w.dynamic), ["certplane.yml", "routers.yml"]);
    assert_eq!(read(&routers), "http:\n  routers: {}\n");
    assert_eq!(mtime(&routers), routers_mtime);

    // The same bundle again: nothing reported, nothing rewritten.
    let config_text = read(&w.config_path());
    let config_mtime = mtime(&w.config_path());
    let cert_mtime = mtime(Path::new(&entries[0].0));
    let key_mtime = mtime(Path::new(&entries[0].1));
    // Distinct timestamps if anything were written now.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = target
        .deploy(&bundle("web-1", &first), &first.key, "{}")
        .await
        .unwrap();
    assert!(again.changed.is_empty(), "{:?}", again.changed);
    assert_eq!(read(&w.config_path()), config_text);
    assert_eq!(mtime(&w.config_path()), config_mtime);
    assert_eq!(mtime(Path::new(&entries[0].0)), cert_mtime);
    assert_eq!(mtime(Path::new(&entries[0].1)), key_mtime);

    // A renewal of the same id: new files, the old ones gone, one entry.
    let second = issue(&["www.example.com"]);
    let result = target
        .deploy(&bundle("web-1", &second), &second.key, "{}")
        .await
        .unwrap();
    assert!(!result.changed.is_empty());
    let renewed = w.entries();
    assert_eq!(renewed.len(), 1);
    assert_ne!(renewed[0], entries[0], "new names");
    assert_serves(&w, &renewed[0], &second);
    assert!(
        !Path::new(&entries[0].0).exists(),
        "old certificate file left"
    );
    assert!(!Path::new(&entries[0].1).exists(), "old key file left");
    assert_eq!(listing(&w.certs).len(), 2);

    // A second certificate id: two entries.
    let api = issue(&["api.example.com"]);
    target
        .deploy(&bundle("api", &api), &api.key, "{}")
        .await
        .unwrap();
    let both = w.entries();
    assert_eq!(both.len(), 2);
    let api_entry = both.iter().find(|e| e != &&renewed[0]).unwrap().clone();
    assert!(both.contains(&renewed[0]));
    assert_serves(&w, &api_entry, &api);
    assert_eq!(listing(&w.certs).len(), 4);

    // Remove one: its entry and files go; the other stays; again is fine.
    let removed = target.remove("web-1", "{}").await.unwrap();
    assert_eq!(removed.len(), 3, "{removed:?}");
    assert_eq!(w.entries(), std::slice::from_ref(&api_entry));
    assert!(!Path::new(&renewed[0].0).exists());
    assert!(!Path::new(&renewed[0].1).exists());
    assert!(target.remove("web-1", "{}").await.unwrap().is_empty());
    assert_eq!(listing(&w.dynamic), ["certplane.yml", "routers.yml"]);
    assert_eq!(mtime(&routers), routers_mtime);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_grant_serves_both_and_traefiks_own_path_can_be_named() {
    let w = world().await;
    // Defaults: everything in the one granted directory at /traefik.
    let config = InstanceConfig::new("traefik-one").with_dir(&w.dynamic, "/traefik", true);
    let target = instance(&w.plugin, config);
    target.validate_config().await.unwrap();
    let issued = issue(&["www.example.com"]);
    target
        .deploy(&bundle("web-1", &issued), &issued.key, "{}")
        .await
        .unwrap();
    let entries = w.entries();
    assert_eq!(entries.len(), 1);
    assert!(
        entries[0]
            .0
            .starts_with(&format!("{}/web-1-", w.dynamic.display()))
    );
    let files = listing(&w.dynamic);
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(
        files
            .iter()
            .filter(|f| f.ends_with(".crt") || f.ends_with(".key"))
            .count()
            == 2
    );

    // Traefik in a container sees the certificates elsewhere.
    let other = tempfile::tempdir().unwrap();
    let config = InstanceConfig::new("traefik-docker")
        .with_settings(json!({"traefik_directory": "/etc/traefik/certs/"}))
        .unwrap()
        .with_dir(other.path(), "/traefik", true);
    let docker = instance(&w.plugin, config);
    docker
        .deploy(&bundle("web-1", &issued), &issued.key, "{}")
        .await
        .unwrap();
    let text = read(&other.path().join("certplane.yml"));
    let entries = entries_of(&text);
    assert_eq!(entries.len(), 1);
    assert!(
        entries[0].0.starts_with("/etc/traefik/certs/web-1-") && entries[0].0.ends_with(".crt"),
        "{entries:?}"
    );
    let name = Path::new(&entries[0].1).file_name().unwrap();
    assert!(other.path().join(name).is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_opened_by_handle_is_not_a_path_for_traefik() {
    use std::os::fd::AsRawFd;
    let w = world().await;
    // An agent preopens what it checked through the open handle.
    let handle = std::fs::File::open(&w.dynamic).unwrap();
    let by_handle = format!("/proc/self/fd/{}", handle.as_raw_fd());
    let config = |settings: Value| {
        InstanceConfig::new("traefik-agent")
            .with_settings(settings)
            .unwrap()
            .with_dir(&by_handle, "/traefik", true)
    };
    let target = instance(&w.plugin, config(json!({})));
    let err = connector_error(target.validate_config().await);
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    assert!(err.to_string().contains("traefik_directory"), "{err}");
    let issued = issue(&["www.example.com"]);
    let err = deploy_error(&target, &issued).await;
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    assert!(listing(&w.dynamic).is_empty(), "nothing written");

    // Named by the operator, the real path works.
    let real = w.dynamic.display().to_string();
    let target = instance(&w.plugin, config(json!({"traefik_directory": real})));
    target.validate_config().await.unwrap();
    target
        .deploy(&bundle("web-1", &issued), &issued.key, "{}")
        .await
        .unwrap();
    let entries = w.entries();
    assert_eq!(entries.len(), 1);
    assert!(Path::new(&entries[0].0).parent() == Some(w.dynamic.as_path()));
    assert!(Path::new(&entries[0].0).is_file() && Path::new(&entries[0].1).is_file());
    drop(handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_that_is_not_certplanes_is_never_overwritten() {
    let w = world().await;
    let target = w.target();
    let issued = issue(&["www.example.com"]);

    // A file of the same name the operator wrote (no marker).
    let foreign =
        "tls:\n  certificates:\n  - certFile: /etc/ssl/mine.pem\n    keyFile: /etc/ssl/mine.key\n";
    std::fs::write(w.config_path(), foreign).unwrap();
    let err = connector_error(target.validate_config().await);
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    let err = deploy_error(&target, &issued).await;
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    assert!(err.to_string().contains("config_file"), "{err}");
    assert_eq!(read(&w.config_path()), foreign);
    assert!(listing(&w.certs).is_empty(), "no certificate files written");
    let err = connector_error(target.remove("web-1", "{}").await);
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    assert_eq!(read(&w.config_path()), foreign);

    // certplane's file, broken: refused as well, left as it is.
    let broken = format!("{MARKER}\ntls:\n  certificates: [ {{certFile: \n");
    std::fs::write(w.config_path(), &broken).unwrap();
    let err = deploy_error(&target, &issued).await;
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    assert!(err.to_string().contains("certplane's but holds"), "{err}");
    assert_eq!(read(&w.config_path()), broken);
    assert!(listing(&w.certs).is_empty());

    // certplane's file with an entry someone added by hand.
    let edited = format!(
        "{MARKER}\ntls:\n  certificates:\n  - certFile: /etc/ssl/mine.pem\n    keyFile: /etc/ssl/mine.key\n"
    );
    std::fs::write(w.config_path(), &edited).unwrap();
    let err = deploy_error(&target, &issued).await;
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    assert_eq!(read(&w.config_path()), edited);
    assert!(listing(&w.certs).is_empty());
}

/// Deploys `web-1` once, then returns the state a failed deploy must leave
/// untouched: the configuration's bytes and the certificate directory.
async fn deployed_once(w: &World) -> (String, Vec<String>) {
    let issued = issue(&["www.example.com"]);
    w.target()
        .deploy(&bundle("web-1", &issued), &issued.key, "{}")
        .await
        .unwrap();
    (read(&w.config_path()), listing(&w.certs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deploys_leave_the_previous_state() {
    let w = world().await;
    let (config, certs) = deployed_once(&w).await;
    let renewal = issue(&["www.example.com"]);

    // The watched directory granted read-only between deploys: nothing is
    // written anywhere, the operator must fix the grant.
    let read_only = w.target_with(json!({}), false);
    let err = connector_error(read_only.validate_config().await);
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    let err = deploy_error(&read_only, &renewal).await;
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    assert_eq!(read(&w.config_path()), config);
    assert_eq!(listing(&w.certs), certs);

    // The new configuration cannot be written after the new certificate
    // files were: they are deleted again, the old configuration stays.
    let obstacle = w.dynamic.join(".certplane.yml.certplane-tmp");
    std::fs::create_dir(&obstacle).unwrap();
    std::fs::write(obstacle.join("x"), "").unwrap();
    let err = connector_error(
        w.target()
            .deploy(&bundle("web-1", &renewal), &renewal.key, "{}")
            .await,
    );
    assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
    assert_eq!(read(&w.config_path()), config);
    assert_eq!(listing(&w.certs), certs, "new files rolled back");
    assert_eq!(
        listing(&w.dynamic),
        [".certplane.yml.certplane-tmp", "certplane.yml"],
        "lock released"
    );
    std::fs::remove_dir_all(&obstacle).unwrap();

    // Once the obstacle is gone the same deploy goes through.
    w.target()
        .deploy(&bundle("web-1", &renewal), &renewal.key, "{}")
        .await
        .unwrap();
    let entries = w.entries();
    assert_eq!(entries.len(), 1);
    assert_serves(&w, &entries[0], &renewal);
    assert_eq!(listing(&w.certs).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_watched_directory_is_a_configuration_error() {
    let w = world().await;
    // One grant above both directories; the watched one then disappears.
    let root = w.certs.parent().unwrap().to_path_buf();
    let config = InstanceConfig::new("traefik-sub")
        .with_settings(json!({"directory": "/srv/certs", "config_directory": "/srv/dynamic"}))
        .unwrap()
        .with_dir(&root, "/srv", true);
    let target = instance(&w.plugin, config);
    let (config_text, certs) = {
        let issued = issue(&["www.example.com"]);
        target
            .deploy(&bundle("web-1", &issued), &issued.key, "{}")
            .await
            .unwrap();
        (read(&w.config_path()), listing(&w.certs))
    };
    assert_eq!(entries_of(&config_text).len(), 1);
    let moved = root.join("dynamic.moved");
    std::fs::rename(&w.dynamic, &moved).unwrap();
    let renewal = issue(&["www.example.com"]);
    let err = deploy_error(&target, &renewal).await;
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    assert!(err.to_string().contains("/srv/dynamic"), "{err}");
    assert_eq!(listing(&w.certs), certs, "no new files");
    assert_eq!(read(&moved.join("certplane.yml")), config_text);

    // A directory outside every grant cannot be named to Traefik.
    let outside = instance(
        &w.plugin,
        InstanceConfig::new("traefik-outside")
            .with_settings(json!({"directory": "/elsewhere", "config_directory": "/srv"}))
            .unwrap()
            .with_dir(&root, "/srv", true),
    );
    let err = connector_error(outside.validate_config().await);
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    assert!(
        err.to_string().contains("not inside a directory granted"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_update_is_waited_for_and_a_dead_ones_lock_taken_over() {
    let w = world().await;
    let target = w.target();
    let issued = issue(&["www.example.com"]);
    let lock = w.dynamic.join(".certplane.yml.certplane-lock");
    std::fs::write(&lock, "held").unwrap();
    let err = deploy_error(&target, &issued).await;
    assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
    assert!(!w.config_path().exists());
    assert!(listing(&w.certs).is_empty());
    assert!(lock.exists(), "someone else's lock is not removed");

    // A lock older than any call could hold it: left by a call that died.
    let old = SystemTime::now() - Duration::from_secs(600);
    std::fs::File::options()
        .write(true)
        .open(&lock)
        .unwrap()
        .set_modified(old)
        .unwrap();
    target
        .deploy(&bundle("web-1", &issued), &issued.key, "{}")
        .await
        .unwrap();
    assert!(!lock.exists());
    assert_eq!(w.entries().len(), 1);

    // Concurrent deploys of different certificates all end up in the file.
    let ids = ["a", "b", "c", "d"];
    let issued: Vec<Issued> = ids.iter().map(|_| issue(&["www.example.com"])).collect();
    let mut pending: Vec<&str> = ids.to_vec();
    // Calls that find the lock held fail `transient` and are retried, as
    // the host would.
    for _round in 0..20 {
        let calls = pending.iter().map(|&id| {
            let t = target.clone();
            let i = &issued[ids.iter().position(|x| *x == id).unwrap()];
            let b = bundle(id, i);
            let key = i.key.clone();
            async move { (id, t.deploy(&b, &key, "{}").await) }
        });
        let results = futures_join_all(calls).await;
        pending = results
            .into_iter()
            .filter_map(|(id, r)| match r {
                Ok(_) => None,
                Err(CallError::Connector {
                    error: ConnectorError::Transient(_),
                    ..
                }) => Some(id),
                Err(e) => panic!("{id}: {e}"),
            })
            .collect();
        if pending.is_empty() {
            break;
        }
    }
    assert!(pending.is_empty(), "still failing: {pending:?}");
    assert_eq!(w.entries().len(), 5);
    assert_eq!(listing(&w.certs).len(), 10);
}

/// Runs the futures concurrently on the runtime and collects their outputs
/// in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
