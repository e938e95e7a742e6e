//! A tiny fake ACME server for what the packaged Pebble (2.4) predates:
//! ACME Renewal Information (RFC 9773) and the `replaces` field of
//! newOrder. Like [`crate::fake_ca`], it runs on its own thread and Tokio
//! runtime, on `127.0.0.1` and a free port, until dropped.
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /dir` | the directory; `renewalInfo` unless started with [`FakeAri::start_without_renewal_info`] |
//! | `HEAD` or `GET /nonce` | `200` with a `Replay-Nonce` |
//! | `POST /account` (JWS) | `201`, `Location: /account/1`, `{"status":"valid"}` |
//! | `POST /order` (JWS) | `201`, `Location: /order/N`, a `ready` order without authorizations |
//! | `GET /renewal-info/{certID}` | the window set with [`FakeAri::set_window`], else `404` |
//!
//! Every answer carries a fresh `Replay-Nonce`. A POST whose JWS nonce was
//! not handed out (or was used before), or whose `url` is not the request's
//! URL, is answered `400 badNonce` / `400 malformed` like a real CA would;
//! [`FakeAri::reject_nonces`] makes the next POSTs fail with `badNonce`
//! whatever their nonce. Signatures are not checked: Pebble does that.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::server_thread::ServerThread;

/// A renewal window the fake answers for one certificate identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewalWindow {
    /// `suggestedWindow.start`, RFC 3339.
    pub start: String,
    /// `suggestedWindow.end`, RFC 3339.
    pub end: String,
    /// `explanationURL`, when set.
    pub explanation_url: Option<String>,
    /// The raw `Retry-After` header value (delta-seconds or an HTTP-date).
    pub retry_after: Option<String>,
}

/// One signed POST the fake accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedPost {
    /// The request path (`/account`, `/order`).
    pub path: String,
    /// The decoded protected header.
    pub protected: Value,
    /// The decoded payload (`None` for POST-as-GET).
    pub payload: Option<Value>,
}

/// A running fake; see the module docs.
pub struct FakeAri {
    shared: Arc<Shared>,
    /// Serves until the fake is dropped.
    _server: ServerThread,
}

struct Shared {
    addr: SocketAddr,
    renewal_info: bool,
    state: Mutex<AriState>,
}

#[derive(Default)]
struct AriState {
    next_nonce: u64,
    nonces: BTreeSet<String>,
    reject_nonces: u32,
    bad_nonces_sent: u32,
    posts: Vec<SignedPost>,
    orders: u64,
    windows: BTreeMap<String, RenewalWindow>,
    asked: Vec<String>,
    user_agents: Vec<String>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, AriState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the request's User-Agent ("" when it has none).
    fn saw(&self, headers: &HeaderMap) {
        let ua = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        self.state().user_agents.push(ua);
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn fresh_nonce(&self) -> String {
        let mut state = self.state();
        state.next_nonce += 1;
        let nonce = format!("fake-nonce-{}", state.next_nonce);
        state.nonces.insert(nonce.clone());
        nonce
    }
}

impl FakeAri {
    /// A fake whose directory offers `renewalInfo`.
    pub fn start() -> FakeAri {
        FakeAri::try_start(true).expect("the fake ARI server starts")
    }

    /// A fake whose directory has no `renewalInfo` (a CA without ARI).
    pub fn start_without_renewal_info() -> FakeAri {
        FakeAri::try_start(false).expect("the fake ARI server starts")
    }

    fn try_start(renewal_info: bool) -> std::io::Result<FakeAri> {
        let listener = ServerThread::bind()?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            addr,
            renewal_info,
            state: Mutex::new(AriState::default()),
        });
        let router = Router::new()
            .route("/dir", get(directory))
            .route("/nonce", get(nonce).head(nonce))
            .route("/account", post(signed))
            .route("/order", post(signed))
            .route("/renewal-info/{cert_id}", get(renewal))
            .with_state(shared.clone());
        let server = ServerThread::spawn("fake ARI", listener, router)?;
        Ok(FakeAri {
            shared,
            _server: server,
        })
    }

    /// The directory URL, `http://127.0.0.1:PORT/dir`.
    pub fn directory_url(&self) -> String {
        format!("{}/dir", self.shared.base())
    }

    /// The host grant an instance needs, `http://127.0.0.1:PORT`.
    pub fn grant(&self) -> String {
        self.shared.base()
    }

    /// Answers `GET /renewal-info/{cert_id}` with `window`.
    pub fn set_window(&self, cert_id: &str, window: RenewalWindow) {
        self.shared
            .state()
            .windows
            .insert(cert_id.to_string(), window);
    }

    /// The certificate identifiers asked for, in order (unknown ones too).
    pub fn asked(&self) -> Vec<String> {
        self.shared.state().asked.clone()
    }

    /// Answers the next `n` signed POSTs with `badNonce`.
    pub fn reject_nonces(&self, n: u32) {
        self.shared.state().reject_nonces = n;
    }

    /// `badNonce` answers sent so far (injected or earned).
    pub fn bad_nonces_sent(&self) -> u32 {
        self.shared.state().bad_nonces_sent
    }

    /// Every signed POST accepted, in order.
    pub fn posts(&self) -> Vec<SignedPost> {
        self.shared.state().posts.clone()
    }

    /// The `User-Agent` of every request received, in order (`""` when a
    /// request had none).
    pub fn user_agents(&self) -> Vec<String> {
        self.shared.state().user_agents.clone()
    }

    /// The payloads of the newOrder requests accepted, in order.
    pub fn new_orders(&self) -> Vec<Value> {
        self.posts()
            .into_iter()
            .filter(|p| p.path == "/order")
            .filter_map(|p| p.payload)
            .collect()
    }
}

