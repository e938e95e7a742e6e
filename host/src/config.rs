//! Host configuration: built-in defaults, then an optional TOML file, then
//! `CERTPLANE_*` environment variables (nested keys joined with `__`, e.g.
//! `CERTPLANE_API__MAX_BODY_BYTES=2097152`), layered with figment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Longest instance id accepted (it is written into every lease).
pub const MAX_INSTANCE_ID_LEN: usize = 200;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file or variable has a bad value; figment's message names it.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The named configuration file does not exist.
    #[error("configuration file {0} not found")]
    Missing(PathBuf),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: LogFormat,
    /// An `EnvFilter` directive, e.g. `info` or `certplane=debug,info`.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// The HTTPS listener.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain; when absent a self-signed development
    /// certificate is generated in the data directory.
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub key: Option<PathBuf>,
    /// Serve plain HTTP. Only when explicitly asked for (behind a TLS proxy,
    /// tests).
    pub plain_http: bool,
}

/// API limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Sustained requests per second allowed per API key and per agent.
    pub rate_limit_per_second: u32,
    /// Burst allowance on top of the sustained rate.
    pub rate_limit_burst: u32,
    /// Longest an agent's work long-poll is held open, in seconds.
    pub long_poll_max_secs: u64,
    /// Per-request timeout in seconds (long-polls excepted).
    pub request_timeout_secs: u64,
    /// A token `/metrics` requires as `Authorization: Bearer <token>`.
    /// Unset (and no `metrics_token_file`): `/metrics` is open to anyone
    /// who can reach the listener.
    pub metrics_token: Option<String>,
    /// A file holding the `/metrics` token (surrounding whitespace
    /// ignored), instead of `metrics_token`. Read at every scrape, so the
    /// token can be changed without a restart.
    pub metrics_token_file: Option<PathBuf>,
}

impl ApiSettings {
    /// The token `/metrics` requires, if one is configured. Reads
    /// `metrics_token_file` when that is the one set.
    pub fn metrics_token(&self) -> Result<Option<String>, ConfigError> {
        let token = match (&self.metrics_token, &self.metrics_token_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "set api.metrics_token or api.metrics_token_file, not both".into(),
                ));
            }
            (Some(token), None) => token.trim().to_owned(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| {
                    ConfigError::Invalid(format!("api.metrics_token_file {}: {e}", path.display()))
                })?
                .trim()
                .to_owned(),
            (None, None) => return Ok(None),
        };
        // What a client can send after `Bearer ` (RFC 9110 token68).
        let body = token.trim_end_matches('=');
        if body.is_empty()
            || !body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
        {
            return Err(ConfigError::Invalid(
                "the api.metrics_token (or its file) must be one token68 value: letters, digits and -._~+/, then any '='"
                    .into(),
            ));
        }
        Ok(Some(token))
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            max_body_bytes: 1024 * 1024,
            rate_limit_per_second: 50,
            rate_limit_burst: 200,
            long_poll_max_secs: 30,
            request_timeout_secs: 30,
            metrics_token: None,
            metrics_token_file: None,
        }
    }
}

/// Scheduler loop intervals, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerSettings {
    /// Set-based renewal enqueue.
    pub renewal_ms: u64,
    /// Host job processor (issuance, renewal, host-side deployments).
    pub jobs_ms: u64,
    /// Failed → Pending retries.
    pub retry_ms: u64,
    /// Expired leases and TTLs.
    pub reaper_ms: u64,
    /// Marking silent agents offline.
    pub agent_health_ms: u64,
    /// Notification dispatch.
    pub notifications_ms: u64,
    /// Async CA order polling.
    pub order_poll_ms: u64,
    /// Certificate expiry bookkeeping.
    pub expiry_ms: u64,
    /// Asking issuers with `issuer-lifecycle` for renewal windows (ACME
    /// renewal information); each certificate is asked when the CA says.
    pub renewal_info_ms: u64,
    /// Bound on any one tick.
    pub tick_timeout_ms: u64,
    /// How long shutdown waits for ticks in flight.
    pub shutdown_grace_ms: u64,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        SchedulerSettings {
            renewal_ms: 60_000,
            jobs_ms: 5_000,
            retry_ms: 10_000,
            reaper_ms: 15_000,
            agent_health_ms: 30_000,
            notifications_ms: 5_000,
            order_poll_ms: 5_000,
            expiry_ms: 300_000,
            renewal_info_ms: 600_000,
            tick_timeout_ms: 60_000,
            shutdown_grace_ms: 10_000,
        }
    }
}

