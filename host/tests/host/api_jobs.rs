//! Jobs, audit, notifications and /metrics through the real router, on
//! SQLite and PostgreSQL.

use certplane_testkit::both_backends;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use certplane_host::store::*;
use certplane_testkit::app::{Reply, TestApp, error_code};
use certplane_testkit::{Backend, exec, fixtures};
use chrono::SecondsFormat;
use serde_json::{Value, json};

both_backends!(
    jobs_list_filter_paginate_and_etag,
    cancel_and_retry,
    verify_creates_a_job_and_verification_is_read_back,
    audit_filters_pagination_and_etag,
    notifications_list_and_get,
    bad_query_params_get_the_400_envelope,
    metrics_expose_job_and_expiry_gauges,
);

/// GET with `If-None-Match`.
async fn get_if_none_match(app: &TestApp, path: &str, etag: &str) -> Reply {
    let req = Request::builder()
        .uri(path)
        .header("authorization", format!("Bearer {}", app.reader))
        .header("if-none-match", etag)
        .body(Body::empty())
        .unwrap();
    app.send(req).await
}

fn etag(reply: &Reply) -> String {
    reply.headers["etag"].to_str().unwrap().to_string()
}

fn ids(reply: &Reply) -> Vec<String> {
    reply.json["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {}", reply.text))
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect()
}

async fn post_empty(app: &TestApp, path: &str, token: &str) -> Reply {
    app.call(Method::POST, path, Some(token), None).await
}

/// A host job claimed and failed permanently.
async fn failed_job(store: &Store, job_type: JobType) -> Job {
    let job = store.create_job(NewJob::new(job_type)).await.unwrap();
    let claimed = store.claim_pending_jobs(Some(job_type), 10).await.unwrap();
    let claimed = claimed.into_iter().find(|j| j.id == job.id).unwrap();
    store
        .fail_job(&claimed.lease().unwrap(), JobFailure::permanent("boom"))
        .await
        .unwrap()
        .unwrap()
}

/// Claims every pending job of `agent_id` and completes the one with `id`.
async fn complete_agent_job(store: &Store, agent_id: &str, id: &str) -> Job {
    let claimed = store.claim_pending_for_agent(agent_id, 10).await.unwrap();
    let job = claimed.into_iter().find(|j| j.id == id).unwrap();
    assert!(store.complete_job(&job.lease().unwrap()).await.unwrap());
    store.get_job(id).await.unwrap().unwrap()
}

