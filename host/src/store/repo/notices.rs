//! Notices: an event queued as one notification per enabled notifier, in
//! the transaction of what caused it, together with the alert conditions
//! (docs/events.md) it opens and clears. A condition's key is in
//! `alert_conditions` while it is open; a resolution is only told while its
//! condition is open, so notifiers never hear of a recovery from nothing.

use serde_json::Value;

use crate::store::codec::now;
use crate::store::{BeginWrite, Store, StoreError, StoreResult, on_write};

/// What a notice does to one alert condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertChange {
    /// Opens the condition (again: a second trigger of an open one is
    /// told too, with the same key).
    Trigger(String),
    /// Clears the condition when it is open.
    Resolve(String),
}

/// When a notice is sent at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SendWhen {
    /// Always.
    #[default]
    Always,
    /// Only when one of its triggers opened a condition that was not open
    /// (events a sweep sees on every tick, e.g. an agent staying silent).
    Opened,
    /// Only when it cleared an open condition (recoveries).
    Resolved,
}

/// A notification for every enabled notifier, queued with the outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// Event type, e.g. `certificate.issued`.
    pub event_type: String,
    /// What it is about, e.g. `certificate/<id>`.
    pub subject: Option<String>,
    /// Stored payload (`summary`, `severity`, `occurred_at`, `details`);
    /// `details.alerts` is filled in with the conditions it really
    /// changed.
    pub payload: Value,
    /// Attempt budget of each notification.
    pub max_attempts: i32,
    /// With a key, a notifier that already has a notification with it gets
    /// none (events that sweeps see repeatedly).
    pub dedupe_key: Option<String>,
    /// The alert conditions it opens and clears.
    pub alerts: Vec<AlertChange>,
    /// When it is sent.
    pub send_when: SendWhen,
}

impl Notice {
    /// Checks what the database would refuse less clearly.
    pub(crate) fn check(&self) -> StoreResult<()> {
        if self.max_attempts < 1 {
            return Err(StoreError::InvalidArgument(
                "max_attempts must be >= 1".into(),
            ));
        }
        Ok(())
    }
}

/// `payload` with `details.alerts` set to what the notice changed.
pub(crate) fn with_alerts(payload: &Value, changed: Vec<Value>) -> Value {
    let mut payload = payload.clone();
    if let Some(obj) = payload.as_object_mut() {
        let details = obj
            .entry("details")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(details) = details.as_object_mut() {
            details.insert("alerts".into(), Value::Array(changed));
        }
    }
    payload
}

/// Queues `notices` inside the open transaction `tx` at `now`: opens and
/// clears their conditions and inserts one notification per enabled
/// notifier for each that is to be sent. Evaluates to the number of
/// notifications inserted. `$notifiers` (`&mut Option<Vec<(String,)>>`)
/// keeps the enabled notifiers once read, for the other outcomes of the
/// same transaction.
macro_rules! queue_notices {
    ($tx:expr, $now:expr, $notices:expr) => {
        $crate::store::repo::notices::queue_notices!($tx, $now, $notices, &mut None)
    };
    ($tx:expr, $now:expr, $notices:expr, $notifiers:expr) => {
        $crate::store::repo::notices::queue_notices!($tx, $now, $notices, $notifiers, None)
    };
    ($tx:expr, $now:expr, $notices:expr, $notifiers:expr, $cleared:expr) => {
        async {
            let tx = $tx;
            let notices: &[$crate::store::Notice] = $notices;
            let read: &mut Option<Vec<(String,)>> = $notifiers;
            // The conditions cleared already by one DELETE for several
            // outcomes (`sqlite::outcome_batch`); `None`: cleared here.
            let cleared_before: Option<&[String]> = $cleared;
            let mut queued: u64 = 0;
            if notices.is_empty() {
                return Ok::<u64, $crate::store::StoreError>(0);
            }
            let notifiers: &[(String,)] = match read {
                Some(known) => known,
                None => read.insert(
                    sqlx::query_as("SELECT id FROM notifiers WHERE disabled_at IS NULL ORDER BY id")
                        .fetch_all(&mut **tx)
                        .await?,
                ),
            };
            for notice in notices {
                let mut changed = Vec::new();
                let (mut opened, mut resolved) = (false, false);
                // Every condition the notice clears, in one statement.
                let to_resolve: Vec<&str> = notice
                    .alerts
                    .iter()
                    .filter_map(|a| match a {
                        $crate::store::AlertChange::Resolve(key) => Some(key.as_str()),
                        $crate::store::AlertChange::Trigger(_) => None,
                    })
                    .collect();
                let mut cleared: Vec<String> = Vec::new();
                if let Some(before) = cleared_before {
                    cleared = before
                        .iter()
                        .filter(|key| to_resolve.contains(&key.as_str()))
                        .cloned()
                        .collect();
                } else if !to_resolve.is_empty() {
                    let mut qb = sqlx::QueryBuilder::new("DELETE FROM alert_conditions WHERE key IN (");
                    let mut keys = qb.separated(", ");
                    for key in &to_resolve {
                        keys.push_bind(*key);
                    }
                    qb.push(") RETURNING key");
                    cleared = qb
                        .build_query_scalar::<String>()
                        .fetch_all(&mut **tx)
                        .await?;
                }
                for alert in &notice.alerts {
                    match alert {
                        $crate::store::AlertChange::Trigger(key) => {
                            let inserted = sqlx::query(
                                "INSERT INTO alert_conditions (key, event_type, opened_at)
                                 VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING",
                            )
                            .bind(key)
                            .bind(&notice.event_type)
                            .bind($crate::store::codec::ts($now))
                            .execute(&mut **tx)
                            .await?
                            .rows_affected();
                            opened |= inserted > 0;
                            changed.push(serde_json::json!({ "key": key, "state": "triggered" }));
                        }
                        $crate::store::AlertChange::Resolve(key) => {
                            if cleared.contains(key) {
                                resolved = true;
                                changed
                                    .push(serde_json::json!({ "key": key, "state": "resolved" }));
                            }
                        }
                    }
                }
                let send = match notice.send_when {
                    $crate::store::SendWhen::Always => true,
                    $crate::store::SendWhen::Opened => opened,
                    $crate::store::SendWhen::Resolved => resolved,
                };
                if !send {
                    continue;
                }
                // An event about no condition carries no `alerts` at all.
                let payload = if notice.alerts.is_empty() {
                    notice.payload.clone()
                } else {
                    $crate::store::repo::notices::with_alerts(&notice.payload, changed)
                };
                for (notifier_id,) in notifiers {
                    queued += sqlx::query(
                        "INSERT INTO notifications (id, notifier_id, event_type, subject,
                             payload, status, attempts, max_attempts, run_at, created_at,
                             updated_at, dedupe_key)
                         VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $7, $7, $7, $8)
                         ON CONFLICT DO NOTHING",
                    )
                    .bind($crate::store::new_id())
                    .bind(notifier_id)
                    .bind(&notice.event_type)
                    .bind(notice.subject.clone())
                    .bind(sqlx::types::Json(&payload))
                    .bind(notice.max_attempts)
                    .bind($crate::store::codec::ts($now))
                    .bind(notice.dedupe_key.clone())
                    .execute(&mut **tx)
                    .await?
                    .rows_affected();
                }
            }
            Ok(queued)
        }
        .await
    };
}
pub(crate) use queue_notices;

