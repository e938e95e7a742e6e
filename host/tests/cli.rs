//! The operator CLI end to end: a real host served in process over HTTPS
//! (development certificate) on 127.0.0.1:0, driven by the built
//! `certplane` binary.

mod common;

use std::process::Output;
use std::time::Duration;

use certplane_host::tls;
use common::Backend;
use common::app::TestApp;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// A host serving the API on a loopback port until dropped.
struct Host {
    app: TestApp,
    url: String,
    /// PEM of the development certificate (`--ca-file`).
    cert_path: String,
    /// Its SHA-256 fingerprint (`--pin-sha256`).
    fingerprint: String,
    shutdown: CancellationToken,
    _tls_dir: tempfile::TempDir,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Host {
    /// Serves over HTTPS, or plain HTTP when `plain`.
    async fn start(plain: bool) -> Host {
        let app = TestApp::new(Backend::Sqlite).await;
        let tls_dir = tempfile::tempdir().expect("temp dir");
        let dev = tls::ensure_dev_certificate(tls_dir.path(), &[]).expect("dev certificate");
        let config = tls::server_config(&dev.cert_path, &dev.key_path).expect("server config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let router = certplane_host::api::router(app.state.clone());
        tokio::spawn(certplane_host::server::serve(
            listener,
            router,
            (!plain).then_some(config),
            shutdown.clone(),
            Duration::from_secs(1),
        ));
        let scheme = if plain { "http" } else { "https" };
        Host {
            app,
            url: format!("{scheme}://{addr}"),
            cert_path: dev.cert_path.display().to_string(),
            fingerprint: dev.fingerprint_sha256,
            shutdown,
            _tls_dir: tls_dir,
        }
    }

    /// `--host-url URL --ca-file CERT --api-key KEY`.
    fn ca_args(&self, key: &str) -> Vec<String> {
        strings(&[
            "--host-url",
            &self.url,
            "--ca-file",
            &self.cert_path,
            "--api-key",
            key,
        ])
    }

    /// `--host-url URL --pin-sha256 FP --api-key KEY`.
    fn pin_args(&self, key: &str) -> Vec<String> {
        strings(&[
            "--host-url",
            &self.url,
            "--pin-sha256",
            &self.fingerprint,
            "--api-key",
            key,
        ])
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Runs `certplane <command...> <client...>` without inheriting any
/// `CERTPLANE_*` setting.
async fn certplane(command: &[&str], client: &[String]) -> Output {
    let mut args = strings(command);
    args.extend_from_slice(client);
    tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_certplane"));
        for (k, _) in std::env::vars() {
            if k.starts_with("CERTPLANE_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("RUST_LOG", "warn")
            .args(&args)
            .output()
            .expect("run certplane")
    })
    .await
    .expect("join")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and returns stdout.
fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "certplane failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// Asserts success and parses stdout as JSON.
fn ok_json(o: &Output) -> Value {
    let text = ok(o);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

use common::test_ca;

/// Creates an issuer and a certificate, lists and shows it, with the given
/// client options.
async fn certificate_round_trip(client: &[String], suffix: &str) {
    let (ca_pem, ca_key) = test_ca();
    let settings = serde_json::json!({ "ca_certificate_pem": ca_pem, "validity_days": 30 });
    // The key goes by command line in one run and by file in the others.
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), format!("{ca_key}\n")).unwrap();
    let (secret_flag, secret) = if suffix == "ca" {
        ("--secret", format!("ca_private_key_pem={ca_key}"))
    } else {
        (
            "--secret-file",
            format!("ca_private_key_pem={}", key_file.path().display()),
        )
    };
    let issuer_name = format!("ca-{suffix}");
    let issuer = ok_json(
        &certplane(
            &[
                "issuers",
                "create",
                "--name",
                &issuer_name,
                "--plugin",
                "local-ca",
                "--settings",
                &settings.to_string(),
                secret_flag,
                &secret,
                "--output",
                "json",
            ],
            client,
        )
        .await,
    );
    let issuer_id = issuer["id"].as_str().expect("issuer id").to_owned();
    assert_eq!(
        issuer["secret_names"],
        serde_json::json!(["ca_private_key_pem"])
    );

    let name = format!("web-{suffix}");
    let out = ok(&certplane(
        &[
            "certs",
            "create",
            "--name",
            &name,
            "--cn",
            "www.example.test",
            "--san",
            "www.example.test",
            "--san",
            "api.example.test",
            "--issuer",
            &issuer_id,
            "--renew-before-days",
            "10",
        ],
        client,
    )
    .await);
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("ID "))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no ID line in:\n{out}"));
    assert!(out.contains("www.example.test,api.example.test"), "{out}");

    // Table: header and one aligned row.
    let table = ok(&certplane(&["certs", "list"], client).await);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(
        lines[0].starts_with("ID")
            && lines[0].contains("NOT AFTER")
            && lines[0].ends_with("ISSUER"),
        "{table}"
    );
    let cols: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cols[0], id, "{table}");
    assert_eq!(cols[1], name, "{table}");
    assert_eq!(cols.last().copied(), Some(issuer_id.as_str()), "{table}");
    // The NAME column starts at the same offset in header and row.
    assert_eq!(lines[0].find("NAME"), lines[1].find(&name), "{table}");

    // JSON: the server's page, filters passed through.
    let page = ok_json(
        &certplane(
            &["certs", "list", "--output", "json", "--per-page", "5"],
            client,
        )
        .await,
    );
    assert_eq!(page["total"], 1);
    assert_eq!(page["per_page"], 5);
    assert_eq!(page["items"][0]["id"], id.as_str());
    let none = ok_json(
        &certplane(
            &["certs", "list", "--status", "disabled", "--output", "json"],
            client,
        )
        .await,
    );
    assert_eq!(none["total"], 0, "{none}");

    let detail = ok_json(&certplane(&["certs", "get", &id, "--output", "json"], client).await);
    assert_eq!(detail["name"], name.as_str());
    assert_eq!(detail["renew_before_days"], 10);
    let shown = ok(&certplane(&["certs", "get", &id], client).await);
    assert!(
        shown.contains("COMMON NAME") && shown.contains(&issuer_id),
        "{shown}"
    );

    // Disable, then retire.
    let updated = ok_json(
        &certplane(
            &[
                "certs", "update", &id, "--status", "disabled", "--owner", "team-a", "--output",
                "json",
            ],
            client,
        )
        .await,
    );
    assert_eq!(updated["status"], "disabled", "{updated}");
    let disabled = ok_json(
        &certplane(
            &["certs", "list", "--status", "disabled", "--output", "json"],
            client,
        )
        .await,
    );
    assert_eq!(disabled["total"], 1, "{disabled}");
    let retired = ok(&certplane(&["certs", "retire", &id], client).await);
    assert!(
        retired.contains(&format!("certificate {id} retired")),
        "{retired}"
    );
    let again = certplane(&["certs", "retire", &id], client).await;
    assert!(!again.status.success());
    assert!(stderr(&again).contains("conflict: "), "{}", stderr(&again));

    // An unknown id: the envelope line, non-zero exit.
    let missing = certplane(&["certs", "get", "no-such-cert"], client).await;
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("not_found: "),
        "{}",
        stderr(&missing)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_list_as_table_and_json() {
    let host = Host::start(false).await;
    let client = host.ca_args(&host.app.reader);

    let table = ok(&certplane(&["plugins", "list"], &client).await);
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("NAME") && header.contains("KIND"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("local-ca") && l.contains("issuer")),
        "{table}"
    );

    let json = ok_json(&certplane(&["plugins", "list", "--output", "json"], &client).await);
    let names: Vec<&str> = json["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(
        names.contains(&"local-ca") && names.contains(&"pem-files"),
        "{json}"
    );
    // Pretty-printed, as the server sent it.
    assert!(
        stdout(&certplane(&["plugins", "list", "--output", "json"], &client).await)
            .starts_with("{\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_with_ca_file() {
    let host = Host::start(false).await;
    let client = host.ca_args(&host.app.operator);
    certificate_round_trip(&client, "ca").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_with_pinned_fingerprint() {
    let host = Host::start(false).await;
    let client = host.pin_args(&host.app.operator);
    certificate_round_trip(&client, "pin").await;
    // Colon-separated upper-case fingerprints are accepted too.
    let colons = host
        .fingerprint
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":");
    let client = strings(&[
        "--host-url",
        &host.url,
        "--pin-sha256",
        &colons,
        "--api-key",
        &host.app.reader,
    ]);
    ok(&certplane(&["agents", "list"], &client).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pin_is_a_clear_tls_error() {
    let host = Host::start(false).await;
    let wrong = "00".repeat(32);
    let client = strings(&[
        "--host-url",
        &host.url,
        "--pin-sha256",
        &wrong,
        "--api-key",
        &host.app.reader,
    ]);
    let out = certplane(&["plugins", "list"], &client).await;
    assert!(!out.status.success());
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "TLS: {} presented a certificate with SHA-256 fingerprint {}, not the pinned {wrong}",
            host.url.trim_start_matches("https://"),
            host.fingerprint
        )),
        "{err}"
    );

    // No trust choice: the public CAs are trusted, which a self-signed
    // development certificate does not pass; the error says what to do.
    let client = strings(&["--host-url", &host.url, "--api-key", &host.app.reader]);
    let out = certplane(&["plugins", "list"], &client).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("TLS handshake"), "{err}");
    assert!(err.contains("--ca-file or --pin-sha256"), "{err}");

    // A CA file that does not contain the server's certificate.
    let other = tempfile::tempdir().expect("temp dir");
    let other_cert = tls::ensure_dev_certificate(other.path(), &[]).expect("other cert");
    let client = strings(&[
        "--host-url",
        &host.url,
        "--ca-file",
        &other_cert.cert_path.display().to_string(),
        "--api-key",
        &host.app.reader,
    ]);
    let out = certplane(&["plugins", "list"], &client).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("TLS handshake with")
            && stderr(&out).contains("invalid peer certificate"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_api_key_prints_the_error_envelope() {
    let host = Host::start(false).await;
    let client = host.ca_args("cp_not-a-real-key");
    let out = certplane(&["certs", "list"], &client).await;
    assert!(!out.status.success());
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.contains("unauthorized: "))
        .unwrap_or_else(|| panic!("no envelope line in: {err}"));
    assert!(line.contains("(request "), "{line}");

    // Missing key: refused locally with the fix.
    let client = strings(&["--host-url", &host.url, "--ca-file", &host.cert_path]);
    let out = certplane(&["certs", "list"], &client).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("CERTPLANE_API_KEY"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retiring_the_sentinel_agent_is_forbidden() {
    let host = Host::start(false).await;
    let client = host.ca_args(&host.app.admin);
    let out = certplane(&["agents", "retire", "host"], &client).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(
            "forbidden: agent host is a built-in sentinel and can never be retired (request "
        ),
        "{err}"
    );
    // Still there, shown as an agent.
    let agents = ok(&certplane(&["agents", "list"], &client).await);
    assert!(agents.lines().any(|l| l.starts_with("host ")), "{agents}");
    let detail = ok(&certplane(&["agents", "get", "host"], &client).await);
    assert!(
        detail.contains("SENTINEL") && detail.contains("ACTIVE TARGETS"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_jobs_and_audit() {
    let host = Host::start(true).await;
    let client = strings(&["--host-url", &host.url, "--api-key", &host.app.operator]);
    certificate_round_trip(&client, "plain").await;
    // No scheduler runs here, so no job exists yet: an empty page.
    let jobs = ok_json(
        &certplane(
            &["jobs", "list", "--type", "issuance", "--output", "json"],
            &client,
        )
        .await,
    );
    assert_eq!(jobs["total"], 0, "{jobs}");
    let table = ok(&certplane(&["jobs", "list"], &client).await);
    assert!(
        table.starts_with("ID") && table.contains("LAST ERROR"),
        "{table}"
    );
    // Creating the certificate was audited.
    let audit = ok(&certplane(&["audit", "list", "--subject-type", "certificate"], &client).await);
    assert!(
        audit.starts_with("AT") && audit.lines().count() >= 2,
        "{audit}"
    );
}
