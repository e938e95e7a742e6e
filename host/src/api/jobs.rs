//! Jobs: list and read them, and the operator's levers (cancel, retry,
//! verify) plus the verification result of a deployment.
//!
//! Every change is a conditional transition written together with its audit
//! event (actor: the API key), so two operators racing on one job cannot
//! both win it.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::{OperatorAccess, ReadAccess};
use super::error::{ApiError, ApiResult};
use super::listing::{Page, PageQuery, conditional_json};
use crate::store::{
    ActorType, Job, JobFilter, JobStatus, JobType, JobUpdate, NewAuditEvent, NewJob,
    SENTINEL_AGENT_ID, new_id, now,
};

/// How often a cancel retries when the job moved between read and write.
const CANCEL_ATTEMPTS: usize = 5;

/// Routes under `/api/v1`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(cancel_job))
        .routes(routes!(retry_job))
        .routes(routes!(verify_job))
        .routes(routes!(get_verification))
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobView {
    /// Job id.
    pub id: String,
    /// `issuance`, `renewal`, `deployment`, `verification` or `revocation`.
    #[schema(value_type = String, example = "deployment")]
    pub job_type: JobType,
    /// `pending`, `awaiting_csr`, `awaiting_approval`, `polling`, `running`,
    /// `completed`, `failed` or `cancelled`.
    #[schema(value_type = String, example = "pending")]
    pub status: JobStatus,
    /// Certificate concerned.
    pub certificate_id: Option<String>,
    /// Target deployed to / verified.
    pub target_id: Option<String>,
    /// Executor: `host` or an agent id.
    pub agent_id: Option<String>,
    /// Job that spawned this one.
    pub parent_job_id: Option<String>,
    /// Certificate version concerned.
    pub certificate_version_id: Option<String>,
    /// Job input.
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Value>,
    /// Attempts so far.
    pub attempts: i32,
    /// Attempt budget.
    pub max_attempts: i32,
    /// Next attempt time.
    pub run_at: DateTime<Utc>,
    /// Who holds (or last held) the lease.
    pub lease_owner: Option<String>,
    /// Lease expiry while running.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Last error (or cancellation reason).
    pub last_error: Option<String>,
    /// CA order id of an asynchronous issuance.
    pub order_id: Option<String>,
    /// When the order is next polled.
    pub next_poll_at: Option<DateTime<Utc>>,
    /// Stored verification result (see `GET /jobs/{id}/verification`).
    #[schema(value_type = Option<Object>)]
    pub verification_result: Option<Value>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Start of the current/last attempt.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached completed, failed or cancelled.
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<Job> for JobView {
    fn from(job: Job) -> Self {
        let payload = job.public_payload();
        JobView {
            id: job.id,
            job_type: job.job_type,
            status: job.status,
            certificate_id: job.certificate_id,
            target_id: job.target_id,
            agent_id: job.agent_id,
            parent_job_id: job.parent_job_id,
            certificate_version_id: job.certificate_version_id,
            payload,
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            run_at: job.run_at,
            lease_owner: job.lease_owner,
            lease_expires_at: job.lease_expires_at,
            last_error: job.last_error,
            order_id: job.order_id,
            next_poll_at: job.next_poll_at,
            verification_result: job.verification_result,
            created_at: job.created_at,
            updated_at: job.updated_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
        }
    }
}

/// `GET /jobs` query: filters and pagination.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobListQuery {
    /// Only jobs in this status.
    #[param(schema_with = super::openapi::job_status_param)]
    pub status: Option<JobStatus>,
    /// Only jobs of this type (the job's `job_type`; the old name `type` is
    /// refused).
    #[param(schema_with = super::openapi::job_type_param)]
    pub job_type: Option<JobType>,
    /// Only jobs of this certificate.
    pub certificate_id: Option<String>,
    /// Only jobs executed by this agent (`host` for host work).
    pub agent_id: Option<String>,
    /// 1-based page number.
    #[param(minimum = 1)]
    pub page: Option<u32>,
    /// Items per page (1–500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub per_page: Option<u32>,
}

/// Optional body of `POST /jobs/{id}/cancel`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// Why; kept as the job's `last_error` and in the audit event.
    pub reason: Option<String>,
}

/// Outcome of an endpoint probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerificationStatus {
    /// The endpoint serves the expected certificate.
    Verified,
    /// The endpoint serves another certificate.
    Mismatch,
    /// The endpoint could not be reached or did not complete a handshake.
    Unreachable,
    /// Not probed yet.
    Pending,
}

