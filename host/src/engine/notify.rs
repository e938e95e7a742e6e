//! Notification dispatch: enqueueing one notification per notifier instance
//! ([`notify_all`]) and the `notifications` loop ([`spawn_loop`]) that
//! claims due notifications queue by queue, one queue per notifier (Pending
//! → Sending, disjoint across replicas), runs the notifier connector's
//! `notify` with the notification's id as the event id (so retries carry
//! the same idempotency key) in a task of its own and records the outcome;
//! and the operator's levers on a notifier's queue ([`set_disabled`],
//! [`cancel_pending`]).
//!
//! A stored notification's `payload` is
//! `{"summary", "severity", "occurred_at", "details"}` as written by
//! [`notify_all`]; rows written otherwise are delivered with their whole
//! payload as `details`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certplane_runtime::notifier::Event;
use certplane_runtime::{CallError, ConnectorError, Level, PluginInstance, PluginKind};
use chrono::Utc;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connectors::{build_instance, failure_for, observed};
use crate::engine::Engine;
use crate::engine::error::{EngineError, EngineResult};
use crate::scheduler::ticker::{LoopSpec, Scheduler, TickReport};
use crate::store::{
    ActorType, AlertChange, CancelledNotifications, JobFailure, NewAuditEvent, Notice,
    Notification, PluginInstance as StoredNotifier, SendWhen, StoreResult,
};

/// How much longer than the notifier's deadline a claim's lease lasts (the
/// store's lease duration is the floor).
const LEASE_MARGIN: Duration = Duration::from_secs(30);
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
    /// Extra structured details (a JSON object, `docs/events.md`).
    pub details: Value,
    /// The alert conditions it opens and clears.
    pub alerts: Vec<AlertChange>,
    /// When it is sent at all.
    pub send_when: SendWhen,
}

impl<'a> Announcement<'a> {
    /// An announcement that opens or clears no condition.
    pub fn new(
        kind: &'a str,
        subject: &'a str,
        summary: &'a str,
        severity: Level,
        details: Value,
    ) -> Self {
        Announcement {
            kind,
            subject,
            summary,
            severity,
            details,
            alerts: Vec::new(),
            send_when: SendWhen::Always,
        }
    }
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
    let event = Announcement::new(kind, subject, summary, severity, details);
    announce(engine, &event, None).await
}

/// The notifier instances that are not disabled.
pub async fn enabled_notifiers(engine: &Engine) -> StoreResult<Vec<StoredNotifier>> {
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
        alerts: event.alerts.clone(),
        send_when: event.send_when,
    }
}

