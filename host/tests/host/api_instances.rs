//! `/issuers`, `/targets`, `/notifiers`: CRUD, plugin validation before
//! saving, secrets never returned, scopes, ETags, "in use" refusals. Every
//! scenario runs on SQLite and PostgreSQL.

use axum::http::{Method, StatusCode};
use certplane_host::store::{CertificateStatus, KeySource, NewNotification, NewPluginInstance};
use certplane_testkit::app::{Reply, TestApp, error_code};
use certplane_testkit::both_backends;
use certplane_testkit::{Backend, count, fixtures};
use serde_json::{Value, json};

use certplane_testkit::test_ca;

fn issuer_body(name: &str, ca: &(String, String)) -> Value {
    json!({
        "name": name,
        "plugin": "local-ca",
        "settings": { "ca_certificate_pem": ca.0, "validity_days": 30 },
        "secrets": { "ca_private_key_pem": ca.1 },
    })
}

/// Asserts the response carries no secret material.
fn assert_no_secret(r: &Reply, secret: &str) {
    let key_body: String = secret.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!r.text.contains(&key_body), "secret leaked: {}", r.text);
    assert!(!r.text.contains("PRIVATE KEY"), "secret leaked: {}", r.text);
    assert!(!r.text.contains("encrypted_secrets"), "{}", r.text);
    assert!(!r.text.contains("v1:"), "sealed value leaked: {}", r.text);
}

async fn total(app: &TestApp, path: &str) -> u64 {
    let r = app.get(path, &app.reader).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json["total"].as_u64().expect("total")
}

async fn patch(app: &TestApp, path: &str, token: &str, body: Value) -> Reply {
    app.call(Method::PATCH, path, Some(token), Some(body)).await
}

async fn delete(app: &TestApp, path: &str, token: &str) -> Reply {
    app.call(Method::DELETE, path, Some(token), None).await
}

async fn raw(app: &TestApp, method: Method, path: &str, token: &str, body: String) -> Reply {
    let req = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body))
        .unwrap();
    app.send(req).await
}

