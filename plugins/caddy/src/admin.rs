//! Caddy's admin API as this connector uses it: reads of `/config/<path>`
//! with their `ETag`, guarded writes, and what each answer means.
//!
//! Facts of the real Caddy 2.6 this is built on (checked against it by the
//! runtime tests):
//! - `GET /config/<path>` answers `null` for a missing key of an existing
//!   object, and 400 `invalid traversal path` when an object on the way is
//!   missing. Its `ETag`, `"<path> <hash>"`, comes as an HTTP *trailer*
//!   after the chunked body; the hash covers the value at `<path>` only.
//! - Writes need a JSON `Content-Type`, a `Host` naming the admin address
//!   (the runtime sends the URL's authority), and honour `If-Match` with
//!   that `ETag` (412 when the value at its path changed).
//! - Caddy answers many refusals with 500: a write to a path that vanished
//!   or appeared meanwhile (`key already exists`, `key does not exist`,
//!   `array index out of bounds`, `invalid traversal path`), and a
//!   configuration it could not load (`loading new config: ...`; the
//!   running configuration is kept). Only the text tells them apart.

use core::time::Duration;

use certplane_sdk::{ConnectorError, http, log};
use serde_json::Value;

use crate::plan::{self, Op};

/// Connect timeout of an admin request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to wait for an answer: a write answers when Caddy has loaded the new
/// configuration, which with many certificates takes a while.
const READ_TIMEOUT: Duration = Duration::from_secs(20);
/// Cap on a configuration read (all certificates, keys included).
const MAX_CONFIG_BYTES: usize = 16 * 1024 * 1024;

/// How often a read that got no answer is sent.
pub const READ_ATTEMPTS: u32 = 3;

/// The pause before another attempt, times the attempts made. Caddy
/// replaces its admin server at every configuration change and closes the
/// old one's socket: a connection that reached the old socket is reset
/// unanswered. That window is short, and the next attempt lands on the new
/// server.
pub const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Waits [`RETRY_PAUSE`] times `attempt` (a few hundred milliseconds at
/// most, well inside a call's deadline).
pub fn pause(attempt: u32) {
    std::thread::sleep(RETRY_PAUSE * attempt);
}

/// Phrases of Caddy's errors for a write whose path no longer matches the
/// configuration: someone else changed it since the read.
const CONFLICTS: [&str; 5] = [
    "If-Match header did not match",
    "invalid traversal path",
    "array index out of bounds",
    "key already exists",
    "key does not exist",
];

/// A value read from Caddy's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    /// The JSON at the path (`null` when the key is absent).
    pub value: Value,
    /// Its `ETag`, for `If-Match` on the writes planned from it; `None`
    /// when Caddy (or a proxy in front of it) sent none.
    pub etag: Option<String>,
}

/// What an admin API answer means.
#[derive(Debug)]
pub enum Answer {
    /// Done.
    Ok,
    /// The configuration changed since it was read: read again and replan.
    Conflict(String),
    /// A failure to report.
    Failed(ConnectorError),
}

/// The admin API at one address.
#[derive(Debug, Clone)]
pub struct Admin {
    /// `scheme://authority[/prefix]`, without a trailing slash.
    base: String,
    /// `scheme://authority`, sent as `Origin` (checked by Caddy when the
    /// operator enforces origins).
    origin: String,
}

impl Admin {
    /// The admin API at `admin_url` (`http://127.0.0.1:2019`; a path is
    /// kept as a prefix, for an admin endpoint behind a reverse proxy).
    pub fn new(admin_url: &str) -> Result<Admin, ConnectorError> {
        let parts =
            http::parse_url(admin_url.trim()).map_err(|e| e.context("setting `admin_url`"))?;
        if parts.path_with_query.contains('?') {
            return Err(ConnectorError::invalid_config(
                "setting `admin_url` must not have a query string",
            ));
        }
        let scheme = if parts.https { "https" } else { "http" };
        let origin = format!("{scheme}://{}", parts.authority);
        let base = format!("{origin}{}", parts.path_with_query.trim_end_matches('/'));
        Ok(Admin { base, origin })
    }

    /// The URL of `/config/<path>`.
    pub fn config_url(&self, path: &str) -> String {
        format!("{}/config/{path}", self.base)
    }

    fn request(&self, method: http::Method, path: &str) -> http::Request {
        http::Request::new(method, self.config_url(path))
            .header("accept", "application/json")
            .header("origin", self.origin.as_str())
            .timeout(CONNECT_TIMEOUT, READ_TIMEOUT)
            .max_response_bytes(MAX_CONFIG_BYTES)
    }

