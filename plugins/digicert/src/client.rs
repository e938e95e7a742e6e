//! The HTTP calls to CertCentral: one function per endpoint, each answer
//! checked and mapped through [`crate::errors`].

use core::time::Duration;

use certplane_sdk::{ConnectorError, http};
use serde::de::DeserializeOwned;

use crate::api::{OrderCreated, OrderDetails, OrderRequest, RevokeRequest, RevokeRequestCreated};
use crate::errors::{Op, status_error};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Two of these fit in the manifest's 45 s call deadline (a poll may
/// read the order and download the certificate).
const READ_TIMEOUT: Duration = Duration::from_secs(20);
/// Orders and chains are a few KiB; a megabyte means something is wrong.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// What a revocation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revoked {
    /// `204`: revoked.
    Done,
    /// `201`: a revocation request awaits approval in CertCentral.
    AwaitingApproval {
        /// The request id, when CertCentral sent it.
        request_id: Option<u64>,
        /// Its status, when CertCentral sent it.
        status: Option<String>,
    },
}

/// A CertCentral API client for one base URL and API key.
pub struct Client {
    base: String,
    api_key: String,
}

impl Client {
    /// A client for `base` (no trailing slash) authenticating with `api_key`.
    pub fn new(base: impl Into<String>, api_key: impl Into<String>) -> Client {
        Client {
            base: base.into(),
            api_key: api_key.into(),
        }
    }

    fn request(&self, method: http::Method, path: &str) -> http::Request {
        http::Request::new(method, format!("{}{path}", self.base))
            .header("X-DC-DEVKEY", self.api_key.as_str())
            .timeout(CONNECT_TIMEOUT, READ_TIMEOUT)
            .max_response_bytes(MAX_RESPONSE_BYTES)
    }

    fn send(&self, op: Op, request: http::Request) -> Result<http::Response, ConnectorError> {
        let described = format!(
            "{} {}",
            request.method_ref(),
            http::redact_url(request.url())
        );
        let response = request.send()?;
        if response.is_success() {
            return Ok(response);
        }
        Err(status_error(
            op,
            &described,
            response.status(),
            response.retry_after_secs(),
            response.body(),
        ))
    }

    fn get_json<T: DeserializeOwned>(&self, op: Op, path: &str) -> Result<T, ConnectorError> {
        let request = self
            .request(http::Method::Get, path)
            .header("Accept", "application/json");
        self.send(op, request)?.json()
    }

    /// `GET /user/me`: the cheapest authenticated call.
    pub fn check_key(&self) -> Result<(), ConnectorError> {
        let request = self
            .request(http::Method::Get, "/user/me")
            .header("Accept", "application/json");
        self.send(Op::CheckKey, request).map(|_| ())
    }

    /// `POST /order/certificate/{product}`.
    ///
    /// A `2xx` whose body cannot be read is `rejected`, not `transient`: the
    /// order was probably placed, and a retry would place (and pay for) a
    /// second one.
    pub fn place_order(
        &self,
        product: &str,
        body: &OrderRequest,
    ) -> Result<OrderCreated, ConnectorError> {
        let request = self
            .request(http::Method::Post, &format!("/order/certificate/{product}"))
            .header("Accept", "application/json")
            .json(body)?;
        let response = self.send(Op::PlaceOrder, request)?;
        response.json().map_err(|e| {
            ConnectorError::rejected(format!(
                "{}; the order was probably placed: find it in CertCentral by the comments \
                 before retrying",
                e.message()
            ))
        })
    }

    /// `GET /order/certificate/{order_id}`.
    pub fn order(&self, order_id: u64) -> Result<OrderDetails, ConnectorError> {
        self.get_json(Op::GetOrder, &format!("/order/certificate/{order_id}"))
    }

    /// `GET /certificate/{certificate_id}/download/format/pem_all`: root,
    /// intermediates and leaf in one PEM text, in no particular order.
    pub fn download_pem_all(&self, certificate_id: u64) -> Result<String, ConnectorError> {
        let request = self
            .request(
                http::Method::Get,
                &format!("/certificate/{certificate_id}/download/format/pem_all"),
            )
            .header("Accept", "*/*");
        let response = self.send(Op::Download, request)?;
        response.text().map(str::to_string)
    }

    /// `PUT /certificate/{certificate_id}/revoke`.
    pub fn revoke(
        &self,
        certificate_id: u64,
        body: &RevokeRequest,
    ) -> Result<Revoked, ConnectorError> {
        let request = self
            .request(
                http::Method::Put,
                &format!("/certificate/{certificate_id}/revoke"),
            )
            .header("Accept", "application/json")
            .json(body)?;
        let response = self.send(Op::Revoke, request)?;
        if response.status() == 204 || response.body().iter().all(u8::is_ascii_whitespace) {
            return Ok(Revoked::Done);
        }
        // The revocation was accepted either way; an unreadable request
        // object only loses its id for the log.
        let created: RevokeRequestCreated =
            serde_json::from_slice(response.body()).unwrap_or(RevokeRequestCreated {
                id: None,
                status: None,
            });
        match created.status.as_deref() {
            Some("approved") | Some("revoked") => Ok(Revoked::Done),
            _ => Ok(Revoked::AwaitingApproval {
                request_id: created.id.map(|i| i.0),
                status: created.status,
            }),
        }
    }
}
