//! Connections to the host, opened once and reused.
//!
//! HTTP/2 is preferred: ALPN `h2` over TLS, prior knowledge over plain
//! HTTP (the host serves both). One HTTP/2 connection carries every
//! request of an [`crate::ApiClient`] and its clones at once, so an agent's
//! parked long poll and its heartbeats share one socket; concurrent callers
//! wait for the connection being opened rather than opening their own. A
//! server that negotiates only HTTP/1.1 gets a connection per request in
//! flight, kept idle for the next one.
//!
//! A connection the server closed is noticed (its driver task ends) and
//! replaced by the next request. A request is sent again on a fresh
//! connection only when hyper hands it back unsent; one that may have
//! reached the host is never repeated.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::api::{ClientError, FingerprintVerifier};

/// Idle HTTP/1.1 connections kept for reuse (an agent needs two at most:
/// its long poll and its heartbeat).
const MAX_IDLE_HTTP1: usize = 4;

/// How a connection to the host is opened.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// Host to connect to (IPv6 without brackets).
    pub connect_host: String,
    pub port: u16,
    /// `host:port` as in the URL, for `Host`, `:authority` and messages.
    pub authority: String,
    pub tls: Option<TlsSetup>,
}

#[derive(Debug, Clone)]
pub(crate) struct TlsSetup {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
    pub pin: Option<Arc<FingerprintVerifier>>,
    pub public_roots: bool,
}

/// The HTTP version a request goes out with, which decides its form
/// (absolute URI for HTTP/2, `Host` header for HTTP/1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    Http1,
    Http2,
}

/// A connection handed to one request.
pub(crate) struct Lease {
    /// Which connection (for [`Pool::discard`]).
    pub id: u64,
    sender: Sender,
}

enum Sender {
    Http2(http2::SendRequest<Full<Bytes>>),
    Http1(http1::SendRequest<Full<Bytes>>),
}

/// What became of a request sent on a [`Lease`].
pub(crate) enum Sent {
    /// The response head arrived.
    Answered(Response<Incoming>),
    /// hyper handed the request back before writing it: safe to send again.
    Unsent(hyper::Error),
    /// It failed after it may have reached the host.
    Failed(hyper::Error),
}

impl Lease {
    pub fn version(&self) -> Version {
        match self.sender {
            Sender::Http2(_) => Version::Http2,
            Sender::Http1(_) => Version::Http1,
        }
    }

    /// Sends `request` once; never re-sends it.
    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Sent {
        let outcome = match &mut self.sender {
            Sender::Http2(s) => match s.ready().await {
                Ok(()) => s.try_send_request(request).await,
                Err(e) => return Sent::Unsent(e),
            },
            Sender::Http1(s) => match s.ready().await {
                Ok(()) => s.try_send_request(request).await,
                Err(e) => return Sent::Unsent(e),
            },
        };
        match outcome {
            Ok(response) => Sent::Answered(response),
            Err(e) => unsent_or_failed(e),
        }
    }
}

fn unsent_or_failed(mut e: TrySendError<Request<Full<Bytes>>>) -> Sent {
    if e.take_message().is_some() {
        Sent::Unsent(e.into_error())
    } else {
        Sent::Failed(e.into_error())
    }
}