    /// `GET /config/<path>`. `Ok(None)` when an object on the way to
    /// `path` is missing. A request that got no answer is tried again
    /// ([`READ_ATTEMPTS`] in all): see [`RETRY_PAUSE`].
    pub fn get(&self, path: &str) -> Result<Option<Read>, ConnectorError> {
        let mut attempt = 1;
        let response = loop {
            match self.request(http::Method::Get, path).send() {
                Ok(response) => break response,
                Err(e) if e.kind() == "transient" && attempt < READ_ATTEMPTS => {
                    log::debug!("{}; trying again", e.message());
                    pause(attempt);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let what = format!("GET {}", self.config_url(path));
        let status = response.status();
        if status == 400 && caddy_message(response.body()).contains("invalid traversal path") {
            return Ok(None);
        }
        if status == 404 {
            return Err(ConnectorError::invalid_config(format!(
                "{what}: HTTP 404: {}; `admin_url` does not lead to Caddy's admin API",
                caddy_message(response.body())
            )));
        }
        if status != 200 {
            return Err(
                match classify(&what, status, response.retry_after_secs(), response.body()) {
                    Answer::Failed(e) => e,
                    Answer::Ok | Answer::Conflict(_) => ConnectorError::transient(format!(
                        "{what}: HTTP {status}: {}",
                        caddy_message(response.body())
                    )),
                },
            );
        }
        let etag = response
            .header("etag")
            .or_else(|| response.trailer("etag"))
            .map(str::to_string);
        let value = response.json::<Value>()?;
        Ok(Some(Read { value, etag }))
    }

    /// The value of `apps.tls.certificates` (`null` when it, or the TLS app,
    /// is absent) with an `ETag` that guards writes below it: the one of
    /// `apps/tls/certificates`, or of the whole configuration when the
    /// objects on the way are missing (a `PUT` then creates them).
    pub fn certificates(&self) -> Result<Read, ConnectorError> {
        if let Some(read) = self.get(plan::CERTIFICATES_PATH)? {
            return Ok(read);
        }
        match self.get("")? {
            Some(root) => Ok(Read {
                value: Value::Null,
                etag: root.etag,
            }),
            None => Err(ConnectorError::transient(format!(
                "GET {}: Caddy refused to read its own configuration root",
                self.config_url("")
            ))),
        }
    }

    /// Applies `op`, guarded by `etag` when there is one. Transport failures
    /// are errors; every HTTP answer is an [`Answer`].
    pub fn write(&self, op: &Op, etag: Option<&str>) -> Result<Answer, ConnectorError> {
        let method = match op.method {
            plan::Method::Post => http::Method::Post,
            plan::Method::Put => http::Method::Put,
            plan::Method::Patch => http::Method::Patch,
            plan::Method::Delete => http::Method::Delete,
        };
        let mut request = self.request(method, &op.path);
        if let Some(etag) = etag {
            request = request.header("if-match", etag);
        }
        if op.force_reload {
            // Caddy skips a write that leaves its JSON unchanged unless told
            // the cached configuration must be revalidated.
            request = request.header("cache-control", "must-revalidate");
        }
        if let Some(body) = &op.body {
            request = request.json(body)?;
        }
        let response = request.send()?;
        Ok(classify(
            &format!("{} {}", op.method.as_str(), self.config_url(&op.path)),
            response.status(),
            response.retry_after_secs(),
            response.body(),
        ))
    }
}

/// Caddy's explanation: the `error` of its `{"error": "..."}` body, else the
/// start of whatever the body holds (a proxy's page), on one line.
pub fn caddy_message(body: &[u8]) -> String {
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body)
        && let Some(Value::String(message)) = map.get("error")
    {
        return message.trim().to_string();
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What the answer `status` with `body` to `request` (`METHOD url`) means.
pub fn classify(request: &str, status: u16, retry_after: Option<u32>, body: &[u8]) -> Answer {
    if (200..300).contains(&status) {
        return Answer::Ok;
    }
    let message = caddy_message(body);
    let what = if message.is_empty() {
        format!("{request}: HTTP {status}")
    } else {
        format!("{request}: HTTP {status}: {message}")
    };
    if matches!(status, 404 | 409 | 412) || CONFLICTS.iter().any(|c| message.contains(c)) {
        return Answer::Conflict(what);
    }
    Answer::Failed(match status {
        401 => ConnectorError::unauthorized(what),
        403 => ConnectorError::invalid_config(format!(
            "{what}; Caddy accepts admin requests only for the addresses and origins its \
             `admin` configuration allows: set `admin_url` to its `admin.listen` address"
        )),
        429 => ConnectorError::rate_limited(retry_after, what),
        300..=399 => ConnectorError::invalid_config(format!(
            "{what}; redirects are not followed: set `admin_url` to Caddy's admin address"
        )),
        500..=599 if message.contains("loading new config") => load_failure(what, &message),
        500..=599 => ConnectorError::transient(what),
        _ => ConnectorError::rejected(what),
    })
}

/// Caddy refused the configuration a write produced and kept running the
/// previous one. A certificate it cannot read is the certificate's fault,
/// except when it cannot even open the files certplane wrote: then Caddy
/// does not see the granted directory (another host path, permissions).
fn load_failure(what: String, message: &str) -> ConnectorError {
    let unreadable = message.contains("loading certificates")
        && (message.contains("no such file or directory") || message.contains("permission denied"));
    if unreadable {
        ConnectorError::invalid_config(format!(
            "{what}; Caddy cannot read the files certplane wrote: the granted directory must be \
             the same path for Caddy and readable by it"
        ))
    } else {
        ConnectorError::rejected(format!("{what} (Caddy kept its previous configuration)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(answer: Answer) -> ConnectorError {
        match answer {
            Answer::Failed(e) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn admin_urls() {
        let a = Admin::new("http://127.0.0.1:2019").unwrap();
        assert_eq!(
            a.config_url("apps/tls/certificates"),
            "http://127.0.0.1:2019/config/apps/tls/certificates"
        );
        assert_eq!(a.origin, "http://127.0.0.1:2019");
        let a = Admin::new(" https://lb.example/caddy-admin/ ").unwrap();
        assert_eq!(a.config_url(""), "https://lb.example/caddy-admin/config/");
        assert_eq!(a.origin, "https://lb.example");
        for bad in [
            "localhost:2019",
            "unix//run/caddy.sock",
            "http://x/?k=1",
            "",
        ] {
            let e = Admin::new(bad).unwrap_err();
            assert_eq!(e.kind(), "invalid-config", "{bad}");
            assert!(e.message().contains("admin_url"), "{}", e.message());
        }
    }

    #[test]
    fn caddy_messages() {
        assert_eq!(caddy_message(br#"{"error":"boom\n"}"#), "boom");
        assert_eq!(
            caddy_message(b"<html>\n bad gateway </html>"),
            "<html> bad gateway </html>"
        );
        assert_eq!(caddy_message(br#"{"other":1}"#), r#"{"other":1}"#);
        assert_eq!(caddy_message(b""), "");
    }

    #[test]
    fn answers_of_the_real_caddy() {
        let r = "PATCH http://127.0.0.1:2019/config/apps/tls/certificates/load_pem/0";
        assert!(matches!(classify(r, 200, None, b""), Answer::Ok));
        // What Caddy 2.6.2 answers when the configuration moved.
        for (status, body) in [
            (
                412,
                r#"{"error":"If-Match header did not match current config hash"}"#,
            ),
            (
                500,
                r#"{"error":"[/config/apps/tls/certificates/load_pem] key already exists: load_pem"}"#,
            ),
            (
                500,
                r#"{"error":"[/config/apps/tls/certificates/load_files] key does not exist: load_files"}"#,
            ),
            (
                500,
                r#"{"error":"[/config/apps/tls/certificates/load_pem/5] array index out of bounds: 5"}"#,
            ),
            (
                500,
                r#"{"error":"invalid traversal path at: config/apps/tls/certificates/load_pem"}"#,
            ),
            (409, ""),
            (404, ""),
        ] {
            match classify(r, status, None, body.as_bytes()) {
                Answer::Conflict(m) => assert!(m.starts_with(r), "{m}"),
                other => panic!("{status} {body}: {other:?}"),
            }
        }
        // A certificate Caddy cannot load: rejected with Caddy's words.
        let e = failed(classify(
            r,
            500,
            None,
            br#"{"error":"loading new config: loading http app module: provision http: getting tls app: loading tls app module: provision tls: loading certificates: PEM pair 1: tls: private key does not match public key"}"#,
        ));
        assert_eq!(e.kind(), "rejected");
        assert!(
            e.message()
                .contains("private key does not match public key"),
            "{}",
            e.message()
        );
        assert!(e.message().contains("kept its previous configuration"));
        // Files Caddy cannot open: the operator's setup.
        let e = failed(classify(
            r,
            500,
            None,
            br#"{"error":"loading new config: ... loading certificates: open /srv/certs/web/fullchain.pem: no such file or directory"}"#,
        ));
        assert_eq!(e.kind(), "invalid-config");
        // Host or origin refused.
        let e = failed(classify(
            r,
            403,
            None,
            br#"{"error":"host not allowed: evil.example"}"#,
        ));
        assert_eq!(e.kind(), "invalid-config");
        assert!(e.message().contains("host not allowed: evil.example"));
        let e = failed(classify(
            r,
            400,
            None,
            br#"{"error":"unacceptable content-type: text/plain; 'application/json' required"}"#,
        ));
        assert_eq!(e.kind(), "rejected");
        assert_eq!(failed(classify(r, 401, None, b"")).kind(), "unauthorized");
        assert_eq!(failed(classify(r, 308, None, b"")).kind(), "invalid-config");
        match failed(classify(r, 429, Some(3), b"")) {
            ConnectorError::RateLimited(l) => assert_eq!(l.retry_after_secs, Some(3)),
            other => panic!("{other:?}"),
        }
        // A proxy's 502 or Caddy's own other failures: try again later.
        let e = failed(classify(r, 502, None, b"Bad Gateway"));
        assert_eq!(
            (e.kind(), e.message()),
            ("transient", &*format!("{r}: HTTP 502: Bad Gateway"))
        );
        assert_eq!(
            failed(classify(r, 500, None, br#"{"error":"unexpected"}"#)).kind(),
            "transient"
        );
    }
}
