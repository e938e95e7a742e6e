//! The HTTP(S) client of the host API: hyper 1 over tokio-rustls (ring
//! provider), HTTP/2 on one kept connection where the server offers it
//! ([`crate::conn`]), HTTP/1.1 otherwise.
//!
//! The server is trusted either through a PEM file of certificates
//! ([`Trust::CaFile`], for example the host's development certificate) or
//! by pinning the SHA-256 fingerprint of its end-entity certificate
//! ([`Trust::PinSha256`]). There is deliberately no way to skip
//! verification. Plain `http://` URLs are used as they are, for hosts
//! configured with `tls.plain_http = true`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Method, Request, StatusCode, header};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use serde_json::Value;

use crate::conn::{Endpoint, Pool, Sent, TlsSetup, Version};

/// Largest response body accepted, in bytes.
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
/// Default limit on one request (connect, handshake, exchange).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Path prefix of the API.
const API_PREFIX: &str = "/api/v1";

/// How the server's certificate is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Certificates (PEM) to trust as roots; the server name is verified.
    CaFile(PathBuf),
    /// Trust exactly the end-entity certificate with this SHA-256
    /// fingerprint (hex, colons allowed); name and chain are not checked.
    PinSha256(String),
    /// The Mozilla root programme (webpki-roots): for a host whose
    /// certificate comes from a public CA. The server name is verified.
    PublicRoots,
}

/// What an [`ApiClient`] needs.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Base URL of the host, e.g. `https://127.0.0.1:8443`.
    pub base_url: String,
    /// API key or agent credential sent as `Authorization: Bearer`; empty
    /// for the unauthenticated calls (agent registration).
    pub api_key: String,
    /// How to trust the server (required for `https`).
    pub trust: Option<Trust>,
    /// Limit on one request.
    pub timeout: Duration,
    /// `User-Agent` sent with every request.
    pub user_agent: String,
}

/// Errors of the API client. Each displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The host URL cannot be used.
    #[error("invalid host URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The `--pin-sha256` value is not a SHA-256 fingerprint.
    #[error(
        "invalid --pin-sha256 `{0}`: expected 64 hex digits (colons allowed), as logged by the host at start"
    )]
    InvalidPin(String),
    /// An `https` URL without a way to trust the server.
    #[error(
        "cannot verify {0}: pass --ca-file PEM (the host's certificate or its CA) or --pin-sha256 FINGERPRINT (logged by the host at start)"
    )]
    NoTrust(String),
    /// The CA file could not be loaded.
    #[error("--ca-file: {0}")]
    CaFile(String),
    /// The TLS client configuration was refused.
    #[error("TLS client configuration: {0}")]
    TlsConfig(#[from] rustls::Error),
    /// The TCP connection failed.
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        /// `host:port`.
        authority: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The server's certificate does not have the pinned fingerprint.
    #[error(
        "TLS: {authority} presented a certificate with SHA-256 fingerprint {observed}, not the pinned {expected}"
    )]
    PinMismatch {
        /// `host:port`.
        authority: String,
        /// The fingerprint pinned.
        expected: String,
        /// The fingerprint presented.
        observed: String,
    },
    /// The TLS handshake failed (untrusted certificate, wrong name, ...).
    #[error("TLS handshake with {authority} failed: {source}{hint}")]
    Handshake {
        /// Advice when the public roots were used (a private or
        /// self-signed host certificate needs a CA file or a pin).
        hint: &'static str,
        /// `host:port`.
        authority: String,
        /// The handshake error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP exchange with {authority} failed: {reason}")]
    Http {
        /// `host:port`.
        authority: String,
        /// What failed.
        reason: String,
    },
    /// No complete answer in time.
    #[error("no answer from {authority} within {secs} s")]
    Timeout {
        /// `host:port`.
        authority: String,
        /// The limit.
        secs: u64,
    },
    /// The API answered with its error envelope.
    #[error("{code}: {message} (request {request_id})")]
    Api {
        /// HTTP status.
        status: u16,
        /// Machine-readable code, e.g. `unauthorized`.
        code: String,
        /// Human-readable message.
        message: String,
        /// The request field at fault, when the host named one.
        param: Option<String>,
        /// Structured context (dependency counts, a retry delay …), boxed to
        /// keep the error small.
        details: Option<Box<Value>>,
        /// The request id the host logged.
        request_id: String,
    },
    /// An error status without the envelope (a proxy in between, say).
    #[error("HTTP {status} from the server: {snippet}")]
    UnexpectedStatus {
        /// HTTP status.
        status: u16,
        /// The start of the body.
        snippet: String,
    },
    /// A success answer whose body is not JSON.
    #[error("the server's answer is not JSON: {0}")]
    InvalidJson(String),
}

