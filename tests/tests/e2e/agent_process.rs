//! The agent as an operator runs it: the real `certplane-agent` binary, in
//! its own process, configured by a TOML file, talking HTTPS to the real
//! host. What only a process can show: surviving SIGKILL mid-deployment,
//! `--once` and `status`, exit codes (retirement, bad configuration) and
//! the idle footprint.
//!
//! The binary must be built first (`scripts/test` does it):
//! `cargo build -p certplane-agent --bin certplane-agent`.

use certplane_testkit::both_backends;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use certplane_agent::AgentConfig;
use certplane_pki::pem::{fingerprint_sha256, load_certificates, normalise_fingerprint};
use certplane_testkit::stack::FileTlsServer;
use certplane_testkit::stack::get;
use certplane_testkit::{Backend, Stack, wait_for};
use serde_json::Value;

// ------------------------------------------------------------- harness

/// The agent binary, next to the test binary's `deps/` directory.
fn agent_bin() -> PathBuf {
    certplane_testkit::target_bin(
        "certplane-agent",
        "cargo build -p certplane-agent --bin certplane-agent",
    )
}

/// A TOML value for a JSON value (nulls must be left out by the caller).
fn toml_value(value: &Value) -> String {
    match value {
        // JSON string escapes (\" \\ \n \uXXXX) are valid TOML basic-string
        // escapes.
        Value::String(s) => serde_json::to_string(s).unwrap(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(toml_value).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{ {} }}",
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{} = {}", serde_json::to_string(k).unwrap(), toml_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Null => unreachable!("nulls are left out"),
    }
}

/// The configuration as an operator's TOML file (one key per line, nested
/// tables inline).
fn config_toml(config: &AgentConfig) -> String {
    let value = serde_json::to_value(config).unwrap();
    let mut text = String::from("# written by tests/tests/agent_process.rs\n");
    for (key, v) in value.as_object().unwrap() {
        if !v.is_null() {
            text.push_str(&format!(
                "{} = {}\n",
                serde_json::to_string(key).unwrap(),
                toml_value(v)
            ));
        }
    }
    text
}

/// Writes `config` as `<dir>/<file>` and returns the path.
fn write_config(dir: &Path, file: &str, config: &AgentConfig) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, config_toml(config)).unwrap();
    // The file must read back as the same configuration.
    assert_eq!(
        &AgentConfig::load(Some(&path)).unwrap(),
        config,
        "the TOML written for the agent does not read back"
    );
    path
}

/// A `certplane-agent` command: `RUST_LOG=info`, no inherited
/// `CERTPLANE_AGENT_*` overrides, no stdin.
fn agent_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(agent_bin());
    cmd.args(args).env("RUST_LOG", "info").stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CERTPLANE_AGENT_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Runs a command of the agent to its end (killed after `timeout`), its
/// stdout and stderr through temporary files.
async fn run_to_end(args: &[&str], timeout: Duration) -> (Output, Duration) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let err = tempfile::NamedTempFile::new().unwrap();
    let started = Instant::now();
    let mut child = agent_command(args)
        .stdout(out.reopen().unwrap())
        .stderr(err.reopen().unwrap())
        .spawn()
        .expect("certplane-agent runs");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "certplane-agent {args:?} did not finish within {timeout:?}:\n{}",
                std::fs::read_to_string(err.path()).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = started.elapsed();
    let output = Output {
        status,
        stdout: std::fs::read(out.path()).unwrap(),
        stderr: std::fs::read(err.path()).unwrap(),
    };
    (output, took)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A continuously running agent process; killed (SIGKILL) on drop. Its
