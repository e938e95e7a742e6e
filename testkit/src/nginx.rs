//! A real nginx (Debian package `nginx`) serving HTTPS on a free loopback
//! port, for the `nginx` target's tests: a master process with one worker
//! (so `nginx -s reload` works as in production), everything but the
//! certificate files in its own temporary directory, its certificate and
//! key read from files the test owns.
//!
//! The test grants the connector actions built from [`Nginx::test_argv`]
//! (`nginx -t` of *this* nginx) and [`Nginx::reload_argv`] (`nginx -s
//! reload`), and checks what is served with [`Nginx::served_fingerprint`]
//! (a TLS handshake). A reload is asynchronous (new workers start after
//! `nginx -s reload` returned, old ones finish their connections):
//! [`Nginx::wait_for_fingerprint`] waits, bounded, for a new certificate.
//! [`counted_argv`] wraps an action so the test can count how often it ran.
//!
//! A missing binary panics with the fix (`apt-get install nginx`): tests
//! never skip. nginx is stopped when the value is dropped.
//!
//! ```no_run
//! use certplane_testkit::nginx::{Nginx, leaf};
//! let dir = tempfile::tempdir().unwrap();
//! let first = leaf(&["www.example.test"]);
//! let (cert, key) = (dir.path().join("fullchain.pem"), dir.path().join("privkey.pem"));
//! std::fs::write(&cert, first.fullchain_pem()).unwrap();
//! std::fs::write(&key, &first.key_pem).unwrap();
//! let nginx = Nginx::start(&cert, &key);
//! assert_eq!(nginx.served_fingerprint("www.example.test").unwrap(), first.fingerprint_sha256);
//! ```

use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tls;
pub use crate::tls::fingerprint_sha256;

/// The nginx binary.
pub const NGINX: &str = "/usr/sbin/nginx";

/// How long [`Nginx::start`] waits for nginx to serve.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How often [`Nginx::start`] tries when its port was taken meanwhile.
const START_ATTEMPTS: u32 = 3;

/// A leaf certificate for tests, issued by a fresh CA of [`crate::ca`].
#[derive(Clone, Debug)]
pub struct Leaf {
    /// The leaf, PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The issuing CA's certificate, PEM.
    pub chain_pem: Vec<String>,
    /// Lower-case hex SHA-256 of the leaf's DER.
    pub fingerprint_sha256: String,
}

impl Leaf {
    /// The leaf followed by its chain, as `ssl_certificate` wants it.
    pub fn fullchain_pem(&self) -> String {
        let mut s = self.cert_pem.clone();
        for c in &self.chain_pem {
            s.push_str(c);
        }
        s
    }
}

/// A leaf for `names` (ECDSA P-256), signed by a new CA from
/// [`crate::test_ca`].
pub fn leaf(names: &[&str]) -> Leaf {
    let (ca_cert_pem, ca_key_pem) = crate::test_ca();
    let ca_key = rcgen::KeyPair::from_pem(&ca_key_pem).expect("the CA key");
    // rcgen signs with a `Certificate`; rebuilt from the CA's PEM it has the
    // same subject and key, so leaves chain to `ca_cert_pem`.
    let ca = rcgen::CertificateParams::from_ca_cert_pem(&ca_cert_pem)
        .expect("the CA certificate")
        .self_signed(&ca_key)
        .expect("the CA certificate, rebuilt");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a leaf key");
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
    if let Some(first) = names.first() {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, *first);
    }
    let cert = params.signed_by(&key, &ca, &ca_key).expect("the leaf");
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        chain_pem: vec![ca_cert_pem],
        fingerprint_sha256: fingerprint_sha256(cert.der()),
    }
}

/// `argv` wrapped so that each run appends a line to `counter` before it
/// runs `argv` itself (through `/bin/sh`, which only the test's own action
/// definitions use); [`runs`] reads the count.
pub fn counted_argv(counter: &Path, argv: &[String]) -> Vec<String> {
    let mut wrapped = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        // $0 is the counter file; "$@" the command, never re-parsed.
        r#"echo run >> "$0" && exec "$@""#.to_string(),
        counter.display().to_string(),
    ];
    wrapped.extend(argv.iter().cloned());
    wrapped
}

