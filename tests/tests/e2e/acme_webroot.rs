//! http-01 through the agent, webroot style, with a real web server: the
//! real host (`serve`) and the in-process agent, and Debian's nginx
//! serving a temporary webroot on a free loopback port. The agent writes
//! the token file, nginx serves it, the agent sees it through nginx and
//! reports it ready; when the job ends the agent deletes it. Then the same
//! with a real CA: Pebble validates http-01 against that nginx and issues,
//! the key never leaving the agent.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use certplane_agent::config::ChallengesConfig;
use certplane_agent::{Exit, Mode};
use certplane_host::store::{ChallengeRow, JobStatus, JobType, NewChallenge, NewJob, Store};
use certplane_testkit::pebble::{Pebble, PebbleOptions};
use certplane_testkit::stack::{free_port, get, post};
use certplane_testkit::{Backend, Stack, both_backends, wait_for};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

both_backends!(
    the_agent_serves_a_token_through_nginx,
    pebble_issues_through_nginx
);

/// The nginx binary (Debian package `nginx`).
const NGINX: &str = "/usr/sbin/nginx";

/// nginx in the foreground, one process, everything in its own directory.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    webroot: PathBuf,
}

impl Nginx {
    /// Serves `webroot` for every name on `127.0.0.1:<free port>`; the
    /// access log records the `Host` of each request.
    fn start(webroot: &Path) -> Nginx {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} is missing: apt-get install nginx"
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let port = free_port().unwrap();
        // The web server's user must be able to read the webroot.
        std::fs::set_permissions(webroot, std::fs::Permissions::from_mode(0o755)).unwrap();
        let conf = format!(
            "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log stderr info;
events {{ worker_connections 64; }}
http {{
    log_format with_host '$host $request $status';
    access_log {d}/access.log with_host;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{port};
        server_name _;
        root {root};
    }}
}}
",
            root = webroot.display()
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = std::fs::File::create(dir.path().join("nginx.stderr")).unwrap();
        let child = Command::new(NGINX)
            .arg("-e")
            .arg("stderr")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {NGINX}: {e}"));
        let mut nginx = Nginx {
            child,
            dir,
            port,
            webroot: webroot.to_path_buf(),
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited at start ({status}):\n{}", nginx.stderr());
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nginx does not listen:\n{}",
                nginx.stderr()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        nginx
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nginx.stderr")).unwrap_or_default()
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    fn token_file(&self, token: &str) -> PathBuf {
        self.webroot.join(".well-known/acme-challenge").join(token)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The in-process agent, stopped on drop.
struct RunningAgent {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<Exit, certplane_agent::AgentError>>,
}

impl RunningAgent {
    /// Starts agent `name` of `stack` serving http-01 from `nginx`.
    fn start(stack: &Stack, name: &str, nginx: &Nginx) -> RunningAgent {
        let mut config = stack.agent_config(name);
        config.challenges = ChallengesConfig {
            webroot: Some(nginx.webroot.clone()),
            check_url: nginx.url(),
            check_within_secs: 10,
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(certplane_agent::run(config, Mode::Continuous, stop.clone()));
        RunningAgent { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        let exit = self.task.await.unwrap().unwrap();
        assert_eq!(exit, Exit::Stopped);
    }
}

/// A plain GET through nginx with `host` as `Host`: (status, body).
async fn fetch(nginx: &Nginx, path: &str, host: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", nginx.port))
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The certificate's finished deployment; on timeout, panics with the
/// jobs, challenges and nginx's log.
async fn deployment_done(stack: &Stack, store: &Store, nginx: &Nginx, cert_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let jobs = stack.jobs(cert_id).await;
        if let Some(done) = jobs.iter().find(|j| {
            j["job_type"] == "deployment" && (j["status"] == "completed" || j["status"] == "failed")
        }) {
            return done.clone();
        }
        if Instant::now() > deadline {
            let mut rows = Vec::new();
            for job in &jobs {
                rows.extend(challenges_of(store, job["id"].as_str().unwrap()).await);
            }
            panic!(
                "no deployment within 120 s\njobs: {jobs:#?}\nchallenges: {rows:#?}\nnginx: {}",
                nginx.access_log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn challenges_of(store: &Store, job_id: &str) -> Vec<ChallengeRow> {
    store.job_challenges(job_id).await.unwrap()
}

/// The challenge row's state once it is one of `states`.
async fn settled(store: &Store, job_id: &str, id: &str, states: &[&str]) -> ChallengeRow {
    wait_for(
        &format!("challenge {id} to be {states:?}"),
        Duration::from_secs(30),
        || async {
            challenges_of(store, job_id)
                .await
                .into_iter()
                .find(|r| r.challenge_id == id && states.contains(&r.state.as_str()))
        },
    )
    .await
}

async fn the_agent_serves_a_token_through_nginx(backend: Backend) {
    let stack = Stack::new(backend, 30).await;
    let nginx = Nginx::start(&stack.dir("www"));
    let agent = RunningAgent::start(&stack, "web-1", &nginx);
    let agent_id = stack.agent_id("web-1").await;
    let store = Store::connect(&stack.host.config().database_url())
        .await
        .unwrap();

    // A job nobody runs (awaiting approval) holding a challenge routed to
    // the agent, as `apply_effects` records it.
    let job = store
        .create_job(NewJob::new(JobType::Issuance).status(JobStatus::AwaitingApproval))
        .await
        .unwrap();
    let token = "nGinX_t0ken-1";
    let key_authorization = format!("{token}.thumbprint");
    store
        .insert_challenges(
            &job.id,
            &[NewChallenge {
                challenge_id: "c1".into(),
                kind: "http-01".into(),
                identifier: "www.webroot.test".into(),
                name: token.into(),
                value: key_authorization.clone(),
                route: format!("agent:{agent_id}"),
                zone: None,
            }],
        )
        .await
        .unwrap();

    // The publisher wakes the agent; the agent writes, checks, reports.
    let row = settled(&store, &job.id, "c1", &["ready", "failed"]).await;
    assert_eq!(row.state, "ready", "{:?}\n{}", row.message, nginx.stderr());
    assert!(row.published);
    let file = nginx.token_file(token);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), key_authorization);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644);
    let path = format!("/.well-known/acme-challenge/{token}");
    assert_eq!(
        fetch(&nginx, &path, "www.webroot.test").await,
        (200, key_authorization.clone())
    );
    // The agent's own check went through nginx with the validated name.
    let seen = format!("www.webroot.test GET {path} HTTP/1.1 200");
    assert!(nginx.access_log().contains(&seen), "{}", nginx.access_log());

    // The job ends: the host withdraws, the agent deletes the file.
    let cancelled = post(
        &stack.host.admin,
        &format!("/jobs/{}/cancel", job.id),
        json!({}),
    )
    .await
    .unwrap();
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let row = settled(&store, &job.id, "c1", &["withdrawn"]).await;
    assert_eq!(row.message, None, "the agent removed the file itself");
    assert!(!file.exists());
    assert_eq!(fetch(&nginx, &path, "www.webroot.test").await.0, 404);
    agent.stop().await;
}

async fn pebble_issues_through_nginx(backend: Backend) {
    let stack = Stack::new(backend, 30).await;
    let nginx = Nginx::start(&stack.dir("www"));
    // Pebble validates http-01 at nginx; its DNS answers 127.0.0.1.
    let pebble = Pebble::start(PebbleOptions {
        http_port: Some(nginx.port),
        ..PebbleOptions::default()
    });
    let agent = RunningAgent::start(&stack, "web-1", &nginx);
    let agent_id = stack.agent_id("web-1").await;
    let store = Store::connect(&stack.host.config().database_url())
        .await
        .unwrap();

    let issuer = post(
        &stack.host.admin,
        "/issuers",
        json!({
            "name": "pebble",
            "plugin": "acme",
            "settings": {
                "directory_url": pebble.directory_url(),
                "terms_of_service_agreed": true,
                "contact": ["mailto:ops@example.test"],
            },
            "grants": {
                "hosts": [pebble.grant()],
                "tls": { "extra_roots_pem": [pebble.tls_root_pem()] },
                "challenges": { "http_01": "agent" },
            },
        }),
    )
    .await
    .unwrap();
    let deploy_dir = stack.dir("web-1-certs");
    let target = stack
        .pem_target("files", &agent_id, &deploy_dir, None)
        .await;
    let names = ["www.webroot.test", "webroot.test"];
    let cert = post(
        &stack.host.admin,
        "/certificates",
        json!({
            "name": "site",
            "common_name": names[0],
            "sans": names,
            "key_type": "ecdsa-p256",
            "issuer_id": issuer["id"],
            "target_ids": [target["id"]],
        }),
    )
    .await
    .unwrap();
    assert_eq!(cert["key_source"], "agent", "{cert}");
    let cert_id = cert["id"].as_str().unwrap();

    let deployment = deployment_done(&stack, &store, &nginx, cert_id).await;
    assert_eq!(deployment["status"], "completed", "{deployment}");
    let issuance = stack
        .jobs(cert_id)
        .await
        .into_iter()
        .find(|j| j["job_type"] == "issuance")
        .expect("the issuance job");
    assert_eq!(issuance["status"], "completed", "{issuance}");
    let job_id = issuance["id"].as_str().unwrap();

    // Pebble fetched every token from nginx, with the name as Host.
    let rows = challenges_of(&store, job_id).await;
    assert!(!rows.is_empty());
    let log = nginx.access_log();
    for row in &rows {
        assert_eq!(row.kind, "http-01");
        assert_eq!(row.route, format!("agent:{agent_id}"));
        let seen = format!(
            "{} GET /.well-known/acme-challenge/{} HTTP/1.1 200",
            row.identifier, row.name
        );
        assert!(
            log.matches(&seen).count() >= 2,
            "agent and CA: {seen}\n{log}"
        );
    }
    // Pebble issued the version the agent deployed, with the agent's key.
    let detail = get(&stack.host.admin, &format!("/certificates/{cert_id}"))
        .await
        .unwrap();
    let versions = detail["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1, "{detail}");
    let serial = versions[0]["serial"]
        .as_str()
        .unwrap()
        .replace(':', "")
        .to_ascii_lowercase();
    let status = pebble.cert_status(serial.trim_start_matches('0'));
    assert!(status.contains("Valid"), "{status}");
    let deployed = std::fs::read_to_string(deploy_dir.join(cert_id).join("fullchain.pem")).unwrap();
    let leaf = certplane_pki::pem::parse_certificates(&deployed).unwrap();
    assert_eq!(
        certplane_pki::pem::fingerprint_sha256(&leaf[0]),
        stack.current_fingerprint(cert_id).await
    );
    assert!(deploy_dir.join(cert_id).join("privkey.pem").exists());

    // The job ended: every token file is gone again.
    for row in &rows {
        let row = settled(&store, job_id, &row.challenge_id, &["withdrawn"]).await;
        assert!(!nginx.token_file(&row.name).exists(), "{}", row.name);
    }
    agent.stop().await;
}