async fn jobs_list_filter_paginate_and_etag(b: Backend) {
    let app = TestApp::new(b).await;
    let store = &app.store;
    let agent = fixtures::agent(store, "edge-1").await;
    let target = fixtures::target(store, &agent.id, "web").await;
    let issuer = fixtures::issuer(store).await;
    let cert = fixtures::certificate(store, &issuer.id, Some(&target.id), KeySource::Host).await;
    let mut created = Vec::new();
    for _ in 0..3 {
        created.push(
            store
                .create_job(NewJob::new(JobType::Revocation))
                .await
                .unwrap(),
        );
    }
    for _ in 0..2 {
        let job = NewJob::new(JobType::Deployment)
            .certificate(&cert.id)
            .target(&target.id);
        created.push(store.create_job(job).await.unwrap());
    }

    let r = app.get("/api/v1/jobs", &app.reader).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["total"], 5);
    assert_eq!(r.json["page"], 1);
    assert_eq!(r.json["per_page"], 50);
    let newest_first: Vec<String> = created.iter().rev().map(|j| j.id.clone()).collect();
    assert_eq!(ids(&r), newest_first);

    let r = app
        .get("/api/v1/jobs?job_type=deployment", &app.reader)
        .await;
    assert_eq!(r.json["total"], 2, "{}", r.text);
    for job in r.json["items"].as_array().unwrap() {
        assert_eq!(job["job_type"], "deployment");
        assert_eq!(job["agent_id"], agent.id.as_str());
        assert_eq!(job["status"], "pending");
    }
    let r = app.get("/api/v1/jobs?agent_id=host", &app.reader).await;
    assert_eq!(r.json["total"], 3, "{}", r.text);
    let r = app
        .get(&format!("/api/v1/jobs?agent_id={}", agent.id), &app.reader)
        .await;
    assert_eq!(r.json["total"], 2);
    let r = app
        .get(
            &format!(
                "/api/v1/jobs?certificate_id={}&job_type=deployment&status=pending",
                cert.id
            ),
            &app.reader,
        )
        .await;
    assert_eq!(r.json["total"], 2);
    let r = app.get("/api/v1/jobs?status=failed", &app.reader).await;
    assert_eq!(r.json["total"], 0);
    assert!(r.json["items"].as_array().unwrap().is_empty());

    // Pagination: 5 jobs, 2 per page.
    let r = app.get("/api/v1/jobs?per_page=2&page=2", &app.reader).await;
    assert_eq!(ids(&r), newest_first[2..4].to_vec());
    assert_eq!(r.json["total"], 5);
    let r = app.get("/api/v1/jobs?per_page=2&page=3", &app.reader).await;
    assert_eq!(ids(&r), newest_first[4..].to_vec());
    let r = app.get("/api/v1/jobs?per_page=2&page=4", &app.reader).await;
    assert!(ids(&r).is_empty());

    // One job.
    let r = app
        .get(&format!("/api/v1/jobs/{}", created[0].id), &app.reader)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["id"], created[0].id.as_str());
    assert_eq!(r.json["job_type"], "revocation");
    assert_eq!(r.json["agent_id"], "host");
    let r = app.get("/api/v1/jobs/no-such-job", &app.reader).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&r), "not_found");

    // ETag: 304 while unchanged, 200 with a new tag after a change.
    let first = app.get("/api/v1/jobs", &app.reader).await;
    let tag = etag(&first);
    let r = get_if_none_match(&app, "/api/v1/jobs", &tag).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    let r = post_empty(
        &app,
        &format!("/api/v1/jobs/{}/cancel", created[0].id),
        &app.operator,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = get_if_none_match(&app, "/api/v1/jobs", &tag).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_ne!(etag(&r), tag);
    // Single job ETag too.
    let path = format!("/api/v1/jobs/{}", created[1].id);
    let tag = etag(&app.get(&path, &app.reader).await);
    assert_eq!(
        get_if_none_match(&app, &path, &tag).await.status,
        StatusCode::NOT_MODIFIED
    );
}

