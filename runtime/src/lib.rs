//! # certplane-runtime
//!
//! The sandboxed WebAssembly runtime that the certplane host and agent use
//! to run connector plugins (issuers, targets, notifiers).
//!
//! * [`Runtime`] owns one wasmtime engine (pooling allocator, epoch
//!   interruption, compiled-artifact cache) and the linker that defines what
//!   a connector may import.
//! * [`Plugin`] is a loaded, verified connector: its [`Manifest`] pins the
//!   component's SHA-256, kind and contract version.
//! * [`PluginInstance`] binds a plugin to an operator's settings, secrets,
//!   [`Grants`] and [`Limits`]; every call runs on a fresh instance, and
//!   whatever goes wrong in it comes back as a [`CallError`] for that call
//!   alone.
//! * [`asyncpoll`] holds the polling rules for asynchronous CA orders (one
//!   pure function the host calls).
//! * [`harness`] lets connector authors test a component without a host.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use certplane_runtime::{InstanceConfig, PluginInstance, Runtime, RuntimeConfig};
//! let runtime = Runtime::new(RuntimeConfig::default())?;
//! let plugin = runtime.load_plugin("target/plugins/local-ca.toml".as_ref()).await?;
//! let config = InstanceConfig::new("issuer-1")
//!     .with_settings(serde_json::json!({"validity_days": 30}))?
//!     .with_hosts(&["https://acme.example.com"])?;
//! let instance = PluginInstance::new(plugin, config)?;
//! instance.validate_config().await?;
//! # Ok(()) }
//! ```

pub mod actions;
pub mod asyncpoll;
pub mod bindings;
pub mod bounds;
mod cache;
mod call_state;
pub mod context;
mod egress;
mod engine;
pub mod error;
pub mod grants;
pub mod harness;
mod instance;
pub mod limits;
pub mod manifest;
mod plugin;
pub mod policy;
pub mod signing;
mod ticker;

pub use cache::CacheOutcome;
pub use engine::{Runtime, RuntimeConfig};
pub use error::{CallError, ConfigError, ConnectorError, LoadError, RateLimit, RuntimeError};
pub use grants::{DirGrant, Grants, HostGrant, HostGrants};
pub use instance::{InstanceConfig, InstanceTls, PluginInstance, Secret};
pub use limits::{Limits, MemoryBudgetUsage};
pub use manifest::{CONTRACT_VERSION, ContractVersion, Manifest, PluginKind};
pub use plugin::Plugin;
pub use policy::{InstanceLimits, LimitPolicy, PolicyError, Resolved};

/// Types of the issuer contract.
pub mod issuer {
    pub use crate::bindings::issuer::exports::certplane::connector::issuer_api::{
        CertificateRequest, IssueResult, IssuedCertificate, Order, RevocationReason,
        RevocationRequest,
    };
}

/// Types of the target contract.
pub mod target {
    pub use crate::bindings::target::exports::certplane::connector::target_api::{
        CertificateBundle, DeployResult, Endpoint,
    };
}

/// Types of the notifier contract.
pub mod notifier {
    pub use crate::bindings::notifier::exports::certplane::connector::notifier_api::Event;
}

/// Types of the dns-solver contract (since 1.1).
pub mod dns_solver {
    pub use crate::bindings::dns_solver::exports::certplane::connector::dns_solver_api::TxtRecord;
}

/// Types of the optional `issuer-lifecycle` export (since 1.1).
pub mod lifecycle {
    pub use crate::bindings::lifecycle::exports::certplane::connector::issuer_lifecycle::RenewalInfo;
}

/// Challenge types of the `challenges` import (since 1.1).
pub mod challenges {
    pub use crate::context::{
        Challenge, ChallengeKind, ChallengeState, ChallengeStatus, kind_name,
    };
}

pub use bindings::types::{Level, PluginInfo};

impl From<target::Endpoint> for certplane_proto::Endpoint {
    /// The endpoint a target connector named in its `deploy-result`, as the
    /// host and agent store and probe it.
    fn from(at: target::Endpoint) -> Self {
        certplane_proto::Endpoint {
            host: at.host,
            port: at.port,
            server_name: at.server_name,
        }
    }
}
