//! On-the-wire verification of a deployed certificate, for the agent (after
//! its deployments) and the host (its own deployments, `POST
//! /jobs/{id}/verify`).
//!
//! After a target connector deploys a certificate it names the endpoint that
//! should now serve it. The prober connects there with TLS (SNI = the given
//! server name), reads the end-entity certificate the server presents and
//! compares the SHA-256 fingerprint of its DER with the fingerprint of the
//! certificate that was deployed. Servers pick up new certificates
//! asynchronously (a reload signal, a watcher, a rolling restart), so
//! [`probe`] retries within a bounded window given by [`ProbePolicy`]
//! ([`VerifyConfig`] is its `[verify]` configuration section).
//!
//! The probe deliberately trusts nothing and validates nothing about the
//! served chain or name: its job is to *observe* what is served, which may be
//! a certificate from a private CA the prober has no roots for. The
//! comparison with the expected fingerprint is the check. The handshake
//! signature is still verified, so a server can only pass by holding the
//! private key of the certificate it presents.

mod config;

use std::sync::Arc;
use std::time::Duration;

use certplane_client::FingerprintVerifier;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use certplane_pki::pem::{fingerprint_sha256, normalise_fingerprint};

pub use certplane_proto::Endpoint;
pub use config::VerifyConfig;

/// Retry policy of a probe: how many times, how often and how long each
/// attempt may take. The whole probe takes at most about
/// `attempts * attempt_timeout + (attempts - 1) * interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbePolicy {
    /// Most connection attempts (>= 1; 0 is treated as 1).
    pub attempts: u32,
    /// Pause between attempts.
    pub interval: Duration,
    /// Limit on one attempt (connect + handshake).
    pub attempt_timeout: Duration,
}

impl Default for ProbePolicy {
    /// Five attempts, one second apart, each limited to five seconds.
    fn default() -> Self {
        ProbePolicy {
            attempts: 5,
            interval: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(5),
        }
    }
}

/// The verdict of a probe, in the shape the host's result API takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The endpoint serves the expected certificate.
    Verified {
        /// Fingerprint of the served leaf (lowercase hex SHA-256 of its DER).
        observed: String,
    },
    /// The endpoint serves another certificate.
    Mismatch {
        /// Fingerprint of what it served (lowercase hex SHA-256 of its DER).
        observed: String,
    },
    /// No TLS handshake completed.
    Unreachable {
        /// The last attempt's error, one line.
        error: String,
    },
}

impl Verdict {
    /// `verified` / `mismatch` / `unreachable`: the host API's status
    /// strings for a verification result.
    pub fn status(&self) -> &'static str {
        self.verification_status().as_str()
    }

    /// The verdict as the agent protocol names it.
    pub fn verification_status(&self) -> certplane_proto::agent::VerificationStatus {
        use certplane_proto::agent::VerificationStatus as S;
        match self {
            Verdict::Verified { .. } => S::Verified,
            Verdict::Mismatch { .. } => S::Mismatch,
            Verdict::Unreachable { .. } => S::Unreachable,
        }
    }

    /// The fingerprint of the certificate the endpoint served, if a
    /// handshake completed.
    pub fn observed_fingerprint(&self) -> Option<&str> {
        match self {
            Verdict::Verified { observed } | Verdict::Mismatch { observed } => Some(observed),
            Verdict::Unreachable { .. } => None,
        }
    }

    /// One line for operators, e.g. `mismatch (saw ab12…)`,
    /// `unreachable (connection refused)` or `verified`. The full observed
    /// fingerprint is available from [`Verdict::observed_fingerprint`].
    pub fn detail(&self) -> String {
        match self {
            Verdict::Verified { .. } => "verified".to_owned(),
            Verdict::Mismatch { observed } => format!("mismatch (saw {})", abbreviate(observed)),
            Verdict::Unreachable { error } => format!("unreachable ({error})"),
        }
    }
}

/// Hex digits of a fingerprint shown in [`Verdict::detail`].
const DETAIL_FINGERPRINT_CHARS: usize = 16;