/// stderr (the log) goes to a file.
struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    fn start(config: &Path, log: PathBuf) -> AgentProcess {
        let stderr = File::create(&log).unwrap();
        let child = agent_command(&["--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("certplane-agent starts");
        AgentProcess { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for `needle` in the log; panics (with the log) after `timeout`
    /// or when the process exits first.
    async fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the agent exited ({status}) before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the agent's log within {timeout:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits for the process to exit on its own; panics (with the log)
    /// after `timeout`.
    async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not exit within {timeout:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGKILL, and reap.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Lowercase hex SHA-256 of the leaf in a PEM file.
fn file_fingerprint(path: &Path) -> String {
    let chain = load_certificates(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    fingerprint_sha256(chain[0].as_ref())
}

/// Audit events about `subject_id`.
async fn audit_of(stack: &Stack, subject_id: &str) -> Vec<Value> {
    let page = get(
        &stack.host.admin,
        &format!("/audit?subject_id={subject_id}&per_page=500"),
    )
    .await
    .unwrap();
    page["items"].as_array().cloned().unwrap_or_default()
}

/// The deployment jobs of a certificate.
async fn deployments(stack: &Stack, cert_id: &str) -> Vec<Value> {
    stack
        .jobs(cert_id)
        .await
        .into_iter()
        .filter(|j| j["job_type"] == "deployment")
        .collect()
}

// ------------------------------------------ 1. SIGKILL mid-deployment

/// SIGKILL while the deployment is verifying; the restarted process (same
/// state directory) gets the job back after the 2 s lease lapses and
/// completes it: one job, two attempts, one `job.complete`.
async fn sigkill_mid_deployment(backend: Backend) {
    let stack = Stack::new(backend, 2).await;
    let mut config = stack.agent_config("killed");
    // Long enough a probe window that the job is still running when the
    // process is killed: 200 attempts, 100 ms apart.
    config.verify.attempts = 200;
    config.verify.interval_ms = 100;
    config.verify.timeout_secs = 1;
    let deploy_dir = config.connectors["pem-files"].directories[0].path.clone();
    let file = write_config(stack.root.path(), "killed.toml", &config);

    let mut agent = AgentProcess::start(&file, stack.root.path().join("killed-1.log"));
    let agent_id = stack.agent_id("killed").await;
    // Serves a placeholder certificate until told to serve the deployed
    // files: the probe sees a mismatch and keeps trying.
    let web = FileTlsServer::start(None).await.unwrap();
    let (_, cert) = stack
        .site(
            &agent_id,
            &deploy_dir,
            web.port,
            "killed",
            "killed.e2e.test",
        )
        .await;
    let cert_id = cert["id"].as_str().unwrap().to_owned();
    let cert_dir = deploy_dir.join(&cert_id);

    let job = wait_for(
        "the deployment to run and write its files",
        Duration::from_secs(30),
        || async {
            let written = ["privkey.pem", "cert.pem", "chain.pem", "fullchain.pem"]
                .iter()
                .all(|f| cert_dir.join(f).exists());
            if !written {
                return None;
            }
            deployments(&stack, &cert_id)
                .await
                .into_iter()
                .find(|j| j["status"] == "running")
        },
    )
    .await;
    assert_eq!(job["attempts"], 1, "{job}");
    agent.kill();
    let killed_at = Instant::now();
    let killed_log = agent.log();
    assert!(
        killed_log.contains(&format!("wrote /certs/{cert_id}/cert.pem")),
        "{killed_log}"
    );
    assert!(
        !killed_log.contains("job done"),
        "the job finished before the kill:\n{killed_log}"
    );
    let job_id = job["id"].as_str().unwrap().to_owned();

    // From now on the endpoint serves what was deployed.
    web.set_files(cert_dir.join("fullchain.pem"), cert_dir.join("privkey.pem"));
    let mut agent = AgentProcess::start(&file, stack.root.path().join("killed-2.log"));
    // Not `Stack::deployment_done`: the reaper's failure of attempt 1
    // (retry pending) is not an end state here.
    let done = wait_for(
        "the deployment to complete (or fail for good)",
        Duration::from_secs(30),
        || async {
            deployments(&stack, &cert_id).await.into_iter().find(|j| {
                j["status"] == "completed"
                    || (j["status"] == "failed" && j["attempts"] == j["max_attempts"])
            })
        },
    )
    .await;
    eprintln!(
        "deployment {} {:?} after the SIGKILL",
        done["status"],
        killed_at.elapsed()
    );
    assert_eq!(done["id"], job_id.as_str(), "{done}");
    assert_eq!(done["status"], "completed", "{done}\n{}", agent.log());
    assert_eq!(done["attempts"], 2, "{done}");

    let all = deployments(&stack, &cert_id).await;
    assert_eq!(all.len(), 1, "one deployment job: {all:?}");
    let completions: Vec<Value> = audit_of(&stack, &job_id)
        .await
        .into_iter()
        .filter(|e| e["action"] == "job.complete")
        .collect();
    assert_eq!(completions.len(), 1, "{completions:?}");
    assert_eq!(completions[0]["details"]["attempt"], 2, "{completions:?}");

    let expected = normalise_fingerprint(&stack.current_fingerprint(&cert_id).await);
    assert_eq!(file_fingerprint(&cert_dir.join("cert.pem")), expected);
    assert_eq!(file_fingerprint(&cert_dir.join("fullchain.pem")), expected);
    let verification = stack.verification(&job_id).await;
    assert_eq!(verification["status"], "verified", "{verification}");
    assert!(agent.log().contains("job done"), "{}", agent.log());
    agent.kill();
}

// ------------------------------------------------ 2 + 3. --once, status

/// `--once` cycles drive a certificate from CSR to verified deployment;
/// `status` reports what happened, before and after.
async fn once_and_status(backend: Backend) {
    let stack = Stack::new(backend, 30).await;
    let config = stack.agent_config("cron");
    let deploy_dir = config.connectors["pem-files"].directories[0].path.clone();
    let file = write_config(stack.root.path(), "cron.toml", &config);
    let file_arg = file.to_str().unwrap();
    let quick = Duration::from_secs(60);

    // Never registered: status says so, and succeeds.
    let (out, _) = run_to_end(&["--config", file_arg, "status"], quick).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("registered:    no"), "{stdout}");
    assert!(stdout.contains("last contact:  never"), "{stdout}");
    let (out, _) = run_to_end(&["--config", file_arg, "status", "--json"], quick).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["registered"], false, "{status}");

    // First run: registers, finds nothing to do.
    let (out, took) = run_to_end(&["--config", file_arg, "--once"], quick).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("registered with the host"),
        "{}",
        text(&out.stderr)
    );
    eprintln!("--once (registration, no work) took {took:?}");
    let agent_id = stack.agent_id("cron").await;

    let web = FileTlsServer::start(None).await.unwrap();
    let (_, cert) = stack
        .site(&agent_id, &deploy_dir, web.port, "cron", "cron.e2e.test")
        .await;
    let cert_id = cert["id"].as_str().unwrap().to_owned();
    let cert_dir = deploy_dir.join(&cert_id);
    web.set_files(cert_dir.join("fullchain.pem"), cert_dir.join("privkey.pem"));

    // Second run: answers the CSR request, then exits.
    let (out, _) = run_to_end(&["--config", file_arg, "--once"], quick).await;
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("generated a private key and CSR"), "{log}");
    assert!(!cert_dir.exists(), "nothing deployed yet:\n{log}");
    // The host issues; the deployment waits for the agent's next cycle.
    wait_for("the deployment job", Duration::from_secs(30), || async {
        deployments(&stack, &cert_id)
            .await
            .into_iter()
            .find(|j| j["status"] == "pending")
    })
    .await;

    // Third run: deploys and verifies.
    let (out, _) = run_to_end(&["--config", file_arg, "--once"], quick).await;
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("job done"), "{log}");
    let done = stack
        .deployment_done(&cert_id, Duration::from_secs(10))
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    let verification = stack.verification(done["id"].as_str().unwrap()).await;
    assert_eq!(verification["status"], "verified", "{verification}");
    let expected = normalise_fingerprint(&stack.current_fingerprint(&cert_id).await);
    assert_eq!(file_fingerprint(&cert_dir.join("cert.pem")), expected);

    // Nothing left: a quick, successful cycle.
    let (out, took) = run_to_end(&["--config", file_arg, "--once"], quick).await;
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("polled once"), "{log}");
    assert!(!log.contains("job done"), "{log}");
    eprintln!("--once (registered, no work) took {took:?}");
    assert!(took < Duration::from_secs(20), "took {took:?}:\n{log}");

    // status, text and JSON.
    let (out, _) = run_to_end(&["--config", file_arg, "status"], quick).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("registered:    yes, agent {agent_id}")),
        "{stdout}"
    );
    let contact = stdout
        .lines()
        .find_map(|l| l.strip_prefix("last contact:  "))
        .unwrap_or_else(|| panic!("no last contact line:\n{stdout}"));
    assert_ne!(contact, "never", "{stdout}");
    chrono_like(contact);
    assert!(!stdout.contains("RETIRED"), "{stdout}");
    let (out, _) = run_to_end(&["--config", file_arg, "status", "--json"], quick).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}:\n{}", text(&out.stdout)));
    assert_eq!(status["registered"], true, "{status}");
    assert_eq!(status["agent_id"], agent_id.as_str(), "{status}");
    assert!(status["jobs_done"].as_u64().unwrap() >= 1, "{status}");
    assert!(status["last_contact"].is_string(), "{status}");
}

