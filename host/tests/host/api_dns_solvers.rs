//! `/dns-solvers`: CRUD with the packaged `cloudflare-dns` connector
//! against the fake Cloudflare API (its `validate-config` runs on the
//! host), kinds and grants refused, issuers' `grants.challenges` checked
//! against the solvers that exist, and a solver kept while an issuer routes
//! to it or a challenge it publishes is live. Every scenario runs on SQLite
//! and PostgreSQL.

use axum::http::{Method, StatusCode};
use certplane_host::store::{JobType, NewChallenge, NewJob, NewPluginInstance, StoreError, new_id};
use certplane_testkit::app::{Reply, TestApp, error_code};
use certplane_testkit::fake_cloudflare::FakeCloudflare;
use certplane_testkit::{Backend, both_backends, count, exec, test_ca};
use serde_json::{Value, json};

const SOLVERS: &str = "/api/v1/dns-solvers";

fn solver_body(name: &str, cf: &FakeCloudflare, token: &str) -> Value {
    json!({
        "name": name,
        "plugin": "cloudflare-dns",
        "settings": { "base_url": cf.url() },
        "secrets": { "api_token": token },
        "grants": { "hosts": [cf.grant()] },
    })
}

fn issuer_body(name: &str, ca: &(String, String), challenges: Value) -> Value {
    json!({
        "name": name,
        "plugin": "local-ca",
        "settings": { "ca_certificate_pem": ca.0, "validity_days": 30 },
        "secrets": { "ca_private_key_pem": ca.1 },
        "grants": { "challenges": challenges },
    })
}

fn message(r: &Reply) -> &str {
    r.json["error"]["message"].as_str().unwrap_or_default()
}

/// Asserts a 422 whose message holds `needle`.
#[track_caller]
fn assert_invalid(r: &Reply, needle: &str) {
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(error_code(r), "validation_failed");
    assert!(message(r).contains(needle), "{needle:?} not in {}", r.text);
}

async fn total(app: &TestApp, path: &str) -> u64 {
    let r = app.get(path, &app.reader).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json["total"].as_u64().expect("total")
}

async fn patch(app: &TestApp, path: &str, body: Value) -> Reply {
    app.call(Method::PATCH, path, Some(&app.operator), Some(body))
        .await
}

async fn delete(app: &TestApp, path: &str) -> Reply {
    app.call(Method::DELETE, path, Some(&app.operator), None)
        .await
}

/// A solver row the API did not validate (for the routing checks, which
/// need no working connector).
async fn stored_solver(app: &TestApp, name: &str) -> String {
    app.store
        .create_dns_solver(NewPluginInstance::new(name, "cloudflare-dns", "0.1.0"))
        .await
        .unwrap()
        .id
}

