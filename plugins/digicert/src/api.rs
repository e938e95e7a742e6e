//! CertCentral's wire types (Services API v2), as the connector sends and
//! reads them. Only the fields the connector uses are read; everything else
//! in an answer is ignored, so additions upstream do not break it.

use core::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// A CertCentral id: a JSON number, tolerated as a string of digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Id(pub u64);

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Id(n)),
            Raw::Text(t) => parse_id(&t).map(Id).ok_or_else(|| {
                serde::de::Error::custom(format!("expected a numeric id, got {t:?}"))
            }),
        }
    }
}

/// A decimal id of at most 19 digits (it goes into URL paths).
pub fn parse_id(text: &str) -> Option<u64> {
    let ok = !text.is_empty() && text.len() <= 19 && text.bytes().all(|b| b.is_ascii_digit());
    if ok { text.parse().ok() } else { None }
}

/// `{"id": n}`, as in `organization` and `server_platform`.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct IdRef<T> {
    /// The id.
    pub id: T,
}

/// Body of `POST /order/certificate/{product}`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct OrderRequest {
    /// What to certify.
    pub certificate: CertificateSpec,
    /// The validated organization (absent for DV products).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization: Option<IdRef<u64>>,
    /// `{"years": n}` or `{"days": n}`.
    pub order_validity: OrderValidity,
    /// How the order is paid, when the operator chose.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_method: Option<&'static str>,
    /// Free text shown on the order in CertCentral.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comments: Option<String>,
    /// Skip the approval step.
    pub skip_approval: bool,
}

/// `certificate` of an order.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CertificateSpec {
    /// Subject common name.
    pub common_name: String,
    /// Subject alternative names; CertCentral does not read them from the
    /// CSR.
    pub dns_names: Vec<String>,
    /// PKCS#10 CSR, PEM.
    pub csr: String,
    /// `sha256`, `sha384` or `sha512`.
    pub signature_hash: &'static str,
    /// Server platform, when the operator set one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_platform: Option<IdRef<i64>>,
}

/// `order_validity`: exactly one of the two fields.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct OrderValidity {
    /// Whole years.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub years: Option<u32>,
    /// Days.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub days: Option<u32>,
}

/// The `201` answer to an order. It has no top-level `status`; the
/// certificate fields are there only when it was issued at once.
#[derive(Clone, Debug, Deserialize)]
pub struct OrderCreated {
    /// Order id.
    pub id: Id,
    /// Approval requests created with the order.
    #[serde(default)]
    pub requests: Vec<RequestRef>,
    /// Certificate id, when issued at once.
    #[serde(default)]
    pub certificate_id: Option<Id>,
    /// The issued certificates, when issued at once (any order).
    #[serde(default)]
    pub certificate_chain: Vec<ChainEntry>,
}

/// One approval request of an order.
#[derive(Clone, Debug, Deserialize)]
pub struct RequestRef {
    /// Request id.
    #[serde(default)]
    pub id: Option<Id>,
    /// `pending`, `approved` or `rejected`.
    #[serde(default)]
    pub status: Option<String>,
}

/// One certificate of `certificate_chain`.
#[derive(Clone, Debug, Deserialize)]
pub struct ChainEntry {
    /// Its subject's common name.
    #[serde(default)]
    pub subject_common_name: Option<String>,
    /// The certificate, PEM.
    #[serde(default)]
    pub pem: String,
}

/// `GET /order/certificate/{order_id}`.
#[derive(Clone, Debug, Deserialize)]
pub struct OrderDetails {
    /// Order id.
    pub id: Id,
    /// `issued`, `pending`, `rejected`, ...
    pub status: String,
    /// The certificate of the order.
    #[serde(default)]
    pub certificate: Option<OrderCertificate>,
}

/// `certificate` of an order's details.
#[derive(Clone, Debug, Deserialize)]
pub struct OrderCertificate {
    /// Certificate id, once there is one.
    #[serde(default)]
    pub id: Option<Id>,
    /// Serial number, hex.
    #[serde(default)]
    pub serial_number: Option<String>,
}