/// One successful answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiReply {
    /// HTTP status (2xx).
    pub status: u16,
    /// The JSON body; `None` when empty (204).
    pub json: Option<Value>,
}

/// A client of one host's `/api/v1`. Clones share its connections
/// ([`crate::conn`]): one HTTP/2 connection carries all their requests.
#[derive(Debug, Clone)]
pub struct ApiClient {
    pool: Arc<Pool>,
    /// `http` or `https`, for HTTP/2's absolute request URIs.
    scheme: &'static str,
    /// Path prefix before `/api/v1` (a reverse proxy's), without trailing `/`.
    base_path: String,
    api_key: String,
    timeout: Duration,
    user_agent: String,
}

impl ApiClient {
    /// A client from its options: parses the URL and builds the TLS
    /// configuration (nothing is sent yet).
    pub fn new(options: ClientOptions) -> Result<ApiClient, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: options.base_url.clone(),
            reason: reason.to_owned(),
        };
        let url = url::Url::parse(&options.base_url).map_err(|e| invalid(&e.to_string()))?;
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(invalid("the scheme must be https or http")),
        };
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(invalid(
                "it must not carry a query, fragment or credentials",
            ));
        }
        let host = url.host().ok_or_else(|| invalid("no host"))?;
        let (connect_host, server_name) = match host {
            url::Host::Domain(d) => (
                d.to_owned(),
                ServerName::try_from(d.to_owned()).map_err(|e| invalid(&e.to_string()))?,
            ),
            url::Host::Ipv4(ip) => (ip.to_string(), ServerName::IpAddress(ip.into())),
            url::Host::Ipv6(ip) => (ip.to_string(), ServerName::IpAddress(ip.into())),
        };
        let port = url
            .port_or_known_default()
            .ok_or_else(|| invalid("no port"))?;
        let authority = format!("{}:{port}", url.host_str().unwrap_or(&connect_host));
        let tls = if https {
            let Some(trust) = &options.trust else {
                return Err(ClientError::NoTrust(authority));
            };
            let (config, pin) = client_config(trust)?;
            Some(TlsSetup {
                config: Arc::new(config),
                server_name,
                pin,
                public_roots: *trust == Trust::PublicRoots,
            })
        } else {
            None
        };
        Ok(ApiClient {
            pool: Arc::new(Pool::new(Endpoint {
                connect_host,
                port,
                authority,
                tls,
            })),
            scheme: if https { "https" } else { "http" },
            base_path: url.path().trim_end_matches('/').to_owned(),
            api_key: options.api_key,
            timeout: options.timeout,
            user_agent: options.user_agent,
        })
    }

    /// The same client (sharing its connections) with another limit per
    /// request: a long poll needs more than a heartbeat.
    pub fn with_timeout(&self, timeout: Duration) -> ApiClient {
        ApiClient {
            timeout,
            ..self.clone()
        }
    }

    /// Connections this client and its clones have opened so far.
    pub fn connections_opened(&self) -> u64 {
        self.pool.opened()
    }

    /// `GET` an API path (relative to `/api/v1`) with query parameters.
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<ApiReply, ClientError> {
        self.send(Method::GET, path, query, None).await
    }

    /// `POST` a JSON body (or none).
    pub async fn post(&self, path: &str, body: Option<&Value>) -> Result<ApiReply, ClientError> {
        self.send(Method::POST, path, &[], body).await
    }

    /// `DELETE` with query parameters.
    pub async fn delete(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<ApiReply, ClientError> {
        self.send(Method::DELETE, path, query, None).await
    }

    /// `POST /notifiers/{id}/disable`: the notifier gets no new
    /// notifications and its queue waits until it is enabled or cancelled.
    pub async fn disable_notifier(&self, id: &str) -> Result<ApiReply, ClientError> {
        self.post(&format!("/notifiers/{}/disable", path_segment(id)), None)
            .await
    }

    /// `POST /notifiers/{id}/enable`: delivery resumes.
    pub async fn enable_notifier(&self, id: &str) -> Result<ApiReply, ClientError> {
        self.post(&format!("/notifiers/{}/enable", path_segment(id)), None)
            .await
    }

    /// `POST /notifiers/{id}/notifications/cancel`: cancels the notifier's
    /// pending notifications; the answer counts them (`cancelled`,
    /// `in_flight`).
    pub async fn cancel_notifier_notifications(&self, id: &str) -> Result<ApiReply, ClientError> {
        self.post(
            &format!("/notifiers/{}/notifications/cancel", path_segment(id)),
            None,
        )
        .await
    }

    /// `POST /api-keys` (admin): a new operator API key with `scope`
    /// (`admin`, `operator`, `read_only`), expiring after `expires_in_days`
    /// if given. The answer's `secret` is the key, shown this once.
    pub async fn create_api_key(
        &self,
        name: &str,
        scope: &str,
        expires_in_days: Option<u32>,
    ) -> Result<ApiReply, ClientError> {
        let mut body = serde_json::json!({ "name": name, "scope": scope });
        if let Some(days) = expires_in_days {
            body["expires_in_days"] = Value::from(days);
        }
        self.post("/api-keys", Some(&body)).await
    }

    /// `DELETE /api-keys/{id}` (admin): revokes the key; a revoked key
    /// answers the same again.
    pub async fn revoke_api_key(&self, id: &str) -> Result<ApiReply, ClientError> {
        self.delete(&format!("/api-keys/{}", path_segment(id)), &[])
            .await
    }

    /// Sends one request, on the client's connection when it has a live
    /// one. Error statuses become [`ClientError::Api`] (or
    /// [`ClientError::UnexpectedStatus`]). Sent at most once: only a
    /// request hyper hands back unsent is tried again, on a new connection.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<ApiReply, ClientError> {
        let mut target = format!("{}{API_PREFIX}{path}", self.base_path);
        if !query.is_empty() {
            let mut ser = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in query {
                ser.append_pair(k, v);
            }
            target.push('?');
            target.push_str(&ser.finish());
        }
        let body = body.map(|v| Bytes::from(v.to_string()));
        // The connection in use when the limit struck: it is not trusted
        // with another request (the host or the path to it may be gone).
        let in_use = AtomicU64::new(0);
        let exchange = self.exchange(&method, &target, body.as_ref(), &in_use);
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => {
                let (status, body) = result?;
                interpret(status, &body)
            }
            Err(_) => {
                self.pool.discard(in_use.load(Ordering::Relaxed)).await;
                Err(ClientError::Timeout {
                    authority: self.authority().to_owned(),
                    secs: self.timeout.as_secs(),
                })
            }
        }
    }

    fn authority(&self) -> &str {
        &self.pool.endpoint().authority
    }

    /// One request in the form its connection's HTTP version wants.
    fn request(
        &self,
        version: Version,
        method: &Method,
        target: &str,
        body: Option<&Bytes>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let mut builder = Request::builder()
            .method(method.clone())
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, &self.user_agent);
        builder = match version {
            // `:scheme` and `:authority` come from the URI.
            Version::Http2 => {
                builder.uri(format!("{}://{}{target}", self.scheme, self.authority()))
            }
            Version::Http1 => builder.uri(target).header(header::HOST, self.authority()),
        };
        if !self.api_key.is_empty() {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {}", self.api_key));
        }
        let bytes = match body {
            Some(b) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                b.clone()
            }
            None => Bytes::new(),
        };
        builder
            .body(Full::new(bytes))
            .map_err(|e| self.http_error(e))
    }

    async fn exchange(
        &self,
        method: &Method,
        target: &str,
        body: Option<&Bytes>,
        in_use: &AtomicU64,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let mut retried = false;
        loop {
            let mut lease = self.pool.acquire().await?;
            in_use.store(lease.id, Ordering::Relaxed);
            let request = self.request(lease.version(), method, target, body)?;
            let response = match lease.send(request).await {
                Sent::Answered(response) => response,
                // The connection died before the request left: the host
                // never saw it. Once, on a new connection.
                Sent::Unsent(e) => {
                    self.pool.discard(lease.id).await;
                    if retried {
                        return Err(self.http_error(e));
                    }
                    tracing::debug!(authority = %self.authority(), error = %e,
                        "connection closed before the request was sent; using a new one");
                    retried = true;
                    continue;
                }
                Sent::Failed(e) => {
                    self.pool.discard(lease.id).await;
                    return Err(self.http_error(e));
                }
            };
            let status = response.status();
            let collected = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await;
            return match collected {
                Ok(body) => {
                    self.pool.release(lease);
                    Ok((status, body.to_bytes()))
                }
                Err(e) => {
                    self.pool.discard(lease.id).await;
                    Err(self.http_error(e))
                }
            };
        }
    }

    fn http_error(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Http {
            authority: self.authority().to_owned(),
            reason: e.to_string(),
        }
    }
}

