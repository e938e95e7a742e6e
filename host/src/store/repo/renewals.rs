//! Set-based renewal enqueue.

use crate::store::codec::{now, ts};
use crate::store::postgres::claims as pg;
use crate::store::repo::sql_limit;
use crate::store::sqlite::claims as lite;
use crate::store::{Store, StoreResult, on_write};

impl Store {
    /// One statement that creates an `issuance` (never issued) or `renewal`
    /// job for every active certificate whose `renew_at` has come and that
    /// has no open issuance/renewal job (open = not Completed/Cancelled; an
    /// exhausted Failed job stays open until an operator retries or cancels
    /// it, so a broken issuer is not hammered every sweep). Agent-key
    /// certificates get `AwaitingCsr` jobs, others `Pending`; all run on the
    /// host (`agent_id = "host"`). At most `limit` per call (loop until 0 to
    /// bound transaction size). Idempotent and safe under concurrent
    /// callers: returns how many jobs this call created.
    pub async fn enqueue_due_renewals(&self, max_attempts: i32, limit: u32) -> StoreResult<u64> {
        let now = now();
        Ok(on_write!(
            self,
            lite::ENQUEUE_RENEWALS,
            pg::ENQUEUE_RENEWALS,
            |pool, sql| {
                sqlx::query(sql)
                    .bind(ts(now))
                    .bind(max_attempts.max(1))
                    .bind(sql_limit(limit))
                    .execute(pool)
                    .await?
                    .rows_affected()
            }
        ))
    }
}
