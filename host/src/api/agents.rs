//! Agents: registration (bootstrap token), heartbeats, the work long-poll,
//! CSR submission, result reporting and reports on the http-01 challenges
//! an agent serves (agent credential), and the operator side: listing and
//! retirement.
//!
//! A job of another agent is indistinguishable from a missing job (404), so
//! one agent's credential reveals nothing about another agent's work.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::engine::agent_reports;
use crate::engine::challenges::agent as agent_challenges;
use crate::engine::ending::{end_superseded, host_actor, superseded_by};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use certplane_proto::agent::{
    AgentJob, ChallengeReport, ChallengeReportAccepted, CsrAccepted, CsrRequest, HeartbeatReply,
    HeartbeatRequest, JobCertificate, JobCertificateVersion, JobTarget, RegisterRequest,
    Registered, ResultAccepted, ResultRequest, WorkQuery, WorkReply,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::{
    AGENT_CREDENTIAL_PREFIX, AdminAccess, AgentCaller, ReadAccess, bootstrap_token_index,
    hash_token, random_secret,
};
use super::error::{ApiError, ApiResult};
use super::listing::{Page, PageQuery, conditional_json};
use crate::store::{
    ActorType, Agent, AgentDependencies, AgentStatus, HeartbeatOutcome, Job, JobFailure, JobStatus,
    NewAgent, NewAuditEvent, RetireAgent, RetireOutcome, Target, new_id,
};

/// Jobs handed out per work poll unless the agent asks for fewer/more.
const DEFAULT_WORK_LIMIT: u32 = 10;
/// Most jobs one work poll may claim.
const MAX_WORK_LIMIT: u32 = 100;
/// Longest agent name accepted.
const MAX_NAME_LEN: usize = 200;

/// Routes under `/api/v1`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register_agent))
        .routes(routes!(heartbeat))
        .routes(routes!(poll_work))
        .routes(routes!(submit_csr))
        .routes(routes!(report_result))
        .routes(routes!(report_challenge))
        .routes(routes!(list_agents))
        .routes(routes!(list_retired_agents))
        .routes(routes!(get_agent, retire_agent))
}

// ---------------------------------------------------------------- views

/// An agent as the API shows it (never its credential).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AgentView {
    /// Agent id (`host` for the built-in sentinel).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Built-in agent that can never be retired.
    pub sentinel: bool,
    /// `active` or `retired`.
    pub status: String,
    /// Last heartbeat received.
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// Registration time.
    pub created_at: DateTime<Utc>,
    /// Retirement time.
    pub retired_at: Option<DateTime<Utc>>,
    /// Why it was retired.
    pub retired_reason: Option<String>,
    /// Health, derived rather than stored: an active agent that sent a
    /// heartbeat within `agents.offline_after_secs`. The built-in `host`
    /// agent is online while the host runs.
    pub online: bool,
}

impl AgentView {
    /// The view of `a` at `now`.
    pub fn new(a: &Agent, offline_after_secs: u64, now: DateTime<Utc>) -> Self {
        let fresh = a.last_heartbeat_at.is_some_and(|t| {
            now.signed_duration_since(t).num_seconds() < offline_after_secs as i64
        });
        AgentView {
            online: a.status == AgentStatus::Active && (a.sentinel || fresh),
            id: a.id.clone(),
            name: a.name.clone(),
            sentinel: a.sentinel,
            status: a.status.to_string(),
            last_heartbeat_at: a.last_heartbeat_at,
            created_at: a.created_at,
            retired_at: a.retired_at,
            retired_reason: a.retired_reason.clone(),
        }
    }
}

/// What still depends on an agent (blocks a plain retirement).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct DependencyCounts {
    /// Targets of the agent not retired.
    pub active_targets: i64,
    /// Active certificates deployed through those targets.
    pub active_certificates: i64,
    /// Open jobs (pending, awaiting a CSR or an approval, polling,
    /// running) routed to the agent: `open_jobs`, as a target's counts say.
    pub open_jobs: i64,
}

impl From<AgentDependencies> for DependencyCounts {
    fn from(d: AgentDependencies) -> Self {
        DependencyCounts {
            active_targets: d.active_targets,
            active_certificates: d.active_certificates,
            open_jobs: d.pending_jobs,
        }
    }
}

