//! The operator CLI end to end: a real host served in process over HTTPS
//! (development certificate) on 127.0.0.1:0, driven by the built
//! `certplane` binary.

use std::process::Output;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};

use certplane_host::config::HostConfig;
use certplane_host::store::{JobFilter, JobStatus, JobType, NewNotification};
use certplane_host::tls;
use certplane_testkit::Backend;
use certplane_testkit::app::{BOOTSTRAP, TestApp};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// A host serving the API on a loopback port until dropped.
struct Host {
    app: TestApp,
    url: String,
    /// The port served on (127.0.0.1).
    port: u16,
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
        Host::start_with(plain, |_| {}).await
    }

    /// [`Host::start`] with the configuration edited first.
    async fn start_with(plain: bool, edit: impl FnOnce(&mut HostConfig)) -> Host {
        let app = TestApp::with_config(Backend::Sqlite, edit).await;
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
            port: addr.port(),
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

use certplane_testkit::test_ca;

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
        retired.starts_with(&format!("certificate {id} is retired since ")),
        "{retired}"
    );
    // Retiring again changes nothing and answers the same.
    let again = ok(&certplane(&["certs", "retire", &id], client).await);
    assert_eq!(again, retired);

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

// ------------------------------------------------------------ helpers

/// Asserts a failure with nothing on stdout and the error on exactly one
/// stderr line; returns that line.
fn one_line_error(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "expected a failure, got:\n{}",
        stdout(o)
    );
    assert!(stdout(o).is_empty(), "stdout: {}", stdout(o));
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "not one line: {err}");
    lines[0].to_owned()
}

/// Asserts the one-line `<code>: <message> (request <id>)` of an API error
/// and returns the line.
fn api_error(o: &Output, code: &str) -> String {
    let line = one_line_error(o);
    assert!(
        line.contains(&format!("{code}: ")) && line.contains("(request "),
        "not a {code} envelope line: {line}"
    );
    line
}

/// Asserts a command-line usage error (clap: exit code 2) naming `needle`.
fn usage_error(o: &Output, needle: &str) {
    assert_eq!(o.status.code(), Some(2), "{}", stderr(o));
    assert!(stdout(o).is_empty(), "{}", stdout(o));
    assert!(stderr(o).contains(needle), "{}", stderr(o));
}

/// The value of `NAME` in `FIELD  VALUE` output.
fn field(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .filter(|rest| rest.starts_with("  "))
                .map(|rest| rest.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no {name} field in:\n{text}"))
}

/// The rows of a table (header left out), split into cells on whitespace,
/// without the trailing page note.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with('('))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// The `id`s of a JSON list answer, in order.
fn item_ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {page}"))
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_owned())
        .collect()
}

/// The `--settings` of a local-ca issuer and its key, for a fresh test CA.
fn local_ca_settings() -> (String, String) {
    let (ca_pem, ca_key) = test_ca();
    let settings = serde_json::json!({ "ca_certificate_pem": ca_pem, "validity_days": 30 });
    (settings.to_string(), ca_key)
}

/// Creates a local-ca issuer with `certplane issuers create` and returns
/// its id.
async fn local_ca_issuer(client: &[String], name: &str) -> String {
    let (settings, key) = local_ca_settings();
    let issuer = ok_json(
        &certplane(
            &[
                "issuers",
                "create",
                "--name",
                name,
                "--plugin",
                "local-ca",
                "--settings",
                &settings,
                "--secret",
                &format!("ca_private_key_pem={key}"),
                "--output",
                "json",
            ],
            client,
        )
        .await,
    );
    issuer["id"].as_str().expect("issuer id").to_owned()
}

/// Creates a certificate with `certplane certs create` (optionally
/// deploying to `target`) and returns the server's view of it.
async fn new_certificate(
    client: &[String],
    name: &str,
    issuer: &str,
    target: Option<&str>,
) -> Value {
    let mut args = vec![
        "certs",
        "create",
        "--name",
        name,
        "--cn",
        "www.example.test",
        "--san",
        "www.example.test",
        "--issuer",
        issuer,
        // Less than the test CA's 30-day validity: no renewal is due at once.
        "--renew-before-days",
        "10",
        "--output",
        "json",
    ];
    if let Some(t) = target {
        args.extend(["--target", t]);
    }
    let cert = ok_json(&certplane(&args, client).await);
    assert_eq!(cert["name"], name, "{cert}");
    cert
}

/// Registers an agent with the test bootstrap token (there is no CLI
/// command for it: agents register themselves) and returns its id.
async fn register_agent(host: &Host, name: &str) -> String {
    let r = host
        .app
        .call(
            Method::POST,
            "/api/v1/agents/register",
            None,
            Some(serde_json::json!({ "name": name, "bootstrap_token": BOOTSTRAP })),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.json["agent_id"].as_str().expect("agent id").to_owned()
}

// -------------------------------------------------------------- issuers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuers_list_get_and_delete() {
    let host = Host::start(false).await;
    let client = host.ca_args(&host.app.operator);
    let reader = host.ca_args(&host.app.reader);

    let used = local_ca_issuer(&client, "ca-used").await;
    // Created with table output: the fields, never the key.
    let (settings, key) = local_ca_settings();
    let created = ok(&certplane(
        &[
            "issuers",
            "create",
            "--name",
            "ca-spare",
            "--plugin",
            "local-ca",
            "--settings",
            &settings,
            "--secret",
            &format!("ca_private_key_pem={key}"),
        ],
        &client,
    )
    .await);
    let spare = field(&created, "ID");
    assert_eq!(field(&created, "KIND"), "issuer", "{created}");
    assert_eq!(field(&created, "NAME"), "ca-spare", "{created}");
    assert_eq!(field(&created, "PLUGIN"), "local-ca", "{created}");
    assert_eq!(
        field(&created, "SECRET NAMES"),
        "ca_private_key_pem",
        "{created}"
    );
    assert!(!created.contains("PRIVATE KEY"), "{created}");

    // List: a table of both, the page as JSON, paging notes.
    let table = ok(&certplane(&["issuers", "list"], &reader).await);
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("ID")
            && header.contains("PLUGIN")
            && header.contains("VERSION")
            && header.ends_with("CREATED"),
        "{table}"
    );
    let listed = rows(&table);
    assert_eq!(listed.len(), 2, "{table}");
    for (id, name) in [(&used, "ca-used"), (&spare, "ca-spare")] {
        let row = listed
            .iter()
            .find(|r| r[0] == *id)
            .unwrap_or_else(|| panic!("{id} not listed:\n{table}"));
        assert_eq!(row[1], name, "{table}");
        assert_eq!(row[2], "local-ca", "{table}");
    }
    let page = ok_json(&certplane(&["issuers", "list", "--output", "json"], &reader).await);
    assert_eq!(page["total"], 2, "{page}");
    let mut ids = item_ids(&page);
    ids.sort();
    let mut expected = vec![used.clone(), spare.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    let first = ok(&certplane(&["issuers", "list", "--per-page", "1"], &reader).await);
    assert_eq!(rows(&first).len(), 1, "{first}");
    assert!(
        first.ends_with("(1-1 of 2; --page 2 for more)\n"),
        "{first}"
    );
    let second = ok_json(
        &certplane(
            &[
                "issuers",
                "list",
                "--page",
                "2",
                "--per-page",
                "1",
                "--output",
                "json",
            ],
            &reader,
        )
        .await,
    );
    assert_eq!(second["page"], 2, "{second}");
    assert_eq!(second["items"].as_array().map(Vec::len), Some(1));
    assert_ne!(second["items"][0]["id"], page["items"][0]["id"]);

    // Get: settings and secret names, never the key.
    let detail = ok_json(&certplane(&["issuers", "get", &used, "--output", "json"], &reader).await);
    assert_eq!(detail["id"], used.as_str());
    assert_eq!(detail["kind"], "issuer");
    assert_eq!(detail["name"], "ca-used");
    assert_eq!(detail["settings"]["validity_days"], 30);
    assert_eq!(
        detail["secret_names"],
        serde_json::json!(["ca_private_key_pem"])
    );
    let shown = ok(&certplane(&["issuers", "get", &used], &reader).await);
    assert_eq!(field(&shown, "ID"), used, "{shown}");
    assert_eq!(field(&shown, "PLUGIN"), "local-ca", "{shown}");
    assert!(field(&shown, "SETTINGS").contains("\"validity_days\":30"));
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");

    // Delete: refused while a certificate uses it, else done.
    new_certificate(&client, "web", &used, None).await;
    let refused = certplane(&["issuers", "delete", &used], &client).await;
    let line = api_error(&refused, "invalid_state");
    assert!(line.contains("1 certificate(s)"), "{line}");
    let denied = certplane(&["issuers", "delete", &spare], &reader).await;
    api_error(&denied, "forbidden");
    // Delete retires: still readable, hidden from the list, idempotent.
    let deleted = ok(&certplane(&["issuers", "delete", &spare], &client).await);
    assert!(
        deleted.starts_with(&format!("issuer {spare} is retired since ")),
        "{deleted}"
    );
    let shown = ok(&certplane(&["issuers", "get", &spare], &reader).await);
    assert_ne!(field(&shown, "RETIRED AT"), "-", "{shown}");
    let again = ok(&certplane(&["issuers", "delete", &spare], &client).await);
    assert_eq!(again, deleted);
    let page = ok_json(&certplane(&["issuers", "list", "--output", "json"], &reader).await);
    assert_eq!(item_ids(&page), vec![used.clone()], "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_and_global_flags_are_checked() {
    let host = Host::start(false).await;
    let client = host.ca_args(&host.app.operator);
    let (settings, key) = local_ca_settings();
    let secret = format!("ca_private_key_pem={key}");
    let create = |extra: &[&str]| {
        let mut args = vec!["issuers", "create", "--name", "ca", "--plugin", "local-ca"];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    async fn run(args: Vec<String>, client: &[String]) -> Output {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        certplane(&args, client).await
    }

    // Refused before anything is sent, each on one line.
    let line = one_line_error(&run(create(&["--settings", "{not json"]), &client).await);
    assert!(line.contains("--settings is not valid JSON"), "{line}");
    let line = one_line_error(&run(create(&["--settings", "[1, 2]"]), &client).await);
    assert!(line.contains("--settings must be a JSON object"), "{line}");
    let line = one_line_error(
        &run(
            create(&["--settings", &settings, "--secret", "no-equals-sign"]),
            &client,
        )
        .await,
    );
    assert!(
        line.contains("a --secret is not NAME=VALUE (its value is not shown)")
            && !line.contains("no-equals-sign"),
        "{line}"
    );
    let line = one_line_error(
        &run(
            create(&["--settings", &settings, "--secret-file", "keyfile"]),
            &client,
        )
        .await,
    );
    assert!(
        line.contains("a --secret-file is not NAME=PATH: keyfile"),
        "{line}"
    );
    let missing = tempfile::tempdir().unwrap();
    let missing_path = missing.path().join("absent.pem").display().to_string();
    let line = one_line_error(
        &run(
            create(&[
                "--settings",
                &settings,
                "--secret-file",
                &format!("ca_private_key_pem={missing_path}"),
            ]),
            &client,
        )
        .await,
    );
    assert!(
        line.contains(&format!(
            "--secret-file ca_private_key_pem: cannot read {missing_path}"
        )),
        "{line}"
    );
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), &key).unwrap();
    let line = one_line_error(
        &run(
            create(&[
                "--settings",
                &settings,
                "--secret",
                &secret,
                "--secret-file",
                &format!("ca_private_key_pem={}", key_file.path().display()),
            ]),
            &client,
        )
        .await,
    );
    assert!(
        line.contains("secret ca_private_key_pem is given twice"),
        "{line}"
    );
    // A repeated --secret too, without showing either value.
    let line = one_line_error(
        &run(
            create(&[
                "--settings",
                &settings,
                "--secret",
                "ca_private_key_pem=first-value",
                "--secret",
                "ca_private_key_pem=second-value",
            ]),
            &client,
        )
        .await,
    );
    assert!(
        line.contains("secret ca_private_key_pem is given twice") && !line.contains("-value"),
        "{line}"
    );
    // Standard input is read by one --secret-file at most.
    let line = one_line_error(
        &run(
            create(&[
                "--settings",
                &settings,
                "--secret-file",
                "ca_private_key_pem=-",
                "--secret-file",
                "other=-",
            ]),
            &client,
        )
        .await,
    );
    assert!(
        line.contains("only one --secret-file can read standard input"),
        "{line}"
    );

    // Refused by the server (422), with its reason.
    let wrong_kind = run(
        vec!["issuers", "create", "--name", "ca", "--plugin", "pem-files"]
            .into_iter()
            .map(str::to_owned)
            .collect(),
        &client,
    )
    .await;
    let line = api_error(&wrong_kind, "validation_failed");
    assert!(
        line.contains("plugin pem-files is a target connector"),
        "{line}"
    );
    let unknown = run(
        create(&["--settings", &settings, "--secret", "other=v"]),
        &client,
    )
    .await;
    let line = api_error(&unknown, "validation_failed");
    assert!(line.contains("reads no secret named \"other\""), "{line}");
    let bad_name = run(
        vec![
            "issuers",
            "create",
            "--name",
            "bad name!",
            "--plugin",
            "local-ca",
            "--settings",
            &settings,
            "--secret",
            &secret,
        ]
        .into_iter()
        .map(str::to_owned)
        .collect(),
        &client,
    )
    .await;
    api_error(&bad_name, "validation_failed");
    // Readers cannot create.
    let reader = host.ca_args(&host.app.reader);
    let denied = run(
        create(&["--settings", &settings, "--secret", &secret]),
        &reader,
    )
    .await;
    api_error(&denied, "forbidden");
    // Nothing was created by any of these.
    let page = ok_json(&certplane(&["issuers", "list", "--output", "json"], &client).await);
    assert_eq!(page["total"], 0, "{page}");

    // Global flags: clap's usage errors (exit code 2), and the server's
    // page bounds.
    usage_error(
        &certplane(&["issuers", "list", "--output", "yaml"], &client).await,
        "invalid value 'yaml'",
    );
    usage_error(
        &certplane(&["certs", "list", "--per-page", "many"], &client).await,
        "invalid value 'many'",
    );
    usage_error(
        &certplane(
            &["certs", "create", "--name", "x", "--cn", "x.test"],
            &client,
        )
        .await,
        "--issuer <ISSUER>",
    );
    usage_error(
        &certplane(&["notifiers", "create", "--name", "n"], &client).await,
        "--plugin <PLUGIN>",
    );
    usage_error(
        &certplane(&["certs", "unplug"], &client).await,
        "unrecognized subcommand 'unplug'",
    );
    let zero = certplane(&["issuers", "list", "--per-page", "0"], &client).await;
    let line = api_error(&zero, "bad_request");
    assert!(line.contains("per_page"), "{line}");
}

