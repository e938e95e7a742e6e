//! http-01 served by the agent of the certificate's target
//! (`grants.challenges.http_01 = "agent"`): what the issuer is offered, the
//! tasks in the agent's work answer (and the long-poll waking for them),
//! the agent's reports (only on its own challenges, idempotent), and the
//! publisher's part: the visibility timeout and the withdrawal budget. On
//! SQLite and PostgreSQL.

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use certplane_host::engine::challenges;
use certplane_host::grants::ChallengeRoutes;
use certplane_host::store::*;
use certplane_runtime::challenges::{Challenge, ChallengeKind, ChallengeState};
use certplane_runtime::context::{CallContext, CallEffects};
use certplane_testkit::app::{BOOTSTRAP, Reply, TestApp, error_code};
use certplane_testkit::{Backend, both_backends, exec, fixtures};
use serde_json::{Value, json};

both_backends!(
    the_agent_gets_reports_and_withdraws,
    only_agent_run_certificates_are_offered_http_01,
    the_host_keeps_the_time
);

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

fn tasks(r: &Reply) -> Vec<Value> {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json["challenges"].as_array().expect("challenges").clone()
}

async fn report(app: &TestApp, cred: &str, job: &str, challenge: &str, body: Value) -> Reply {
    app.post(
        &format!("/api/v1/agents/jobs/{job}/challenges/{challenge}"),
        cred,
        body,
    )
    .await
}

fn routes() -> ChallengeRoutes {
    serde_json::from_value(json!({ "http_01": "agent" })).unwrap()
}

/// An issuer routing http-01 to the agent, a certificate whose first
/// target `agent_id` runs, and an issuance job for it.
async fn issuance(app: &TestApp, agent_id: &str) -> (Certificate, Job) {
    // acme: a connector that imports `challenges`, so its calls' context
    // carries the job's challenges.
    let mut new = NewPluginInstance::new(format!("acme-{}", new_id()), "acme", "1.0.0");
    new.grants = json!({ "challenges": { "http_01": "agent" } });
    let issuer = app.store.create_issuer(new).await.unwrap();
    let target = fixtures::target(&app.store, agent_id, "web").await;
    let cert =
        fixtures::certificate(&app.store, &issuer.id, Some(&target.id), KeySource::Agent).await;
    let job = app
        .store
        .create_job(NewJob::new(JobType::Issuance).certificate(&cert.id))
        .await
        .unwrap();
    (cert, job)
}

/// What the issuer's next call for `job` would be given.
async fn call_context(app: &TestApp, job: &Job, cert: &Certificate) -> CallContext {
    let engine = &app.state.engine;
    let issuer = certplane_host::engine::connectors::issuer_instance(engine, &cert.issuer_id)
        .await
        .unwrap()
        .unwrap();
    challenges::issuer_context(
        engine,
        &issuer,
        job,
        cert,
        &format!("issuer/{}", cert.issuer_id),
        &routes(),
    )
    .await
    .unwrap()
}

fn http01(id: &str, identifier: &str, token: &str) -> Challenge {
    Challenge {
        id: id.into(),
        kind: ChallengeKind::Http01,
        identifier: identifier.into(),
        name: token.into(),
        value: format!("{token}.thumbprint"),
    }
}

async fn present(app: &TestApp, job: &Job, cert: &Certificate, challenge: Challenge) {
    let effects = CallEffects {
        presented: vec![challenge],
        ..CallEffects::default()
    };
    challenges::apply_effects(
        &app.state.engine,
        &format!("issuer/{}", cert.issuer_id),
        Some(&job.id),
        &routes(),
        effects,
    )
    .await
    .unwrap();
}

async fn withdraw(app: &TestApp, job: &Job, cert: &Certificate, id: &str) {
    let effects = CallEffects {
        withdrawn: vec![id.to_string()],
        ..CallEffects::default()
    };
    challenges::apply_effects(
        &app.state.engine,
        &format!("issuer/{}", cert.issuer_id),
        Some(&job.id),
        &routes(),
        effects,
    )
    .await
    .unwrap();
}

async fn row(app: &TestApp, job: &Job, id: &str) -> ChallengeRow {
    app.store
        .job_challenges(&job.id)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.challenge_id == id)
        .expect("the challenge row")
}

/// Runs `poll` (a long poll) and, 300 ms into it, `act`; returns the poll's
/// answer and how long it took.
async fn poll_while<F: Future<Output = ()>>(
    app: &TestApp,
    cred: &str,
    act: F,
) -> (Reply, Duration) {
    let started = Instant::now();
    let (reply, ()) = tokio::join!(poll(app, cred, 20), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        act.await;
    });
    (reply, started.elapsed())
}

