//! Host + agent + plugins together, in one process: the agent is the real
//! `certplane_agent::run` talking HTTPS to the real `serve`.

use certplane_testkit::both_backends;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certplane_agent::AgentConfig;
use certplane_agent::config::{BackoffConfig, TrustConfig, VerifyConfig};
use certplane_agent::state::{Credential, StateDir};
use certplane_agent::{Exit, Mode};
use certplane_pki::pem::{certificate_public_key_sha256, fingerprint_sha256, parse_certificates};
use certplane_testkit::stack::FileTlsServer;
use certplane_testkit::stack::get;
use certplane_testkit::{Backend, Stack, plugin_dir, wait_for};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A running in-process agent.
struct RunningAgent {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<Exit, certplane_agent::AgentError>>,
}

impl RunningAgent {
    fn start(config: certplane_agent::AgentConfig) -> RunningAgent {
        let stop = CancellationToken::new();
        let task = tokio::spawn(certplane_agent::run(config, Mode::Continuous, stop.clone()));
        RunningAgent { stop, task }
    }

    async fn stop(self) -> Exit {
        self.stop.cancel();
        self.task.await.unwrap().unwrap()
    }
}

async fn issue_deploy_verify(backend: Backend) {
    let stack = Stack::new(backend, 30).await;
    let config = stack.agent_config("web-1");
    let deploy_dir = config.connectors["pem-files"].directories[0].path.clone();
    let agent = RunningAgent::start(config);
    let agent_id = stack.agent_id("web-1").await;
    let web = FileTlsServer::start(None).await.unwrap();
    let (_, cert) = stack
        .site(&agent_id, &deploy_dir, web.port, "site", "site.e2e.test")
        .await;
    let cert_id = cert["id"].as_str().unwrap();
    assert_eq!(cert["key_source"], "agent");
    let cert_dir = deploy_dir.join(cert_id);
    web.set_files(cert_dir.join("fullchain.pem"), cert_dir.join("privkey.pem"));

    let deployment = stack
        .deployment_done(cert_id, Duration::from_secs(60))
        .await;
    assert_eq!(deployment["status"], "completed", "{deployment}");
    let verification = stack.verification(deployment["id"].as_str().unwrap()).await;
    let expected = stack.current_fingerprint(cert_id).await;
    assert_eq!(verification["status"], "verified", "{verification}");
    assert_eq!(verification["observed_fingerprint"], expected.as_str());

    // Registered once, heartbeating: the host shows it online, and a
    // second heartbeat (every 2 s here) moves `last_heartbeat_at`.
    let view = certplane_testkit::stack::get(&stack.host.admin, &format!("/agents/{agent_id}"))
        .await
        .unwrap();
    assert_eq!(view["online"], true, "{view}");
    let first = view["last_heartbeat_at"].as_str().unwrap().to_owned();
    certplane_testkit::wait_for("a second heartbeat", Duration::from_secs(10), || async {
        let view = certplane_testkit::stack::get(&stack.host.admin, &format!("/agents/{agent_id}"))
            .await
            .unwrap();
        (view["last_heartbeat_at"].as_str() != Some(first.as_str())).then_some(())
    })
    .await;
    let agents = certplane_testkit::stack::get(&stack.host.admin, "/agents?per_page=500")
        .await
        .unwrap();
    let named = agents["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["name"] == "web-1")
        .count();
    assert_eq!(named, 1, "registered exactly once: {agents}");
    assert_eq!(agent.stop().await, Exit::Stopped);
}

// ---------------------------------------------------------------- helpers

impl RunningAgent {
    /// Waits (at most `timeout`) for the agent to end by itself.
    async fn exit_within(self, timeout: Duration) -> Result<Exit, certplane_agent::AgentError> {
        let RunningAgent { stop, task } = self;
        let _stop_on_drop = stop.drop_guard();
        tokio::time::timeout(timeout, task)
            .await
            .unwrap_or_else(|_| panic!("the agent did not exit within {timeout:?}"))
            .unwrap()
    }
}

/// `GET /jobs/{id}`.
async fn job(stack: &Stack, job_id: &str) -> Value {
    get(&stack.host.admin, &format!("/jobs/{job_id}"))
        .await
        .unwrap()
}

/// The deploy directory the agent config grants to pem-files.
fn deploy_dir_of(config: &certplane_agent::AgentConfig) -> PathBuf {
    config.connectors["pem-files"].directories[0].path.clone()
}

/// Names of the entries of `dir` (empty when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// A self-signed certificate for `name` written as `<dir>/old-chain.pem`
/// and `<dir>/old-key.pem`; returns the paths and the SHA-256 fingerprint
/// of the certificate's DER.
fn old_certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf, String) {
    let old = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    let chain = dir.join("old-chain.pem");
    let key = dir.join("old-key.pem");
    std::fs::write(&chain, old.cert.pem()).unwrap();
    std::fs::write(&key, old.key_pair.serialize_pem()).unwrap();
    (chain, key, fingerprint_sha256(old.cert.der()))
}

