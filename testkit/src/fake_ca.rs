//! A fake asynchronous CA over HTTP that counts the orders it receives.
//!
//! Crash-window tests must prove "exactly one order per certificate at the
//! CA" however the host under test is killed and restarted. This CA runs in
//! the test process, on its own thread and Tokio runtime (so it keeps
//! answering while the test blocks, and whatever runtime the test uses), and
//! keeps its state for as long as the [`FakeCa`] lives, across any number of
//! host restarts. The `http-ca` test connector
//! (`runtime/tests/fixtures/http-ca`) speaks its API:
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /orders` `{"csr_pem", "common_name", "dns_names", "ip_addresses", "validity_days", "certificate_id"}` | `201` order |
//! | `GET /orders/{id}` | `200` order, `404` unknown |
//! | `POST /orders/{id}/revoke` `{"reason"}` | `200 {"id", "revoked": true}`, `404` unknown, `409` not issued |
//! | `POST /certificates/{serial_hex}/revoke` `{"reason"}` | the same, by serial number |
//!
//! An order is `{"id", "status": "pending" | "issued", "certificate_id",
//! "retry_after_secs"?, "certificate_pem"?, "chain_pem"?: [root PEM],
//! "serial_hex"?}`. A malformed body or CSR is a `400`; every error body is
//! `{"error": "..."}`.
//!
//! Issuance: the leaf is signed by the CA's own root (ECDSA P-256, generated
//! at start, [`FakeCaHandle::root_pem`]) and certifies the CSR's subject,
//! public key and subject alternative names exactly; it is valid from one
//! minute ago for `validity_days` (default 90) days, is not a CA, has
//! `digitalSignature` and EKU `serverAuth`, and a random 16-byte serial. The
//! chain is `[root PEM]`.
//!
//! Pending: an order answers `pending` until it has answered
//! [`pending_polls`](FakeCaHandle::set_pending_polls) `GET`s with `pending`;
//! the next `GET` issues it. With `pending_polls` 0, `POST` issues at once.
//! The setting is read on every request, so a test can hold orders pending
//! (`u32::MAX`) and later release them (`0`: the next `GET` issues).
//!
//! ```no_run
//! use certplane_testkit::{FakeCa, Fault};
//! # async fn t() {
//! let ca = FakeCa::start().await;
//! ca.set_pending_polls(1);
//! ca.fail_next_polls(1, Fault::RateLimited { retry_after_secs: 7 });
//! // settings {"url": ca.url()}, grant ca.grant() for the http-ca connector
//! // ... run the host ...
//! assert_eq!(ca.orders_for("web-1"), 1);
//! # }
//! ```

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
};
use serde::Deserialize;
use serde_json::json;

use crate::server_thread::ServerThread;

/// Validity of a leaf when the order names none.
pub const DEFAULT_VALIDITY_DAYS: u32 = 90;

/// Default of [`FakeCaHandle::set_pending_polls`].
pub const DEFAULT_PENDING_POLLS: u32 = 1;

/// Default of [`FakeCaHandle::set_retry_after_secs`].
pub const DEFAULT_RETRY_AFTER_SECS: u32 = 1;

/// A failure the CA answers with instead of doing the work (see
/// [`FakeCaHandle::fail_next_submits`] and [`FakeCaHandle::fail_next_polls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `503 Service Unavailable` without `Retry-After` (connectors: `transient`).
    Transient,
    /// `429 Too Many Requests` with `Retry-After: retry_after_secs`
    /// (connectors: `rate-limited`).
    RateLimited {
        /// The `Retry-After` header value, in seconds.
        retry_after_secs: u32,
    },
    /// `409 Conflict` (connectors: `rejected`).
    Rejected,
    /// `401 Unauthorized` (connectors: `unauthorized`).
    Unauthorized,
}

