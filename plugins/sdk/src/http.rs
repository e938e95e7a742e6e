//! A small blocking HTTP client over `wasi:http/outgoing-handler`.
//!
//! Every request passes the host's allowlist check: a connector can only
//! reach the hosts (scheme, host, port) the operator granted to its instance.
//! Requests to anything else fail with `invalid-config` and a message saying
//! so, because retrying will not help until the operator grants the
//! destination.
//!
//! ```no_run
//! use certplane_sdk::{http, ConnectorError};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Me { id: u64 }
//!
//! fn whoami(base: &str, key: &str) -> Result<u64, ConnectorError> {
//!     let me: Me = http::Request::get(format!("{base}/user/me"))
//!         .header("X-DC-DEVKEY", key)
//!         .header("Accept", "application/json")
//!         .send()?
//!         .error_for_status()?
//!         .json()?;
//!     Ok(me.id)
//! }
//! ```
//!
//! # Error mapping
//!
//! [`Request::send`] returns `Ok` for every HTTP status; transport failures
//! become errors right away (see [`transport_error`]). Turn statuses into
//! errors with [`Response::error_for_status`] (see [`status_error`]):
//!
//! | status | `connector-error` |
//! | --- | --- |
//! | 401, 403 | `unauthorized` |
//! | 429 | `rate-limited`, with the `Retry-After` hint when present |
//! | 408, 425, 5xx | `transient` (503 with `Retry-After` → `rate-limited`) |
//! | other 4xx | `rejected` |
//! | DNS, connect, TLS, timeout and protocol errors | `transient` |
//! | destination not granted (`HttpRequestDenied`) | `invalid-config` |
//!
//! Messages carry the method, the URL without its query string (which may
//! hold credentials) and up to [`ERROR_BODY_SNIPPET`] bytes of the response
//! body, which is where upstreams explain themselves.

use core::fmt;
use core::time::Duration;
use std::time::SystemTime;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ConnectorError;
use crate::bindings::target::wasi::http::types::ErrorCode;

/// Default cap on the size of a response body: 8 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// How many bytes of a response body error messages quote.
pub const ERROR_BODY_SNIPPET: usize = 512;

/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default time to wait for the first byte of the response, and then between
/// bytes.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `PATCH`
    Patch,
    /// `DELETE`
    Delete,
    /// `OPTIONS`
    Options,
    /// Any other method, spelled as it goes on the wire.
    Other(String),
}

impl Method {
    /// The method as it goes on the wire (`GET`, `POST`, ...).
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Other(m) => m,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An outgoing request, built with chained calls and sent with
/// [`Request::send`].
#[derive(Clone, Debug)]
pub struct Request {
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    connect_timeout: Duration,
    read_timeout: Duration,
    max_response_bytes: usize,
}

impl Request {
    /// A request with this method and absolute `http://` or `https://` URL.
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        Request {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    /// A `GET` request.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new(Method::Get, url)
    }

    /// A `POST` request.
    pub fn post(url: impl Into<String>) -> Self {
        Self::new(Method::Post, url)
    }

    /// A `PUT` request.
    pub fn put(url: impl Into<String>) -> Self {
        Self::new(Method::Put, url)
    }

    /// A `PATCH` request.
    pub fn patch(url: impl Into<String>) -> Self {
        Self::new(Method::Patch, url)
    }

    /// A `DELETE` request.
    pub fn delete(url: impl Into<String>) -> Self {
        Self::new(Method::Delete, url)
    }

    /// Adds a header (appended; several headers may share a name).
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the request body.
    #[must_use]
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Serializes `value` as the JSON body and sets
    /// `Content-Type: application/json` (unless already set).
    ///
    /// Fails with `rejected` when `value` cannot be serialized (a connector
    /// bug, not something a retry fixes).
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Result<Self, ConnectorError> {
        self.body = serde_json::to_vec(value).map_err(|e| {
            ConnectorError::rejected(format!("cannot serialize the request body as JSON: {e}"))
        })?;
        if !self.has_header("content-type") {
            self.headers
                .push(("content-type".into(), "application/json".into()));
        }
        Ok(self)
    }

