//! Authentication and API keys: the bearer scheme in any case, the
//! challenge on every 401, `Retry-After` on every 429, API keys as a
//! resource (create, use, list, show, revoke; never a secret or hash in
//! an answer; the last admin key kept), and the optional `/metrics` token.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use certplane_host::api::auth::hash_token;
use certplane_host::store::{ApiScope, NewApiKey};
use certplane_testkit::app::{BOOTSTRAP, Reply, TestApp, error_code};
use certplane_testkit::{Backend, both_backends, count, exec};
use chrono::{Duration, Utc};
use serde_json::{Value, json};

const CHALLENGE: &str = "Bearer realm=\"certplane\"";
const INVALID_TOKEN: &str = "Bearer realm=\"certplane\", error=\"invalid_token\"";
const INVALID_REQUEST: &str = "Bearer realm=\"certplane\", error=\"invalid_request\"";

/// `method path` with the `Authorization` header exactly as given.
async fn with_authorization(
    app: &TestApp,
    method: Method,
    path: &str,
    authorization: Option<&str>,
) -> Reply {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(value) = authorization {
        builder = builder.header("authorization", value);
    }
    app.send(builder.body(Body::empty()).unwrap()).await
}

fn challenge(reply: &Reply) -> &str {
    reply
        .headers
        .get("www-authenticate")
        .unwrap_or_else(|| panic!("no WWW-Authenticate on {}: {}", reply.status, reply.text))
        .to_str()
        .unwrap()
}

/// Asserts a 401 in the envelope with the given challenge.
fn assert_401(reply: &Reply, expected_challenge: &str) {
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
    assert_eq!(error_code(reply), "unauthorized");
    assert_eq!(challenge(reply), expected_challenge, "{}", reply.text);
}

/// `Retry-After` of a 429, checked against the envelope's details.
fn retry_after(reply: &Reply) -> u64 {
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        reply.text
    );
    assert_eq!(error_code(reply), "rate_limited");
    let secs: u64 = reply
        .headers
        .get("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {}", reply.text))
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is whole seconds");
    assert!(secs >= 1, "Retry-After {secs}");
    assert_eq!(
        reply.json["error"]["details"]["retry_after_secs"].as_u64(),
        Some(secs),
        "header and body agree: {}",
        reply.text
    );
    secs
}

