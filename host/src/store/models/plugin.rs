//! Connector instances: issuers, notifiers and targets.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

/// Which table an issuer, notifier or dns-solver instance lives in (the
/// three share one shape, [`PluginInstance`]; targets have their own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceTable {
    /// `issuers`.
    Issuers,
    /// `notifiers`.
    Notifiers,
    /// `dns_solvers`.
    DnsSolvers,
}

impl InstanceTable {
    /// The SQL table name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            InstanceTable::Issuers => "issuers",
            InstanceTable::Notifiers => "notifiers",
            InstanceTable::DnsSolvers => "dns_solvers",
        }
    }
}

/// An issuer, notifier or dns-solver instance (same shape; different
/// tables).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct PluginInstance {
    /// UUID text.
    pub id: String,
    /// Unique display name.
    pub name: String,
    /// Connector plugin name.
    pub plugin_name: String,
    /// Connector plugin version.
    pub plugin_version: String,
    /// Non-secret settings.
    #[sqlx(json)]
    pub settings: Value,
    /// Secrets, encrypted by the host.
    #[serde(skip)]
    pub encrypted_secrets: Option<Vec<u8>>,
    /// Capability grants (allowed hosts, ...).
    #[sqlx(json)]
    pub grants: Value,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Disabled since.
    pub disabled_at: Option<DateTime<Utc>>,
    /// Retired since (`DELETE` retires; the row stays readable).
    pub retired_at: Option<DateTime<Utc>>,
}

/// Input for creating an issuer or notifier instance.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPluginInstance {
    /// Unique display name.
    pub name: String,
    /// Connector plugin name.
    pub plugin_name: String,
    /// Connector plugin version.
    pub plugin_version: String,
    /// Settings.
    pub settings: Value,
    /// Encrypted secrets.
    pub encrypted_secrets: Option<Vec<u8>>,
    /// Grants.
    pub grants: Value,
}

impl NewPluginInstance {
    /// An instance with empty settings and grants.
    pub fn new(
        name: impl Into<String>,
        plugin_name: impl Into<String>,
        version: impl Into<String>,
    ) -> Self {
        NewPluginInstance {
            name: name.into(),
            plugin_name: plugin_name.into(),
            plugin_version: version.into(),
            settings: Value::Object(Default::default()),
            encrypted_secrets: None,
            grants: Value::Object(Default::default()),
        }
    }
}

/// A target instance, run by one agent.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Target {
    /// UUID text.
    pub id: String,
    /// Unique display name.
    pub name: String,
    /// Agent that runs it (`"host"` for host-local targets).
    pub agent_id: String,
    /// Connector plugin name.
    pub plugin_name: String,
    /// Connector plugin version.
    pub plugin_version: String,
    /// Settings.
    #[sqlx(json)]
    pub settings: Value,
    /// Encrypted secrets.
    #[serde(skip)]
    pub encrypted_secrets: Option<Vec<u8>>,
    /// Grants (directories, hosts).
    #[sqlx(json)]
    pub grants: Value,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Retired since.
    pub retired_at: Option<DateTime<Utc>>,
    /// Why retired.
    pub retired_reason: Option<String>,
}

/// Input of [`crate::store::Store::create_target`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewTarget {
    /// Agent that runs it.
    pub agent_id: String,
    /// Instance definition.
    pub instance: NewPluginInstance,
}
