//! Executing the jobs a work poll hands out: CSRs for certificates awaiting
//! a key, deployments through target connectors, and verifications.
//!
//! Private keys are generated here and stay in the state directory; the
//! only code that sees one besides this module is the target connector the
//! deployment runs, inside the sandbox.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certplane_pki::keygen::{KeyType, generate_key_and_csr};
use certplane_pki::pem::{certificate_public_key_sha256, parse_certificates, split_pem};
use certplane_proto::ErrorClass;
use certplane_runtime::target::CertificateBundle;
use certplane_runtime::{CallError, InstanceConfig, Plugin, PluginKind};

use crate::config::AgentConfig;
use crate::grants;
use crate::hostapi::{
    AgentJob, HostApi, HostError, JobCertificate, JobCertificateVersion, JobReport, JobTarget,
    ReportVerification,
};
use crate::state::StateDir;
use certplane_probe::{self as verify, Endpoint, Verdict};

/// First pause before reporting a result again when the host is
/// unavailable; it doubles up to [`REPORT_RETRY_LAST`] (about 15 s in all).
const REPORT_RETRY_FIRST: Duration = Duration::from_millis(500);
/// Last pause before a result report is given up.
const REPORT_RETRY_LAST: Duration = Duration::from_secs(8);

/// What running one job amounted to, for the poll loop's pacing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The job moved on (CSR submitted, result reported).
    Done,
    /// Nothing could be done now (a CSR this agent cannot produce); the job
    /// stays with the host until its TTL runs out.
    Skipped,
}

/// Runs jobs for one registered agent.
pub struct Executor {
    config: Arc<AgentConfig>,
    state: StateDir,
    api: HostApi,
    plugins: BTreeMap<String, Arc<Plugin>>,
    /// AwaitingCSR jobs this agent could not serve; not retried in-process
    /// (they would be handed out again on every poll).
    unserved_csr: Mutex<HashSet<String>>,
}

/// A failed job: the class the host maps to retry or not, why, and the
/// connector's retry-after hint.
struct Failure {
    class: ErrorClass,
    message: String,
    retry_after_secs: Option<u32>,
}