/// Loosely checks an RFC 3339 timestamp (`2025-01-31T12:00:00.123+00:00`).
fn chrono_like(s: &str) {
    let b = s.as_bytes();
    assert!(
        b.len() >= 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':',
        "not a timestamp: {s}"
    );
}

// ------------------------------------------------------- 4. 410 Gone

/// Retired by the host while running: the process exits 0 with the
/// distinct log line; started again, it exits 0 again at once.
async fn retired_exits_cleanly(backend: Backend) {
    let stack = Stack::new(backend, 30).await;
    let config = stack.agent_config("doomed");
    let file = write_config(stack.root.path(), "doomed.toml", &config);
    let mut agent = AgentProcess::start(&file, stack.root.path().join("doomed-1.log"));
    let agent_id = stack.agent_id("doomed").await;
    agent
        .wait_for_log("agent starting", Duration::from_secs(30))
        .await;
    // Let it settle into its long poll.
    tokio::time::sleep(Duration::from_millis(500)).await;

    stack
        .host
        .admin
        .delete(
            &format!("/agents/{agent_id}"),
            &[("force", "true".into()), ("reason", "gone".into())],
        )
        .await
        .unwrap();
    let retired_at = Instant::now();
    let status = agent.wait_exit(Duration::from_secs(6)).await;
    let log = agent.log();
    eprintln!("exited {:?} after the retirement", retired_at.elapsed());
    assert_eq!(status.code(), Some(0), "{status}:\n{log}");
    assert!(log.contains("agent retired by the host"), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    let (out, _) = run_to_end(
        &["--config", file.to_str().unwrap(), "status"],
        Duration::from_secs(30),
    )
    .await;
    assert!(
        text(&out.stdout).contains("RETIRED:"),
        "{}",
        text(&out.stdout)
    );

    // Started again: the first exchange gets 410, and it exits 0.
    let mut again = AgentProcess::start(&file, stack.root.path().join("doomed-2.log"));
    let status = again.wait_exit(Duration::from_secs(30)).await;
    let log = again.log();
    assert_eq!(status.code(), Some(0), "{status}:\n{log}");
    assert!(log.contains("agent retired by the host"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

// ------------------------------------------ 5. bad configuration

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_fails_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let plugins = certplane_testkit::plugin_dir();
    let base = format!(
        "host_url = \"https://127.0.0.1:9\"\nstate_dir = {}\nplugin_dir = {}\n",
        serde_json::to_string(&state).unwrap(),
        serde_json::to_string(&plugins).unwrap(),
    );

    // https without a way to trust the host.
    let no_trust = dir.path().join("no-trust.toml");
    std::fs::write(&no_trust, &base).unwrap();
    let (out, _) = run_to_end(
        &["--config", no_trust.to_str().unwrap(), "--once"],
        Duration::from_secs(30),
    )
    .await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("trust.ca_file"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Never registered and no bootstrap token.
    let no_token = dir.path().join("no-token.toml");
    std::fs::write(
        &no_token,
        format!("{base}[trust]\npin_sha256 = \"{}\"\n", "AB".repeat(32)),
    )
    .unwrap();
    let (out, _) = run_to_end(
        &["--config", no_token.to_str().unwrap()],
        Duration::from_secs(30),
    )
    .await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("bootstrap_token"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

// ------------------------------------------------- 6. idle footprint

/// User + system CPU time of a process, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32, ticks_per_sec: f64) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based), 12 and 13 here.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_secs_f64(ticks as f64 / ticks_per_sec)
}

/// Resident set size of a process, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| text(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// A registered agent with nothing to do waits on the network: next to no
/// CPU over 10 s, and a modest resident set.
async fn idle_footprint(backend: Backend) {
    let stack = Stack::new(backend, 30).await;
    let mut config = stack.agent_config("idle");
    config.poll_wait_secs = 30;
    config.heartbeat_secs = 30;
    let file = write_config(stack.root.path(), "idle.toml", &config);
    let mut agent = AgentProcess::start(&file, stack.root.path().join("idle.log"));
    stack.agent_id("idle").await;
    agent
        .wait_for_log("agent starting", Duration::from_secs(30))
        .await;
    let ticks = clock_ticks();
    let pid = agent.pid();

    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu_0, rss_0) = (cpu_time(pid, ticks), rss_kib(pid));
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (cpu_1, rss_1) = (cpu_time(pid, ticks), rss_kib(pid));
    let wall = t0.elapsed();
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent exited:\n{}",
        agent.log()
    );

    let cpu = cpu_1.saturating_sub(cpu_0);
    let mib = |kib: u64| kib as f64 / 1024.0;
    eprintln!(
        "idle agent ({backend:?}, debug build): RSS {:.1} MiB at t=2 s, {:.1} MiB at t=12 s; \
         CPU {:.2} s over {:.1} s = {:.2} % of one core (total since start {:.2} s)",
        mib(rss_0),
        mib(rss_1),
        cpu.as_secs_f64(),
        wall.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
        cpu_1.as_secs_f64(),
    );
    assert!(
        cpu < Duration::from_millis(300),
        "busy while idle: {cpu:?} of CPU in {wall:?}:\n{}",
        agent.log()
    );
    assert!(rss_1 < 100 * 1024, "RSS {} MiB", mib(rss_1));
    agent.kill();
}

both_backends!(
    sigkill_mid_deployment,
    once_and_status,
    retired_exits_cleanly,
    idle_footprint,
);
