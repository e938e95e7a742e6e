//! Dashboard sessions: an API key exchanged for a cookie.
//!
//! The cookie holds the key, a CSRF token, whether the key may write and
//! an expiry, sealed with the host's secret box (XChaCha20-Poly1305 bound
//! to [`SEALED_FOR`]), so it can be neither read nor forged without the
//! host's key and every replica sharing that key accepts it — no session
//! table to keep. It is `HttpOnly`, `Secure` and `SameSite=Strict`. The
//! key is checked again by the API on every call, so a revoked or expired
//! key ends its sessions at once. Signing out clears the cookie; a copy
//! taken before stays valid until its expiry ([`SESSION_HOURS`]), like a
//! bearer token.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::Utc;
use maud::html;
use serde::{Deserialize, Serialize};

use super::layout;
use super::{UiError, UiState};
use crate::api::auth::{hash_token, random_secret};
use crate::store::ApiScope;

/// The session cookie's name.
const COOKIE: &str = "certplane_session";
/// The sign-in form's double-submit cookie: login CSRF protection, before
/// there is a session.
const LOGIN_COOKIE: &str = "certplane_login";
/// What the cookie is sealed for (the secret box's associated data).
const SEALED_FOR: &str = "ui/session";
/// How long a session lasts.
pub const SESSION_HOURS: i64 = 8;

/// A signed-in dashboard user.
#[derive(Clone, Serialize, Deserialize)]
pub struct Session {
    /// The API key the pages call the API with.
    #[serde(rename = "k")]
    key: String,
    /// The CSRF token every form carries.
    #[serde(rename = "c")]
    csrf: String,
    /// The key may change things (operator or admin scope).
    #[serde(rename = "w")]
    can_write: bool,
    /// The key's name, shown in the header.
    #[serde(rename = "n")]
    name: String,
    /// Expiry, Unix seconds.
    #[serde(rename = "e")]
    expires: i64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("name", &self.name)
            .field("can_write", &self.can_write)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// The CSRF token for forms.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Whether write controls are shown (the API refuses them anyway).
    pub fn can_write(&self) -> bool {
        self.can_write
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Refuses a form whose CSRF token is missing or wrong.
    pub fn check_csrf(&self, form: &HashMap<String, String>) -> Result<(), CsrfRefused> {
        match form.get("csrf") {
            Some(token) if same(token, &self.csrf) => Ok(()),
            _ => Err(CsrfRefused),
        }
    }
}

/// A form post without the session's CSRF token: 403.
#[derive(Debug)]
pub struct CsrfRefused;

impl IntoResponse for CsrfRefused {
    fn into_response(self) -> Response {
        forbidden_form()
    }
}

/// Constant-time equality of two tokens.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn forbidden_form() -> Response {
    (
        StatusCode::FORBIDDEN,
        Html(
            layout::bare_error(
                StatusCode::FORBIDDEN,
                "the form's CSRF token is missing or wrong; reload the page and try again",
            )
            .into_string(),
        ),
    )
        .into_response()
}

/// The value of cookie `name` in the request.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(name: &str, value: &str, max_age_secs: i64) -> HeaderValue {
    let cookie = cookie::Cookie::build((name, value))
        .path("/ui")
        .http_only(true)
        .secure(true)
        .same_site(cookie::SameSite::Strict)
        .max_age(cookie::time::Duration::seconds(max_age_secs))
        .build();
    // Sealed values and random secrets are base64 with `:`: always valid
    // header text.
    HeaderValue::from_str(&cookie.to_string()).unwrap_or(HeaderValue::from_static(""))
}

impl FromRequestParts<UiState> for Session {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, state: &UiState) -> Result<Self, UiError> {
        let sealed = cookie_value(&parts.headers, COOKIE).ok_or(UiError::SignIn)?;
        let plain = state
            .engine
            .secrets
            .open(sealed, SEALED_FOR)
            .map_err(|_| UiError::SignIn)?;
        let session: Session = serde_json::from_slice(&plain).map_err(|_| UiError::SignIn)?;
        if session.expires <= Utc::now().timestamp() {
            return Err(UiError::SignIn);
        }
        Ok(session)
    }
}

