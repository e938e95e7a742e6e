//! The `sectigo` issuer on the real runtime, against the test kit's fake
//! Sectigo Certificate Manager (`certplane_testkit::fake_sectigo`), granted
//! only the fake's address.

use std::sync::Arc;

use crate::common::{instance, load};
use certplane_runtime::harness::Harness;
use certplane_runtime::issuer::{
    CertificateRequest, IssueResult, IssuedCertificate, Order, RevocationReason, RevocationRequest,
};
use certplane_runtime::{CallError, ConnectorError, InstanceConfig, Plugin, PluginInstance};
use certplane_testkit::fake_sectigo::{self, Endpoint, FakeSectigo, Fault};
use serde_json::{Value, json};
use x509_parser::prelude::*;

const NAMES: [&str; 2] = ["www.sectigo.test", "sectigo.test"];

fn config(scm: &FakeSectigo, settings: Value, password: &str) -> InstanceConfig {
    let mut merged = scm.settings();
    if let Some(extra) = settings.as_object() {
        for (k, v) in extra {
            merged[k] = v.clone();
        }
    }
    InstanceConfig::new("sectigo-1")
        .with_settings(merged)
        .unwrap()
        .with_secret("login", fake_sectigo::LOGIN)
        .with_secret("password", password)
        .with_hosts(&[scm.grant()])
        .unwrap()
}

struct Setup {
    scm: FakeSectigo,
    plugin: Arc<Plugin>,
    _harness: Harness,
}

impl Setup {
    async fn new() -> Setup {
        let harness = Harness::new().unwrap();
        let plugin = load(&harness, "sectigo").await;
        Setup {
            scm: FakeSectigo::start().await,
            plugin,
            _harness: harness,
        }
    }

    fn issuer(&self) -> PluginInstance {
        self.issuer_with(json!({}))
    }

    fn issuer_with(&self, settings: Value) -> PluginInstance {
        instance(
            &self.plugin,
            config(&self.scm, settings, fake_sectigo::PASSWORD),
        )
    }
}

/// A CSR like the host's: CN = the first name, every name as a SAN.
fn csr(names: &[&str]) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn request(names: &[&str]) -> CertificateRequest {
    CertificateRequest {
        csr_pem: csr(names),
        common_name: names[0].to_string(),
        dns_names: names.iter().map(|n| n.to_string()).collect(),
        ip_addresses: vec![],
        validity_days: None,
        certificate_id: "web-1".into(),
    }
}

fn connector_error(err: CallError) -> ConnectorError {
    match err {
        CallError::Connector { error, .. } => error,
        other => panic!("expected a connector error, got {other:?}"),
    }
}

fn pending(result: IssueResult) -> Order {
    match result {
        IssueResult::Pending(o) => o,
        IssueResult::Issued(_) => panic!("expected a pending order"),
    }
}

fn issued(result: IssueResult) -> IssuedCertificate {
    match result {
        IssueResult::Issued(c) => c,
        IssueResult::Pending(o) => panic!("expected a certificate, still pending: {o:?}"),
    }
}

fn der_of(pem_text: &str) -> Vec<u8> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).expect("PEM");
    pem.contents
}

