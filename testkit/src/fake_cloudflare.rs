//! A fake Cloudflare API v4 (the DNS-record part) for the `cloudflare-dns`
//! connector's tests.
//!
//! It runs in the test process on its own thread and Tokio runtime, like
//! [`crate::fake_ca`], and speaks the documented shapes: base
//! `http://127.0.0.1:PORT/client/v4` ([`FakeCloudflareHandle::url`], the
//! connector's `base_url`), `Authorization: Bearer <token>`, every answer the
//! envelope `{"success", "errors": [{"code", "message"}], "messages",
//! "result"}` (+ `result_info` on lists).
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /user/tokens/verify` | `{"id", "status": "active"}`; an account-owned or unknown token `401` code 1000 |
//! | `GET /zones?name=&page=&per_page=` | the zones (exact name filter) |
//! | `GET /zones/{id}/dns_records?type=&name=&content=&page=&per_page=` | the records (exact filters) |
//! | `POST /zones/{id}/dns_records` `{"type": "TXT", "name", "content", "ttl"}` | the record |
//! | `DELETE /zones/{id}/dns_records/{record}` | `{"id"}`; unknown `404` code 81044 |
//!
//! Errors: unknown token `403` code 10000 (`401` code 1000 on the verify
//! call); a malformed zone id `400` code 7003, an unknown one `404` code
//! 7003; an identical record `400` code 81058; validation failures `400`
//! code 1004 "DNS Validation Error" with an `error_chain` entry (9051 not
//! printable ASCII, 9100 content over 2048 bytes, 9006 name outside the
//! zone, 9020 TTL not 1 or 60..=86400, 9000 type other than TXT: the chain
//! codes other than 9051 are the fake's own, Cloudflare's are not
//! documented); unknown routes `404` code 7000. Only TXT records exist.
//!
//! Faults ([`FakeCloudflareHandle::fail_next_requests`]): `429` with
//! `Retry-After`, `503`; they apply before the token check.
//!
//! With a [`ChalltestsrvMgmt`], every created or deleted TXT record is
//! mirrored into that `pebble-challtestsrv` before the answer goes out, so a
//! DNS query to its DNS server sees exactly the fake's TXT records (after a
//! delete the name is cleared and its remaining values set again, since
//! `clear-txt` drops them all).
//!
//! ```no_run
//! use certplane_testkit::challtestsrv::Challtestsrv;
//! use certplane_testkit::fake_cloudflare::FakeCloudflare;
//! # async fn t() {
//! let dns = Challtestsrv::start();
//! let cf = FakeCloudflare::start(Some(dns.mgmt())).await;
//! let zone_id = cf.add_zone("example.test");
//! // settings {"base_url": cf.url()}, secret api_token = cf.token(),
//! // grant cf.grant(); then present/cleanup through the connector.
//! assert_eq!(cf.creates(), 0);
//! # }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::challtestsrv::ChalltestsrvMgmt;
use crate::server_thread::ServerThread;

/// Path of the API root on the fake's address.
pub const API_PREFIX: &str = "/client/v4";

/// The user API token the fake accepts from the start.
pub const TOKEN: &str = "fake-cloudflare-token-0123456789abcdef";

/// Cloudflare's limit on a TXT record's content.
pub const MAX_CONTENT_LEN: usize = 2048;

/// A failure the fake answers with instead of doing the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CfFault {
    /// `429 Too Many Requests` (code 971), with `Retry-After` when given.
    RateLimited {
        /// The `Retry-After` header, in seconds.
        retry_after_secs: Option<u32>,
    },
    /// `503 Service Unavailable` without `Retry-After`.
    Unavailable,
}

/// One TXT record the fake holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxtInfo {
    /// Record id (32 hex digits).
    pub id: String,
    /// The zone's id.
    pub zone_id: String,
    /// Fully qualified name, lower case, no trailing dot.
    pub name: String,
    /// The content as created.
    pub content: String,
    /// TTL as created (1 = automatic).
    pub ttl: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    User,
    Account,
}

