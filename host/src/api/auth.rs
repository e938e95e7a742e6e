//! Authentication and authorisation of API callers.
//!
//! * Operators use API keys (`Authorization: Bearer cpk_…`). Keys are stored
//!   as SHA-256 hashes; scopes nest: `admin` ⊇ `operator` ⊇ `read_only`.
//! * Agents use their own credential (`Authorization: Bearer cpa_<agent-id>.<secret>`),
//!   issued once at registration; only its hash is stored.
//!
//! Both are rate limited per key / per agent (governor).

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use base64::Engine as _;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
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
    let presented = hash_token(token);
    configured.iter().fold(false, |found, t| {
        found | digest_eq(&hash_token(t), &presented)
    })
}

/// Per-caller rate limits.
pub struct RateLimits {
    limiter: DefaultKeyedRateLimiter<String>,
}

impl RateLimits {
    /// `per_second` sustained with `burst` on top, per caller.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
        RateLimits {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
        }
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
    fn rate_limits_answer_429_with_retry_after() {
        let limits = RateLimits::new(1, 2);
        assert!(limits.check("a").is_ok());
        assert!(limits.check("a").is_ok());
        let err = limits.check("a").unwrap_err();
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(limits.check("b").is_ok(), "limits are per caller");
    }
}
