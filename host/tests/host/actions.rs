//! Named actions of targets the host deploys itself: defined only in the
//! host's `[actions]`, granted to a target by name through the API, run
//! after a real deployment; names the host does not define, or grants on
//! other kinds, are refused before anything is stored.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use certplane_host::engine;
use certplane_host::store::*;
use certplane_runtime::actions::ActionDefinition;
use certplane_testkit::app::TestApp;
use certplane_testkit::{Backend, both_backends};
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn a_host_target_runs_its_granted_action_after_deploying(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let marker = work.path().join("marker");
    let script = format!("echo \"$EVENT $HOME\" >> {}", marker.display());
    let app = TestApp::with_config(backend, |c| {
        c.scheduler.jobs_ms = 100;
        c.scheduler.renewal_ms = 100;
        c.actions.insert(
            "mark".into(),
            ActionDefinition {
                argv: vec!["/bin/sh".into(), "-c".into(), script],
                timeout_secs: Some(10),
                env: [("EVENT".to_string(), "deployed".to_string())].into(),
                working_dir: None,
            },
        );
    })
    .await;
    let target = |name: &str, actions: serde_json::Value| {
        json!({
            "name": name,
            "plugin": "pem-files",
            "settings": { "directory": "/certs", "post_deploy_action": "mark" },
            "grants": {
                "directories": [{ "path": certs.display().to_string(), "guest_path": "/certs", "writable": true }],
                "actions": actions,
            },
        })
    };

    // Refused before anything is stored: a name the host does not define,
    // a name that is not one, an action grant on an issuer.
    let r = app
        .post(
            "/api/v1/targets",
            &app.operator,
            target("t1", json!(["reload-all"])),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert!(
        r.text.contains("reload-all") && r.text.contains("[actions]"),
        "{}",
        r.text
    );
    let r = app
        .post(
            "/api/v1/targets",
            &app.operator,
            target("t1", json!(["/bin/sh -c reboot"])),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert!(r.text.contains("not an action name"), "{}", r.text);
    let r = app
        .post(
            "/api/v1/issuers",
            &app.operator,
            json!({ "name": "i1", "plugin": "local-ca", "grants": { "actions": ["mark"] } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert!(r.text.contains("only apply to targets"), "{}", r.text);
    // Granted the setting's action, or not: pem-files checks at validation.
    let r = app
        .post("/api/v1/targets", &app.operator, target("t1", json!([])))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert!(r.text.contains("mark"), "{}", r.text);
    assert!(!marker.exists(), "nothing ran while validating");

    let r = app
        .post(
            "/api/v1/targets",
            &app.operator,
            target("t1", json!(["mark"])),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let target_id = r.json["id"].as_str().unwrap().to_owned();
    let issuer = certplane_testkit::ca_issuer(&app.state, "local-ca", json!({})).await;
    app.store
        .create_certificate(NewCertificate {
            name: "web".into(),
            common_name: "web.actions.test".into(),
            sans: vec!["web.actions.test".into()],
            key_type: "ecdsa-p256".into(),
            key_source: KeySource::Host,
            issuer_id: issuer.id,
            target_id: Some(target_id),
            renew_before_secs: 86_400,
            owner: None,
        })
        .await
        .unwrap();
    let scheduler = engine::start(app.state.engine.clone(), CancellationToken::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the action did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the deployment's outcome land before reading it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    scheduler.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "deployed \n",
        "its own environment only (no HOME from the host's)"
    );
    let audit = app
        .get("/api/v1/audit?subject_type=job&per_page=100", &app.operator)
        .await;
    assert!(audit.text.contains("ran action mark"), "{}", audit.text);
}

both_backends!(a_host_target_runs_its_granted_action_after_deploying);
