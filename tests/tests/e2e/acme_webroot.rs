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
use certplane_testkit::pebble::{Pebble, PebbleOptions};
use certplane_testkit::stack::free_port;
use certplane_testkit::{Backend, Stack, both_backends};

use crate::agent_http01::{
    RunningAgent, cancel, fetch, parked_challenge, pebble_issuance, settled, store,
};

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

/// Agent `name` of `stack` serving http-01 from `nginx`'s webroot.
fn start_agent(stack: &Stack, name: &str, nginx: &Nginx) -> RunningAgent {
    let challenges = ChallengesConfig {
        webroot: Some(nginx.webroot.clone()),
        check_url: nginx.url(),
        check_within_secs: 10,
        ..ChallengesConfig::default()
    };
    RunningAgent::start(stack, name, challenges)
}

async fn the_agent_serves_a_token_through_nginx(backend: Backend) {
    let stack = Stack::new(backend, 30).await;
    let nginx = Nginx::start(&stack.dir("www"));
    let agent = start_agent(&stack, "web-1", &nginx);
    let agent_id = stack.agent_id("web-1").await;
    let store = store(&stack).await;

    let token = "nGinX_t0ken-1";
    let key_authorization = format!("{token}.thumbprint");
    let job_id = parked_challenge(
        &store,
        &agent_id,
        "www.webroot.test",
        token,
        &key_authorization,
    )
    .await;

    // The publisher wakes the agent; the agent writes, checks, reports.
    let row = settled(&store, &job_id, "c1", &["ready", "failed"]).await;
    assert_eq!(row.state, "ready", "{:?}\n{}", row.message, nginx.stderr());
    assert!(row.published);
    let file = nginx.token_file(token);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), key_authorization);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644);
    let path = format!("/.well-known/acme-challenge/{token}");
    assert_eq!(
        fetch(nginx.port, &path, "www.webroot.test").await,
        (200, key_authorization.clone())
    );
    // The agent's own check went through nginx with the validated name.
    let seen = format!("www.webroot.test GET {path} HTTP/1.1 200");
    assert!(nginx.access_log().contains(&seen), "{}", nginx.access_log());

    // The job ends: the host withdraws, the agent deletes the file.
    cancel(&stack, &job_id).await;
    let row = settled(&store, &job_id, "c1", &["withdrawn"]).await;
    assert_eq!(row.message, None, "the agent removed the file itself");
    assert!(!file.exists());
    assert_eq!(fetch(nginx.port, &path, "www.webroot.test").await.0, 404);
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
    let agent = start_agent(&stack, "web-1", &nginx);
    let store = store(&stack).await;
    let names = ["www.webroot.test", "webroot.test"];
    let issuance = pebble_issuance(&stack, &store, &pebble, "web-1", &names, &|| {
        format!("nginx: {}", nginx.access_log())
    })
    .await;
    let (job_id, rows) = (issuance.job_id.as_str(), issuance.rows);

    // Pebble fetched every token from nginx, with the name as Host.
    let log = nginx.access_log();
    for row in &rows {
        let seen = format!(
            "{} GET /.well-known/acme-challenge/{} HTTP/1.1 200",
            row.identifier, row.name
        );
        assert!(
            log.matches(&seen).count() >= 2,
            "agent and CA: {seen}\n{log}"
        );
    }

    // The job ended: every token file is gone again.
    for row in &rows {
        let row = settled(&store, job_id, &row.challenge_id, &["withdrawn"]).await;
        assert!(!nginx.token_file(&row.name).exists(), "{}", row.name);
    }
    agent.stop().await;
}
