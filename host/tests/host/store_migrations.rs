//! Migration runner on SQLite and PostgreSQL: fresh apply, no-op re-run,
//! concurrent runners serialised, changed checksum refused, newer schema
//! refused, failed migration rolled back and unrecorded, bad URLs.

use certplane_testkit::both_backends;
use std::path::Path;
use std::time::Duration;

use certplane_host::store::*;
use certplane_testkit::{Backend, TestDb, count};
use sqlx::migrate::Migrator;

const LEDGER_ROWS: &str = "SELECT COUNT(*) FROM _sqlx_migrations";

/// Writes the embedded migrations of `store`'s backend to `dir`.
fn copy_embedded(store: &Store, dir: &Path) {
    for m in store.embedded_migrator().iter() {
        let file = dir.join(format!(
            "{:04}_{}.sql",
            m.version,
            m.description.replace(' ', "_")
        ));
        std::fs::write(file, m.sql.as_bytes()).unwrap();
    }
}

/// Versions of the embedded migrations of `store`'s backend, in order (so
/// adding a migration does not mean editing every assertion here).
fn embedded_versions(store: &Store) -> Vec<i64> {
    store
        .embedded_migrator()
        .iter()
        .map(|m| m.version)
        .collect()
}

async fn migrator_from(dir: &Path) -> Migrator {
    Migrator::new(dir).await.unwrap()
}

async fn fresh_then_noop(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    let before = store.migration_status().await.unwrap();
    assert!(
        before
            .entries
            .iter()
            .all(|e| e.state == MigrationState::Pending)
    );
    let embedded = embedded_versions(&store);
    assert_eq!(embedded[..3], [1, 2, 3]);
    let pending = embedded.len();
    assert!(
        matches!(
            store.check_schema().await,
            Err(StoreError::SchemaOutdated { pending: p }) if p == pending
        ),
        "{pending} pending"
    );

    let report = store.migrate().await.unwrap();
    assert_eq!(report.applied, embedded);
    let status = store.migration_status().await.unwrap();
    assert!(
        status
            .entries
            .iter()
            .all(|e| e.state == MigrationState::Applied && e.installed_on.is_some())
    );
    store.check_schema().await.unwrap();
    assert!(store.get_agent(SENTINEL_AGENT_ID).await.unwrap().is_some());

    let again = store.migrate().await.unwrap();
    assert!(again.applied.is_empty());
    assert_eq!(count(&store, LEDGER_ROWS).await, embedded.len() as i64);
}

/// Two runners (separate stores = separate processes' connections) at once:
/// the lock serialises them; each migration is applied and recorded once.
async fn concurrent_runners_are_serialised(b: Backend) {
    for _ in 0..3 {
        let db = TestDb::new(b).await;
        let s1 = db.store().await;
        let s2 = db.store().await;
        let s3 = db.store().await;
        let embedded = embedded_versions(&s1);
        let (r1, r2, r3) = tokio::join!(s1.migrate(), s2.migrate(), s3.migrate());
        let mut applied: Vec<i64> = Vec::new();
        for r in [r1, r2, r3] {
            applied.extend(r.expect("every runner succeeds").applied);
        }
        applied.sort();
        assert_eq!(
            applied, embedded,
            "each migration applied by exactly one runner"
        );
        assert_eq!(count(&s1, LEDGER_ROWS).await, embedded.len() as i64);
        assert_eq!(count(&s1, "SELECT COUNT(*) FROM agents").await, 1);
    }
}

async fn changed_checksum_is_refused(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    let dir = tempfile::tempdir().unwrap();
    copy_embedded(&store, dir.path());
    store
        .migrate_with(&migrator_from(dir.path()).await)
        .await
        .unwrap();

    // Edit an applied migration (here: a comment and CRLF line endings).
    let path = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("0002_"))
        .unwrap();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace('\n', "\r\n");
    std::fs::write(&path, text).unwrap();
    let changed = migrator_from(dir.path()).await;
    let err = store.migrate_with(&changed).await.unwrap_err();
    assert!(
        matches!(err, StoreError::ChecksumMismatch { version: 2 }),
        "{err}"
    );
    assert!(err.to_string().contains("checksum"), "{err}");
    let status = store.migration_status_with(&changed).await.unwrap();
    assert_eq!(status.entries[1].state, MigrationState::ChecksumMismatch);
    assert!(matches!(
        status.check(),
        Err(StoreError::ChecksumMismatch { version: 2 })
    ));
    assert_eq!(
        count(&store, LEDGER_ROWS).await,
        embedded_versions(&store).len() as i64
    );
}

