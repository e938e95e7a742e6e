//! A fake DigiCert CertCentral (Services API v2) for the `digicert`
//! connector's tests.
//!
//! It answers the endpoints the connector uses, with the shapes of
//! `/work/shared/upstream-apis.md` (CertCentral's documentation), under the
//! base path `/services/v2` like the real one, on `127.0.0.1` on a free
//! port, on its own thread and Tokio runtime (like [`crate::fake_ca`]), so
//! its state outlives any number of host restarts:
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /user/me` | `200 {"id", "username", "container": {"id"}}` |
//! | `POST /order/certificate/{product}` | `201 {"id", "requests": [{"id", "status"}]}`, plus `"certificate_id"` and `"certificate_chain": [{"subject_common_name", "pem"}]` when issued at once |
//! | `GET /order/certificate/{order_id}` | `200 {"id", "status", "certificate": {"id"?, "common_name", "dns_names", "serial_number"?, ...}, "product": {"name_id"}, ...}` |
//! | `GET /certificate/{certificate_id}/download/format/pem_all` | `200` PEM: root, leaf, intermediate (deliberately not leaf-first) |
//! | `PUT /certificate/{certificate_id}/revoke` `{"comments", "skip_approval"}` | `204`, or `201 {"id", "type": "revoke", "status": "pending", ...}` when `skip_approval` is false |
//!
//! Every request must carry `X-DC-DEVKEY: `[`api_key`](FakeDigicertHandle::api_key),
//! else `403`. Every error is `{"errors": [{"code", "message"}]}`:
//! `access_denied|invalid_key` (403), `bad_request_format` (400, a body that
//! is not JSON, `dns_names` that is not a list of strings),
//! `missing_field|<field>` and `invalid_<what>` (400: common name, CSR,
//! signature hash, organization, order validity, payment method),
//! `not_found|product` / `not_found|order` / `not_found|certificate` (404),
//! and the injected faults ([`DigicertFault`]).
//!
//! Like the real API it does not read names from the CSR: the leaf
//! certifies the order's `common_name` and `dns_names` (CN first, no
//! duplicates) with the CSR's public key, signed by an intermediate under a
//! root (ECDSA P-256, generated at start). Organization-validated products
//! need `organization.id` = [`FAKE_ORGANIZATION_ID`]; `ssl_dv_*` products
//! need none. Validity is the order's (`years` × 365 or `days`), cut to 397
//! days.
//!
//! Modes: with [`set_pending_polls`](FakeDigicertHandle::set_pending_polls)
//! 0 (the default) orders are issued at once; with N they answer a
//! pending-like status to N `GET`s (`pending`, then `processing`; an order
//! placed with `skip_approval: false` says `needs_approval`) and the next
//! `GET` issues them. [`finish_orders_as`](FakeDigicertHandle::finish_orders_as)
//! makes orders end in another status (`rejected`, `denied`, ...) instead
//! of being issued.
//!
//! ```no_run
//! use certplane_testkit::fake_digicert::{DigicertFault, FakeDigicert};
//! # async fn t() {
//! let dc = FakeDigicert::start().await;
//! dc.set_pending_polls(2);
//! dc.fail_next_polls(1, DigicertFault::Unavailable);
//! // settings {"base_url": dc.url(), "product": "ssl_basic",
//! //           "organization_id": FAKE_ORGANIZATION_ID}, secret api_key = dc.api_key(),
//! // grant dc.grant()
//! assert_eq!(dc.orders_for("www.example.com"), 1);
//! # }
//! ```

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::http::StatusCode;
use axum::response::Response;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
};
use serde_json::{Value, json};

use crate::server_thread::ServerThread;

mod checks;
mod routes;

use routes::errors;

/// The organization id organization-validated orders must name.
pub const FAKE_ORGANIZATION_ID: u64 = 112_233;

/// The products the fake sells; any other is `404 not_found|product`.
pub const PRODUCTS: [&str; 8] = [
    "ssl_basic",
    "ssl_plus",
    "ssl_multi_domain",
    "ssl_securesite_flex",
    "ssl_ev_basic",
    "private_ssl_plus",
    "ssl_dv_geotrust_flex",
    "ssl_dv_rapidssl",
];

/// Longest validity the fake grants, in days (what public TLS allowed
/// until 2026).
pub const MAX_VALIDITY_DAYS: u64 = 397;

/// The first order id; certificate ids start at [`FIRST_CERTIFICATE_ID`].
pub const FIRST_ORDER_ID: u64 = 1_000_001;

