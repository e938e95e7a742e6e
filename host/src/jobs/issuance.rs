//! Issuance and renewal jobs: CSR (host key mode generates key and CSR
//! here; agent key mode uses the CSR the agent submitted), the issuer
//! connector's `submit`, order polling for asynchronous CAs, the checks on
//! whatever the connector returned, the new certificate version and one
//! deployment job per target.

use std::net::IpAddr;

use certplane_runtime::asyncpoll::{backoff_delay, jittered};
use certplane_runtime::issuer::{CertificateRequest, IssueResult, IssuedCertificate, Order};
use chrono::{DateTime, Utc};
use serde_json::json;

use super::connectors::{failure_for, issuer_instance, observed};
use crate::api::AppState;
use crate::pipeline::certcheck::{IssuedInput, check_issued};
use crate::pipeline::keygen::{KeyType, generate_key_and_csr};
use crate::store::{
    ActorType, Certificate, Job, JobFailure, JobStatus, JobType, JobUpdate, KeySource,
    NewAuditEvent, NewCertificateVersion, NewJob, StoreError,
};

/// Why a job step stopped short of its goal.
enum Stop {
    /// Fail the job (retry per `JobFailure`).
    Fail(JobFailure),
    /// The database failed; leave the lease to expire and the reaper to retry.
    Store(StoreError),
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Stop::Store(e)
    }
}

fn permanent(msg: impl Into<String>) -> Stop {
    Stop::Fail(JobFailure::permanent(msg))
}

/// The names a certificate covers, split into DNS names and IP addresses,
/// common name first and each once.
fn names_of(cert: &Certificate) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns: Vec<String> = Vec::new();
    let mut ips: Vec<IpAddr> = Vec::new();
    for name in std::iter::once(&cert.common_name).chain(cert.sans.iter()) {
        match name.parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) if !dns.iter().any(|d| d.eq_ignore_ascii_case(name)) => dns.push(name.clone()),
            Err(_) => {}
        }
    }
    (dns, ips)
}

fn audit(job: &Job, action: &str, details: serde_json::Value) -> NewAuditEvent {
    NewAuditEvent {
        actor: "host".into(),
        actor_type: ActorType::System,
        action: action.into(),
        subject_type: "job".into(),
        subject_id: Some(job.id.clone()),
        details,
    }
}

/// Owner string binding a sealed private key to its job.
fn job_key_owner(job_id: &str) -> String {
    format!("job/{job_id}/private-key")
}

/// Runs one claimed issuance or renewal job (status Running).
pub async fn process(state: &AppState, job: Job) {
    let result = step(state, &job, None).await;
    finish(state, &job, result).await;
}

/// Polls the order of one claimed Polling job once (status Running again).
pub async fn process_poll(state: &AppState, job: Job) {
    let order = match (&job.order_id, &job.order_state) {
        (Some(id), Some(st)) => Order {
            id: id.clone(),
            retry_after_secs: None,
            state: st.clone(),
        },
        _ => {
            finish(
                state,
                &job,
                Err(permanent("polling job has no persisted order")),
            )
            .await;
            return;
        }
    };
    let result = step(state, &job, Some(order)).await;
    finish(state, &job, result).await;
}

async fn finish(state: &AppState, job: &Job, result: Result<(), Stop>) {
    let Some(lease) = job.lease() else { return };
    match result {
        Ok(()) => {}
        Err(Stop::Fail(failure)) => {
            tracing::warn!(job = %job.id, error = %failure.error, permanent = failure.permanent, "issuance failed");
            if let Err(e) = state.store.fail_job(&lease, failure).await {
                tracing::error!(job = %job.id, error = %e, "cannot record job failure");
            }
        }
        Err(Stop::Store(e)) => {
            tracing::error!(job = %job.id, error = %e, "database error during issuance; the lease will expire and the job be retried");
        }
    }
}

