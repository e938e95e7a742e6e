//! Typed errors of the runtime: loading plugins, configuring instances and
//! calling them.

use std::path::PathBuf;
use std::time::Duration;

use crate::manifest::{ContractVersion, PluginKind};

pub use crate::bindings::types::{ConnectorError, RateLimit};

/// Why a plugin could not be loaded. Every message names the plugin or file
/// and says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The manifest is malformed.
    #[error("invalid plugin manifest {path}: {reason}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The component bytes do not hash to the manifest's digest.
    #[error(
        "plugin {plugin}: component {path} has SHA-256 {actual} but the manifest pins {expected}; \
         refusing to load a component that is not the one the manifest describes"
    )]
    DigestMismatch {
        /// Plugin name.
        plugin: String,
        /// Component path.
        path: PathBuf,
        /// Digest from the manifest.
        expected: String,
        /// Digest of the bytes on disk.
        actual: String,
    },
    /// The component was built for a contract version this runtime cannot run.
    #[error(
        "plugin {plugin} was built for certplane:connector@{built_for}, but this host implements \
         {host}; rebuild the connector against {host_major}.x or use a matching host",
        host_major = host.major
    )]
    IncompatibleWorld {
        /// Plugin name.
        plugin: String,
        /// The manifest's `world`.
        built_for: ContractVersion,
        /// What this runtime implements.
        host: ContractVersion,
    },
    /// The component does not implement the world its manifest names.
    #[error("plugin {plugin}: manifest says kind = {kind}, but the component {reason}")]
    WrongKind {
        /// Plugin name.
        plugin: String,
        /// The manifest's kind.
        kind: PluginKind,
        /// What the component lacks.
        reason: String,
    },
    /// The component imports something connectors are not given.
    #[error("plugin {plugin} cannot be linked: {reason}")]
    Link {
        /// Plugin name.
        plugin: String,
        /// The linker's explanation (usually an import it may not have).
        reason: String,
    },
    /// Compilation failed (not a valid component for this engine).
    #[error("plugin {plugin}: compiling the component failed: {reason}")]
    Compile {
        /// Plugin name.
        plugin: String,
        /// Compiler message.
        reason: String,
    },
    /// `describe()` disagrees with the manifest or failed.
    #[error("plugin {plugin}: {reason}")]
    Describe {
        /// Plugin name.
        plugin: String,
        /// What went wrong.
        reason: String,
    },
}