async fn register_agent(app: &TestApp, name: &str) -> String {
    let r = app
        .call(
            Method::POST,
            "/api/v1/agents/register",
            None,
            Some(json!({ "name": name, "bootstrap_token": BOOTSTRAP })),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.json["credential"].as_str().unwrap().to_owned()
}

/// Creates a key through the API; returns (id, secret, body).
async fn create_key(app: &TestApp, name: &str, scope: &str) -> (String, String, Value) {
    let r = app
        .post(
            "/api/v1/api-keys",
            &app.admin,
            json!({ "name": name, "scope": scope }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.json["id"].as_str().unwrap().to_owned();
    let secret = r.json["secret"].as_str().unwrap().to_owned();
    (id, secret, r.json)
}

/// The id of the key named `name` in the admin's list.
async fn id_of(app: &TestApp, name: &str) -> String {
    let r = app.get("/api/v1/api-keys?per_page=500", &app.admin).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == name)
        .unwrap_or_else(|| panic!("no key {name}: {}", r.text))["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// No answer about keys may hold a secret, a hash, or their fields.
fn assert_no_secrets(reply: &Reply, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !reply.text.contains(secret),
            "secret leaked: {}",
            reply.text
        );
        assert!(
            !reply.text.contains(&hash_token(secret)),
            "hash leaked: {}",
            reply.text
        );
    }
    for field in ["\"secret\"", "\"key_hash\"", "\"hash\""] {
        assert!(!reply.text.contains(field), "{field} in {}", reply.text);
    }
}

async fn the_bearer_scheme_is_case_insensitive(backend: Backend) {
    let app = TestApp::new(backend).await;
    for value in [
        format!("bearer {}", app.reader),
        format!("BEARER {}", app.reader),
        format!("Bearer    {}  ", app.reader),
    ] {
        let r = with_authorization(&app, Method::GET, "/api/v1/plugins", Some(&value)).await;
        assert_eq!(r.status, StatusCode::OK, "{value:?}: {}", r.text);
    }
    // Agents' credentials go through the same parser.
    let credential = register_agent(&app, "lower-case").await;
    let r = with_authorization(
        &app,
        Method::POST,
        "/api/v1/agents/heartbeat",
        Some(&format!("bearer  {credential}")),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

async fn every_401_carries_its_challenge(backend: Backend) {
    let app = TestApp::new(backend).await;
    let plugins = "/api/v1/plugins";
    assert_401(
        &with_authorization(&app, Method::GET, plugins, None).await,
        CHALLENGE,
    );
    assert_401(
        &with_authorization(&app, Method::GET, plugins, Some("Basic dXNlcjpwdw==")).await,
        CHALLENGE,
    );
    for malformed in ["Bearer", "Bearer cpk_a cpk_b", "Bearer cpk_\"x\""] {
        assert_401(
            &with_authorization(&app, Method::GET, plugins, Some(malformed)).await,
            INVALID_REQUEST,
        );
    }
    for wrong in ["Bearer cpk_not-a-real-key", "bearer something-else"] {
        assert_401(
            &with_authorization(&app, Method::GET, plugins, Some(wrong)).await,
            INVALID_TOKEN,
        );
    }
    // Agents: no credential, a wrong one.
    let heartbeat = "/api/v1/agents/heartbeat";
    assert_401(
        &with_authorization(&app, Method::POST, heartbeat, None).await,
        CHALLENGE,
    );
    let credential = register_agent(&app, "challenged").await;
    let (prefix, _) = credential.rsplit_once('.').unwrap();
    let forged = format!("Bearer {prefix}.wrong-secret");
    assert_401(
        &with_authorization(&app, Method::POST, heartbeat, Some(&forged)).await,
        INVALID_TOKEN,
    );
    // Registration refuses an unknown bootstrap token with a 401 too.
    let r = app
        .call(
            Method::POST,
            "/api/v1/agents/register",
            None,
            Some(json!({ "name": "x", "bootstrap_token": "wrong" })),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    assert!(challenge(&r).starts_with(CHALLENGE), "{}", challenge(&r));
    // An expired key and a revoked key: invalid_token.
    let (expired, hash) = certplane_host::api::auth::new_api_key();
    app.store
        .create_api_key(NewApiKey {
            name: "expired".into(),
            key_hash: hash,
            scopes: vec![ApiScope::Admin],
            expires_at: Some(Utc::now() - Duration::seconds(1)),
        })
        .await
        .unwrap();
    let r = app.get(plugins, &expired).await;
    assert_401(&r, INVALID_TOKEN);
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    let (id, revoked, _) = create_key(&app, "to-revoke", "read_only").await;
    let r = app
        .call(
            Method::DELETE,
            &format!("/api/v1/api-keys/{id}"),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app.get(plugins, &revoked).await;
    assert_401(&r, INVALID_TOKEN);
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );
}

async fn keys_are_created_used_listed_and_revoked(backend: Backend) {
    let app = TestApp::new(backend).await;
    let (id, secret, created) = create_key(&app, "ci", "operator").await;
    assert!(secret.starts_with("cpk_"), "{secret}");
    assert_eq!(created["scope"], "operator");
    assert_eq!(created["status"], "active");
    assert_eq!(created["key_prefix"], secret[..8]);
    assert!(created["last_used_at"].is_null());
    assert!(created["revoked_at"].is_null());
    assert_eq!(created["created_by"], "apikey:admin");
    assert!(created.get("key_hash").is_none(), "{created}");

    // Used: recorded, and the list shows it without secrets.
    let r = app.get("/api/v1/jobs", &secret).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let list = app.get("/api/v1/api-keys", &app.admin).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert_no_secrets(&list, &[&secret, &app.admin, &app.operator, &app.reader]);
    let names: Vec<&str> = list.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ci", "reader", "operator", "admin"], "newest first");
    assert_eq!(list.json["total"], 4);
    let item = &list.json["items"][0];
    assert_eq!(item["id"], id.as_str());
    assert!(item["last_used_at"].is_string(), "{item}");
    let shown = app.get(&format!("/api/v1/api-keys/{id}"), &app.admin).await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.text);
    assert_no_secrets(&shown, &[&secret]);
    assert_eq!(&shown.json, item);
    let paged = app
        .get("/api/v1/api-keys?per_page=1&page=2", &app.admin)
        .await;
    assert_eq!(paged.json["items"][0]["name"], "reader", "{}", paged.text);
    assert_eq!(paged.json["total"], 4);

    // Revoked: refused at once, still listed, and a repeat answers the same.
    let path = format!("/api/v1/api-keys/{id}");
    let revoked = app
        .call(Method::DELETE, &path, Some(&app.admin), None)
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text);
    assert_no_secrets(&revoked, &[&secret]);
    assert_eq!(revoked.json["status"], "revoked");
    assert!(revoked.json["revoked_at"].is_string());
    let r = app.get("/api/v1/jobs", &secret).await;
    assert_401(&r, INVALID_TOKEN);
    let again = app
        .call(Method::DELETE, &path, Some(&app.admin), None)
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(
        again.json, revoked.json,
        "a repeated revoke changes nothing"
    );
    let shown = app.get(&path, &app.admin).await;
    assert_eq!(shown.json, revoked.json);
    let list = app.get("/api/v1/api-keys", &app.admin).await;
    assert_eq!(list.json["total"], 4, "revoked keys stay listed");
    let only = app.get("/api/v1/api-keys?status=revoked", &app.admin).await;
    assert_eq!(only.json["total"], 1, "{}", only.text);
    assert_eq!(only.json["items"][0]["id"], id.as_str());
    let active = app.get("/api/v1/api-keys?status=active", &app.admin).await;
    assert_eq!(active.json["total"], 3, "{}", active.text);
    let r = app.get("/api/v1/api-keys?status=gone", &app.admin).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.json["error"]["param"], "status");

    // One audit row per change, none for the repeat, no secret in them.
    let audit = app
        .get(
            &format!("/api/v1/audit?subject_type=api_key&subject_id={id}"),
            &app.admin,
        )
        .await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.text);
    assert_no_secrets(&audit, &[&secret]);
    let actions: Vec<&str> = audit.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["api_key.revoke", "api_key.create"]);
    for event in audit.json["items"].as_array().unwrap() {
        assert_eq!(event["actor"], "apikey:admin");
    }

    let r = app.get("/api/v1/api-keys/no-such-key", &app.admin).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = app
        .call(
            Method::DELETE,
            "/api/v1/api-keys/no-such-key",
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&r), "not_found");
}

