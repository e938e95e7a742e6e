//! Jobs waiting on someone else (an agent's CSR, a human's approval) that
//! waited too long.

use chrono::{DateTime, Utc};

use crate::store::codec::{now, ts};
use crate::store::repo::sql_limit;
use crate::store::{JobStatus, Store, StoreError, StoreResult, on_write};

/// `$1` the waiting status, `$2` now, `$3` the reason, `$4` the cutoff, `$5`
/// the limit. The literal `IN` term matches the partial index
/// `jobs_waiting_since`: with `status = $1` alone the planners scanned the
/// whole jobs table, under the write lock, on every reaper tick.
pub(crate) const EXPIRE_WAITING: &str = "
UPDATE jobs SET status = 'failed', attempts = attempts + 1, last_error = $3,
       run_at = $2, finished_at = $2, updated_at = $2
WHERE id IN (SELECT id FROM jobs
             WHERE status IN ('awaiting_csr', 'awaiting_approval') AND status = $1
               AND updated_at < $4
             ORDER BY updated_at LIMIT $5)
  AND status = $1";

impl Store {
    /// Jobs in `status` (AwaitingCsr or AwaitingApproval) unchanged since
    /// before `cutoff` → Failed with `reason`, counting one attempt, due for
    /// retry at once (the retry loop returns them to Pending while their
    /// budget lasts). At most `limit`; returns how many.
    pub async fn expire_waiting_jobs(
        &self,
        status: JobStatus,
        cutoff: DateTime<Utc>,
        reason: &str,
        limit: u32,
    ) -> StoreResult<u64> {
        if !matches!(status, JobStatus::AwaitingCsr | JobStatus::AwaitingApproval) {
            return Err(StoreError::InvalidArgument(format!(
                "{status} is not a waiting status"
            )));
        }
        let now = now();
        Ok(on_write!(self, |pool| {
            sqlx::query(EXPIRE_WAITING)
                .bind(status)
                .bind(ts(now))
                .bind(reason)
                .bind(ts(cutoff))
                .bind(sql_limit(limit))
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }
}
