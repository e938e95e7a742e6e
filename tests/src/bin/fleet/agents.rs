//! The simulated agents: registration through the real API, then each
//! agent as `certplane-agent` runs it (its `HostApi`, so the same client,
//! the same one kept connection, the same timeouts): a heartbeat every
//! interval and a work long poll parked on the host, polled again as soon
//! as it returns.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certplane_agent::hostapi::{self, HostApi, HostError};
use certplane_client::Trust;
use rand::Rng as _;
use tokio::time::Instant;

use crate::host::BOOTSTRAP_TOKEN;

/// Most jobs asked for per poll (as the agent).
const WORK_LIMIT: u32 = 10;
/// A failed poll is retried after this (the agent backs off from 1 s).
const POLL_RETRY: Duration = Duration::from_secs(1);
/// A refused registration is retried after this (`Retry-After` is whole
/// seconds, at least 1).
const REGISTER_RETRY: Duration = Duration::from_secs(1);

/// Errors by kind, with the first message of each.
#[derive(Default)]
pub struct Errors {
    by_kind: Mutex<BTreeMap<String, (u64, String)>>,
}

impl Errors {
    pub fn record(&self, operation: &str, e: &HostError) {
        let kind = match e {
            HostError::Retired(_) => "retired",
            HostError::Unauthorized(_) => "unauthorized",
            HostError::Refused(_) => "refused",
            HostError::Setup(_) => "setup",
            HostError::Unavailable(m) if m.contains("no answer from") => "timeout",
            HostError::Unavailable(m) if m.contains("cannot connect") => "connect",
            HostError::Unavailable(m) if m.contains("TLS handshake") => "tls",
            HostError::Unavailable(m) if m.contains("HTTP exchange") => "http",
            HostError::Unavailable(m) if m.contains("rate_limited") => "rate-limited",
            HostError::Unavailable(_) => "unavailable",
        };
        if let Ok(mut map) = self.by_kind.lock() {
            let entry = map
                .entry(format!("{operation}: {kind}"))
                .or_insert_with(|| (0, e.to_string()));
            entry.0 += 1;
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, (u64, String)> {
        self.by_kind.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn total(&self) -> u64 {
        self.snapshot().values().map(|(n, _)| n).sum()
    }
}

/// What registering the fleet took.
pub struct Registration {
    pub credentials: Vec<String>,
    pub elapsed: Duration,
    /// 429 answers (each retried after a second).
    pub refusals: u64,
}

/// Registers `count` agents, `concurrency` at a time, each with a fresh
/// client as `certplane-agent` does; a 429 is retried after a second.
pub async fn register(
    base_url: &str,
    trust: Option<Trust>,
    count: usize,
    concurrency: usize,
    errors: Arc<Errors>,
) -> Registration {
    let started = Instant::now();
    let refusals = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (base_url, trust, errors) = (base_url.to_owned(), trust.clone(), errors.clone());
        let (refusals, next) = (refusals.clone(), next.clone());
        workers.spawn(async move {
            let mut credentials = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= count {
                    return credentials;
                }
                let name = format!("fleet-{i:05}");
                loop {
                    match hostapi::register(&base_url, trust.clone(), &name, BOOTSTRAP_TOKEN).await
                    {
                        Ok(registered) => {
                            credentials.push(registered.credential);
                            break;
                        }
                        Err(HostError::Unavailable(m)) if m.contains("rate_limited") => {
                            refusals.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(REGISTER_RETRY).await;
                        }
                        Err(e) => {
                            errors.record("register", &e);
                            break;
                        }
                    }
                }
            }
        });
    }
    let mut credentials = Vec::with_capacity(count);
    while let Some(done) = workers.join_next().await {
        if let Ok(mut part) = done {
            credentials.append(&mut part);
        }
    }
    Registration {
        credentials,
        elapsed: started.elapsed(),
        refusals: refusals.load(Ordering::Relaxed),
    }
}

/// How the agents run.
#[derive(Clone, Copy)]
pub struct Schedule {
    /// Until when (no request starts later; parked polls are dropped).
    pub until: Instant,
    pub heartbeat: Duration,
    /// ± this fraction of the interval, at random, per heartbeat.
    pub jitter: f64,
    pub poll_wait: Duration,
}

/// What the fleet did.
#[derive(Default)]
pub struct Activity {
    /// Heartbeat round trips, microseconds.
    pub heartbeats_us: Mutex<Vec<u32>>,
    pub polls_returned: AtomicU64,
    /// Polls that came back more than a second before their wait ended
    /// without work: the host did not park them.
    pub polls_early: AtomicU64,
    pub connections: AtomicU64,
}

/// Runs every agent until `schedule.until`, their starts spread evenly
/// over the first heartbeat interval (a fleet whose agents started at
/// different times).
pub async fn run(
    base_url: &str,
    trust: Option<Trust>,
    credentials: &[String],
    schedule: Schedule,
    errors: Arc<Errors>,
) -> anyhow::Result<Arc<Activity>> {
    let activity = Arc::new(Activity::default());
    let started = Instant::now();
    let mut agents = tokio::task::JoinSet::new();
    let spread = schedule.heartbeat.as_secs_f64() / credentials.len().max(1) as f64;
    for (i, credential) in credentials.iter().enumerate() {
        let api = HostApi::new(base_url, trust.clone(), credential, schedule.poll_wait)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let start = started + Duration::from_secs_f64(spread * i as f64);
        agents.spawn(agent(
            api,
            start,
            schedule,
            activity.clone(),
            errors.clone(),
        ));
    }
    while agents.join_next().await.is_some() {}
    Ok(activity)
}

async fn agent(
    api: HostApi,
    start: Instant,
    schedule: Schedule,
    activity: Arc<Activity>,
    errors: Arc<Errors>,
) {
    tokio::time::sleep_until(start).await;
    let heartbeats = heartbeat_loop(&api, schedule, &activity, &errors);
    let polls = async {
        tokio::select! {
            () = poll_loop(&api, schedule, &activity, &errors) => {}
            () = tokio::time::sleep_until(schedule.until) => {}
        }
    };
    tokio::join!(heartbeats, polls);
    activity
        .connections
        .fetch_add(api.connections_opened(), Ordering::Relaxed);
}

async fn heartbeat_loop(api: &HostApi, schedule: Schedule, activity: &Activity, errors: &Errors) {
    let mut next = Instant::now();
    while next < schedule.until {
        tokio::time::sleep_until(next).await;
        let sent = Instant::now();
        match api.heartbeat(&[]).await {
            Ok(_) => {
                let us = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
                if let Ok(mut all) = activity.heartbeats_us.lock() {
                    all.push(us);
                }
            }
            Err(e) => errors.record("heartbeat", &e),
        }
        let jitter = rand::rng().random_range(-schedule.jitter..=schedule.jitter);
        next = sent + schedule.heartbeat.mul_f64(1.0 + jitter);
    }
}

async fn poll_loop(api: &HostApi, schedule: Schedule, activity: &Activity, errors: &Errors) {
    loop {
        let sent = Instant::now();
        match api.work(schedule.poll_wait, WORK_LIMIT).await {
            Ok(work) => {
                activity.polls_returned.fetch_add(1, Ordering::Relaxed);
                let idle = work.jobs.is_empty() && work.challenges.is_empty();
                if idle && sent.elapsed() + Duration::from_secs(1) < schedule.poll_wait {
                    activity.polls_early.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                errors.record("poll", &e);
                tokio::time::sleep(POLL_RETRY).await;
            }
        }
    }
}
