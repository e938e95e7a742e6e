//! A real ACME CA for tests: Let's Encrypt's Pebble (Debian package
//! `pebble`) with `pebble-challtestsrv` as its DNS server and HTTP-01
//! responder, on free loopback ports, validation on.
//!
//! [`Pebble::start`] runs `pebble-challtestsrv` (DNS on UDP+TCP, HTTP-01 on
//! a free port, management API; HTTPS-01 and TLS-ALPN-01 off; every name
//! resolves to 127.0.0.1, no AAAA) and `pebble` with a generated config:
//! free ACME and management ports, `httpPort` = the responder's port, a TLS
//! certificate for `127.0.0.1`/`localhost` signed by a throwaway CA made
//! here (Debian ships Pebble without its test certificates), `-dnsserver`
//! the challtestsrv, and `PEBBLE_VA_ALWAYS_VALID=0` and
//! `PEBBLE_VA_NOSLEEP=1`, so every challenge is really validated, at once.
//! Pebble's default nonce rejection (5 % of good nonces answered
//! `badNonce`) and authorization reuse (50 %) stay unless
//! [`PebbleOptions`] says otherwise. With `eab`, Pebble requires an external
//! account binding and knows [`EAB_KID`] / [`EAB_HMAC_KEY`] (the values of
//! Debian's example configuration).
//!
//! Starts are serialized across test processes (a lock file in the temp
//! directory) so parallel tests never pick the same free port, and a start
//! checks that the http-01 port really serves the challtestsrv's tokens.
//! Both processes are killed when the value is dropped. A missing binary
//! panics with the fix (`apt-get install pebble`): tests never skip.
//!
//! The test plays the host's part for challenges: it publishes what a
//! connector presented with [`Pebble::add_http01`] / [`Pebble::set_txt`].
//!
//! ```no_run
//! use certplane_testkit::pebble::{Pebble, PebbleOptions};
//! let pebble = Pebble::start(PebbleOptions::default());
//! // settings {"directory_url": pebble.directory_url(), ...},
//! // grant pebble.grant(), trust pebble.tls_root_pem().
//! pebble.add_http01("token", "token.thumbprint");
//! let root = pebble.issuing_root_pem(); // every leaf chains to it
//! # let _ = root;
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::json;

/// The ACME server binary.
pub const PEBBLE: &str = "pebble";

/// The challenge test server binary.
pub const CHALLTESTSRV: &str = "pebble-challtestsrv";

/// The external account binding key id Pebble knows in EAB mode.
pub const EAB_KID: &str = "kid-1";

/// Its MAC key, base64url (as a CA hands it out).
pub const EAB_HMAC_KEY: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";

/// How long [`Pebble::start`] waits for both processes to answer.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How often [`Pebble::start`] tries when a port was taken under it.
const START_ATTEMPTS: u32 = 3;

/// How to run Pebble.
#[derive(Debug, Clone, Default)]
pub struct PebbleOptions {
    /// Require an external account binding ([`EAB_KID`] / [`EAB_HMAC_KEY`]).
    pub eab: bool,
    /// `PEBBLE_WFE_NONCEREJECT`: percentage of good nonces refused with
    /// `badNonce`; `None` keeps Pebble's default (5).
    pub nonce_reject_percent: Option<u8>,
    /// `PEBBLE_AUTHZREUSE`: percentage of orders that reuse a valid
    /// authorization of the same account; `None` keeps Pebble's default
    /// (50).
    pub authz_reuse_percent: Option<u8>,
    /// Validate http-01 on this loopback port, where the test runs its own
    /// responder (the host's, or a web server an agent writes into);
    /// `pebble-challtestsrv` then serves no http-01 itself. `None`: a free
    /// port served by `pebble-challtestsrv` ([`Pebble::add_http01`]).
    pub http_port: Option<u16>,
}

/// A running Pebble and its challenge test server.
pub struct Pebble {
    dir: tempfile::TempDir,
    pebble: Child,
    challtestsrv: Child,
    acme: SocketAddr,
    management: SocketAddr,
    http01: SocketAddr,
    dns: SocketAddr,
    challtestsrv_management: SocketAddr,
    tls_root_pem: String,
    tls: Arc<rustls::ClientConfig>,
    /// http-01 is served by the test ([`PebbleOptions::http_port`]), which
    /// may start its responder only after Pebble.
    external_http01: bool,
}

