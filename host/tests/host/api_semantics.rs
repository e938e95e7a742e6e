//! One meaning per verb across resources: `DELETE` retires everywhere (200
//! with the resource, the same again on a repeat, still readable, hidden
//! from lists unless `include_retired=true`), refusals are 409
//! `invalid_state` with counts, single resources carry strong ETags
//! (`If-None-Match` → 304, `If-Match` → 412), every id the host makes is a
//! UUIDv7, `PATCH` refuses what create refuses, and a forced agent
//! retirement takes care of the certificates whose keys the agent held.
//! Every scenario runs on SQLite and PostgreSQL.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use certplane_host::store::{
    JobFilter, JobStatus, JobType, KeySource, NewNotification, NewPluginInstance, NewTarget, new_id,
};
use certplane_testkit::app::{BOOTSTRAP, Reply, TestApp, error_code};
use certplane_testkit::both_backends;
use certplane_testkit::{Backend, count, exec, fixtures, test_ca};
use serde_json::{Value, json};

/// `method path` with a bearer token, extra headers and an optional JSON
/// body.
async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Reply {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let body = match body {
        Some(v) => {
            builder = builder.header("content-type", "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    app.send(builder.body(body).unwrap()).await
}

async fn delete(app: &TestApp, path: &str, token: &str) -> Reply {
    send(app, Method::DELETE, path, token, &[], None).await
}

fn etag(reply: &Reply) -> String {
    let tag = reply
        .headers
        .get("etag")
        .unwrap_or_else(|| panic!("no ETag: {} {}", reply.status, reply.text))
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        tag.starts_with('"') && tag.ends_with('"'),
        "not a strong ETag: {tag}"
    );
    tag
}

/// Ids of a list page (everything, `per_page=500`).
async fn listed(app: &TestApp, collection: &str, include_retired: bool) -> Vec<String> {
    let path = format!("/api/v1/{collection}?per_page=500&include_retired={include_retired}");
    let r = app.get(&path, &app.reader).await;
    assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
    r.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

fn issuer_body(name: &str) -> Value {
    let ca = test_ca();
    json!({
        "name": name,
        "plugin": "local-ca",
        "settings": { "ca_certificate_pem": ca.0, "validity_days": 30 },
        "secrets": { "ca_private_key_pem": ca.1 },
    })
}

/// An issuer through the API (local-ca, validated by its plugin).
async fn api_issuer(app: &TestApp, name: &str) -> String {
    let r = app
        .post("/api/v1/issuers", &app.operator, issuer_body(name))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.json["id"].as_str().unwrap().to_owned()
}

/// A certificate through the API.
async fn api_certificate(app: &TestApp, name: &str, issuer: &str, targets: &[&str]) -> String {
    let r = app
        .post(
            "/api/v1/certificates",
            &app.operator,
            json!({ "name": name, "common_name": format!("{name}.example.com"),
                    "issuer_id": issuer, "target_ids": targets }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.json["id"].as_str().unwrap().to_owned()
}

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

/// The whole life of one retirement: 200 with the resource as GET shows it
/// (`retired_at` set), GET still 200, a repeat the same 200 with the same
/// body, hidden from the list, shown with `include_retired=true`.
async fn retires_softly(app: &TestApp, collection: &str, id: &str, token: &str) {
    let path = format!("/api/v1/{collection}/{id}");
    assert!(
        listed(app, collection, false)
            .await
            .contains(&id.to_owned()),
        "{collection}: listed before"
    );
    let first = delete(app, &path, token).await;
    assert_eq!(first.status, StatusCode::OK, "{collection}: {}", first.text);
    assert_eq!(first.json["id"], id, "{collection}: {}", first.text);
    let retired_at = first.json["retired_at"].clone();
    assert!(retired_at.is_string(), "{collection}: {}", first.text);

    let got = app.get(&path, &app.reader).await;
    assert_eq!(got.status, StatusCode::OK, "{collection}: {}", got.text);
    assert_eq!(got.json["retired_at"], retired_at, "{collection}");
    assert_eq!(
        got.json, first.json,
        "{collection}: DELETE answers what GET shows"
    );

    let again = delete(app, &path, token).await;
    assert_eq!(again.status, StatusCode::OK, "{collection}: {}", again.text);
    assert_eq!(again.json, first.json, "{collection}: a repeat is the same");

    assert!(
        !listed(app, collection, false)
            .await
            .contains(&id.to_owned()),
        "{collection}: hidden by default"
    );
    assert!(
        listed(app, collection, true).await.contains(&id.to_owned()),
        "{collection}: include_retired=true shows it"
    );
}

async fn delete_retires_every_kind(backend: Backend) {
    let app = TestApp::new(backend).await;
    let issuer = api_issuer(&app, "ca").await;
    let target = fixtures::target(&app.store, "host", "t").await;
    let notifier = app
        .store
        .create_notifier(NewPluginInstance::new("n", "webhook", "1.0.0"))
        .await
        .unwrap();
    let solver = app
        .store
        .create_dns_solver(NewPluginInstance::new("s", "cloudflare-dns", "1.0.0"))
        .await
        .unwrap();
    let cert = api_certificate(&app, "web", &issuer, &[&target.id]).await;
    let (agent, _) = register(&app, "edge").await;

    // Certificates first: the issuer and target are in use until then.
    retires_softly(&app, "certificates", &cert, &app.operator).await;
    retires_softly(&app, "issuers", &issuer, &app.operator).await;
    retires_softly(&app, "targets", &target.id, &app.operator).await;
    retires_softly(&app, "notifiers", &notifier.id, &app.operator).await;
    retires_softly(&app, "dns-solvers", &solver.id, &app.operator).await;
    retires_softly(&app, "agents", &agent, &app.admin).await;

    // Retired instances take no change and no new use.
    let r = send(
        &app,
        Method::PATCH,
        &format!("/api/v1/issuers/{issuer}"),
        &app.operator,
        &[],
        Some(json!({ "settings": {} })),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(error_code(&r), "invalid_state");
    let r = app
        .post(
            "/api/v1/certificates",
            &app.operator,
            json!({ "name": "late", "common_name": "late.example.com", "issuer_id": issuer }),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let r = app
        .post(
            &format!("/api/v1/notifiers/{}/enable", notifier.id),
            &app.operator,
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(error_code(&r), "invalid_state");
    let row = app.store.get_notifier(&notifier.id).await.unwrap().unwrap();
    assert!(
        row.disabled_at.is_some(),
        "a retired notifier stays disabled"
    );
    let mut routed = NewPluginInstance::new("acme", "local-ca", "1.0.0");
    routed.grants = json!({ "challenges": { "dns_01": [
        { "zone": "example.com", "solver": solver.id }] } });
    assert!(
        app.store.create_issuer(routed).await.is_err(),
        "no route to a retired solver"
    );

    // One audit row per retirement, none for the repeats.
    for (subject, id) in [
        ("certificate", cert.as_str()),
        ("issuer", issuer.as_str()),
        ("target", target.id.as_str()),
        ("notifier", notifier.id.as_str()),
        ("dns-solver", solver.id.as_str()),
        ("agent", agent.as_str()),
    ] {
        let n = count(
            &app.store,
            &format!(
                "SELECT COUNT(*) FROM audit_events WHERE subject_id = '{id}'
                 AND action = '{subject}.retire'"
            ),
        )
        .await;
        assert_eq!(n, 1, "{subject}");
    }
}

async fn refusals_are_invalid_state_with_counts(backend: Backend) {
    let app = TestApp::new(backend).await;
    let issuer = api_issuer(&app, "ca").await;
    let (agent, _) = register(&app, "edge").await;
    let target = fixtures::target(&app.store, &agent, "t").await;
    fixtures::certificate(&app.store, &issuer, Some(&target.id), KeySource::Agent).await;
    let notifier = app
        .store
        .create_notifier(NewPluginInstance::new("n", "webhook", "1.0.0"))
        .await
        .unwrap();
    app.store
        .enqueue_notification(NewNotification {
            notifier_id: notifier.id.clone(),
            event_type: "test".into(),
            subject: None,
            payload: json!({}),
            max_attempts: 3,
        })
        .await
        .unwrap();
    let solver = app
        .store
        .create_dns_solver(NewPluginInstance::new("s", "cloudflare-dns", "1.0.0"))
        .await
        .unwrap();
    let mut routed = NewPluginInstance::new("acme", "local-ca", "1.0.0");
    routed.grants = json!({ "challenges": { "dns_01": [
        { "zone": "example.com", "solver": solver.id }] } });
    app.store.create_issuer(routed).await.unwrap();

    let cases = [
        (
            format!("/api/v1/issuers/{issuer}"),
            &app.operator,
            json!({ "certificates": 1 }),
        ),
        (
            format!("/api/v1/targets/{}", target.id),
            &app.operator,
            json!({ "certificates": 1, "open_jobs": 0 }),
        ),
        (
            format!("/api/v1/notifiers/{}", notifier.id),
            &app.operator,
            json!({ "open_notifications": 1, "pending": 1, "sending": 0 }),
        ),
        (
            format!("/api/v1/dns-solvers/{}", solver.id),
            &app.operator,
            json!({ "issuers": 1, "live_challenges": 0 }),
        ),
        (
            format!("/api/v1/agents/{agent}"),
            &app.admin,
            json!({ "active_targets": 1, "active_certificates": 1, "open_jobs": 0 }),
        ),
    ];
    for (path, token, counts) in cases {
        let r = delete(&app, &path, token).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{path}: {}", r.text);
        assert_eq!(error_code(&r), "invalid_state", "{path}");
        assert_eq!(r.json["error"]["details"]["counts"], counts, "{path}");
        let r = app.get(&path, &app.reader).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert!(
            r.json["retired_at"].is_null(),
            "{path}: a refusal changes nothing: {}",
            r.text
        );
    }
}

/// GET of every single resource has a strong ETag and answers 304 to it;
/// a change gives another one.
async fn single_resources_have_etags(backend: Backend) {
    let app = TestApp::new(backend).await;
    let issuer = api_issuer(&app, "ca").await;
    let target = fixtures::target(&app.store, "host", "t").await;
    let notifier = app
        .store
        .create_notifier(NewPluginInstance::new("n", "webhook", "1.0.0"))
        .await
        .unwrap();
    let solver = app
        .store
        .create_dns_solver(NewPluginInstance::new("s", "cloudflare-dns", "1.0.0"))
        .await
        .unwrap();
    let cert = api_certificate(&app, "web", &issuer, &[&target.id]).await;
    let (agent, _) = register(&app, "edge").await;
    assert_eq!(app.store.enqueue_due_renewals(5, 10).await.unwrap(), 1);
    let job = app
        .store
        .list_jobs(&JobFilter {
            certificate_id: Some(cert.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .remove(0)
        .id;
    for path in [
        format!("/api/v1/certificates/{cert}"),
        format!("/api/v1/issuers/{issuer}"),
        format!("/api/v1/targets/{}", target.id),
        format!("/api/v1/notifiers/{}", notifier.id),
        format!("/api/v1/dns-solvers/{}", solver.id),
        format!("/api/v1/agents/{agent}"),
        format!("/api/v1/jobs/{job}"),
    ] {
        let r = app.get(&path, &app.reader).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
        let tag = etag(&r);
        let r = send(
            &app,
            Method::GET,
            &path,
            &app.reader,
            &[("if-none-match", &tag)],
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{path}: {}", r.text);
        assert_eq!(etag(&r), tag, "{path}");
        let r = send(
            &app,
            Method::GET,
            &path,
            &app.reader,
            &[("if-none-match", "\"something-else\"")],
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
    }
    // A change is a new tag.
    let path = format!("/api/v1/certificates/{cert}");
    let before = etag(&app.get(&path, &app.reader).await);
    let r = send(
        &app,
        Method::PATCH,
        &path,
        &app.operator,
        &[],
        Some(json!({ "renew_before_days": 10 })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = send(
        &app,
        Method::GET,
        &path,
        &app.reader,
        &[("if-none-match", &before)],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_ne!(etag(&r), before);
}

/// PATCH with a stale `If-Match` is 412 `precondition_failed` and changes
/// nothing; with the current tag (or `*`) it goes through.
async fn patch_honours_if_match(backend: Backend) {
    let app = TestApp::new(backend).await;
    let issuer = api_issuer(&app, "ca").await;
    let target = fixtures::target(&app.store, "host", "t").await;
    let notifier = app
        .store
        .create_notifier(NewPluginInstance::new("n", "webhook", "1.0.0"))
        .await
        .unwrap();
    let solver = app
        .store
        .create_dns_solver(NewPluginInstance::new("s", "cloudflare-dns", "1.0.0"))
        .await
        .unwrap();
    let cert = api_certificate(&app, "web", &issuer, &[&target.id]).await;
    let stale = "\"0123456789abcdef0123456789abcdef\"";
    for (path, body) in [
        (
            format!("/api/v1/certificates/{cert}"),
            json!({ "renew_before_days": 7 }),
        ),
        (
            format!("/api/v1/issuers/{issuer}"),
            json!({ "settings": {} }),
        ),
        (
            format!("/api/v1/targets/{}", target.id),
            json!({ "settings": {} }),
        ),
        (
            format!("/api/v1/notifiers/{}", notifier.id),
            json!({ "settings": {} }),
        ),
        (
            format!("/api/v1/dns-solvers/{}", solver.id),
            json!({ "settings": {} }),
        ),
    ] {
        let before = app.get(&path, &app.reader).await;
        let r = send(
            &app,
            Method::PATCH,
            &path,
            &app.operator,
            &[("if-match", stale)],
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::PRECONDITION_FAILED,
            "{path}: {}",
            r.text
        );
        assert_eq!(error_code(&r), "precondition_failed", "{path}");
        let weak = format!("W/{}", etag(&before));
        let r = send(
            &app,
            Method::PATCH,
            &path,
            &app.operator,
            &[("if-match", &weak)],
            Some(body),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::PRECONDITION_FAILED,
            "{path}: a weak tag never matches: {}",
            r.text
        );
        let after = app.get(&path, &app.reader).await;
        assert_eq!(after.json, before.json, "{path}: nothing changed");
    }

    // The current tag goes through, once: the tag it was sent with is
    // stale afterwards.
    let path = format!("/api/v1/certificates/{cert}");
    let tag = etag(&app.get(&path, &app.reader).await);
    let patch = |days: u32, tag: String| {
        let app = &app;
        let path = path.clone();
        async move {
            send(
                app,
                Method::PATCH,
                &path,
                &app.operator,
                &[("if-match", &tag)],
                Some(json!({ "renew_before_days": days })),
            )
            .await
        }
    };
    let r = patch(7, tag.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["renew_before_days"], 7);
    let r = patch(8, tag).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED, "{}", r.text);
    let r = patch(9, "*".to_owned()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    let path = format!("/api/v1/issuers/{issuer}");
    let tag = etag(&app.get(&path, &app.reader).await);
    let r = send(
        &app,
        Method::PATCH,
        &path,
        &app.operator,
        &[("if-match", &tag)],
        Some(json!({ "settings": { "ca_certificate_pem": "not a pem", "validity_days": 10 } })),
    )
    .await;
    // The plugin refuses the settings: If-Match let the request through to
    // validation.
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(error_code(&r), "validation_failed");
}

fn assert_v7(what: &str, id: &str) {
    let parsed = uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{what} {id}: {e}"));
    assert_eq!(parsed.get_version_num(), 7, "{what} {id} is not a UUIDv7");
    assert_eq!(
        parsed.get_variant(),
        uuid::Variant::RFC4122,
        "{what} {id}: variant"
    );
}

async fn ids_are_uuid_v7(backend: Backend) {
    let app = TestApp::new(backend).await;
    let issuer = api_issuer(&app, "ca").await;
    assert_v7("issuer", &issuer);
    let target = app
        .store
        .create_target(NewTarget {
            agent_id: "host".into(),
            instance: NewPluginInstance::new("t", "pem-file", "1.0.0"),
        })
        .await
        .unwrap();
    assert_v7("target", &target.id);
    let (agent, _) = register(&app, "edge").await;
    assert_v7("agent", &agent);
    // Host-key and agent-key certificates: the sweep's jobs are made in
    // SQL, the others in Rust.
    let cert = api_certificate(&app, "web", &issuer, &[&target.id]).await;
    assert_v7("certificate", &cert);
    let agent_target = fixtures::target(&app.store, &agent, "at").await;
    let agent_cert = api_certificate(&app, "edge-web", &issuer, &[&agent_target.id]).await;
    assert_eq!(app.store.enqueue_due_renewals(5, 10).await.unwrap(), 2);
    let jobs = app.store.list_jobs(&JobFilter::default()).await.unwrap();
    assert_eq!(jobs.len(), 2);
    for job in &jobs {
        assert_v7("sweep job", &job.id);
    }
    assert!(
        jobs.iter()
            .any(|j| j.certificate_id.as_deref() == Some(agent_cert.as_str()))
    );
    // Ordered by time: a later job's id sorts after an earlier one's (a
    // later millisecond; within one the random bits decide).
    tokio::time::sleep(Duration::from_millis(5)).await;
    let later = app
        .store
        .create_job(certplane_host::store::NewJob::new(JobType::Deployment).target(&target.id))
        .await
        .unwrap();
    assert_v7("job", &later.id);
    assert!(jobs.iter().all(|j| j.id < later.id), "v7 ids sort by time");
    let events = app.store.list_audit_events(None, None, 1000).await.unwrap();
    assert!(!events.is_empty());
    for event in events {
        assert_v7("audit event", &event.id);
    }
}

/// PATCH refuses exactly what create refuses for the fields both take.
async fn patch_validates_like_create(backend: Backend) {
    let app = TestApp::new(backend).await;
    let issuer = fixtures::issuer(&app.store).await;
    let cert = api_certificate(&app, "web", &issuer.id, &[]).await;
    let path = format!("/api/v1/certificates/{cert}");
    let long_owner = "o".repeat(129);
    let bad: [(&str, Value); 6] = [
        ("owner", json!(long_owner)),
        ("owner", json!("")),
        ("owner", json!("a\u{7}b")),
        ("renew_before_days", json!(3651)),
        ("issuer_options", json!("not an object")),
        ("target_options", json!([1])),
    ];
    let before = app.get(&path, &app.reader).await;
    for (field, value) in bad {
        let mut create = json!({ "name": format!("c-{}", new_id()), "common_name": "x.example.com",
                                 "issuer_id": issuer.id });
        create[field] = value.clone();
        let r = app
            .post("/api/v1/certificates", &app.operator, create)
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "create {field}={value}: {}",
            r.text
        );
        let created_refusal = r.json["error"]["param"].clone();
        let mut patch = json!({});
        patch[field] = value.clone();
        let r = send(&app, Method::PATCH, &path, &app.operator, &[], Some(patch)).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "patch {field}={value}: {}",
            r.text
        );
        assert_eq!(error_code(&r), "validation_failed");
        assert_eq!(r.json["error"]["param"], field, "{}", r.text);
        assert_eq!(created_refusal, field, "create names the same field");
    }
    assert_eq!(app.get(&path, &app.reader).await.json, before.json);
    // What create takes, PATCH takes; null clears the owner.
    for body in [
        json!({ "owner": "o".repeat(128) }),
        json!({ "owner": null }),
        json!({ "renew_before_days": 3650 }),
    ] {
        let r = send(&app, Method::PATCH, &path, &app.operator, &[], Some(body)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
}

/// An agent (with a target) holding the keys of two certificates, one with
/// its issuance job awaiting the agent's CSR; a host-key certificate
/// deploying to the same target.
struct Held {
    agent: String,
    certificates: Vec<String>,
    host_key: String,
}

async fn agent_holding_keys(app: &TestApp, name: &str, issuer: &str) -> Held {
    let (agent, _) = register(app, name).await;
    let target = fixtures::target(&app.store, &agent, &format!("{name}-t")).await;
    let first = api_certificate(app, &format!("{name}-a"), issuer, &[&target.id]).await;
    let second = api_certificate(app, &format!("{name}-b"), issuer, &[&target.id]).await;
    let host_key = fixtures::certificate(&app.store, issuer, None, KeySource::Host).await;
    app.store
        .add_certificate_target(&host_key.id, &target.id)
        .await
        .unwrap();
    // The sweep made their issuance jobs: waiting for the agent's CSR.
    let created = app.store.enqueue_due_renewals(5, 100).await.unwrap();
    assert!(created >= 2, "{created}");
    for cert in [&first, &second] {
        let jobs = open_issuance(app, cert).await;
        assert_eq!(jobs.len(), 1, "{cert}");
        assert_eq!(jobs[0].status, JobStatus::AwaitingCsr);
    }
    Held {
        agent,
        certificates: vec![first, second],
        host_key: host_key.id,
    }
}

async fn open_issuance(app: &TestApp, cert: &str) -> Vec<certplane_host::store::Job> {
    app.store
        .list_jobs(&JobFilter {
            certificate_id: Some(cert.to_owned()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|j| {
            matches!(j.job_type, JobType::Issuance | JobType::Renewal)
                && !matches!(j.status, JobStatus::Completed | JobStatus::Cancelled)
        })
        .collect()
}

async fn forced_retirement_disables_key_held_certificates(backend: Backend) {
    let app = TestApp::new(backend).await;
    let issuer = api_issuer(&app, "ca").await;
    let held = agent_holding_keys(&app, "edge", &issuer).await;
    let r = delete(
        &app,
        &format!(
            "/api/v1/agents/{}?force=true&reason=decommissioned",
            held.agent
        ),
        &app.admin,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let reason = format!("key holder agent {} was retired", held.agent);
    for cert in &held.certificates {
        let r = app
            .get(&format!("/api/v1/certificates/{cert}"), &app.reader)
            .await;
        assert_eq!(r.json["status"], "disabled", "{}", r.text);
        assert_eq!(r.json["disabled_reason"], reason.as_str(), "{}", r.text);
        let jobs = app
            .store
            .list_jobs(&JobFilter {
                certificate_id: Some(cert.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].status, JobStatus::Cancelled, "{:?}", jobs[0]);
        assert_eq!(jobs[0].last_error.as_deref(), Some(reason.as_str()));
        let audited = count(
            &app.store,
            &format!(
                "SELECT COUNT(*) FROM audit_events WHERE subject_id = '{cert}'
                 AND action = 'certificate.disable' AND actor = 'apikey:admin'"
            ),
        )
        .await;
        assert_eq!(audited, 1, "{cert}");
    }
    // The host-key certificate is not the agent's to hold: untouched.
    let r = app
        .get(
            &format!("/api/v1/certificates/{}", held.host_key),
            &app.reader,
        )
        .await;
    assert_eq!(r.json["status"], "active", "{}", r.text);
    assert!(r.json["disabled_reason"].is_null());

    // The sweep creates nothing for them, however due they are.
    exec(
        &app.store,
        "UPDATE certificates SET renew_at = '2000-01-01T00:00:00.000000Z'
         WHERE status = 'disabled'",
    )
    .await;
    let before = count(&app.store, "SELECT COUNT(*) FROM jobs").await;
    app.store.enqueue_due_renewals(5, 100).await.unwrap();
    for cert in &held.certificates {
        assert!(open_issuance(&app, cert).await.is_empty(), "{cert}");
    }
    assert!(count(&app.store, "SELECT COUNT(*) FROM jobs").await <= before + 1);

    // Enabling one again on its retired key holder is refused.
    let r = send(
        &app,
        Method::PATCH,
        &format!("/api/v1/certificates/{}", held.certificates[0]),
        &app.operator,
        &[],
        Some(json!({ "status": "active" })),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(error_code(&r), "invalid_state");
}

async fn forced_retirement_moves_to_a_target(backend: Backend) {
    let app = TestApp::new(backend).await;
    let issuer = api_issuer(&app, "ca").await;
    let held = agent_holding_keys(&app, "edge", &issuer).await;
    let (other, _) = register(&app, "other").await;
    let there = fixtures::target(&app.store, &other, "there").await;
    let own = app
        .store
        .list_targets_for_agent(&held.agent, false)
        .await
        .unwrap()
        .remove(0);
    let retire = |query: String| {
        let app = &app;
        let agent = held.agent.clone();
        async move { delete(app, &format!("/api/v1/agents/{agent}?{query}"), &app.admin).await }
    };
    // Unusable targets are refused, and nothing changes.
    for query in [
        format!("move_to_target={}", there.id),
        format!("force=true&reason=x&move_to_target={}", own.id),
        "force=true&reason=x&move_to_target=nope".to_owned(),
    ] {
        let r = retire(query.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}: {}",
            r.text
        );
        assert_eq!(r.json["error"]["param"], "move_to_target", "{query}");
    }
    assert_eq!(
        app.get(&format!("/api/v1/agents/{}", held.agent), &app.reader)
            .await
            .json["status"],
        "active"
    );

    let r = retire(format!(
        "force=true&reason=moved&move_to_target={}",
        there.id
    ))
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // Moved to the other agent, due now: its agent makes a new key.
    assert_eq!(app.store.enqueue_due_renewals(5, 100).await.unwrap(), 2);
    for cert in &held.certificates {
        let r = app
            .get(&format!("/api/v1/certificates/{cert}"), &app.reader)
            .await;
        assert_eq!(r.json["status"], "active", "{}", r.text);
        assert_eq!(r.json["key_source"], "agent");
        assert_eq!(r.json["target_ids"][0], there.id.as_str(), "{}", r.text);
        let jobs = open_issuance(&app, cert).await;
        assert_eq!(jobs.len(), 1, "{cert}");
        assert_eq!(jobs[0].status, JobStatus::AwaitingCsr);
        let moved = count(
            &app.store,
            &format!(
                "SELECT COUNT(*) FROM audit_events WHERE subject_id = '{cert}'
                 AND action = 'certificate.move'"
            ),
        )
        .await;
        assert_eq!(moved, 1);
    }

    // To a target the host runs: the host makes the key.
    let second = agent_holding_keys(&app, "edge2", &issuer).await;
    let local = fixtures::target(&app.store, "host", "local").await;
    let r = delete(
        &app,
        &format!(
            "/api/v1/agents/{}?force=true&reason=moved&move_to_target={}",
            second.agent, local.id
        ),
        &app.admin,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.store.enqueue_due_renewals(5, 100).await.unwrap();
    for cert in &second.certificates {
        let row = app.store.get_certificate(cert).await.unwrap().unwrap();
        assert_eq!(row.key_source, KeySource::Host);
        assert_eq!(row.target_id.as_deref(), Some(local.id.as_str()));
        let jobs = open_issuance(&app, cert).await;
        assert_eq!(jobs.len(), 1, "{cert}");
        assert_eq!(jobs[0].status, JobStatus::Pending);
    }
}

/// One way to show retired items, one name for the job-type filter.
async fn one_name_per_filter(backend: Backend) {
    let app = TestApp::new(backend).await;
    let r = app
        .get("/api/v1/certificates?status=retired", &app.reader)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.json["error"]["param"], "include_retired");
    let r = app
        .get(
            "/api/v1/certificates?status=retired&include_retired=true",
            &app.reader,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    for path in [
        "/api/v1/issuers?include_retired=maybe",
        "/api/v1/jobs?type=deployment",
    ] {
        let r = app.get(path, &app.reader).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.text);
    }
    let r = app
        .get("/api/v1/jobs?job_type=deployment", &app.reader)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // The retired agents' own route is a deprecated alias.
    let r = app.get("/api/v1/agents/retired", &app.reader).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.headers["deprecation"], "true");
}

/// `api.request_timeout_secs` bounds every request but the agents' work
/// long-poll, which has its own bound.
async fn the_long_poll_outlasts_the_request_timeout(backend: Backend) {
    let app = TestApp::with_config(backend, |c| c.api.request_timeout_secs = 1).await;
    let (_, credential) = register(&app, "edge").await;
    let started = Instant::now();
    let r = app
        .get("/api/v1/agents/work?wait_secs=2", &credential)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the poll was cut short: {:?}",
        started.elapsed()
    );
}

both_backends!(
    delete_retires_every_kind,
    refusals_are_invalid_state_with_counts,
    single_resources_have_etags,
    patch_honours_if_match,
    ids_are_uuid_v7,
    patch_validates_like_create,
    forced_retirement_disables_key_held_certificates,
    forced_retirement_moves_to_a_target,
    one_name_per_filter,
    the_long_poll_outlasts_the_request_timeout,
);
