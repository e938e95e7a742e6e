//! The agent API: registration, heartbeats, the work long-poll, CSRs,
//! results and retirement, on SQLite and PostgreSQL.

use certplane_testkit::both_backends;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use certplane_host::pipeline::keygen::{KeyType, generate_key_and_csr};
use certplane_host::store::*;
use certplane_testkit::app::{BOOTSTRAP, Reply, TestApp, error_code};
use certplane_testkit::{Backend, count, exec, fixtures};
use serde_json::{Value, json};

/// Registers an agent through the API; returns (id, credential).
async fn register(app: &TestApp, name: &str) -> (String, String) {
    let r = app
        .call(
            Method::POST,
            "/api/v1/agents/register",
            None,
            Some(json!({ "name": name, "bootstrap_token": BOOTSTRAP })),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    (
        r.json["agent_id"].as_str().unwrap().to_owned(),
        r.json["credential"].as_str().unwrap().to_owned(),
    )
}

async fn poll(app: &TestApp, cred: &str, wait: u64) -> Reply {
    app.get(&format!("/api/v1/agents/work?wait_secs={wait}"), cred)
        .await
}

fn jobs(r: &Reply) -> Vec<Value> {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json["jobs"].as_array().expect("jobs array").clone()
}

async fn deployment_for(app: &TestApp, target_id: &str) -> Job {
    app.store
        .create_job(NewJob::new(JobType::Deployment).target(target_id))
        .await
        .unwrap()
}

async fn audit_count(app: &TestApp, subject_type: &str, subject_id: &str) -> usize {
    app.store
        .list_audit_events(Some(subject_type), Some(subject_id), 1000)
        .await
        .unwrap()
        .len()
}

async fn registration(b: Backend) {
    let app = TestApp::new(b).await;
    let r = app
        .call(
            Method::POST,
            "/api/v1/agents/register",
            None,
            Some(json!({ "name": "web-1", "bootstrap_token": "wrong" })),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&r), "unauthorized");
    let r = app
        .call(
            Method::POST,
            "/api/v1/agents/register",
            None,
            Some(json!({ "name": "web-1", "bootstrap_token": BOOTSTRAP, "extra": 1 })),
        )
        .await;
    assert!(r.status.is_client_error(), "{}", r.status);
    error_code(&r);
    let r = app
        .call(
            Method::POST,
            "/api/v1/agents/register",
            None,
            Some(json!({ "name": "  ", "bootstrap_token": BOOTSTRAP })),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);

    let (id, cred) = register(&app, "web-1").await;
    assert!(cred.starts_with(&format!("cpa_{id}.")), "{cred}");
    let agent = app.store.get_agent(&id).await.unwrap().unwrap();
    assert_eq!(agent.name, "web-1");
    assert_eq!(agent.status, AgentStatus::Active);
    // The credential is stored only as a hash.
    assert!(
        !agent
            .credential_hash
            .unwrap()
            .contains(cred.rsplit('.').next().unwrap())
    );
    assert_eq!(audit_count(&app, "agent", &id).await, 1);

    // It authenticates; a tampered one does not; an API key is no agent.
    let r = app.post("/api/v1/agents/heartbeat", &cred, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app
        .post("/api/v1/agents/heartbeat", &format!("{cred}x"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = app
        .post("/api/v1/agents/heartbeat", &app.admin, json!({}))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

async fn heartbeat_then_gone(b: Backend) {
    let app = TestApp::new(b).await;
    let (id, cred) = register(&app, "web-1").await;
    // Health is derived from heartbeats: offline until the first one.
    let before = app.get(&format!("/api/v1/agents/{id}"), &app.reader).await;
    assert_eq!(before.json["online"], false, "{}", before.text);
    let sentinel = app.get("/api/v1/agents/host", &app.reader).await;
    assert_eq!(sentinel.json["online"], true, "{}", sentinel.text);
    let r = app
        .call(Method::POST, "/api/v1/agents/heartbeat", Some(&cred), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["agent_id"], id.as_str());
    assert!(r.json["server_time"].is_string());
    let agent = app.store.get_agent(&id).await.unwrap().unwrap();
    assert!(agent.last_heartbeat_at.is_some());
    let after = app.get(&format!("/api/v1/agents/{id}"), &app.reader).await;
    assert_eq!(after.json["online"], true, "{}", after.text);

    let r = app
        .call(
            Method::DELETE,
            &format!("/api/v1/agents/{id}"),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    let r = app
        .call(Method::POST, "/api/v1/agents/heartbeat", Some(&cred), None)
        .await;
    assert_eq!(r.status, StatusCode::GONE);
    assert_eq!(error_code(&r), "agent_retired");
    let r = poll(&app, &cred, 0).await;
    assert_eq!(r.status, StatusCode::GONE);
    assert_eq!(error_code(&r), "agent_retired");
}

async fn long_poll_returns_existing_work_at_once(b: Backend) {
    let app = TestApp::new(b).await;
    let (id, cred) = register(&app, "web-1").await;
    let target = fixtures::target(&app.store, &id, "t").await;
    let job = deployment_for(&app, &target.id).await;
    let started = Instant::now();
    let r = poll(&app, &cred, 10).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let list = jobs(&r);
    assert_eq!(list.len(), 1, "{}", r.text);
    assert_eq!(list[0]["id"], job.id.as_str());
    assert_eq!(list[0]["job_type"], "deployment");
    assert_eq!(list[0]["status"], "running");
    assert_eq!(list[0]["attempt"], 1);
    assert_eq!(list[0]["target"]["id"], target.id.as_str());
    assert_eq!(list[0]["target"]["plugin_name"], "pem-file");
    let stored = app.store.get_job(&job.id).await.unwrap().unwrap();
    assert_eq!(stored.status, JobStatus::Running);
    assert_eq!(stored.lease_owner.as_deref(), Some(id.as_str()));
    // Claimed once: the next poll has nothing.
    assert!(jobs(&poll(&app, &cred, 0).await).is_empty());
    // Bounds.
    let r = app.get("/api/v1/agents/work?limit=0", &cred).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = app.get("/api/v1/agents/work?bogus=1", &cred).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

async fn long_poll_is_woken_by_new_work(b: Backend) {
    let app = TestApp::new(b).await;
    let (id, cred) = register(&app, "web-1").await;
    let target = fixtures::target(&app.store, &id, "t").await;
    let started = Instant::now();
    let create = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let job = deployment_for(&app, &target.id).await;
        app.state.wake.wake_agent(&id);
        (job, Instant::now())
    };
    let (r, (job, created_at)) = tokio::join!(poll(&app, &cred, 20), create);
    let returned_after = created_at.elapsed();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(
        returned_after < Duration::from_secs(1),
        "{returned_after:?}"
    );
    let list = jobs(&r);
    assert_eq!(list.len(), 1, "{}", r.text);
    assert_eq!(list[0]["id"], job.id.as_str());
}

async fn long_poll_returns_empty_after_the_wait(b: Backend) {
    let app = TestApp::new(b).await;
    let (_, cred) = register(&app, "web-1").await;
    let started = Instant::now();
    let r = poll(&app, &cred, 1).await;
    let took = started.elapsed();
    assert!(jobs(&r).is_empty());
    assert!(took >= Duration::from_millis(950), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // wait_secs is capped at long_poll_max_secs.
    let app = TestApp::with_config(b, |c| c.api.long_poll_max_secs = 1).await;
    let (_, cred) = register(&app, "web-2").await;
    let started = Instant::now();
    assert!(jobs(&poll(&app, &cred, 3600).await).is_empty());
    assert!(started.elapsed() < Duration::from_secs(5));
}

async fn retirement_releases_a_parked_poll(b: Backend) {
    let app = TestApp::new(b).await;
    let (id, cred) = register(&app, "web-1").await;
    let retire = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = app
            .call(
                Method::DELETE,
                &format!("/api/v1/agents/{id}"),
                Some(&app.admin),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        Instant::now()
    };
    let (r, retired_at) = tokio::join!(poll(&app, &cred, 20), retire);
    assert!(retired_at.elapsed() < Duration::from_secs(1));
    assert!(jobs(&r).is_empty());
    assert_eq!(poll(&app, &cred, 0).await.status, StatusCode::GONE);
}

/// An agent-key certificate on `target_id` with an issuance job awaiting
/// its CSR.
async fn awaiting_csr(app: &TestApp, target_id: &str) -> (Certificate, Job) {
    let issuer = fixtures::issuer(&app.store).await;
    let cert =
        fixtures::certificate(&app.store, &issuer.id, Some(target_id), KeySource::Agent).await;
    let job = app
        .store
        .create_job(
            NewJob::new(JobType::Issuance)
                .certificate(&cert.id)
                .status(JobStatus::AwaitingCsr),
        )
        .await
        .unwrap();
    (cert, job)
}

fn csr_for(key_type: KeyType, cert: &Certificate, names: &[String]) -> String {
    generate_key_and_csr(key_type, &cert.common_name, names, &[])
        .unwrap()
        .csr_pem
}

async fn agent_isolation(b: Backend) {
    let app = TestApp::new(b).await;
    let (_a, cred_a) = register(&app, "a").await;
    let (b_id, cred_b) = register(&app, "b").await;
    let target_b = fixtures::target(&app.store, &b_id, "tb").await;
    let job_b = deployment_for(&app, &target_b.id).await;
    let (cert_b, csr_job_b) = awaiting_csr(&app, &target_b.id).await;

    // A sees and claims nothing of B's.
    assert!(jobs(&poll(&app, &cred_a, 0).await).is_empty());
    assert_eq!(
        app.store.get_job(&job_b.id).await.unwrap().unwrap().status,
        JobStatus::Pending
    );
    let result = json!({ "outcome": "success" });
    let r = app
        .post(
            &format!("/api/v1/agents/jobs/{}/result", job_b.id),
            &cred_a,
            result.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&r), "not_found");
    let csr = csr_for(KeyType::EcdsaP256, &cert_b, &cert_b.sans);
    let r = app
        .post(
            &format!("/api/v1/agents/jobs/{}/csr", csr_job_b.id),
            &cred_a,
            json!({ "csr_pem": csr }),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // B gets both; A still cannot report B's (now leased) job, and an unknown
    // id answers the same.
    let list = jobs(&poll(&app, &cred_b, 0).await);
    assert_eq!(list.len(), 2, "{list:?}");
    let r = app
        .post(
            &format!("/api/v1/agents/jobs/{}/result", job_b.id),
            &cred_a,
            result.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let missing = app
        .post(
            "/api/v1/agents/jobs/no-such-job/result",
            &cred_a,
            result.clone(),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing.json["error"]["message"]
            .as_str()
            .unwrap()
            .replace("no-such-job", "X"),
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .replace(&job_b.id, "X"),
    );
    assert_eq!(
        app.store.get_job(&job_b.id).await.unwrap().unwrap().status,
        JobStatus::Running
    );
}

async fn csr_flow(b: Backend) {
    let app = TestApp::new(b).await;
    let (id, cred) = register(&app, "web-1").await;
    let target = fixtures::target(&app.store, &id, "t").await;
    let (cert, job) = awaiting_csr(&app, &target.id).await;

    // Returned in place, twice (not claimed), with what the agent needs.
    for _ in 0..2 {
        let list = jobs(&poll(&app, &cred, 5).await);
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0]["id"], job.id.as_str());
        assert_eq!(list[0]["status"], "awaiting_csr");
        assert_eq!(list[0]["certificate"]["key_type"], "ecdsa-p256");
        assert_eq!(list[0]["certificate"]["sans"], json!(cert.sans));
        assert_eq!(
            list[0]["certificate"]["common_name"],
            cert.common_name.as_str()
        );
    }
    let path = format!("/api/v1/agents/jobs/{}/csr", job.id);

    // Invalid CSRs: 422, the job stays awaiting.
    for bad in [
        "not a pem".to_string(),
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
            .to_string(),
        csr_for(
            KeyType::EcdsaP256,
            &cert,
            &["other.example.test".to_string()],
        ),
        csr_for(
            KeyType::EcdsaP256,
            &cert,
            &[cert.sans[0].clone(), "extra.example.test".to_string()],
        ),
        csr_for(KeyType::EcdsaP384, &cert, &cert.sans),
    ] {
        let r = app.post(&path, &cred, json!({ "csr_pem": bad })).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
        assert_eq!(error_code(&r), "validation_failed");
    }
    // A tampered signature.
    let good = csr_for(KeyType::EcdsaP256, &cert, &cert.sans);
    let tampered = {
        use base64::Engine as _;
        let body: String = good.lines().filter(|l| !l.starts_with("-----")).collect();
        let mut der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        let n = der.len();
        der[n - 3] ^= 0x01;
        format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        )
    };
    let r = app.post(&path, &cred, json!({ "csr_pem": tampered })).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(
        app.store.get_job(&job.id).await.unwrap().unwrap().status,
        JobStatus::AwaitingCsr
    );

    let r = app.post(&path, &cred, json!({ "csr_pem": good })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "pending");
    let stored = app.store.get_job(&job.id).await.unwrap().unwrap();
    assert_eq!(stored.status, JobStatus::Pending);
    assert_eq!(stored.csr_pem.as_deref(), Some(good.as_str()));
    assert!(audit_count(&app, "job", &job.id).await >= 1);

    // Replay (the first answer was lost): answered, nothing changes.
    let audits = audit_count(&app, "job", &job.id).await;
    let r = app.post(&path, &cred, json!({ "csr_pem": good })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["replayed"], true);
    assert_eq!(audit_count(&app, "job", &job.id).await, audits);
    // Another CSR once one is accepted: 409.
    let other = good.replace("MII", "MIJ");
    let r = app.post(&path, &cred, json!({ "csr_pem": other })).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(error_code(&r), "invalid_state");
    // And it is no longer handed out.
    assert!(jobs(&poll(&app, &cred, 0).await).is_empty());
}

/// Stores sealed secrets on a target (the API that creates targets seals
/// them the same way).
async fn seal_target_secrets(app: &TestApp, target_id: &str, secrets: &BTreeMap<String, String>) {
    let sealed = app
        .state
        .secrets
        .seal_map(secrets, &format!("target/{target_id}"))
        .unwrap();
    let hex = hex::encode(sealed.as_bytes());
    let sql = match app.db.backend {
        Backend::Sqlite => {
            format!("UPDATE targets SET encrypted_secrets = X'{hex}' WHERE id = '{target_id}'")
        }
        Backend::Postgres => format!(
            "UPDATE targets SET encrypted_secrets = decode('{hex}', 'hex') WHERE id = '{target_id}'"
        ),
    };
    exec(&app.store, &sql).await;
}

/// The loaded pem-files connector.
fn pem_files(app: &TestApp) -> std::sync::Arc<certplane_runtime::Plugin> {
    app.state
        .plugins
        .get("pem-files")
        .expect("pem-files loaded")
}

/// A pem-files target named `site` that agent `agent_id` runs.
async fn agent_site_target(app: &TestApp, agent_id: &str) -> Target {
    let plugin = pem_files(app);
    app.store
        .create_target(NewTarget {
            agent_id: agent_id.to_owned(),
            instance: NewPluginInstance {
                settings: json!({ "dir": "/etc/ssl/site" }),
                grants: json!({ "dirs": ["/etc/ssl/site"] }),
                ..NewPluginInstance::new("site", "pem-files", plugin.version())
            },
        })
        .await
        .unwrap()
}

/// Records version `serial` of `cert_id` (fingerprint `fingerprint`; the
/// chain is not a real certificate: the agent API only passes it on) and
/// a deployment of it to `target_id`.
async fn version_and_deployment(
    app: &TestApp,
    cert_id: &str,
    target_id: &str,
    serial: &str,
    fingerprint: &str,
) -> (CertificateVersion, Job) {
    let now = chrono::Utc::now();
    let version = app
        .store
        .record_certificate_version(NewCertificateVersion {
            certificate_id: cert_id.to_owned(),
            serial: serial.into(),
            pem_chain: format!(
                "-----BEGIN CERTIFICATE-----\nMIIB{serial}\n-----END CERTIFICATE-----\n"
            ),
            not_before: now,
            not_after: now + chrono::Duration::days(90),
            fingerprint_sha256: fingerprint.to_owned(),
            encrypted_private_key: None,
            job_id: None,
            ca_certificate_id: None,
            ca_order_id: None,
            renew_before_secs: None,
        })
        .await
        .unwrap();
    let mut deploy = NewJob::new(JobType::Deployment)
        .certificate(cert_id)
        .target(target_id);
    deploy.certificate_version_id = Some(version.id.clone());
    let job = app.store.create_job(deploy).await.unwrap();
    (version, job)
}

async fn deployment_view_and_results(b: Backend) {
    let app = TestApp::new(b).await;
    let (id, cred) = register(&app, "web-1").await;
    let plugin = pem_files(&app);
    let target = agent_site_target(&app, &id).await;
    let secrets = BTreeMap::from([("token".to_string(), "s3cret".to_string())]);
    seal_target_secrets(&app, &target.id, &secrets).await;
    let issuer = fixtures::issuer(&app.store).await;
    let cert =
        fixtures::certificate(&app.store, &issuer.id, Some(&target.id), KeySource::Agent).await;
    let (version, deploy) =
        version_and_deployment(&app, &cert.id, &target.id, "01", &"ab".repeat(32)).await;
    let mut fail_twice = NewJob::new(JobType::Deployment).target(&target.id);
    fail_twice.max_attempts = 3;
    let transient = app.store.create_job(fail_twice).await.unwrap();
    let permanent = deployment_for(&app, &target.id).await;

    let list = jobs(&poll(&app, &cred, 0).await);
    assert_eq!(list.len(), 3, "{list:?}");
    let view = list.iter().find(|j| j["id"] == deploy.id.as_str()).unwrap();
    assert_eq!(
        view["certificate_version"]["fingerprint_sha256"],
        "ab".repeat(32)
    );
    assert_eq!(
        view["certificate_version"]["pem_chain"],
        version.pem_chain.as_str()
    );
    assert_eq!(view["target"]["plugin_name"], "pem-files");
    assert_eq!(view["target"]["plugin_version"], plugin.version());
    assert_eq!(view["target"]["plugin_sha256"], plugin.sha256());
    assert_eq!(view["target"]["settings"]["dir"], "/etc/ssl/site");
    assert_eq!(view["target"]["grants"]["dirs"][0], "/etc/ssl/site");
    assert_eq!(view["target"]["secrets"]["token"], "s3cret");
    assert_eq!(view["attempt"], 1);
    assert!(view["lease_expires_at"].is_string());

    // Success with a verification result.
    let path = |j: &Job| format!("/api/v1/agents/jobs/{}/result", j.id);
    let r = app
        .post(
            &path(&deploy),
            &cred,
            json!({
                "outcome": "success",
                "changed": ["/etc/ssl/site/cert.pem"],
                "verification": {
                    "status": "verified",
                    "observed_fingerprint": "AB:".repeat(31) + "AB",
                },
                "attempt": 1,
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "completed");
    let stored = app.store.get_job(&deploy.id).await.unwrap().unwrap();
    assert_eq!(stored.status, JobStatus::Completed);
    let v = stored.verification_result.unwrap();
    assert_eq!(v["status"], "verified");
    assert_eq!(v["fingerprint_matches"], true);
    assert_eq!(v["expected_fingerprint"], "ab".repeat(32));
    let events = app
        .store
        .list_audit_events(Some("job"), Some(&deploy.id), 10)
        .await
        .unwrap();
    assert!(events.iter().any(|e| e.action == "job.complete"
        && e.actor == id
        && e.details["changed"][0] == "/etc/ssl/site/cert.pem"));
    // Replay of the same end: answered, nothing recorded twice.
    let r = app
        .post(&path(&deploy), &cred, json!({ "outcome": "success" }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["replayed"], true);
    let again = app
        .store
        .list_audit_events(Some("job"), Some(&deploy.id), 10)
        .await
        .unwrap();
    assert_eq!(again.len(), events.len());
    // A different end once the job ended: the lease is gone.
    let r = app
        .post(
            &path(&deploy),
            &cred,
            json!({ "outcome": "failure", "error": { "class": "transient", "message": "x" } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(error_code(&r), "lease_lost", "{}", r.text);

    // Malformed results.
    let r = app
        .post(&path(&transient), &cred, json!({ "outcome": "failure" }))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let r = app
        .post(
            &path(&transient),
            &cred,
            json!({ "outcome": "success", "attempt": 7 }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    // A stale attempt: the lease it names is gone, the job is not.
    assert_eq!(error_code(&r), "lease_lost", "{}", r.text);
    let r = app
        .post(&path(&transient), &cred, json!({ "outcome": "maybe" }))
        .await;
    assert!(r.status.is_client_error());

    // Transient failure: retried.
    let r = app
        .post(
            &path(&transient),
            &cred,
            json!({ "outcome": "failure", "error": { "class": "io", "message": "disk full" } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "failed");
    assert_eq!(r.json["will_retry"], true);
    let stored = app.store.get_job(&transient.id).await.unwrap().unwrap();
    assert_eq!(stored.status, JobStatus::Failed);
    // An unknown class reads as transient.
    assert_eq!(stored.last_error.as_deref(), Some("transient: disk full"));

    // Permanent failure: budget spent.
    let r = app
        .post(
            &path(&permanent),
            &cred,
            json!({
                "outcome": "failure",
                "error": { "class": "invalid-config", "message": "no such dir" },
                "verification": { "status": "unreachable", "detail": "connection refused" },
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["will_retry"], false);
    let stored = app.store.get_job(&permanent.id).await.unwrap().unwrap();
    assert_eq!(stored.status, JobStatus::Failed);
    assert_eq!(stored.verification_result.unwrap()["status"], "unreachable");
    assert_eq!(
        app.store.retry_failed_jobs(10).await.unwrap(),
        1,
        "only the transient one"
    );
}

async fn retirement_outcomes(b: Backend) {
    let app = TestApp::new(b).await;
    let del = |id: &str, query: &str| format!("/api/v1/agents/{id}{query}");

    // 404, 403 (even with force), scopes.
    let r = app
        .call(Method::DELETE, &del("nope", ""), Some(&app.admin), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&r), "not_found");
    for q in ["", "?force=true&reason=decommissioned"] {
        let r = app
            .call(Method::DELETE, &del("host", q), Some(&app.admin), None)
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{q}: {}", r.text);
        assert_eq!(error_code(&r), "forbidden");
    }
    let (id, _cred) = register(&app, "web-1").await;
    let r = app
        .call(Method::DELETE, &del(&id, ""), Some(&app.operator), None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // 409 with counts.
    let target = fixtures::target(&app.store, &id, "t").await;
    let other = fixtures::target(&app.store, &id, "t2").await;
    deployment_for(&app, &target.id).await;
    let r = app
        .call(Method::DELETE, &del(&id, ""), Some(&app.admin), None)
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(error_code(&r), "invalid_state");
    assert_eq!(
        r.json["error"]["details"]["counts"],
        json!({ "active_targets": 2, "active_certificates": 0, "open_jobs": 1 })
    );

    // 400: force without a reason (also a blank one).
    for q in ["?force=true", "?force=true&reason=%20"] {
        let r = app
            .call(Method::DELETE, &del(&id, q), Some(&app.admin), None)
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}");
    }
    assert_eq!(
        app.store.get_agent(&id).await.unwrap().unwrap().status,
        AgentStatus::Active
    );

    // 200: force retires targets in the same transaction, cancels jobs.
    let r = app
        .call(
            Method::DELETE,
            &del(&id, "?force=true&reason=host%20decommissioned"),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "retired");
    assert_eq!(r.json["dependencies"]["active_targets"], 0);
    assert_eq!(
        count(
            &app.store,
            "SELECT COUNT(*) FROM jobs WHERE status = 'cancelled'"
        )
        .await,
        1
    );
    let first = r.json.clone();
    let agent = app.store.get_agent(&id).await.unwrap().unwrap();
    for t in [&target, &other] {
        let t = app.store.get_target(&t.id).await.unwrap().unwrap();
        assert_eq!(t.retired_at, agent.retired_at);
        assert_eq!(t.retired_reason.as_deref(), Some("host decommissioned"));
    }
    let audits = audit_count(&app, "agent", &id).await;

    // A replay is the same 200 with the same agent, and no new audit row.
    let r = app
        .call(
            Method::DELETE,
            &del(&id, "?force=true&reason=again"),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json, first);
    let r = app
        .call(Method::DELETE, &del(&id, ""), Some(&app.admin), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json, first);
    assert_eq!(audit_count(&app, "agent", &id).await, audits);
    assert_eq!(
        count(
            &app.store,
            "SELECT COUNT(*) FROM audit_events WHERE action = 'agent.retire'"
        )
        .await,
        1
    );

    // Plain retirement of an agent nothing depends on.
    let (free, _) = register(&app, "web-2").await;
    let r = app
        .call(Method::DELETE, &del(&free, ""), Some(&app.admin), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "retired");
}

async fn listing(b: Backend) {
    let app = TestApp::new(b).await;
    let (a, _) = register(&app, "alpha").await;
    let (z, _) = register(&app, "zulu").await;
    let r = app
        .call(
            Method::DELETE,
            &format!("/api/v1/agents/{z}"),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    let names = |r: &Reply| -> Vec<String> {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.json["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let r = app.get("/api/v1/agents", &app.reader).await;
    assert_eq!(names(&r), vec!["host".to_string(), a.clone()]);
    assert_eq!(r.json["total"], 2);
    assert!(r.text.find("credential").is_none());
    let r = app
        .get("/api/v1/agents?include_retired=true", &app.reader)
        .await;
    assert_eq!(names(&r), vec!["host".to_string(), a.clone(), z.clone()]);
    let r = app
        .get(
            "/api/v1/agents?include_retired=true&per_page=1&page=2",
            &app.reader,
        )
        .await;
    assert_eq!(names(&r), vec![a.clone()]);
    assert_eq!(r.json["total"], 3);
    let r = app.get("/api/v1/agents/retired", &app.reader).await;
    assert_eq!(names(&r), vec![z.clone()]);
    assert_eq!(r.json["items"][0]["status"], "retired");

    // ETag round trip.
    let r = app.get("/api/v1/agents", &app.reader).await;
    let etag = r.headers["etag"].to_str().unwrap().to_owned();
    let req = axum::http::Request::builder()
        .uri("/api/v1/agents")
        .header("authorization", format!("Bearer {}", app.reader))
        .header("if-none-match", &etag)
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(app.send(req).await.status, StatusCode::NOT_MODIFIED);

    let r = app.get(&format!("/api/v1/agents/{a}"), &app.reader).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["name"], "alpha");
    assert_eq!(r.json["dependencies"]["active_targets"], 0);
    let r = app.get("/api/v1/agents/nope", &app.reader).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = app.call(Method::GET, "/api/v1/agents", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

/// An agent's rate-limited report keeps the connector's retry-after: the
/// retry waits that long (clamped to an hour), not the default backoff.
async fn rate_limited_results_keep_the_hint(b: Backend) {
    let app = TestApp::new(b).await;
    let (id, cred) = register(&app, "edge").await;
    let target = fixtures::target(&app.store, &id, "t").await;
    let first = deployment_for(&app, &target.id).await;
    let second = deployment_for(&app, &target.id).await;
    assert_eq!(jobs(&poll(&app, &cred, 0).await).len(), 2);
    for (job, hint, expected) in [
        (&first, 120u64, 120i64),
        (&second, u64::from(u32::MAX), 3600),
    ] {
        let r = app
            .post(
                &format!("/api/v1/agents/jobs/{}/result", job.id),
                &cred,
                json!({
                    "outcome": "failure",
                    "error": { "class": "rate-limited", "message": "slow down", "retry_after_secs": hint },
                }),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.json["will_retry"], true);
        let stored = app.store.get_job(&job.id).await.unwrap().unwrap();
        let wait = (stored.run_at - stored.updated_at).num_seconds();
        assert!(
            (expected - 1..=expected + 1).contains(&wait),
            "retry after {wait} s, expected {expected} s"
        );
    }
}

/// A deployment of a version that a newer one replaced is not handed to
/// the agent: it is cancelled as superseded when claimed, and the newer
/// version's deployment goes out alone.
async fn superseded_deployments_are_not_handed_out(b: Backend) {
    let app = TestApp::new(b).await;
    let (id, cred) = register(&app, "web-1").await;
    let target = agent_site_target(&app, &id).await;
    let issuer = fixtures::issuer(&app.store).await;
    let cert =
        fixtures::certificate(&app.store, &issuer.id, Some(&target.id), KeySource::Agent).await;
    let mut versions = Vec::new();
    for serial in ["01", "02"] {
        versions.push(
            version_and_deployment(&app, &cert.id, &target.id, serial, &serial.repeat(32)).await,
        );
    }
    let (old, old_job) = &versions[0];
    let (new, new_job) = &versions[1];

    let list = jobs(&poll(&app, &cred, 0).await);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], new_job.id.as_str());
    assert_eq!(list[0]["certificate_version"]["id"], new.id.as_str());
    let ended = app.store.get_job(&old_job.id).await.unwrap().unwrap();
    assert_eq!(ended.status, JobStatus::Cancelled, "{ended:?}");
    let why = ended.last_error.unwrap_or_default();
    assert!(why.contains("superseded") && why.contains(&old.id), "{why}");
    assert_eq!(audit_count(&app, "job", &old_job.id).await, 1);
    // Nothing more to hand out.
    assert!(jobs(&poll(&app, &cred, 0).await).is_empty());
}

/// An agent runs the jobs of a poll one after another, each leased at the
/// poll: its heartbeats name the jobs it holds and extend their leases, so
/// the last of a long batch is not taken back when the first lease ends
/// and run a second time. Never another agent's job, never a job held past
/// the hold limit; a malformed body is refused.
async fn heartbeats_extend_the_leases_of_held_jobs(b: Backend) {
    // A 2 s lease is always within its renewal window.
    let app = TestApp::with_config(b, |c| c.jobs.lease_secs = 2).await;
    let (id, cred) = register(&app, "web-1").await;
    let (other, other_cred) = register(&app, "web-2").await;
    let mine = deployment_for(&app, &agent_site_target(&app, &id).await.id).await;
    let theirs = deployment_for(
        &app,
        &fixtures::target(&app.store, &other, "other").await.id,
    )
    .await;
    assert_eq!(jobs(&poll(&app, &cred, 0).await).len(), 1);
    assert_eq!(jobs(&poll(&app, &other_cred, 0).await).len(), 1);
    let lease = |job: String| {
        let store = app.store.clone();
        async move {
            let job = store.get_job(&job).await.unwrap().unwrap();
            assert_eq!(job.status, JobStatus::Running, "{job:?}");
            job.lease_expires_at.expect("leased")
        }
    };
    let (mine_before, theirs_before) =
        (lease(mine.id.clone()).await, lease(theirs.id.clone()).await);
    tokio::time::sleep(Duration::from_millis(50)).await;

    let beat =
        |body: Option<Value>| app.call(Method::POST, "/api/v1/agents/heartbeat", Some(&cred), body);
    let r = beat(Some(json!({ "held_jobs": [mine.id, theirs.id] }))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(lease(mine.id.clone()).await > mine_before);
    assert_eq!(lease(theirs.id.clone()).await, theirs_before);
    // A job held since before the hold limit began is left to lapse.
    let mine_now = lease(mine.id.clone()).await;
    let renewed = app
        .store
        .renew_agent_leases(
            &id,
            std::slice::from_ref(&mine.id),
            Duration::from_secs(3),
            chrono::Utc::now() + chrono::Duration::minutes(1),
        )
        .await
        .unwrap();
    assert_eq!(renewed, 0);
    assert_eq!(lease(mine.id.clone()).await, mine_now);

    for body in [
        json!({ "held": [] }),
        json!({ "held_jobs": "one" }),
        json!({ "held_jobs": vec!["j"; 1_001] }),
    ] {
        let r = beat(Some(body)).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    }
    let r = beat(None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

both_backends!(
    heartbeats_extend_the_leases_of_held_jobs,
    superseded_deployments_are_not_handed_out,
    rate_limited_results_keep_the_hint,
    registration,
    heartbeat_then_gone,
    long_poll_returns_existing_work_at_once,
    long_poll_is_woken_by_new_work,
    long_poll_returns_empty_after_the_wait,
    retirement_releases_a_parked_poll,
    agent_isolation,
    csr_flow,
    deployment_view_and_results,
    retirement_outcomes,
    listing,
);
