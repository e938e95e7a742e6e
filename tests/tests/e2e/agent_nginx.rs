//! The nginx target on an agent, end to end: the agent's `[actions]`
//! define nginx's configuration test and reload, its `connectors.nginx`
//! allows them by name, the host's target grants them by name; a real host
//! issues, the agent deploys into the files a real nginx serves, tests and
//! reloads it through the actions, and verifies on the wire.

use std::time::Duration;

use certplane_agent::config::{AgentConfig, AllowedDir, ConnectorGrants};
use certplane_agent::{Exit, Mode};
use certplane_runtime::actions::ActionDefinition;
use certplane_testkit::nginx::{Nginx, leaf};
use certplane_testkit::stack::post;
use certplane_testkit::{Backend, Stack, both_backends};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const NAME: &str = "shop.nginx.test";

fn action(argv: Vec<String>) -> ActionDefinition {
    ActionDefinition {
        argv,
        timeout_secs: Some(15),
        env: Default::default(),
        working_dir: None,
    }
}

async fn an_agent_deploys_to_nginx_through_its_actions(backend: Backend) {
    let stack = Stack::new(backend, 30).await;
    let certs = stack.dir("nginx-certs");
    std::fs::create_dir_all(certs.join("site")).unwrap();
    let first = leaf(&[NAME]);
    std::fs::write(certs.join("site/fullchain.pem"), first.fullchain_pem()).unwrap();
    std::fs::write(certs.join("site/privkey.pem"), &first.key_pem).unwrap();
    let nginx = Nginx::start(
        &certs.join("site/fullchain.pem"),
        &certs.join("site/privkey.pem"),
    );
    assert_eq!(
        nginx.served_fingerprint(NAME).unwrap(),
        first.fingerprint_sha256
    );

    let mut config = stack.agent_config("edge");
    config
        .actions
        .insert("nginx-test".into(), action(nginx.test_argv()));
    config
        .actions
        .insert("nginx-reload".into(), action(nginx.reload_argv()));
    config.connectors.insert(
        "nginx".into(),
        ConnectorGrants {
            directories: vec![AllowedDir {
                path: certs.clone(),
                writable: true,
            }],
            actions: vec!["nginx-test".into(), "nginx-reload".into()],
            deadline_secs: Some(45),
            ..ConnectorGrants::default()
        },
    );
    let config = AgentConfig::from_value(&config).unwrap();
    let stop = CancellationToken::new();
    let agent = tokio::spawn(certplane_agent::run(config, Mode::Continuous, stop.clone()));
    let agent_id = stack.agent_id("edge").await;

    let target = post(
        &stack.host.admin,
        "/targets",
        json!({
            "name": "edge-nginx",
            "plugin": "nginx",
            "agent_id": agent_id,
            "settings": {
                "directory": "/certs",
                "cert_file": "site/fullchain.pem",
                "key_file": "site/privkey.pem",
                "verify_host": "127.0.0.1",
                "verify_port": nginx.port(),
                "server_name": NAME,
            },
            "grants": {
                "directories": [{ "path": certs, "guest_path": "/certs", "writable": true }],
                "actions": ["nginx-test", "nginx-reload"],
            },
        }),
    )
    .await
    .unwrap();
    let cert = stack
        .certificate(
            "shop",
            &[NAME],
            "ecdsa-p256",
            target["id"].as_str().unwrap(),
        )
        .await;
    let cert_id = cert["id"].as_str().unwrap();
    let job = stack
        .deployment_done(cert_id, Duration::from_secs(60))
        .await;
    assert_eq!(job["status"], "completed", "{job}\n{}", nginx.logs());
    let issued = stack.current_fingerprint(cert_id).await;
    assert_ne!(issued, first.fingerprint_sha256);
    // The agent verified on the wire, through nginx's reload.
    let verification = stack.verification(job["id"].as_str().unwrap()).await;
    assert_eq!(verification["status"], "verified", "{verification}");
    // Old workers finish their connections after a reload and may take one
    // more in that moment: what is served settles on the new leaf.
    nginx
        .wait_for_fingerprint(NAME, &issued, Duration::from_secs(10))
        .unwrap();
    assert!(nginx.reloads() >= 1, "{}", nginx.logs());

    stop.cancel();
    assert_eq!(agent.await.unwrap().unwrap(), Exit::Stopped);
}

both_backends!(an_agent_deploys_to_nginx_through_its_actions);