/// The first certificate id.
pub const FIRST_CERTIFICATE_ID: u64 = 5_000_001;

/// A failure the fake answers with instead of doing the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigicertFault {
    /// `429 request_limit_exceeded`, without `Retry-After` (as CertCentral).
    RateLimited,
    /// `503 service_unavailable`.
    Unavailable,
    /// `500 internal_error`.
    ServerError,
    /// `403 access_denied|missing_permission`.
    Forbidden,
}

impl DigicertFault {
    fn response(self) -> Response {
        match self {
            DigicertFault::RateLimited => errors(
                StatusCode::TOO_MANY_REQUESTS,
                "request_limit_exceeded",
                "injected fault: the rate limit for this API key was exceeded",
            ),
            DigicertFault::Unavailable => errors(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "injected fault: try again later",
            ),
            DigicertFault::ServerError => errors(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "injected fault: something broke",
            ),
            DigicertFault::Forbidden => errors(
                StatusCode::FORBIDDEN,
                "access_denied|missing_permission",
                "injected fault: the API key's user lacks the permission",
            ),
        }
    }
}

/// One order as the fake keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigicertOrder {
    /// Order id.
    pub id: u64,
    /// Product name id from the URL.
    pub product: String,
    /// `certificate.common_name`.
    pub common_name: String,
    /// `certificate.dns_names` as sent.
    pub dns_names: Vec<String>,
    /// `certificate.signature_hash`.
    pub signature_hash: String,
    /// `certificate.server_platform.id`.
    pub server_platform_id: Option<i64>,
    /// `organization.id`.
    pub organization_id: Option<u64>,
    /// `order_validity` (or the legacy `validity_years` as `{"years": n}`).
    pub order_validity: Value,
    /// `payment_method`.
    pub payment_method: Option<String>,
    /// `comments`.
    pub comments: Option<String>,
    /// `skip_approval`.
    pub skip_approval: bool,
    /// Current status (`pending`, `processing`, `needs_approval`, `issued`,
    /// `revoked`, or the one set by `finish_orders_as`).
    pub status: String,
    /// `GET`s of this order, faulted ones included.
    pub polls: u32,
    /// Certificate id, once issued.
    pub certificate_id: Option<u64>,
    /// The leaf, once issued.
    pub certificate_pem: Option<String>,
    /// The leaf's serial, lower-case hex, once issued.
    pub serial_hex: Option<String>,
}

/// One revocation received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The certificate id from the URL.
    pub certificate_id: u64,
    /// `comments`.
    pub comments: String,
    /// `skip_approval`.
    pub skip_approval: bool,
}

/// A running fake CertCentral; stops when dropped. Observe and steer it
/// through [`FakeDigicertHandle`], which it dereferences to.
pub struct FakeDigicert {
    handle: FakeDigicertHandle,
    /// Serves until the fake is dropped.
    _server: ServerThread,
}

/// A cloneable handle on a [`FakeDigicert`]'s state.
#[derive(Clone)]
pub struct FakeDigicertHandle {
    shared: Arc<Shared>,
}

struct Shared {
    addr: SocketAddr,
    api_key: String,
    root_pem: String,
    intermediate_pem: String,
    intermediate: Certificate,
    intermediate_key: KeyPair,
    state: Mutex<FakeState>,
}

#[derive(Default)]
struct FakeState {
    pending_polls: u32,
    finish_as: Option<String>,
    submit_faults: Option<(u32, DigicertFault)>,
    poll_faults: Option<(u32, DigicertFault)>,
    revoke_faults: Option<(u32, DigicertFault)>,
    submits: u64,
    polls: u64,
    downloads: u64,
    refused_keys: u64,
    next_request_id: u64,
    orders: Vec<OrderRecord>,
    revocations: Vec<Revocation>,
}

struct OrderRecord {
    info: DigicertOrder,
    csr_pem: String,
    validity_days: u64,
    pending_answers: u32,
    request_id: u64,
}

impl FakeDigicert {
    /// Generates the CA hierarchy, binds `127.0.0.1:0` and serves on a
    /// dedicated thread. Panics when that fails (tests only).
    pub async fn start() -> FakeDigicert {
        FakeDigicert::try_start().expect("the fake DigiCert starts")
    }