async fn cancel_and_retry(b: Backend) {
    let app = TestApp::new(b).await;
    let store = &app.store;

    // Cancel: 200, then 409 once terminal; reason kept and audited.
    let job = store
        .create_job(NewJob::new(JobType::Revocation))
        .await
        .unwrap();
    let path = format!("/api/v1/jobs/{}/cancel", job.id);
    let r = app.post(&path, &app.reader, json!({})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(error_code(&r), "forbidden");
    let r = app
        .post(
            &path,
            &app.operator,
            json!({ "reason": "wrong certificate" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "cancelled");
    assert_eq!(r.json["last_error"], "wrong certificate");
    assert!(r.json["finished_at"].is_string());
    let r = app.post(&path, &app.operator, json!({})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(error_code(&r), "invalid_state");
    let events = store
        .list_audit_events(Some("job"), Some(&job.id), 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].action, "job.cancel");
    assert_eq!(events[0].actor, "apikey:operator");
    assert_eq!(events[0].actor_type, ActorType::ApiKey);
    assert_eq!(events[0].details["reason"], "wrong certificate");
    assert_eq!(events[0].details["from"], "pending");

    // A `null` body is no body, as the document's optional body allows
    // (generated clients send it).
    let nulled = store
        .create_job(NewJob::new(JobType::Revocation))
        .await
        .unwrap();
    let r = app
        .post(
            &format!("/api/v1/jobs/{}/cancel", nulled.id),
            &app.operator,
            Value::Null,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "cancelled");
    assert_eq!(r.json["last_error"], "cancelled by apikey:operator");
    let stored = store.get_job(&nulled.id).await.unwrap().unwrap();
    assert_eq!(stored.status, JobStatus::Cancelled);

    // A running job can be cancelled (lease dropped); no body needed.
    let running = store
        .create_job(NewJob::new(JobType::Issuance))
        .await
        .unwrap();
    store
        .claim_pending_jobs(Some(JobType::Issuance), 10)
        .await
        .unwrap();
    let r = post_empty(
        &app,
        &format!("/api/v1/jobs/{}/cancel", running.id),
        &app.admin,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "cancelled");
    assert!(r.json["lease_expires_at"].is_null());
    assert_eq!(r.json["last_error"], "cancelled by apikey:admin");
    // A completed job cannot be cancelled.
    let done = store
        .create_job(NewJob::new(JobType::Renewal))
        .await
        .unwrap();
    let claimed = store
        .claim_pending_jobs(Some(JobType::Renewal), 10)
        .await
        .unwrap();
    assert!(
        store
            .complete_job(&claimed[0].lease().unwrap())
            .await
            .unwrap()
    );
    let r = post_empty(
        &app,
        &format!("/api/v1/jobs/{}/cancel", done.id),
        &app.operator,
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    // Bad bodies and unknown jobs.
    let r = app
        .post(
            &format!("/api/v1/jobs/{}/cancel", done.id),
            &app.operator,
            json!({ "nope": 1 }),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&r), "bad_request");
    let r = post_empty(&app, "/api/v1/jobs/missing/cancel", &app.operator).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Retry: Failed → Pending now (budget spent, backoff ignored), wakes the
    // job processor; 409 for anything else.
    let failed = failed_job(store, JobType::Revocation).await;
    assert_eq!(failed.status, JobStatus::Failed);
    let path = format!("/api/v1/jobs/{}/retry", failed.id);
    let r = post_empty(&app, &path, &app.reader).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let before = now();
    let r = post_empty(&app, &path, &app.operator).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "pending");
    assert!(r.json["finished_at"].is_null());
    let run_at: chrono::DateTime<chrono::Utc> = r.json["run_at"].as_str().unwrap().parse().unwrap();
    assert!(run_at >= before && run_at <= now());
    tokio::time::timeout(Duration::from_secs(1), app.state.wake.jobs.notified())
        .await
        .expect("retry wakes the job processor");
    // It is claimable at once.
    let claimed = store
        .claim_pending_jobs(Some(JobType::Revocation), 10)
        .await
        .unwrap();
    assert!(claimed.iter().any(|j| j.id == failed.id));
    let r = post_empty(&app, &path, &app.operator).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "running job: {}", r.text);
    assert_eq!(error_code(&r), "invalid_state");
    let pending = store
        .create_job(NewJob::new(JobType::Revocation))
        .await
        .unwrap();
    let r = post_empty(
        &app,
        &format!("/api/v1/jobs/{}/retry", pending.id),
        &app.operator,
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = post_empty(&app, "/api/v1/jobs/missing/retry", &app.operator).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let events = store
        .list_audit_events(Some("job"), Some(&failed.id), 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].action, "job.retry");
    assert_eq!(events[0].actor, "apikey:operator");
}

async fn verify_creates_a_job_and_verification_is_read_back(b: Backend) {
    let app = TestApp::new(b).await;
    let store = &app.store;
    let agent = fixtures::agent(store, "edge-1").await;
    let target = fixtures::target(store, &agent.id, "web").await;
    let issuer = fixtures::issuer(store).await;
    let cert = fixtures::certificate(store, &issuer.id, Some(&target.id), KeySource::Host).await;
    let deployment = store
        .create_job(
            NewJob::new(JobType::Deployment)
                .certificate(&cert.id)
                .target(&target.id),
        )
        .await
        .unwrap();
    let verify = format!("/api/v1/jobs/{}/verify", deployment.id);
    let verification = format!("/api/v1/jobs/{}/verification", deployment.id);

    // Not completed yet: 409; no result: 404; readers cannot verify.
    let r = post_empty(&app, &verify, &app.operator).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    let r = app.get(&verification, &app.reader).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&r), "not_found");
    complete_agent_job(store, &agent.id, &deployment.id).await;
    let r = post_empty(&app, &verify, &app.reader).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    let wake = app.state.wake.agent(&agent.id);
    let r = post_empty(&app, &verify, &app.operator).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.json["job_type"], "verification");
    assert_eq!(r.json["status"], "pending");
    assert_eq!(r.json["target_id"], target.id.as_str());
    assert_eq!(r.json["certificate_id"], cert.id.as_str());
    assert_eq!(r.json["parent_job_id"], deployment.id.as_str());
    assert_eq!(r.json["agent_id"], agent.id.as_str());
    let ver_id = r.json["id"].as_str().unwrap().to_string();
    assert_eq!(
        r.headers["location"].to_str().unwrap(),
        format!("/api/v1/jobs/{ver_id}")
    );
    tokio::time::timeout(Duration::from_secs(1), wake.notified())
        .await
        .expect("verify wakes the agent");
    let events = store
        .list_audit_events(Some("job"), Some(&ver_id), 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].action, "job.verify");
    assert_eq!(
        events[0].details["deployment_job_id"],
        deployment.id.as_str()
    );
    // Still no result while the verification job runs.
    assert_eq!(
        app.get(&verification, &app.reader).await.status,
        StatusCode::NOT_FOUND
    );

    // The agent reports a result.
    let claimed = store.claim_pending_for_agent(&agent.id, 10).await.unwrap();
    let ver = claimed.into_iter().find(|j| j.id == ver_id).unwrap();
    let result = json!({
        "status": "verified",
        "observed_fingerprint": "ab".repeat(32),
        "expected_fingerprint": "ab".repeat(32),
        "detail": "web.example.test:443",
        "checked_at": "2025-06-01T12:00:00Z",
    });
    let won = store
        .transition_job(
            &ver_id,
            JobStatus::Running,
            JobStatus::Completed,
            JobUpdate {
                verification_result: Some(result),
                ..JobUpdate::default()
            },
            None,
        )
        .await
        .unwrap();
    assert!(won, "{ver:?}");
    for path in [
        verification.clone(),
        format!("/api/v1/jobs/{ver_id}/verification"),
    ] {
        let r = app.get(&path, &app.reader).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
        assert_eq!(r.json["status"], "verified");
        assert_eq!(r.json["job_id"], ver_id.as_str());
        assert_eq!(r.json["observed_fingerprint"], "ab".repeat(32));
        assert_eq!(r.json["expected_fingerprint"], "ab".repeat(32));
        assert_eq!(r.json["detail"], "web.example.test:443");
        assert_eq!(r.json["checked_at"], "2025-06-01T12:00:00Z");
    }

    // ETag: 304 while the result stands; a newer verification's result
    // is a new representation with a new tag.
    let tag = etag(&app.get(&verification, &app.reader).await);
    let r = get_if_none_match(&app, &verification, &tag).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{}", r.text);
    assert!(r.text.is_empty(), "{}", r.text);
    assert_eq!(etag(&r), tag);
    let r = post_empty(&app, &verify, &app.operator).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let newer = r.json["id"].as_str().unwrap().to_string();
    let claimed = store.claim_pending_for_agent(&agent.id, 10).await.unwrap();
    assert!(claimed.iter().any(|j| j.id == newer), "{claimed:?}");
    assert!(
        store
            .transition_job(
                &newer,
                JobStatus::Running,
                JobStatus::Completed,
                JobUpdate {
                    verification_result: Some(json!({
                        "status": "mismatch",
                        "observed_fingerprint": "cd".repeat(32),
                        "expected_fingerprint": "ab".repeat(32),
                        "checked_at": "2025-06-02T12:00:00Z",
                    })),
                    ..JobUpdate::default()
                },
                None,
            )
            .await
            .unwrap()
    );
    let r = get_if_none_match(&app, &verification, &tag).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["job_id"], newer.as_str());
    assert_eq!(r.json["status"], "mismatch");
    assert_ne!(etag(&r), tag);

    // Only completed deployments can be verified; others have no result.
    let revocation = store
        .create_job(NewJob::new(JobType::Revocation))
        .await
        .unwrap();
    let r = post_empty(
        &app,
        &format!("/api/v1/jobs/{}/verify", revocation.id),
        &app.operator,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(&r), "validation_failed");
    let r = app
        .get(
            &format!("/api/v1/jobs/{}/verification", revocation.id),
            &app.reader,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = post_empty(&app, "/api/v1/jobs/missing/verify", &app.operator).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

fn event(actor: &str, subject_type: &str, subject_id: &str) -> NewAuditEvent {
    NewAuditEvent {
        actor: actor.into(),
        actor_type: ActorType::System,
        action: "test.event".into(),
        subject_type: subject_type.into(),
        subject_id: Some(subject_id.into()),
        details: Value::Null,
    }
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

async fn audit_filters_pagination_and_etag(b: Backend) {
    let app = TestApp::new(b).await;
    let store = &app.store;
    store
        .record_audit(event("loop:renewal", "agent", "a1"))
        .await
        .unwrap();
    store
        .record_audit(event("loop:renewal", "agent", "a2"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let middle = now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    store
        .record_audit(event("loop:expiry", "certificate", "c1"))
        .await
        .unwrap();
    // One through the API (cancel).
    let job = store
        .create_job(NewJob::new(JobType::Revocation))
        .await
        .unwrap();
    let r = post_empty(
        &app,
        &format!("/api/v1/jobs/{}/cancel", job.id),
        &app.operator,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    let r = app.get("/api/v1/audit", &app.reader).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["total"], 4);
    let items = r.json["items"].as_array().unwrap();
    assert_eq!(items[0]["action"], "job.cancel", "newest first");
    assert_eq!(items[0]["actor"], "apikey:operator");
    assert_eq!(items[0]["actor_type"], "api_key");
    assert_eq!(items[3]["subject_id"], "a1");
    assert_eq!(items[3]["details"], json!({}));

    let r = app
        .get("/api/v1/audit?subject_type=agent", &app.reader)
        .await;
    assert_eq!(r.json["total"], 2);
    let r = app
        .get(
            "/api/v1/audit?subject_type=agent&subject_id=a2",
            &app.reader,
        )
        .await;
    assert_eq!(r.json["total"], 1);
    assert_eq!(r.json["items"][0]["subject_id"], "a2");
    let r = app
        .get("/api/v1/audit?actor=loop:renewal", &app.reader)
        .await;
    assert_eq!(r.json["total"], 2);
    let r = app
        .get("/api/v1/audit?actor=apikey:operator", &app.reader)
        .await;
    assert_eq!(r.json["total"], 1);
    assert_eq!(r.json["items"][0]["subject_id"], job.id.as_str());
    let r = app
        .get("/api/v1/audit?subject_id=nobody", &app.reader)
        .await;
    assert_eq!(r.json["total"], 0);

    // Time window: since is inclusive, until exclusive; `+` offsets must be
    // percent-encoded, `Z` needs nothing.
    let m = rfc3339(middle);
    let r = app
        .get(&format!("/api/v1/audit?since={m}"), &app.reader)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["total"], 2);
    let r = app
        .get(&format!("/api/v1/audit?until={m}"), &app.reader)
        .await;
    assert_eq!(r.json["total"], 2);
    assert_eq!(r.json["items"][0]["subject_id"], "a2");
    let r = app
        .get(
            &format!("/api/v1/audit?until={m}&actor=loop:renewal&per_page=1&page=2"),
            &app.reader,
        )
        .await;
    assert_eq!(r.json["total"], 2);
    assert_eq!(r.json["items"].as_array().unwrap().len(), 1);
    assert_eq!(r.json["items"][0]["subject_id"], "a1");
    let offset = middle.with_timezone(&chrono::FixedOffset::east_opt(2 * 3600).unwrap());
    let r = app
        .get(
            &format!(
                "/api/v1/audit?since={}",
                offset
                    .to_rfc3339_opts(SecondsFormat::Micros, false)
                    .replace('+', "%2B")
            ),
            &app.reader,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["total"], 2);
    let r = app
        .get(&format!("/api/v1/audit?since={m}&until={m}"), &app.reader)
        .await;
    assert_eq!(r.json["total"], 0);

    // Pagination.
    let r = app
        .get("/api/v1/audit?per_page=3&page=2", &app.reader)
        .await;
    assert_eq!(r.json["total"], 4);
    assert_eq!(r.json["items"].as_array().unwrap().len(), 1);
    assert_eq!(r.json["items"][0]["subject_id"], "a1");

    // ETag.
    let tag = etag(
        &app.get("/api/v1/audit?subject_type=agent", &app.reader)
            .await,
    );
    let r = get_if_none_match(&app, "/api/v1/audit?subject_type=agent", &tag).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    store
        .record_audit(event("loop:renewal", "agent", "a3"))
        .await
        .unwrap();
    let r = get_if_none_match(&app, "/api/v1/audit?subject_type=agent", &tag).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["total"], 3);

    // Scope: any key reads; no key is refused.
    let r = app.call(Method::GET, "/api/v1/audit", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

async fn notifications_list_and_get(b: Backend) {
    let app = TestApp::new(b).await;
    let store = &app.store;
    let notifier = store
        .create_notifier(NewPluginInstance::new(
            format!("hook-{}", new_id()),
            "webhook",
            "1.0.0",
        ))
        .await
        .unwrap();
    let mut ids_created = Vec::new();
    for i in 0..3 {
        let n = store
            .enqueue_notification(NewNotification {
                notifier_id: notifier.id.clone(),
                event_type: "certificate.expiring".into(),
                subject: Some(format!("cert {i} expires soon")),
                payload: json!({ "i": i }),
                max_attempts: 3,
            })
            .await
            .unwrap();
        ids_created.push(n.id);
    }
    let claimed = store.claim_notifications(1).await.unwrap();
    assert!(
        store
            .mark_notification_sent(&claimed[0].lease().unwrap())
            .await
            .unwrap()
    );

    let r = app.get("/api/v1/notifications", &app.reader).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["total"], 3);
    let newest_first: Vec<String> = ids_created.iter().rev().cloned().collect();
    assert_eq!(ids(&r), newest_first);
    let r = app
        .get("/api/v1/notifications?status=sent", &app.reader)
        .await;
    assert_eq!(r.json["total"], 1);
    assert_eq!(r.json["items"][0]["id"], claimed[0].id.as_str());
    assert!(r.json["items"][0]["sent_at"].is_string());
    let r = app
        .get(
            "/api/v1/notifications?status=pending&per_page=1&page=2",
            &app.reader,
        )
        .await;
    assert_eq!(r.json["total"], 2);
    assert_eq!(r.json["items"].as_array().unwrap().len(), 1);
    let r = app
        .get("/api/v1/notifications?status=failed", &app.reader)
        .await;
    assert_eq!(r.json["total"], 0);

    let r = app
        .get(
            &format!("/api/v1/notifications/{}", ids_created[1]),
            &app.reader,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["subject"], "cert 1 expires soon");
    assert_eq!(r.json["payload"], json!({ "i": 1 }));
    assert_eq!(r.json["event_type"], "certificate.expiring");
    let r = app.get("/api/v1/notifications/nope", &app.reader).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&r), "not_found");

    let tag = etag(
        &app.get("/api/v1/notifications?status=pending", &app.reader)
            .await,
    );
    let r = get_if_none_match(&app, "/api/v1/notifications?status=pending", &tag).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    store
        .enqueue_notification(NewNotification {
            notifier_id: notifier.id.clone(),
            event_type: "job.failed".into(),
            subject: None,
            payload: json!({}),
            max_attempts: 3,
        })
        .await
        .unwrap();
    let r = get_if_none_match(&app, "/api/v1/notifications?status=pending", &tag).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["total"], 3);
}