impl Fault {
    fn response(self) -> Response {
        match self {
            Fault::Transient => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "injected fault: try again later",
            ),
            Fault::RateLimited { retry_after_secs } => (
                [(header::RETRY_AFTER, retry_after_secs.to_string())],
                error(StatusCode::TOO_MANY_REQUESTS, "injected fault: slow down"),
            )
                .into_response(),
            Fault::Rejected => error(StatusCode::CONFLICT, "injected fault: order refused"),
            Fault::Unauthorized => {
                error(StatusCode::UNAUTHORIZED, "injected fault: bad credentials")
            }
        }
    }
}

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    /// Not issued yet.
    Pending,
    /// Issued (possibly revoked since).
    Issued,
}

/// What the CA knows about one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderInfo {
    /// CA-side id (`ord-1`, `ord-2`, ... in placement order).
    pub id: String,
    /// The `certificate_id` the order was placed for.
    pub certificate_id: String,
    /// The requested common name.
    pub common_name: String,
    /// The requested DNS names (as sent; the leaf certifies the CSR's).
    pub dns_names: Vec<String>,
    /// The requested IP addresses (as sent).
    pub ip_addresses: Vec<String>,
    /// The requested validity, if any.
    pub validity_days: Option<u32>,
    /// Pending or issued.
    pub status: OrderStatus,
    /// `GET`s received for this order, faulted ones included.
    pub polls: u32,
    /// The leaf, once issued.
    pub certificate_pem: Option<String>,
    /// The leaf's serial number, lower-case hex, once issued.
    pub serial_hex: Option<String>,
    /// The reason given by the first revocation, once revoked.
    pub revoked: Option<String>,
}

/// A running fake CA. It listens on `127.0.0.1` on a free port until it is
/// dropped (which closes the port and every open connection).
///
/// Everything to observe and steer it is on [`FakeCaHandle`], which this
/// dereferences to; [`FakeCa::handle`] gives a cloneable handle to share
/// with other tasks.
pub struct FakeCa {
    handle: FakeCaHandle,
    /// Serves until the fake is dropped.
    _server: ServerThread,
}

/// A cloneable handle on a [`FakeCa`]'s state: its address, root, counters
/// and knobs. It stays usable after the CA is dropped (the counters keep
/// their last values; requests to the URL fail).
#[derive(Clone)]
pub struct FakeCaHandle {
    shared: Arc<Shared>,
}

struct Shared {
    addr: SocketAddr,
    root_pem: String,
    root: Certificate,
    root_key: KeyPair,
    state: Mutex<CaState>,
}

struct CaState {
    pending_polls: u32,
    retry_after_secs: Option<u32>,
    poll_delay: Duration,
    submit_faults: Option<(u32, Fault)>,
    poll_faults: Option<(u32, Fault)>,
    submits: u64,
    polls: u64,
    revocations: u64,
    orders: Vec<OrderRecord>,
}

struct OrderRecord {
    info: OrderInfo,
    csr_pem: String,
    pending_answers: u32,
}

impl FakeCa {
    /// Generates a root, binds `127.0.0.1:0` and starts serving on a
    /// dedicated thread. Panics when that fails (tests only).
    pub async fn start() -> FakeCa {
        FakeCa::try_start().expect("the fake CA starts")
    }

    fn try_start() -> std::io::Result<FakeCa> {
        let (root, root_key) = make_root().map_err(std::io::Error::other)?;
        let listener = ServerThread::bind()?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            addr,
            root_pem: root.pem(),
            root,
            root_key,
            state: Mutex::new(CaState {
                pending_polls: DEFAULT_PENDING_POLLS,
                retry_after_secs: Some(DEFAULT_RETRY_AFTER_SECS),
                poll_delay: Duration::ZERO,
                submit_faults: None,
                poll_faults: None,
                submits: 0,
                polls: 0,
                revocations: 0,
                orders: Vec::new(),
            }),
        });
        let router = router(shared.clone());
        let server = ServerThread::spawn("fake CA", listener, router)?;
        tracing::debug!("fake CA listening on {addr}");
        Ok(FakeCa {
            handle: FakeCaHandle { shared },
            _server: server,
        })
    }

    /// A cloneable handle on this CA's state.
    pub fn handle(&self) -> FakeCaHandle {
        self.handle.clone()
    }
}