// -------------------------------------------------------------- targets

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_on_the_host_agent() {
    let host = Host::start(false).await;
    let client = host.ca_args(&host.app.operator);
    let reader = host.ca_args(&host.app.reader);
    let dir = tempfile::tempdir().unwrap();
    let grant = format!("{}:/certs:rw", dir.path().display());
    let settings = r#"{"directory":"/certs","layout":"combined"}"#;

    // Created on the host (the default agent), as a table.
    let created = ok(&certplane(
        &[
            "targets",
            "create",
            "--name",
            "files",
            "--plugin",
            "pem-files",
            "--settings",
            settings,
            "--grant-dir",
            &grant,
        ],
        &client,
    )
    .await);
    let id = field(&created, "ID");
    assert_eq!(field(&created, "KIND"), "target", "{created}");
    assert_eq!(field(&created, "PLUGIN"), "pem-files", "{created}");
    assert_eq!(field(&created, "AGENT ID"), "host", "{created}");

    // A second one with an explicit agent, as JSON.
    let other = ok_json(
        &certplane(
            &[
                "targets",
                "create",
                "--name",
                "files-2",
                "--plugin",
                "pem-files",
                "--settings",
                r#"{"directory":"/certs"}"#,
                "--agent",
                "host",
                "--grant-dir",
                &grant,
                "--output",
                "json",
            ],
            &client,
        )
        .await,
    );
    let other_id = other["id"].as_str().expect("id").to_owned();
    assert_eq!(other["agent_id"], "host", "{other}");
    assert_eq!(
        other["grants"]["directories"],
        serde_json::json!([{ "path": dir.path(), "guest_path": "/certs", "writable": true }]),
        "{other}"
    );

    // List and get.
    let table = ok(&certplane(&["targets", "list"], &reader).await);
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("ID") && header.contains("AGENT") && header.ends_with("RETIRED"),
        "{table}"
    );
    let listed = rows(&table);
    assert_eq!(listed.len(), 2, "{table}");
    let row = listed.iter().find(|r| r[0] == id).expect("listed");
    assert_eq!(row[1..], ["files", "pem-files", "host", "-"], "{table}");
    let detail = ok_json(&certplane(&["targets", "get", &id, "--output", "json"], &reader).await);
    assert_eq!(detail["name"], "files");
    assert_eq!(detail["settings"]["layout"], "combined");
    assert_eq!(detail["grants"]["directories"][0]["writable"], true);
    assert!(detail.get("retired_at").is_none(), "{detail}");

    // In use by a certificate: refused, and counted on the host agent.
    let issuer = local_ca_issuer(&client, "ca").await;
    let cert = new_certificate(&client, "web", &issuer, Some(&id)).await;
    assert_eq!(cert["target_ids"], serde_json::json!([id]), "{cert}");
    let cert_id = cert["id"].as_str().expect("cert id").to_owned();
    let refused = certplane(&["targets", "delete", &id], &client).await;
    let line = api_error(&refused, "invalid_state");
    assert!(
        line.contains("is in use by 1 certificate(s) and 0 open job(s)"),
        "{line}"
    );
    let agent = ok_json(&certplane(&["agents", "get", "host", "--output", "json"], &reader).await);
    assert_eq!(agent["sentinel"], true, "{agent}");
    assert_eq!(agent["dependencies"]["active_targets"], 2, "{agent}");
    assert_eq!(agent["dependencies"]["active_certificates"], 1, "{agent}");

    // Once the certificate is retired the target can go; it stays
    // readable and listed with --include-retired.
    ok(&certplane(&["certs", "retire", &cert_id], &client).await);
    let deleted = ok(&certplane(&["targets", "delete", &id], &client).await);
    assert!(
        deleted.starts_with(&format!("target {id} is retired since ")),
        "{deleted}"
    );
    let table = ok(&certplane(&["targets", "list"], &reader).await);
    let listed = rows(&table);
    assert_eq!(listed.len(), 1, "{table}");
    assert_eq!(listed[0][0], other_id, "{table}");
    let all = ok(&certplane(&["targets", "list", "--include-retired"], &reader).await);
    let row = rows(&all)
        .into_iter()
        .find(|r| r[0] == id)
        .unwrap_or_else(|| panic!("retired target not listed:\n{all}"));
    assert_ne!(row[4], "-", "{all}");
    let shown = ok(&certplane(&["targets", "get", &id], &reader).await);
    assert_ne!(field(&shown, "RETIRED AT"), "-", "{shown}");
    // Deleting again changes nothing and succeeds.
    ok(&certplane(&["targets", "delete", &id], &client).await);
    // A retired target takes no new certificate.
    let line = api_error(
        &certplane(
            &[
                "certs", "create", "--name", "web-2", "--cn", "a.test", "--issuer", &issuer,
                "--target", &id,
            ],
            &client,
        )
        .await,
        "validation_failed",
    );
    assert!(line.contains("is retired"), "{line}");

    // Errors: a malformed grant (refused locally), a relative one, an
    // unknown agent, no grant at all (refused by the server), unknown ids.
    let target = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "targets".to_owned(),
            "create".into(),
            "--name".into(),
            name.into(),
            "--plugin".into(),
            "pem-files".into(),
            "--settings".into(),
            r#"{"directory":"/certs"}"#.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    async fn run(args: Vec<String>, client: &[String]) -> Output {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        certplane(&args, client).await
    }
    let line = one_line_error(&run(target("t", &["--grant-dir", "/srv/certs"]), &client).await);
    assert!(
        line.contains("--grant-dir `/srv/certs` is not PATH:GUEST_PATH[:rw|:ro]"),
        "{line}"
    );
    let line = one_line_error(
        &run(
            target("t", &["--grant-dir", "/srv/certs:/certs:rx"]),
            &client,
        )
        .await,
    );
    assert!(line.contains("is not PATH:GUEST_PATH[:rw|:ro]"), "{line}");
    let line = api_error(
        &run(
            target("t", &["--grant-dir", "srv/certs:/certs:rw"]),
            &client,
        )
        .await,
        "validation_failed",
    );
    assert!(line.contains("must be absolute"), "{line}");
    let line = api_error(
        &run(
            target("t", &["--agent", "nobody", "--grant-dir", &grant]),
            &client,
        )
        .await,
        "validation_failed",
    );
    assert!(line.contains("no agent \"nobody\""), "{line}");
    let line = api_error(&run(target("t", &[]), &client).await, "validation_failed");
    assert!(line.contains("pem-files"), "{line}");
    api_error(
        &certplane(&["targets", "get", "no-such-target"], &reader).await,
        "not_found",
    );
    api_error(
        &certplane(&["targets", "delete", "no-such-target"], &client).await,
        "not_found",
    );
    api_error(
        &certplane(&["targets", "delete", &other_id], &reader).await,
        "forbidden",
    );
}

