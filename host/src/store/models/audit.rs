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
    /// Last use recorded.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// Not revoked and not expired at `now`.
    pub fn is_usable(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }
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
