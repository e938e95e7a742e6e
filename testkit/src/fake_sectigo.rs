//! A fake Sectigo Certificate Manager (SCM) REST API for the `sectigo`
//! issuer connector's tests.
//!
//! It speaks the shapes of `/work/shared/upstream-apis.md` ("Sectigo
//! Certificate Manager") under `/api` (so [`FakeSectigoHandle::url`] is a
//! `base_url` like the real `https://cert-manager.com/api`), on its own
//! thread and Tokio runtime like [`crate::fake_ca`], and keeps its state for
//! as long as the [`FakeSectigo`] lives, across host restarts:
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /api/ssl/v1/types` | `200 [{"id","name","terms"}]` |
//! | `POST /api/ssl/v1/enroll` | `200 {"renewId","sslId"}`; `400` for a malformed request |
//! | `GET /api/ssl/v1/collect/{sslId}/{format}` (also `?format=`) | `200` raw PEM; `400 -183` not yet; `400 -192` revoked |
//! | `GET /api/ssl/v1/{sslId}` | `200 {"sslId","status","serialNumber"?,"expires"?,"subjectAlternativeNames"}` |
//! | `POST /api/ssl/v1/revoke/{sslId}` `{"reason"}` | `204` |
//!
//! Every request must carry the `login`, `password` and `customerUri`
//! headers ([`LOGIN`], [`PASSWORD`], [`CUSTOMER_URI`]); else `401`. Errors
//! are `{"code": <negative>, "description"}`. Only -183 and -192 are codes
//! SCM documents; the others ([`CODE_UNAUTHORIZED`], [`CODE_INVALID`],
//! [`CODE_BAD_CSR`], [`CODE_NOT_FOUND`], [`CODE_NOT_REVOCABLE`]) are this
//! fake's stand-ins.
//!
//! Enrollment is checked the way SCM checks it: `orgId` must be a known
//! organization ([`ORG_ID`]), `certType` one of the types and `term` one of
//! its terms, `csr` a PKCS#10 CSR whose signature verifies, and
//! `subjAltNames` a comma-separated **string** (a JSON array is a `400`).
//! A rejected enrollment places no order; [`FakeSectigoHandle::enroll_requests`]
//! still shows its body.
//!
//! Issuance: an order answers -183 to
//! [`pending_collects`](FakeSectigoHandle::set_pending_collects) collects,
//! then the next collect signs the CSR with the fake's intermediate (itself
//! signed by its root; ECDSA P-256, generated at start). The leaf certifies
//! the CSR's key and exactly the names of `subjAltNames` plus the CSR's
//! common name when that is a host name, for `term` days; it is not a CA, has `digitalSignature` and
//! EKU `serverAuth`. Format `pem`/`x509` answers root, leaf, intermediate,
//! in that (not leaf-first) order; `pemco`/`x509CO` the leaf only;
//! `x509IO` the intermediate and root.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{OriginalUri, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateSigningRequestParams, DnType,
    DnValue, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::server_thread::ServerThread;

/// The `login` header the fake accepts.
pub const LOGIN: &str = "certplane-api";
/// The `password` header the fake accepts.
pub const PASSWORD: &str = "correct horse battery staple";
/// The `customerUri` header the fake accepts.
pub const CUSTOMER_URI: &str = "certplane-test";
/// The one organization id enrollments may name.
pub const ORG_ID: i64 = 7;
/// The default certificate type: `OV SSL`, terms 365 and 730 days.
pub const OV_SSL: i64 = 224;
/// A second default type: `EV SSL`, term 365 days.
pub const EV_SSL: i64 = 98;
/// Default of [`FakeSectigoHandle::set_pending_collects`].
pub const DEFAULT_PENDING_COLLECTS: u32 = 1;

/// SCM: "Certificate is not collectable." (documented).
pub const CODE_NOT_COLLECTABLE: i64 = -183;
/// SCM: the certificate is revoked (documented).
pub const CODE_REVOKED: i64 = -192;
/// Stand-in: wrong `login`, `password` or `customerUri` (with `401`).
pub const CODE_UNAUTHORIZED: i64 = -16;
/// Stand-in: a malformed or invalid request field.
pub const CODE_INVALID: i64 = -4;
/// Stand-in: the CSR does not parse or its signature does not verify.
pub const CODE_BAD_CSR: i64 = -10;
/// Stand-in: no certificate with this sslId (with `404`).
pub const CODE_NOT_FOUND: i64 = -6;
/// Stand-in: revoking a certificate that is not issued, or already revoked.
pub const CODE_NOT_REVOCABLE: i64 = -7;

/// An SSL certificate type the account offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertType {
    /// `certType` id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Terms in days.
    pub terms: Vec<u32>,
}

/// Which endpoint a fault is injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `GET /ssl/v1/types`
    Types,
    /// `POST /ssl/v1/enroll`
    Enroll,
    /// `GET /ssl/v1/collect/...`
    Collect,
    /// `GET /ssl/v1/{sslId}`
    Status,
    /// `POST /ssl/v1/revoke/{sslId}`
    Revoke,
}

/// What an endpoint answers instead of doing its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `429` with an SCM error body, and `Retry-After` when given.
    TooManyRequests {
        /// The `Retry-After` seconds, if any.
        retry_after_secs: Option<u32>,
    },
    /// `503` with an SCM error body, and `Retry-After` when given.
    Unavailable {
        /// The `Retry-After` seconds, if any.
        retry_after_secs: Option<u32>,
    },
    /// Any status with `{"code": code, "description": "injected fault"}`.
    Status {
        /// HTTP status.
        status: u16,
        /// SCM error code.
        code: i64,
    },
}

impl Fault {
    fn response(self) -> Response {
        let with_retry = |status: StatusCode, secs: Option<u32>| {
            let mut r = scm_error(status, -1, "injected fault: try again later");
            if let Some(secs) = secs {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            r
        };
        match self {
            Fault::TooManyRequests { retry_after_secs } => {
                with_retry(StatusCode::TOO_MANY_REQUESTS, retry_after_secs)
            }
            Fault::Unavailable { retry_after_secs } => {
                with_retry(StatusCode::SERVICE_UNAVAILABLE, retry_after_secs)
            }
            Fault::Status { status, code } => scm_error(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                code,
                "injected fault",
            ),
        }
    }
}

/// Where an order stands (`GET /ssl/v1/{sslId}` `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    /// Placed, not issued yet.
    Applied,
    /// Issued and collectable.
    Issued,
    /// Declined by an SCM administrator: never collectable.
    Declined,
    /// Revoked (collect answers -192).
    Revoked,
}

