//! `certplane demo`: the README's main job. Runs the whole system on the
//! embedded defaults, for real and on this machine:
//!
//! 1. a host (`serve`: SQLite in a temporary data directory, development
//!    TLS certificate, scheduler) on a loopback port;
//! 2. the local-CA issuer connector configured through the API;
//! 3. an agent (in-process, the same code as `certplane-agent`) that
//!    registers with a bootstrap token and is granted one temporary
//!    directory for the PEM-files connector;
//! 4. a local TLS server that serves whatever files are deployed there;
//! 5. a managed certificate whose key and CSR the agent generates, which the
//!    host has issued by the local CA, which the agent deploys, and which
//!    the agent then verifies on the wire against the TLS server.
//!
//! Every step prints a progress line with its timing, and everything shuts
//! down cleanly at the end. [`stack`] and [`web`] are reused by the
//! end-to-end tests.

pub mod stack;
pub mod web;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use certplane_agent::{AgentConfig, Mode};
use certplane_client::ApiClient;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use certplane_host::config::{HostConfig, SchedulerSettings};
use stack::{LocalHost, free_port};
use web::FileTlsServer;

/// Options of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Directory holding the packaged plugins (`local-ca.toml`, ...).
    pub plugin_dir: PathBuf,
    /// Keep the temporary data directory instead of deleting it.
    pub keep: bool,
    /// Compiled-plugin cache kept across runs (`None`: inside the temporary
    /// data directory, so every run compiles).
    pub cache_dir: Option<PathBuf>,
}

/// Longest the demo waits for any one step.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// The names the demo certificate covers.
const NAMES: [&str; 2] = ["demo.certplane.test", "www.demo.certplane.test"];

struct Progress {
    started: Instant,
    step: u32,
}

impl Progress {
    fn say(&mut self, what: impl std::fmt::Display) {
        self.step += 1;
        println!(
            "[{:>7.1} ms] {:>2}. {what}",
            self.started.elapsed().as_secs_f64() * 1e3,
            self.step
        );
    }
}

/// A throwaway CA for the demo: (certificate PEM, PKCS#8 key PEM).
pub fn demo_ca() -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "certplane demo CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Scheduler intervals for a local, interactive run: the API's wake-ups
/// drive the work, the loops only catch up.
pub fn brisk_scheduler() -> SchedulerSettings {
    SchedulerSettings {
        jobs_ms: 500,
        retry_ms: 500,
        reaper_ms: 500,
        order_poll_ms: 500,
        notifications_ms: 500,
        shutdown_grace_ms: 5_000,
        ..SchedulerSettings::default()
    }
}

/// `POST` and return the JSON answer, with the path in errors.
pub async fn post(client: &ApiClient, path: &str, body: Value) -> anyhow::Result<Value> {
    Ok(client
        .post(path, Some(&body))
        .await
        .with_context(|| format!("POST {path}"))?
        .json
        .unwrap_or(Value::Null))
}

/// `GET` and return the JSON answer, with the path in errors.
pub async fn get(client: &ApiClient, path: &str) -> anyhow::Result<Value> {
    Ok(client
        .get(path, &[])
        .await
        .with_context(|| format!("GET {path}"))?
        .json
        .unwrap_or(Value::Null))
}

