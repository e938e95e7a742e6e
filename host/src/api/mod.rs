//! The REST API under `/api/v1` (axum), plus `/healthz`, `/readyz` and
//! `/metrics` at the root.
//!
//! Cross-cutting behaviour lives here: request ids (`x-request-id`, echoed
//! and quoted in every error), the error envelope on every 4xx/5xx (also for
//! responses produced by layers and axum itself), body size limits, input
//! hygiene (NUL and invalid UTF-8 refused, `input.rs`) and request tracing.
//! Each resource module exposes `routes()` returning an
//! `OpenApiRouter`, so a route cannot exist without its OpenAPI entry.

pub mod acme_challenge;
mod agents;
mod audit;
pub mod auth;
mod certificates;
pub use certificates::MAX_CREATE_BATCH;
pub mod error;
mod input;
mod instances;
mod jobs;
mod keys;
pub mod listing;
mod notifications;
pub mod openapi;
mod system;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::config::HostConfig;
use crate::engine::Engine;
use crate::plugins::PluginRegistry;
use crate::secrets::SecretBox;
use crate::store::Store;
use auth::RateLimits;
use error::{ApiError, REQUEST_ID, code_for_status, envelope};

/// Everything handlers share: the engine they hand work to, and the
/// API's own rate limits. Dereferences to the [`Engine`] so handlers read
/// `state.store`, `state.config` directly.
#[derive(Clone)]
pub struct AppState {
    /// The engine (store, configuration, plugins, secrets, wake-ups,
    /// metrics).
    pub engine: Engine,
    /// Per-caller rate limits.
    pub rate_limits: Arc<RateLimits>,
}

impl std::ops::Deref for AppState {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl AppState {
    /// State from its parts, with rate limits from the configuration.
    pub fn new(
        store: Store,
        config: Arc<HostConfig>,
        plugins: Arc<PluginRegistry>,
        secrets: Arc<SecretBox>,
    ) -> Self {
        let rate_limits = Arc::new(RateLimits::new(
            config.api.rate_limit_per_second,
            config.api.rate_limit_burst,
        ));
        AppState {
            engine: Engine::new(store, config, plugins, secrets),
            rate_limits,
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "certplane API",
        description = "certplane control plane, API v1"
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail))
)]
struct ApiDoc;

/// The `/api/v1` routes with their OpenAPI document.
pub fn v1_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(system::routes())
        .merge(agents::routes())
        .merge(jobs::routes())
        .merge(audit::routes())
        .merge(notifications::routes())
        .merge(instances::routes())
        .merge(certificates::routes())
        .merge(keys::routes())
}

/// The OpenAPI document of the whole API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", v1_routes())
        .into_openapi();
    openapi::finish(&mut doc);
    doc
}

/// The complete HTTP application.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.api.max_body_bytes;
    let time_limit = Duration::from_secs(state.config.api.request_timeout_secs);
    let (api, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", v1_routes())
        .split_for_parts();
    openapi::finish(&mut doc);
    let doc = Arc::new(doc);
    let engine = state.engine.clone();
    let app = api
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json((*doc).clone()) }
            }),
        )
        .merge(system::root_routes())
        .merge(acme_challenge::routes())
        .route("/metrics", axum::routing::get(system::metrics))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(
            max_body,
            input::refuse_bad_input,
        ))
        .layer(middleware::from_fn_with_state(time_limit, bounded))
        .layer(middleware::from_fn(auth::refusal_headers))
        .layer(middleware::from_fn_with_state(
            ErrorForm::Envelope,
            errors_and_request_id,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state);
    // The dashboard calls the finished API in process, with its layers.
    // Its own pages get the same input check and time bound (its query
    // and form parsing would otherwise see NUL and replace invalid UTF-8,
    // and a page waits on several API calls in a row), but keep HTML
    // error pages instead of the JSON envelope.
    let ui = crate::ui::routes(engine, app.clone())
        .layer(middleware::from_fn_with_state(
            max_body,
            input::refuse_bad_input,
        ))
        .layer(middleware::from_fn_with_state(time_limit, bounded))
        .layer(middleware::from_fn_with_state(
            ErrorForm::Html,
            errors_and_request_id,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http());
    app.merge(ui)
}

/// The agents' work long-poll, the one request allowed to outlast
/// `api.request_timeout_secs` (it has its own bound, `long_poll_max_secs`).
const LONG_POLL_PATH: &str = "/api/v1/agents/work";

/// Bounds every request but the long-poll by `api.request_timeout_secs`:
/// a handler still running then (a connector's `validate-config` that
/// spins, a stalled database) is dropped, which stops a plugin call it was
/// awaiting, and the client gets 503 `timeout`.
async fn bounded(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    if request.uri().path() == LONG_POLL_PATH {
        return next.run(request).await;
    }
    let path = request.uri().path().to_owned();
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(%path, limit_secs = limit.as_secs(), "request timed out and was stopped");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!(
                    "the request did not finish within {} s (api.request_timeout_secs) and was stopped; retry later",
                    limit.as_secs()
                ),
            )
            .into_response()
        }
    }
}

