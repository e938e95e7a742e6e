//! Notifications: enqueued by the host, claimed like jobs by the dispatch
//! loop (so two replicas never send one twice), retried with backoff; one
//! queue per notifier, which the operator can pause (disable) and empty
//! (cancel).

use std::time::Duration;

use sqlx::types::Json;

use crate::store::codec::{now, opt_ts, ts};
use crate::store::postgres::claims as pg;
use crate::store::repo::{insert_audit, sql_limit};
use crate::store::sqlite::claims as lite;
use crate::store::{
    BeginWrite as _, CancelledNotifications, NewAuditEvent, NewNotification, Notification,
    NotificationLease, NotificationStatus, PluginInstance, Store, StoreError, StoreResult, new_id,
    on_read, on_write,
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

    /// Enabled notifiers with at least one pending notification due now,
    /// by id: the queues the dispatch loop has work in.
    pub async fn notifiers_with_due_notifications(&self) -> StoreResult<Vec<String>> {
        let now = now();
        Ok(on_read!(self, |pool| {
            sqlx::query_scalar::<_, String>(
                "SELECT DISTINCT n.notifier_id FROM notifications n
                 JOIN notifiers r ON r.id = n.notifier_id
                 WHERE n.status = 'pending' AND n.run_at <= $1 AND r.disabled_at IS NULL
                 ORDER BY n.notifier_id",
            )
            .bind(ts(now))
            .fetch_all(pool)
            .await?
        }))
    }

    /// Claims up to `limit` due notifications of one notifier: Pending →
    /// Sending, attempt counted, leased to this store for `lease` (at least
    /// the store's lease duration; callers pass more when the notifier's
    /// deadline is longer, so a call still running never loses its lease).
    /// Nothing while the notifier is disabled. Disjoint across concurrent
    /// callers.
    pub async fn claim_notifier_notifications(
        &self,
        notifier_id: &str,
        limit: u32,
        lease: Duration,
    ) -> StoreResult<Vec<Notification>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = now();
        let expiry = self
            .lease_expiry(now)
            .max(now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::zero()));
        let owner = self.options.instance_id.as_str();
        let mut rows = on_write!(
            self,
            lite::CLAIM_NOTIFIER_NOTIFICATIONS,
            pg::CLAIM_NOTIFIER_NOTIFICATIONS,
            |pool, sql| {
                sqlx::query_as::<_, Notification>(sql)
                    .bind(owner)
                    .bind(ts(expiry))
                    .bind(ts(now))
                    .bind(sql_limit(limit))
                    .bind(notifier_id)
                    .fetch_all(pool)
                    .await?
            }
        );
        rows.sort_by(|a, b| a.run_at.cmp(&b.run_at).then_with(|| a.id.cmp(&b.id)));
        Ok(rows)
    }

    /// Cancels a notifier's queue in one transaction with `audit` (written
    /// only when something changed): its pending notifications become
    /// Cancelled with `reason` as their last error, and those being sent
    /// are marked so that their delivery is not retried. `None` if the
    /// notifier does not exist.
    pub async fn cancel_notifier_notifications(
        &self,
        notifier_id: &str,
        reason: &str,
        audit: NewAuditEvent,
    ) -> StoreResult<Option<CancelledNotifications>> {
        let now = now();
        on_write!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let exists =
                sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM notifiers WHERE id = $1")
                    .bind(notifier_id)
                    .fetch_one(&mut *tx)
                    .await?
                    == 1;
            if !exists {
                tx.rollback().await?;
                return Ok(None);
            }
            let cancelled = sqlx::query(
                "UPDATE notifications SET status = 'cancelled', last_error = $2, updated_at = $3
                 WHERE notifier_id = $1 AND status = 'pending'",
            )
            .bind(notifier_id)
            .bind(reason)
            .bind(ts(now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let marked = sqlx::query(
                "UPDATE notifications SET cancel_requested_at = $2, updated_at = $2
                 WHERE notifier_id = $1 AND status = 'sending' AND cancel_requested_at IS NULL",
            )
            .bind(notifier_id)
            .bind(ts(now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let in_flight = sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM notifications
                 WHERE notifier_id = $1 AND status = 'sending' AND cancel_requested_at IS NOT NULL",
            )
            .bind(notifier_id)
            .fetch_one(&mut *tx)
            .await?;
            if cancelled + marked > 0 {
                let mut event = audit;
                if let serde_json::Value::Object(details) = &mut event.details {
                    details.insert("cancelled".into(), cancelled.into());
                    details.insert("in_flight".into(), marked.into());
                }
                insert_audit!(&mut *tx, now, &event)?;
            }
            tx.commit().await?;
            Ok(Some(CancelledNotifications {
                cancelled,
                in_flight: u64::try_from(in_flight).unwrap_or(0),
            }))
        })
    }

    /// Disables (`disabled = true`) or enables a notifier in one
    /// transaction with `audit`, which is written only when the state
    /// changes (a repeated call changes nothing; a retired notifier stays
    /// disabled). Returns the row and
    /// whether it changed; `None` if the notifier does not exist.
    pub async fn set_notifier_disabled(
        &self,
        notifier_id: &str,
        disabled: bool,
        audit: NewAuditEvent,
    ) -> StoreResult<Option<(PluginInstance, bool)>> {
        let now = now();
        let sql = if disabled {
            "UPDATE notifiers SET disabled_at = $2, updated_at = $2
             WHERE id = $1 AND disabled_at IS NULL"
        } else {
            "UPDATE notifiers SET disabled_at = NULL, updated_at = $2
             WHERE id = $1 AND disabled_at IS NOT NULL AND retired_at IS NULL"
        };
        on_write!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let changed = sqlx::query(sql)
                .bind(notifier_id)
                .bind(ts(now))
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            let row = sqlx::query_as::<_, PluginInstance>("SELECT * FROM notifiers WHERE id = $1")
                .bind(notifier_id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else {
                tx.rollback().await?;
                return Ok(None);
            };
            if changed {
                insert_audit!(&mut *tx, now, &audit)?;
            }
            tx.commit().await?;
            Ok(Some((row, changed)))
        })
    }

    /// A notifier's queue: (pending, being sent).
    pub async fn notifier_queue_counts(&self, notifier_id: &str) -> StoreResult<(u64, u64)> {
        let (pending, sending): (i64, i64) = on_read!(self, |pool| {
            sqlx::query_as(
                "SELECT COALESCE(SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END), 0),
                        COALESCE(SUM(CASE WHEN status = 'sending' THEN 1 ELSE 0 END), 0)
                 FROM notifications WHERE notifier_id = $1",
            )
            .bind(notifier_id)
            .fetch_one(pool)
            .await?
        });
        Ok((
            u64::try_from(pending).unwrap_or(0),
            u64::try_from(sending).unwrap_or(0),
        ))
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
                    .bind(crate::store::codec::storable(error).into_owned())
                    .bind(base)
                    .bind(cap)
                    .bind(permanent)
                    .bind(opt_ts(self.options.backoff.cap_retry_at(retry_at, now)))
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