/// The connections of one client and its clones.
pub(crate) struct Pool {
    endpoint: Endpoint,
    /// The HTTP/2 connection in use. Locked while one is opened, so
    /// concurrent requests share it instead of opening one each.
    shared: tokio::sync::Mutex<Option<(u64, http2::SendRequest<Full<Bytes>>)>>,
    /// Idle HTTP/1.1 connections, when the server does not speak HTTP/2.
    idle_http1: Mutex<Vec<(u64, http1::SendRequest<Full<Bytes>>)>>,
    opened: AtomicU64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("authority", &self.endpoint.authority)
            .field("opened", &self.opened.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Pool {
    pub fn new(endpoint: Endpoint) -> Pool {
        Pool {
            endpoint,
            shared: tokio::sync::Mutex::new(None),
            idle_http1: Mutex::new(Vec::new()),
            opened: AtomicU64::new(0),
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Connections opened so far (TCP connects that succeeded).
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// A live connection: the shared HTTP/2 one, an idle HTTP/1.1 one, or
    /// a new one.
    pub async fn acquire(&self) -> Result<Lease, ClientError> {
        let mut shared = self.shared.lock().await;
        if let Some((id, sender)) = shared.as_ref() {
            if !sender.is_closed() {
                return Ok(Lease {
                    id: *id,
                    sender: Sender::Http2(sender.clone()),
                });
            }
            *shared = None;
        }
        if let Some((id, sender)) = self.idle() {
            return Ok(Lease {
                id,
                sender: Sender::Http1(sender),
            });
        }
        let id = self.opened.fetch_add(1, Ordering::Relaxed) + 1;
        let sender = self.endpoint.open().await.inspect_err(|_| {
            self.opened.fetch_sub(1, Ordering::Relaxed);
        })?;
        if let Sender::Http2(s) = &sender {
            *shared = Some((id, s.clone()));
        }
        Ok(Lease { id, sender })
    }

    fn idle(&self) -> Option<(u64, http1::SendRequest<Full<Bytes>>)> {
        let mut idle = self.idle_http1.lock().ok()?;
        while let Some((id, sender)) = idle.pop() {
            if !sender.is_closed() {
                return Some((id, sender));
            }
        }
        None
    }

    /// Gives back a connection whose exchange finished: an HTTP/1.1 one
    /// waits for the next request (the shared HTTP/2 one never left).
    pub fn release(&self, lease: Lease) {
        if let Sender::Http1(sender) = lease.sender
            && !sender.is_closed()
            && let Ok(mut idle) = self.idle_http1.lock()
            && idle.len() < MAX_IDLE_HTTP1
        {
            idle.push((lease.id, sender));
        }
    }

    /// Stops handing out connection `id` (it failed, or a request on it
    /// got no answer in time). Requests already on it go on; it closes
    /// when the last of them ends. Idle HTTP/1.1 connections go too: they
    /// were opened to the same server, which has likely gone away, and
    /// the request retried after this one must get a new connection.
    pub async fn discard(&self, id: u64) {
        let mut shared = self.shared.lock().await;
        if shared.as_ref().is_some_and(|(current, _)| *current == id) {
            *shared = None;
        }
        if let Ok(mut idle) = self.idle_http1.lock() {
            idle.clear();
        }
    }
}

impl Endpoint {
    /// Connects, handshakes TLS when configured, and starts the HTTP
    /// connection's driver task.
    async fn open(&self) -> Result<Sender, ClientError> {
        let tcp = TcpStream::connect((self.connect_host.as_str(), self.port))
            .await
            .map_err(|source| ClientError::Connect {
                authority: self.authority.clone(),
                source,
            })?;
        // A request is one small write: sending it at once beats Nagle's
        // wait for the previous segment's ACK.
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return self.start(tcp, Version::Http2).await;
        };
        let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
            .connect(tls.server_name.clone(), tcp)
            .await
            .map_err(|source| match tls.pin.as_ref().and_then(|p| p.mismatch()) {
                Some((expected, observed)) => ClientError::PinMismatch {
                    authority: self.authority.clone(),
                    expected,
                    observed,
                },
                None => ClientError::Handshake {
                    authority: self.authority.clone(),
                    source,
                    hint: if tls.public_roots {
                        " (trusted against the public CAs; for a private or self-signed host certificate pass --ca-file or --pin-sha256)"
                    } else {
                        ""
                    },
                },
            })?;
        let version = match stream.get_ref().1.alpn_protocol() {
            Some(b"h2") => Version::Http2,
            _ => Version::Http1,
        };
        self.start(stream, version).await
    }

    async fn start<S>(&self, stream: S, version: Version) -> Result<Sender, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(stream);
        let authority = self.authority.clone();
        let failed = |e: hyper::Error| ClientError::Http {
            authority: authority.clone(),
            reason: e.to_string(),
        };
        match version {
            Version::Http2 => {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(failed)?;
                tokio::spawn(drive(conn, self.authority.clone()));
                Ok(Sender::Http2(sender))
            }
            Version::Http1 => {
                let (sender, conn) = http1::handshake(io).await.map_err(failed)?;
                tokio::spawn(drive(conn, self.authority.clone()));
                Ok(Sender::Http1(sender))
            }
        }
    }
}

/// Runs a connection until the server closes it or every sender is gone.
async fn drive<C>(conn: C, authority: String)
where
    C: std::future::Future<Output = hyper::Result<()>>,
{
    if let Err(e) = conn.await {
        tracing::debug!(%authority, error = %e, "API connection ended with an error");
    }
}
