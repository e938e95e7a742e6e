//! `/certificates`: create with name validation, list filters, pagination
//! and ETags, detail with versions (never keys), renew now, revoke, scopes,
//! and a property test over the create body parser. Every scenario runs on
//! SQLite and PostgreSQL.

use axum::http::{Method, StatusCode};
use certplane_host::store::{
    JobFilter, JobStatus, JobType, NewCertificateVersion, Store, new_id, now,
};
use certplane_testkit::app::{Reply, TestApp, error_code};
use certplane_testkit::both_backends;
use certplane_testkit::{Backend, count, fixtures};
use proptest::prelude::*;
use serde_json::{Value, json};

async fn total(app: &TestApp, path: &str) -> u64 {
    let r = app.get(path, &app.reader).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json["total"].as_u64().expect("total")
}

async fn certificate_rows(store: &Store) -> i64 {
    count(store, "SELECT COUNT(*) FROM certificates").await
}

/// Issuer and a host-run target, as rows.
async fn setup(app: &TestApp) -> (String, String) {
    let issuer = fixtures::issuer(&app.store).await;
    let target = fixtures::target(&app.store, "host", "local").await;
    (issuer.id, target.id)
}

fn body(name: &str, issuer_id: &str) -> Value {
    json!({ "name": name, "common_name": "www.example.com", "issuer_id": issuer_id })
}

async fn issue(store: &Store, certificate_id: &str, days: i64) -> String {
    let t = now();
    store
        .record_certificate_version(NewCertificateVersion {
            certificate_id: certificate_id.to_string(),
            serial: "0a1b".into(),
            pem_chain: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into(),
            not_before: t,
            not_after: t + chrono::Duration::days(days),
            fingerprint_sha256: new_id(),
            encrypted_private_key: Some(b"sealed-private-key-bytes".to_vec()),
            job_id: None,
            ca_certificate_id: None,
            ca_order_id: None,
            renew_before_secs: None,
        })
        .await
        .expect("version")
        .id
}

