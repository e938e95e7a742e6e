//! Operator API keys: stored as SHA-256 hashes, never as the key; revoked
//! softly (`revoked_at`), so a revoked key stays listed; `last_used_at`
//! precise to a minute ([`crate::store::API_KEY_USE_PRECISION`]).

use chrono::{DateTime, Utc};
use sqlx::types::Json;

use crate::store::codec::{now, opt_ts, ts};
use crate::store::repo::{insert_audit, sql_limit};
use crate::store::{
    API_KEY_USE_PRECISION, ApiKey, ApiKeyRevocation, ApiKeyStatus, BeginWrite as _, NewApiKey,
    NewAuditEvent, Store, StoreError, StoreResult, new_id, on_read, on_write,
};

/// WHERE clause of the key listing: `$1` status (`active`, `expired`,
/// `revoked` or NULL for any), `$2` now.
const LIST_WHERE: &str = "WHERE $1 IS NULL
       OR ($1 = 'revoked' AND revoked_at IS NOT NULL)
       OR ($1 = 'active' AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2))
       OR ($1 = 'expired' AND revoked_at IS NULL AND expires_at <= $2)";

impl Store {
    /// Stores a new API key (its hash) and returns the row. No audit row:
    /// for the command line and tests; the API uses
    /// [`Store::create_api_key_audited`].
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

    /// Stores a new API key with its recognisable `key_prefix` and the
    /// audit row `audit` (its actor is recorded as `created_by`), in one
    /// transaction. The audit row's `subject_id` is set to the new key's id.
    pub async fn create_api_key_audited(
        &self,
        new: NewApiKey,
        key_prefix: &str,
        mut audit: NewAuditEvent,
    ) -> StoreResult<ApiKey> {
        let now = now();
        let id = new_id();
        audit.subject_id = Some(id.clone());
        on_write!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let key = sqlx::query_as::<_, ApiKey>(
                "INSERT INTO api_keys
                     (id, name, key_hash, scopes, created_at, expires_at, key_prefix, created_by)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *",
            )
            .bind(&id)
            .bind(&new.name)
            .bind(&new.key_hash)
            .bind(Json(&new.scopes))
            .bind(ts(now))
            .bind(opt_ts(new.expires_at))
            .bind(key_prefix)
            .bind(&audit.actor)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| StoreError::from_insert("API key with this hash", e))?;
            insert_audit!(&mut *tx, now, &audit)?;
            tx.commit().await?;
            Ok(key)
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

    /// One API key by id, revoked or not.
    pub async fn get_api_key(&self, id: &str) -> StoreResult<Option<ApiKey>> {
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, ApiKey>("SELECT * FROM api_keys WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// One page of API keys, newest first, only those with `status` at
    /// `now` if given; with the number of matching keys in total.
    pub async fn list_api_keys(
        &self,
        status: Option<ApiKeyStatus>,
        now: DateTime<Utc>,
        offset: u64,
        limit: u32,
    ) -> StoreResult<(Vec<ApiKey>, u64)> {
        let status = status.map(|s| s.as_str());
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        let select = format!(
            "SELECT * FROM api_keys {LIST_WHERE} ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
        );
        let count = format!("SELECT COUNT(*) FROM api_keys {LIST_WHERE}");
        let (keys, total): (Vec<ApiKey>, i64) = on_read!(self, |pool| {
            let keys = sqlx::query_as::<_, ApiKey>(&select)
                .bind(status)
                .bind(ts(now))
                .bind(sql_limit(limit))
                .bind(offset)
                .fetch_all(pool)
                .await?;
            let total = sqlx::query_scalar(&count)
                .bind(status)
                .bind(ts(now))
                .fetch_one(pool)
                .await?;
            (keys, total)
        });
        Ok((keys, u64::try_from(total).unwrap_or(0)))
    }

    /// Revokes an API key; false if unknown or already revoked. No audit
    /// row and no last-admin check: the API uses
    /// [`Store::revoke_api_key_audited`].
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

    /// Revokes the API key `id` with the audit row `audit`, in one
    /// transaction, unless it is the last active admin key (then nothing
    /// is written). Revoking a revoked key changes nothing.
    ///
    /// Every key not yet revoked is locked (PostgreSQL: `FOR UPDATE`, in id
    /// order, so two revocations cannot deadlock; SQLite: the write
    /// transaction), so two concurrent revocations of the last two admin
    /// keys cannot both pass the check.
    pub async fn revoke_api_key_audited(
        &self,
        id: &str,
        audit: NewAuditEvent,
    ) -> StoreResult<ApiKeyRevocation> {
        let now = now();
        let lock_suffix = match self.backend {
            crate::store::Backend::Sqlite(_) => "",
            crate::store::Backend::Postgres(_) => " FOR UPDATE",
        };
        let select = format!(
            "SELECT * FROM api_keys WHERE id = $1 OR revoked_at IS NULL ORDER BY id{lock_suffix}"
        );
        on_write!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let keys = sqlx::query_as::<_, ApiKey>(&select)
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
            let Some(key) = keys.iter().find(|k| k.id == id).cloned() else {
                return Ok(ApiKeyRevocation::NotFound);
            };
            if key.revoked_at.is_some() {
                return Ok(ApiKeyRevocation::AlreadyRevoked(key));
            }
            let other_admins = keys
                .iter()
                .filter(|k| k.id != id && k.is_admin() && k.is_usable(now))
                .count();
            if key.is_admin() && key.is_usable(now) && other_admins == 0 {
                return Ok(ApiKeyRevocation::LastAdmin(key));
            }
            let key = sqlx::query_as::<_, ApiKey>(
                "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL
                 RETURNING *",
            )
            .bind(id)
            .bind(ts(now))
            .fetch_one(&mut *tx)
            .await?;
            insert_audit!(&mut *tx, now, &audit)?;
            tx.commit().await?;
            Ok(ApiKeyRevocation::Revoked(key))
        })
    }

    /// Records that the key `id` was used at `now`, unless a use within
    /// [`API_KEY_USE_PRECISION`] is recorded already (by this or another
    /// replica); true if it wrote. Callers skip it when the row they read
    /// is fresh ([`ApiKey::use_is_stale`]), so busy keys cost one write a
    /// minute, not one per request.
    pub async fn record_api_key_use(&self, id: &str, now: DateTime<Utc>) -> StoreResult<bool> {
        let stale_before = now - API_KEY_USE_PRECISION;
        Ok(on_write!(self, |pool| {
            sqlx::query(
                "UPDATE api_keys SET last_used_at = $2
                 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at <= $3)",
            )
            .bind(id)
            .bind(ts(now))
            .bind(ts(stale_before))
            .execute(pool)
            .await?
            .rows_affected()
                == 1
        }))
    }
}
