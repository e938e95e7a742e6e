//! The events notifiers get (docs/events.md), on SQLite and PostgreSQL:
//! each kind is queued by what causes it, with the documented details, and
//! the alert conditions open and clear so that a recovery is told only
//! after a failure, once.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use certplane_host::engine;
use certplane_host::engine::ending::{Ending, end_claimed, host_actor};
use certplane_host::store::*;
use certplane_runtime::harness::{TestResponse, TestServer};
use certplane_testkit::app::TestApp;
use certplane_testkit::{Backend, both_backends, fixtures};
use serde_json::{Value, json};

use crate::notifications::create_webhook_to;

struct World {
    app: TestApp,
    _server: TestServer,
    cert: Certificate,
    target: Target,
    agent: Agent,
}

async fn world(
    backend: Backend,
    edit: impl FnOnce(&mut certplane_host::config::HostConfig),
) -> World {
    let app = TestApp::with_config(backend, edit).await;
    let server = TestServer::start(|_| TestResponse::text(204, ""))
        .await
        .unwrap();
    create_webhook_to(&app.state, "hook", &server.url(), &server.grant()).await;
    let issuer = fixtures::issuer(&app.store).await;
    let agent = fixtures::agent(&app.store, "edge-1").await;
    let target = fixtures::target(&app.store, &agent.id, "edge-nginx").await;
    let cert =
        fixtures::certificate(&app.store, &issuer.id, Some(&target.id), KeySource::Host).await;
    World {
        app,
        _server: server,
        cert,
        target,
        agent,
    }
}

/// The queued notifications of `kind`: (payload, subject), oldest first.
async fn queued(app: &TestApp, kind: &str) -> Vec<(Value, Option<String>)> {
    let (rows, _) = app
        .store
        .list_notifications(None, None, 0, 500)
        .await
        .unwrap();
    let mut rows: Vec<_> = rows.into_iter().filter(|n| n.event_type == kind).collect();
    rows.sort_by_key(|n| n.created_at);
    rows.into_iter().map(|n| (n.payload, n.subject)).collect()
}

