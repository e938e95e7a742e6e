//! The host's http-01 responder: `GET /.well-known/acme-challenge/{token}`
//! answers the key authorization of a live challenge the host publishes
//! (route `host`), from the database, so any replica answers. Served on
//! the API listener and, for CAs (which fetch over plain HTTP on port 80),
//! on `[challenges] http_listen`. No authentication: CAs fetch anonymously
//! and a token is only ever a challenge's public half.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;

/// Longest token looked up (ACME tokens are 43 base64url characters).
const MAX_TOKEN: usize = 256;

/// The responder's route.
pub fn routes() -> Router<AppState> {
    Router::new().route(
        "/.well-known/acme-challenge/{token}",
        axum::routing::get(respond),
    )
}

async fn respond(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    let well_formed = !token.is_empty()
        && token.len() <= MAX_TOKEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !well_formed {
        return StatusCode::NOT_FOUND.into_response();
    }
    match state.store.http_challenge_response(&token).await {
        Ok(Some(value)) => {
            tracing::debug!(token, "http-01 challenge served");
            ([(header::CONTENT_TYPE, "text/plain")], value).into_response()
        }
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => {
            tracing::error!(error = %e, "http-01 responder: database error");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

/// The plain-HTTP application of `[challenges] http_listen`: the responder
/// and nothing else.
pub fn responder_app(state: AppState) -> Router {
    routes()
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}
