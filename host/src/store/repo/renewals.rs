//! Set-based renewal enqueue, the next due time, and renewing many
//! certificates at once.

use chrono::{DateTime, Utc};

use crate::store::codec::{now, ts};
use crate::store::postgres::claims as pg;
use crate::store::repo::insert_audit;
use crate::store::repo::sql_limit;
use crate::store::sqlite::claims as lite;
use crate::store::{NewAuditEvent, Store, StoreResult, on_read, on_write};

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
                    .bind(now.timestamp_millis())
                    .execute(pool)
                    .await?
                    .rows_affected()
            }
        ))
    }

    /// The earliest `renew_at` of an active certificate without an open
    /// issuance/renewal job: when the sweep next has work, unless something
    /// changes before. `None` when no certificate is waiting to fall due.
    pub async fn next_renewal_due(&self) -> StoreResult<Option<DateTime<Utc>>> {
        let next: Option<DateTime<Utc>> = on_read!(self, |pool| {
            sqlx::query_scalar::<_, DateTime<Utc>>(
                "SELECT renew_at FROM certificates
                 WHERE status = 'active' AND open_issuance = 0
                 ORDER BY renew_at LIMIT 1",
            )
            .fetch_optional(pool)
            .await?
        });
        Ok(next)
    }

    /// Makes every active certificate of `issuer_id` and/or `owner` (both
    /// `None`: every active certificate) due now, and records `audit` with
    /// the counts in the same transaction. The renewal sweep, woken by the
    /// caller, turns them into jobs in batches. Certificates already due
    /// are left as they are and not counted.
    pub async fn renew_now_where(
        &self,
        issuer_id: Option<&str>,
        owner: Option<&str>,
        audit: &NewAuditEvent,
    ) -> StoreResult<RenewNow> {
        let now = now();
        on_write!(self, |pool| {
            let mut tx = crate::store::BeginWrite::begin_write(pool).await?;
            let open: Vec<i64> = sqlx::query_scalar(
                "UPDATE certificates SET renew_at = $1, updated_at = $1
                 WHERE status = 'active' AND renew_at > $1
                   AND ($2 IS NULL OR issuer_id = $2) AND ($3 IS NULL OR owner = $3)
                 RETURNING open_issuance",
            )
            .bind(ts(now))
            .bind(issuer_id)
            .bind(owner)
            .fetch_all(&mut *tx)
            .await?;
            let under_way = open.iter().filter(|n| **n > 0).count() as u64;
            let counts = RenewNow {
                renewing: open.len() as u64 - under_way,
                under_way,
            };
            let mut event = audit.clone();
            if let Some(details) = event.details.as_object_mut() {
                details.insert("renewing".into(), serde_json::json!(counts.renewing));
                details.insert("under_way".into(), serde_json::json!(counts.under_way));
            }
            insert_audit!(&mut *tx, now, &event)?;
            tx.commit().await?;
            Ok(counts)
        })
    }
}

/// What [`Store::renew_now_where`] made due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewNow {
    /// Certificates the renewal sweep will now renew.
    pub renewing: u64,
    /// Certificates whose issuance or renewal was already under way: the
    /// version that job records is their renewal (it sets their next
    /// renewal from that version); a new job is made only if it fails for
    /// good.
    pub under_way: u64,
}