fn alerts(payload: &Value) -> Vec<(String, String)> {
    payload["details"]["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|a| {
            (
                a["key"].as_str().unwrap().to_owned(),
                a["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A claimed job of `job_type` for the world's certificate and target.
async fn claimed(w: &World, job_type: JobType, max_attempts: i32) -> Job {
    let mut new = NewJob::new(job_type)
        .certificate(w.cert.id.clone())
        .target(w.target.id.clone())
        .agent(w.agent.id.clone());
    new.max_attempts = max_attempts;
    let job = w.app.store.create_job(new).await.unwrap();
    let jobs = w
        .app
        .store
        .claim_pending_for_agent(&w.agent.id, 10)
        .await
        .unwrap();
    jobs.into_iter().find(|j| j.id == job.id).unwrap()
}

fn verification(status: &str) -> Value {
    json!({ "status": status, "detail": format!("{status} at 127.0.0.1:443") })
}

async fn end(w: &World, job: &Job, result: Result<(), JobFailure>, verified: Option<&str>) {
    let ending = Ending {
        kind: "agent_result",
        result,
        verification: verified.map(verification),
        actor: host_actor(),
        actions: ("job.complete", "job.fail"),
        details: json!({}),
        open_alerts: None,
    };
    assert!(
        end_claimed(&w.app.state.engine, job, ending)
            .await
            .unwrap()
            .is_some()
    );
}

/// A deployment failing for good opens its condition (`deployment.failed`
/// with the certificate, target, agent, job and reason); the next
/// successful deployment tells `deployment.recovered` once, and later
/// successes tell nothing.
async fn deployment_failure_and_recovery(backend: Backend) {
    let w = world(backend, |_| {}).await;
    let failed = claimed(&w, JobType::Deployment, 1).await;
    end(
        &w,
        &failed,
        Err(JobFailure::permanent(
            "action nginx-test exited with status 1",
        )),
        None,
    )
    .await;
    for _ in 0..2 {
        engine::expiry::tick(&w.app.state.engine).await.unwrap();
    }
    let key = format!("deployment:{}:{}", w.cert.id, w.target.id);
    let events = queued(&w.app, "deployment.failed").await;
    assert_eq!(events.len(), 1, "once, however many sweeps see it");
    let (payload, subject) = &events[0];
    assert_eq!(
        subject.as_deref(),
        Some(format!("certificate/{}", w.cert.id).as_str())
    );
    let d = &payload["details"];
    assert_eq!(d["schema_version"], 1);
    assert_eq!(d["certificate"]["name"], w.cert.name.as_str());
    assert_eq!(d["certificate"]["dns_names"], json!(w.cert.sans));
    assert_eq!(d["certificate"]["owner"], "team-a");
    assert!(d["certificate"]["issuer"].is_string(), "{d}");
    assert_eq!(d["target"]["name"], w.target.name.as_str());
    assert_eq!(d["target"]["agent_id"], w.agent.id.as_str());
    assert_eq!(d["agent"]["name"], "edge-1");
    assert_eq!(d["job"]["id"], failed.id.as_str());
    assert_eq!(d["job"]["type"], "deployment");
    assert_eq!(d["reason"], "action nginx-test exited with status 1");
    assert_eq!(alerts(payload), [(key.clone(), "triggered".to_owned())]);
    assert_eq!(payload["severity"], "error");

    for _ in 0..2 {
        let ok = claimed(&w, JobType::Deployment, 3).await;
        end(&w, &ok, Ok(()), Some("verified")).await;
    }
    let recovered = queued(&w.app, "deployment.recovered").await;
    assert_eq!(
        recovered.len(),
        1,
        "told once, when it cleared: {recovered:?}"
    );
    assert_eq!(alerts(&recovered[0].0), [(key, "resolved".to_owned())]);
    assert_eq!(recovered[0].0["severity"], "info");
    assert!(
        queued(&w.app, "verification.recovered").await.is_empty(),
        "no verification condition was open"
    );
}

/// An endpoint serving another certificate: `verification.mismatch` with
/// the deployment's outcome (not also `deployment.failed` from the sweep);
/// `verification.recovered` when it serves the right one again.
async fn verification_mismatch_and_recovery(backend: Backend) {
    let w = world(backend, |_| {}).await;
    let job = claimed(&w, JobType::Deployment, 1).await;
    end(
        &w,
        &job,
        Err(JobFailure::permanent(
            "failed verification: the endpoint serves another certificate",
        )),
        Some("mismatch"),
    )
    .await;
    let key = format!("verification:{}:{}", w.cert.id, w.target.id);
    let mismatch = queued(&w.app, "verification.mismatch").await;
    assert_eq!(mismatch.len(), 1);
    assert_eq!(
        alerts(&mismatch[0].0),
        [(key.clone(), "triggered".to_owned())]
    );
    assert_eq!(
        mismatch[0].0["details"]["verification"]["status"],
        "mismatch"
    );
    assert_eq!(
        mismatch[0].0["details"]["reason"],
        "mismatch at 127.0.0.1:443"
    );
    engine::expiry::tick(&w.app.state.engine).await.unwrap();
    assert!(queued(&w.app, "deployment.failed").await.is_empty());

    let ok = claimed(&w, JobType::Verification, 3).await;
    end(&w, &ok, Ok(()), Some("verified")).await;
    let recovered = queued(&w.app, "verification.recovered").await;
    assert_eq!(recovered.len(), 1);
    assert_eq!(alerts(&recovered[0].0), [(key, "resolved".to_owned())]);
}

/// Expiry stages come from `[notifications] expiring_days`; each stage of a
/// version is told once and opens the certificate's expiry condition; an
/// issuance failing for good opens its issuance condition; a revocation
/// failing for good is a plain `job.failed`.
async fn expiry_stages_and_failed_jobs(backend: Backend) {
    let w = world(backend, |c| c.notifications.expiring_days = vec![2, 10]).await;
    certplane_testkit::fixtures::version_ending_in(&w.app.store, &w.cert.id, "0a", 5).await;
    let issuance = {
        let mut new = NewJob::new(JobType::Renewal).certificate(w.cert.id.clone());
        new.max_attempts = 1;
        w.app.store.create_job(new).await.unwrap()
    };
    let revocation = {
        let mut new = NewJob::new(JobType::Revocation).certificate(w.cert.id.clone());
        new.max_attempts = 1;
        w.app.store.create_job(new).await.unwrap()
    };
    for job in w.app.store.claim_pending_jobs(None, 10).await.unwrap() {
        if job.id == issuance.id || job.id == revocation.id {
            w.app
                .store
                .fail_job(
                    &job.lease().unwrap(),
                    JobFailure::permanent("the CA refused"),
                )
                .await
                .unwrap();
        }
    }
    for _ in 0..3 {
        engine::expiry::tick(&w.app.state.engine).await.unwrap();
    }

    let expiring = queued(&w.app, "certificate.expiring").await;
    assert_eq!(expiring.len(), 1, "{expiring:?}");
    let (payload, _) = &expiring[0];
    assert_eq!(payload["details"]["expiring"]["stage"], "10d");
    assert_eq!(payload["severity"], "warn", "not the last stage");
    assert_eq!(payload["details"]["certificate"]["serial"], Value::Null);
    assert!(payload["details"]["certificate"]["not_after"].is_string());
    assert_eq!(
        alerts(payload),
        [(format!("expiry:{}", w.cert.id), "triggered".to_owned())]
    );

    let failed = queued(&w.app, "issuance.failed").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0["details"]["reason"], "the CA refused");
    assert_eq!(
        alerts(&failed[0].0),
        [(format!("issuance:{}", w.cert.id), "triggered".to_owned())]
    );
    let other = queued(&w.app, "job.failed").await;
    assert_eq!(other.len(), 1);
    assert_eq!(
        other[0].1.as_deref(),
        Some(format!("job/{}", revocation.id).as_str())
    );
    assert!(alerts(&other[0].0).is_empty());
}

/// A silent agent is told offline once per silence and online once when
/// heard again; retiring one is told with the retirement and clears its
/// silence.
async fn agent_offline_online_and_retired(backend: Backend) {
    let w = world(backend, |c| c.agents.offline_after_secs = 1).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    for _ in 0..3 {
        engine::agent_health::tick(&w.app.state.engine)
            .await
            .unwrap();
    }
    let key = format!("agent:{}", w.agent.id);
    let offline = queued(&w.app, "agent.offline").await;
    assert_eq!(offline.len(), 1, "once per silence: {offline:?}");
    assert_eq!(offline[0].0["details"]["agent"]["name"], "edge-1");
    assert_eq!(
        alerts(&offline[0].0),
        [(key.clone(), "triggered".to_owned())]
    );

    w.app.store.record_heartbeat(&w.agent.id).await.unwrap();
    for _ in 0..2 {
        engine::agent_health::tick(&w.app.state.engine)
            .await
            .unwrap();
    }
    let online = queued(&w.app, "agent.online").await;
    assert_eq!(online.len(), 1);
    assert_eq!(alerts(&online[0].0), [(key.clone(), "resolved".to_owned())]);

    // Silent again, then retired: the retirement clears the condition.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    engine::agent_health::tick(&w.app.state.engine)
        .await
        .unwrap();
    assert_eq!(queued(&w.app, "agent.offline").await.len(), 2);
    let admin = w.app.api_key("admin", ApiScope::Admin).await;
    let reply = w
        .app
        .call(
            Method::DELETE,
            &format!(
                "/api/v1/agents/{}?force=true&reason=decommissioned",
                w.agent.id
            ),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let retired = queued(&w.app, "agent.retired").await;
    assert_eq!(retired.len(), 1);
    assert_eq!(retired[0].0["details"]["reason"], "decommissioned");
    assert_eq!(retired[0].0["details"]["forced"], true);
    assert_eq!(alerts(&retired[0].0), [(key, "resolved".to_owned())]);
    engine::agent_health::tick(&w.app.state.engine)
        .await
        .unwrap();
    assert_eq!(
        queued(&w.app, "agent.offline").await.len(),
        2,
        "a retired agent is not watched"
    );
}

/// The first version is `certificate.issued`, the next one
/// `certificate.renewed`, which clears the certificate's open expiry and
/// issuance conditions (each told as resolved).
async fn issued_then_renewed_clears_the_conditions(backend: Backend) {
    let app = TestApp::with_config(backend, |c| {
        c.scheduler.jobs_ms = 100;
        c.scheduler.renewal_ms = 100;
    })
    .await;
    let server = TestServer::start(|_| TestResponse::text(204, ""))
        .await
        .unwrap();
    create_webhook_to(&app.state, "hook", &server.url(), &server.grant()).await;
    let issuer = certplane_testkit::ca_issuer(&app.state, "local-ca", json!({})).await;
    let cert = app
        .store
        .create_certificate(NewCertificate {
            name: "shop".into(),
            common_name: "shop.events.test".into(),
            sans: vec!["shop.events.test".into()],
            key_type: "ecdsa-p256".into(),
            key_source: KeySource::Host,
            issuer_id: issuer.id.clone(),
            target_id: None,
            renew_before_secs: 86_400,
            owner: None,
        })
        .await
        .unwrap();
    let scheduler = engine::start(
        app.state.engine.clone(),
        tokio_util::sync::CancellationToken::new(),
    );
    let wait_for_kind = |kind: &'static str| {
        let app = &app;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let found = queued(app, kind).await;
                if !found.is_empty() {
                    return found;
                }
                assert!(std::time::Instant::now() < deadline, "no {kind} queued");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let issued = wait_for_kind("certificate.issued").await;
    assert_eq!(issued.len(), 1);
    let d = &issued[0].0["details"];
    assert_eq!(d["certificate"]["name"], "shop");
    assert!(d["certificate"]["serial"].is_string(), "{d}");
    assert!(d["certificate"]["not_after"].is_string(), "{d}");
    assert_eq!(d["certificate"]["issuer"], issuer.name.as_str());
    assert!(alerts(&issued[0].0).is_empty(), "nothing was open");

    // Both conditions open (as the sweeps would open them), then renew.
    let open = |key: String| Notice {
        event_type: "test.open".into(),
        subject: None,
        payload: json!({ "details": {} }),
        max_attempts: 1,
        dedupe_key: None,
        alerts: vec![AlertChange::Trigger(key)],
        send_when: SendWhen::Always,
    };
    app.store
        .queue_notices(&[
            open(format!("expiry:{}", cert.id)),
            open(format!("issuance:{}", cert.id)),
        ])
        .await
        .unwrap();
    let admin = app.api_key("admin", ApiScope::Admin).await;
    let reply = app
        .post(
            &format!("/api/v1/certificates/{}/renew", cert.id),
            &admin,
            json!({}),
        )
        .await;
    assert!(reply.status.is_success(), "{}", reply.text);
    let renewed = wait_for_kind("certificate.renewed").await;
    scheduler.shutdown(Duration::from_secs(5)).await;
    assert_eq!(renewed.len(), 1);
    let mut changed = alerts(&renewed[0].0);
    changed.sort();
    assert_eq!(
        changed,
        [
            (format!("expiry:{}", cert.id), "resolved".to_owned()),
            (format!("issuance:{}", cert.id), "resolved".to_owned()),
        ]
    );
    assert_eq!(queued(&app, "certificate.issued").await.len(), 1);
}

both_backends!(
    issued_then_renewed_clears_the_conditions,
    deployment_failure_and_recovery,
    verification_mismatch_and_recovery,
    expiry_stages_and_failed_jobs,
    agent_offline_online_and_retired
);
