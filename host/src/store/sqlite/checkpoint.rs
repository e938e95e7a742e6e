//! Checkpoints of the write-ahead log on a connection of their own.
//!
//! By default SQLite checkpoints inside the commit that takes the log past
//! 1,000 pages, on the committing connection: for the store that is the one
//! writer, so every writer waited while it copied the log into the database
//! file and synced it (8 % of the writer thread's time in a profile of mass
//! issuance, BENCHMARKS.md, issue 13, besides the waits for the disk). The
//! writer's connections turn that off (`wal_autocheckpoint = 0`) and this
//! task checkpoints instead, beside the writer: a `PASSIVE` checkpoint
//! takes no lock a writer or reader waits for, and the writer restarts the
//! log from its start once a checkpoint has copied all of it, as it would
//! after its own.

use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, SqliteConnection};
use tokio_util::sync::CancellationToken;

/// How often the log is checkpointed while it grows.
const BUSY_INTERVAL: Duration = Duration::from_millis(100);
/// How often it is looked at while nothing is written.
const IDLE_INTERVAL: Duration = Duration::from_secs(1);

/// The running checkpointer; dropping the last clone of the store stops it.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    stop: CancellationToken,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Checkpointer {
    /// Opens the checkpointer's connection and starts its task on the
    /// current runtime. The writer's connections must then be opened with
    /// `wal_autocheckpoint = 0`.
    pub(crate) async fn start(options: &SqliteConnectOptions) -> Result<Checkpointer, sqlx::Error> {
        let conn = options.connect().await?;
        let stop = CancellationToken::new();
        tokio::spawn(run(conn, stop.clone()));
        Ok(Checkpointer { stop })
    }

    /// Stops the task; its connection closes, which checkpoints what is left
    /// when it is the database's last.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }
}

/// What a checkpoint found: frames in the log, and how many of them are in
/// the database file now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    log: i64,
    copied: i64,
}

async fn run(mut conn: SqliteConnection, stop: CancellationToken) {
    let mut last: Option<Progress> = None;
    let mut interval = BUSY_INTERVAL;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
        match checkpoint(&mut conn).await {
            Ok(now) => {
                // Nothing new since the last look: the log holds what it
                // held, all of it copied.
                let idle = last == Some(now) && now.copied >= now.log;
                interval = if idle { IDLE_INTERVAL } else { BUSY_INTERVAL };
                last = Some(now);
            }
            Err(e) => {
                // The writer's log grows until a checkpoint succeeds; say so
                // each time rather than stop trying.
                tracing::warn!(error = %e, "cannot checkpoint the SQLite write-ahead log");
                interval = IDLE_INTERVAL;
            }
        }
    }
    if let Err(e) = sqlx::Connection::close(conn).await {
        tracing::debug!(error = %e, "closing the checkpointer's connection");
    }
}

async fn checkpoint(conn: &mut SqliteConnection) -> Result<Progress, sqlx::Error> {
    let (_busy, log, copied): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(&mut *conn)
        .await?;
    Ok(Progress { log, copied })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use crate::store::{Backend, Store};

    async fn store_at(path: &Path) -> Store {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        Store::connect(&url).await.unwrap()
    }

    fn writer(store: &Store) -> sqlx::SqlitePool {
        match &store.backend {
            Backend::Sqlite(b) => b.writer.clone(),
            Backend::Postgres(_) => unreachable!(),
        }
    }

    fn size(path: &Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    /// Polls `done` for up to five seconds.
    async fn eventually(mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        done()
    }

    /// The writer never checkpoints, yet what it writes reaches the database
    /// file while the store is open: the checkpointer copied it. Without the
    /// checkpointer the 8 MiB written here would stay in the log.
    #[tokio::test]
    async fn the_log_reaches_the_database_file_beside_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let store = store_at(&path).await;
        let pool = writer(&store);
        let (auto,): (i64,) = sqlx::query_as("PRAGMA wal_autocheckpoint")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(auto, 0, "the writer leaves checkpoints to the checkpointer");

        sqlx::query("CREATE TABLE filler (id INTEGER PRIMARY KEY, v BLOB)")
            .execute(&pool)
            .await
            .unwrap();
        let before = size(&path);
        let row = vec![7_u8; 64 * 1024];
        for i in 0..128_i64 {
            sqlx::query("INSERT INTO filler (id, v) VALUES (?, ?)")
                .bind(i)
                .bind(&row)
                .execute(&pool)
                .await
                .unwrap();
        }
        let wanted = before + 8 * 1024 * 1024;
        assert!(
            eventually(|| size(&path) >= wanted).await,
            "the database file holds {} bytes, not the {wanted} written (log: {} bytes)",
            size(&path),
            size(&dir.path().join("c.db-wal"))
        );
        store.close().await;
    }

    /// Closing the store closes the checkpointer's connection too: with no
    /// connection left, SQLite checkpoints and deletes the log.
    #[tokio::test]
    async fn closing_the_store_closes_the_checkpointer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let wal = dir.path().join("d.db-wal");
        let store = store_at(&path).await;
        sqlx::query("CREATE TABLE t (v INTEGER)")
            .execute(&writer(&store))
            .await
            .unwrap();
        assert!(wal.exists(), "an open database in WAL mode has a log");
        // Past a checkpoint, so the checkpointer's connection has the log
        // open too.
        tokio::time::sleep(super::BUSY_INTERVAL * 3).await;
        store.close().await;
        assert!(
            eventually(|| !wal.exists()).await,
            "the log outlived the store: a connection is still open"
        );
    }
}
