//! The host's persistent state: schema, migrations and the repository.
//!
//! One API, two backends, chosen by the database URL:
//!
//! * `sqlite://PATH?mode=rwc` (or `sqlite::memory:`): embedded SQLite, for a
//!   single host process. WAL mode, a busy timeout, one writer connection and
//!   a pool of readers.
//! * `postgres://USER@HOST:PORT/DATABASE`: PostgreSQL, for several host
//!   replicas. Claims use `FOR UPDATE SKIP LOCKED`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), certplane_host::store::StoreError> {
//! use certplane_host::store::{JobType, NewJob, Store};
//! let store = Store::connect("sqlite://certplane.db?mode=rwc").await?;
//! store.migrate().await?;
//! store.create_job(NewJob::new(JobType::Revocation)).await?;
//! for job in store.claim_pending_jobs(Some(JobType::Revocation), 10).await? {
//!     let lease = job.lease().expect("claimed jobs are leased");
//!     store.complete_job(&lease).await?;
//! }
//! # Ok(()) }
//! ```
//!
//! See `docs/store.md` for how the host's services use it. Method groups
//! live in `repo/` (one file per aggregate); the claim SQL is in
//! `sqlite/claims.rs` and `postgres/claims.rs`; the job state machine in
//! `job_state.rs`.

pub mod codec;
mod error;
mod group_commit;
pub mod job_state;
pub mod migrate;
pub mod models;
mod postgres;
mod repo;
mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgPool, SqlitePool};

pub use codec::{ParseEnumError, now};
pub use error::{BackendKind, StoreError};
pub use migrate::{MigrationEntry, MigrationReport, MigrationState, MigrationStatus};
pub use models::*;
pub use repo::certificates::CertificateCreate;
pub use repo::challenges::{ChallengeProgress, ChallengeRow, NewChallenge};
pub use repo::claims::HostClaimed;
pub use repo::host_meta::BOOTSTRAP_ADMIN_META;
pub use repo::inventory::InventoryFilter;
pub use repo::job_inputs::{DeploymentInputs, IssuanceInputs, JobInputs};
pub use repo::notices::{AlertChange, Notice, SendWhen, deployment_key, verification_key};
pub use repo::outcomes::{Committed, Guard, JobEnd, Outcome};
pub use repo::reclaim::Reclaimed;
pub use repo::renewals::RenewNow;
pub use repo::signals::{Received, SignalListener, WAKE_CHANNEL};

/// Result type of the store.
pub type StoreResult<T> = Result<T, StoreError>;

/// Exponential backoff for failed jobs and notifications:
/// `min(cap, base * 2^(attempts-1))`, with ±10 % jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failed attempt.
    pub base: Duration,
    /// Upper bound.
    pub cap: Duration,
}

impl Backoff {
    /// A connector's retry time (a rate limit's Retry-After) cut to the
    /// retry cap: a hint cannot park work for longer than the operator's
    /// own backoff ever would.
    pub fn cap_retry_at(
        &self,
        retry_at: Option<chrono::DateTime<chrono::Utc>>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        let cap = chrono::Duration::from_std(self.cap).unwrap_or(chrono::Duration::hours(1));
        retry_at.map(|at| at.min(now + cap))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(30),
            cap: Duration::from_secs(3600),
        }
    }
}

/// Tunables of a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Lease owner written by this store's claims (one per host replica).
    /// Default: `host-<uuid v7>`.
    pub instance_id: String,
    /// How long a claim's lease lasts before the reaper may take it back.
    pub lease_duration: Duration,
    /// Retry backoff of failed jobs and notifications.
    pub backoff: Backoff,
    /// Maximum pooled connections (PostgreSQL pool / SQLite readers).
    pub max_connections: u32,
    /// How long to wait for a connection (also the connect timeout).
    pub acquire_timeout: Duration,
    /// SQLite: how long a writer waits for another process's lock.
    pub busy_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            instance_id: format!("host-{}", uuid::Uuid::now_v7()),
            lease_duration: Duration::from_secs(300),
            backoff: Backoff::default(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            busy_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Clone)]
