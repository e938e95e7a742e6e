//! Wake-ups: work created by the API (or by another loop) wakes the job
//! processor or an agent's long-poll at once instead of waiting for the
//! next tick. A hint only: every waiter also polls on its own schedule.
//!
//! Within one process a wake-up is a [`Notify`]. With several replicas on
//! one PostgreSQL database, work created on replica B must also wake the
//! loops of replica A, and the long-poll of an agent connected to A:
//! [`Wake::connect_replicas`] starts a publisher that sends the wake-ups
//! made through [`Wake::wake_jobs`], [`Wake::wake_orders`],
//! [`Wake::wake_notifications`] and [`Wake::wake_agent`] to the other
//! replicas (`pg_notify`), and a listener that turns theirs into local
//! wake-ups (never published again). Notifications sent while a listener is
//! disconnected are lost, so on every reconnection the listener wakes
//! everything local once, and the loops keep polling on their intervals.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::{Received, Store};

/// First wait before reconnecting a lost listener; doubles up to
/// [`RECONNECT_MAX`].
const RECONNECT_MIN: Duration = Duration::from_millis(500);
/// Longest wait between reconnection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Least time between two publications. A busy replica wakes its loops a
/// few hundred times a second (every created job, every outcome with a
/// follow-up); published one statement each, that was a pool checkout, a
/// statement and the checkout's ping per wake-up, and a notification every
/// listener decodes (2,900 of them in a 10,000-certificate run,
/// BENCHMARKS.md). Gathered over this gap they are a few dozen a second;
/// the other replicas learn of work at most this much later, and poll
/// anyway.
pub const PUBLISH_GAP: Duration = Duration::from_millis(20);

/// What a wake-up is for, as sent between replicas.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Signal {
    /// The host job processor.
    Jobs,
    /// Async CA order polling.
    Orders,
    /// Notification dispatch.
    Notifications,
    /// One agent's long-poll.
    Agent(String),
}

impl Signal {
    /// The text sent on the channel: `jobs`, `orders`, `notifications`,
    /// `agent:<id>`.
    pub fn payload(&self) -> String {
        match self {
            Signal::Jobs => "jobs".into(),
            Signal::Orders => "orders".into(),
            Signal::Notifications => "notifications".into(),
            Signal::Agent(id) => format!("agent:{id}"),
        }
    }

    /// The signal a payload names; `None` for text this version does not
    /// know (a newer replica's), which is ignored.
    pub fn parse(payload: &str) -> Option<Signal> {
        match payload {
            "jobs" => Some(Signal::Jobs),
            "orders" => Some(Signal::Orders),
            "notifications" => Some(Signal::Notifications),
            other => other
                .strip_prefix("agent:")
                .filter(|id| !id.is_empty())
                .map(|id| Signal::Agent(id.to_owned())),
        }
    }
}

/// Wake-ups waiting to be published, coalesced: a burst of the same
/// wake-up while a publish is in flight goes out once.
#[derive(Debug)]
struct Outbox {
    store: Store,
    pending: Mutex<HashSet<Signal>>,
    kick: Notify,
}

/// The host's wake-up signals.
///
/// The fields are the in-process signals the scheduler loops wait on;
/// `notify_one()` on them wakes this process only. Code that creates work
/// calls the `wake_*` methods, which also tell the other replicas.
#[derive(Debug)]
pub struct Wake {
    /// The host job processor (issuance, renewal, host-side deployments).
    pub jobs: Arc<Notify>,
    /// Async CA order polling.
    pub orders: Arc<Notify>,
    /// The renewal sweep (a certificate became due: created, "renew now").
    /// Not published: the sweep is set-based, so the replica that got the
    /// request runs it for everyone.
    pub renewals: Arc<Notify>,
    /// Notification dispatch.
    pub notifications: Arc<Notify>,
    /// The challenge publisher (challenges presented or withdrawn).
    pub challenges: Arc<Notify>,
    /// Cancelled when the host shuts down, so parked long polls answer at
    /// once instead of holding the graceful shutdown for their whole wait.
    pub stopping: CancellationToken,
    agents: Mutex<HashMap<String, Arc<Notify>>>,
    /// Set once by [`Wake::connect_replicas`] on PostgreSQL.
    outbox: OnceLock<Arc<Outbox>>,
    /// Tags this process's publications, so its listener can skip its own
    /// (PostgreSQL delivers a notification to the sender's session too).
    /// Random per process rather than the instance id, which two
    /// misconfigured replicas might share.
    origin: String,
}

