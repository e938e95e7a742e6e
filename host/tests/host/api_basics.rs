//! Cross-cutting API behaviour: envelope, request ids, auth scopes, limits,
//! ETags, the OpenAPI document.

use axum::http::{Method, StatusCode};
use certplane_testkit::Backend;
use certplane_testkit::app::{TestApp, error_code};
use serde_json::json;

#[tokio::test]
async fn unknown_routes_and_methods_get_the_envelope() {
    let app = TestApp::new(Backend::Sqlite).await;
    let r = app.get("/api/v1/nope", &app.admin).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&r), "not_found");
    let r = app
        .call(Method::DELETE, "/api/v1/plugins", Some(&app.admin), None)
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(&r), "method_not_allowed");
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = TestApp::new(Backend::Sqlite).await;
    let req = axum::http::Request::builder()
        .uri("/api/v1/plugins")
        .header("x-request-id", "abc-123")
        .body(axum::body::Body::empty())
        .unwrap();
    let r = app.send(req).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json["error"]["request_id"], "abc-123");
    let r = app.get("/api/v1/plugins", &app.reader).await;
    assert!(r.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn authentication_and_scopes() {
    let app = TestApp::new(Backend::Sqlite).await;
    let r = app.call(Method::GET, "/api/v1/plugins", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&r), "unauthorized");
    let r = app.get("/api/v1/plugins", "cpk_not-a-real-key").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = app.get("/api/v1/plugins", "Basic-ish").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    for key in [&app.reader, &app.operator, &app.admin] {
        let r = app.get("/api/v1/plugins", key).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
}

#[tokio::test]
async fn plugin_list_has_etags() {
    let app = TestApp::new(Backend::Sqlite).await;
    let r = app.get("/api/v1/plugins", &app.reader).await;
    assert_eq!(r.status, StatusCode::OK);
    let names: Vec<&str> = r.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"local-ca") && names.contains(&"pem-files"),
        "{names:?}"
    );
    let local_ca = r.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "local-ca")
        .unwrap();
    assert_eq!(local_ca["kind"], "issuer");
    assert_eq!(local_ca["world_version"], "1.1.0");
    assert_eq!(local_ca["sha256"].as_str().unwrap().len(), 64);
    let etag = r.headers["etag"].to_str().unwrap().to_string();
    let req = axum::http::Request::builder()
        .uri("/api/v1/plugins")
        .header("authorization", format!("Bearer {}", app.reader))
        .header("if-none-match", &etag)
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(app.send(req).await.status, StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_413() {
    let app = TestApp::with_config(Backend::Sqlite, |c| c.api.max_body_bytes = 1024).await;
    let big = json!({ "padding": "x".repeat(4096) });
    // Any JSON-accepting endpoint: agent registration is public.
    let r = app
        .call(Method::POST, "/api/v1/agents/register", None, Some(big))
        .await;
    assert!(
        r.status == StatusCode::PAYLOAD_TOO_LARGE || r.status == StatusCode::NOT_FOUND,
        "{}: {}",
        r.status,
        r.text
    );
    error_code(&r);
}

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let app = TestApp::new(Backend::Sqlite).await;
    let r = app
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let paths = r.json["paths"].as_object().expect("paths");
    assert!(
        paths.contains_key("/api/v1/plugins"),
        "{:?}",
        paths.keys().collect::<Vec<_>>()
    );
    // Every documented path answers something other than the 404 fallback
    // (methods and auth aside), so the document cannot drift from the router.
    for (path, item) in paths {
        let concrete = path.replace(['{', '}'], "");
        for method in item.as_object().unwrap().keys() {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = app.call(m.clone(), &concrete, None, None).await;
            assert!(
                !(r.status == StatusCode::NOT_FOUND
                    && r.json["error"]["message"] == "no such endpoint"),
                "{m} {path} is documented but not routed"
            );
        }
    }
}

/// The envelope always has all five fields; deserializer complaints name
/// the field in `param` and the message; a duplicate name is `name_taken`,
/// a wrong state `invalid_state`, and structured context sits in
/// `error.details`.
async fn error_envelope_is_specific(backend: Backend) {
    let app = TestApp::new(backend).await;
    let issuer = certplane_testkit::fixtures::issuer(&app.store).await;
    let fields = |r: &certplane_testkit::app::Reply| {
        let err = r.json["error"].as_object().cloned().unwrap_or_default();
        let mut keys: Vec<String> = err.keys().cloned().collect();
        keys.sort();
        keys
    };
    let all = ["code", "details", "message", "param", "request_id"];

    // A wrongly typed field inside an array.
    let r = app
        .post(
            "/api/v1/certificates",
            &app.operator,
            json!({ "name": "a", "common_name": "a.example.com", "issuer_id": issuer.id, "sans": ["ok.example.com", 7] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(error_code(&r), "validation_failed");
    assert_eq!(r.json["error"]["param"], "sans[1]", "{}", r.text);
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`sans[1]`"),
        "{}",
        r.text
    );
    assert_eq!(fields(&r), all);

    // A missing field.
    let r = app
        .post(
            "/api/v1/certificates",
            &app.operator,
            json!({ "name": "a" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert!(r.json["error"]["param"].is_string(), "{}", r.text);

    // A query parameter that does not parse.
    let r = app
        .get("/api/v1/certificates?per_page=lots", &app.reader)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.json["error"]["param"], "per_page", "{}", r.text);
    assert_eq!(fields(&r), all);

    // The same name twice.
    let body = json!({ "name": "dup", "common_name": "dup.example.com", "issuer_id": issuer.id });
    let r = app
        .post("/api/v1/certificates", &app.operator, body.clone())
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = app.post("/api/v1/certificates", &app.operator, body).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(error_code(&r), "name_taken");
    assert_eq!(fields(&r), all);

    // An error without a field or context still carries both, as null.
    let r = app.get("/api/v1/nope", &app.reader).await;
    assert_eq!(fields(&r), all);
    assert!(r.json["error"]["param"].is_null() && r.json["error"]["details"].is_null());
}

certplane_testkit::both_backends!(error_envelope_is_specific);
