//! Authentication and authorisation of API callers.
//!
//! * Operators use API keys (`Authorization: Bearer cpk_…`). Keys are stored
//!   as SHA-256 hashes; scopes nest: `admin` ⊇ `operator` ⊇ `read_only`.
//! * Agents use their own credential (`Authorization: Bearer cpa_<agent-id>.<secret>`),
//!   issued once at registration; only its hash is stored.
//!
//! Both are rate limited per key / per agent (governor). Registration, the
//! one unauthenticated agent call, has limits of its own per source address
//! and per bootstrap token ([`RegistrationLimits`]).

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
use crate::config::AgentSettings;
use crate::store::{Agent, AgentStatus, ApiKey, ApiScope};

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

    /// Admits one request for `caller` or returns a 429 with `Retry-After`.
    pub fn check(&self, caller: &str) -> Result<(), ApiError> {
        match self.limiter.check_key(&caller.to_string()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                let secs = wait.as_secs().max(1);
                Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("too many requests; retry in {secs} s"),
                )
                .with_extra(serde_json::json!({ "retry_after_secs": secs })))
            }
        }
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

/// A registration refused for now: 429 with `Retry-After`.
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
            format!(
                "too many registrations {}; retry in {} s",
                self.what, self.after_secs
            ),
        )
        .with_extra(serde_json::json!({ "retry_after_secs": self.after_secs }))
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
            .map_err(|not_until| retry_later(&not_until, "from this address"))
    }

    /// Admits one registration with the configured token number `token`.
    pub fn check_token(&self, token: usize) -> Result<(), RetryLater> {
        self.per_token
            .check_key(&token)
            .map_err(|not_until| retry_later(&not_until, "with this bootstrap token"))
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

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
    let value = header
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <token>"))
}

/// An authenticated operator (API key holder).
#[derive(Debug, Clone)]
pub struct Operator {
    /// The key row.
    pub key: ApiKey,
}

impl Operator {
    /// The strongest scope the key holds.
    pub fn level(&self) -> u8 {
        self.key
            .scopes
            .iter()
            .map(|s| match s {
                ApiScope::ReadOnly => 1,
                ApiScope::Operator => 2,
                ApiScope::Admin => 3,
            })
            .max()
            .unwrap_or(0)
    }

    /// Audit actor string.
    pub fn actor(&self) -> String {
        format!("apikey:{}", self.key.name)
    }

    fn require(self, needed: ApiScope) -> Result<Self, ApiError> {
        let need = match needed {
            ApiScope::ReadOnly => 1,
            ApiScope::Operator => 2,
            ApiScope::Admin => 3,
        };
        if self.level() >= need {
            Ok(self)
        } else {
            Err(ApiError::forbidden(format!(
                "this API key lacks the {needed} scope"
            )))
        }
    }
}

async fn authenticate_operator(parts: &Parts, state: &AppState) -> Result<Operator, ApiError> {
    let token = bearer(parts)?;
    if !token.starts_with(API_KEY_PREFIX) {
        return Err(ApiError::unauthorized("not an API key"));
    }
    let key = state
        .store
        .find_api_key_by_hash(&hash_token(token))
        .await?
        .filter(|k| k.is_usable(chrono::Utc::now()))
        .ok_or_else(|| ApiError::unauthorized("unknown, revoked or expired API key"))?;
    state.rate_limits.check(&format!("key:{}", key.id))?;
    Ok(Operator { key })
}

macro_rules! scoped_extractor {
    ($name:ident, $scope:expr, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone)]
        pub struct $name(pub Operator);

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

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
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        let rest = token
            .strip_prefix(AGENT_CREDENTIAL_PREFIX)
            .ok_or_else(|| ApiError::unauthorized("not an agent credential"))?;
        let (agent_id, secret) = rest
            .split_once('.')
            .ok_or_else(|| ApiError::unauthorized("malformed agent credential"))?;
        let agent = state
            .store
            .get_agent(agent_id)
            .await?
            .ok_or_else(|| ApiError::unauthorized("unknown agent credential"))?;
        let valid = agent
            .credential_hash
            .as_deref()
            .is_some_and(|h| digest_eq(h, &hash_token(secret)));
        if !valid {
            return Err(ApiError::unauthorized("unknown agent credential"));
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
            ));
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
        let err = limits.check("a").unwrap_err();
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(limits.check("b").is_ok(), "limits are per caller");
    }
}
