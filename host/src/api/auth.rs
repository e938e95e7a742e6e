//! Authentication and authorisation of API callers.
//!
//! * Operators use API keys (`Authorization: Bearer cpk_…`). Keys are stored
//!   as SHA-256 hashes; scopes nest: `admin` ⊇ `operator` ⊇ `read_only`.
//! * Agents use their own credential (`Authorization: Bearer cpa_<agent-id>.<secret>`),
//!   issued once at registration; only its hash is stored.
//!
//! Both are rate limited per key / per agent (governor). Registration, the
//! one unauthenticated agent call, has limits of its own per source address
//! and per bootstrap token ([`RegistrationLimits`]). Every 429 carries
//! `Retry-After` (whole seconds, at least 1).
//!
//! The `Authorization` header is read once, the same way for both
//! ([`bearer_token`]): the scheme is case-insensitive (RFC 9110), spaces
//! around the token are tolerated, and the token must be token68. Every
//! 401 carries `WWW-Authenticate: Bearer realm="certplane"`, with
//! `error="invalid_token"` when a token was presented but is unknown,
//! expired or revoked, and `error="invalid_request"` when the header is
//! malformed (RFC 6750 section 3).

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
use crate::config::AgentSettings;
use crate::store::{Agent, AgentStatus, ApiKey, ApiKeyStatus, ApiScope};

/// Prefix of operator API keys.
pub const API_KEY_PREFIX: &str = "cpk_";
/// Prefix of agent credentials.
pub const AGENT_CREDENTIAL_PREFIX: &str = "cpa_";

/// Lower-case hex SHA-256 of a token: what the database stores.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh random secret, URL-safe base64 of 32 random bytes.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A new operator API key (the plaintext, shown once) and its hash.
pub fn new_api_key() -> (String, String) {
    let key = format!("{API_KEY_PREFIX}{}", random_secret());
    let hash = hash_token(&key);
    (key, hash)
}

/// A new agent credential for `agent_id` (shown once) and the hash of its
/// secret part.
pub fn new_agent_credential(agent_id: &str) -> (String, String) {
    let secret = random_secret();
    let hash = hash_token(&secret);
    (
        format!("{AGENT_CREDENTIAL_PREFIX}{agent_id}.{secret}"),
        hash,
    )
}

/// Constant-time comparison of two hex digests.
fn digest_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Whether `token` is one of the configured bootstrap tokens (constant time
/// per comparison).
pub fn is_bootstrap_token(configured: &[String], token: &str) -> bool {
    bootstrap_token_index(configured, token).is_some()
}

/// Which configured bootstrap token `token` is. Every configured token is
/// compared (in constant time each), whichever matches.
pub fn bootstrap_token_index(configured: &[String], token: &str) -> Option<usize> {
    let presented = hash_token(token);
    configured.iter().enumerate().fold(None, |found, (i, t)| {
        let matches = digest_eq(&hash_token(t), &presented);
        found.or(matches.then_some(i))
    })
}

fn quota(per_second: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
    Quota::per_second(rate).allow_burst(burst)
}

/// Per-caller rate limits.
pub struct RateLimits {
    limiter: DefaultKeyedRateLimiter<String>,
    registration: OnceLock<RegistrationLimits>,
}

impl RateLimits {
    /// `per_second` sustained with `burst` on top, per caller.
    pub fn new(per_second: u32, burst: u32) -> Self {
        RateLimits {
            limiter: RateLimiter::keyed(quota(per_second, burst)),
            registration: OnceLock::new(),
        }
    }

    /// The registration limits of `[agents]`. Built on first use: the
    /// configuration does not change while the host runs.
    pub fn registration(&self, agents: &AgentSettings) -> &RegistrationLimits {
        self.registration
            .get_or_init(|| RegistrationLimits::new(agents))
    }

    /// Admits one request for `caller` or refuses it for now (429 with
    /// `Retry-After`).
    pub fn check(&self, caller: &str) -> Result<(), RetryLater> {
        self.limiter
            .check_key(&caller.to_string())
            .map_err(|not_until| retry_later(&not_until, "requests with this credential"))
    }
}

/// Source addresses tracked before the fully replenished ones are dropped:
/// bounds the memory a flood from many addresses can take.
const MAX_TRACKED_ADDRESSES: usize = 100_000;

/// Limits on `POST /agents/register`, which anyone may call.
///
/// Every attempt counts against its source address (IPv6 by /64, where one
/// machine's addresses come from), so one address guesses tokens only so
/// fast and a flood from it refuses nobody else. A registration with a
/// valid token counts against that token as well, and only such
/// registrations do: wrong tokens, from however many addresses, cannot
/// spend a fleet's allowance.
pub struct RegistrationLimits {
    per_address: DefaultKeyedRateLimiter<IpAddr>,
    per_token: DefaultKeyedRateLimiter<usize>,
}

/// A request refused for now by a rate limit: 429 with `Retry-After`.
#[derive(Debug)]
pub struct RetryLater {
    /// Whole seconds until the limit admits one more.
    pub after_secs: u64,
    what: &'static str,
}

impl IntoResponse for RetryLater {
    fn into_response(self) -> Response {
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many {}; retry in {} s", self.what, self.after_secs),
        )
        .with_details(serde_json::json!({ "retry_after_secs": self.after_secs }))
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(self.after_secs));
        response
    }
}