/// A running fake, listening on `127.0.0.1` until dropped. Everything to
/// observe and steer it is on [`FakeCloudflareHandle`], which this
/// dereferences to.
pub struct FakeCloudflare {
    handle: FakeCloudflareHandle,
    /// Serves until the fake is dropped.
    _server: ServerThread,
}

/// A cloneable handle on a [`FakeCloudflare`]'s state.
#[derive(Clone)]
pub struct FakeCloudflareHandle {
    shared: Arc<Shared>,
}

struct Shared {
    addr: SocketAddr,
    upstream: Option<ChalltestsrvMgmt>,
    state: Mutex<CfState>,
    /// Held across a record change and its mirroring, so concurrent changes
    /// reach the challtestsrv in the order the fake applied them.
    mirror: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct CfState {
    tokens: Vec<(String, TokenKind)>,
    zones: Vec<(String, String)>,
    records: Vec<TxtInfo>,
    quote_contents: bool,
    faults: Option<(u32, CfFault)>,
    creates: u64,
    deletes: u64,
    requests: Vec<String>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, CfState> {
        // A panicking test thread must not hide the fake's state from the
        // others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn dns_name(s: &str) -> String {
    s.trim().trim_end_matches('.').to_ascii_lowercase()
}

impl FakeCloudflare {
    /// Binds `127.0.0.1:0` and serves on a dedicated thread; with
    /// `upstream`, mirrors TXT changes into that challtestsrv. Panics when
    /// that fails (tests only).
    pub async fn start(upstream: Option<ChalltestsrvMgmt>) -> FakeCloudflare {
        FakeCloudflare::try_start(upstream).expect("the fake Cloudflare API starts")
    }

    fn try_start(upstream: Option<ChalltestsrvMgmt>) -> std::io::Result<FakeCloudflare> {
        let listener = ServerThread::bind()?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            addr,
            upstream,
            state: Mutex::new(CfState {
                tokens: vec![(TOKEN.to_string(), TokenKind::User)],
                ..CfState::default()
            }),
            mirror: tokio::sync::Mutex::new(()),
        });
        let router = router(shared.clone());
        let server = ServerThread::spawn("fake Cloudflare", listener, router)?;
        Ok(FakeCloudflare {
            handle: FakeCloudflareHandle { shared },
            _server: server,
        })
    }

    /// A cloneable handle on this fake's state.
    pub fn handle(&self) -> FakeCloudflareHandle {
        self.handle.clone()
    }
}

impl Deref for FakeCloudflare {
    type Target = FakeCloudflareHandle;

    fn deref(&self) -> &FakeCloudflareHandle {
        &self.handle
    }
}

impl FakeCloudflareHandle {
    fn state(&self) -> MutexGuard<'_, CfState> {
        self.shared.state()
    }

    /// The API root, `http://127.0.0.1:PORT/client/v4` (the connector's
    /// `base_url`).
    pub fn url(&self) -> String {
        format!("http://{}{API_PREFIX}", self.shared.addr)
    }

    /// The host grant a connector instance needs, `http://127.0.0.1:PORT`.
    pub fn grant(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// A valid user API token ([`TOKEN`]).
    pub fn token(&self) -> &'static str {
        TOKEN
    }

    /// Adds a zone and returns its id (32 hex digits).
    pub fn add_zone(&self, name: &str) -> String {
        let id = new_id();
        self.state().zones.push((id.clone(), dns_name(name)));
        id
    }

    /// Accepts `token` as an account-owned token: valid everywhere except
    /// `GET /user/tokens/verify`, which refuses it like Cloudflare does.
    pub fn add_account_token(&self, token: &str) {
        self.state()
            .tokens
            .push((token.to_string(), TokenKind::Account));
    }

    /// Lists contents wrapped in double quotes, as Cloudflare shows TXT
    /// values entered with quotes (default off).
    pub fn set_quote_contents(&self, on: bool) {
        self.state().quote_contents = on;
    }

    /// The next `n` requests (any route) answer `fault` and change nothing
    /// (replaces faults still queued; `n` = 0 clears them).
    pub fn fail_next_requests(&self, n: u32, fault: CfFault) {
        self.state().faults = (n > 0).then_some((n, fault));
    }

    /// Every TXT record, in creation order.
    pub fn records(&self) -> Vec<TxtInfo> {
        self.state().records.clone()
    }

    /// The contents of the TXT records named `name`, in creation order.
    pub fn txt_values(&self, name: &str) -> Vec<String> {
        let name = dns_name(name);
        self.state()
            .records
            .iter()
            .filter(|r| r.name == name)
            .map(|r| r.content.clone())
            .collect()
    }

    /// Records created (`POST` answered 200).
    pub fn creates(&self) -> u64 {
        self.state().creates
    }

    /// Records deleted (`DELETE` answered 200).
    pub fn deletes(&self) -> u64 {
        self.state().deletes
    }

    /// Every request received, as `METHOD /path?query`, faulted and
    /// refused ones included.
    pub fn requests(&self) -> Vec<String> {
        self.state().requests.clone()
    }
}