// --------------------------------------------------------------- agents

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_agents_get_retire_and_retired_list() {
    let host = Host::start(false).await;
    let admin = host.ca_args(&host.app.admin);
    let operator = host.ca_args(&host.app.operator);
    let reader = host.ca_args(&host.app.reader);
    let edge1 = register_agent(&host, "edge-1").await;
    let edge2 = register_agent(&host, "edge-2").await;

    // Listed with the sentinel; paged.
    let page = ok_json(&certplane(&["agents", "list", "--output", "json"], &reader).await);
    assert_eq!(page["total"], 3, "{page}");
    let ids = item_ids(&page);
    for id in ["host", &edge1, &edge2] {
        assert!(ids.iter().any(|i| i == id), "{id} not in {page}");
    }
    let table = ok(&certplane(&["agents", "list", "--per-page", "2"], &reader).await);
    assert_eq!(rows(&table).len(), 2, "{table}");
    assert!(
        table.ends_with("(1-2 of 3; --page 2 for more)\n"),
        "{table}"
    );
    let last = ok(&certplane(
        &["agents", "list", "--per-page", "2", "--page", "2"],
        &reader,
    )
    .await);
    assert_eq!(rows(&last).len(), 1, "{last}");
    assert!(last.ends_with("(3-3 of 3)\n"), "{last}");

    // One agent in detail: never heard from, nothing depends on it yet.
    let shown = ok(&certplane(&["agents", "get", &edge1], &reader).await);
    assert_eq!(field(&shown, "ID"), edge1, "{shown}");
    assert_eq!(field(&shown, "NAME"), "edge-1", "{shown}");
    assert_eq!(field(&shown, "SENTINEL"), "no", "{shown}");
    assert_eq!(field(&shown, "STATUS"), "active", "{shown}");
    assert_eq!(field(&shown, "ONLINE"), "no", "{shown}");
    assert_eq!(field(&shown, "LAST HEARTBEAT AT"), "-", "{shown}");
    assert_eq!(field(&shown, "ACTIVE TARGETS"), "0", "{shown}");

    // A target the agent runs (validated by the agent, not the host).
    let target = ok_json(
        &certplane(
            &[
                "targets",
                "create",
                "--name",
                "edge-files",
                "--plugin",
                "pem-files",
                "--settings",
                r#"{"directory":"/certs"}"#,
                "--agent",
                &edge1,
                "--grant-dir",
                "/srv/certs:/certs:rw",
                "--output",
                "json",
            ],
            &operator,
        )
        .await,
    );
    let target_id = target["id"].as_str().expect("target id").to_owned();
    assert_eq!(target["agent_id"], edge1.as_str(), "{target}");
    let detail = ok_json(&certplane(&["agents", "get", &edge1, "--output", "json"], &reader).await);
    assert_eq!(detail["dependencies"]["active_targets"], 1, "{detail}");
    assert_eq!(detail["dependencies"]["open_jobs"], 0, "{detail}");

    // Retirement: admins only; blocked by the target; --force needs
    // --reason (refused by clap); forced, it retires the target too.
    api_error(
        &certplane(&["agents", "retire", &edge1], &operator).await,
        "forbidden",
    );
    let line = api_error(
        &certplane(&["agents", "retire", &edge1], &admin).await,
        "invalid_state",
    );
    assert!(line.contains("still has 1 active target(s)"), "{line}");
    usage_error(
        &certplane(&["agents", "retire", &edge1, "--force"], &admin).await,
        "--reason",
    );
    let retired = ok(&certplane(
        &[
            "agents",
            "retire",
            &edge1,
            "--force",
            "--reason",
            "decommissioned",
        ],
        &admin,
    )
    .await);
    assert!(
        retired.starts_with(&format!("agent {edge1} is retired since ")),
        "{retired}"
    );
    // Retiring again changes nothing and answers the same.
    let again = ok(&certplane(&["agents", "retire", &edge1], &admin).await);
    assert_eq!(again, retired);
    let edge2_retired =
        ok_json(&certplane(&["agents", "retire", &edge2, "--output", "json"], &admin).await);
    assert_eq!(edge2_retired["id"], edge2.as_str(), "{edge2_retired}");
    assert_eq!(edge2_retired["status"], "retired", "{edge2_retired}");
    assert_eq!(
        edge2_retired["dependencies"]["active_targets"], 0,
        "{edge2_retired}"
    );

    // The retired list, and the default list without them.
    let table = ok(&certplane(&["agents", "retired"], &reader).await);
    let listed = rows(&table);
    assert_eq!(listed.len(), 2, "{table}");
    for id in [&edge1, &edge2] {
        let row = listed.iter().find(|r| r[0] == *id).expect("retired row");
        assert_eq!(row[2], "retired", "{table}");
    }
    let page = ok_json(&certplane(&["agents", "retired", "--output", "json"], &reader).await);
    assert_eq!(page["total"], 2, "{page}");
    let first = page["items"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["id"] == edge1.as_str()))
        .expect("edge-1");
    assert_eq!(first["retired_reason"], "decommissioned", "{page}");
    let page = ok_json(&certplane(&["agents", "list", "--output", "json"], &reader).await);
    assert_eq!(item_ids(&page), vec!["host".to_owned()], "{page}");
    let page = ok_json(
        &certplane(
            &["agents", "list", "--include-retired", "--output", "json"],
            &reader,
        )
        .await,
    );
    assert_eq!(page["total"], 3, "{page}");
    let shown = ok(&certplane(&["agents", "get", &edge1], &reader).await);
    assert_eq!(field(&shown, "STATUS"), "retired", "{shown}");
    assert_eq!(field(&shown, "RETIRED REASON"), "decommissioned", "{shown}");
    assert_eq!(field(&shown, "ACTIVE TARGETS"), "0", "{shown}");
    let target =
        ok_json(&certplane(&["targets", "get", &target_id, "--output", "json"], &reader).await);
    assert!(target["retired_at"].is_string(), "{target}");

    // A retired agent takes no new target; unknown ids are 404s.
    let line = api_error(
        &certplane(
            &[
                "targets",
                "create",
                "--name",
                "late",
                "--plugin",
                "pem-files",
                "--agent",
                &edge2,
            ],
            &operator,
        )
        .await,
        "validation_failed",
    );
    assert!(line.contains("is retired"), "{line}");
    api_error(
        &certplane(&["agents", "get", "no-such-agent"], &reader).await,
        "not_found",
    );
    api_error(
        &certplane(&["agents", "retire", "no-such-agent"], &admin).await,
        "not_found",
    );
}