async fn bad_query_params_get_the_400_envelope(b: Backend) {
    let app = TestApp::new(b).await;
    for path in [
        "/api/v1/jobs?status=bogus",
        "/api/v1/jobs?job_type=teleport",
        // The old name of the job-type filter is refused, not ignored.
        "/api/v1/jobs?type=deployment",
        "/api/v1/jobs?per_page=0",
        "/api/v1/jobs?per_page=501",
        "/api/v1/jobs?page=0",
        "/api/v1/jobs?page=-1",
        "/api/v1/jobs?per_page=ten",
        "/api/v1/jobs?colour=blue",
        "/api/v1/audit?since=yesterday",
        "/api/v1/audit?until=2025-13-01T00:00:00Z",
        "/api/v1/audit?since=2025-01-01",
        "/api/v1/audit?since=2025-02-01T00:00:00Z&until=2025-01-01T00:00:00Z",
        "/api/v1/audit?per_page=0",
        "/api/v1/audit?subject=job",
        "/api/v1/notifications?status=bogus",
        "/api/v1/notifications?per_page=0",
        "/api/v1/notifications?page=0",
    ] {
        let r = app.get(path, &app.reader).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.text);
        assert_eq!(error_code(&r), "bad_request", "{path}");
    }
}

fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().unwrap())
}

