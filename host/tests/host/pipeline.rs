//! The issuance pipeline end to end inside the host: a certificate due for
//! issuance is picked up by the renewal sweep, issued by the local-ca
//! connector (host key mode), checked, recorded, deployed by the pem-files
//! connector to a host-run target, all through the scheduler loops.

use std::time::{Duration, Instant};

use certplane_host::engine;
use certplane_host::store::{
    AlertChange, JobFilter, JobStatus, JobType, KeySource, NewCertificate, NewJob,
    NewPluginInstance, NewTarget, Notice, SENTINEL_AGENT_ID, SendWhen, Target, deployment_key,
};
use certplane_runtime::harness::{TestResponse, TestServer};
use certplane_testkit::Backend;
use certplane_testkit::app::TestApp;
use tokio_util::sync::CancellationToken;

/// A host-run pem-files target writing under `dir`.
async fn files_target(store: &certplane_host::store::Store, dir: &std::path::Path) -> Target {
    store
        .create_target(NewTarget {
            agent_id: SENTINEL_AGENT_ID.into(),
            instance: NewPluginInstance {
                settings: serde_json::json!({ "directory": "/certs" }),
                grants: serde_json::json!({
                    "directories": [{ "path": dir, "guest_path": "/certs", "writable": true }]
                }),
                ..NewPluginInstance::new("files", "pem-files", "0.1.0")
            },
        })
        .await
        .unwrap()
}

