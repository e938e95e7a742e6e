//! The operator CLI: `certplane
//! certs|agents|jobs|issuers|targets|notifiers|dns-solvers|notifications|plugins|audit|keys
//! ...` against a running host's `/api/v1`.
//!
//! * [`client`]: the HTTP(S) client (CA file or fingerprint pinning).
//! * [`output`]: table and JSON rendering.
//!
//! Results go to stdout, as aligned tables by default or as the server's
//! JSON with `--output json` (`{}` when the server answers with no body,
//! e.g. `204 No Content` for a delete or a repeated retire); errors are
//! returned as one line (`<code>: <message> (request <id>)` for API
//! errors) for the binary to report on stderr with a non-zero exit code.

pub use certplane_client as client;
mod import;
pub mod keys;
pub mod output;

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use client::{ApiClient, ApiReply, ClientOptions, DEFAULT_TIMEOUT, Trust};
use output::{Column, OutputFormat, col};

/// Options shared by every operator command (also read from the
/// environment).
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Base URL of the host.
    #[arg(
        long,
        global = true,
        env = "CERTPLANE_URL",
        default_value = "https://127.0.0.1:8443"
    )]
    pub host_url: String,
    /// API key (see `certplane apikey create`). Required.
    #[arg(long, global = true, env = "CERTPLANE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// PEM certificates to trust: the host's certificate (for example its
    /// `<data_dir>/tls/dev-cert.pem`) or the CA that issued it.
    #[arg(
        long,
        global = true,
        env = "CERTPLANE_CA_FILE",
        conflicts_with = "pin_sha256"
    )]
    pub ca_file: Option<PathBuf>,
    /// Trust exactly the server certificate with this SHA-256 fingerprint
    /// (hex; the host logs its development certificate's at start).
    /// Without this or --ca-file, the public CAs (Mozilla's roots) are
    /// trusted.
    #[arg(long, global = true, env = "CERTPLANE_PIN_SHA256")]
    pub pin_sha256: Option<String>,
    /// Output format. With `json`, a command the server answers without a
    /// body prints `{}` (a delete answers with what it retired).
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Paging of list commands.
#[derive(Debug, Clone, Copy, Args)]
pub struct PageArgs {
    /// Page number, from 1.
    #[arg(long)]
    pub page: Option<u32>,
    /// Items per page (server default 50, at most 500).
    #[arg(long)]
    pub per_page: Option<u32>,
}

impl PageArgs {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(p) = self.page {
            q.push(("page", p.to_string()));
        }
        if let Some(p) = self.per_page {
            q.push(("per_page", p.to_string()));
        }
        q
    }
}

/// The operator commands (flattened into the binary's top-level commands).
#[derive(Debug, Subcommand)]
pub enum Operator {
    /// Managed certificates.
    Certs {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        action: CertsAction,
    },
    /// Agents.
    Agents {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        action: AgentsAction,
    },
    /// Jobs (issuance, renewal, deployment, verification, revocation).
    Jobs {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        action: JobsAction,
    },
    /// Issuer connector instances.
    Issuers {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        action: IssuersAction,
    },
    /// Target connector instances.
    Targets {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        action: TargetsAction,
    },
    /// Notifier connector instances (where notifications are delivered).
    Notifiers {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        action: NotifiersAction,
    },
    /// dns-solver connector instances (publish the TXT records of ACME
    /// dns-01 challenges; issuers route zones to them in
    /// `grants.challenges`).
    DnsSolvers {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        action: DnsSolversAction,
    },
    /// Outgoing notifications and their delivery state.
    Notifications {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        action: NotificationsAction,
    },
    /// Loaded connector plugins.
    Plugins {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        action: PluginsAction,
    },
    /// The audit log.
    Audit {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Operator API keys (admin): list, create, show, revoke.
    Keys {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        action: keys::KeysAction,
    },
}

/// `certplane plugins ...`
#[derive(Debug, Subcommand)]
pub enum PluginsAction {
    /// List loaded plugins (and load failures).
    List,
    /// Load the host's plugin directory again without a restart (admin).
    Reload,
}

/// Fields of a new issuer, target or notifier.
#[derive(Debug, Clone, Args)]
pub struct InstanceArgs {
    /// Unique name.
    #[arg(long)]
    pub name: String,
    /// Plugin name (see `certplane plugins list`).
    #[arg(long)]
    pub plugin: String,
    /// Settings as a JSON object (the plugin's `validate-config` checks it
    /// before anything is saved; `certplane plugins list` shows its schema).
    #[arg(long, default_value = "{}")]
    pub settings: String,
    /// A secret the plugin reads, `NAME=VALUE` (repeatable; each NAME once
    /// across --secret and --secret-file). Beware that command lines are
    /// visible to other local users: prefer `--secret-file`.
    #[arg(long = "secret", value_name = "NAME=VALUE")]
    pub secrets: Vec<String>,
    /// A secret read from a file, `NAME=PATH` (repeatable; `NAME=-` reads
    /// standard input, once). One trailing newline is dropped.
    #[arg(long = "secret-file", value_name = "NAME=PATH")]
    pub secret_files: Vec<String>,
    /// An HTTP origin the connector may reach, e.g. `https://ca.example:443`
    /// (repeatable).
    #[arg(long = "grant-host", value_name = "URL")]
    pub grant_hosts: Vec<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// The operator's limits of one connector instance, within the host's
/// `[limits]` (unset: the plugin's request cut to the host's maxima, or the
/// host's defaults).
#[derive(Debug, Clone, Default, Args)]
pub struct LimitArgs {
    /// Wall-clock deadline of one call, in seconds.
    #[arg(long, value_name = "SECS")]
    pub deadline_secs: Option<u64>,
    /// Memory cap of one call, in MiB.
    #[arg(long, value_name = "MIB")]
    pub memory_mib: Option<u64>,
    /// Calls of this instance that may run at once.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u32>,
}

impl LimitArgs {
    fn is_empty(&self) -> bool {
        self.deadline_secs.is_none() && self.memory_mib.is_none() && self.concurrency.is_none()
    }

