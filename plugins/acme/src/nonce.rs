//! The ACME directory, and a client that signs every request with a fresh
//! anti-replay nonce (RFC 8555 sections 7.1.1, 7.2 and 6.5).
//!
//! Every response carries the next nonce in `Replay-Nonce`; the client keeps
//! it for the next request, so a call needs `HEAD newNonce` only once. A
//! `badNonce` answer is retried with the nonce that came with it, up to
//! [`BAD_NONCE_RETRIES`] times: a CA may refuse good nonces at random (Pebble
//! refuses 5 % by default), and a request that fails twice in a row would
//! otherwise cost a whole poll interval, which grows with each one.

use certplane_sdk::http::{self, Method, Request, Response};
use certplane_sdk::{ConnectorError, log};
use serde::Deserialize;
use serde_json::Value;

use crate::jws::{self, AccountKey, Payload};
use crate::problem::{AcmeError, Problem};

/// The content type of every ACME POST.
pub const JOSE_JSON: &str = "application/jose+json";

/// Sent with every request: RFC 8555 section 6.1 requires a User-Agent
/// (Pebble refuses requests without one), and CAs use it to reach client
/// authors.
pub const USER_AGENT: &str = concat!("certplane-acme/", env!("CARGO_PKG_VERSION"));

/// A request to the CA, with our User-Agent.
pub fn request(method: Method, url: &str) -> Request {
    Request::new(method, url).header("user-agent", USER_AGENT)
}

/// The directory's `meta` object.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    /// The CA's terms of service.
    #[serde(default)]
    pub terms_of_service: Option<String>,
    /// Whether newAccount needs an external account binding.
    #[serde(default)]
    pub external_account_required: Option<bool>,
}

/// The resources a CA's directory names (never hard-coded: every CA lays
/// out its URLs differently).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Directory {
    /// `newNonce`.
    pub new_nonce: String,
    /// `newAccount`.
    pub new_account: String,
    /// `newOrder`.
    pub new_order: String,
    /// `revokeCert`, when the CA revokes.
    #[serde(default)]
    pub revoke_cert: Option<String>,
    /// RFC 9773 `renewalInfo`, when the CA offers renewal information.
    #[serde(default)]
    pub renewal_info: Option<String>,
    /// `meta`.
    #[serde(default)]
    pub meta: Meta,
}

impl Directory {
    /// Fetches and reads the directory at `url`.
    pub fn fetch(url: &str) -> Result<Directory, ConnectorError> {
        let response = request(Method::Get, url)
            .header("accept", "application/json")
            .send()
            .map_err(|e| e.context("fetching the ACME directory"))?;
        if !response.is_success() {
            return Err(status_error(&response).into_error("fetching the ACME directory"));
        }
        Directory::parse(url, response.body())
    }

    /// Reads a directory document.
    pub fn parse(url: &str, body: &[u8]) -> Result<Directory, ConnectorError> {
        serde_json::from_slice(body).map_err(|e| {
            ConnectorError::invalid_config(format!(
                "directory_url {} is not an ACME directory ({e})",
                http::redact_url(url)
            ))
        })
    }
}

/// The error of a non-2xx response: its problem document, else the status.
pub fn status_error(response: &Response) -> AcmeError {
    match Problem::from_response(response) {
        Some(problem) => AcmeError::Problem(problem),
        None => AcmeError::Other(
            http::status_error(
                response.status(),
                response.retry_after_secs(),
                response.body(),
            )
            .unwrap_or_else(|| {
                ConnectorError::transient(format!("unexpected HTTP {}", response.status()))
            }),
        ),
    }
}

/// How many times one request is sent again after `badNonce`.
pub const BAD_NONCE_RETRIES: u32 = 3;

/// Signs and sends ACME requests for one account key.
#[derive(Debug)]
pub struct Client {
    new_nonce: String,
    key: AccountKey,
    nonce: Option<String>,
    /// The account URL, once known: requests are signed with `kid` then,
    /// with the `jwk` before.
    pub kid: Option<String>,
}

impl Client {
    /// A client that gets its first nonce from `new_nonce`.
    pub fn new(new_nonce: impl Into<String>, key: AccountKey) -> Client {
        Client {
            new_nonce: new_nonce.into(),
            key,
            nonce: None,
            kid: None,
        }
    }

    /// The account key.
    pub fn key(&self) -> &AccountKey {
        &self.key
    }

    /// POSTs `payload` to `url`, signed with the account URL (`kid`) when
    /// known, else with the key itself (`jwk`). Returns 2xx responses;
    /// anything else is an error.
    pub fn post(&mut self, url: &str, payload: Payload<'_>) -> Result<Response, AcmeError> {
        self.post_with(url, payload, None)
    }

    /// POST-as-GET (RFC 8555 section 6.3): reads a resource.
    pub fn get(&mut self, url: &str) -> Result<Response, AcmeError> {
        self.post_with(url, Payload::Empty, None)
    }