/// Key of the deployment condition of a certificate on a target.
pub fn deployment_key(certificate_id: &str, target_id: &str) -> String {
    format!("deployment:{certificate_id}:{target_id}")
}

/// Key of the verification condition of a certificate on a target.
pub fn verification_key(certificate_id: &str, target_id: &str) -> String {
    format!("verification:{certificate_id}:{target_id}")
}

impl Store {
    /// Queues `notices` in a transaction of their own (events found by
    /// sweeps, not by a job's outcome). Returns the notifications queued.
    pub async fn queue_notices(&self, notices: &[Notice]) -> StoreResult<u64> {
        for notice in notices {
            notice.check()?;
        }
        let now = now();
        Ok(on_write!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let queued = queue_notices!(&mut tx, now, notices)?;
            tx.commit().await?;
            queued
        }))
    }

    /// Which of `keys` are open alert conditions.
    pub async fn alert_conditions_open(&self, keys: &[&str]) -> StoreResult<Vec<String>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        Ok(crate::store::on_read!(self, |pool| {
            let mut qb = sqlx::QueryBuilder::new("SELECT key FROM alert_conditions WHERE key IN (");
            let mut list = qb.separated(", ");
            for key in keys {
                list.push_bind(*key);
            }
            qb.push(")");
            qb.build_query_scalar::<String>().fetch_all(pool).await?
        }))
    }

    /// The open alert conditions whose key starts with `prefix` (e.g.
    /// `agent:`), at most `limit`.
    pub async fn open_alert_conditions(
        &self,
        prefix: &str,
        limit: u32,
    ) -> StoreResult<Vec<String>> {
        let pattern = format!("{}%", prefix.replace('%', "").replace('_', "\\_"));
        Ok(crate::store::on_read!(self, |pool| {
            sqlx::query_scalar::<_, String>(
                "SELECT key FROM alert_conditions WHERE key LIKE $1 ESCAPE '\\' ORDER BY key LIMIT $2",
            )
            .bind(&pattern)
            .bind(crate::store::repo::sql_limit(limit))
            .fetch_all(pool)
            .await?
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn alerts_go_into_the_details() {
        let payload = json!({ "summary": "s", "details": { "reason": "r" } });
        let out = with_alerts(&payload, vec![json!({ "key": "k", "state": "resolved" })]);
        assert_eq!(out["details"]["reason"], "r");
        assert_eq!(out["details"]["alerts"][0]["key"], "k");
        let bare = with_alerts(&json!({}), vec![]);
        assert_eq!(bare["details"]["alerts"], json!([]));
    }
}