/// A minimal DER reader: (tag, contents, rest).
fn der(input: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = input[0];
    let (len, header) = match input[1] {
        l if l < 0x80 => (usize::from(l), 2),
        l => {
            let n = usize::from(l & 0x7f);
            let len = input[2..2 + n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, 2 + n)
        }
    };
    (tag, &input[header..header + len], &input[header + len..])
}

/// The DER elements of a constructed value's contents, as whole TLVs.
fn der_children(mut contents: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !contents.is_empty() {
        let (_, _, rest) = der(contents);
        out.push(&contents[..contents.len() - rest.len()]);
        contents = rest;
    }
    out
}

/// The `SubjectPublicKeyInfo` TLV of a certificate's DER.
fn spki_of(cert_der: &[u8]) -> &[u8] {
    let (_, cert, _) = der(cert_der);
    let (_, tbs, _) = der(cert);
    let fields = der_children(tbs);
    // [0] version (optional), serial, signature, issuer, validity, subject, spki
    let skip = usize::from(fields[0][0] == 0xa0);
    fields[skip + 5]
}

/// What a `SubjectPublicKeyInfo` holds: the algorithm identifier (whole
/// TLV) and, for RSA, the modulus size in bits.
fn key_of_spki(spki: &[u8]) -> (Vec<u8>, Option<usize>) {
    let (_, contents, _) = der(spki);
    let parts = der_children(contents);
    let alg = parts[0].to_vec();
    let (_, bits, _) = der(parts[1]);
    let rsa_bits = (alg.windows(RSA_OID.len()).any(|w| w == RSA_OID)).then(|| {
        // BIT STRING: unused-bits byte, then RSAPublicKey { n, e }.
        let (_, rsa, _) = der(&bits[1..]);
        let (_, n, _) = der(rsa);
        let n: Vec<u8> = n.iter().copied().skip_while(|b| *b == 0).collect();
        n.len() * 8 - n[0].leading_zeros() as usize
    });
    (alg, rsa_bits)
}

/// The algorithm identifier (whole TLV) of a PKCS#8 `PrivateKeyInfo`.
fn key_of_pkcs8(pkcs8: &[u8]) -> Vec<u8> {
    let (_, contents, _) = der(pkcs8);
    der_children(contents)[1].to_vec()
}

/// OID contents: rsaEncryption, id-ecPublicKey, prime256v1, secp384r1, Ed25519.
const RSA_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const EC_OID: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const P256_OID: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_OID: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const ED25519_OID: &[u8] = &[0x2b, 0x65, 0x70];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Appends a custom section named `name` holding `payload` to a wasm
/// binary (core module or component: both allow custom sections anywhere).
fn append_custom_section(wasm: &mut Vec<u8>, name: &str, payload: &[u8]) {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut body = Vec::new();
    leb128(name.len(), &mut body);
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(payload);
    wasm.push(0x00);
    leb128(body.len(), wasm);
    wasm.extend_from_slice(&body);
}

// ------------------------------------------- 1. an old certificate is served

