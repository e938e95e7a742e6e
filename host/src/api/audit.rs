//! The audit trail: who changed what, when.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::ReadAccess;
use super::error::{ApiError, ApiResult};
use super::listing::{Page, PageQuery, conditional_json};
use crate::store::{ActorType, AuditEvent};

/// Routes under `/api/v1`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit))
}

/// An audit event as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditEventView {
    /// Event id.
    pub id: String,
    /// When.
    pub at: DateTime<Utc>,
    /// Who, e.g. `apikey:ops`, an agent id, a loop name.
    pub actor: String,
    /// `user`, `api_key`, `agent` or `system`.
    #[schema(value_type = String, example = "api_key")]
    pub actor_type: ActorType,
    /// What, e.g. `job.cancel`.
    pub action: String,
    /// Kind of subject, e.g. `job`.
    pub subject_type: String,
    /// Subject id.
    pub subject_id: Option<String>,
    /// Free-form details.
    #[schema(value_type = Object)]
    pub details: Value,
}

impl From<AuditEvent> for AuditEventView {
    fn from(e: AuditEvent) -> Self {
        AuditEventView {
            id: e.id,
            at: e.at,
            actor: e.actor,
            actor_type: e.actor_type,
            action: e.action,
            subject_type: e.subject_type,
            subject_id: e.subject_id,
            details: e.details,
        }
    }
}

/// `GET /audit` query: filters and pagination.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only events about this kind of subject (`job`, `agent`, ...).
    pub subject_type: Option<String>,
    /// Only events about this subject.
    pub subject_id: Option<String>,
    /// Only events by this actor (exact, e.g. `apikey:ops`).
    pub actor: Option<String>,
    /// Only events at or after this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    pub since: Option<String>,
    /// Only events before this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    pub until: Option<String>,
    /// 1-based page number.
    #[param(minimum = 1)]
    pub page: Option<u32>,
    /// Items per page (1–500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub per_page: Option<u32>,
}

fn parse_time(name: &str, value: Option<&str>) -> ApiResult<Option<DateTime<Utc>>> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    ApiError::bad_request(format!(
                        "{name} must be an RFC 3339 timestamp (e.g. 2025-01-31T12:00:00Z): {e}"
                    ))
                })
        })
        .transpose()
}

/// List audit events, newest first.
#[utoipa::path(get, path = "/audit", tag = "audit", params(AuditQuery),
    responses(
        (status = 200, body = Page<AuditEventView>),
        (status = 304, description = "unchanged (If-None-Match)"),
        (status = 400, description = "bad filter, timestamp or page", body = super::error::ErrorBody),
    ),
    security(("bearer" = ["read_only"])))]
async fn list_audit(
    State(state): State<AppState>,
    _caller: ReadAccess,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    let (page, per_page) = PageQuery {
        page: q.page,
        per_page: q.per_page,
    }
    .resolve()?;
    let since = parse_time("since", q.since.as_deref())?;
    let until = parse_time("until", q.until.as_deref())?;
    if let (Some(s), Some(u)) = (since, until)
        && s > u
    {
        return Err(ApiError::bad_request("since must not be after until"));
    }
    let offset = super::listing::offset(page, per_page);
    let (events, total) = state
        .store
        .list_audit_events_filtered(
            q.subject_type.as_deref(),
            q.subject_id.as_deref(),
            q.actor.as_deref(),
            (since, until),
            offset,
            per_page,
        )
        .await?;
    let body = Page {
        items: events.into_iter().map(AuditEventView::from).collect(),
        page,
        per_page,
        total,
    };
    Ok(conditional_json(&headers, &body))
}