impl RegistrationLimits {
    /// The limits of `[agents]`.
    pub fn new(agents: &AgentSettings) -> Self {
        RegistrationLimits {
            per_address: RateLimiter::keyed(quota(
                agents.registration_per_address_per_second,
                agents.registration_per_address_burst,
            )),
            per_token: RateLimiter::keyed(quota(
                agents.registration_per_token_per_second,
                agents.registration_per_token_burst,
            )),
        }
    }

    /// Admits one attempt from `peer` (`None`: a request that did not come
    /// through the listener, counted as one unknown address).
    pub fn check_address(&self, peer: Option<IpAddr>) -> Result<(), RetryLater> {
        if self.per_address.len() > MAX_TRACKED_ADDRESSES {
            self.per_address.retain_recent();
            self.per_address.shrink_to_fit();
        }
        let key = peer.map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), address_key);
        self.per_address
            .check_key(&key)
            .map_err(|not_until| retry_later(&not_until, "registrations from this address"))
    }

    /// Admits one registration with the configured token number `token`.
    pub fn check_token(&self, token: usize) -> Result<(), RetryLater> {
        self.per_token
            .check_key(&token)
            .map_err(|not_until| retry_later(&not_until, "registrations with this bootstrap token"))
    }
}

fn retry_later(
    not_until: &governor::NotUntil<
        <governor::clock::DefaultClock as governor::clock::Clock>::Instant,
    >,
    what: &'static str,
) -> RetryLater {
    let wait = not_until.wait_time_from(governor::clock::Clock::now(
        &governor::clock::DefaultClock::default(),
    ));
    RetryLater {
        after_secs: whole_secs_at_least_one(wait),
        what,
    }
}

/// `Retry-After` counts whole seconds; rounding down would invite a retry
/// that is refused again.
fn whole_secs_at_least_one(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// The key an address is limited under: IPv4 as is (IPv4-mapped IPv6
/// included), IPv6 by its /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// The challenge of every 401 (RFC 6750 section 3).
pub const CHALLENGE: &str = "Bearer realm=\"certplane\"";

/// The RFC 6750 error code of a refused bearer request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BearerError {
    /// The `Authorization` header is malformed.
    InvalidRequest,
    /// A token was presented but is unknown, expired or revoked.
    InvalidToken,
}

/// A request refused as unauthenticated: 401 with `WWW-Authenticate`.
#[derive(Debug)]
pub struct Unauthenticated {
    error: Option<BearerError>,
    message: String,
}

impl Unauthenticated {
    /// No credentials (no `Authorization` header, or another scheme): the
    /// bare challenge, no error code (RFC 6750 section 3.1).
    pub fn missing(message: impl Into<String>) -> Self {
        Unauthenticated {
            error: None,
            message: message.into(),
        }
    }

    /// A malformed `Authorization` header (`error="invalid_request"`).
    pub fn malformed(message: impl Into<String>) -> Self {
        Unauthenticated {
            error: Some(BearerError::InvalidRequest),
            message: message.into(),
        }
    }

    /// A token presented and not accepted (`error="invalid_token"`).
    pub fn invalid_token(message: impl Into<String>) -> Self {
        Unauthenticated {
            error: Some(BearerError::InvalidToken),
            message: message.into(),
        }
    }

    /// The `WWW-Authenticate` value.
    fn challenge(&self) -> HeaderValue {
        HeaderValue::from_static(match self.error {
            None => CHALLENGE,
            Some(BearerError::InvalidRequest) => {
                "Bearer realm=\"certplane\", error=\"invalid_request\""
            }
            Some(BearerError::InvalidToken) => {
                "Bearer realm=\"certplane\", error=\"invalid_token\""
            }
        })
    }
}