    fn try_start() -> std::io::Result<FakeDigicert> {
        let (root, root_key) =
            make_ca("certplane fake DigiCert root", None).map_err(std::io::Error::other)?;
        let (intermediate, intermediate_key) = make_ca(
            "certplane fake DigiCert intermediate",
            Some((&root, &root_key)),
        )
        .map_err(std::io::Error::other)?;
        let listener = ServerThread::bind()?;
        let addr = listener.local_addr()?;
        let key: [u8; 16] = rand::random();
        let shared = Arc::new(Shared {
            addr,
            api_key: key.iter().map(|b| format!("{b:02X}")).collect(),
            root_pem: root.pem(),
            intermediate_pem: intermediate.pem(),
            intermediate,
            intermediate_key,
            state: Mutex::new(FakeState {
                next_request_id: 700_001,
                ..FakeState::default()
            }),
        });
        let router = routes::router(shared.clone());
        let server = ServerThread::spawn("fake DigiCert", listener, router)?;
        Ok(FakeDigicert {
            handle: FakeDigicertHandle { shared },
            _server: server,
        })
    }

    /// A cloneable handle on this fake's state.
    pub fn handle(&self) -> FakeDigicertHandle {
        self.handle.clone()
    }
}

impl Deref for FakeDigicert {
    type Target = FakeDigicertHandle;

    fn deref(&self) -> &FakeDigicertHandle {
        &self.handle
    }
}

impl std::fmt::Debug for FakeDigicert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeDigicert")
            .field("url", &self.url())
            .finish()
    }
}