impl std::fmt::Debug for Pebble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pebble")
            .field("directory_url", &self.directory_url())
            .field("http01", &self.http01)
            .field("dns", &self.dns)
            .finish()
    }
}

impl Pebble {
    /// Starts `pebble-challtestsrv` and `pebble` and waits until both
    /// answer. Panics with the reason (and the processes' output) when they
    /// do not, and with `apt-get install pebble` when they are not
    /// installed.
    pub fn start(options: PebbleOptions) -> Pebble {
        // Another test process may still bind a port between its release
        // here and the server's bind; such a start is tried again.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match Pebble::try_start(&options) {
                Ok(pebble) => return pebble,
                Err(e) if attempts < START_ATTEMPTS && e.contains("address already in use") => {
                    continue;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn try_start(options: &PebbleOptions) -> Result<Pebble, String> {
        let dir = tempfile::tempdir().expect("a temporary directory for Pebble");
        let tls_material = tls_material().expect("Pebble's TLS certificate");
        let (tls_root_pem, cert_pem, key_pem) = (
            tls_material.root_pem,
            tls_material.cert_pem,
            tls_material.key_pem,
        );
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, cert_pem).expect("write Pebble's certificate");
        std::fs::write(&key_path, key_pem).expect("write Pebble's key");

        // Free ports are found by binding and releasing them, so two tests
        // starting at once (nextest runs them as parallel processes) could
        // pick the same one. Starts are serialized across processes until
        // every port is bound by its server, and every port of one start
        // stays bound until all are picked, so the kernel cannot hand the
        // same one out twice.
        let _start_lock = start_lock();
        let mut ports = crate::ports::PortReservation::default();
        let dns = ports.udp_and_tcp();
        let http01 = match options.http_port {
            Some(port) => SocketAddr::from(([127, 0, 0, 1], port)),
            None => ports.tcp(),
        };
        let challtestsrv_http01 = match options.http_port {
            Some(_) => String::new(),
            None => http01.to_string(),
        };
        let challtestsrv_management = ports.tcp();
        let acme = ports.tcp();
        let management = ports.tcp();
        let tls_port = ports.tcp();
        drop(ports);

        let challtestsrv = spawn(
            Command::new(CHALLTESTSRV)
                .args(["-dns01", &dns.to_string()])
                .args(["-http01", &challtestsrv_http01])
                .args(["-https01", "", "-tlsalpn01", ""])
                .args(["-management", &challtestsrv_management.to_string()])
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]),
            CHALLTESTSRV,
            &dir.path().join("challtestsrv.log"),
        );

        let mut pebble_config = json!({
            "listenAddress": acme.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": cert_path,
            "privateKey": key_path,
            "httpPort": http01.port(),
            "tlsPort": tls_port.port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": options.eab,
            // Let's Encrypt's 90 days; Pebble's default of five years is
            // longer than any publicly trusted certificate may live (and
            // than the host's certificate checks accept).
            "certificateValidityPeriod": 90 * 24 * 3600,
        });
        if options.eab {
            pebble_config["externalAccountMACKeys"] = json!({ EAB_KID: EAB_HMAC_KEY });
        }
        let config_path = dir.path().join("pebble-config.json");
        std::fs::write(&config_path, json!({ "pebble": pebble_config }).to_string())
            .expect("write Pebble's configuration");