async fn old_certificate_is_a_mismatch(backend: Backend) {
    let stack = Stack::new(backend, 30).await;
    let config = stack.agent_config("web-old");
    let deploy_dir = deploy_dir_of(&config);
    let agent = RunningAgent::start(config);
    let agent_id = stack.agent_id("web-old").await;
    let (chain, key, old_fingerprint) = old_certificate(&stack.dir("old"), "site.e2e.test");
    // Serves the old files whatever gets deployed.
    let web = FileTlsServer::start(Some((chain, key))).await.unwrap();
    let (_, cert) = stack
        .site(&agent_id, &deploy_dir, web.port, "site", "site.e2e.test")
        .await;
    let cert_id = cert["id"].as_str().unwrap();

    let deployment = stack
        .deployment_done(cert_id, Duration::from_secs(30))
        .await;
    let job_id = deployment["id"].as_str().unwrap();
    assert_eq!(deployment["status"], "failed", "{deployment}");
    let error = deployment["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("failed verification"), "{deployment}");
    // The files were deployed: the connector did its part.
    assert!(deploy_dir.join(cert_id).join("fullchain.pem").exists());

    let verification = stack.verification(job_id).await;
    eprintln!("mismatch verification ({backend:?}): {verification}");
    let expected = stack.current_fingerprint(cert_id).await;
    assert_eq!(verification["status"], "mismatch", "{verification}");
    assert_eq!(
        verification["observed_fingerprint"],
        old_fingerprint.as_str(),
        "{verification}"
    );
    assert_eq!(
        verification["expected_fingerprint"],
        expected.as_str(),
        "{verification}"
    );
    assert_ne!(old_fingerprint, expected);

    // A mismatch is permanent: no attempt budget left, and no retry comes
    // (the host's retry loop runs every 200 ms with a 200 ms base delay).
    assert_eq!(
        deployment["attempts"], deployment["max_attempts"],
        "a mismatch must not be retried: {deployment}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = job(&stack, job_id).await;
    assert_eq!(later["status"], "failed", "{later}");
    assert_eq!(later["attempts"], deployment["attempts"], "{later}");
    let deployments = stack
        .jobs(cert_id)
        .await
        .into_iter()
        .filter(|j| j["job_type"] == "deployment")
        .count();
    assert_eq!(deployments, 1);
    assert_eq!(agent.stop().await, Exit::Stopped);
}

// ------------------------------------------- 2. nothing listens: unreachable

async fn nothing_listening_is_unreachable_and_retried(backend: Backend) {
    let stack = Stack::new(backend, 30).await;
    let config = stack.agent_config("web-down");
    let deploy_dir = deploy_dir_of(&config);
    let agent = RunningAgent::start(config);
    let agent_id = stack.agent_id("web-down").await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (_, cert) = stack
        .site(&agent_id, &deploy_dir, port, "site", "site.e2e.test")
        .await;
    let cert_id = cert["id"].as_str().unwrap();

    let deployment = stack
        .deployment_done(cert_id, Duration::from_secs(30))
        .await;
    let failed_seen = Instant::now();
    let job_id = deployment["id"].as_str().unwrap().to_owned();
    assert_eq!(deployment["status"], "failed", "{deployment}");
    let error = deployment["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("failed verification") && error.contains("unreachable"),
        "{deployment}"
    );
    let verification = stack.verification(&job_id).await;
    assert_eq!(verification["status"], "unreachable", "{verification}");
    assert!(
        verification["observed_fingerprint"].is_null(),
        "{verification}"
    );
    assert_eq!(
        verification["expected_fingerprint"],
        stack.current_fingerprint(cert_id).await.as_str()
    );

    // Transient: the same job is attempted again.
    assert!(
        deployment["attempts"].as_i64() < deployment["max_attempts"].as_i64(),
        "an unreachable endpoint must leave attempts for a retry: {deployment}"
    );
    let retried = wait_for(
        "the deployment's second attempt",
        Duration::from_secs(15),
        || async {
            let j = job(&stack, &job_id).await;
            (j["attempts"].as_i64().unwrap_or(0) >= 2).then_some(j)
        },
    )
    .await;
    eprintln!(
        "unreachable deployment ({backend:?}) retried {:?} after the failure was seen: \
         attempts {} of {}, status {}",
        failed_seen.elapsed(),
        retried["attempts"],
        retried["max_attempts"],
        retried["status"]
    );
    assert_eq!(agent.stop().await, Exit::Stopped);
}

// ---------------------------------------------- 3. every key type, agent-side

async fn csr_with_each_key_type(backend: Backend) {
    let stack = Stack::new(backend, 60).await;
    let config = stack.agent_config("keys");
    let deploy_dir = deploy_dir_of(&config);
    let state_dir = config.state_dir.clone();
    let agent = RunningAgent::start(config);
    let agent_id = stack.agent_id("keys").await;
    let target = stack
        .pem_target("files", &agent_id, &deploy_dir, None)
        .await;
    let target_id = target["id"].as_str().unwrap();

    let key_types = [
        "ecdsa-p256",
        "ecdsa-p384",
        "rsa-2048",
        "rsa-3072",
        "rsa-4096",
        "ed25519",
    ];
    let mut certs = Vec::new();
    for key_type in key_types {
        let name = format!("{key_type}.e2e.test");
        let cert = stack
            .certificate(key_type, &[name.as_str()], key_type, target_id)
            .await;
        assert_eq!(cert["key_source"], "agent", "{cert}");
        assert_eq!(cert["key_type"], key_type, "{cert}");
        certs.push((key_type, cert["id"].as_str().unwrap().to_owned()));
    }

    for (key_type, cert_id) in &certs {
        let deployment = stack
            .deployment_done(cert_id, Duration::from_secs(60))
            .await;
        assert_eq!(
            deployment["status"], "completed",
            "{key_type}: {deployment}"
        );
        let files = deploy_dir.join(cert_id);
        let cert_pem = std::fs::read_to_string(files.join("cert.pem")).unwrap();
        let key_pem = std::fs::read(files.join("privkey.pem")).unwrap();
        let leaf = parse_certificates(&cert_pem).unwrap().remove(0);
        assert_eq!(
            fingerprint_sha256(leaf.as_ref()),
            stack.current_fingerprint(cert_id).await,
            "{key_type}: the deployed leaf is the current version"
        );

        // The key the agent generated and keeps, 0600, named by the SHA-256
        // of its public key, which is the public key the CA certified.
        let key_dir = state_dir.join("keys").join(cert_id);
        let stored: Vec<_> = std::fs::read_dir(&key_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "pem"))
            .collect();
        assert_eq!(stored.len(), 1, "{key_type}: {stored:?}");
        let stored = &stored[0];
        let mode = std::fs::metadata(stored).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key_type}: {}", stored.display());
        assert_eq!(std::fs::read(stored).unwrap(), key_pem, "{key_type}");
        let spki_sha = certificate_public_key_sha256(leaf.as_ref()).unwrap();
        assert_eq!(
            stored.file_stem().unwrap().to_string_lossy(),
            spki_sha,
            "{key_type}: the certificate certifies the stored key"
        );

        // PKCS#8, and the algorithm the certificate was ordered with.
        let pkcs8 = match rustls_pemfile::read_one_from_slice(&key_pem).unwrap() {
            Some((rustls_pemfile::Item::Pkcs8Key(k), _)) => k.secret_pkcs8_der().to_vec(),
            other => panic!("{key_type}: privkey.pem is not PKCS#8: {other:?}"),
        };
        let (alg, rsa_bits) = key_of_spki(spki_of(leaf.as_ref()));
        assert_eq!(
            key_of_pkcs8(&pkcs8),
            alg,
            "{key_type}: the key's algorithm is the certificate's"
        );
        let (oids, bits): (&[&[u8]], Option<usize>) = match *key_type {
            "ecdsa-p256" => (&[EC_OID, P256_OID], None),
            "ecdsa-p384" => (&[EC_OID, P384_OID], None),
            "rsa-2048" => (&[RSA_OID], Some(2048)),
            "rsa-3072" => (&[RSA_OID], Some(3072)),
            "rsa-4096" => (&[RSA_OID], Some(4096)),
            "ed25519" => (&[ED25519_OID], None),
            other => unreachable!("{other}"),
        };
        for oid in oids {
            assert!(contains(&alg, oid), "{key_type}: algorithm {alg:02x?}");
        }
        assert_eq!(rsa_bits, bits, "{key_type}: RSA modulus size");

        // The host never saw the key.
        let detail = get(&stack.host.admin, &format!("/certificates/{cert_id}"))
            .await
            .unwrap();
        assert_eq!(detail["key_source"], "agent", "{detail}");
        assert!(
            !detail.to_string().contains("PRIVATE KEY"),
            "{key_type}: the host's view holds a private key"
        );
    }
    assert_eq!(agent.stop().await, Exit::Stopped);
}

