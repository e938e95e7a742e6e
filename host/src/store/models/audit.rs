//! Audit events and API keys.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::store::codec::text_enum;

text_enum! {
    /// Kind of actor behind an audited change.
    pub enum ActorType ("actor type") {
        /// A person (dashboard / CLI user).
        User => "user",
        /// An API key.
        ApiKey => "api_key",
        /// An agent.
        Agent => "agent",
        /// The host itself (scheduler loops).
        System => "system",
    }
}

/// An audit event row.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct AuditEvent {
    /// UUID text.
    pub id: String,
    /// When.
    pub at: DateTime<Utc>,
    /// Who (user name, API key id, agent id, loop name).
    pub actor: String,
    /// Kind of actor.
    pub actor_type: ActorType,
    /// What, e.g. `"agent.retire"`, `"job.transition"`.
    pub action: String,
    /// Kind of subject, e.g. `"agent"`, `"job"`.
    pub subject_type: String,
    /// Subject id.
    pub subject_id: Option<String>,
    /// Free-form details.
    #[sqlx(json)]
    pub details: Value,
}

/// Input of [`crate::store::Store::record_audit`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEvent {
    /// Who.
    pub actor: String,
    /// Kind of actor.
    pub actor_type: ActorType,
    /// What.
    pub action: String,
    /// Kind of subject.
    pub subject_type: String,
    /// Subject id.
    pub subject_id: Option<String>,
    /// Details (`Value::Null` is stored as `{}`).
    pub details: Value,
}

text_enum! {
    /// Permission scope of an API key.
    pub enum ApiScope ("API scope") {
        /// Everything, including keys and plugins.
        Admin => "admin",
        /// Manage certificates, targets, jobs.
        Operator => "operator",
        /// Read only.
        ReadOnly => "read_only",
    }
}

/// An API key row (the key itself is never stored, only its hash).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct ApiKey {
    /// UUID text.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Hash of the key.
    #[serde(skip)]
    pub key_hash: String,
    /// Granted scopes.
    #[sqlx(json)]
    pub scopes: Vec<ApiScope>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Expiry, if any.
    pub expires_at: Option<DateTime<Utc>>,
    /// Last use recorded, precise to a minute: a request writes it only
    /// when the stored value is older than [`API_KEY_USE_PRECISION`], so
    /// heavy use is not a write per request.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
    /// The first characters of the key (`cpk_` and four more), to recognise
    /// it by; `None` for keys created before migration 0013 or outside the
    /// API.
    pub key_prefix: Option<String>,
    /// Who created the key through the API (an audit actor); `None` for
    /// keys created by `certplane apikey create` or the bootstrap.
    pub created_by: Option<String>,
}

/// How stale `last_used_at` may get before a request records its use.
pub const API_KEY_USE_PRECISION: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

impl ApiKey {
    /// Not revoked and not expired at `now`.
    pub fn is_usable(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }

    /// Revoked, expired or active at `now`.
    pub fn status(&self, now: DateTime<Utc>) -> ApiKeyStatus {
        if self.revoked_at.is_some() {
            ApiKeyStatus::Revoked
        } else if self.expires_at.is_some_and(|e| e <= now) {
            ApiKeyStatus::Expired
        } else {
            ApiKeyStatus::Active
        }
    }

    /// Holds the `admin` scope.
    pub fn is_admin(&self) -> bool {
        self.scopes.contains(&ApiScope::Admin)
    }

    /// Whether a request at `now` should record its use: the stored use is
    /// missing or older than [`API_KEY_USE_PRECISION`].
    pub fn use_is_stale(&self, now: DateTime<Utc>) -> bool {
        self.last_used_at
            .is_none_or(|t| now - t >= API_KEY_USE_PRECISION)
    }
}

text_enum! {
    /// Where an API key stands.
    pub enum ApiKeyStatus ("API key status") {
        /// Accepted.
        Active => "active",
        /// Past its `expires_at`; refused.
        Expired => "expired",
        /// Revoked; refused.
        Revoked => "revoked",
    }
}

/// What [`crate::store::Store::revoke_api_key_audited`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiKeyRevocation {
    /// No such key.
    NotFound,
    /// Revoked now (the audit row is written with it).
    Revoked(ApiKey),
    /// Revoked before; nothing was written.
    AlreadyRevoked(ApiKey),
    /// Refused: the key is the last active admin key, and revoking it would
    /// leave nobody able to manage keys.
    LastAdmin(ApiKey),
}

/// Input of [`crate::store::Store::create_api_key`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewApiKey {
    /// Display name.
    pub name: String,
    /// Hash of the key (the caller hashes).
    pub key_hash: String,
    /// Scopes.
    pub scopes: Vec<ApiScope>,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
}
