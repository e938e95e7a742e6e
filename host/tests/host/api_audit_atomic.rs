//! No operator change commits without its audit row (issue #14): with
//! every insert into `audit_events` refused by the database (a trigger),
//! each change made through the API (certificate `PATCH`, `DELETE`, renew,
//! revoke; create, update and retire of every instance kind; job verify;
//! agent registration) answers a 5xx envelope and leaves everything as it
//! was; with the trigger gone, the same request succeeds with exactly one
//! audit row. One host per backend serves every case.

use axum::http::{Method, StatusCode};
use certplane_host::store::{JobStatus, JobType, KeySource, NewJob};
use certplane_testkit::app::{BOOTSTRAP, Reply, TestApp, error_code};
use certplane_testkit::fake_cloudflare::FakeCloudflare;
use certplane_testkit::{Backend, both_backends, count, exec, fixtures, test_ca};
use serde_json::{Value, json};

both_backends!(no_change_commits_without_its_audit_row);

/// Makes the database refuse (`on`) or accept audit rows again.
async fn refuse_audit(app: &TestApp, on: bool) {
    let statements: &[&str] = match (app.db.backend, on) {
        (Backend::Sqlite, true) => &["CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events
              BEGIN SELECT RAISE(ABORT, 'audit refused'); END"],
        (Backend::Sqlite, false) => &["DROP TRIGGER refuse_audit"],
        (Backend::Postgres, true) => &[
            "CREATE OR REPLACE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql
              AS $$ BEGIN RAISE EXCEPTION 'audit refused'; END $$",
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events
              FOR EACH ROW EXECUTE FUNCTION refuse_audit()",
        ],
        (Backend::Postgres, false) => &["DROP TRIGGER refuse_audit ON audit_events"],
    };
    for sql in statements {
        exec(&app.store, sql).await;
    }
}

/// One request of an operator (or, without a token, of an agent).
struct Req<'a> {
    method: Method,
    path: String,
    token: Option<&'a str>,
    body: Option<Value>,
}

async fn send(app: &TestApp, req: &Req<'_>) -> Reply {
    app.call(req.method.clone(), &req.path, req.token, req.body.clone())
        .await
}

/// Sends `req` while audit rows are refused and asserts the answer is a
/// server error in the envelope.
async fn refused(app: &TestApp, req: &Req<'_>) {
    refuse_audit(app, true).await;
    let r = send(app, req).await;
    refuse_audit(app, false).await;
    assert!(
        r.status.is_server_error(),
        "{} {} with audit rows refused: {} {}",
        req.method,
        req.path,
        r.status,
        r.text
    );
    assert_eq!(error_code(&r), "internal", "{}", r.text);
}

/// Sends `req` with audit rows accepted and asserts `status`.
async fn allowed(app: &TestApp, req: &Req<'_>, status: StatusCode) -> Reply {
    let r = send(app, req).await;
    assert_eq!(r.status, status, "{} {}: {}", req.method, req.path, r.text);
    r
}

/// Audit rows of `action` on `subject_id`.
async fn audited(app: &TestApp, action: &str, subject_id: &str) -> i64 {
    count(
        &app.store,
        &format!(
            "SELECT COUNT(*) FROM audit_events WHERE action = '{action}' AND subject_id = '{subject_id}'"
        ),
    )
    .await
}

/// `GET path` as the reader, asserted 200.
async fn get(app: &TestApp, path: &str) -> Value {
    let r = app.get(path, &app.reader).await;
    assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
    r.json
}

/// One instance kind: its collection, table and audit name, a create body
/// and an update body.
struct InstanceCase {
    collection: &'static str,
    table: &'static str,
    kind: &'static str,
    create: Value,
    update: Value,
}