/// One agent with its dependency counts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AgentDetail {
    /// The agent.
    #[serde(flatten)]
    pub agent: AgentView,
    /// What depends on it.
    pub dependencies: DependencyCounts,
}

// ---------------------------------------------------------- registration

/// Register an agent with a bootstrap token; returns its credential once.
#[utoipa::path(post, path = "/agents/register", tag = "agents",
    request_body = RegisterRequest,
    responses((status = 201, body = Registered),
        (status = 401, description = "unknown bootstrap token", body = super::error::ErrorBody),
        (status = 422, description = "invalid name", body = super::error::ErrorBody),
        (status = 429, description = "too many registrations from this address or with this token; `Retry-After` says when to try again", body = super::error::ErrorBody)))]
async fn register_agent(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Result<Json<RegisterRequest>, JsonRejection>,
) -> ApiResult<Response> {
    // Unauthenticated: every attempt counts against its source address
    // (the pace of guessing), a valid one against its token as well (the
    // pace of a fleet), so neither a flood from one address nor wrong
    // tokens from many refuse agents registering elsewhere.
    let limits = state.rate_limits.registration(&state.config.agents);
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    if let Err(refused) = limits.check_address(peer) {
        tracing::debug!(peer = ?peer, retry_after_secs = refused.after_secs,
            "agent registration refused: too many from this address");
        return Ok(refused.into_response());
    }
    let Json(req) = body?;
    let Some(token) =
        bootstrap_token_index(&state.config.agents.bootstrap_tokens, &req.bootstrap_token)
    else {
        return Err(ApiError::unauthorized("unknown bootstrap token"));
    };
    if let Err(refused) = limits.check_token(token) {
        tracing::info!(peer = ?peer, retry_after_secs = refused.after_secs,
            "agent registration refused: too many with this bootstrap token");
        return Ok(refused.into_response());
    }
    let name = req.name.trim();
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(ApiError::validation(format!(
            "name must be 1 to {MAX_NAME_LEN} printable characters"
        )));
    }
    // The credential is `cpa_<id>.<secret>` and only the secret's hash is
    // stored, so the secret can be drawn before the id exists.
    let secret = random_secret();
    let id = new_id();
    let event = NewAuditEvent {
        actor: id.clone(),
        actor_type: ActorType::Agent,
        action: "agent.register".into(),
        subject_type: "agent".into(),
        subject_id: Some(id.clone()),
        details: json!({ "name": name }),
    };
    let agent = state
        .store
        .register_agent_with_id(
            &id,
            NewAgent {
                name: name.to_owned(),
                credential_hash: hash_token(&secret),
            },
            Some(&event),
        )
        .await?;
    let body = Registered {
        credential: format!("{AGENT_CREDENTIAL_PREFIX}{}.{secret}", agent.id),
        agent_id: agent.id,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

// ------------------------------------------------------------- heartbeat

fn gone(agent_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "agent_retired",
        format!("agent {agent_id} was retired; stop polling"),
    )
}

/// How far back a heartbeat reports the agent's cancelled jobs: longer
/// than any connector call may run.
const CANCELLED_JOBS_WINDOW_MINUTES: i64 = 10;
/// Most cancelled jobs one heartbeat reports.
const CANCELLED_JOBS_MAX: u32 = 100;

/// Most held jobs one heartbeat may name.
const MAX_HELD_JOBS: usize = 1_000;

/// Record a heartbeat of the calling agent and extend the leases of the
/// jobs it says it holds (while less than half is left, for at most
/// [`crate::engine::runner::MAX_HOLD_LEASES`] lease lengths from the
/// claim); the answer lists its recently cancelled jobs, so one it is
/// running stops. The body is optional.
#[utoipa::path(post, path = "/agents/heartbeat", tag = "agents",
    request_body(content = HeartbeatRequest, description = "optional: the jobs the agent holds"),
    responses((status = 200, body = HeartbeatReply),
        (status = 401, body = super::error::ErrorBody),
        (status = 410, description = "the agent is retired", body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)),
    security(("agent" = [])))]