impl Deref for FakeCa {
    type Target = FakeCaHandle;

    fn deref(&self) -> &FakeCaHandle {
        &self.handle
    }
}

impl std::fmt::Debug for FakeCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeCa").field("url", &self.url()).finish()
    }
}

impl std::fmt::Debug for FakeCaHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeCaHandle")
            .field("url", &self.url())
            .finish()
    }
}

impl FakeCaHandle {
    fn state(&self) -> MutexGuard<'_, CaState> {
        self.shared.state()
    }

    /// The base URL, `http://127.0.0.1:PORT` (the `http-ca` connector's
    /// `url` setting).
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The host grant a connector instance needs to reach this CA,
    /// `http://127.0.0.1:PORT` (loopback must be named explicitly).
    pub fn grant(&self) -> String {
        self.url()
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The root certificate (PEM) every leaf chains to; it is also the
    /// whole `chain_pem` of an issued order.
    pub fn root_pem(&self) -> String {
        self.shared.root_pem.clone()
    }

    /// Orders placed: `POST /orders` requests that created an order (those
    /// answered with an injected fault or a `400` did not).
    pub fn orders_placed(&self) -> u64 {
        self.state().orders.len() as u64
    }

    /// Orders placed for this `certificate_id`.
    pub fn orders_for(&self, certificate_id: &str) -> u64 {
        self.state()
            .orders
            .iter()
            .filter(|o| o.info.certificate_id == certificate_id)
            .count() as u64
    }

    /// Every `POST /orders` received, faulted and malformed ones included.
    pub fn submits(&self) -> u64 {
        self.state().submits
    }

    /// Every `GET /orders/{id}` received, faulted ones and unknown ids
    /// included (counted on arrival, before any poll delay).
    pub fn polls(&self) -> u64 {
        self.state().polls
    }

    /// `GET`s received for this order (0 for an unknown id).
    pub fn polls_for(&self, order_id: &str) -> u32 {
        self.state()
            .orders
            .iter()
            .find(|o| o.info.id == order_id)
            .map_or(0, |o| o.info.polls)
    }

    /// Revocation requests answered `200` (a repeated revocation counts
    /// again).
    pub fn revocations(&self) -> u64 {
        self.state().revocations
    }

    /// Every order, in placement order.
    pub fn orders(&self) -> Vec<OrderInfo> {
        self.state().orders.iter().map(|o| o.info.clone()).collect()
    }

    /// One order by id.
    pub fn order(&self, order_id: &str) -> Option<OrderInfo> {
        self.state()
            .orders
            .iter()
            .find(|o| o.info.id == order_id)
            .map(|o| o.info.clone())
    }

    /// How many `GET`s an order answers `pending` before the next one issues
    /// it; 0 makes `POST /orders` issue at once. Read on every request, so
    /// it also applies to orders already placed. Default
    /// [`DEFAULT_PENDING_POLLS`].
    pub fn set_pending_polls(&self, n: u32) {
        self.state().pending_polls = n;
    }

    /// The current `pending_polls`.
    pub fn pending_polls(&self) -> u32 {
        self.state().pending_polls
    }

    /// The `retry_after_secs` hint of pending answers (`None`: no hint).
    /// Default `Some(`[`DEFAULT_RETRY_AFTER_SECS`]`)`.
    pub fn set_retry_after_secs(&self, secs: Option<u32>) {
        self.state().retry_after_secs = secs;
    }

    /// The next `n` `POST /orders` answer `fault` and place no order
    /// (replaces any faults still queued for submits; `n` = 0 clears them).
    pub fn fail_next_submits(&self, n: u32, fault: Fault) {
        self.state().submit_faults = (n > 0).then_some((n, fault));
    }

    /// The next `n` `GET /orders/{id}` answer `fault` and do not advance
    /// their order (replaces any faults still queued for polls; `n` = 0
    /// clears them). They are counted by [`polls`](Self::polls) and delayed
    /// by the poll delay like any other `GET`.
    pub fn fail_next_polls(&self, n: u32, fault: Fault) {
        self.state().poll_faults = (n > 0).then_some((n, fault));
    }

    /// How long every `GET /orders/{id}` sleeps before answering, so a test
    /// can kill the host while a poll is in flight. The order advances (and
    /// the poll is counted) when the request arrives, before the sleep: a
    /// poll whose answer was lost has still happened at the CA.
    pub fn set_poll_delay(&self, delay: Duration) {
        self.state().poll_delay = delay;
    }

    /// Waits until `condition` holds, checking every 10 ms; `false` when
    /// `timeout` passed first. E.g. `ca.wait_for(secs(10), |ca| ca.polls() > 0)`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        condition: impl Fn(&FakeCaHandle) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if condition(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, CaState> {
        // A panicking test thread must not take the CA down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Signs the CSR of `order` and marks it issued.
    fn issue(&self, order: &mut OrderRecord) -> Result<(), String> {
        let days = order.info.validity_days.unwrap_or(DEFAULT_VALIDITY_DAYS);
        let mut csr = CertificateSigningRequestParams::from_pem(&order.csr_pem)
            .map_err(|e| format!("the CSR does not parse: {e}"))?;
        let params = &mut csr.params;
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = (now + Duration::from_secs(u64::from(days) * 86_400)).into();
        let mut serial: [u8; 16] = rand::random();
        // Positive, and no leading zero byte to strip: the hex is stable.
        serial[0] = (serial[0] & 0x3f) | 0x40;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let leaf = csr
            .signed_by(&self.root, &self.root_key)
            .map_err(|e| format!("signing failed: {e}"))?;
        order.info.certificate_pem = Some(leaf.pem());
        order.info.serial_hex = Some(serial.iter().map(|b| format!("{b:02x}")).collect());
        order.info.status = OrderStatus::Issued;
        Ok(())
    }

    fn order_body(&self, order: &OrderInfo, retry_after_secs: Option<u32>) -> serde_json::Value {
        let mut body = json!({
            "id": order.id,
            "certificate_id": order.certificate_id,
        });
        match order.status {
            OrderStatus::Pending => {
                body["status"] = json!("pending");
                if let Some(secs) = retry_after_secs {
                    body["retry_after_secs"] = json!(secs);
                }
            }
            OrderStatus::Issued => {
                body["status"] = json!("issued");
                body["certificate_pem"] = json!(order.certificate_pem);
                body["chain_pem"] = json!([self.root_pem]);
                body["serial_hex"] = json!(order.serial_hex);
            }
        }
        body
    }
}