/// How often a [`counted_argv`] action ran.
pub fn runs(counter: &Path) -> usize {
    std::fs::read_to_string(counter)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// A running nginx master serving HTTPS on `127.0.0.1:<port>`.
pub struct Nginx {
    child: Child,
    /// Removed when nginx is gone.
    _dir: tempfile::TempDir,
    config: Config,
}

impl std::fmt::Debug for Nginx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nginx")
            .field("port", &self.config.port)
            .field("conf", &self.config.conf)
            .finish()
    }
}

impl Nginx {
    /// Starts nginx with one TLS server block (`listen 127.0.0.1:<free
    /// port> ssl`, every name) whose `ssl_certificate` is `cert_file` and
    /// `ssl_certificate_key` is `key_file` (absolute paths; both must hold
    /// a valid certificate and key), and waits until it completes a TLS
    /// handshake. Panics with nginx's log when it does not start.
    pub fn start(cert_file: &Path, key_file: &Path) -> Nginx {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} is missing; these tests run against a real nginx: apt-get install nginx"
        );
        let mut attempts = 0;
        loop {
            attempts += 1;
            match Nginx::try_start(cert_file, key_file) {
                Ok(nginx) => return nginx,
                Err(e) if attempts < START_ATTEMPTS && e.contains("Address already in use") => {
                    continue;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn try_start(cert_file: &Path, key_file: &Path) -> Result<Nginx, String> {
        let dir = tempfile::tempdir().expect("a temporary directory for nginx");
        // A master running as root switches its workers to `user`; naming
        // root keeps them able to use this root-owned directory. (nginx
        // ignores the directive, with a warning, when not run as root.)
        let as_root = std::fs::metadata(dir.path()).is_ok_and(|m| m.uid() == 0);
        let port = crate::ports::PortReservation::default().tcp().port();
        let config = Config {
            dir: dir.path().to_path_buf(),
            conf: dir.path().join("nginx.conf"),
            port,
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            as_root,
        };
        config.write(true);
        let stderr =
            std::fs::File::create(dir.path().join("nginx.stderr")).expect("nginx's stderr file");
        let child = Command::new(NGINX)
            .args(config.base_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {NGINX}: {e}"));
        let mut nginx = Nginx {
            child,
            _dir: dir,
            config,
        };
        nginx.wait_until_serving()?;
        Ok(nginx)
    }

    fn wait_until_serving(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "nginx exited at start ({status}):\n{}",
                    self.logs()
                ));
            }
            let pid_written = self.config.dir.join("nginx.pid").exists();
            if pid_written && self.served_fingerprint("start.invalid").is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "nginx did not serve TLS on 127.0.0.1:{} within {START_TIMEOUT:?}:\n{}",
                    self.config.port,
                    self.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The TLS port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.config.port
    }

    /// nginx's configuration file.
    pub fn conf_path(&self) -> &Path {
        &self.config.conf
    }

    /// `[/usr/sbin/nginx, -p, <dir>, -c, <conf>, -e, <log>, -t]`: the
    /// configuration test of this nginx.
    pub fn test_argv(&self) -> Vec<String> {
        let mut argv = vec![NGINX.to_string()];
        argv.extend(self.config.base_args());
        argv.push("-t".into());
        argv
    }

    /// `[..., -s, reload]`: the reload of this nginx.
    pub fn reload_argv(&self) -> Vec<String> {
        let mut argv = vec![NGINX.to_string()];
        argv.extend(self.config.base_args());
        argv.extend(["-s".to_string(), "reload".to_string()]);
        argv
    }

    /// Drops the TLS server block from the configuration (as an operator
    /// does before removing a certificate) and reloads nginx; then nothing
    /// listens once the old workers are gone.
    pub fn drop_tls_server(&self) {
        self.config.write(false);
        let reload = self.reload_argv();
        let out = Command::new(&reload[0])
            .args(&reload[1..])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {NGINX} -s reload: {e}"));
        assert!(
            out.status.success(),
            "nginx -s reload: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
    }

    /// How many reloads (SIGHUP) nginx logged so far.
    pub fn reloads(&self) -> usize {
        self.error_log()
            .lines()
            .filter(|l| l.contains("signal 1 (SIGHUP) received"))
            .count()
    }

    /// nginx's error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.config.error_log_path()).unwrap_or_default()
    }

    /// The error log and what the master wrote to stderr, for panics.
    pub fn logs(&self) -> String {
        format!(
            "--- nginx error.log ---\n{}\n--- nginx stderr ---\n{}",
            self.error_log(),
            std::fs::read_to_string(self.config.dir.join("nginx.stderr")).unwrap_or_default()
        )
    }

    /// One TLS handshake with `server_name` as SNI: the SHA-256 fingerprint
    /// (lower-case hex) of the leaf nginx presents. The certificate is not
    /// validated (this observes what is served); the handshake signature is.
    pub fn served_fingerprint(&self, server_name: &str) -> Result<String, String> {
        tls::served_fingerprint(
            std::net::SocketAddr::from(([127, 0, 0, 1], self.config.port)),
            server_name,
            Duration::from_secs(2),
            Duration::from_secs(5),
        )
    }

    /// Waits (at most `timeout`) until a handshake with `server_name`
    /// presents the leaf `fingerprint`: after a reload, new workers take a
    /// moment. Returns what was last served (or the last error) on timeout.
    pub fn wait_for_fingerprint(
        &self,
        server_name: &str,
        fingerprint: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let served = self.served_fingerprint(server_name);
            if served.as_deref() == Ok(fingerprint) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "after {timeout:?} nginx still serves {served:?}, not {fingerprint}"
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits (at most `timeout`) until nothing accepts connections on the
    /// TLS port any more (after [`Nginx::drop_tls_server`]).
    pub fn wait_until_closed(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.config.port));
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            if Instant::now() > deadline {
                return Err(format!(
                    "{addr} still accepts connections after {timeout:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Ok(())
    }
}

/// Where one nginx keeps everything, and its configuration.
#[derive(Debug)]
struct Config {
    dir: PathBuf,
    conf: PathBuf,
    port: u16,
    cert_file: PathBuf,
    key_file: PathBuf,
    as_root: bool,
}

impl Config {
    /// `-p <dir> -c <conf> -e <error log>`: every invocation of this nginx
    /// (the master, `-t`, `-s`) names its own prefix, configuration and
    /// start-up error log, never the system's.
    fn base_args(&self) -> Vec<String> {
        vec![
            "-p".into(),
            self.dir.display().to_string(),
            "-c".into(),
            self.conf.display().to_string(),
            "-e".into(),
            self.error_log_path().display().to_string(),
        ]
    }

    fn error_log_path(&self) -> PathBuf {
        self.dir.join("error.log")
    }

    /// Writes the configuration, with the TLS server block or without any
    /// (`http` left out entirely, so nothing listens).
    fn write(&self, tls_server: bool) {
        let d = self.dir.display().to_string();
        let user = if self.as_root {
            "user root root;\n"
        } else {
            ""
        };
        let http = if tls_server {
            format!(
                r#"http {{
    access_log off;
    client_body_temp_path "{d}/client_body";
    proxy_temp_path "{d}/proxy";
    fastcgi_temp_path "{d}/fastcgi";
    uwsgi_temp_path "{d}/uwsgi";
    scgi_temp_path "{d}/scgi";
    default_type text/plain;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name _;
        ssl_certificate "{cert}";
        ssl_certificate_key "{key}";
        return 200 "ok\n";
    }}
}}
"#,
                port = self.port,
                cert = self.cert_file.display(),
                key = self.key_file.display(),
            )
        } else {
            String::new()
        };
        let conf = format!(
            r#"daemon off;
master_process on;
worker_processes 1;
{user}pid "{d}/nginx.pid";
error_log "{d}/error.log" notice;
events {{ worker_connections 64; }}
{http}"#
        );
        std::fs::write(&self.conf, conf).expect("write nginx.conf");
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (a SIGKILL would leave them
        // running, holding the port). Sent with kill(1), not `nginx -s
        // stop`, which parses the configuration first and fails once a
        // test removed a certificate file it names.
        let term = Command::new("/bin/kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if term.is_ok_and(|s| s.success()) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