    /// POSTs with an extra `Accept` header (certificate downloads).
    pub fn post_with(
        &mut self,
        url: &str,
        payload: Payload<'_>,
        accept: Option<&str>,
    ) -> Result<Response, AcmeError> {
        let mut retries = 0;
        loop {
            match self.post_once(url, payload, accept) {
                Err(e) if e.is("badNonce") && retries < BAD_NONCE_RETRIES => {
                    retries += 1;
                    log::debug!(
                        "the CA refused our nonce for {url}; retrying with a fresh one ({retries} of {BAD_NONCE_RETRIES})"
                    );
                }
                other => return other,
            }
        }
    }

    fn post_once(
        &mut self,
        url: &str,
        payload: Payload<'_>,
        accept: Option<&str>,
    ) -> Result<Response, AcmeError> {
        let nonce = self.take_nonce()?;
        let protected = jws::protected(&self.key, self.kid.as_deref(), &nonce, url);
        let body = self.key.sign(&protected, payload);
        let mut post = request(Method::Post, url)
            .header("content-type", JOSE_JSON)
            .json(&body)?;
        if let Some(accept) = accept {
            post = post.header("accept", accept);
        }
        let response = post.send()?;
        self.keep_nonce(&response);
        if response.is_success() {
            Ok(response)
        } else {
            Err(status_error(&response))
        }
    }

    fn keep_nonce(&mut self, response: &Response) {
        if let Some(nonce) = response.header("replay-nonce") {
            self.nonce = Some(nonce.trim().to_string());
        }
    }

    fn take_nonce(&mut self) -> Result<String, AcmeError> {
        if let Some(nonce) = self.nonce.take() {
            return Ok(nonce);
        }
        let response = request(Method::Head, &self.new_nonce)
            .send()
            .map_err(|e| e.context("getting a nonce (newNonce)"))?;
        if !response.is_success() {
            return Err(status_error(&response));
        }
        self.keep_nonce(&response);
        self.nonce.take().ok_or_else(|| {
            AcmeError::Other(ConnectorError::transient(
                "newNonce answered without a Replay-Nonce header",
            ))
        })
    }
}

/// The body of a successful response as JSON of type `T`.
pub fn json<T: serde::de::DeserializeOwned>(response: &Response) -> Result<T, AcmeError> {
    response.json().map_err(AcmeError::Other)
}

/// The `Location` header (the URL of a created account or order).
pub fn location(response: &Response, what: &str) -> Result<String, AcmeError> {
    response
        .header("location")
        .map(str::to_string)
        .ok_or_else(|| {
            AcmeError::Other(ConnectorError::transient(format!(
                "{what} answered HTTP {} without a Location header",
                response.status()
            )))
        })
}

/// Seconds to wait before asking again: the CA's `Retry-After` when it sent
/// one (delta-seconds or HTTP-date), else `default`; never below 1.
pub fn retry_after(response: &Response, default: u32) -> u32 {
    response.retry_after_secs().unwrap_or(default).max(1)
}

/// A JSON object without fields, to answer a challenge.
pub fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_fields_and_missing_ones() {
        let body = br#"{"newNonce":"https://ca/nonce","newAccount":"https://ca/acct",
            "newOrder":"https://ca/order","revokeCert":"https://ca/revoke",
            "renewalInfo":"https://ca/ari","keyChange":"https://ca/kc",
            "meta":{"termsOfService":"https://ca/tos","externalAccountRequired":true}}"#;
        let d = Directory::parse("https://ca/dir", body).unwrap();
        assert_eq!(d.new_nonce, "https://ca/nonce");
        assert_eq!(d.renewal_info.as_deref(), Some("https://ca/ari"));
        assert_eq!(d.meta.external_account_required, Some(true));
        let d = Directory::parse(
            "https://ca/dir",
            br#"{"newNonce":"n","newAccount":"a","newOrder":"o"}"#,
        )
        .unwrap();
        assert_eq!((d.renewal_info, d.revoke_cert), (None, None));
        let e = Directory::parse("https://ca/dir?x=secret", b"{\"newNonce\":\"n\"}").unwrap_err();
        assert_eq!(e.kind(), "invalid-config");
        assert!(
            e.message().contains("missing field `newAccount`"),
            "{}",
            e.message()
        );
        assert!(!e.message().contains("secret"));
    }

    #[test]
    fn retry_after_both_forms_and_floor() {
        let r = |v: &str| Response::new("x", 200, vec![("retry-after".into(), v.into())], "");
        assert_eq!(retry_after(&r("7"), 2), 7);
        assert_eq!(retry_after(&r("0"), 2), 1);
        assert_eq!(retry_after(&r("Wed, 21 Oct 2015 07:28:00 GMT"), 2), 1);
        assert_eq!(retry_after(&r("soon"), 2), 2);
        assert_eq!(retry_after(&Response::new("x", 200, vec![], ""), 3), 3);
    }

    #[test]
    fn status_errors_prefer_the_problem_document() {
        let r = Response::new(
            "POST x",
            400,
            vec![],
            r#"{"type":"urn:ietf:params:acme:error:badNonce","detail":"stale"}"#,
        );
        assert!(status_error(&r).is("badNonce"));
        let r = Response::new("POST x", 502, vec![], "gateway");
        let e = status_error(&r);
        assert!(e.problem().is_none());
        assert_eq!(e.into_error("newOrder").kind(), "transient");
    }
}
