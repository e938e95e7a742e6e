//! The web dashboard at `/ui`: server-rendered pages (maud) with a little
//! JavaScript that refreshes a page's content while jobs move.
//!
//! The dashboard is a client of the API, in process: every read and every
//! action is an internal request to the `/api/v1` router carrying the
//! signed-in operator's own API key, so scopes, validation, audit rows and
//! the secrets the API never returns apply unchanged. Only the inventory
//! (search, filters, the weekly expiry chart) reads the store directly,
//! because the API has no search.
//!
//! Sign-in exchanges an API key for a session cookie (see [`session`]);
//! every form carries the session's CSRF token, and one layer
//! ([`forms_guard`]) checks it on every post before any handler runs, so a
//! form route added later is covered without remembering to.

mod agents;
mod audit;
mod certificate;
mod connectors;
mod inventory;
mod jobs;
mod layout;
mod notifications;
mod session;

use std::collections::HashMap;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts as _, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tower::ServiceExt as _;

use crate::engine::Engine;
pub use session::SESSION_HOURS;
pub use session::Session;

/// What the dashboard's handlers share.
#[derive(Clone)]
pub struct UiState {
    /// The engine (store, secrets, configuration).
    pub engine: Engine,
    /// The API router the pages call in process.
    api: Router,
}

impl std::fmt::Debug for UiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UiState").finish_non_exhaustive()
    }
}

/// The sign-in form's route: the one post without a session, guarded by
/// its own double-submit cookie instead of [`forms_guard`].
const LOGIN: &str = "/ui/login";
/// Signing out: a post any session may make, read-only ones included.
const LOGOUT: &str = "/ui/logout";

/// Every route that takes a form post, as registered. All pass
/// [`forms_guard`] but [`LOGIN`]; tests post to each without a token.
pub const FORM_ROUTES: [&str; 6] = [
    LOGIN,
    LOGOUT,
    "/ui/certificates",
    "/ui/certificates/{id}/{action}",
    "/ui/jobs/{id}/{action}",
    "/ui/agents/{id}/retire",
];

/// The largest form the dashboard takes (the new-certificate form is the
/// biggest, far below this).
const MAX_FORM_BYTES: usize = 64 * 1024;

/// The dashboard's routes under `/ui`; `api` is the complete API router.
pub fn routes(engine: Engine, api: Router) -> Router {
    let state = UiState { engine, api };
    let [
        login,
        logout,
        create,
        certificate_act,
        job_act,
        agent_retire,
    ] = FORM_ROUTES;
    Router::new()
        .route("/ui", get(inventory::page))
        .route("/ui/", get(|| async { Redirect::to("/ui") }))
        .route(login, get(session::login_form).post(session::login))
        .route(logout, post(session::logout))
        .route("/ui/assets/ui.css", get(layout::css))
        .route("/ui/assets/ui.js", get(layout::js))
        .route(create, post(inventory::create))
        .route("/ui/certificates/new", get(inventory::new_form))
        .route("/ui/certificates/{id}", get(certificate::page))
        .route(certificate_act, post(certificate::act))
        .route("/ui/jobs", get(jobs::page))
        .route(job_act, post(jobs::act))
        .route("/ui/agents", get(agents::page))
        .route(agent_retire, post(agents::retire))
        .route("/ui/connectors", get(connectors::page))
        .route("/ui/notifications", get(notifications::page))
        .route("/ui/audit", get(audit::page))
        // Without it an unknown page would get the API's JSON 404.
        .route("/ui/{*rest}", get(unknown_page))
        .route_layer(middleware::from_fn_with_state(state.clone(), forms_guard))
        .with_state(state)
}

