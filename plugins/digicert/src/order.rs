//! Orders: what the connector sends for a certificate request, how it reads
//! CertCentral's answers, and the state a pending order carries between
//! calls.

use certplane_sdk::ConnectorError;
use certplane_sdk::issuer::{CertificateRequest, IssueResult, IssuedCertificate, Order};
use serde::{Deserialize, Serialize};

use crate::api::{CertificateSpec, IdRef, OrderCreated, OrderRequest, OrderValidity, parse_id};
use crate::chain;
use crate::config::{Settings, Validity};

/// What a pending order keeps for `poll` (JSON in `order.state`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OrderState {
    /// CertCentral order id: the only thing `poll` needs.
    pub order_id: u64,
    /// The product it was placed for (for messages).
    pub product: String,
    /// The common name it was placed for (for messages).
    pub common_name: String,
}

impl OrderState {
    /// The state of a pending order, or (state lost or from elsewhere) the
    /// order id alone, taken from `order.id`.
    pub fn of(order: &Order) -> Result<OrderState, ConnectorError> {
        if let Ok(state) = serde_json::from_str::<OrderState>(&order.state) {
            return Ok(state);
        }
        let order_id = parse_id(order.id.trim()).ok_or_else(|| {
            ConnectorError::rejected(format!(
                "pending order {:?} is not a CertCentral order id and its state is unreadable",
                order.id
            ))
        })?;
        Ok(OrderState {
            order_id,
            product: String::new(),
            common_name: String::new(),
        })
    }

    /// The pending order to hand back to the host.
    pub fn pending(&self, retry_after_secs: u32) -> Result<IssueResult, ConnectorError> {
        let state = serde_json::to_string(self)
            .map_err(|e| ConnectorError::rejected(format!("cannot encode the order state: {e}")))?;
        Ok(IssueResult::Pending(Order {
            id: self.order_id.to_string(),
            retry_after_secs: Some(retry_after_secs),
            state,
        }))
    }
}

/// Where an order's top-level `status` puts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The certificate can be downloaded.
    Issued,
    /// Validation or approval is still going on.
    Pending,
    /// It will never be issued.
    Failed,
}

/// Classifies a `GET /order/certificate/{id}` status. A status this
/// connector does not know is treated as pending: CertCentral adds
/// intermediate states, and failing an order that may still issue is worse
/// than polling one more time.
pub fn progress(status: &str) -> Progress {
    match status.to_ascii_lowercase().as_str() {
        "issued" | "approved" => Progress::Issued,
        "rejected" | "denied" | "canceled" | "cancelled" | "revoked" | "expired" => {
            Progress::Failed
        }
        _ => Progress::Pending,
    }
}

/// Whether `status` is one this connector knows to be pending.
pub fn known_pending(status: &str) -> bool {
    matches!(
        status.to_ascii_lowercase().as_str(),
        "pending" | "processing" | "reissue_pending" | "waiting_pickup" | "needs_approval"
    )
}

/// The order body for `request`. `job_id` (the host's job, stable across
/// retries) goes into the comments, so an operator can tell which orders a
/// job placed.
pub fn order_request(
    settings: &Settings,
    request: &CertificateRequest,
    job_id: Option<&str>,
) -> Result<OrderRequest, ConnectorError> {
    if !request.ip_addresses.is_empty() {
        return Err(ConnectorError::rejected(format!(
            "CertCentral orders made by this connector certify DNS names only; the request also \
             asks for IP addresses {:?}",
            request.ip_addresses
        )));
    }
    let mut dns_names: Vec<String> = Vec::with_capacity(request.dns_names.len());
    for name in &request.dns_names {
        let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
        if !name.is_empty() && !dns_names.contains(&name) {
            dns_names.push(name);
        }
    }
    let common_name = match request.common_name.trim().trim_end_matches('.') {
        "" => dns_names.first().cloned().ok_or_else(|| {
            ConnectorError::rejected("the request names neither a common name nor DNS names")
        })?,
        cn => cn.to_ascii_lowercase(),
    };
    if request.csr_pem.trim().is_empty() {
        return Err(ConnectorError::rejected("the request carries no CSR"));
    }
    let order_validity = match settings.validity(request.validity_days) {
        Validity::Years(y) => OrderValidity {
            years: Some(y),
            days: None,
        },
        Validity::Days(d) => OrderValidity {
            years: None,
            days: Some(d),
        },
    };
    Ok(OrderRequest {
        certificate: CertificateSpec {
            common_name,
            dns_names,
            csr: request.csr_pem.clone(),
            signature_hash: settings.signature_hash.as_str(),
            server_platform: settings.server_platform_id.map(|id| IdRef { id }),
        },
        organization: settings.organization_id.map(|id| IdRef { id }),
        order_validity,
        payment_method: settings.payment_method.map(|p| p.as_str()),
        comments: Some(comments(settings, &request.certificate_id, job_id)),
        skip_approval: settings.skip_approval,
    })
}