// ------------------------------------------ jobs, verification, revoke

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_certificate_jobs_verification_and_revocation() {
    let host = Host::start_with(false, |c| {
        c.scheduler.jobs_ms = 50;
        c.scheduler.renewal_ms = 50;
        // One quick probe: the endpoint below never serves the new
        // certificate.
        c.verify.attempts = 1;
        c.verify.interval_ms = 0;
        c.verify.timeout_secs = 2;
    })
    .await;
    let client = host.ca_args(&host.app.operator);
    let reader = host.ca_args(&host.app.reader);

    // A host target verified against this host's own port: it serves the
    // development certificate, so the verification is a mismatch.
    let dir = tempfile::tempdir().unwrap();
    let settings = serde_json::json!({
        "directory": "/certs",
        "verify_host": "127.0.0.1",
        "verify_port": host.port,
    });
    let target = ok_json(
        &certplane(
            &[
                "targets",
                "create",
                "--name",
                "files",
                "--plugin",
                "pem-files",
                "--settings",
                &settings.to_string(),
                "--grant-dir",
                &format!("{}:/certs:rw", dir.path().display()),
                "--output",
                "json",
            ],
            &client,
        )
        .await,
    );
    let target_id = target["id"].as_str().expect("target id").to_owned();
    let issuer = local_ca_issuer(&client, "ca").await;
    let cert = new_certificate(&client, "web", &issuer, Some(&target_id)).await;
    let cert_id = cert["id"].as_str().expect("cert id").to_owned();
    // Nothing issued yet: nothing to revoke.
    let line = api_error(
        &certplane(&["certs", "revoke", &cert_id], &client).await,
        "invalid_state",
    );
    assert!(line.contains("has no issued version to revoke"), "{line}");

    // The scheduler issues and deploys; the deployment fails verification.
    let scheduler =
        certplane_host::engine::start(host.app.state.engine.clone(), CancellationToken::new());
    let deadline = Instant::now() + Duration::from_secs(20);
    let deployment_id = loop {
        let jobs = host
            .app
            .store
            .list_jobs(&JobFilter {
                certificate_id: Some(cert_id.clone()),
                ..JobFilter::default()
            })
            .await
            .expect("jobs");
        let deployment = jobs.iter().find(|j| j.job_type == JobType::Deployment);
        match deployment.map(|j| j.status) {
            Some(JobStatus::Failed) => break deployment.expect("deployment").id.clone(),
            Some(JobStatus::Completed) => panic!("the deployment verified: {jobs:?}"),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no failed deployment within 20 s: {jobs:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let report = scheduler.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_clean(), "{report:?}");

    // The issued version, in the certificate's detail.
    let detail =
        ok_json(&certplane(&["certs", "get", &cert_id, "--output", "json"], &reader).await);
    let version = &detail["versions"][0];
    let version_id = version["id"].as_str().expect("version id").to_owned();
    let issuance_id = version["job_id"].as_str().expect("job id").to_owned();
    let fingerprint = version["fingerprint_sha256"]
        .as_str()
        .expect("fingerprint")
        .to_owned();
    assert_eq!(
        detail["current_version_id"],
        version_id.as_str(),
        "{detail}"
    );
    let shown = ok(&certplane(&["certs", "get", &cert_id], &reader).await);
    let versions_header = shown
        .lines()
        .find(|l| l.starts_with("VERSION "))
        .unwrap_or_else(|| panic!("no versions table:\n{shown}"));
    assert!(
        versions_header.contains("SERIAL") && versions_header.ends_with("JOB"),
        "{shown}"
    );
    let version_row = shown
        .lines()
        .find(|l| l.starts_with(&version_id))
        .unwrap_or_else(|| panic!("no version row:\n{shown}"));
    assert!(version_row.ends_with(&issuance_id), "{shown}");
    assert_eq!(field(&shown, "CURRENT VERSION ID"), version_id, "{shown}");
    // Valid 30 days: expiring within 60, not within 1.
    let soon = ok_json(
        &certplane(
            &[
                "certs",
                "list",
                "--expiring-within-days",
                "60",
                "--output",
                "json",
            ],
            &reader,
        )
        .await,
    );
    assert_eq!(item_ids(&soon), vec![cert_id.clone()], "{soon}");
    let not_yet = ok_json(
        &certplane(
            &[
                "certs",
                "list",
                "--expiring-within-days",
                "1",
                "--output",
                "json",
            ],
            &reader,
        )
        .await,
    );
    assert_eq!(not_yet["total"], 0, "{not_yet}");

    // Jobs: listed per certificate and type, shown one by one.
    let page = ok_json(
        &certplane(
            &[
                "jobs",
                "list",
                "--certificate",
                &cert_id,
                "--output",
                "json",
            ],
            &reader,
        )
        .await,
    );
    let ids = item_ids(&page);
    assert!(
        ids.contains(&issuance_id) && ids.contains(&deployment_id),
        "{page}"
    );
    let table = ok(&certplane(&["jobs", "list", "--type", "deployment"], &reader).await);
    let listed = rows(&table);
    assert_eq!(listed.len(), 1, "{table}");
    assert_eq!(
        listed[0][..4],
        [
            deployment_id.as_str(),
            "deployment",
            "failed",
            cert_id.as_str()
        ]
    );
    assert!(
        table.contains("failed verification: the endpoint serves another certificate"),
        "{table}"
    );
    let failed = ok_json(
        &certplane(
            &[
                "jobs", "list", "--status", "failed", "--agent", "host", "--output", "json",
            ],
            &reader,
        )
        .await,
    );
    assert_eq!(item_ids(&failed), vec![deployment_id.clone()], "{failed}");
    let issuance =
        ok_json(&certplane(&["jobs", "get", &issuance_id, "--output", "json"], &reader).await);
    assert_eq!(issuance["job_type"], "issuance", "{issuance}");
    assert_eq!(issuance["status"], "completed", "{issuance}");
    assert_eq!(issuance["certificate_id"], cert_id.as_str(), "{issuance}");
    let shown = ok(&certplane(&["jobs", "get", &deployment_id], &reader).await);
    assert_eq!(field(&shown, "JOB TYPE"), "deployment", "{shown}");
    assert_eq!(field(&shown, "STATUS"), "failed", "{shown}");
    assert_eq!(field(&shown, "TARGET ID"), target_id, "{shown}");
    assert_eq!(field(&shown, "AGENT ID"), "host", "{shown}");

    // The verification record: this host's certificate, not the new one.
    let verification = ok_json(
        &certplane(
            &["jobs", "verification", &deployment_id, "--output", "json"],
            &reader,
        )
        .await,
    );
    assert_eq!(
        verification["job_id"],
        deployment_id.as_str(),
        "{verification}"
    );
    assert_eq!(verification["status"], "mismatch", "{verification}");
    assert_eq!(verification["fingerprint_matches"], false, "{verification}");
    assert_eq!(
        verification["observed_fingerprint"],
        host.fingerprint.as_str(),
        "{verification}"
    );
    assert_eq!(
        verification["expected_fingerprint"],
        fingerprint.as_str(),
        "{verification}"
    );
    assert_eq!(verification["reported_by"], "host", "{verification}");
    assert_eq!(
        verification["endpoint"]["port"], host.port,
        "{verification}"
    );
    assert_eq!(
        verification["endpoint"]["server_name"], "www.example.test",
        "{verification}"
    );
    let shown = ok(&certplane(&["jobs", "verification", &deployment_id], &reader).await);
    assert_eq!(field(&shown, "STATUS"), "mismatch", "{shown}");
    assert_eq!(field(&shown, "FINGERPRINT MATCHES"), "no", "{shown}");
    assert_eq!(
        field(&shown, "OBSERVED FINGERPRINT"),
        host.fingerprint,
        "{shown}"
    );
    let line = api_error(
        &certplane(&["jobs", "verification", &issuance_id], &reader).await,
        "not_found",
    );
    assert!(line.contains("verification of issuance job"), "{line}");
    // Only a completed deployment can be verified again.
    let line = api_error(
        &certplane(&["jobs", "verify", &deployment_id], &client).await,
        "invalid_state",
    );
    assert!(
        line.contains("is failed; it can be verified once completed"),
        "{line}"
    );
    let line = api_error(
        &certplane(
            &["jobs", "verify", &issuance_id, "--output", "json"],
            &client,
        )
        .await,
        "validation_failed",
    );
    assert!(line.contains("only deployments can be verified"), "{line}");

    // Retry the failed deployment, then cancel it.
    api_error(
        &certplane(&["jobs", "retry", &deployment_id], &reader).await,
        "forbidden",
    );
    let retried = ok_json(
        &certplane(
            &["jobs", "retry", &deployment_id, "--output", "json"],
            &client,
        )
        .await,
    );
    assert_eq!(retried["id"], deployment_id.as_str(), "{retried}");
    assert_eq!(retried["status"], "pending", "{retried}");
    let line = api_error(
        &certplane(&["jobs", "retry", &deployment_id], &client).await,
        "invalid_state",
    );
    assert!(
        line.contains("is pending, only failed jobs can be retried"),
        "{line}"
    );
    // An open job keeps its target in use.
    let line = api_error(
        &certplane(&["targets", "delete", &target_id], &client).await,
        "invalid_state",
    );
    assert!(line.contains("1 open job(s)"), "{line}");
    let cancelled = ok(&certplane(
        &[
            "jobs",
            "cancel",
            &deployment_id,
            "--reason",
            "endpoint not ready",
        ],
        &client,
    )
    .await);
    assert_eq!(field(&cancelled, "STATUS"), "cancelled", "{cancelled}");
    assert_eq!(
        field(&cancelled, "LAST ERROR"),
        "endpoint not ready",
        "{cancelled}"
    );
    let line = api_error(
        &certplane(&["jobs", "cancel", &deployment_id], &client).await,
        "invalid_state",
    );
    assert!(line.contains("is already cancelled"), "{line}");
    let line = api_error(
        &certplane(&["jobs", "retry", &deployment_id], &client).await,
        "invalid_state",
    );
    assert!(line.contains("is cancelled"), "{line}");
    let events = ok_json(
        &certplane(
            &[
                "audit",
                "list",
                "--subject-type",
                "job",
                "--subject-id",
                &deployment_id,
                "--output",
                "json",
            ],
            &reader,
        )
        .await,
    );
    let actions: Vec<&str> = events["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["job.cancel", "job.retry", "deployment.failed"],
        "{events}"
    );
    assert_eq!(events["items"][0]["actor"], "apikey:operator", "{events}");

    // Revoke the version in force: one open revocation at a time.
    let line = api_error(
        &certplane(&["certs", "revoke", &cert_id, "--reason", "lost"], &client).await,
        "validation_failed",
    );
    assert!(line.contains("unknown variant `lost`"), "{line}");
    let revocation = ok_json(
        &certplane(
            &[
                "certs",
                "revoke",
                &cert_id,
                "--reason",
                "key-compromise",
                "--output",
                "json",
            ],
            &client,
        )
        .await,
    );
    assert_eq!(
        revocation["certificate_version_id"],
        version_id.as_str(),
        "{revocation}"
    );
    assert_eq!(revocation["reason"], "key-compromise", "{revocation}");
    let revocation_id = revocation["job_id"].as_str().expect("job id").to_owned();
    let line = api_error(
        &certplane(&["certs", "revoke", &cert_id], &client).await,
        "invalid_state",
    );
    assert!(
        line.contains(&format!("already under way (job {revocation_id})")),
        "{line}"
    );
    let job = ok_json(
        &certplane(
            &["jobs", "get", &revocation_id, "--output", "json"],
            &reader,
        )
        .await,
    );
    assert_eq!(job["job_type"], "revocation", "{job}");
    assert_eq!(job["status"], "pending", "{job}");
    assert_eq!(job["payload"]["reason"], "key-compromise", "{job}");
    // Cancelled without a reason: the actor is recorded instead.
    let cancelled = ok_json(
        &certplane(
            &["jobs", "cancel", &revocation_id, "--output", "json"],
            &client,
        )
        .await,
    );
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert_eq!(
        cancelled["last_error"], "cancelled by apikey:operator",
        "{cancelled}"
    );
    // Then it can be asked for again (table form).
    let again = ok(&certplane(&["certs", "revoke", &cert_id], &client).await);
    assert_eq!(field(&again, "REASON"), "unspecified", "{again}");
    assert_eq!(
        field(&again, "CERTIFICATE VERSION ID"),
        version_id,
        "{again}"
    );
    assert_ne!(field(&again, "JOB ID"), revocation_id, "{again}");

    // Renew now: due at once; not for a disabled certificate.
    let renewed = ok(&certplane(&["certs", "renew", &cert_id], &client).await);
    assert!(
        renewed.starts_with(&format!("renewal of {cert_id} requested (due 20")),
        "{renewed}"
    );
    let renewed =
        ok_json(&certplane(&["certs", "renew", &cert_id, "--output", "json"], &client).await);
    assert_eq!(renewed["id"], cert_id.as_str(), "{renewed}");
    assert!(renewed["renew_at"].is_string(), "{renewed}");
    // Many at once: by issuer (already due: not counted again), or all.
    let bulk = ok(&certplane(&["certs", "renew", "--issuer", &issuer], &client).await);
    assert!(bulk.contains("certificates due now"), "{bulk}");
    let bulk = ok_json(&certplane(&["certs", "renew", "--all", "--output", "json"], &client).await);
    assert!(bulk["renewing"].is_u64(), "{bulk}");
    usage_error(&certplane(&["certs", "renew"], &client).await, "<ID>");
    usage_error(
        &certplane(&["certs", "renew", &cert_id, "--all"], &client).await,
        "cannot be used with",
    );
    let line = api_error(
        &certplane(&["certs", "renew", "--issuer", "no-such-issuer"], &client).await,
        "validation_failed",
    );
    assert!(line.contains("no-such-issuer"), "{line}");
    let updated = ok_json(
        &certplane(
            &[
                "certs",
                "update",
                &cert_id,
                "--status",
                "disabled",
                "--renew-before-days",
                "5",
                "--output",
                "json",
            ],
            &client,
        )
        .await,
    );
    assert_eq!(updated["renew_before_days"], 5, "{updated}");
    let line = api_error(
        &certplane(&["certs", "renew", &cert_id], &client).await,
        "invalid_state",
    );
    assert!(
        line.contains("only active certificates are renewed"),
        "{line}"
    );

    // Unknown ids, for every job command and the certificate levers.
    for command in [
        &["jobs", "get"][..],
        &["jobs", "cancel"],
        &["jobs", "retry"],
        &["jobs", "verification"],
        &["jobs", "verify"],
        &["certs", "renew"],
        &["certs", "revoke"],
        &["certs", "update"],
        &["certs", "retire"],
    ] {
        let mut args = command.to_vec();
        args.push("no-such-id");
        let out = certplane(&args, &client).await;
        let line = api_error(&out, "not_found");
        assert!(line.contains("no-such-id"), "{command:?}: {line}");
    }
    let line = api_error(
        &certplane(&["jobs", "list", "--status", "stuck"], &reader).await,
        "bad_request",
    );
    assert!(line.contains("stuck"), "{line}");
}

// ---------------------------------------------------------------- audit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_list_filters_and_paging() {
    let host = Host::start(false).await;
    let operator = host.ca_args(&host.app.operator);
    let admin = host.ca_args(&host.app.admin);
    let reader = host.ca_args(&host.app.reader);
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    let issuer = local_ca_issuer(&operator, "ca").await;
    let cert = new_certificate(&admin, "web", &issuer, None).await;
    let cert_id = cert["id"].as_str().expect("cert id").to_owned();
    ok(&certplane(
        &["certs", "update", &cert_id, "--owner", "team-a"],
        &operator,
    )
    .await);

    let all = ok_json(&certplane(&["audit", "list", "--output", "json"], &reader).await);
    let total = all["total"].as_u64().expect("total");
    assert!(total >= 3, "{all}");
    // By subject type and subject: the issuer's creation...
    let issuers = ok_json(
        &certplane(
            &[
                "audit",
                "list",
                "--subject-type",
                "issuer",
                "--output",
                "json",
            ],
            &reader,
        )
        .await,
    );
    assert_eq!(issuers["total"], 1, "{issuers}");
    let event = &issuers["items"][0];
    assert_eq!(event["action"], "issuer.create", "{event}");
    assert_eq!(event["actor"], "apikey:operator", "{event}");
    assert_eq!(event["actor_type"], "api_key", "{event}");
    assert_eq!(event["subject_id"], issuer.as_str(), "{event}");
    assert_eq!(event["details"]["plugin"], "local-ca", "{event}");
    // ...the certificate's history, newest first...
    let history = ok_json(
        &certplane(
            &[
                "audit",
                "list",
                "--subject-id",
                &cert_id,
                "--output",
                "json",
            ],
            &reader,
        )
        .await,
    );
    let actions: Vec<&str> = history["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["certificate.update", "certificate.create"],
        "{history}"
    );
    // ...and as a table.
    let table = ok(&certplane(&["audit", "list", "--subject-id", &cert_id], &reader).await);
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("AT") && header.ends_with("SUBJECT ID"),
        "{table}"
    );
    let listed = rows(&table);
    assert_eq!(listed.len(), 2, "{table}");
    // AT is a date and a time, then the actor, action, subject, id.
    assert_eq!(
        listed[1][2..],
        [
            "apikey:admin",
            "certificate.create",
            "certificate",
            cert_id.as_str()
        ],
        "{table}"
    );
    // By actor.
    let by_admin = ok_json(
        &certplane(
            &[
                "audit",
                "list",
                "--actor",
                "apikey:admin",
                "--output",
                "json",
            ],
            &reader,
        )
        .await,
    );
    assert_eq!(by_admin["total"], 1, "{by_admin}");
    assert_eq!(by_admin["items"][0]["subject_id"], cert_id.as_str());
    let nobody = ok_json(
        &certplane(
            &[
                "audit",
                "list",
                "--actor",
                "apikey:nobody",
                "--output",
                "json",
            ],
            &reader,
        )
        .await,
    );
    assert_eq!(nobody["total"], 0, "{nobody}");
    // By time: a `+` offset survives the query string.
    let since = before.format("%Y-%m-%dT%H:%M:%S+00:00").to_string();
    let recent = ok_json(
        &certplane(
            &["audit", "list", "--since", &since, "--output", "json"],
            &reader,
        )
        .await,
    );
    assert_eq!(recent["total"], total, "{recent}");
    let old = ok_json(
        &certplane(
            &[
                "audit",
                "list",
                "--until",
                "2000-01-01T00:00:00Z",
                "--output",
                "json",
            ],
            &reader,
        )
        .await,
    );
    assert_eq!(old["total"], 0, "{old}");
    let future = ok_json(
        &certplane(
            &[
                "audit",
                "list",
                "--since",
                "2999-01-01T00:00:00Z",
                "--output",
                "json",
            ],
            &reader,
        )
        .await,
    );
    assert_eq!(future["total"], 0, "{future}");
    // Paging.
    let first = ok(&certplane(&["audit", "list", "--per-page", "1"], &reader).await);
    assert_eq!(rows(&first).len(), 1, "{first}");
    assert!(
        first.ends_with(&format!("(1-1 of {total}; --page 2 for more)\n")),
        "{first}"
    );
    // Bad times: one line each.
    let line = api_error(
        &certplane(&["audit", "list", "--since", "yesterday"], &reader).await,
        "bad_request",
    );
    assert!(
        line.contains("since must be an RFC 3339 timestamp"),
        "{line}"
    );
    let line = api_error(
        &certplane(
            &[
                "audit",
                "list",
                "--since",
                "2025-02-01T00:00:00Z",
                "--until",
                "2025-01-01T00:00:00Z",
            ],
            &reader,
        )
        .await,
        "bad_request",
    );
    assert!(line.contains("since must not be after until"), "{line}");
}

