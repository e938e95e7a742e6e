//! PostgreSQL backend: connection set-up. The claim SQL is in `claims.rs`,
//! a group's outcomes written set by set in `outcome_batch.rs`.

pub(crate) mod claims;
pub(crate) mod creates;
pub(crate) mod outcome_batch;

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::store::error::{BackendKind, connect_hint, redact_url};
use crate::store::{StoreError, StoreOptions};

/// One array argument of a set-based statement (`UNNEST($n::type[])`):
/// `f` of each row.
pub(crate) fn column<R, T>(rows: &[R], f: impl Fn(&R) -> T) -> Vec<T> {
    rows.iter().map(f).collect()
}

/// How long a pooled connection may sit idle before it is pinged when
/// handed out.
const PING_AFTER_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Clone)]
pub(crate) struct PgBackend {
    pub(crate) pool: PgPool,
    /// Kept to open the dedicated migration connection.
    pub(crate) connect_options: std::sync::Arc<PgConnectOptions>,
    pub(crate) url: String,
    /// The job outcomes' group committers.
    pub(crate) group: crate::store::group_commit::GroupCommit,
}

impl PgBackend {
    pub(crate) async fn connect(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let connect_options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::InvalidUrl {
                url: redact_url(url),
                reason: e.to_string(),
            })?
            .application_name("certplane");
        let connect_err = |source| StoreError::Connect {
            backend: BackendKind::Postgres,
            url: redact_url(url),
            hint: connect_hint(BackendKind::Postgres),
            source,
        };
        // One direct connection first: the pool would retry until its
        // acquire timeout and report only "timed out"; this reports the
        // real cause (refused, unknown database, authentication).
        let probe = tokio::time::timeout(
            options.acquire_timeout,
            PgConnection::connect_with(&connect_options),
        )
        .await
        .map_err(|_| connect_err(sqlx::Error::PoolTimedOut))?
        .map_err(connect_err)?;
        probe.close().await.map_err(connect_err)?;
        // sqlx pings a connection when it is returned to the pool (always),
        // and by default again when it is handed out: two round trips per
        // checkout on top of its statements. A connection returned less
        // than a second ago was just found alive, so only one idle longer
        // (which the server may have ended meanwhile) is pinged before use.
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_AFTER_IDLE {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(connect_options.clone())
            .await
            .map_err(connect_err)?;
        let group = crate::store::group_commit::GroupCommit::start_postgres(pool.clone());
        Ok(PgBackend {
            group,
            pool,
            connect_options: std::sync::Arc::new(connect_options),
            url: redact_url(url),
        })
    }
}
