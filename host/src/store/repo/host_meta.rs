//! `host_meta`: facts every replica on one database agrees on (the secrets
//! key check value, who issued the bootstrap admin key). Each is written
//! once with `INSERT .. ON CONFLICT DO NOTHING`, so concurrent replicas
//! starting together cannot both win it.

use sqlx::types::Json;

use crate::store::codec::{now, opt_ts, ts};
use crate::store::{ApiKey, BeginWrite as _, NewApiKey, Store, StoreError, StoreResult, new_id};
use crate::store::{on_read, on_write};

/// The `host_meta` key claimed by the host that issues the bootstrap admin
/// key.
pub const BOOTSTRAP_ADMIN_META: &str = "bootstrap-admin";

impl Store {
    /// The value stored under `key` in `host_meta`, if any.
    pub async fn host_meta(&self, key: &str) -> StoreResult<Option<String>> {
        Ok(on_read!(self, |pool| {
            sqlx::query_scalar::<_, String>("SELECT value FROM host_meta WHERE key = $1")
                .bind(key)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Stores `value` under `key` unless the key exists; true if this call
    /// stored it. Concurrent callers (replicas) get exactly one `true`.
    pub async fn insert_host_meta(&self, key: &str, value: &str) -> StoreResult<bool> {
        let now = now();
        Ok(on_write!(self, |pool| {
            sqlx::query(
                "INSERT INTO host_meta (key, value, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO NOTHING",
            )
            .bind(key)
            .bind(value)
            .bind(ts(now))
            .execute(pool)
            .await?
            .rows_affected()
                == 1
        }))
    }

    /// Creates `new` as the database's bootstrap admin key if no host has
    /// done so yet: the claim (`host_meta` row [`BOOTSTRAP_ADMIN_META`]) and
    /// the key are written in one transaction, so exactly one caller across
    /// all replicas gets `Some` (and prints the key), and a crash between
    /// the two leaves neither. `None`: the key was issued before.
    pub async fn claim_bootstrap_admin_key(&self, new: NewApiKey) -> StoreResult<Option<ApiKey>> {
        let now = now();
        let id = new_id();
        on_write!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let won = sqlx::query(
                "INSERT INTO host_meta (key, value, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO NOTHING",
            )
            .bind(BOOTSTRAP_ADMIN_META)
            .bind(format!("api key {id} ({})", new.name))
            .bind(ts(now))
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !won {
                // Nothing was written; dropping the transaction rolls back.
                return Ok(None);
            }
            let key = sqlx::query_as::<_, ApiKey>(
                "INSERT INTO api_keys (id, name, key_hash, scopes, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
            )
            .bind(&id)
            .bind(&new.name)
            .bind(&new.key_hash)
            .bind(Json(&new.scopes))
            .bind(ts(now))
            .bind(opt_ts(new.expires_at))
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| StoreError::from_insert("API key with this hash", e))?;
            tx.commit().await?;
            Ok(Some(key))
        })
    }
}