/// Body of `PUT /certificate/{certificate_id}/revoke`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RevokeRequest {
    /// Why, for the audit trail at CertCentral.
    pub comments: String,
    /// Skip the approval step.
    pub skip_approval: bool,
}

/// The `201` answer to a revocation that needs approval.
#[derive(Clone, Debug, Deserialize)]
pub struct RevokeRequestCreated {
    /// Request id.
    #[serde(default)]
    pub id: Option<Id>,
    /// `pending` until someone approves it.
    #[serde(default)]
    pub status: Option<String>,
}

/// Every CertCentral error answer: `{"errors": [{"code", "message"}]}`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ErrorBody {
    /// The errors.
    #[serde(default)]
    pub errors: Vec<ApiError>,
}

/// One error.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ApiError {
    /// Machine code, e.g. `not_found|order`, `access_denied|missing_permission`.
    #[serde(default)]
    pub code: String,
    /// What went wrong, for humans.
    #[serde(default)]
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_numbers_or_digit_strings() {
        let a: Id = serde_json::from_value(json!(12)).unwrap();
        let b: Id = serde_json::from_value(json!("12")).unwrap();
        assert_eq!((a, b), (Id(12), Id(12)));
        assert!(serde_json::from_value::<Id>(json!("12/../x")).is_err());
        assert!(serde_json::from_value::<Id>(json!(-3)).is_err());
        assert_eq!(parse_id("007"), Some(7));
        assert_eq!(parse_id(""), None);
        assert_eq!(parse_id("99999999999999999999"), None);
    }

    #[test]
    fn an_order_body_has_the_documented_shape() {
        let body = OrderRequest {
            certificate: CertificateSpec {
                common_name: "a.example".into(),
                dns_names: vec!["a.example".into(), "b.example".into()],
                csr: "CSR".into(),
                signature_hash: "sha256",
                server_platform: Some(IdRef { id: -1 }),
            },
            organization: Some(IdRef { id: 42 }),
            order_validity: OrderValidity {
                years: Some(1),
                days: None,
            },
            payment_method: None,
            comments: Some("c".into()),
            skip_approval: true,
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({
                "certificate": {
                    "common_name": "a.example",
                    "dns_names": ["a.example", "b.example"],
                    "csr": "CSR",
                    "signature_hash": "sha256",
                    "server_platform": {"id": -1}
                },
                "organization": {"id": 42},
                "order_validity": {"years": 1},
                "comments": "c",
                "skip_approval": true
            })
        );
    }

    #[test]
    fn answers_parse_with_and_without_the_optional_parts() {
        let pending: OrderCreated =
            serde_json::from_value(json!({"id": 5, "requests": [{"id": 9, "status": "pending"}]}))
                .unwrap();
        assert_eq!(pending.id, Id(5));
        assert!(pending.certificate_id.is_none() && pending.certificate_chain.is_empty());
        let issued: OrderCreated = serde_json::from_value(json!({
            "id": 5, "requests": [], "certificate_id": 77,
            "certificate_chain": [{"subject_common_name": "a", "pem": "P"}]
        }))
        .unwrap();
        assert_eq!(issued.certificate_id, Some(Id(77)));
        assert_eq!(issued.certificate_chain[0].pem, "P");
        let details: OrderDetails = serde_json::from_value(json!({
            "id": 5, "status": "issued", "certificate": {"id": 77, "serial_number": "0A"},
            "product": {"name_id": "ssl_basic"}
        }))
        .unwrap();
        assert_eq!(details.certificate.and_then(|c| c.id), Some(Id(77)));
        let errors: ErrorBody = serde_json::from_value(
            json!({"errors": [{"code": "not_found|order", "message": "Order not found"}]}),
        )
        .unwrap();
        assert_eq!(errors.errors[0].code, "not_found|order");
    }
}
