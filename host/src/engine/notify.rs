//! Notification dispatch: enqueueing one notification per notifier instance
//! ([`notify_all`]) and the `notifications` loop ([`tick`]) that claims due
//! notifications (Pending → Sending, disjoint across replicas), runs the
//! notifier connector's `notify` with the notification's id as the event id
//! (so retries carry the same idempotency key) and records the outcome.
//!
//! A stored notification's `payload` is
//! `{"summary", "severity", "occurred_at", "details"}` as written by
//! [`notify_all`]; rows written otherwise are delivered with their whole
//! payload as `details`.

use certplane_runtime::notifier::Event;
use certplane_runtime::{CallError, ConnectorError, Level, PluginKind};
use chrono::Utc;
use futures::future::join_all;
use serde_json::{Value, json};

use super::connectors::{build_instance, failure_for, observed};
use crate::engine::Engine;
use crate::store::{
    ActorType, JobFailure, NewAuditEvent, NewNotification, Notice, Notification, PluginInstance,
    StoreResult,
};

/// Notifications one tick claims at most.
pub const BATCH: u32 = 16;
/// Expired notification leases one tick reaps at most.
const REAP_BATCH: u32 = 500;
/// Attempt budget of a notification enqueued by [`notify_all`].
pub const MAX_ATTEMPTS: i32 = 8;

/// The severity as stored in a notification's payload.
pub fn severity_name(level: Level) -> &'static str {
    match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

fn parse_severity(name: Option<&str>) -> Level {
    match name {
        Some("trace") => Level::Trace,
        Some("debug") => Level::Debug,
        Some("warn") => Level::Warn,
        Some("error") => Level::Error,
        _ => Level::Info,
    }
}

/// Something to tell every notifier about.
#[derive(Debug, Clone)]
pub struct Announcement<'a> {
    /// Dotted event kind, e.g. `certificate.issued`.
    pub kind: &'a str,
    /// What the event is about, e.g. `certificate/<id>`.
    pub subject: &'a str,
    /// One line for humans.
    pub summary: &'a str,
    /// How bad it is.
    pub severity: Level,
    /// Extra structured details (a JSON object).
    pub details: Value,
}

/// Enqueues one notification of `kind` (e.g. `certificate.issued`) per
/// enabled notifier instance and wakes the dispatch loop. `subject` names
/// what the event is about (`certificate/<id>`), `summary` is one line for
/// humans, `details` a JSON object. Returns how many were enqueued.
pub async fn notify_all(
    engine: &Engine,
    kind: &str,
    subject: &str,
    summary: &str,
    severity: Level,
    details: Value,
) -> StoreResult<usize> {
    let notifiers = enabled_notifiers(engine).await?;
    let event = Announcement {
        kind,
        subject,
        summary,
        severity,
        details,
    };
    announce(engine, &notifiers, &event, None).await
}

/// The notifier instances that are not disabled.
pub async fn enabled_notifiers(engine: &Engine) -> StoreResult<Vec<PluginInstance>> {
    let mut notifiers = engine.store.list_notifiers().await?;
    notifiers.retain(|n| n.disabled_at.is_none());
    Ok(notifiers)
}

/// The stored payload of an announcement.
fn payload_of(event: &Announcement<'_>, occurred_at: i64) -> Value {
    json!({
        "summary": event.summary,
        "severity": severity_name(event.severity),
        "occurred_at": occurred_at,
        "details": event.details,
    })
}

/// `event` as a notice that a job outcome queues for every enabled notifier
/// in its own transaction.
pub fn notice(event: &Announcement<'_>, dedupe_key: Option<&str>) -> Notice {
    Notice {
        event_type: event.kind.to_owned(),
        subject: Some(event.subject.to_owned()),
        payload: payload_of(event, Utc::now().timestamp()),
        max_attempts: MAX_ATTEMPTS,
        dedupe_key: dedupe_key.map(str::to_owned),
    }
}

