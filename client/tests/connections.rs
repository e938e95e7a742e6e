//! How an `ApiClient` uses connections, against a test server that counts
//! the connections it accepts and the requests it receives: one HTTP/2
//! connection for many requests (TLS and plain), a closed connection
//! replaced, a long poll that does not hold up a heartbeat, no request sent
//! twice, and HTTP/1.1 when the server offers nothing else.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use certplane_client::{ApiClient, ClientError, ClientOptions, Trust};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// What the test server offers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Offer {
    /// Plain HTTP/1.1 and HTTP/2 (prior knowledge).
    Plain,
    /// TLS with ALPN `h2` and `http/1.1`.
    Tls,
    /// TLS with ALPN `http/1.1` only, served as HTTP/1.1 only.
    TlsHttp1Only,
}

struct TestServer {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    /// PEM of the self-signed certificate (TLS offers).
    cert_pem: String,
}

/// Paths the test server answers (under `/api/v1`):
/// - `/ping`: 200 `{"ok":true}` at once;
/// - `/slow`: 200 after 2 s (a parked long poll);
/// - `/bye`: 200, then the connection is cut (no GOAWAY) 50 ms later;
/// - `/drop`: the request is received, then the connection is cut
///   without an answer.
async fn answer(
    request: Request<Incoming>,
    requests: Arc<AtomicUsize>,
    cut: Arc<Notify>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    requests.fetch_add(1, Ordering::SeqCst);
    let ok = || Response::new(Full::new(Bytes::from_static(br#"{"ok":true}"#)));
    match request.uri().path() {
        "/api/v1/slow" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(ok())
        }
        "/api/v1/bye" => {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                cut.notify_one();
            });
            Ok(ok())
        }
        "/api/v1/drop" => {
            cut.notify_one();
            std::future::pending().await
        }
        _ => Ok(ok()),
    }
}

impl TestServer {
    async fn start(offer: Offer) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_pem = cert.pem();
        let acceptor = (offer != Offer::Plain).then(|| {
            let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
            let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], der)
            .unwrap();
            config.alpn_protocols = match offer {
                Offer::TlsHttp1Only => vec![b"http/1.1".to_vec()],
                _ => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            };
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let (acc, req) = (accepts.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                acc.fetch_add(1, Ordering::SeqCst);
                let (acceptor, requests) = (acceptor.clone(), req.clone());
                tokio::spawn(async move {
                    let cut = Arc::new(Notify::new());
                    let service = {
                        let cut = cut.clone();
                        hyper::service::service_fn(move |r| {
                            answer(r, requests.clone(), cut.clone())
                        })
                    };
                    let builder = match offer {
                        Offer::TlsHttp1Only => {
                            auto::Builder::new(TokioExecutor::new()).http1_only()
                        }
                        _ => auto::Builder::new(TokioExecutor::new()),
                    };
                    match acceptor {
                        None => {
                            let conn = builder.serve_connection(TokioIo::new(tcp), service);
                            tokio::select! {
                                _ = conn => {}
                                () = cut.notified() => {}
                            }
                        }
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let conn = builder.serve_connection(TokioIo::new(tls), service);
                            tokio::select! {
                                _ = conn => {}
                                () = cut.notified() => {}
                            }
                        }
                    }
                });
            }
        });
        TestServer {
            addr,
            accepts,
            requests,
            cert_pem,
        }
    }

    fn client(&self, offer: Offer, timeout: Duration) -> (ApiClient, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (base_url, trust) = match offer {
            Offer::Plain => (format!("http://{}", self.addr), None),
            _ => {
                let ca = dir.path().join("ca.pem");
                std::fs::write(&ca, &self.cert_pem).unwrap();
                (
                    format!("https://localhost:{}", self.addr.port()),
                    Some(Trust::CaFile(ca)),
                )
            }
        };
        let client = ApiClient::new(ClientOptions {
            base_url,
            api_key: "k".into(),
            trust,
            timeout,
            user_agent: "test".into(),
        })
        .unwrap();
        (client, dir)
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);

async fn many_requests_share_one_connection(offer: Offer) {
    let server = TestServer::start(offer).await;
    let (client, _dir) = server.client(offer, TIMEOUT);
    for _ in 0..30 {
        let reply = client.get("/ping", &[]).await.unwrap();
        assert_eq!(reply.json.unwrap()["ok"], true);
    }
    // At once, from clones (the agent's heartbeat task and poll loop).
    let calls = (0..30).map(|_| {
        let c = client.clone();
        tokio::spawn(async move { c.post("/ping", None).await })
    });
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(server.requests(), 60);
    assert_eq!(server.accepts(), 1, "one connection for every request");
    assert_eq!(client.connections_opened(), 1);
}

