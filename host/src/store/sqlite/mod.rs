//! SQLite backend: connection set-up. The claim SQL is in `claims.rs`.
//!
//! One writer connection (a pool of size 1, so in-process writers queue on
//! the pool instead of spinning on SQLITE_BUSY) and a pool of readers. WAL
//! journal, `synchronous = NORMAL`, foreign keys on, temporary files in
//! memory, a busy timeout for writers in other processes (e.g. `certplane
//! migrate`). SQLite allocates through the process's allocator
//! (`alloc.rs`); the log is checkpointed beside the writer
//! (`checkpoint.rs`).

mod alloc;
mod checkpoint;
pub(crate) mod claims;
pub(crate) mod outcome_batch;

use std::str::FromStr;
use std::sync::Arc;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use self::checkpoint::Checkpointer;
use crate::store::error::{BackendKind, connect_hint, redact_url};
use crate::store::{StoreError, StoreOptions};

#[derive(Clone)]
pub(crate) struct SqliteBackend {
    pub(crate) writer: SqlitePool,
    pub(crate) reader: SqlitePool,
    /// The job outcomes' group committer (`None` if its thread could not
    /// start: outcomes then commit one by one).
    pub(crate) group: Option<crate::store::group_commit::GroupCommit>,
    /// Checkpoints the write-ahead log beside the writer (`None` for an
    /// in-memory database, which has no log).
    pub(crate) checkpointer: Option<Arc<Checkpointer>>,
}

impl SqliteBackend {
    pub(crate) async fn connect(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        alloc::configure();
        let connect_options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::InvalidUrl {
                url: redact_url(url),
                reason: e.to_string(),
            })?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            // Statement journals and the temporary b-trees of sorts and
            // `IN` lists in memory: on disk, a multi-row UPDATE of `jobs`
            // (a dozen indexes) whose statement journal passed 64 KiB
            // spilled it to a temporary file, which the single writer
            // created, wrote, unlinked and closed (about a thousand in a
            // run of 10,000 certificates; BENCHMARKS.md, issue 13).
            .pragma("temp_store", "memory")
            .busy_timeout(options.busy_timeout);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let connect_err = |source| StoreError::Connect {
            backend: BackendKind::Sqlite,
            url: redact_url(url),
            hint: connect_hint(BackendKind::Sqlite),
            source,
        };
        // No ping before handing out a connection: an embedded database has
        // no server end to vanish, and each ping is one more round trip to
        // the connection's worker thread. On the single writer it came
        // before every write transaction, so it lengthened the queue of
        // all of them (BENCHMARKS.md, issue 13).
        let mut writer_options = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(options.acquire_timeout);
        if !in_memory {
            writer_options = writer_options.after_release(close_if_in_transaction);
        }
        if in_memory {
            // An in-memory database lives as long as its one connection.
            writer_options = writer_options
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        // Checkpoints run on a connection of their own, not inside the
        // writer's commits (`checkpoint.rs`).
        let (checkpointer, writer_connect) = if in_memory {
            (None, connect_options.clone())
        } else {
            let checkpointer = Checkpointer::start(&connect_options)
                .await
                .map_err(connect_err)?;
            (
                Some(Arc::new(checkpointer)),
                connect_options.clone().pragma("wal_autocheckpoint", "0"),
            )
        };
        let writer = writer_options
            .connect_with(writer_connect)
            .await
            .map_err(connect_err)?;
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(options.max_connections.max(1))
                .test_before_acquire(false)
                .after_release(close_if_in_transaction)
                .acquire_timeout(options.acquire_timeout)
                .connect_with(connect_options)
                .await
                .map_err(connect_err)?
        };
        let group = crate::store::group_commit::GroupCommit::start_sqlite(writer.clone());
        Ok(SqliteBackend {
            writer,
            reader,
            group,
            checkpointer,
        })
    }
}

/// Whether a connection given back to its pool may be used again: not while
/// sqlx still counts it inside a transaction. A dropped transaction's
/// ROLLBACK is queued on the connection's worker thread, so a ping (behind
/// it in that queue) lets it finish first. When it failed (SQLite had
/// already rolled back on its own, after a full disk or an I/O error), the
/// count stays at one and every later `BEGIN IMMEDIATE` on the connection
/// would be refused: on the single writer, every write until a restart.
/// Such a connection is closed, and the pool opens a fresh one. Not for an
/// in-memory database, whose data lives and dies with its one connection.
fn close_if_in_transaction(
    conn: &mut sqlx::SqliteConnection,
    _: sqlx::pool::PoolConnectionMetadata,
) -> futures::future::BoxFuture<'_, Result<bool, sqlx::Error>> {
    use sqlx::Connection;
    Box::pin(async move {
        if !conn.is_in_transaction() {
            return Ok(true);
        }
        conn.ping().await?;
        let usable = !conn.is_in_transaction();
        if !usable {
            tracing::warn!("a database connection could not roll its transaction back; closing it");
        }
        Ok(usable)
    })
}