/// Agent management.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSettings {
    /// Tokens that let an agent register (compared in constant time).
    pub bootstrap_tokens: Vec<String>,
    /// An agent silent this long is marked offline.
    pub offline_after_secs: u64,
    /// How long an AwaitingCSR job waits for its agent.
    pub csr_ttl_secs: u64,
    /// Registrations per second from one source address (IPv6: one /64),
    /// whatever token they carry: the pace at which one address can guess
    /// bootstrap tokens. A fleet behind one NAT or proxy shares it.
    pub registration_per_address_per_second: u32,
    /// Registrations one source address may make at once on top of the
    /// sustained rate.
    pub registration_per_address_burst: u32,
    /// Successful registrations per second with one bootstrap token, from
    /// anywhere; wrong tokens never count here, so guessing cannot lock a
    /// fleet out.
    pub registration_per_token_per_second: u32,
    /// Registrations with one bootstrap token at once on top of the
    /// sustained rate (a fleet rolled out at once).
    pub registration_per_token_burst: u32,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            bootstrap_tokens: Vec::new(),
            offline_after_secs: 90,
            csr_ttl_secs: 24 * 3600,
            registration_per_address_per_second: 20,
            registration_per_address_burst: 200,
            registration_per_token_per_second: 500,
            registration_per_token_burst: 5000,
        }
    }
}

/// Job leases and retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobSettings {
    /// How long a claimed job (by the host or an agent) stays leased before
    /// the reaper takes it back and schedules a retry.
    pub lease_secs: u64,
    /// Delay before the first retry of a failed job; doubles per attempt.
    pub retry_base_ms: u64,
    /// Longest delay between retries.
    pub retry_cap_secs: u64,
    /// How long a job may wait in AwaitingApproval before it fails (and is
    /// retried while its attempts last).
    pub approval_ttl_secs: u64,
    /// Jobs this host runs at once (each in its own task); a slow connector
    /// call holds one of these slots and no more. A slot is held from the
    /// claim until the job's outcome is committed, so most slots of a busy
    /// host wait on the database, not on a core: in the issuance bench
    /// (BENCHMARKS.md) 64 gave 7-15 % more certificates a second than 32,
    /// and 128 another 8 % (SQLite) to 20 % (PostgreSQL) with less CPU per
    /// certificate (bigger groups and claims); 256 was slower.
    /// Connector calls are bounded apart, per instance.
    pub max_concurrent: usize,
    /// How long a cancelled issuance or renewal holds its certificate back
    /// from the renewal sweep, in seconds (an operator's renew runs it
    /// sooner).
    pub cancel_hold_secs: u64,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            lease_secs: 300,
            retry_base_ms: 30_000,
            retry_cap_secs: 3600,
            approval_ttl_secs: 7 * 24 * 3600,
            max_concurrent: 128,
            cancel_hold_secs: 24 * 3600,
        }
    }
}

/// The database connection pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Most connections this host opens for its work: the PostgreSQL pool,
    /// or SQLite's readers (SQLite always has one writer besides). On
    /// PostgreSQL every replica holds up to this many plus one for
    /// listening to the other replicas' wake-ups, so keep
    /// `replicas × (max_connections + 1)` below the server's
    /// `max_connections`.
    pub max_connections: u32,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            max_connections: 10,
        }
    }
}

/// Connector secrets at rest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsSettings {
    /// The secrets key file (32 random bytes, base64; mode 0600). Default:
    /// `<data_dir>/secrets.key`, created on the first start. Every replica
    /// of one database needs the same key: a host whose key cannot open
    /// the check value sealed in the database at its first start refuses
    /// to start. Back it up with the database.
    pub key_file: Option<PathBuf>,
}