impl Default for Wake {
    fn default() -> Self {
        Wake {
            jobs: Arc::default(),
            orders: Arc::default(),
            renewals: Arc::default(),
            notifications: Arc::default(),
            challenges: Arc::default(),
            stopping: CancellationToken::new(),
            agents: Mutex::default(),
            outbox: OnceLock::new(),
            origin: uuid::Uuid::new_v4().simple().to_string(),
        }
    }
}

impl Wake {
    /// The signal an agent's long-poll waits on.
    pub fn agent(&self, agent_id: &str) -> Arc<Notify> {
        self.agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(agent_id.to_string())
            .or_default()
            .clone()
    }

    /// Wakes one agent's long-poll (or makes its next poll return at once),
    /// on this replica and the others.
    pub fn wake_agent(&self, agent_id: &str) {
        self.agent(agent_id).notify_one();
        self.publish(Signal::Agent(agent_id.to_owned()));
    }

    /// Wakes the host job processor, on this replica and the others.
    pub fn wake_jobs(&self) {
        self.jobs.notify_one();
        self.publish(Signal::Jobs);
    }

    /// Wakes async CA order polling, on this replica and the others.
    pub fn wake_orders(&self) {
        self.orders.notify_one();
        self.publish(Signal::Orders);
    }

    /// Wakes notification dispatch, on this replica and the others.
    pub fn wake_notifications(&self) {
        self.notifications.notify_one();
        self.publish(Signal::Notifications);
    }

    /// Forgets an agent's signal (retired agents).
    pub fn forget_agent(&self, agent_id: &str) {
        self.agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(agent_id);
    }

    /// Wakes `signal` in this process only.
    pub fn wake_local(&self, signal: &Signal) {
        match signal {
            Signal::Jobs => self.jobs.notify_one(),
            Signal::Orders => self.orders.notify_one(),
            Signal::Notifications => self.notifications.notify_one(),
            Signal::Agent(id) => {
                // Only an agent that polls here has a signal; creating one
                // for every agent of the fleet would grow the map on
                // replicas it never talks to.
                let signal = self
                    .agents
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(id)
                    .cloned();
                if let Some(signal) = signal {
                    signal.notify_one();
                }
            }
        }
    }

    /// Wakes every loop and every agent long-poll of this process once:
    /// after wake-ups from other replicas may have been missed.
    fn wake_everything_local(&self) {
        self.jobs.notify_one();
        self.orders.notify_one();
        self.notifications.notify_one();
        let agents: Vec<Arc<Notify>> = self
            .agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for signal in agents {
            signal.notify_one();
        }
    }

    /// Queues `signal` for the other replicas; never blocks or fails (the
    /// publisher task sends it).
    fn publish(&self, signal: Signal) {
        if let Some(outbox) = self.outbox.get() {
            outbox
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(signal);
            outbox.kick.notify_one();
        }
    }

    /// Handles one payload received from the channel: `<signal> <origin>`.
    fn receive(&self, payload: &str) {
        let Some((signal, origin)) = payload.split_once(' ') else {
            tracing::debug!(payload, "ignoring a malformed wake-up");
            return;
        };
        if origin == self.origin {
            return;
        }
        match Signal::parse(signal) {
            Some(signal) => self.wake_local(&signal),
            None => tracing::debug!(payload, "ignoring an unknown wake-up"),
        }
    }

    /// Links this process's wake-ups with the other replicas on `store`'s
    /// database: on PostgreSQL, starts the publisher and the listener (the
    /// first `LISTEN` is in place when this returns, so work created
    /// elsewhere from then on wakes this process) and returns their
    /// handle; on SQLite does nothing and returns `None`. Both tasks stop
    /// when `shutdown` is cancelled. Call it once.
    pub async fn connect_replicas(
        self: &Arc<Self>,
        store: &Store,
        shutdown: CancellationToken,
    ) -> Option<ReplicaLink> {
        if !store.has_replica_signals() {
            return None;
        }
        let outbox = Arc::new(Outbox {
            store: store.clone(),
            pending: Mutex::default(),
            kick: Notify::new(),
        });
        if self.outbox.set(outbox.clone()).is_err() {
            tracing::warn!("wake-ups are already linked with the other replicas");
            return None;
        }
        let first = match store.listen_signals().await {
            Ok(listener) => listener,
            Err(error) => {
                // Not fatal: the loops poll anyway; the task keeps trying.
                tracing::warn!(%error, "cannot listen for wake-ups from other replicas yet; retrying");
                None
            }
        };
        let publisher = tokio::spawn(publish_loop(outbox, self.origin.clone(), shutdown.clone()));
        let listener = tokio::spawn(listen_loop(self.clone(), store.clone(), first, shutdown));
        Some(ReplicaLink {
            tasks: vec![publisher, listener],
        })
    }
}