/// Queues `event` for every enabled notifier, with the conditions it opens
/// and clears, in one transaction, and wakes the dispatch loop. With a
/// `dedupe_key`, a notifier that already has a notification with that key
/// gets none (for events periodic sweeps see repeatedly). Returns how many
/// were enqueued.
pub async fn announce(
    engine: &Engine,
    event: &Announcement<'_>,
    dedupe_key: Option<&str>,
) -> StoreResult<usize> {
    let queued = engine
        .store
        .queue_notices(&[notice(event, dedupe_key)])
        .await?;
    if queued > 0 {
        engine.wake.wake_notifications();
    }
    Ok(usize::try_from(queued).unwrap_or(usize::MAX))
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

/// Starts the `notifications` loop under `spec` on `scheduler`, and makes
/// the scheduler's shutdown drain its deliveries.
///
/// Each notifier has its own queue: a tick claims, for every enabled
/// notifier with due notifications, at most as many as that notifier has
/// free delivery slots (its instance's `limits.concurrency` per host, the
/// same slots its calls take, so nothing claimed waits for one) and runs
/// each delivery as its own task. The tick never waits for a delivery, so a
/// notifier whose receiver hangs until the connector's deadline holds only
/// its own slots; every other notifier's deliveries are claimed and sent
/// meanwhile. A finished delivery frees its slot and wakes the loop, so a
/// busy queue is drained without waiting for the interval.
///
/// Shutdown: the deliveries in flight get the scheduler's grace period to
/// finish; those still running after it are stopped and recorded as failed
/// attempts, so they are retried (here or by another replica) without
/// waiting for their leases to lapse.
pub fn spawn_loop(scheduler: &mut Scheduler, engine: &Engine, spec: LoopSpec) {
    let dispatch = Arc::new(Dispatch {
        engine: engine.clone(),
        in_flight: Mutex::new(HashMap::new()),
        tasks: TaskTracker::new(),
        stop: CancellationToken::new(),
    });
    scheduler.drain_tasks(
        "notification-deliveries",
        dispatch.tasks.clone(),
        dispatch.stop.clone(),
    );
    let wake = engine.wake.notifications.clone();
    scheduler.spawn_loop(spec, Some(wake), move || {
        let dispatch = dispatch.clone();
        async move {
            let n = tick(&dispatch).await?;
            // Never "more pending": a notifier with more due work than free
            // slots is woken by its next finished delivery.
            Ok(TickReport::done(n as u64))
        }
    });
}

/// What the ticks of one `notifications` loop share.
struct Dispatch {
    engine: Engine,
    /// Deliveries running per notifier id.
    in_flight: Mutex<HashMap<String, usize>>,
    /// The delivery tasks, drained by the scheduler's shutdown.
    tasks: TaskTracker,
    /// Cancelled when shutdown stops the deliveries still running.
    stop: CancellationToken,
}

impl Dispatch {
    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        // A panic while the map is locked cannot leave it inconsistent
        // (single increments and decrements): keep using it.
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Slots of `notifier_id` free out of `slots`.
    fn free_slots(&self, notifier_id: &str, slots: usize) -> usize {
        slots.saturating_sub(self.in_flight().get(notifier_id).copied().unwrap_or(0))
    }

    /// Takes a slot of `notifier_id`, given back when the returned guard is
    /// dropped: the delivery finished, panicked or was dropped.
    fn take_slot(self: &Arc<Self>, notifier_id: &str) -> Slot {
        *self.in_flight().entry(notifier_id.to_owned()).or_default() += 1;
        Slot {
            dispatch: self.clone(),
            notifier_id: notifier_id.to_owned(),
        }
    }
}

/// The runner scope of a notifier's deliveries.
fn notifier_scope(notifier_id: &str) -> String {
    format!("notifier/{notifier_id}")
}

/// One delivery slot of a notifier.
struct Slot {
    dispatch: Arc<Dispatch>,
    notifier_id: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut map = self.dispatch.in_flight();
            if let Some(n) = map.get_mut(&self.notifier_id) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&self.notifier_id);
                }
            }
        }
        // The freed slot may let this notifier's next notification go now.
        self.dispatch.engine.wake.notifications.notify_one();
    }
}

/// How one notifier sends, built once per tick from its stored row.
enum Sender {
    Ready(PluginInstance, NotifierRow),
    /// Why it cannot send at all (plugin not loaded, unreadable secrets):
    /// its notifications fail for good, as retrying cannot help.
    Broken(String),
}

/// What a delivery needs of the notifier row beyond its instance.
#[derive(Clone)]
struct NotifierRow {
    id: String,
    name: String,
}