impl CaState {
    fn take_fault(queue: &mut Option<(u32, Fault)>) -> Option<Fault> {
        let (left, fault) = queue.as_mut()?;
        let fault = *fault;
        *left -= 1;
        if *left == 0 {
            *queue = None;
        }
        Some(fault)
    }
}

fn make_root() -> Result<(Certificate, KeyPair), rcgen::Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "certplane fake CA root");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(10 * 365 * 86_400)).into();
    let cert = params.self_signed(&key)?;
    Ok((cert, key))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/orders", post(create_order))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/revoke", post(revoke_order))
        .route("/certificates/{serial}/revoke", post(revoke_serial))
        .with_state(shared)
}

#[derive(Deserialize)]
struct NewOrder {
    csr_pem: String,
    #[serde(default)]
    common_name: String,
    #[serde(default)]
    dns_names: Vec<String>,
    #[serde(default)]
    ip_addresses: Vec<String>,
    #[serde(default)]
    validity_days: Option<u32>,
    certificate_id: String,
}

#[derive(Deserialize, Default)]
struct Revocation {
    #[serde(default)]
    reason: Option<String>,
}

async fn create_order(State(ca): State<Arc<Shared>>, body: Bytes) -> Response {
    let mut state = ca.state();
    state.submits += 1;
    if let Some(fault) = CaState::take_fault(&mut state.submit_faults) {
        tracing::debug!("fake CA: POST /orders answers {fault:?}");
        return fault.response();
    }
    let request: NewOrder = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed order: {e}")),
    };
    if request.certificate_id.is_empty() {
        return error(StatusCode::BAD_REQUEST, "certificate_id is empty");
    }
    if request.validity_days == Some(0) {
        return error(StatusCode::BAD_REQUEST, "validity_days must be at least 1");
    }
    if let Err(e) = CertificateSigningRequestParams::from_pem(&request.csr_pem) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("the CSR does not parse: {e}"),
        );
    }
    let mut order = OrderRecord {
        info: OrderInfo {
            id: format!("ord-{}", state.orders.len() + 1),
            certificate_id: request.certificate_id,
            common_name: request.common_name,
            dns_names: request.dns_names,
            ip_addresses: request.ip_addresses,
            validity_days: request.validity_days,
            status: OrderStatus::Pending,
            polls: 0,
            certificate_pem: None,
            serial_hex: None,
            revoked: None,
        },
        csr_pem: request.csr_pem,
        pending_answers: 0,
    };
    if state.pending_polls == 0
        && let Err(e) = ca.issue(&mut order)
    {
        return error(StatusCode::BAD_REQUEST, e);
    }
    tracing::debug!(
        "fake CA: order {} placed for {}",
        order.info.id,
        order.info.certificate_id
    );
    let body = ca.order_body(&order.info, state.retry_after_secs);
    state.orders.push(order);
    (StatusCode::CREATED, Json(body)).into_response()
}