async fn issuer_crud(backend: Backend) {
    let app = TestApp::new(backend).await;
    let ca = test_ca();
    let r = app
        .post("/api/v1/issuers", &app.operator, issuer_body("ca-one", &ca))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_no_secret(&r, &ca.1);
    assert_eq!(r.json["kind"], "issuer");
    assert_eq!(r.json["plugin"], "local-ca");
    assert_eq!(r.json["secret_names"], json!(["ca_private_key_pem"]));
    assert_eq!(r.json["settings"]["validity_days"], 30);
    let id = r.json["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/issuers/{id}");

    // Stored sealed, not in clear text.
    let row = app.store.get_issuer(&id).await.unwrap().unwrap();
    let sealed = String::from_utf8(row.encrypted_secrets.clone().unwrap()).unwrap();
    assert!(!sealed.contains(&ca.1[40..80]));

    let r = app.get(&path, &app.reader).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_no_secret(&r, &ca.1);
    assert_eq!(r.json["name"], "ca-one");
    let r = app.get("/api/v1/issuers", &app.reader).await;
    assert_eq!(r.json["total"], 1);
    assert_no_secret(&r, &ca.1);

    // Duplicate name: 409, nothing added.
    let r = app
        .post("/api/v1/issuers", &app.operator, issuer_body("ca-one", &ca))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(total(&app, "/api/v1/issuers").await, 1);

    // Update settings (re-validated with the stored secret).
    let r = patch(
        &app,
        &path,
        &app.operator,
        json!({ "settings": { "ca_certificate_pem": ca.0, "validity_days": 10 } }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["settings"]["validity_days"], 10);
    assert_eq!(r.json["secret_names"], json!(["ca_private_key_pem"]));
    assert_no_secret(&r, &ca.1);

    // Bad settings in an update: the connector's message, nothing changed.
    let r = patch(
        &app,
        &path,
        &app.operator,
        json!({ "settings": { "ca_certificate_pem": "not a pem", "validity_days": 10 } }),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(error_code(&r), "validation_failed");
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("local-ca"),
        "{}",
        r.text
    );
    // Removing the key makes the configuration invalid too.
    let r = patch(
        &app,
        &path,
        &app.operator,
        json!({ "secrets": { "ca_private_key_pem": null } }),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let r = app.get(&path, &app.reader).await;
    assert_eq!(r.json["settings"]["validity_days"], 10);
    assert_eq!(r.json["secret_names"], json!(["ca_private_key_pem"]));

    // Rotating to another CA (settings and secret together) works.
    let ca2 = test_ca();
    let r = patch(
        &app,
        &path,
        &app.operator,
        json!({ "settings": { "ca_certificate_pem": ca2.0 },
                "secrets": { "ca_private_key_pem": ca2.1 } }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_no_secret(&r, &ca2.1);

    // DELETE retires: still readable, hidden from the list, idempotent.
    let r = delete(&app, &path, &app.operator).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.json["retired_at"].is_string(), "{}", r.text);
    let r = app.get(&path, &app.reader).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.json["retired_at"].is_string(), "{}", r.text);
    assert_eq!(total(&app, "/api/v1/issuers").await, 0);
    let r = delete(&app, &path, &app.operator).await;
    assert_eq!(r.status, StatusCode::OK);

    let audited = count(
        &app.store,
        &format!(
            "SELECT COUNT(*) FROM audit_events WHERE subject_type = 'issuer' AND subject_id = '{id}'
             AND actor = 'apikey:operator'"
        ),
    )
    .await;
    assert_eq!(audited, 4, "create, two updates, retire");
    let leaked = count(
        &app.store,
        &format!(
            "SELECT COUNT(*) FROM audit_events WHERE CAST(details AS TEXT) LIKE '%{}%'",
            &ca.1[40..70]
        ),
    )
    .await;
    assert_eq!(leaked, 0);
}

async fn issuer_validation_errors_change_nothing(backend: Backend) {
    let app = TestApp::new(backend).await;
    let ca = test_ca();
    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        (
            "unknown plugin",
            json!({ "name": "x", "plugin": "nope" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no issuer plugin named nope",
        ),
        (
            "wrong kind",
            json!({ "name": "x", "plugin": "pem-files" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "not a issuer",
        ),
        (
            "bad settings",
            json!({ "name": "x", "plugin": "local-ca",
                    "settings": { "ca_certificate_pem": "garbage" },
                    "secrets": { "ca_private_key_pem": ca.1 } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid configuration",
        ),
        (
            "missing secret",
            json!({ "name": "x", "plugin": "local-ca",
                    "settings": { "ca_certificate_pem": ca.0 } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid configuration",
        ),
        (
            "unknown secret name",
            json!({ "name": "x", "plugin": "local-ca", "secrets": { "other": "v" } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no secret named",
        ),
        (
            "settings not an object",
            json!({ "name": "x", "plugin": "local-ca", "settings": [1, 2] }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "settings must be a JSON object",
        ),
        (
            "wrong type",
            json!({ "name": 5, "plugin": "local-ca" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "",
        ),
        (
            "secret not a string",
            json!({ "name": "x", "plugin": "local-ca", "secrets": { "ca_private_key_pem": 1 } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "",
        ),
        (
            "unknown field",
            json!({ "name": "x", "plugin": "local-ca", "colour": "blue" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "colour",
        ),
        (
            "unknown grant field",
            json!({ "name": "x", "plugin": "local-ca", "grants": { "ports": [1] } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "ports",
        ),
        (
            "directories on an issuer",
            json!({ "name": "x", "plugin": "local-ca",
                    "grants": { "directories": [{ "path": "/tmp", "guest_path": "/t" }] } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "only apply to targets",
        ),
        (
            "bad host grant",
            json!({ "name": "x", "plugin": "local-ca", "grants": { "hosts": ["http://a b"] } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "host grant",
        ),
        (
            "agent_id on an issuer",
            json!({ "name": "x", "plugin": "local-ca", "agent_id": "host" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "only applies to targets",
        ),
        (
            "bad name",
            json!({ "name": "no spaces please", "plugin": "local-ca" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name must be",
        ),
        (
            "settings outside the schema",
            json!({ "name": "x", "plugin": "local-ca",
                    "settings": { "ca_certificate_pem": "x", "validity_days": "long" } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "settings.validity_days",
        ),
        (
            "a required setting missing",
            json!({ "name": "x", "plugin": "local-ca", "settings": { "validity_days": 30 } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "\"ca_certificate_pem\" is a required property",
        ),
        (
            "huge settings",
            json!({ "name": "x", "plugin": "local-ca",
                    "settings": { "pad": "x".repeat(70 * 1024) } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "bytes",
        ),
        (
            "too many secrets",
            json!({ "name": "x", "plugin": "local-ca",
                    "secrets": (0..40).map(|i| (format!("s{i}"), json!("v")))
                        .collect::<serde_json::Map<_, _>>() }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "secrets",
        ),
    ];
    for (what, body, status, message) in cases {
        let r = app.post("/api/v1/issuers", &app.operator, body).await;
        assert_eq!(r.status, status, "{what}: {}", r.text);
        error_code(&r);
        assert!(
            r.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains(message),
            "{what}: {}",
            r.text
        );
        assert_no_secret(&r, &ca.1);
        assert_eq!(
            total(&app, "/api/v1/issuers").await,
            0,
            "{what} created a row"
        );
    }
    // Malformed JSON: 400.
    let r = raw(
        &app,
        Method::POST,
        "/api/v1/issuers",
        &app.operator,
        "{\"name\": ".into(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(error_code(&r), "bad_request");
    // Absurd body: 413.
    let big = format!(
        "{{\"name\": \"x\", \"plugin\": \"{}\"}}",
        "p".repeat(2 * 1024 * 1024)
    );
    let r = raw(&app, Method::POST, "/api/v1/issuers", &app.operator, big).await;
    assert_eq!(
        r.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        &r.text[..r.text.len().min(300)]
    );
    error_code(&r);
    // Wrong content type: 415.
    let r = app
        .send(
            axum::http::Request::builder()
                .method(Method::POST)
                .uri("/api/v1/issuers")
                .header("authorization", format!("Bearer {}", app.operator))
                .body(axum::body::Body::from(issuer_body("x", &ca).to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    error_code(&r);
    assert_eq!(total(&app, "/api/v1/issuers").await, 0);
    assert_eq!(count(&app.store, "SELECT COUNT(*) FROM issuers").await, 0);
    assert_eq!(
        count(
            &app.store,
            "SELECT COUNT(*) FROM audit_events WHERE subject_type = 'issuer'"
        )
        .await,
        0
    );

    // PATCH validation on an existing issuer leaves it unchanged.
    let r = app
        .post("/api/v1/issuers", &app.operator, issuer_body("ca", &ca))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let path = format!("/api/v1/issuers/{}", r.json["id"].as_str().unwrap());
    let before = app.get(&path, &app.reader).await.json;
    for body in [
        json!({ "name": "renamed" }),
        json!({ "settings": "x" }),
        json!({ "secrets": { "ca_private_key_pem": 5 } }),
        json!({ "grants": { "directories": [{ "path": "/tmp", "guest_path": "/t" }] } }),
    ] {
        let r = patch(&app, &path, &app.operator, body.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.text
        );
        error_code(&r);
    }
    let r = raw(&app, Method::PATCH, &path, &app.operator, "[".into()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(app.get(&path, &app.reader).await.json, before);
    let r = patch(&app, "/api/v1/issuers/nope", &app.operator, json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

async fn scopes_are_enforced(backend: Backend) {
    let app = TestApp::new(backend).await;
    let ca = test_ca();
    let r = app
        .post("/api/v1/issuers", &app.reader, issuer_body("ca", &ca))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(error_code(&r), "forbidden");
    let r = app
        .call(
            Method::POST,
            "/api/v1/issuers",
            None,
            Some(issuer_body("ca", &ca)),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(total(&app, "/api/v1/issuers").await, 0);
    let r = app
        .post("/api/v1/issuers", &app.admin, issuer_body("ca", &ca))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let path = format!("/api/v1/issuers/{}", r.json["id"].as_str().unwrap());
    let r = patch(&app, &path, &app.reader, json!({ "settings": {} })).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = delete(&app, &path, &app.reader).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    for list in ["/api/v1/issuers", "/api/v1/targets", "/api/v1/notifiers"] {
        assert_eq!(app.get(list, &app.reader).await.status, StatusCode::OK);
        let r = app.post(list, &app.reader, json!({})).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{list}");
    }
    assert_eq!(app.get(&path, &app.reader).await.status, StatusCode::OK);
    assert_eq!(total(&app, "/api/v1/issuers").await, 1);
}

async fn lists_have_etags(backend: Backend) {
    let app = TestApp::new(backend).await;
    let ca = test_ca();
    let first = app.get("/api/v1/issuers?per_page=10", &app.reader).await;
    assert_eq!(first.status, StatusCode::OK);
    let etag = first.headers["etag"].to_str().unwrap().to_string();
    let conditional = |etag: String| {
        axum::http::Request::builder()
            .uri("/api/v1/issuers?per_page=10")
            .header("authorization", format!("Bearer {}", app.reader))
            .header("if-none-match", etag)
            .body(axum::body::Body::empty())
            .unwrap()
    };
    assert_eq!(
        app.send(conditional(etag.clone())).await.status,
        StatusCode::NOT_MODIFIED
    );
    let r = app
        .post("/api/v1/issuers", &app.operator, issuer_body("ca", &ca))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = app.send(conditional(etag)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["total"], 1);
    // Pagination bounds.
    let r = app.get("/api/v1/issuers?per_page=0", &app.reader).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = app.get("/api/v1/issuers?bogus=1", &app.reader).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    error_code(&r);
    let r = app
        .get("/api/v1/issuers?page=2&per_page=1", &app.reader)
        .await;
    assert_eq!(r.json["items"], json!([]));
    assert_eq!(r.json["total"], 1);
}

async fn targets_crud_and_in_use(backend: Backend) {
    let app = TestApp::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().display().to_string();
    let body = |name: &str| {
        json!({
            "name": name,
            "plugin": "pem-files",
            "settings": { "directory": "/certs" },
            "grants": { "directories": [{ "path": dir_path, "guest_path": "/certs", "writable": true }] },
        })
    };
    // Without the directory grant the connector cannot write: its message.
    let r = app
        .post(
            "/api/v1/targets",
            &app.operator,
            json!({ "name": "t0", "plugin": "pem-files", "settings": { "directory": "/certs" } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("pem-files"),
        "{}",
        r.text
    );
    // Settings outside the plugin's schema: refused before the connector
    // runs, the field named.
    let mut bad = body("t0");
    bad["settings"]["layout"] = json!("diagonal");
    let r = app.post("/api/v1/targets", &app.operator, bad).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let message = r.json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("schema") && message.contains("settings.layout"),
        "{}",
        r.text
    );
    let mut bad = body("t0");
    bad["settings"]["colour"] = json!("blue");
    let r = app.post("/api/v1/targets", &app.operator, bad).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert!(r.text.contains("colour"), "{}", r.text);
    // Settings the schema allows but the connector refuses: its
    // invalid-config message (the directory is not granted).
    let mut bad = body("t0");
    bad["settings"]["directory"] = json!("/elsewhere");
    let r = app.post("/api/v1/targets", &app.operator, bad).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("plugin pem-files"),
        "{}",
        r.text
    );
    // Relative grant path: 422 before any call.
    let mut bad = body("t0");
    bad["grants"]["directories"][0]["path"] = json!("relative/dir");
    let r = app.post("/api/v1/targets", &app.operator, bad).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    // Wrong kind, unknown agent.
    let r = app
        .post(
            "/api/v1/targets",
            &app.operator,
            json!({ "name": "t0", "plugin": "local-ca" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let mut bad = body("t0");
    bad["agent_id"] = json!("no-such-agent");
    let r = app.post("/api/v1/targets", &app.operator, bad).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(total(&app, "/api/v1/targets").await, 0);

    let r = app
        .post("/api/v1/targets", &app.operator, body("web"))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["agent_id"], "host");
    assert_eq!(r.json["grants"]["directories"][0]["writable"], true);
    assert_eq!(r.json["secret_names"], json!([]));
    let id = r.json["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/targets/{id}");
    assert_eq!(total(&app, "/api/v1/targets").await, 1);

    // PATCH re-validates: a read-only grant cannot be written to.
    let r = patch(
        &app,
        &path,
        &app.operator,
        json!({ "grants": { "directories": [{ "path": dir_path, "guest_path": "/certs", "writable": false }] } }),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let r = patch(
        &app,
        &path,
        &app.operator,
        json!({ "settings": { "directory": "/certs", "layout": "combined" } }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["settings"]["layout"], "combined");

    // A target on a remote agent is validated by that agent, not here.
    let agent = fixtures::agent(&app.store, "edge-1").await;
    let mut remote = body("remote");
    remote["agent_id"] = json!(agent.id);
    remote["grants"]["directories"][0]["path"] = json!("/srv/certs-on-the-agent");
    let r = app.post("/api/v1/targets", &app.operator, remote).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["agent_id"], agent.id.as_str());
    assert_eq!(total(&app, "/api/v1/targets").await, 2);

    // In use by a certificate: 409 for the target and the issuer.
    let issuer = fixtures::issuer(&app.store).await;
    let cert = fixtures::certificate(&app.store, &issuer.id, Some(&id), KeySource::Host).await;
    let r = delete(&app, &path, &app.operator).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(error_code(&r), "invalid_state");
    assert_eq!(r.json["error"]["details"]["counts"]["certificates"], 1);
    let r = delete(
        &app,
        &format!("/api/v1/issuers/{}", issuer.id),
        &app.operator,
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(total(&app, "/api/v1/targets").await, 2);
    assert_eq!(total(&app, "/api/v1/issuers").await, 1);

    // Once the certificate is retired, the target can go (it is retired).
    app.store
        .set_certificate_status(&cert.id, CertificateStatus::Retired)
        .await
        .unwrap();
    let r = delete(&app, &path, &app.operator).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(total(&app, "/api/v1/targets").await, 1);
    assert_eq!(total(&app, "/api/v1/targets?include_retired=true").await, 2);
    let r = app.get(&path, &app.reader).await;
    assert!(r.json["retired_at"].is_string(), "{}", r.text);
    let r = patch(&app, &path, &app.operator, json!({ "settings": {} })).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    // Only a retired certificate names the issuer: it can be retired
    // (the certificate's versions keep naming it).
    let r = delete(
        &app,
        &format!("/api/v1/issuers/{}", issuer.id),
        &app.operator,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let audited = count(
        &app.store,
        &format!("SELECT COUNT(*) FROM audit_events WHERE subject_type = 'target' AND subject_id = '{id}'"),
    )
    .await;
    assert_eq!(audited, 3);
}

async fn notifiers_list_get_delete(backend: Backend) {
    let app = TestApp::new(backend).await;
    // No notifier plugin is packaged: creation is refused with the reason.
    let r = app
        .post(
            "/api/v1/notifiers",
            &app.operator,
            json!({ "name": "n", "plugin": "local-ca" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a notifier"),
        "{}",
        r.text
    );
    assert_eq!(total(&app, "/api/v1/notifiers").await, 0);

    let n = app
        .store
        .create_notifier(NewPluginInstance::new("retired", "retired-chat", "1.0.0"))
        .await
        .unwrap();
    let path = format!("/api/v1/notifiers/{}", n.id);
    let r = app.get(&path, &app.reader).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["kind"], "notifier");
    assert_eq!(total(&app, "/api/v1/notifiers").await, 1);
    // The plugin is not loaded: its configuration cannot be validated.
    let r = patch(&app, &path, &app.operator, json!({ "settings": {} })).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);

    app.store
        .enqueue_notification(NewNotification {
            notifier_id: n.id.clone(),
            event_type: "test".into(),
            subject: None,
            payload: json!({}),
            max_attempts: 3,
        })
        .await
        .unwrap();
    let r = delete(&app, &path, &app.operator).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(
        r.json["error"]["details"]["counts"]["open_notifications"],
        1
    );
    assert_eq!(total(&app, "/api/v1/notifiers").await, 1);
    certplane_testkit::exec(&app.store, "UPDATE notifications SET status = 'sent'").await;
    let r = delete(&app, &path, &app.operator).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(total(&app, "/api/v1/notifiers").await, 0);
    // Retired, not erased: its delivery history stays.
    assert_eq!(
        count(&app.store, "SELECT COUNT(*) FROM notifications").await,
        1
    );
}

/// Instance lists page in SQL: the page, its size and the total agree with
/// the name order, for targets with and without the retired ones.
async fn lists_page_in_sql(backend: Backend) {
    let app = TestApp::new(backend).await;
    for name in ["c", "a", "b"] {
        fixtures::target(&app.store, "host", name).await;
        app.store
            .create_issuer(NewPluginInstance::new(
                format!("iss-{name}"),
                "local-ca",
                "1.0.0",
            ))
            .await
            .unwrap();
    }
    let r = app
        .get("/api/v1/targets?per_page=2&page=1", &app.reader)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["total"], 3);
    let names: Vec<&str> = r.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2);
    assert!(names[0] < names[1], "{names:?}");
    let r = app
        .get("/api/v1/targets?per_page=2&page=2", &app.reader)
        .await;
    assert_eq!(r.json["items"].as_array().unwrap().len(), 1);
    assert_eq!(r.json["page"], 2);
    let r = app
        .get("/api/v1/targets?per_page=2&page=3", &app.reader)
        .await;
    assert_eq!(r.json["items"].as_array().unwrap().len(), 0);
    assert_eq!(r.json["total"], 3);
    let r = app
        .get("/api/v1/issuers?per_page=1&page=3", &app.reader)
        .await;
    assert_eq!(r.json["items"][0]["name"], "iss-c");
    assert_eq!(r.json["total"], 3);
    let r = app.get("/api/v1/issuers?per_page=0", &app.reader).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    error_code(&r);
}

both_backends!(
    issuer_crud,
    lists_page_in_sql,
    issuer_validation_errors_change_nothing,
    scopes_are_enforced,
    lists_have_etags,
    targets_crud_and_in_use,
    notifiers_list_get_delete,
);