async fn last_use_is_written_at_most_once_a_minute(backend: Backend) {
    let app = TestApp::new(backend).await;
    let (id, secret, _) = create_key(&app, "busy", "read_only").await;
    let r = app.get("/api/v1/plugins", &secret).await;
    assert_eq!(r.status, StatusCode::OK);
    let first = app.store.get_api_key(&id).await.unwrap().unwrap();
    let recorded = first.last_used_at.expect("first use recorded");
    let (_, writes_before) = app.store.operation_counts();
    for _ in 0..5 {
        let r = app.get("/api/v1/plugins", &secret).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let (_, writes_after) = app.store.operation_counts();
    assert_eq!(
        writes_after, writes_before,
        "uses within a minute write nothing"
    );
    let again = app.store.get_api_key(&id).await.unwrap().unwrap();
    assert_eq!(again.last_used_at, Some(recorded));
    // A use older than a minute is recorded anew.
    exec(
        &app.store,
        &format!(
            "UPDATE api_keys SET last_used_at = '2020-01-01T00:00:00.000000Z' WHERE id = '{id}'"
        ),
    )
    .await;
    let r = app.get("/api/v1/plugins", &secret).await;
    assert_eq!(r.status, StatusCode::OK);
    let later = app.store.get_api_key(&id).await.unwrap().unwrap();
    assert!(
        later.last_used_at.unwrap() >= recorded,
        "{:?}",
        later.last_used_at
    );
}

async fn the_last_admin_key_cannot_be_revoked(backend: Backend) {
    let app = TestApp::new(backend).await;
    let admin_id = id_of(&app, "admin").await;
    // An expired admin key does not count as one to fall back on.
    let (_, hash) = certplane_host::api::auth::new_api_key();
    app.store
        .create_api_key(NewApiKey {
            name: "old-admin".into(),
            key_hash: hash,
            scopes: vec![ApiScope::Admin],
            expires_at: Some(Utc::now() - Duration::days(1)),
        })
        .await
        .unwrap();
    let own = format!("/api/v1/api-keys/{admin_id}");
    let r = app.call(Method::DELETE, &own, Some(&app.admin), None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(error_code(&r), "invalid_state");
    assert_eq!(r.json["error"]["details"]["active_admin_keys"], 1);
    let r = app.get("/api/v1/plugins", &app.admin).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the refused revoke changed nothing"
    );
    let audit_rows = "SELECT COUNT(*) FROM audit_events WHERE action = 'api_key.revoke'";
    assert_eq!(count(&app.store, audit_rows).await, 0);

    // With a second admin key, a key may revoke itself; then the second is
    // the last one.
    let (second_id, second, _) = create_key(&app, "admin-2", "admin").await;
    let r = app.call(Method::DELETE, &own, Some(&app.admin), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_401(&app.get("/api/v1/plugins", &app.admin).await, INVALID_TOKEN);
    let r = app
        .call(
            Method::DELETE,
            &format!("/api/v1/api-keys/{second_id}"),
            Some(&second),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(error_code(&r), "invalid_state");
    assert_eq!(count(&app.store, audit_rows).await, 1);
    // Revoking the already revoked first key stays 200.
    let r = app.call(Method::DELETE, &own, Some(&second), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "revoked");
}

async fn only_admins_manage_keys(backend: Backend) {
    let app = TestApp::new(backend).await;
    let admin_id = id_of(&app, "admin").await;
    for key in [&app.reader, &app.operator] {
        let item = format!("/api/v1/api-keys/{admin_id}");
        let replies = [
            app.get("/api/v1/api-keys", key).await,
            app.get(&item, key).await,
            app.post(
                "/api/v1/api-keys",
                key,
                json!({ "name": "sneaky", "scope": "admin" }),
            )
            .await,
            app.call(Method::DELETE, &item, Some(key), None).await,
        ];
        for r in replies {
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
            assert_eq!(error_code(&r), "forbidden");
            assert_eq!(
                challenge(&r),
                "Bearer realm=\"certplane\", error=\"insufficient_scope\", scope=\"admin\""
            );
        }
    }
    let keys = "SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL";
    assert_eq!(
        count(&app.store, keys).await,
        3,
        "nothing created or revoked"
    );
}

async fn creation_is_validated(backend: Backend) {
    let app = TestApp::new(backend).await;
    let later = (Utc::now() + Duration::days(2)).to_rfc3339();
    let past = (Utc::now() - Duration::days(2)).to_rfc3339();
    for (body, param) in [
        (json!({ "name": "x", "scope": "root" }), "scope"),
        (json!({ "name": "  ", "scope": "operator" }), "name"),
        (json!({ "name": "a\u{7}b", "scope": "operator" }), "name"),
        (
            json!({ "name": "x", "scope": "operator", "expires_in_days": 0 }),
            "expires_in_days",
        ),
        (
            json!({ "name": "x", "scope": "operator", "expires_at": past }),
            "expires_at",
        ),
        (
            json!({ "name": "x", "scope": "operator", "expires_at": later, "expires_in_days": 1 }),
            "expires_at",
        ),
    ] {
        let r = app.post("/api/v1/api-keys", &app.admin, body.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.text
        );
        assert_eq!(r.json["error"]["param"], param, "{body}: {}", r.text);
    }
    // A caller cannot set what the host decides.
    let r = app
        .post(
            "/api/v1/api-keys",
            &app.admin,
            json!({ "name": "x", "scope": "operator", "key_hash": "mine" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert!(
        r.json["error"]["param"]
            .as_str()
            .is_some_and(|p| p.contains("key_hash")),
        "{}",
        r.text
    );
    assert_eq!(
        count(&app.store, "SELECT COUNT(*) FROM api_keys").await,
        3,
        "nothing stored"
    );
    let r = app
        .post(
            "/api/v1/api-keys",
            &app.admin,
            json!({ "name": "short-lived", "scope": "read_only", "expires_in_days": 7 }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let expires: chrono::DateTime<Utc> = r.json["expires_at"].as_str().unwrap().parse().unwrap();
    let expected = Utc::now() + Duration::days(7);
    assert!((expected - expires).num_seconds().abs() < 60, "{expires}");
    let key = r.json["secret"].as_str().unwrap();
    assert_eq!(app.get("/api/v1/plugins", key).await.status, StatusCode::OK);
}

async fn metrics_token_on_and_off(backend: Backend) {
    let open = TestApp::new(backend).await;
    let r = with_authorization(&open, Method::GET, "/metrics", None).await;
    assert_eq!(r.status, StatusCode::OK, "no token configured: open");

    let app = TestApp::with_config(backend, |c| {
        c.api.metrics_token = Some("m3trics-token".into());
    })
    .await;
    assert_401(
        &with_authorization(&app, Method::GET, "/metrics", None).await,
        CHALLENGE,
    );
    assert_401(
        &with_authorization(&app, Method::GET, "/metrics", Some("Bearer wrong")).await,
        INVALID_TOKEN,
    );
    // An API key, even an admin's, is not the metrics token.
    assert_401(
        &with_authorization(
            &app,
            Method::GET,
            "/metrics",
            Some(&format!("Bearer {}", app.admin)),
        )
        .await,
        INVALID_TOKEN,
    );
    let r = with_authorization(&app, Method::GET, "/metrics", Some("bearer m3trics-token")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.text.contains("# "), "{}", r.text);

    // From a file, read at each scrape: a changed token holds at once; an
    // unreadable file refuses (never opens) the endpoint.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics-token");
    std::fs::write(&file, "first-token\n").unwrap();
    let path = file.clone();
    let app = TestApp::with_config(backend, move |c| c.api.metrics_token_file = Some(path)).await;
    let scrape = |token: &'static str| {
        let app = &app;
        async move {
            with_authorization(
                app,
                Method::GET,
                "/metrics",
                Some(&format!("Bearer {token}")),
            )
            .await
            .status
        }
    };
    assert_eq!(scrape("first-token").await, StatusCode::OK);
    std::fs::write(&file, "second-token").unwrap();
    assert_eq!(scrape("first-token").await, StatusCode::UNAUTHORIZED);
    assert_eq!(scrape("second-token").await, StatusCode::OK);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(
        scrape("second-token").await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

async fn every_429_carries_retry_after(backend: Backend) {
    // Per API key and per agent.
    let app = TestApp::with_config(backend, |c| {
        c.api.rate_limit_per_second = 1;
        c.api.rate_limit_burst = 1;
    })
    .await;
    assert_eq!(
        app.get("/api/v1/plugins", &app.reader).await.status,
        StatusCode::OK
    );
    let r = app.get("/api/v1/plugins", &app.reader).await;
    retry_after(&r);
    let credential = register_agent(&app, "hasty").await;
    assert_eq!(heartbeat(&app, &credential).await.status, StatusCode::OK);
    retry_after(&heartbeat(&app, &credential).await);

    // Registration, per source address and per bootstrap token.
    let per_address = TestApp::with_config(backend, |c| {
        c.agents.registration_per_address_per_second = 1;
        c.agents.registration_per_address_burst = 1;
    })
    .await;
    let first = register(&per_address, "a1", "wrong").await;
    assert_eq!(first.status, StatusCode::UNAUTHORIZED);
    retry_after(&register(&per_address, "a2", BOOTSTRAP).await);
    let per_token = TestApp::with_config(backend, |c| {
        c.agents.registration_per_token_per_second = 1;
        c.agents.registration_per_token_burst = 1;
    })
    .await;
    assert_eq!(
        register(&per_token, "t1", BOOTSTRAP).await.status,
        StatusCode::CREATED
    );
    retry_after(&register(&per_token, "t2", BOOTSTRAP).await);
}

async fn heartbeat(app: &TestApp, credential: &str) -> Reply {
    app.call(
        Method::POST,
        "/api/v1/agents/heartbeat",
        Some(credential),
        None,
    )
    .await
}

async fn register(app: &TestApp, name: &str, token: &str) -> Reply {
    app.call(
        Method::POST,
        "/api/v1/agents/register",
        None,
        Some(json!({ "name": name, "bootstrap_token": token })),
    )
    .await
}

/// One key's strong ETag: 304 while the key is unchanged, a new tag once
/// it is revoked, and that one current in turn.
async fn a_key_has_an_etag_that_changes_with_it(backend: Backend) {
    let app = TestApp::new(backend).await;
    let (id, _secret, _) = create_key(&app, "tagged", "read_only").await;
    let path = format!("/api/v1/api-keys/{id}");
    let first = app.get(&path, &app.admin).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let tag = first.etag();
    assert!(
        tag.starts_with('"') && tag.ends_with('"'),
        "a strong tag: {tag}"
    );
    let r = app.get_if_none_match(&path, &app.admin, &tag).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{}", r.text);
    assert!(r.text.is_empty(), "{}", r.text);
    assert_eq!(r.etag(), tag);

    let revoked = app
        .call(Method::DELETE, &path, Some(&app.admin), None)
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text);
    let r = app.get_if_none_match(&path, &app.admin, &tag).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "revoked");
    let new_tag = r.etag();
    assert_ne!(new_tag, tag);
    let r = app.get_if_none_match(&path, &app.admin, &new_tag).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{}", r.text);
}

both_backends!(
    a_key_has_an_etag_that_changes_with_it,
    the_bearer_scheme_is_case_insensitive,
    every_401_carries_its_challenge,
    keys_are_created_used_listed_and_revoked,
    last_use_is_written_at_most_once_a_minute,
    the_last_admin_key_cannot_be_revoked,
    only_admins_manage_keys,
    creation_is_validated,
    metrics_token_on_and_off,
    every_429_carries_retry_after,
);
