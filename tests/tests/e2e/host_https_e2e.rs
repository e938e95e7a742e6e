//! The host as an operator runs it: `certplane serve` (its real start-up
//! path: migrations, dev TLS certificate, plugin loading, scheduler) on a
//! loopback port, driven over HTTPS with the operator CLI's client: an
//! issuer and a host-run PEM-files target are configured, a certificate is
//! created, and it ends up issued, recorded and deployed on disk.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use certplane_client::{ApiClient, ClientOptions, Trust};
use certplane_host::api::auth;
use certplane_host::config::HostConfig;
use certplane_host::store::{ApiScope, NewApiKey, Store};
use serde_json::{Value, json};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn test_ca() -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "e2e test CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

async fn post(client: &ApiClient, path: &str, body: Value) -> Value {
    client
        .post(path, Some(&body))
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
        .json
        .unwrap_or(Value::Null)
}

async fn get(client: &ApiClient, path: &str) -> Value {
    client
        .get(path, &[])
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .json
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_is_issued_and_deployed_through_the_https_api() {
    let plugin_dir = repo_root().join("target/plugins");
    assert!(
        plugin_dir.join("local-ca.toml").exists(),
        "run scripts/build-plugins first"
    );
    let data = tempfile::tempdir().unwrap();
    let deploy = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = HostConfig {
        data_dir: data.path().join("data"),
        plugin_dir,
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        ..HostConfig::default()
    };
    config.scheduler.renewal_ms = 60_000; // the API's wake-ups must suffice
    let database_url = config.database_url();
    let data_dir = config.data_dir.clone();
    // `serve::run` is the binary's own entry point; it runs on a thread of
    // its own with its own runtime, like the process it normally is (and
    // its start-up future is not `Send`). The thread ends with the test
    // process.
    let server = std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(io_error_text)
            .and_then(|rt| {
                rt.block_on(certplane_host::serve::run(config))
                    .map_err(|e| format!("{e:#}"))
            })
    });

    // Wait for the listener, then mint a key straight into the store (the
    // first admin key went to the server's stdout).
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(!server.is_finished(), "server exited: {:?}", server.join());
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "server did not listen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let store = Store::connect(&database_url).await.unwrap();
    let (key, hash) = auth::new_api_key();
    store
        .create_api_key(NewApiKey {
            name: "e2e".into(),
            key_hash: hash,
            scopes: vec![ApiScope::Operator],
            expires_at: None,
        })
        .await
        .unwrap();
    let client = ApiClient::new(ClientOptions {
        base_url: format!("https://127.0.0.1:{port}"),
        api_key: key,
        trust: Some(Trust::CaFile(data_dir.join("tls/dev-cert.pem"))),
        timeout: Duration::from_secs(30),
        user_agent: "certplane-e2e".into(),
    })
    .unwrap();

    let (ca_cert, ca_key) = test_ca();
    let issuer = post(
        &client,
        "/issuers",
        json!({
            "name": "e2e-ca",
            "plugin": "local-ca",
            "settings": { "ca_certificate_pem": ca_cert },
            "secrets": { "ca_private_key_pem": ca_key },
        }),
    )
    .await;
    let target = post(
        &client,
        "/targets",
        json!({
            "name": "e2e-files",
            "plugin": "pem-files",
            "agent_id": "host",
            "settings": { "directory": "/certs" },
            "grants": { "directories": [{ "path": deploy.path(), "guest_path": "/certs", "writable": true }] },
        }),
    )
    .await;
    let created_at = Instant::now();
    let cert = post(
        &client,
        "/certificates",
        json!({
            "name": "e2e",
            "common_name": "e2e.certplane.test",
            "sans": ["e2e.certplane.test", "www.e2e.certplane.test"],
            "issuer_id": issuer["id"],
            "target_ids": [target["id"]],
        }),
    )
    .await;
    let cert_id = cert["id"].as_str().unwrap().to_string();

    let deadline = Instant::now() + Duration::from_secs(30);
    let deployment = loop {
        let jobs = get(
            &client,
            &format!("/jobs?certificate_id={cert_id}&job_type=deployment"),
        )
        .await;
        let items = jobs["items"].as_array().cloned().unwrap_or_default();
        if let Some(done) = items.iter().find(|j| j["status"] == "completed") {
            break done.clone();
        }
        if let Some(failed) = items.iter().find(|j| j["status"] == "failed") {
            panic!("deployment failed: {failed}");
        }
        assert!(
            Instant::now() < deadline,
            "not deployed within 30 s: {jobs}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    eprintln!(
        "certificate created over HTTPS → issued and deployed in {:?}",
        created_at.elapsed()
    );

    let detail = get(&client, &format!("/certificates/{cert_id}")).await;
    let current = detail["current_version_id"].as_str().unwrap();
    assert_eq!(deployment["certificate_version_id"], current);
    let version = detail["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == current)
        .unwrap();
    let on_disk = std::fs::read_to_string(deploy.path().join(&cert_id).join("cert.pem")).unwrap();
    let der = rustls_pemfile::certs(&mut on_disk.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(
        certplane_host::tls::fingerprint_sha256(&der),
        version["fingerprint_sha256"].as_str().unwrap(),
        "the file on disk is the recorded version"
    );
    assert!(
        !detail.to_string().contains("PRIVATE KEY"),
        "no key material in API responses"
    );
    assert!(!server.is_finished(), "the server kept running throughout");
}

fn io_error_text(e: std::io::Error) -> String {
    e.to_string()
}