async fn heartbeat(
    State(state): State<AppState>,
    caller: AgentCaller,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let id = caller.agent.id;
    let request: HeartbeatRequest = if body.iter().all(u8::is_ascii_whitespace) {
        HeartbeatRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::validation(format!("invalid heartbeat body: {e}")))?
    };
    if request.held_jobs.len() > MAX_HELD_JOBS {
        return Err(ApiError::validation(format!(
            "held_jobs names {} jobs; at most {MAX_HELD_JOBS}",
            request.held_jobs.len()
        )));
    }
    match state.store.record_heartbeat(&id).await? {
        HeartbeatOutcome::Recorded => {
            let length = state.store.options().lease_duration;
            let hold = chrono::Duration::from_std(crate::engine::runner::hold_limit(length))
                .unwrap_or(chrono::Duration::MAX);
            let renewed = state
                .store
                .renew_agent_leases(
                    &id,
                    &request.held_jobs,
                    crate::engine::runner::renew_within(length),
                    Utc::now()
                        .checked_sub_signed(hold)
                        .unwrap_or(DateTime::<Utc>::MIN_UTC),
                )
                .await?;
            if renewed > 0 {
                tracing::debug!(agent = %id, renewed, "leases of held jobs extended");
            }
            let since = Utc::now() - chrono::Duration::minutes(CANCELLED_JOBS_WINDOW_MINUTES);
            let cancelled_jobs = state
                .store
                .cancelled_jobs_of_agent(&id, since, CANCELLED_JOBS_MAX)
                .await?;
            Ok(Json(HeartbeatReply {
                agent_id: id,
                server_time: Utc::now(),
                cancelled_jobs,
            })
            .into_response())
        }
        HeartbeatOutcome::Retired => Err(gone(&id)),
        HeartbeatOutcome::NotFound => Err(ApiError::unauthorized("unknown agent credential")),
    }
}

// ------------------------------------------------------------------ work

/// Long-poll for work: claims the caller's pending jobs and returns them
/// with its jobs awaiting a CSR and the http-01 challenges it is to publish
/// or withdraw; waits up to `wait_secs` when there is none of either.
#[utoipa::path(get, path = "/agents/work", tag = "agents", params(WorkQuery),
    responses((status = 200, body = WorkReply),
        (status = 400, body = super::error::ErrorBody),
        (status = 401, body = super::error::ErrorBody),
        (status = 410, description = "the agent is retired", body = super::error::ErrorBody)),
    security(("agent" = [])))]
pub(super) async fn poll_work(
    State(state): State<AppState>,
    caller: AgentCaller,
    query: Result<Query<WorkQuery>, QueryRejection>,
) -> ApiResult<Json<WorkReply>> {
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(DEFAULT_WORK_LIMIT);
    if limit == 0 || limit > MAX_WORK_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_WORK_LIMIT}"
        )));
    }
    let wait = query
        .wait_secs
        .unwrap_or(0)
        .min(state.config.api.long_poll_max_secs);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let agent_id = caller.agent.id;
    let signal = state.wake.agent(&agent_id);
    // Each store call below is boxed: this future is held, parked, for up
    // to `long_poll_max_secs` by every agent at once, and an unboxed call's
    // state (several KiB of query futures) would be part of its size for
    // the whole wait. Boxed, it is allocated only while the call runs.
    loop {
        if let Some(reply) = Box::pin(work_now(&state, &agent_id, limit)).await? {
            return Ok(Json(reply));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(Json(WorkReply::default()));
        }
        // A wake-up sent since the claim is kept as a permit by `Notify`,
        // so work created in between is not missed. On timeout the loop
        // checks once more and then returns.
        let woken = tokio::select! {
            // Shutting down: answer now (no work) rather than hold the
            // server's graceful shutdown until the wait ends.
            () = state.wake.stopping.cancelled() => {
                return Ok(Json(WorkReply::default()));
            }
            r = tokio::time::timeout_at(deadline, signal.notified()) => r.is_ok(),
        };
        if woken {
            // Woken: a retirement also wakes the poll, which then returns
            // (the agent's next call gets 410).
            let active = Box::pin(state.store.get_agent(&agent_id))
                .await?
                .is_some_and(|a| a.status == AgentStatus::Active);
            if !active {
                return Ok(Json(WorkReply::default()));
            }
        }
    }
}