impl std::fmt::Debug for FakeCloudflare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeCloudflare")
            .field("url", &self.url())
            .finish()
    }
}

fn envelope(result: Value) -> Value {
    json!({"success": true, "errors": [], "messages": [], "result": result})
}

fn fail(status: StatusCode, code: u32, message: &str) -> Response {
    fail_chain(status, code, message, None)
}

fn fail_chain(
    status: StatusCode,
    code: u32,
    message: &str,
    chain: Option<(u32, &str)>,
) -> Response {
    let mut error = json!({"code": code, "message": message});
    if let Some((c, m)) = chain {
        error["error_chain"] = json!([{"code": c, "message": m}]);
    }
    let body = json!({"success": false, "errors": [error], "messages": [], "result": null});
    (status, Json(body)).into_response()
}

fn invalid(code: u32, message: &str) -> Box<Response> {
    Box::new(fail_chain(
        StatusCode::BAD_REQUEST,
        1004,
        "DNS Validation Error",
        Some((code, message)),
    ))
}

fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/user/tokens/verify", get(verify_token))
        .route("/zones", get(list_zones))
        .route(
            "/zones/{zone_id}/dns_records",
            get(list_records).post(create_record),
        )
        .route(
            "/zones/{zone_id}/dns_records/{record_id}",
            delete(delete_record),
        );
    Router::new()
        .nest(API_PREFIX, api)
        .fallback(|| async { fail(StatusCode::NOT_FOUND, 7000, "No route for that URI") })
        .layer(middleware::from_fn_with_state(shared.clone(), gate))
        .with_state(shared)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Counts the request, answers an injected fault, checks the token.
async fn gate(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let uri = request.uri().clone();
    let line = format!(
        "{} {}",
        request.method(),
        uri.path_and_query().map_or(uri.path(), |p| p.as_str())
    );
    let verify = uri.path() == format!("{API_PREFIX}/user/tokens/verify");
    let token = {
        let mut st = shared.state();
        st.requests.push(line);
        if let Some((n, fault)) = st.faults {
            st.faults = (n > 1).then_some((n - 1, fault));
            return match fault {
                CfFault::RateLimited { retry_after_secs } => {
                    let mut r = fail(
                        StatusCode::TOO_MANY_REQUESTS,
                        971,
                        "Please wait and consider throttling your request speed",
                    );
                    if let Some(s) = retry_after_secs {
                        r.headers_mut().insert(header::RETRY_AFTER, s.into());
                    }
                    r
                }
                CfFault::Unavailable => fail(
                    StatusCode::SERVICE_UNAVAILABLE,
                    10000,
                    "Service temporarily unavailable",
                ),
            };
        }
        let presented = bearer(request.headers()).unwrap_or("");
        st.tokens
            .iter()
            .find(|(t, _)| t == presented)
            .map(|(_, kind)| *kind)
    };
    match (token, verify) {
        (Some(TokenKind::User), _) | (Some(TokenKind::Account), false) => next.run(request).await,
        (_, true) => fail(StatusCode::UNAUTHORIZED, 1000, "Invalid API Token"),
        (None, false) => fail(StatusCode::FORBIDDEN, 10000, "Authentication error"),
    }
}