    /// Sets the connect timeout and the time to wait for the first response
    /// byte and between bytes (defaults: [`DEFAULT_CONNECT_TIMEOUT`],
    /// [`DEFAULT_READ_TIMEOUT`]). The host may impose shorter limits.
    #[must_use]
    pub fn timeout(mut self, connect: Duration, read: Duration) -> Self {
        self.connect_timeout = connect;
        self.read_timeout = read;
        self
    }

    /// Caps the response body size (default [`DEFAULT_MAX_RESPONSE_BYTES`]);
    /// a larger body fails the request with `transient`.
    #[must_use]
    pub fn max_response_bytes(mut self, limit: usize) -> Self {
        self.max_response_bytes = limit;
        self
    }

    /// The method.
    pub fn method_ref(&self) -> &Method {
        &self.method
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The headers added so far.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The body set so far.
    pub fn body_bytes(&self) -> &[u8] {
        &self.body
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// `METHOD scheme://authority/path` without the query string, for
    /// messages.
    fn describe(&self) -> String {
        format!("{} {}", self.method, redact_url(&self.url))
    }

    /// Sends the request and reads the whole response body.
    ///
    /// Returns `Ok` for every HTTP status (use
    /// [`Response::error_for_status`]); fails on transport errors, on a
    /// destination the host did not grant, on an invalid URL or header, and
    /// when the body exceeds the cap.
    pub fn send(self) -> Result<Response, ConnectorError> {
        let parts = parse_url(&self.url)?;
        #[cfg(target_arch = "wasm32")]
        {
            wasi_send::send(&self, &parts)
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let _ = parts;
            Err(ConnectorError::unsupported(format!(
                "{}: HTTP is only available inside a WebAssembly component",
                self.describe()
            )))
        }
    }

    /// Sends the request, fails on a non-2xx status (see [`status_error`])
    /// and deserializes the JSON body into `T`.
    pub fn send_json<T: DeserializeOwned>(self) -> Result<T, ConnectorError> {
        self.send()?.error_for_status()?.json()
    }
}

/// A response with its body read in full.
#[derive(Clone, Debug)]
pub struct Response {
    request: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

impl Response {
    /// Builds a response by hand (for tests of code that consumes responses).
    /// `request` describes the request in messages, e.g. `GET https://x/y`.
    pub fn new(
        request: impl Into<String>,
        status: u16,
        headers: Vec<(String, String)>,
        body: impl Into<Vec<u8>>,
    ) -> Self {
        Response {
            request: request.into(),
            status,
            headers,
            body: body.into(),
            trailers: Vec::new(),
        }
    }

    /// The same response with these trailer fields (for tests of code that
    /// reads trailers).
    #[must_use]
    pub fn with_trailers(mut self, trailers: Vec<(String, String)>) -> Self {
        self.trailers = trailers;
        self
    }

    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// All response headers, names lower-cased, in the order received.
    /// Values that are not UTF-8 are converted lossily.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The first value of a header, matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The trailer fields that followed a chunked body, names lower-cased
    /// (empty when there were none). Some servers send metadata computed
    /// while the body streamed here, e.g. Caddy's admin API its `ETag`.
    pub fn trailers(&self) -> &[(String, String)] {
        &self.trailers
    }

    /// The first value of a trailer field, matched case-insensitively.
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `Retry-After` hint in seconds, when present and valid (either
    /// delta-seconds or an HTTP-date, counted from now).
    pub fn retry_after_secs(&self) -> Option<u32> {
        self.header("retry-after")
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
    }

    /// The body bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Consumes the response, returning the body bytes.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// The body as UTF-8 text; fails with `transient` when it is not UTF-8.
    pub fn text(&self) -> Result<&str, ConnectorError> {
        core::str::from_utf8(&self.body).map_err(|e| {
            ConnectorError::transient(format!("{}: response body is not UTF-8: {e}", self.request))
        })
    }

    /// Deserializes the JSON body; fails with `transient` (an upstream that
    /// answers with something else is usually a proxy or maintenance page)
    /// quoting the start of the body.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ConnectorError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ConnectorError::transient(format!(
                "{}: HTTP {}: response is not the expected JSON ({e}): {}",
                self.request,
                self.status,
                snippet(&self.body)
            ))
        })
    }

