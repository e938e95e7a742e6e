//! The fake CA over plain HTTP, and the `http-ca` test connector talking to
//! it through the runtime (needs `scripts/build-plugins`).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use certplane_runtime::harness::Harness;
use certplane_runtime::issuer::{
    CertificateRequest, IssueResult, IssuedCertificate, Order, RevocationReason, RevocationRequest,
};
use certplane_runtime::{CallError, ConnectorError, InstanceConfig, PluginInstance};
use certplane_testkit::{FakeCa, Fault, OrderStatus, test_plugin_manifest};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

// ---------------------------------------------------------------- helpers

/// A CSR for these names (IP literals become IP SANs) with a fresh P-256 key.
fn csr(names: &[&str]) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    params.serialize_request(&key).unwrap().pem().unwrap()
}

struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

/// One HTTP/1.1 request on a fresh connection.
async fn call(ca: &FakeCa, method: &str, path: &str, body: Option<Value>) -> Answer {
    let stream = tokio::net::TcpStream::connect(ca.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", ca.addr().to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        retry_after,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

fn order_json(csr_pem: &str, certificate_id: &str, names: &[&str]) -> Value {
    json!({
        "csr_pem": csr_pem,
        "common_name": names[0],
        "dns_names": names,
        "ip_addresses": [],
        "validity_days": 30,
        "certificate_id": certificate_id,
    })
}

fn der(pem_text: &str) -> Vec<u8> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).expect("PEM");
    pem.contents
}

/// Checks that `leaf_pem` is signed by the fake CA's root, certifies exactly
/// `dns` and `ips`, is an end-entity server certificate and lives `days`.
fn check_leaf(
    ca: &FakeCa,
    leaf_pem: &str,
    chain: &[String],
    dns: &[&str],
    ips: &[IpAddr],
    days: i64,
) {
    assert_eq!(chain, [ca.root_pem()], "the chain is the root");
    let root_der = der(&ca.root_pem());
    let (_, root) = X509Certificate::from_der(&root_der).unwrap();
    let leaf_der = der(leaf_pem);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    leaf.verify_signature(Some(root.public_key()))
        .expect("the leaf verifies against the root");
    assert_eq!(leaf.issuer(), root.subject());
    assert!(!leaf.is_ca());
    let eku = leaf.extended_key_usage().unwrap().expect("an EKU");
    assert!(eku.value.server_auth);
    let san = leaf
        .subject_alternative_name()
        .unwrap()
        .expect("SANs")
        .value;
    let mut got_dns = Vec::new();
    let mut got_ips = Vec::new();
    for name in &san.general_names {
        match name {
            GeneralName::DNSName(d) => got_dns.push(d.to_string()),
            GeneralName::IPAddress(b) => got_ips.push(match b.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()),
                _ => IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()),
            }),
            other => panic!("unexpected SAN {other:?}"),
        }
    }
    assert_eq!(got_dns, dns);
    assert_eq!(got_ips, ips);
    let validity = leaf.validity();
    let lifetime = validity.not_after.timestamp() - validity.not_before.timestamp();
    assert_eq!(
        lifetime,
        days * 86_400 + 60,
        "{days} days from a minute ago"
    );
    assert!(validity.is_valid());
}

// ------------------------------------------------------- the fake CA itself