/// A reply from status and body: success JSON, or the envelope as an error.
fn interpret(status: StatusCode, body: &[u8]) -> Result<ApiReply, ClientError> {
    if status.is_success() {
        let json = if body.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(
                serde_json::from_slice(body)
                    .map_err(|e| ClientError::InvalidJson(e.to_string()))?,
            )
        };
        return Ok(ApiReply {
            status: status.as_u16(),
            json,
        });
    }
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let err = parsed.as_ref().map(|v| &v["error"]);
    if let Some(err) = err
        && let (Some(code), Some(message)) = (err["code"].as_str(), err["message"].as_str())
    {
        return Err(ClientError::Api {
            status: status.as_u16(),
            code: code.to_owned(),
            message: message.to_owned(),
            param: err["param"].as_str().map(str::to_owned),
            details: err
                .get("details")
                .filter(|d| !d.is_null())
                .map(|d| Box::new(d.clone())),
            request_id: err["request_id"].as_str().unwrap_or("-").to_owned(),
        });
    }
    let text = String::from_utf8_lossy(body);
    let snippet: String = text.chars().take(200).collect();
    Err(ClientError::UnexpectedStatus {
        status: status.as_u16(),
        snippet: snippet.split_whitespace().collect::<Vec<_>>().join(" "),
    })
}