/// The work agent `agent_id` has now: its pending jobs claimed, its jobs
/// awaiting a CSR and its challenge tasks; `None` when there is none.
async fn work_now(state: &AppState, agent_id: &str, limit: u32) -> ApiResult<Option<WorkReply>> {
    let started = std::time::Instant::now();
    let jobs = state.store.claim_pending_for_agent(agent_id, limit).await?;
    state
        .metrics
        .observe_claim("claim_pending_for_agent", started.elapsed());
    let challenges = agent_challenges::tasks(&state.engine, agent_id).await?;
    if jobs.is_empty() && challenges.is_empty() {
        return Ok(None);
    }
    Ok(Some(WorkReply {
        jobs: job_views(state, jobs).await?,
        challenges,
    }))
}

/// Builds the views of handed-out jobs. A claimed job whose view cannot be
/// built (its target's secrets do not open) is failed permanently and left
/// out, instead of sitting leased to an agent that never saw it.
async fn job_views(state: &AppState, jobs: Vec<Job>) -> ApiResult<Vec<AgentJob>> {
    let mut views = Vec::with_capacity(jobs.len());
    for job in jobs {
        match job_view(state, &job).await? {
            Ok(Handout::Job(view)) => views.push(*view),
            Ok(Handout::Superseded(current)) => {
                // A newer version replaced this one: its own deployments
                // carry it to the agent, this one is not handed out.
                end_superseded(&state.engine, &job, &current, host_actor()).await?;
            }
            Err(problem) => {
                tracing::warn!(job_id = %job.id, %problem, "cannot hand job to its agent");
                if let Some(lease) = job.lease() {
                    state
                        .store
                        .fail_job(&lease, JobFailure::permanent(problem))
                        .await?;
                }
            }
        }
    }
    Ok(views)
}

/// What a claimed job becomes for its agent.
enum Handout {
    /// Handed out.
    Job(Box<AgentJob>),
    /// A deployment of a version that this one (the current) replaced.
    Superseded(String),
}

/// The view of one job; the inner error is a problem with the job's data.
async fn job_view(state: &AppState, job: &Job) -> ApiResult<Result<Handout, String>> {
    let certificate = match &job.certificate_id {
        Some(id) => state.store.get_certificate(id).await?,
        None => None,
    };
    if job.status == JobStatus::Running
        && let Some(current) = superseded_by(
            job,
            certificate
                .as_ref()
                .and_then(|c| c.current_version_id.as_deref()),
        )
    {
        return Ok(Ok(Handout::Superseded(current.to_owned())));
    }
    let certificate_version = match (&job.certificate_version_id, &job.certificate_id) {
        (Some(version_id), Some(cert_id)) => state
            .store
            .list_certificate_versions(cert_id)
            .await?
            .into_iter()
            .find(|v| &v.id == version_id)
            .map(|v| JobCertificateVersion {
                id: v.id,
                serial: v.serial,
                pem_chain: v.pem_chain,
                fingerprint_sha256: v.fingerprint_sha256,
                not_before: v.not_before,
                not_after: v.not_after,
            }),
        _ => None,
    };
    // Jobs awaiting a CSR only need the certificate; the others run a target.
    let target = match (&job.target_id, job.status) {
        (Some(id), JobStatus::Running) => match state.store.get_target(id).await? {
            Some(t) => match target_view(state, t) {
                Ok(view) => Some(view),
                Err(problem) => return Ok(Err(problem)),
            },
            None => None,
        },
        _ => None,
    };
    let running = job.status == JobStatus::Running;
    Ok(Ok(Handout::Job(Box::new(AgentJob {
        id: job.id.clone(),
        job_type: job.job_type.to_string(),
        status: job.status.to_string(),
        attempt: job.attempts,
        lease_expires_at: if running { job.lease_expires_at } else { None },
        payload: job.public_payload(),
        certificate: certificate.map(|c| JobCertificate {
            id: c.id,
            name: c.name,
            common_name: c.common_name,
            sans: c.sans,
            key_type: c.key_type,
            target_options: c.target_options,
        }),
        certificate_version,
        target,
    }))))
}