impl Failure {
    fn of_class(class: ErrorClass, message: impl Into<String>) -> Failure {
        Failure {
            class,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    fn permanent(message: impl Into<String>) -> Failure {
        Failure::of_class(ErrorClass::Rejected, message)
    }

    fn transient(message: impl Into<String>) -> Failure {
        Failure::of_class(ErrorClass::Transient, message)
    }

    fn unsupported(message: impl Into<String>) -> Failure {
        Failure::of_class(ErrorClass::Unsupported, message)
    }

    /// A failed connector call, classed as the runtime classes it.
    fn of_call(err: &CallError) -> Failure {
        Failure {
            class: err.class(),
            message: err.to_string(),
            retry_after_secs: err
                .retry_after()
                .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
        }
    }

    fn report(self, attempt: i32) -> JobReport {
        JobReport::failure(attempt, self.class, self.message, self.retry_after_secs)
    }
}

impl Executor {
    /// An executor running `plugins` (target connectors by name).
    pub fn new(
        config: Arc<AgentConfig>,
        state: StateDir,
        api: HostApi,
        plugins: BTreeMap<String, Arc<Plugin>>,
    ) -> Executor {
        Executor {
            config,
            state,
            api,
            plugins,
            unserved_csr: Mutex::new(HashSet::new()),
        }
    }

    /// Runs one job to its end: submits the CSR, or reports the result.
    /// Host errors (retired, unauthorized, unavailable) are returned for the
    /// poll loop to act on; everything else ends up in the job's result.
    pub async fn execute(&self, job: AgentJob) -> Result<Progress, HostError> {
        match (job.status.as_str(), job.job_type.as_str()) {
            ("awaiting_csr", _) => self.serve_csr(&job).await,
            ("running", "deployment") => {
                let report = match self.deploy(&job).await {
                    Ok(report) => report,
                    Err(f) => f.report(job.attempt),
                };
                self.finish(&job, report).await
            }
            ("running", "verification") => {
                let report = match self.verify_again(&job).await {
                    Ok(report) => report,
                    Err(f) => f.report(job.attempt),
                };
                self.finish(&job, report).await
            }
            ("running", other) => {
                let report = Failure::unsupported(format!("agents do not run {other} jobs"))
                    .report(job.attempt);
                self.finish(&job, report).await
            }
            (status, _) => {
                tracing::warn!(job_id = %job.id, status, "ignoring a job in an unexpected state");
                Ok(Progress::Skipped)
            }
        }
    }

    async fn finish(&self, job: &AgentJob, report: JobReport) -> Result<Progress, HostError> {
        match &report.error {
            None => tracing::info!(job_id = %job.id, job_type = %job.job_type,
                changed = ?report.changed,
                verification = report.verification.as_ref().map(|v| v.status.as_str()),
                "job done"),
            Some(e) => tracing::warn!(job_id = %job.id, job_type = %job.job_type,
                class = %e.class, error = %e.message, "job failed"),
        }
        let mut delay = REPORT_RETRY_FIRST;
        loop {
            match self.api.report(&job.id, &report).await {
                Ok(()) => break,
                // The lease lapsed or the job was cancelled meanwhile: the
                // host has moved on (and will hand out a retry if any).
                Err(HostError::Refused(why)) => {
                    tracing::warn!(job_id = %job.id, %why, "the host refused the job's result");
                    break;
                }
                // A host restart is usually short: the work is done, so try
                // to hand in the result before giving it up (the lease then
                // lapses and the job is redone, idempotently).
                Err(HostError::Unavailable(why)) if delay <= REPORT_RETRY_LAST => {
                    tracing::warn!(job_id = %job.id, %why, retry_in_ms = delay.as_millis() as u64,
                        "cannot report the result yet");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => return Err(e),
            }
        }
        if let Err(e) = self.state.update_status(|s| s.jobs_done += 1) {
            tracing::warn!(error = %e, "cannot update the status file");
        }
        Ok(Progress::Done)
    }

    // ------------------------------------------------------------- CSR

    async fn serve_csr(&self, job: &AgentJob) -> Result<Progress, HostError> {
        if self.is_unserved(&job.id) {
            return Ok(Progress::Skipped);
        }
        let Some(cert) = job.certificate.clone() else {
            return Ok(self.unserved(job, "the job names no certificate"));
        };
        let key_type: KeyType = match cert.key_type.parse() {
            Ok(k) => k,
            Err(e) => return Ok(self.unserved(job, &e.to_string())),
        };
        let started = std::time::Instant::now();
        let generated = match generate(cert.clone(), key_type).await {
            Ok(g) => g,
            Err(e) => return Ok(self.unserved(job, &e)),
        };
        if let Err(e) = self.state.save_key(
            &cert.id,
            &generated.public_key_sha256,
            generated.private_key_pem.expose_secret(),
        ) {
            return Ok(self.unserved(job, &format!("cannot store the private key: {e}")));
        }
        tracing::info!(job_id = %job.id, certificate_id = %cert.id, key_type = key_type.as_str(),
            ms = started.elapsed().as_millis() as u64, "generated a private key and CSR");
        match self.api.submit_csr(&job.id, &generated.csr_pem).await {
            Ok(()) => Ok(Progress::Done),
            Err(HostError::Refused(why)) => Ok(self.unserved(job, &why)),
            Err(e) => Err(e),
        }
    }

    fn is_unserved(&self, job_id: &str) -> bool {
        self.unserved_csr
            .lock()
            .map(|set| set.contains(job_id))
            .unwrap_or(false)
    }

    fn unserved(&self, job: &AgentJob, why: &str) -> Progress {
        tracing::error!(job_id = %job.id, %why,
            "cannot produce the CSR; leaving the job to expire on the host");
        if let Ok(mut set) = self.unserved_csr.lock() {
            set.insert(job.id.clone());
        }
        Progress::Skipped
    }

    // ------------------------------------------------------ deployment

    async fn deploy(&self, job: &AgentJob) -> Result<JobReport, Failure> {
        let (cert, version, target) = parts(job)?;
        let plugin = self.plugin_for(target)?;
        let refused = |refused: grants::GrantRefused| {
            tracing::warn!(job_id = %job.id, target_id = %target.id, %refused,
                "refusing a grant beyond this agent's configuration");
            Failure::permanent(refused.to_string())
        };
        // Held until the call is over: the connector is given these open
        // directories, not their paths.
        let checked = grants::check(
            &target.plugin_name,
            &target.grants,
            self.config.connectors.get(&target.plugin_name),
        )
        .map_err(refused)?;

        let mut blocks = split_pem(&version.pem_chain);
        if blocks.is_empty() {
            return Err(Failure::permanent("the version carries no certificate"));
        }
        let leaf = blocks.remove(0);
        let leaf_der = parse_certificates(&leaf)
            .ok()
            .and_then(|c| c.into_iter().next())
            .ok_or_else(|| Failure::permanent("the leaf certificate is not valid PEM"))?;
        let spki = certificate_public_key_sha256(leaf_der.as_ref())
            .map_err(|e| Failure::permanent(e.to_string()))?;
        let key = self
            .state
            .load_key(&cert.id, &spki)
            .map_err(|e| Failure::transient(format!("cannot read the private key: {e}")))?
            .ok_or_else(|| {
                Failure::permanent(format!(
                    "no private key on this agent for certificate {} (public key {spki}): \
                     the CSR came from another agent or the state directory was lost",
                    cert.id
                ))
            })?;

        let instance = self.instance(plugin, target, &checked)?;
        let bundle = CertificateBundle {
            certificate_id: cert.id.clone(),
            dns_names: cert.sans.clone(),
            certificate_pem: leaf,
            chain_pem: blocks,
            fingerprint_sha256: version.fingerprint_sha256.clone(),
        };
        let options = cert.target_options.to_string();
        let result = instance
            .deploy(&bundle, &key, &options)
            .await
            .map_err(|e| match e {
                grants::TargetCallError::Refused(r) => refused(r),
                grants::TargetCallError::Call(e) => Failure::of_call(&e),
            })?;
        match self.state.prune_keys(&cert.id, &spki) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(certificate_id = %cert.id, removed = n, "superseded private keys removed")
            }
            Err(e) => {
                tracing::warn!(certificate_id = %cert.id, error = %e, "cannot prune superseded keys")
            }
        }
        let mut report = JobReport::success(job.attempt, result.changed);
        if let Some(at) = result.verify_at {
            let endpoint = Endpoint::from(at);
            if let Err(e) = self.state.save_endpoint(&target.id, &cert.id, &endpoint) {
                tracing::warn!(error = %e, "cannot record the verification endpoint");
            }
            report.verification = Some(self.probe(&endpoint, &version.fingerprint_sha256).await);
        }
        Ok(report)
    }

    fn plugin_for(&self, target: &JobTarget) -> Result<&Arc<Plugin>, Failure> {
        let plugin = self.plugins.get(&target.plugin_name).ok_or_else(|| {
            Failure::unsupported(format!(
                "target plugin {} {} is not installed on this agent (plugin directory {})",
                target.plugin_name,
                target.plugin_version,
                self.config.plugin_dir.display()
            ))
        })?;
        if plugin.version() != target.plugin_version {
            return Err(Failure::unsupported(format!(
                "target plugin {}: this agent has version {}, the host expects {}",
                target.plugin_name,
                plugin.version(),
                target.plugin_version
            )));
        }
        if let Some(expected) = &target.plugin_sha256
            && !expected.eq_ignore_ascii_case(plugin.sha256())
        {
            return Err(Failure::unsupported(format!(
                "target plugin {} {}: digest differs (this agent has sha256 {}, the host expects {expected})",
                target.plugin_name,
                target.plugin_version,
                plugin.sha256()
            )));
        }
        Ok(plugin)
    }

    fn instance<'g>(
        &self,
        plugin: &Arc<Plugin>,
        target: &JobTarget,
        grants: &'g grants::CheckedGrants,
    ) -> Result<grants::GrantedInstance<'g>, Failure> {
        let owner = format!("target/{}", target.id);
        let invalid = |e: &dyn std::fmt::Display| {
            Failure::of_class(ErrorClass::InvalidConfig, format!("{owner}: {e}"))
        };
        let mut config = InstanceConfig::new(&owner)
            .with_settings(target.settings.clone())
            .map_err(|e| invalid(&e))?;
        for (name, value) in &target.secrets {
            config = config.with_secret(name.clone(), value.as_str());
        }
        let resolved = limits_for(
            &self.config.limits,
            self.config.connectors.get(&target.plugin_name),
            &grants.limits(),
            plugin.manifest(),
        )
        .map_err(|e| {
            Failure::of_class(
                ErrorClass::InvalidConfig,
                format!("{owner}: refused by this agent's [limits]: {e}"),
            )
        })?;
        config = config.with_limits(resolved.limits);
        config.grants.actions =
            certplane_runtime::actions::granted_specs(grants.actions(), &self.config.actions)
                .map_err(|e| invalid(&e))?;
        grants
            .instance(plugin.clone(), config)
            .map_err(|e| invalid(&e))
    }

    // ---------------------------------------------------- verification

    async fn verify_again(&self, job: &AgentJob) -> Result<JobReport, Failure> {
        let (cert, version, target) = parts(job)?;
        let endpoint = self
            .state
            .endpoint(&target.id, &cert.id)
            .map_err(|e| Failure::transient(e.to_string()))?
            .ok_or_else(|| {
                Failure::permanent(format!(
                    "no endpoint is known for certificate {} on target {}: its connector named \
                     none at deployment, or this agent did not deploy it",
                    cert.id, target.id
                ))
            })?;
        let mut report = JobReport::success(job.attempt, Vec::new());
        report.verification = Some(self.probe(&endpoint, &version.fingerprint_sha256).await);
        Ok(report)
    }

    async fn probe(&self, endpoint: &Endpoint, expected: &str) -> ReportVerification {
        let verdict = verify::probe(endpoint, expected, self.config.verify.policy()).await;
        match &verdict {
            Verdict::Verified { .. } => tracing::info!(host = %endpoint.host,
                port = endpoint.port, server_name = %endpoint.server_name, "verified on the wire"),
            _ => tracing::warn!(host = %endpoint.host, port = endpoint.port,
                server_name = %endpoint.server_name, verdict = %verdict.detail(),
                "verification did not see the deployed certificate"),
        }
        ReportVerification {
            status: verdict.verification_status(),
            observed_fingerprint: verdict.observed_fingerprint().map(str::to_owned),
            detail: Some(format!("{} at {endpoint}", verdict.detail())),
            endpoint: Some(endpoint.clone()),
        }
    }
}