/// Everything the host reads at start-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostConfig {
    /// Where the host keeps its state (SQLite file, keys, TLS material,
    /// compiled plugin cache).
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; default: SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// The connection pool.
    pub database: DatabaseSettings,
    /// Listen address.
    pub listen: SocketAddr,
    /// Directory of packaged connector plugins (`*.toml` + `*.wasm`).
    pub plugin_dir: PathBuf,
    /// Compiled-plugin cache; default `<data_dir>/plugin-cache`.
    pub plugin_cache_dir: Option<PathBuf>,
    /// Name of this replica: the owner of the leases it takes. Default: an
    /// id generated at the first start and kept in `<data_dir>/instance-id`,
    /// so a restarted host recognises the leases of its previous run and
    /// takes them back at once. Must differ between replicas.
    pub instance_id: Option<String>,
    /// HTTPS.
    pub tls: TlsSettings,
    /// Connector secrets at rest.
    pub secrets: SecretsSettings,
    /// Logging.
    pub log: LogSettings,
    /// API limits.
    pub api: ApiSettings,
    /// Scheduler intervals.
    pub scheduler: SchedulerSettings,
    /// Agents.
    pub agents: AgentSettings,
    /// Job leases and retries.
    pub jobs: JobSettings,
    /// On-the-wire verification of the deployments the host runs itself
    /// (the same settings, and defaults, as an agent's `[verify]`).
    pub verify: certplane_probe::VerifyConfig,
    /// Default MaxWait of one async-CA polling session, in seconds.
    pub order_max_wait_secs: u64,
    /// Connector limits: the ceiling no instance may exceed and the
    /// defaults for what neither the operator nor the plugin's manifest
    /// sets.
    pub limits: certplane_runtime::LimitPolicy,
    /// Domain-validation challenges the host publishes for issuers.
    pub challenges: ChallengeSettings,
    /// What the host tells notifiers about.
    pub notifications: NotificationSettings,
    /// Named actions the targets the host deploys itself may be granted by
    /// name (their `grants.actions`); only this file defines what they run.
    pub actions: std::collections::BTreeMap<String, certplane_runtime::actions::ActionDefinition>,
}

/// `[notifications]`: which events the host emits (see `docs/events.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationSettings {
    /// Days before expiry at which an unrenewed certificate is announced
    /// (`certificate.expiring`), once per stage; the last stage is an
    /// error, the others warnings.
    pub expiring_days: Vec<u32>,
}

impl Default for NotificationSettings {
    fn default() -> Self {
        NotificationSettings {
            expiring_days: vec![14, 7, 1],
        }
    }
}

impl NotificationSettings {
    /// The stages, most urgent first, without duplicates.
    pub fn stages(&self) -> Vec<u32> {
        let mut days = self.expiring_days.clone();
        days.sort_unstable();
        days.dedup();
        days
    }
}

/// `[challenges]`: how the host publishes and checks ACME-style
/// challenges (see `docs/challenges.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChallengeSettings {
    /// Plain-HTTP listener of the http-01 responder
    /// (`/.well-known/acme-challenge/<token>`), e.g. `0.0.0.0:80`. Unset:
    /// only the HTTPS listener answers, which CAs do not use for http-01.
    pub http_listen: Option<SocketAddr>,
    /// Nameservers the host asks to check that a dns-01 record is visible
    /// (`ip:port`); empty: the system's resolver configuration.
    pub dns_resolvers: Vec<SocketAddr>,
    /// Time between visibility checks of one challenge, in milliseconds.
    pub check_interval_ms: u64,
    /// Give up on a challenge that is not visible after this many seconds.
    pub visible_within_secs: u64,
}

impl Default for ChallengeSettings {
    fn default() -> Self {
        ChallengeSettings {
            http_listen: None,
            dns_resolvers: Vec::new(),
            check_interval_ms: 500,
            visible_within_secs: 300,
        }
    }
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            data_dir: PathBuf::from("certplane-data"),
            database_url: None,
            database: DatabaseSettings::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            plugin_dir: PathBuf::from("plugins"),
            plugin_cache_dir: None,
            instance_id: None,
            tls: TlsSettings::default(),
            secrets: SecretsSettings::default(),
            log: LogSettings::default(),
            api: ApiSettings::default(),
            scheduler: SchedulerSettings::default(),
            agents: AgentSettings::default(),
            jobs: JobSettings::default(),
            verify: certplane_probe::VerifyConfig::default(),
            order_max_wait_secs: 600,
            limits: certplane_runtime::LimitPolicy::default(),
            challenges: ChallengeSettings::default(),
            notifications: NotificationSettings::default(),
            actions: Default::default(),
        }
    }
}

