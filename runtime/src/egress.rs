//! Outgoing HTTP for plugins: the wasi-http send hook.
//!
//! Every request a guest makes through `wasi:http/outgoing-handler` comes
//! here. It is checked against the instance's [`HostGrants`]; a granted name
//! is resolved and each address checked again (so a name cannot smuggle the
//! guest onto loopback, the metadata service or a private network), and the
//! connection is made to the very address that passed the check, so a second
//! resolution cannot swap it (DNS rebinding).
//!
//! This replaces wasmtime-wasi-http's `default_send_request`, which resolves
//! names itself and offers no point to check the addresses it connects to.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::client::conn::http1;
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiHttpHooks};

use crate::bounds::{MAX_DENIALS, MAX_SHORT_TEXT};
use crate::grants::{Destination, HostGrants};

/// Upper bounds on the network waits of one request, whatever the guest
/// asks for; the call deadline bounds the whole call in any case.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(120);

/// Refusals recorded during one call, shared between the hook (which runs
/// in spawned tasks) and the code that classifies the call's outcome.
pub(crate) type DenialLog = Arc<Mutex<Vec<String>>>;

type WasiBody = wasmtime_wasi_http::WasiBody;
type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;
type SendFuture =
    Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send>;

/// Per-call hook state.
pub(crate) struct EgressHooks {
    pub(crate) plugin: Arc<str>,
    pub(crate) instance: Arc<str>,
    pub(crate) grants: Arc<HostGrants>,
    pub(crate) tls: Arc<rustls::ClientConfig>,
    pub(crate) denials: DenialLog,
    /// The instance's secrets, redacted from denial texts (a URL may carry
    /// an API key in its query).
    pub(crate) redactor: Arc<crate::bounds::Redactor>,
}

impl EgressHooks {
    fn deny(&self, url: &str, reason: &str) -> HttpError {
        deny(
            &self.plugin,
            &self.instance,
            &self.redactor,
            &self.denials,
            url,
            reason,
        )
    }
}

/// Records and logs one refusal. The URL is the guest's, so it is redacted
/// and cut, and only the first [`MAX_DENIALS`] refusals of a call are kept
/// and logged: a guest looping over refused requests must not flood the
/// host's logs or memory.
fn deny(
    plugin: &str,
    instance: &str,
    redactor: &crate::bounds::Redactor,
    log: &DenialLog,
    url: &str,
    reason: &str,
) -> HttpError {
    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
    if log.len() < MAX_DENIALS {
        let denial = redactor.bound(&format!("http {url}: {reason}"), MAX_SHORT_TEXT);
        tracing::warn!(plugin, instance, denial, "plugin HTTP request refused");
        log.push(denial);
    } else if log.len() == MAX_DENIALS {
        // `finish` bounds the list it reports; this marks the stop here.
        log.push("… further refusals not recorded".into());
    }
    HttpError::HttpRequestDenied
}

impl WasiHttpHooks for EgressHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> SendFuture {
        let uri = request.uri().clone();
        let url = uri.to_string();
        let scheme = uri.scheme_str().unwrap_or("").to_string();
        let tls = scheme.eq_ignore_ascii_case("https");
        let Some(host) = uri.host().map(str::to_string) else {
            let err = self.deny(&url, "request has no host");
            return Box::new(async move { Err(err) });
        };
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let destination = match self.grants.check(&scheme, &host, port) {
            Ok(d) => d,
            Err(reason) => {
                let err = self.deny(&url, &reason);
                return Box::new(async move { Err(err) });
            }
        };
        let plugin = self.plugin.clone();
        let instance = self.instance.clone();
        let denials = self.denials.clone();
        let redactor = self.redactor.clone();
        let tls_config = self.tls.clone();
        Box::new(async move {
            let addrs = match resolve(destination, port).await {
                Ok(addrs) => addrs,
                Err(Resolve::Dns(e)) => {
                    return Err(HttpError::DnsError {
                        rcode: Some(e),
                        info_code: None,
                    });
                }
                Err(Resolve::Denied(reason)) => {
                    return Err(deny(&plugin, &instance, &redactor, &denials, &url, &reason));
                }
            };
            send(request, options, &host, &addrs, tls.then_some(tls_config)).await
        })
    }
}

enum Resolve {
    Dns(String),
    Denied(String),
}

async fn resolve(destination: Destination, port: u16) -> Result<Vec<SocketAddr>, Resolve> {
    match destination {
        Destination::Literal(ip) => Ok(vec![SocketAddr::new(ip, port)]),
        Destination::Name { host, loopback_ok } => {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| Resolve::Dns(e.to_string()))?
                .collect();
            if addrs.is_empty() {
                return Err(Resolve::Dns(format!("{host} has no addresses")));
            }
            // One bad address refuses the name: connecting only to the good
            // ones would let an attacker who controls the zone race us.
            for addr in &addrs {
                HostGrants::check_resolved(addr.ip(), loopback_ok)
                    .map_err(|reason| Resolve::Denied(format!("{host} {reason}")))?;
            }
            Ok(addrs)
        }
    }
}

async fn connect(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, HttpError> {
    let mut last = HttpError::ConnectionRefused;
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = HttpError::Connect(e),
            Err(_) => last = HttpError::ConnectionTimeout,
        }
    }
    Err(last)
}

fn server_name(host: &str) -> Result<rustls::pki_types::ServerName<'static>, HttpError> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(rustls::pki_types::ServerName::from(ip));
    }
    rustls::pki_types::ServerName::try_from(bare.to_string())
        .map_err(HttpError::InvalidDnsNameError)
}

async fn send(
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    host: &str,
    addrs: &[SocketAddr],
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<(http::Response<WasiBody>, IoFuture), HttpError> {
    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .unwrap_or(MAX_CONNECT_TIMEOUT)
        .min(MAX_CONNECT_TIMEOUT);
    let first_byte_timeout = options
        .and_then(|o| o.first_byte_timeout)
        .unwrap_or(MAX_FIRST_BYTE_TIMEOUT)
        .min(MAX_FIRST_BYTE_TIMEOUT);

    let tcp = connect(addrs, connect_timeout).await?;
    // Origin-form request target: scheme and authority travel in Host only.
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    *request.uri_mut() = path
        .parse::<http::Uri>()
        .map_err(|_| HttpError::HttpRequestUriInvalid)?;

    let (mut sender, conn) = match tls {
        Some(config) => {
            let name = server_name(host)?;
            let stream = tokio::time::timeout(
                connect_timeout,
                tokio_rustls::TlsConnector::from(config).connect(name, tcp),
            )
            .await
            .map_err(|_| HttpError::ConnectionTimeout)?
            .map_err(HttpError::Tls)?;
            let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
            (sender, drive(conn))
        }
        None => {
            let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
            (sender, drive(conn))
        }
    };
    let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
        .await
        .map_err(|_| HttpError::ConnectionReadTimeout)??;
    let response = response.map(|body| body.map_err(HttpError::from).boxed_unsync());
    Ok((response, conn))
}

/// Runs the connection in its own task (it must make progress while the
/// request is sent) and hands back a future for its final result.
fn drive<C>(conn: C) -> IoFuture
where
    C: Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    let task = tokio::spawn(conn);
    Box::new(async move {
        match task.await {
            Ok(result) => result.map_err(HttpError::from),
            Err(e) => Err(HttpError::InternalError(Some(e.to_string()))),
        }
    })
}
