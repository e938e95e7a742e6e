//! Verification of deployments the host runs itself (targets of the
//! built-in `host` agent): the host probes the endpoint the connector names
//! after deploying, and `POST /jobs/{id}/verify` probes it again.

use certplane_testkit::both_backends;
use std::time::Duration;

use certplane_testkit::stack::FileTlsServer;
use certplane_testkit::stack::{get, post};
use certplane_testkit::{Backend, Stack, wait_for};
use serde_json::{Value, json};

async fn job(stack: &Stack, id: &str) -> Value {
    get(&stack.host.admin, &format!("/jobs/{id}"))
        .await
        .unwrap()
}

async fn finished(stack: &Stack, id: &str) -> Value {
    wait_for("the job to finish", Duration::from_secs(30), || async {
        let j = job(stack, id).await;
        (j["status"] == "completed" || j["status"] == "failed").then_some(j)
    })
    .await
}

async fn host_side_verification(backend: Backend) {
    let stack = Stack::new(backend, 30).await;
    let deploy_dir = stack.dir("host-certs");
    let web = FileTlsServer::start(None).await.unwrap();
    let target = stack
        .pem_target(
            "host-files",
            "host",
            &deploy_dir,
            Some((web.port, "h.e2e.test")),
        )
        .await;
    let cert = stack
        .certificate(
            "h",
            &["h.e2e.test"],
            "ecdsa-p256",
            target["id"].as_str().unwrap(),
        )
        .await;
    let cert_id = cert["id"].as_str().unwrap();
    assert_eq!(cert["key_source"], "host");
    let dir = deploy_dir.join(cert_id);
    web.set_files(dir.join("fullchain.pem"), dir.join("privkey.pem"));

    let deployment = stack
        .deployment_done(cert_id, Duration::from_secs(30))
        .await;
    assert_eq!(deployment["status"], "completed", "{deployment}");
    let deployment_id = deployment["id"].as_str().unwrap();
    let expected = stack.current_fingerprint(cert_id).await;
    let v = stack.verification(deployment_id).await;
    assert_eq!(v["status"], "verified", "{v}");
    assert_eq!(v["observed_fingerprint"], expected.as_str());
    assert_eq!(v["endpoint"]["port"], web.port);

    // Verify again on demand: still verified.
    let again = post(
        &stack.host.admin,
        &format!("/jobs/{deployment_id}/verify"),
        json!({}),
    )
    .await
    .unwrap();
    let done = finished(&stack, again["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        stack.verification(again["id"].as_str().unwrap()).await["status"],
        "verified"
    );

    // The server now serves something else: the re-verification fails as
    // a mismatch and says what it saw.
    let other = stack.dir("other");
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["h.e2e.test".into()]).unwrap();
    let old = params.self_signed(&key).unwrap();
    std::fs::write(other.join("chain.pem"), old.pem()).unwrap();
    std::fs::write(other.join("key.pem"), key.serialize_pem()).unwrap();
    web.set_files(other.join("chain.pem"), other.join("key.pem"));
    let again = post(
        &stack.host.admin,
        &format!("/jobs/{deployment_id}/verify"),
        json!({}),
    )
    .await
    .unwrap();
    let done = finished(&stack, again["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(
        done["last_error"]
            .as_str()
            .unwrap()
            .contains("failed verification"),
        "{done}"
    );
    let v = stack.verification(again["id"].as_str().unwrap()).await;
    assert_eq!(v["status"], "mismatch", "{v}");
    assert_eq!(
        v["observed_fingerprint"],
        certplane_pki::pem::fingerprint_sha256(old.der()).as_str()
    );
    assert_eq!(v["expected_fingerprint"], expected.as_str());
}

both_backends!(host_side_verification,);
