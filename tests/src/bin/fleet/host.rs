//! The host under test: a release `certplane serve` as a child process on a
//! fresh database (SQLite in a temporary directory, or a PostgreSQL
//! database created for the run and dropped after), and what `/proc` says
//! about a process.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use certplane_client::{ApiClient, ClientOptions, Trust};
use sqlx::Connection as _;

/// The bootstrap token the host is configured with.
pub const BOOTSTRAP_TOKEN: &str = "fleet-bootstrap-token";

/// The host's pid, for the watchdog that kills it when the run overstays.
pub static HOST_PID: AtomicU32 = AtomicU32::new(0);

/// How the host is started.
pub struct HostOptions {
    pub binary: PathBuf,
    pub tls: bool,
    /// PostgreSQL admin URL; `None`: SQLite.
    pub postgres: Option<String>,
    /// Registrations per second and burst from one source address: every
    /// simulated agent comes from 127.0.0.1, standing for a machine each.
    pub per_address: (u32, u32),
}

pub struct Host {
    child: tokio::process::Child,
    pub pid: u32,
    pub base_url: String,
    pub trust: Option<Trust>,
    database: Option<PgDatabase>,
    _data: tempfile::TempDir,
}

/// A database created for the run, dropped after it.
struct PgDatabase {
    admin_url: String,
    name: String,
}

impl Host {
    pub async fn start(options: &HostOptions) -> anyhow::Result<Host> {
        let data = tempfile::tempdir()?;
        let plugins = data.path().join("plugins");
        std::fs::create_dir(&plugins)?;
        let port = free_port()?;
        let database = match &options.postgres {
            Some(admin) => Some(PgDatabase::create(admin).await?),
            None => None,
        };
        let mut command = tokio::process::Command::new(&options.binary);
        command
            .arg("serve")
            .env("CERTPLANE_DATA_DIR", data.path())
            .env("CERTPLANE_LISTEN", format!("127.0.0.1:{port}"))
            .env("CERTPLANE_PLUGIN_DIR", &plugins)
            .env("CERTPLANE_TLS__PLAIN_HTTP", (!options.tls).to_string())
            .env(
                "CERTPLANE_AGENTS__BOOTSTRAP_TOKENS",
                format!("[\"{BOOTSTRAP_TOKEN}\"]"),
            )
            .env(
                "CERTPLANE_AGENTS__REGISTRATION_PER_ADDRESS_PER_SECOND",
                options.per_address.0.to_string(),
            )
            .env(
                "CERTPLANE_AGENTS__REGISTRATION_PER_ADDRESS_BURST",
                options.per_address.1.to_string(),
            )
            .env("CERTPLANE_LOG__LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(data.path().join("host.stdout"))?)
            .stderr(std::fs::File::create(data.path().join("host.stderr"))?)
            .kill_on_drop(true);
        if let Some(db) = &database {
            command.env("CERTPLANE_DATABASE_URL", db.url()?);
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", options.binary.display()))?;
        let pid = child.id().context("the host exited at once")?;
        HOST_PID.store(pid, Ordering::SeqCst);
        let scheme = if options.tls { "https" } else { "http" };
        let base_url = format!("{scheme}://127.0.0.1:{port}");
        let mut host = Host {
            child,
            pid,
            base_url,
            trust: None,
            database,
            _data: data,
        };
        host.wait_ready(options.tls).await?;
        Ok(host)
    }

    /// Waits until the API answers (the development certificate, when TLS,
    /// exists by then).
    async fn wait_ready(&mut self, tls: bool) -> anyhow::Result<()> {
        let cert = self._data.path().join("tls").join("dev-cert.pem");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the host exited with {status}; see {}",
                    self.stderr_path().display()
                );
            }
            if !tls || cert.exists() {
                let trust = tls.then(|| Trust::CaFile(cert.clone()));
                let client = ApiClient::new(ClientOptions {
                    base_url: self.base_url.clone(),
                    api_key: String::new(),
                    trust: trust.clone(),
                    timeout: Duration::from_secs(5),
                    user_agent: "fleet".into(),
                })?;
                if client.get("/openapi.json", &[]).await.is_ok() {
                    self.trust = trust;
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("the host did not answer within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn stderr_path(&self) -> PathBuf {
        self._data.path().join("host.stderr")
    }

    pub fn usage(&self) -> anyhow::Result<Usage> {
        Usage::of(&self.pid.to_string())
    }

    /// Stops the host (SIGTERM, then SIGKILL after 15 s) and drops its
    /// PostgreSQL database.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: kill(2) on the pid of our own child, which has not been
        // reaped yet (so the pid cannot have been reused).
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            self.child.kill().await?;
        }
        HOST_PID.store(0, Ordering::SeqCst);
        if let Some(db) = self.database.take() {
            db.drop_it().await?;
        }
        Ok(())
    }

    /// The host's warnings and errors, for the report when something failed.
    pub fn stderr_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.stderr_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl PgDatabase {
    async fn create(admin_url: &str) -> anyhow::Result<PgDatabase> {
        let name = format!("certplane_fleet_{}", std::process::id());
        let mut conn = sqlx::PgConnection::connect(admin_url)
            .await
            .with_context(|| format!("PostgreSQL at {admin_url}"))?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        Ok(PgDatabase {
            admin_url: admin_url.to_owned(),
            name,
        })
    }

    fn url(&self) -> anyhow::Result<String> {
        let mut url = url::Url::parse(&self.admin_url)?;
        url.set_path(&self.name);
        Ok(url.to_string())
    }

    async fn drop_it(self) -> anyhow::Result<()> {
        let mut conn = sqlx::PgConnection::connect(&self.admin_url).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await?;
        Ok(())
    }
}

/// A process's memory, CPU time and open files, from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Resident set now, KiB.
    pub rss_kib: u64,
    /// Peak resident set, KiB.
    pub hwm_kib: u64,
    /// User plus system CPU time.
    pub cpu: Duration,
    /// Open file descriptors (sockets included).
    pub fds: usize,
}

impl Usage {
    /// `pid` is a number or `self`.
    pub fn of(pid: &str) -> anyhow::Result<Usage> {
        let proc = Path::new("/proc").join(pid);
        let status = std::fs::read_to_string(proc.join("status"))?;
        let kib = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        let stat = std::fs::read_to_string(proc.join("stat"))?;
        // Fields after the parenthesised command name; utime and stime are
        // the 14th and 15th fields of the whole line.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| -> u64 { fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0) };
        // SAFETY: sysconf only reads a configuration value.
        let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let cpu_ticks = ticks(11) + ticks(12);
        let fds = std::fs::read_dir(proc.join("fd"))
            .map(|d| d.count())
            .unwrap_or(0);
        Ok(Usage {
            rss_kib: kib("VmRSS:"),
            hwm_kib: kib("VmHWM:"),
            cpu: Duration::from_millis(cpu_ticks * 1000 / per_sec),
            fds,
        })
    }
}