impl OrderStatus {
    fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Applied => "Applied",
            OrderStatus::Issued => "Issued",
            OrderStatus::Declined => "Declined",
            OrderStatus::Revoked => "Revoked",
        }
    }
}

/// What the fake knows about one order.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderInfo {
    /// `sslId` (1001, 1002, ... in enrollment order).
    pub ssl_id: u64,
    /// `renewId`.
    pub renew_id: String,
    /// `orgId` as sent.
    pub org_id: i64,
    /// `certType` as sent.
    pub cert_type: i64,
    /// `term` as sent.
    pub term: u32,
    /// `subjAltNames` as sent (a string).
    pub subj_alt_names: String,
    /// The names the certificate certifies: `subjAltNames` plus the CSR's
    /// common name.
    pub names: Vec<String>,
    /// `comments` as sent.
    pub comments: Option<String>,
    /// `externalRequester` as sent.
    pub external_requester: Option<String>,
    /// `customFields` as sent (`null` when absent).
    pub custom_fields: Value,
    /// Where it stands.
    pub status: OrderStatus,
    /// Collect requests for this order, faulted ones included.
    pub collects: u32,
    /// The leaf, once issued.
    pub certificate_pem: Option<String>,
    /// The leaf's serial number, lower-case hex, once issued.
    pub serial_hex: Option<String>,
}