/// The verification result stored on a verification (or deployment) job,
/// in `jobs.verification_result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VerificationResult {
    /// Outcome.
    pub status: VerificationStatus,
    /// SHA-256 fingerprint the endpoint served (hex).
    #[serde(default)]
    pub observed_fingerprint: Option<String>,
    /// SHA-256 fingerprint of the deployed version (hex).
    #[serde(default)]
    pub expected_fingerprint: Option<String>,
    /// Details for operators (error text, endpoint probed, ...).
    #[serde(default)]
    pub detail: Option<String>,
    /// When the probe ran.
    #[serde(default, alias = "reported_at")]
    pub checked_at: Option<DateTime<Utc>>,
    /// Whether the served fingerprint is the expected one.
    #[serde(default)]
    pub fingerprint_matches: Option<bool>,
    /// Where the probe connected (`host`, `port`, `server_name`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub endpoint: Option<certplane_proto::Endpoint>,
    /// Who probed: an agent id, or `host`.
    #[serde(default)]
    pub reported_by: Option<String>,
}

/// `GET /jobs/{id}/verification` answer: the result and the job holding it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VerificationView {
    /// The job the result is stored on (the verification job, or the
    /// deployment itself).
    pub job_id: String,
    /// Outcome.
    pub status: VerificationStatus,
    /// SHA-256 fingerprint the endpoint served (hex).
    pub observed_fingerprint: Option<String>,
    /// SHA-256 fingerprint of the deployed version (hex).
    pub expected_fingerprint: Option<String>,
    /// Details for operators.
    pub detail: Option<String>,
    /// When the probe ran.
    pub checked_at: Option<DateTime<Utc>>,
    /// Whether the served fingerprint is the expected one.
    pub fingerprint_matches: Option<bool>,
    /// Where the probe connected (`host`, `port`, `server_name`).
    #[schema(value_type = Option<Object>)]
    pub endpoint: Option<certplane_proto::Endpoint>,
    /// Who probed: an agent id, or `host`.
    pub reported_by: Option<String>,
}

async fn load_job(state: &AppState, id: &str) -> ApiResult<Job> {
    state
        .store
        .get_job(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {id}")))
}

fn audit(actor: String, action: &str, job_id: &str, details: Value) -> NewAuditEvent {
    NewAuditEvent {
        actor,
        actor_type: ActorType::ApiKey,
        action: action.to_string(),
        subject_type: "job".to_string(),
        subject_id: Some(job_id.to_string()),
        details,
    }
}

/// Wakes whoever executes `job`: the host job processor, and the agent's
/// long-poll for agent work.
fn wake_executor(state: &AppState, job: &Job) {
    state.wake.wake_jobs();
    if let Some(agent) = job.agent_id.as_deref().filter(|a| *a != SENTINEL_AGENT_ID) {
        state.wake.wake_agent(agent);
    }
}

/// List jobs, newest first.
#[utoipa::path(get, path = "/jobs", tag = "jobs", params(JobListQuery),
    responses(
        (status = 200, body = Page<JobView>),
        (status = 304, description = "unchanged (If-None-Match)"),
        (status = 400, description = "bad filter or page", body = super::error::ErrorBody),
    ),
    security(("bearer" = ["read_only"])))]
async fn list_jobs(
    State(state): State<AppState>,
    _caller: ReadAccess,
    headers: HeaderMap,
    query: Result<Query<JobListQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    let page = PageQuery {
        page: q.page,
        per_page: q.per_page,
    };
    let (page_no, per_page) = page.resolve()?;
    let filter = JobFilter {
        status: q.status,
        job_type: q.job_type,
        certificate_id: q.certificate_id,
        agent_id: q.agent_id,
        limit: Some(per_page),
        offset: Some(super::listing::offset(page_no, per_page)),
    };
    let total = state.store.count_jobs(&filter).await?;
    let items: Vec<JobView> = state
        .store
        .list_jobs(&filter)
        .await?
        .into_iter()
        .map(JobView::from)
        .collect();
    Ok(conditional_json(
        &headers,
        &Page {
            items,
            page: page_no,
            per_page,
            total,
        },
    ))
}

