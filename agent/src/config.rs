//! The agent's configuration: one TOML file plus `CERTPLANE_AGENT_*`
//! environment overrides (`__` separates nested keys, e.g.
//! `CERTPLANE_AGENT_TRUST__PIN_SHA256`), read with figment.
//!
//! Everything an operator must decide is explicit: the host URL, how to
//! trust it (CA file or pinned fingerprint, never "insecure"), and what
//! each target connector may touch on this machine. The rest has defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use certplane_client::Trust;
use figment::Figment;
use figment::providers::{Env, Format as _, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The `[verify]` section: shared with the host's, defined with the probe.
pub use certplane_probe::VerifyConfig;

/// Environment variable prefix of overrides.
pub const ENV_PREFIX: &str = "CERTPLANE_AGENT_";

/// Errors of loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be read into the settings.
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// A value is present but unusable.
    #[error("configuration: {0}")]
    Invalid(String),
}

/// The agent's settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Base URL of the host, e.g. `https://certplane.internal:8443`.
    pub host_url: String,
    /// How the host's TLS certificate is trusted.
    #[serde(default)]
    pub trust: TrustConfig,
    /// Bootstrap token for the first registration (not needed once the
    /// state directory holds a credential).
    #[serde(default)]
    pub bootstrap_token: Option<String>,
    /// Name the agent registers under; defaults to the machine's host name.
    #[serde(default)]
    pub name: Option<String>,
    /// Directory of the credential, private keys and status (created 0700).
    pub state_dir: PathBuf,
    /// Directory of packaged target plugins (`*.toml` + `*.wasm`).
    pub plugin_dir: PathBuf,
    /// Compiled-plugin cache; default `<state_dir>/plugin-cache`.
    #[serde(default)]
    pub plugin_cache_dir: Option<PathBuf>,
    /// Seconds between heartbeats.
    #[serde(default = "defaults::heartbeat_secs")]
    pub heartbeat_secs: u64,
    /// Seconds one work poll may wait on the host for work.
    #[serde(default = "defaults::poll_wait_secs")]
    pub poll_wait_secs: u64,
    /// Reconnect backoff while the host is unreachable.
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// On-the-wire verification after deployments.
    #[serde(default)]
    pub verify: VerifyConfig,
    /// What each target connector may touch on this machine, by plugin name.
    /// A connector without an entry gets nothing (no directories, no hosts).
    #[serde(default)]
    pub connectors: BTreeMap<String, ConnectorGrants>,
    /// This agent's ceiling and defaults for connector limits: the host's
    /// per-target `limits` and a plugin manifest's are requests within it;
    /// a connector entry's own `deadline_secs`/`memory_mib` set the value.
    #[serde(default)]
    pub limits: certplane_runtime::LimitPolicy,
    /// http-01 challenges served from the local web server's webroot or
    /// by the agent's own listener (an issuer whose
    /// `grants.challenges.http_01` is `"agent"`).
    #[serde(default)]
    pub challenges: ChallengesConfig,
    /// Named actions (a web server's configuration test, its reload) a
    /// target connector may be granted by name in `connectors.<plugin>.actions`.
    /// Only this file defines what they run.
    #[serde(default)]
    pub actions: BTreeMap<String, certplane_runtime::actions::ActionDefinition>,
}

/// The `[challenges]` section: where this machine's web server serves
/// `/.well-known/acme-challenge/` from and where to ask it (webroot mode),
/// or where the agent answers it itself (standalone mode); at most one of
/// `webroot` and `listen`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChallengesConfig {
    /// The directory the web server serves for every name this agent's
    /// certificates cover; token files go to
    /// `<webroot>/.well-known/acme-challenge/<token>`. Neither this nor
    /// `listen`: this agent refuses http-01 tasks (reported failed).
    #[serde(default)]
    pub webroot: Option<PathBuf>,
    /// Standalone mode: the address (e.g. `0.0.0.0:80`) the agent listens
    /// on for plain-HTTP `GET /.well-known/acme-challenge/<token>` and
    /// answers live tokens from memory; bound at start.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Where the web server answers plain HTTP (`http://host[:port]`); the
    /// agent fetches each token there with the validated name as `Host`
    /// before reporting it ready (webroot mode; with `listen` the agent
    /// asks its own listener).
    #[serde(default = "defaults::check_url")]
    pub check_url: String,
    /// How long the agent keeps looking for a token it published before
    /// it reports the challenge failed.
    #[serde(default = "defaults::check_within_secs")]
    pub check_within_secs: u64,
}

impl Default for ChallengesConfig {
    fn default() -> Self {
        ChallengesConfig {
            webroot: None,
            listen: None,
            check_url: defaults::check_url(),
            check_within_secs: defaults::check_within_secs(),
        }
    }
}

