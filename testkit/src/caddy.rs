//! A real Caddy 2 (Debian package `caddy`) for the `caddy` target's tests:
//! `caddy run` with a JSON configuration of its own, an admin API and an
//! HTTPS server on free loopback ports, everything else in its own
//! temporary directory.
//!
//! The configuration keeps Caddy off the network and the disk beyond its
//! directory: no Caddyfile, no autosave (`admin.config.persist: false`),
//! `HOME`, `XDG_DATA_HOME`, `XDG_CONFIG_HOME` and the TLS `storage` inside
//! the temporary directory, automatic HTTPS disabled (no ACME, no HTTP
//! redirect listener), one automation policy without on-demand issuance or
//! OCSP stapling, HTTP/3 off (no UDP port). The HTTPS server's one TLS
//! connection policy picks certificates by tag
//! (`certificate_selection.any_tag`, [`CaddyOptions::select_tags`]), as an
//! operator's configuration for certplane does; it answers every request
//! with `served by caddy`.
//!
//! [`Caddy::start`] waits until the admin API answers and the HTTPS port
//! accepts; it panics with Caddy's log when Caddy does not come up, and
//! with `apt-get install caddy` when it is not installed: tests never skip.
//! Caddy is killed when the value is dropped (or at [`Caddy::stop`]).
//! [`Caddy::served_fingerprint`] observes what a TLS handshake presents;
//! [`AdminClient`] talks to the admin API directly, and [`AdminProxy`] sits
//! in front of it to change the configuration between a connector's read
//! and its write.
//!
//! ```no_run
//! use certplane_testkit::caddy::Caddy;
//! let caddy = Caddy::start();
//! // settings {"admin_url": caddy.admin_url()}, grant caddy.grant()
//! let certificates = caddy.admin().get_json("/config/apps/tls/certificates");
//! # let _ = certificates;
//! let served = caddy.served_fingerprint("www.example.test");
//! # let _ = served;
//! ```

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::tls;
pub use crate::tls::fingerprint_sha256;

/// The Caddy binary.
pub const CADDY: &str = "caddy";

/// How long [`Caddy::start`] waits for Caddy to answer.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How often [`Caddy::start`] tries when a port was taken under it.
const START_ATTEMPTS: u32 = 3;

/// Timeout of one admin request or handshake made by the kit.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How to run Caddy.
#[derive(Debug, Clone)]
pub struct CaddyOptions {
    /// The tags the HTTPS server's TLS connection policy selects
    /// certificates by (`any_tag`). Default: `["certplane"]`.
    pub select_tags: Vec<String>,
}

impl Default for CaddyOptions {
    fn default() -> Self {
        CaddyOptions {
            select_tags: vec!["certplane".into()],
        }
    }
}

/// A running Caddy.
pub struct Caddy {
    dir: tempfile::TempDir,
    child: Option<Child>,
    admin: SocketAddr,
    https: SocketAddr,
}

impl std::fmt::Debug for Caddy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caddy")
            .field("admin", &self.admin)
            .field("https", &self.https)
            .finish()
    }
}

impl Caddy {
    /// Starts Caddy with [`CaddyOptions::default`].
    pub fn start() -> Caddy {
        Caddy::start_with(CaddyOptions::default())
    }

    /// Starts Caddy and waits until its admin API answers and its HTTPS
    /// port accepts connections. Panics with Caddy's log when it does not.
    pub fn start_with(options: CaddyOptions) -> Caddy {
        // Another test process may bind a port between its release here and
        // Caddy's bind; such a start is tried again.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match Caddy::try_start(&options) {
                Ok(caddy) => return caddy,
                Err(e) if attempts < START_ATTEMPTS && e.contains("address already in use") => {
                    continue;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn try_start(options: &CaddyOptions) -> Result<Caddy, String> {
        let dir = tempfile::tempdir().expect("a temporary directory for Caddy");
        // Starts are serialized across test processes until Caddy holds its
        // ports, and one start's ports stay bound until all are picked, so
        // two starts never pick the same port.
        let _start_lock = start_lock();
        let mut ports = crate::ports::PortReservation::default();
        let admin = ports.tcp();
        let https = ports.tcp();
        // Nothing listens there (automatic HTTPS is off); set so Caddy
        // never considers port 80.
        let http = ports.tcp();
        drop(ports);

        let config = json!({
            "admin": {"listen": admin.to_string(), "config": {"persist": false}},
            "storage": {"module": "file_system", "root": dir.path().join("storage")},
            "logging": {"logs": {"default": {"level": "INFO"}}},
            "apps": {
                "http": {
                    "http_port": http.port(),
                    "https_port": https.port(),
                    "servers": {"certplane": {
                        "listen": [https.to_string()],
                        "protocols": ["h1", "h2"],
                        "automatic_https": {"disable": true},
                        "tls_connection_policies": [{
                            "certificate_selection": {"any_tag": options.select_tags},
                        }],
                        "routes": [{"handle": [{
                            "handler": "static_response",
                            "body": "served by caddy",
                        }]}],
                    }},
                },
                "tls": {"automation": {"policies": [{
                    "on_demand": false,
                    "disable_ocsp_stapling": true,
                }]}},
            },
        });
        let config_path = dir.path().join("caddy.json");
        std::fs::write(&config_path, config.to_string()).expect("write Caddy's configuration");

        let log = std::fs::File::create(dir.path().join("caddy.log")).expect("a log file");
        let err = log.try_clone().expect("a log file handle");
        let child = Command::new(CADDY)
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "{CADDY} is not installed; these tests run against a real Caddy: apt-get install caddy"
            ),
            Err(e) => panic!("cannot start {CADDY}: {e}"),
        };
        let mut caddy = Caddy {
            dir,
            child: Some(child),
            admin,
            https,
        };
        caddy.wait_until_up()?;
        Ok(caddy)
    }