async fn create_ok(app: &TestApp, body: Value) -> Reply {
    let r = app.post("/api/v1/certificates", &app.operator, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r
}

async fn certificate_crud(backend: Backend) {
    let app = TestApp::new(backend).await;
    let (issuer, target) = setup(&app).await;
    let extra = fixtures::target(&app.store, "host", "extra").await.id;
    let r = create_ok(
        &app,
        json!({
            "name": "web",
            "common_name": "WWW.Example.com",
            "sans": ["api.example.com", "10.0.0.1", "*.example.org", "::1"],
            "key_type": "rsa-3072",
            "issuer_id": issuer,
            "target_ids": [target, extra],
            "renew_before_days": 20,
            "owner": "team-web",
        }),
    )
    .await;
    assert_eq!(r.json["common_name"], "www.example.com");
    assert_eq!(
        r.json["sans"],
        json!([
            "www.example.com",
            "api.example.com",
            "10.0.0.1",
            "*.example.org",
            "::1"
        ])
    );
    assert_eq!(r.json["key_type"], "rsa-3072");
    assert_eq!(r.json["key_source"], "host");
    assert_eq!(r.json["target_ids"], json!([target, extra]));
    assert_eq!(r.json["renew_before_days"], 20);
    assert_eq!(r.json["status"], "active");
    let id = r.json["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/certificates/{id}");

    // Defaults.
    let r = create_ok(&app, body("plain", &issuer)).await;
    assert_eq!(r.json["key_type"], "ecdsa-p256");
    assert_eq!(r.json["key_source"], "host");
    assert_eq!(r.json["renew_before_days"], 30);
    assert_eq!(r.json["target_ids"], json!([]));

    // Duplicate name: 409.
    let r = app
        .post(
            "/api/v1/certificates",
            &app.operator,
            body("plain", &issuer),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(total(&app, "/api/v1/certificates").await, 2);

    // Detail with versions, never the private key.
    let r = app.get(&path, &app.reader).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["versions"], json!([]));
    issue(&app.store, &id, 10).await;
    let r = app.get(&path, &app.reader).await;
    assert_eq!(r.json["versions"].as_array().unwrap().len(), 1);
    assert!(r.json["not_after"].is_string());
    assert!(!r.text.contains("private"), "{}", r.text);
    assert!(!r.text.contains("sealed-private-key"), "{}", r.text);
    let r = app.get("/api/v1/certificates/nope", &app.reader).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    error_code(&r);

    // Filters.
    assert_eq!(total(&app, "/api/v1/certificates?status=active").await, 2);
    assert_eq!(
        total(
            &app,
            "/api/v1/certificates?status=retired&include_retired=true"
        )
        .await,
        0
    );
    assert_eq!(
        total(&app, "/api/v1/certificates?expiring_within_days=30").await,
        1
    );
    assert_eq!(
        total(&app, "/api/v1/certificates?expiring_within_days=5").await,
        0
    );
    let r = app
        .get("/api/v1/certificates?status=bogus", &app.reader)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    error_code(&r);
    let r = app
        .get("/api/v1/certificates?expiring_within_days=-1", &app.reader)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = app
        .get("/api/v1/certificates?per_page=1&page=2", &app.reader)
        .await;
    assert_eq!(r.json["total"], 2);
    assert_eq!(r.json["items"].as_array().unwrap().len(), 1);
    assert_eq!(r.json["items"][0]["name"], "web");

    let audited = count(
        &app.store,
        "SELECT COUNT(*) FROM audit_events WHERE action = 'certificate.create'
         AND actor = 'apikey:operator'",
    )
    .await;
    assert_eq!(audited, 2);
}

async fn key_source_follows_the_target(backend: Backend) {
    let app = TestApp::new(backend).await;
    let (issuer, host_target) = setup(&app).await;
    let agent = fixtures::agent(&app.store, "edge").await;
    let other = fixtures::agent(&app.store, "edge-2").await;
    let on_agent = fixtures::target(&app.store, &agent.id, "edge-files")
        .await
        .id;
    let on_other = fixtures::target(&app.store, &other.id, "other-files")
        .await
        .id;

    let mut b = body("agent-key", &issuer);
    b["target_ids"] = json!([on_agent]);
    let r = create_ok(&app, b).await;
    assert_eq!(r.json["key_source"], "agent");

    let mut b = body("host-key", &issuer);
    b["target_ids"] = json!([on_agent]);
    b["key_source"] = json!("host");
    assert_eq!(create_ok(&app, b).await.json["key_source"], "host");

    for (what, targets) in [
        ("agent key on a host target", json!([host_target])),
        ("agent key without target", json!([])),
        ("agent key across agents", json!([on_agent, on_other])),
    ] {
        let mut b = body("refused", &issuer);
        b["target_ids"] = targets;
        b["key_source"] = json!("agent");
        let r = app.post("/api/v1/certificates", &app.operator, b).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{what}: {}",
            r.text
        );
        error_code(&r);
    }
    assert_eq!(certificate_rows(&app.store).await, 2);
}