impl std::fmt::Debug for FakeAri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeAri")
            .field("directory_url", &self.directory_url())
            .finish()
    }
}

fn with_nonce(shared: &Shared, response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    if let Ok(v) = HeaderValue::from_str(&shared.fresh_nonce()) {
        response.headers_mut().insert("replay-nonce", v);
    }
    response
}

fn problem(status: StatusCode, kind: &str, detail: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        json!({"type": format!("urn:ietf:params:acme:error:{kind}"), "detail": detail}).to_string(),
    )
        .into_response()
}

async fn directory(State(shared): State<Arc<Shared>>, seen: HeaderMap) -> Response {
    shared.saw(&seen);
    let base = shared.base();
    let mut dir = json!({
        "newNonce": format!("{base}/nonce"),
        "newAccount": format!("{base}/account"),
        "newOrder": format!("{base}/order"),
        "revokeCert": format!("{base}/revoke"),
        "keyChange": format!("{base}/key-change"),
        "meta": {"termsOfService": format!("{base}/terms")},
    });
    if shared.renewal_info {
        dir["renewalInfo"] = json!(format!("{base}/renewal-info"));
    }
    axum::Json(dir).into_response()
}

async fn nonce(State(shared): State<Arc<Shared>>, seen: HeaderMap) -> Response {
    shared.saw(&seen);
    with_nonce(&shared, StatusCode::OK)
}

fn decode(text: Option<&str>) -> Option<Value> {
    let bytes = URL_SAFE_NO_PAD.decode(text?).ok()?;
    serde_json::from_slice(&bytes).ok()
}

async fn signed(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    seen: HeaderMap,
    body: Bytes,
) -> Response {
    shared.saw(&seen);
    let path = uri.path().to_string();
    let jws: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(protected) = decode(jws["protected"].as_str()) else {
        return with_nonce(
            &shared,
            problem(StatusCode::BAD_REQUEST, "malformed", "no protected header"),
        );
    };
    let payload = match jws["payload"].as_str() {
        Some("") => None,
        other => decode(other),
    };
    {
        let mut state = shared.state();
        let nonce = protected["nonce"].as_str().unwrap_or_default();
        let known = state.nonces.remove(nonce);
        if state.reject_nonces > 0 || !known {
            state.reject_nonces = state.reject_nonces.saturating_sub(1);
            state.bad_nonces_sent += 1;
            drop(state);
            return with_nonce(
                &shared,
                problem(
                    StatusCode::BAD_REQUEST,
                    "badNonce",
                    "JWS has an invalid anti-replay nonce",
                ),
            );
        }
        if protected["url"].as_str() != Some(format!("{}{path}", shared.base()).as_str()) {
            drop(state);
            return with_nonce(
                &shared,
                problem(
                    StatusCode::BAD_REQUEST,
                    "malformed",
                    "JWS url does not match the request",
                ),
            );
        }
        state.posts.push(SignedPost {
            path: path.clone(),
            protected: protected.clone(),
            payload: payload.clone(),
        });
    }
    let base = shared.base();
    let mut headers = HeaderMap::new();
    let body = if path == "/account" {
        headers.insert(
            header::LOCATION,
            HeaderValue::from_str(&format!("{base}/account/1"))
                .unwrap_or(HeaderValue::from_static("/")),
        );
        json!({"status": "valid", "contact": []})
    } else {
        let n = {
            let mut state = shared.state();
            state.orders += 1;
            state.orders
        };
        headers.insert(
            header::LOCATION,
            HeaderValue::from_str(&format!("{base}/order/{n}"))
                .unwrap_or(HeaderValue::from_static("/")),
        );
        let identifiers = payload
            .as_ref()
            .map_or(Value::Null, |p| p["identifiers"].clone());
        json!({
            "status": "ready",
            "identifiers": identifiers,
            "authorizations": [],
            "finalize": format!("{base}/order/{n}/finalize"),
        })
    };
    with_nonce(&shared, (StatusCode::CREATED, headers, axum::Json(body)))
}

async fn renewal(
    State(shared): State<Arc<Shared>>,
    Path(cert_id): Path<String>,
    seen: HeaderMap,
) -> Response {
    shared.saw(&seen);
    let window = {
        let mut state = shared.state();
        state.asked.push(cert_id.clone());
        state.windows.get(&cert_id).cloned()
    };
    let Some(w) = window else {
        return problem(StatusCode::NOT_FOUND, "malformed", "unknown certificate");
    };
    let mut body = json!({"suggestedWindow": {"start": w.start, "end": w.end}});
    if let Some(url) = w.explanation_url {
        body["explanationURL"] = json!(url);
    }
    let mut response = axum::Json(body).into_response();
    if let Some(v) = w.retry_after.and_then(|r| HeaderValue::from_str(&r).ok()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}
