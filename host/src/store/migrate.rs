//! Embedded, checksummed migrations on sqlx's migrator.
//!
//! * The SQL lives in `migrations/sqlite/` and `migrations/postgres/` and is
//!   embedded at build time (`sqlx::migrate!`).
//! * The ledger is sqlx's `_sqlx_migrations` table (version, checksum,
//!   success, time). Applied versions are skipped; an applied version whose
//!   checksum differs from the embedded file is refused
//!   ([`StoreError::ChecksumMismatch`]); an applied version this binary does
//!   not embed means the database is newer ([`StoreError::SchemaTooNew`]),
//!   checked before anything is applied.
//! * PostgreSQL: sqlx takes `pg_advisory_lock` on the connection it is given.
//!   We give it a dedicated connection (never a pooled one) and close it on
//!   every path, so a failed run can never leave the session lock held. Each
//!   migration runs in its own transaction with its ledger row.
//! * SQLite: sqlx's lock is a no-op. We run the whole migrator inside one
//!   `BEGIN IMMEDIATE` transaction on the writer connection: concurrent
//!   migrators (threads or processes) queue on SQLite's write lock, and a
//!   failure rolls back every migration of the run together with its ledger
//!   rows (sqlx's per-migration transactions become savepoints).

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::{Connection, PgConnection, Row};
use tracing::info;

use crate::store::{Backend, BackendKind, BeginWrite, Store, StoreError, StoreResult};

/// Migrations embedded for SQLite.
pub static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");
/// Migrations embedded for PostgreSQL.
pub static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

/// State of one migration version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationState {
    /// Applied with the embedded checksum.
    Applied,
    /// Embedded, not applied yet.
    Pending,
    /// Applied, but the embedded file differs.
    ChecksumMismatch,
    /// Recorded as failed (dirty).
    Failed,
    /// Applied, but this binary does not embed it (database is newer).
    Unknown,
}

impl std::fmt::Display for MigrationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MigrationState::Applied => "applied",
            MigrationState::Pending => "pending",
            MigrationState::ChecksumMismatch => "CHECKSUM MISMATCH",
            MigrationState::Failed => "FAILED",
            MigrationState::Unknown => "UNKNOWN (newer than this binary)",
        })
    }
}

/// One row of [`MigrationStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationEntry {
    /// Version (file name prefix).
    pub version: i64,
    /// Description (file name rest).
    pub description: String,
    /// State.
    pub state: MigrationState,
    /// When it was applied, if it was.
    pub installed_on: Option<DateTime<Utc>>,
}

/// Embedded migrations compared with the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationStatus {
    /// Backend.
    pub backend: BackendKind,
    /// All versions, embedded or applied, in order.
    pub entries: Vec<MigrationEntry>,
}

impl MigrationStatus {
    /// Versions not applied yet.
    pub fn pending(&self) -> Vec<i64> {
        self.entries
            .iter()
            .filter(|e| e.state == MigrationState::Pending)
            .map(|e| e.version)
            .collect()
    }

    /// Ok when every embedded migration is applied unchanged and nothing
    /// unknown is applied; otherwise the error that says what to do.
    pub fn check(&self) -> StoreResult<()> {
        for e in &self.entries {
            match e.state {
                MigrationState::Unknown => {
                    return Err(StoreError::SchemaTooNew {
                        version: e.version,
                        binary: env!("CARGO_PKG_VERSION"),
                    });
                }
                MigrationState::ChecksumMismatch => {
                    return Err(StoreError::ChecksumMismatch { version: e.version });
                }
                MigrationState::Failed => {
                    return Err(StoreError::DirtyMigration { version: e.version });
                }
                MigrationState::Applied | MigrationState::Pending => {}
            }
        }
        let pending = self.pending().len();
        if pending > 0 {
            return Err(StoreError::SchemaOutdated { pending });
        }
        Ok(())
    }
}

/// What [`Store::migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationReport {
    /// Versions applied by this run, in order (empty: already up to date).
    pub applied: Vec<i64>,
}

struct LedgerRow {
    version: i64,
    checksum: Vec<u8>,
    success: bool,
    installed_on: Option<DateTime<Utc>>,
}

fn map_migrate_error(err: MigrateError) -> StoreError {
    match err {
        MigrateError::VersionMissing(version) => StoreError::SchemaTooNew {
            version,
            binary: env!("CARGO_PKG_VERSION"),
        },
        MigrateError::VersionMismatch(version) => StoreError::ChecksumMismatch { version },
        MigrateError::Dirty(version) => StoreError::DirtyMigration { version },
        MigrateError::ExecuteMigration(source, version) => {
            StoreError::MigrationFailed { version, source }
        }
        MigrateError::Execute(source) => StoreError::Database(source),
        other => StoreError::Migrate(other),
    }
}

fn compare(backend: BackendKind, migrator: &Migrator, ledger: Vec<LedgerRow>) -> MigrationStatus {
    let mut entries: BTreeMap<i64, MigrationEntry> = BTreeMap::new();
    let ledger: BTreeMap<i64, LedgerRow> = ledger.into_iter().map(|r| (r.version, r)).collect();
    let mut embedded = HashSet::new();
    for m in migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
    {
        embedded.insert(m.version);
        let (state, installed_on) = match ledger.get(&m.version) {
            None => (MigrationState::Pending, None),
            Some(row) if !row.success => (MigrationState::Failed, row.installed_on),
            Some(row) if row.checksum.as_slice() != &*m.checksum => {
                (MigrationState::ChecksumMismatch, row.installed_on)
            }
            Some(row) => (MigrationState::Applied, row.installed_on),
        };
        entries.insert(
            m.version,
            MigrationEntry {
                version: m.version,
                description: m.description.to_string(),
                state,
                installed_on,
            },
        );
    }
    for row in ledger.values().filter(|r| !embedded.contains(&r.version)) {
        entries.insert(
            row.version,
            MigrationEntry {
                version: row.version,
                description: String::from("(not in this binary)"),
                state: MigrationState::Unknown,
                installed_on: row.installed_on,
            },
        );
    }
    MigrationStatus {
        backend,
        entries: entries.into_values().collect(),
    }
}