fn target_view(state: &AppState, target: Target) -> Result<JobTarget, String> {
    let owner = format!("target/{}", target.id);
    let secrets = match target.encrypted_secrets.as_deref() {
        None | Some([]) => BTreeMap::new(),
        Some(bytes) => {
            let sealed = std::str::from_utf8(bytes)
                .map_err(|_| format!("secrets of target {} are not sealed text", target.id))?;
            state
                .secrets
                .open_map(sealed, &owner)
                .map_err(|e| format!("secrets of target {}: {e}", target.id))?
                .into_iter()
                .map(|(name, value)| (name, value.as_str().to_owned()))
                .collect()
        }
    };
    let plugin_sha256 = state
        .plugins
        .get(&target.plugin_name)
        .filter(|p| p.version() == target.plugin_version)
        .map(|p| p.sha256().to_string());
    Ok(JobTarget {
        id: target.id,
        name: target.name,
        plugin_name: target.plugin_name,
        plugin_version: target.plugin_version,
        plugin_sha256,
        settings: target.settings,
        grants: target.grants,
        secrets,
    })
}

// ------------------------------------------------------------------- CSR

/// Submit the CSR of a job awaiting one (the key stays on the agent).
/// Submitting the same CSR again is answered as a replay.
#[utoipa::path(post, path = "/agents/jobs/{id}/csr", tag = "agents",
    params(("id" = String, Path, description = "job id")),
    request_body = CsrRequest,
    responses((status = 200, body = CsrAccepted),
        (status = 404, description = "no such job of this agent", body = super::error::ErrorBody),
        (status = 409, description = "the job is not awaiting a CSR (and this is not a replay)", body = super::error::ErrorBody),
        (status = 410, body = super::error::ErrorBody),
        (status = 422, description = "CSR invalid or for other names", body = super::error::ErrorBody)),
    security(("agent" = [])))]
async fn submit_csr(
    State(state): State<AppState>,
    caller: AgentCaller,
    Path(job_id): Path<String>,
    body: Result<Json<CsrRequest>, JsonRejection>,
) -> ApiResult<Json<CsrAccepted>> {
    let Json(req) = body?;
    let accepted =
        agent_reports::submit_csr(&state.engine, &caller.agent.id, &job_id, req.csr_pem).await?;
    Ok(Json(accepted))
}

/// Report the result of a claimed job. Reporting the same end of the same
/// attempt again is answered as a replay.
#[utoipa::path(post, path = "/agents/jobs/{id}/result", tag = "agents",
    params(("id" = String, Path, description = "job id")),
    request_body = ResultRequest,
    responses((status = 200, body = ResultAccepted),
        (status = 404, description = "no such job of this agent", body = super::error::ErrorBody),
        (status = 409, description = "the agent holds no live lease on the job", body = super::error::ErrorBody),
        (status = 410, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)),
    security(("agent" = [])))]
async fn report_result(
    State(state): State<AppState>,
    caller: AgentCaller,
    Path(job_id): Path<String>,
    body: Result<Json<ResultRequest>, JsonRejection>,
) -> ApiResult<Json<ResultAccepted>> {
    let Json(req) = body?;
    let accepted =
        agent_reports::report_result(&state.engine, &caller.agent.id, &job_id, req).await?;
    Ok(Json(accepted))
}

/// Report on an http-01 challenge this agent serves (webroot or its own
/// listener):
/// `ready` or `failed` after publishing, `withdrawn` after removing it.
/// A repeated report changes nothing (`changed: false`).
#[utoipa::path(post, path = "/agents/jobs/{job_id}/challenges/{challenge_id}", tag = "agents",
    params(("job_id" = String, Path, description = "job id"),
        ("challenge_id" = String, Path, description = "challenge id within the job")),
    request_body = ChallengeReport,
    responses((status = 200, body = ChallengeReportAccepted),
        (status = 404, description = "no such challenge routed to this agent", body = super::error::ErrorBody),
        (status = 410, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)),
    security(("agent" = [])))]