/// Runs the demo.
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let mut p = Progress {
        started: Instant::now(),
        step: 0,
    };
    for plugin in ["local-ca", "pem-files"] {
        let manifest = options.plugin_dir.join(format!("{plugin}.toml"));
        if !manifest.exists() {
            bail!(
                "{} not found: build the plugins first (scripts/build-plugins) or pass --plugin-dir",
                manifest.display()
            );
        }
    }
    let data = tempfile::Builder::new()
        .prefix("certplane-demo-")
        .tempdir()
        .context("creating the demo data directory")?;
    let root = data.path().to_path_buf();
    p.say(format!("working directory {}", root.display()));

    let bootstrap_token = format!("demo-{}", uuid::Uuid::new_v4().simple());
    let mut config = HostConfig {
        data_dir: root.join("host"),
        plugin_dir: options.plugin_dir.clone(),
        plugin_cache_dir: options.cache_dir.clone(),
        listen: format!("127.0.0.1:{}", free_port()?).parse()?,
        scheduler: brisk_scheduler(),
        ..HostConfig::default()
    };
    config.agents.bootstrap_tokens = vec![bootstrap_token.clone()];
    let mut host = LocalHost::start(config).await?;
    p.say(format!(
        "host serving {} on embedded SQLite (dev certificate sha256 {}…)",
        host.url,
        &host.pin_sha256[..16]
    ));
    let outcome = with_host(&mut p, &host, &root, &options, &bootstrap_token).await;
    host.stop().await?;
    outcome?;
    p.say("host stopped");

    let total = p.started.elapsed();
    if options.keep {
        let kept = data.keep();
        println!("kept working directory {}", kept.display());
    }
    println!("demo finished in {:.0} ms", total.as_secs_f64() * 1e3);
    Ok(())
}

async fn with_host(
    p: &mut Progress,
    host: &LocalHost,
    root: &std::path::Path,
    options: &DemoOptions,
    bootstrap_token: &str,
) -> anyhow::Result<()> {
    let api = &host.admin;
    let (ca_cert, ca_key) = demo_ca()?;
    let issuer = post(
        api,
        "/issuers",
        json!({
            "name": "demo-local-ca",
            "plugin": "local-ca",
            "settings": { "ca_certificate_pem": ca_cert, "validity_days": 90 },
            "secrets": { "ca_private_key_pem": ca_key },
        }),
    )
    .await?;
    p.say("local-CA issuer configured (settings validated by the connector)");

    let web = FileTlsServer::start(None).await?;
    p.say(format!(
        "local TLS server on 127.0.0.1:{} (serves the deployed files, placeholder until then)",
        web.port
    ));

    let deploy_dir = root.join("agent-certs");
    std::fs::create_dir_all(&deploy_dir)?;
    let agent_config = host.agent_config(
        "demo-agent",
        bootstrap_token,
        root.join("agent-state"),
        (options.plugin_dir.clone(), options.cache_dir.clone()),
        deploy_dir.clone(),
    );
    let agent_config = AgentConfig::from_value(&agent_config)?;
    let agent_stop = CancellationToken::new();
    let agent = tokio::spawn(certplane_agent::run(
        agent_config,
        Mode::Continuous,
        agent_stop.clone(),
    ));
    let outcome = with_agent(p, api, &issuer, &web, &deploy_dir).await;
    agent_stop.cancel();
    let exit = agent.await.context("the agent task")?;
    outcome?;
    p.say(format!("agent stopped ({:?})", exit?));
    Ok(())
}