/// Every request but a read (and the sign-in form) needs a session, the
/// session's CSRF token in its form, and — to change anything — a key
/// that may write: refused here, before a handler, with 403; the one
/// CSRF check of the dashboard's forms. The API checks the scope again.
async fn forms_guard(State(state): State<UiState>, request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) || request.uri().path() == LOGIN {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let session = match Session::from_request_parts(&mut parts, &state).await {
        Ok(session) => session,
        Err(e) => return e.into_response(),
    };
    let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
        return UiError::Api(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the form is too large".into(),
        )
        .into_response();
    };
    let form: HashMap<String, String> = url::form_urlencoded::parse(&bytes).into_owned().collect();
    if let Err(refused) = session.check_csrf(&form) {
        return refused.into_response();
    }
    if !session.can_write() && parts.uri.path() != LOGOUT {
        return UiError::Api(
            StatusCode::FORBIDDEN,
            "this API key is read only; sign in with an operator or admin key to change things"
                .into(),
        )
        .into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// `GET` of a path under `/ui` that is no page: 404 as an HTML page.
async fn unknown_page() -> UiError {
    UiError::Api(StatusCode::NOT_FOUND, "no such page".into())
}

/// An API answer as the pages use it.
#[derive(Debug)]
pub struct ApiAnswer {
    status: StatusCode,
    json: Value,
}

impl ApiAnswer {
    /// The envelope's message of an error answer.
    fn error_message(&self) -> String {
        self.json["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("the API answered {}", self.status))
    }
}

/// Why a page could not be shown.
#[derive(Debug)]
pub enum UiError {
    /// The session is missing, expired, or its key no longer works.
    SignIn,
    /// The API refused or failed: status and message.
    Api(StatusCode, String),
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        match self {
            UiError::SignIn => session::to_login(),
            UiError::Api(status, message) => {
                let status = if status.is_success() {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    status
                };
                (
                    status,
                    axum::response::Html(layout::bare_error(status, &message).into_string()),
                )
                    .into_response()
            }
        }
    }
}

impl UiState {
    /// Calls the API as the session's key: `path` is under `/api/v1`.
    pub(crate) async fn call(
        &self,
        session: &Session,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<ApiAnswer, UiError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("/api/v1{path}"))
            .header(header::AUTHORIZATION, format!("Bearer {}", session.key()));
        let body = match body {
            Some(json) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        let request = request
            .body(body)
            .map_err(|e| UiError::Api(StatusCode::BAD_REQUEST, format!("bad request: {e}")))?;
        let response = self
            .api
            .clone()
            .oneshot(request)
            .await
            .unwrap_or_else(|never| match never {});
        let status = response.status();
        let bytes = crate::api::body_bytes(response.into_body())
            .await
            .map_err(|e| UiError::Api(StatusCode::BAD_GATEWAY, format!("reading the API: {e}")))?;
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if status == StatusCode::UNAUTHORIZED {
            return Err(UiError::SignIn);
        }
        Ok(ApiAnswer { status, json })
    }

    /// A GET that must succeed.
    pub(crate) async fn get(&self, session: &Session, path: &str) -> Result<Value, UiError> {
        let answer = self.call(session, Method::GET, path, None).await?;
        if answer.status.is_success() {
            Ok(answer.json)
        } else {
            Err(UiError::Api(answer.status, answer.error_message()))
        }
    }

    /// Every item of a paged API list (up to `max` items), for small
    /// collections such as issuers and agents.
    pub(crate) async fn all(
        &self,
        session: &Session,
        path: &str,
        max: usize,
    ) -> Result<Vec<Value>, UiError> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut items = Vec::new();
        for page in 1.. {
            let json = self
                .get(session, &format!("{path}{sep}page={page}&per_page=500"))
                .await?;
            let batch = json["items"].as_array().cloned().unwrap_or_default();
            let done = batch.len() < 500;
            items.extend(batch);
            if done || items.len() >= max {
                break;
            }
        }
        items.truncate(max);
        Ok(items)
    }
}

/// Whether the request asks only for the page's content (the refresh
/// script), not the whole document.
fn wants_fragment(headers: &HeaderMap) -> bool {
    headers.get("x-ui-fragment") == Some(&HeaderValue::from_static("1"))
}

/// The answer to a form post: back to `to` with a notice or an error
/// shown on arrival.
fn after_action(to: &str, answer: Result<String, String>) -> Response {
    let (key, text) = match answer {
        Ok(notice) => ("notice", notice),
        Err(error) => ("error", error),
    };
    let sep = if to.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{to}{sep}{key}={}", enc(&text))).into_response()
}

/// The notice or error a redirect carried.
fn flash(query: &HashMap<String, String>) -> Option<(bool, String)> {
    query
        .get("error")
        .map(|e| (true, e.clone()))
        .or_else(|| query.get("notice").map(|n| (false, n.clone())))
}

/// The `page` query parameter: 1 when absent or not a positive number.
fn page_of(query: &HashMap<String, String>) -> u32 {
    query
        .get("page")
        .and_then(|p| p.parse().ok())
        .filter(|p| *p >= 1)
        .unwrap_or(1)
}

/// An API list path: one page of `base`, with those of `filters` the
/// page's own query sets.
fn list_path(
    base: &str,
    page: u32,
    per_page: u32,
    query: &HashMap<String, String>,
    filters: &[&str],
) -> String {
    let mut path = format!("{base}?page={page}&per_page={per_page}");
    for key in filters {
        if let Some(v) = query.get(*key).filter(|v| !v.is_empty()) {
            path.push_str(&format!("&{key}={}", enc(v)));
        }
    }
    path
}

/// Id → name of API items (targets, issuers, notifiers).
fn names_by_id(items: &[Value]) -> HashMap<&str, &str> {
    items
        .iter()
        .filter_map(|i| Some((i["id"].as_str()?, i["name"].as_str()?)))
        .collect()
}

/// A target's name for a job's `target_id`, or a dash.
fn target_label(names: &HashMap<&str, &str>, id: &Value) -> String {
    id.as_str()
        .map(|id| names.get(id).copied().unwrap_or(id).to_owned())
        .unwrap_or_else(|| "—".into())
}

/// Percent-encodes one path segment or query value.
fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