/// One tick of the `notifications` loop: reaps expired leases, then claims
/// each enabled notifier's due notifications up to its free slots and runs
/// each delivery as its own task. Returns how many were claimed; never
/// waits for a delivery.
async fn tick(dispatch: &Arc<Dispatch>) -> StoreResult<usize> {
    let engine = &dispatch.engine;
    let reaped = engine
        .store
        .reap_expired_notification_leases(REAP_BATCH)
        .await?;
    if reaped > 0 {
        tracing::warn!(reaped, "expired notification leases reaped");
    }
    let due = engine.store.notifiers_with_due_notifications().await?;
    if due.is_empty() {
        return Ok(0);
    }
    let rows: HashMap<String, StoredNotifier> = engine
        .store
        .list_notifiers()
        .await?
        .into_iter()
        .map(|row| (row.id.clone(), row))
        .collect();
    let mut claimed = 0;
    for notifier_id in due {
        let Some(row) = rows.get(&notifier_id) else {
            // Deleted since: delete refuses notifiers with pending
            // notifications, so this is a race with nothing to send.
            continue;
        };
        let sender = match build_instance(
            engine,
            PluginKind::Notifier,
            &format!("notifier/{}", row.id),
            &row.plugin_name,
            &row.settings,
            row.encrypted_secrets.as_deref(),
            &row.grants,
        ) {
            Ok(instance) => Sender::Ready(
                instance,
                NotifierRow {
                    id: row.id.clone(),
                    name: row.name.clone(),
                },
            ),
            Err(why) => Sender::Broken(why),
        };
        // As many in flight as the instance may make calls at once (its
        // calls wait for those same slots): a claimed notification never
        // waits for one while its lease runs. A broken notifier only fails
        // its notifications, one at a time.
        let slots = match &sender {
            Sender::Ready(instance, _) => engine
                .runner
                .instance_concurrency(instance.id())
                .unwrap_or(engine.config.limits.default_concurrency),
            Sender::Broken(_) => 1,
        };
        let free = dispatch.free_slots(&notifier_id, slots as usize);
        if free == 0 {
            // Busy (a slow receiver, say): only its own queue waits.
            continue;
        }
        // The lease must outlast the longest call the notifier may make, or
        // another replica would send the same notification while this one
        // still waits for its receiver.
        let lease = match &sender {
            Sender::Ready(instance, _) => instance.limits().deadline + LEASE_MARGIN,
            Sender::Broken(_) => LEASE_MARGIN,
        };
        let batch = engine
            .store
            .claim_notifier_notifications(
                &notifier_id,
                u32::try_from(free).unwrap_or(u32::MAX),
                lease,
            )
            .await?;
        claimed += batch.len();
        let sender = Arc::new(sender);
        for notification in batch {
            let slot = dispatch.take_slot(&notifier_id);
            dispatch.tasks.spawn(deliver(
                engine.clone(),
                sender.clone(),
                notification,
                slot,
                dispatch.stop.clone(),
            ));
        }
    }
    Ok(claimed)
}

/// Delivers one claimed notification and records the outcome; `_slot`
/// frees the notifier's delivery slot when this ends however it ends.
/// `stop` (shutdown after the grace period) ends the attempt early, as a
/// failed one.
async fn deliver(
    engine: Engine,
    sender: Arc<Sender>,
    notification: Notification,
    _slot: Slot,
    stop: CancellationToken,
) {
    let Some(lease) = notification.lease() else {
        return;
    };
    let id = notification.id.as_str();
    let notifier = notification.notifier_id.as_str();
    let run = async {
        match sender.as_ref() {
            Sender::Ready(instance, row) => attempt(&engine, instance, row, &notification).await,
            Sender::Broken(why) => Err(JobFailure::permanent(why.clone())),
        }
    };
    let halted = engine.runner.scope(&notifier_scope(notifier));
    let outcome = tokio::select! {
        biased;
        () = stop.cancelled() => {
            // The receiver may have got it: delivery is at least once, and
            // the retry carries the same id.
            Err(JobFailure::transient("delivery stopped: the host shut down"))
        }
        () = halted.cancelled() => {
            // Disabled: it waits with the queue; cancelled: the recorded
            // failure ends it as cancelled.
            Err(JobFailure::transient("delivery stopped: the operator disabled the notifier or cancelled its queue"))
        }
        outcome = run => outcome,
    };
    let failure = match outcome {
        Ok(()) => {
            match engine.store.mark_notification_sent(&lease).await {
                Ok(true) => {
                    crate::faults::point("notification_sent", "committed");
                    tracing::debug!(notification = id, notifier, "notification sent")
                }
                Ok(false) => {
                    tracing::warn!(
                        notification = id,
                        notifier,
                        "sent, but the lease was lost first"
                    )
                }
                Err(e) => {
                    tracing::error!(notification = id, notifier, error = %e, "cannot mark sent")
                }
            }
            return;
        }
        Err(failure) => failure,
    };
    tracing::warn!(
        notification = id,
        notifier,
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
        Ok(false) => tracing::warn!(
            notification = id,
            notifier,
            "the lease was lost before the failure"
        ),
        Err(e) => {
            tracing::error!(notification = id, notifier, error = %e, "cannot record the failure")
        }
    }
}