    /// Sets the given limits in `grants.limits`, keeping the others.
    fn apply(&self, grants: &mut Map<String, Value>) {
        if self.is_empty() {
            return;
        }
        let limits = grants
            .entry("limits")
            .or_insert_with(|| Value::Object(Map::new()));
        if !limits.is_object() {
            *limits = Value::Object(Map::new());
        }
        if let Value::Object(limits) = limits {
            for (name, value) in [
                ("deadline_secs", self.deadline_secs.map(Value::from)),
                ("memory_mib", self.memory_mib.map(Value::from)),
                ("concurrency", self.concurrency.map(Value::from)),
            ] {
                if let Some(value) = value {
                    limits.insert(name.into(), value);
                }
            }
        }
    }
}

/// Changes to an issuer, target or notifier (`PATCH`): only the parts
/// given are sent, and the server validates the resulting configuration
/// with the plugin before saving it.
#[derive(Debug, Clone, Args)]
pub struct UpdateArgs {
    /// New settings as a JSON object. Replaces the current settings as a
    /// whole: give every setting to keep.
    #[arg(long)]
    pub settings: Option<String>,
    /// Set a secret, `NAME=VALUE` (repeatable; each NAME once across the
    /// secret flags). Secrets not named are kept. Beware that command lines
    /// are visible to other local users: prefer `--secret-file`.
    #[arg(long = "secret", value_name = "NAME=VALUE")]
    pub secrets: Vec<String>,
    /// Set a secret read from a file, `NAME=PATH` (repeatable; `NAME=-`
    /// reads standard input, once). One trailing newline is dropped.
    #[arg(long = "secret-file", value_name = "NAME=PATH")]
    pub secret_files: Vec<String>,
    /// Remove a secret (repeatable).
    #[arg(long = "remove-secret", value_name = "NAME")]
    pub remove_secrets: Vec<String>,
    /// An HTTP origin the connector may reach (repeatable). Any grant flag
    /// REPLACES all of the instance's host and directory grants with the
    /// ones given: list every grant to keep. Without grant flags they are
    /// unchanged. Limits, `tls` and an issuer's challenge routes are kept
    /// either way.
    #[arg(long = "grant-host", value_name = "URL")]
    pub grant_hosts: Vec<String>,
    /// Remove every host and directory grant.
    #[arg(long, conflicts_with = "grant_hosts")]
    pub clear_grants: bool,
    /// Limits to set; the instance's other limits are kept, also when grant
    /// flags replace its hosts and directories.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// `certplane issuers ...`
#[derive(Debug, Subcommand)]
pub enum IssuersAction {
    /// List issuers.
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one issuer.
    Get {
        /// Issuer id.
        id: String,
    },
    /// Create an issuer.
    Create {
        #[command(flatten)]
        instance: InstanceArgs,
        #[command(flatten)]
        challenges: ChallengeArgs,
    },
    /// Change an issuer's settings, secrets, grants or challenge routes
    /// (validated by its plugin before it is saved).
    Update {
        /// Issuer id.
        id: String,
        #[command(flatten)]
        update: UpdateArgs,
        #[command(flatten)]
        challenges: ChallengeArgs,
        /// Remove the issuer's challenge routes.
        #[arg(long, conflicts_with_all = ["dns_01", "http_01_host", "http_01_agent"])]
        no_challenges: bool,
    },
    /// Delete an issuer (refused while certificates use it).
    Delete {
        /// Issuer id.
        id: String,
    },
}

/// Who publishes an issuer's domain-validation challenges
/// (`grants.challenges`). On `update`, any of these flags REPLACES the
/// issuer's routes with the ones given; without them they are kept.
#[derive(Debug, Clone, Default, Args)]
pub struct ChallengeArgs {
    /// Route the dns-01 challenges of a zone (the name and every name below
    /// it; the longest zone wins) to a dns-solver, `ZONE=SOLVER_ID`
    /// (repeatable; see `certplane dns-solvers list`).
    #[arg(long = "dns-01", value_name = "ZONE=SOLVER_ID")]
    pub dns_01: Vec<String>,
    /// Serve http-01 challenges from the host's responder (not for
    /// wildcard names).
    #[arg(long, conflicts_with = "http_01_agent")]
    pub http_01_host: bool,
    /// Serve http-01 challenges through the agent of each certificate's
    /// key-holding target, from the webroot in that agent's
    /// `[challenges]` configuration (not for wildcard names).
    #[arg(long)]
    pub http_01_agent: bool,
}

impl ChallengeArgs {
    /// `grants.challenges` from the flags; `None` without any.
    fn routes(&self) -> anyhow::Result<Option<Value>> {
        if self.dns_01.is_empty() && !self.http_01_host && !self.http_01_agent {
            return Ok(None);
        }
        let mut routes = Map::new();
        if self.http_01_host {
            routes.insert("http_01".into(), json!("host"));
        }
        if self.http_01_agent {
            routes.insert("http_01".into(), json!("agent"));
        }
        let dns = self
            .dns_01
            .iter()
            .map(|spec| match spec.split_once('=') {
                Some((zone, solver)) if !zone.is_empty() && !solver.is_empty() => {
                    Ok(json!({ "zone": zone, "solver": solver }))
                }
                _ => bail!("--dns-01 `{spec}` is not ZONE=SOLVER_ID"),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if !dns.is_empty() {
            routes.insert("dns_01".into(), Value::Array(dns));
        }
        Ok(Some(Value::Object(routes)))
    }
}

/// `certplane notifiers ...`
#[derive(Debug, Subcommand)]
pub enum NotifiersAction {
    /// List notifiers.
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one notifier.
    Get {
        /// Notifier id.
        id: String,
    },
    /// Create a notifier (for example with the `webhook` plugin).
    ///
    /// Example: `certplane notifiers create --name hooks --plugin webhook
    /// --settings '{"url":"https://hooks.example/certplane"}' --secret-file
    /// signing_secret=PATH --grant-host https://hooks.example:443` (the
    /// webhook's secret is `whsec_` followed by base64).
    Create {
        #[command(flatten)]
        instance: InstanceArgs,
    },
    /// Change a notifier's settings, secrets or grants (validated by its
    /// plugin before it is saved).
    Update {
        /// Notifier id.
        id: String,
        #[command(flatten)]
        update: UpdateArgs,
    },
    /// Delete a notifier and its delivery history (refused while
    /// notifications are pending or being sent: `cancel-pending` first).
    Delete {
        /// Notifier id.
        id: String,
    },
    /// Disable a notifier: no new notifications are queued for it and its
    /// pending ones wait (nothing is sent) until `enable` or
    /// `cancel-pending`.
    Disable {
        /// Notifier id.
        id: String,
    },
    /// Enable a notifier: its waiting notifications are delivered.
    Enable {
        /// Notifier id.
        id: String,
    },
    /// Cancel a notifier's pending notifications (never sent); those being
    /// sent right now are not attempted again.
    CancelPending {
        /// Notifier id.
        id: String,
    },
}

/// `certplane dns-solvers ...`
#[derive(Debug, Subcommand)]
pub enum DnsSolversAction {
    /// List dns-solvers.
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one dns-solver.
    Get {
        /// dns-solver id.
        id: String,
    },
    /// Create a dns-solver (for example with the `cloudflare-dns` plugin).
    ///
    /// Example: `certplane dns-solvers create --name cf --plugin
    /// cloudflare-dns --secret-file api_token=PATH --grant-host
    /// https://api.cloudflare.com:443`; then route a zone to its id in an
    /// issuer's `grants.challenges.dns_01` (`{"zone": "example.com",
    /// "solver": "<id>"}`).
    Create {
        #[command(flatten)]
        instance: InstanceArgs,
    },
    /// Change a dns-solver's settings, secrets or grants (validated by its
    /// plugin before it is saved).
    Update {
        /// dns-solver id.
        id: String,
        #[command(flatten)]
        update: UpdateArgs,
    },
    /// Delete a dns-solver (refused while an issuer routes dns-01
    /// challenges to it or a challenge it published is not withdrawn yet).
    Delete {
        /// dns-solver id.
        id: String,
    },
}

/// `certplane notifications ...`
#[derive(Debug, Subcommand)]
pub enum NotificationsAction {
    /// List notifications, newest first.
    List {
        #[command(flatten)]
        page: PageArgs,
        /// Only this delivery state: `pending`, `sending`, `sent`, `failed`
        /// or `cancelled`.
        #[arg(long)]
        status: Option<String>,
        /// Only notifications of this notifier (id).
        #[arg(long)]
        notifier: Option<String>,
    },
    /// Show one notification with its payload.
    Get {
        /// Notification id.
        id: String,
    },
}

/// `certplane targets ...`
#[derive(Debug, Subcommand)]
pub enum TargetsAction {
    /// List targets.
    List {
        #[command(flatten)]
        page: PageArgs,
        /// Include retired targets.
        #[arg(long)]
        include_retired: bool,
    },
    /// Show one target.
    Get {
        /// Target id.
        id: String,
    },
    /// Create a target.
    Create {
        #[command(flatten)]
        instance: InstanceArgs,
        /// Agent that runs it (`host` for the host itself).
        #[arg(long)]
        agent: Option<String>,
        /// A directory the connector may use, `PATH:GUEST_PATH[:rw|:ro]`
        /// (repeatable; read-only unless `:rw`). Split from the right, so
        /// PATH may contain `:` (GUEST_PATH may not).
        #[arg(long = "grant-dir", value_name = "PATH:GUEST[:rw]")]
        grant_dirs: Vec<String>,
        /// A named action the connector may run (repeatable), defined in
        /// the agent's `[actions]` (or the host's, for `--agent host`); a
        /// name, never a command.
        #[arg(long = "grant-action", value_name = "NAME")]
        grant_actions: Vec<String>,
    },
    /// Change a target's settings, secrets or grants (validated by its
    /// plugin before it is saved, unless a remote agent runs it).
    Update {
        /// Target id.
        id: String,
        #[command(flatten)]
        update: UpdateArgs,
        /// A directory the connector may use, `PATH:GUEST_PATH[:rw|:ro]`
        /// (repeatable; read-only unless `:rw`; PATH may contain `:`).
        /// Like --grant-host, it REPLACES all of the target's grants: list
        /// every host and directory to keep.
        #[arg(
            long = "grant-dir",
            value_name = "PATH:GUEST[:rw]",
            conflicts_with = "clear_grants"
        )]
        grant_dirs: Vec<String>,
        /// A named action the connector may run (repeatable); like
        /// --grant-dir, it replaces all of the target's grants.
        #[arg(
            long = "grant-action",
            value_name = "NAME",
            conflicts_with = "clear_grants"
        )]
        grant_actions: Vec<String>,
    },
    /// Delete (retire) a target.
    Delete {
        /// Target id.
        id: String,
    },
}

/// `certplane certs ...`
#[derive(Debug, Subcommand)]
pub enum CertsAction {
    /// List certificates.
    List {
        #[command(flatten)]
        page: PageArgs,
        /// Only this status: `active`, `disabled` or `retired` (which
        /// implies --include-retired).
        #[arg(long)]
        status: Option<String>,
        /// Only those expiring within this many days.
        #[arg(long)]
        expiring_within_days: Option<u32>,
        /// Include retired certificates.
        #[arg(long)]
        include_retired: bool,
    },
    /// Show one certificate with its versions.
    Get {
        /// Certificate id.
        id: String,
    },
    /// Create a managed certificate (issued at once).
    Create {
        /// Unique name.
        #[arg(long)]
        name: String,
        /// Common name.
        #[arg(long)]
        cn: String,
        /// A subject alternative name (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Issuer id.
        #[arg(long)]
        issuer: String,
        /// A target to deploy to (repeatable).
        #[arg(long = "target")]
        targets: Vec<String>,
        /// `ecdsa-p256` (default), `ecdsa-p384`, `rsa-2048`, ...
        #[arg(long)]
        key_type: Option<String>,
        /// Where the key is generated: `host` or `agent`.
        #[arg(long)]
        key_source: Option<String>,
        /// Renew this many days before expiry.
        #[arg(long)]
        renew_before_days: Option<u32>,
        /// Owner, free text.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Create many certificates from a JSON file: an array of objects,
    /// each as `POST /certificates` takes one (`name`, `common_name`,
    /// `issuer_id`, `target_ids`, ...). Sent 1,000 at a time, each batch
    /// all or nothing.
    Import {
        /// The JSON file (`-`: standard input).
        file: std::path::PathBuf,
    },
    /// Renew now: one certificate, or every active one of an issuer and/or
    /// owner (`--issuer`, `--owner`), or all of them (`--all`).
    Renew {
        /// Certificate id (leave out with `--issuer`, `--owner` or `--all`).
        #[arg(required_unless_present_any = ["issuer", "owner", "all"],
              conflicts_with_all = ["issuer", "owner", "all"])]
        id: Option<String>,
        /// Every active certificate of this issuer (a distrusted CA, a
        /// rotated key).
        #[arg(long)]
        issuer: Option<String>,
        /// Every active certificate with this owner.
        #[arg(long)]
        owner: Option<String>,
        /// Every active certificate.
        #[arg(long, conflicts_with_all = ["issuer", "owner"])]
        all: bool,
    },
    /// Revoke the version in force.
    Revoke {
        /// Certificate id.
        id: String,
        /// `unspecified`, `key-compromise`, `ca-compromise`,
        /// `affiliation-changed`, `superseded` or `cessation-of-operation`.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Change status (`active`/`disabled`), renewal window or owner.
    Update {
        /// Certificate id.
        id: String,
        /// `active` (managed, renewed) or `disabled` (kept, not renewed).
        #[arg(long)]
        status: Option<String>,
        /// Renew this many days before expiry.
        #[arg(long)]
        renew_before_days: Option<u32>,
        /// Owner, free text (`--owner ''` clears it).
        #[arg(long)]
        owner: Option<String>,
    },
    /// Retire: stop managing it and cancel its jobs that have not started.
    Retire {
        /// Certificate id.
        id: String,
    },
}

/// `certplane jobs ...`
#[derive(Debug, Subcommand)]
pub enum JobsAction {
    /// List jobs, newest first.
    List {
        #[command(flatten)]
        page: PageArgs,
        /// Only this status.
        #[arg(long)]
        status: Option<String>,
        /// Only this type (`issuance`, `renewal`, `deployment`, ...).
        #[arg(long = "job-type", visible_alias = "type")]
        job_type: Option<String>,
        /// Only jobs of this certificate.
        #[arg(long)]
        certificate: Option<String>,
        /// Only jobs of this agent.
        #[arg(long)]
        agent: Option<String>,
    },
    /// Show one job.
    Get {
        /// Job id.
        id: String,
    },
    /// Cancel a job.
    Cancel {
        /// Job id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Retry a failed job now.
    Retry {
        /// Job id.
        id: String,
    },
    /// Show the verification result of a deployment or verification job.
    Verification {
        /// Job id.
        id: String,
    },
    /// Verify a completed deployment again: queues a new verification job
    /// for the same target and certificate version and prints its id (see
    /// `certplane jobs verification`).
    Verify {
        /// Deployment job id.
        id: String,
    },
}

/// `certplane agents ...`
#[derive(Debug, Subcommand)]
pub enum AgentsAction {
    /// List agents.
    List {
        #[command(flatten)]
        page: PageArgs,
        /// Include retired agents.
        #[arg(long)]
        include_retired: bool,
    },
    /// List retired agents.
    Retired {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one agent with its dependencies.
    Get {
        /// Agent id.
        id: String,
    },
    /// Retire an agent.
    Retire {
        /// Agent id.
        id: String,
        /// Also retire its targets and cancel its jobs (needs --reason);
        /// the certificates whose keys it held are disabled.
        #[arg(long, requires = "reason")]
        force: bool,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
        /// With --force: move the certificates whose keys it held to this
        /// target instead (they get a new key there by a renewal).
        #[arg(long, requires = "force")]
        move_to_target: Option<String>,
    },
}

/// `certplane audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// List audit events, newest first.
    List {
        #[command(flatten)]
        page: PageArgs,
        /// Only this subject type (`certificate`, `agent`, ...).
        #[arg(long)]
        subject_type: Option<String>,
        /// Only this subject.
        #[arg(long)]
        subject_id: Option<String>,
        /// Only this actor.
        #[arg(long)]
        actor: Option<String>,
        /// Only events at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only events before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
    },
}

const CERT_COLUMNS: &[Column] = &[
    col("ID", "/id"),
    col("NAME", "/name"),
    col("STATUS", "/status"),
    col("NOT AFTER", "/not_after"),
    col("ISSUER", "/issuer_id"),
];
const VERSION_COLUMNS: &[Column] = &[
    col("VERSION", "/id"),
    col("SERIAL", "/serial"),
    col("NOT BEFORE", "/not_before"),
    col("NOT AFTER", "/not_after"),
    col("JOB", "/job_id"),
];
const INSTANCE_COLUMNS: &[Column] = &[
    col("ID", "/id"),
    col("NAME", "/name"),
    col("PLUGIN", "/plugin"),
    col("VERSION", "/plugin_version"),
    col("CREATED", "/created_at"),
];
const TARGET_COLUMNS: &[Column] = &[
    col("ID", "/id"),
    col("NAME", "/name"),
    col("PLUGIN", "/plugin"),
    col("AGENT", "/agent_id"),
    col("RETIRED", "/retired_at"),
];
const NOTIFICATION_COLUMNS: &[Column] = &[
    col("ID", "/id"),
    col("NOTIFIER", "/notifier_id"),
    col("EVENT", "/event_type"),
    col("STATUS", "/status"),
    col("ATTEMPTS", "/attempts"),
    col("CREATED", "/created_at"),
    col("LAST ERROR", "/last_error"),
];
const PLUGIN_COLUMNS: &[Column] = &[
    col("NAME", "/name"),
    col("KIND", "/kind"),
    col("VERSION", "/version"),
    col("DESCRIPTION", "/description"),
];
const JOB_COLUMNS: &[Column] = &[
    col("ID", "/id"),
    col("TYPE", "/job_type"),
    col("STATUS", "/status"),
    col("CERTIFICATE", "/certificate_id"),
    col("ATTEMPTS", "/attempts"),
    col("RUN AT", "/run_at"),
    col("LAST ERROR", "/last_error"),
];
const AGENT_COLUMNS: &[Column] = &[
    col("ID", "/id"),
    col("NAME", "/name"),
    col("STATUS", "/status"),
    col("LAST HEARTBEAT", "/last_heartbeat_at"),
    col("CREATED", "/created_at"),
];
const AUDIT_COLUMNS: &[Column] = &[
    col("AT", "/at"),
    col("ACTOR", "/actor"),
    col("ACTION", "/action"),
    col("SUBJECT", "/subject_type"),
    col("SUBJECT ID", "/subject_id"),
];

/// Runs one operator command; results go to stdout.
pub async fn run(operator: Operator) -> anyhow::Result<()> {
    match operator {
        Operator::Certs { client, action } => certs(&Ctx::new(&client)?, action).await,
        Operator::Agents { client, action } => agents(&Ctx::new(&client)?, action).await,
        Operator::Jobs { client, action } => jobs(&Ctx::new(&client)?, action).await,
        Operator::Issuers { client, action } => issuers(&Ctx::new(&client)?, action).await,
        Operator::Targets { client, action } => targets(&Ctx::new(&client)?, action).await,
        Operator::Notifiers { client, action } => notifiers(&Ctx::new(&client)?, action).await,
        Operator::DnsSolvers { client, action } => dns_solvers(&Ctx::new(&client)?, action).await,
        Operator::Notifications { client, action } => {
            notifications(&Ctx::new(&client)?, action).await
        }
        Operator::Plugins { client, action } => plugins(&Ctx::new(&client)?, action).await,
        Operator::Audit { client, action } => audit(&Ctx::new(&client)?, action).await,
        Operator::Keys { client, action } => keys::run(&Ctx::new(&client)?, action).await,
    }
}

/// A client and the output format.
struct Ctx {
    client: ApiClient,
    output: OutputFormat,
}

impl Ctx {
    fn new(args: &ClientArgs) -> anyhow::Result<Ctx> {
        let Some(api_key) = args.api_key.clone().filter(|k| !k.is_empty()) else {
            bail!(
                "an API key is required: pass --api-key or set CERTPLANE_API_KEY \
                 (create one with `certplane apikey create --name NAME`)"
            );
        };
        let trust = match (&args.ca_file, &args.pin_sha256) {
            (Some(path), _) => Some(Trust::CaFile(path.clone())),
            (None, Some(pin)) => Some(Trust::PinSha256(pin.clone())),
            // A host with a certificate from a public CA needs no flag.
            (None, None) => Some(Trust::PublicRoots),
        };
        let client = ApiClient::new(ClientOptions {
            base_url: args.host_url.clone(),
            api_key,
            trust,
            timeout: DEFAULT_TIMEOUT,
            user_agent: concat!("certplane-cli/", env!("CARGO_PKG_VERSION")).into(),
        })?;
        Ok(Ctx {
            client,
            output: args.output,
        })
    }