async fn verify_token() -> Response {
    Json(envelope(json!({
        "id": "ed17574386854bf78a67040be0a770b0",
        "status": "active"
    })))
    .into_response()
}

/// `page` / `per_page` of a listing, Cloudflare's defaults and caps.
fn paginate<T: Clone>(
    items: &[T],
    query: &HashMap<String, String>,
    default: usize,
    max: usize,
) -> (Vec<T>, Value) {
    let per_page = query
        .get("per_page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(default)
        .clamp(1, max);
    let page = query
        .get("page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let slice: Vec<T> = items
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .cloned()
        .collect();
    let info = json!({
        "page": page,
        "per_page": per_page,
        "count": slice.len(),
        "total_count": items.len(),
        "total_pages": items.len().div_ceil(per_page),
    });
    (slice, info)
}

async fn list_zones(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let wanted = query.get("name").map(|n| dns_name(n));
    let zones: Vec<Value> = shared
        .state()
        .zones
        .iter()
        .filter(|(_, name)| wanted.as_ref().is_none_or(|w| w == name))
        .map(|(id, name)| json!({"id": id, "name": name, "status": "active"}))
        .collect();
    let (page, info) = paginate(&zones, &query, 20, 50);
    let mut body = envelope(Value::Array(page));
    body["result_info"] = info;
    Json(body).into_response()
}

/// The zone's name, or the answer for a malformed or unknown zone id.
fn zone_name(st: &CfState, zone_id: &str, path: &str) -> Result<String, Box<Response>> {
    let message = format!("Could not route to {path}, perhaps your object identifier is invalid?");
    if zone_id.len() != 32 || !zone_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Box::new(fail(StatusCode::BAD_REQUEST, 7003, &message)));
    }
    st.zones
        .iter()
        .find(|(id, _)| id == zone_id)
        .map(|(_, name)| name.clone())
        .ok_or_else(|| Box::new(fail(StatusCode::NOT_FOUND, 7003, &message)))
}

fn record_json(r: &TxtInfo, zone_name: &str, quote: bool) -> Value {
    let content = if quote && !r.content.starts_with('"') {
        format!("\"{}\"", r.content)
    } else {
        r.content.clone()
    };
    json!({
        "id": r.id,
        "zone_id": r.zone_id,
        "zone_name": zone_name,
        "name": r.name,
        "type": "TXT",
        "content": content,
        "proxiable": false,
        "proxied": false,
        "ttl": r.ttl,
        "locked": false,
        "meta": {},
        "comment": null,
        "tags": [],
    })
}

async fn list_records(
    State(shared): State<Arc<Shared>>,
    Path(zone_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let st = shared.state();
    let zone = match zone_name(&st, &zone_id, &format!("/zones/{zone_id}/dns_records")) {
        Ok(z) => z,
        Err(r) => return *r,
    };
    let kind_ok = query
        .get("type")
        .is_none_or(|t| t.eq_ignore_ascii_case("TXT"));
    let name = query.get("name").map(|n| dns_name(n));
    let content = query.get("content");
    let records: Vec<Value> = st
        .records
        .iter()
        .filter(|r| kind_ok && r.zone_id == zone_id)
        .filter(|r| name.as_ref().is_none_or(|n| *n == r.name))
        .filter(|r| content.is_none_or(|c| *c == r.content))
        .map(|r| record_json(r, &zone, st.quote_contents))
        .collect();
    let (page, info) = paginate(&records, &query, 100, 5000);
    let mut body = envelope(Value::Array(page));
    body["result_info"] = info;
    Json(body).into_response()
}

fn unquoted(content: &str) -> &str {
    content
        .strip_prefix('"')
        .and_then(|c| c.strip_suffix('"'))
        .unwrap_or(content)
}

/// Checks a create request the way Cloudflare would; the record to store.
fn validate(zone_id: &str, zone: &str, body: &[u8]) -> Result<TxtInfo, Box<Response>> {
    let body: Value = serde_json::from_slice(body).map_err(|_| {
        Box::new(fail(
            StatusCode::BAD_REQUEST,
            9207,
            "Request body is invalid.",
        ))
    })?;
    let field = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    if !field("type").eq_ignore_ascii_case("TXT") {
        return Err(invalid(9000, "this fake implements TXT records only"));
    }
    let name = dns_name(&field("name"));
    if name != zone && !name.ends_with(&format!(".{zone}")) {
        return Err(invalid(
            9006,
            &format!("{name} is not within the zone {zone}"),
        ));
    }
    let content = field("content");
    if content.is_empty() || content.len() > MAX_CONTENT_LEN {
        return Err(invalid(
            9100,
            "Content for TXT record must be 1 to 2048 characters.",
        ));
    }
    if !content.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(invalid(
            9051,
            "Invalid TXT record. Record may only contain printable ASCII!",
        ));
    }
    let ttl = match body.get("ttl") {
        None => 1,
        Some(v) => v.as_u64().unwrap_or(0),
    };
    if ttl != 1 && !(60..=86_400).contains(&ttl) {
        return Err(invalid(
            9020,
            "TTL must be between 60 and 86400 seconds, or 1 for Auto.",
        ));
    }
    Ok(TxtInfo {
        id: new_id(),
        zone_id: zone_id.to_string(),
        name,
        content,
        ttl: ttl as u32,
    })
}