impl HostConfig {
    /// Loads defaults, then `file` (which must exist when given), then the
    /// `CERTPLANE_*` environment.
    pub fn load(file: Option<&Path>) -> Result<HostConfig, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(HostConfig::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Missing(path.to_path_buf()));
            }
            figment = figment.merge(Toml::file(path));
        }
        // `CERTPLANE_CONFIG` names the file (the `--config` flag) and
        // `CERTPLANE_FAULT_POINT` arms a crash test's fault point: neither is
        // a configuration key, and unknown keys are refused.
        figment = figment.merge(
            Env::prefixed("CERTPLANE_")
                .ignore(&["CONFIG", "FAULT_POINT"])
                .split("__"),
        );
        let config: HostConfig = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return bad("tls.cert and tls.key must be set together");
        }
        if self.api.max_body_bytes == 0 || self.api.rate_limit_per_second == 0 {
            return bad("api.max_body_bytes and api.rate_limit_per_second must be positive");
        }
        self.api.metrics_token()?;
        let a = &self.agents;
        if a.registration_per_address_per_second == 0 || a.registration_per_token_per_second == 0 {
            return bad(
                "agents.registration_per_address_per_second and agents.registration_per_token_per_second must be positive",
            );
        }
        let s = &self.scheduler;
        if [
            s.renewal_ms,
            s.jobs_ms,
            s.retry_ms,
            s.reaper_ms,
            s.agent_health_ms,
            s.notifications_ms,
            s.renewal_info_ms,
            s.order_poll_ms,
            s.expiry_ms,
            s.tick_timeout_ms,
        ]
        .contains(&0)
        {
            return bad("scheduler intervals must be positive");
        }
        if self.verify.attempts == 0 || self.verify.timeout_secs == 0 {
            return bad("verify.attempts and verify.timeout_secs must be positive");
        }
        if self.database.max_connections == 0 {
            return bad("database.max_connections must be positive");
        }
        if self
            .instance_id
            .as_deref()
            .is_some_and(|id| id.trim().is_empty() || id.len() > MAX_INSTANCE_ID_LEN)
        {
            return bad("instance_id must be between 1 and 200 characters");
        }
        let j = &self.jobs;
        if j.lease_secs == 0 || j.retry_base_ms == 0 || j.retry_cap_secs == 0 {
            return bad(
                "jobs.lease_secs, jobs.retry_base_ms and jobs.retry_cap_secs must be positive",
            );
        }
        if j.max_concurrent == 0 {
            return bad("jobs.max_concurrent must be positive");
        }
        self.limits
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if self.notifications.expiring_days.is_empty()
            || self
                .notifications
                .expiring_days
                .iter()
                .any(|d| *d == 0 || *d > 365)
        {
            return bad("notifications.expiring_days must list 1 to 365 days, at least one");
        }
        for (name, definition) in &self.actions {
            definition
                .spec(name)
                .map_err(|e| ConfigError::Invalid(format!("actions.{name}: {e}")))?;
        }
        // A call may not outlive the lease of the job it runs for: the
        // reaper would hand the job to another worker mid-call.
        if self.limits.max_deadline_secs >= j.lease_secs {
            return bad("limits.max_deadline_secs must be shorter than jobs.lease_secs");
        }
        Ok(())
    }

    /// The secrets key file in force.
    pub fn secrets_key_file(&self) -> PathBuf {
        self.secrets
            .key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("secrets.key"))
    }

    /// The database URL in force.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("certplane.db").display()
            )
        })
    }
}