/// One accepted revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The revoked order.
    pub ssl_id: u64,
    /// The `reason` sent.
    pub reason: String,
}

/// A running fake SCM on `127.0.0.1` (a free port) until dropped.
/// Dereferences to its [`FakeSectigoHandle`].
pub struct FakeSectigo {
    handle: FakeSectigoHandle,
    /// Serves until the fake is dropped.
    _server: ServerThread,
}

/// A cloneable handle on a [`FakeSectigo`]'s state.
#[derive(Clone)]
pub struct FakeSectigoHandle {
    shared: Arc<Shared>,
}

struct Shared {
    addr: SocketAddr,
    root: Certificate,
    intermediate: Certificate,
    intermediate_key: KeyPair,
    state: Mutex<ScmState>,
}

struct ScmState {
    types: Vec<CertType>,
    pending_collects: u32,
    faults: HashMap<Endpoint, (u32, Fault)>,
    requests: Vec<String>,
    unauthorized: u64,
    enroll_requests: Vec<Value>,
    orders: Vec<OrderRecord>,
    collects: u64,
    revocations: Vec<Revocation>,
}

struct OrderRecord {
    info: OrderInfo,
    csr_pem: String,
    pending_answers: u32,
}

impl FakeSectigo {
    /// Generates its CA, binds `127.0.0.1:0` and starts serving on a
    /// dedicated thread. Panics when that fails (tests only).
    pub async fn start() -> FakeSectigo {
        FakeSectigo::try_start().expect("the fake Sectigo SCM starts")
    }

    fn try_start() -> std::io::Result<FakeSectigo> {
        let (root, intermediate, intermediate_key) = make_ca().map_err(std::io::Error::other)?;
        let listener = ServerThread::bind()?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            addr,
            root,
            intermediate,
            intermediate_key,
            state: Mutex::new(ScmState {
                types: default_types(),
                pending_collects: DEFAULT_PENDING_COLLECTS,
                faults: HashMap::new(),
                requests: Vec::new(),
                unauthorized: 0,
                enroll_requests: Vec::new(),
                orders: Vec::new(),
                collects: 0,
                revocations: Vec::new(),
            }),
        });
        let router = router(shared.clone());
        let server = ServerThread::spawn("fake Sectigo", listener, router)?;
        Ok(FakeSectigo {
            handle: FakeSectigoHandle { shared },
            _server: server,
        })
    }

    /// A cloneable handle on this fake's state.
    pub fn handle(&self) -> FakeSectigoHandle {
        self.handle.clone()
    }
}

impl Deref for FakeSectigo {
    type Target = FakeSectigoHandle;

    fn deref(&self) -> &FakeSectigoHandle {
        &self.handle
    }
}

impl std::fmt::Debug for FakeSectigo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeSectigo")
            .field("url", &self.url())
            .finish()
    }
}