#[tokio::test]
async fn fake_ca_issues_after_the_pending_polls() {
    let ca = FakeCa::start().await;
    ca.set_pending_polls(2);
    ca.set_retry_after_secs(Some(3));
    let names = ["www.example.test", "example.test", "192.0.2.7"];
    let placed = call(
        &ca,
        "POST",
        "/orders",
        Some(order_json(&csr(&names), "web-1", &names)),
    )
    .await;
    assert_eq!(placed.status, 201, "{:?}", placed.body);
    assert_eq!(placed.body["status"], "pending");
    assert_eq!(placed.body["retry_after_secs"], 3);
    let id = placed.body["id"].as_str().unwrap().to_string();
    assert_eq!(
        (ca.orders_placed(), ca.orders_for("web-1"), ca.polls()),
        (1, 1, 0)
    );

    for n in 1..=2 {
        let polled = call(&ca, "GET", &format!("/orders/{id}"), None).await;
        assert_eq!(
            (polled.status, polled.body["status"].as_str()),
            (200, Some("pending")),
            "poll {n}"
        );
    }
    let issued = call(&ca, "GET", &format!("/orders/{id}"), None).await;
    assert_eq!(issued.status, 200);
    assert_eq!(issued.body["status"], "issued");
    assert!(issued.body.get("retry_after_secs").is_none());
    let leaf = issued.body["certificate_pem"].as_str().unwrap();
    let chain: Vec<String> = serde_json::from_value(issued.body["chain_pem"].clone()).unwrap();
    check_leaf(
        &ca,
        leaf,
        &chain,
        &["www.example.test", "example.test"],
        &["192.0.2.7".parse().unwrap()],
        30,
    );
    // Issued stays issued, with the same certificate.
    let again = call(&ca, "GET", &format!("/orders/{id}"), None).await;
    assert_eq!(
        again.body["certificate_pem"],
        issued.body["certificate_pem"]
    );

    assert_eq!(
        (
            ca.orders_placed(),
            ca.submits(),
            ca.polls(),
            ca.polls_for(&id)
        ),
        (1, 1, 4, 4)
    );
    let info = ca.order(&id).unwrap();
    assert_eq!(info.status, OrderStatus::Issued);
    assert_eq!(info.certificate_id, "web-1");
    assert_eq!(info.dns_names, names);
    assert_eq!(info.validity_days, Some(30));
    assert_eq!(
        info.serial_hex.as_deref(),
        issued.body["serial_hex"].as_str()
    );
    assert_eq!(ca.orders_for("other"), 0);
}

/// CSRs as the host and agents make them (`certplane-pki`), every key
/// type but the slow big RSA ones.
#[tokio::test]
async fn fake_ca_certifies_the_csr_key_of_every_type() {
    use certplane_pki::keygen::{KeyType, generate_key_and_csr};
    let ca = FakeCa::start().await;
    ca.set_pending_polls(0);
    let names = ["k.example.test"];
    let ip: IpAddr = "192.0.2.9".parse().unwrap();
    for key_type in [
        KeyType::EcdsaP256,
        KeyType::EcdsaP384,
        KeyType::Rsa2048,
        KeyType::Ed25519,
    ] {
        let key = generate_key_and_csr(key_type, "", &[names[0].to_string()], &[ip]).unwrap();
        let mut body = order_json(&key.csr_pem, "k", &names);
        body["common_name"] = json!("");
        let placed = call(&ca, "POST", "/orders", Some(body)).await;
        assert_eq!(placed.status, 201, "{key_type:?}: {:?}", placed.body);
        let leaf_pem = placed.body["certificate_pem"].as_str().unwrap();
        let chain: Vec<String> = serde_json::from_value(placed.body["chain_pem"].clone()).unwrap();
        check_leaf(&ca, leaf_pem, &chain, &names, &[ip], 30);
        // The leaf certifies the CSR's SubjectPublicKeyInfo byte for byte.
        assert_eq!(
            certplane_pki::pem::certificate_public_key_sha256(&der(leaf_pem)).unwrap(),
            key.public_key_sha256,
            "{key_type:?}"
        );
    }
    assert_eq!(ca.orders_for("k"), 4);
}