/// The certificate, version and target a deployment or verification needs.
fn parts(job: &AgentJob) -> Result<(&JobCertificate, &JobCertificateVersion, &JobTarget), Failure> {
    match (&job.certificate, &job.certificate_version, &job.target) {
        (Some(c), Some(v), Some(t)) => Ok((c, v, t)),
        _ => Err(Failure::permanent(format!(
            "{} job {} lacks its certificate, version or target",
            job.job_type, job.id
        ))),
    }
}

/// Generates the key and CSR on a blocking thread (RSA takes a while).
async fn generate(
    cert: JobCertificate,
    key_type: KeyType,
) -> Result<certplane_pki::keygen::GeneratedKey, String> {
    tokio::task::spawn_blocking(move || {
        let (ips, dns): (Vec<_>, Vec<_>) = cert
            .sans
            .iter()
            .partition(|n| n.parse::<std::net::IpAddr>().is_ok());
        let ips: Vec<std::net::IpAddr> = ips.iter().filter_map(|n| n.parse().ok()).collect();
        let dns: Vec<String> = dns.into_iter().cloned().collect();
        let common_name = if cert.common_name.is_empty() {
            cert.sans.first().cloned().unwrap_or_default()
        } else {
            cert.common_name.clone()
        };
        generate_key_and_csr(key_type, &common_name, &dns, &ips)
    })
    .await
    .map_err(|e| format!("key generation stopped: {e}"))?
    .map_err(|e| e.to_string())
}