async fn with_agent(
    p: &mut Progress,
    api: &ApiClient,
    issuer: &Value,
    web: &FileTlsServer,
    deploy_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let agent = wait_for("the agent to register", || async {
        let agents = get(api, "/agents").await?;
        Ok(agents["items"]
            .as_array()
            .and_then(|items| items.iter().find(|a| a["name"] == "demo-agent"))
            .cloned())
    })
    .await?;
    p.say(format!(
        "agent {} registered with its bootstrap token (pinned the host's certificate)",
        agent["id"].as_str().unwrap_or("?")
    ));

    let target = post(
        api,
        "/targets",
        json!({
            "name": "demo-files",
            "plugin": "pem-files",
            "agent_id": agent["id"],
            "settings": {
                "directory": "/certs",
                "verify_host": "127.0.0.1",
                "verify_port": web.port,
                "server_name": NAMES[0],
            },
            "grants": { "directories": [
                { "path": deploy_dir, "guest_path": "/certs", "writable": true }
            ] },
        }),
    )
    .await?;
    p.say(format!(
        "PEM-files target on the agent, granted only {}",
        deploy_dir.display()
    ));

    let cert = post(
        api,
        "/certificates",
        json!({
            "name": "demo",
            "common_name": NAMES[0],
            "sans": NAMES,
            "issuer_id": issuer["id"],
            "target_ids": [target["id"]],
        }),
    )
    .await?;
    let cert_id = cert["id"].as_str().context("certificate id")?.to_owned();
    p.say(format!(
        "managed certificate {cert_id} created (key source: {})",
        cert["key_source"].as_str().unwrap_or("?")
    ));
    let cert_dir = deploy_dir.join(&cert_id);
    web.set_files(cert_dir.join("fullchain.pem"), cert_dir.join("privkey.pem"));

    // Follow the jobs until the deployment is done, printing each change.
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let deadline = Instant::now() + STEP_TIMEOUT;
    let deployment = 'follow: loop {
        let jobs = get(api, &format!("/jobs?certificate_id={cert_id}&per_page=50")).await?;
        for job in jobs["items"].as_array().into_iter().flatten().rev() {
            let id = job["id"].as_str().unwrap_or_default().to_owned();
            let status = job["status"].as_str().unwrap_or_default().to_owned();
            if seen.get(&id) != Some(&status) {
                p.say(describe(job));
                seen.insert(id, status.clone());
            }
            if job["job_type"] == "deployment" {
                match status.as_str() {
                    "completed" => break 'follow job.clone(),
                    "failed" | "cancelled" => {
                        bail!("deployment {status}: {}", job["last_error"])
                    }
                    _ => {}
                }
            }
        }
        if Instant::now() > deadline {
            bail!("timed out after {STEP_TIMEOUT:?} waiting for the deployment");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let deployment_id = deployment["id"].as_str().unwrap_or_default();
    let verification = get(api, &format!("/jobs/{deployment_id}/verification")).await?;
    let result = &verification;
    if result["status"] != "verified" {
        bail!("the agent did not verify the deployment: {verification}");
    }
    p.say(format!(
        "agent verified on the wire: 127.0.0.1:{} serves sha256 {}…",
        web.port,
        result["observed_fingerprint"]
            .as_str()
            .map(|f| &f[..f.len().min(16)])
            .unwrap_or("?")
    ));

    // And see for ourselves, with the agent's own probe.
    let detail = get(api, &format!("/certificates/{cert_id}")).await?;
    let current = detail["current_version_id"].as_str().unwrap_or_default();
    let expected = detail["versions"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["id"] == current))
        .and_then(|v| v["fingerprint_sha256"].as_str())
        .context("the current version's fingerprint")?
        .to_owned();
    let endpoint = certplane_probe::Endpoint {
        host: "127.0.0.1".into(),
        port: web.port,
        server_name: NAMES[0].into(),
    };
    let seen_now = certplane_probe::served_fingerprint(&endpoint, Duration::from_secs(5)).await?;
    if seen_now != expected {
        bail!("the TLS server serves {seen_now}, expected {expected}");
    }
    p.say(format!(
        "double-checked: the served leaf is current version {current} ({}…)",
        &expected[..16]
    ));
    web.stop();
    Ok(())
}

/// One progress line for a job's state.
fn describe(job: &Value) -> String {
    let kind = job["job_type"].as_str().unwrap_or("?");
    let status = job["status"].as_str().unwrap_or("?");
    let what = match (kind, status) {
        (_, "awaiting_csr") => "waiting for the agent's CSR (the key is generated on the agent)",
        ("issuance" | "renewal", "running") => "CSR received; the local CA is signing",
        ("issuance" | "renewal", "completed") => "issued, checked and stored as current",
        ("deployment", "pending") => "queued for the agent",
        ("deployment", "running") => "the agent is deploying and verifying",
        ("deployment", "completed") => "deployed and verified by the agent",
        (_, "failed") => "failed (will retry if attempts remain)",
        _ => status,
    };
    format!("{kind} job {}: {what}", job["id"].as_str().unwrap_or("?"))
}

/// Polls `check` every 20 ms until it yields a value or [`STEP_TIMEOUT`]
/// passes.
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {STEP_TIMEOUT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