/// One job.
#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses(
        (status = 200, body = JobView),
        (status = 304, description = "unchanged (If-None-Match)"),
        (status = 404, body = super::error::ErrorBody),
    ),
    security(("bearer" = ["read_only"])))]
async fn get_job(
    State(state): State<AppState>,
    _caller: ReadAccess,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let job = load_job(&state, &id).await?;
    Ok(conditional_json(&headers, &JobView::from(job)))
}

/// Cancel a job that has not completed or been cancelled yet.
#[utoipa::path(post, path = "/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    request_body(content = Option<CancelRequest>, description = "optional reason"),
    responses(
        (status = 200, description = "cancelled", body = JobView),
        (status = 400, body = super::error::ErrorBody),
        (status = 403, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody),
        (status = 409, description = "already completed or cancelled", body = super::error::ErrorBody),
    ),
    security(("bearer" = ["operator"])))]
async fn cancel_job(
    State(state): State<AppState>,
    OperatorAccess(caller): OperatorAccess,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let request: CancelRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CancelRequest::default()
    } else {
        // `null` is no body too: the document allows it, and generated
        // clients send it for an absent optional body.
        serde_json::from_slice::<Option<CancelRequest>>(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?
            .unwrap_or_default()
    };
    let actor = caller.actor();
    let reason = request
        .reason
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| format!("cancelled by {actor}"));
    // The job may move (claimed, completed) between our read and the
    // conditional write: re-read and try again a few times.
    for _ in 0..CANCEL_ATTEMPTS {
        let job = load_job(&state, &id).await?;
        if job.status.is_terminal() {
            return Err(ApiError::invalid_state(format!(
                "job {id} is already {}",
                job.status
            )));
        }
        let event = audit(
            actor.clone(),
            "job.cancel",
            &id,
            json!({ "from": job.status, "reason": reason }),
        );
        let hold_until =
            now() + chrono::Duration::seconds(state.config.jobs.cancel_hold_secs as i64);
        if state
            .store
            .cancel_job_by_operator(&id, job.status, &reason, event, hold_until)
            .await?
        {
            // Running here: stop its connector call now (on another
            // replica the job notices within a second).
            if state.runner.cancel(&id) {
                tracing::info!(job = %id, "running job stopped by its cancellation");
            }
            if job.order_id.is_some() {
                // An order pending at the CA: give it up there too, when
                // the issuer can (not waited for).
                tokio::spawn(crate::engine::lifecycle::cancel_order(
                    state.engine.clone(),
                    job.clone(),
                ));
            }
            if let Some(agent) = job.agent_id.as_deref().filter(|a| *a != SENTINEL_AGENT_ID) {
                // A long-polling agent learns about the cancellation sooner.
                state.wake.wake_agent(agent);
            }
            let job = load_job(&state, &id).await?;
            return Ok(Json(JobView::from(job)).into_response());
        }
    }
    Err(ApiError::invalid_state(format!(
        "job {id} kept changing; try again"
    )))
}

/// Retry a failed job now (Failed → Pending), ignoring its backoff. Grants
/// one more attempt even when the budget is spent.
#[utoipa::path(post, path = "/jobs/{id}/retry", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses(
        (status = 200, description = "pending again", body = JobView),
        (status = 403, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody),
        (status = 409, description = "the job is not failed", body = super::error::ErrorBody),
    ),
    security(("bearer" = ["operator"])))]
async fn retry_job(
    State(state): State<AppState>,
    OperatorAccess(caller): OperatorAccess,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let job = load_job(&state, &id).await?;
    if job.status != JobStatus::Failed {
        return Err(ApiError::invalid_state(format!(
            "job {id} is {}, only failed jobs can be retried",
            job.status
        )));
    }
    let event = audit(
        caller.actor(),
        "job.retry",
        &id,
        json!({ "attempts": job.attempts, "max_attempts": job.max_attempts }),
    );
    let update = JobUpdate {
        run_at: Some(now()),
        ..JobUpdate::default()
    };
    let won = state
        .store
        .transition_job(
            &id,
            JobStatus::Failed,
            JobStatus::Pending,
            update,
            Some(event),
        )
        .await?;
    if !won {
        return Err(ApiError::invalid_state(format!(
            "job {id} changed meanwhile and is no longer failed"
        )));
    }
    wake_executor(&state, &job);
    let job = load_job(&state, &id).await?;
    Ok(Json(JobView::from(job)).into_response())
}

