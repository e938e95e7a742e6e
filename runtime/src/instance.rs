//! Plugin instances (plugin + operator settings, secrets, grants, limits)
//! and the per-call machinery: a fresh store and instance per call, the
//! deadline and memory cap, and the classification of whatever went wrong
//! into a [`CallError`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};
use wasmtime_wasi_http::WasiHttpCtx;

use crate::bindings::dns_solver::exports::certplane::connector::dns_solver_api::TxtRecord;
use crate::bindings::issuer::exports::certplane::connector::issuer_api::{
    CertificateRequest, IssueResult, Order, RevocationRequest,
};
use crate::bindings::lifecycle::exports::certplane::connector::issuer_lifecycle::RenewalInfo;
use crate::bindings::notifier::exports::certplane::connector::notifier_api::Event;
use crate::bindings::target::exports::certplane::connector::target_api::{
    CertificateBundle, DeployResult,
};
use crate::bindings::types::{ConnectorError, PluginInfo};
use crate::bounds::{GuestOutput, Redactor};
use crate::call_state::{CallState, LogBudget};
use crate::context::{CallContext, CallEffects, CallScope};
use crate::egress::EgressHooks;
use crate::error::{CallError, ConfigError};
use crate::grants::{DirGrant, Grants, HostGrants};
use crate::limits::{Limits, MAX_DEADLINE, MemoryBudget, MemoryLimiter};
use crate::manifest::{FilesystemAccess, PluginKind};
use crate::plugin::{Plugin, PluginPre};

/// Guest stdout/stderr kept per call, for crash reports.
const CAPTURED_OUTPUT: usize = 16 * 1024;

/// A secret value. Its `Debug` output is redacted so secrets never reach logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Operator configuration of one plugin instance.
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    /// Host-side id of the instance (shows in logs).
    pub instance_id: String,
    /// Settings, a JSON object served through `config`.
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// Secrets served through `config.get-secret`.
    pub secrets: BTreeMap<String, Secret>,
    /// HTTP destinations and directories granted.
    pub grants: Grants,
    /// Limits overriding the manifest's defaults.
    pub limits: Option<Limits>,
    /// Trust roots and client certificate for this instance's HTTPS.
    pub tls: InstanceTls,
}

/// Per-instance TLS for a connector's outgoing HTTPS: extra trust roots
/// (a private CA's API, a test server) on top of the runtime's, and a
/// client certificate for upstreams that authenticate with one. Neither
/// reaches any other instance.
#[derive(Debug, Clone, Default)]
pub struct InstanceTls {
    /// PEM certificates trusted besides the runtime's roots.
    pub extra_roots_pem: Vec<String>,
    /// Client certificate chain, PEM (leaf first).
    pub client_cert_pem: Option<String>,
    /// The client certificate's private key, PEM.
    pub client_key_pem: Option<Secret>,
}

impl InstanceTls {
    fn is_default(&self) -> bool {
        self.extra_roots_pem.is_empty()
            && self.client_cert_pem.is_none()
            && self.client_key_pem.is_none()
    }
}

impl InstanceConfig {
    /// An instance with no settings, secrets or grants and default limits.
    pub fn new(instance_id: impl Into<String>) -> Self {
        InstanceConfig {
            instance_id: instance_id.into(),
            settings: serde_json::Map::new(),
            secrets: BTreeMap::new(),
            grants: Grants::default(),
            limits: None,
            tls: InstanceTls::default(),
        }
    }

    /// Sets this instance's trust roots and client certificate.
    pub fn with_tls(mut self, tls: InstanceTls) -> Self {
        self.tls = tls;
        self
    }

    /// Sets settings from a JSON value, which must be an object.
    pub fn with_settings(mut self, settings: serde_json::Value) -> Result<Self, ConfigError> {
        match settings {
            serde_json::Value::Object(map) => {
                self.settings = map;
                Ok(self)
            }
            _ => Err(ConfigError::Settings),
        }
    }

    /// Adds one secret.
    pub fn with_secret(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.secrets.insert(name.into(), Secret::new(value));
        self
    }