    /// Returns the response when its status is 2xx, else the error
    /// [`status_error`] maps the status to.
    pub fn error_for_status(self) -> Result<Response, ConnectorError> {
        match status_error(self.status, self.retry_after_secs(), &self.body) {
            None => Ok(self),
            Some(e) => Err(e.context(&self.request)),
        }
    }
}

/// Maps a non-2xx status to a `connector-error` (see the module docs), or
/// `None` for 1xx/2xx/3xx. The message holds the status and up to
/// [`ERROR_BODY_SNIPPET`] bytes of `body`.
pub fn status_error(status: u16, retry_after: Option<u32>, body: &[u8]) -> Option<ConnectorError> {
    if status < 400 {
        return None;
    }
    let text = snippet(body);
    let msg = if text.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {text}")
    };
    Some(match status {
        401 | 403 => ConnectorError::unauthorized(msg),
        429 => ConnectorError::rate_limited(retry_after, msg),
        503 if retry_after.is_some() => ConnectorError::rate_limited(retry_after, msg),
        408 | 425 | 500..=599 => ConnectorError::transient(msg),
        _ => ConnectorError::rejected(msg),
    })
}

/// Maps a `wasi:http` transport error for `request` (a description such as
/// `GET https://host/path`) to a `connector-error`.
///
/// `HttpRequestDenied` (the host's allowlist refused the destination) and
/// `DestinationIpProhibited` (the name resolved to an address the host's
/// egress policy forbids) become `invalid-config`; an invalid URI too.
/// Request-side errors a retry cannot fix become `rejected`; everything else
/// (DNS, connect, TLS, timeouts, protocol errors) is `transient`.
pub fn transport_error(request: &str, code: &ErrorCode) -> ConnectorError {
    let what = describe_error_code(code);
    match code {
        ErrorCode::HttpRequestDenied => ConnectorError::invalid_config(format!(
            "{request}: the host refused this destination because it is not granted to this \
             plugin instance (HttpRequestDenied); ask the operator to add its scheme, host and \
             port to the instance's allowed hosts"
        )),
        ErrorCode::DestinationIpProhibited => ConnectorError::invalid_config(format!(
            "{request}: the host refused this destination because its address is prohibited by \
             the egress policy (DestinationIpProhibited); private, loopback and link-local \
             addresses must be granted explicitly"
        )),
        ErrorCode::HttpRequestUriInvalid => {
            ConnectorError::invalid_config(format!("{request}: {what}"))
        }
        ErrorCode::HttpRequestMethodInvalid
        | ErrorCode::HttpRequestUriTooLong
        | ErrorCode::HttpRequestLengthRequired
        | ErrorCode::HttpRequestBodySize(_)
        | ErrorCode::HttpRequestHeaderSectionSize(_)
        | ErrorCode::HttpRequestHeaderSize(_)
        | ErrorCode::HttpRequestTrailerSectionSize(_)
        | ErrorCode::HttpRequestTrailerSize(_) => {
            ConnectorError::rejected(format!("{request}: {what}"))
        }
        _ => ConnectorError::transient(format!("{request}: {what}")),
    }
}

