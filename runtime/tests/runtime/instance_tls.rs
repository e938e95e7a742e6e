//! Per-instance TLS for a connector's HTTPS (`InstanceConfig::with_tls`):
//! extra trust roots and a client certificate reach only the instance they
//! are configured for. The upstream is a TLS server in this test that
//! answers every request `503` and counts the requests it got past the
//! handshake; the `http-ca` fixture calls it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use certplane_runtime::harness::Harness;
use certplane_runtime::issuer::CertificateRequest;
use certplane_runtime::{ConfigError, InstanceConfig, InstanceTls, PluginInstance, Secret};
use certplane_testkit::{test_csr, test_plugin_manifest};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Pki {
    server_ca_pem: String,
    server_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    server_key: rustls::pki_types::PrivateKeyDer<'static>,
    client_ca: rustls::pki_types::CertificateDer<'static>,
    client_cert_pem: String,
    client_key_pem: String,
}

fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    (params.self_signed(&key).unwrap(), key)
}

fn pki() -> Pki {
    let (server_ca, server_ca_key) = ca("upstream CA");
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &server_ca, &server_ca_key)
        .unwrap();
    let (client_ca, client_ca_key) = ca("client CA");
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["connector.example".to_string()])
        .unwrap()
        .signed_by(&client_key, &client_ca, &client_ca_key)
        .unwrap();
    Pki {
        server_ca_pem: server_ca.pem(),
        server_chain: vec![server.der().clone()],
        server_key: rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        client_ca: client_ca.der().clone(),
        client_cert_pem: client.pem(),
        client_key_pem: client_key.serialize_pem(),
    }
}

/// A TLS server on loopback; with `require_client`, only clients with a
/// certificate from the client CA get past the handshake.
async fn upstream(pki: &Pki, require_client: bool) -> (SocketAddr, Arc<AtomicU32>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if require_client {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.client_ca.clone()).unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder
        .with_single_cert(pki.server_chain.clone(), pki.server_key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicU32::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                // The whole request, body included: answering before the
                // client has sent its body would race its write.
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                let complete = |seen: &[u8]| {
                    let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                        return false;
                    };
                    let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    seen.len() >= end + 4 + length
                };
                while !complete(&seen) {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, served)
}

fn request() -> CertificateRequest {
    let (csr_pem, _) = test_csr(&["www.example.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    CertificateRequest {
        csr_pem,
        common_name: "www.example.test".into(),
        dns_names: vec!["www.example.test".into()],
        ip_addresses: vec![],
        validity_days: None,
        certificate_id: "tls-1".into(),
    }
}

fn config(addr: SocketAddr, name: &str) -> InstanceConfig {
    InstanceConfig::new(name)
        .with_settings(serde_json::json!({ "url": format!("https://{addr}") }))
        .unwrap()
        .with_hosts(&[format!("https://{addr}")])
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_roots_and_client_certificates_belong_to_one_instance() {
    let harness = Harness::new().unwrap();
    let plugin = harness.load(test_plugin_manifest("http-ca")).await.unwrap();
    let pki = pki();

    // Trust: only the instance given the upstream's CA gets an answer.
    let (addr, served) = upstream(&pki, false).await;
    let trusting = PluginInstance::new(
        plugin.clone(),
        config(addr, "trusting").with_tls(InstanceTls {
            extra_roots_pem: vec![pki.server_ca_pem.clone()],
            ..InstanceTls::default()
        }),
    )
    .unwrap();
    let err = trusting.submit(&request()).await.unwrap_err();
    assert!(
        err.to_string().contains("503"),
        "the upstream answered: {err}"
    );
    assert_eq!(served.load(Ordering::SeqCst), 1);
    let other = PluginInstance::new(plugin.clone(), config(addr, "other")).unwrap();
    let err = other.submit(&request()).await.unwrap_err();
    assert!(!err.to_string().contains("503"), "{err}");
    assert_eq!(
        served.load(Ordering::SeqCst),
        1,
        "an instance without the root never got past the handshake"
    );

    // Client certificate: only the instance holding it is let in.
    let (addr, served) = upstream(&pki, true).await;
    let roots_only = PluginInstance::new(
        plugin.clone(),
        config(addr, "roots-only").with_tls(InstanceTls {
            extra_roots_pem: vec![pki.server_ca_pem.clone()],
            ..InstanceTls::default()
        }),
    )
    .unwrap();
    let err = roots_only.submit(&request()).await.unwrap_err();
    assert!(!err.to_string().contains("503"), "{err}");
    assert_eq!(served.load(Ordering::SeqCst), 0);
    let with_cert = PluginInstance::new(
        plugin.clone(),
        config(addr, "with-cert").with_tls(InstanceTls {
            extra_roots_pem: vec![pki.server_ca_pem.clone()],
            client_cert_pem: Some(pki.client_cert_pem.clone()),
            client_key_pem: Some(Secret::new(pki.client_key_pem.clone())),
        }),
    )
    .unwrap();
    let err = with_cert.submit(&request()).await.unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(served.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unusable_tls_settings_are_refused_when_the_instance_is_built() {
    let harness = Harness::new().unwrap();
    let plugin = harness.load(test_plugin_manifest("http-ca")).await.unwrap();
    let pki = pki();
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (tls, why) in [
        (
            InstanceTls {
                extra_roots_pem: vec!["not a certificate".into()],
                ..InstanceTls::default()
            },
            "no PEM certificate",
        ),
        (
            InstanceTls {
                client_cert_pem: Some(pki.client_cert_pem.clone()),
                ..InstanceTls::default()
            },
            "both the certificate and its key",
        ),
        (
            InstanceTls {
                client_cert_pem: Some(pki.client_cert_pem.clone()),
                client_key_pem: Some(Secret::new("garbage")),
                ..InstanceTls::default()
            },
            "client key",
        ),
    ] {
        let err = PluginInstance::new(plugin.clone(), config(addr, "bad").with_tls(tls))
            .expect_err("refused");
        assert!(matches!(err, ConfigError::Tls(_)), "{err}");
        assert!(err.to_string().contains(why), "{err}");
    }
}