    /// Grants HTTP destinations (grant syntax, see [`crate::HostGrant`]).
    pub fn with_hosts<S: AsRef<str>>(mut self, hosts: &[S]) -> Result<Self, ConfigError> {
        self.grants.hosts = HostGrants::parse(hosts)?;
        Ok(self)
    }

    /// Grants a directory.
    pub fn with_dir(
        mut self,
        host_path: impl Into<std::path::PathBuf>,
        guest_path: impl Into<String>,
        writable: bool,
    ) -> Self {
        self.grants.directories.push(DirGrant {
            host_path: host_path.into(),
            guest_path: guest_path.into(),
            writable,
            known_as: None,
        });
        self
    }

    /// Grants the directory held open at `handle_path` (`/proc/self/fd/N`),
    /// known on this machine as `known_as` (what `context.host-path`
    /// answers), at `guest_path`.
    pub fn with_held_dir(
        mut self,
        handle_path: impl Into<std::path::PathBuf>,
        known_as: impl Into<std::path::PathBuf>,
        guest_path: impl Into<String>,
        writable: bool,
    ) -> Self {
        self.grants.directories.push(DirGrant {
            host_path: handle_path.into(),
            guest_path: guest_path.into(),
            writable,
            known_as: Some(known_as.into()),
        });
        self
    }

    /// Overrides the limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }
}

/// A plugin bound to one operator configuration. Every call instantiates
/// the component afresh, so calls share no guest state.
#[derive(Debug, Clone)]
pub struct PluginInstance {
    plugin: Arc<Plugin>,
    id: Arc<str>,
    settings: Arc<serde_json::Map<String, serde_json::Value>>,
    secrets: Arc<BTreeMap<String, Secret>>,
    hosts: Arc<HostGrants>,
    directories: Arc<[DirGrant]>,
    actions: Arc<BTreeMap<String, crate::actions::ActionSpec>>,
    limits: Limits,
    /// Built once from `secrets`; applied to every error and log line.
    redactor: Arc<Redactor>,
    /// This instance's own TLS client configuration, when it has extra
    /// roots or a client certificate; else the runtime's.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl PluginInstance {
    /// Checks `config` against the plugin's manifest and the runtime's
    /// ceilings and binds it to `plugin`.
    pub fn new(plugin: Arc<Plugin>, config: InstanceConfig) -> Result<Self, ConfigError> {
        let runtime_cfg = plugin.runtime.config();
        let limits = config
            .limits
            .unwrap_or_else(|| plugin.manifest.default_limits(runtime_cfg.default_limits));
        if limits.memory_bytes > runtime_cfg.max_memory_bytes {
            return Err(ConfigError::Limit(format!(
                "memory cap {} bytes exceeds this runtime's ceiling of {} bytes",
                limits.memory_bytes, runtime_cfg.max_memory_bytes
            )));
        }
        if limits.deadline.is_zero() || limits.memory_bytes == 0 {
            return Err(ConfigError::Limit(
                "limits must be greater than zero".into(),
            ));
        }
        if !plugin.runtime.inner.budget.fits(limits.memory_bytes) {
            // Such an instance could never start a call: refuse it now
            // rather than let its calls wait forever.
            return Err(ConfigError::Limit(format!(
                "memory cap {} bytes exceeds this runtime's global memory budget of {} bytes",
                limits.memory_bytes,
                plugin.runtime.memory_budget().total_bytes
            )));
        }
        if limits.deadline > MAX_DEADLINE {
            return Err(ConfigError::Limit(format!(
                "deadline {:?} exceeds the maximum of {MAX_DEADLINE:?}",
                limits.deadline
            )));
        }
        let fs = plugin.manifest.capabilities.filesystem;
        for dir in &config.grants.directories {
            dir.validate()?;
            let allowed = match fs {
                FilesystemAccess::None => false,
                FilesystemAccess::ReadOnly => !dir.writable,
                FilesystemAccess::ReadWrite => true,
            };
            if !allowed {
                return Err(ConfigError::Directory {
                    path: dir.host_path.clone(),
                    reason: format!(
                        "plugin {} requests filesystem access {:?}; this grant asks for more",
                        plugin.name(),
                        fs
                    ),
                });
            }
        }
        if !config.grants.actions.is_empty() && plugin.kind() != crate::PluginKind::Target {
            return Err(ConfigError::Action {
                name: config
                    .grants
                    .actions
                    .keys()
                    .next()
                    .cloned()
                    .unwrap_or_default(),
                reason: format!(
                    "plugin {} is not a target; only targets run actions",
                    plugin.name()
                ),
            });
        }
        for (name, spec) in &config.grants.actions {
            spec.validate(name)?;
        }
        let tls = if config.tls.is_default() {
            None
        } else {
            let mut roots = runtime_cfg.extra_roots_pem.clone();
            roots.extend(config.tls.extra_roots_pem.iter().cloned());
            let client = match (&config.tls.client_cert_pem, &config.tls.client_key_pem) {
                (Some(cert), Some(key)) => Some((cert.as_str(), key.expose())),
                (None, None) => None,
                _ => {
                    return Err(ConfigError::Tls(
                        "a client certificate needs both the certificate and its key".into(),
                    ));
                }
            };
            let config = crate::engine::tls_config(&roots, client)
                .map_err(|e| ConfigError::Tls(e.to_string()))?;
            Some(Arc::new(config))
        };
        Ok(PluginInstance {
            tls,
            redactor: Arc::new(Redactor::new(&config.secrets)),
            id: Arc::from(config.instance_id.as_str()),
            settings: Arc::new(config.settings),
            secrets: Arc::new(config.secrets),
            hosts: Arc::new(config.grants.hosts),
            directories: config.grants.directories.into(),
            actions: Arc::new(config.grants.actions),
            limits,
            plugin,
        })
    }