impl IntoResponse for Unauthenticated {
    fn into_response(self) -> Response {
        let challenge = self.challenge();
        let mut response = ApiError::unauthorized(self.message).into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge);
        response
    }
}

/// Why an authenticating extractor refused a request.
#[derive(Debug)]
pub enum AuthRejection {
    /// 401 with its challenge.
    Unauthenticated(Unauthenticated),
    /// 403: the key lacks the scope (`error="insufficient_scope"`).
    InsufficientScope(ApiScope),
    /// 429 with `Retry-After`.
    RateLimited(RetryLater),
    /// Anything else (a retired agent's 410, a store failure's 500).
    Refused(ApiError),
}

impl From<Unauthenticated> for AuthRejection {
    fn from(e: Unauthenticated) -> Self {
        AuthRejection::Unauthenticated(e)
    }
}

impl From<RetryLater> for AuthRejection {
    fn from(e: RetryLater) -> Self {
        AuthRejection::RateLimited(e)
    }
}

impl From<ApiError> for AuthRejection {
    fn from(e: ApiError) -> Self {
        AuthRejection::Refused(e)
    }
}

impl From<crate::store::StoreError> for AuthRejection {
    fn from(e: crate::store::StoreError) -> Self {
        AuthRejection::Refused(e.into())
    }
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        match self {
            AuthRejection::Unauthenticated(e) => e.into_response(),
            AuthRejection::InsufficientScope(needed) => {
                let mut response =
                    ApiError::forbidden(format!("this API key lacks the {needed} scope"))
                        .into_response();
                let challenge = format!(
                    "Bearer realm=\"certplane\", error=\"insufficient_scope\", scope=\"{needed}\""
                );
                if let Ok(value) = HeaderValue::from_str(&challenge) {
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, value);
                }
                response
            }
            AuthRejection::RateLimited(e) => e.into_response(),
            AuthRejection::Refused(e) => e.into_response(),
        }
    }
}

/// Whether `token` is RFC 9110 token68: `1*( ALPHA / DIGIT / "-" / "." /
/// "_" / "~" / "+" / "/" ) *"="`.
fn is_token68(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// The bearer token of a request: API keys, agent credentials and the
/// `/metrics` token are all read here. The scheme is matched without
/// regard to case and any run of spaces or tabs may surround the token
/// (RFC 9110 section 11.4); the token must be token68, and one
/// `Authorization` header only.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, Unauthenticated> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(Unauthenticated::missing(
            "missing Authorization: Bearer <token>",
        ));
    };
    if values.next().is_some() {
        return Err(Unauthenticated::malformed(
            "more than one Authorization header",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| Unauthenticated::malformed("malformed Authorization header"))?
        .trim_matches([' ', '\t']);
    let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Unauthenticated::missing(
            "expected Authorization: Bearer <token>",
        ));
    }
    let token = rest.trim_start_matches([' ', '\t']);
    if token.is_empty() {
        return Err(Unauthenticated::malformed(
            "Authorization: Bearer without a token",
        ));
    }
    if !is_token68(token) {
        return Err(Unauthenticated::malformed(
            "the bearer token is not one token68 value",
        ));
    }
    Ok(token)
}

/// Checks that a request presents `expected` as its bearer token (the
/// `/metrics` token); compared as digests, in constant time.
pub fn require_static_token(headers: &HeaderMap, expected: &str) -> Result<(), Unauthenticated> {
    let token = bearer_token(headers)?;
    if digest_eq(&hash_token(token), &hash_token(expected)) {
        Ok(())
    } else {
        Err(Unauthenticated::invalid_token("wrong token"))
    }
}

/// Adds what a refusal must carry where the code that refused did not say
/// it: `WWW-Authenticate` on every 401 (e.g. an unknown bootstrap token at
/// registration) and `Retry-After` on every 429 (from the envelope's
/// `details.retry_after_secs`, else 1 s). The refusals of this module set
/// both themselves; this keeps the promise for any other.
pub async fn with_refusal_headers(response: Response) -> Response {
    match response.status() {
        StatusCode::UNAUTHORIZED if !response.headers().contains_key(header::WWW_AUTHENTICATE) => {
            let mut response = response;
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(CHALLENGE),
            );
            response
        }
        StatusCode::TOO_MANY_REQUESTS if !response.headers().contains_key(header::RETRY_AFTER) => {
            let (mut parts, body) = response.into_parts();
            // Error envelopes are small; a body past this is no envelope.
            // Boxed: rare, and kept out of every parked request's future.
            let bytes = Box::pin(axum::body::to_bytes(body, 64 * 1024))
                .await
                .unwrap_or_default();
            let secs = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["error"]["details"]["retry_after_secs"].as_u64())
                .unwrap_or(1)
                .max(1);
            tracing::debug!(retry_after_secs = secs, "429 without Retry-After; added");
            parts
                .headers
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, axum::body::Body::from(bytes))
        }
        _ => response,
    }
}

