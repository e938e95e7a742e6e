//! Outgoing notifications and their delivery state, and the operator's
//! levers on a notifier's queue: disable / enable the notifier, cancel its
//! pending notifications.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::{OperatorAccess, ReadAccess};
use super::error::{ApiError, ApiResult};
use super::listing::{Page, PageQuery, conditional_json};
use crate::engine::notify::{self, NotifierState};
use crate::store::{ActorType, CancelledNotifications, Notification, NotificationStatus};

/// Routes under `/api/v1`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_notifications))
        .routes(routes!(get_notification))
        .routes(routes!(disable_notifier))
        .routes(routes!(enable_notifier))
        .routes(routes!(cancel_notifier_notifications))
}

/// A notifier's state after `disable` / `enable`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NotifierStateView {
    /// Notifier id.
    pub id: String,
    /// Notifier name.
    pub name: String,
    /// Disabled since (`null`: enabled).
    pub disabled_at: Option<DateTime<Utc>>,
    /// Whether this request changed the notifier (false: it already was
    /// in that state; nothing was changed or audited).
    pub changed: bool,
    /// Notifications waiting in its queue (a disabled notifier's wait until
    /// it is enabled or they are cancelled).
    pub pending: u64,
    /// Notifications being sent right now (they end at the connector's
    /// deadline at the latest).
    pub sending: u64,
}

impl From<NotifierState> for NotifierStateView {
    fn from(s: NotifierState) -> Self {
        NotifierStateView {
            id: s.notifier.id,
            name: s.notifier.name,
            disabled_at: s.notifier.disabled_at,
            changed: s.changed,
            pending: s.pending,
            sending: s.sending,
        }
    }
}

/// What `POST /notifiers/{id}/notifications/cancel` did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CancelledNotificationsView {
    /// Notifier id.
    pub notifier_id: String,
    /// Pending notifications cancelled (status `cancelled`, never sent).
    pub cancelled: u64,
    /// Notifications being sent right now: not attempted again; each ends
    /// `cancelled` when its attempt fails or its lease is lost, or `sent`
    /// if the attempt in flight succeeds.
    pub in_flight: u64,
}

impl CancelledNotificationsView {
    fn new(notifier_id: String, counts: CancelledNotifications) -> Self {
        CancelledNotificationsView {
            notifier_id,
            cancelled: counts.cancelled,
            in_flight: counts.in_flight,
        }
    }
}

/// Disable a notifier: no new notifications are queued for it and its
/// queue waits (nothing is sent) until it is enabled again or its pending
/// notifications are cancelled. Idempotent; audited when it changes.
#[utoipa::path(post, path = "/notifiers/{id}/disable", tag = "notifiers",
    params(("id" = String, Path, description = "notifier id")),
    responses(
        (status = 200, body = NotifierStateView),
        (status = 403, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody),
    ),
    security(("bearer" = ["operator"])))]
async fn disable_notifier(
    State(state): State<AppState>,
    OperatorAccess(caller): OperatorAccess,
    Path(id): Path<String>,
) -> ApiResult<Json<NotifierStateView>> {
    let s = notify::set_disabled(&state, &id, true, &caller.actor(), ActorType::ApiKey).await?;
    Ok(Json(s.into()))
}

/// Enable a notifier: new events are queued for it again and its waiting
/// queue is delivered. Idempotent; audited when it changes. 409 for a
/// retired notifier.
#[utoipa::path(post, path = "/notifiers/{id}/enable", tag = "notifiers",
    params(("id" = String, Path, description = "notifier id")),
    responses(
        (status = 200, body = NotifierStateView),
        (status = 403, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody),
        (status = 409, description = "the notifier is retired (`invalid_state`)", body = super::error::ErrorBody),
    ),
    security(("bearer" = ["operator"])))]
async fn enable_notifier(
    State(state): State<AppState>,
    OperatorAccess(caller): OperatorAccess,
    Path(id): Path<String>,
) -> ApiResult<Json<NotifierStateView>> {
    let s = notify::set_disabled(&state, &id, false, &caller.actor(), ActorType::ApiKey).await?;
    if s.notifier.retired_at.is_some() {
        // The store left it disabled: a retired notifier sends nothing.
        return Err(ApiError::invalid_state(format!(
            "notifier {id:?} is retired and cannot be enabled"
        )));
    }
    Ok(Json(s.into()))
}

