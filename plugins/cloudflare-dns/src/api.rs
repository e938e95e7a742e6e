//! The few Cloudflare API v4 calls this connector makes, and how their
//! failures map to the contract's error classes.
//!
//! Every answer is the envelope `{"success", "errors": [{"code",
//! "message", "error_chain"?}], "messages", "result", "result_info"?}`;
//! failures carry Cloudflare's numeric codes, which callers inspect before
//! falling back to [`Failure::into_error`].

use core::time::Duration;

use certplane_sdk::http::{self, Method};
use certplane_sdk::{ConnectorError, log};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::records::DnsRecord;

/// "The record already exists." (an identical record, older answer).
pub const CODE_RECORD_EXISTS: i64 = 81057;
/// "An identical record already exists."
pub const CODE_IDENTICAL_RECORD_EXISTS: i64 = 81058;
/// "Could not route to /zones/…, perhaps your object identifier is invalid?"
const CODE_COULD_NOT_ROUTE: i64 = 7003;
/// "No route for that URI".
const CODE_NO_ROUTE: i64 = 7000;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(15);
/// Listings of one name's TXT records are small; anything near this is not
/// the API we expect.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Records per listing page (Cloudflare's default is 100).
const PER_PAGE: u32 = 100;
/// Pages read before giving up on a listing: thousands of TXT records under
/// one challenge name means something else is writing there.
const MAX_PAGES: u32 = 10;

/// One entry of `errors` (or of an error's `error_chain`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ApiMessage {
    /// Cloudflare's numeric code.
    #[serde(default)]
    pub code: i64,
    /// Its text.
    #[serde(default)]
    pub message: String,
    /// Causes, for validation errors (code 1004 wraps 9xxx codes).
    #[serde(default)]
    pub error_chain: Vec<ApiMessage>,
}

#[derive(Debug, Deserialize)]
struct Envelope<T> {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    errors: Vec<ApiMessage>,
    result: Option<T>,
    #[serde(default)]
    result_info: Option<ResultInfo>,
}

#[derive(Debug, Default, Deserialize)]
struct ResultInfo {
    #[serde(default)]
    total_pages: Option<u32>,
}

/// A failed API call as Cloudflare answered it.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// `METHOD /path` of the call.
    pub what: String,
    /// HTTP status.
    pub status: u16,
    /// Every code in `errors`, error chains included.
    pub codes: Vec<i64>,
    /// The `Retry-After` hint, when given.
    pub retry_after: Option<u32>,
    /// `code: message` pairs or a body snippet, for the operator.
    pub detail: String,
}

/// Why a call failed: Cloudflare said no ([`ApiError`]), or the request did
/// not get a usable answer (already a [`ConnectorError`]).
#[derive(Debug, Clone)]
pub enum Failure {
    /// An answer with a failure status or `success: false`.
    Api(ApiError),
    /// Transport failure, refused destination, unreadable answer.
    Other(ConnectorError),
}

impl From<ConnectorError> for Failure {
    fn from(e: ConnectorError) -> Self {
        Failure::Other(e)
    }
}

impl ApiError {
    /// Whether Cloudflare answered with one of `codes`.
    pub fn has_code(&self, codes: &[i64]) -> bool {
        self.codes.iter().any(|c| codes.contains(c))
    }

    fn message(&self) -> String {
        format!("{}: HTTP {}: {}", self.what, self.status, self.detail)
    }

    /// The contract's error class for this answer.
    pub fn into_error(self) -> ConnectorError {
        let msg = self.message();
        match self.status {
            401 | 403 => ConnectorError::unauthorized(format!(
                "{msg}; check that secret `api_token` is a valid token with Zone:DNS:Edit (and \
                 Zone:Read when `zone_id` is unset) on this zone"
            )),
            404 => ConnectorError::invalid_config(format!(
                "{msg}; the zone does not exist or this token cannot see it: check `zone_id` \
                 or the zone name"
            )),
            400 if self.has_code(&[CODE_COULD_NOT_ROUTE, CODE_NO_ROUTE]) => {
                ConnectorError::invalid_config(format!(
                    "{msg}; the zone id is not valid: check `zone_id` or `base_url`"
                ))
            }
            429 => ConnectorError::rate_limited(self.retry_after, msg),
            408 | 500..=599 => ConnectorError::transient(msg),
            _ => ConnectorError::rejected(msg),
        }
    }
}

impl Failure {
    /// The contract's error for this failure.
    pub fn into_error(self) -> ConnectorError {
        match self {
            Failure::Api(e) => e.into_error(),
            Failure::Other(e) => e,
        }
    }
}

/// A zone as `GET /zones` lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct Zone {
    /// Zone id.
    pub id: String,
    /// Apex name.
    pub name: String,
}