async fn dns_solver_crud(backend: Backend) {
    let app = TestApp::new(backend).await;
    let cf = FakeCloudflare::start(None).await;
    let r = app
        .post(SOLVERS, &app.operator, solver_body("cf", &cf, cf.token()))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["kind"], "dns-solver");
    assert_eq!(r.json["plugin"], "cloudflare-dns");
    assert_eq!(r.json["secret_names"], json!(["api_token"]));
    assert!(!r.text.contains(cf.token()), "secret leaked: {}", r.text);
    // validate-config ran on the host, against the upstream.
    assert!(
        cf.requests()
            .iter()
            .any(|q| q.contains("/user/tokens/verify")),
        "{:?}",
        cf.requests()
    );
    let id = r.json["id"].as_str().unwrap().to_string();
    let path = format!("{SOLVERS}/{id}");

    // Sealed for `dns-solver/<id>` and for no other owner.
    let row = app.store.get_dns_solver(&id).await.unwrap().unwrap();
    let sealed = String::from_utf8(row.encrypted_secrets.unwrap()).unwrap();
    assert!(!sealed.contains(cf.token()));
    let opened = app
        .state
        .secrets
        .open_map(&sealed, &format!("dns-solver/{id}"))
        .unwrap();
    assert_eq!(opened["api_token"].to_string(), cf.token());
    assert!(
        app.state
            .secrets
            .open_map(&sealed, &format!("notifier/{id}"))
            .is_err()
    );

    let r = app.get(&path, &app.reader).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["name"], "cf");
    assert!(!r.text.contains(cf.token()));
    let r = app.get(SOLVERS, &app.reader).await;
    assert_eq!(r.json["total"], 1);
    assert_eq!(r.json["items"][0]["id"], id.as_str());

    // Duplicate name: 409, nothing added.
    let r = app
        .post(SOLVERS, &app.operator, solver_body("cf", &cf, cf.token()))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    // A token the upstream refuses: the connector's verdict, nothing added.
    let r = app
        .post(
            SOLVERS,
            &app.operator,
            solver_body("cf2", &cf, "wrong-token"),
        )
        .await;
    assert_invalid(&r, "cloudflare-dns");
    // Settings outside the plugin's schema are refused before it is called.
    let mut body = solver_body("cf3", &cf, cf.token());
    body["settings"]["ttl"] = json!(5);
    assert_invalid(
        &app.post(SOLVERS, &app.operator, body).await,
        "settings.ttl",
    );
    assert_eq!(total(&app, SOLVERS).await, 1);

    // Update: re-validated with the stored secret.
    let r = patch(
        &app,
        &path,
        json!({ "settings": { "base_url": cf.url(), "ttl": 120 } }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["settings"]["ttl"], 120);
    assert_eq!(r.json["secret_names"], json!(["api_token"]));
    // A bad token in an update changes nothing.
    let r = patch(&app, &path, json!({ "secrets": { "api_token": "wrong" } })).await;
    assert_invalid(&r, "cloudflare-dns");
    let row = app.store.get_dns_solver(&id).await.unwrap().unwrap();
    let sealed = String::from_utf8(row.encrypted_secrets.unwrap()).unwrap();
    let opened = app
        .state
        .secrets
        .open_map(&sealed, &format!("dns-solver/{id}"))
        .unwrap();
    assert_eq!(opened["api_token"].to_string(), cf.token());
    assert_eq!(row.settings["ttl"], 120);

    let r = delete(&app, &path).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app.get(&path, &app.reader).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.json["retired_at"].is_string(), "{}", r.text);
    assert_eq!(delete(&app, &path).await.status, StatusCode::OK);
    assert_eq!(total(&app, SOLVERS).await, 0);

    let audited = count(
        &app.store,
        &format!(
            "SELECT COUNT(*) FROM audit_events WHERE subject_type = 'dns-solver'
             AND subject_id = '{id}' AND action LIKE 'dns-solver.%'"
        ),
    )
    .await;
    assert_eq!(audited, 3, "create, update, delete");
    let leaked = count(
        &app.store,
        &format!(
            "SELECT COUNT(*) FROM audit_events WHERE CAST(details AS TEXT) LIKE '%{}%'",
            cf.token()
        ),
    )
    .await;
    assert_eq!(leaked, 0);
    // Readers read, only operators write.
    let r = app
        .post(SOLVERS, &app.reader, solver_body("cf4", &cf, cf.token()))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
}

async fn kinds_and_grants_are_checked(backend: Backend) {
    let app = TestApp::new(backend).await;
    let cases = [
        (
            SOLVERS,
            json!({ "name": "x", "plugin": "local-ca" }),
            "not a dns-solver",
        ),
        (
            SOLVERS,
            json!({ "name": "x", "plugin": "nope" }),
            "no dns-solver plugin named nope",
        ),
        (
            "/api/v1/issuers",
            json!({ "name": "x", "plugin": "cloudflare-dns" }),
            "is a dns-solver connector",
        ),
        (
            SOLVERS,
            json!({ "name": "x", "plugin": "cloudflare-dns", "agent_id": "host" }),
            "agent_id only applies to targets",
        ),
        (
            SOLVERS,
            json!({ "name": "x", "plugin": "cloudflare-dns",
                    "grants": { "directories": [{ "path": "/tmp", "guest_path": "/data" }] } }),
            "directory grants only apply to targets",
        ),
        // Routes are an issuer's: not a solver's, not a notifier's.
        (
            SOLVERS,
            json!({ "name": "x", "plugin": "cloudflare-dns",
                    "grants": { "challenges": { "http_01": "host" } } }),
            "grants.challenges only apply to issuers",
        ),
        (
            "/api/v1/notifiers",
            json!({ "name": "x", "plugin": "webhook",
                    "grants": { "challenges": { "dns_01": [] } } }),
            "grants.challenges only apply to issuers, not to a notifier",
        ),
    ];
    for (path, body, needle) in cases {
        let r = app.post(path, &app.operator, body).await;
        assert_invalid(&r, needle);
    }
    assert_eq!(total(&app, SOLVERS).await, 0);
    assert_eq!(total(&app, "/api/v1/issuers").await, 0);
    assert_eq!(total(&app, "/api/v1/notifiers").await, 0);
}