        let mut command = Command::new(PEBBLE);
        command
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &dns.to_string()])
            .env("PEBBLE_VA_ALWAYS_VALID", "0")
            .env("PEBBLE_VA_NOSLEEP", "1");
        if let Some(p) = options.nonce_reject_percent {
            command.env("PEBBLE_WFE_NONCEREJECT", p.to_string());
        }
        if let Some(p) = options.authz_reuse_percent {
            command.env("PEBBLE_AUTHZREUSE", p.to_string());
        }
        let pebble = spawn(&mut command, PEBBLE, &dir.path().join("pebble.log"));

        let tls = Arc::new(client_config(tls_material.root_der));
        let mut this = Pebble {
            dir,
            pebble,
            challtestsrv,
            acme,
            management,
            http01,
            dns,
            challtestsrv_management,
            tls_root_pem,
            tls,
            external_http01: options.http_port.is_some(),
        };
        this.wait_until_up()?;
        if options.http_port.is_none() {
            this.check_http01_responder();
        }
        Ok(this)
    }

    /// The http-01 port must be our challtestsrv's: a port taken by
    /// another server would fail every validation in confusing ways.
    fn check_http01_responder(&self) {
        let token = "certplane-testkit-self-check";
        self.add_http01(token, "ok");
        let request = format!(
            "GET /.well-known/acme-challenge/{token} HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.http01
        );
        let answer = TcpStream::connect(self.http01).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(request.as_bytes())?;
            let mut out = Vec::new();
            s.read_to_end(&mut out)?;
            Ok(out)
        });
        let served = answer
            .map_err(|e| e.to_string())
            .and_then(|raw| parse_response(&raw));
        assert!(
            matches!(&served, Ok((200, body)) if body.trim() == "ok"),
            "the http-01 port {} does not serve pebble-challtestsrv's tokens ({served:?}):\n{}",
            self.http01,
            self.logs_for_panic()
        );
        self.del_http01(token);
    }

    /// The management API of this Pebble's `pebble-challtestsrv` (a fake
    /// DNS provider publishes TXT records through it).
    pub fn challtestsrv_mgmt(&self) -> crate::challtestsrv::ChalltestsrvMgmt {
        crate::challtestsrv::ChalltestsrvMgmt::new(self.challtestsrv_management)
    }

    fn wait_until_up(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let exited = [
                (PEBBLE, self.pebble.try_wait()),
                (CHALLTESTSRV, self.challtestsrv.try_wait()),
            ];
            for (name, status) in exited {
                if let Ok(Some(status)) = status {
                    return Err(format!(
                        "{name} exited at start ({status}):\n{}",
                        self.logs_for_panic()
                    ));
                }
            }
            let up = self.get_tls(self.acme, "/dir").is_ok_and(|(s, _)| s == 200)
                && TcpStream::connect(self.management).is_ok()
                && TcpStream::connect(self.challtestsrv_management).is_ok()
                && (self.external_http01 || TcpStream::connect(self.http01).is_ok());
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "Pebble did not answer within {START_TIMEOUT:?}:\n{}",
                    self.logs_for_panic()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs_for_panic(&self) -> String {
        format!(
            "--- pebble ---\n{}\n--- pebble-challtestsrv ---\n{}",
            self.log(),
            read_log(&self.dir.path().join("challtestsrv.log"))
        )
    }

    /// The ACME directory, `https://127.0.0.1:PORT/dir`.
    pub fn directory_url(&self) -> String {
        format!("https://{}/dir", self.acme)
    }

    /// The host grant an instance needs to reach the ACME server.
    pub fn grant(&self) -> String {
        format!("https://{}", self.acme)
    }

    /// The root (PEM) that Pebble's HTTPS listeners chain to: trust it for
    /// this instance only.
    pub fn tls_root_pem(&self) -> &str {
        &self.tls_root_pem
    }

    /// The root (PEM) Pebble issues under (`GET /roots/0` on the
    /// management port; new at every start). Panics when it cannot be read.
    pub fn issuing_root_pem(&self) -> String {
        let (status, body) = self
            .get_tls(self.management, "/roots/0")
            .expect("GET /roots/0 from Pebble's management port");
        assert_eq!(status, 200, "GET /roots/0: {body}");
        body
    }

    /// Pebble's record of an issued certificate (`GET
    /// /cert-status-by-serial/<serial>` on the management port; the serial
    /// in lower-case hex without leading zeros), e.g. `{"Status":
    /// "Revoked", ...}`. Panics unless Pebble answers 200.
    pub fn cert_status(&self, serial_hex: &str) -> String {
        let path = format!("/cert-status-by-serial/{serial_hex}");
        let (status, body) = self
            .get_tls(self.management, &path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// The address Pebble validates http-01 challenges at (the
    /// challtestsrv's HTTP-01 server).
    pub fn http01_addr(&self) -> SocketAddr {
        self.http01
    }

    /// The mock DNS server (UDP and TCP).
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns
    }

    /// Serves `content` at `/.well-known/acme-challenge/<token>`.
    pub fn add_http01(&self, token: &str, content: &str) {
        self.manage("/add-http01", json!({"token": token, "content": content}));
    }

    /// Stops serving `token`.
    pub fn del_http01(&self, token: &str) {
        self.manage("/del-http01", json!({"token": token}));
    }

    /// Adds a TXT value for `host` (a trailing dot is added when missing).
    pub fn set_txt(&self, host: &str, value: &str) {
        self.manage("/set-txt", json!({"host": absolute(host), "value": value}));
    }

    /// Removes every TXT value of `host`.
    pub fn clear_txt(&self, host: &str) {
        self.manage("/clear-txt", json!({"host": absolute(host)}));
    }

    /// The address every name resolves to (A records).
    pub fn set_default_ipv4(&self, ip: &str) {
        self.manage("/set-default-ipv4", json!({"ip": ip}));
    }

    /// Pebble's output so far (requests, issuance, errors).
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("pebble.log"))
    }

    fn manage(&self, path: &str, body: serde_json::Value) {
        let body = body.to_string();
        let request = format!(
            "POST {path} HTTP/1.0\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.challtestsrv_management,
            body.len()
        );
        let answer = TcpStream::connect(self.challtestsrv_management).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(request.as_bytes())?;
            let mut out = Vec::new();
            s.read_to_end(&mut out)?;
            Ok(out)
        });
        let (status, text) = answer
            .map_err(|e| e.to_string())
            .and_then(|raw| parse_response(&raw))
            .unwrap_or_else(|e| panic!("pebble-challtestsrv {path}: {e}"));
        assert!(
            (200..300).contains(&status),
            "pebble-challtestsrv {path} {body}: HTTP {status} {text}"
        );
    }

    /// One HTTPS GET, trusting only [`Pebble::tls_root_pem`].
    fn get_tls(&self, addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
        let server_name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let connection = rustls::ClientConnection::new(self.tls.clone(), server_name)
            .map_err(|e| e.to_string())?;
        let tcp =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut stream = rustls::StreamOwned::new(connection, tcp);
        // HTTP/1.0: the answer is never chunked and ends with the connection.
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: certplane-testkit\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        match stream.read_to_end(&mut raw) {
            Ok(_) => {}
            // Go closes without close_notify; what arrived is complete.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(e) => return Err(e.to_string()),
        }
        parse_response(&raw)
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in [&mut self.pebble, &mut self.challtestsrv] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(command: &mut Command, name: &str, log: &Path) -> Child {
    let out = std::fs::File::create(log).expect("a log file");
    let err = out.try_clone().expect("a log file handle");
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    match command.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "{name} is not installed; these tests run against a real Pebble: apt-get install pebble"
        ),
        Err(e) => panic!("cannot start {name}: {e}"),
    }
}

