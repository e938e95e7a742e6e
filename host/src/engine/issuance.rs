//! Issuance and renewal jobs: CSR (host key mode generates key and CSR
//! here; agent key mode uses the CSR the agent submitted), the issuer
//! connector's `submit`, order polling for asynchronous CAs, the checks on
//! whatever the connector returned, the new certificate version and one
//! deployment job per target.

use std::net::IpAddr;

use certplane_runtime::asyncpoll::{PollInput, plan_next_poll};
use certplane_runtime::issuer::{CertificateRequest, IssueResult, IssuedCertificate, Order};
use chrono::{DateTime, Utc};
use serde_json::json;

use super::challenges;
use super::connectors::{failure_for, issuer_from_row};
use super::notify;
use crate::engine::Engine;
use crate::pipeline::certcheck::{IssuedInput, check_issued};
use crate::pipeline::keygen::{KeyType, generate_key_and_csr};
use crate::store::{
    ActorType, Certificate, Guard, IssuanceInputs, Job, JobEnd, JobFailure, JobInputs, JobStatus,
    JobType, JobUpdate, KeySource, NewAuditEvent, NewCertificateVersion, NewJob, Outcome,
    StoreError, renewal_due_at,
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

/// Runs one claimed issuance or renewal job (status Running): claimed
/// from Pending by the job loop, or from Polling by the order-poll loop.
///
/// Invariant: a job with a persisted order never submits again (a retry
/// after an error, a rate limit, a lapsed lease or a crash polls the same
/// order), and a job whose version is recorded finishes without calling
/// the CA.
pub async fn process(engine: &Engine, job: Job, inputs: Option<JobInputs>) {
    let result = step(engine, &job, inputs).await;
    finish(engine, &job, result).await;
}

async fn finish(engine: &Engine, job: &Job, result: Result<(), Stop>) {
    let Some(lease) = job.lease() else { return };
    match result {
        Ok(()) => {}
        Err(Stop::Fail(failure)) => {
            tracing::warn!(job = %job.id, error = %failure.error, permanent = failure.permanent, "issuance failed");
            let mut outcome =
                Outcome::new("failed", Guard::Lease(lease), JobEnd::Fail(failure.clone()));
            outcome.audit.push(audit(
                job,
                "issuance.failed",
                json!({ "error": failure.error, "permanent": failure.permanent }),
            ));
            match engine.store.commit_outcome(outcome).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    tracing::warn!(job = %job.id, "lost the job before recording its failure")
                }
                Err(e) => tracing::error!(job = %job.id, error = %e, "cannot record job failure"),
            }
        }
        Err(Stop::Store(e)) => {
            tracing::error!(job = %job.id, error = %e, "database error during issuance; the lease will expire and the job be retried");
        }
    }
}

/// The order persisted on the job, if any.
fn persisted_order(job: &Job) -> Option<Order> {
    match (&job.order_id, &job.order_state) {
        (Some(id), Some(st)) => Some(Order {
            id: id.clone(),
            retry_after_secs: None,
            state: st.clone(),
        }),
        _ => None,
    }
}