/// Submits (or, with `order`, polls) and carries the job to its next state.
async fn step(state: &AppState, job: &Job, order: Option<Order>) -> Result<(), Stop> {
    let store = &state.store;
    let cert_id = job
        .certificate_id
        .as_deref()
        .ok_or_else(|| permanent("issuance job without a certificate"))?;
    let cert = store
        .get_certificate(cert_id)
        .await?
        .ok_or_else(|| permanent(format!("certificate {cert_id} no longer exists")))?;
    let issuer = issuer_instance(state, &cert.issuer_id)
        .await?
        .map_err(permanent)?;
    let (dns_names, ips) = names_of(&cert);

    // The CSR and, in host key mode, the private key.
    let (csr_pem, sealed_key) = match (&job.csr_pem, cert.key_source) {
        (Some(csr), KeySource::Agent) => (csr.clone(), None),
        (None, KeySource::Agent) => {
            // A retried agent-key job (its CSR wait expired, or the agent's
            // CSR was lost): ask the key-holding agent again.
            return request_csr(state, job, &cert).await;
        }
        (Some(csr), KeySource::Host) => {
            let sealed = job
                .payload
                .as_ref()
                .and_then(|p| p.get("sealed_key"))
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| permanent("host key mode: the persisted key is missing"))?;
            (csr.clone(), Some(sealed))
        }
        (None, KeySource::Host) => {
            let key_type: KeyType = cert
                .key_type
                .parse()
                .map_err(|e| permanent(format!("{e}")))?;
            let (cn, dns, ip) = (cert.common_name.clone(), dns_names.clone(), ips.clone());
            let generated =
                tokio::task::spawn_blocking(move || generate_key_and_csr(key_type, &cn, &dns, &ip))
                    .await
                    .map_err(|e| {
                        Stop::Fail(JobFailure::transient(format!("key generation task: {e}")))
                    })?
                    .map_err(|e| permanent(format!("key generation: {e}")))?;
            let sealed = state
                .secrets
                .seal_str(
                    generated.private_key_pem.expose_secret(),
                    &job_key_owner(&job.id),
                )
                .map_err(|e| permanent(format!("sealing the private key: {e}")))?;
            (generated.csr_pem, Some(sealed))
        }
    };

    let call = match &order {
        None => {
            let request = CertificateRequest {
                csr_pem: csr_pem.clone(),
                common_name: cert.common_name.clone(),
                dns_names: dns_names.clone(),
                ip_addresses: ips.iter().map(ToString::to_string).collect(),
                validity_days: None,
                certificate_id: cert.id.clone(),
            };
            observed(state, &issuer, "submit", issuer.submit(&request)).await
        }
        Some(order) => observed(state, &issuer, "poll", issuer.poll(order)).await,
    };
    let now = Utc::now();
    match call {
        Err(e) => Err(Stop::Fail(failure_for(&e, now))),
        Ok(IssueResult::Pending(new_order)) => {
            persist_order(state, job, &csr_pem, sealed_key, new_order, now).await
        }
        Ok(IssueResult::Issued(issued)) => {
            record_issued(
                state, job, &cert, &csr_pem, sealed_key, &dns_names, &ips, issued, now,
            )
            .await
        }
    }
}

/// Moves a claimed agent-key job back to AwaitingCsr and wakes the agent
/// that holds the key.
async fn request_csr(state: &AppState, job: &Job, cert: &Certificate) -> Result<(), Stop> {
    let won = state
        .store
        .transition_job(
            &job.id,
            JobStatus::Running,
            JobStatus::AwaitingCsr,
            JobUpdate::default(),
            Some(audit(
                job,
                "issuance.csr_requested",
                json!({ "certificate_id": cert.id }),
            )),
        )
        .await?;
    if !won {
        tracing::warn!(job = %job.id, "lost the job while asking for a CSR");
    }
    if let Some(target_id) = &cert.target_id
        && let Some(target) = state.store.get_target(target_id).await?
    {
        state.wake.wake_agent(&target.agent_id);
    }
    Ok(())
}

/// Pending at the CA: persist the order (and the CSR and sealed key it was
/// placed for) so any replica, after any restart, polls this same order.
async fn persist_order(
    state: &AppState,
    job: &Job,
    csr_pem: &str,
    sealed_key: Option<String>,
    order: Order,
    now: DateTime<Utc>,
) -> Result<(), Stop> {
    let payload = job.payload.clone().unwrap_or_else(|| json!({}));
    let step = payload
        .get("poll_step")
        .and_then(|v| v.as_u64())
        .unwrap_or(0) as u32;
    let first_poll = job.order_id.is_none();
    let max_wait = chrono::Duration::seconds(state.config.order_max_wait_secs as i64);
    let mut deadline = job.poll_deadline_at.unwrap_or(now + max_wait);
    // The connector's hint replaces the backoff wait; otherwise the asyncpoll
    // schedule (5 s → 15 s → 45 s → 2 m 15 s → 5 m, ±20 %).
    let wait = match order.retry_after_secs {
        Some(secs) => std::time::Duration::from_secs(u64::from(secs.max(1))),
        None => jittered(backoff_delay(step), 0.2, rand::random::<f64>()),
    };
    let mut next = now + chrono::Duration::from_std(wait).unwrap_or(max_wait);
    let mut last_error = None;
    if next >= deadline && !first_poll {
        // MaxWait passed: the session ends still pending; the same order is
        // re-queued for a new session instead of being abandoned.
        last_error = Some(format!(
            "order {} still pending after MaxWait; re-queued to poll the same order",
            order.id
        ));
        deadline = now + max_wait;
        next = next.min(deadline);
    }
    let mut new_payload = payload;
    new_payload["poll_step"] = json!(step + 1);
    if let Some(key) = sealed_key {
        new_payload["sealed_key"] = json!(key);
    }
    let won = state
        .store
        .transition_job(
            &job.id,
            JobStatus::Running,
            JobStatus::Polling,
            JobUpdate {
                csr_pem: Some(csr_pem.to_string()),
                order_id: Some(order.id.clone()),
                order_state: Some(order.state.clone()),
                next_poll_at: Some(next),
                poll_deadline_at: Some(deadline),
                payload: Some(new_payload),
                last_error,
                ..JobUpdate::default()
            },
            Some(audit(
                job,
                if first_poll {
                    "issuance.order_placed"
                } else {
                    "issuance.order_pending"
                },
                json!({ "order_id": order.id, "next_poll_at": next }),
            )),
        )
        .await?;
    if !won {
        tracing::warn!(job = %job.id, "lost the job while persisting its order");
    }
    state.wake.orders.notify_one();
    Ok(())
}

