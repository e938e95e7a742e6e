//! SCM's error bodies and the contract's error class for each failure.
//!
//! SCM answers errors as `{"code": <negative int>, "description": "..."}`.
//! The status decides the class, with two codes of the collect endpoint
//! read specially (see [`collect_error`]):
//!
//! | answer | class |
//! | --- | --- |
//! | 401, 403 | `unauthorized` |
//! | 429 | `rate-limited` (with `Retry-After` when sent) |
//! | 503 with `Retry-After` | `rate-limited` |
//! | 408, 425, other 5xx, 503 without `Retry-After` | `transient` |
//! | collect: 400 code -183 ("not collectable") | not an error: still pending |
//! | collect: 400 code -192 (revoked) | `rejected` |
//! | any other 4xx | `rejected`, quoting code and description |

use certplane_sdk::ConnectorError;
use serde::Deserialize;

/// Collect: the certificate is not issued yet.
pub const NOT_COLLECTABLE: i64 = -183;

/// Collect: the certificate was revoked.
pub const REVOKED: i64 = -192;

/// How much of a body without a code messages quote.
const SNIPPET: usize = 300;

/// SCM's error body.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ScmError {
    /// A negative number.
    pub code: i64,
    /// What SCM says about it.
    #[serde(default)]
    pub description: String,
}

impl ScmError {
    /// The error body in `body`, if it is one.
    pub fn parse(body: &[u8]) -> Option<ScmError> {
        serde_json::from_slice(body).ok()
    }
}

/// One line saying what SCM answered: its code and description when the
/// body holds them, else the start of the body.
pub fn describe(status: u16, body: &[u8]) -> String {
    match ScmError::parse(body) {
        Some(e) => format!(
            "HTTP {status}, SCM error {}: {}",
            e.code,
            one_line(&e.description)
        ),
        None => {
            let text = one_line(&String::from_utf8_lossy(&body[..body.len().min(SNIPPET)]));
            if text.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {text}")
            }
        }
    }
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// The error for a non-2xx answer to `request` (`METHOD URL`, for the
/// message).
pub fn status_error(
    request: &str,
    status: u16,
    retry_after_secs: Option<u32>,
    body: &[u8],
) -> ConnectorError {
    let msg = format!("{request}: {}", describe(status, body));
    match status {
        401 | 403 => ConnectorError::unauthorized(format!(
            "{msg} (check the `login` and `password` secrets and the `customer_uri` setting)"
        )),
        429 => ConnectorError::rate_limited(retry_after_secs, msg),
        503 if retry_after_secs.is_some() => ConnectorError::rate_limited(retry_after_secs, msg),
        408 | 425 | 500..=599 => ConnectorError::transient(msg),
        _ => ConnectorError::rejected(msg),
    }
}

/// What a non-2xx answer of the collect endpoint means: `Ok(())` when the
/// certificate is merely not issued yet (-183), else the error.
///
/// Only -183 means "wait": a revoked certificate (-192) or any other code
/// will never become collectable, so polling on would wait for nothing.
pub fn collect_error(
    request: &str,
    status: u16,
    retry_after_secs: Option<u32>,
    body: &[u8],
) -> Result<(), ConnectorError> {
    let client_error =
        (400..500).contains(&status) && !matches!(status, 401 | 403 | 408 | 425 | 429);
    if client_error && let Some(e) = ScmError::parse(body) {
        match e.code {
            NOT_COLLECTABLE => return Ok(()),
            REVOKED => {
                return Err(ConnectorError::rejected(format!(
                    "{request}: the certificate was revoked before it was collected ({})",
                    describe(status, body)
                )));
            }
            _ => {}
        }
    }
    Err(status_error(request, status, retry_after_secs, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &str = "GET https://scm.example/api/ssl/v1/collect/7/pem";

    fn body(code: i64) -> Vec<u8> {
        format!(r#"{{"code":{code},"description":"Certificate is not collectable."}}"#).into_bytes()
    }

    #[test]
    fn not_collectable_is_pending_and_nothing_else_is() {
        assert!(collect_error(REQ, 400, None, &body(-183)).is_ok());
        let e = collect_error(REQ, 400, None, &body(-192)).unwrap_err();
        assert_eq!(e.kind(), "rejected");
        assert!(e.message().contains("revoked"), "{}", e.message());
        assert!(e.message().contains("-192"), "{}", e.message());
        let e = collect_error(REQ, 400, None, &body(-105)).unwrap_err();
        assert_eq!(e.kind(), "rejected");
        assert!(e.message().contains("SCM error -105"), "{}", e.message());
        // A 400 without a code is not "pending" either.
        assert_eq!(
            collect_error(REQ, 400, None, b"").unwrap_err().kind(),
            "rejected"
        );
        // -183 in an auth or server error is not taken at its word.
        assert_eq!(
            collect_error(REQ, 401, None, &body(-183))
                .unwrap_err()
                .kind(),
            "unauthorized"
        );
        assert_eq!(
            collect_error(REQ, 500, None, &body(-183))
                .unwrap_err()
                .kind(),
            "transient"
        );
    }

    #[test]
    fn statuses_map_to_classes() {
        let class = |status, retry| status_error(REQ, status, retry, b"").kind();
        assert_eq!(class(401, None), "unauthorized");
        assert_eq!(class(403, None), "unauthorized");
        assert_eq!(class(429, None), "rate-limited");
        assert_eq!(class(503, Some(9)), "rate-limited");
        assert_eq!(class(503, None), "transient");
        assert_eq!(class(500, None), "transient");
        assert_eq!(class(502, None), "transient");
        assert_eq!(class(408, None), "transient");
        assert_eq!(class(400, None), "rejected");
        assert_eq!(class(404, None), "rejected");
        match status_error(REQ, 429, Some(30), b"") {
            ConnectorError::RateLimited(r) => assert_eq!(r.retry_after_secs, Some(30)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn messages_quote_code_and_description() {
        let e = status_error(REQ, 400, None, br#"{"code":-4,"description":"bad\nterm"}"#);
        assert_eq!(
            e.message(),
            format!("{REQ}: HTTP 400, SCM error -4: bad term")
        );
        let e = status_error(REQ, 502, None, b"<html>bad gateway</html>");
        assert_eq!(
            e.message(),
            format!("{REQ}: HTTP 502: <html>bad gateway</html>")
        );
        let long = vec![b'x'; 2000];
        assert!(status_error(REQ, 500, None, &long).message().len() < 400);
        let e = status_error(
            REQ,
            401,
            None,
            br#"{"code":-16,"description":"Unknown user"}"#,
        );
        assert!(e.message().contains("`login`"), "{}", e.message());
    }
}