/// The request id of `request`: the client's `x-request-id` when sane,
/// else that of the request being handled when this one is the
/// dashboard's in-process API call (so a page and the API calls it makes
/// log under one id), else a fresh one.
fn request_id_of(request: &Request) -> String {
    request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .or_else(|| REQUEST_ID.try_with(String::clone).ok())
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

/// How a part of the router answers errors: the API in the JSON envelope,
/// the dashboard as HTML pages.
#[derive(Debug, Clone, Copy)]
enum ErrorForm {
    Envelope,
    Html,
}

impl ErrorForm {
    /// The media type of an error answer already in this form.
    fn media_type(self) -> &'static [u8] {
        match self {
            ErrorForm::Envelope => b"application/json",
            ErrorForm::Html => b"text/html",
        }
    }

    /// `status` with `body` (an answer in another form) in this form.
    async fn rewrap(self, status: StatusCode, body: Body, request_id: &str) -> Response {
        match self {
            ErrorForm::Envelope => {
                let message = status.canonical_reason().unwrap_or("error");
                let body = envelope(code_for_status(status), message, None, None);
                (status, axum::Json(body)).into_response()
            }
            // The input check's and the time bound's envelopes and axum's
            // bare rejections shown as a page, with their message.
            ErrorForm::Html => html_error_page(status, body, request_id).await,
        }
    }
}

/// Assigns the request id ([`request_id_of`]), runs the handler with it in
/// scope, echoes it, and puts any 4xx/5xx not already in `form` (from
/// layers or axum's own rejections) into it.
async fn errors_and_request_id(
    State(form): State<ErrorForm>,
    request: Request,
    next: Next,
) -> Response {
    let id = request_id_of(&request);
    REQUEST_ID
        .scope(id.clone(), async move {
            let mut response = next.run(request).await;
            let status = response.status();
            let in_form = response
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(form.media_type()));
            if (status.is_client_error() || status.is_server_error()) && !in_form {
                let (parts, body) = response.into_parts();
                response = form.rewrap(status, body, &id).await;
                // `Retry-After`, `Allow` and the like stay; the replaced
                // body's own headers go with it.
                for (name, value) in &parts.headers {
                    if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                        response.headers_mut().insert(name.clone(), value.clone());
                    }
                }
            }
            if let Ok(value) = HeaderValue::from_str(&id) {
                response.headers_mut().insert("x-request-id", value);
            }
            response
        })
        .await
}

/// An HTML page for an error answer of the dashboard: the envelope's
/// message when the body is one, else the body's text (axum's rejections
/// explain themselves in plain text), else the status's reason.
async fn html_error_page(status: StatusCode, body: Body, request_id: &str) -> Response {
    use http_body_util::BodyExt;
    // Envelopes and rejections are small; a larger body is not shown.
    let bytes = http_body_util::Limited::new(body, 16 * 1024)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .or_else(|| {
            std::str::from_utf8(&bytes)
                .ok()
                .map(str::trim)
                .filter(|text| !text.is_empty())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    let page = maud::html! {
        (maud::DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (status) " · certplane" }
                link rel="stylesheet" href="/ui/assets/ui.css";
            }
            body {
                main {
                    h1 { (status) }
                    p { (message) }
                    p.muted { "Request id " code { (request_id) } }
                    p { a href="/ui" { "Back to the inventory" } }
                }
            }
        }
    };
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::response::Html(page.into_string()),
    )
        .into_response()
}

/// Collects a body for tests and tools.
pub async fn body_bytes(body: Body) -> Result<bytes::Bytes, axum::Error> {
    use http_body_util::BodyExt;
    Ok(body.collect().await?.to_bytes())
}