/// Which plugins of a loaded set the agent can run (targets only).
pub fn target_plugins(loaded: Vec<Arc<Plugin>>) -> BTreeMap<String, Arc<Plugin>> {
    loaded
        .into_iter()
        .filter(|p| p.kind() == PluginKind::Target)
        .map(|p| (p.name().to_owned(), p))
        .collect()
}

/// A target connector's limits on this agent: this agent's operator
/// decides first (`connectors.<plugin>`), then the host's operator (the
/// target's `grants.limits`), then the plugin's manifest, all within this
/// agent's `[limits]` (a host asking for more is refused).
fn limits_for(
    policy: &certplane_runtime::LimitPolicy,
    allowance: Option<&crate::config::ConnectorGrants>,
    requested: &certplane_runtime::InstanceLimits,
    manifest: &certplane_runtime::Manifest,
) -> Result<certplane_runtime::Resolved, certplane_runtime::PolicyError> {
    let limits = certplane_runtime::InstanceLimits {
        deadline_secs: allowance
            .and_then(|a| a.deadline_secs)
            .or(requested.deadline_secs),
        memory_mib: allowance
            .and_then(|a| a.memory_mib)
            .or(requested.memory_mib),
        concurrency: None,
    };
    policy.resolve(manifest, &limits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use certplane_runtime::{ConnectorError, InstanceLimits, LimitPolicy, Manifest};

    #[test]
    fn the_agent_operator_then_the_host_then_the_manifest_within_the_ceiling() {
        let manifest = Manifest::parse(
            &format!(
                "name = \"p\"\nversion = \"0.1.0\"\nkind = \"target\"\nworld = \"1.0.0\"\n\
                 component = \"p.wasm\"\nsha256 = \"{}\"\n[limits]\ncpu_deadline_ms = 600000\n",
                "ab".repeat(32)
            ),
            std::path::Path::new("/plugins"),
        )
        .unwrap();
        let policy = LimitPolicy {
            max_deadline_secs: 20,
            ..LimitPolicy::default()
        };
        let host = InstanceLimits {
            deadline_secs: Some(15),
            memory_mib: Some(32),
            concurrency: None,
        };
        let agent = crate::config::ConnectorGrants {
            deadline_secs: Some(5),
            ..Default::default()
        };
        // The manifest's 600 s request is cut to the ceiling.
        let r = limits_for(&policy, None, &InstanceLimits::default(), &manifest).unwrap();
        assert_eq!(r.limits.deadline, Duration::from_secs(20));
        // The host's values apply within the ceiling.
        let r = limits_for(&policy, None, &host, &manifest).unwrap();
        assert_eq!(r.limits.deadline, Duration::from_secs(15));
        assert_eq!(r.limits.memory_bytes, 32 << 20);
        // This agent's operator wins where set.
        let r = limits_for(&policy, Some(&agent), &host, &manifest).unwrap();
        assert_eq!(r.limits.deadline, Duration::from_secs(5));
        assert_eq!(r.limits.memory_bytes, 32 << 20);
        // A host asking beyond this agent's ceiling is refused.
        let greedy = InstanceLimits {
            deadline_secs: Some(60),
            ..host
        };
        let err = limits_for(&policy, None, &greedy, &manifest).unwrap_err();
        assert!(err.to_string().contains("deadline_secs"), "{err}");
    }

    #[test]
    fn connector_errors_keep_their_class() {
        let err = CallError::Connector {
            plugin: "p".into(),
            error: ConnectorError::InvalidConfig("x".into()),
        };
        assert_eq!(Failure::of_call(&err).class, ErrorClass::InvalidConfig);
        let err = CallError::Deadline {
            plugin: "p".into(),
            deadline: Duration::from_secs(1),
        };
        assert_eq!(Failure::of_call(&err).class, ErrorClass::Deadline);
        assert!(!ErrorClass::Deadline.is_permanent());
        let err = CallError::MemoryLimit {
            plugin: "p".into(),
            limit_bytes: 1,
        };
        assert_eq!(Failure::of_call(&err).class, ErrorClass::MemoryLimit);
        assert!(ErrorClass::MemoryLimit.is_permanent());
        let err = CallError::Connector {
            plugin: "p".into(),
            error: ConnectorError::RateLimited(certplane_runtime::RateLimit {
                retry_after_secs: Some(42),
                message: "slow down".into(),
            }),
        };
        let f = Failure::of_call(&err);
        assert_eq!(
            (f.class, f.retry_after_secs),
            (ErrorClass::RateLimited, Some(42))
        );
    }
}
