//! Notifications: enqueued by the host, claimed like jobs by the dispatch
//! loop (so two replicas never send one twice), retried with backoff.

use sqlx::types::Json;

use crate::store::codec::{now, opt_ts, ts};
use crate::store::postgres::claims as pg;
use crate::store::repo::sql_limit;
use crate::store::sqlite::claims as lite;
use crate::store::{
    NewNotification, Notification, NotificationLease, NotificationStatus, Store, StoreError,
    StoreResult, new_id, on_read, on_write,
};

impl Store {
    /// Queues a notification, deliverable now.
    pub async fn enqueue_notification(&self, new: NewNotification) -> StoreResult<Notification> {
        self.insert_notification(new, None)
            .await?
            .ok_or_else(|| StoreError::InvalidArgument("the notification was not inserted".into()))
    }

    /// Enqueues `new` unless this notifier already has a notification with
    /// `dedupe_key` (in any status); true if enqueued. For events that
    /// periodic sweeps see again and again (expiry stages, failed jobs).
    pub async fn enqueue_notification_once(
        &self,
        new: NewNotification,
        dedupe_key: &str,
    ) -> StoreResult<bool> {
        Ok(self
            .insert_notification(new, Some(dedupe_key))
            .await?
            .is_some())
    }

    /// The row, or `None` when `dedupe_key` is already taken.
    async fn insert_notification(
        &self,
        new: NewNotification,
        dedupe_key: Option<&str>,
    ) -> StoreResult<Option<Notification>> {
        if new.max_attempts < 1 {
            return Err(StoreError::InvalidArgument(
                "max_attempts must be >= 1".into(),
            ));
        }
        let now = now();
        Ok(on_write!(self, |pool| {
            sqlx::query_as::<_, Notification>(
                "INSERT INTO notifications (id, notifier_id, event_type, subject, payload, status,
                     attempts, max_attempts, run_at, created_at, updated_at, dedupe_key)
                 VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $7, $7, $7, $8)
                 ON CONFLICT DO NOTHING RETURNING *",
            )
            .bind(new_id())
            .bind(&new.notifier_id)
            .bind(&new.event_type)
            .bind(new.subject.clone())
            .bind(Json(&new.payload))
            .bind(new.max_attempts)
            .bind(ts(now))
            .bind(dedupe_key)
            .fetch_optional(pool)
            .await?
        }))
    }

    /// Claims up to `limit` due notifications: Pending → Sending, attempt
    /// counted, leased to this store. Disjoint across concurrent callers.
    pub async fn claim_notifications(&self, limit: u32) -> StoreResult<Vec<Notification>> {
        let now = now();
        let owner = self.options.instance_id.as_str();
        let mut rows = on_write!(
            self,
            lite::CLAIM_NOTIFICATIONS,
            pg::CLAIM_NOTIFICATIONS,
            |pool, sql| {
                sqlx::query_as::<_, Notification>(sql)
                    .bind(owner)
                    .bind(ts(self.lease_expiry(now)))
                    .bind(ts(now))
                    .bind(sql_limit(limit))
                    .fetch_all(pool)
                    .await?
            }
        );
        rows.sort_by(|a, b| a.run_at.cmp(&b.run_at).then_with(|| a.id.cmp(&b.id)));
        Ok(rows)
    }

    /// Sending → Sent for the lease holder; false if the lease was lost.
    pub async fn mark_notification_sent(&self, lease: &NotificationLease) -> StoreResult<bool> {
        let now = now();
        Ok(on_write!(self, |pool| {
            sqlx::query(
                "UPDATE notifications SET status = 'sent', sent_at = $4, lease_expires_at = NULL,
                        updated_at = $4
                 WHERE id = $1 AND status = 'sending' AND lease_owner = $2 AND attempts = $3",
            )
            .bind(&lease.notification_id)
            .bind(&lease.owner)
            .bind(lease.attempt)
            .bind(ts(now))
            .execute(pool)
            .await?
            .rows_affected()
                == 1
        }))
    }

    /// A failed delivery: back to Pending after backoff (or at `retry_at`,
    /// the receiver's Retry-After) while the budget lasts, else (or if
    /// `permanent`) Failed. False if the lease was lost.
    pub async fn mark_notification_failed(
        &self,
        lease: &NotificationLease,
        error: &str,
        permanent: bool,
        retry_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> StoreResult<bool> {
        let now = now();
        let base = self.options.backoff.base.as_secs_f64();
        let cap = self.options.backoff.cap.as_secs_f64();
        Ok(on_write!(
            self,
            lite::FAIL_NOTIFICATION,
            pg::FAIL_NOTIFICATION,
            |pool, sql| {
                sqlx::query(sql)
                    .bind(&lease.notification_id)
                    .bind(&lease.owner)
                    .bind(lease.attempt)
                    .bind(ts(now))
                    .bind(error)
                    .bind(base)
                    .bind(cap)
                    .bind(permanent)
                    .bind(opt_ts(retry_at))
                    .execute(pool)
                    .await?
                    .rows_affected()
                    == 1
            }
        ))
    }

    /// Sending notifications whose lease expired → Pending after backoff
    /// (Failed when out of budget). At most `limit`; returns how many.
    pub async fn reap_expired_notification_leases(&self, limit: u32) -> StoreResult<u64> {
        let now = now();
        let base = self.options.backoff.base.as_secs_f64();
        let cap = self.options.backoff.cap.as_secs_f64();
        Ok(on_write!(
            self,
            lite::REAP_NOTIFICATIONS,
            pg::REAP_NOTIFICATIONS,
            |pool, sql| {
                sqlx::query(sql)
                    .bind(ts(now))
                    .bind(sql_limit(limit))
                    .bind(base)
                    .bind(cap)
                    .execute(pool)
                    .await?
                    .rows_affected()
            }
        ))
    }

    /// One page of notifications, newest first (`created_at DESC, id DESC`),
    /// only in `status` if given: skips `offset` rows, returns at most
    /// `limit`, with the number of matching notifications in total.
    pub async fn list_notifications(
        &self,
        status: Option<NotificationStatus>,
        notifier_id: Option<&str>,
        offset: u64,
        limit: u32,
    ) -> StoreResult<(Vec<Notification>, u64)> {
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        let (items, total): (Vec<Notification>, i64) = on_read!(self, |pool| {
            let items = sqlx::query_as::<_, Notification>(
                "SELECT * FROM notifications
                 WHERE ($1 IS NULL OR status = $1) AND ($4 IS NULL OR notifier_id = $4)
                 ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3",
            )
            .bind(status)
            .bind(sql_limit(limit))
            .bind(offset)
            .bind(notifier_id)
            .fetch_all(pool)
            .await?;
            let total = sqlx::query_scalar(
                "SELECT COUNT(*) FROM notifications
                 WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR notifier_id = $2)",
            )
            .bind(status)
            .bind(notifier_id)
            .fetch_one(pool)
            .await?;
            (items, total)
        });
        Ok((items, u64::try_from(total).unwrap_or(0)))
    }

    /// One notification by id.
    pub async fn get_notification(&self, id: &str) -> StoreResult<Option<Notification>> {
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, Notification>("SELECT * FROM notifications WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        }))
    }
}
