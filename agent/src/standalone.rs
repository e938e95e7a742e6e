//! The agent's own http-01 listener (`[challenges] listen`), like certbot
//! `--standalone`: for machines where no web server serves a webroot, or
//! whose port 80 is forwarded to the agent. Live tokens are held in memory
//! and `GET /.well-known/acme-challenge/<token>` answers the key
//! authorization as plain text; everything else is a 404 (a 405 for other
//! methods), so the port tells a scanner nothing but which tokens are live.
//!
//! The listener faces the internet, so every connection is bounded: one
//! request (no keep-alive), a small request head read within
//! [`HEADER_TIMEOUT`], the whole exchange within [`CONNECTION_TIMEOUT`],
//! at most [`MAX_CONNECTIONS`] at once (more are closed at accept). It
//! stops, closing the port, when the agent shuts down or the last
//! [`Standalone`] handle is dropped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::webroot::{valid_key_authorization, valid_token};

/// Where tokens are answered.
const PREFIX: &str = "/.well-known/acme-challenge/";
/// Most tokens live at once: far more than the host hands one agent, few
/// enough to bound the memory a confused host could make it hold.
const MAX_TOKENS: usize = 1000;
/// Most connections served at once.
const MAX_CONNECTIONS: usize = 64;
/// Longest request head (request line and headers) read.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Limit on receiving the request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Limit on one connection, first byte to last.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// The listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error(
    "`[challenges] listen` {addr}: cannot listen for http-01 challenges: {error} \
     (is another server on that port, or does port 80 need CAP_NET_BIND_SERVICE?)"
)]
pub struct ListenError {
    /// The configured address.
    pub addr: SocketAddr,
    /// Why binding failed.
    pub error: std::io::Error,
}

/// Why a token cannot be published.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a base64url token.
    #[error("token {0:?} is not 1 to 256 base64url characters")]
    BadToken(String),
    /// Not something to serve.
    #[error("the key authorization is not 1 to 1024 printable ASCII characters")]
    BadKeyAuthorization,
    /// [`MAX_TOKENS`] are live already.
    #[error("{MAX_TOKENS} tokens are live already; refusing more until some are withdrawn")]
    Full,
}

type Tokens = Arc<Mutex<HashMap<String, String>>>;

/// The running listener and its live tokens; clones share both.
#[derive(Debug, Clone)]
pub struct Standalone {
    tokens: Tokens,
    addr: SocketAddr,
    /// Stops the listener when the last handle goes.
    _stop: Arc<DropGuard>,
}

impl Standalone {
    /// Binds `addr` and serves until `shutdown` is cancelled or the last
    /// handle is dropped.
    pub async fn bind(
        addr: SocketAddr,
        shutdown: &CancellationToken,
    ) -> Result<Standalone, ListenError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|error| ListenError { addr, error })?;
        let bound = listener
            .local_addr()
            .map_err(|error| ListenError { addr, error })?;
        let tokens = Tokens::default();
        let stop = shutdown.child_token();
        tokio::spawn(serve(listener, tokens.clone(), stop.clone()));
        tracing::info!(addr = %bound, "listening for http-01 challenges");
        Ok(Standalone {
            tokens,
            addr: bound,
            _stop: Arc::new(stop.drop_guard()),
        })
    }

    /// The bound address (the configured one, with the port chosen when it
    /// was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the agent fetches its own tokens: the bound address, or
    /// loopback when bound to every address.
    pub fn check_addr(&self) -> SocketAddr {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, self.addr.port())
    }

    /// Serves `key_authorization` for `token` from now on (replacing an
    /// earlier value of the same token).
    pub fn insert(&self, token: &str, key_authorization: &str) -> Result<(), TokenError> {
        if !valid_token(token) {
            return Err(TokenError::BadToken(token.to_string()));
        }
        if !valid_key_authorization(key_authorization) {
            return Err(TokenError::BadKeyAuthorization);
        }
        let mut tokens = lock(&self.tokens);
        if tokens.len() >= MAX_TOKENS && !tokens.contains_key(token) {
            return Err(TokenError::Full);
        }
        tokens.insert(token.to_string(), key_authorization.to_string());
        Ok(())
    }

    /// Stops serving `token`; `false` when it was not live.
    pub fn remove(&self, token: &str) -> bool {
        lock(&self.tokens).remove(token).is_some()
    }
}

/// The map stays consistent whatever a panicking holder did (each change
/// is one insert or remove), so a poisoned lock is used as is.
fn lock(tokens: &Tokens) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
    tokens.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn serve(listener: TcpListener, tokens: Tokens, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, mostly: let some close.
                    tracing::warn!(error = %e, "http-01 listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "http-01 listener busy; connection closed");
            continue;
        };
        let (tokens, stop) = (tokens.clone(), stop.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let response = answer(&tokens, &request, peer);
                    async move { Ok::<_, Infallible>(response) }
                });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(2 * MAX_REQUEST_HEAD)
                .max_header_size(MAX_REQUEST_HEAD)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                () = stop.cancelled() => {}
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection) => {}
            }
        });
    }
    // Dropping the listener here closes the port.
    tracing::info!("http-01 listener stopped");
}