async fn get_order(State(ca): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let (delay, response) = {
        let mut state = ca.state();
        state.polls += 1;
        let delay = state.poll_delay;
        let fault = CaState::take_fault(&mut state.poll_faults);
        let pending_polls = state.pending_polls;
        let retry_after_secs = state.retry_after_secs;
        let response = match state.orders.iter_mut().find(|o| o.info.id == id) {
            None => error(StatusCode::NOT_FOUND, format!("no order {id}")),
            Some(order) => {
                order.info.polls += 1;
                match fault {
                    Some(fault) => {
                        tracing::debug!("fake CA: GET /orders/{id} answers {fault:?}");
                        fault.response()
                    }
                    None => {
                        let mut outcome = Ok(());
                        if order.info.status == OrderStatus::Pending {
                            if order.pending_answers < pending_polls {
                                order.pending_answers += 1;
                            } else {
                                outcome = ca.issue(order);
                            }
                        }
                        match outcome {
                            Ok(()) => (
                                StatusCode::OK,
                                Json(ca.order_body(&order.info, retry_after_secs)),
                            )
                                .into_response(),
                            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
                        }
                    }
                }
            }
        };
        (delay, response)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    response
}

async fn revoke_order(
    State(ca): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    revoke(&ca, |o| o.id == id, &id, &body)
}

async fn revoke_serial(
    State(ca): State<Arc<Shared>>,
    Path(serial): Path<String>,
    body: Bytes,
) -> Response {
    let wanted = serial.to_ascii_lowercase();
    revoke(
        &ca,
        |o| o.serial_hex.as_deref() == Some(wanted.as_str()),
        &serial,
        &body,
    )
}

fn revoke(ca: &Shared, which: impl Fn(&OrderInfo) -> bool, what: &str, body: &[u8]) -> Response {
    let request: Revocation = if body.is_empty() {
        Revocation::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("malformed revocation: {e}"),
                );
            }
        }
    };
    let mut state = ca.state();
    let Some(order) = state.orders.iter_mut().find(|o| which(&o.info)) else {
        return error(StatusCode::NOT_FOUND, format!("no certificate for {what}"));
    };
    if order.info.status != OrderStatus::Issued {
        return error(
            StatusCode::CONFLICT,
            format!("order {} is not issued", order.info.id),
        );
    }
    let reason = request.reason.unwrap_or_else(|| "unspecified".into());
    order.info.revoked.get_or_insert(reason);
    let id = order.info.id.clone();
    state.revocations += 1;
    (StatusCode::OK, Json(json!({ "id": id, "revoked": true }))).into_response()
}