async fn report_challenge(
    State(state): State<AppState>,
    caller: AgentCaller,
    Path((job_id, challenge_id)): Path<(String, String)>,
    body: Result<Json<ChallengeReport>, JsonRejection>,
) -> ApiResult<Json<ChallengeReportAccepted>> {
    let Json(report) = body?;
    let accepted = agent_challenges::report(
        &state.engine,
        &caller.agent.id,
        &job_id,
        &challenge_id,
        report,
    )
    .await?;
    Ok(Json(accepted))
}

// ------------------------------------------------------------- operators

/// `GET /agents` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AgentListQuery {
    /// 1-based page number.
    #[param(minimum = 1)]
    pub page: Option<u32>,
    /// Items per page (1–500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub per_page: Option<u32>,
    /// Also list retired agents (`true`/`false`, default `false`).
    #[serde(default)]
    pub include_retired: bool,
}

fn page_of(
    state: &AppState,
    agents: &[Agent],
    page: Option<u32>,
    per_page: Option<u32>,
) -> ApiResult<Page<AgentView>> {
    let now = Utc::now();
    let offline_after = state.config.agents.offline_after_secs;
    let views: Vec<AgentView> = agents
        .iter()
        .map(|a| AgentView::new(a, offline_after, now))
        .collect();
    Page::of(&views, PageQuery { page, per_page })
}

/// List agents (active ones unless `include_retired=true`).
#[utoipa::path(get, path = "/agents", tag = "agents", params(AgentListQuery),
    responses((status = 200, body = Page<AgentView>), (status = 304, description = "unchanged")),
    security(("bearer" = ["read_only"])))]
async fn list_agents(
    State(state): State<AppState>,
    _caller: ReadAccess,
    headers: HeaderMap,
    query: Result<Query<AgentListQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    let agents = state.store.list_agents(q.include_retired).await?;
    let page = page_of(&state, &agents, q.page, q.per_page)?;
    Ok(conditional_json(&headers, &page))
}

/// List retired agents only. Deprecated: `GET /agents?include_retired=true`
/// lists them (with the active ones), the way every list shows retired
/// items; this alias stays for operator CLIs that still call it.
#[utoipa::path(get, path = "/agents/retired", tag = "agents", params(PageQuery),
    responses((status = 200, body = Page<AgentView>), (status = 304, description = "unchanged")),
    security(("bearer" = ["read_only"])))]
async fn list_retired_agents(
    State(state): State<AppState>,
    _caller: ReadAccess,
    headers: HeaderMap,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    let retired: Vec<Agent> = state
        .store
        .list_agents(true)
        .await?
        .into_iter()
        .filter(|a| a.status == AgentStatus::Retired)
        .collect();
    let page = page_of(&state, &retired, q.page, q.per_page)?;
    let mut response = conditional_json(&headers, &page);
    let deprecation = [
        ("deprecation", "true"),
        (
            "link",
            "</api/v1/agents?include_retired=true>; rel=\"successor-version\"",
        ),
    ];
    for (name, value) in deprecation {
        response
            .headers_mut()
            .insert(name, axum::http::HeaderValue::from_static(value));
    }
    Ok(response)
}

/// One agent with its dependency counts.
#[utoipa::path(get, path = "/agents/{id}", tag = "agents",
    params(("id" = String, Path, description = "agent id")),
    responses((status = 200, body = AgentDetail), (status = 304, description = "unchanged (If-None-Match)"),
        (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = ["read_only"])))]
async fn get_agent(
    State(state): State<AppState>,
    _caller: ReadAccess,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let agent = state
        .store
        .get_agent(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("agent {id}")))?;
    Ok(conditional_json(&headers, &detail(&state, &agent).await?))
}

/// An agent as `GET /agents/{id}` shows it.
async fn detail(state: &AppState, agent: &Agent) -> ApiResult<AgentDetail> {
    let dependencies = state.store.agent_dependencies(&agent.id).await?.into();
    Ok(AgentDetail {
        agent: AgentView::new(agent, state.config.agents.offline_after_secs, Utc::now()),
        dependencies,
    })
}