/// Issued: check it, record the version, create deployment jobs, complete.
#[allow(clippy::too_many_arguments)]
async fn record_issued(
    state: &AppState,
    job: &Job,
    cert: &Certificate,
    csr_pem: &str,
    sealed_key: Option<String>,
    dns_names: &[String],
    ips: &[IpAddr],
    issued: IssuedCertificate,
    now: DateTime<Utc>,
) -> Result<(), Stop> {
    let checked = check_issued(&IssuedInput {
        csr_pem,
        dns_names,
        ip_addresses: ips,
        leaf_pem: &issued.certificate_pem,
        chain_pem: &issued.chain_pem,
        trust_anchor_pem: None,
        now,
        validity_days: None,
    })
    .map_err(|e| {
        permanent(format!(
            "the issuer returned a certificate that fails the host's checks: {e}"
        ))
    })?;

    // Host key mode: re-seal the key for the certificate version it belongs
    // to (deployments open it with that owner).
    let encrypted_private_key = match sealed_key {
        Some(sealed) => {
            let key = state
                .secrets
                .open_str(&sealed, &job_key_owner(&job.id))
                .map_err(|e| permanent(format!("opening the persisted key: {e}")))?;
            let resealed = state
                .secrets
                .seal_str(
                    &key,
                    &version_key_owner(&cert.id, &checked.fingerprint_sha256),
                )
                .map_err(|e| permanent(format!("sealing the private key: {e}")))?;
            Some(resealed.into_bytes())
        }
        None => None,
    };
    let pem_chain: String = std::iter::once(checked.leaf_pem.as_str())
        .chain(checked.chain_pem.iter().map(String::as_str))
        .collect();
    let version = state
        .store
        .record_certificate_version(NewCertificateVersion {
            certificate_id: cert.id.clone(),
            serial: checked.serial_hex.clone(),
            pem_chain,
            not_before: checked.not_before,
            not_after: checked.not_after,
            fingerprint_sha256: checked.fingerprint_sha256.clone(),
            encrypted_private_key,
            job_id: Some(job.id.clone()),
        })
        .await?;

    let targets = state.store.deployment_targets(&cert.id).await?;
    for target in &targets {
        let mut deployment = NewJob::new(JobType::Deployment)
            .certificate(cert.id.clone())
            .target(target.id.clone())
            .agent(target.agent_id.clone());
        deployment.certificate_version_id = Some(version.id.clone());
        deployment.parent_job_id = Some(job.id.clone());
        state.store.create_job(deployment).await?;
        if target.agent_id == crate::store::SENTINEL_AGENT_ID {
            state.wake.jobs.notify_one();
        } else {
            state.wake.wake_agent(&target.agent_id);
        }
    }

    let Some(lease) = job.lease() else {
        return Ok(());
    };
    if !state.store.complete_job(&lease).await? {
        tracing::warn!(job = %job.id, "lost the lease before completing; the version is recorded");
    }
    state
        .store
        .record_audit(audit(
            job,
            "issuance.completed",
            json!({
                "certificate_id": cert.id,
                "version_id": version.id,
                "serial": checked.serial_hex,
                "fingerprint_sha256": checked.fingerprint_sha256,
                "not_after": checked.not_after,
                "deployments": targets.len(),
            }),
        ))
        .await?;
    tracing::info!(job = %job.id, certificate = %cert.id, version = %version.id, deployments = targets.len(), "certificate issued");
    let summary = format!(
        "certificate {} issued (serial {})",
        cert.name, checked.serial_hex
    );
    let details = json!({ "certificate_id": cert.id, "version_id": version.id, "serial": checked.serial_hex, "not_after": checked.not_after });
    if let Err(e) = super::notify::notify_all(
        state,
        "certificate.issued",
        &format!("certificate/{}", cert.id),
        &summary,
        certplane_runtime::Level::Info,
        details,
    )
    .await
    {
        tracing::error!(job = %job.id, error = %e, "cannot enqueue the certificate.issued notifications");
    }
    Ok(())
}

/// Owner string binding a sealed private key to a certificate version.
pub fn version_key_owner(certificate_id: &str, fingerprint: &str) -> String {
    format!("certificate/{certificate_id}/{fingerprint}/private-key")
}