/// Submits (or, with a persisted order, polls) and carries the job to its
/// next state.
async fn step(engine: &Engine, job: &Job, inputs: Option<JobInputs>) -> Result<(), Stop> {
    let store = &engine.store;
    // A version is recorded only by the commit that completes the attempt
    // that recorded it, so a first attempt without an order has none: it
    // skips the read.
    let first_call = job.attempts <= 1 && job.order_id.is_none();
    let recorded = if first_call {
        None
    } else {
        store.version_of_job(&job.id).await?
    };
    if let Some(version) = recorded {
        // Recorded by an earlier run of this job: finish without the CA.
        let lease = job
            .lease()
            .ok_or_else(|| permanent("the job holds no lease"))?;
        let mut outcome = Outcome::new("issued", Guard::Lease(lease), JobEnd::Complete);
        outcome.audit.push(audit(
            job,
            "issuance.completed",
            json!({ "version_id": version.id, "recovered": true }),
        ));
        if store.commit_outcome(outcome).await?.is_none() {
            tracing::warn!(job = %job.id, "lost the job while completing it");
        }
        return Ok(());
    }
    let cert_id = job
        .certificate_id
        .as_deref()
        .ok_or_else(|| permanent("issuance job without a certificate"))?;
    // The certificate, its issuer and its targets, read with the claimed
    // batch (or now).
    let found = match store.inputs_for(job, inputs).await? {
        Some(JobInputs::Issuance(found)) => found,
        _ => None,
    };
    let IssuanceInputs {
        certificate: cert,
        issuer,
        targets,
    } = found.ok_or_else(|| permanent(format!("certificate {cert_id} no longer exists")))?;
    let super::connectors::IssuerInstance {
        instance: issuer,
        routes,
        name: issuer_name,
    } = issuer_from_row(engine, &cert.issuer_id, issuer).map_err(permanent)?;
    let (dns_names, ips) = names_of(&cert);
    let order = persisted_order(job);

    // The CSR and, in host key mode, the private key.
    let (csr_pem, sealed_key) = match (&job.csr_pem, cert.key_source) {
        (Some(csr), KeySource::Agent) => (csr.clone(), None),
        (None, KeySource::Agent) => {
            // A retried agent-key job (its CSR wait expired, or the agent's
            // CSR was lost): ask the key-holding agent again.
            return request_csr(engine, job, &cert).await;
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
            let generated = if key_type.rsa_bits().is_some() {
                // RSA key generation takes tens to hundreds of milliseconds:
                // off the async workers.
                let (cn, dns, ip) = (cert.common_name.clone(), dns_names.clone(), ips.clone());
                tokio::task::spawn_blocking(move || generate_key_and_csr(key_type, &cn, &dns, &ip))
                    .await
                    .map_err(|e| {
                        Stop::Fail(JobFailure::transient(format!("key generation task: {e}")))
                    })?
            } else {
                // An EC or Ed25519 key and its CSR take well under a
                // millisecond (P-256: about 60 µs); handing them to a
                // blocking thread and back cost more than that in wake-ups.
                generate_key_and_csr(key_type, &cert.common_name, &dns_names, &ips)
            }
            .map_err(|e| permanent(format!("key generation: {e}")))?;
            crate::pipeline::certcheck::remember_own_csr(&generated.csr_pem);
            let sealed = engine
                .secrets
                .seal_str(
                    generated.private_key_pem.expose_secret(),
                    &job_key_owner(&job.id),
                )
                .map_err(|e| permanent(format!("sealing the private key: {e}")))?;
            (generated.csr_pem, Some(sealed))
        }
    };

    // Contract 1.1: what the call may ask about, and what it leaves behind.
    let owner = format!("issuer/{}", cert.issuer_id);
    let context = challenges::issuer_context(engine, &issuer, job, &cert, &owner, &routes).await?;
    let (call, effects) = match &order {
        None => {
            let request = CertificateRequest {
                csr_pem: csr_pem.clone(),
                common_name: cert.common_name.clone(),
                dns_names: dns_names.clone(),
                ip_addresses: ips.iter().map(ToString::to_string).collect(),
                validity_days: None,
                certificate_id: cert.id.clone(),
            };
            challenges::observed_with_effects(engine, &issuer, "submit", |i| async move {
                i.submit_with(&context, &request).await
            })
            .await
        }
        Some(order) => {
            let order = order.clone();
            challenges::observed_with_effects(engine, &issuer, "poll", |i| async move {
                i.poll_with(&context, &order).await
            })
            .await
        }
    };
    challenges::apply_effects(engine, &owner, Some(&job.id), &routes, effects).await?;
    let now = Utc::now();
    match (call, order) {
        (Err(e), Some(order)) if e.is_retryable() => {
            // The order stands: keep polling it, the error kept as the last.
            let hint = e.retry_after();
            let payload = job.payload.clone().unwrap_or_else(|| json!({}));
            still_pending(engine, job, order, payload, hint, Some(e.to_string()), now).await
        }
        (Err(e), _) => Err(Stop::Fail(failure_for(&e, now))),
        (Ok(IssueResult::Pending(new_order)), previous) => {
            let payload = match previous {
                None => record_receipt(engine, job, &csr_pem, sealed_key, &new_order).await?,
                Some(_) => job.payload.clone().unwrap_or_else(|| json!({})),
            };
            let hint = new_order
                .retry_after_secs
                .map(|s| std::time::Duration::from_secs(u64::from(s)));
            still_pending(engine, job, new_order, payload, hint, None, now).await
        }
        (Ok(IssueResult::Issued(issued)), _) => {
            let request = IssuedFor {
                cert: &cert,
                targets: &targets,
                issuer_name: &issuer_name,
                csr_pem: &csr_pem,
                dns_names: &dns_names,
                ips: &ips,
            };
            record_issued(engine, job, &request, sealed_key, issued, now).await
        }
    }
}