/// A readable description of a `wasi:http` error code.
pub fn describe_error_code(code: &ErrorCode) -> String {
    match code {
        ErrorCode::DnsTimeout => "DNS lookup timed out".into(),
        ErrorCode::DnsError(p) => match (&p.rcode, p.info_code) {
            (Some(r), Some(i)) => format!("DNS error (rcode {r}, info code {i})"),
            (Some(r), None) => format!("DNS error (rcode {r})"),
            (None, Some(i)) => format!("DNS error (info code {i})"),
            (None, None) => "DNS error".into(),
        },
        ErrorCode::DestinationNotFound => "destination not found".into(),
        ErrorCode::DestinationUnavailable => "destination unavailable".into(),
        ErrorCode::DestinationIpProhibited => "destination IP address prohibited".into(),
        ErrorCode::DestinationIpUnroutable => "destination IP address unroutable".into(),
        ErrorCode::ConnectionRefused => "connection refused".into(),
        ErrorCode::ConnectionTerminated => "connection terminated".into(),
        ErrorCode::ConnectionTimeout => "connection timed out".into(),
        ErrorCode::ConnectionReadTimeout => "timed out reading from the connection".into(),
        ErrorCode::ConnectionWriteTimeout => "timed out writing to the connection".into(),
        ErrorCode::ConnectionLimitReached => "connection limit reached".into(),
        ErrorCode::TlsProtocolError => "TLS protocol error".into(),
        ErrorCode::TlsCertificateError => "TLS certificate error (server not trusted)".into(),
        ErrorCode::TlsAlertReceived(p) => match (&p.alert_message, p.alert_id) {
            (Some(m), _) => format!("TLS alert received: {m}"),
            (None, Some(id)) => format!("TLS alert received (id {id})"),
            (None, None) => "TLS alert received".into(),
        },
        ErrorCode::HttpRequestDenied => "request denied by the host".into(),
        ErrorCode::HttpRequestLengthRequired => "request length required".into(),
        ErrorCode::HttpRequestBodySize(n) => with_size("request body too large", *n),
        ErrorCode::HttpRequestMethodInvalid => "invalid request method".into(),
        ErrorCode::HttpRequestUriInvalid => "invalid request URI".into(),
        ErrorCode::HttpRequestUriTooLong => "request URI too long".into(),
        ErrorCode::HttpRequestHeaderSectionSize(n) => {
            with_size("request header section too large", n.map(u64::from))
        }
        ErrorCode::HttpRequestHeaderSize(_) => "request header too large".into(),
        ErrorCode::HttpRequestTrailerSectionSize(n) => {
            with_size("request trailer section too large", n.map(u64::from))
        }
        ErrorCode::HttpRequestTrailerSize(_) => "request trailer too large".into(),
        ErrorCode::HttpResponseIncomplete => "response incomplete".into(),
        ErrorCode::HttpResponseHeaderSectionSize(n) => {
            with_size("response header section too large", n.map(u64::from))
        }
        ErrorCode::HttpResponseHeaderSize(_) => "response header too large".into(),
        ErrorCode::HttpResponseBodySize(n) => with_size("response body too large", *n),
        ErrorCode::HttpResponseTrailerSectionSize(n) => {
            with_size("response trailer section too large", n.map(u64::from))
        }
        ErrorCode::HttpResponseTrailerSize(_) => "response trailer too large".into(),
        ErrorCode::HttpResponseTransferCoding(c) => match c {
            Some(c) => format!("unsupported response transfer coding {c:?}"),
            None => "unsupported response transfer coding".into(),
        },
        ErrorCode::HttpResponseContentCoding(c) => match c {
            Some(c) => format!("unsupported response content coding {c:?}"),
            None => "unsupported response content coding".into(),
        },
        ErrorCode::HttpResponseTimeout => "timed out waiting for the response".into(),
        ErrorCode::HttpUpgradeFailed => "HTTP upgrade failed".into(),
        ErrorCode::HttpProtocolError => "HTTP protocol error".into(),
        ErrorCode::LoopDetected => "loop detected".into(),
        ErrorCode::ConfigurationError => "HTTP client configuration error in the host".into(),
        ErrorCode::InternalError(m) => match m {
            Some(m) => format!("internal error: {m}"),
            None => "internal error".into(),
        },
    }
}

fn with_size(what: &str, n: Option<u64>) -> String {
    match n {
        Some(n) => format!("{what} ({n} bytes)"),
        None => what.into(),
    }
}

/// Parses a `Retry-After` value: delta-seconds (`120`) or an HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`, also the obsolete RFC 850 and asctime
/// forms), the latter counted from `now` and rounded up (0 when in the
/// past). `None` when the value is neither. Huge values saturate at
/// `u32::MAX`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<u32> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(u32::try_from(secs).unwrap_or(u32::MAX));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(match when.duration_since(now) {
        Ok(d) => {
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        }
        Err(_) => 0,
    })
}

/// The pieces of an absolute URL that `wasi:http` wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlParts {
    /// `true` for `https`.
    pub https: bool,
    /// `host[:port]` (userinfo is refused).
    pub authority: String,
    /// Path and query, at least `/`; the fragment is dropped.
    pub path_with_query: String,
}