#[tokio::test]
async fn many_requests_share_one_connection_over_tls() {
    many_requests_share_one_connection(Offer::Tls).await;
}

#[tokio::test]
async fn many_requests_share_one_connection_over_plain_http() {
    many_requests_share_one_connection(Offer::Plain).await;
}

#[tokio::test]
async fn a_connection_the_server_closed_is_replaced() {
    for offer in [Offer::Tls, Offer::Plain, Offer::TlsHttp1Only] {
        let server = TestServer::start(offer).await;
        let (client, _dir) = server.client(offer, TIMEOUT);
        client.get("/bye", &[]).await.unwrap();
        // The server cuts the connection (no GOAWAY, no close header).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let reply = client.get("/ping", &[]).await.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(server.accepts(), 2, "a new connection replaced the cut one");
        assert_eq!(server.requests(), 2);
    }
}

#[tokio::test]
async fn a_long_poll_does_not_delay_a_heartbeat() {
    for offer in [Offer::Tls, Offer::Plain] {
        let server = TestServer::start(offer).await;
        let (client, _dir) = server.client(offer, TIMEOUT);
        // Open the connection first, as a running agent has.
        client.post("/ping", None).await.unwrap();
        let poll_client = client.with_timeout(Duration::from_secs(30));
        let started = Instant::now();
        let poll = tokio::spawn(async move { poll_client.get("/slow", &[]).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..5 {
            let beat = Instant::now();
            client.post("/ping", None).await.unwrap();
            assert!(
                beat.elapsed() < Duration::from_millis(300),
                "heartbeat took {:?} beside a parked long poll",
                beat.elapsed()
            );
        }
        assert!(!poll.is_finished(), "the long poll is still parked");
        poll.await.unwrap().unwrap();
        assert!(started.elapsed() >= Duration::from_secs(2));
        assert_eq!(server.accepts(), 1, "poll and heartbeats on one connection");
    }
}

#[tokio::test]
async fn a_request_that_may_have_arrived_is_not_sent_again() {
    for offer in [Offer::Tls, Offer::Plain, Offer::TlsHttp1Only] {
        let server = TestServer::start(offer).await;
        let (client, _dir) = server.client(offer, TIMEOUT);
        let err = client.post("/drop", None).await.unwrap_err();
        assert!(matches!(err, ClientError::Http { .. }), "{err}");
        // Give a (wrong) resend time to arrive.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(server.requests(), 1, "the request reached the server once");
        // The client goes on with a new connection.
        client.get("/ping", &[]).await.unwrap();
        assert_eq!(server.accepts(), 2);
    }
}

#[tokio::test]
async fn a_request_without_an_answer_in_time_gives_up_its_connection() {
    let server = TestServer::start(Offer::Tls).await;
    let (client, _dir) = server.client(Offer::Tls, Duration::from_millis(300));
    let err = client.get("/slow", &[]).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    client.get("/ping", &[]).await.unwrap();
    assert_eq!(
        server.accepts(),
        2,
        "the next request used a new connection"
    );
}

#[tokio::test]
async fn http1_when_the_server_offers_nothing_else() {
    let server = TestServer::start(Offer::TlsHttp1Only).await;
    let (client, _dir) = server.client(Offer::TlsHttp1Only, TIMEOUT);
    for _ in 0..10 {
        client.get("/ping", &[]).await.unwrap();
    }
    assert_eq!(
        server.accepts(),
        1,
        "sequential requests reuse one connection"
    );
    // A parked request needs a second HTTP/1.1 connection; the heartbeat
    // gets one and is not delayed either.
    let poll_client = client.clone();
    let poll = tokio::spawn(async move { poll_client.get("/slow", &[]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let beat = Instant::now();
    client.post("/ping", None).await.unwrap();
    assert!(beat.elapsed() < Duration::from_millis(300));
    poll.await.unwrap().unwrap();
    assert_eq!(server.accepts(), 2);
    // Both are kept for the next requests.
    for _ in 0..5 {
        client.get("/ping", &[]).await.unwrap();
    }
    assert_eq!(server.accepts(), 2);
}