    fn wait_until_up(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("caddy exited at start ({status}):\n{}", self.log()));
            }
            let up = self
                .admin()
                .request("GET", "/config/", None)
                .is_ok_and(|(status, _)| status == 200)
                && TcpStream::connect(self.https).is_ok();
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "caddy did not answer within {START_TIMEOUT:?}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The admin API, `http://127.0.0.1:PORT`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// The host grant an instance needs to reach the admin API.
    pub fn grant(&self) -> String {
        self.admin_url()
    }

    /// The admin API's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// A client of the admin API.
    pub fn admin(&self) -> AdminClient {
        AdminClient { addr: self.admin }
    }

    /// The port of the HTTPS server.
    pub fn https_port(&self) -> u16 {
        self.https.port()
    }

    /// Caddy's whole configuration (`GET /config/`); panics unless Caddy
    /// answers.
    pub fn config(&self) -> Value {
        self.admin().get_json("/config/")
    }

    /// `apps.tls.certificates` (`null` when absent).
    pub fn certificates(&self) -> Value {
        self.admin().get_json("/config/apps/tls/certificates")
    }

    /// The entries of one loader (`load_pem`, `load_files`) carrying `tag`.
    pub fn entries_tagged(&self, loader: &str, tag: &str) -> Vec<Value> {
        self.certificates()
            .get(loader)
            .and_then(Value::as_array)
            .map(|entries| {
                entries
                    .iter()
                    .filter(|e| {
                        e["tags"]
                            .as_array()
                            .is_some_and(|t| t.iter().any(|t| t.as_str() == Some(tag)))
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One TLS handshake with `server_name` as SNI: the SHA-256 fingerprint
    /// (lower-case hex) of the leaf Caddy presents. The certificate is not
    /// validated (this observes what is served); the handshake signature is.
    pub fn served_fingerprint(&self, server_name: &str) -> Result<String, String> {
        tls::served_fingerprint(self.https, server_name, IO_TIMEOUT, IO_TIMEOUT)
    }

    /// Caddy's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("caddy.log")).unwrap_or_default()
    }

    /// Caddy's own directory (configuration, storage, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills Caddy now: its admin API and HTTPS port refuse connections
    /// afterwards.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A client of one Caddy's admin API (HTTP/1.0 over a fresh connection per
/// request, `Host` the admin address, JSON bodies).
#[derive(Debug, Clone)]
pub struct AdminClient {
    addr: SocketAddr,
}

impl AdminClient {
    /// One request: (status, body).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String), String> {
        self.request_with(method, path, body, &[])
    }

    /// One request with extra headers, e.g. `("Cache-Control",
    /// "must-revalidate")`.
    pub fn request_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, String), String> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut request = format!(
            "{method} {path} HTTP/1.0\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        let raw = exchange(self.addr, request.as_bytes())
            .map_err(|e| format!("{method} {path} to Caddy's admin API: {e}"))?;
        let (status, _, body) = parse_response(&raw)?;
        Ok((status, body))
    }

    /// `GET path` as JSON; panics unless Caddy answers 200 with JSON.
    pub fn get_json(&self, path: &str) -> Value {
        let (status, body) = self
            .request("GET", path, None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// A request that must succeed (2xx); panics with Caddy's answer
    /// otherwise.
    pub fn must(&self, method: &str, path: &str, body: Option<&Value>) {
        let (status, text) = self
            .request(method, path, body)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            (200..300).contains(&status),
            "{method} {path}: HTTP {status}: {text}"
        );
    }
}

/// One request a proxy received, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxied {
    /// The method.
    pub method: String,
    /// The request target (path and query).
    pub path: String,
    /// Caddy's status; 0 when the request was not forwarded.
    pub status: u16,
    /// Whether the client got the answer.
    pub answered: bool,
}

/// What an [`AdminProxy`] does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyAction {
    /// Forward it and pass the answer back.
    Forward,
    /// Close the client's connection without forwarding (the request is
    /// lost before Caddy sees it).
    DropRequest,
    /// Forward it, then close the client's connection without the answer
    /// (Caddy applied it; the client cannot know).
    DropAnswer,
}

/// A proxy in front of one Caddy's admin API that runs a hook before it
/// forwards each request, so a test can change the configuration between a
/// connector's read and its write, or lose a request or its answer
/// ([`ProxyAction`]). It forwards requests as they came (one per
/// connection; `Host` rewritten to Caddy's admin address, which Caddy
/// checks) and Caddy's answers as they went (chunked bodies and their
/// trailers included), and records them. Stops when dropped.
pub struct AdminProxy {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Proxied>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for AdminProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminProxy")
            .field("addr", &self.addr)
            .finish()
    }
}