async fn issue_and_deploy(backend: Backend) {
    let app = TestApp::with_config(backend, |c| {
        // Loops only run when woken or on these intervals.
        c.scheduler.jobs_ms = 200;
        c.scheduler.renewal_ms = 200;
    })
    .await;
    let store = &app.store;
    let state = &app.state;

    let issuer_row = certplane_testkit::ca_issuer(state, "local-ca", serde_json::json!({})).await;

    let deploy_dir = tempfile::tempdir().unwrap();
    let target = files_target(store, deploy_dir.path()).await;
    let cert = store
        .create_certificate(NewCertificate {
            name: "web".into(),
            common_name: "web.pipeline.test".into(),
            sans: vec!["web.pipeline.test".into(), "www.pipeline.test".into()],
            key_type: "ecdsa-p256".into(),
            key_source: KeySource::Host,
            issuer_id: issuer_row.id.clone(),
            target_id: None,
            renew_before_secs: 86_400,
            owner: None,
        })
        .await
        .unwrap();
    store
        .add_certificate_target(&cert.id, &target.id)
        .await
        .unwrap();
    // An earlier deployment to this target failed: its condition is open,
    // and the deployment below (whose rows, open conditions included, are
    // read with its claimed batch) clears it and tells its recovery once.
    let condition = deployment_key(&cert.id, &target.id);
    store
        .queue_notices(&[Notice {
            event_type: "deployment.failed".into(),
            subject: None,
            payload: serde_json::json!({}),
            max_attempts: 1,
            dedupe_key: None,
            alerts: vec![AlertChange::Trigger(condition.clone())],
            send_when: SendWhen::Opened,
        }])
        .await
        .unwrap();
    assert_eq!(
        store
            .alert_conditions_open(&[condition.as_str()])
            .await
            .unwrap(),
        std::slice::from_ref(&condition),
        "the condition is open before the deployment"
    );
    // Told to a webhook made after the condition opened.
    let hook = TestServer::start(|_| TestResponse::text(204, ""))
        .await
        .unwrap();
    crate::notifications::create_webhook_to(state, "hook", &hook.url(), &hook.grant()).await;

    let started = Instant::now();
    let token = CancellationToken::new();
    let scheduler = engine::start(state.engine.clone(), token.clone());

    // Wait for the deployment to complete.
    let deadline = Instant::now() + Duration::from_secs(30);
    let deployed = loop {
        let done = store
            .list_jobs(&JobFilter {
                job_type: Some(JobType::Deployment),
                certificate_id: Some(cert.id.clone()),
                ..JobFilter::default()
            })
            .await
            .unwrap();
        if let Some(job) = done.iter().find(|j| j.status == JobStatus::Completed) {
            break job.clone();
        }
        if let Some(job) = done.iter().find(|j| j.status == JobStatus::Failed) {
            panic!("deployment failed: {:?}", job.last_error);
        }
        assert!(
            Instant::now() < deadline,
            "no deployment within 30 s: {done:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = started.elapsed();
    eprintln!("{backend:?}: due certificate → issued and deployed in {elapsed:?}");
    let report = scheduler.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_clean(), "{report:?}");

    assert!(
        store
            .alert_conditions_open(&[condition.as_str()])
            .await
            .unwrap()
            .is_empty(),
        "the deployment cleared its condition"
    );
    let notifications = store
        .list_notifications(None, None, 0, 100)
        .await
        .unwrap()
        .0;
    let recovered = notifications
        .iter()
        .filter(|n| n.event_type == "deployment.recovered")
        .count();
    assert_eq!(recovered, 1, "the recovery is told once: {notifications:?}");

    let cert = store.get_certificate(&cert.id).await.unwrap().unwrap();
    let version_id = cert.current_version_id.clone().expect("a current version");
    assert_eq!(
        deployed.certificate_version_id.as_deref(),
        Some(version_id.as_str())
    );
    let versions = store.list_certificate_versions(&cert.id).await.unwrap();
    let version = versions.iter().find(|v| v.id == version_id).unwrap();
    assert!(
        version.encrypted_private_key.is_some(),
        "host-held key is stored sealed"
    );
    let on_disk =
        std::fs::read_to_string(deploy_dir.path().join(&cert.id).join("cert.pem")).unwrap();
    assert!(
        version.pem_chain.starts_with(on_disk.trim_end()),
        "deployed leaf is the recorded one"
    );
    let issuance = store
        .list_jobs(&JobFilter {
            job_type: Some(JobType::Issuance),
            certificate_id: Some(cert.id.clone()),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(issuance.len(), 1);
    assert_eq!(issuance[0].status, JobStatus::Completed);
    assert_eq!(issuance[0].attempts, 1, "issued exactly once");

    // The connector calls and claims were recorded for /metrics.
    let metrics = app
        .call(axum::http::Method::GET, "/metrics", None, None)
        .await
        .text;
    for needle in [
        "certplane_plugin_call_duration_seconds_count{plugin=\"local-ca\",call=\"submit\"} 1",
        "certplane_plugin_call_duration_seconds_count{plugin=\"pem-files\",call=\"deploy\"} 1",
        "certplane_claim_duration_seconds_count{op=\"claim_pending_jobs\"}",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from /metrics:\n{metrics}"
        );
    }
    // The issued and the deployed outcome (and on SQLite the claims) went
    // through the group committer.
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{metrics}"))
    };
    let groups = counter("certplane_store_group_commits_total");
    let grouped = counter("certplane_store_grouped_writes_total");
    assert!(
        groups >= 1 && grouped >= 2 && grouped >= groups,
        "group commits {groups}, outcomes in them {grouped}"
    );

    // Revocation goes to the issuer connector; the local CA keeps no CRL, so
    // it answers `unsupported`, which fails the job for good.
    let r = app
        .post(
            &format!("/api/v1/certificates/{}/revoke", cert.id),
            &app.operator,
            serde_json::json!({ "reason": "superseded" }),
        )
        .await;
    assert_eq!(r.status, axum::http::StatusCode::ACCEPTED, "{}", r.text);
    let job_id = r.json["job_id"].as_str().unwrap().to_string();
    let scheduler = engine::start(state.engine.clone(), CancellationToken::new());
    let deadline = Instant::now() + Duration::from_secs(20);
    let revocation = loop {
        let job = store.get_job(&job_id).await.unwrap().unwrap();
        if job.status == JobStatus::Failed {
            break job;
        }
        assert!(Instant::now() < deadline, "revocation not run: {job:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    scheduler.shutdown(Duration::from_secs(5)).await;
    assert!(
        revocation
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("revocation list"),
        "{:?}",
        revocation.last_error
    );
    assert_eq!(
        revocation.attempts, revocation.max_attempts,
        "unsupported is permanent"
    );
}

/// A renewal window as long as the certificate's lifetime (local CA: 30
/// days; renew 30 days before expiry) would make every version due the
/// moment it is issued and renew on every sweep. The host renews at two
/// thirds of the lifetime instead: one version, no renewal job.
async fn renewal_window_longer_than_the_lifetime_does_not_storm(backend: Backend) {
    let app = TestApp::with_config(backend, |c| {
        c.scheduler.jobs_ms = 100;
        c.scheduler.renewal_ms = 100;
    })
    .await;
    let store = &app.store;
    let issuer_row =
        certplane_testkit::ca_issuer(&app.state, "local-ca", serde_json::json!({})).await;
    let cert = store
        .create_certificate(NewCertificate {
            name: "short".into(),
            common_name: "short.pipeline.test".into(),
            sans: vec!["short.pipeline.test".into()],
            key_type: "ecdsa-p256".into(),
            key_source: KeySource::Host,
            issuer_id: issuer_row.id.clone(),
            target_id: None,
            renew_before_secs: 30 * 86_400,
            owner: None,
        })
        .await
        .unwrap();
    let scheduler = engine::start(app.state.engine.clone(), CancellationToken::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    while store
        .get_certificate(&cert.id)
        .await
        .unwrap()
        .unwrap()
        .current_version_id
        .is_none()
    {
        assert!(Instant::now() < deadline, "not issued within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Twenty sweeps later, still one version and no renewal.
    tokio::time::sleep(Duration::from_secs(2)).await;
    scheduler.shutdown(Duration::from_secs(5)).await;
    let versions = store.list_certificate_versions(&cert.id).await.unwrap();
    assert_eq!(versions.len(), 1, "renewed on every sweep: {versions:?}");
    let renewals = store
        .list_jobs(&JobFilter {
            job_type: Some(JobType::Renewal),
            certificate_id: Some(cert.id.clone()),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert!(renewals.is_empty(), "{renewals:?}");
    let cert = store.get_certificate(&cert.id).await.unwrap().unwrap();
    let v = &versions[0];
    let expected = v.not_before + (v.not_after - v.not_before) * 2 / 3;
    let renew_at = cert.renew_at;
    assert!(
        (renew_at - expected).num_seconds().abs() <= 1,
        "renews at {renew_at}, expected two thirds in ({expected})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_renewal_window_longer_than_the_lifetime_does_not_storm() {
    renewal_window_longer_than_the_lifetime_does_not_storm(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_renewal_window_longer_than_the_lifetime_does_not_storm() {
    renewal_window_longer_than_the_lifetime_does_not_storm(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_issue_and_deploy_through_the_loops() {
    issue_and_deploy(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_issue_and_deploy_through_the_loops() {
    issue_and_deploy(Backend::Postgres).await;
}

/// A job left in AwaitingApproval past `jobs.approval_ttl_secs` fails with
/// the reason, spending one attempt, and is retried.
async fn approval_wait_expires(backend: Backend) {
    let app = TestApp::with_config(backend, |c| {
        c.jobs.approval_ttl_secs = 1;
        c.scheduler.reaper_ms = 200;
        c.scheduler.retry_ms = 60_000;
    })
    .await;
    let store = &app.store;
    let job = store
        .create_job(NewJob::new(JobType::Revocation).status(JobStatus::AwaitingApproval))
        .await
        .unwrap();
    let scheduler = engine::start(app.state.engine.clone(), CancellationToken::new());
    let deadline = Instant::now() + Duration::from_secs(20);
    let failed = loop {
        let row = store.get_job(&job.id).await.unwrap().unwrap();
        if row.status == JobStatus::Failed {
            break row;
        }
        assert!(
            Instant::now() < deadline,
            "approval wait did not expire: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    scheduler.shutdown(Duration::from_secs(5)).await;
    assert_eq!(failed.attempts, 1);
    assert!(
        failed
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("not approved within 1 s"),
        "{:?}",
        failed.last_error
    );
}

/// An agent-key certificate whose agent never sends its CSR: the wait
/// expires after `agents.csr_ttl_secs`, the job fails (one attempt spent),
/// is retried, and the host asks the agent for a CSR again.
async fn csr_wait_expires_and_is_asked_again(backend: Backend) {
    let app = TestApp::with_config(backend, |c| {
        c.agents.csr_ttl_secs = 1;
        c.scheduler.reaper_ms = 200;
        c.scheduler.retry_ms = 200;
        c.scheduler.jobs_ms = 200;
        c.scheduler.renewal_ms = 200;
    })
    .await;
    let store = &app.store;
    let issuer = certplane_testkit::ca_issuer(&app.state, "local-ca", serde_json::json!({})).await;
    let agent = certplane_testkit::fixtures::agent(store, "edge-1").await;
    let target = certplane_testkit::fixtures::target(store, &agent.id, "files").await;
    let cert = certplane_testkit::fixtures::certificate(
        store,
        &issuer.id,
        Some(&target.id),
        KeySource::Agent,
    )
    .await;

    let scheduler = engine::start(app.state.engine.clone(), CancellationToken::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    let asked_again = loop {
        let jobs = store
            .list_jobs(&JobFilter {
                certificate_id: Some(cert.id.clone()),
                ..JobFilter::default()
            })
            .await
            .unwrap();
        if let Some(job) = jobs
            .iter()
            .find(|j| j.status == JobStatus::AwaitingCsr && j.attempts >= 2)
        {
            break job.clone();
        }
        assert!(
            Instant::now() < deadline,
            "CSR wait did not expire and come back: {jobs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    scheduler.shutdown(Duration::from_secs(5)).await;
    assert!(
        asked_again
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("no CSR"),
        "{:?}",
        asked_again.last_error
    );
    let requested = certplane_testkit::count(
        store,
        &format!(
            "SELECT COUNT(*) FROM audit_events WHERE subject_id = '{}' AND action = 'issuance.csr_requested'",
            asked_again.id
        ),
    )
    .await;
    assert_eq!(requested, 1, "the host asked the agent again once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_csr_wait_expires_and_is_asked_again() {
    csr_wait_expires_and_is_asked_again(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_csr_wait_expires_and_is_asked_again() {
    csr_wait_expires_and_is_asked_again(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_approval_wait_expires() {
    approval_wait_expires(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_approval_wait_expires() {
    approval_wait_expires(Backend::Postgres).await;
}

/// Waits (up to 30 s) until `cert` has `n` completed deployments.
async fn deployments_completed(app: &TestApp, cert: &str, n: usize) {
    let what = format!("{n} completed deployments of {cert}");
    certplane_testkit::wait_for(&what, Duration::from_secs(30), || async {
        let jobs = app
            .store
            .list_jobs(&JobFilter {
                job_type: Some(JobType::Deployment),
                certificate_id: Some(cert.to_owned()),
                ..JobFilter::default()
            })
            .await
            .unwrap();
        let done = jobs.iter().filter(|j| j.status == JobStatus::Completed);
        (done.count() >= n).then_some(())
    })
    .await;
}

/// A deployment of a version that a newer one replaced (a retry that comes
/// due after the renewal, an old job left waiting) is cancelled as
/// superseded when it runs, and the target keeps the newer version: it
/// would otherwise put the replaced certificate back in service.
async fn an_older_version_is_not_deployed_over_a_newer_one(backend: Backend) {
    let app = TestApp::with_config(backend, |c| {
        c.scheduler.jobs_ms = 200;
        c.scheduler.renewal_ms = 200;
    })
    .await;
    let (store, state) = (&app.store, &app.state);
    let issuer = certplane_testkit::ca_issuer(state, "local-ca", serde_json::json!({})).await;
    let deploy_dir = tempfile::tempdir().unwrap();
    let target = files_target(store, deploy_dir.path()).await;
    let reply = app
        .post(
            "/api/v1/certificates",
            &app.operator,
            serde_json::json!({
                "name": "rotated",
                "common_name": "rotated.pipeline.test",
                "issuer_id": issuer.id,
                "target_ids": [target.id],
            }),
        )
        .await;
    assert_eq!(
        reply.status,
        axum::http::StatusCode::CREATED,
        "{}",
        reply.text
    );
    let cert_id = reply.json["id"].as_str().unwrap().to_owned();

    let scheduler = engine::start(state.engine.clone(), CancellationToken::new());
    deployments_completed(&app, &cert_id, 1).await;
    let first = store.get_certificate(&cert_id).await.unwrap().unwrap();
    let old_version = first.current_version_id.clone().unwrap();
    let r = app
        .post(
            &format!("/api/v1/certificates/{cert_id}/renew"),
            &app.operator,
            serde_json::json!({}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    deployments_completed(&app, &cert_id, 2).await;
    let cert = store.get_certificate(&cert_id).await.unwrap().unwrap();
    let current = cert.current_version_id.clone().unwrap();
    assert_ne!(current, old_version, "the renewal recorded a new version");

    // The first version's deployment comes due again.
    let mut stale = NewJob::new(JobType::Deployment)
        .certificate(cert_id.clone())
        .target(target.id.clone())
        .agent(SENTINEL_AGENT_ID);
    stale.certificate_version_id = Some(old_version.clone());
    let stale = store.create_job(stale).await.unwrap();
    state.engine.wake.wake_jobs();
    let ended = certplane_testkit::wait_for(
        "the old deployment to run",
        Duration::from_secs(20),
        || async {
            let job = store.get_job(&stale.id).await.unwrap().unwrap();
            job.status.is_terminal().then_some(job)
        },
    )
    .await;
    scheduler.shutdown(Duration::from_secs(5)).await;
    assert_eq!(ended.status, JobStatus::Cancelled, "{ended:?}");
    let why = ended.last_error.clone().unwrap_or_default();
    assert!(
        why.contains("superseded") && why.contains(&current),
        "{why}"
    );
    let versions = store.list_certificate_versions(&cert_id).await.unwrap();
    let newest = versions.iter().find(|v| v.id == current).unwrap();
    let on_disk =
        std::fs::read_to_string(deploy_dir.path().join(&cert_id).join("cert.pem")).unwrap();
    assert!(
        newest.pem_chain.starts_with(on_disk.trim_end()),
        "the target still serves the newest version"
    );
    let audit = app
        .get(
            &format!("/api/v1/audit?subject_type=job&subject_id={}", stale.id),
            &app.admin,
        )
        .await;
    assert!(
        audit.text.contains("deployment.superseded"),
        "{}",
        audit.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_older_version_is_not_deployed_over_a_newer_one() {
    an_older_version_is_not_deployed_over_a_newer_one(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_older_version_is_not_deployed_over_a_newer_one() {
    an_older_version_is_not_deployed_over_a_newer_one(Backend::Postgres).await;
}