impl FakeSectigoHandle {
    fn state(&self) -> MutexGuard<'_, ScmState> {
        self.shared.state()
    }

    /// The connector's `base_url`: `http://127.0.0.1:PORT/api`.
    pub fn url(&self) -> String {
        format!("http://{}/api", self.shared.addr)
    }

    /// The host grant the connector instance needs: `http://127.0.0.1:PORT`.
    pub fn grant(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// Settings for the `sectigo` connector pointing here (type [`OV_SSL`],
    /// term 365 days, one-second polls).
    pub fn settings(&self) -> Value {
        json!({
            "base_url": self.url(),
            "customer_uri": CUSTOMER_URI,
            "org_id": ORG_ID,
            "cert_type": OV_SSL,
            "term": 365,
            "poll_interval_secs": 1,
        })
    }

    /// The root every leaf chains to (through the intermediate).
    pub fn root_pem(&self) -> String {
        self.shared.root.pem()
    }

    /// The intermediate that signs the leaves.
    pub fn intermediate_pem(&self) -> String {
        self.shared.intermediate.pem()
    }

    /// Replaces the certificate types `GET /ssl/v1/types` lists.
    pub fn set_types(&self, types: Vec<CertType>) {
        self.state().types = types;
    }

    /// How many collects of an order answer -183 before the next one
    /// issues it. Read on every collect, so it applies to placed orders too
    /// (`u32::MAX` holds them, `0` releases them on the next collect).
    pub fn set_pending_collects(&self, n: u32) {
        self.state().pending_collects = n;
    }

    /// The next `n` requests to `endpoint` answer `fault` and do nothing
    /// else (replaces faults still queued there; `n` = 0 clears them).
    /// Requests with wrong credentials are refused before faults apply.
    pub fn fail_next(&self, endpoint: Endpoint, n: u32, fault: Fault) {
        let mut state = self.state();
        if n == 0 {
            state.faults.remove(&endpoint);
        } else {
            state.faults.insert(endpoint, (n, fault));
        }
    }

    /// [`fail_next`](Self::fail_next) for enrollments.
    pub fn fail_next_enrolls(&self, n: u32, fault: Fault) {
        self.fail_next(Endpoint::Enroll, n, fault);
    }

    /// [`fail_next`](Self::fail_next) for collects (a faulted collect does
    /// not advance its order).
    pub fn fail_next_collects(&self, n: u32, fault: Fault) {
        self.fail_next(Endpoint::Collect, n, fault);
    }

    /// Declines an order, as an SCM administrator would: it never becomes
    /// collectable (collect keeps answering -183, its status says
    /// `Declined`).
    pub fn decline(&self, ssl_id: u64) {
        self.set_status(ssl_id, OrderStatus::Declined);
    }

    /// Revokes an order on the CA side: collect answers -192.
    pub fn revoke_order(&self, ssl_id: u64) {
        self.set_status(ssl_id, OrderStatus::Revoked);
    }

    fn set_status(&self, ssl_id: u64, status: OrderStatus) {
        if let Some(o) = self
            .state()
            .orders
            .iter_mut()
            .find(|o| o.info.ssl_id == ssl_id)
        {
            o.info.status = status;
        }
    }

    /// Orders placed (enrollments answered `200`).
    pub fn enrollments(&self) -> u64 {
        self.state().orders.len() as u64
    }

    /// Orders placed whose certified names include `name`
    /// (case-insensitively).
    pub fn enrollments_for(&self, name: &str) -> u64 {
        self.state()
            .orders
            .iter()
            .filter(|o| o.info.names.iter().any(|n| n.eq_ignore_ascii_case(name)))
            .count() as u64
    }

    /// The JSON body of every authenticated enrollment request, accepted,
    /// rejected and faulted alike (`null` for a body that is not JSON).
    pub fn enroll_requests(&self) -> Vec<Value> {
        self.state().enroll_requests.clone()
    }

    /// Every order, in enrollment order.
    pub fn orders(&self) -> Vec<OrderInfo> {
        self.state().orders.iter().map(|o| o.info.clone()).collect()
    }

    /// One order.
    pub fn order(&self, ssl_id: u64) -> Option<OrderInfo> {
        self.state()
            .orders
            .iter()
            .find(|o| o.info.ssl_id == ssl_id)
            .map(|o| o.info.clone())
    }

    /// Every authenticated collect request, faulted ones and unknown ids
    /// included.
    pub fn collects(&self) -> u64 {
        self.state().collects
    }

    /// Accepted revocations, in order.
    pub fn revocations(&self) -> Vec<Revocation> {
        self.state().revocations.clone()
    }

    /// Requests refused for their credentials.
    pub fn unauthorized(&self) -> u64 {
        self.state().unauthorized
    }

    /// Every request received, as `METHOD /path?query`, in order.
    pub fn requests(&self) -> Vec<String> {
        self.state().requests.clone()
    }

    /// Waits until `condition` holds, checking every 10 ms; `false` when
    /// `timeout` passed first.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        condition: impl Fn(&FakeSectigoHandle) -> bool,
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
    fn state(&self) -> MutexGuard<'_, ScmState> {
        // A panicking test thread must not take the fake down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Signs the order's CSR for its names and term, and marks it issued.
    fn issue(&self, order: &mut OrderRecord) -> Result<(), String> {
        let mut csr = CertificateSigningRequestParams::from_pem(&order.csr_pem)
            .map_err(|e| format!("the CSR does not parse: {e}"))?;
        let params = &mut csr.params;
        params.subject_alt_names = order
            .info
            .names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n
                    .as_str()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|e| format!("{n:?}: {e}")),
            })
            .collect::<Result<_, _>>()?;
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = (now + Duration::from_secs(u64::from(order.info.term) * 86_400)).into();
        let mut serial: [u8; 16] = rand::random();
        serial[0] = (serial[0] & 0x3f) | 0x40;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let leaf = csr
            .signed_by(&self.intermediate, &self.intermediate_key)
            .map_err(|e| format!("signing failed: {e}"))?;
        order.info.certificate_pem = Some(leaf.pem());
        order.info.serial_hex = Some(serial.iter().map(|b| format!("{b:02x}")).collect());
        order.info.status = OrderStatus::Issued;
        Ok(())
    }

    fn bundle(&self, leaf: &str, format: &str) -> Option<String> {
        let (root, intermediate) = (self.root.pem(), self.intermediate.pem());
        match format {
            "pem" | "x509" => Some(format!("{root}{leaf}{intermediate}")),
            "pemco" | "x509CO" => Some(leaf.to_string()),
            "x509IO" => Some(format!("{intermediate}{root}")),
            _ => None,
        }
    }
}

