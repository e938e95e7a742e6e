//! A small TLS server that serves whatever certificate files are on disk,
//! re-reading them at every handshake, like a web server that reloads its
//! configuration. The demo points it at the directory the agent deploys
//! into; the end-to-end tests also use it to serve an old certificate.
//!
//! Until the files exist (or while they are unreadable), it serves a
//! self-signed placeholder certificate, so a verifier sees "the wrong
//! certificate" rather than "nothing".

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::AsyncWriteExt as _;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// A running file-backed TLS server.
pub struct FileTlsServer {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    resolver: Arc<FileResolver>,
    shutdown: CancellationToken,
}

/// PEM chain and PEM private key paths.
type Files = (PathBuf, PathBuf);

#[derive(Debug)]
struct FileResolver {
    files: Mutex<Option<Files>>,
    placeholder: Arc<CertifiedKey>,
}

impl FileResolver {
    fn load(&self) -> Option<Arc<CertifiedKey>> {
        let (chain_path, key_path) = self.files.lock().ok()?.clone()?;
        let chain = certplane_pki::pem::load_certificates(&chain_path).ok()?;
        let key = std::fs::read(&key_path).ok()?;
        certified(chain, &key)
    }
}

impl ResolvesServerCert for FileResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.load().unwrap_or_else(|| self.placeholder.clone()))
    }
}

fn certified(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key_pem: &[u8],
) -> Option<Arc<CertifiedKey>> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject as _;
    let key = PrivateKeyDer::from_pem_slice(key_pem).ok()?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).ok()?;
    Some(Arc::new(CertifiedKey::new(chain, signing)))
}

impl FileTlsServer {
    /// Serves `files` (PEM chain path, PEM key path; the placeholder until
    /// set) on a free loopback port. Each connection gets the TLS handshake
    /// and a one-line HTTP answer.
    pub async fn start(files: Option<(PathBuf, PathBuf)>) -> anyhow::Result<FileTlsServer> {
        let placeholder = rcgen::generate_simple_self_signed(vec!["placeholder.invalid".into()])?;
        let placeholder = certified(
            vec![placeholder.cert.der().clone()],
            placeholder.key_pair.serialize_pem().as_bytes(),
        )
        .ok_or_else(|| anyhow::anyhow!("cannot load the placeholder key"))?;
        let resolver = Arc::new(FileResolver {
            files: Mutex::new(files),
            placeholder,
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = token.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((stream, _)) = accepted else { continue };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(stream).await {
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                            .await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        Ok(FileTlsServer {
            port,
            resolver,
            shutdown,
        })
    }

    /// Serves these files from the next handshake on.
    pub fn set_files(&self, chain_path: PathBuf, key_path: PathBuf) {
        if let Ok(mut files) = self.resolver.files.lock() {
            *files = Some((chain_path, key_path));
        }
    }

    /// Stops accepting connections.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for FileTlsServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