/// An authenticated operator (API key holder).
#[derive(Debug, Clone)]
pub struct Operator {
    /// The key row.
    pub key: ApiKey,
}

fn scope_level(scope: ApiScope) -> u8 {
    match scope {
        ApiScope::ReadOnly => 1,
        ApiScope::Operator => 2,
        ApiScope::Admin => 3,
    }
}

impl Operator {
    /// The strongest scope the key holds.
    pub fn level(&self) -> u8 {
        self.key
            .scopes
            .iter()
            .map(|s| scope_level(*s))
            .max()
            .unwrap_or(0)
    }

    /// Audit actor string.
    pub fn actor(&self) -> String {
        format!("apikey:{}", self.key.name)
    }

    fn require(self, needed: ApiScope) -> Result<Self, AuthRejection> {
        if self.level() >= scope_level(needed) {
            Ok(self)
        } else {
            Err(AuthRejection::InsufficientScope(needed))
        }
    }
}

async fn authenticate_operator(parts: &Parts, state: &AppState) -> Result<Operator, AuthRejection> {
    let token = bearer_token(&parts.headers)?;
    if !token.starts_with(API_KEY_PREFIX) {
        return Err(Unauthenticated::invalid_token("not an API key").into());
    }
    let key = state
        .store
        .find_api_key_by_hash(&hash_token(token))
        .await?
        .ok_or_else(|| Unauthenticated::invalid_token("unknown API key"))?;
    // Every request reads the key's row (there is no key cache), so a
    // revocation or an expiry holds from the next request on, on every
    // replica.
    let now = chrono::Utc::now();
    match key.status(now) {
        ApiKeyStatus::Active => {}
        ApiKeyStatus::Revoked => {
            return Err(Unauthenticated::invalid_token("this API key was revoked").into());
        }
        ApiKeyStatus::Expired => {
            return Err(Unauthenticated::invalid_token("this API key has expired").into());
        }
    }
    state.rate_limits.check(&format!("key:{}", key.id))?;
    if key.use_is_stale(now) {
        // Bookkeeping: a failed write must not refuse the request.
        if let Err(e) = state.store.record_api_key_use(&key.id, now).await {
            tracing::warn!(key_id = %key.id, error = %e, "recording the API key's use failed");
        }
    }
    Ok(Operator { key })
}

macro_rules! scoped_extractor {
    ($name:ident, $scope:expr, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone)]
        pub struct $name(pub Operator);

        impl FromRequestParts<AppState> for $name {
            type Rejection = AuthRejection;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &AppState,
            ) -> Result<Self, Self::Rejection> {
                authenticate_operator(parts, state)
                    .await?
                    .require($scope)
                    .map($name)
            }
        }
    };
}

scoped_extractor!(
    ReadAccess,
    ApiScope::ReadOnly,
    "A caller with at least the `read_only` scope."
);
scoped_extractor!(
    OperatorAccess,
    ApiScope::Operator,
    "A caller with at least the `operator` scope."
);
scoped_extractor!(
    AdminAccess,
    ApiScope::Admin,
    "A caller with the `admin` scope."
);

/// An authenticated agent. Retired agents are refused with 410 Gone.
#[derive(Debug, Clone)]
pub struct AgentCaller {
    /// The agent row.
    pub agent: Agent,
}