impl ScmState {
    fn take_fault(&mut self, endpoint: Endpoint) -> Option<Fault> {
        let (left, fault) = self.faults.get_mut(&endpoint)?;
        let fault = *fault;
        *left -= 1;
        if *left == 0 {
            self.faults.remove(&endpoint);
        }
        Some(fault)
    }

    fn order_mut(&mut self, ssl_id: &str) -> Option<&mut OrderRecord> {
        let id: u64 = ssl_id.parse().ok()?;
        self.orders.iter_mut().find(|o| o.info.ssl_id == id)
    }
}

fn default_types() -> Vec<CertType> {
    vec![
        CertType {
            id: OV_SSL,
            name: "OV SSL".into(),
            terms: vec![365, 730],
        },
        CertType {
            id: EV_SSL,
            name: "EV SSL".into(),
            terms: vec![365],
        },
    ]
}

fn make_ca() -> Result<(Certificate, Certificate, KeyPair), rcgen::Error> {
    let now = SystemTime::now();
    let ca_params = |cn: &str, constraint: BasicConstraints| -> Result<_, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "certplane fake Sectigo");
        params.is_ca = IsCa::Ca(constraint);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(10 * 365 * 86_400)).into();
        Ok(params)
    };
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let root =
        ca_params("fake Sectigo Root", BasicConstraints::Unconstrained)?.self_signed(&root_key)?;
    let intermediate_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = ca_params("fake Sectigo OV CA", BasicConstraints::Constrained(0))?;
    params.use_authority_key_identifier_extension = true;
    let intermediate = params.signed_by(&intermediate_key, &root, &root_key)?;
    Ok((root, intermediate, intermediate_key))
}

fn scm_error(status: StatusCode, code: i64, description: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "code": code, "description": description.into() })),
    )
        .into_response()
}

fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/ssl/v1/types", get(types))
        .route("/ssl/v1/enroll", post(enroll))
        .route("/ssl/v1/collect/{ssl_id}", get(collect_query))
        .route("/ssl/v1/collect/{ssl_id}/{format}", get(collect_path))
        .route("/ssl/v1/revoke/{ssl_id}", post(revoke))
        .route("/ssl/v1/{ssl_id}", get(status))
        .layer(middleware::from_fn_with_state(shared.clone(), authenticate));
    Router::new().nest("/api", api).with_state(shared)
}