/// Create, update and retire of one instance kind, each refused first.
async fn instance_case(app: &TestApp, case: InstanceCase) {
    let collection = format!("/api/v1/{}", case.collection);
    let name = case.create["name"].as_str().expect("name").to_owned();
    let create = Req {
        method: Method::POST,
        path: collection.clone(),
        token: Some(&app.operator),
        body: Some(case.create.clone()),
    };
    refused(app, &create).await;
    let rows = format!("SELECT COUNT(*) FROM {} WHERE name = '{name}'", case.table);
    assert_eq!(count(&app.store, &rows).await, 0, "{} created", case.kind);
    let r = allowed(app, &create, StatusCode::CREATED).await;
    let id = r.json["id"].as_str().expect("id").to_owned();
    let path = format!("{collection}/{id}");
    assert_eq!(count(&app.store, &rows).await, 1);
    let action = format!("{}.create", case.kind);
    assert_eq!(audited(app, &action, &id).await, 1, "{action}");

    let before = get(app, &path).await;
    let update = Req {
        method: Method::PATCH,
        path: path.clone(),
        token: Some(&app.operator),
        body: Some(case.update.clone()),
    };
    refused(app, &update).await;
    assert_eq!(get(app, &path).await, before, "{} updated", case.kind);
    let r = allowed(app, &update, StatusCode::OK).await;
    assert_ne!(r.json["updated_at"], before["updated_at"], "{}", r.text);
    let action = format!("{}.update", case.kind);
    assert_eq!(audited(app, &action, &id).await, 1, "{action}");

    let retire = Req {
        method: Method::DELETE,
        path: path.clone(),
        token: Some(&app.operator),
        body: None,
    };
    let before = get(app, &path).await;
    refused(app, &retire).await;
    assert_eq!(get(app, &path).await, before, "{} retired", case.kind);
    let r = allowed(app, &retire, StatusCode::OK).await;
    assert!(r.json["retired_at"].is_string(), "{}", r.text);
    let action = format!("{}.retire", case.kind);
    assert_eq!(audited(app, &action, &id).await, 1, "{action}");
}

async fn certificate_cases(app: &TestApp) {
    let store = &app.store;
    let issuer = fixtures::issuer(store).await;
    let cert = fixtures::certificate(store, &issuer.id, None, KeySource::Host).await;
    fixtures::version_ending_in(store, &cert.id, "0a", 40).await;
    let path = format!("/api/v1/certificates/{}", cert.id);

    // PATCH: the owner stays.
    let before = get(app, &path).await;
    let update = Req {
        method: Method::PATCH,
        path: path.clone(),
        token: Some(&app.operator),
        body: Some(json!({ "owner": "team-b" })),
    };
    refused(app, &update).await;
    assert_eq!(get(app, &path).await, before, "certificate updated");
    let r = allowed(app, &update, StatusCode::OK).await;
    assert_eq!(r.json["owner"], "team-b");
    assert_eq!(audited(app, "certificate.update", &cert.id).await, 1);

    // Renew now: `renew_at` stays.
    let before = get(app, &path).await;
    let renew = Req {
        method: Method::POST,
        path: format!("{path}/renew"),
        token: Some(&app.operator),
        body: None,
    };
    refused(app, &renew).await;
    assert_eq!(get(app, &path).await, before, "certificate made due");
    let r = allowed(app, &renew, StatusCode::ACCEPTED).await;
    assert_ne!(r.json["renew_at"], before["renew_at"], "{}", r.text);
    assert_eq!(audited(app, "certificate.renew_now", &cert.id).await, 1);

    // Revoke: no revocation job.
    let revocations = format!(
        "SELECT COUNT(*) FROM jobs WHERE certificate_id = '{}' AND job_type = 'revocation'",
        cert.id
    );
    let revoke = Req {
        method: Method::POST,
        path: format!("{path}/revoke"),
        token: Some(&app.operator),
        body: Some(json!({ "reason": "superseded" })),
    };
    refused(app, &revoke).await;
    assert_eq!(
        count(store, &revocations).await,
        0,
        "revocation job created"
    );
    let r = allowed(app, &revoke, StatusCode::ACCEPTED).await;
    let job_id = r.json["job_id"].as_str().expect("job id").to_owned();
    assert_eq!(count(store, &revocations).await, 1);
    let events = store
        .list_audit_events(Some("certificate"), Some(&cert.id), 50)
        .await
        .unwrap();
    let revoked: Vec<_> = events
        .iter()
        .filter(|e| e.action == "certificate.revoke")
        .collect();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].details["job_id"], job_id.as_str());

    // Retire: the certificate stays active and its open revocation job
    // stays pending (both are undone with the missing audit row).
    let retire = Req {
        method: Method::DELETE,
        path: path.clone(),
        token: Some(&app.operator),
        body: None,
    };
    refused(app, &retire).await;
    assert_eq!(get(app, &path).await["status"], "active");
    let job = store.get_job(&job_id).await.unwrap().expect("job");
    assert_eq!(job.status, JobStatus::Pending);
    let r = allowed(app, &retire, StatusCode::OK).await;
    assert_eq!(r.json["status"], "retired");
    let events = store
        .list_audit_events(Some("certificate"), Some(&cert.id), 50)
        .await
        .unwrap();
    let retired: Vec<_> = events
        .iter()
        .filter(|e| e.action == "certificate.retire")
        .collect();
    assert_eq!(retired.len(), 1);
    assert_eq!(retired[0].details["cancelled_jobs"], 1);
    // A repeated DELETE changes nothing and writes no second row.
    allowed(app, &retire, StatusCode::OK).await;
    assert_eq!(audited(app, "certificate.retire", &cert.id).await, 1);
}

