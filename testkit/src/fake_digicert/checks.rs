//! The order body, checked the way CertCentral checks it.

use rcgen::CertificateSigningRequestParams;
use serde_json::{Value, json};

use super::{FAKE_ORGANIZATION_ID, MAX_VALIDITY_DAYS};

/// A `400` the order checks answer: (error code, message).
pub(super) type Refusal = (&'static str, String);

fn refusal(code: &'static str, message: impl Into<String>) -> Refusal {
    (code, message.into())
}

/// The order fields, checked like CertCentral checks them.
pub(super) struct NewOrder {
    pub(super) common_name: String,
    pub(super) dns_names: Vec<String>,
    pub(super) csr: String,
    pub(super) signature_hash: String,
    pub(super) server_platform_id: Option<i64>,
    pub(super) organization_id: Option<u64>,
    pub(super) order_validity: Value,
    pub(super) validity_days: u64,
    pub(super) payment_method: Option<String>,
    pub(super) comments: Option<String>,
    pub(super) skip_approval: bool,
}

pub(super) fn parse_order(product: &str, body: &[u8]) -> Result<NewOrder, Refusal> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        refusal(
            "bad_request_format",
            format!("The request body is not valid JSON: {e}"),
        )
    })?;
    let cert = v
        .get("certificate")
        .filter(|c| c.is_object())
        .ok_or_else(|| refusal("missing_field|certificate", "certificate is required"))?;
    let common_name = match cert.get("common_name") {
        None | Some(Value::Null) => {
            return Err(refusal(
                "missing_field|certificate.common_name",
                "certificate.common_name is required",
            ));
        }
        Some(Value::String(s)) if !s.trim().is_empty() && !s.contains(char::is_whitespace) => {
            s.clone()
        }
        Some(other) => {
            return Err(refusal(
                "invalid_common_name",
                format!("certificate.common_name {other} is not a valid name"),
            ));
        }
    };
    let dns_names = match cert.get("dns_names") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                refusal(
                    "bad_request_format",
                    "certificate.dns_names must be a list of strings",
                )
            })?,
        Some(_) => {
            return Err(refusal(
                "bad_request_format",
                "certificate.dns_names must be a list of strings",
            ));
        }
    };
    let csr = cert
        .get("csr")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            refusal(
                "missing_field|certificate.csr",
                "certificate.csr is required",
            )
        })?
        .to_string();
    if CertificateSigningRequestParams::from_pem(&csr).is_err() {
        return Err(refusal("invalid_csr", "certificate.csr is not a valid CSR"));
    }
    let signature_hash = cert
        .get("signature_hash")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            refusal(
                "missing_field|certificate.signature_hash",
                "certificate.signature_hash is required",
            )
        })?
        .to_string();
    if !["sha256", "sha384", "sha512"].contains(&signature_hash.as_str()) {
        return Err(refusal(
            "invalid_signature_hash",
            format!("signature hash {signature_hash:?} is not supported"),
        ));
    }
    let server_platform_id = cert
        .get("server_platform")
        .and_then(|p| p.get("id"))
        .and_then(Value::as_i64);
    let organization_id = v
        .get("organization")
        .and_then(|o| o.get("id"))
        .and_then(Value::as_u64);
    if !product.starts_with("ssl_dv_") {
        match organization_id {
            None => {
                return Err(refusal(
                    "missing_field|organization.id",
                    "organization.id is required for this product",
                ));
            }
            Some(id) if id != FAKE_ORGANIZATION_ID => {
                return Err(refusal(
                    "invalid_organization_id",
                    format!("organization {id} does not exist in this account"),
                ));
            }
            Some(_) => {}
        }
    }
    let (order_validity, validity_days) = parse_validity(&v)?;
    let payment_method = match v.get("payment_method") {
        None | Some(Value::Null) => None,
        Some(Value::String(p))
            if ["balance", "card", "profile", "wire_transfer"].contains(&p.as_str()) =>
        {
            Some(p.clone())
        }
        Some(other) => {
            return Err(refusal(
                "invalid_payment_method",
                format!("payment_method {other} is not supported"),
            ));
        }
    };
    Ok(NewOrder {
        common_name,
        dns_names,
        csr,
        signature_hash,
        server_platform_id,
        organization_id,
        order_validity,
        validity_days: validity_days.min(MAX_VALIDITY_DAYS),
        payment_method,
        comments: v
            .get("comments")
            .and_then(Value::as_str)
            .map(str::to_string),
        skip_approval: v
            .get("skip_approval")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

/// `order_validity` `{"years": 1..=3}` or `{"days": 1..=1095}`, or the older
/// top-level `validity_years`.
fn parse_validity(v: &Value) -> Result<(Value, u64), Refusal> {
    let invalid = |what: &Value| {
        refusal(
            "invalid_order_validity",
            format!("order_validity {what} must be {{\"years\": 1-3}} or {{\"days\": 1-1095}}"),
        )
    };
    if let Some(ov) = v.get("order_validity") {
        let years = ov.get("years").and_then(Value::as_u64);
        let days = ov.get("days").and_then(Value::as_u64);
        let fields = ov.as_object().map_or(0, |o| o.len());
        return match (years, days, fields) {
            (Some(y), None, 1) if (1..=3).contains(&y) => Ok((ov.clone(), y * 365)),
            (None, Some(d), 1) if (1..=1095).contains(&d) => Ok((ov.clone(), d)),
            _ => Err(invalid(ov)),
        };
    }
    match v.get("validity_years").and_then(Value::as_u64) {
        Some(y) if (1..=3).contains(&y) => Ok((json!({"years": y}), y * 365)),
        Some(_) => Err(invalid(&v["validity_years"])),
        None => Err(refusal(
            "missing_field|order_validity",
            "order_validity is required",
        )),
    }
}