/// Why an instance configuration was refused before any call.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A host grant could not be parsed.
    #[error("invalid host grant {grant:?}: {reason}")]
    HostGrant {
        /// The grant as written.
        grant: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A directory grant is unusable.
    #[error("invalid directory grant {path}: {reason}")]
    Directory {
        /// Host path of the grant.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A limit is out of range.
    #[error("invalid limit: {0}")]
    Limit(String),
    /// Settings are not a JSON object.
    #[error("settings must be a JSON object")]
    Settings,
    /// The instance's extra trust roots or client certificate are unusable.
    #[error("invalid TLS configuration: {0}")]
    Tls(String),
    /// A named action's definition or grant is unusable.
    #[error("invalid action {name:?}: {reason}")]
    Action {
        /// The action's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Why one plugin call failed. The host maps these to job outcomes.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The connector returned a typed error.
    #[error("plugin {plugin}: {error}")]
    Connector {
        /// Plugin name.
        plugin: String,
        /// What it said.
        error: ConnectorError,
    },
    /// The connector tried to use a capability it was not granted (an HTTP
    /// destination, for instance) and the call failed.
    #[error("plugin {plugin} was denied {}: {}", denials.join("; "), error.as_ref().map(|e| e.to_string()).unwrap_or_else(|| "the call failed".into()))]
    CapabilityDenied {
        /// Plugin name.
        plugin: String,
        /// Each refused access, e.g. `http https://evil.example:443/: host not granted`.
        denials: Vec<String>,
        /// What the connector returned after the denial, if it returned.
        error: Option<ConnectorError>,
    },
    /// The call ran past its deadline and was interrupted.
    #[error("plugin {plugin} exceeded its deadline of {deadline:?} and was stopped")]
    Deadline {
        /// Plugin name.
        plugin: String,
        /// The deadline that applied.
        deadline: Duration,
    },
    /// The instance tried to grow its memory beyond its cap.
    #[error("plugin {plugin} exceeded its memory limit of {limit_bytes} bytes and was stopped")]
    MemoryLimit {
        /// Plugin name.
        plugin: String,
        /// The cap that applied.
        limit_bytes: u64,
    },
    /// The guest trapped (panic, unreachable, stack overflow, ...).
    #[error("plugin {plugin} crashed: {message}")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// Trap description, with the guest's last stderr line when it left one
        /// (Rust panics print their message there).
        message: String,
    },
    /// Creating the instance failed (out of pool slots, for example).
    #[error("plugin {plugin}: could not instantiate: {message}")]
    Instantiate {
        /// Plugin name.
        plugin: String,
        /// Why.
        message: String,
    },
    /// The connector returned something the contract does not allow (an
    /// order id over 1 KiB, an order state over 64 KiB, an oversized
    /// certificate, ...; see [`crate::bounds`]). Nothing of it is passed on.
    #[error("plugin {plugin} broke the connector contract: {message}")]
    Contract {
        /// Plugin name.
        plugin: String,
        /// What was out of bounds (sizes only, never the content).
        message: String,
    },
    /// The call does not exist for this plugin's kind.
    #[error("plugin {plugin} is a {actual} connector; {wanted} calls are not available")]
    WrongKind {
        /// Plugin name.
        plugin: String,
        /// The plugin's kind.
        actual: PluginKind,
        /// The kind the call needs.
        wanted: PluginKind,
    },
}

impl CallError {
    /// Whether retrying the same call later may succeed: sandbox violations
    /// and permanent connector errors are not; deadlines, crashes, transient
    /// errors and rate limits are (see [`CallError::class`]).
    pub fn is_retryable(&self) -> bool {
        !self.class().is_permanent()
    }

    /// The class the host acts on (retry or not); the one mapping of call
    /// errors to classes, used by host and agent alike.
    pub fn class(&self) -> certplane_proto::ErrorClass {
        use certplane_proto::ErrorClass as C;
        match self {
            CallError::Connector { error, .. } => match error {
                ConnectorError::InvalidConfig(_) => C::InvalidConfig,
                ConnectorError::Unauthorized(_) => C::Unauthorized,
                ConnectorError::Rejected(_) => C::Rejected,
                ConnectorError::RateLimited(_) => C::RateLimited,
                ConnectorError::Transient(_) => C::Transient,
                ConnectorError::Unsupported(_) => C::Unsupported,
            },
            CallError::CapabilityDenied { .. } => C::CapabilityDenied,
            CallError::Deadline { .. } => C::Deadline,
            CallError::MemoryLimit { .. } => C::MemoryLimit,
            CallError::Trap { .. } => C::Trap,
            CallError::Instantiate { .. } => C::Instantiate,
            // `rejected`: the answer is refused for good. Retrying cannot
            // help (the same code gets the same upstream answer), and for
            // `submit` a retry would even place another order at the CA for
            // each refused one, since a refused order is never recorded. Not
            // `invalid-config`/`unauthorized`: the operator's configuration
            // is not at fault, and those classes disable notifiers. No new
            // class: agents of an older version read unknown classes as
            // `transient`, which would retry exactly what must not be.
            CallError::Contract { .. } => C::Rejected,
            CallError::WrongKind { .. } => C::WrongKind,
        }
    }

    /// The retry-after hint of a rate-limited connector error, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CallError::Connector {
                error: ConnectorError::RateLimited(r),
                ..
            } => r
                .retry_after_secs
                .map(|s| Duration::from_secs(u64::from(s))),
            _ => None,
        }
    }
}

/// Why a [`crate::Runtime`] could not be created.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The wasmtime engine or linker could not be built.
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    /// The TLS configuration for plugin HTTP is invalid.
    #[error("invalid TLS configuration for plugin HTTP: {0}")]
    Tls(String),
}