/// The hook of an [`AdminProxy`]: called with the method and path of each
/// request before it is forwarded, it says what to do with it.
pub type BeforeForward = dyn Fn(&str, &str) -> ProxyAction + Send + Sync;

impl AdminProxy {
    /// Starts a proxy to `caddy`'s admin API on a free loopback port.
    pub fn start<F>(caddy: &Caddy, before: F) -> AdminProxy
    where
        F: Fn(&str, &str) -> ProxyAction + Send + Sync + 'static,
    {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("a loopback port for the proxy");
        let addr = listener.local_addr().expect("its address");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let upstream = caddy.admin_addr();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let before: Arc<BeforeForward> = Arc::new(before);
        let thread = {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            if let Err(e) = forward(client, upstream, before.as_ref(), &log) {
                                tracing::warn!("caddy admin proxy: {e}");
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(e) => tracing::warn!("caddy admin proxy: accept: {e}"),
                    }
                }
            })
        };
        AdminProxy {
            addr,
            log,
            stop,
            thread: Some(thread),
        }
    }

    /// The proxy's URL, `http://127.0.0.1:PORT` (a connector's `admin_url`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The host grant an instance needs to reach the proxy.
    pub fn grant(&self) -> String {
        self.url()
    }

    /// The requests forwarded so far, in order.
    pub fn requests(&self) -> Vec<Proxied> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for AdminProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Forwards the one request of `client` to `upstream` and the answer back.
fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    before: &BeforeForward,
    log: &Mutex<Vec<Proxied>>,
) -> Result<(), String> {
    client.set_nonblocking(false).map_err(|e| e.to_string())?;
    client
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let (head, mut body) = read_head(&mut client)?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut forwarded = format!("{request_line}\r\nHost: {upstream}\r\nConnection: close\r\n");
    let mut length = 0;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let name = name.trim();
        if name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case("connection") {
            continue;
        }
        if name.eq_ignore_ascii_case("content-length") {
            length = value
                .trim()
                .parse::<usize>()
                .map_err(|e| format!("Content-Length of {method} {path}: {e}"))?;
        }
        forwarded.push_str(line);
        forwarded.push_str("\r\n");
    }
    forwarded.push_str("\r\n");
    while body.len() < length {
        let mut buf = [0u8; 8192];
        let n = client.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("{method} {path}: the client closed mid-body"));
        }
        body.extend_from_slice(&buf[..n]);
    }
    let action = before(&method, &path);
    let record = |status: u16, answered: bool| {
        log.lock().unwrap_or_else(|p| p.into_inner()).push(Proxied {
            method: method.clone(),
            path: path.clone(),
            status,
            answered,
        });
    };
    if action == ProxyAction::DropRequest {
        record(0, false);
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    let mut request = forwarded.into_bytes();
    request.extend_from_slice(&body);
    let answer = exchange(upstream, &request).map_err(|e| format!("{method} {path}: {e}"))?;
    let status = parse_response(&answer).map(|(s, _, _)| s).unwrap_or(0);
    let answered = action == ProxyAction::Forward;
    record(status, answered);
    if answered {
        client.write_all(&answer).map_err(|e| e.to_string())?;
    }
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}

/// The request head (up to the blank line) and what followed it.
fn read_head(stream: &mut TcpStream) -> Result<(String, Vec<u8>), String> {
    let mut data = Vec::new();
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).into_owned();
            return Ok((head, data[end + 4..].to_vec()));
        }
        let mut buf = [0u8; 8192];
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the client closed before the end of its request head".into());
        }
        data.extend_from_slice(&buf[..n]);
    }
}

/// Sends `request` on a new connection to `addr` and reads the answer to
/// the end of the connection.
///
/// Caddy replaces its admin server at every configuration change and
/// closes the old one's listening socket; a connection still queued there
/// is reset before any byte of an answer (the request never reached a
/// handler). Such a connection is tried again, a few times.
fn exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match exchange_once(addr, request) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) && attempt < 5 =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn exchange_once(addr: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(request)?;
    let mut out = Vec::new();
    match stream.read_to_end(&mut out) {
        Ok(_) => Ok(out),
        // Part of an answer arrived: not the case above, report it.
        Err(e) if !out.is_empty() => Err(std::io::Error::other(format!(
            "{e} after {} bytes of the answer",
            out.len()
        ))),
        Err(e) => Err(e),
    }
}

/// (status, head, body) of a raw HTTP/1.x response (the body as sent:
/// chunked bodies are not decoded).
fn parse_response(raw: &[u8]) -> Result<(u16, String, String), String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {head:?}"))?;
    Ok((status, head.to_string(), body.to_string()))
}

/// An exclusive lock shared by every test process on this machine, held
/// while a Caddy starts.
fn start_lock() -> std::fs::File {
    let path: PathBuf = std::env::temp_dir().join("certplane-testkit-caddy-start.lock");
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
