//! The generated client against the real host (the test kit's router on a
//! loopback port), on both backends: an issuer and certificates created,
//! read back and listed page by page through the generated types, and
//! errors decoded as the documented envelope. A document that names a
//! parameter's place, a field's type or an error's shape wrongly fails
//! here.

use std::net::SocketAddr;
use std::time::Duration;

use certplane_apiclient::types;
use certplane_apiclient::{Client, Error};
use certplane_testkit::Backend;
use certplane_testkit::app::TestApp;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};

/// The test app's router served on a loopback port (stopped on drop).
async fn serve(backend: Backend) -> (TestApp, SocketAddr, DropGuard) {
    let app = TestApp::new(backend).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(certplane_host::server::serve(
        listener,
        app.router.clone(),
        None,
        stop.clone(),
        Duration::from_secs(1),
    ));
    (app, addr, stop.drop_guard())
}

/// A generated client sending `key` as its bearer token.
fn client(addr: SocketAddr, key: &str) -> Client {
    let auth = format!("Bearer {key}").parse().unwrap();
    let http = reqwest::Client::builder()
        .default_headers(
            [(reqwest::header::AUTHORIZATION, auth)]
                .into_iter()
                .collect(),
        )
        .build()
        .unwrap();
    Client::new_with_client(&format!("http://{addr}"), http)
}

/// The error envelope of a refused call.
fn envelope(err: Error<types::ErrorBody>) -> (u16, types::ErrorDetail) {
    match err {
        Error::ErrorResponse(response) => {
            let status = response.status().as_u16();
            (status, response.into_inner().error)
        }
        other => panic!("not a documented error response: {other:?}"),
    }
}

async fn round_trip(backend: Backend) {
    let (app, addr, _stop) = serve(backend).await;
    let api = client(addr, &app.operator);

    // An issuer through the generated body type.
    let (ca_cert, ca_key) = certplane_testkit::ca::test_ca();
    let issuer: types::CreateInstance = serde_json::from_value(json!({
        "name": "local-ca",
        "plugin": "local-ca",
        "settings": { "ca_certificate_pem": ca_cert, "validity_days": 30 },
        "secrets": { "ca_private_key_pem": ca_key },
    }))
    .unwrap();
    let issuer = api
        .create_issuer()
        .body(issuer)
        .send()
        .await
        .expect("issuer created")
        .into_inner();
    assert_eq!(issuer.kind, "issuer");
    assert_eq!(issuer.secret_names, vec!["ca_private_key_pem".to_string()]);

    // Three certificates; the first read back.
    let mut ids = Vec::new();
    for i in 0..3 {
        let body: types::CreateCertificate = serde_json::from_value(json!({
            "name": format!("web-{i}"),
            "common_name": format!("web-{i}.example.test"),
            "sans": [format!("www.web-{i}.example.test")],
            "issuer_id": issuer.id,
        }))
        .unwrap();
        let created = api
            .create_certificate()
            .body(body)
            .send()
            .await
            .expect("certificate created");
        assert_eq!(created.status().as_u16(), 201);
        let created = created.into_inner();
        assert_eq!(created.status, "active");
        assert_eq!(created.issuer_id, issuer.id);
        ids.push(created.id);
    }
    let detail = api
        .get_certificate()
        .id(&ids[0])
        .send()
        .await
        .expect("certificate read")
        .into_inner();
    assert_eq!(detail.id, ids[0]);
    assert_eq!(detail.name, "web-0");
    assert_eq!(
        detail.sans,
        vec![
            "web-0.example.test".to_string(),
            "www.web-0.example.test".to_string()
        ]
    );

    // Paging: query parameters where the server reads them.
    let page = api
        .list_certificates()
        .page(2u32)
        .per_page(2u32)
        .send()
        .await
        .expect("second page")
        .into_inner();
    assert_eq!(page.total, 3);
    assert_eq!((page.page, page.per_page), (2, 2));
    assert_eq!(page.items.len(), 1);
    let active = api
        .list_certificates()
        .status("active")
        .send()
        .await
        .expect("filtered list")
        .into_inner();
    assert_eq!(active.total, 3);

    // Errors decode as the envelope the document promises.
    let (status, error) = envelope(
        api.get_certificate()
            .id("no-such-certificate")
            .send()
            .await
            .expect_err("404"),
    );
    assert_eq!(status, 404);
    assert_eq!(error.code, "not_found");
    assert!(!error.request_id.is_empty());
    let (status, error) = envelope(
        api.list_certificates()
            .per_page(501u32)
            .send()
            .await
            .expect_err("per_page above the documented maximum"),
    );
    assert_eq!(status, 400, "{error:?}");
    let reader = client(addr, &app.reader);
    let body: types::RenewCertificates = serde_json::from_value(json!({ "all": true })).unwrap();
    let (status, error) = envelope(
        reader
            .renew_certificates()
            .body(body)
            .send()
            .await
            .expect_err("a read-only key cannot renew"),
    );
    assert_eq!((status, error.code.as_str()), (403, "forbidden"));
}

#[tokio::test]
async fn generated_client_round_trips_sqlite() {
    round_trip(Backend::Sqlite).await;
}

#[tokio::test]
async fn generated_client_round_trips_postgres() {
    round_trip(Backend::Postgres).await;
}