/// Polls until issued (at most `limit` polls).
async fn poll_until_issued(
    issuer: &PluginInstance,
    order: &Order,
    limit: u32,
) -> IssuedCertificate {
    for _ in 0..limit {
        if let IssueResult::Issued(c) = issuer.poll(order).await.unwrap() {
            return c;
        }
    }
    panic!("not issued after {limit} polls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_config_checks_credentials_type_and_term() {
    let s = Setup::new().await;
    s.issuer().validate_config().await.unwrap();
    assert_eq!(
        s.scm.requests(),
        vec!["GET /api/ssl/v1/types".to_string()],
        "one cheap call"
    );

    let wrong = instance(&s.plugin, config(&s.scm, json!({}), "not the password"));
    let e = connector_error(wrong.validate_config().await.unwrap_err());
    assert!(matches!(e, ConnectorError::Unauthorized(_)), "{e:?}");
    assert_eq!(s.scm.unauthorized(), 1);

    let e = connector_error(
        s.issuer_with(json!({ "term": 400 }))
            .validate_config()
            .await
            .unwrap_err(),
    );
    let ConnectorError::InvalidConfig(m) = &e else {
        panic!("{e:?}")
    };
    assert!(m.contains("`term` = 400") && m.contains("365, 730"), "{m}");

    let e = connector_error(
        s.issuer_with(json!({ "cert_type": 5 }))
            .validate_config()
            .await
            .unwrap_err(),
    );
    let ConnectorError::InvalidConfig(m) = &e else {
        panic!("{e:?}")
    };
    assert!(
        m.contains("224 (OV SSL)") && m.contains("98 (EV SSL)"),
        "{m}"
    );

    let no_secret = instance(
        &s.plugin,
        InstanceConfig::new("sectigo-2")
            .with_settings(s.scm.settings())
            .unwrap()
            .with_secret("login", fake_sectigo::LOGIN)
            .with_hosts(&[s.scm.grant()])
            .unwrap(),
    );
    let e = connector_error(no_secret.validate_config().await.unwrap_err());
    assert!(
        matches!(&e, ConnectorError::InvalidConfig(m) if m.contains("`password`")),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_collected_leaf_first_with_its_ssl_id() {
    let s = Setup::new().await;
    s.scm.set_pending_collects(2);
    let issuer = s.issuer();
    let req = request(&NAMES);
    let order = pending(issuer.submit(&req).await.unwrap());
    let placed = s.scm.orders();
    assert_eq!(placed.len(), 1);
    let ssl_id = placed[0].ssl_id;
    assert_eq!(order.id, ssl_id.to_string());
    assert_eq!(order.retry_after_secs, Some(1), "poll_interval_secs");
    let state: Value = serde_json::from_str(&order.state).unwrap();
    assert_eq!(state["sslId"], ssl_id);
    // The type check comes first: a bad configuration never costs an order.
    assert_eq!(
        s.scm.requests(),
        vec![
            "GET /api/ssl/v1/types".to_string(),
            "POST /api/ssl/v1/enroll".to_string()
        ]
    );
    let body = &s.scm.enroll_requests()[0];
    assert_eq!(body["orgId"], fake_sectigo::ORG_ID);
    assert_eq!(body["certType"], fake_sectigo::OV_SSL);
    assert_eq!(body["term"], 365);
    assert_eq!(body["numberServers"], 1);
    assert_eq!(body["serverType"], -1);
    assert_eq!(body["comments"], "certplane certificate web-1");
    assert_eq!(body["csr"].as_str().unwrap().trim(), req.csr_pem.trim());

    // -183 twice, then the certificate.
    for _ in 0..2 {
        let again = pending(issuer.poll(&order).await.unwrap());
        assert_eq!((&again.id, &again.state), (&order.id, &order.state));
    }
    let cert = issued(issuer.poll(&order).await.unwrap());
    assert_eq!(s.scm.enrollments(), 1);
    assert!(
        s.scm
            .requests()
            .iter()
            .any(|r| r == &format!("GET /api/ssl/v1/collect/{ssl_id}/pem")),
        "{:?}",
        s.scm.requests()
    );

    assert_eq!(cert.ca_certificate_id, Some(ssl_id.to_string()));
    // The fake answers root, leaf, intermediate; the contract wants the
    // leaf apart and the chain nearest-first.
    assert_eq!(cert.chain_pem.len(), 2);
    assert_eq!(
        der_of(&cert.chain_pem[0]),
        der_of(&s.scm.intermediate_pem())
    );
    assert_eq!(der_of(&cert.chain_pem[1]), der_of(&s.scm.root_pem()));
    let leaf_der = der_of(&cert.certificate_pem);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let inter_der = der_of(&cert.chain_pem[0]);
    let (_, inter) = X509Certificate::from_der(&inter_der).unwrap();
    assert_eq!(leaf.issuer(), inter.subject());
    leaf.verify_signature(Some(inter.public_key())).unwrap();
    assert_eq!(
        s.scm
            .order(ssl_id)
            .unwrap()
            .certificate_pem
            .map(|p| der_of(&p)),
        Some(leaf_der.clone())
    );
    let sans: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(
        sans,
        vec!["DNSName(www.sectigo.test)", "DNSName(sectigo.test)"]
    );
    let csr_der = der_of(&req.csr_pem);
    let (_, parsed_csr) = X509CertificationRequest::from_der(&csr_der).unwrap();
    assert_eq!(
        leaf.public_key().raw,
        parsed_csr.certification_request_info.subject_pki.raw
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subj_alt_names_travel_as_one_comma_separated_string() {
    let s = Setup::new().await;
    let issuer = s.issuer();
    let mut req = request(&["a.sectigo.test", "b.sectigo.test"]);
    req.ip_addresses = vec!["192.0.2.10".into()];
    pending(issuer.submit(&req).await.unwrap());
    let body = &s.scm.enroll_requests()[0];
    assert_eq!(
        body["subjAltNames"],
        json!("a.sectigo.test,b.sectigo.test,192.0.2.10"),
        "a string, never a JSON array"
    );
    let order = &s.scm.orders()[0];
    assert_eq!(
        order.names,
        vec!["a.sectigo.test", "b.sectigo.test", "192.0.2.10"]
    );
    assert_eq!(s.scm.enrollments_for("b.sectigo.test"), 1);
    assert_eq!(s.scm.enrollments_for("c.sectigo.test"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_collect_error_keeps_the_same_order() {
    let s = Setup::new().await;
    s.scm.set_pending_collects(1);
    let issuer = s.issuer();
    let order = pending(issuer.submit(&request(&NAMES)).await.unwrap());
    s.scm.fail_next_collects(
        1,
        Fault::Unavailable {
            retry_after_secs: None,
        },
    );
    let e = connector_error(issuer.poll(&order).await.unwrap_err());
    assert!(matches!(e, ConnectorError::Transient(_)), "{e:?}");
    pending(issuer.poll(&order).await.unwrap());
    issued(issuer.poll(&order).await.unwrap());
    assert_eq!(s.scm.enrollments(), 1, "polls never enroll again");
    assert_eq!(s.scm.enroll_requests().len(), 1);
    assert_eq!(s.scm.orders()[0].collects, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_collectable_stays_pending() {
    let s = Setup::new().await;
    s.scm.set_pending_collects(u32::MAX);
    let issuer = s.issuer_with(json!({ "poll_interval_secs": 90 }));
    let order = pending(issuer.submit(&request(&NAMES)).await.unwrap());
    assert_eq!(order.retry_after_secs, Some(90));
    for _ in 0..3 {
        let again = pending(issuer.poll(&order).await.unwrap());
        assert_eq!(again.retry_after_secs, Some(90));
        assert_eq!(again.id, order.id);
    }
    // A failed status look does not fail a poll the collect called pending.
    s.scm.fail_next(
        Endpoint::Status,
        1,
        Fault::Status {
            status: 500,
            code: -1,
        },
    );
    pending(issuer.poll(&order).await.unwrap());
    s.scm.set_pending_collects(0);
    issued(issuer.poll(&order).await.unwrap());
    assert_eq!(s.scm.enrollments(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_declined_orders_are_rejected() {
    let s = Setup::new().await;
    s.scm.set_pending_collects(u32::MAX);
    let issuer = s.issuer();

    let revoked = pending(issuer.submit(&request(&NAMES)).await.unwrap());
    s.scm.revoke_order(revoked.id.parse().unwrap());
    let e = connector_error(issuer.poll(&revoked).await.unwrap_err());
    let ConnectorError::Rejected(m) = &e else {
        panic!("-192 is final, not pending: {e:?}")
    };
    assert!(m.contains("-192") && m.contains("revoked"), "{m}");

    let declined = pending(issuer.submit(&request(&NAMES)).await.unwrap());
    s.scm.decline(declined.id.parse().unwrap());
    let e = connector_error(issuer.poll(&declined).await.unwrap_err());
    let ConnectorError::Rejected(m) = &e else {
        panic!("{e:?}")
    };
    assert!(m.contains("Declined"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_failure_maps_to_its_class() {
    let s = Setup::new().await;
    let issuer = s.issuer();
    let submit_fails = |fault: Fault, endpoint: Endpoint| {
        s.scm.fail_next(endpoint, 1, fault);
        let issuer = &issuer;
        async move { connector_error(issuer.submit(&request(&NAMES)).await.unwrap_err()) }
    };

    let rate = |e: ConnectorError| match e {
        ConnectorError::RateLimited(r) => r.retry_after_secs,
        other => panic!("expected rate-limited, got {other:?}"),
    };
    let e = submit_fails(
        Fault::TooManyRequests {
            retry_after_secs: Some(7),
        },
        Endpoint::Enroll,
    )
    .await;
    assert_eq!(rate(e), Some(7));
    let e = submit_fails(
        Fault::TooManyRequests {
            retry_after_secs: None,
        },
        Endpoint::Enroll,
    )
    .await;
    assert_eq!(rate(e), None);
    let e = submit_fails(
        Fault::Unavailable {
            retry_after_secs: Some(30),
        },
        Endpoint::Enroll,
    )
    .await;
    assert_eq!(rate(e), Some(30));
    let e = submit_fails(
        Fault::Unavailable {
            retry_after_secs: None,
        },
        Endpoint::Enroll,
    )
    .await;
    assert!(matches!(e, ConnectorError::Transient(_)), "{e:?}");
    let e = submit_fails(
        Fault::Status {
            status: 502,
            code: -1,
        },
        Endpoint::Enroll,
    )
    .await;
    assert!(matches!(e, ConnectorError::Transient(_)), "{e:?}");
    let e = submit_fails(
        Fault::Status {
            status: 403,
            code: -16,
        },
        Endpoint::Enroll,
    )
    .await;
    assert!(matches!(e, ConnectorError::Unauthorized(_)), "{e:?}");
    let e = submit_fails(
        Fault::Status {
            status: 400,
            code: -4,
        },
        Endpoint::Enroll,
    )
    .await;
    assert!(
        matches!(&e, ConnectorError::Rejected(m) if m.contains("SCM error -4")),
        "{e:?}"
    );
    let e = submit_fails(
        Fault::Unavailable {
            retry_after_secs: None,
        },
        Endpoint::Types,
    )
    .await;
    assert!(matches!(e, ConnectorError::Transient(_)), "{e:?}");
    assert_eq!(s.scm.enrollments(), 0, "no faulted request placed an order");
    let enroll_attempts = s.scm.enroll_requests().len();
    assert_eq!(
        enroll_attempts, 7,
        "the types fault stopped the last submit"
    );

    // A term the type does not have: refused before any paid order.
    let e = connector_error(
        s.issuer_with(json!({ "term": 730, "cert_type": fake_sectigo::EV_SSL }))
            .submit(&request(&NAMES))
            .await
            .unwrap_err(),
    );
    assert!(
        matches!(&e, ConnectorError::InvalidConfig(m) if m.contains("365")),
        "{e:?}"
    );
    assert_eq!(s.scm.enroll_requests().len(), enroll_attempts);

    // SCM refuses a CSR that does not parse.
    let mut bad = request(&NAMES);
    bad.csr_pem =
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into();
    let e = connector_error(issuer.submit(&bad).await.unwrap_err());
    assert!(
        matches!(&e, ConnectorError::Rejected(m) if m.contains("SCM error")),
        "{e:?}"
    );

    // Collect: a code other than -183 is final.
    let order = pending(issuer.submit(&request(&NAMES)).await.unwrap());
    s.scm.fail_next_collects(
        1,
        Fault::Status {
            status: 400,
            code: -105,
        },
    );
    let e = connector_error(issuer.poll(&order).await.unwrap_err());
    assert!(
        matches!(&e, ConnectorError::Rejected(m) if m.contains("SCM error -105")),
        "{e:?}"
    );
    s.scm.fail_next_collects(
        1,
        Fault::TooManyRequests {
            retry_after_secs: Some(5),
        },
    );
    assert_eq!(
        rate(connector_error(issuer.poll(&order).await.unwrap_err())),
        Some(5)
    );
    s.scm.fail_next_collects(
        1,
        Fault::Status {
            status: 500,
            code: -1,
        },
    );
    let e = connector_error(issuer.poll(&order).await.unwrap_err());
    assert!(matches!(e, ConnectorError::Transient(_)), "{e:?}");

    // Wrong credentials on a poll.
    let wrong = instance(&s.plugin, config(&s.scm, json!({}), "nope"));
    let e = connector_error(wrong.poll(&order).await.unwrap_err());
    assert!(matches!(e, ConnectorError::Unauthorized(_)), "{e:?}");

    // State that is not this connector's.
    let foreign = Order {
        id: "x".into(),
        retry_after_secs: None,
        state: r#"{"id":"ord-1"}"#.into(),
    };
    let e = connector_error(issuer.poll(&foreign).await.unwrap_err());
    assert!(matches!(e, ConnectorError::Rejected(_)), "{e:?}");
    // The order is intact after all that.
    s.scm.set_pending_collects(0);
    issued(issuer.poll(&order).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_sends_the_ssl_id_and_a_reason() {
    let s = Setup::new().await;
    s.scm.set_pending_collects(0);
    let issuer = s.issuer();
    let order = pending(issuer.submit(&request(&NAMES)).await.unwrap());
    let cert = poll_until_issued(&issuer, &order, 3).await;
    let ssl_id: u64 = order.id.parse().unwrap();
    let serial_hex = s.scm.order(ssl_id).unwrap().serial_hex.unwrap();
    let revocation = RevocationRequest {
        certificate_pem: cert.certificate_pem.clone(),
        serial_hex: serial_hex.clone(),
        ca_certificate_id: cert.ca_certificate_id.clone(),
        reason: RevocationReason::KeyCompromise,
    };
    issuer.revoke(&revocation).await.unwrap();
    let revocations = s.scm.revocations();
    assert_eq!(revocations.len(), 1);
    assert_eq!(revocations[0].ssl_id, ssl_id);
    assert_eq!(
        revocations[0].reason,
        format!("Key compromise (revoked through certplane; serial {serial_hex})")
    );
    assert!(
        s.scm
            .requests()
            .contains(&format!("POST /api/ssl/v1/revoke/{ssl_id}"))
    );
    // Collect now answers -192.
    let e = connector_error(issuer.poll(&order).await.unwrap_err());
    assert!(
        matches!(&e, ConnectorError::Rejected(m) if m.contains("-192")),
        "{e:?}"
    );
    // SCM refuses revoking twice.
    let e = connector_error(issuer.revoke(&revocation).await.unwrap_err());
    assert!(matches!(e, ConnectorError::Rejected(_)), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_without_ssl_id_is_rejected() {
    let s = Setup::new().await;
    let e = connector_error(
        s.issuer()
            .revoke(&RevocationRequest {
                certificate_pem: String::new(),
                serial_hex: "0a".into(),
                ca_certificate_id: None,
                reason: RevocationReason::Superseded,
            })
            .await
            .unwrap_err(),
    );
    assert!(
        matches!(&e, ConnectorError::Rejected(m) if m.contains("ca-certificate-id")),
        "{e:?}"
    );
    assert!(s.scm.requests().is_empty(), "nothing reached SCM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ungranted_host_is_denied() {
    let s = Setup::new().await;
    let config = InstanceConfig::new("sectigo-ungranted")
        .with_settings(s.scm.settings())
        .unwrap()
        .with_secret("login", fake_sectigo::LOGIN)
        .with_secret("password", fake_sectigo::PASSWORD)
        .with_hosts(&["https://cert-manager.com"])
        .unwrap();
    let issuer = instance(&s.plugin, config);
    let err = issuer.validate_config().await.unwrap_err();
    let CallError::CapabilityDenied { denials, error, .. } = &err else {
        panic!("expected a capability denial, got {err:?}");
    };
    assert!(denials[0].contains("127.0.0.1"), "{denials:?}");
    assert!(
        matches!(error, Some(ConnectorError::InvalidConfig(m)) if m.contains("not granted")),
        "{error:?}"
    );
    let err = issuer.submit(&request(&NAMES)).await.unwrap_err();
    assert!(matches!(err, CallError::CapabilityDenied { .. }), "{err:?}");
    assert!(s.scm.requests().is_empty(), "nothing reached the fake");
}