/// Logs every request and refuses wrong credentials before any handler.
async fn authenticate(State(scm): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    // `nest` strips `/api` from the URI; the log shows what the client sent.
    let uri = request
        .extensions()
        .get::<OriginalUri>()
        .map_or_else(|| request.uri().clone(), |o| o.0.clone());
    let line = format!(
        "{} {}",
        request.method(),
        uri.path_and_query()
            .map_or_else(|| uri.path().to_string(), |p| p.to_string())
    );
    let ok = {
        let headers = request.headers();
        let is = |name: &str, want: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v == want)
        };
        is("login", LOGIN) && is("password", PASSWORD) && is("customeruri", CUSTOMER_URI)
    };
    {
        let mut state = scm.state();
        state.requests.push(line);
        if !ok {
            state.unauthorized += 1;
        }
    }
    if !ok {
        return scm_error(
            StatusCode::UNAUTHORIZED,
            CODE_UNAUTHORIZED,
            "Invalid login, password or customer URI",
        );
    }
    next.run(request).await
}

async fn types(State(scm): State<Arc<Shared>>) -> Response {
    let mut state = scm.state();
    if let Some(fault) = state.take_fault(Endpoint::Types) {
        return fault.response();
    }
    let list: Vec<Value> = state
        .types
        .iter()
        .map(|t| json!({ "id": t.id, "name": t.name, "terms": t.terms }))
        .collect();
    Json(list).into_response()
}

/// The checked fields of an enrollment, or the `400` SCM would answer.
struct Enrollment {
    org_id: i64,
    csr: String,
    subj_alt_names: String,
    names: Vec<String>,
    cert_type: i64,
    term: u32,
    comments: Option<String>,
    external_requester: Option<String>,
    custom_fields: Value,
}

fn check_enrollment(
    state: &ScmState,
    headers: &HeaderMap,
    body: &Value,
) -> Result<Enrollment, Box<Response>> {
    let invalid = |why: String| {
        Err(Box::new(scm_error(
            StatusCode::BAD_REQUEST,
            CODE_INVALID,
            why,
        )))
    };
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_type {
        return Err(Box::new(scm_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            CODE_INVALID,
            "Content-Type must be application/json",
        )));
    }
    let Some(obj) = body.as_object() else {
        return invalid("the request body is not a JSON object".into());
    };
    let int = |name: &str| obj.get(name).and_then(Value::as_i64);
    let text = |name: &str| obj.get(name).and_then(Value::as_str).map(str::to_string);
    let Some(org_id) = int("orgId") else {
        return invalid("orgId is required and must be an integer".into());
    };
    if org_id != ORG_ID {
        return invalid(format!("Invalid organization id {org_id}"));
    }
    let Some(csr) = text("csr") else {
        return invalid("csr is required and must be a string".into());
    };
    let subj_alt_names = match obj.get("subjAltNames") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return invalid(format!(
                "subjAltNames must be a comma-separated string, not {}",
                kind_of(other)
            ));
        }
    };
    let Some(cert_type) = int("certType") else {
        return invalid("certType is required and must be an integer".into());
    };
    let Some(known) = state.types.iter().find(|t| t.id == cert_type) else {
        return invalid(format!("Unknown certificate type {cert_type}"));
    };
    let Some(term) = int("term").and_then(|t| u32::try_from(t).ok()) else {
        return invalid("term is required and must be a positive integer".into());
    };
    if !known.terms.contains(&term) {
        return invalid(format!(
            "Invalid term {term} for certificate type {cert_type}"
        ));
    }
    for field in ["numberServers", "serverType"] {
        if obj.get(field).is_some_and(|v| !v.is_i64()) {
            return invalid(format!("{field} must be an integer"));
        }
    }
    for field in ["comments", "externalRequester"] {
        if obj
            .get(field)
            .is_some_and(|v| !v.is_string() && !v.is_null())
        {
            return invalid(format!("{field} must be a string"));
        }
    }
    let custom_fields = obj.get("customFields").cloned().unwrap_or(Value::Null);
    let fields_ok = match &custom_fields {
        Value::Null => true,
        Value::Array(items) => items.iter().all(|f| {
            f.get("name").is_some_and(Value::is_string)
                && f.get("value").is_some_and(Value::is_string)
        }),
        _ => false,
    };
    if !fields_ok {
        return invalid("customFields must be an array of {name, value} strings".into());
    }
    let parsed = CertificateSigningRequestParams::from_pem(&csr).map_err(|e| {
        Box::new(scm_error(
            StatusCode::BAD_REQUEST,
            CODE_BAD_CSR,
            format!("Invalid CSR: {e}"),
        ))
    })?;
    let mut names: Vec<String> = Vec::new();
    for name in subj_alt_names.split(',').map(str::trim) {
        if name.is_empty() && subj_alt_names.trim().is_empty() {
            continue;
        }
        if !is_name(name) {
            return invalid(format!("Invalid subject alternative name {name:?}"));
        }
        push_name(&mut names, name);
    }
    // SCM certifies the CSR's common name too; one that is no host name
    // (rcgen's default "rcgen self signed cert") stays in the subject only.
    if let Some(cn) = common_name(&parsed).filter(|cn| is_name(cn)) {
        push_name(&mut names, &cn);
    }
    if names.is_empty() {
        return invalid("no common name in the CSR and no subjAltNames".into());
    }
    Ok(Enrollment {
        org_id,
        csr,
        subj_alt_names,
        names,
        cert_type,
        term,
        comments: text("comments"),
        external_requester: text("externalRequester"),
        custom_fields,
    })
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A DNS name (wildcards allowed) or an IP address.
fn is_name(name: &str) -> bool {
    let dns = !name.is_empty()
        && name.len() <= 253
        && name.contains('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'*'));
    dns || name.parse::<IpAddr>().is_ok()
}

fn push_name(names: &mut Vec<String>, name: &str) {
    if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
        names.push(name.to_string());
    }
}

