//! TLS helpers shared by the test servers: one handshake that observes the
//! leaf a server presents (the certificate is not validated, the handshake
//! signature is), and the fingerprint format the tests compare.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// Lower-case hex SHA-256 of `der`.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One TLS handshake with the server at `addr`, `server_name` as SNI: the
/// SHA-256 fingerprint (lower-case hex) of the leaf it presents. Connecting
/// waits at most `connect_timeout`, each read and write at most
/// `io_timeout`.
pub fn served_fingerprint(
    addr: SocketAddr,
    server_name: &str,
    connect_timeout: Duration,
    io_timeout: Duration,
) -> Result<String, String> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| format!("server name {server_name:?}: {e}"))?;
    let mut connection =
        rustls::ClientConnection::new(observing_config(), name).map_err(|e| e.to_string())?;
    let mut tcp = TcpStream::connect_timeout(&addr, connect_timeout)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_read_timeout(Some(io_timeout))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(io_timeout))
        .map_err(|e| e.to_string())?;
    while connection.is_handshaking() {
        connection
            .complete_io(&mut tcp)
            .map_err(|e| format!("TLS handshake with {addr} ({server_name}): {e}"))?;
    }
    let leaf = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or_else(|| format!("{addr} presented no certificate"))?;
    let fingerprint = fingerprint_sha256(leaf.as_ref());
    connection.send_close_notify();
    let _ = connection.complete_io(&mut tcp);
    Ok(fingerprint)
}

/// A TLS client that accepts whatever certificate is presented and checks
/// only the handshake signatures: it observes what is served.
fn observing_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Observer(provider.clone()));
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    )
}

#[derive(Debug)]
struct Observer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Observer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