impl FakeDigicertHandle {
    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.shared.state()
    }

    /// The connector's `base_url`: `http://127.0.0.1:PORT/services/v2`.
    pub fn url(&self) -> String {
        format!("http://{}/services/v2", self.shared.addr)
    }

    /// The host grant the connector instance needs: `http://127.0.0.1:PORT`.
    pub fn grant(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The API key the fake accepts (the connector's `api_key` secret).
    pub fn api_key(&self) -> String {
        self.shared.api_key.clone()
    }

    /// The root every leaf chains to.
    pub fn root_pem(&self) -> String {
        self.shared.root_pem.clone()
    }

    /// The intermediate that signs every leaf.
    pub fn intermediate_pem(&self) -> String {
        self.shared.intermediate_pem.clone()
    }

    /// Orders placed (requests answered `201`).
    pub fn orders_placed(&self) -> u64 {
        self.state().orders.len() as u64
    }

    /// Orders placed with this `certificate.common_name`.
    pub fn orders_for(&self, common_name: &str) -> u64 {
        self.state()
            .orders
            .iter()
            .filter(|o| o.info.common_name == common_name)
            .count() as u64
    }

    /// Every order, in placement order.
    pub fn orders(&self) -> Vec<DigicertOrder> {
        self.state().orders.iter().map(|o| o.info.clone()).collect()
    }

    /// One order by id.
    pub fn order(&self, order_id: u64) -> Option<DigicertOrder> {
        self.state()
            .orders
            .iter()
            .find(|o| o.info.id == order_id)
            .map(|o| o.info.clone())
    }

    /// Every `POST /order/certificate/{product}` with a valid key, faulted
    /// and malformed ones included.
    pub fn submits(&self) -> u64 {
        self.state().submits
    }

    /// Every `GET /order/certificate/{id}` with a valid key.
    pub fn polls(&self) -> u64 {
        self.state().polls
    }

    /// Every `pem_all` download answered `200`.
    pub fn downloads(&self) -> u64 {
        self.state().downloads
    }

    /// Requests refused for a missing or wrong `X-DC-DEVKEY`.
    pub fn refused_keys(&self) -> u64 {
        self.state().refused_keys
    }

    /// Revocations received (answered `204` or `201`), in order.
    pub fn revocations(&self) -> Vec<Revocation> {
        self.state().revocations.clone()
    }

    /// How many `GET`s an order answers pending before the next one issues
    /// it; 0 (the default) issues orders in the `201`. Read on every
    /// request, so it applies to orders already placed.
    pub fn set_pending_polls(&self, n: u32) {
        self.state().pending_polls = n;
    }

    /// Orders that would be issued end in `status` instead (`rejected`,
    /// `denied`, `canceled`, ...); `None` (the default) issues them.
    pub fn finish_orders_as(&self, status: Option<&str>) {
        self.state().finish_as = status.map(str::to_string);
    }

    /// The next `n` order placements answer `fault` and place nothing
    /// (`n` = 0 clears).
    pub fn fail_next_submits(&self, n: u32, fault: DigicertFault) {
        self.state().submit_faults = (n > 0).then_some((n, fault));
    }

    /// The next `n` `GET /order/certificate/{id}` answer `fault` without
    /// advancing their order (`n` = 0 clears).
    pub fn fail_next_polls(&self, n: u32, fault: DigicertFault) {
        self.state().poll_faults = (n > 0).then_some((n, fault));
    }

    /// The next `n` revocations answer `fault` and revoke nothing.
    pub fn fail_next_revokes(&self, n: u32, fault: DigicertFault) {
        self.state().revoke_faults = (n > 0).then_some((n, fault));
    }

    /// Waits until `condition` holds (checked every 10 ms); `false` when
    /// `timeout` passed first.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        condition: impl Fn(&FakeDigicertHandle) -> bool,
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
    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Signs the order's names with the CSR's key and marks it issued.
    fn issue(&self, order: &mut OrderRecord, certificate_id: u64) -> Result<(), String> {
        let csr = CertificateSigningRequestParams::from_pem(&order.csr_pem)
            .map_err(|e| format!("the CSR does not parse: {e}"))?;
        let mut names = vec![order.info.common_name.clone()];
        for n in &order.info.dns_names {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        let mut params =
            CertificateParams::new(names).map_err(|e| format!("unusable names: {e}"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, order.info.common_name.as_str());
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = (now + Duration::from_secs(order.validity_days * 86_400)).into();
        let mut serial: [u8; 16] = rand::random();
        serial[0] = (serial[0] & 0x3f) | 0x40;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(&csr.public_key, &self.intermediate, &self.intermediate_key)
            .map_err(|e| format!("signing failed: {e}"))?;
        order.info.certificate_pem = Some(leaf.pem());
        order.info.serial_hex = Some(serial.iter().map(|b| format!("{b:02x}")).collect());
        order.info.certificate_id = Some(certificate_id);
        order.info.status = "issued".into();
        Ok(())
    }

    /// Issues the order or ends it as `finish_as` says.
    fn resolve(&self, state: &mut FakeState, index: usize) -> Result<(), String> {
        if let Some(status) = state.finish_as.clone() {
            state.orders[index].info.status = status;
            return Ok(());
        }
        let certificate_id = FIRST_CERTIFICATE_ID + state.orders[index].info.id - FIRST_ORDER_ID;
        self.issue(&mut state.orders[index], certificate_id)
    }

    fn details(&self, order: &OrderRecord) -> Value {
        let info = &order.info;
        let mut certificate = json!({
            "common_name": info.common_name,
            "dns_names": info.dns_names,
            "csr": order.csr_pem,
            "signature_hash": info.signature_hash,
        });
        if let Some(id) = info.certificate_id {
            certificate["id"] = json!(id);
            certificate["serial_number"] = json!(info.serial_hex.as_deref().map(str::to_uppercase));
            certificate["valid_from"] = json!("2025-01-01");
            certificate["valid_till"] = json!("2026-01-01");
        }
        let mut body = json!({
            "id": info.id,
            "status": info.status,
            "certificate": certificate,
            "product": {"name_id": info.product},
            "order_validity": info.order_validity,
            "date_created": "2025-01-01T00:00:00+00:00",
            "requests": [{"id": order.request_id, "status": request_status(info)}],
        });
        if let Some(org) = info.organization_id {
            body["organization"] = json!({"id": org});
        }
        if let Some(c) = &info.comments {
            body["comments"] = json!(c);
        }
        body
    }

    /// `pem_all`: root first, then the leaf, then the intermediate.
    fn pem_all(&self, leaf: &str) -> String {
        format!("{}{}{}", self.root_pem, leaf, self.intermediate_pem)
    }
}

fn request_status(info: &DigicertOrder) -> &'static str {
    match info.status.as_str() {
        "rejected" | "denied" => "rejected",
        _ if info.skip_approval || info.status == "issued" => "approved",
        _ => "pending",
    }
}

impl FakeState {
    fn take_fault(queue: &mut Option<(u32, DigicertFault)>) -> Option<DigicertFault> {
        let (left, fault) = queue.as_mut()?;
        let fault = *fault;
        *left -= 1;
        if *left == 0 {
            *queue = None;
        }
        Some(fault)
    }
}

fn make_ca(
    name: &str,
    issuer: Option<(&Certificate, &KeyPair)>,
) -> Result<(Certificate, KeyPair), rcgen::Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(match issuer {
        None => BasicConstraints::Unconstrained,
        Some(_) => BasicConstraints::Constrained(0),
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(10 * 365 * 86_400)).into();
    let cert = match issuer {
        None => params.self_signed(&key)?,
        Some((ca, ca_key)) => {
            params.use_authority_key_identifier_extension = true;
            params.signed_by(&key, ca, ca_key)?
        }
    };
    Ok((cert, key))
}