#[tokio::test]
async fn fake_ca_issues_at_once_and_revokes() {
    let ca = FakeCa::start().await;
    ca.set_pending_polls(0);
    let names = ["a.example.test"];
    let mut body = order_json(&csr(&names), "a", &names);
    body["validity_days"] = Value::Null;
    let placed = call(&ca, "POST", "/orders", Some(body)).await;
    assert_eq!(
        (placed.status, placed.body["status"].as_str()),
        (201, Some("issued"))
    );
    let chain: Vec<String> = serde_json::from_value(placed.body["chain_pem"].clone()).unwrap();
    check_leaf(
        &ca,
        placed.body["certificate_pem"].as_str().unwrap(),
        &chain,
        &names,
        &[],
        90,
    );
    let id = placed.body["id"].as_str().unwrap();
    let serial = placed.body["serial_hex"].as_str().unwrap();

    let revoked = call(
        &ca,
        "POST",
        &format!("/orders/{id}/revoke"),
        Some(json!({"reason": "superseded"})),
    )
    .await;
    assert_eq!(
        (revoked.status, revoked.body["revoked"].as_bool()),
        (200, Some(true))
    );
    let by_serial = call(&ca, "POST", &format!("/certificates/{serial}/revoke"), None).await;
    assert_eq!(by_serial.status, 200);
    assert_eq!(ca.revocations(), 2);
    assert_eq!(ca.order(id).unwrap().revoked.as_deref(), Some("superseded"));
    assert_eq!(
        call(&ca, "POST", "/orders/ord-9/revoke", None).await.status,
        404
    );

    // A pending order cannot be revoked.
    ca.set_pending_polls(5);
    let pending = call(
        &ca,
        "POST",
        "/orders",
        Some(order_json(&csr(&names), "b", &names)),
    )
    .await;
    let id = pending.body["id"].as_str().unwrap();
    assert_eq!(
        call(&ca, "POST", &format!("/orders/{id}/revoke"), None)
            .await
            .status,
        409
    );
    // Releasing it: the next poll issues, however many were configured.
    ca.set_pending_polls(0);
    let polled = call(&ca, "GET", &format!("/orders/{id}"), None).await;
    assert_eq!(polled.body["status"], "issued");
}