/// Runs the notifier; on failure, how to retry (a rate-limited receiver's
/// Retry-After included).
async fn attempt(
    engine: &Engine,
    instance: &PluginInstance,
    row: &NotifierRow,
    notification: &Notification,
) -> Result<(), JobFailure> {
    let event = event_of(notification);
    let result = observed(engine, instance, "notify", |i| async move {
        i.notify(&event).await
    })
    .await;
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
/// and delay the operator's notice. Its queue waits; updating or enabling
/// the notifier resumes it.
async fn disable(engine: &Engine, id: &str, name: &str, why: &str) {
    let event = NewAuditEvent {
        actor: "host".into(),
        actor_type: ActorType::System,
        action: "notifier.disabled".into(),
        subject_type: "notifier".into(),
        subject_id: Some(id.to_owned()),
        details: json!({ "reason": why }),
    };
    match engine.store.set_notifier_disabled(id, true, event).await {
        Ok(Some((_, true))) => {
            tracing::error!(notifier = %id, %name, reason = %why,
                "notifier disabled: its destination refused it for good; update it to enable it again");
        }
        Ok(_) => {}
        Err(e) => tracing::error!(notifier = %id, error = %e, "cannot disable the notifier"),
    }
}

/// A notifier's state after an operator's request.
#[derive(Debug, Clone)]
pub struct NotifierState {
    /// The notifier row.
    pub notifier: StoredNotifier,
    /// Whether this request changed it (false: it already was so).
    pub changed: bool,
    /// Notifications waiting in its queue.
    pub pending: u64,
    /// Notifications being sent right now.
    pub sending: u64,
}

/// Disables (`disabled = true`) or enables a notifier for an operator,
/// audited with the change; idempotent. A disabled notifier gets no new
/// notifications and its queue waits: nothing is claimed for it until it
/// is enabled again or the operator cancels the queue. Deliveries running
/// on this replica are stopped at once (elsewhere they end at the
/// connector's deadline at the latest) and retried only once it is
/// enabled.
pub async fn set_disabled(
    engine: &Engine,
    notifier_id: &str,
    disabled: bool,
    actor: &str,
    actor_type: ActorType,
) -> EngineResult<NotifierState> {
    let action = if disabled {
        "notifier.disable"
    } else {
        "notifier.enable"
    };
    let event = NewAuditEvent {
        actor: actor.to_owned(),
        actor_type,
        action: action.into(),
        subject_type: "notifier".into(),
        subject_id: Some(notifier_id.to_owned()),
        details: json!({}),
    };
    let (notifier, changed) = engine
        .store
        .set_notifier_disabled(notifier_id, disabled, event)
        .await?
        .ok_or_else(|| EngineError::NotFound(format!("notifier {notifier_id:?}")))?;
    if disabled {
        // Deliveries running on this replica stop now (elsewhere at the
        // connector's deadline).
        engine.runner.stop_scope(&notifier_scope(notifier_id));
    }
    if changed {
        tracing::info!(notifier = %notifier_id, name = %notifier.name, actor, disabled,
            "notifier {}", if disabled { "disabled" } else { "enabled" });
        if !disabled {
            // Its waiting queue is due now, on every replica.
            engine.wake.wake_notifications();
        }
    }
    let (pending, sending) = engine.store.notifier_queue_counts(notifier_id).await?;
    Ok(NotifierState {
        notifier,
        changed,
        pending,
        sending,
    })
}

/// Cancels a notifier's queue for an operator, audited with the counts:
/// pending notifications are cancelled now; those being sent on this
/// replica are stopped and end `cancelled` (on another replica each ends
/// `cancelled` when its attempt fails or its lease is lost, `sent` if the
/// attempt in flight succeeds).
pub async fn cancel_pending(
    engine: &Engine,
    notifier_id: &str,
    actor: &str,
    actor_type: ActorType,
) -> EngineResult<CancelledNotifications> {
    let event = NewAuditEvent {
        actor: actor.to_owned(),
        actor_type,
        action: "notifier.notifications_cancel".into(),
        subject_type: "notifier".into(),
        subject_id: Some(notifier_id.to_owned()),
        details: json!({}),
    };
    let reason = format!("cancelled by {actor}");
    let counts = engine
        .store
        .cancel_notifier_notifications(notifier_id, &reason, event)
        .await?
        .ok_or_else(|| EngineError::NotFound(format!("notifier {notifier_id:?}")))?;
    engine.runner.stop_scope(&notifier_scope(notifier_id));
    tracing::info!(notifier = %notifier_id, actor, cancelled = counts.cancelled,
        in_flight = counts.in_flight, "notifier's pending notifications cancelled");
    Ok(counts)
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