/// To the sign-in form.
pub(crate) fn to_login() -> Response {
    Redirect::to("/ui/login").into_response()
}

/// The sign-in form.
pub async fn login_form(Query(query): Query<HashMap<String, String>>) -> Response {
    let token = random_secret();
    let error = query.get("error").cloned();
    let page = layout::login_page(&token, error.as_deref());
    let mut response = Html(page.into_string()).into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, &token, 600));
    response
}

/// Exchanges an API key for a session.
pub async fn login(
    State(state): State<UiState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let posted = form.get("csrf").map(String::as_str).unwrap_or_default();
    // An empty cookie (the one a sign-in clears) matches an empty field:
    // neither counts as a token.
    match cookie_value(&headers, LOGIN_COOKIE) {
        Some(expected) if !expected.is_empty() && same(posted, expected) => {}
        _ => return forbidden_form(),
    }
    let key = form
        .get("api_key")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    let refused =
        || Redirect::to("/ui/login?error=that%20API%20key%20is%20not%20valid").into_response();
    if key.is_empty() {
        return refused();
    }
    // The API decides whether the key works (unknown, revoked, expired);
    // the stored row says what it may do.
    let probe = Session {
        key: key.clone(),
        csrf: String::new(),
        can_write: false,
        name: String::new(),
        expires: 0,
    };
    match state
        .call(
            &probe,
            axum::http::Method::GET,
            "/certificates?per_page=1",
            None,
        )
        .await
    {
        Ok(answer) if answer.status.is_success() => {}
        Ok(answer) => {
            tracing::info!(status = %answer.status, "dashboard sign-in refused by the API");
            return refused();
        }
        Err(_) => return refused(),
    }
    let row = match state
        .engine
        .store
        .find_api_key_by_hash(&hash_token(&key))
        .await
    {
        Ok(Some(row)) => row,
        Ok(None) => return refused(),
        Err(e) => {
            tracing::error!(error = %e, "dashboard sign-in: cannot read the key");
            return UiError::Api(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database is unavailable".into(),
            )
            .into_response();
        }
    };
    let session = Session {
        key,
        csrf: random_secret(),
        can_write: row
            .scopes
            .iter()
            .any(|s| matches!(s, ApiScope::Admin | ApiScope::Operator)),
        name: row.name,
        expires: Utc::now().timestamp() + SESSION_HOURS * 3600,
    };
    let sealed = match serde_json::to_vec(&session)
        .ok()
        .and_then(|plain| state.engine.secrets.seal(&plain, SEALED_FOR).ok())
    {
        Some(sealed) => sealed,
        None => {
            return UiError::Api(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot seal the session".into(),
            )
            .into_response();
        }
    };
    tracing::info!(key = %session.name, "dashboard sign-in");
    let mut response = Redirect::to("/ui").into_response();
    let headers = response.headers_mut();
    headers.append(
        header::SET_COOKIE,
        set_cookie(COOKIE, &sealed, SESSION_HOURS * 3600),
    );
    headers.append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, "", 0));
    response
}

/// Signs out: the cookie is cleared. The session and its CSRF token were
/// checked by `ui::forms_guard`; the body must still be a form.
pub async fn logout(Form(_): Form<HashMap<String, String>>) -> Response {
    let mut response = Redirect::to("/ui/login").into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(COOKIE, "", 0));
    response
}

/// The banner of a page: who is signed in and the sign-out form.
pub(crate) fn whoami(session: &Session) -> maud::Markup {
    html! {
        span.who { (session.name()) @if !session.can_write() { " (read only)" } }
        form.inline method="post" action="/ui/logout" {
            input type="hidden" name="csrf" value=(session.csrf());
            button.link type="submit" { "Sign out" }
        }
    }
}
