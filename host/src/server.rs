//! The HTTP(S) listener: serves the axum application over rustls (or plain
//! HTTP when explicitly configured) and shuts down gracefully.
//!
//! Every connection speaks HTTP/1.1 or HTTP/2 (ALPN `h2` over TLS, prior
//! knowledge over plain HTTP): an agent keeps one HTTP/2 connection and
//! multiplexes its parked long poll and its heartbeats on it. Handlers see
//! the peer's address as axum's [`ConnectInfo<SocketAddr>`] extension.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// TLS handshakes slower than this are dropped (slowloris guard).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// An HTTP/2 connection silent this long is pinged; agents talk at least
/// every heartbeat and long poll (30 s by default), so a busy fleet costs no
/// pings, while a vanished peer's connection (and its file descriptor) is
/// closed instead of held forever.
const H2_PING_AFTER_IDLE: Duration = Duration::from_secs(60);
/// How long a ping may go unanswered before the connection is closed.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// The connection builder: HTTP/1.1 and HTTP/2 on every connection.
fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_PING_AFTER_IDLE)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    builder
}

/// Prepares an accepted socket. Without `TCP_NODELAY` a response written
/// right after another small write (the TLS 1.3 session ticket, say) waits
/// for the client's delayed ACK: 40 ms on Linux, on every fresh TLS
/// connection.
fn accepted(stream: &TcpStream, peer: SocketAddr) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
}

/// The application as one connection's service, the peer's address added
/// to each request.
fn connection_service(
    app: Router,
    peer: SocketAddr,
) -> TowerToHyperService<
    tower::util::MapRequest<
        Router,
        impl FnMut(hyper::Request<Incoming>) -> hyper::Request<Incoming> + Clone,
    >,
> {
    TowerToHyperService::new(
        app.map_request(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        }),
    )
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then lets open
/// connections finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let builder = builder();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        accepted(&stream, peer);
        let service = connection_service(app.clone(), peer);
        match &acceptor {
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            None => {
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!(?grace, "connections still open after the grace period; closing"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Empty};
    use std::time::Instant;

    fn app() -> Router {
        Router::new()
            .route("/ping", get(|| async { "pong" }))
            .route(
                "/peer",
                get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
            )
    }

    /// A server on a free loopback port, stopped when the token is dropped.
    async fn start(
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> (SocketAddr, tokio_util::sync::DropGuard) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            app(),
            tls,
            stop.clone(),
            Duration::from_secs(1),
        ));
        (addr, stop.drop_guard())
    }

    fn request(path: &str) -> hyper::Request<Empty<Bytes>> {
        hyper::Request::get(format!("http://localhost{path}"))
            .header(hyper::header::HOST, "localhost")
            .body(Empty::new())
            .unwrap()
    }

    /// One HTTP/1.1 GET on `io`, the body as text.
    async fn get_http1<S>(io: S, path: &str) -> String
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn);
        let response = sender.send_request(request(path)).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_fresh_tls_connection_answers_without_the_delayed_ack_wait() {
        let tmp = tempfile::tempdir().unwrap();
        let dev = crate::tls::ensure_dev_certificate(tmp.path(), &[]).unwrap();
        let config = crate::tls::server_config(&dev.cert_path, &dev.key_path).unwrap();
        let (addr, _stop) = start(Some(config)).await;
        let mut roots = rustls::RootCertStore::empty();
        for cert in crate::tls::load_certificates(&dev.cert_path).unwrap() {
            roots.add(cert).unwrap();
        }
        let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();

        // What the agent did before it kept its connection, and what the
        // CLI does per command: connect, handshake, one request.
        let mut took = Vec::new();
        for _ in 0..20 {
            let started = Instant::now();
            let tcp = TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let tls = connector.connect(name.clone(), tcp).await.unwrap();
            assert_eq!(get_http1(tls, "/ping").await, "pong");
            took.push(started.elapsed());
        }
        took.sort();
        let (fastest, median) = (took[0], took[took.len() / 2]);
        // Without TCP_NODELAY on the accepted socket every answer waits
        // behind the session ticket for the client's delayed ACK: 40 ms and
        // more each time (measured: 44 to 55 ms). With it a request takes a
        // few milliseconds; the bounds leave room for a loaded machine,
        // which only makes requests slower.
        assert!(
            fastest < Duration::from_millis(15) && median < Duration::from_millis(35),
            "requests on fresh TLS connections took {took:?}"
        );
    }

    #[tokio::test]
    async fn handlers_see_the_peer_address_over_http1_and_http2() {
        let (addr, _stop) = start(None).await;
        let from = |ip: &str| {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket
                .bind(SocketAddr::new(ip.parse().unwrap(), 0))
                .unwrap();
            socket
        };
        let tcp = from("127.0.0.2").connect(addr).await.unwrap();
        assert_eq!(get_http1(tcp, "/peer").await, "127.0.0.2");

        // HTTP/2 with prior knowledge, two requests on one connection.
        let tcp = from("127.0.0.3").connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        for _ in 0..2 {
            let response = sender.send_request(request("/peer")).await.unwrap();
            assert_eq!(response.version(), hyper::Version::HTTP_2);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"127.0.0.3");
        }
    }
}