fn answer<B>(tokens: &Tokens, request: &Request<B>, peer: SocketAddr) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let token = path.strip_prefix(PREFIX).filter(|t| valid_token(t));
    let value = token.and_then(|t| lock(tokens).get(t).cloned());
    let host = request
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let (status, body) = match (request.method(), value) {
        (&Method::GET, Some(value)) => {
            tracing::info!(%peer, host, token = token.unwrap_or(""), "challenge token served");
            (StatusCode::OK, Bytes::from(value))
        }
        (&Method::GET, None) => {
            tracing::debug!(%peer, host, path, "no live token at this path");
            (StatusCode::NOT_FOUND, Bytes::new())
        }
        _ => (StatusCode::METHOD_NOT_ALLOWED, Bytes::new()),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
    }
    response
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    async fn listener() -> (CancellationToken, Standalone) {
        let shutdown = CancellationToken::new();
        let standalone = Standalone::bind("127.0.0.1:0".parse().unwrap(), &shutdown)
            .await
            .unwrap();
        (shutdown, standalone)
    }

    /// One raw request; (status, body).
    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!("{method} {path} HTTP/1.1\r\nHost: www.example.test\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = String::new();
        // No keep-alive: the server closes after one answer.
        stream.read_to_string(&mut answer).await.unwrap();
        let status = answer.split(' ').nth(1).unwrap().parse().unwrap();
        let body = answer.split_once("\r\n\r\n").unwrap().1.to_string();
        (status, body)
    }

    #[tokio::test]
    async fn a_live_token_is_served_and_nothing_else() {
        let (_shutdown, standalone) = listener().await;
        let addr = standalone.local_addr();
        assert_ne!(addr.port(), 0);
        let path = "/.well-known/acme-challenge/tok-EN_1";
        assert_eq!(request(addr, "GET", path).await.0, 404);
        standalone.insert("tok-EN_1", "tok-EN_1.thumb").unwrap();
        assert_eq!(
            request(addr, "GET", path).await,
            (200, "tok-EN_1.thumb".to_string())
        );
        // Unknown and malformed tokens, other paths and methods.
        for other in [
            "/.well-known/acme-challenge/other",
            "/.well-known/acme-challenge/",
            "/.well-known/acme-challenge/tok-EN_1/x",
            "/.well-known/acme-challenge/..%2Ftok-EN_1",
            "/.well-known/acme-challenge/tok-EN_1.",
            "/tok-EN_1",
            "/",
        ] {
            assert_eq!(
                request(addr, "GET", other).await,
                (404, String::new()),
                "{other}"
            );
        }
        assert_eq!(request(addr, "POST", path).await.0, 405);
        // Withdrawn: gone.
        assert!(standalone.remove("tok-EN_1"));
        assert!(!standalone.remove("tok-EN_1"));
        assert_eq!(request(addr, "GET", path).await.0, 404);
    }

    #[tokio::test]
    async fn bad_tokens_values_and_too_many_are_refused() {
        let (_shutdown, standalone) = listener().await;
        for token in ["", "a.b", "../x", "a/b", "tök", &"a".repeat(257)] {
            assert_eq!(
                standalone.insert(token, "v"),
                Err(TokenError::BadToken(token.to_string()))
            );
        }
        for value in ["", "a b", "a\nb", &"a".repeat(1025)] {
            assert_eq!(
                standalone.insert("t", value),
                Err(TokenError::BadKeyAuthorization)
            );
        }
        for i in 0..MAX_TOKENS {
            standalone.insert(&format!("t{i}"), "v").unwrap();
        }
        assert_eq!(standalone.insert("one-more", "v"), Err(TokenError::Full));
        // A live token may still be replaced.
        standalone.insert("t0", "w").unwrap();
    }

    #[tokio::test]
    async fn a_long_request_head_is_refused() {
        let (_shutdown, standalone) = listener().await;
        let addr = standalone.local_addr();
        standalone.insert("tok", "tok.x").unwrap();
        let path = format!(
            "/.well-known/acme-challenge/tok?{}",
            "a".repeat(MAX_REQUEST_HEAD)
        );
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!("GET {path} HTTP/1.1\r\nHost: www.example.test\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        // The server may close with part of the head unread, which resets
        // the connection before its 431 is read: either is a refusal.
        let _ = stream.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "{answer}"
        );
        // The same token with a short query is served.
        assert_eq!(
            request(addr, "GET", "/.well-known/acme-challenge/tok?x").await,
            (200, "tok.x".to_string())
        );
    }

    #[tokio::test]
    async fn shutdown_and_the_last_drop_close_the_port() {
        let (shutdown, standalone) = listener().await;
        let addr = standalone.local_addr();
        shutdown.cancel();
        closed(addr).await;

        let (_shutdown, standalone) = listener().await;
        let addr = standalone.local_addr();
        let clone = standalone.clone();
        drop(standalone);
        assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
        drop(clone);
        closed(addr).await;
    }

    async fn closed(addr: SocketAddr) {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{addr} still accepts connections");
    }

    #[tokio::test]
    async fn a_port_in_use_is_a_clear_error_and_any_address_is_checked_on_loopback() {
        let (_shutdown, standalone) = listener().await;
        let err = Standalone::bind(standalone.local_addr(), &CancellationToken::new())
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("[challenges] listen"), "{message}");
        assert!(
            message.contains(&standalone.local_addr().to_string()),
            "{message}"
        );

        let any = Standalone::bind("0.0.0.0:0".parse().unwrap(), &CancellationToken::new())
            .await
            .unwrap();
        let check = any.check_addr();
        assert_eq!(check.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(check.port(), any.local_addr().port());
    }
}