#[tokio::test]
async fn fake_ca_injects_faults_and_refuses_bad_requests() {
    let ca = FakeCa::start().await;
    let names = ["f.example.test"];
    let order = order_json(&csr(&names), "f", &names);

    ca.fail_next_submits(
        2,
        Fault::RateLimited {
            retry_after_secs: 7,
        },
    );
    for _ in 0..2 {
        let limited = call(&ca, "POST", "/orders", Some(order.clone())).await;
        assert_eq!(
            (limited.status, limited.retry_after.as_deref()),
            (429, Some("7"))
        );
        assert!(limited.body["error"].is_string());
    }
    assert_eq!((ca.submits(), ca.orders_placed()), (2, 0));
    let placed = call(&ca, "POST", "/orders", Some(order.clone())).await;
    assert_eq!(placed.status, 201);
    let id = placed.body["id"].as_str().unwrap().to_string();

    ca.fail_next_polls(2, Fault::Transient);
    for _ in 0..2 {
        let unavailable = call(&ca, "GET", &format!("/orders/{id}"), None).await;
        assert_eq!((unavailable.status, unavailable.retry_after), (503, None));
    }
    ca.fail_next_polls(1, Fault::Rejected);
    assert_eq!(
        call(&ca, "GET", &format!("/orders/{id}"), None)
            .await
            .status,
        409
    );
    ca.fail_next_polls(1, Fault::Unauthorized);
    assert_eq!(
        call(&ca, "GET", &format!("/orders/{id}"), None)
            .await
            .status,
        401
    );
    // Faulted polls did not advance the order (default: one pending answer).
    let polled = call(&ca, "GET", &format!("/orders/{id}"), None).await;
    assert_eq!(polled.body["status"], "pending");
    // Clearing faults.
    ca.fail_next_polls(3, Fault::Transient);
    ca.fail_next_polls(0, Fault::Transient);
    let polled = call(&ca, "GET", &format!("/orders/{id}"), None).await;
    assert_eq!(polled.body["status"], "issued");
    assert_eq!((ca.polls(), ca.polls_for(&id)), (6, 6));

    assert_eq!(call(&ca, "GET", "/orders/ord-42", None).await.status, 404);
    let mut bad = order.clone();
    bad["csr_pem"] =
        json!("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n");
    assert_eq!(call(&ca, "POST", "/orders", Some(bad)).await.status, 400);
    assert_eq!(
        call(&ca, "POST", "/orders", Some(json!({"x": 1})))
            .await
            .status,
        400
    );
    assert_eq!((ca.polls(), ca.submits(), ca.orders_placed()), (7, 5, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_ca_delays_polls_and_closes_on_drop() {
    let ca = FakeCa::start().await;
    let names = ["d.example.test"];
    let placed = call(
        &ca,
        "POST",
        "/orders",
        Some(order_json(&csr(&names), "d", &names)),
    )
    .await;
    let id = placed.body["id"].as_str().unwrap().to_string();
    ca.set_poll_delay(Duration::from_millis(400));

    let handle = ca.handle();
    let addr = ca.addr();
    let started = Instant::now();
    let in_flight = tokio::spawn({
        let ca_url = ca.url();
        async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let request = Request::builder()
                .uri(format!("{ca_url}/orders/{id}"))
                .header("host", addr.to_string())
                .body(Full::new(Bytes::new()))
                .unwrap();
            sender
                .send_request(request)
                .await
                .map(|r| r.status().as_u16())
        }
    });
    // The poll is counted, and the order advanced, while the answer waits.
    assert!(
        handle
            .wait_for(Duration::from_secs(5), |ca| ca.polls() == 1)
            .await
    );
    assert!(started.elapsed() < Duration::from_millis(400));
    assert_eq!(in_flight.await.unwrap().unwrap(), 200);
    assert!(started.elapsed() >= Duration::from_millis(400));

    // Dropping the CA closes the port and cuts polls in flight.
    let in_flight = tokio::spawn({
        let url = ca.url();
        let id = ca.orders()[0].id.clone();
        async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let request = Request::builder()
                .uri(format!("{url}/orders/{id}"))
                .header("host", addr.to_string())
                .body(Full::new(Bytes::new()))
                .unwrap();
            sender
                .send_request(request)
                .await
                .map(|r| r.status().as_u16())
        }
    });
    assert!(
        handle
            .wait_for(Duration::from_secs(5), |ca| ca.polls() == 2)
            .await
    );
    drop(ca);
    assert!(
        in_flight.await.unwrap().is_err(),
        "the poll in flight was cut"
    );
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    // The handle keeps the counters.
    assert_eq!((handle.orders_placed(), handle.polls()), (1, 2));
}

// ------------------------------------------- the http-ca connector over it

async fn http_ca(harness: &Harness, ca: &FakeCa) -> PluginInstance {
    let config = InstanceConfig::new("http-ca-test")
        .with_settings(json!({ "url": ca.url() }))
        .unwrap()
        .with_hosts(&[ca.grant()])
        .unwrap();
    harness
        .instance(test_plugin_manifest("http-ca"), config)
        .await
        .expect("http-ca loads")
}

fn request(certificate_id: &str, names: &[&str]) -> CertificateRequest {
    CertificateRequest {
        csr_pem: csr(names),
        common_name: names[0].into(),
        dns_names: names.iter().map(|n| n.to_string()).collect(),
        ip_addresses: vec![],
        validity_days: Some(10),
        certificate_id: certificate_id.into(),
    }
}

fn connector_error(result: Result<IssueResult, CallError>) -> ConnectorError {
    match result {
        Err(CallError::Connector { error, .. }) => error,
        Err(other) => panic!("expected a connector error, got {other}"),
        Ok(_) => panic!("expected a connector error, got a result"),
    }
}

/// The contract's name of an error case.
fn kind(error: &ConnectorError) -> &'static str {
    match error {
        ConnectorError::InvalidConfig(_) => "invalid-config",
        ConnectorError::Unauthorized(_) => "unauthorized",
        ConnectorError::Rejected(_) => "rejected",
        ConnectorError::RateLimited(_) => "rate-limited",
        ConnectorError::Transient(_) => "transient",
        ConnectorError::Unsupported(_) => "unsupported",
    }
}