    /// Prints a list answer as a table (with a paging note) or JSON.
    async fn list(
        &self,
        path: &str,
        query: &[(&str, String)],
        columns: &[Column],
    ) -> anyhow::Result<()> {
        let reply = self.client.get(path, query).await?;
        let body = reply.json.unwrap_or(Value::Null);
        match self.output {
            OutputFormat::Json => print!("{}", output::json(&body)),
            OutputFormat::Table => {
                let items = body["items"].as_array().cloned().unwrap_or_default();
                print!("{}", output::table(columns, &items));
                if let Some(note) = output::page_note(&body) {
                    println!("({note})");
                }
            }
        }
        Ok(())
    }

    /// Prints one answer: JSON as is, or `render` of it for tables.
    fn show(&self, reply: ApiReply, render: impl FnOnce(&Value) -> String) {
        match (self.output, reply.json) {
            (OutputFormat::Json, Some(body)) => print!("{}", output::json(&body)),
            // No body (204): still one JSON value for scripts.
            (OutputFormat::Json, None) => print!("{}", output::json(&json!({}))),
            (OutputFormat::Table, body) => print!("{}", render(&body.unwrap_or(Value::Null))),
        }
    }

    /// Prints an object answer as `FIELD VALUE` lines (or JSON).
    fn show_fields(&self, reply: ApiReply, skip: &[&str]) {
        self.show(reply, |v| output::fields(v, skip));
    }
}

/// `?key=value` pairs for the options that are set.
fn query_of(
    page: &PageArgs,
    filters: &[(&'static str, Option<String>)],
) -> Vec<(&'static str, String)> {
    let mut q = page.query();
    for (k, v) in filters {
        if let Some(v) = v {
            q.push((k, v.clone()));
        }
    }
    q
}

/// A path segment for an id (ids are opaque; escape them).
fn seg(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

async fn plugins(ctx: &Ctx, action: PluginsAction) -> anyhow::Result<()> {
    match action {
        PluginsAction::List => {
            let reply = ctx.client.get("/plugins", &[]).await?;
            ctx.show(reply, |body| {
                let items = body["items"].as_array().cloned().unwrap_or_default();
                let mut out = output::table(PLUGIN_COLUMNS, &items);
                for failure in body["failures"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "failed to load: {}\n",
                        output::cell(Some(failure))
                    ));
                }
                out
            });
        }
        PluginsAction::Reload => {
            let reply = ctx.client.post("/plugins/reload", None).await?;
            ctx.show(reply, |body| {
                let mut out = String::new();
                for what in ["added", "replaced", "removed", "unchanged"] {
                    let names: Vec<&str> = body[what]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    out.push_str(&format!("{what}: {}\n", names.join(", ")));
                }
                for failure in body["failures"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "failed to load: {}\n",
                        output::cell(Some(failure))
                    ));
                }
                out
            });
        }
    }
    Ok(())
}

/// `--settings` as a JSON object.
fn settings_of(text: &str) -> anyhow::Result<Value> {
    let settings: Value = serde_json::from_str(text).context("--settings is not valid JSON")?;
    if !settings.is_object() {
        bail!("--settings must be a JSON object");
    }
    Ok(settings)
}

/// The secrets of `--secret NAME=VALUE` and `--secret-file NAME=PATH`;
/// each name may be given once across both flags. Values are never shown
/// in errors.
fn secrets_of(secrets: &[String], secret_files: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut map = Map::new();
    let add = |map: &mut Map<String, Value>, name: &str, value: String| {
        if map.insert(name.to_owned(), Value::String(value)).is_some() {
            bail!("secret {name} is given twice");
        }
        Ok(())
    };
    for pair in secrets {
        let Some((name, value)) = pair.split_once('=') else {
            bail!("a --secret is not NAME=VALUE (its value is not shown)");
        };
        add(&mut map, name, value.to_owned())?;
    }
    let mut stdin_read = false;
    for pair in secret_files {
        let Some((name, path)) = pair.split_once('=') else {
            bail!("a --secret-file is not NAME=PATH: {pair}");
        };
        let mut value = if path == "-" {
            if std::mem::replace(&mut stdin_read, true) {
                bail!("only one --secret-file can read standard input (`{name}=-`)");
            }
            std::io::read_to_string(std::io::stdin()).context("reading a secret from stdin")?
        } else {
            std::fs::read_to_string(path)
                .with_context(|| format!("--secret-file {name}: cannot read {path}"))?
        };
        if value.ends_with('\n') {
            value.pop();
            if value.ends_with('\r') {
                value.pop();
            }
        }
        add(&mut map, name, value)?;
    }
    Ok(map)
}

/// `{"hosts": [...], "directories": [...]}` from the grant flags.
fn grants_of(hosts: &[String], dirs: &[String]) -> anyhow::Result<Value> {
    let directories = dirs
        .iter()
        .map(|d| dir_grant(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(json!({ "hosts": hosts, "directories": directories }))
}

/// Adds `actions` (names) to the `grants` of a target's body.
fn with_actions(body: &mut Map<String, Value>, actions: &[String]) {
    if actions.is_empty() {
        return;
    }
    if let Some(Value::Object(grants)) = body.get_mut("grants") {
        grants.insert("actions".into(), json!(actions));
    }
}

/// The create body of an issuer, target or notifier (`grant_dirs` only
/// for targets).
fn instance_body(args: &InstanceArgs, grant_dirs: &[String]) -> anyhow::Result<Map<String, Value>> {
    let settings = settings_of(&args.settings)?;
    let secrets = secrets_of(&args.secrets, &args.secret_files)?;
    let mut body = Map::new();
    body.insert("name".into(), json!(args.name));
    body.insert("plugin".into(), json!(args.plugin));
    body.insert("settings".into(), settings);
    body.insert("secrets".into(), Value::Object(secrets));
    let mut grants = grants_of(&args.grant_hosts, grant_dirs)?;
    if let (false, Value::Object(grants)) = (args.limits.is_empty(), &mut grants) {
        args.limits.apply(grants);
    }
    body.insert("grants".into(), grants);
    Ok(body)
}

/// The `PATCH` body of an issuer, target or notifier: only what is given.
/// Secrets are merged by the server (`null` removes one); grants, when
/// any grant flag is given, replace the current ones as a whole.
fn update_body(args: &UpdateArgs, grant_dirs: &[String]) -> anyhow::Result<Value> {
    update_body_with(args, grant_dirs, false)
}

/// [`update_body`], where `more` says another flag (an issuer's challenge
/// routes) changes something, so an otherwise empty body is not refused.
fn update_body_with(args: &UpdateArgs, grant_dirs: &[String], more: bool) -> anyhow::Result<Value> {
    let mut body = Map::new();
    if let Some(settings) = &args.settings {
        body.insert("settings".into(), settings_of(settings)?);
    }
    let mut secrets = secrets_of(&args.secrets, &args.secret_files)?;
    for name in &args.remove_secrets {
        if name.is_empty() {
            bail!("--remove-secret needs a secret name");
        }
        if secrets.insert(name.clone(), Value::Null).is_some() {
            bail!("secret {name} is given twice");
        }
    }
    if !secrets.is_empty() {
        body.insert("secrets".into(), Value::Object(secrets));
    }
    if args.clear_grants || !args.grant_hosts.is_empty() || !grant_dirs.is_empty() {
        body.insert("grants".into(), grants_of(&args.grant_hosts, grant_dirs)?);
    }
    if body.is_empty() && args.limits.is_empty() && !more {
        bail!(
            "nothing to update: give --settings, --secret, --secret-file, --remove-secret, \
             grants or limits (see --help)"
        );
    }
    Ok(Value::Object(body))
}

/// `PATH:GUEST[:rw|:ro]` as a directory grant. Split from the right, so
/// that PATH may contain `:`; GUEST must be absolute.
fn dir_grant(spec: &str) -> anyhow::Result<Value> {
    let malformed = || anyhow::anyhow!("--grant-dir `{spec}` is not PATH:GUEST_PATH[:rw|:ro]");
    let (rest, writable) = match spec.rsplit_once(':') {
        Some((rest, "rw")) => (rest, true),
        Some((rest, "ro")) => (rest, false),
        Some(_) => (spec, false),
        None => return Err(malformed()),
    };
    let (path, guest) = rest.rsplit_once(':').ok_or_else(malformed)?;
    if path.is_empty() || !guest.starts_with('/') {
        return Err(malformed());
    }
    Ok(json!({ "path": path, "guest_path": guest, "writable": writable }))
}

/// `GET /<collection>/{id}`, shown as fields.
async fn instance_get(ctx: &Ctx, collection: &str, id: &str) -> anyhow::Result<()> {
    let reply = ctx
        .client
        .get(&format!("/{collection}/{}", seg(id)), &[])
        .await?;
    ctx.show_fields(reply, &[]);
    Ok(())
}

/// `POST /<collection>`, the new instance shown as fields.
async fn instance_create(
    ctx: &Ctx,
    collection: &str,
    body: Map<String, Value>,
) -> anyhow::Result<()> {
    let reply = ctx
        .client
        .post(&format!("/{collection}"), Some(&Value::Object(body)))
        .await?;
    ctx.show_fields(reply, &[]);
    Ok(())
}

/// `PATCH /<collection>/{id}`, the updated instance shown as fields.
/// `challenges` replaces an issuer's routes (`Null` removes them).
async fn instance_update(
    ctx: &Ctx,
    collection: &str,
    id: &str,
    mut body: Value,
    limits: &LimitArgs,
    challenges: Option<Value>,
) -> anyhow::Result<()> {
    // Limits, TLS and challenge routes live in the grants, which a PATCH
    // replaces as a whole, but no grant flag sets them: keep the
    // instance's current ones (changed by the limit and challenge flags
    // given), whether or not grant flags replace its hosts and
    // directories.
    if let Value::Object(fields) = &mut body
        && (!limits.is_empty() || challenges.is_some() || fields.contains_key("grants"))
    {
        let current = ctx
            .client
            .get(&format!("/{collection}/{}", seg(id)), &[])
            .await?
            .json
            .unwrap_or(Value::Null);
        let mut grants = match (fields.remove("grants"), current.get("grants")) {
            (Some(Value::Object(new)), _) => new,
            (_, Some(Value::Object(old))) => old.clone(),
            _ => Map::new(),
        };
        if let Some(Value::Object(old)) = current.get("grants") {
            for kept in KEPT_GRANTS {
                if let Some(value) = old.get(kept) {
                    grants.insert(kept.into(), value.clone());
                }
            }
        }
        limits.apply(&mut grants);
        match challenges {
            Some(Value::Null) => {
                grants.remove("challenges");
            }
            Some(routes) => {
                grants.insert("challenges".into(), routes);
            }
            None => {}
        }
        if grants
            .get("limits")
            .is_some_and(|l| l.as_object().is_some_and(Map::is_empty))
        {
            grants.remove("limits");
        }
        fields.insert("grants".into(), Value::Object(grants));
    }
    let reply = ctx
        .client
        .send(
            hyper::Method::PATCH,
            &format!("/{collection}/{}", seg(id)),
            &[],
            Some(&body),
        )
        .await?;
    ctx.show_fields(reply, &[]);
    Ok(())
}

/// The parts of an instance's grants no grant flag sets, kept by an update.
const KEPT_GRANTS: [&str; 3] = ["limits", "tls", "challenges"];

/// `DELETE /<collection>/{id}` (a soft retire): `<what> <id> is retired
/// since <time>`, or the retired resource as JSON.
async fn instance_delete(ctx: &Ctx, collection: &str, what: &str, id: &str) -> anyhow::Result<()> {
    let reply = ctx
        .client
        .delete(&format!("/{collection}/{}", seg(id)), &[])
        .await?;
    ctx.show(reply, |v| {
        format!(
            "{what} {id} is retired since {}\n",
            output::cell(v.get("retired_at"))
        )
    });
    Ok(())
}

async fn issuers(ctx: &Ctx, action: IssuersAction) -> anyhow::Result<()> {
    match action {
        IssuersAction::List { page } => ctx.list("/issuers", &page.query(), INSTANCE_COLUMNS).await,
        IssuersAction::Get { id } => instance_get(ctx, "issuers", &id).await,
        IssuersAction::Create {
            instance,
            challenges,
        } => {
            let mut body = instance_body(&instance, &[])?;
            if let (Some(routes), Some(Value::Object(grants))) =
                (challenges.routes()?, body.get_mut("grants"))
            {
                grants.insert("challenges".into(), routes);
            }
            instance_create(ctx, "issuers", body).await
        }
        IssuersAction::Update {
            id,
            update,
            challenges,
            no_challenges,
        } => {
            let routes = if no_challenges {
                Some(Value::Null)
            } else {
                challenges.routes()?
            };
            let body = update_body_with(&update, &[], routes.is_some())?;
            instance_update(ctx, "issuers", &id, body, &update.limits, routes).await
        }
        IssuersAction::Delete { id } => instance_delete(ctx, "issuers", "issuer", &id).await,
    }
}

async fn dns_solvers(ctx: &Ctx, action: DnsSolversAction) -> anyhow::Result<()> {
    match action {
        DnsSolversAction::List { page } => {
            ctx.list("/dns-solvers", &page.query(), INSTANCE_COLUMNS)
                .await
        }
        DnsSolversAction::Get { id } => instance_get(ctx, "dns-solvers", &id).await,
        DnsSolversAction::Create { instance } => {
            instance_create(ctx, "dns-solvers", instance_body(&instance, &[])?).await
        }
        DnsSolversAction::Update { id, update } => {
            instance_update(
                ctx,
                "dns-solvers",
                &id,
                update_body(&update, &[])?,
                &update.limits,
                None,
            )
            .await
        }
        DnsSolversAction::Delete { id } => {
            instance_delete(ctx, "dns-solvers", "dns-solver", &id).await
        }
    }
}

async fn notifiers(ctx: &Ctx, action: NotifiersAction) -> anyhow::Result<()> {
    match action {
        NotifiersAction::List { page } => {
            ctx.list("/notifiers", &page.query(), INSTANCE_COLUMNS)
                .await
        }
        NotifiersAction::Get { id } => instance_get(ctx, "notifiers", &id).await,
        NotifiersAction::Create { instance } => {
            instance_create(ctx, "notifiers", instance_body(&instance, &[])?).await
        }
        NotifiersAction::Update { id, update } => {
            instance_update(
                ctx,
                "notifiers",
                &id,
                update_body(&update, &[])?,
                &update.limits,
                None,
            )
            .await
        }
        NotifiersAction::Delete { id } => instance_delete(ctx, "notifiers", "notifier", &id).await,
        NotifiersAction::Disable { id } => {
            let reply = ctx.client.disable_notifier(&id).await?;
            ctx.show_fields(reply, &[]);
            Ok(())
        }
        NotifiersAction::Enable { id } => {
            let reply = ctx.client.enable_notifier(&id).await?;
            ctx.show_fields(reply, &[]);
            Ok(())
        }
        NotifiersAction::CancelPending { id } => {
            let reply = ctx.client.cancel_notifier_notifications(&id).await?;
            ctx.show(reply, |body| {
                format!(
                    "cancelled {} pending notification(s) of notifier {id}; {} being sent will \
                     not be retried\n",
                    output::cell(Some(&body["cancelled"])),
                    output::cell(Some(&body["in_flight"])),
                )
            });
            Ok(())
        }
    }
}

async fn targets(ctx: &Ctx, action: TargetsAction) -> anyhow::Result<()> {
    match action {
        TargetsAction::List {
            page,
            include_retired,
        } => {
            let mut q = page.query();
            if include_retired {
                q.push(("include_retired", "true".into()));
            }
            ctx.list("/targets", &q, TARGET_COLUMNS).await
        }
        TargetsAction::Get { id } => instance_get(ctx, "targets", &id).await,
        TargetsAction::Create {
            instance,
            agent,
            grant_dirs,
            grant_actions,
        } => {
            let mut body = instance_body(&instance, &grant_dirs)?;
            with_actions(&mut body, &grant_actions);
            if let Some(agent) = agent {
                body.insert("agent_id".into(), json!(agent));
            }
            instance_create(ctx, "targets", body).await
        }
        TargetsAction::Update {
            id,
            update,
            grant_dirs,
            grant_actions,
        } => {
            let mut body = update_body_with(&update, &grant_dirs, !grant_actions.is_empty())?;
            if !grant_actions.is_empty()
                && let Value::Object(map) = &mut body
            {
                if !map.contains_key("grants") {
                    map.insert(
                        "grants".into(),
                        grants_of(&update.grant_hosts, &grant_dirs)?,
                    );
                }
                with_actions(map, &grant_actions);
            }
            instance_update(ctx, "targets", &id, body, &update.limits, None).await
        }
        TargetsAction::Delete { id } => instance_delete(ctx, "targets", "target", &id).await,
    }
}

async fn notifications(ctx: &Ctx, action: NotificationsAction) -> anyhow::Result<()> {
    match action {
        NotificationsAction::List {
            page,
            status,
            notifier,
        } => {
            let q = query_of(&page, &[("status", status), ("notifier_id", notifier)]);
            ctx.list("/notifications", &q, NOTIFICATION_COLUMNS).await
        }
        NotificationsAction::Get { id } => {
            let reply = ctx
                .client
                .get(&format!("/notifications/{}", seg(&id)), &[])
                .await?;
            ctx.show_fields(reply, &[]);
            Ok(())
        }
    }
}

/// A certificate detail: its fields, then its versions as a table.
fn certificate_detail(body: &Value) -> String {
    let mut out = output::fields(body, &["versions"]);
    let versions = body["versions"].as_array().cloned().unwrap_or_default();
    if !versions.is_empty() {
        out.push('\n');
        out.push_str(&output::table(VERSION_COLUMNS, &versions));
    }
    out
}

async fn certs(ctx: &Ctx, action: CertsAction) -> anyhow::Result<()> {
    match action {
        CertsAction::List {
            page,
            status,
            expiring_within_days,
            include_retired,
        } => {
            let include_retired = include_retired || status.as_deref() == Some("retired");
            let q = query_of(
                &page,
                &[
                    ("status", status),
                    (
                        "expiring_within_days",
                        expiring_within_days.map(|d| d.to_string()),
                    ),
                    (
                        "include_retired",
                        include_retired.then(|| "true".to_owned()),
                    ),
                ],
            );
            ctx.list("/certificates", &q, CERT_COLUMNS).await
        }
        CertsAction::Get { id } => {
            let reply = ctx
                .client
                .get(&format!("/certificates/{}", seg(&id)), &[])
                .await?;
            ctx.show(reply, certificate_detail);
            Ok(())
        }
        CertsAction::Create {
            name,
            cn,
            sans,
            issuer,
            targets,
            key_type,
            key_source,
            renew_before_days,
            owner,
        } => {
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
            body.insert("common_name".into(), json!(cn));
            body.insert("sans".into(), json!(sans));
            body.insert("issuer_id".into(), json!(issuer));
            body.insert("target_ids".into(), json!(targets));
            let optional = [
                ("key_type", key_type.map(Value::from)),
                ("key_source", key_source.map(Value::from)),
                ("renew_before_days", renew_before_days.map(Value::from)),
                ("owner", owner.map(Value::from)),
            ];
            for (k, v) in optional {
                if let Some(v) = v {
                    body.insert(k.into(), v);
                }
            }
            let reply = ctx
                .client
                .post("/certificates", Some(&Value::Object(body)))
                .await?;
            ctx.show_fields(reply, &[]);
            Ok(())
        }
        CertsAction::Import { file } => {
            let items = import::read_items(&file)?;
            import::import(ctx, items).await
        }
        CertsAction::Renew {
            id: None,
            issuer,
            owner,
            all,
        } => {
            let body = json!({ "issuer_id": issuer, "owner": owner, "all": all });
            let reply = ctx.client.post("/certificates/renew", Some(&body)).await?;
            ctx.show(reply, |v| {
                format!(
                    "{} certificates due now; the renewal sweep is issuing them\n\
                     {} more were being issued already; that issuance renews them\n",
                    output::cell(v.get("renewing")),
                    output::cell(v.get("under_way"))
                )
            });
            Ok(())
        }
        CertsAction::Renew { id: Some(id), .. } => {
            let reply = ctx
                .client
                .post(&format!("/certificates/{}/renew", seg(&id)), None)
                .await?;
            ctx.show(reply, |v| {
                format!(
                    "renewal of {id} requested (due {})\n",
                    output::cell(v.get("renew_at"))
                )
            });
            Ok(())
        }
        CertsAction::Revoke { id, reason } => {
            let body = match reason {
                Some(r) => json!({ "reason": r }),
                None => json!({}),
            };
            let reply = ctx
                .client
                .post(&format!("/certificates/{}/revoke", seg(&id)), Some(&body))
                .await?;
            ctx.show_fields(reply, &[]);
            Ok(())
        }
        CertsAction::Update {
            id,
            status,
            renew_before_days,
            owner,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(s) = status {
                body.insert("status".into(), json!(s));
            }
            if let Some(d) = renew_before_days {
                body.insert("renew_before_days".into(), json!(d));
            }
            if let Some(o) = owner {
                body.insert(
                    "owner".into(),
                    if o.is_empty() { Value::Null } else { json!(o) },
                );
            }
            let reply = ctx
                .client
                .send(
                    hyper::Method::PATCH,
                    &format!("/certificates/{}", seg(&id)),
                    &[],
                    Some(&Value::Object(body)),
                )
                .await?;
            ctx.show_fields(reply, &[]);
            Ok(())
        }
        CertsAction::Retire { id } => {
            let reply = ctx
                .client
                .delete(&format!("/certificates/{}", seg(&id)), &[])
                .await?;
            ctx.show(reply, |v| {
                format!(
                    "certificate {id} is retired since {}\n",
                    output::cell(v.get("retired_at"))
                )
            });
            Ok(())
        }
    }
}

async fn jobs(ctx: &Ctx, action: JobsAction) -> anyhow::Result<()> {
    match action {
        JobsAction::List {
            page,
            status,
            job_type,
            certificate,
            agent,
        } => {
            let q = query_of(
                &page,
                &[
                    ("status", status),
                    ("job_type", job_type),
                    ("certificate_id", certificate),
                    ("agent_id", agent),
                ],
            );
            ctx.list("/jobs", &q, JOB_COLUMNS).await
        }
        JobsAction::Get { id } => {
            let reply = ctx.client.get(&format!("/jobs/{}", seg(&id)), &[]).await?;
            ctx.show_fields(reply, &[]);
            Ok(())
        }
        JobsAction::Cancel { id, reason } => {
            let body = reason.map(|r| json!({ "reason": r }));
            let reply = ctx
                .client
                .post(&format!("/jobs/{}/cancel", seg(&id)), body.as_ref())
                .await?;
            ctx.show_fields(reply, &[]);
            Ok(())
        }
        JobsAction::Retry { id } => {
            let reply = ctx
                .client
                .post(&format!("/jobs/{}/retry", seg(&id)), None)
                .await?;
            ctx.show_fields(reply, &[]);
            Ok(())
        }
        JobsAction::Verification { id } => {
            let reply = ctx
                .client
                .get(&format!("/jobs/{}/verification", seg(&id)), &[])
                .await?;
            ctx.show_fields(reply, &[]);
            Ok(())
        }
        JobsAction::Verify { id } => {
            let reply = ctx
                .client
                .post(&format!("/jobs/{}/verify", seg(&id)), None)
                .await?;
            ctx.show(reply, |v| {
                format!(
                    "verification job {} queued for deployment {id}\n",
                    output::cell(v.get("id"))
                )
            });
            Ok(())
        }
    }
}

async fn agents(ctx: &Ctx, action: AgentsAction) -> anyhow::Result<()> {
    match action {
        AgentsAction::List {
            page,
            include_retired,
        } => {
            let mut q = page.query();
            if include_retired {
                q.push(("include_retired", "true".into()));
            }
            ctx.list("/agents", &q, AGENT_COLUMNS).await
        }
        AgentsAction::Retired { page } => {
            ctx.list("/agents/retired", &page.query(), AGENT_COLUMNS)
                .await
        }
        AgentsAction::Get { id } => {
            let reply = ctx
                .client
                .get(&format!("/agents/{}", seg(&id)), &[])
                .await?;
            ctx.show(reply, |v| {
                let mut out = output::fields(v, &["dependencies"]);
                out.push_str(&output::fields(&v["dependencies"], &[]));
                out
            });
            Ok(())
        }
        AgentsAction::Retire {
            id,
            force,
            reason,
            move_to_target,
        } => {
            let mut q = Vec::new();
            if force {
                q.push(("force", "true".to_owned()));
            }
            if let Some(r) = reason {
                q.push(("reason", r));
            }
            if let Some(t) = move_to_target {
                q.push(("move_to_target", t));
            }
            let reply = ctx
                .client
                .delete(&format!("/agents/{}", seg(&id)), &q)
                .await?;
            // The answer is the agent as retired, the same on a repeat.
            ctx.show(reply, |v| {
                format!(
                    "agent {id} is retired since {}\n",
                    output::cell(v.get("retired_at"))
                )
            });
            Ok(())
        }
    }
}

async fn audit(ctx: &Ctx, action: AuditAction) -> anyhow::Result<()> {
    match action {
        AuditAction::List {
            page,
            subject_type,
            subject_id,
            actor,
            since,
            until,
        } => {
            let q = query_of(
                &page,
                &[
                    ("subject_type", subject_type),
                    ("subject_id", subject_id),
                    ("actor", actor),
                    ("since", since),
                    ("until", until),
                ],
            );
            ctx.list("/audit", &q, AUDIT_COLUMNS).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_grants_parse() {
        assert_eq!(
            dir_grant("/srv/certs:/out:rw").unwrap(),
            json!({"path": "/srv/certs", "guest_path": "/out", "writable": true})
        );
        assert_eq!(dir_grant("/a:/b").unwrap()["writable"], json!(false));
        assert_eq!(dir_grant("/a:/b:ro").unwrap()["writable"], json!(false));
        // Split from the right: the host path may hold colons.
        assert_eq!(
            dir_grant("/mnt/c:/x:y:/out:rw").unwrap(),
            json!({"path": "/mnt/c:/x:y", "guest_path": "/out", "writable": true})
        );
        assert_eq!(
            dir_grant("/data:rw:/out").unwrap(),
            json!({"path": "/data:rw", "guest_path": "/out", "writable": false})
        );
        for bad in ["/a", "/a:rw", ":/b", "/a:/b:x", "/a:b", "/a:/b:rw:x", ""] {
            assert!(dir_grant(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_are_given_once() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let err = secrets_of(&s(&["k=a", "k=b"]), &[])
            .unwrap_err()
            .to_string();
        assert_eq!(err, "secret k is given twice");
        let map = secrets_of(&s(&["k=a=b", "j="]), &[]).unwrap();
        assert_eq!(Value::Object(map), json!({"k": "a=b", "j": ""}));
    }

    #[test]
    fn limit_flags_go_into_the_grants_and_keep_other_limits() {
        let args = InstanceArgs {
            name: "n".into(),
            plugin: "p".into(),
            settings: "{}".into(),
            secrets: vec![],
            secret_files: vec![],
            grant_hosts: vec![],
            limits: LimitArgs {
                deadline_secs: Some(5),
                memory_mib: None,
                concurrency: Some(2),
            },
        };
        let body = instance_body(&args, &[]).unwrap();
        assert_eq!(
            body["grants"],
            json!({"hosts": [], "directories": [], "limits": {"deadline_secs": 5, "concurrency": 2}})
        );
        let mut current =
            json!({"hosts": ["https://a:443"], "limits": {"memory_mib": 16, "concurrency": 8}});
        LimitArgs {
            concurrency: Some(1),
            ..LimitArgs::default()
        }
        .apply(current.as_object_mut().unwrap());
        assert_eq!(
            current,
            json!({"hosts": ["https://a:443"], "limits": {"memory_mib": 16, "concurrency": 1}})
        );
        let plain = InstanceArgs {
            limits: LimitArgs::default(),
            ..args
        };
        assert!(
            instance_body(&plain, &[]).unwrap()["grants"]
                .get("limits")
                .is_none()
        );
    }

    #[test]
    fn update_bodies_hold_only_what_is_given() {
        let args = UpdateArgs {
            settings: None,
            secrets: vec!["a=1".into()],
            secret_files: vec![],
            remove_secrets: vec!["b".into()],
            grant_hosts: vec![],
            clear_grants: false,
            limits: LimitArgs::default(),
        };
        assert_eq!(
            update_body(&args, &[]).unwrap(),
            json!({"secrets": {"a": "1", "b": null}})
        );
        let clear = UpdateArgs {
            secrets: vec![],
            remove_secrets: vec![],
            clear_grants: true,
            ..args.clone()
        };
        assert_eq!(
            update_body(&clear, &[]).unwrap(),
            json!({"grants": {"hosts": [], "directories": []}})
        );
        let both = UpdateArgs {
            remove_secrets: vec!["a".into()],
            ..args.clone()
        };
        assert_eq!(
            update_body(&both, &[]).unwrap_err().to_string(),
            "secret a is given twice"
        );
        let nothing = UpdateArgs {
            secrets: vec![],
            remove_secrets: vec![],
            ..args
        };
        assert!(
            update_body(&nothing, &[])
                .unwrap_err()
                .to_string()
                .starts_with("nothing to update")
        );
    }

    #[test]
    fn action_flags_name_actions_in_the_grants() {
        let mut body = Map::new();
        body.insert("grants".into(), grants_of(&[], &[]).unwrap());
        with_actions(&mut body, &["nginx-test".into(), "nginx-reload".into()]);
        assert_eq!(
            Value::Object(body),
            json!({"grants": {"hosts": [], "directories": [],
                "actions": ["nginx-test", "nginx-reload"]}})
        );
        let mut untouched = Map::new();
        untouched.insert("grants".into(), grants_of(&[], &[]).unwrap());
        with_actions(&mut untouched, &[]);
        assert!(untouched["grants"].get("actions").is_none());
    }

    #[test]
    fn challenge_flags_become_routes() {
        assert_eq!(ChallengeArgs::default().routes().unwrap(), None);
        let args = ChallengeArgs {
            dns_01: vec!["example.com=s1".into(), "dev.example.com=s2".into()],
            http_01_host: true,
            http_01_agent: false,
        };
        assert_eq!(
            args.routes().unwrap(),
            Some(json!({"http_01": "host", "dns_01": [
                {"zone": "example.com", "solver": "s1"},
                {"zone": "dev.example.com", "solver": "s2"},
            ]}))
        );
        let agent = ChallengeArgs {
            http_01_agent: true,
            ..ChallengeArgs::default()
        };
        assert_eq!(agent.routes().unwrap(), Some(json!({"http_01": "agent"})));
        for bad in ["example.com", "=s1", "example.com="] {
            let args = ChallengeArgs {
                dns_01: vec![bad.into()],
                http_01_host: false,
                http_01_agent: false,
            };
            assert!(
                args.routes()
                    .unwrap_err()
                    .to_string()
                    .contains("ZONE=SOLVER_ID"),
                "{bad}"
            );
        }
    }

    #[test]
    fn ids_are_escaped_in_paths() {
        assert_eq!(seg("abc-1"), "abc-1");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
    }
}