#[cfg(test)]
// figment's Jail closures return figment's (large) error type by design.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn defaults_file_and_environment_layer_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "host.toml",
                r#"
                data_dir = "/var/lib/certplane"
                [api]
                max_body_bytes = 2048
                "#,
            )?;
            jail.set_env("CERTPLANE_API__MAX_BODY_BYTES", "4096");
            jail.set_env("CERTPLANE_CONFIG", "/elsewhere/certplane.toml");
            jail.set_env("CERTPLANE_LISTEN", "0.0.0.0:9443");
            let c = HostConfig::load(Some(Path::new("host.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.data_dir, PathBuf::from("/var/lib/certplane"));
            assert_eq!(c.api.max_body_bytes, 4096);
            assert_eq!(c.listen.port(), 9443);
            assert_eq!(c.api.rate_limit_per_second, 50);
            assert_eq!(
                c.database_url(),
                "sqlite:///var/lib/certplane/certplane.db?mode=rwc"
            );
            Ok(())
        });
    }

    #[test]
    fn pool_size_secrets_key_file_and_instance_id_are_settings() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "host.toml",
                r#"
                data_dir = "/var/lib/certplane"
                instance_id = "replica-a"
                [database]
                max_connections = 4
                [secrets]
                key_file = "/etc/certplane/secrets.key"
                "#,
            )?;
            jail.set_env("CERTPLANE_DATABASE__MAX_CONNECTIONS", "6");
            let c = HostConfig::load(Some(Path::new("host.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.database.max_connections, 6);
            assert_eq!(c.instance_id.as_deref(), Some("replica-a"));
            assert_eq!(
                c.secrets_key_file(),
                PathBuf::from("/etc/certplane/secrets.key")
            );
            let d = HostConfig::default();
            assert_eq!(d.secrets_key_file(), d.data_dir.join("secrets.key"));
            assert_eq!(d.database.max_connections, 10);
            jail.set_env("CERTPLANE_DATABASE__MAX_CONNECTIONS", "0");
            assert!(HostConfig::load(Some(Path::new("host.toml"))).is_err());
            jail.set_env("CERTPLANE_DATABASE__MAX_CONNECTIONS", "6");
            jail.create_file("host.toml", "instance_id = \"  \"\n")?;
            assert!(HostConfig::load(Some(Path::new("host.toml"))).is_err());
            Ok(())
        });
    }

    #[test]
    fn registration_limits_are_agents_settings() {
        figment::Jail::expect_with(|jail| {
            let d = HostConfig::default().agents;
            assert_eq!(
                (
                    d.registration_per_address_per_second,
                    d.registration_per_address_burst,
                    d.registration_per_token_per_second,
                    d.registration_per_token_burst
                ),
                (20, 200, 500, 5000)
            );
            jail.create_file(
                "host.toml",
                "[agents]\nregistration_per_address_per_second = 5\nregistration_per_token_burst = 100\n",
            )?;
            jail.set_env("CERTPLANE_AGENTS__REGISTRATION_PER_ADDRESS_BURST", "7");
            let c = HostConfig::load(Some(Path::new("host.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.agents.registration_per_address_per_second, 5);
            assert_eq!(c.agents.registration_per_address_burst, 7);
            assert_eq!(c.agents.registration_per_token_burst, 100);
            assert_eq!(c.agents.registration_per_token_per_second, 500);
            jail.set_env("CERTPLANE_AGENTS__REGISTRATION_PER_TOKEN_PER_SECOND", "0");
            let err = HostConfig::load(Some(Path::new("host.toml"))).unwrap_err();
            assert!(err.to_string().contains("registration_per_token"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn bad_values_are_refused_with_the_key_named() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("host.toml", "listen = \"not an address\"\n")?;
            let err = HostConfig::load(Some(Path::new("host.toml"))).unwrap_err();
            assert!(err.to_string().contains("listen"), "{err}");
            jail.create_file("host.toml", "unknown_key = 1\n")?;
            let err = HostConfig::load(Some(Path::new("host.toml"))).unwrap_err();
            assert!(err.to_string().contains("unknown_key"), "{err}");
            jail.create_file("host.toml", "[tls]\ncert = \"/x.pem\"\n")?;
            assert!(HostConfig::load(Some(Path::new("host.toml"))).is_err());
            Ok(())
        });
        assert!(matches!(
            HostConfig::load(Some(Path::new("/nonexistent/certplane.toml"))),
            Err(ConfigError::Missing(_))
        ));
    }

    #[test]
    fn the_metrics_token_comes_from_the_setting_or_its_file() {
        figment::Jail::expect_with(|jail| {
            let open = HostConfig::load(None).map_err(|e| e.to_string())?;
            assert_eq!(open.api.metrics_token().map_err(|e| e.to_string())?, None);
            jail.create_file("host.toml", "[api]\nmetrics_token = \"m3trics\"\n")?;
            let c = HostConfig::load(Some(Path::new("host.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.api.metrics_token().unwrap().as_deref(), Some("m3trics"));
            jail.create_file("token", "from-file\n")?;
            jail.create_file("host.toml", "[api]\nmetrics_token_file = \"token\"\n")?;
            let c = HostConfig::load(Some(Path::new("host.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.api.metrics_token().unwrap().as_deref(), Some("from-file"));
            for bad in [
                "[api]\nmetrics_token = \"a\"\nmetrics_token_file = \"token\"\n",
                "[api]\nmetrics_token = \"  \"\n",
                "[api]\nmetrics_token = \"two words\"\n",
                "[api]\nmetrics_token_file = \"missing\"\n",
            ] {
                jail.create_file("host.toml", bad)?;
                let err = HostConfig::load(Some(Path::new("host.toml"))).unwrap_err();
                assert!(err.to_string().contains("metrics_token"), "{bad}: {err}");
            }
            Ok(())
        });
    }
}