async fn issuer_routes_name_existing_solvers(backend: Backend) {
    let app = TestApp::new(backend).await;
    let ca = test_ca();
    let solver = stored_solver(&app, "cf").await;
    let issuers = "/api/v1/issuers";

    let unknown = json!({ "dns_01": [
        { "zone": "example.com", "solver": solver },
        { "zone": "example.org", "solver": "no-such-solver" },
    ] });
    let r = app
        .post(issuers, &app.operator, issuer_body("acme", &ca, unknown))
        .await;
    assert_invalid(&r, "grants.challenges.dns_01[1].solver");
    assert!(message(&r).contains("no-such-solver"), "{}", r.text);
    let bad_zone = json!({ "dns_01": [{ "zone": "bad zone", "solver": solver }] });
    let r = app
        .post(issuers, &app.operator, issuer_body("acme", &ca, bad_zone))
        .await;
    assert_invalid(&r, "not a DNS zone name");
    let r = app
        .post(
            issuers,
            &app.operator,
            issuer_body(
                "acme",
                &ca,
                json!({ "dns_01": [{ "zone": "example.com" }] }),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(total(&app, issuers).await, 0);

    let routes = json!({ "http_01": "host",
                         "dns_01": [{ "zone": "example.com", "solver": solver }] });
    let r = app
        .post(
            issuers,
            &app.operator,
            issuer_body("acme", &ca, routes.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["grants"]["challenges"], routes);
    let issuer = r.json["id"].as_str().unwrap().to_string();
    let issuer_path = format!("{issuers}/{issuer}");

    // An update naming an unknown solver changes nothing.
    let r = patch(
        &app,
        &issuer_path,
        json!({ "grants": { "challenges": { "dns_01": [
            { "zone": "example.com", "solver": "gone" }] } } }),
    )
    .await;
    assert_invalid(&r, "grants.challenges.dns_01[0].solver");
    let r = app.get(&issuer_path, &app.reader).await;
    assert_eq!(r.json["grants"]["challenges"], routes);

    // The solver stays while the issuer routes to it.
    let solver_path = format!("{SOLVERS}/{solver}");
    let r = delete(&app, &solver_path).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.json["error"]["details"]["counts"]["issuers"], 1);
    assert_eq!(r.json["error"]["details"]["counts"]["live_challenges"], 0);
    assert_eq!(r.json["error"]["details"]["issuers"], json!([issuer]));
    assert!(
        message(&r).contains("grants.challenges.dns_01"),
        "{}",
        r.text
    );
    assert_eq!(total(&app, SOLVERS).await, 1);

    // Another issuer without routes to it does not hold it.
    let other = app
        .post(
            issuers,
            &app.operator,
            issuer_body("plain", &ca, json!({ "http_01": "host" })),
        )
        .await;
    assert_eq!(other.status, StatusCode::CREATED, "{}", other.text);
    // Routes elsewhere: the solver is free.
    let second = stored_solver(&app, "cf-2").await;
    let r = patch(
        &app,
        &issuer_path,
        json!({ "grants": { "challenges": { "dns_01": [
            { "zone": "example.com", "solver": second }] } } }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = delete(&app, &solver_path).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // Grants without challenges free the second one too.
    let r = patch(&app, &issuer_path, json!({ "grants": {} })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = delete(&app, &format!("{SOLVERS}/{second}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(total(&app, SOLVERS).await, 0);
}

async fn live_challenges_keep_a_solver(backend: Backend) {
    let app = TestApp::new(backend).await;
    let solver = stored_solver(&app, "cf").await;
    let job = app
        .store
        .create_job(NewJob::new(JobType::Issuance))
        .await
        .unwrap();
    let challenge = |id: &str, route: String| NewChallenge {
        challenge_id: id.into(),
        kind: "dns-01".into(),
        identifier: "www.example.com".into(),
        name: "_acme-challenge.www.example.com".into(),
        value: "v".into(),
        route,
        zone: Some("example.com".into()),
    };
    app.store
        .insert_challenges(
            &job.id,
            &[
                challenge("c1", format!("dns:{solver}")),
                // Another solver's route does not count.
                challenge("c2", format!("dns:{solver}x")),
            ],
        )
        .await
        .unwrap();
    let path = format!("{SOLVERS}/{solver}");
    for state in ["pending", "ready", "failed", "withdrawing"] {
        exec(
            &app.store,
            &format!("UPDATE challenges SET state = '{state}' WHERE challenge_id = 'c1'"),
        )
        .await;
        let r = delete(&app, &path).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{state}: {}", r.text);
        assert_eq!(
            r.json["error"]["details"]["counts"]["live_challenges"], 1,
            "{state}"
        );
        assert_eq!(
            r.json["error"]["details"]["counts"]["issuers"], 0,
            "{state}"
        );
        assert!(message(&r).contains("1 challenge(s)"), "{}", r.text);
        assert!(!message(&r).contains("issuer(s)"), "{}", r.text);
    }
    exec(
        &app.store,
        "UPDATE challenges SET state = 'withdrawn' WHERE challenge_id = 'c1'",
    )
    .await;
    let r = delete(&app, &path).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

/// The store itself refuses an issuer routed to a missing solver, on
/// create and update, so no caller can write one.
async fn store_refuses_routes_to_missing_solvers(backend: Backend) {
    let app = TestApp::new(backend).await;
    let solver = stored_solver(&app, "cf").await;
    let grants = |solver: &str| {
        json!({ "challenges": { "dns_01": [
            { "zone": "example.com", "solver": solver },
            { "zone": "dev.example.com", "solver": solver },
        ] } })
    };
    let mut new = NewPluginInstance::new("acme", "local-ca", "1.0.0");
    new.grants = grants("missing");
    let err = app.store.create_issuer(new.clone()).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::InvalidArgument(m) if m.contains("\"missing\"")),
        "{err}"
    );
    new.grants = grants(&solver);
    let issuer = app.store.create_issuer(new).await.unwrap();
    let err = app
        .store
        .update_issuer(&issuer.id, &json!({}), None, &grants(&new_id()), None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");
    assert_eq!(
        app.store
            .get_issuer(&issuer.id)
            .await
            .unwrap()
            .unwrap()
            .grants,
        grants(&solver)
    );
    assert!(!app.store.retire_dns_solver(&solver).await.unwrap());
    let (issuers, live) = app.store.dns_solver_usage(&solver).await.unwrap();
    assert_eq!((issuers, live), (vec![issuer.id.clone()], 0));
    app.store
        .update_issuer(&issuer.id, &json!({}), None, &json!({}), None)
        .await
        .unwrap();
    assert!(app.store.retire_dns_solver(&solver).await.unwrap());
    let retired = app.store.get_dns_solver(&solver).await.unwrap().unwrap();
    assert!(retired.retired_at.is_some());
    // A retired solver takes no routes.
    let err = app
        .store
        .update_issuer(&issuer.id, &json!({}), None, &grants(&solver), None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");
}

both_backends!(
    dns_solver_crud,
    kinds_and_grants_are_checked,
    issuer_routes_name_existing_solvers,
    live_challenges_keep_a_solver,
    store_refuses_routes_to_missing_solvers,
);