async fn metrics_expose_job_and_expiry_gauges(b: Backend) {
    let app = TestApp::new(b).await;
    let store = &app.store;
    let agent = fixtures::agent(store, "edge-1").await;
    let target = fixtures::target(store, &agent.id, "web").await;
    let issuer = fixtures::issuer(store).await;
    for _ in 0..2 {
        store
            .create_job(NewJob::new(JobType::Revocation))
            .await
            .unwrap();
    }
    failed_job(store, JobType::Issuance).await;
    let deployment = store
        .create_job(NewJob::new(JobType::Deployment).target(&target.id))
        .await
        .unwrap();
    complete_agent_job(store, &agent.id, &deployment.id).await;
    // Certificates: expired, 10 days left, 200 days left, never issued.
    let t = |days: i64| {
        (now() + chrono::Duration::days(days))
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string()
    };
    for days in [-1, 10, 200] {
        let cert = fixtures::certificate(store, &issuer.id, None, KeySource::Host).await;
        exec(
            store,
            &format!(
                "UPDATE certificates SET not_after = '{}' WHERE id = '{}'",
                t(days),
                cert.id
            ),
        )
        .await;
    }
    fixtures::certificate(store, &issuer.id, None, KeySource::Host).await;
    app.state
        .metrics
        .observe_claim("claim_pending_jobs", Duration::from_millis(3));
    let deadline = certplane_runtime::CallError::Deadline {
        plugin: "local-ca".into(),
        deadline: Duration::from_secs(5),
    };
    app.state.metrics.observe_plugin_call(
        "local-ca",
        "issue",
        Duration::from_millis(5),
        Err(&deadline),
    );
    app.state
        .metrics
        .observe_plugin_call("local-ca", "issue", Duration::from_micros(20), Ok(()));

    let r = app.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = &r.text;
    assert!(text.ends_with("# EOF\n"), "{text}");
    let jobs = |status: &str, ty: &str| {
        metric_value(
            text,
            &format!("certplane_jobs{{status=\"{status}\",type=\"{ty}\"}}"),
        )
        .unwrap_or_else(|| panic!("no job gauge {status}/{ty} in\n{text}"))
    };
    assert_eq!(jobs("pending", "revocation"), 2.0);
    assert_eq!(jobs("failed", "issuance"), 1.0);
    assert_eq!(jobs("completed", "deployment"), 1.0);
    assert_eq!(jobs("running", "renewal"), 0.0);
    assert_eq!(jobs("pending", "issuance"), 0.0);
    let lines = text
        .lines()
        .filter(|l| l.starts_with("certplane_jobs{"))
        .count();
    assert_eq!(lines, JobStatus::ALL.len() * JobType::ALL.len());
    let expiry = |bucket: &str| {
        metric_value(
            text,
            &format!("certplane_certificates_expiry{{bucket=\"{bucket}\"}}"),
        )
        .unwrap_or_else(|| panic!("no expiry bucket {bucket} in\n{text}"))
    };
    assert_eq!(expiry("expired"), 1.0);
    assert_eq!(expiry("lt_7d"), 0.0);
    assert_eq!(expiry("lt_30d"), 1.0);
    assert_eq!(expiry("lt_90d"), 0.0);
    assert_eq!(expiry("ge_90d"), 1.0);
    assert_eq!(
        metric_value(
            text,
            "certplane_claim_duration_seconds_count{op=\"claim_pending_jobs\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            text,
            "certplane_plugin_call_duration_seconds_count{plugin=\"local-ca\",call=\"issue\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            text,
            "certplane_plugin_call_errors_total{plugin=\"local-ca\",call=\"issue\",class=\"deadline\"}"
        ),
        Some(1.0),
        "{text}"
    );

    // Gauges follow the database at the next scrape.
    let pending = store
        .list_jobs(&JobFilter {
            status: Some(JobStatus::Pending),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    let r = post_empty(
        &app,
        &format!("/api/v1/jobs/{}/cancel", pending[0].id),
        &app.operator,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(
        metric_value(
            &r.text,
            "certplane_jobs{status=\"pending\",type=\"revocation\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &r.text,
            "certplane_jobs{status=\"cancelled\",type=\"revocation\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn openapi_documents_the_new_routes() {
    let app = TestApp::new(Backend::Sqlite).await;
    let r = app
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    let paths = &r.json["paths"];
    for (path, method) in [
        ("/api/v1/jobs", "get"),
        ("/api/v1/jobs/{id}", "get"),
        ("/api/v1/jobs/{id}/cancel", "post"),
        ("/api/v1/jobs/{id}/retry", "post"),
        ("/api/v1/jobs/{id}/verify", "post"),
        ("/api/v1/jobs/{id}/verification", "get"),
        ("/api/v1/audit", "get"),
        ("/api/v1/notifications", "get"),
        ("/api/v1/notifications/{id}", "get"),
    ] {
        assert!(paths[path][method].is_object(), "{method} {path} missing");
    }
    let params: Vec<&str> = paths["/api/v1/jobs"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in [
        "status",
        "job_type",
        "certificate_id",
        "agent_id",
        "page",
        "per_page",
    ] {
        assert!(params.contains(&name), "{name} not in {params:?}");
    }
    assert!(
        r.json["paths"].get("/metrics").is_none(),
        "/metrics is not part of the v1 API"
    );
}