/// Cancel a notifier's pending notifications (status `cancelled`, never
/// sent); those being sent right now are not attempted again. Returns the
/// counts; a repeated call cancels nothing more. Audited.
#[utoipa::path(post, path = "/notifiers/{id}/notifications/cancel", tag = "notifiers",
    params(("id" = String, Path, description = "notifier id")),
    responses(
        (status = 200, body = CancelledNotificationsView),
        (status = 403, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody),
    ),
    security(("bearer" = ["operator"])))]
async fn cancel_notifier_notifications(
    State(state): State<AppState>,
    OperatorAccess(caller): OperatorAccess,
    Path(id): Path<String>,
) -> ApiResult<Json<CancelledNotificationsView>> {
    let counts = notify::cancel_pending(&state, &id, &caller.actor(), ActorType::ApiKey).await?;
    Ok(Json(CancelledNotificationsView::new(id, counts)))
}

/// A notification as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NotificationView {
    /// Notification id.
    pub id: String,
    /// Notifier instance delivering it.
    pub notifier_id: String,
    /// Event type, e.g. `certificate.expiring`.
    pub event_type: String,
    /// Subject line.
    pub subject: Option<String>,
    /// Event payload.
    #[schema(value_type = Object)]
    pub payload: Value,
    /// `pending`, `sending`, `sent`, `failed` or `cancelled`.
    #[schema(value_type = String, example = "sent")]
    pub status: NotificationStatus,
    /// Delivery attempts so far.
    pub attempts: i32,
    /// Attempt budget.
    pub max_attempts: i32,
    /// Next attempt time.
    pub run_at: DateTime<Utc>,
    /// Last delivery error.
    pub last_error: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Delivery time.
    pub sent_at: Option<DateTime<Utc>>,
}

impl From<Notification> for NotificationView {
    fn from(n: Notification) -> Self {
        NotificationView {
            id: n.id,
            notifier_id: n.notifier_id,
            event_type: n.event_type,
            subject: n.subject,
            payload: n.payload,
            status: n.status,
            attempts: n.attempts,
            max_attempts: n.max_attempts,
            run_at: n.run_at,
            last_error: n.last_error,
            created_at: n.created_at,
            updated_at: n.updated_at,
            sent_at: n.sent_at,
        }
    }
}

/// `GET /notifications` query: filter and pagination.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NotificationQuery {
    /// Only notifications in this delivery state.
    #[param(schema_with = super::openapi::notification_status_param)]
    pub status: Option<NotificationStatus>,
    /// Only notifications of this notifier instance.
    pub notifier_id: Option<String>,
    /// 1-based page number.
    #[param(minimum = 1)]
    pub page: Option<u32>,
    /// Items per page (1–500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub per_page: Option<u32>,
}

/// List notifications, newest first.
#[utoipa::path(get, path = "/notifications", tag = "notifications", params(NotificationQuery),
    responses(
        (status = 200, body = Page<NotificationView>),
        (status = 304, description = "unchanged (If-None-Match)"),
        (status = 400, description = "bad filter or page", body = super::error::ErrorBody),
    ),
    security(("bearer" = ["read_only"])))]
async fn list_notifications(
    State(state): State<AppState>,
    _caller: ReadAccess,
    headers: HeaderMap,
    query: Result<Query<NotificationQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    let (page, per_page) = PageQuery {
        page: q.page,
        per_page: q.per_page,
    }
    .resolve()?;
    let offset = super::listing::offset(page, per_page);
    let (items, total) = state
        .store
        .list_notifications(q.status, q.notifier_id.as_deref(), offset, per_page)
        .await?;
    let body = Page {
        items: items.into_iter().map(NotificationView::from).collect(),
        page,
        per_page,
        total,
    };
    Ok(conditional_json(&headers, &body))
}

/// One notification.
#[utoipa::path(get, path = "/notifications/{id}", tag = "notifications",
    params(("id" = String, Path, description = "notification id")),
    responses(
        (status = 200, body = NotificationView),
        (status = 304, description = "unchanged (If-None-Match)"),
        (status = 404, body = super::error::ErrorBody),
    ),
    security(("bearer" = ["read_only"])))]
async fn get_notification(
    State(state): State<AppState>,
    _caller: ReadAccess,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let notification = state
        .store
        .get_notification(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("notification {id}")))?;
    Ok(conditional_json(
        &headers,
        &NotificationView::from(notification),
    ))
}
