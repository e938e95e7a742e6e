//! ACME problem documents (RFC 8555 section 6.7, RFC 7807) and what each
//! error type means for the host.

use certplane_sdk::ConnectorError;
use certplane_sdk::http::{self, Response};
use serde::Deserialize;

/// The namespace of ACME error types.
pub const ACME_ERROR: &str = "urn:ietf:params:acme:error:";

/// An identifier (`{"type": "dns", "value": ...}`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Identifier {
    /// `dns` (or `ip`).
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The name.
    #[serde(default)]
    pub value: String,
}

/// A problem document.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Problem {
    /// `urn:ietf:params:acme:error:...` (or another URI).
    #[serde(rename = "type", default)]
    pub kind: String,
    /// What went wrong, for humans.
    #[serde(default)]
    pub detail: String,
    /// Per-identifier problems of a `compound` (or any) problem.
    #[serde(default)]
    pub subproblems: Vec<Subproblem>,
    /// The HTTP status it came with (0 inside an authorization).
    #[serde(skip)]
    pub http_status: u16,
    /// The response's `Retry-After`, in seconds.
    #[serde(skip)]
    pub retry_after: Option<u32>,
}

/// One entry of `subproblems`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Subproblem {
    /// Its error type.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Its detail.
    #[serde(default)]
    pub detail: String,
    /// The identifier it is about.
    #[serde(default)]
    pub identifier: Option<Identifier>,
}

impl Problem {
    /// Reads the problem document of a non-2xx response; `None` when the
    /// body is not one (a proxy's error page, say).
    pub fn from_response(response: &Response) -> Option<Problem> {
        let mut problem: Problem = serde_json::from_slice(response.body()).ok()?;
        if problem.kind.is_empty() {
            return None;
        }
        problem.http_status = response.status();
        problem.retry_after = response.retry_after_secs();
        Some(problem)
    }

    /// The ACME error name (`badNonce`, `rateLimited`, ...); the whole type
    /// when it is not an ACME error.
    pub fn name(&self) -> &str {
        self.kind.strip_prefix(ACME_ERROR).unwrap_or(&self.kind)
    }

    /// Whether this is the ACME error `name`.
    pub fn is(&self, name: &str) -> bool {
        self.name() == name
    }

    /// One line: type, detail, status and subproblems.
    pub fn describe(&self) -> String {
        let mut text = self.name().to_string();
        if !self.detail.is_empty() {
            text.push_str(": ");
            text.push_str(&self.detail);
        }
        if self.http_status != 0 {
            text.push_str(&format!(" (HTTP {})", self.http_status));
        }
        for sub in &self.subproblems {
            let who = sub
                .identifier
                .as_ref()
                .map_or(String::new(), |i| format!("{} ", i.value));
            let name = sub.kind.strip_prefix(ACME_ERROR).unwrap_or(&sub.kind);
            text.push_str(&format!("; {who}{name}: {}", sub.detail));
        }
        text
    }

    /// The connector error for a CA's answer to one of our requests;
    /// `context` says which (`newOrder`, `finalize`, ...).
    pub fn to_error(&self, context: &str) -> ConnectorError {
        let message = format!("{context}: the CA answered {}", self.describe());
        let name = match self.name() {
            // A compound problem is as bad as its first subproblem.
            "compound" => self
                .subproblems
                .first()
                .map(|s| s.kind.strip_prefix(ACME_ERROR).unwrap_or(&s.kind))
                .unwrap_or("rejectedIdentifier"),
            other => other,
        };
        match name {
            "rateLimited" => ConnectorError::rate_limited(self.retry_after, message),
            "unauthorized" | "accountDoesNotExist" => ConnectorError::unauthorized(message),
            "rejectedIdentifier"
            | "caa"
            | "unsupportedIdentifier"
            | "malformed"
            | "badCSR"
            | "badRevocationReason"
            | "badPublicKey"
            | "badSignatureAlgorithm"
            | "alreadyRevoked"
            | "alreadyReplaced"
            | "dns"
            | "connection"
            | "incorrectResponse"
            | "tls" => ConnectorError::rejected(message),
            "externalAccountRequired"
            | "invalidContact"
            | "unsupportedContact"
            | "userActionRequired"
            | "invalidProfile" => ConnectorError::invalid_config(message),
            "serverInternal" | "badNonce" | "orderNotReady" => ConnectorError::transient(message),
            // An unknown type: the HTTP status decides, as for any API.
            _ => match http::status_error(self.http_status, self.retry_after, &[]) {
                Some(e) => relabel(e, message),
                None => ConnectorError::transient(message),
            },
        }
    }
}

/// `error` with its class kept and its message replaced.
fn relabel(error: ConnectorError, message: String) -> ConnectorError {
    match error {
        ConnectorError::InvalidConfig(_) => ConnectorError::invalid_config(message),
        ConnectorError::Unauthorized(_) => ConnectorError::unauthorized(message),
        ConnectorError::Rejected(_) => ConnectorError::rejected(message),
        ConnectorError::RateLimited(r) => ConnectorError::rate_limited(r.retry_after_secs, message),
        ConnectorError::Transient(_) => ConnectorError::transient(message),
        ConnectorError::Unsupported(_) => ConnectorError::unsupported(message),
    }
}