fn comments(settings: &Settings, certificate_id: &str, job_id: Option<&str>) -> String {
    let mut ours = format!("certplane certificate {certificate_id}");
    if let Some(job) = job_id {
        ours.push_str(&format!(", job {job}"));
    }
    match settings.comments.as_deref().map(str::trim) {
        Some(c) if !c.is_empty() => format!("{c} ({ours})"),
        _ => ours,
    }
}

/// What a `201` to an order means: issued at once (certificate id and
/// chain present), refused, or pending.
///
/// A chain that cannot be used is not an error here: the order exists, so
/// it becomes pending and `poll` downloads the certificate, rather than a
/// failure whose retry would place a second order.
pub fn placed(
    created: OrderCreated,
    state: OrderState,
    poll_interval_secs: u32,
) -> Result<IssueResult, ConnectorError> {
    if let Some(refused) = created.requests.iter().find(|r| {
        r.status
            .as_deref()
            .is_some_and(|s| progress(s) == Progress::Failed)
    }) {
        return Err(ConnectorError::rejected(format!(
            "DigiCert order {} for {}: its request {} is {}",
            state.order_id,
            state.common_name,
            refused.id.map_or_else(|| "?".into(), |i| i.to_string()),
            refused.status.as_deref().unwrap_or("?"),
        )));
    }
    if let Some(certificate_id) = created.certificate_id
        && !created.certificate_chain.is_empty()
    {
        let text = chain::join(created.certificate_chain.iter().map(|c| c.pem.as_str()));
        match chain::bundle(&text, Some(certificate_id.to_string())) {
            Ok(issued) => return Ok(IssueResult::Issued(issued)),
            Err(why) => certplane_sdk::log::warn!(
                "DigiCert order {}: the certificate_chain of the order answer is unusable ({why}); \
                 polling the order instead",
                state.order_id
            ),
        }
    }
    state.pending(poll_interval_secs)
}