impl FromRequestParts<AppState> for AgentCaller {
    type Rejection = AuthRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, AuthRejection> {
        let token = bearer_token(&parts.headers)?;
        let rest = token
            .strip_prefix(AGENT_CREDENTIAL_PREFIX)
            .ok_or_else(|| Unauthenticated::invalid_token("not an agent credential"))?;
        let (agent_id, secret) = rest
            .split_once('.')
            .ok_or_else(|| Unauthenticated::invalid_token("malformed agent credential"))?;
        let agent = state
            .store
            .get_agent(agent_id)
            .await?
            .ok_or_else(|| Unauthenticated::invalid_token("unknown agent credential"))?;
        let valid = agent
            .credential_hash
            .as_deref()
            .is_some_and(|h| digest_eq(h, &hash_token(secret)));
        if !valid {
            return Err(Unauthenticated::invalid_token("unknown agent credential").into());
        }
        if agent.status == AgentStatus::Retired {
            return Err(ApiError::new(
                StatusCode::GONE,
                "agent_retired",
                format!(
                    "agent {} was retired{}; stop polling",
                    agent.id,
                    agent
                        .retired_reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ),
            )
            .into());
        }
        state.rate_limits.check(&format!("agent:{}", agent.id))?;
        Ok(AgentCaller { agent })
    }
}

