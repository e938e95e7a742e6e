//! The one layer every request passes through: its request id, input
//! hygiene (`input.rs`), the time bound, the refusal headers (`auth.rs`) and
//! the error form, in that order from the outside in.
//!
//! These are one `from_fn` middleware rather than one each because each
//! `from_fn` layer allocates, per request, a future holding its own copy of
//! the request head and the call of the next layer, for as long as the
//! request runs. The agents' long polls run for up to
//! `api.long_poll_max_secs`, ten thousand of them at once in a fleet: four
//! layers cost about 4 KiB per parked poll (`future_sizes.rs` checks what
//! is left).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, REQUEST_ID, code_for_status, envelope};
use super::{LONG_POLL_PATH, auth, input};

/// What [`guard`] does for a part of the router.
#[derive(Debug, Clone, Copy)]
pub(super) struct Guard {
    /// The form of error answers.
    pub form: ErrorForm,
    /// `api.max_body_bytes`.
    pub max_body: usize,
    /// `api.request_timeout_secs`.
    pub time_limit: Duration,
    /// Whether refusals get `WWW-Authenticate` and `Retry-After` added
    /// ([`auth::with_refusal_headers`]): the API's, not the dashboard's.
    pub refusal_headers: bool,
}

/// The middleware. Assigns the request id ([`request_id_of`]) and runs the
/// rest with it in scope; refuses bad input; bounds every request but the
/// long poll by `api.request_timeout_secs` (a handler still running then,
/// a connector's `validate-config` that spins or a stalled database, is
/// dropped, which stops a plugin call it was awaiting, and the client gets
/// 503 `timeout`); adds the refusal headers; puts any 4xx/5xx not already
/// in the part's form (from these checks or axum's own rejections) into
/// it; echoes the request id.
pub(super) async fn guard(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let id = request_id_of(&request);
    REQUEST_ID
        .scope(id.clone(), async move {
            let long_poll = request.uri().path() == LONG_POLL_PATH;
            let path = request.uri().path().to_owned();
            let handled = async move {
                // Boxed, as every rarely awaited step here: its state would
                // otherwise be part of this future while a long poll parks.
                match Box::pin(input::checked(request, guard.max_body)).await {
                    Ok(request) => next.run(request).await,
                    Err(refusal) => refusal,
                }
            };
            let response = if long_poll {
                handled.await
            } else {
                Box::pin(bounded(guard.time_limit, &path, handled)).await
            };
            let response = if guard.refusal_headers {
                auth::with_refusal_headers(response).await
            } else {
                response
            };
            in_form(guard.form, response, &id).await
        })
        .await
}

/// `handled`, or 503 `timeout` when it does not finish within `limit`.
async fn bounded(limit: Duration, path: &str, handled: impl Future<Output = Response>) -> Response {
    match tokio::time::timeout(limit, handled).await {
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

/// `response` with a 4xx/5xx not already in `form` put into it, and the
/// request id echoed.
async fn in_form(form: ErrorForm, mut response: Response, id: &str) -> Response {
    let status = response.status();
    let already = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(form.media_type()));
    if (status.is_client_error() || status.is_server_error()) && !already {
        let (parts, body) = response.into_parts();
        response = Box::pin(form.rewrap(status, body, id)).await;
        // `Retry-After`, `Allow` and the like stay; the replaced
        // body's own headers go with it.
        for (name, value) in &parts.headers {
            if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                response.headers_mut().insert(name.clone(), value.clone());
            }
        }
    }
    if let Ok(value) = HeaderValue::from_str(id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
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
pub(super) enum ErrorForm {
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