/// Splits an absolute `http://` or `https://` URL. Fails with
/// `invalid-config` (URLs usually come from settings) on another scheme, a
/// missing host, userinfo (`user:pass@`, which would leak into logs), or
/// whitespace.
pub fn parse_url(url: &str) -> Result<UrlParts, ConnectorError> {
    let bad = |why: &str| {
        ConnectorError::invalid_config(format!("invalid URL {:?}: {why}", redact_url(url)))
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it contains whitespace or control characters"));
    }
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("expected an absolute http:// or https:// URL"))?;
    let https = if scheme.eq_ignore_ascii_case("https") {
        true
    } else if scheme.eq_ignore_ascii_case("http") {
        false
    } else {
        return Err(bad("only http and https are supported"));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.is_empty() {
        return Err(bad("missing host"));
    }
    if authority.contains('@') {
        return Err(bad("credentials in URLs are not supported; use headers"));
    }
    let mut path = &rest[end..];
    if let Some(i) = path.find('#') {
        path = &path[..i];
    }
    let path_with_query = if path.is_empty() || path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    Ok(UrlParts {
        https,
        authority: authority.to_string(),
        path_with_query,
    })
}

/// The URL without query string and fragment (they may hold credentials).
pub fn redact_url(url: &str) -> &str {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    &url[..end]
}

/// Up to [`ERROR_BODY_SNIPPET`] bytes of a body as one line of text.
fn snippet(body: &[u8]) -> String {
    let cut = &body[..body.len().min(ERROR_BODY_SNIPPET)];
    let mut s: String = String::from_utf8_lossy(cut)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    s = s.trim().to_string();
    if body.len() > ERROR_BODY_SNIPPET {
        s.push_str(" [...]");
    }
    s
}

#[cfg(target_arch = "wasm32")]
mod wasi_send {
    use super::{ConnectorError, Request, Response, UrlParts, transport_error};
    use crate::bindings::target::wasi::http::outgoing_handler;
    use crate::bindings::target::wasi::http::types::{
        self as http, Fields, HeaderError, IncomingBody, OutgoingBody, OutgoingRequest,
        RequestOptions, Scheme,
    };
    use crate::bindings::target::wasi::io::streams::StreamError;

    /// `blocking-write-and-flush` accepts at most 4096 bytes per call.
    const WRITE_CHUNK: usize = 4096;
    const READ_CHUNK: u64 = 64 * 1024;