async fn the_agent_gets_reports_and_withdraws(b: Backend) {
    let app = TestApp::new(b).await;
    let (a_id, a_cred) = register(&app, "web-1").await;
    let (_b_id, b_cred) = register(&app, "web-2").await;
    let (cert, job) = issuance(&app, &a_id).await;
    let name = cert.common_name.clone();

    // A parked long poll returns as soon as a challenge is routed to it.
    let (r, took) = poll_while(
        &app,
        &a_cred,
        present(&app, &job, &cert, http01("c1", &name, "tok_EN-1")),
    )
    .await;
    assert!(took < Duration::from_secs(10), "the poll waited {took:?}");
    let got = tasks(&r);
    assert_eq!(
        got,
        vec![json!({
            "job_id": job.id,
            "challenge_id": "c1",
            "identifier": name,
            "token": "tok_EN-1",
            "key_authorization": "tok_EN-1.thumbprint",
            "action": "publish",
        })]
    );
    assert!(r.json["jobs"].as_array().unwrap().is_empty(), "{}", r.text);
    let stored = row(&app, &job, "c1").await;
    assert_eq!(stored.route, format!("agent:{a_id}"));
    assert_eq!(stored.state, "pending");
    // The host's responder does not answer an agent's token.
    assert_eq!(
        app.store.http_challenge_response("tok_EN-1").await.unwrap(),
        None
    );

    // Another agent neither sees nor reports it.
    assert!(tasks(&poll(&app, &b_cred, 0).await).is_empty());
    let r = report(&app, &b_cred, &job.id, "c1", json!({ "state": "ready" })).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(error_code(&r), "not_found");
    let r = report(&app, &a_cred, &job.id, "nope", json!({ "state": "ready" })).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = report(&app, &a_cred, &job.id, "c1", json!({ "state": "pending" })).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(row(&app, &job, "c1").await.state, "pending");

    // Its agent reports it ready, once or twice.
    let r = report(&app, &a_cred, &job.id, "c1", json!({ "state": "ready" })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["state"], "ready");
    assert_eq!(r.json["changed"], true);
    let r = report(&app, &a_cred, &job.id, "c1", json!({ "state": "ready" })).await;
    assert_eq!(
        (r.json["state"].clone(), r.json["changed"].clone()),
        (json!("ready"), json!(false))
    );
    let stored = row(&app, &job, "c1").await;
    assert_eq!(stored.state, "ready");
    assert!(stored.published);
    assert!(tasks(&poll(&app, &a_cred, 0).await).is_empty());
    // The issuer's next call sees it ready.
    let context = call_context(&app, &job, &cert).await;
    assert_eq!(context.challenges["c1"].state, ChallengeState::Ready);

    // Withdrawn by the issuer: the parked poll wakes with a withdraw task.
    let (r, took) = poll_while(&app, &a_cred, withdraw(&app, &job, &cert, "c1")).await;
    assert!(took < Duration::from_secs(10), "the poll waited {took:?}");
    let got = tasks(&r);
    assert_eq!(got.len(), 1, "{}", r.text);
    assert_eq!(got[0]["action"], "withdraw");
    assert_eq!(got[0]["token"], "tok_EN-1");
    let r = report(
        &app,
        &b_cred,
        &job.id,
        "c1",
        json!({ "state": "withdrawn" }),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    // A late "ready" changes nothing.
    let r = report(&app, &a_cred, &job.id, "c1", json!({ "state": "ready" })).await;
    assert_eq!(
        (r.json["state"].clone(), r.json["changed"].clone()),
        (json!("withdrawing"), json!(false))
    );
    let r = report(
        &app,
        &a_cred,
        &job.id,
        "c1",
        json!({ "state": "withdrawn", "message": "the token file was already gone" }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        (r.json["state"].clone(), r.json["changed"].clone()),
        (json!("withdrawn"), json!(true))
    );
    let stored = row(&app, &job, "c1").await;
    assert_eq!(stored.state, "withdrawn");
    assert!(!stored.published);
    assert_eq!(
        stored.message.as_deref(),
        Some("the token file was already gone")
    );
    let r = report(
        &app,
        &a_cred,
        &job.id,
        "c1",
        json!({ "state": "withdrawn" }),
    )
    .await;
    assert_eq!(r.json["changed"], false, "{}", r.text);
    assert!(tasks(&poll(&app, &a_cred, 0).await).is_empty());

    // A failure report ends a pending challenge with the agent's reason.
    present(&app, &job, &cert, http01("c2", &name, "tok2")).await;
    let r = report(
        &app,
        &a_cred,
        &job.id,
        "c2",
        json!({ "state": "failed", "message": "no webroot" }),
    )
    .await;
    assert_eq!(r.json["state"], "failed", "{}", r.text);
    let stored = row(&app, &job, "c2").await;
    assert_eq!(
        (stored.state.as_str(), stored.message.as_deref()),
        ("failed", Some("no webroot"))
    );
    // The job ends: the failed challenge's file is withdrawn too.
    exec(
        &app.store,
        &format!(
            "UPDATE jobs SET status = 'completed' WHERE id = '{}'",
            job.id
        ),
    )
    .await;
    challenges::tick(&app.state.engine).await.unwrap();
    let got = tasks(&poll(&app, &a_cred, 0).await);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0]["challenge_id"].as_str(), got[0]["action"].as_str()),
        (Some("c2"), Some("withdraw"))
    );
}