async fn job_verify_case(app: &TestApp) {
    let store = &app.store;
    let agent = fixtures::agent(store, "edge-verify").await;
    let target = fixtures::target(store, &agent.id, "web").await;
    let deployment = store
        .create_job(NewJob::new(JobType::Deployment).target(&target.id))
        .await
        .unwrap();
    exec(
        store,
        &format!(
            "UPDATE jobs SET status = 'completed' WHERE id = '{}'",
            deployment.id
        ),
    )
    .await;
    let verifications = format!(
        "SELECT COUNT(*) FROM jobs WHERE parent_job_id = '{}'",
        deployment.id
    );
    let verify = Req {
        method: Method::POST,
        path: format!("/api/v1/jobs/{}/verify", deployment.id),
        token: Some(&app.operator),
        body: None,
    };
    refused(app, &verify).await;
    assert_eq!(
        count(store, &verifications).await,
        0,
        "verification created"
    );
    let r = allowed(app, &verify, StatusCode::ACCEPTED).await;
    let id = r.json["id"].as_str().expect("job id");
    assert_eq!(count(store, &verifications).await, 1);
    assert_eq!(audited(app, "job.verify", id).await, 1);
}

async fn agent_register_case(app: &TestApp) {
    let agents = "SELECT COUNT(*) FROM agents WHERE name = 'edge-atomic'";
    let register = Req {
        method: Method::POST,
        path: "/api/v1/agents/register".into(),
        token: None,
        body: Some(json!({ "name": "edge-atomic", "bootstrap_token": BOOTSTRAP })),
    };
    refused(app, &register).await;
    assert_eq!(count(&app.store, agents).await, 0, "agent registered");
    let r = allowed(app, &register, StatusCode::CREATED).await;
    let id = r.json["agent_id"].as_str().expect("agent id");
    assert_eq!(count(&app.store, agents).await, 1);
    assert_eq!(audited(app, "agent.register", id).await, 1);
}

async fn no_change_commits_without_its_audit_row(backend: Backend) {
    let app = TestApp::new(backend).await;
    let ca = test_ca();
    let dir = tempfile::tempdir().unwrap();
    let cf = FakeCloudflare::start(None).await;

    certificate_cases(&app).await;
    job_verify_case(&app).await;
    agent_register_case(&app).await;

    let issuer_settings = |days: u32| json!({ "ca_certificate_pem": ca.0, "validity_days": days });
    instance_case(
        &app,
        InstanceCase {
            collection: "issuers",
            table: "issuers",
            kind: "issuer",
            create: json!({
                "name": "ca-atomic",
                "plugin": "local-ca",
                "settings": issuer_settings(30),
                "secrets": { "ca_private_key_pem": ca.1 },
            }),
            update: json!({ "settings": issuer_settings(20) }),
        },
    )
    .await;
    let dir_path = dir.path().display().to_string();
    let target_grants =
        json!({ "directories": [{ "path": dir_path, "guest_path": "/certs", "writable": true }] });
    instance_case(
        &app,
        InstanceCase {
            collection: "targets",
            table: "targets",
            kind: "target",
            create: json!({
                "name": "files-atomic",
                "plugin": "pem-files",
                "settings": { "directory": "/certs" },
                "grants": target_grants,
            }),
            update: json!({ "settings": { "directory": "/certs" }, "grants": target_grants }),
        },
    )
    .await;
    instance_case(
        &app,
        InstanceCase {
            collection: "notifiers",
            table: "notifiers",
            kind: "notifier",
            create: json!({
                "name": "hook-atomic",
                "plugin": "webhook",
                "settings": { "url": "https://hooks.example.test/certplane" },
                "secrets": { "signing_secret": "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD" },
            }),
            update: json!({ "settings": { "url": "https://hooks.example.test/other" } }),
        },
    )
    .await;
    instance_case(
        &app,
        InstanceCase {
            collection: "dns-solvers",
            table: "dns_solvers",
            kind: "dns-solver",
            create: json!({
                "name": "cf-atomic",
                "plugin": "cloudflare-dns",
                "settings": { "base_url": cf.url() },
                "secrets": { "api_token": cf.token() },
                "grants": { "hosts": [cf.grant()] },
            }),
            update: json!({ "settings": { "base_url": cf.url() } }),
        },
    )
    .await;
}
