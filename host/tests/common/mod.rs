//! Shared harness of the store tests: every test runs on SQLite and on
//! PostgreSQL, each in its own database (a temp file / a fresh
//! `certplane_test_<uuid>` database dropped at the end, even on panic).
//! PostgreSQL tests never skip: an unreachable server fails them.
#![allow(dead_code)]

pub mod app;

use std::time::Duration;

use certplane_host::store::{PoolRef, Store, StoreOptions};

/// Backend under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Admin URL of the test PostgreSQL.
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

/// Options for tests: short backoff so retries are immediate.
pub fn test_options() -> StoreOptions {
    StoreOptions {
        backoff: certplane_host::store::Backoff {
            base: Duration::ZERO,
            cap: Duration::ZERO,
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

/// Declares `sqlite::NAME` and `postgres::NAME` tests calling `NAME(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Postgres).await
                }
            )+
        }
    };
}

/// Fixtures: an issuer, agents with targets.
pub mod fixtures {
    use certplane_host::store::*;

    pub async fn issuer(store: &Store) -> PluginInstance {
        store
            .create_issuer(NewPluginInstance::new(
                format!("issuer-{}", new_id()),
                "local-ca",
                "1.0.0",
            ))
            .await
            .expect("issuer")
    }

    pub async fn agent(store: &Store, name: &str) -> Agent {
        store
            .register_agent(NewAgent {
                name: name.to_owned(),
                credential_hash: format!("hash-{}", new_id()),
            })
            .await
            .expect("agent")
    }

    pub async fn target(store: &Store, agent_id: &str, name: &str) -> Target {
        store
            .create_target(NewTarget {
                agent_id: agent_id.to_owned(),
                instance: NewPluginInstance::new(
                    format!("{name}-{}", new_id()),
                    "pem-file",
                    "1.0.0",
                ),
            })
            .await
            .expect("target")
    }

    pub async fn certificate(
        store: &Store,
        issuer_id: &str,
        target_id: Option<&str>,
        key_source: KeySource,
    ) -> Certificate {
        let name = format!("cert-{}", new_id());
        store
            .create_certificate(NewCertificate {
                name: name.clone(),
                common_name: format!("{name}.example.test"),
                sans: vec![format!("{name}.example.test")],
                key_type: "ecdsa-p256".into(),
                key_source,
                issuer_id: issuer_id.to_owned(),
                target_id: target_id.map(str::to_owned),
                renew_before_secs: 30 * 86_400,
                owner: Some("team-a".into()),
            })
            .await
            .expect("certificate")
    }
}

/// A self-signed ECDSA P-256 CA for tests: (certificate PEM, PKCS#8 key PEM).
pub fn test_ca() -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "certplane test CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let cert = params.self_signed(&key).expect("CA certificate");
    (cert.pem(), key.serialize_pem())
}

/// An issuer instance of `plugin` (local-ca or a fixture that reuses it)
/// signing with a fresh test CA: `extra` settings are merged over the CA
/// settings and the CA key is sealed for `issuer/<id>`, as the API stores it.
pub async fn ca_issuer(
    state: &certplane_host::api::AppState,
    plugin: &str,
    extra: serde_json::Value,
) -> certplane_host::store::PluginInstance {
    use certplane_host::store::NewPluginInstance;
    let (ca_cert, ca_key) = test_ca();
    let mut settings = serde_json::json!({ "ca_certificate_pem": ca_cert, "validity_days": 30 });
    if let Some(extra) = extra.as_object() {
        for (k, v) in extra {
            settings[k] = v.clone();
        }
    }
    let id = uuid::Uuid::now_v7().to_string();
    let sealed = state
        .secrets
        .seal_map(
            &std::collections::BTreeMap::from([("ca_private_key_pem".to_string(), ca_key)]),
            &format!("issuer/{id}"),
        )
        .expect("seal");
    state
        .store
        .create_issuer_with_id(
            &id,
            NewPluginInstance {
                settings,
                encrypted_secrets: Some(sealed.into_bytes()),
                ..NewPluginInstance::new(format!("{plugin}-{id}"), plugin, "0.1.0")
            },
        )
        .await
        .expect("issuer")
}