/// Moves a claimed agent-key job back to AwaitingCsr and wakes the agent
/// that holds the key.
async fn request_csr(engine: &Engine, job: &Job, cert: &Certificate) -> Result<(), Stop> {
    let lease = job
        .lease()
        .ok_or_else(|| permanent("the job holds no lease"))?;
    let mut outcome = Outcome::new(
        "csr_requested",
        Guard::Lease(lease),
        JobEnd::Move(JobStatus::AwaitingCsr),
    );
    outcome.audit.push(audit(
        job,
        "issuance.csr_requested",
        json!({ "certificate_id": cert.id }),
    ));
    if engine.store.commit_outcome(outcome).await?.is_none() {
        tracing::warn!(job = %job.id, "lost the job while asking for a CSR");
    }
    if let Some(target_id) = &cert.target_id
        && let Some(target) = engine.store.get_target(target_id).await?
    {
        engine.wake.wake_agent(&target.agent_id);
    }
    Ok(())
}

/// The CA accepted an order: its id and state (and the CSR and sealed key
/// it was placed for) are recorded on the job in one statement before
/// anything else, so any replica, after any restart, polls this same order.
/// Returns the job's payload as recorded.
async fn record_receipt(
    engine: &Engine,
    job: &Job,
    csr_pem: &str,
    sealed_key: Option<String>,
    order: &Order,
) -> Result<serde_json::Value, Stop> {
    let lease = job
        .lease()
        .ok_or_else(|| permanent("the job holds no lease"))?;
    let mut payload = job.payload.clone().unwrap_or_else(|| json!({}));
    if let Some(key) = sealed_key {
        payload["sealed_key"] = json!(key);
    }
    let recorded = engine
        .store
        .record_order(
            &lease,
            JobUpdate {
                csr_pem: Some(csr_pem.to_string()),
                order_id: Some(order.id.clone()),
                order_state: Some(order.state.clone()),
                payload: Some(payload.clone()),
                ..JobUpdate::default()
            },
        )
        .await?;
    if !recorded {
        tracing::warn!(job = %job.id, order = %order.id, "lost the job before recording its order; the order is unknown to the host");
    }
    Ok(payload)
}