/// The start of a fingerprint, with an ellipsis if it was cut.
fn abbreviate(fingerprint: &str) -> String {
    match fingerprint.char_indices().nth(DETAIL_FINGERPRINT_CHARS) {
        Some((cut, _)) => format!("{}…", &fingerprint[..cut]),
        None => fingerprint.to_owned(),
    }
}

/// Why one probe attempt saw no certificate.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The endpoint's server name is neither a DNS name nor an IP literal.
    #[error("invalid server name `{name}`")]
    InvalidServerName {
        /// The name as given.
        name: String,
    },
    /// The TLS client could not be configured (should not happen with the
    /// ring provider's defaults).
    #[error("TLS client configuration: {0}")]
    Config(#[source] rustls::Error),
    /// The TCP connection failed (refused, no route, name not resolved…).
    #[error("cannot connect to {host}:{port}: {source}")]
    Connect {
        /// Host connected to.
        host: String,
        /// Port connected to.
        port: u16,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// Connect plus handshake took longer than the attempt's limit.
    #[error("no TLS handshake with {host}:{port} within {} ms", after.as_millis())]
    Timeout {
        /// Host connected to.
        host: String,
        /// Port connected to.
        port: u16,
        /// The limit that ran out.
        after: Duration,
    },
    /// The TLS handshake failed (not TLS, alert, bad signature…).
    #[error("TLS handshake with {host}:{port} failed: {source}")]
    Handshake {
        /// Host connected to.
        host: String,
        /// Port connected to.
        port: u16,
        /// The handshake error (rustls errors arrive wrapped in I/O errors).
        #[source]
        source: std::io::Error,
    },
    /// The handshake completed without the server presenting a certificate.
    #[error("{host}:{port} presented no certificate")]
    NoCertificate {
        /// Host connected to.
        host: String,
        /// Port connected to.
        port: u16,
    },
}

/// Probes `endpoint` until it serves `expected_sha256` (hex; case and
/// colons are ignored) or `policy.attempts` attempts have been made.
///
/// Returns [`Verdict::Verified`] as soon as one attempt sees the expected
/// leaf; otherwise the *last* attempt's verdict: [`Verdict::Mismatch`] if
/// its handshake completed with another certificate, [`Verdict::Unreachable`]
/// if it failed. The last attempt decides because the question is what the
/// endpoint serves now, after the reload had time to happen.
pub async fn probe(endpoint: &Endpoint, expected_sha256: &str, policy: ProbePolicy) -> Verdict {
    probe_with(endpoint, expected_sha256, policy, |timeout| {
        served_fingerprint(endpoint, timeout)
    })
    .await
}

/// [`probe`] with the attempt (given the attempt timeout) as a parameter,
/// so tests can observe the attempts made.
async fn probe_with<F, Fut>(
    endpoint: &Endpoint,
    expected_sha256: &str,
    policy: ProbePolicy,
    mut attempt_once: F,
) -> Verdict
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<String, ProbeError>>,
{
    let expected = normalise_fingerprint(expected_sha256);
    if expected.len() != 64 {
        // Cannot match anything; still probe, so the verdict reports what
        // is being served.
        tracing::warn!(
            host = %endpoint.host,
            port = endpoint.port,
            expected = expected_sha256,
            "expected fingerprint is not a SHA-256 in hex"
        );
    }
    let attempts = policy.attempts.max(1);
    let mut verdict = Verdict::Unreachable {
        error: "no attempt made".to_owned(),
    };
    for attempt in 1..=attempts {
        verdict = match attempt_once(policy.attempt_timeout).await {
            Ok(observed) if observed == expected => Verdict::Verified { observed },
            Ok(observed) => Verdict::Mismatch { observed },
            Err(e) => Verdict::Unreachable {
                error: one_line(&e.to_string()),
            },
        };
        tracing::debug!(
            host = %endpoint.host,
            port = endpoint.port,
            server_name = %endpoint.server_name,
            attempt,
            attempts,
            outcome = verdict.status(),
            observed = verdict.observed_fingerprint(),
            error = match &verdict {
                Verdict::Unreachable { error } => Some(error.as_str()),
                _ => None,
            },
            "certificate probe attempt"
        );
        if matches!(verdict, Verdict::Verified { .. }) {
            break;
        }
        if attempt < attempts {
            tokio::time::sleep(policy.interval).await;
        }
    }
    verdict
}

/// Collapses whitespace (including line breaks) so an error fits one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One attempt: connect to `endpoint`, complete a TLS handshake (SNI =
/// `endpoint.server_name`) and return the fingerprint of the end-entity
/// certificate the server presented (lowercase hex SHA-256 of its DER).
///
/// `timeout` limits connect and handshake together. The chain and name are
/// not validated (see the module documentation); the handshake signature is.
pub async fn served_fingerprint(
    endpoint: &Endpoint,
    timeout: Duration,
) -> Result<String, ProbeError> {
    let server_name = ServerName::try_from(endpoint.server_name.clone()).map_err(|_| {
        ProbeError::InvalidServerName {
            name: endpoint.server_name.clone(),
        }
    })?;
    let connector = TlsConnector::from(Arc::new(observing_client_config()?));
    let host = endpoint.host.as_str();
    let port = endpoint.port;
    let attempt = async {
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|source| ProbeError::Connect {
                host: host.to_owned(),
                port,
                source,
            })?;
        let tls = connector
            .connect(server_name, tcp)
            .await
            .map_err(|source| ProbeError::Handshake {
                host: host.to_owned(),
                port,
                source,
            })?;
        let (_, session) = tls.get_ref();
        session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| fingerprint_sha256(leaf.as_ref()))
            .ok_or_else(|| ProbeError::NoCertificate {
                host: host.to_owned(),
                port,
            })
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(ProbeError::Timeout {
                host: host.to_owned(),
                port,
                after: timeout,
            })
        })
}

