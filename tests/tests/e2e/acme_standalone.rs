//! http-01 through the agent, standalone style: no web server, the agent's
//! own listener (`[challenges] listen`) answers the tokens from memory.
//! The real host (`serve`) and the in-process agent: the agent serves a
//! token while its challenge is live and reports it ready, and stops when
//! the host withdraws it; then Pebble validates http-01 against the
//! agent's listener and issues, the key never leaving the agent. When the
//! agent shuts down, its port is closed.

use std::net::SocketAddr;
use std::time::Duration;

use certplane_agent::config::ChallengesConfig;
use certplane_testkit::pebble::{Pebble, PebbleOptions};
use certplane_testkit::stack::free_port;
use certplane_testkit::{Backend, Stack, both_backends, wait_for};

use crate::agent_http01::{
    RunningAgent, cancel, fetch, parked_challenge, pebble_issuance, settled, store,
};

both_backends!(
    the_agent_serves_a_token_itself,
    pebble_issues_through_the_agents_listener
);

/// Agent `name` of `stack` answering http-01 on `listen` itself.
fn start_agent(stack: &Stack, name: &str, listen: SocketAddr) -> RunningAgent {
    let challenges = ChallengesConfig {
        listen: Some(listen),
        check_within_secs: 10,
        ..ChallengesConfig::default()
    };
    RunningAgent::start(stack, name, challenges)
}

fn acme_path(token: &str) -> String {
    format!("/.well-known/acme-challenge/{token}")
}

/// Returns once nothing accepts connections on `127.0.0.1:port`.
async fn closed(port: u16) {
    wait_for(
        &format!("port {port} to be closed"),
        Duration::from_secs(10),
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
}

async fn the_agent_serves_a_token_itself(backend: Backend) {
    let stack = Stack::new(backend, 30).await;
    let port = free_port().unwrap();
    let agent = start_agent(&stack, "edge-1", SocketAddr::from(([127, 0, 0, 1], port)));
    let agent_id = stack.agent_id("edge-1").await;
    let store = store(&stack).await;
    // Registered means bound: the listener comes up before registration.
    assert_eq!(
        fetch(port, &acme_path("not-live"), "www.standalone.test")
            .await
            .0,
        404
    );

    let token = "st4ndalone_t0ken-1";
    let key_authorization = format!("{token}.thumbprint");
    let job_id = parked_challenge(
        &store,
        &agent_id,
        "www.standalone.test",
        token,
        &key_authorization,
    )
    .await;
    let row = settled(&store, &job_id, "c1", &["ready", "failed"]).await;
    assert_eq!(row.state, "ready", "{:?}", row.message);
    assert!(row.published);
    assert_eq!(
        fetch(port, &acme_path(token), "www.standalone.test").await,
        (200, key_authorization.clone())
    );
    // Only that token, only there.
    for path in [
        acme_path("other-token"),
        "/".to_string(),
        format!("/{token}"),
    ] {
        assert_eq!(
            fetch(port, &path, "www.standalone.test").await.0,
            404,
            "{path}"
        );
    }

    // The job ends: the host withdraws, the agent forgets the token.
    cancel(&stack, &job_id).await;
    let row = settled(&store, &job_id, "c1", &["withdrawn"]).await;
    assert_eq!(row.message, None, "the agent had the token live");
    assert_eq!(
        fetch(port, &acme_path(token), "www.standalone.test")
            .await
            .0,
        404
    );
    agent.stop().await;
    closed(port).await;
}

async fn pebble_issues_through_the_agents_listener(backend: Backend) {
    let stack = Stack::new(backend, 30).await;
    let port = free_port().unwrap();
    // Pebble validates http-01 at the agent's port; its DNS answers
    // 127.0.0.1.
    let pebble = Pebble::start(PebbleOptions {
        http_port: Some(port),
        ..PebbleOptions::default()
    });
    // Every address, as on a real machine; the agent checks on loopback.
    let agent = start_agent(&stack, "edge-1", SocketAddr::from(([0, 0, 0, 0], port)));
    let store = store(&stack).await;
    let names = ["www.standalone.test", "standalone.test"];
    let issuance = pebble_issuance(&stack, &store, &pebble, "edge-1", &names, &|| {
        format!("pebble: {}", pebble.log())
    })
    .await;

    // The job ended: every challenge is withdrawn and no longer served.
    for row in &issuance.rows {
        let row = settled(&store, &issuance.job_id, &row.challenge_id, &["withdrawn"]).await;
        assert_eq!(row.message, None, "the agent had the token live: {row:?}");
        assert_eq!(
            fetch(port, &acme_path(&row.name), &row.identifier).await.0,
            404,
            "{}",
            row.name
        );
    }
    agent.stop().await;
    closed(port).await;
}
