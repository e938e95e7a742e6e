//! What the scenarios of http-01 through the agent share (`acme_webroot`:
//! the agent writes into nginx's webroot; `acme_standalone`: the agent
//! answers on its own listener): the in-process agent with its
//! `[challenges]` section, a plain GET, challenge rows on the host, and an
//! issuance by Pebble through the host with the agent's key.

use std::time::{Duration, Instant};

use certplane_agent::config::ChallengesConfig;
use certplane_agent::{Exit, Mode};
use certplane_host::store::{ChallengeRow, JobStatus, JobType, NewChallenge, NewJob, Store};
use certplane_testkit::pebble::Pebble;
use certplane_testkit::stack::{get, post};
use certplane_testkit::{Stack, wait_for};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The in-process agent.
pub struct RunningAgent {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<Exit, certplane_agent::AgentError>>,
}

impl RunningAgent {
    /// Starts agent `name` of `stack` serving http-01 as `challenges` says.
    pub fn start(stack: &Stack, name: &str, challenges: ChallengesConfig) -> RunningAgent {
        let mut config = stack.agent_config(name);
        config.challenges = challenges;
        let stop = CancellationToken::new();
        let task = tokio::spawn(certplane_agent::run(config, Mode::Continuous, stop.clone()));
        RunningAgent { stop, task }
    }

    /// Shuts the agent down and checks it stopped cleanly.
    pub async fn stop(self) {
        self.stop.cancel();
        let exit = self.task.await.unwrap().unwrap();
        assert_eq!(exit, Exit::Stopped);
    }
}

/// The host's store, for the challenge rows.
pub async fn store(stack: &Stack) -> Store {
    Store::connect(&stack.host.config().database_url())
        .await
        .unwrap()
}

/// A plain GET to `127.0.0.1:<port>` with `host` as `Host`: (status, body).
pub async fn fetch(port: u16, path: &str, host: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
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

/// A job nobody runs (awaiting approval) holding challenge `c1` for
/// `identifier` routed to agent `agent_id`, as `apply_effects` records
/// it; the publisher wakes the agent. Returns the job's id.
pub async fn parked_challenge(
    store: &Store,
    agent_id: &str,
    identifier: &str,
    token: &str,
    key_authorization: &str,
) -> String {
    let job = store
        .create_job(NewJob::new(JobType::Issuance).status(JobStatus::AwaitingApproval))
        .await
        .unwrap();
    store
        .insert_challenges(
            &job.id,
            &[NewChallenge {
                challenge_id: "c1".into(),
                kind: "http-01".into(),
                identifier: identifier.into(),
                name: token.into(),
                value: key_authorization.into(),
                route: format!("agent:{agent_id}"),
                zone: None,
            }],
        )
        .await
        .unwrap();
    job.id
}

/// Cancels job `job_id` through the admin API (the host withdraws its
/// challenges).
pub async fn cancel(stack: &Stack, job_id: &str) {
    let cancelled = post(
        &stack.host.admin,
        &format!("/jobs/{job_id}/cancel"),
        json!({}),
    )
    .await
    .unwrap();
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
}

pub async fn challenges_of(store: &Store, job_id: &str) -> Vec<ChallengeRow> {
    store.job_challenges(job_id).await.unwrap()
}

/// The challenge row's state once it is one of `states`.
pub async fn settled(store: &Store, job_id: &str, id: &str, states: &[&str]) -> ChallengeRow {
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

/// The certificate's finished deployment; on timeout, panics with the
/// jobs, challenges and `context()` (what served the tokens saw).
async fn deployment_done(
    stack: &Stack,
    store: &Store,
    cert_id: &str,
    context: &dyn Fn() -> String,
) -> Value {
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
                "no deployment within 120 s\njobs: {jobs:#?}\nchallenges: {rows:#?}\n{}",
                context()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A finished issuance through the agent.
pub struct Issuance {
    /// The issuance job.
    pub job_id: String,
    /// Its challenges, every one http-01 routed to the agent.
    pub rows: Vec<ChallengeRow>,
}

/// `pebble` issues a certificate for `names` through the host, its
/// http-01 challenges routed to the agent `agent` (`grants.challenges =
/// {"http_01": "agent"}`), which deploys it with its own key to
/// `<agent>-certs`.
/// Checks the issuance and deployment completed, Pebble knows the serial,
/// and the deployed leaf is the current version; `context()` is shown on
/// timeout.
pub async fn pebble_issuance(
    stack: &Stack,
    store: &Store,
    pebble: &Pebble,
    agent: &str,
    names: &[&str],
    context: &dyn Fn() -> String,
) -> Issuance {
    let agent_id = stack.agent_id(agent).await;
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
    let deploy_dir = stack.dir(&format!("{agent}-certs"));
    let target = stack
        .pem_target("files", &agent_id, &deploy_dir, None)
        .await;
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

    let deployment = deployment_done(stack, store, cert_id, context).await;
    assert_eq!(deployment["status"], "completed", "{deployment}");
    let issuance = stack
        .jobs(cert_id)
        .await
        .into_iter()
        .find(|j| j["job_type"] == "issuance")
        .expect("the issuance job");
    assert_eq!(issuance["status"], "completed", "{issuance}");
    let job_id = issuance["id"].as_str().unwrap().to_string();
    let rows = challenges_of(store, &job_id).await;
    assert!(!rows.is_empty());
    for row in &rows {
        assert_eq!(row.kind, "http-01");
        assert_eq!(row.route, format!("agent:{agent_id}"));
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
    Issuance { job_id, rows }
}