/// `DELETE /agents/{id}` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RetireQuery {
    /// Retire despite dependencies: also retires the agent's targets and
    /// cancels its open jobs. Requires `reason`.
    pub force: Option<bool>,
    /// Why (required with `force`; recorded on the agent and its targets).
    pub reason: Option<String>,
    /// With `force`: move the certificates whose keys the agent held
    /// (agent key mode, key-holding target on this agent) to this target
    /// instead of disabling them. A target on another agent gets a new key
    /// there, a target the host runs a host-generated one, each by a
    /// renewal made due at once.
    pub move_to_target: Option<String>,
}

/// Retire an agent (soft; never a hard delete). With `force`, the
/// certificates whose private keys it held are disabled
/// (`disabled_reason`: `key holder agent <id> was retired`) and their open
/// issuance/renewal jobs cancelled, or moved to `move_to_target`; all in
/// one transaction with audit rows. 200 with the agent as `GET` shows it,
/// also when it already was retired.
#[utoipa::path(delete, path = "/agents/{id}", tag = "agents",
    params(("id" = String, Path, description = "agent id"), RetireQuery),
    responses((status = 200, description = "retired (also when it already was)", body = AgentDetail),
        (status = 400, description = "force without a reason", body = super::error::ErrorBody),
        (status = 422, description = "move_to_target unusable", body = super::error::ErrorBody),
        (status = 403, description = "sentinel agent", body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody),
        (status = 409, description = "dependencies block it; body has `counts`", body = super::error::ErrorBody)),
    security(("bearer" = ["admin"])))]
async fn retire_agent(
    State(state): State<AppState>,
    caller: AdminAccess,
    Path(id): Path<String>,
    query: Result<Query<RetireQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    let force = q.force.unwrap_or(false);
    let notices = match state.store.get_agent(&id).await? {
        Some(agent) => vec![crate::engine::agent_health::retired_notice(
            &agent,
            q.reason.as_deref().map(str::trim).filter(|r| !r.is_empty()),
            force,
        )],
        None => Vec::new(),
    };
    let outcome = state
        .store
        .retire_agent(
            &id,
            RetireAgent {
                force,
                reason: q.reason,
                actor: caller.0.actor(),
                actor_type: ActorType::ApiKey,
                notices,
                move_to_target: q.move_to_target,
            },
        )
        .await?;
    match outcome {
        RetireOutcome::Retired {
            agent,
            targets_retired,
            jobs_cancelled,
            certificates_disabled,
            certificates_moved,
        } => {
            tracing::info!(agent = %id, force, targets_retired, jobs_cancelled,
                certificates_disabled, certificates_moved, "agent retired");
            // A parked long-poll returns now; its next call gets 410.
            // (The signal is kept: forgetting it could let a poll that
            // raced the retirement miss this wake-up.)
            state.wake.wake_agent(&id);
            state.wake.wake_notifications();
            if certificates_moved > 0 {
                // Moved certificates are due now, on their new key holder.
                state.wake.renewals.notify_one();
            }
            Ok(Json(detail(&state, &agent).await?).into_response())
        }
        RetireOutcome::AlreadyRetired { agent } => {
            Ok(Json(detail(&state, &agent).await?).into_response())
        }
        RetireOutcome::BadMoveTarget(message) => {
            Err(ApiError::validation(message).with_param("move_to_target"))
        }
        RetireOutcome::ReasonRequired => Err(ApiError::bad_request(
            "force=true requires a non-empty reason",
        )),
        RetireOutcome::Sentinel => Err(ApiError::forbidden(format!(
            "agent {id} is a built-in sentinel and can never be retired"
        ))),
        RetireOutcome::NotFound => Err(ApiError::not_found(format!("agent {id}"))),
        RetireOutcome::Blocked(deps) => Err(ApiError::invalid_state(format!(
            "agent {id} still has {} active target(s), {} active certificate(s) and {} open job(s); \
             move them, or force the retirement with a reason (API: force=true&reason=…; \
             CLI: --force --reason …), which retires its targets too",
            deps.active_targets, deps.active_certificates, deps.pending_jobs
        ))
        .with_details(json!({ "counts": DependencyCounts::from(deps) }))),
    }
}