async fn invalid_bodies_change_nothing(backend: Backend) {
    let app = TestApp::new(backend).await;
    let (issuer, target) = setup(&app).await;
    app.store.retire_target(&target, "gone").await.unwrap();
    let with = |patch: Value| {
        let mut b = body("cert", &issuer);
        for (k, v) in patch.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let many: Vec<String> = (0..101).map(|i| format!("h{i}.example.com")).collect();
    let hundred: Vec<String> = (0..100).map(|i| format!("h{i}.example.com")).collect();
    let long_label = format!("{}.example.com", "a".repeat(64));
    let cases: Vec<(&str, Value, StatusCode)> = vec![
        (
            "bad certificate name",
            with(json!({ "name": "no spaces" })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "empty name",
            with(json!({ "name": "" })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "bad common name",
            with(json!({ "common_name": "bad_name!" })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "empty common name",
            with(json!({ "common_name": "" })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "hyphen label",
            with(json!({ "sans": ["-a.example.com"] })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "double wildcard",
            with(json!({ "sans": ["*.*.example.com"] })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "inner wildcard",
            with(json!({ "sans": ["a.*.example.com"] })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "bad ip",
            with(json!({ "sans": ["10.0.0.256"] })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "long label",
            with(json!({ "sans": [long_label] })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "trailing dot",
            with(json!({ "sans": ["a.example.com."] })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "duplicate sans",
            with(json!({ "sans": ["a.example.com", "A.example.com"] })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "duplicate ips",
            with(json!({ "sans": ["::1", "0:0::1"] })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "101 sans",
            with(json!({ "sans": many })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "100 sans plus cn",
            with(json!({ "sans": hundred })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown key type",
            with(json!({ "key_type": "rsa-1024" })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown key source",
            with(json!({ "key_source": "hsm" })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "renew window too long",
            with(json!({ "renew_before_days": 5000 })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "negative renew window",
            with(json!({ "renew_before_days": -1 })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown issuer",
            with(json!({ "issuer_id": "nope" })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown target",
            with(json!({ "target_ids": ["nope"] })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "retired target",
            with(json!({ "target_ids": [target] })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "wrong type",
            with(json!({ "sans": "a.example.com" })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown field",
            with(json!({ "colour": "blue" })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "missing field",
            json!({ "name": "x" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "not an object",
            json!([1, 2, 3]),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "bad owner",
            with(json!({ "owner": "" })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (what, b, status) in cases {
        let r = app.post("/api/v1/certificates", &app.operator, b).await;
        assert_eq!(r.status, status, "{what}: {}", r.text);
        error_code(&r);
        assert_eq!(
            total(&app, "/api/v1/certificates").await,
            0,
            "{what} created a row"
        );
    }
    let send_raw = |text: String| {
        axum::http::Request::builder()
            .method(Method::POST)
            .uri("/api/v1/certificates")
            .header("authorization", format!("Bearer {}", app.operator))
            .header("content-type", "application/json")
            .body(axum::body::Body::from(text))
            .unwrap()
    };
    let r = app.send(send_raw("{\"name\": \"x\",".into())).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(error_code(&r), "bad_request");
    let huge = format!(
        "{{\"name\":\"x\",\"common_name\":\"a.example.com\",\"issuer_id\":\"{issuer}\",\"sans\":[{}]}}",
        vec!["\"a.example.com\""; 200_000].join(",")
    );
    let r = app.send(send_raw(huge)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    error_code(&r);
    // Readers cannot create.
    let r = app
        .post("/api/v1/certificates", &app.reader, body("cert", &issuer))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&r), "forbidden");
    assert_eq!(certificate_rows(&app.store).await, 0);
    assert_eq!(
        count(&app.store, "SELECT COUNT(*) FROM certificate_targets").await,
        0
    );

    // Accepted edge cases.
    let ok = |name: &str, sans: Value| {
        let mut b = body(name, &issuer);
        b["sans"] = sans;
        b
    };
    create_ok(&app, ok("ips", json!(["192.0.2.1", "2001:db8::1"]))).await;
    create_ok(&app, ok("wild", json!(["*.example.com"]))).await;
    let r = create_ok(&app, ok("ninety-nine", json!(hundred[..99]))).await;
    assert_eq!(r.json["sans"].as_array().unwrap().len(), 100);
}

async fn renew_now(backend: Backend) {
    let app = TestApp::new(backend).await;
    let (issuer, _) = setup(&app).await;
    let r = create_ok(&app, body("web", &issuer)).await;
    let id = r.json["id"].as_str().unwrap().to_string();
    issue(&app.store, &id, 90).await;
    let before = app.store.get_certificate(&id).await.unwrap().unwrap();
    assert!(before.renew_at > now() + chrono::Duration::days(50));

    let path = format!("/api/v1/certificates/{id}/renew");
    let r = app.post(&path, &app.reader, json!({})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = app
        .call(Method::POST, &path, Some(&app.operator), None)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let after = app.store.get_certificate(&id).await.unwrap().unwrap();
    assert!(after.renew_at <= now(), "{:?}", after.renew_at);
    assert_eq!(after.not_after, before.not_after);
    // The sweep now sees it as due.
    let due = app.store.enqueue_due_renewals(5, 10).await.unwrap();
    assert_eq!(due, 1);
    let audited = count(
        &app.store,
        &format!("SELECT COUNT(*) FROM audit_events WHERE action = 'certificate.renew_now' AND subject_id = '{id}'"),
    )
    .await;
    assert_eq!(audited, 1);

    let r = app
        .call(
            Method::POST,
            "/api/v1/certificates/nope/renew",
            Some(&app.operator),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    app.store
        .set_certificate_status(&id, certplane_host::store::CertificateStatus::Disabled)
        .await
        .unwrap();
    let r = app
        .call(Method::POST, &path, Some(&app.operator), None)
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    error_code(&r);
}

/// PATCH changes status, window and owner; DELETE retires and cancels the
/// jobs that had not started; a retired certificate is frozen.
async fn update_and_retire(backend: Backend) {
    let app = TestApp::new(backend).await;
    let (issuer, _) = setup(&app).await;
    let r = create_ok(&app, body("web", &issuer)).await;
    let id = r.json["id"].as_str().unwrap().to_string();
    issue(&app.store, &id, 90).await;
    let path = format!("/api/v1/certificates/{id}");
    let patch = |b: Value| app.call(Method::PATCH, &path, Some(&app.operator), Some(b));

    let r = app
        .call(
            Method::PATCH,
            &path,
            Some(&app.reader),
            Some(json!({ "status": "disabled" })),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r =
        patch(json!({ "status": "disabled", "renew_before_days": 10, "owner": "team-web" })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "disabled");
    assert_eq!(r.json["renew_before_days"], 10);
    let row = app.store.get_certificate(&id).await.unwrap().unwrap();
    assert_eq!(row.owner.as_deref(), Some("team-web"));
    let not_after = row.not_after.unwrap();
    assert_eq!(row.renew_at, not_after - chrono::Duration::days(10));
    // Disabled: the sweep leaves it alone even when due.
    let r = patch(json!({ "renew_before_days": 3650 })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(app.store.enqueue_due_renewals(5, 10).await.unwrap(), 0);
    // Owner absent keeps it, null clears it.
    let r = patch(json!({ "status": "active" })).await;
    assert_eq!(r.json["status"], "active");
    assert_eq!(
        app.store
            .get_certificate(&id)
            .await
            .unwrap()
            .unwrap()
            .owner
            .as_deref(),
        Some("team-web")
    );
    patch(json!({ "owner": null })).await;
    assert_eq!(
        app.store.get_certificate(&id).await.unwrap().unwrap().owner,
        None
    );
    // Active and due again: one renewal job.
    assert_eq!(app.store.enqueue_due_renewals(5, 10).await.unwrap(), 1);

    // Bad bodies change nothing.
    let before = app.store.get_certificate(&id).await.unwrap().unwrap();
    for bad in [
        json!({ "status": "retired" }),
        json!({ "status": "sleeping" }),
        json!({ "renew_before_days": 4000 }),
        json!({ "renew_before_days": -1 }),
        json!({ "colour": "blue" }),
        json!({ "owner": "a\u{7}b" }),
    ] {
        let r = patch(bad.clone()).await;
        assert!(r.status.is_client_error(), "{bad}: {}", r.text);
        error_code(&r);
    }
    assert_eq!(
        app.store.get_certificate(&id).await.unwrap().unwrap(),
        before
    );

    // Retire: the pending renewal job is cancelled.
    let r = app
        .call(Method::DELETE, &path, Some(&app.operator), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "retired");
    assert!(r.json["retired_at"].is_string(), "{}", r.text);
    let retired = r.json.clone();
    let open = app
        .store
        .list_jobs(&JobFilter {
            certificate_id: Some(id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        open.iter().all(|j| j.status == JobStatus::Cancelled),
        "{open:?}"
    );
    let r = app
        .call(Method::DELETE, &path, Some(&app.operator), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json, retired);
    let r = patch(json!({ "status": "active" })).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = app
        .call(
            Method::DELETE,
            "/api/v1/certificates/nope",
            Some(&app.operator),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(app.store.enqueue_due_renewals(5, 10).await.unwrap(), 0);
}

async fn revoke(backend: Backend) {
    let app = TestApp::new(backend).await;
    let (issuer, _) = setup(&app).await;
    let r = create_ok(&app, body("web", &issuer)).await;
    let id = r.json["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/certificates/{id}/revoke");

    let r = app
        .post(&path, &app.operator, json!({ "reason": "key-compromise" }))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(error_code(&r), "invalid_state");
    let jobs = |store: Store, id: String| async move {
        store
            .list_jobs(&JobFilter {
                job_type: Some(JobType::Revocation),
                certificate_id: Some(id),
                ..Default::default()
            })
            .await
            .unwrap()
    };
    assert!(jobs(app.store.clone(), id.clone()).await.is_empty());

    let version = issue(&app.store, &id, 30).await;
    let r = app.post(&path, &app.reader, json!({})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = app
        .post(&path, &app.operator, json!({ "reason": "because" }))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let r = app
        .post(
            &path,
            &app.operator,
            json!({ "reason": "superseded", "x": 1 }),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert!(jobs(app.store.clone(), id.clone()).await.is_empty());

    let r = app
        .post(&path, &app.operator, json!({ "reason": "key-compromise" }))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.json["certificate_version_id"], version.as_str());
    assert_eq!(r.json["reason"], "key-compromise");
    let created = jobs(app.store.clone(), id.clone()).await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].id, r.json["job_id"].as_str().unwrap());
    assert_eq!(created[0].status, JobStatus::Pending);
    assert_eq!(created[0].agent_id.as_deref(), Some("host"));
    assert_eq!(
        created[0].certificate_version_id.as_deref(),
        Some(version.as_str())
    );
    assert_eq!(
        created[0].payload.as_ref().unwrap()["reason"],
        "key-compromise"
    );

    // A second request while the first is open: 409, no second job.
    let r = app.post(&path, &app.operator, json!({})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(jobs(app.store.clone(), id.clone()).await.len(), 1);
    let r = app
        .post("/api/v1/certificates/nope/revoke", &app.operator, json!({}))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

async fn list_etag_changes(backend: Backend) {
    let app = TestApp::new(backend).await;
    let (issuer, _) = setup(&app).await;
    let first = app.get("/api/v1/certificates", &app.reader).await;
    let etag = first.headers["etag"].to_str().unwrap().to_string();
    let conditional = |etag: String| {
        axum::http::Request::builder()
            .uri("/api/v1/certificates")
            .header("authorization", format!("Bearer {}", app.reader))
            .header("if-none-match", etag)
            .body(axum::body::Body::empty())
            .unwrap()
    };
    assert_eq!(
        app.send(conditional(etag.clone())).await.status,
        StatusCode::NOT_MODIFIED
    );
    let r = create_ok(&app, body("web", &issuer)).await;
    let second = app.send(conditional(etag)).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.json["total"], 1);
    let etag = second.headers["etag"].to_str().unwrap().to_string();
    assert_eq!(
        app.send(conditional(etag.clone())).await.status,
        StatusCode::NOT_MODIFIED
    );
    // Renew now changes the item, so the list's ETag.
    let id = r.json["id"].as_str().unwrap();
    let renew = format!("/api/v1/certificates/{id}/renew");
    let r = app
        .call(Method::POST, &renew, Some(&app.operator), None)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(app.send(conditional(etag)).await.status, StatusCode::OK);
}

// ---------------------------------------------------------------- property

const FIELDS: &[&str] = &[
    "name",
    "common_name",
    "sans",
    "key_type",
    "issuer_id",
    "target_ids",
    "key_source",
    "renew_before_days",
    "owner",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        "[a-z0-9.*-]{0,30}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(FIELDS).prop_map(String::from),
                    ".{0,12}"
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bodies shaped like a create request with arbitrary field values.
fn certificate_like(issuer: String) -> impl Strategy<Value = String> {
    prop::collection::btree_map(prop::sample::select(FIELDS), json_value(), 0..10).prop_map(
        move |fields| {
            let mut m: serde_json::Map<String, Value> = fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            // Keep the issuer unknown so that no body can be valid by
            // chance... except through this exact id, which is never used.
            if m.get("issuer_id")
                .is_some_and(|v| v.as_str() == Some(issuer.as_str()))
            {
                m.insert("issuer_id".into(), Value::from("other"));
            }
            Value::Object(m).to_string()
        },
    )
}

fn any_body(issuer: String) -> impl Strategy<Value = String> {
    prop_oneof![
        json_value().prop_map(|v| v.to_string()),
        certificate_like(issuer),
        ".{0,200}",
        prop::collection::vec(any::<u8>(), 0..200)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

async fn create_parser_never_fails_badly(backend: Backend) {
    let app = TestApp::with_config(backend, |c| {
        c.api.rate_limit_per_second = 100_000;
        c.api.rate_limit_burst = 100_000;
    })
    .await;
    let (issuer, _) = setup(&app).await;
    let handle = tokio::runtime::Handle::current();
    let config = ProptestConfig {
        cases: 192,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = tokio::task::block_in_place(|| {
        runner.run(&any_body(issuer.clone()), |text| {
            let (status, body) = handle.block_on(async {
                let req = axum::http::Request::builder()
                    .method(Method::POST)
                    .uri("/api/v1/certificates")
                    .header("authorization", format!("Bearer {}", app.operator))
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(text.clone()))
                    .unwrap();
                let r = app.send(req).await;
                (r.status, r.json)
            });
            prop_assert!(!status.is_server_error(), "{status} for {text:?}: {body}");
            prop_assert!(status.is_client_error(), "{status} for {text:?}: {body}");
            prop_assert!(
                body["error"]["code"].is_string(),
                "no envelope for {text:?}: {body}"
            );
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert_eq!(certificate_rows(&app.store).await, 0);
    assert_eq!(
        count(&app.store, "SELECT COUNT(*) FROM certificate_targets").await,
        0
    );
}

/// Per-certificate connector options: kept, shown, replaced as a whole by
/// PATCH, and refused (changing nothing) unless they are JSON objects of at
/// most 16 KiB.
async fn connector_options(backend: Backend) {
    let app = TestApp::new(backend).await;
    let (issuer, _) = setup(&app).await;
    let mut b = body("opts", &issuer);
    b["issuer_options"] = json!({ "profile": "tlsserver" });
    b["target_options"] = json!({ "reload": "nginx" });
    let created = create_ok(&app, b).await;
    let id = created.json["id"].as_str().unwrap().to_string();
    assert_eq!(
        created.json["issuer_options"],
        json!({ "profile": "tlsserver" })
    );
    assert_eq!(created.json["target_options"], json!({ "reload": "nginx" }));
    let row = app.store.get_certificate(&id).await.unwrap().unwrap();
    assert_eq!(row.target_options, json!({ "reload": "nginx" }));

    // Defaults are empty objects.
    let plain = create_ok(&app, body("plain", &issuer)).await;
    assert_eq!(plain.json["issuer_options"], json!({}));

    let path = format!("/api/v1/certificates/{id}");
    let r = app
        .call(
            Method::PATCH,
            &path,
            Some(&app.operator),
            Some(json!({ "issuer_options": { "profile": "short" } })),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["issuer_options"], json!({ "profile": "short" }));
    assert_eq!(
        r.json["target_options"],
        json!({ "reload": "nginx" }),
        "untouched"
    );

    for (patch, field) in [
        (
            json!({ "issuer_options": ["not", "an", "object"] }),
            "issuer_options",
        ),
        (json!({ "target_options": "x" }), "target_options"),
        (
            json!({ "target_options": { "big": "x".repeat(17 * 1024) } }),
            "target_options",
        ),
    ] {
        let r = app
            .call(Method::PATCH, &path, Some(&app.operator), Some(patch))
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
        assert!(r.text.contains(field), "{}", r.text);
    }
    let mut bad = body("bad-opts", &issuer);
    bad["issuer_options"] = json!(42);
    let r = app.post("/api/v1/certificates", &app.operator, bad).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let row = app.store.get_certificate(&id).await.unwrap().unwrap();
    assert_eq!(
        row.issuer_options,
        json!({ "profile": "short" }),
        "refusals changed nothing"
    );
    assert_eq!(row.target_options, json!({ "reload": "nginx" }));
}

/// `POST /certificates/batch` creates every certificate of the request or,
/// whichever item is refused and however, none: no certificate row and no
/// audit row is left behind, and the error names the item.
async fn batch_create_is_all_or_nothing(backend: Backend) {
    let app = TestApp::new(backend).await;
    let (issuer, target) = setup(&app).await;
    let retired = fixtures::target(&app.store, "host", "old").await.id;
    app.store.retire_target(&retired, "gone").await.unwrap();
    create_ok(&app, body("taken", &issuer)).await;
    let item = |name: &str| {
        json!({ "name": name, "common_name": format!("{name}.example.com"),
                "issuer_id": issuer, "target_ids": [target] })
    };
    let audits = || {
        count(
            &app.store,
            "SELECT COUNT(*) FROM audit_events WHERE action = 'certificate.create'",
        )
    };
    let (rows_before, audits_before) = (certificate_rows(&app.store).await, audits().await);
    let mut with_bad_cn = item("c");
    with_bad_cn["common_name"] = json!("bad_name!");
    let mut no_issuer = item("b");
    no_issuer["issuer_id"] = json!("nope");
    let mut retired_target = item("a");
    retired_target["target_ids"] = json!([retired]);
    let mut unknown_field = item("b");
    unknown_field["colour"] = json!("blue");
    let too_many: Vec<Value> = (0..1001).map(|i| item(&format!("n{i}"))).collect();
    let cases: Vec<(&str, Value, StatusCode, Option<&str>)> = vec![
        (
            "no items",
            json!({ "certificates": [] }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("certificates"),
        ),
        (
            "1,001 items",
            json!({ "certificates": too_many }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("certificates"),
        ),
        (
            "bad common name",
            json!({ "certificates": [item("a"), item("b"), with_bad_cn] }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("certificates[2]"),
        ),
        (
            "unknown issuer",
            json!({ "certificates": [item("a"), no_issuer] }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("certificates[1].issuer_id"),
        ),
        (
            "retired target",
            json!({ "certificates": [retired_target, item("b")] }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("certificates[0].target_ids"),
        ),
        (
            "name twice in the batch",
            json!({ "certificates": [item("a"), item("b"), item("a")] }),
            StatusCode::CONFLICT,
            Some("certificates[2].name"),
        ),
        // Only the database knows this one: the first two items are
        // written before the third's INSERT fails, and must be undone.
        (
            "name already taken",
            json!({ "certificates": [item("a"), item("b"), item("taken")] }),
            StatusCode::CONFLICT,
            None,
        ),
        (
            "unknown field",
            json!({ "certificates": [item("a"), unknown_field] }),
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
        (
            "not a list",
            json!({ "certificates": item("a") }),
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
    ];
    for (what, request, status, param) in cases {
        let r = app
            .post("/api/v1/certificates/batch", &app.operator, request)
            .await;
        assert_eq!(r.status, status, "{what}: {}", r.text);
        if let Some(param) = param {
            assert_eq!(r.json["error"]["param"], param, "{what}: {}", r.text);
        }
        assert_eq!(
            certificate_rows(&app.store).await,
            rows_before,
            "{what}: a row was left"
        );
        assert_eq!(
            audits().await,
            audits_before,
            "{what}: an audit row was left"
        );
    }
    let r = app.get("/api/v1/certificates/batch", &app.reader).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{}", r.text);

    let r = app
        .post(
            "/api/v1/certificates/batch",
            &app.reader,
            json!({ "certificates": [item("a")] }),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "a read-only key: {}",
        r.text
    );

    // Every third item goes to a second target as well.
    let second = fixtures::target(&app.store, "host", "second").await.id;
    let names: Vec<String> = (0..50).map(|i| format!("bulk-{:02}", 49 - i)).collect();
    let items: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut item = item(n);
            if i % 3 == 0 {
                item["target_ids"] = json!([target, second]);
            }
            item
        })
        .collect();
    let r = app
        .post(
            "/api/v1/certificates/batch",
            &app.operator,
            json!({ "certificates": items }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let created = r.json["items"].as_array().expect("items");
    let got: Vec<&str> = created
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(got, names, "the answer keeps the request's order");
    for (i, c) in created.iter().enumerate() {
        let mut targets: Vec<&str> = c["target_ids"]
            .as_array()
            .expect("target_ids")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        targets.sort_unstable();
        let mut expected = vec![target.as_str()];
        if i % 3 == 0 {
            expected.push(second.as_str());
            expected.sort_unstable();
        }
        assert_eq!(targets, expected, "{c}");
        assert_eq!(c["key_source"], "host", "{c}");
        let shown = app
            .get(
                &format!("/api/v1/certificates/{}", c["id"].as_str().unwrap()),
                &app.reader,
            )
            .await;
        assert_eq!(shown.status, StatusCode::OK, "{}", shown.text);
        assert_eq!(shown.json["common_name"], c["common_name"]);
    }
    assert_eq!(certificate_rows(&app.store).await, rows_before + 50);
    assert_eq!(
        audits().await,
        audits_before + 50,
        "one audit row per certificate"
    );
}

both_backends!(
    batch_create_is_all_or_nothing,
    connector_options,
    update_and_retire,
    certificate_crud,
    key_source_follows_the_target,
    invalid_bodies_change_nothing,
    renew_now,
    revoke,
    list_etag_changes,
    create_parser_never_fails_badly,
);