    /// The plugin.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// The instance id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn new_store(
        &self,
        context: Arc<CallContext>,
    ) -> Result<(Store<CallState>, MemoryOutputPipe), CallError> {
        let output = MemoryOutputPipe::new(CAPTURED_OUTPUT);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(output.clone()).stderr(output.clone());
        // File operations run on the call's own thread instead of a hop to
        // tokio's blocking pool and back for each one: a deployment makes
        // dozens (open, write, sync, rename per file), and the thread
        // wake-ups cost more than the operations (measured: a third of the
        // host's CPU in a mass issuance went to waking threads). On the
        // host, calls run on their own plugin threads (engine/plugin_exec),
        // which exist to be held by guests; on an agent, the runtime serves
        // only that agent. The cost: a file operation that hangs in the
        // kernel (a dead NFS mount) holds its thread past the call's
        // deadline, as it would hold a blocking-pool thread.
        wasi.allow_blocking_current_thread(true);
        for dir in self.directories.iter() {
            let perms = if dir.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            wasi.preopened_dir(&dir.host_path, &dir.guest_path, perms)
                .map_err(|e| CallError::Instantiate {
                    plugin: self.plugin.name().to_string(),
                    message: format!(
                        "cannot open granted directory {}: {e}",
                        dir.host_path.display()
                    ),
                })?;
        }
        let denials = Arc::new(Mutex::new(Vec::new()));
        let state = CallState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: EgressHooks {
                plugin: self.plugin.name.clone(),
                instance: self.id.clone(),
                grants: self.hosts.clone(),
                tls: self
                    .tls
                    .clone()
                    .unwrap_or_else(|| self.plugin.runtime.inner.tls.clone()),
                denials: denials.clone(),
                redactor: self.redactor.clone(),
            },
            limiter: MemoryLimiter::new(self.limits.memory_bytes),
            settings: self.settings.clone(),
            secrets: self.secrets.clone(),
            keys: self.plugin.runtime.inner.keys.clone(),
            plugin: self.plugin.name.clone(),
            instance: self.id.clone(),
            denials,
            started: Instant::now(),
            deadline: self.limits.deadline,
            deadline_hit: false,
            actions: self.actions.clone(),
            redactor: self.redactor.clone(),
            log_budget: LogBudget::new(
                self.plugin.name.clone(),
                self.id.clone(),
                self.plugin.runtime.inner.config.max_log_lines,
                self.plugin.runtime.inner.config.max_log_bytes,
            ),
            scope: CallScope::new(context, self.directories.clone()),
            _ticking: self.plugin.runtime.inner.ticker.running(),
        };
        let mut store = Store::new(&self.plugin.runtime.inner.engine, state);
        store.limiter(|s| &mut s.limiter);
        let deadline = self.limits.deadline;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut ctx| {
            if ctx.data().started.elapsed() >= deadline {
                ctx.data_mut().deadline_hit = true;
                Ok(UpdateDeadline::Interrupt)
            } else {
                // Yield each tick so a busy guest cannot starve other tasks
                // on the same tokio worker.
                Ok(UpdateDeadline::Yield(1))
            }
        });
        Ok((store, output))
    }

    fn wrong_kind(&self, wanted: PluginKind) -> CallError {
        CallError::WrongKind {
            plugin: self.plugin.name().to_string(),
            actual: self.plugin.kind(),
            wanted,
        }
    }

    /// Turns the raw outcome of one call into the runtime's result type:
    /// classifies failures, checks what the guest returned against the
    /// contract's bounds, and passes every error through [`Self::seal`].
    fn finish<R: GuestOutput>(
        &self,
        store: Store<CallState>,
        output: &MemoryOutputPipe,
        outcome: Result<wasmtime::Result<Result<R, ConnectorError>>, tokio::time::error::Elapsed>,
    ) -> Result<R, CallError> {
        let plugin = self.plugin.name().to_string();
        let state = store.data();
        let denials = std::mem::take(&mut *state.denials.lock().unwrap_or_else(|p| p.into_inner()));
        let elapsed = state.started.elapsed();
        let result = match outcome {
            Err(_) => Err(CallError::Deadline {
                plugin,
                deadline: self.limits.deadline,
            }),
            Ok(Err(_)) if state.deadline_hit => Err(CallError::Deadline {
                plugin,
                deadline: self.limits.deadline,
            }),
            Ok(Err(_)) if state.limiter.hit => Err(CallError::MemoryLimit {
                plugin,
                limit_bytes: self.limits.memory_bytes,
            }),
            Ok(Err(trap)) => Err(CallError::Trap {
                plugin,
                message: describe_trap(&trap, &output.contents(), &self.redactor),
            }),
            Ok(Ok(Err(error))) if !denials.is_empty() => Err(CallError::CapabilityDenied {
                plugin,
                denials,
                error: Some(error),
            }),
            Ok(Ok(Err(error))) => Err(CallError::Connector { plugin, error }),
            Ok(Ok(Ok(mut value))) => {
                if !denials.is_empty() {
                    tracing::warn!(plugin, instance = %self.id, ?denials, "plugin succeeded after denied requests");
                }
                match value.bound(&self.redactor) {
                    Ok(()) => Ok(value),
                    Err(message) => Err(CallError::Contract { plugin, message }),
                }
            }
        }
        .map_err(|e| self.seal(e));
        match &result {
            Ok(_) => {
                tracing::debug!(plugin = self.plugin.name(), instance = %self.id, elapsed_us = elapsed.as_micros() as u64, "plugin call ok")
            }
            Err(e) => {
                tracing::info!(plugin = self.plugin.name(), instance = %self.id, elapsed_us = elapsed.as_micros() as u64, error = %e, "plugin call failed")
            }
        }
        result
    }

    fn instantiate_error(&self, store: &Store<CallState>, e: wasmtime::Error) -> CallError {
        if store.data().limiter.hit {
            return CallError::MemoryLimit {
                plugin: self.plugin.name().to_string(),
                limit_bytes: self.limits.memory_bytes,
            };
        }
        self.seal(CallError::Instantiate {
            plugin: self.plugin.name().to_string(),
            message: format!("{e:#}"),
        })
    }

    /// Every error of a call leaves the runtime through here: guest text in
    /// it is redacted of the instance's secrets and cut to its bound.
    fn seal(&self, error: CallError) -> CallError {
        self.redactor.call_error(error)
    }

    /// Holds this instance's memory cap of the runtime's global budget for
    /// one call, waiting while running calls hold too much of it.
    async fn reserve_memory(&self) -> Result<tokio::sync::OwnedSemaphorePermit, CallError> {
        let budget = &self.plugin.runtime.inner.budget;
        budget
            .acquire(self.limits.memory_bytes)
            .await
            .ok_or_else(|| CallError::Instantiate {
                plugin: self.plugin.name().to_string(),
                message: format!(
                    "memory cap of {} MiB does not fit the runtime's memory budget",
                    MemoryBudget::mib_for(self.limits.memory_bytes)
                ),
            })
    }
}