#[derive(Debug, Deserialize)]
struct TokenStatus {
    #[serde(default)]
    status: String,
}

/// A client bound to one API root and token.
pub struct Client {
    base: String,
    token: String,
}

impl Client {
    /// `base` without a trailing slash.
    pub fn new(base: &str, token: &str) -> Self {
        Client {
            base: base.to_string(),
            token: token.to_string(),
        }
    }

    /// `GET /user/tokens/verify`: the token's status (`active`, `disabled`,
    /// `expired`). Account-owned tokens are refused here (401) even when
    /// valid: callers fall back to a call those tokens may make.
    pub fn verify_token(&self) -> Result<String, Failure> {
        let (s, _): (TokenStatus, _) = self.call(Method::Get, "/user/tokens/verify", "", None)?;
        Ok(s.status)
    }

    /// `GET /zones?name=`: the zone with exactly this apex, if the token
    /// sees it.
    pub fn zone_by_name(&self, name: &str) -> Result<Option<Zone>, Failure> {
        let query = format!("name={}&per_page=50", encode(name));
        let (zones, _): (Vec<Zone>, _) = self.call(Method::Get, "/zones", &query, None)?;
        Ok(zones
            .into_iter()
            .find(|z| z.name.trim_end_matches('.').eq_ignore_ascii_case(name)))
    }

    /// `GET /zones?per_page=1`: succeeds for any token that may list zones.
    pub fn probe_zones(&self) -> Result<(), Failure> {
        self.call::<Vec<serde_json::Value>>(Method::Get, "/zones", "per_page=1", None)
            .map(|_| ())
    }

    /// `GET /zones/{id}/dns_records?per_page=1`: the zone exists and the
    /// token may read its records.
    pub fn probe_records(&self, zone_id: &str) -> Result<(), Failure> {
        let path = format!("/zones/{}/dns_records", path_id(zone_id, "zone id")?);
        self.call::<Vec<serde_json::Value>>(Method::Get, &path, "per_page=1", None)
            .map(|_| ())
    }

    /// Every TXT record named exactly `name` in the zone.
    pub fn txt_records(&self, zone_id: &str, name: &str) -> Result<Vec<DnsRecord>, Failure> {
        let path = format!("/zones/{}/dns_records", path_id(zone_id, "zone id")?);
        let mut all = Vec::new();
        for page in 1..=MAX_PAGES {
            let query = format!(
                "type=TXT&name={}&per_page={PER_PAGE}&page={page}",
                encode(name)
            );
            let (records, info): (Vec<DnsRecord>, _) =
                self.call(Method::Get, &path, &query, None)?;
            let got = records.len();
            all.extend(records);
            let last = match info.and_then(|i| i.total_pages) {
                Some(total) => page >= total,
                None => got < PER_PAGE as usize,
            };
            if last {
                return Ok(all);
            }
        }
        log::warn!(
            "GET {path}: more than {} TXT records named {name}; only the first ones were read",
            MAX_PAGES * PER_PAGE
        );
        Ok(all)
    }

    /// `POST /zones/{id}/dns_records`: creates one TXT record.
    pub fn create_txt(
        &self,
        zone_id: &str,
        name: &str,
        content: &str,
        ttl: u32,
    ) -> Result<DnsRecord, Failure> {
        let path = format!("/zones/{}/dns_records", path_id(zone_id, "zone id")?);
        let body = json!({"type": "TXT", "name": name, "content": content, "ttl": ttl});
        self.call(Method::Post, &path, "", Some(body))
            .map(|(r, _)| r)
    }