/// Trust anchor for the host's certificate: exactly one of the two.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// PEM file of the host's certificate or of its CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// SHA-256 fingerprint of the host's certificate (logged by the host at
    /// start), hex with or without colons.
    #[serde(default)]
    pub pin_sha256: Option<String>,
}

/// Exponential reconnect backoff with full jitter.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    /// First delay after a failure, in milliseconds.
    #[serde(default = "defaults::backoff_initial_ms")]
    pub initial_ms: u64,
    /// Ceiling of the delay, in seconds.
    #[serde(default = "defaults::backoff_max_secs")]
    pub max_secs: u64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial_ms: defaults::backoff_initial_ms(),
            max_secs: defaults::backoff_max_secs(),
        }
    }
}

/// What one target connector may touch on this machine. The host's target
/// configuration asks for grants; the agent allows only those within these.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConnectorGrants {
    /// Directories the connector may be given (a requested directory must
    /// be one of these or inside one).
    #[serde(default)]
    pub directories: Vec<AllowedDir>,
    /// Host patterns the connector may call (`scheme://host:port`, as in the
    /// runtime's grants); a requested pattern must equal one of these.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Per-call deadline in seconds, set by this agent's operator (when
    /// unset: the host's per-target limit, else the manifest's request, cut
    /// to `limits`, else `limits.default_deadline_secs`).
    #[serde(default)]
    pub deadline_secs: Option<u64>,
    /// Per-call memory cap in MiB, set like `deadline_secs`.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Names of `[actions]` the connector may be granted; a target's grants
    /// request them by name.
    #[serde(default)]
    pub actions: Vec<String>,
}

/// A directory a connector may be granted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AllowedDir {
    /// Absolute path on this machine.
    pub path: PathBuf,
    /// Whether the connector may write there.
    #[serde(default)]
    pub writable: bool,
}

mod defaults {
    pub fn heartbeat_secs() -> u64 {
        30
    }
    pub fn poll_wait_secs() -> u64 {
        30
    }
    pub fn backoff_initial_ms() -> u64 {
        1_000
    }
    pub fn backoff_max_secs() -> u64 {
        60
    }
    pub fn check_url() -> String {
        "http://127.0.0.1:80".into()
    }
    pub fn check_within_secs() -> u64 {
        10
    }
}

impl AgentConfig {
    /// Reads `file` (when given) and the `CERTPLANE_AGENT_*` environment,
    /// the environment winning, and checks the result.
    pub fn load(file: Option<&Path>) -> Result<AgentConfig, ConfigError> {
        Self::from_figment(Self::figment(file))
    }