/// Runs one export on a fresh instance of the right world: builds the
/// store with the call's context, instantiates from the plugin's
/// `InstancePre`, runs `$call` under the deadline and classifies the
/// outcome. `$call` evaluates to a future of
/// `wasmtime::Result<Result<R, ConnectorError>>`. Evaluates to the result
/// and the effects the call left (empty when it never ran).
macro_rules! call_export {
    ($self:ident, $ctx:expr, $kind:expr, $pre_pat:pat => $pre:expr,
     |$store:ident, $exports:ident| $call:expr) => {{
        async {
            let $pre_pat = &$self.plugin.pre else {
                return (Err($self.wrong_kind($kind)), CallEffects::default());
            };
            // Held until the call's store is gone (declared first, dropped last).
            let _budget = match $self.reserve_memory().await {
                Ok(permit) => permit,
                Err(e) => return (Err(e), CallEffects::default()),
            };
            let (mut store, output) = match $self.new_store($ctx) {
                Ok(made) => made,
                Err(e) => return (Err($self.seal(e)), CallEffects::default()),
            };
            let bindings = match $pre.instantiate_async(&mut store).await {
                Ok(b) => b,
                Err(e) => {
                    return (
                        Err($self.instantiate_error(&store, e)),
                        CallEffects::default(),
                    );
                }
            };
            let outcome = {
                let $store = &mut store;
                let $exports = &bindings;
                tokio::time::timeout($self.limits.deadline, $call).await
            };
            let effects = std::mem::take(&mut store.data_mut().scope.effects);
            ($self.finish(store, &output, outcome), effects)
        }
        .await
    }};
}

