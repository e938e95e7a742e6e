//! Audit events (API keys: `api_keys.rs`).

use chrono::{DateTime, Utc};

use crate::store::codec::{now, opt_ts};
use crate::store::repo::{insert_audit, sql_limit};
use crate::store::{AuditEvent, NewAuditEvent, Store, StoreResult, on_read, on_write};

/// WHERE clause of the audit listing: `$1` subject type, `$2` subject id,
/// `$3` actor, `$4` since, `$5` until (each NULL for "any"). Valid on both
/// backends: timestamps are bound through `codec::ts`, so SQLite compares
/// its fixed-width text and PostgreSQL its `TIMESTAMPTZ`.
const AUDIT_WHERE: &str =
    "WHERE ($1 IS NULL OR subject_type = $1) AND ($2 IS NULL OR subject_id = $2)
       AND ($3 IS NULL OR actor = $3) AND ($4 IS NULL OR at >= $4) AND ($5 IS NULL OR at < $5)";

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
        let (events, _) = self
            .list_audit_events_filtered(subject_type, subject_id, None, (None, None), 0, limit)
            .await?;
        Ok(events)
    }

    /// One page of the audit events matching every given condition, newest
    /// first (`at DESC, id DESC`): only of this subject type / subject id /
    /// actor (exact matches) and within `period` = `(since, until)`
    /// (`since <= at < until`); `None` means "any". Skips `offset` rows and
    /// returns at most `limit`, with the number of matching events in total.
    pub async fn list_audit_events_filtered(
        &self,
        subject_type: Option<&str>,
        subject_id: Option<&str>,
        actor: Option<&str>,
        period: (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
        offset: u64,
        limit: u32,
    ) -> StoreResult<(Vec<AuditEvent>, u64)> {
        let (since, until) = period;
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        let select = format!(
            "SELECT * FROM audit_events {AUDIT_WHERE} ORDER BY at DESC, id DESC LIMIT $6 OFFSET $7"
        );
        let count = format!("SELECT COUNT(*) FROM audit_events {AUDIT_WHERE}");
        let (events, total): (Vec<AuditEvent>, i64) = on_read!(self, |pool| {
            let events = sqlx::query_as::<_, AuditEvent>(&select)
                .bind(subject_type)
                .bind(subject_id)
                .bind(actor)
                .bind(opt_ts(since))
                .bind(opt_ts(until))
                .bind(sql_limit(limit))
                .bind(offset)
                .fetch_all(pool)
                .await?;
            let total = sqlx::query_scalar(&count)
                .bind(subject_type)
                .bind(subject_id)
                .bind(actor)
                .bind(opt_ts(since))
                .bind(opt_ts(until))
                .fetch_one(pool)
                .await?;
            (events, total)
        });
        Ok((events, u64::try_from(total).unwrap_or(0)))
    }
}