/// Enqueues `event` for each of `notifiers` and wakes the dispatch loop.
/// With a `dedupe_key`, a notifier that already has a notification with
/// that key gets none (for events periodic sweeps see repeatedly). Returns
/// how many were enqueued.
pub async fn announce(
    engine: &Engine,
    notifiers: &[PluginInstance],
    event: &Announcement<'_>,
    dedupe_key: Option<&str>,
) -> StoreResult<usize> {
    let occurred_at = Utc::now().timestamp();
    let mut enqueued = 0;
    for notifier in notifiers {
        let new = NewNotification {
            notifier_id: notifier.id.clone(),
            event_type: event.kind.to_owned(),
            subject: Some(event.subject.to_owned()),
            payload: payload_of(event, occurred_at),
            max_attempts: MAX_ATTEMPTS,
        };
        let added = match dedupe_key {
            None => engine.store.enqueue_notification(new).await.map(|_| true)?,
            Some(key) => engine.store.enqueue_notification_once(new, key).await?,
        };
        enqueued += usize::from(added);
    }
    if enqueued > 0 {
        engine.wake.wake_notifications();
    }
    Ok(enqueued)
}

/// The connector event of a stored notification; its id is the
/// notification's id.
pub fn event_of(n: &Notification) -> Event {
    let payload = &n.payload;
    let summary = payload
        .get("summary")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| n.subject.clone())
        .unwrap_or_else(|| n.event_type.clone());
    let occurred_at = payload
        .get("occurred_at")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| u64::try_from(n.created_at.timestamp()).unwrap_or(0));
    let details = match payload.get("details") {
        Some(d) => d.to_string(),
        None => payload.to_string(),
    };
    Event {
        id: n.id.clone(),
        kind: n.event_type.clone(),
        severity: parse_severity(payload.get("severity").and_then(Value::as_str)),
        summary,
        subject: n.subject.clone().unwrap_or_default(),
        occurred_at,
        details,
    }
}

/// One tick of the `notifications` loop: reaps expired leases, claims up to
/// [`BATCH`] due notifications and delivers them concurrently. Returns how
/// many were claimed.
pub async fn tick(engine: &Engine) -> StoreResult<usize> {
    let reaped = engine
        .store
        .reap_expired_notification_leases(REAP_BATCH)
        .await?;
    if reaped > 0 {
        tracing::warn!(reaped, "expired notification leases reaped");
    }
    let claimed = engine.store.claim_notifications(BATCH).await?;
    let n = claimed.len();
    join_all(claimed.into_iter().map(|notification| async move {
        deliver(engine, notification).await;
    }))
    .await;
    Ok(n)
}

/// Delivers one claimed notification and records the outcome.
async fn deliver(engine: &Engine, notification: Notification) {
    let Some(lease) = notification.lease() else {
        return;
    };
    let id = notification.id.as_str();
    let failure = match attempt(engine, &notification).await {
        Ok(()) => {
            match engine.store.mark_notification_sent(&lease).await {
                Ok(true) => {
                    crate::faults::point("notification_sent", "committed");
                    tracing::debug!(notification = id, "notification sent")
                }
                Ok(false) => {
                    tracing::warn!(notification = id, "sent, but the lease was lost first")
                }
                Err(e) => tracing::error!(notification = id, error = %e, "cannot mark sent"),
            }
            return;
        }
        Err(failure) => failure,
    };
    tracing::warn!(
        notification = id,
        error = %failure.error,
        permanent = failure.permanent,
        "notification delivery failed"
    );
    match engine
        .store
        .mark_notification_failed(&lease, &failure.error, failure.permanent, failure.retry_at)
        .await
    {
        Ok(true) => crate::faults::point("notification_failed", "committed"),
        Ok(false) => tracing::warn!(notification = id, "the lease was lost before the failure"),
        Err(e) => tracing::error!(notification = id, error = %e, "cannot record the failure"),
    }
}

