//! The `digicert` issuer on the real runtime against the test kit's fake
//! CertCentral, granted only the fake's address: every call goes over HTTP
//! to it, and what it received is checked as well as what the connector
//! returned.

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::common::{instance, load};
use certplane_runtime::context::{CallContext, JobRef};
use certplane_runtime::harness::Harness;
use certplane_runtime::issuer::{
    CertificateRequest, IssueResult, IssuedCertificate, Order, RevocationReason, RevocationRequest,
};
use certplane_runtime::{CallError, ConnectorError, InstanceConfig, PluginInstance};
use certplane_testkit::fake_digicert::{DigicertFault, FAKE_ORGANIZATION_ID, FakeDigicert};
use certplane_testkit::test_csr;
use serde_json::{Value, json};
use x509_parser::prelude::*;

const NAMES: [&str; 2] = ["www.digicert.test", "digicert.test"];

fn settings(dc: &FakeDigicert, extra: Value) -> Value {
    let mut s = json!({
        "base_url": dc.url(),
        "product": "ssl_basic",
        "organization_id": FAKE_ORGANIZATION_ID,
        "poll_interval_secs": 5,
    });
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

fn config(dc: &FakeDigicert, extra: Value, key: &str) -> InstanceConfig {
    InstanceConfig::new("digicert-1")
        .with_settings(settings(dc, extra))
        .unwrap()
        .with_secret("api_key", key)
        .with_hosts(&[dc.grant()])
        .unwrap()
}

async fn issuer(harness: &Harness, dc: &FakeDigicert, extra: Value) -> PluginInstance {
    let plugin = load(harness, "digicert").await;
    instance(&plugin, config(dc, extra, &dc.api_key()))
}

fn request(names: &[&str]) -> CertificateRequest {
    let (csr, _key) = test_csr(names, &rcgen::PKCS_ECDSA_P256_SHA256);
    CertificateRequest {
        csr_pem: csr,
        common_name: names[0].to_string(),
        dns_names: names.iter().map(|n| n.to_string()).collect(),
        ip_addresses: vec![],
        validity_days: Some(30),
        certificate_id: "web-dc".into(),
    }
}

fn der_of(pem_text: &str) -> Vec<u8> {
    x509_parser::pem::parse_x509_pem(pem_text.as_bytes())
        .expect("PEM")
        .1
        .contents
}

fn connector_error(result: Result<impl std::fmt::Debug, CallError>) -> ConnectorError {
    match result {
        Err(CallError::Connector { error, .. }) => error,
        other => panic!("expected a connector error, got {other:?}"),
    }
}

/// The leaf certifies exactly `names` with the CSR's key, is signed by the
/// fake's intermediate, and the chain is that intermediate alone (the root
/// the fake sends is left out, whatever order it came in).
fn assert_leaf_first(dc: &FakeDigicert, issued: &IssuedCertificate, names: &[&str]) {
    let intermediate_der = der_of(&dc.intermediate_pem());
    let (_, intermediate) = X509Certificate::from_der(&intermediate_der).unwrap();
    let leaf_der = der_of(&issued.certificate_pem);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    assert!(!leaf.is_ca());
    assert_eq!(leaf.issuer(), intermediate.subject());
    leaf.verify_signature(Some(intermediate.public_key()))
        .expect("the leaf is signed by the intermediate");
    let sans: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    let wanted: Vec<String> = names.iter().map(|n| format!("DNSName({n})")).collect();
    assert_eq!(sans, wanted);
    assert_eq!(issued.chain_pem.len(), 1, "{:?}", issued.chain_pem);
    assert_eq!(der_of(&issued.chain_pem[0]), intermediate_der);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_config_checks_the_key_and_the_settings() {
    let dc = FakeDigicert::start().await;
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "digicert").await;
    instance(&plugin, config(&dc, json!({}), &dc.api_key()))
        .validate_config()
        .await
        .unwrap();
    assert_eq!(dc.refused_keys(), 0);

    let wrong = instance(&plugin, config(&dc, json!({}), "not-the-key"));
    let e = connector_error(wrong.validate_config().await);
    assert!(
        matches!(&e, ConnectorError::Unauthorized(m) if m.contains("access_denied|invalid_key")),
        "{e:?}"
    );
    assert!(!e.to_string().contains("not-the-key"), "the key leaks: {e}");
    assert_eq!(dc.refused_keys(), 1);

    // Settings the connector refuses before calling anyone.
    let no_org = InstanceConfig::new("digicert-2")
        .with_settings(json!({"base_url": dc.url(), "product": "ssl_basic"}))
        .unwrap()
        .with_secret("api_key", dc.api_key())
        .with_hosts(&[dc.grant()])
        .unwrap();
    let e = connector_error(instance(&plugin, no_org).validate_config().await);
    assert!(
        matches!(&e, ConnectorError::InvalidConfig(m) if m.contains("organization_id")),
        "{e:?}"
    );
    let no_key = InstanceConfig::new("digicert-3")
        .with_settings(settings(&dc, json!({})))
        .unwrap()
        .with_hosts(&[dc.grant()])
        .unwrap();
    let e = connector_error(instance(&plugin, no_key).validate_config().await);
    assert!(
        matches!(&e, ConnectorError::InvalidConfig(m) if m.contains("api_key")),
        "{e:?}"
    );
    assert_eq!(dc.refused_keys(), 1, "refused before any request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_issuance_returns_the_leaf_first_with_the_certificate_id() {
    let dc = FakeDigicert::start().await;
    let harness = Harness::new().unwrap();
    let dcx = issuer(
        &harness,
        &dc,
        json!({
            "signature_hash": "sha384", "server_platform_id": -1, "comments": "team web",
            "validity_years": 1,
        }),
    )
    .await;
    let context = CallContext {
        job: Some(JobRef {
            id: "job-77".into(),
            attempt: 1,
        }),
        ..CallContext::default()
    };
    let (result, _) = dcx.submit_with(&context, &request(&NAMES)).await;
    let IssueResult::Issued(issued) = result.unwrap() else {
        panic!("the fake issues at once by default");
    };
    assert_leaf_first(&dc, &issued, &NAMES);
    let orders = dc.orders();
    assert_eq!(orders.len(), 1);
    let order = &orders[0];
    assert_eq!(
        issued.ca_certificate_id,
        order.certificate_id.map(|id| id.to_string()),
        "ca-certificate-id is DigiCert's certificate id"
    );
    assert_eq!(
        der_of(&issued.certificate_pem),
        der_of(order.certificate_pem.as_deref().unwrap())
    );
    // What CertCentral received: names sent explicitly, and the settings.
    assert_eq!(order.product, "ssl_basic");
    assert_eq!(order.common_name, NAMES[0]);
    assert_eq!(order.dns_names, NAMES.map(String::from).to_vec());
    assert_eq!(order.signature_hash, "sha384");
    assert_eq!(order.server_platform_id, Some(-1));
    assert_eq!(order.organization_id, Some(FAKE_ORGANIZATION_ID));
    // A year configured, 30 days requested: 30 days ordered.
    assert_eq!(order.order_validity, json!({"days": 30}));
    let leaf_der = der_of(&issued.certificate_pem);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!(lifetime <= 31 * 86_400, "{lifetime} s");
    assert!(order.skip_approval);
    assert_eq!(
        order.comments.as_deref(),
        Some("team web (certplane certificate web-dc, job job-77)")
    );
    assert_eq!(dc.polls(), 0, "nothing to poll");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_order_is_polled_through_a_transient_error_until_issued() {
    let dc = FakeDigicert::start().await;
    dc.set_pending_polls(2);
    let harness = Harness::new().unwrap();
    let dcx = issuer(&harness, &dc, json!({"validity_years": 1})).await;
    // The request names no validity: the configured one is ordered.
    let mut req = request(&NAMES);
    req.validity_days = None;
    let IssueResult::Pending(order) = dcx.submit(&req).await.unwrap() else {
        panic!("pending expected");
    };
    let placed = dc.orders().remove(0);
    assert_eq!(order.id, placed.id.to_string(), "order id = DigiCert's");
    assert_eq!(order.retry_after_secs, Some(5), "poll_interval_secs");
    assert_eq!(placed.order_validity, json!({"years": 1}));

    let poll = |o: Order| {
        let dcx = &dcx;
        async move { dcx.poll(&o).await }
    };
    let IssueResult::Pending(again) = poll(order.clone()).await.unwrap() else {
        panic!("still pending after one poll");
    };
    assert_eq!(
        (again.id.as_str(), again.state.as_str()),
        (order.id.as_str(), order.state.as_str())
    );
    dc.fail_next_polls(1, DigicertFault::Unavailable);
    let e = connector_error(poll(order.clone()).await);
    assert!(
        matches!(&e, ConnectorError::Transient(m) if m.contains("503") && m.contains("service_unavailable")),
        "{e:?}"
    );
    let IssueResult::Pending(_) = poll(order.clone()).await.unwrap() else {
        panic!("the second pending answer");
    };
    assert_eq!(dc.order(placed.id).unwrap().status, "processing");
    let IssueResult::Issued(issued) = poll(order).await.unwrap() else {
        panic!("issued on the next poll");
    };
    assert_leaf_first(&dc, &issued, &NAMES);
    let done = dc.order(placed.id).unwrap();
    assert_eq!(
        issued.ca_certificate_id,
        done.certificate_id.map(|i| i.to_string())
    );
    assert_eq!(done.polls, 4);
    assert_eq!(dc.downloads(), 1);
    assert_eq!(
        (dc.orders_placed(), dc.submits()),
        (1, 1),
        "exactly one order"
    );
    assert_eq!(dc.orders_for(NAMES[0]), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_map_to_the_contract_classes() {
    let dc = FakeDigicert::start().await;
    let harness = Harness::new().unwrap();
    let dcx = issuer(&harness, &dc, json!({})).await;
    let req = request(&NAMES);

    // 429 without Retry-After: rate-limited with the connector's backoff.
    dc.fail_next_submits(1, DigicertFault::RateLimited);
    match connector_error(dcx.submit(&req).await) {
        ConnectorError::RateLimited(r) => {
            assert_eq!(r.retry_after_secs, Some(60));
            assert!(
                r.message.contains("request_limit_exceeded"),
                "{}",
                r.message
            );
        }
        other => panic!("{other:?}"),
    }
    for (fault, check) in [
        (DigicertFault::Forbidden, "unauthorized"),
        (DigicertFault::ServerError, "transient"),
        (DigicertFault::Unavailable, "transient"),
    ] {
        dc.fail_next_submits(1, fault);
        let e = connector_error(dcx.submit(&req).await);
        let class = match &e {
            ConnectorError::Unauthorized(m) if m.contains("access_denied|missing_permission") => {
                "unauthorized"
            }
            ConnectorError::Transient(m) if m.contains("HTTP 5") => "transient",
            other => panic!("{fault:?}: {other:?}"),
        };
        assert_eq!(class, check);
    }
    assert_eq!(dc.orders_placed(), 0, "faulted submits placed nothing");

    // 400 about the request: rejected, with DigiCert's code and message.
    let mut garbage = request(&NAMES);
    garbage.csr_pem =
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into();
    let e = connector_error(dcx.submit(&garbage).await);
    assert!(
        matches!(&e, ConnectorError::Rejected(m) if m.contains("HTTP 400") && m.contains("invalid_csr: certificate.csr is not a valid CSR")),
        "{e:?}"
    );
    // 400 about our settings, and an unknown product: invalid-config.
    let bad_org = issuer(&harness, &dc, json!({"organization_id": 999})).await;
    let e = connector_error(bad_org.submit(&req).await);
    assert!(
        matches!(&e, ConnectorError::InvalidConfig(m) if m.contains("invalid_organization_id")),
        "{e:?}"
    );
    let bad_product = issuer(&harness, &dc, json!({"product": "ssl_imaginary"})).await;
    let e = connector_error(bad_product.submit(&req).await);
    assert!(
        matches!(&e, ConnectorError::InvalidConfig(m) if m.contains("not_found|product")),
        "{e:?}"
    );
    assert_eq!(dc.orders_placed(), 0);

    // Polling: an unknown order is rejected; a rate limit and a 500 are not.
    let unknown = Order {
        id: "4242".into(),
        retry_after_secs: None,
        state: json!({"order_id": 4242, "product": "ssl_basic", "common_name": "x"}).to_string(),
    };
    let e = connector_error(dcx.poll(&unknown).await);
    assert!(
        matches!(&e, ConnectorError::Rejected(m) if m.contains("404") && m.contains("not_found|order")),
        "{e:?}"
    );
    dc.set_pending_polls(5);
    let IssueResult::Pending(order) = dcx.submit(&req).await.unwrap() else {
        panic!("pending");
    };
    dc.fail_next_polls(1, DigicertFault::RateLimited);
    assert!(matches!(
        connector_error(dcx.poll(&order).await),
        ConnectorError::RateLimited(r) if r.retry_after_secs == Some(60)
    ));
    dc.fail_next_polls(1, DigicertFault::ServerError);
    assert!(matches!(
        connector_error(dcx.poll(&order).await),
        ConnectorError::Transient(_)
    ));
    dc.fail_next_polls(1, DigicertFault::Forbidden);
    assert!(matches!(
        connector_error(dcx.poll(&order).await),
        ConnectorError::Unauthorized(_)
    ));

    // An order CertCentral denies is rejected with its status.
    dc.set_pending_polls(0);
    dc.finish_orders_as(Some("denied"));
    let e = connector_error(dcx.poll(&order).await);
    assert!(
        matches!(&e, ConnectorError::Rejected(m) if m.contains(&order.id) && m.contains("is denied")),
        "{e:?}"
    );
    // Refused in the order answer itself (issued-at-once mode).
    dc.finish_orders_as(Some("rejected"));
    let e = connector_error(dcx.submit(&req).await);
    assert!(
        matches!(&e, ConnectorError::Rejected(m) if m.contains("rejected")),
        "{e:?}"
    );
    assert_eq!(dc.orders_placed(), 2, "one order per successful placement");
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn revocation(issued: &IssuedCertificate, id: Option<String>) -> RevocationRequest {
    RevocationRequest {
        certificate_pem: issued.certificate_pem.clone(),
        serial_hex: "4a5b".into(),
        ca_certificate_id: id,
        reason: RevocationReason::KeyCompromise,
    }
}

// Current-thread runtime: the tracing guard below only sees this thread.
#[tokio::test]
async fn revocation_reaches_digicert_with_the_certificate_id() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dc = FakeDigicert::start().await;
    let harness = Harness::new().unwrap();
    let dcx = issuer(&harness, &dc, json!({})).await;
    let IssueResult::Issued(issued) = dcx.submit(&request(&NAMES)).await.unwrap() else {
        panic!("issued at once");
    };
    let id = issued.ca_certificate_id.clone().expect("certificate id");

    // Without the id: rejected, and nothing reaches DigiCert.
    let e = connector_error(dcx.revoke(&revocation(&issued, None)).await);
    assert!(
        matches!(&e, ConnectorError::Rejected(m) if m.starts_with("DigiCert needs the certificate id; this version has none")),
        "{e:?}"
    );
    assert!(dc.revocations().is_empty());

    dcx.revoke(&revocation(&issued, Some(id.clone())))
        .await
        .unwrap();
    let revs = dc.revocations();
    assert_eq!(revs.len(), 1);
    assert_eq!(revs[0].certificate_id.to_string(), id);
    assert!(revs[0].skip_approval);
    assert_eq!(
        revs[0].comments,
        "Revoked by certplane: key compromise (serial 4a5b)"
    );
    let order = dc.orders().remove(0);
    assert_eq!(order.status, "revoked");

    // With approval required, CertCentral answers 201 with a pending
    // request: success, and the log says approval is pending.
    let approving = issuer(&harness, &dc, json!({"skip_approval": false})).await;
    approving
        .revoke(&revocation(&issued, Some(id.clone())))
        .await
        .unwrap();
    let revs = dc.revocations();
    assert_eq!(revs.len(), 2);
    assert!(!revs[1].skip_approval);
    let out = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        out.lines()
            .any(|l| l.contains("WARN") && l.contains("needs approval in CertCentral")),
        "no approval warning in:\n{out}"
    );

    // An id DigiCert does not know: rejected.
    let e = connector_error(dcx.revoke(&revocation(&issued, Some("123".into()))).await);
    assert!(
        matches!(&e, ConnectorError::Rejected(m) if m.contains("not_found|certificate")),
        "{e:?}"
    );
    dc.fail_next_revokes(1, DigicertFault::Unavailable);
    assert!(matches!(
        connector_error(dcx.revoke(&revocation(&issued, Some(id))).await),
        ConnectorError::Transient(_)
    ));
    assert_eq!(dc.revocations().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ungranted_host_is_denied() {
    let dc = FakeDigicert::start().await;
    let other = FakeDigicert::start().await;
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "digicert").await;
    // Granted the other fake only, configured for this one.
    let config = InstanceConfig::new("digicert-4")
        .with_settings(settings(&dc, json!({})))
        .unwrap()
        .with_secret("api_key", dc.api_key())
        .with_hosts(&[other.grant()])
        .unwrap();
    let dcx = instance(&plugin, config);
    let err = dcx.validate_config().await.unwrap_err();
    let CallError::CapabilityDenied { denials, error, .. } = &err else {
        panic!("expected a capability denial, got {err:?}");
    };
    assert!(
        denials[0].contains(&dc.addr().port().to_string()),
        "{denials:?}"
    );
    assert!(
        matches!(error, Some(ConnectorError::InvalidConfig(m)) if m.contains("HttpRequestDenied")),
        "{error:?}"
    );
    let err = dcx.submit(&request(&NAMES)).await.unwrap_err();
    assert!(matches!(err, CallError::CapabilityDenied { .. }), "{err:?}");
    assert_eq!(dc.submits() + other.submits(), 0);
    assert_eq!(dc.refused_keys() + other.refused_keys(), 0);
}