async fn create_record(
    State(shared): State<Arc<Shared>>,
    Path(zone_id): Path<String>,
    body: Bytes,
) -> Response {
    let _order = shared.mirror.lock().await;
    let (record, quote, zone) = {
        let mut st = shared.state();
        let zone = match zone_name(&st, &zone_id, &format!("/zones/{zone_id}/dns_records")) {
            Ok(z) => z,
            Err(r) => return *r,
        };
        let record = match validate(&zone_id, &zone, &body) {
            Ok(r) => r,
            Err(r) => return *r,
        };
        let duplicate = st.records.iter().any(|r| {
            r.zone_id == zone_id
                && r.name == record.name
                && unquoted(&r.content) == unquoted(&record.content)
        });
        if duplicate {
            return fail(
                StatusCode::BAD_REQUEST,
                81058,
                "An identical record already exists.",
            );
        }
        st.records.push(record.clone());
        (record, st.quote_contents, zone)
    };
    if let Some(mgmt) = &shared.upstream
        && let Err(e) = mgmt.set_txt(&record.name, unquoted(&record.content)).await
    {
        shared.state().records.retain(|r| r.id != record.id);
        return fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            10001,
            &format!("mirroring into challtestsrv failed: {e}"),
        );
    }
    shared.state().creates += 1;
    Json(envelope(record_json(&record, &zone, quote))).into_response()
}

async fn delete_record(
    State(shared): State<Arc<Shared>>,
    Path((zone_id, record_id)): Path<(String, String)>,
) -> Response {
    let _order = shared.mirror.lock().await;
    let (name, remaining) = {
        let mut st = shared.state();
        let path = format!("/zones/{zone_id}/dns_records/{record_id}");
        if let Err(r) = zone_name(&st, &zone_id, &path) {
            return *r;
        }
        let Some(pos) = st
            .records
            .iter()
            .position(|r| r.id == record_id && r.zone_id == zone_id)
        else {
            return fail(StatusCode::NOT_FOUND, 81044, "Record does not exist.");
        };
        let gone = st.records.remove(pos);
        st.deletes += 1;
        let remaining: Vec<String> = st
            .records
            .iter()
            .filter(|r| r.name == gone.name)
            .map(|r| unquoted(&r.content).to_string())
            .collect();
        (gone.name, remaining)
    };
    if let Some(mgmt) = &shared.upstream {
        let mirrored = async {
            mgmt.clear_txt(&name).await?;
            for value in &remaining {
                mgmt.set_txt(&name, value).await?;
            }
            std::io::Result::Ok(())
        };
        if let Err(e) = mirrored.await {
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                10001,
                &format!("mirroring into challtestsrv failed: {e}"),
            );
        }
    }
    Json(envelope(json!({"id": record_id}))).into_response()
}