/// The rustls client configuration for a trust choice, with the pinning
/// verifier when one is used.
fn client_config(
    trust: &Trust,
) -> Result<(ClientConfig, Option<Arc<FingerprintVerifier>>), ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let (mut config, pin) = match trust {
        Trust::CaFile(path) => {
            let certs = certplane_pki::pem::load_certificates(path)
                .map_err(|e| ClientError::CaFile(e.to_string()))?;
            let mut roots = RootCertStore::empty();
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| ClientError::CaFile(format!("{}: {e}", path.display())))?;
            }
            (
                builder.with_root_certificates(roots).with_no_client_auth(),
                None,
            )
        }
        Trust::PublicRoots => {
            let roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            (
                builder.with_root_certificates(roots).with_no_client_auth(),
                None,
            )
        }
        Trust::PinSha256(hex_pin) => {
            let verifier = Arc::new(FingerprintVerifier::pinned(hex_pin, &provider)?);
            (
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(verifier.clone())
                    .with_no_client_auth(),
                Some(verifier),
            )
        }
    };
    // HTTP/2 first: one connection for everything (see `conn`).
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((config, pin))
}

/// An id as one path segment: ids are opaque, so escape them.
fn path_segment(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Parses a SHA-256 fingerprint: 64 hex digits, colons and case ignored.
pub fn parse_pin(pin: &str) -> Result<[u8; 32], ClientError> {
    let cleaned: String = pin.trim().chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(&cleaned).map_err(|_| ClientError::InvalidPin(pin.to_owned()))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| ClientError::InvalidPin(pin.to_owned()))
}