async fn only_agent_run_certificates_are_offered_http_01(b: Backend) {
    let app = TestApp::new(b).await;
    let (a_id, _) = register(&app, "web-1").await;
    let offered = |cert: Certificate, job: Job| {
        let app = &app;
        async move {
            let context = call_context(app, &job, &cert).await;
            context.routes[&cert.common_name].clone()
        }
    };
    let (cert, job) = issuance(&app, &a_id).await;
    assert_eq!(
        offered(cert.clone(), job.clone()).await,
        vec![ChallengeKind::Http01]
    );

    // A certificate the host deploys: no agent, so no http-01.
    let host_target = fixtures::target(&app.store, "host", "local").await;
    let issuer = app
        .store
        .get_issuer(&cert.issuer_id)
        .await
        .unwrap()
        .unwrap();
    let host_cert = fixtures::certificate(
        &app.store,
        &issuer.id,
        Some(&host_target.id),
        KeySource::Host,
    )
    .await;
    let host_job = app
        .store
        .create_job(NewJob::new(JobType::Issuance).certificate(&host_cert.id))
        .await
        .unwrap();
    assert!(
        offered(host_cert.clone(), host_job.clone())
            .await
            .is_empty()
    );
    // Presented anyway (a connector ignoring `supported`): not recorded.
    present(
        &app,
        &host_job,
        &host_cert,
        http01("c1", &host_cert.common_name, "t"),
    )
    .await;
    assert!(
        app.store
            .job_challenges(&host_job.id)
            .await
            .unwrap()
            .is_empty()
    );

    // Once its agent is retired, the agent's certificate is not offered
    // http-01 either.
    let r = app
        .call(
            Method::DELETE,
            &format!("/api/v1/agents/{a_id}?force=true&reason=gone"),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(offered(cert, job).await.is_empty());
}

async fn the_host_keeps_the_time(b: Backend) {
    let app = TestApp::with_config(b, |c| {
        c.challenges.visible_within_secs = 1;
    })
    .await;
    let (a_id, a_cred) = register(&app, "web-1").await;
    let (cert, job) = issuance(&app, &a_id).await;
    present(&app, &job, &cert, http01("c1", &cert.common_name, "tok")).await;

    // The publisher neither publishes nor checks it: it waits for the agent.
    challenges::tick(&app.state.engine).await.unwrap();
    let stored = row(&app, &job, "c1").await;
    assert_eq!(stored.state, "pending");
    assert!(!stored.published);
    assert!(
        stored.message.as_deref().unwrap_or("").contains(&a_id),
        "{:?}",
        stored.message
    );
    // Not reported within visible_within_secs: failed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    challenges::tick(&app.state.engine).await.unwrap();
    let stored = row(&app, &job, "c1").await;
    assert_eq!(stored.state, "failed");
    let message = stored.message.unwrap_or_default();
    assert!(message.contains("not visible within 1 s"), "{message}");
    // A report after the timeout changes nothing.
    let r = report(&app, &a_cred, &job.id, "c1", json!({ "state": "ready" })).await;
    assert_eq!(r.json["state"], "failed", "{}", r.text);
    assert_eq!(r.json["changed"], false);

    // The job ends: the publisher moves the challenge to withdrawing and
    // wakes the agent's parked poll; each look wakes it again, until the
    // retry budget runs out and the host gives up.
    let (r, took) = poll_while(&app, &a_cred, async {
        exec(
            &app.store,
            &format!(
                "UPDATE jobs SET status = 'completed' WHERE id = '{}'",
                job.id
            ),
        )
        .await;
        challenges::tick(&app.state.engine).await.unwrap();
    })
    .await;
    assert!(took < Duration::from_secs(10), "the poll waited {took:?}");
    assert_eq!(tasks(&r).len(), 1, "{}", r.text);
    let stored = row(&app, &job, "c1").await;
    assert_eq!(stored.state, "withdrawing");
    exec(
        &app.store,
        "UPDATE challenges SET checks = 19, next_check_at = created_at WHERE challenge_id = 'c1'",
    )
    .await;
    challenges::tick(&app.state.engine).await.unwrap();
    let stored = row(&app, &job, "c1").await;
    assert_eq!(stored.state, "withdrawn");
    let message = stored.message.unwrap_or_default();
    assert!(
        message.contains("gave up") && message.contains(&a_id),
        "{message}"
    );
    assert!(tasks(&poll(&app, &a_cred, 0).await).is_empty());
}