/// An exclusive lock shared by every test process on this machine, held
/// while a Pebble starts.
fn start_lock() -> std::fs::File {
    let path = std::env::temp_dir().join("certplane-testkit-pebble-start.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", path.display()));
    file
}

fn read_log(path: &PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn absolute(host: &str) -> String {
    if host.ends_with('.') {
        host.to_string()
    } else {
        format!("{host}.")
    }
}

/// (status, body) of a raw HTTP/1.x response.
fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {head:?}"))?;
    Ok((status, body.to_string()))
}

/// Pebble's TLS identity and the root to trust for it.
struct TlsMaterial {
    root_pem: String,
    root_der: rustls::pki_types::CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

/// A throwaway CA (its PEM is the trust root) and a certificate it signed
/// for `127.0.0.1` and `localhost`, with its PKCS#8 key.
fn tls_material() -> Result<TlsMaterial, rcgen::Error> {
    let now = SystemTime::now();
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "certplane test Pebble TLS root");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = (now - Duration::from_secs(3600)).into();
    ca.not_after = (now + Duration::from_secs(30 * 86_400)).into();
    let ca_cert = ca.self_signed(&ca_key)?;

    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()])?;
    leaf.subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = (now - Duration::from_secs(3600)).into();
    leaf.not_after = (now + Duration::from_secs(30 * 86_400)).into();
    let leaf_cert = leaf.signed_by(&key, &ca_cert, &ca_key)?;
    Ok(TlsMaterial {
        root_pem: ca_cert.pem(),
        root_der: ca_cert.der().clone(),
        cert_pem: leaf_cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn client_config(root: rustls::pki_types::CertificateDer<'static>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(root)
        .expect("the TLS root is a usable trust anchor");
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}