/// Describes a trap for humans: the trap itself plus the guest's last
/// output lines (a Rust panic prints its message there), redacted before
/// they are cut so a cut cannot leave part of a secret.
fn describe_trap(trap: &wasmtime::Error, output: &[u8], redactor: &Redactor) -> String {
    let mut message = match trap.downcast_ref::<wasmtime::Trap>() {
        Some(code) => code.to_string(),
        None => format!("{trap:#}"),
    };
    let text = String::from_utf8_lossy(output);
    // A full pipe may have cut a secret in two: redact a dangling prefix too.
    let text = if output.len() >= CAPTURED_OUTPUT {
        redactor.redact_truncated(&text)
    } else {
        redactor.redact(&text)
    };
    let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if !tail.is_empty() {
        let start = tail.len().saturating_sub(3);
        let mut said = tail[start..].join(" | ");
        if said.len() > 1024 {
            let mut cut = 1024;
            while !said.is_char_boundary(cut) {
                cut -= 1;
            }
            said.truncate(cut);
        }
        message.push_str(&format!(" (guest output: {said})"));
    }
    message
}

/// Wraps an infallible export result in the shape `finish` expects.
async fn infallible<T>(
    fut: impl Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<Result<T, ConnectorError>> {
    fut.await.map(Ok)
}

/// The context of calls made outside any job.
fn no_context() -> Arc<CallContext> {
    Arc::new(CallContext::default())
}

impl PluginInstance {
    /// Calls `describe()` on whichever world the plugin implements.
    pub async fn describe(&self) -> Result<PluginInfo, CallError> {
        let ctx = no_context();
        match self.plugin.kind() {
            PluginKind::Issuer => {
                call_export!(self, ctx, PluginKind::Issuer, PluginPre::Issuer(pre, _) => pre, |s, e| infallible(
                    e.certplane_connector_issuer_api().call_describe(s)
                ))
            }
            PluginKind::Target => {
                call_export!(self, ctx, PluginKind::Target, PluginPre::Target(pre) => pre, |s, e| infallible(
                    e.certplane_connector_target_api().call_describe(s)
                ))
            }
            PluginKind::Notifier => {
                call_export!(self, ctx, PluginKind::Notifier, PluginPre::Notifier(pre) => pre, |s, e| infallible(
                    e.certplane_connector_notifier_api().call_describe(s)
                ))
            }
            PluginKind::DnsSolver => {
                call_export!(self, ctx, PluginKind::DnsSolver, PluginPre::DnsSolver(pre) => pre, |s, e| infallible(
                    e.certplane_connector_dns_solver_api().call_describe(s)
                ))
            }
        }
        .0
    }

    /// Calls `validate-config()` on whichever world the plugin implements.
    pub async fn validate_config(&self) -> Result<(), CallError> {
        let ctx = no_context();
        match self.plugin.kind() {
            PluginKind::Issuer => call_export!(self, ctx, PluginKind::Issuer, PluginPre::Issuer(pre, _) => pre, |s, e| e
                .certplane_connector_issuer_api()
                .call_validate_config(s)),
            PluginKind::Target => call_export!(self, ctx, PluginKind::Target, PluginPre::Target(pre) => pre, |s, e| e
                .certplane_connector_target_api()
                .call_validate_config(s)),
            PluginKind::Notifier => call_export!(self, ctx, PluginKind::Notifier, PluginPre::Notifier(pre) => pre, |s, e| e
                .certplane_connector_notifier_api()
                .call_validate_config(s)),
            PluginKind::DnsSolver => call_export!(self, ctx, PluginKind::DnsSolver, PluginPre::DnsSolver(pre) => pre, |s, e| e
                .certplane_connector_dns_solver_api()
                .call_validate_config(s)),
        }
        .0
    }

    /// Issuer: asks the CA for a certificate (outside any job).
    pub async fn submit(&self, request: &CertificateRequest) -> Result<IssueResult, CallError> {
        self.submit_with(&CallContext::default(), request).await.0
    }

    /// Issuer: asks the CA for a certificate, with the job's context.
    pub async fn submit_with(
        &self,
        context: &CallContext,
        request: &CertificateRequest,
    ) -> (Result<IssueResult, CallError>, CallEffects) {
        call_export!(self, Arc::new(context.clone()), PluginKind::Issuer, PluginPre::Issuer(pre, _) => pre, |s, e| e
            .certplane_connector_issuer_api()
            .call_submit(s, request))
    }

    /// Issuer: checks a pending order once (outside any job).
    pub async fn poll(&self, order: &Order) -> Result<IssueResult, CallError> {
        self.poll_with(&CallContext::default(), order).await.0
    }

    /// Issuer: checks a pending order once, with the job's context.
    pub async fn poll_with(
        &self,
        context: &CallContext,
        order: &Order,
    ) -> (Result<IssueResult, CallError>, CallEffects) {
        call_export!(self, Arc::new(context.clone()), PluginKind::Issuer, PluginPre::Issuer(pre, _) => pre, |s, e| e
            .certplane_connector_issuer_api()
            .call_poll(s, order))
    }

    /// Issuer: revokes a certificate (outside any job).
    pub async fn revoke(&self, request: &RevocationRequest) -> Result<(), CallError> {
        self.revoke_with(&CallContext::default(), request).await.0
    }

    /// Issuer: revokes a certificate, with the job's context.
    pub async fn revoke_with(
        &self,
        context: &CallContext,
        request: &RevocationRequest,
    ) -> (Result<(), CallError>, CallEffects) {
        call_export!(self, Arc::new(context.clone()), PluginKind::Issuer, PluginPre::Issuer(pre, _) => pre, |s, e| e
            .certplane_connector_issuer_api()
            .call_revoke(s, request))
    }

    /// Issuer with `issuer-lifecycle`: the CA's suggested renewal window.
    /// `unsupported` when the issuer does not export the interface.
    pub async fn renewal_window(
        &self,
        context: &CallContext,
        certificate_pem: &str,
    ) -> (Result<Option<RenewalInfo>, CallError>, CallEffects) {
        let Some(lifecycle) = self.lifecycle() else {
            return (
                Err(self.no_lifecycle("renewal-window")),
                CallEffects::default(),
            );
        };
        call_export!(self, Arc::new(context.clone()), PluginKind::Issuer, PluginPre::Issuer(pre, _) => pre.instance_pre(), |s, instance| async {
            let guest = lifecycle.load(&mut *s, instance)?;
            guest.call_renewal_window(s, certificate_pem).await
        })
    }

    /// Issuer with `issuer-lifecycle`: gives up a pending order.
    pub async fn cancel_order(
        &self,
        context: &CallContext,
        order_id: &str,
        state: &str,
    ) -> (Result<(), CallError>, CallEffects) {
        let Some(lifecycle) = self.lifecycle() else {
            return (Err(self.no_lifecycle("cancel")), CallEffects::default());
        };
        call_export!(self, Arc::new(context.clone()), PluginKind::Issuer, PluginPre::Issuer(pre, _) => pre.instance_pre(), |s, instance| async {
            let guest = lifecycle.load(&mut *s, instance)?;
            guest.call_cancel(s, order_id, state).await
        })
    }

    fn lifecycle(
        &self,
    ) -> Option<
        &crate::bindings::lifecycle::exports::certplane::connector::issuer_lifecycle::GuestIndices,
    > {
        match &self.plugin.pre {
            PluginPre::Issuer(_, lifecycle) => lifecycle.as_ref(),
            _ => None,
        }
    }

    fn no_lifecycle(&self, what: &str) -> CallError {
        if self.plugin.kind() != PluginKind::Issuer {
            return self.wrong_kind(PluginKind::Issuer);
        }
        CallError::Connector {
            plugin: self.plugin.name().to_string(),
            error: ConnectorError::Unsupported(format!(
                "this issuer does not export issuer-lifecycle ({what})"
            )),
        }
    }

    /// Target: installs a certificate and its key.
    pub async fn deploy(
        &self,
        bundle: &CertificateBundle,
        key_pem: &str,
        options: &str,
    ) -> Result<DeployResult, CallError> {
        let ctx = Arc::new(CallContext {
            options: options.to_string(),
            ..CallContext::default()
        });
        call_export!(self, ctx, PluginKind::Target, PluginPre::Target(pre) => pre, |s, e| e
            .certplane_connector_target_api()
            .call_deploy(s, bundle, key_pem, options))
        .0
    }

    /// Target: removes what `deploy` installed for a certificate.
    pub async fn remove(
        &self,
        certificate_id: &str,
        options: &str,
    ) -> Result<Vec<String>, CallError> {
        let ctx = Arc::new(CallContext {
            options: options.to_string(),
            ..CallContext::default()
        });
        call_export!(self, ctx, PluginKind::Target, PluginPre::Target(pre) => pre, |s, e| e
            .certplane_connector_target_api()
            .call_remove(s, certificate_id, options))
        .0
    }

    /// Notifier: delivers one event.
    pub async fn notify(&self, event: &Event) -> Result<(), CallError> {
        call_export!(self, no_context(), PluginKind::Notifier, PluginPre::Notifier(pre) => pre, |s, e| e
            .certplane_connector_notifier_api()
            .call_notify(s, event))
        .0
    }

    /// DNS solver: publishes a TXT record.
    pub async fn present_txt(&self, record: &TxtRecord) -> Result<(), CallError> {
        call_export!(self, no_context(), PluginKind::DnsSolver, PluginPre::DnsSolver(pre) => pre, |s, e| e
            .certplane_connector_dns_solver_api()
            .call_present(s, record))
        .0
    }

    /// DNS solver: removes a TXT record.
    pub async fn cleanup_txt(&self, record: &TxtRecord) -> Result<(), CallError> {
        call_export!(self, no_context(), PluginKind::DnsSolver, PluginPre::DnsSolver(pre) => pre, |s, e| e
            .certplane_connector_dns_solver_api()
            .call_cleanup(s, record))
        .0
    }
}