/// The certificate of an issued order from its `pem_all` download.
pub fn downloaded(
    order_id: u64,
    certificate_id: u64,
    pem_all: &str,
) -> Result<IssuedCertificate, ConnectorError> {
    chain::bundle(pem_all, Some(certificate_id.to_string())).map_err(|why| {
        ConnectorError::transient(format!(
            "DigiCert order {order_id}: the pem_all download of certificate {certificate_id} is \
             unusable: {why}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ChainEntry, Id, RequestRef};
    use serde_json::json;

    fn settings(extra: serde_json::Value) -> Settings {
        let mut s = json!({"product": "ssl_basic", "organization_id": 42});
        for (k, v) in extra.as_object().unwrap() {
            s[k] = v.clone();
        }
        Settings::from_json(&s.to_string()).unwrap()
    }

    fn request() -> CertificateRequest {
        CertificateRequest {
            csr_pem:
                "-----BEGIN CERTIFICATE REQUEST-----\nAA==\n-----END CERTIFICATE REQUEST-----\n"
                    .into(),
            common_name: "www.example.com".into(),
            dns_names: vec![
                "www.example.com".into(),
                "Example.com.".into(),
                "example.com".into(),
            ],
            ip_addresses: vec![],
            validity_days: Some(90),
            certificate_id: "web-1".into(),
        }
    }

    fn state() -> OrderState {
        OrderState {
            order_id: 5,
            product: "ssl_basic".into(),
            common_name: "www.example.com".into(),
        }
    }

    #[test]
    fn the_order_names_every_name_and_the_settings() {
        let s = settings(json!({
            "signature_hash": "sha384", "server_platform_id": 2, "payment_method": "profile",
            "skip_approval": false, "comments": "team web"
        }));
        let body = order_request(&s, &request(), Some("job-9")).unwrap();
        let v = serde_json::to_value(&body).unwrap();
        assert_eq!(v["certificate"]["common_name"], "www.example.com");
        assert_eq!(
            v["certificate"]["dns_names"],
            json!(["www.example.com", "example.com"])
        );
        assert_eq!(v["certificate"]["signature_hash"], "sha384");
        assert_eq!(v["certificate"]["server_platform"], json!({"id": 2}));
        assert_eq!(v["organization"], json!({"id": 42}));
        assert_eq!(v["order_validity"], json!({"days": 90}));
        assert_eq!(v["payment_method"], "profile");
        assert_eq!(v["skip_approval"], false);
        assert_eq!(
            v["comments"],
            "team web (certplane certificate web-1, job job-9)"
        );
    }

    #[test]
    fn requests_the_api_cannot_express_are_rejected() {
        let s = settings(json!({}));
        let mut r = request();
        r.ip_addresses = vec!["192.0.2.1".into()];
        assert_eq!(order_request(&s, &r, None).unwrap_err().kind(), "rejected");
        let mut r = request();
        r.common_name = String::new();
        r.dns_names.clear();
        assert_eq!(order_request(&s, &r, None).unwrap_err().kind(), "rejected");
        let mut r = request();
        r.common_name = " ".into();
        let body = order_request(&s, &r, None).unwrap();
        assert_eq!(body.certificate.common_name, "www.example.com");
        assert_eq!(
            body.comments.as_deref(),
            Some("certplane certificate web-1")
        );
    }

    #[test]
    fn statuses_are_classified() {
        for s in ["issued", "approved"] {
            assert_eq!(progress(s), Progress::Issued);
        }
        for s in [
            "pending",
            "processing",
            "reissue_pending",
            "waiting_pickup",
            "needs_approval",
        ] {
            assert_eq!(progress(s), Progress::Pending);
            assert!(known_pending(s));
        }
        for s in ["rejected", "denied", "canceled", "revoked", "expired"] {
            assert_eq!(progress(s), Progress::Failed);
        }
        assert_eq!(progress("something_new"), Progress::Pending);
        assert!(!known_pending("something_new"));
    }

    #[test]
    fn a_pending_answer_keeps_the_order_and_its_state() {
        let created = OrderCreated {
            id: Id(5),
            requests: vec![RequestRef {
                id: Some(Id(9)),
                status: Some("pending".into()),
            }],
            certificate_id: None,
            certificate_chain: vec![],
        };
        let IssueResult::Pending(order) = placed(created, state(), 60).unwrap() else {
            panic!("issued");
        };
        assert_eq!(order.id, "5");
        assert_eq!(order.retry_after_secs, Some(60));
        assert_eq!(OrderState::of(&order).unwrap(), state());
        // A state from elsewhere still leads to the order by its id.
        let bare = Order {
            id: "5".into(),
            retry_after_secs: None,
            state: "{}".into(),
        };
        assert_eq!(OrderState::of(&bare).unwrap().order_id, 5);
        let foreign = Order {
            id: "ord-1".into(),
            retry_after_secs: None,
            state: String::new(),
        };
        assert_eq!(OrderState::of(&foreign).unwrap_err().kind(), "rejected");
    }

    #[test]
    fn a_refused_request_or_an_unusable_chain() {
        let refused = OrderCreated {
            id: Id(5),
            requests: vec![RequestRef {
                id: Some(Id(9)),
                status: Some("rejected".into()),
            }],
            certificate_id: None,
            certificate_chain: vec![],
        };
        let e = placed(refused, state(), 60).unwrap_err();
        assert_eq!(e.kind(), "rejected");
        assert!(
            e.message().contains("request 9 is rejected"),
            "{}",
            e.message()
        );
        // Issued at once but with a chain that does not parse: poll instead
        // of failing (a retry would order again).
        let garbled = OrderCreated {
            id: Id(5),
            requests: vec![],
            certificate_id: Some(Id(77)),
            certificate_chain: vec![ChainEntry {
                subject_common_name: Some("www.example.com".into()),
                pem: "not a certificate".into(),
            }],
        };
        assert!(matches!(
            placed(garbled, state(), 60).unwrap(),
            IssueResult::Pending(_)
        ));
        let e = downloaded(5, 77, "junk").unwrap_err();
        assert_eq!(e.kind(), "transient");
        assert!(e.message().contains("certificate 77"));
    }
}