fn ledger_row<R: Row>(row: &R) -> Result<LedgerRow, sqlx::Error>
where
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<DateTime<Utc>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    usize: sqlx::ColumnIndex<R>,
{
    Ok(LedgerRow {
        version: row.try_get("version")?,
        checksum: row.try_get("checksum")?,
        success: row.try_get("success")?,
        // Informational only: tolerate a format we cannot decode.
        installed_on: row.try_get("installed_on").unwrap_or(None),
    })
}

/// Advisory lock key of certplane migrators ("certplan" in ASCII).
const PG_MIGRATE_LOCK_KEY: i64 = 0x6365_7274_706c_616e;

const LEDGER_SQL: &str =
    "SELECT version, checksum, success, installed_on FROM _sqlx_migrations ORDER BY version";

impl Store {
    /// The migrations embedded in this binary for this store's backend.
    pub fn embedded_migrator(&self) -> &'static Migrator {
        match self.backend {
            Backend::Sqlite(_) => &SQLITE_MIGRATOR,
            Backend::Postgres(_) => &POSTGRES_MIGRATOR,
        }
    }

    /// Applies the embedded migrations that are not applied yet.
    pub async fn migrate(&self) -> StoreResult<MigrationReport> {
        self.migrate_with(self.embedded_migrator()).await
    }

    /// Compares the embedded migrations with the ledger, changing nothing.
    pub async fn migration_status(&self) -> StoreResult<MigrationStatus> {
        self.migration_status_with(self.embedded_migrator()).await
    }

    /// Refuses a database whose schema is not exactly what this binary
    /// expects (pending, changed, failed or unknown migrations), without
    /// changing anything. For hosts started without auto-migration.
    pub async fn check_schema(&self) -> StoreResult<()> {
        self.migration_status().await?.check()
    }

    /// [`Store::migrate`] with another set of migrations (tests and tools).
    pub async fn migrate_with(&self, migrator: &Migrator) -> StoreResult<MigrationReport> {
        let before = match &self.backend {
            Backend::Sqlite(b) => {
                // BEGIN IMMEDIATE serialises migrators; sqlx's per-migration
                // transactions nest as savepoints inside it.
                let mut tx = b.writer.begin_write().await?;
                let before = sqlite_ledger(&mut tx).await?;
                migrator.run(&mut *tx).await.map_err(map_migrate_error)?;
                tx.commit().await?;
                before
            }
            Backend::Postgres(b) => {
                // Dedicated connection: the advisory lock sqlx takes dies
                // with it, whatever happens.
                let mut conn = PgConnection::connect_with(&b.connect_options)
                    .await
                    .map_err(|source| StoreError::Connect {
                        backend: BackendKind::Postgres,
                        url: b.url.clone(),
                        hint: crate::store::error::connect_hint(BackendKind::Postgres),
                        source,
                    })?;
                // Our own session lock first, so the ledger we read is the
                // one we migrate from (exact report under concurrent
                // runners); sqlx then takes its own lock too.
                let before = match sqlx::query("SELECT pg_advisory_lock($1)")
                    .bind(PG_MIGRATE_LOCK_KEY)
                    .execute(&mut conn)
                    .await
                {
                    Ok(_) => pg_ledger(&mut conn).await,
                    Err(e) => Err(StoreError::Database(e)),
                };
                let result = match before {
                    Ok(before) => migrator
                        .run(&mut conn)
                        .await
                        .map(|()| before)
                        .map_err(map_migrate_error),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(before) => {
                        conn.close().await?;
                        before
                    }
                    Err(e) => {
                        // Closing ends the session and releases the lock; a
                        // close error would only hide the real one.
                        let _ = conn.close().await;
                        return Err(e);
                    }
                }
            }
        };
        let already: HashSet<i64> = before.iter().map(|r| r.version).collect();
        let applied: Vec<i64> = migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration() && !already.contains(&m.version))
            .map(|m| m.version)
            .collect();
        for m in migrator.iter().filter(|m| applied.contains(&m.version)) {
            info!(version = m.version, description = %m.description, "migration applied");
        }
        Ok(MigrationReport { applied })
    }

    /// [`Store::migration_status`] against another set of migrations.
    pub async fn migration_status_with(&self, migrator: &Migrator) -> StoreResult<MigrationStatus> {
        let ledger = match &self.backend {
            Backend::Sqlite(b) => {
                let mut conn = b.reader.acquire().await?;
                sqlite_ledger(&mut conn).await?
            }
            Backend::Postgres(b) => {
                let mut conn = b.pool.acquire().await?;
                pg_ledger(&mut conn).await?
            }
        };
        Ok(compare(self.backend_kind(), migrator, ledger))
    }
}

async fn sqlite_ledger(conn: &mut sqlx::SqliteConnection) -> StoreResult<Vec<LedgerRow>> {
    let exists: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_one(&mut *conn)
    .await?;
    if exists == 0 {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(LEDGER_SQL).fetch_all(&mut *conn).await?;
    Ok(rows.iter().map(ledger_row).collect::<Result<_, _>>()?)
}

async fn pg_ledger(conn: &mut PgConnection) -> StoreResult<Vec<LedgerRow>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(LEDGER_SQL).fetch_all(&mut *conn).await?;
    Ok(rows.iter().map(ledger_row).collect::<Result<_, _>>()?)
}