    /// The figment the configuration is read from (for tests and tools).
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::new();
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        // `CERTPLANE_AGENT_CONFIG` names the file (`--config`), not a key.
        figment.merge(Env::prefixed(ENV_PREFIX).ignore(&["CONFIG"]).split("__"))
    }

    /// Extracts and checks the configuration from a figment.
    pub fn from_figment(figment: Figment) -> Result<AgentConfig, ConfigError> {
        let config: AgentConfig = figment.extract().map_err(Box::new)?;
        config.check()?;
        Ok(config)
    }

    /// A configuration from values (for embedding the agent, e.g. the demo).
    pub fn from_value(value: &AgentConfig) -> Result<AgentConfig, ConfigError> {
        Self::from_figment(Figment::from(Serialized::defaults(value)))
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.host_url.trim().is_empty() {
            return invalid("`host_url` is empty".into());
        }
        if self.host_url.starts_with("https://") && self.trust().is_none() {
            return invalid(
                "an https `host_url` needs `trust.ca_file` (the host's certificate or CA) or \
                 `trust.pin_sha256` (its fingerprint, logged by the host at start)"
                    .into(),
            );
        }
        if self.trust.ca_file.is_some() && self.trust.pin_sha256.is_some() {
            return invalid("set one of `trust.ca_file` and `trust.pin_sha256`, not both".into());
        }
        if let Some(pin) = &self.trust.pin_sha256 {
            certplane_client::parse_pin(pin).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        if self.heartbeat_secs == 0 {
            return invalid("`heartbeat_secs` must be at least 1".into());
        }
        if self.verify.attempts == 0 {
            return invalid("`verify.attempts` must be at least 1".into());
        }
        if self.backoff.initial_ms == 0 || self.backoff.max_secs == 0 {
            return invalid("`backoff.initial_ms` and `backoff.max_secs` must be positive".into());
        }
        self.limits
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if self.challenges.webroot.is_some() && self.challenges.listen.is_some() {
            return invalid(
                "set one of `challenges.webroot` (the local web server serves the tokens) and \
                 `challenges.listen` (the agent serves them itself), not both"
                    .into(),
            );
        }
        if let Some(webroot) = &self.challenges.webroot
            && !webroot.is_absolute()
        {
            return invalid(format!(
                "`challenges.webroot` `{}` must be an absolute path",
                webroot.display()
            ));
        }
        crate::challenges::CheckUrl::parse(&self.challenges.check_url)
            .map_err(|e| ConfigError::Invalid(format!("`challenges.check_url`: {e}")))?;
        if self.challenges.check_within_secs == 0 || self.challenges.check_within_secs > 300 {
            return invalid("`challenges.check_within_secs` must be between 1 and 300".into());
        }
        for (name, definition) in &self.actions {
            definition
                .spec(name)
                .map_err(|e| ConfigError::Invalid(format!("actions.{name}: {e}")))?;
        }
        for (plugin, grants) in &self.connectors {
            let too_long = grants
                .deadline_secs
                .is_some_and(|s| s == 0 || s > self.limits.max_deadline_secs);
            let too_big = grants
                .memory_mib
                .is_some_and(|m| m == 0 || m > self.limits.max_memory_mib);
            if too_long || too_big {
                return invalid(format!(
                    "connectors.{plugin}: deadline_secs and memory_mib must be positive and \
                     within limits.max_deadline_secs ({}) and limits.max_memory_mib ({})",
                    self.limits.max_deadline_secs, self.limits.max_memory_mib
                ));
            }
            for name in &grants.actions {
                if !self.actions.contains_key(name) {
                    return invalid(format!(
                        "connectors.{plugin}: action `{name}` is not defined in [actions]"
                    ));
                }
            }
            for dir in &grants.directories {
                if !dir.path.is_absolute() {
                    return invalid(format!(
                        "connectors.{plugin}: directory `{}` must be an absolute path",
                        dir.path.display()
                    ));
                }
            }
        }
        Ok(())
    }

    /// The trust anchor, if configured.
    pub fn trust(&self) -> Option<Trust> {
        match (&self.trust.ca_file, &self.trust.pin_sha256) {
            (Some(file), _) => Some(Trust::CaFile(file.clone())),
            (None, Some(pin)) => Some(Trust::PinSha256(pin.clone())),
            (None, None) => None,
        }
    }

    /// The name to register under.
    pub fn agent_name(&self) -> String {
        self.name
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|s| s.trim().to_owned())
            })
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "certplane-agent".into())
    }

    /// The heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs)
    }
}

