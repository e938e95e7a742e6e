//! Health, readiness and the plugin list.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::{AdminAccess, ReadAccess, require_static_token};
use super::error::{ApiError, ApiResult};
use super::listing::conditional_json;
use crate::store::{ActorType, NewAuditEvent};

/// Routes under `/api/v1`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_plugins))
        .routes(routes!(reload_plugins))
}

/// Routes at the root (not part of the versioned API).
pub fn root_routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// `GET /metrics` (OpenMetrics text). Open unless `api.metrics_token` (or
/// `api.metrics_token_file`) is set; then it takes `Authorization: Bearer
/// <token>` and answers anything else 401 with `WWW-Authenticate`. A token
/// file that cannot be read refuses every scrape (500) rather than
/// opening the endpoint.
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match state.config.api.metrics_token() {
        Ok(None) => {}
        Ok(Some(token)) => {
            if let Err(refused) = require_static_token(&headers, &token) {
                return refused.into_response();
            }
        }
        Err(e) => return ApiError::internal(e).into_response(),
    }
    match state.metrics.render(&state.store).await {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            )],
            text,
        )
            .into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.check_schema().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("database not ready: {e}"),
        )
        .into_response(),
    }
}

/// A loaded connector plugin.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginView {
    /// Machine name.
    pub name: String,
    /// `issuer`, `target` or `notifier`.
    pub kind: String,
    /// Connector version.
    pub version: String,
    /// SHA-256 of the component, verified at load.
    pub sha256: String,
    /// `certplane:connector` version it was built against.
    pub world_version: String,
    /// One line for operators.
    pub description: String,
    /// JSON Schema of its settings.
    pub settings_schema: serde_json::Value,
    /// Secrets it reads.
    pub secret_names: Vec<String>,
    /// Per-call limits the manifest asks for; the host caps them with its
    /// `[limits]` and an instance's own limits override them.
    pub limits: PluginLimits,
}

/// A plugin's suggested per-call limits.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginLimits {
    /// Wall-clock deadline of one call, milliseconds (host default if absent).
    pub cpu_deadline_ms: Option<u64>,
    /// Linear memory cap of one instance, MiB (host default if absent).
    pub memory_mib: Option<u64>,
    /// Calls of one instance at once (host default if absent).
    pub concurrency: Option<u32>,
}

/// The plugin list with load failures.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginList {
    /// Loaded plugins, by name.
    pub items: Vec<PluginView>,
    /// Plugins that failed to load, one message each.
    pub failures: Vec<String>,
}

/// List loaded connector plugins.
#[utoipa::path(get, path = "/plugins", tag = "plugins",
    responses((status = 200, body = PluginList), (status = 304, description = "unchanged")),
    security(("bearer" = ["read_only"])))]
async fn list_plugins(
    State(state): State<AppState>,
    _caller: ReadAccess,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let items = state
        .plugins
        .list()
        .into_iter()
        .map(|p| PluginView {
            name: p.name().to_string(),
            kind: p.kind().to_string(),
            version: p.version().to_string(),
            sha256: p.sha256().to_string(),
            world_version: p.manifest().world.to_string(),
            description: p.info().description.clone(),
            settings_schema: serde_json::from_str(&p.info().settings_schema)
                .unwrap_or(serde_json::Value::Null),
            secret_names: p.info().secret_names.clone(),
            limits: PluginLimits {
                cpu_deadline_ms: p.manifest().limits.cpu_deadline_ms,
                memory_mib: p.manifest().limits.memory_mib,
                concurrency: p.manifest().limits.concurrency,
            },
        })
        .collect();
    let list = PluginList {
        items,
        failures: state.plugins.failures(),
    };
    Ok(conditional_json(&headers, &list))
}

/// What a plugin reload changed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReloadView {
    /// Plugins new to this host.
    pub added: Vec<String>,
    /// Plugins whose component changed.
    pub replaced: Vec<String>,
    /// Plugins whose manifest is gone.
    pub removed: Vec<String>,
    /// Plugins unchanged.
    pub unchanged: Vec<String>,
    /// Load failures; a plugin whose new version fails keeps its loaded one.
    pub failures: Vec<String>,
}

/// Load the plugin directory again, without a restart (this replica only;
/// `SIGHUP` does the same). Calls running finish on the version they
/// started with.
#[utoipa::path(post, path = "/plugins/reload", tag = "plugins",
    responses(
        (status = 200, body = ReloadView),
        (status = 403, body = super::error::ErrorBody),
        (status = 500, body = super::error::ErrorBody),
    ),
    security(("bearer" = ["admin"])))]
async fn reload_plugins(
    State(state): State<AppState>,
    AdminAccess(caller): AdminAccess,
) -> ApiResult<Response> {
    let report = state.plugins.reload().await.map_err(ApiError::internal)?;
    state
        .store
        .record_audit(NewAuditEvent {
            actor: caller.actor(),
            actor_type: ActorType::ApiKey,
            action: "plugins.reload".into(),
            subject_type: "plugins".into(),
            subject_id: None,
            details: serde_json::to_value(&report).unwrap_or_default(),
        })
        .await?;
    let view = ReloadView {
        added: report.added,
        replaced: report.replaced,
        removed: report.removed,
        unchanged: report.unchanged,
        failures: report.failures,
    };
    Ok(axum::Json(view).into_response())
}