/// Pending at the CA (or a retryable error polling it): back to Polling,
/// the next poll planned by the asyncpoll rules.
#[allow(clippy::too_many_arguments)]
async fn still_pending(
    engine: &Engine,
    job: &Job,
    order: Order,
    mut payload: serde_json::Value,
    hint: Option<std::time::Duration>,
    error: Option<String>,
    now: DateTime<Utc>,
) -> Result<(), Stop> {
    let lease = job
        .lease()
        .ok_or_else(|| permanent("the job holds no lease"))?;
    let step = payload
        .get("poll_step")
        .and_then(|v| v.as_u64())
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0);
    let first = job.order_id.is_none();
    let plan = plan_next_poll(PollInput {
        now: now.into(),
        step,
        hint,
        session_deadline: if first {
            None
        } else {
            job.poll_deadline_at.map(Into::into)
        },
        max_wait: std::time::Duration::from_secs(engine.config.order_max_wait_secs),
        unit: rand::random::<f64>(),
    });
    let next: DateTime<Utc> = plan.next_poll_at.into();
    let last_error = match (&error, plan.max_wait_reached) {
        (Some(e), _) => Some(e.clone()),
        (None, true) => Some(format!(
            "order {} still pending after MaxWait; polling the same order again at {next}",
            order.id
        )),
        (None, false) => None,
    };
    payload["poll_step"] = json!(plan.next_step);
    let mut outcome = Outcome::new(
        if first {
            "order_placed"
        } else {
            "order_pending"
        },
        Guard::Lease(lease),
        JobEnd::Move(JobStatus::Polling),
    );
    outcome.update = JobUpdate {
        order_id: Some(order.id.clone()),
        order_state: Some(order.state.clone()),
        next_poll_at: Some(next),
        poll_deadline_at: Some(plan.session_deadline.into()),
        payload: Some(payload),
        last_error,
        ..JobUpdate::default()
    };
    outcome.audit.push(audit(
        job,
        match (first, &error) {
            (true, _) => "issuance.order_placed",
            (false, None) => "issuance.order_pending",
            (false, Some(_)) => "issuance.order_poll_failed",
        },
        json!({
            "order_id": order.id,
            "next_poll_at": next,
            "error": error,
            "max_wait_reached": plan.max_wait_reached,
        }),
    ));
    if engine.store.commit_outcome(outcome).await?.is_none() {
        tracing::warn!(job = %job.id, "lost the job while recording its pending order");
    }
    engine.wake.wake_orders();
    Ok(())
}

/// What a certificate was issued for.
struct IssuedFor<'a> {
    cert: &'a Certificate,
    /// The live targets, one deployment each.
    targets: &'a [crate::store::Target],
    issuer_name: &'a str,
    csr_pem: &'a str,
    dns_names: &'a [String],
    ips: &'a [IpAddr],
}