    pub(super) fn send(req: &Request, url: &UrlParts) -> Result<Response, ConnectorError> {
        let what = req.describe();
        let mut entries: Vec<(String, Vec<u8>)> = req
            .headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.as_bytes().to_vec()))
            .collect();
        if !req.has_header("user-agent") {
            entries.push((
                "user-agent".into(),
                concat!("certplane-sdk/", env!("CARGO_PKG_VERSION"))
                    .as_bytes()
                    .to_vec(),
            ));
        }
        let needs_length = !req.body.is_empty()
            || matches!(
                req.method,
                super::Method::Post | super::Method::Put | super::Method::Patch
            );
        if needs_length && !req.has_header("content-length") {
            entries.push((
                "content-length".into(),
                req.body.len().to_string().into_bytes(),
            ));
        }
        let headers = Fields::from_list(&entries).map_err(|e| header_error(&what, req, e))?;

        let request = OutgoingRequest::new(headers);
        let method = match &req.method {
            super::Method::Get => http::Method::Get,
            super::Method::Head => http::Method::Head,
            super::Method::Post => http::Method::Post,
            super::Method::Put => http::Method::Put,
            super::Method::Patch => http::Method::Patch,
            super::Method::Delete => http::Method::Delete,
            super::Method::Options => http::Method::Options,
            super::Method::Other(m) => http::Method::Other(m.clone()),
        };
        let invalid =
            |part: &str| ConnectorError::invalid_config(format!("{what}: invalid {part}"));
        request
            .set_method(&method)
            .map_err(|()| invalid("method"))?;
        let scheme = if url.https {
            Scheme::Https
        } else {
            Scheme::Http
        };
        request
            .set_scheme(Some(&scheme))
            .map_err(|()| invalid("scheme"))?;
        request
            .set_authority(Some(&url.authority))
            .map_err(|()| invalid("host or port"))?;
        request
            .set_path_with_query(Some(&url.path_with_query))
            .map_err(|()| invalid("path"))?;

        let options = RequestOptions::new();
        // A host may not support some timeouts; its own limits apply then.
        let _ = options.set_connect_timeout(Some(nanos(req.connect_timeout)));
        let _ = options.set_first_byte_timeout(Some(nanos(req.read_timeout)));
        let _ = options.set_between_bytes_timeout(Some(nanos(req.read_timeout)));

        let body = request.body().map_err(|()| {
            ConnectorError::transient(format!(
                "{what}: the host did not hand out the request body"
            ))
        })?;
        let future = outgoing_handler::handle(request, Some(options))
            .map_err(|code| transport_error(&what, &code))?;
        if let Err(write_failed) = write_body(&what, body, &req.body) {
            // The host refuses a destination (not granted, a forbidden
            // address) by failing the request, which closes the body
            // stream under the writer: its own error says why.
            future.subscribe().block();
            return Err(match future.get() {
                Some(Ok(Err(code))) => transport_error(&what, &code),
                _ => write_failed,
            });
        }

        future.subscribe().block();
        let response = match future.get() {
            Some(Ok(Ok(r))) => r,
            Some(Ok(Err(code))) => return Err(transport_error(&what, &code)),
            Some(Err(())) => {
                return Err(ConnectorError::transient(format!(
                    "{what}: the response was already taken"
                )));
            }
            None => {
                return Err(ConnectorError::transient(format!(
                    "{what}: the response is not ready after waiting for it"
                )));
            }
        };

        let status = response.status();
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(n, v)| {
                (
                    n.to_ascii_lowercase(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
        let incoming = response.consume().map_err(|()| {
            ConnectorError::transient(format!("{what}: the response body was already taken"))
        })?;
        let body = read_body(&what, &incoming, req.max_response_bytes)?;
        let trailers = read_trailers(IncomingBody::finish(incoming));
        drop(response);

        Ok(Response {
            request: what,
            status,
            headers,
            body,
            trailers,
        })
    }

    /// The trailers after a body read to its end. They are metadata the
    /// caller may use, not part of the answer: a failure to get them leaves
    /// them empty rather than failing a request whose body arrived.
    fn read_trailers(future: http::FutureTrailers) -> Vec<(String, String)> {
        future.subscribe().block();
        let fields = match future.get() {
            Some(Ok(Ok(Some(fields)))) => fields,
            _ => return Vec::new(),
        };
        let entries = fields
            .entries()
            .into_iter()
            .map(|(n, v)| {
                (
                    n.to_ascii_lowercase(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
        // A child of `future`: it must go first.
        drop(fields);
        entries
    }

    fn write_body(what: &str, body: OutgoingBody, bytes: &[u8]) -> Result<(), ConnectorError> {
        {
            let stream = body.write().map_err(|()| {
                ConnectorError::transient(format!("{what}: cannot open the request body stream"))
            })?;
            for chunk in bytes.chunks(WRITE_CHUNK) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| stream_error(what, "writing the request body", e))?;
            }
        }
        OutgoingBody::finish(body, None).map_err(|code| transport_error(what, &code))
    }

    fn read_body(what: &str, body: &IncomingBody, cap: usize) -> Result<Vec<u8>, ConnectorError> {
        let stream = body.stream().map_err(|()| {
            ConnectorError::transient(format!("{what}: cannot open the response body stream"))
        })?;
        let mut out = Vec::new();
        loop {
            match stream.blocking_read(READ_CHUNK) {
                Ok(chunk) => {
                    if out.len() + chunk.len() > cap {
                        return Err(ConnectorError::transient(format!(
                            "{what}: response body exceeds the limit of {cap} bytes"
                        )));
                    }
                    out.extend_from_slice(&chunk);
                }
                Err(StreamError::Closed) => break,
                Err(e) => return Err(stream_error(what, "reading the response body", e)),
            }
        }
        Ok(out)
    }

    fn stream_error(what: &str, doing: &str, e: StreamError) -> ConnectorError {
        match e {
            StreamError::Closed => {
                ConnectorError::transient(format!("{what}: stream closed while {doing}"))
            }
            StreamError::LastOperationFailed(err) => match http::http_error_code(&err) {
                Some(code) => transport_error(what, &code).context(doing),
                None => {
                    ConnectorError::transient(format!("{what}: {doing}: {}", err.to_debug_string()))
                }
            },
        }
    }

    fn header_error(what: &str, req: &Request, e: HeaderError) -> ConnectorError {
        // Name the header but never echo values: they often hold credentials.
        let names: Vec<&str> = req.headers.iter().map(|(n, _)| n.as_str()).collect();
        match e {
            HeaderError::Forbidden => ConnectorError::rejected(format!(
                "{what}: a header the host forbids connectors to set is among {names:?}"
            )),
            HeaderError::InvalidSyntax => ConnectorError::invalid_config(format!(
                "{what}: a header name or value is not valid HTTP (among {names:?}); check \
                 settings and secrets for stray newlines"
            )),
            HeaderError::Immutable => {
                ConnectorError::rejected(format!("{what}: request headers are immutable"))
            }
        }
    }

    fn nanos(d: core::time::Duration) -> u64 {
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn retry_after_delta_seconds() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after("120", now), Some(120));
        assert_eq!(parse_retry_after(" 0 ", now), Some(0));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(u32::MAX)
        );
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("1.5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn retry_after_http_date() {
        // Wed, 21 Oct 2015 07:28:00 GMT = 1445412480
        let date = UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        let now = date - Duration::from_secs(90);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(90)
        );
        // Rounds a partial second up.
        let now = date - Duration::from_millis(1500);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(2)
        );
        // Obsolete forms.
        let now = date - Duration::from_secs(10);
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:28:00 GMT", now),
            Some(10)
        );
        assert_eq!(parse_retry_after("Wed Oct 21 07:28:00 2015", now), Some(10));
        // In the past.
        let now = date + Duration::from_secs(10);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(0)
        );
        assert_eq!(
            parse_retry_after("Wed, 32 Oct 2015 07:28:00 GMT", now),
            None
        );
    }

    #[test]
    fn status_mapping() {
        assert!(status_error(200, None, b"").is_none());
        assert!(status_error(304, None, b"").is_none());
        let e = status_error(401, None, b"{\"errors\":[]}").unwrap();
        assert_eq!(e.kind(), "unauthorized");
        assert_eq!(e.message(), "HTTP 401: {\"errors\":[]}");
        assert_eq!(status_error(403, None, b"").unwrap().kind(), "unauthorized");
        match status_error(429, Some(30), b"slow").unwrap() {
            ConnectorError::RateLimited(r) => {
                assert_eq!(r.retry_after_secs, Some(30));
                assert_eq!(r.message, "HTTP 429: slow");
            }
            other => panic!("{other:?}"),
        }
        match status_error(429, None, b"").unwrap() {
            ConnectorError::RateLimited(r) => assert_eq!(r.retry_after_secs, None),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            status_error(503, Some(5), b"").unwrap().kind(),
            "rate-limited"
        );
        assert_eq!(status_error(503, None, b"").unwrap().kind(), "transient");
        assert_eq!(status_error(500, None, b"").unwrap().kind(), "transient");
        assert_eq!(status_error(599, None, b"").unwrap().kind(), "transient");
        assert_eq!(status_error(408, None, b"").unwrap().kind(), "transient");
        assert_eq!(status_error(400, None, b"").unwrap().kind(), "rejected");
        assert_eq!(status_error(404, None, b"").unwrap().kind(), "rejected");
        let long = vec![b'a'; 2000];
        let e = status_error(500, None, &long).unwrap();
        assert!(e.message().ends_with(" [...]"));
        assert!(e.message().len() < 600);
        let e = status_error(502, None, b"line1\nline2\r\n").unwrap();
        assert_eq!(e.message(), "HTTP 502: line1 line2");
    }

    #[test]
    fn response_helpers() {
        let r = Response::new(
            "GET https://ca.example/x",
            429,
            vec![
                ("retry-after".into(), "7".into()),
                ("content-type".into(), "application/json".into()),
            ],
            br#"{"a":1}"#.to_vec(),
        );
        assert_eq!(r.header("Retry-After"), Some("7"));
        assert!(r.trailers().is_empty());
        let t = r
            .clone()
            .with_trailers(vec![("etag".into(), "\"/config/ 1\"".into())]);
        assert_eq!(t.trailer("ETag"), Some("\"/config/ 1\""));
        assert_eq!(t.header("etag"), None);
        assert_eq!(r.retry_after_secs(), Some(7));
        assert!(!r.is_success());
        #[derive(Debug, serde::Deserialize)]
        struct A {
            a: u32,
        }
        assert_eq!(r.json::<A>().unwrap().a, 1);
        match r.clone().error_for_status().unwrap_err() {
            ConnectorError::RateLimited(rl) => {
                assert_eq!(rl.retry_after_secs, Some(7));
                assert!(rl.message.starts_with("GET https://ca.example/x: HTTP 429"));
            }
            other => panic!("{other:?}"),
        }
        let ok = Response::new("GET x", 200, vec![], b"<html>".to_vec());
        let e = ok.json::<A>().unwrap_err();
        assert_eq!(e.kind(), "transient");
        assert!(e.message().contains("<html>"));
        assert!(ok.error_for_status().is_ok());
    }

    #[test]
    fn transport_mapping() {
        let e = transport_error("GET https://evil.example/", &ErrorCode::HttpRequestDenied);
        assert_eq!(e.kind(), "invalid-config");
        assert!(e.message().contains("not granted"), "{}", e.message());
        assert!(e.message().starts_with("GET https://evil.example/"));
        assert_eq!(
            transport_error("x", &ErrorCode::DestinationIpProhibited).kind(),
            "invalid-config"
        );
        let e = transport_error("x", &ErrorCode::ConnectionRefused);
        assert_eq!(
            (e.kind(), e.message()),
            ("transient", "x: connection refused")
        );
        assert_eq!(
            transport_error("x", &ErrorCode::TlsCertificateError).kind(),
            "transient"
        );
        assert_eq!(
            transport_error("x", &ErrorCode::HttpRequestUriTooLong).kind(),
            "rejected"
        );
        let e = transport_error("x", &ErrorCode::InternalError(Some("boom".into())));
        assert_eq!(e.message(), "x: internal error: boom");
    }

    #[test]
    fn url_parsing() {
        let p = parse_url("https://www.digicert.com/services/v2/user/me?x=1#frag").unwrap();
        assert_eq!(
            p,
            UrlParts {
                https: true,
                authority: "www.digicert.com".into(),
                path_with_query: "/services/v2/user/me?x=1".into()
            }
        );
        let p = parse_url("http://127.0.0.1:2019").unwrap();
        assert_eq!(
            (p.https, p.authority.as_str(), p.path_with_query.as_str()),
            (false, "127.0.0.1:2019", "/")
        );
        let p = parse_url("HTTP://[::1]:8080?q").unwrap();
        assert_eq!(
            (p.authority.as_str(), p.path_with_query.as_str()),
            ("[::1]:8080", "/?q")
        );
        for bad in [
            "ftp://x/",
            "//x/",
            "https://",
            "https:///path",
            "https://u:p@x/",
            "https://x/ y",
            "x",
        ] {
            let e = parse_url(bad).unwrap_err();
            assert_eq!(e.kind(), "invalid-config", "{bad}");
        }
        let e = parse_url("https://u:secret@x/?token=abc").unwrap_err();
        assert!(!e.message().contains("token=abc"));
        assert_eq!(redact_url("https://x/a?key=1#f"), "https://x/a");
    }

    #[test]
    fn request_builder() {
        let r = Request::post("https://x/y")
            .header("X-Key", "k")
            .json(&serde_json::json!({"a": 1}))
            .unwrap();
        assert_eq!(r.method_ref(), &Method::Post);
        assert_eq!(r.body_bytes(), br#"{"a":1}"#);
        assert!(
            r.headers()
                .iter()
                .any(|(n, v)| n == "content-type" && v == "application/json")
        );
        let r = Request::put("https://x/y")
            .header("Content-Type", "text/plain")
            .json(&1)
            .unwrap();
        assert_eq!(
            r.headers()
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("content-type"))
                .count(),
            1
        );
        assert_eq!(Method::Other("PROPFIND".into()).to_string(), "PROPFIND");
        // Natively there is no wasi:http: a clear error, not a panic.
        let e = Request::get("https://x/").send().unwrap_err();
        assert_eq!(e.kind(), "unsupported");
    }
}