/// Shared handle to the rate limits.
pub type SharedRateLimits = Arc<RateLimits>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_hash_and_compare() {
        let (key, hash) = new_api_key();
        assert!(key.starts_with(API_KEY_PREFIX));
        assert_eq!(hash_token(&key), hash);
        let (cred, h) = new_agent_credential("a1");
        let secret = cred.rsplit_once('.').unwrap().1;
        assert!(digest_eq(&hash_token(secret), &h));
        assert!(!digest_eq(&hash_token("x"), &h));
        assert!(is_bootstrap_token(&["t1".into(), "t2".into()], "t2"));
        assert!(!is_bootstrap_token(&["t1".into()], "t2"));
        assert!(!is_bootstrap_token(&[], ""));
    }

    #[test]
    fn the_matching_bootstrap_token_is_found() {
        let configured = ["t1".to_string(), "t2".to_string()];
        assert_eq!(bootstrap_token_index(&configured, "t2"), Some(1));
        assert_eq!(bootstrap_token_index(&configured, "t1"), Some(0));
        assert_eq!(bootstrap_token_index(&configured, "t3"), None);
    }

    #[test]
    fn addresses_are_limited_by_machine() {
        let v6 = |s: &str| address_key(s.parse().unwrap());
        assert_eq!(v6("2001:db8:1:2:aaaa::1"), v6("2001:db8:1:2:bbbb::9"));
        assert_ne!(v6("2001:db8:1:2::1"), v6("2001:db8:1:3::1"));
        assert_eq!(v6("::ffff:192.0.2.7"), v6("192.0.2.7"));
        assert_ne!(v6("192.0.2.7"), v6("192.0.2.8"));
    }

    #[test]
    fn registration_limits_are_per_address_and_per_token() {
        let agents = AgentSettings {
            registration_per_address_per_second: 1,
            registration_per_address_burst: 3,
            registration_per_token_per_second: 1,
            registration_per_token_burst: 2,
            ..AgentSettings::default()
        };
        let limits = RegistrationLimits::new(&agents);
        let a = Some("192.0.2.1".parse().unwrap());
        let b = Some("192.0.2.2".parse().unwrap());
        for _ in 0..3 {
            limits.check_address(a).unwrap();
        }
        let refused = limits.check_address(a).unwrap_err();
        assert!(refused.after_secs >= 1);
        let response = refused.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
        limits.check_address(b).unwrap();
        limits.check_token(0).unwrap();
        limits.check_token(0).unwrap();
        assert!(limits.check_token(0).is_err());
        limits.check_token(1).unwrap();
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(whole_secs_at_least_one(Duration::from_millis(1)), 1);
        assert_eq!(whole_secs_at_least_one(Duration::from_millis(1500)), 2);
        assert_eq!(whole_secs_at_least_one(Duration::from_secs(3)), 3);
        assert_eq!(whole_secs_at_least_one(Duration::ZERO), 1);
    }

    #[test]
    fn rate_limits_answer_429_with_retry_after() {
        let limits = RateLimits::new(1, 2);
        assert!(limits.check("a").is_ok());
        assert!(limits.check("a").is_ok());
        let refused = limits.check("a").unwrap_err();
        assert!(refused.after_secs >= 1);
        let response = refused.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry_after: u64 = response.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry_after >= 1);
        assert!(limits.check("b").is_ok(), "limits are per caller");
    }

    fn auth(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    fn code_of(e: &Unauthenticated) -> Option<BearerError> {
        e.error
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_spaces_are_tolerated() {
        for value in [
            "Bearer cpk_abc",
            "bearer cpk_abc",
            "BEARER cpk_abc",
            "bEaReR   cpk_abc",
            "  Bearer \t cpk_abc  ",
        ] {
            let headers = auth(&[value]);
            assert_eq!(bearer_token(&headers).unwrap(), "cpk_abc", "{value:?}");
        }
        let padded = auth(&["Bearer YWJj=="]);
        assert_eq!(bearer_token(&padded).unwrap(), "YWJj==");
        let agent = auth(&["bearer cpa_0192.abc-_x"]);
        assert_eq!(bearer_token(&agent).unwrap(), "cpa_0192.abc-_x");
    }

    #[test]
    fn bad_authorization_headers_get_the_right_challenge() {
        let missing = bearer_token(&HeaderMap::new()).unwrap_err();
        assert_eq!(code_of(&missing), None);
        let basic = bearer_token(&auth(&["Basic dXNlcjpwdw=="])).unwrap_err();
        assert_eq!(code_of(&basic), None, "another scheme is no bearer error");
        let glued = bearer_token(&auth(&["Bearercpk_abc"])).unwrap_err();
        assert_eq!(code_of(&glued), None);
        for value in [
            "Bearer",
            "Bearer   ",
            "Bearer cpk_a b",
            "Bearer cpk_a,b",
            "Bearer =abc",
            "Bearer cpk_\"x\"",
        ] {
            let e = bearer_token(&auth(&[value])).unwrap_err();
            assert_eq!(code_of(&e), Some(BearerError::InvalidRequest), "{value:?}");
        }
        let twice = bearer_token(&auth(&["Bearer a", "Bearer b"])).unwrap_err();
        assert_eq!(code_of(&twice), Some(BearerError::InvalidRequest));
        let mut opaque = HeaderMap::new();
        opaque.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xff").unwrap(),
        );
        let e = bearer_token(&opaque).unwrap_err();
        assert_eq!(code_of(&e), Some(BearerError::InvalidRequest));
    }

    #[test]
    fn every_401_names_its_challenge() {
        for (e, expected) in [
            (Unauthenticated::missing("m"), "Bearer realm=\"certplane\""),
            (
                Unauthenticated::malformed("m"),
                "Bearer realm=\"certplane\", error=\"invalid_request\"",
            ),
            (
                Unauthenticated::invalid_token("m"),
                "Bearer realm=\"certplane\", error=\"invalid_token\"",
            ),
        ] {
            let response = e.into_response();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(response.headers()[header::WWW_AUTHENTICATE], expected);
        }
    }

    #[tokio::test]
    async fn refusals_without_their_headers_get_them() {
        use axum::routing::get;
        use tower::ServiceExt as _;
        let app = axum::Router::new()
            .route(
                "/401",
                get(|| async { ApiError::unauthorized("no").into_response() }),
            )
            .route(
                "/429",
                get(|| async {
                    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow down")
                        .with_details(serde_json::json!({ "retry_after_secs": 7 }))
                        .into_response()
                }),
            )
            .route("/429-bare", get(|| async { StatusCode::TOO_MANY_REQUESTS }))
            .route(
                "/429-own",
                get(|| async {
                    let limits = RateLimits::new(1, 1);
                    limits.check("a").ok();
                    limits.check("a").unwrap_err().into_response()
                }),
            )
            .layer(axum::middleware::from_fn(
                |request: axum::extract::Request, next: axum::middleware::Next| async move {
                    with_refusal_headers(next.run(request).await).await
                },
            ));
        let call = |path: &'static str| {
            let app = app.clone();
            async move {
                let request = axum::http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .unwrap();
                app.oneshot(request).await.unwrap()
            }
        };
        let r = call("/401").await;
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], CHALLENGE);
        let r = call("/429").await;
        assert_eq!(r.headers()[header::RETRY_AFTER], "7");
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        assert!(String::from_utf8_lossy(&body).contains("slow down"));
        assert_eq!(call("/429-bare").await.headers()[header::RETRY_AFTER], "1");
        let own = call("/429-own").await;
        assert_eq!(own.headers().get_all(header::RETRY_AFTER).iter().count(), 1);
    }

    #[test]
    fn a_static_token_is_compared_whole() {
        assert!(require_static_token(&auth(&["bearer s3cret"]), "s3cret").is_ok());
        let wrong = require_static_token(&auth(&["Bearer s3cre"]), "s3cret").unwrap_err();
        assert_eq!(code_of(&wrong), Some(BearerError::InvalidToken));
        let none = require_static_token(&HeaderMap::new(), "s3cret").unwrap_err();
        assert_eq!(code_of(&none), None);
    }
}
