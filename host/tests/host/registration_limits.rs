//! Agent registration limits over real sockets from several loopback
//! source addresses (`127.0.0.x`): a flood of wrong tokens from one address
//! refuses only that address; wrong tokens from many addresses do not spend
//! a token's allowance; a fleet-sized burst with the right token gets
//! through within the configured limits; every refusal carries
//! `Retry-After`.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use certplane_host::config::HostConfig;
use certplane_testkit::Backend;
use certplane_testkit::app::{BOOTSTRAP, TestApp};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::{CancellationToken, DropGuard};

/// The test app's router served on a loopback port (stopped on drop).
async fn serve(edit: impl FnOnce(&mut HostConfig)) -> (TestApp, SocketAddr, DropGuard) {
    let app = TestApp::with_config(Backend::Sqlite, edit).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(certplane_host::server::serve(
        listener,
        app.router.clone(),
        None,
        stop.clone(),
        Duration::from_secs(1),
    ));
    (app, addr, stop.drop_guard())
}

/// One kept HTTP/1.1 connection from a chosen loopback address.
struct Caller {
    sender: http1::SendRequest<Full<Bytes>>,
}

/// A registration's answer: status and `Retry-After` (seconds).
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<u64>,
}

impl Caller {
    async fn from(ip: &str, server: SocketAddr) -> Caller {
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(ip.parse::<IpAddr>().unwrap(), 0))
            .unwrap();
        let tcp = socket.connect(server).await.unwrap();
        let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        Caller { sender }
    }

    async fn register(&mut self, name: &str, token: &str) -> Answer {
        self.sender.ready().await.unwrap();
        let body = json!({ "name": name, "bootstrap_token": token }).to_string();
        let request = hyper::Request::post("/api/v1/agents/register")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = self.sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().parse().unwrap());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        if status == 429 {
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["error"]["code"], "rate_limited", "{json}");
            assert_eq!(
                json["error"]["details"]["retry_after_secs"].as_u64(),
                retry_after,
                "body and header agree"
            );
        }
        Answer {
            status,
            retry_after,
        }
    }
}

#[tokio::test]
async fn a_wrong_token_flood_from_one_address_refuses_only_that_address() {
    let (app, server, _stop) = serve(|c| {
        c.agents.registration_per_address_per_second = 1;
        c.agents.registration_per_address_burst = 20;
    })
    .await;
    let before = app.store.list_agents(true).await.unwrap().len();
    let mut attacker = Caller::from("127.0.0.2", server).await;
    let mut refused = 0;
    let flood = Instant::now();
    for i in 0..200 {
        let answer = attacker.register(&format!("x{i}"), "guess").await;
        match answer.status {
            401 => {}
            429 => {
                refused += 1;
                assert!(answer.retry_after.is_some_and(|s| s >= 1), "{answer:?}");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    // The burst of 20 answered, the rest refused, less what 1/s refilled
    // while the loop ran.
    let refilled = flood.elapsed().as_secs() as usize + 1;
    assert!(
        refused <= 180 && refused + refilled >= 180,
        "refused {refused} of 200 in {:?}",
        flood.elapsed()
    );
    // Every attempt counts against the address, the right token included:
    // that is what bounds guessing.
    let same = attacker.register("web-0", BOOTSTRAP).await;
    assert_eq!(same.status, 429, "{same:?}");

    // Another address registers at once.
    let mut agent = Caller::from("127.0.0.3", server).await;
    let answer = agent.register("web-1", BOOTSTRAP).await;
    assert_eq!(answer.status, 201, "{answer:?}");
    let agents = app.store.list_agents(true).await.unwrap();
    assert_eq!(agents.len(), before + 1);
}

#[tokio::test]
async fn wrong_tokens_from_many_addresses_do_not_spend_a_tokens_allowance() {
    let (_app, server, _stop) = serve(|c| {
        c.agents.registration_per_token_per_second = 1;
        c.agents.registration_per_token_burst = 3;
        c.agents.bootstrap_tokens.push("second-token".into());
    })
    .await;
    for host in 10..40 {
        let mut attacker = Caller::from(&format!("127.0.0.{host}"), server).await;
        for i in 0..20 {
            let answer = attacker.register(&format!("x{i}"), "guess").await;
            assert_eq!(answer.status, 401, "{answer:?}");
        }
    }
    // 600 wrong tokens later, the token's whole burst is there.
    for host in 50..53 {
        let mut agent = Caller::from(&format!("127.0.0.{host}"), server).await;
        let answer = agent.register(&format!("web-{host}"), BOOTSTRAP).await;
        assert_eq!(answer.status, 201, "{answer:?}");
    }
    // Then the token's own limit answers, with Retry-After.
    let mut late = Caller::from("127.0.0.60", server).await;
    let answer = late.register("web-60", BOOTSTRAP).await;
    assert_eq!(answer.status, 429, "{answer:?}");
    assert!(answer.retry_after.is_some_and(|s| s >= 1), "{answer:?}");
    // Each token has its own allowance.
    let answer = late.register("web-61", "second-token").await;
    assert_eq!(answer.status, 201, "{answer:?}");
}

#[tokio::test]
async fn a_fleet_registers_at_once_within_the_configured_limits() {
    // The configuration a fleet of thousands behind one address needs
    // (docs/agent.md): 1,000 at once and 1,000 a second.
    const AGENTS: usize = 2000;
    const CONCURRENCY: usize = 32;
    const BURST: u32 = 1000;
    const PER_SECOND: u32 = 1000;
    let (app, server, _stop) = serve(|c| {
        c.agents.registration_per_address_per_second = PER_SECOND;
        c.agents.registration_per_address_burst = BURST;
        c.agents.registration_per_token_per_second = PER_SECOND;
        c.agents.registration_per_token_burst = BURST;
    })
    .await;
    let before = app.store.list_agents(true).await.unwrap().len();
    let started = Instant::now();
    let workers = (0..CONCURRENCY).map(|w| {
        tokio::spawn(async move {
            let mut caller = Caller::from("127.0.0.1", server).await;
            let (mut created, mut refused) = (0usize, 0usize);
            for i in (w..AGENTS).step_by(CONCURRENCY) {
                let answer = caller.register(&format!("fleet-{i}"), BOOTSTRAP).await;
                match answer.status {
                    201 => created += 1,
                    429 => {
                        assert!(answer.retry_after.is_some(), "{answer:?}");
                        refused += 1;
                    }
                    other => panic!("unexpected status {other}"),
                }
            }
            (created, refused)
        })
    });
    let (mut created, mut refused) = (0, 0);
    for worker in workers {
        let (c, r) = worker.await.unwrap();
        created += c;
        refused += r;
    }
    let elapsed = started.elapsed();
    // The limits admit BURST + PER_SECOND × elapsed; only what goes
    // beyond may be refused.
    let admitted = f64::from(BURST) + f64::from(PER_SECOND) * elapsed.as_secs_f64();
    let allowed_refusals = (AGENTS as f64 - admitted).max(0.0) as usize;
    assert!(
        refused <= allowed_refusals,
        "{refused} refused in {elapsed:?}; the limits allow {allowed_refusals}"
    );
    assert_eq!(created + refused, AGENTS);
    assert_eq!(
        app.store.list_agents(true).await.unwrap().len(),
        before + created
    );
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
    eprintln!("{created} agents registered in {elapsed:?}, {refused} refused");
}