/// The publisher and listener tasks of [`Wake::connect_replicas`].
#[derive(Debug)]
pub struct ReplicaLink {
    tasks: Vec<JoinHandle<()>>,
}

impl ReplicaLink {
    /// Waits for both tasks to end (after the shutdown token is cancelled).
    pub async fn join(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Sends queued wake-ups, all that are pending in one statement, at most
/// one statement per [`PUBLISH_GAP`], until `shutdown`.
async fn publish_loop(outbox: Arc<Outbox>, origin: String, shutdown: CancellationToken) {
    let mut failing = false;
    loop {
        tokio::select! {
            () = outbox.kick.notified() => {}
            () = shutdown.cancelled() => return,
        }
        let batch: Vec<String> = outbox
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|s| format!("{} {origin}", s.payload()))
            .collect();
        if batch.is_empty() {
            continue;
        }
        match outbox.store.publish_signals(&batch).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("publishing wake-ups to the other replicas again");
            }
            Ok(()) => {}
            // Dropped, not retried: the other replicas find the work on
            // their next poll. Warn once per outage, not per wake-up.
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, dropped = batch.len(),
                    "cannot publish wake-ups to the other replicas; they will find the work when they next poll");
            }
            Err(error) => {
                tracing::debug!(%error, dropped = batch.len(), "wake-ups not published");
            }
        }
        // Wake-ups made meanwhile wait in `pending` (a set: each signal
        // once) and the kick stays stored, so they go out after the gap.
        tokio::select! {
            () = tokio::time::sleep(PUBLISH_GAP) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Turns wake-ups from other replicas into local ones until `shutdown`,
/// reconnecting with backoff.
async fn listen_loop(
    wake: Arc<Wake>,
    store: Store,
    mut listener: Option<crate::store::SignalListener>,
    shutdown: CancellationToken,
) {
    let mut delay = RECONNECT_MIN;
    loop {
        let mut current = match listener.take() {
            Some(l) => l,
            None => {
                let attempt = tokio::select! {
                    r = store.listen_signals() => r,
                    () = shutdown.cancelled() => return,
                };
                match attempt {
                    Ok(Some(l)) => {
                        tracing::info!("listening for wake-ups from other replicas again");
                        // Whatever was published while we were away is lost.
                        wake.wake_everything_local();
                        l
                    }
                    Ok(None) => return,
                    Err(error) => {
                        tracing::warn!(%error, retry_in = ?delay,
                            "cannot listen for wake-ups from other replicas");
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            () = shutdown.cancelled() => return,
                        }
                        delay = (delay * 2).min(RECONNECT_MAX);
                        continue;
                    }
                }
            }
        };
        delay = RECONNECT_MIN;
        loop {
            let received = tokio::select! {
                r = current.recv() => r,
                () = shutdown.cancelled() => return,
            };
            match received {
                Ok(Received::Payload(payload)) => wake.receive(&payload),
                Ok(Received::Reconnected) => {
                    tracing::info!("the wake-up listener reconnected");
                    wake.wake_everything_local();
                }
                Err(error) => {
                    tracing::warn!(%error, "lost the wake-up listener's connection");
                    break;
                }
            }
        }
        // Reconnect from scratch after a pause.
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_unknown_ones_are_ignored() {
        for s in [
            Signal::Jobs,
            Signal::Orders,
            Signal::Notifications,
            Signal::Agent("0190-abc".into()),
        ] {
            assert_eq!(Signal::parse(&s.payload()), Some(s));
        }
        assert_eq!(Signal::parse("agent:"), None);
        assert_eq!(Signal::parse("renewals-v2"), None);
    }

    #[tokio::test]
    async fn received_wake_ups_are_local_and_own_ones_skipped() {
        let wake = Wake::default();
        let agent = wake.agent("a1");
        wake.receive(&format!("agent:a1 {}", wake.origin));
        wake.receive("jobs other-process");
        wake.receive("agent:unknown other-process");
        assert!(wake.agents.lock().unwrap().get("unknown").is_none());
        // The job processor got one wake-up; the agent's own echo none.
        tokio::time::timeout(Duration::from_millis(100), wake.jobs.notified())
            .await
            .expect("jobs woken");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), agent.notified())
                .await
                .is_err(),
            "a process's own publication is skipped"
        );
        wake.receive("agent:a1 other-process");
        tokio::time::timeout(Duration::from_millis(100), agent.notified())
            .await
            .expect("agent woken");
    }
}