pub(crate) enum Backend {
    Sqlite(sqlite::SqliteBackend),
    Postgres(postgres::PgBackend),
}

/// Borrowed access to the underlying pool, for tests, benchmarks and ad-hoc
/// tooling. Services should use the typed methods instead.
#[derive(Debug, Clone, Copy)]
pub enum PoolRef<'a> {
    /// SQLite writer pool (one connection).
    Sqlite(&'a SqlitePool),
    /// PostgreSQL pool.
    Postgres(&'a PgPool),
}

/// Handle to the database. Cheap to clone (pools are shared).
#[derive(Clone)]
pub struct Store {
    pub(crate) backend: Backend,
    pub(crate) options: Arc<StoreOptions>,
    pub(crate) counts: Arc<OperationCounts>,
}

/// Database operations this process ran through a [`Store`] (each one
/// transaction: a single statement or an explicit transaction), for the
/// `certplane_store_transactions_total` metric and benchmarks.
#[derive(Debug, Default)]
pub struct OperationCounts {
    reads: std::sync::atomic::AtomicU64,
    writes: std::sync::atomic::AtomicU64,
}

impl OperationCounts {
    pub(crate) fn read(&self) {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn write(&self) {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// (reads, writes) so far.
    pub fn get(&self) -> (u64, u64) {
        (
            self.reads.load(std::sync::atomic::Ordering::Relaxed),
            self.writes.load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend_kind())
            .field("instance_id", &self.options.instance_id)
            .finish()
    }
}

impl Store {
    /// Opens the database named by `url` with default options. Does not
    /// migrate: call [`Store::migrate`] (or [`Store::check_schema`]).
    pub async fn connect(url: &str) -> StoreResult<Store> {
        Self::connect_with(url, StoreOptions::default()).await
    }

    /// Opens the database named by `url` (`sqlite:` or `postgres:`/
    /// `postgresql:`), checking that it can be reached.
    pub async fn connect_with(url: &str, options: StoreOptions) -> StoreResult<Store> {
        let trimmed = url.trim();
        let backend = if trimmed.starts_with("sqlite:") {
            Backend::Sqlite(sqlite::SqliteBackend::connect(trimmed, &options).await?)
        } else if trimmed.starts_with("postgres:") || trimmed.starts_with("postgresql:") {
            Backend::Postgres(postgres::PgBackend::connect(trimmed, &options).await?)
        } else {
            return Err(StoreError::InvalidUrl {
                url: error::redact_url(trimmed),
                reason: "unknown scheme".into(),
            });
        };
        Ok(Store {
            backend,
            options: Arc::new(options),
            counts: Arc::default(),
        })
    }

    /// Database operations (reads, writes) this process has run through
    /// this store and its clones, each one transaction.
    pub fn operation_counts(&self) -> (u64, u64) {
        self.counts.get()
    }

    /// The group committer: (transactions it committed, writes in them:
    /// job outcomes, and on SQLite certificate creates and host job claims)
    /// so far; `None` if it could not start.
    pub fn grouped_commits(&self) -> Option<(u64, u64)> {
        self.group_committer().map(|g| g.counts())
    }

    /// The group committer job outcomes go through, if running.
    pub(crate) fn group_committer(&self) -> Option<&group_commit::GroupCommit> {
        match &self.backend {
            Backend::Sqlite(b) => b.group.as_ref(),
            Backend::Postgres(b) => Some(&b.group),
        }
    }

    /// Which backend this store runs on.
    pub fn backend_kind(&self) -> BackendKind {
        match self.backend {
            Backend::Sqlite(_) => BackendKind::Sqlite,
            Backend::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// The options this store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    /// The lease owner id this store writes on claims.
    pub fn instance_id(&self) -> &str {
        &self.options.instance_id
    }

    /// Raw pool access (tests, benchmarks, tooling).
    pub fn pool(&self) -> PoolRef<'_> {
        match &self.backend {
            Backend::Sqlite(b) => PoolRef::Sqlite(&b.writer),
            Backend::Postgres(b) => PoolRef::Postgres(&b.pool),
        }
    }

    /// Closes all connections.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(b) => {
                b.writer.close().await;
                b.reader.close().await;
                if let Some(checkpointer) = &b.checkpointer {
                    checkpointer.stop();
                }
            }
            Backend::Postgres(b) => b.pool.close().await,
        }
    }

    pub(crate) fn lease_expiry(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> chrono::DateTime<chrono::Utc> {
        now + chrono::Duration::from_std(self.options.lease_duration)
            .unwrap_or(chrono::Duration::seconds(300))
    }
}

/// A new UUIDv7 id as text.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Runs `$body` with `$pool` bound to the backend's write pool (SQLite: the
/// single writer connection; PostgreSQL: the pool). The body is compiled
/// once per backend, so it must only use binds both backends encode.
macro_rules! on_write {
    ($store:expr, |$pool:ident| $body:expr) => {{
        $store.counts.write();
        match &$store.backend {
            $crate::store::Backend::Sqlite(b) => {
                let $pool = &b.writer;
                $body
            }
            $crate::store::Backend::Postgres(b) => {
                let $pool = &b.pool;
                $body
            }
        }
    }};
    ($store:expr, $sqlite_sql:expr, $pg_sql:expr, |$pool:ident, $sql:ident| $body:expr) => {{
        $store.counts.write();
        match &$store.backend {
            $crate::store::Backend::Sqlite(b) => {
                let $pool = &b.writer;
                let $sql: &str = $sqlite_sql;
                $body
            }
            $crate::store::Backend::Postgres(b) => {
                let $pool = &b.pool;
                let $sql: &str = $pg_sql;
                $body
            }
        }
    }};
}

/// Like `on_write!` but with the read pool (SQLite readers).
macro_rules! on_read {
    ($store:expr, |$pool:ident| $body:expr) => {{
        $store.counts.read();
        match &$store.backend {
            $crate::store::Backend::Sqlite(b) => {
                let $pool = &b.reader;
                $body
            }
            $crate::store::Backend::Postgres(b) => {
                let $pool = &b.pool;
                $body
            }
        }
    }};
    ($store:expr, $sqlite_sql:expr, $pg_sql:expr, |$pool:ident, $sql:ident| $body:expr) => {{
        $store.counts.read();
        match &$store.backend {
            $crate::store::Backend::Sqlite(b) => {
                let $pool = &b.reader;
                let $sql: &str = $sqlite_sql;
                $body
            }
            $crate::store::Backend::Postgres(b) => {
                let $pool = &b.pool;
                let $sql: &str = $pg_sql;
                $body
            }
        }
    }};
}

pub(crate) use {on_read, on_write};

/// Starts a write transaction: `BEGIN IMMEDIATE` on SQLite (so a
/// read-then-write transaction never fails with SQLITE_BUSY on upgrade),
/// `BEGIN` on PostgreSQL (row locks are taken explicitly).
pub(crate) trait BeginWrite {
    type Db: sqlx::Database;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
    + Send;
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

impl BeginWrite for PgPool {
    type Db = sqlx::Postgres;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.begin().await
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn a_retry_hint_is_cut_to_the_retry_cap() {
        let backoff = Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
        };
        let now = chrono::Utc::now();
        let far = now + chrono::Duration::hours(5);
        let near = now + chrono::Duration::seconds(30);
        assert_eq!(
            backoff.cap_retry_at(Some(far), now),
            Some(now + chrono::Duration::seconds(60))
        );
        assert_eq!(backoff.cap_retry_at(Some(near), now), Some(near));
        assert_eq!(backoff.cap_retry_at(None, now), None);
    }
}