// ------------------------------------------------------ instance updates

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuers_update_settings_secrets_and_grants() {
    let host = Host::start(false).await;
    let client = host.ca_args(&host.app.operator);
    let reader = host.ca_args(&host.app.reader);
    let (settings, key) = local_ca_settings();
    let created = ok_json(
        &certplane(
            &[
                "issuers",
                "create",
                "--name",
                "ca",
                "--plugin",
                "local-ca",
                "--settings",
                &settings,
                "--secret",
                &format!("ca_private_key_pem={key}"),
                "--output",
                "json",
            ],
            &client,
        )
        .await,
    );
    let id = created["id"].as_str().expect("id").to_owned();
    let mut new_settings: Value = serde_json::from_str(&settings).unwrap();
    new_settings["validity_days"] = 7.into();
    let new_settings = new_settings.to_string();

    // Settings only (table): replaced, the key and grants kept.
    let shown = ok(&certplane(
        &["issuers", "update", &id, "--settings", &new_settings],
        &client,
    )
    .await);
    assert_eq!(field(&shown, "ID"), id, "{shown}");
    assert!(
        field(&shown, "SETTINGS").contains("\"validity_days\":7"),
        "{shown}"
    );
    assert_eq!(
        field(&shown, "SECRET NAMES"),
        "ca_private_key_pem",
        "{shown}"
    );
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");

    // Grants (JSON): sent only with a grant flag, replaced, then cleared.
    let granted = ok_json(
        &certplane(
            &[
                "issuers",
                "update",
                &id,
                "--grant-host",
                "https://ca.example.test:443",
                "--grant-host",
                "https://ocsp.example.test",
                "--output",
                "json",
            ],
            &client,
        )
        .await,
    );
    assert_eq!(
        granted["grants"]["hosts"],
        serde_json::json!(["https://ca.example.test:443", "https://ocsp.example.test"]),
        "{granted}"
    );
    assert_eq!(granted["settings"]["validity_days"], 7, "{granted}");
    // The key again, from a file: grants untouched.
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), format!("{key}\n")).unwrap();
    let rekeyed = ok_json(
        &certplane(
            &[
                "issuers",
                "update",
                &id,
                "--secret-file",
                &format!("ca_private_key_pem={}", key_file.path().display()),
                "--output",
                "json",
            ],
            &client,
        )
        .await,
    );
    assert_eq!(rekeyed["grants"], granted["grants"], "{rekeyed}");
    assert_eq!(
        rekeyed["secret_names"],
        serde_json::json!(["ca_private_key_pem"])
    );
    let cleared = ok_json(
        &certplane(
            &[
                "issuers",
                "update",
                &id,
                "--clear-grants",
                "--output",
                "json",
            ],
            &client,
        )
        .await,
    );
    assert_eq!(
        cleared["grants"],
        serde_json::json!({ "hosts": [], "directories": [] }),
        "{cleared}"
    );
    // Every update was audited.
    let events = ok_json(
        &certplane(
            &["audit", "list", "--subject-id", &id, "--output", "json"],
            &reader,
        )
        .await,
    );
    let updates = events["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["action"] == "issuer.update")
        .count();
    assert_eq!(updates, 4, "{events}");

    // Refused by the server: the plugin needs its key; unknown secrets;
    // unknown ids; readers. Nothing changes.
    let line = api_error(
        &certplane(
            &[
                "issuers",
                "update",
                &id,
                "--remove-secret",
                "ca_private_key_pem",
            ],
            &client,
        )
        .await,
        "validation_failed",
    );
    assert!(line.contains("ca_private_key_pem"), "{line}");
    let line = api_error(
        &certplane(&["issuers", "update", &id, "--secret", "other=v"], &client).await,
        "validation_failed",
    );
    assert!(line.contains("reads no secret named \"other\""), "{line}");
    let line = api_error(
        &certplane(
            &[
                "issuers",
                "update",
                "no-such-issuer",
                "--settings",
                &new_settings,
                "--output",
                "json",
            ],
            &client,
        )
        .await,
        "not_found",
    );
    assert!(line.contains("no-such-issuer"), "{line}");
    api_error(
        &certplane(&["issuers", "update", &id, "--clear-grants"], &reader).await,
        "forbidden",
    );
    let detail = ok_json(&certplane(&["issuers", "get", &id, "--output", "json"], &reader).await);
    assert_eq!(detail["settings"]["validity_days"], 7, "{detail}");
    assert_eq!(
        detail["secret_names"],
        serde_json::json!(["ca_private_key_pem"])
    );

    // Refused locally, on one line, before anything is sent.
    let line = one_line_error(&certplane(&["issuers", "update", &id], &client).await);
    assert!(line.contains("nothing to update"), "{line}");
    let line =
        one_line_error(&certplane(&["issuers", "update", &id, "--settings", "[1]"], &client).await);
    assert!(line.contains("--settings must be a JSON object"), "{line}");
    let line = one_line_error(
        &certplane(
            &[
                "issuers",
                "update",
                &id,
                "--secret",
                "ca_private_key_pem=one",
                "--secret",
                "ca_private_key_pem=two",
            ],
            &client,
        )
        .await,
    );
    assert!(
        line.contains("secret ca_private_key_pem is given twice"),
        "{line}"
    );
    let line = one_line_error(
        &certplane(
            &[
                "issuers",
                "update",
                &id,
                "--secret-file",
                &format!("ca_private_key_pem={}", key_file.path().display()),
                "--remove-secret",
                "ca_private_key_pem",
            ],
            &client,
        )
        .await,
    );
    assert!(
        line.contains("secret ca_private_key_pem is given twice"),
        "{line}"
    );
    usage_error(
        &certplane(
            &[
                "issuers",
                "update",
                &id,
                "--clear-grants",
                "--grant-host",
                "https://ca.example.test",
            ],
            &client,
        )
        .await,
        "cannot be used with",
    );
    usage_error(
        &certplane(&["issuers", "update", &id, "--grant-dir", "/a:/b"], &client).await,
        "unexpected argument '--grant-dir'",
    );

    // A delete as JSON prints the retired issuer, the same on a repeat.
    let out = certplane(&["issuers", "delete", &id, "--output", "json"], &client).await;
    let retired = ok_json(&out);
    assert_eq!(retired["id"], id.as_str(), "{retired}");
    assert!(retired["retired_at"].is_string(), "{retired}");
    let out = certplane(&["issuers", "delete", &id, "--output", "json"], &client).await;
    assert_eq!(ok_json(&out), retired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_update_and_directory_grants_with_colons() {
    let host = Host::start(false).await;
    let client = host.ca_args(&host.app.operator);
    let reader = host.ca_args(&host.app.reader);
    let base = tempfile::tempdir().unwrap();
    let plain = base.path().join("plain");
    let colon = base.path().join("with:colon");
    std::fs::create_dir(&plain).unwrap();
    std::fs::create_dir(&colon).unwrap();
    let plain = plain.display().to_string();
    let colon = colon.display().to_string();

    // A host path holding `:`: split from the right.
    let created = ok_json(
        &certplane(
            &[
                "targets",
                "create",
                "--name",
                "files",
                "--plugin",
                "pem-files",
                "--settings",
                r#"{"directory":"/certs"}"#,
                "--grant-dir",
                &format!("{colon}:/certs:rw"),
                "--output",
                "json",
            ],
            &client,
        )
        .await,
    );
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(
        created["grants"]["directories"],
        serde_json::json!([{ "path": colon, "guest_path": "/certs", "writable": true }]),
        "{created}"
    );

    // Grants are replaced as a whole: directories and hosts.
    let updated = ok_json(
        &certplane(
            &[
                "targets",
                "update",
                &id,
                "--grant-dir",
                &format!("{plain}:/certs:rw"),
                "--grant-host",
                "https://hooks.example.test:443",
                "--output",
                "json",
            ],
            &client,
        )
        .await,
    );
    let grants = serde_json::json!({
        "hosts": ["https://hooks.example.test:443"],
        "directories": [{ "path": plain, "guest_path": "/certs", "writable": true }],
    });
    assert_eq!(updated["grants"], grants, "{updated}");
    // A host grant alone leaves no directory, which pem-files refuses; a
    // read-only one too (it must write). Nothing changes.
    let line = api_error(
        &certplane(
            &[
                "targets",
                "update",
                &id,
                "--grant-host",
                "https://hooks.example.test:443",
            ],
            &client,
        )
        .await,
        "validation_failed",
    );
    assert!(line.contains("pem-files"), "{line}");
    api_error(
        &certplane(
            &[
                "targets",
                "update",
                &id,
                "--grant-dir",
                &format!("{colon}:/certs:ro"),
            ],
            &client,
        )
        .await,
        "validation_failed",
    );
    let detail = ok_json(&certplane(&["targets", "get", &id, "--output", "json"], &reader).await);
    assert_eq!(detail["grants"], grants, "{detail}");

    // Settings only (table): the grants kept.
    let shown = ok(&certplane(
        &[
            "targets",
            "update",
            &id,
            "--settings",
            r#"{"directory":"/certs","layout":"combined"}"#,
        ],
        &client,
    )
    .await);
    assert_eq!(field(&shown, "ID"), id, "{shown}");
    assert!(
        field(&shown, "SETTINGS").contains("\"layout\":\"combined\""),
        "{shown}"
    );
    assert!(field(&shown, "GRANTS").contains(&plain), "{shown}");

    // Refused locally or by clap; unknown ids.
    let line = one_line_error(
        &certplane(
            &["targets", "update", &id, "--grant-dir", "/srv/certs:rw"],
            &client,
        )
        .await,
    );
    assert!(
        line.contains("--grant-dir `/srv/certs:rw` is not PATH:GUEST_PATH[:rw|:ro]"),
        "{line}"
    );
    usage_error(
        &certplane(
            &[
                "targets",
                "update",
                &id,
                "--clear-grants",
                "--grant-dir",
                &format!("{plain}:/certs:rw"),
            ],
            &client,
        )
        .await,
        "cannot be used with",
    );
    api_error(
        &certplane(
            &[
                "targets",
                "update",
                "no-such-target",
                "--settings",
                "{}",
                "--output",
                "json",
            ],
            &client,
        )
        .await,
        "not_found",
    );

    // Deleted as JSON: the retired target, the same when it already was
    // retired; a retired target takes no update.
    let out = certplane(&["targets", "delete", &id, "--output", "json"], &client).await;
    let retired = ok_json(&out);
    assert!(retired["retired_at"].is_string(), "{retired}");
    let out = certplane(&["targets", "delete", &id, "--output", "json"], &client).await;
    assert_eq!(ok_json(&out), retired);
    let line = api_error(
        &certplane(&["targets", "update", &id, "--settings", "{}"], &client).await,
        "invalid_state",
    );
    assert!(line.contains("is retired"), "{line}");
}

// ------------------------------------------- notifiers, notifications

/// A Standard Webhooks signing secret (`whsec_` + base64).
const WEBHOOK_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// `webhook` settings posting to a local port nothing listens on (no
/// delivery runs in these tests).
fn webhook_settings(port: u16) -> String {
    serde_json::json!({ "url": format!("http://127.0.0.1:{port}/hooks") }).to_string()
}

/// Creates a `webhook` notifier with `certplane notifiers create` and
/// returns its id.
async fn webhook_notifier(client: &[String], name: &str) -> String {
    let notifier = ok_json(
        &certplane(
            &[
                "notifiers",
                "create",
                "--name",
                name,
                "--plugin",
                "webhook",
                "--settings",
                &webhook_settings(9),
                "--secret",
                &format!("signing_secret={WEBHOOK_SECRET}"),
                "--grant-host",
                "http://127.0.0.1:9",
                "--output",
                "json",
            ],
            client,
        )
        .await,
    );
    assert_eq!(notifier["plugin"], "webhook", "{notifier}");
    notifier["id"].as_str().expect("notifier id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifiers_create_list_get_update_delete() {
    let host = Host::start(false).await;
    let client = host.ca_args(&host.app.operator);
    let reader = host.ca_args(&host.app.reader);

    // Created as a table (secret from a file), and as JSON.
    let secret_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret_file.path(), format!("{WEBHOOK_SECRET}\n")).unwrap();
    let created = ok(&certplane(
        &[
            "notifiers",
            "create",
            "--name",
            "hooks",
            "--plugin",
            "webhook",
            "--settings",
            &webhook_settings(9),
            "--secret-file",
            &format!("signing_secret={}", secret_file.path().display()),
            "--grant-host",
            "http://127.0.0.1:9",
        ],
        &client,
    )
    .await);
    let id = field(&created, "ID");
    assert_eq!(field(&created, "KIND"), "notifier", "{created}");
    assert_eq!(field(&created, "PLUGIN"), "webhook", "{created}");
    assert_eq!(
        field(&created, "SECRET NAMES"),
        "signing_secret",
        "{created}"
    );
    assert!(!created.contains("whsec_"), "{created}");
    let other = webhook_notifier(&client, "hooks-2").await;

    // List and get.
    let table = ok(&certplane(&["notifiers", "list"], &reader).await);
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("ID") && header.contains("PLUGIN") && header.ends_with("CREATED"),
        "{table}"
    );
    let listed = rows(&table);
    assert_eq!(listed.len(), 2, "{table}");
    let row = listed.iter().find(|r| r[0] == id).expect("listed");
    assert_eq!(row[1..3], ["hooks", "webhook"], "{table}");
    let page = ok_json(&certplane(&["notifiers", "list", "--output", "json"], &reader).await);
    assert_eq!(page["total"], 2, "{page}");
    let first = ok(&certplane(&["notifiers", "list", "--per-page", "1"], &reader).await);
    assert!(
        first.ends_with("(1-1 of 2; --page 2 for more)\n"),
        "{first}"
    );
    let detail = ok_json(&certplane(&["notifiers", "get", &id, "--output", "json"], &reader).await);
    assert_eq!(detail["kind"], "notifier", "{detail}");
    assert_eq!(
        detail["settings"]["url"], "http://127.0.0.1:9/hooks",
        "{detail}"
    );
    assert_eq!(
        detail["grants"]["hosts"],
        serde_json::json!(["http://127.0.0.1:9"])
    );
    assert_eq!(
        detail["secret_names"],
        serde_json::json!(["signing_secret"])
    );
    let shown = ok(&certplane(&["notifiers", "get", &id], &reader).await);
    assert_eq!(field(&shown, "NAME"), "hooks", "{shown}");

    // Update: a new receiver and its grant; the secret kept.
    let updated = ok_json(
        &certplane(
            &[
                "notifiers",
                "update",
                &id,
                "--settings",
                &webhook_settings(10),
                "--grant-host",
                "http://127.0.0.1:10",
                "--output",
                "json",
            ],
            &client,
        )
        .await,
    );
    assert_eq!(
        updated["settings"]["url"], "http://127.0.0.1:10/hooks",
        "{updated}"
    );
    assert_eq!(
        updated["grants"]["hosts"],
        serde_json::json!(["http://127.0.0.1:10"])
    );
    assert_eq!(
        updated["secret_names"],
        serde_json::json!(["signing_secret"])
    );
    let shown = ok(&certplane(
        &[
            "notifiers",
            "update",
            &id,
            "--secret",
            &format!("signing_secret={WEBHOOK_SECRET}"),
        ],
        &client,
    )
    .await);
    assert_eq!(field(&shown, "SECRET NAMES"), "signing_secret", "{shown}");
    // A malformed secret is refused by the plugin, without its value.
    let line = api_error(
        &certplane(
            &[
                "notifiers",
                "update",
                &id,
                "--secret",
                "signing_secret=whsec_not*base64",
            ],
            &client,
        )
        .await,
        "validation_failed",
    );
    assert!(
        line.contains("signing_secret") && !line.contains("not*base64"),
        "{line}"
    );
    api_error(
        &certplane(
            &[
                "notifiers",
                "update",
                &id,
                "--remove-secret",
                "signing_secret",
            ],
            &client,
        )
        .await,
        "validation_failed",
    );

    // Creation errors: no secret, wrong plugin kind, directory grants,
    // readers.
    let create = |extra: &[&str]| {
        let mut args = vec![
            "notifiers".to_owned(),
            "create".into(),
            "--name".into(),
            "n".into(),
            "--settings".into(),
            webhook_settings(9),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    async fn run(args: Vec<String>, client: &[String]) -> Output {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        certplane(&args, client).await
    }
    let line = api_error(
        &run(create(&["--plugin", "webhook"]), &client).await,
        "validation_failed",
    );
    assert!(line.contains("signing_secret"), "{line}");
    let line = api_error(
        &run(create(&["--plugin", "local-ca"]), &client).await,
        "validation_failed",
    );
    assert!(
        line.contains("plugin local-ca") && line.contains("not a notifier"),
        "{line}"
    );
    usage_error(
        &run(
            create(&["--plugin", "webhook", "--grant-dir", "/a:/b"]),
            &client,
        )
        .await,
        "unexpected argument '--grant-dir'",
    );
    api_error(
        &run(
            create(&[
                "--plugin",
                "webhook",
                "--secret",
                &format!("signing_secret={WEBHOOK_SECRET}"),
            ]),
            &reader,
        )
        .await,
        "forbidden",
    );

    // Unknown ids.
    for command in [
        &["notifiers", "get"][..],
        &["notifiers", "delete"],
        &["notifiers", "update", "--clear-grants", "--output", "json"],
    ] {
        let mut args = command.to_vec();
        args.insert(2, "no-such-notifier");
        let line = api_error(&certplane(&args, &client).await, "not_found");
        assert!(line.contains("no-such-notifier"), "{command:?}: {line}");
    }

    // Delete retires: a table line, or the retired notifier as JSON; it
    // stays readable.
    let deleted = ok(&certplane(&["notifiers", "delete", &id], &client).await);
    assert!(
        deleted.starts_with(&format!("notifier {id} is retired since ")),
        "{deleted}"
    );
    let out = certplane(
        &["notifiers", "delete", &other, "--output", "json"],
        &client,
    )
    .await;
    assert!(ok_json(&out)["retired_at"].is_string());
    let shown = ok(&certplane(&["notifiers", "get", &id], &reader).await);
    assert_ne!(field(&shown, "RETIRED AT"), "-", "{shown}");
    let page = ok_json(&certplane(&["notifiers", "list", "--output", "json"], &reader).await);
    assert_eq!(page["total"], 0, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_list_filter_and_get() {
    let host = Host::start(false).await;
    let client = host.ca_args(&host.app.operator);
    let reader = host.ca_args(&host.app.reader);
    let notifier = webhook_notifier(&client, "hooks").await;

    // Three queued (no delivery loop runs here); one marked sent.
    let mut ids = Vec::new();
    for (i, event) in ["certificate.expiring", "job.failed", "certificate.renewed"]
        .into_iter()
        .enumerate()
    {
        let n = host
            .app
            .store
            .enqueue_notification(NewNotification {
                notifier_id: notifier.clone(),
                event_type: event.into(),
                subject: Some(format!("certificate/c{i}")),
                payload: serde_json::json!({ "summary": format!("event {i}"), "n": i }),
                max_attempts: 5,
            })
            .await
            .expect("enqueue");
        ids.push(n.id);
        // Distinct creation times, for the newest-first order.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let claimed = host
        .app
        .store
        .claim_notifications(1)
        .await
        .expect("claim")
        .pop()
        .expect("one claimed");
    let lease = claimed.lease().expect("lease");
    assert!(
        host.app
            .store
            .mark_notification_sent(&lease)
            .await
            .expect("sent")
    );
    let sent_id = claimed.id.clone();

    // Table: newest first.
    let table = ok(&certplane(&["notifications", "list"], &reader).await);
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("ID")
            && header.contains("NOTIFIER")
            && header.contains("EVENT")
            && header.ends_with("LAST ERROR"),
        "{table}"
    );
    let listed = rows(&table);
    assert_eq!(listed.len(), 3, "{table}");
    let order: Vec<&str> = listed.iter().map(|r| r[0].as_str()).collect();
    let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(order, newest_first, "{table}");
    let row = &listed[0];
    assert_eq!(
        row[1..4],
        [notifier.as_str(), "certificate.renewed", "pending"],
        "{table}"
    );

    // JSON, filtered by status, paged.
    let page = ok_json(&certplane(&["notifications", "list", "--output", "json"], &reader).await);
    assert_eq!(page["total"], 3, "{page}");

    let sent = ok_json(
        &certplane(
            &[
                "notifications",
                "list",
                "--status",
                "sent",
                "--output",
                "json",
            ],
            &reader,
        )
        .await,
    );
    assert_eq!(item_ids(&sent), vec![sent_id.clone()], "{sent}");
    assert_eq!(sent["items"][0]["attempts"], 1, "{sent}");
    let pending = ok(&certplane(&["notifications", "list", "--status", "pending"], &reader).await);
    assert_eq!(rows(&pending).len(), 2, "{pending}");
    let failed = ok_json(
        &certplane(
            &[
                "notifications",
                "list",
                "--status",
                "failed",
                "--output",
                "json",
            ],
            &reader,
        )
        .await,
    );
    assert_eq!(failed["total"], 0, "{failed}");
    let first = ok(&certplane(&["notifications", "list", "--per-page", "2"], &reader).await);
    assert!(
        first.ends_with("(1-2 of 3; --page 2 for more)\n"),
        "{first}"
    );
    let line = api_error(
        &certplane(&["notifications", "list", "--status", "lost"], &reader).await,
        "bad_request",
    );
    assert!(line.contains("lost"), "{line}");

    // One notification.
    let one = ok_json(
        &certplane(
            &["notifications", "get", &sent_id, "--output", "json"],
            &reader,
        )
        .await,
    );
    assert_eq!(one["id"], sent_id.as_str(), "{one}");
    assert_eq!(one["notifier_id"], notifier.as_str(), "{one}");
    assert_eq!(one["status"], "sent", "{one}");
    assert!(one["sent_at"].is_string(), "{one}");
    assert!(one["payload"]["summary"].is_string(), "{one}");
    let shown = ok(&certplane(&["notifications", "get", &ids[1]], &reader).await);
    assert_eq!(field(&shown, "EVENT TYPE"), "job.failed", "{shown}");
    assert_eq!(field(&shown, "SUBJECT"), "certificate/c1", "{shown}");
    assert_eq!(field(&shown, "STATUS"), "pending", "{shown}");
    assert!(field(&shown, "PAYLOAD").contains("\"n\":1"), "{shown}");
    let line = api_error(
        &certplane(&["notifications", "get", "no-such-notification"], &reader).await,
        "not_found",
    );
    assert!(line.contains("no-such-notification"), "{line}");

    // The notifier cannot go while deliveries are pending.
    let line = api_error(
        &certplane(&["notifiers", "delete", &notifier], &client).await,
        "invalid_state",
    );
    assert!(
        line.contains("2 notification(s) pending delivery"),
        "{line}"
    );

    // By notifier: a second notifier's notification is not listed.
    let other = webhook_notifier(&client, "other-hooks").await;
    host.app
        .store
        .enqueue_notification(NewNotification {
            notifier_id: other.clone(),
            event_type: "job.failed".into(),
            subject: None,
            payload: serde_json::json!({}),
            max_attempts: 5,
        })
        .await
        .expect("enqueue");
    let mine = ok_json(
        &certplane(
            &[
                "notifications",
                "list",
                "--notifier",
                &notifier,
                "--output",
                "json",
            ],
            &reader,
        )
        .await,
    );
    assert_eq!(mine["total"], 3, "{mine}");
    let theirs = ok_json(
        &certplane(
            &[
                "notifications",
                "list",
                "--notifier",
                &other,
                "--output",
                "json",
            ],
            &reader,
        )
        .await,
    );
    assert_eq!(theirs["total"], 1, "{theirs}");
    assert_eq!(theirs["items"][0]["notifier_id"], other.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifiers_disable_enable_and_cancel_pending() {
    let host = Host::start(false).await;
    let client = host.ca_args(&host.app.operator);
    let reader = host.ca_args(&host.app.reader);
    let notifier = webhook_notifier(&client, "hooks").await;
    // Three queued (no delivery loop runs here), one of them being sent.
    for i in 0..3 {
        host.app
            .store
            .enqueue_notification(NewNotification {
                notifier_id: notifier.clone(),
                event_type: "certificate.expiring".into(),
                subject: Some(format!("certificate/c{i}")),
                payload: serde_json::json!({}),
                max_attempts: 5,
            })
            .await
            .expect("enqueue");
    }
    let sending = host
        .app
        .store
        .claim_notifications(1)
        .await
        .expect("claim")
        .pop()
        .expect("one claimed");

    // Delete is refused and says what to do.
    let line = api_error(
        &certplane(&["notifiers", "delete", &notifier], &client).await,
        "invalid_state",
    );
    assert!(
        line.contains(&format!("certplane notifiers cancel-pending {notifier}")),
        "{line}"
    );

    // Disable: a table of the state, then idempotent as JSON.
    let shown = ok(&certplane(&["notifiers", "disable", &notifier], &client).await);
    assert_eq!(field(&shown, "CHANGED"), "yes", "{shown}");
    assert_eq!(field(&shown, "PENDING"), "2", "{shown}");
    assert_eq!(field(&shown, "SENDING"), "1", "{shown}");
    assert_ne!(field(&shown, "DISABLED AT"), "-", "{shown}");
    let again = ok_json(
        &certplane(
            &["notifiers", "disable", &notifier, "--output", "json"],
            &client,
        )
        .await,
    );
    assert_eq!(again["changed"], false, "{again}");
    assert!(again["disabled_at"].is_string(), "{again}");
    let detail = ok_json(
        &certplane(
            &["notifiers", "get", &notifier, "--output", "json"],
            &reader,
        )
        .await,
    );
    assert!(detail["disabled_at"].is_string(), "{detail}");

    // Cancel the queue: two pending cancelled, the one in flight not
    // retried.
    let out = ok(&certplane(&["notifiers", "cancel-pending", &notifier], &client).await);
    assert_eq!(
        out,
        format!(
            "cancelled 2 pending notification(s) of notifier {notifier}; 1 being sent will not \
             be retried\n"
        )
    );
    let counts = ok_json(
        &certplane(
            &["notifiers", "cancel-pending", &notifier, "--output", "json"],
            &client,
        )
        .await,
    );
    assert_eq!(counts["cancelled"], 0, "{counts}");
    assert_eq!(counts["in_flight"], 1, "{counts}");
    let cancelled = ok_json(
        &certplane(
            &[
                "notifications",
                "list",
                "--status",
                "cancelled",
                "--output",
                "json",
            ],
            &reader,
        )
        .await,
    );
    assert_eq!(cancelled["total"], 2, "{cancelled}");

    // Enable.
    let enabled = ok_json(
        &certplane(
            &["notifiers", "enable", &notifier, "--output", "json"],
            &client,
        )
        .await,
    );
    assert_eq!(enabled["changed"], true, "{enabled}");
    assert!(enabled["disabled_at"].is_null(), "{enabled}");

    // Readers may not; unknown ids are not found.
    for command in ["disable", "enable", "cancel-pending"] {
        api_error(
            &certplane(&["notifiers", command, &notifier], &reader).await,
            "forbidden",
        );
        let line = api_error(
            &certplane(&["notifiers", command, "no-such-notifier"], &client).await,
            "not_found",
        );
        assert!(line.contains("no-such-notifier"), "{command}: {line}");
    }

    // The attempt in flight fails: cancelled, not retried; then the
    // notifier can be deleted.
    let lease = sending.lease().expect("lease");
    assert!(
        host.app
            .store
            .mark_notification_failed(&lease, "timed out", false, None)
            .await
            .expect("failed")
    );
    let row = ok_json(
        &certplane(
            &["notifications", "get", &sending.id, "--output", "json"],
            &reader,
        )
        .await,
    );
    assert_eq!(row["status"], "cancelled", "{row}");
    let deleted = ok(&certplane(&["notifiers", "delete", &notifier], &client).await);
    assert!(
        deleted.starts_with(&format!("notifier {notifier} is retired since ")),
        "{deleted}"
    );
}

// ------------------------------------------------------------ jobs verify

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_verify_queues_a_verification_of_a_completed_deployment() {
    let host = Host::start_with(false, |c| {
        c.scheduler.jobs_ms = 50;
        c.scheduler.renewal_ms = 50;
    })
    .await;
    let client = host.ca_args(&host.app.operator);
    let reader = host.ca_args(&host.app.reader);

    // A target that names no endpoint: its deployment completes unverified.
    let dir = tempfile::tempdir().unwrap();
    let target = ok_json(
        &certplane(
            &[
                "targets",
                "create",
                "--name",
                "files",
                "--plugin",
                "pem-files",
                "--settings",
                r#"{"directory":"/certs"}"#,
                "--grant-dir",
                &format!("{}:/certs:rw", dir.path().display()),
                "--output",
                "json",
            ],
            &client,
        )
        .await,
    );
    let target_id = target["id"].as_str().expect("target id").to_owned();
    let issuer = local_ca_issuer(&client, "ca").await;
    let cert = new_certificate(&client, "web", &issuer, Some(&target_id)).await;
    let cert_id = cert["id"].as_str().expect("cert id").to_owned();

    let scheduler =
        certplane_host::engine::start(host.app.state.engine.clone(), CancellationToken::new());
    let deadline = Instant::now() + Duration::from_secs(20);
    let deployment_id = loop {
        let jobs = host
            .app
            .store
            .list_jobs(&JobFilter {
                certificate_id: Some(cert_id.clone()),
                job_type: Some(JobType::Deployment),
                ..JobFilter::default()
            })
            .await
            .expect("jobs");
        match jobs.first().map(|j| j.status) {
            Some(JobStatus::Completed) => break jobs[0].id.clone(),
            Some(JobStatus::Failed) => panic!("the deployment failed: {jobs:?}"),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no completed deployment within 20 s: {jobs:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Stopped, so the new verification jobs stay pending.
    let report = scheduler.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_clean(), "{report:?}");

    // Table: the new job's id.
    let out = ok(&certplane(&["jobs", "verify", &deployment_id], &client).await);
    let job_id = out
        .strip_prefix("verification job ")
        .and_then(|rest| rest.strip_suffix(&format!(" queued for deployment {deployment_id}\n")))
        .unwrap_or_else(|| panic!("unexpected output: {out}"))
        .to_owned();
    let job = ok_json(&certplane(&["jobs", "get", &job_id, "--output", "json"], &reader).await);
    assert_eq!(job["job_type"], "verification", "{job}");
    assert_eq!(job["status"], "pending", "{job}");
    assert_eq!(job["parent_job_id"], deployment_id.as_str(), "{job}");
    assert_eq!(job["target_id"], target_id.as_str(), "{job}");
    assert_eq!(job["certificate_id"], cert_id.as_str(), "{job}");

    // JSON: the server's view of another new job.
    let again = ok_json(
        &certplane(
            &["jobs", "verify", &deployment_id, "--output", "json"],
            &client,
        )
        .await,
    );
    assert_eq!(again["job_type"], "verification", "{again}");
    assert_eq!(again["parent_job_id"], deployment_id.as_str(), "{again}");
    assert_ne!(again["id"], job_id.as_str(), "{again}");
    let listed = ok_json(
        &certplane(
            &["jobs", "list", "--type", "verification", "--output", "json"],
            &reader,
        )
        .await,
    );
    assert_eq!(listed["total"], 2, "{listed}");

    // Readers cannot; a verification job is no deployment.
    api_error(
        &certplane(&["jobs", "verify", &deployment_id], &reader).await,
        "forbidden",
    );
    let line = api_error(
        &certplane(&["jobs", "verify", &job_id], &client).await,
        "validation_failed",
    );
    assert!(line.contains("only deployments can be verified"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_create_list_show_and_revoke() {
    let host = Host::start(false).await;
    let admin = host.ca_args(&host.app.admin);

    // Created: the key is printed once, apart from its fields.
    let asked_at = chrono::Utc::now();
    let created = ok(&certplane(
        &[
            "keys",
            "create",
            "--name",
            "ci",
            "--scope",
            "read_only",
            "--expires-in-days",
            "30",
        ],
        &admin,
    )
    .await);
    assert!(created.contains("shown once"), "{created}");
    let secret = created
        .split_whitespace()
        .find(|w| w.starts_with("cpk_") && w.len() > 20)
        .unwrap_or_else(|| panic!("no key in:\n{created}"))
        .to_owned();
    let id = field(&created, "ID");
    assert_eq!(field(&created, "SCOPE"), "read_only");

    // Used, then listed and shown without it.
    let as_ci = host.ca_args(&secret);
    ok(&certplane(&["plugins", "list"], &as_ci).await);
    let list = ok(&certplane(&["keys", "list"], &admin).await);
    assert!(!list.contains(&secret), "{list}");
    let row = rows(&list)
        .into_iter()
        .find(|r| r[0] == id)
        .unwrap_or_else(|| panic!("{id} not listed:\n{list}"));
    assert_eq!(&row[1..4], ["ci", "read_only", "active"], "{list}");
    let shown = ok_json(&certplane(&["keys", "show", &id, "--output", "json"], &admin).await);
    assert!(shown["last_used_at"].is_string(), "{shown}");
    assert!(shown.get("secret").is_none(), "{shown}");
    // `--expires-in-days 30`: the key expires 30 days after it was asked
    // for, in every form the CLI shows it.
    let expires_at = shown["expires_at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .unwrap_or_else(|| panic!("no expiry: {shown}"))
        .with_timezone(&chrono::Utc);
    let ahead = expires_at - asked_at;
    assert!(
        ahead >= chrono::Duration::days(30) - chrono::Duration::seconds(1)
            && ahead <= chrono::Duration::days(30) + chrono::Duration::minutes(2),
        "expires {expires_at}, asked at {asked_at}"
    );
    let printed = expires_at.format("%Y-%m-%d %H:%M:%S").to_string();
    assert_eq!(field(&created, "EXPIRES AT"), printed, "{created}");
    assert_eq!(row[7..9].join(" "), printed, "{list}");

    // Readers cannot manage keys; the admin revokes, twice alike.
    api_error(&certplane(&["keys", "list"], &as_ci).await, "forbidden");
    let revoked = ok_json(&certplane(&["keys", "revoke", &id, "--output", "json"], &admin).await);
    assert_eq!(revoked["status"], "revoked", "{revoked}");
    let again = ok_json(&certplane(&["keys", "revoke", &id, "--output", "json"], &admin).await);
    assert_eq!(again, revoked);
    api_error(
        &certplane(&["plugins", "list"], &as_ci).await,
        "unauthorized",
    );
    let listed = ok_json(
        &certplane(
            &["keys", "list", "--status", "revoked", "--output", "json"],
            &admin,
        )
        .await,
    );
    assert_eq!(item_ids(&listed), [id]);

    // The last admin key stays.
    let admin_id = ok_json(
        &certplane(
            &["keys", "list", "--status", "active", "--output", "json"],
            &admin,
        )
        .await,
    )["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["scope"] == "admin")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    api_error(
        &certplane(&["keys", "revoke", &admin_id], &admin).await,
        "invalid_state",
    );
    usage_error(
        &certplane(
            &["keys", "create", "--name", "x", "--scope", "root"],
            &admin,
        )
        .await,
        "root",
    );
}

// -------------------------------------------------------------- certs import

/// `certs import` sends a file's certificates 1,000 at a time: a refused
/// batch leaves the batches before it created and says which item of the
/// file was at fault; a file of one batch is all or nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_import_sends_batches_and_names_the_item_at_fault() {
    let host = Host::start(true).await;
    let client = strings(&["--host-url", &host.url, "--api-key", &host.app.operator]);
    let issuer = local_ca_issuer(&client, "ca").await;
    let item = |name: String| {
        serde_json::json!({ "name": name, "common_name": "www.example.test",
                            "issuer_id": issuer, "renew_before_days": 10 })
    };
    let dir = tempfile::tempdir().unwrap();
    let write = |file: &str, items: Vec<Value>| {
        let path = dir.path().join(file);
        std::fs::write(&path, Value::Array(items).to_string()).unwrap();
        path.display().to_string()
    };
    let rows = || async {
        certplane_testkit::count(&host.app.store, "SELECT COUNT(*) FROM certificates").await
    };

    let small = write("small.json", vec![item("a".into()), item("b".into())]);
    let out = ok_json(&certplane(&["certs", "import", &small, "--output", "json"], &client).await);
    let names: Vec<&str> = out
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"], "{out}");
    let table = ok(&certplane(
        &[
            "certs",
            "import",
            &write("one.json", vec![item("c".into())]),
        ],
        &client,
    )
    .await);
    assert!(table.starts_with("ID") && table.contains(" c "), "{table}");
    assert_eq!(rows().await, 3);

    // One batch with a taken name: nothing of it is created.
    let clash = write("clash.json", vec![item("d".into()), item("a".into())]);
    let o = certplane(&["certs", "import", &clash], &client).await;
    assert!(!o.status.success(), "{}", stdout(&o));
    assert!(stderr(&o).contains("nothing was created"), "{}", stderr(&o));
    assert_eq!(rows().await, 3);

    // 1,002 items, the 1,002nd (item 1001) a name given twice: the first
    // batch of 1,000 is created, the second refused and named.
    let mut many: Vec<Value> = (0..1001).map(|i| item(format!("n{i:04}"))).collect();
    many.push(item("n1000".into()));
    let o = certplane(
        &[
            "certs",
            "import",
            &write("many.json", many),
            "--output",
            "json",
        ],
        &client,
    )
    .await;
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("item 1001 of the file"), "{err}");
    assert!(
        err.contains("the 1000 certificates before item 1000 were created"),
        "{err}"
    );
    let listed: Value = serde_json::from_str(&stdout(&o)).expect("the created ones as JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(1000));
    assert_eq!(rows().await, 1003);

    for (file, text, says) in [
        ("object.json", r#"{"name": "x"}"#, "must hold a JSON array"),
        ("empty.json", "[]", "holds no certificates"),
        ("broken.json", "[{", "is not JSON"),
    ] {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        let o = certplane(&["certs", "import", &path.display().to_string()], &client).await;
        assert!(
            !o.status.success() && stderr(&o).contains(says),
            "{file}: {}",
            stderr(&o)
        );
    }
    let o = certplane(&["certs", "import", "/nonexistent/certs.json"], &client).await;
    assert!(
        !o.status.success() && stderr(&o).contains("cannot read"),
        "{}",
        stderr(&o)
    );
}