/// An error of one ACME exchange: the CA's problem document (so callers can
/// react to `badNonce`, `accountDoesNotExist`, `alreadyReplaced`...), or
/// anything else already mapped.
#[derive(Debug, Clone)]
pub enum AcmeError {
    /// The CA answered with a problem document.
    Problem(Problem),
    /// Transport failures, non-problem statuses, unreadable answers.
    Other(ConnectorError),
}

impl From<ConnectorError> for AcmeError {
    fn from(e: ConnectorError) -> Self {
        AcmeError::Other(e)
    }
}

impl AcmeError {
    /// The problem, when the CA sent one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            AcmeError::Problem(p) => Some(p),
            AcmeError::Other(_) => None,
        }
    }

    /// Whether the CA sent the ACME error `name`.
    pub fn is(&self, name: &str) -> bool {
        self.problem().is_some_and(|p| p.is(name))
    }

    /// The connector error, its message starting with `context`.
    pub fn into_error(self, context: &str) -> ConnectorError {
        match self {
            AcmeError::Problem(p) => p.to_error(context),
            AcmeError::Other(e) => e.context(context),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(status: u16, body: &str, retry_after: Option<&str>) -> Problem {
        let mut headers = vec![(
            "content-type".to_string(),
            "application/problem+json".to_string(),
        )];
        if let Some(r) = retry_after {
            headers.push(("retry-after".into(), r.into()));
        }
        Problem::from_response(&Response::new("POST https://ca/x", status, headers, body)).unwrap()
    }

    fn class(status: u16, kind: &str) -> (String, String) {
        let body = format!(r#"{{"type":"urn:ietf:params:acme:error:{kind}","detail":"d"}}"#);
        let e = problem(status, &body, None).to_error("ctx");
        (e.kind().to_string(), e.message().to_string())
    }

    #[test]
    fn error_types_map_to_connector_errors() {
        let cases = [
            (400, "badNonce", "transient"),
            (403, "unauthorized", "unauthorized"),
            (400, "accountDoesNotExist", "unauthorized"),
            (400, "rejectedIdentifier", "rejected"),
            (403, "caa", "rejected"),
            (400, "unsupportedIdentifier", "rejected"),
            (400, "malformed", "rejected"),
            (400, "badCSR", "rejected"),
            (403, "externalAccountRequired", "invalid-config"),
            (400, "invalidContact", "invalid-config"),
            (403, "userActionRequired", "invalid-config"),
            (500, "serverInternal", "transient"),
            (403, "orderNotReady", "transient"),
            (400, "alreadyRevoked", "rejected"),
            // Unknown types fall back on the status.
            (503, "somethingNew", "transient"),
            (404, "somethingNew", "rejected"),
            (401, "somethingNew", "unauthorized"),
        ];
        for (status, kind, want) in cases {
            let (got, message) = class(status, kind);
            assert_eq!(got, want, "{kind}");
            assert_eq!(
                message,
                format!("ctx: the CA answered {kind}: d (HTTP {status})")
            );
        }
    }

    #[test]
    fn rate_limits_carry_retry_after_in_both_forms() {
        let body = r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many"}"#;
        match problem(429, body, Some("120")).to_error("newOrder") {
            ConnectorError::RateLimited(r) => {
                assert_eq!(r.retry_after_secs, Some(120));
                assert!(r.message.contains("too many"), "{}", r.message);
            }
            other => panic!("{other:?}"),
        }
        let date = "Wed, 21 Oct 2015 07:28:00 GMT";
        match problem(429, body, Some(date)).to_error("newOrder") {
            // A date in the past means "now".
            ConnectorError::RateLimited(r) => assert_eq!(r.retry_after_secs, Some(0)),
            other => panic!("{other:?}"),
        }
        let later = http::parse_retry_after(
            "Wed, 21 Oct 2015 07:28:00 GMT",
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_445_412_000),
        );
        assert_eq!(later, Some(480));
    }

    #[test]
    fn compound_problems_use_their_first_subproblem() {
        let body = r#"{"type":"urn:ietf:params:acme:error:compound","detail":"several",
            "subproblems":[{"type":"urn:ietf:params:acme:error:caa","detail":"CAA forbids",
            "identifier":{"type":"dns","value":"a.example"}}]}"#;
        let e = problem(403, body, None).to_error("newOrder");
        assert_eq!(e.kind(), "rejected");
        assert!(
            e.message().ends_with("; a.example caa: CAA forbids"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn non_problem_bodies_are_not_problems() {
        let r = Response::new("GET x", 502, vec![], "<html>bad gateway</html>");
        assert!(Problem::from_response(&r).is_none());
        let r = Response::new("GET x", 400, vec![], r#"{"detail":"no type"}"#);
        assert!(Problem::from_response(&r).is_none());
    }
}