async fn newer_schema_is_refused(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    let dir = tempfile::tempdir().unwrap();
    copy_embedded(&store, dir.path());
    std::fs::write(
        dir.path().join("9999_from_the_future.sql"),
        "CREATE TABLE future_table (id INTEGER);",
    )
    .unwrap();
    let report = store
        .migrate_with(&migrator_from(dir.path()).await)
        .await
        .unwrap();
    let mut expected = embedded_versions(&store);
    expected.push(9999);
    assert_eq!(report.applied, expected);

    // This binary does not embed 9999.
    let err = store.migrate().await.unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { version: 9999, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("newer than this binary"), "{err}");
    let err = store.check_schema().await.unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { version: 9999, .. }),
        "{err}"
    );
    let status = store.migration_status().await.unwrap();
    assert_eq!(
        status.entries.last().unwrap().state,
        MigrationState::Unknown
    );
}

/// A failing migration is rolled back and not recorded; the lock is not left
/// behind (a later run does not hang) and the good migrations still apply.
async fn failed_migration_leaves_nothing_unrecorded(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    let dir = tempfile::tempdir().unwrap();
    copy_embedded(&store, dir.path());
    let embedded = embedded_versions(&store);
    let broken_version = embedded.last().copied().unwrap_or(0) + 1;
    std::fs::write(
        dir.path().join(format!("{broken_version:04}_broken.sql")),
        "CREATE TABLE half_done (id INTEGER);\nINSERT INTO no_such_table VALUES (1);\n",
    )
    .unwrap();
    let broken = migrator_from(dir.path()).await;
    let err = store.migrate_with(&broken).await.unwrap_err();
    assert!(
        matches!(err, StoreError::MigrationFailed { version, .. } if version == broken_version),
        "{err}"
    );
    let half_done = match b {
        Backend::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE name = 'half_done'",
        Backend::Postgres => "SELECT COUNT(*) FROM pg_tables WHERE tablename = 'half_done'",
    };
    assert_eq!(
        count(&store, half_done).await,
        0,
        "the failed migration was rolled back"
    );
    match b {
        // SQLite: the whole run is one transaction, so nothing was applied.
        Backend::Sqlite => assert_eq!(
            count(
                &store,
                "SELECT COUNT(*) FROM sqlite_master WHERE name = '_sqlx_migrations'"
            )
            .await,
            0
        ),
        // PostgreSQL: each migration commits with its ledger row.
        Backend::Postgres => {
            assert_eq!(count(&store, LEDGER_ROWS).await, embedded.len() as i64);
            let recorded = count(
                &store,
                &format!("SELECT COUNT(*) FROM _sqlx_migrations WHERE version = {broken_version}"),
            )
            .await;
            assert_eq!(recorded, 0, "a failed migration is not recorded");
        }
    }
    let report = tokio::time::timeout(Duration::from_secs(30), store.migrate())
        .await
        .expect("no lock left behind")
        .unwrap();
    assert!(report.applied.len() <= embedded.len());
    store.check_schema().await.unwrap();
}

both_backends!(
    fresh_then_noop,
    concurrent_runners_are_serialised,
    changed_checksum_is_refused,
    newer_schema_is_refused,
    failed_migration_leaves_nothing_unrecorded,
);

#[tokio::test]
async fn bad_urls_fail_with_one_clear_error() {
    let err = Store::connect("mysql://localhost/x").await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidUrl { .. }), "{err}");
    let err = Store::connect("postgres://user:secret@[::1")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidUrl { .. }), "{err}");
    assert!(
        !err.to_string().contains("secret"),
        "password redacted: {err}"
    );
    let err = Store::connect("postgres://postgres:secret@127.0.0.1:1/x")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Connect {
                backend: BackendKind::Postgres,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        !err.to_string().contains("secret"),
        "password redacted: {err}"
    );
    assert!(!err.to_string().contains('\n'));
    let err = Store::connect("sqlite:///nonexistent-dir/x/y.db")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Connect {
                backend: BackendKind::Sqlite,
                ..
            }
        ),
        "{err}"
    );
}

/// PostgreSQL sessions the server ended (a restart, a cut link) are found
/// out before a connection is handed out: the pool pings a connection that
/// sat idle for a second or more and replaces it when the ping fails, so
/// the first operations after the outage succeed instead of failing once
/// per pooled connection. (A connection back from use less than a second
/// ago is handed out without a ping: sqlx pinged it when it came back.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replaces_sessions_the_server_ended() {
    use sqlx::Connection;
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.migrated().await;
    let job = store
        .create_job(NewJob::new(JobType::Issuance))
        .await
        .unwrap();
    // Several pooled connections, all held at once (concurrent reads alone
    // may share one connection when each finishes before the next asks).
    let certplane_host::store::PoolRef::Postgres(pool) = store.pool() else {
        panic!("a PostgreSQL store");
    };
    let held = futures::future::join_all((0..3).map(|_| pool.acquire())).await;
    assert!(held.iter().all(Result::is_ok), "three connections at once");
    drop(held);
    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let ended: i64 = sqlx::query_scalar(
        "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(ended >= 2, "the pool's sessions were ended ({ended})");
    admin.close().await.unwrap();
    // Longer than the idle time after which a connection is pinged.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for attempt in 0..8 {
        let read = store.get_job(&job.id).await;
        assert!(
            matches!(read, Ok(Some(_))),
            "read {attempt} after the outage: {read:?}"
        );
    }
}