    /// `DELETE /zones/{id}/dns_records/{record}`.
    pub fn delete_record(&self, zone_id: &str, record_id: &str) -> Result<(), Failure> {
        let path = format!(
            "/zones/{}/dns_records/{}",
            path_id(zone_id, "zone id")?,
            path_id(record_id, "record id")?
        );
        self.call::<serde_json::Value>(Method::Delete, &path, "", None)
            .map(|_| ())
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(T, Option<ResultInfo>), Failure> {
        let what = format!("{method} {path}");
        let url = if query.is_empty() {
            format!("{}{path}", self.base)
        } else {
            format!("{}{path}?{query}", self.base)
        };
        let mut req = http::Request::new(method, url)
            .header("authorization", format!("Bearer {}", self.token))
            .header("accept", "application/json")
            .timeout(CONNECT_TIMEOUT, READ_TIMEOUT)
            .max_response_bytes(MAX_RESPONSE_BYTES);
        if let Some(body) = body {
            req = req.json(&body)?;
        }
        let resp = req.send().map_err(|e| e.context(&what))?;
        let status = resp.status();
        let envelope: Option<Envelope<T>> = serde_json::from_slice(resp.body()).ok();
        match envelope {
            Some(env) if resp.is_success() && env.success => match env.result {
                Some(result) => Ok((result, env.result_info)),
                None => Err(ConnectorError::transient(format!(
                    "{what}: HTTP {status}: the answer has no `result`"
                ))
                .into()),
            },
            Some(env) => Err(Failure::Api(ApiError {
                what,
                status,
                codes: codes(&env.errors),
                retry_after: resp.retry_after_secs(),
                detail: detail(&env.errors),
            })),
            None if resp.is_success() => Err(ConnectorError::transient(format!(
                "{what}: HTTP {status}: the answer is not a Cloudflare API envelope: {}",
                snippet(resp.body())
            ))
            .into()),
            // A proxy or load balancer answered, or the body is not ours.
            None => Err(Failure::Api(ApiError {
                what,
                status,
                codes: Vec::new(),
                retry_after: resp.retry_after_secs(),
                detail: snippet(resp.body()),
            })),
        }
    }
}

fn codes(errors: &[ApiMessage]) -> Vec<i64> {
    let mut out = Vec::new();
    for e in errors {
        out.push(e.code);
        out.extend(codes(&e.error_chain));
    }
    out
}

fn detail(errors: &[ApiMessage]) -> String {
    if errors.is_empty() {
        return "Cloudflare reported no error details".to_string();
    }
    errors
        .iter()
        .map(|e| {
            let mut s = format!("Cloudflare error {}: {}", e.code, e.message);
            if !e.error_chain.is_empty() {
                s.push_str(&format!(" ({})", detail(&e.error_chain)));
            }
            s
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(http::ERROR_BODY_SNIPPET)]);
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let text = text.trim();
    if text.is_empty() {
        "(empty body)".to_string()
    } else {
        text.to_string()
    }
}

/// An id Cloudflare returned, checked before it goes into a path.
fn path_id<'a>(id: &'a str, what: &str) -> Result<&'a str, ConnectorError> {
    if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(id)
    } else {
        Err(ConnectorError::transient(format!(
            "Cloudflare returned an unexpected {what} {id:?}"
        )))
    }
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, codes: &[i64], retry_after: Option<u32>) -> ApiError {
        ApiError {
            what: "POST /zones/z/dns_records".into(),
            status,
            codes: codes.to_vec(),
            retry_after,
            detail: "Cloudflare error 1: x".into(),
        }
    }

    #[test]
    fn statuses_map_to_classes() {
        assert_eq!(api(401, &[10000], None).into_error().kind(), "unauthorized");
        assert_eq!(api(403, &[9109], None).into_error().kind(), "unauthorized");
        assert_eq!(api(404, &[], None).into_error().kind(), "invalid-config");
        assert_eq!(
            api(400, &[7003], None).into_error().kind(),
            "invalid-config"
        );
        assert_eq!(
            api(400, &[1004, 9005], None).into_error().kind(),
            "rejected"
        );
        assert_eq!(api(503, &[], None).into_error().kind(), "transient");
        assert_eq!(api(500, &[], Some(3)).into_error().kind(), "transient");
        match api(429, &[971], Some(7)).into_error() {
            ConnectorError::RateLimited(r) => {
                assert_eq!(r.retry_after_secs, Some(7));
                assert!(r.message.starts_with("POST /zones/z/dns_records: HTTP 429"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn codes_and_details_include_error_chains() {
        let errors: Vec<ApiMessage> = serde_json::from_str(
            r#"[{"code":1004,"message":"DNS Validation Error",
                "error_chain":[{"code":9051,"message":"Invalid TXT record."}]}]"#,
        )
        .unwrap();
        assert_eq!(codes(&errors), [1004, 9051]);
        assert_eq!(
            detail(&errors),
            "Cloudflare error 1004: DNS Validation Error (Cloudflare error 9051: Invalid TXT record.)"
        );
        assert!(api(400, &codes(&errors), None).has_code(&[9051]));
    }

    #[test]
    fn ids_and_query_values_are_safe() {
        assert_eq!(
            path_id("023e105f4ecef8ad9ca31a8372d0c353", "zone id")
                .unwrap()
                .len(),
            32
        );
        for bad in ["", "../x", "a/b", "a?b"] {
            assert_eq!(path_id(bad, "zone id").unwrap_err().kind(), "transient");
        }
        assert_eq!(
            encode("_acme-challenge.www.example.com"),
            "_acme-challenge.www.example.com"
        );
        assert_eq!(encode("a b&c=d*"), "a%20b%26c%3Dd%2A");
    }

    #[test]
    fn snippets_are_one_line() {
        assert_eq!(
            snippet(b"<html>\nbad gateway\n</html>"),
            "<html> bad gateway </html>"
        );
        assert_eq!(snippet(b""), "(empty body)");
    }
}