// -------------------------------------- 4. grants beyond the agent's allowance

async fn grant_beyond_config_is_refused(backend: Backend) {
    let stack = Stack::new(backend, 30).await;
    let config = stack.agent_config("narrow");
    let agent = RunningAgent::start(config);
    let agent_id = stack.agent_id("narrow").await;
    // A sibling of the allowed `<root>/narrow-certs`.
    let outside = stack.dir("outside");
    let target = stack.pem_target("files", &agent_id, &outside, None).await;
    let cert = stack
        .certificate(
            "site",
            &["site.e2e.test"],
            "ecdsa-p256",
            target["id"].as_str().unwrap(),
        )
        .await;
    let cert_id = cert["id"].as_str().unwrap();
    let deployment = stack
        .deployment_done(cert_id, Duration::from_secs(30))
        .await;
    assert_eq!(deployment["status"], "failed", "{deployment}");
    let error = deployment["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("grant refused"), "{deployment}");
    assert!(
        error.contains(&outside.display().to_string()),
        "the refusal names the directory: {deployment}"
    );
    assert_eq!(
        deployment["attempts"], deployment["max_attempts"],
        "a refused grant is permanent: {deployment}"
    );
    assert_eq!(entries(&outside), Vec::<String>::new());
    assert_eq!(agent.stop().await, Exit::Stopped);
}

/// A link a connector left in its own directory (`esc -> ../../outside`)
/// does not widen a later grant that goes through it: the agent judges the
/// directory by its real path.
async fn grant_through_planted_link_is_refused(backend: Backend) {
    let stack = Stack::new(backend, 30).await;
    let config = stack.agent_config("linked");
    let allowed = deploy_dir_of(&config);
    let agent = RunningAgent::start(config);
    let agent_id = stack.agent_id("linked").await;
    let site = allowed.join("site");
    std::fs::create_dir_all(&site).unwrap();
    let outside = stack.dir("outside");
    std::os::unix::fs::symlink("../../outside", site.join("esc")).unwrap();
    let target = stack
        .pem_target("linked-files", &agent_id, &site.join("esc"), None)
        .await;
    let cert = stack
        .certificate(
            "site",
            &["site.e2e.test"],
            "ecdsa-p256",
            target["id"].as_str().unwrap(),
        )
        .await;
    let deployment = stack
        .deployment_done(cert["id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(deployment["status"], "failed", "{deployment}");
    let error = deployment["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("grant refused"), "{deployment}");
    let real_outside = std::fs::canonicalize(&outside).unwrap();
    assert!(
        error.contains(&real_outside.display().to_string()),
        "the refusal names the real path: {deployment}"
    );
    assert_eq!(
        deployment["attempts"], deployment["max_attempts"],
        "a refused grant is permanent: {deployment}"
    );
    assert_eq!(entries(&outside), Vec::<String>::new());
    assert_eq!(entries(&site), vec!["esc".to_owned()]);
    assert_eq!(agent.stop().await, Exit::Stopped);
}

/// A job cancelled on the host while its agent runs it stops there, its
/// connector call included: a hostile target spinning with a 50 s deadline
/// no longer holds the agent, whose next deployment goes through at once.
async fn cancel_stops_the_agents_running_call(backend: Backend) {
    let stack = Stack::with_fixtures(backend, 60, &["hostile"]).await;
    let mut config = stack.agent_config("busy");
    config.connectors.insert(
        "hostile".into(),
        certplane_agent::config::ConnectorGrants {
            deadline_secs: Some(50),
            ..Default::default()
        },
    );
    let deploy_dir = deploy_dir_of(&config);
    let agent = RunningAgent::start(config);
    let agent_id = stack.agent_id("busy").await;
    let spinner = certplane_testkit::stack::post(
        &stack.host.admin,
        "/targets",
        json!({ "name": "spinner", "plugin": "hostile", "agent_id": agent_id,
                "settings": { "mode": "loop" } }),
    )
    .await
    .unwrap();
    let cert = stack
        .certificate(
            "spin",
            &["spin.e2e.test"],
            "ecdsa-p256",
            spinner["id"].as_str().unwrap(),
        )
        .await;
    let running = wait_for(
        "the agent to run the deployment",
        Duration::from_secs(30),
        || async {
            stack
                .jobs(cert["id"].as_str().unwrap())
                .await
                .into_iter()
                .find(|j| j["job_type"] == "deployment" && j["status"] == "running")
        },
    )
    .await;
    // Let the call get going, then cancel it on the host.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cancelled = certplane_testkit::stack::post(
        &stack.host.admin,
        &format!("/jobs/{}/cancel", running["id"].as_str().unwrap()),
        json!({}),
    )
    .await
    .unwrap();
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let started = Instant::now();
    // The agent is free again: a good deployment completes long before the
    // spinning call's 50 s deadline.
    let files = stack
        .pem_target("files", &agent_id, &deploy_dir, None)
        .await;
    let good = stack
        .certificate(
            "good",
            &["good.e2e.test"],
            "ecdsa-p256",
            files["id"].as_str().unwrap(),
        )
        .await;
    let done = stack
        .deployment_done(good["id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    let took = started.elapsed();
    eprintln!("after the cancel, the agent's next deployment completed in {took:?}");
    assert!(
        took < Duration::from_secs(15),
        "the agent stayed busy for {took:?}"
    );
    assert_eq!(agent.stop().await, Exit::Stopped);
}

/// An agent runs the jobs of one poll one after another, each leased when
/// the poll handed it out: with eight deployments of 0.8 s in one batch and
/// a 3 s lease, the later ones start after their lease would have ended.
/// The agent's heartbeats name the jobs it holds and the host extends
/// their leases, so none is taken back, handed out again and deployed
/// twice.
async fn a_long_batch_keeps_its_leases(backend: Backend) {
    const N: usize = 8;
    let stack = Stack::with_fixtures(backend, 3, &["hostile"]).await;
    let mut config = stack.agent_config("batch");
    config.heartbeat_secs = 1;
    config.connectors.insert(
        "hostile".into(),
        certplane_agent::config::ConnectorGrants {
            deadline_secs: Some(2),
            ..Default::default()
        },
    );
    // Registered, then stopped while the batch is queued for it.
    let agent = RunningAgent::start(config.clone());
    let agent_id = stack.agent_id("batch").await;
    assert_eq!(agent.stop().await, Exit::Stopped);
    let slow = certplane_testkit::stack::post(
        &stack.host.admin,
        "/targets",
        json!({ "name": "slow", "plugin": "hostile", "agent_id": agent_id,
                "settings": { "mode": "hold-memory", "mib": 1, "millis": 800 } }),
    )
    .await
    .unwrap();
    let mut certs = Vec::new();
    for i in 0..N {
        let name = format!("b{i}");
        let cert = stack
            .certificate(
                &name,
                &[&format!("{name}.e2e.test")],
                "ecdsa-p256",
                slow["id"].as_str().unwrap(),
            )
            .await;
        certs.push(cert["id"].as_str().unwrap().to_owned());
    }
    // One cycle answers the CSRs (no deployment exists yet), then the
    // deployments queue up for the agent's next poll.
    let once = certplane_agent::run(config.clone(), Mode::Once, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(once, Exit::CycleDone);
    for cert in &certs {
        wait_for(
            "the deployment to be queued",
            Duration::from_secs(30),
            || async {
                stack
                    .jobs(cert)
                    .await
                    .into_iter()
                    .find(|j| j["job_type"] == "deployment" && j["status"] == "pending")
            },
        )
        .await;
    }

    let agent = RunningAgent::start(config);
    for cert in &certs {
        let done = stack.deployment_done(cert, Duration::from_secs(60)).await;
        assert_eq!(done["status"], "completed", "{done}");
        let deployments = stack
            .jobs(cert)
            .await
            .into_iter()
            .filter(|j| j["job_type"] == "deployment")
            .count();
        assert_eq!(deployments, 1);
        assert_eq!(
            done["attempts"], 1,
            "the deployment was taken back from the agent and handed out again: {done}"
        );
    }
    assert_eq!(agent.stop().await, Exit::Stopped);
}

// ------------------------------------- 5. missing plugin / other plugin build

/// Deploys one certificate through an agent configured by `adjust` and
/// returns the final deployment job and the deploy directory.
async fn deploy_with(stack: &Stack, name: &str, adjust: impl FnOnce(&mut AgentConfig)) -> Value {
    let mut config = stack.agent_config(name);
    adjust(&mut config);
    let deploy_dir = deploy_dir_of(&config);
    let agent = RunningAgent::start(config);
    let agent_id = stack.agent_id(name).await;
    let target = stack
        .pem_target(&format!("{name}-files"), &agent_id, &deploy_dir, None)
        .await;
    let cert = stack
        .certificate(
            name,
            &[&format!("{name}.e2e.test")],
            "ecdsa-p256",
            target["id"].as_str().unwrap(),
        )
        .await;
    let cert_id = cert["id"].as_str().unwrap();
    let deployment = stack
        .deployment_done(cert_id, Duration::from_secs(30))
        .await;
    assert_eq!(
        entries(&deploy_dir),
        Vec::<String>::new(),
        "nothing deployed"
    );
    assert_eq!(agent.stop().await, Exit::Stopped);
    deployment
}

async fn missing_plugin_is_reported(backend: Backend) {
    let stack = Stack::new(backend, 30).await;
    let empty = stack.dir("no-plugins");
    let deployment = deploy_with(&stack, "bare", |c| c.plugin_dir = empty).await;
    assert_eq!(deployment["status"], "failed", "{deployment}");
    let error = deployment["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("not installed on this agent"),
        "{deployment}"
    );
    assert_eq!(
        deployment["attempts"], deployment["max_attempts"],
        "{deployment}"
    );
}

async fn plugin_digest_mismatch_is_reported(backend: Backend) {
    let stack = Stack::new(backend, 30).await;
    // The same connector, rebuilt with one more custom section: a loadable
    // component of the same name and version with another digest.
    let dir = stack.dir("other-plugins");
    let original = plugin_dir();
    let mut wasm = std::fs::read(original.join("pem-files.wasm")).unwrap();
    let original_sha = fingerprint_sha256(&wasm);
    append_custom_section(&mut wasm, "certplane-e2e", b"another build");
    let new_sha = fingerprint_sha256(&wasm);
    std::fs::write(dir.join("pem-files.wasm"), &wasm).unwrap();
    let manifest = std::fs::read_to_string(original.join("pem-files.toml")).unwrap();
    assert!(manifest.contains(&original_sha), "{manifest}");
    std::fs::write(
        dir.join("pem-files.toml"),
        manifest.replace(&original_sha, &new_sha),
    )
    .unwrap();
    let cache = stack.dir("other-plugin-cache");

    let deployment = deploy_with(&stack, "rebuilt", |c| {
        c.plugin_dir = dir;
        c.plugin_cache_dir = Some(cache);
    })
    .await;
    assert_eq!(deployment["status"], "failed", "{deployment}");
    let error = deployment["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("digest differs"), "{deployment}");
    assert!(
        error.contains(&new_sha) && error.contains(&original_sha),
        "both digests are named: {deployment}"
    );
}

// ------------------------------------------------------ 6. retirement

async fn retirement_ends_the_agent(backend: Backend) {
    let stack = Stack::new(backend, 30).await;
    let config = stack.agent_config("old-box");
    let state_dir = config.state_dir.clone();
    let agent = RunningAgent::start(config);
    let agent_id = stack.agent_id("old-box").await;
    // Something to retire with it (force).
    let deploy_dir = stack.dir("old-box-certs");
    stack
        .pem_target("files", &agent_id, &deploy_dir, None)
        .await;

    let started = Instant::now();
    stack
        .host
        .admin
        .delete(
            &format!("/agents/{agent_id}"),
            &[
                ("force", "true".into()),
                ("reason", "decommissioned".into()),
            ],
        )
        .await
        .unwrap();
    let exit = agent.exit_within(Duration::from_secs(5)).await.unwrap();
    assert_eq!(exit, Exit::Retired);
    eprintln!("agent retired {:?} after the DELETE", started.elapsed());
    let status = StateDir::open(&state_dir).unwrap().status().unwrap();
    assert!(status.retired_at.is_some(), "{status:?}");
}

// ------------------------------------------------- 7. long-poll wake-up

async fn long_poll_wakes_for_new_work(backend: Backend) {
    let stack = Stack::new(backend, 30).await;
    let mut config = stack.agent_config("idle");
    config.poll_wait_secs = 30;
    let deploy_dir = deploy_dir_of(&config);
    let state_dir = config.state_dir.clone();
    let agent = RunningAgent::start(config);
    let agent_id = stack.agent_id("idle").await;
    let target = stack
        .pem_target("files", &agent_id, &deploy_dir, None)
        .await;
    // Let the agent settle into its (30 s) long poll.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let started = Instant::now();
    let cert = stack
        .certificate(
            "site",
            &["site.e2e.test"],
            "ecdsa-p256",
            target["id"].as_str().unwrap(),
        )
        .await;
    let cert_id = cert["id"].as_str().unwrap();
    let key_dir = state_dir.join("keys").join(cert_id);
    wait_for("the agent's key", Duration::from_secs(10), || async {
        (!entries(&key_dir).is_empty()).then_some(())
    })
    .await;
    let key_generated = started.elapsed();
    let deployment = stack
        .deployment_done(cert_id, Duration::from_secs(10))
        .await;
    let deployed = started.elapsed();
    assert_eq!(deployment["status"], "completed", "{deployment}");
    eprintln!(
        "long-poll wake-up ({backend:?}): key + CSR after {key_generated:?}, \
         deployment completed after {deployed:?} (poll wait 30 s)"
    );
    assert!(
        deployed < Duration::from_secs(5),
        "the parked poll was not woken: {deployed:?}"
    );
    assert_eq!(agent.stop().await, Exit::Stopped);
}

// ------------------------------------------------- 8. host restart

/// The host goes away while the agent is finishing a deployment: the agent
/// keeps running, hands in the result once the host is back, and the job
/// completes on its first attempt.
async fn host_down_while_reporting(backend: Backend) {
    let mut stack = Stack::new(backend, 60).await;
    let mut config = stack.agent_config("patient");
    config.verify.attempts = 60;
    config.verify.interval_ms = 100;
    let deploy_dir = deploy_dir_of(&config);
    let agent = RunningAgent::start(config);
    let agent_id = stack.agent_id("patient").await;
    // A placeholder until told otherwise: the probe keeps retrying.
    let web = FileTlsServer::start(None).await.unwrap();
    let (_, cert) = stack
        .site(
            &agent_id,
            &deploy_dir,
            web.port,
            "patient",
            "patient.e2e.test",
        )
        .await;
    let cert_id = cert["id"].as_str().unwrap().to_owned();
    let cert_dir = deploy_dir.join(&cert_id);
    let deployment =
        certplane_testkit::wait_for("the deployment to run", Duration::from_secs(30), || async {
            let jobs = stack.jobs(&cert_id).await;
            jobs.into_iter().find(|j| {
                j["job_type"] == "deployment"
                    && j["status"] == "running"
                    && cert_dir.join("fullchain.pem").exists()
            })
        })
        .await;
    let deployment_id = deployment["id"].as_str().unwrap().to_owned();

    stack.host.stop().await.unwrap();
    // Now the endpoint serves the deployed files: the probe succeeds and
    // the agent tries to report while the host is down.
    web.set_files(cert_dir.join("fullchain.pem"), cert_dir.join("privkey.pem"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !agent.task.is_finished(),
        "the agent stopped while the host was down"
    );
    stack.host.restart().await.unwrap();

    let done =
        certplane_testkit::wait_for("the result to arrive", Duration::from_secs(30), || async {
            let job =
                certplane_testkit::stack::get(&stack.host.admin, &format!("/jobs/{deployment_id}"))
                    .await
                    .unwrap();
            (job["status"] == "completed").then_some(job)
        })
        .await;
    assert_eq!(
        done["attempts"], 1,
        "the first attempt's result was handed in: {done}"
    );
    assert_eq!(
        stack.verification(&deployment_id).await["status"],
        "verified"
    );
    assert_eq!(agent.stop().await, Exit::Stopped);
}

async fn host_restart_mid_loop(backend: Backend) {
    let mut stack = Stack::new(backend, 30).await;
    let mut config = stack.agent_config("steady");
    // A long poll parked for longer than the host's shutdown grace (5 s):
    // the host must answer it at shutdown instead of waiting it out.
    config.poll_wait_secs = 30;
    let deploy_dir = deploy_dir_of(&config);
    let agent = RunningAgent::start(config);
    let agent_id = stack.agent_id("steady").await;
    let web = FileTlsServer::start(None).await.unwrap();
    let target = stack
        .pem_target(
            "files",
            &agent_id,
            &deploy_dir,
            Some((web.port, "site.e2e.test")),
        )
        .await;

    // Let the agent park in its long poll.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restarted = Instant::now();
    stack.host.restart().await.unwrap();
    eprintln!("host restarted in {:?}", restarted.elapsed());
    assert!(
        restarted.elapsed() < Duration::from_secs(3),
        "graceful shutdown waited for a parked long poll: {:?}",
        restarted.elapsed()
    );

    let cert = stack
        .certificate(
            "site",
            &["site.e2e.test"],
            "ecdsa-p256",
            target["id"].as_str().unwrap(),
        )
        .await;
    let cert_id = cert["id"].as_str().unwrap();
    let cert_dir = deploy_dir.join(cert_id);
    web.set_files(cert_dir.join("fullchain.pem"), cert_dir.join("privkey.pem"));
    let deployment = stack
        .deployment_done(cert_id, Duration::from_secs(30))
        .await;
    assert_eq!(deployment["status"], "completed", "{deployment}");
    let verification = stack.verification(deployment["id"].as_str().unwrap()).await;
    assert_eq!(verification["status"], "verified", "{verification}");
    assert_eq!(
        verification["observed_fingerprint"],
        stack.current_fingerprint(cert_id).await.as_str()
    );
    eprintln!(
        "after the restart: issued, deployed and verified in {:?}",
        restarted.elapsed()
    );
    assert!(!agent.task.is_finished(), "the agent kept running");
    assert_eq!(agent.stop().await, Exit::Stopped);
}

// ----------------------------------------- 9. network errors back off

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_errors_back_off() {
    let root = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let counter = accepted.clone();
    let server = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counter.lock().unwrap().push(Instant::now());
            drop(stream);
        }
    });

    let state_dir = root.path().join("state");
    let host_url = format!("http://127.0.0.1:{port}");
    let credential: Credential = serde_json::from_value(json!({
        "agent_id": "a-offline",
        "credential": "cpa_a-offline.secret",
        "host_url": host_url,
        "registered_at": "2025-01-01T00:00:00Z",
    }))
    .unwrap();
    StateDir::open(&state_dir)
        .unwrap()
        .save_credential(&credential)
        .unwrap();
    let plugins = root.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let config = AgentConfig::from_value(&AgentConfig {
        host_url,
        trust: TrustConfig::default(),
        bootstrap_token: None,
        name: Some("offline".into()),
        state_dir: state_dir.clone(),
        plugin_dir: plugins,
        plugin_cache_dir: Some(root.path().join("cache")),
        heartbeat_secs: 2,
        poll_wait_secs: 5,
        backoff: BackoffConfig {
            initial_ms: 100,
            max_secs: 1,
        },
        verify: VerifyConfig::default(),
        connectors: Default::default(),
        limits: Default::default(),
        challenges: Default::default(),
        actions: Default::default(),
    })
    .unwrap();
    let agent = RunningAgent::start(config);

    let first = wait_for(
        "the agent's first connection",
        Duration::from_secs(10),
        || {
            let accepted = accepted.clone();
            async move { accepted.lock().unwrap().first().copied() }
        },
    )
    .await;
    let window = Duration::from_secs(4);
    tokio::time::sleep_until((first + window).into()).await;
    let connections = accepted
        .lock()
        .unwrap()
        .iter()
        .filter(|t| **t < first + window)
        .count();
    let rate = connections as f64 / window.as_secs_f64();
    eprintln!(
        "host down: {connections} connections in {window:?} ({rate:.2}/s; backoff 100 ms..1 s, heartbeat 2 s)"
    );
    assert!(connections > 2, "the agent did not retry: {connections}");
    assert!(
        connections <= 20,
        "the agent is close to a busy loop: {connections} connections in {window:?}"
    );
    // Once the backoff has grown (100 ms doubling to 1 s, drawn from the
    // upper half of each step), polls come at least 0.5 s apart.
    let tail = accepted
        .lock()
        .unwrap()
        .iter()
        .filter(|t| **t >= first + window / 2 && **t < first + window)
        .count();
    eprintln!("host down: {tail} connections in the last {:?}", window / 2);
    assert!(
        tail <= 7,
        "the backoff does not grow: {tail} connections in the last {:?}",
        window / 2
    );
    assert!(!agent.task.is_finished(), "network errors are not fatal");
    assert_eq!(agent.stop().await, Exit::Stopped);
    let status = StateDir::open(&state_dir).unwrap().status().unwrap();
    assert!(status.last_error.is_some(), "{status:?}");
    server.abort();
}

both_backends!(
    issue_deploy_verify,
    old_certificate_is_a_mismatch,
    nothing_listening_is_unreachable_and_retried,
    csr_with_each_key_type,
    grant_beyond_config_is_refused,
    grant_through_planted_link_is_refused,
    cancel_stops_the_agents_running_call,
    a_long_batch_keeps_its_leases,
    missing_plugin_is_reported,
    plugin_digest_mismatch_is_reported,
    retirement_ends_the_agent,
    long_poll_wakes_for_new_work,
    host_restart_mid_loop,
    host_down_while_reporting,
);