fn expect_pending(result: Result<IssueResult, CallError>) -> Order {
    match result.expect("the call succeeds") {
        IssueResult::Pending(order) => order,
        IssueResult::Issued(_) => panic!("expected pending"),
    }
}

fn expect_issued(result: Result<IssueResult, CallError>) -> IssuedCertificate {
    match result.expect("the call succeeds") {
        IssueResult::Issued(cert) => cert,
        IssueResult::Pending(order) => panic!("expected issued, got pending {}", order.id),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ca_connector_orders_polls_and_revokes() {
    let ca = FakeCa::start().await;
    ca.set_pending_polls(2);
    ca.set_retry_after_secs(Some(4));
    let harness = Harness::new().unwrap();
    let issuer = http_ca(&harness, &ca).await;
    issuer.validate_config().await.expect("valid config");

    let names = ["www.example.test", "example.test"];
    let order = expect_pending(issuer.submit(&request("web-1", &names)).await);
    assert_eq!(order.id, "ord-1");
    assert_eq!(order.retry_after_secs, Some(4));
    let state: Value = serde_json::from_str(&order.state).unwrap();
    assert_eq!(state, json!({"id": "ord-1"}));
    assert_eq!((ca.orders_placed(), ca.orders_for("web-1")), (1, 1));

    // Polling the same order until it is issued places no other order.
    let mut polls = 0;
    let cert = loop {
        polls += 1;
        match issuer.poll(&order).await.expect("poll") {
            IssueResult::Pending(again) => {
                assert_eq!(
                    (again.id.as_str(), again.state.as_str()),
                    ("ord-1", order.state.as_str())
                );
            }
            IssueResult::Issued(cert) => break cert,
        }
        assert!(polls < 10, "never issued");
    };
    assert_eq!(polls, 3);
    check_leaf(&ca, &cert.certificate_pem, &cert.chain_pem, &names, &[], 10);
    assert_eq!(cert.ca_certificate_id.as_deref(), Some("ord-1"));
    assert_eq!(
        (ca.orders_placed(), ca.orders_for("web-1"), ca.polls()),
        (1, 1, 3)
    );

    // Synchronous issuance.
    ca.set_pending_polls(0);
    let at_once = expect_issued(issuer.submit(&request("web-2", &["b.example.test"])).await);
    assert_eq!(at_once.ca_certificate_id.as_deref(), Some("ord-2"));
    assert_eq!(
        (
            ca.orders_placed(),
            ca.orders_for("web-1"),
            ca.orders_for("web-2")
        ),
        (2, 1, 1)
    );

    // Revocation by CA id, then by serial.
    let serial = ca.order("ord-1").unwrap().serial_hex.unwrap();
    let revocation = |ca_certificate_id: Option<&str>| RevocationRequest {
        certificate_pem: cert.certificate_pem.clone(),
        serial_hex: serial.clone(),
        ca_certificate_id: ca_certificate_id.map(str::to_string),
        reason: RevocationReason::KeyCompromise,
    };
    issuer
        .revoke(&revocation(Some("ord-1")))
        .await
        .expect("revoked by id");
    issuer
        .revoke(&revocation(None))
        .await
        .expect("revoked by serial");
    assert_eq!(ca.revocations(), 2);
    assert_eq!(
        ca.order("ord-1").unwrap().revoked.as_deref(),
        Some("key-compromise")
    );
    match issuer.revoke(&revocation(Some("ord-77"))).await {
        Err(CallError::Connector { error, .. }) => assert_eq!(kind(&error), "rejected"),
        other => panic!("expected rejected, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ca_connector_maps_errors_to_classes() {
    let ca = FakeCa::start().await;
    let harness = Harness::new().unwrap();
    let issuer = http_ca(&harness, &ca).await;

    // validate-config: url present and http(s).
    for (settings, needle) in [
        (json!({}), "`url` is required"),
        (json!({"url": "ftp://127.0.0.1/"}), "only http and https"),
    ] {
        let config = InstanceConfig::new("bad")
            .with_settings(settings)
            .unwrap()
            .with_hosts(&[ca.grant()])
            .unwrap();
        let bad = PluginInstance::new(issuer.plugin().clone(), config).unwrap();
        match bad.validate_config().await {
            Err(CallError::Connector {
                error: ConnectorError::InvalidConfig(m),
                ..
            }) => {
                assert!(m.contains(needle), "{m}")
            }
            other => panic!("expected invalid-config, got {other:?}"),
        }
    }

    // A rate-limited submit places no order and carries the hint.
    ca.fail_next_submits(
        1,
        Fault::RateLimited {
            retry_after_secs: 9,
        },
    );
    match connector_error(issuer.submit(&request("c-1", &["c.example.test"])).await) {
        ConnectorError::RateLimited(rl) => {
            assert_eq!(rl.retry_after_secs, Some(9));
            assert!(rl.message.contains("429"), "{}", rl.message);
        }
        other => panic!("expected rate-limited, got {other:?}"),
    }
    ca.fail_next_submits(1, Fault::Transient);
    let e = connector_error(issuer.submit(&request("c-1", &["c.example.test"])).await);
    assert_eq!(kind(&e), "transient", "{e:?}");
    ca.fail_next_submits(1, Fault::Unauthorized);
    let e = connector_error(issuer.submit(&request("c-1", &["c.example.test"])).await);
    assert_eq!(kind(&e), "unauthorized", "{e:?}");
    ca.fail_next_submits(1, Fault::Rejected);
    let e = connector_error(issuer.submit(&request("c-1", &["c.example.test"])).await);
    assert_eq!(kind(&e), "rejected", "{e:?}");
    // A CSR the CA cannot read: 400, rejected.
    let mut garbled = request("c-1", &["c.example.test"]);
    garbled.csr_pem = "not a CSR".into();
    let e = connector_error(issuer.submit(&garbled).await);
    assert_eq!(kind(&e), "rejected", "{e:?}");
    assert_eq!((ca.submits(), ca.orders_placed()), (5, 0));

    let order = expect_pending(issuer.submit(&request("c-1", &["c.example.test"])).await);
    assert_eq!(ca.orders_for("c-1"), 1);

    // Poll faults: transient, then rate-limited with the hint; the order is
    // the same afterwards.
    ca.fail_next_polls(1, Fault::Transient);
    let e = connector_error(issuer.poll(&order).await);
    assert_eq!(kind(&e), "transient", "{e:?}");
    ca.fail_next_polls(
        1,
        Fault::RateLimited {
            retry_after_secs: 11,
        },
    );
    match connector_error(issuer.poll(&order).await) {
        ConnectorError::RateLimited(rl) => assert_eq!(rl.retry_after_secs, Some(11)),
        other => panic!("expected rate-limited, got {other:?}"),
    }
    // An order the CA does not know: 404, rejected.
    let unknown = Order {
        id: "ord-404".into(),
        retry_after_secs: None,
        state: json!({"id": "ord-404"}).to_string(),
    };
    let e = connector_error(issuer.poll(&unknown).await);
    assert_eq!(kind(&e), "rejected", "{e:?}");
    // Unreadable state: rejected without asking the CA.
    let polls = ca.polls();
    let broken = Order {
        state: "{".into(),
        ..order.clone()
    };
    assert_eq!(
        kind(&connector_error(issuer.poll(&broken).await)),
        "rejected"
    );
    assert_eq!(ca.polls(), polls);

    expect_pending(issuer.poll(&order).await);
    expect_issued(issuer.poll(&order).await);
    assert_eq!(
        (ca.orders_placed(), ca.orders_for("c-1"), ca.polls()),
        (1, 1, 5)
    );

    // The CA gone: connection refused is transient.
    drop(ca);
    let e = connector_error(issuer.poll(&order).await);
    assert_eq!(kind(&e), "transient", "{e:?}");
}