fn common_name(csr: &CertificateSigningRequestParams) -> Option<String> {
    match csr.params.distinguished_name.get(&DnType::CommonName)? {
        DnValue::Utf8String(s) => Some(s.clone()),
        DnValue::PrintableString(s) => Some(s.as_str().to_string()),
        DnValue::Ia5String(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

async fn enroll(State(scm): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let mut state = scm.state();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state.enroll_requests.push(body.clone());
    if let Some(fault) = state.take_fault(Endpoint::Enroll) {
        return fault.response();
    }
    let e = match check_enrollment(&state, &headers, &body) {
        Ok(e) => e,
        Err(response) => return *response,
    };
    let ssl_id = 1001 + state.orders.len() as u64;
    let renew_id = format!("renew-{ssl_id}-{:08x}", rand::random::<u32>());
    tracing::debug!(
        "fake Sectigo: sslId {ssl_id} enrolled for {}",
        e.subj_alt_names
    );
    state.orders.push(OrderRecord {
        info: OrderInfo {
            ssl_id,
            renew_id: renew_id.clone(),
            org_id: e.org_id,
            cert_type: e.cert_type,
            term: e.term,
            subj_alt_names: e.subj_alt_names,
            names: e.names,
            comments: e.comments,
            external_requester: e.external_requester,
            custom_fields: e.custom_fields,
            status: OrderStatus::Applied,
            collects: 0,
            certificate_pem: None,
            serial_hex: None,
        },
        csr_pem: e.csr,
        pending_answers: 0,
    });
    Json(json!({ "renewId": renew_id, "sslId": ssl_id })).into_response()
}

#[derive(Deserialize)]
struct FormatQuery {
    #[serde(default)]
    format: Option<String>,
}

async fn collect_query(
    State(scm): State<Arc<Shared>>,
    Path(ssl_id): Path<String>,
    Query(q): Query<FormatQuery>,
) -> Response {
    let format = q.format.unwrap_or_else(|| "x509".into());
    collect(&scm, &ssl_id, &format)
}

async fn collect_path(
    State(scm): State<Arc<Shared>>,
    Path((ssl_id, format)): Path<(String, String)>,
) -> Response {
    collect(&scm, &ssl_id, &format)
}

fn collect(scm: &Shared, ssl_id: &str, format: &str) -> Response {
    let mut state = scm.state();
    state.collects += 1;
    let fault = state.take_fault(Endpoint::Collect);
    let pending_collects = state.pending_collects;
    let Some(order) = state.order_mut(ssl_id) else {
        return scm_error(
            StatusCode::NOT_FOUND,
            CODE_NOT_FOUND,
            format!("No certificate with sslId {ssl_id}"),
        );
    };
    order.info.collects += 1;
    if let Some(fault) = fault {
        return fault.response();
    }
    let not_collectable = || {
        scm_error(
            StatusCode::BAD_REQUEST,
            CODE_NOT_COLLECTABLE,
            "Certificate is not collectable.",
        )
    };
    match order.info.status {
        OrderStatus::Revoked => {
            return scm_error(
                StatusCode::BAD_REQUEST,
                CODE_REVOKED,
                "The certificate has been revoked.",
            );
        }
        OrderStatus::Declined => return not_collectable(),
        OrderStatus::Applied => {
            if order.pending_answers < pending_collects {
                order.pending_answers += 1;
                return not_collectable();
            }
            if let Err(e) = scm.issue(order) {
                return scm_error(StatusCode::INTERNAL_SERVER_ERROR, -1, e);
            }
        }
        OrderStatus::Issued => {}
    }
    let leaf = order.info.certificate_pem.clone().unwrap_or_default();
    match scm.bundle(&leaf, format) {
        Some(body) => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/x-pem-file")
            .body(Body::from(body))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
        None => scm_error(
            StatusCode::BAD_REQUEST,
            CODE_INVALID,
            format!("Unknown format {format:?}"),
        ),
    }
}

async fn status(State(scm): State<Arc<Shared>>, Path(ssl_id): Path<String>) -> Response {
    let mut state = scm.state();
    if let Some(fault) = state.take_fault(Endpoint::Status) {
        return fault.response();
    }
    let Some(order) = state.order_mut(&ssl_id) else {
        return scm_error(
            StatusCode::NOT_FOUND,
            CODE_NOT_FOUND,
            format!("No certificate with sslId {ssl_id}"),
        );
    };
    let info = &order.info;
    let mut body = json!({
        "sslId": info.ssl_id,
        "renewId": info.renew_id,
        "status": info.status.as_str(),
        "subjectAlternativeNames": info.names,
        "term": info.term,
        "certType": { "id": info.cert_type },
    });
    if let Some(serial) = &info.serial_hex {
        body["serialNumber"] = json!(serial);
    }
    Json(body).into_response()
}

async fn revoke(
    State(scm): State<Arc<Shared>>,
    Path(ssl_id): Path<String>,
    body: Bytes,
) -> Response {
    let mut state = scm.state();
    if let Some(fault) = state.take_fault(Endpoint::Revoke) {
        return fault.response();
    }
    let reason = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("reason").and_then(Value::as_str).map(str::to_string));
    let Some(reason) = reason.filter(|r| (1..=511).contains(&r.chars().count())) else {
        return scm_error(
            StatusCode::BAD_REQUEST,
            CODE_INVALID,
            "reason is required (1 to 511 characters)",
        );
    };
    let Some(order) = state.order_mut(&ssl_id) else {
        return scm_error(
            StatusCode::NOT_FOUND,
            CODE_NOT_FOUND,
            format!("No certificate with sslId {ssl_id}"),
        );
    };
    if order.info.status != OrderStatus::Issued {
        let status = order.info.status.as_str();
        return scm_error(
            StatusCode::BAD_REQUEST,
            CODE_NOT_REVOCABLE,
            format!("Certificate {ssl_id} is {status} and cannot be revoked"),
        );
    }
    order.info.status = OrderStatus::Revoked;
    let ssl_id = order.info.ssl_id;
    state.revocations.push(Revocation { ssl_id, reason });
    StatusCode::NO_CONTENT.into_response()
}