/// Identifies the server's end-entity certificate by the SHA-256 of its
/// DER instead of by a chain to a root.
///
/// - [`FingerprintVerifier::pinned`] trusts exactly one certificate: the
///   pin is the identity, so name and chain are not checked.
/// - [`FingerprintVerifier::observing`] accepts any certificate and records
///   its fingerprint: for probes that report what an endpoint serves (the
///   caller compares it with what it deployed; that comparison is the
///   check, not trust).
///
/// Either way the handshake signature is verified against the presented
/// certificate's key, so the server must hold its private key: a copy of
/// the (public) certificate cannot pass.
#[derive(Debug)]
pub struct FingerprintVerifier {
    expected: Option<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
    /// The fingerprint last presented (hex).
    observed: Mutex<Option<String>>,
}

impl FingerprintVerifier {
    /// Trusts only the certificate with this hex fingerprint, verifying
    /// signatures with `provider`'s algorithms.
    pub fn pinned(pin: &str, provider: &CryptoProvider) -> Result<Self, ClientError> {
        Ok(FingerprintVerifier {
            expected: Some(parse_pin(pin)?),
            algorithms: provider.signature_verification_algorithms,
            observed: Mutex::new(None),
        })
    }

    /// Accepts any certificate and records its fingerprint.
    pub fn observing(provider: &CryptoProvider) -> Self {
        FingerprintVerifier {
            expected: None,
            algorithms: provider.signature_verification_algorithms,
            observed: Mutex::new(None),
        }
    }

    /// The fingerprint (hex) of the last certificate presented.
    pub fn observed(&self) -> Option<String> {
        self.observed.lock().ok()?.clone()
    }

    /// `(expected, observed)` fingerprints after a refused pinned
    /// certificate.
    pub fn mismatch(&self) -> Option<(String, String)> {
        let expected = self.expected?;
        let observed = self.observed()?;
        (observed != hex::encode(expected)).then(|| (hex::encode(expected), observed))
    }
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use sha2::{Digest as _, Sha256};
        let actual: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if let Ok(mut observed) = self.observed.lock() {
            *observed = Some(hex::encode(actual));
        }
        match self.expected {
            Some(expected) if actual != expected => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_with_colons_and_case() {
        let hex64 = "AB".repeat(32);
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(parse_pin(&hex64).unwrap(), [0xab; 32]);
        assert_eq!(parse_pin(&colons).unwrap(), [0xab; 32]);
        assert!(parse_pin("abcd").is_err());
        assert!(parse_pin(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn envelope_becomes_one_line() {
        let body = br#"{"error":{"code":"unauthorized","message":"bad key","request_id":"r1"}}"#;
        let err = interpret(StatusCode::UNAUTHORIZED, body).unwrap_err();
        assert_eq!(err.to_string(), "unauthorized: bad key (request r1)");
        let err = interpret(StatusCode::BAD_GATEWAY, b"<html>\n oops</html>").unwrap_err();
        assert_eq!(
            err.to_string(),
            "HTTP 502 from the server: <html> oops</html>"
        );
        let ok = interpret(StatusCode::NO_CONTENT, b"").unwrap();
        assert_eq!(ok.json, None);
    }

    #[test]
    fn https_needs_a_trust_choice() {
        let options = |url: &str, trust| ClientOptions {
            base_url: url.into(),
            api_key: "k".into(),
            trust,
            timeout: DEFAULT_TIMEOUT,
            user_agent: "test".into(),
        };
        let err = ApiClient::new(options("https://127.0.0.1:8443", None)).unwrap_err();
        assert!(matches!(err, ClientError::NoTrust(_)), "{err}");
        assert!(ApiClient::new(options("http://[::1]:8080/prefix/", None)).is_ok());
        assert!(ApiClient::new(options("ftp://x", None)).is_err());
        let pinned = Some(Trust::PinSha256("00".repeat(32)));
        assert!(ApiClient::new(options("https://localhost:1", pinned)).is_ok());
    }
}
