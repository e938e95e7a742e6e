//! Test databases on both backends: every store test runs on SQLite and on
//! PostgreSQL, each in its own database (a temp file / a fresh
//! `certplane_test_<uuid>` database dropped at the end, even on panic).
//! PostgreSQL tests never skip: an unreachable server fails them.

use std::time::Duration;

use certplane_host::store::{PoolRef, Store, StoreOptions};

/// Declares `sqlite::NAME` and `postgres::NAME` tests calling the
/// `async fn NAME(Backend)` scenarios of the invoking module.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Sqlite).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Postgres).await
                }
            )+
        }
    };
}

/// Backend under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Admin URL of the test PostgreSQL (`CERTPLANE_TEST_PG_URL`, default
/// `postgres://postgres@127.0.0.1:5432/postgres`).
pub fn pg_admin_url() -> String {
    std::env::var("CERTPLANE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// One test database.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

impl TestDb {
    /// A fresh, empty database (not migrated).
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}/store.db?mode=rwc", dir.path().display());
                TestDb {
                    backend,
                    url,
                    _dir: Some(dir),
                    pg_name: None,
                }
            }
            Backend::Postgres => {
                let admin = pg_admin_url();
                let name = format!("certplane_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = connect_admin(&admin).await;
                sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
                    .await
                    .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
                let _ = sqlx::Connection::close(conn).await;
                let mut url = url::Url::parse(&admin).expect("CERTPLANE_TEST_PG_URL is a URL");
                url.set_path(&format!("/{name}"));
                TestDb {
                    backend,
                    url: url.to_string(),
                    _dir: None,
                    pg_name: Some(name),
                }
            }
        }
    }

    /// A store on this database with test-friendly options.
    pub async fn store(&self) -> Store {
        self.store_with(test_options()).await
    }

    /// A store with explicit options.
    pub async fn store_with(&self, options: StoreOptions) -> Store {
        Store::connect_with(&self.url, options)
            .await
            .unwrap_or_else(|e| panic!("cannot open {:?} test store: {e}", self.backend))
    }

    /// A migrated store.
    pub async fn migrated(&self) -> Store {
        let store = self.store().await;
        store.migrate().await.expect("migrate");
        store
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        // Drop runs inside the test's runtime: use a thread with its own.
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut conn = connect_admin(&pg_admin_url()).await;
                let _ = sqlx::Executor::execute(
                    &mut conn,
                    format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str(),
                )
                .await;
            });
        });
        let _ = handle.join();
    }
}

async fn connect_admin(admin: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    match tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect(admin)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!(
            "PostgreSQL is unreachable at {admin} ({e}); start it (pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start) or set CERTPLANE_TEST_PG_URL"
        ),
        Err(_) => panic!("PostgreSQL at {admin} did not answer within 10 s"),
    }
}

/// Options for tests: no backoff, so retries are immediate; the cap (which
/// also bounds a connector's retry-after hint) is an hour, so hints are
/// kept as they are.
pub fn test_options() -> StoreOptions {
    StoreOptions {
        backoff: certplane_host::store::Backoff {
            base: Duration::ZERO,
            cap: Duration::from_secs(3600),
        },
        max_connections: 8,
        ..StoreOptions::default()
    }
}

/// Runs a raw statement (test set-up only).
pub async fn exec(store: &Store, sql: &str) {
    match store.pool() {
        PoolRef::Sqlite(p) => {
            sqlx::query(sql).execute(p).await.expect("raw sql");
        }
        PoolRef::Postgres(p) => {
            sqlx::query(sql).execute(p).await.expect("raw sql");
        }
    }
}

/// Runs a raw scalar count (test assertions only).
pub async fn count(store: &Store, sql: &str) -> i64 {
    match store.pool() {
        PoolRef::Sqlite(p) => sqlx::query_scalar(sql)
            .fetch_one(p)
            .await
            .expect("raw count"),
        PoolRef::Postgres(p) => sqlx::query_scalar(sql)
            .fetch_one(p)
            .await
            .expect("raw count"),
    }
}
