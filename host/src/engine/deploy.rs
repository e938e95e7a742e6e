//! Deployment jobs (deploy, then verify on the wire when the connector
//! names an endpoint) for targets the host itself reaches (targets of the
//! built-in `host` agent, e.g. a remote Caddy admin API). Agent targets are
//! deployed by their agents through the agent API.

use certplane_runtime::PluginKind;
use certplane_runtime::target::CertificateBundle;
use serde_json::json;

use super::connectors::{build_instance, failure_for, observed};
use super::ending::{Ending, end_claimed_logged, end_superseded, host_actor, superseded_by};
use super::issuance::version_key_owner;
use super::verification;
use super::versions::{job_version, split_pem};
use crate::engine::Engine;
use crate::store::{Job, JobFailure, JobInputs};

/// Runs one claimed host-side deployment job.
pub async fn process(engine: &Engine, job: Job, inputs: Option<JobInputs>) {
    let open_alerts = match &inputs {
        Some(JobInputs::Deployment(read)) => Some(read.open_alerts.clone()),
        _ => None,
    };
    let mut verification = None;
    let result = match deploy(engine, &job, inputs, &mut verification).await {
        Ok(Deployed::Changed(changed)) => Ok(changed),
        Ok(Deployed::Superseded(current)) => {
            if let Err(e) = end_superseded(engine, &job, &current, host_actor()).await {
                tracing::error!(job = %job.id, error = %e, "cannot record the job's end; its lease will lapse and it will be retried");
            }
            return;
        }
        Err(failure) => Err(failure),
    };
    let changed = result.as_ref().ok().cloned().unwrap_or_default();
    let ending = Ending {
        kind: "deployed",
        result: result.map(|_| ()),
        verification,
        actor: host_actor(),
        actions: ("deployment.completed", "deployment.failed"),
        details: json!({ "target_id": job.target_id, "changed": changed }),
        open_alerts,
    };
    end_claimed_logged(engine, &job, ending).await;
}

/// What a deployment did.
enum Deployed {
    /// Deployed: what the target changed.
    Changed(Vec<String>),
    /// Not deployed: this version (the certificate's current one) replaced
    /// the job's.
    Superseded(String),
}

/// Deploys; the probe's record, when one ran, goes to `verification`.
async fn deploy(
    engine: &Engine,
    job: &Job,
    inputs: Option<JobInputs>,
    verification: &mut Option<serde_json::Value>,
) -> Result<Deployed, JobFailure> {
    let store_err = |e: crate::store::StoreError| JobFailure::transient(format!("database: {e}"));
    let target_id = job
        .target_id
        .as_deref()
        .ok_or_else(|| JobFailure::permanent("deployment job without a target"))?;
    let (cert_id, version_id) = job_version(job)?;
    // The target, the certificate and the version, read with the claimed
    // batch (or now).
    let inputs = match engine
        .store
        .inputs_for(job, inputs)
        .await
        .map_err(store_err)?
    {
        Some(JobInputs::Deployment(inputs)) => inputs,
        _ => return Err(JobFailure::permanent("the deployment's rows were not read")),
    };
    let target = inputs
        .target
        .ok_or_else(|| JobFailure::permanent(format!("target {target_id} no longer exists")))?;
    if target.retired_at.is_some() {
        return Err(JobFailure::permanent(format!(
            "target {target_id} is retired"
        )));
    }
    let cert = inputs
        .certificate
        .ok_or_else(|| JobFailure::permanent(format!("certificate {cert_id} not found")))?;
    if let Some(current) = superseded_by(job, cert.current_version_id.as_deref()) {
        return Ok(Deployed::Superseded(current.to_owned()));
    }
    let version = inputs.version.ok_or_else(|| {
        JobFailure::permanent(format!("certificate version {version_id} not found"))
    })?;
    let cert_id = cert.id.as_str();
    let sealed = version.encrypted_private_key.as_deref().ok_or_else(|| {
        JobFailure::permanent("the host holds no private key for this version (agent-held key)")
    })?;
    let sealed = std::str::from_utf8(sealed)
        .map_err(|_| JobFailure::permanent("stored private key is not sealed text"))?;
    let key = engine
        .secrets
        .open_str(
            sealed,
            &version_key_owner(cert_id, &version.fingerprint_sha256),
        )
        .map_err(|e| JobFailure::permanent(format!("cannot open the private key: {e}")))?;
    let mut blocks = split_pem(&version.pem_chain);
    if blocks.is_empty() {
        return Err(JobFailure::permanent("stored version has no certificate"));
    }
    let leaf = blocks.remove(0);
    let instance = build_instance(
        engine,
        PluginKind::Target,
        &format!("target/{}", target.id),
        &target.plugin_name,
        &target.settings,
        target.encrypted_secrets.as_deref(),
        &target.grants,
    )
    .map_err(JobFailure::permanent)?;
    let bundle = CertificateBundle {
        certificate_id: cert.id.clone(),
        dns_names: cert.sans.clone(),
        certificate_pem: leaf,
        chain_pem: blocks,
        fingerprint_sha256: version.fingerprint_sha256.clone(),
    };
    let options = cert.target_options.to_string();
    let result = observed(engine, &instance, "deploy", |i| async move {
        i.deploy(&bundle, &key, &options).await
    })
    .await
    .map_err(|e| failure_for(&e, chrono::Utc::now()))?;
    if let Some(at) = result.verify_at {
        let endpoint = certplane_proto::Endpoint::from(at);
        let (record, failure) =
            verification::probe(engine, &endpoint, &version.fingerprint_sha256).await;
        *verification = Some(record);
        if let Some(failure) = failure {
            return Err(failure);
        }
    }
    Ok(Deployed::Changed(result.changed))
}