/// Verify a completed deployment again: creates a verification job for the
/// same target and certificate version.
#[utoipa::path(post, path = "/jobs/{id}/verify", tag = "jobs",
    params(("id" = String, Path, description = "deployment job id")),
    responses(
        (status = 202, description = "verification job created", body = JobView,
            headers(("Location" = String, description = "the new verification job"))),
        (status = 403, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody),
        (status = 409, description = "the deployment has not completed", body = super::error::ErrorBody),
        (status = 422, description = "not a deployment job, or it has no target", body = super::error::ErrorBody),
    ),
    security(("bearer" = ["operator"])))]
async fn verify_job(
    State(state): State<AppState>,
    OperatorAccess(caller): OperatorAccess,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let deployment = load_job(&state, &id).await?;
    if deployment.job_type != JobType::Deployment {
        return Err(ApiError::validation(format!(
            "job {id} is a {} job; only deployments can be verified",
            deployment.job_type
        )));
    }
    if deployment.status != JobStatus::Completed {
        return Err(ApiError::invalid_state(format!(
            "deployment {id} is {}; it can be verified once completed",
            deployment.status
        )));
    }
    let Some(target_id) = deployment.target_id.clone() else {
        return Err(ApiError::validation(format!(
            "deployment {id} has no target to verify"
        )));
    };
    let job_id = new_id();
    let event = audit(
        caller.actor(),
        "job.verify",
        &job_id,
        json!({ "deployment_job_id": deployment.id, "target_id": target_id }),
    );
    let mut new = NewJob::new(JobType::Verification).target(target_id);
    new.certificate_id = deployment.certificate_id.clone();
    new.certificate_version_id = deployment.certificate_version_id.clone();
    new.agent_id = deployment.agent_id.clone();
    new.parent_job_id = Some(deployment.id.clone());
    let job = state
        .store
        .create_job_with_id(&job_id, new, Some(&event))
        .await?;
    wake_executor(&state, &job);
    let location = format!("/api/v1/jobs/{}", job.id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(JobView::from(job)),
    )
        .into_response())
}

/// The stored verification result of a deployment or verification job: the
/// job's own result, else (for a deployment) that of its newest
/// verification job holding one.
#[utoipa::path(get, path = "/jobs/{id}/verification", tag = "jobs",
    params(("id" = String, Path, description = "deployment or verification job id")),
    responses(
        (status = 200, body = VerificationView),
        (status = 304, description = "unchanged (If-None-Match)"),
        (status = 404, description = "no such job, or no result yet", body = super::error::ErrorBody),
    ),
    security(("bearer" = ["read_only"])))]
async fn get_verification(
    State(state): State<AppState>,
    _caller: ReadAccess,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let job = load_job(&state, &id).await?;
    if !matches!(job.job_type, JobType::Deployment | JobType::Verification) {
        return Err(ApiError::not_found(format!(
            "verification of {} job {id}",
            job.job_type
        )));
    }
    let mut holder = job.verification_result.clone().map(|r| (job.id.clone(), r));
    if holder.is_none() && job.job_type == JobType::Deployment {
        let filter = JobFilter {
            job_type: Some(JobType::Verification),
            certificate_id: job.certificate_id.clone(),
            agent_id: None,
            status: None,
            limit: Some(u32::MAX),
            offset: None,
        };
        // Newest first: the first child holding a result is the latest one.
        holder = state
            .store
            .list_jobs(&filter)
            .await?
            .into_iter()
            .filter(|v| v.parent_job_id.as_deref() == Some(job.id.as_str()))
            .find_map(|v| v.verification_result.map(|r| (v.id, r)));
    }
    let Some((job_id, raw)) = holder else {
        return Err(ApiError::not_found(format!(
            "verification result of job {id} (none yet)"
        )));
    };
    let result: VerificationResult = serde_json::from_value(raw).map_err(|e| {
        ApiError::internal(format!(
            "job {job_id} holds an unreadable verification result: {e}"
        ))
    })?;
    let view = VerificationView {
        job_id,
        status: result.status,
        observed_fingerprint: result.observed_fingerprint,
        expected_fingerprint: result.expected_fingerprint,
        detail: result.detail,
        checked_at: result.checked_at,
        fingerprint_matches: result.fingerprint_matches,
        endpoint: result.endpoint,
        reported_by: result.reported_by,
    };
    Ok(conditional_json(&headers, &view))
}