#[cfg(test)]
// figment::Jail's closures return figment's (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        host_url = "https://127.0.0.1:8443"
        state_dir = "/var/lib/certplane-agent"
        plugin_dir = "/usr/lib/certplane/plugins"
        [trust]
        pin_sha256 = "ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB"
        [connectors.pem-files]
        directories = [{ path = "/etc/ssl/certplane", writable = true }]
        hosts = ["http://127.0.0.1:2019"]
    "#;

    #[test]
    fn file_and_env_combine_with_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("agent.toml", MINIMAL)?;
            jail.set_env("CERTPLANE_AGENT_HEARTBEAT_SECS", "7");
            jail.set_env("CERTPLANE_AGENT_VERIFY__ATTEMPTS", "2");
            let config = AgentConfig::load(Some(Path::new("agent.toml"))).unwrap();
            assert_eq!(config.heartbeat_secs, 7);
            assert_eq!(config.verify.attempts, 2);
            assert_eq!(config.poll_wait_secs, 30);
            assert_eq!(config.backoff, BackoffConfig::default());
            let pem = &config.connectors["pem-files"];
            assert!(pem.directories[0].writable);
            assert!(matches!(config.trust(), Some(Trust::PinSha256(_))));
            Ok(())
        });
    }

    #[test]
    fn actions_are_defined_here_and_granted_by_name() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "agent.toml",
                &format!(
                    "{MINIMAL}\n[actions.reload]\nargv = [\"/bin/true\"]\ntimeout_secs = 5\n\
                     [connectors.nginx]\nactions = [\"reload\"]\n"
                ),
            )?;
            let config = AgentConfig::load(Some(Path::new("agent.toml"))).unwrap();
            assert_eq!(config.connectors["nginx"].actions, ["reload"]);
            assert_eq!(config.actions["reload"].timeout_secs, Some(5));
            Ok(())
        });
        for (extra, wanted) in [
            (
                "[connectors.nginx]\nactions = [\"reload\"]\n",
                "action `reload` is not defined",
            ),
            ("[actions.reload]\nargv = [\"true\"]\n", "absolute path"),
            ("[actions.reload]\nargv = []\n", "argv is empty"),
            (
                "[actions.reload]\nargv = [\"/bin/true\"]\ntimeout_secs = 0\n",
                "timeout",
            ),
            ("[actions.Reload]\nargv = [\"/bin/true\"]\n", "names are"),
        ] {
            figment::Jail::expect_with(|jail| {
                jail.create_file("agent.toml", &format!("{MINIMAL}\n{extra}"))?;
                let err = AgentConfig::load(Some(Path::new("agent.toml"))).unwrap_err();
                assert!(err.to_string().contains(wanted), "{extra}: {err}");
                Ok(())
            });
        }
    }

    #[test]
    fn https_without_trust_is_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "agent.toml",
                "host_url = \"https://h:1\"\nstate_dir = \"/s\"\nplugin_dir = \"/p\"\n",
            )?;
            let err = AgentConfig::load(Some(Path::new("agent.toml"))).unwrap_err();
            assert!(err.to_string().contains("trust.ca_file"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("agent.toml", MINIMAL)?;
            jail.set_env("CERTPLANE_AGENT_TRUST__PIN_SHA256", "nope");
            let err = AgentConfig::load(Some(Path::new("agent.toml"))).unwrap_err();
            assert!(err.to_string().contains("pin"), "{err}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.create_file("agent.toml", &format!("{MINIMAL}\nsurprise = 1\n"))?;
            let err = AgentConfig::load(Some(Path::new("agent.toml"))).unwrap_err();
            assert!(err.to_string().contains("surprise"), "{err}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "agent.toml",
                &MINIMAL.replace("/etc/ssl/certplane", "relative/dir"),
            )?;
            let err = AgentConfig::load(Some(Path::new("agent.toml"))).unwrap_err();
            assert!(err.to_string().contains("absolute"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_challenges_section_has_defaults_and_is_checked() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("agent.toml", MINIMAL)?;
            let config = AgentConfig::load(Some(Path::new("agent.toml"))).unwrap();
            assert_eq!(config.challenges, ChallengesConfig::default());
            assert_eq!(config.challenges.check_url, "http://127.0.0.1:80");
            assert_eq!(config.challenges.webroot, None);
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "agent.toml",
                &format!(
                    "{MINIMAL}\n[challenges]\nwebroot = \"/var/www/html\"\ncheck_url = \"http://localhost:8080\"\n"
                ),
            )?;
            let config = AgentConfig::load(Some(Path::new("agent.toml"))).unwrap();
            assert_eq!(
                config.challenges.webroot.as_deref(),
                Some(Path::new("/var/www/html"))
            );
            assert_eq!(config.challenges.check_url, "http://localhost:8080");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "agent.toml",
                &format!("{MINIMAL}\n[challenges]\nlisten = \"0.0.0.0:80\"\n"),
            )?;
            let config = AgentConfig::load(Some(Path::new("agent.toml"))).unwrap();
            assert_eq!(
                config.challenges.listen,
                Some("0.0.0.0:80".parse().unwrap())
            );
            assert_eq!(config.challenges.webroot, None);
            // The environment sets it as well.
            jail.set_env("CERTPLANE_AGENT_CHALLENGES__LISTEN", "127.0.0.1:8080");
            let config = AgentConfig::load(Some(Path::new("agent.toml"))).unwrap();
            assert_eq!(
                config.challenges.listen,
                Some("127.0.0.1:8080".parse().unwrap())
            );
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "agent.toml",
                &format!(
                    "{MINIMAL}\n[challenges]\nwebroot = \"/var/www/html\"\nlisten = \"0.0.0.0:80\"\n"
                ),
            )?;
            let err = AgentConfig::load(Some(Path::new("agent.toml"))).unwrap_err();
            let message = err.to_string();
            assert!(message.contains("challenges.webroot"), "{message}");
            assert!(message.contains("challenges.listen"), "{message}");
            assert!(message.contains("not both"), "{message}");
            Ok(())
        });
        for (key, value, needle) in [
            ("webroot", "\"www\"", "absolute"),
            ("check_url", "\"https://127.0.0.1\"", "check_url"),
            ("check_within_secs", "0", "check_within_secs"),
            ("listen", "\"0.0.0.0\"", "listen"),
            ("listen", "80", "listen"),
        ] {
            figment::Jail::expect_with(|jail| {
                jail.create_file(
                    "agent.toml",
                    &format!("{MINIMAL}\n[challenges]\n{key} = {value}\n"),
                )?;
                let err = AgentConfig::load(Some(Path::new("agent.toml"))).unwrap_err();
                assert!(err.to_string().contains(needle), "{key}: {err}");
                Ok(())
            });
        }
    }
}