/// Issued: check it, record the version, create deployment jobs, complete.
async fn record_issued(
    engine: &Engine,
    job: &Job,
    request: &IssuedFor<'_>,
    sealed_key: Option<String>,
    issued: IssuedCertificate,
    now: DateTime<Utc>,
) -> Result<(), Stop> {
    let IssuedFor {
        cert,
        targets,
        issuer_name,
        csr_pem,
        dns_names,
        ips,
    } = *request;
    let checked = check_issued(&IssuedInput {
        csr_pem,
        dns_names,
        ip_addresses: ips,
        leaf_pem: &issued.certificate_pem,
        chain_pem: &issued.chain_pem,
        trust_anchor_pem: None,
        now,
        validity_days: None,
        csr_made_by_host: cert.key_source == KeySource::Host,
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
            let key = engine
                .secrets
                .open_str(&sealed, &job_key_owner(&job.id))
                .map_err(|e| permanent(format!("opening the persisted key: {e}")))?;
            let resealed = engine
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
    let lease = job
        .lease()
        .ok_or_else(|| permanent("the job holds no lease"))?;
    let mut outcome = Outcome::new("issued", Guard::Lease(lease), JobEnd::Complete);
    outcome.version = Some(NewCertificateVersion {
        certificate_id: cert.id.clone(),
        serial: checked.serial_hex.clone(),
        pem_chain,
        not_before: checked.not_before,
        not_after: checked.not_after,
        fingerprint_sha256: checked.fingerprint_sha256.clone(),
        encrypted_private_key,
        job_id: Some(job.id.clone()),
        ca_certificate_id: issued.ca_certificate_id.clone(),
        ca_order_id: job.order_id.clone(),
        renew_before_secs: Some(cert.renew_before_secs),
    });
    for target in targets {
        let mut deployment = NewJob::new(JobType::Deployment)
            .certificate(cert.id.clone())
            .target(target.id.clone())
            .agent(target.agent_id.clone());
        deployment.parent_job_id = Some(job.id.clone());
        outcome.follow_ups.push(deployment);
    }
    let (renew_at, window_too_long) = renewal_due_at(
        checked.not_before,
        checked.not_after,
        cert.renew_before_secs,
    );
    if window_too_long {
        tracing::warn!(certificate = %cert.id, renew_before_secs = cert.renew_before_secs,
            not_before = %checked.not_before, not_after = %checked.not_after, %renew_at,
            "the renewal window covers more than two thirds of the certificate's lifetime; \
             renewing at two thirds instead (shorten renew_before_days or ask the issuer for a longer validity)");
    }
    outcome.audit.push(audit(
        job,
        "issuance.completed",
        json!({
            "certificate_id": cert.id,
            "serial": checked.serial_hex,
            "fingerprint_sha256": checked.fingerprint_sha256,
            "not_after": checked.not_after,
            "renew_at": renew_at,
            "renewal_window_too_long": window_too_long,
            "deployments": targets.len(),
        }),
    ));
    outcome.notices.push(issued_notice(
        job,
        cert,
        issuer_name,
        &checked.serial_hex,
        checked.not_after,
    ));
    let Some(committed) = engine.store.commit_outcome(outcome).await? else {
        tracing::warn!(job = %job.id, "lost the job before recording the issued certificate; a retry polls or submits again");
        return Ok(());
    };
    let version_id = committed
        .version
        .as_ref()
        .map(|v| v.id.as_str())
        .unwrap_or_default();
    tracing::info!(job = %job.id, certificate = %cert.id, version = %version_id, deployments = targets.len(), "certificate issued");
    for deployment in &committed.follow_ups {
        match deployment.agent_id.as_deref() {
            Some(agent) if agent != crate::store::SENTINEL_AGENT_ID => {
                engine.wake.wake_agent(agent)
            }
            _ => engine.wake.wake_jobs(),
        }
    }
    if committed.notifications > 0 {
        engine.wake.wake_notifications();
    }
    Ok(())
}

/// Owner string binding a sealed private key to a certificate version.
pub fn version_key_owner(certificate_id: &str, fingerprint: &str) -> String {
    format!("certificate/{certificate_id}/{fingerprint}/private-key")
}

/// `certificate.issued` (the first version) or `certificate.renewed`,
/// clearing the certificate's expiry and issuance conditions.
fn issued_notice(
    job: &Job,
    cert: &Certificate,
    issuer_name: &str,
    serial: &str,
    not_after: DateTime<Utc>,
) -> crate::store::Notice {
    use super::events::{About, expiry_key, issuance_key, kind};
    let renewed = cert.current_version_id.is_some();
    let mut issued = cert.clone();
    issued.not_after = Some(not_after);
    let about = About {
        certificate: Some(issued),
        issuer_name: Some(issuer_name.to_owned()),
        serial: Some(serial.to_owned()),
        ..About::default()
    };
    let (event_kind, verb) = if renewed {
        (kind::RENEWED, "renewed")
    } else {
        (kind::ISSUED, "issued")
    };
    let summary = format!("certificate {} {verb} (serial {serial})", cert.name);
    notify::notice(
        &notify::Announcement {
            alerts: vec![
                crate::store::AlertChange::Resolve(expiry_key(&cert.id)),
                crate::store::AlertChange::Resolve(issuance_key(&cert.id)),
            ],
            ..notify::Announcement::new(
                event_kind,
                &format!("certificate/{}", cert.id),
                &summary,
                certplane_runtime::Level::Info,
                about.details(Some(job), None, json!({})),
            )
        },
        None,
    )
}
