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
#[cfg(test)]
mod future_sizes;
mod guard;
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
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::config::HostConfig;
use crate::engine::Engine;
use crate::plugins::PluginRegistry;
use crate::secrets::SecretBox;
use crate::store::Store;
use auth::RateLimits;
use error::ApiError;
use guard::{ErrorForm, Guard};

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
            Guard {
                form: ErrorForm::Envelope,
                max_body,
                time_limit,
                refusal_headers: true,
            },
            guard::guard,
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
            Guard {
                form: ErrorForm::Html,
                max_body,
                time_limit,
                refusal_headers: false,
            },
            guard::guard,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http());
    app.merge(ui)
}

/// The agents' work long-poll, the one request allowed to outlast
/// `api.request_timeout_secs` (it has its own bound, `long_poll_max_secs`).
const LONG_POLL_PATH: &str = "/api/v1/agents/work";

/// Collects a body for tests and tools.
pub async fn body_bytes(body: Body) -> Result<bytes::Bytes, axum::Error> {
    use http_body_util::BodyExt;
    Ok(body.collect().await?.to_bytes())
}