/// Runs the notifier; on failure, how to retry (a rate-limited receiver's
/// Retry-After included).
async fn attempt(engine: &Engine, notification: &Notification) -> Result<(), JobFailure> {
    let notifier_id = notification.notifier_id.as_str();
    let row = match engine.store.get_notifier(notifier_id).await {
        Ok(Some(row)) => row,
        Ok(None) => {
            return Err(JobFailure::permanent(format!(
                "notifier {notifier_id} no longer exists"
            )));
        }
        // The database failed: retry later.
        Err(e) => {
            return Err(JobFailure::transient(format!(
                "loading notifier {notifier_id}: {e}"
            )));
        }
    };
    if row.disabled_at.is_some() {
        return Err(JobFailure::permanent(format!(
            "notifier {:?} is disabled",
            row.name
        )));
    }
    let instance = build_instance(
        engine,
        PluginKind::Notifier,
        &format!("notifier/{}", row.id),
        &row.plugin_name,
        &row.settings,
        row.encrypted_secrets.as_deref(),
        &row.grants,
    )
    .map_err(JobFailure::permanent)?;
    let event = event_of(notification);
    let result = observed(engine, &instance, "notify", instance.notify(&event)).await;
    if let Err(CallError::Connector {
        error: error @ (ConnectorError::InvalidConfig(_) | ConnectorError::Unauthorized(_)),
        ..
    }) = &result
    {
        disable(engine, &row.id, &row.name, &error.to_string()).await;
    }
    result.map_err(|e| failure_for(&e, Utc::now()))
}

/// Disables a notifier whose destination refused its configuration for
/// good (gone, bad credentials): retrying every event would only fail again
/// and delay the operator's notice. Updating the notifier enables it again.
async fn disable(engine: &Engine, id: &str, name: &str, why: &str) {
    match engine.store.disable_notifier(id).await {
        Ok(true) => {
            tracing::error!(notifier = %id, %name, reason = %why,
                "notifier disabled: its destination refused it for good; update it to enable it again");
            let event = NewAuditEvent {
                actor: "host".into(),
                actor_type: ActorType::System,
                action: "notifier.disabled".into(),
                subject_type: "notifier".into(),
                subject_id: Some(id.to_owned()),
                details: json!({ "reason": why }),
            };
            if let Err(e) = engine.store.record_audit(event).await {
                tracing::error!(notifier = %id, error = %e, "cannot audit the notifier's disabling");
            }
        }
        Ok(false) => {}
        Err(e) => tracing::error!(notifier = %id, error = %e, "cannot disable the notifier"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NotificationStatus;

    fn row(payload: Value) -> Notification {
        let now = Utc::now();
        Notification {
            id: "n1".into(),
            notifier_id: "w".into(),
            event_type: "certificate.issued".into(),
            subject: Some("certificate/c1".into()),
            payload,
            status: NotificationStatus::Sending,
            attempts: 1,
            max_attempts: 8,
            run_at: now,
            lease_owner: Some("me".into()),
            lease_expires_at: None,
            last_error: None,
            created_at: now,
            updated_at: now,
            sent_at: None,
        }
    }

    #[test]
    fn events_from_rows() {
        let e = event_of(&row(json!({
            "summary": "issued", "severity": "warn", "occurred_at": 42,
            "details": {"serial": "01"}
        })));
        assert_eq!(e.id, "n1");
        assert_eq!(e.kind, "certificate.issued");
        assert_eq!(e.subject, "certificate/c1");
        assert_eq!(e.summary, "issued");
        assert_eq!(e.severity, Level::Warn);
        assert_eq!(e.occurred_at, 42);
        assert_eq!(e.details, r#"{"serial":"01"}"#);

        let e = event_of(&row(json!({"free": "form"})));
        assert_eq!(e.summary, "certificate/c1");
        assert_eq!(e.severity, Level::Info);
        assert_eq!(e.details, r#"{"free":"form"}"#);
        assert!(e.occurred_at > 0);
    }

    #[test]
    fn severities_round_trip() {
        for level in [
            Level::Trace,
            Level::Debug,
            Level::Info,
            Level::Warn,
            Level::Error,
        ] {
            assert_eq!(parse_severity(Some(severity_name(level))), level);
        }
    }
}
