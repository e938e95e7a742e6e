//! Audit events and API keys.

use sqlx::types::Json;

use crate::store::codec::{now, opt_ts, ts};
use crate::store::repo::{insert_audit, sql_limit};
use crate::store::{
    ApiKey, AuditEvent, NewApiKey, NewAuditEvent, Store, StoreError, StoreResult, new_id, on_read,
    on_write,
};

impl Store {
    /// Writes an audit event (use the `audit` argument of
    /// [`Store::transition_job`] to write it in the transaction of a change).
    pub async fn record_audit(&self, event: NewAuditEvent) -> StoreResult<()> {
        let now = now();
        on_write!(self, |pool| {
            insert_audit!(pool, now, &event)?;
        });
        Ok(())
    }

    /// Audit events, newest first; only of one subject if given.
    pub async fn list_audit_events(
        &self,
        subject_type: Option<&str>,
        subject_id: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<AuditEvent>> {
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, AuditEvent>(
                "SELECT * FROM audit_events
                 WHERE ($1 IS NULL OR subject_type = $1) AND ($2 IS NULL OR subject_id = $2)
                 ORDER BY at DESC, id DESC LIMIT $3",
            )
            .bind(subject_type)
            .bind(subject_id)
            .bind(sql_limit(limit))
            .fetch_all(pool)
            .await?
        }))
    }

    /// Stores a new API key (its hash) and returns the row.
    pub async fn create_api_key(&self, new: NewApiKey) -> StoreResult<ApiKey> {
        let now = now();
        on_write!(self, |pool| {
            sqlx::query_as::<_, ApiKey>(
                "INSERT INTO api_keys (id, name, key_hash, scopes, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
            )
            .bind(new_id())
            .bind(&new.name)
            .bind(&new.key_hash)
            .bind(Json(&new.scopes))
            .bind(ts(now))
            .bind(opt_ts(new.expires_at))
            .fetch_one(pool)
            .await
            .map_err(|e| StoreError::from_insert("API key with this hash", e))
        })
    }

    /// Looks up an API key by hash (check [`ApiKey::is_usable`]).
    pub async fn find_api_key_by_hash(&self, key_hash: &str) -> StoreResult<Option<ApiKey>> {
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, ApiKey>("SELECT * FROM api_keys WHERE key_hash = $1")
                .bind(key_hash)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Revokes an API key; false if unknown or already revoked.
    pub async fn revoke_api_key(&self, id: &str) -> StoreResult<bool> {
        let now = now();
        Ok(on_write!(self, |pool| {
            sqlx::query("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                .bind(id)
                .bind(ts(now))
                .execute(pool)
                .await?
                .rows_affected()
                == 1
        }))
    }

    /// Records that a key was used now.
    pub async fn touch_api_key(&self, id: &str) -> StoreResult<()> {
        let now = now();
        on_write!(self, |pool| {
            sqlx::query("UPDATE api_keys SET last_used_at = $2 WHERE id = $1")
                .bind(id)
                .bind(ts(now))
                .execute(pool)
                .await?;
        });
        Ok(())
    }
}