/// A TLS client (ring provider, TLS 1.2 and 1.3) that accepts whatever
/// certificate the server presents, verifying only handshake signatures.
fn observing_client_config() -> Result<ClientConfig, ProbeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Observation, not trust: the caller compares what was served with
    // what it deployed (see `FingerprintVerifier::observing`).
    let verifier = Arc::new(FingerprintVerifier::observing(&provider));
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ProbeError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use rustls::ServerConfig;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::AsyncReadExt as _;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;
    use tokio_rustls::LazyConfigAcceptor;

    const NAME: &str = "svc.example.test";

    /// A freshly generated self-signed certificate for [`NAME`] and a TLS
    /// server configuration serving it.
    struct Served {
        fingerprint: String,
        config: Arc<ServerConfig>,
    }

    fn served_cert() -> Served {
        let generated = rcgen::generate_simple_self_signed(vec![NAME.to_owned()]).unwrap();
        let cert_der = generated.cert.der().clone();
        let key =
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(generated.key_pair.serialize_der()));
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert_der.clone()], key)
                .unwrap();
        Served {
            fingerprint: fingerprint_sha256(cert_der.as_ref()),
            config: Arc::new(config),
        }
    }

    /// A TLS server on 127.0.0.1 serving `before` for its first
    /// `switch_after` connections and `after` from then on.
    ///
    /// It records what it sees before it sends its certificate (the TCP
    /// connection, the ClientHello's SNI), so the records are complete by
    /// the time the client's handshake returns; a count of completed
    /// server-side handshakes would race with the client hanging up.
    struct TestServer {
        addr: SocketAddr,
        /// TCP connections accepted.
        connections: Arc<AtomicUsize>,
        /// The SNI of each ClientHello received (`None`: no SNI).
        sni_seen: Arc<Mutex<Vec<Option<String>>>>,
        task: JoinHandle<()>,
    }

    impl TestServer {
        async fn start(
            before: Arc<ServerConfig>,
            after: Arc<ServerConfig>,
            switch_after: usize,
        ) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let connections = Arc::new(AtomicUsize::new(0));
            let sni_seen = Arc::new(Mutex::new(Vec::new()));
            let task = tokio::spawn({
                let connections = connections.clone();
                let sni_seen = sni_seen.clone();
                async move {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else {
                            return;
                        };
                        let n = connections.fetch_add(1, Ordering::SeqCst);
                        let config = if n < switch_after {
                            before.clone()
                        } else {
                            after.clone()
                        };
                        let sni_seen = sni_seen.clone();
                        tokio::spawn(async move {
                            let acceptor =
                                LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
                            let Ok(start) = acceptor.await else {
                                return;
                            };
                            let sni = start.client_hello().server_name().map(str::to_owned);
                            sni_seen.lock().unwrap().push(sni);
                            if let Ok(mut tls) = start.into_stream(config).await {
                                // Hold the connection until the client goes.
                                let mut buf = [0u8; 64];
                                let _ = tls.read(&mut buf).await;
                            }
                        });
                    }
                }
            });
            TestServer {
                addr,
                connections,
                sni_seen,
                task,
            }
        }

        async fn serving(served: &Served) -> Self {
            Self::start(served.config.clone(), served.config.clone(), 0).await
        }

        fn endpoint(&self) -> Endpoint {
            Endpoint {
                host: "127.0.0.1".to_owned(),
                port: self.addr.port(),
                server_name: NAME.to_owned(),
            }
        }
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn fast(attempts: u32) -> ProbePolicy {
        ProbePolicy {
            attempts,
            interval: Duration::from_millis(20),
            attempt_timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn expected_certificate_is_verified() {
        let served = served_cert();
        let server = TestServer::serving(&served).await;

        let verdict = probe(&server.endpoint(), &served.fingerprint, fast(3)).await;

        assert_eq!(
            verdict,
            Verdict::Verified {
                observed: served.fingerprint.clone()
            }
        );
        assert_eq!(verdict.status(), "verified");
        assert_eq!(verdict.detail(), "verified");
        // Verified on the first attempt: no further connections.
        assert_eq!(server.connections.load(Ordering::SeqCst), 1);
        assert_eq!(
            *server.sni_seen.lock().unwrap(),
            vec![Some(NAME.to_owned())]
        );
    }

    #[tokio::test]
    async fn other_certificate_is_a_mismatch_with_what_was_served() {
        let deployed = served_cert();
        let other = served_cert();
        assert_ne!(deployed.fingerprint, other.fingerprint);
        let server = TestServer::serving(&other).await;

        let verdict = probe(&server.endpoint(), &deployed.fingerprint, fast(2)).await;

        assert_eq!(
            verdict,
            Verdict::Mismatch {
                observed: other.fingerprint.clone()
            }
        );
        assert_eq!(verdict.status(), "mismatch");
        assert_eq!(
            verdict.observed_fingerprint(),
            Some(other.fingerprint.as_str())
        );
        assert_eq!(
            verdict.detail(),
            format!("mismatch (saw {}…)", &other.fingerprint[..16])
        );
        // A mismatch is retried until the attempts run out.
        assert_eq!(server.connections.load(Ordering::SeqCst), 2);
        assert_eq!(server.sni_seen.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable_after_all_attempts() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap().port()
        };
        let endpoint = Endpoint {
            host: "127.0.0.1".to_owned(),
            port,
            server_name: NAME.to_owned(),
        };
        let policy = fast(4);
        let attempts = AtomicUsize::new(0);

        let started = Instant::now();
        let verdict = probe_with(&endpoint, &"ab".repeat(32), policy, |timeout| {
            attempts.fetch_add(1, Ordering::SeqCst);
            served_fingerprint(&endpoint, timeout)
        })
        .await;
        let elapsed = started.elapsed();

        let Verdict::Unreachable { error } = &verdict else {
            panic!("expected unreachable, got {verdict:?}");
        };
        assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
        assert!(!error.contains('\n'), "{error}");
        assert_eq!(verdict.status(), "unreachable");
        assert_eq!(verdict.observed_fingerprint(), None);
        assert_eq!(verdict.detail(), format!("unreachable ({error})"));
        assert_eq!(attempts.load(Ordering::SeqCst), 4);
        // Three pauses of 20 ms between four refused connections.
        assert!(elapsed >= Duration::from_millis(60), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    }

    #[tokio::test]
    async fn retries_until_the_server_reloads() {
        let old = served_cert();
        let new = served_cert();
        let server = TestServer::start(old.config.clone(), new.config.clone(), 1).await;

        let verdict = probe(&server.endpoint(), &new.fingerprint, fast(5)).await;

        assert_eq!(
            verdict,
            Verdict::Verified {
                observed: new.fingerprint.clone()
            }
        );
        // The first attempt saw the old certificate, the second the new one,
        // and the probe stopped there.
        assert_eq!(server.connections.load(Ordering::SeqCst), 2);
        assert_eq!(server.sni_seen.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn expected_fingerprint_ignores_case_and_colons() {
        let served = served_cert();
        let server = TestServer::serving(&served).await;
        let colon_upper = served
            .fingerprint
            .as_bytes()
            .chunks(2)
            .map(|pair| std::str::from_utf8(pair).unwrap().to_ascii_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        assert_ne!(colon_upper, served.fingerprint);

        let verdict = probe(&server.endpoint(), &colon_upper, fast(1)).await;

        assert_eq!(
            verdict,
            Verdict::Verified {
                observed: served.fingerprint.clone()
            }
        );
    }

    #[tokio::test]
    async fn ip_literal_server_name_sends_no_sni() {
        let served = served_cert();
        let server = TestServer::serving(&served).await;
        let endpoint = Endpoint {
            server_name: "127.0.0.1".to_owned(),
            ..server.endpoint()
        };

        let fingerprint = served_fingerprint(&endpoint, Duration::from_secs(5))
            .await
            .unwrap();

        assert_eq!(fingerprint, served.fingerprint);
        assert_eq!(*server.sni_seen.lock().unwrap(), vec![None]);
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        // Accepts TCP but never speaks TLS.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        let endpoint = Endpoint {
            host: "127.0.0.1".to_owned(),
            port,
            server_name: NAME.to_owned(),
        };

        let started = Instant::now();
        let err = served_fingerprint(&endpoint, Duration::from_millis(100))
            .await
            .unwrap_err();

        assert!(matches!(err, ProbeError::Timeout { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        hold.abort();
    }

    #[tokio::test]
    async fn non_tls_server_is_a_handshake_failure() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let talker = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            while let Ok((mut tcp, _)) = listener.accept().await {
                let _ = tcp
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        });
        let endpoint = Endpoint {
            host: "127.0.0.1".to_owned(),
            port,
            server_name: NAME.to_owned(),
        };

        let err = served_fingerprint(&endpoint, Duration::from_secs(5))
            .await
            .unwrap_err();

        assert!(matches!(err, ProbeError::Handshake { .. }), "{err:?}");
        talker.abort();
    }

    #[tokio::test]
    async fn invalid_server_name_is_reported_without_connecting() {
        let served = served_cert();
        let server = TestServer::serving(&served).await;
        let endpoint = Endpoint {
            server_name: "not a name".to_owned(),
            ..server.endpoint()
        };

        let verdict = probe(&endpoint, &served.fingerprint, fast(2)).await;

        assert_eq!(
            verdict,
            Verdict::Unreachable {
                error: "invalid server name `not a name`".to_owned()
            }
        );
        assert_eq!(server.connections.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn default_policy() {
        assert_eq!(
            ProbePolicy::default(),
            ProbePolicy {
                attempts: 5,
                interval: Duration::from_secs(1),
                attempt_timeout: Duration::from_secs(5),
            }
        );
    }

    #[test]
    fn endpoint_serialises_like_the_wit_record() {
        let endpoint = Endpoint {
            host: "10.0.0.1".to_owned(),
            port: 443,
            server_name: NAME.to_owned(),
        };
        let json = serde_json::to_value(&endpoint).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"host": "10.0.0.1", "port": 443, "server_name": NAME})
        );
        assert_eq!(serde_json::from_value::<Endpoint>(json).unwrap(), endpoint);
    }
}
