//! The agent's life: load plugins, register once, then heartbeat and
//! long-poll for work until shut down or retired.
//!
//! The heartbeat runs on its own task so a long deployment does not make
//! the agent look offline, and names the jobs of the last poll the agent
//! still holds so the host extends their leases. The poll loop awaits each job to its end before
//! polling again, so jobs never overlap and a shutdown request waits for
//! the job in hand (bounded by the plugin deadline and the probe window)
//! instead of abandoning it half-reported. Failures to reach the host back
//! off exponentially with jitter; a 410 Gone ends the agent with success.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use certplane_runtime::{Runtime, RuntimeConfig};
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::challenges::{self, Challenges};
use crate::config::AgentConfig;
use crate::executor::{Executor, Progress, target_plugins};
use crate::hostapi::{self, AgentJob, HostApi, HostError};
use crate::state::{Credential, StateDir, StateError};

/// Most jobs claimed per poll.
const WORK_LIMIT: u32 = 10;
/// Instances the agent's runtime may hold at once: jobs run one at a time,
/// so a small pool keeps the idle footprint down.
const MAX_INSTANCES: u32 = 8;

/// The jobs this agent holds: the batch of its last poll, less those it
/// finished. Heartbeats name them so the host extends their leases.
#[derive(Debug, Clone, Default)]
struct HeldJobs(Arc<Mutex<Vec<String>>>);

impl HeldJobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        // A list of ids is consistent after any single push or remove, so
        // a poisoned lock is still usable.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hold(&self, ids: impl IntoIterator<Item = String>) {
        let mut held = self.lock();
        held.clear();
        held.extend(ids);
    }

    fn release(&self, id: &str) {
        self.lock().retain(|held| held != id);
    }

    fn ids(&self) -> Vec<String> {
        self.lock().clone()
    }
}

/// How long the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Until shut down or retired.
    Continuous,
    /// One heartbeat, one poll (no wait), its jobs, then exit.
    Once,
}

/// Why the agent stopped (all of these are a clean exit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The shutdown token was cancelled (SIGTERM, Ctrl-C, the embedding
    /// program).
    Stopped,
    /// The host answered 410 Gone: the agent was retired.
    Retired,
    /// `--once` finished its cycle.
    CycleDone,
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The state directory is unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// The plugin runtime could not start or the plugin directory is unreadable.
    #[error("plugins: {0}")]
    Plugins(String),
    /// The agent is not registered and has no bootstrap token.
    #[error(
        "this agent is not registered ({}) and no bootstrap token is configured: set `bootstrap_token` (or CERTPLANE_AGENT_BOOTSTRAP_TOKEN)",
        .0.display()
    )]
    NoBootstrapToken(std::path::PathBuf),
    /// `[challenges] listen` cannot be bound.
    #[error(transparent)]
    Listen(#[from] crate::standalone::ListenError),
    /// The host refused the credential or bootstrap token, or the client
    /// cannot be set up.
    #[error(transparent)]
    Host(HostError),
}

/// The plugin runtime of an agent: its cache, a small pool, one compiler
/// thread, the configured memory budget.
fn runtime_config(config: &AgentConfig, state: &StateDir) -> RuntimeConfig {
    RuntimeConfig {
        cache_dir: Some(
            config
                .plugin_cache_dir
                .clone()
                .unwrap_or_else(|| state.plugin_cache()),
        ),
        max_instances: MAX_INSTANCES,
        // An agent compiles its few plugins once; compiler threads would
        // keep their heaps for the rest of its (mostly idle) life.
        parallel_compilation: false,
        memory_budget_bytes: config.limits.memory_budget_mib.saturating_mul(1024 * 1024),
        ..RuntimeConfig::default()
    }
}

/// Compiles the plugins into the agent's cache and returns how many loaded.
/// The agent binary runs this in a short-lived child process before it
/// starts: compiling leaves memory behind (the compiler's heap, its code
/// paged in) that a long-running idle agent should not carry; loading
/// from the cache afterwards does not.
pub async fn precompile(config: &AgentConfig) -> Result<usize, AgentError> {
    let state = StateDir::open(&config.state_dir)?;
    let runtime = Runtime::new(runtime_config(config, &state))
        .map_err(|e| AgentError::Plugins(e.to_string()))?;
    let (loaded, failed) = runtime
        .load_dir(&config.plugin_dir)
        .await
        .map_err(|e| AgentError::Plugins(e.to_string()))?;
    for err in &failed {
        tracing::warn!(error = %err, "a plugin did not load");
    }
    Ok(loaded.len())
}

/// Runs the agent until `shutdown`, retirement, or (with [`Mode::Once`])
/// one cycle.
pub async fn run(
    config: AgentConfig,
    mode: Mode,
    shutdown: CancellationToken,
) -> Result<Exit, AgentError> {
    let config = Arc::new(config);
    let state = StateDir::open(&config.state_dir)?;
    // Fail fast, before compiling any plugin, when registration cannot work.
    if config.bootstrap_token.is_none() && state.credential()?.is_none() {
        return Err(AgentError::NoBootstrapToken(state.root().to_path_buf()));
    }
    // Bound before anything slow, so a taken port fails the start at once;
    // the listener stops with `shutdown`, or when this returns.
    let challenges = Challenges::start(&config.challenges, &shutdown).await?;
    let runtime = Runtime::new(runtime_config(&config, &state))
        .map_err(|e| AgentError::Plugins(e.to_string()))?;
    let (loaded, failed) = runtime
        .load_dir(&config.plugin_dir)
        .await
        .map_err(|e| AgentError::Plugins(e.to_string()))?;
    for err in &failed {
        tracing::warn!(error = %err, "a plugin did not load");
    }
    let plugins = target_plugins(loaded);
    tracing::info!(plugins = ?plugins.keys().collect::<Vec<_>>(),
        dir = %config.plugin_dir.display(), "target plugins loaded");
    release_freed_heap();

    let mut backoff = Backoff::new(config.backoff);
    let Some(credential) = registered(&config, &state, mode, &shutdown, &mut backoff).await? else {
        return Ok(Exit::Stopped);
    };
    tracing::info!(agent_id = %credential.agent_id, host = %config.host_url, "agent starting");
    let poll_wait = match mode {
        Mode::Continuous => Duration::from_secs(config.poll_wait_secs),
        Mode::Once => Duration::ZERO,
    };
    let api = HostApi::new(
        &config.host_url,
        config.trust(),
        &credential.credential,
        poll_wait,
    )
    .map_err(AgentError::Host)?;
    let executor = Executor::new(config.clone(), state.clone(), api.clone(), plugins);
    let contact = Contact::new(state.clone());

    let exit = match mode {
        Mode::Once => once(&api, &executor, &challenges, &contact).await,
        Mode::Continuous => {
            let retired = CancellationToken::new();
            let held = HeldJobs::default();
            let heartbeat = tokio::spawn(heartbeat_loop(
                api.clone(),
                config.heartbeat_interval(),
                contact.clone(),
                held.clone(),
                shutdown.clone(),
                retired.clone(),
            ));
            let exit = poll_loop(
                &api,
                &executor,
                &challenges,
                &contact,
                &config,
                poll_wait,
                &held,
                &shutdown,
                &retired,
                &mut backoff,
            )
            .await;
            heartbeat.abort();
            exit
        }
    };
    if matches!(exit, Ok(Exit::Retired)) {
        if let Err(e) = state.update_status(|s| s.retired_at = Some(Utc::now())) {
            tracing::warn!(error = %e, "cannot record the retirement in the status file");
        }
        // The distinct line operators and tests look for.
        tracing::warn!(agent_id = %credential.agent_id, event = "agent.retired",
            "agent retired by the host (410 Gone): stopping and exiting cleanly");
    }
    exit
}

/// The stored credential, registering first when there is none. Returns
/// `None` when shut down while waiting for the host.
async fn registered(
    config: &AgentConfig,
    state: &StateDir,
    mode: Mode,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<Option<Credential>, AgentError> {
    if let Some(credential) = state.credential()? {
        if credential.host_url != config.host_url {
            tracing::warn!(registered_with = %credential.host_url, configured = %config.host_url,
                "the credential was issued for another host URL; using it anyway");
        }
        return Ok(Some(credential));
    }
    let Some(token) = config.bootstrap_token.as_deref() else {
        return Err(AgentError::NoBootstrapToken(state.root().to_path_buf()));
    };
    let name = config.agent_name();
    loop {
        match hostapi::register(&config.host_url, config.trust(), &name, token).await {
            Ok(reg) => {
                let credential = Credential {
                    agent_id: reg.agent_id,
                    credential: reg.credential,
                    host_url: config.host_url.clone(),
                    registered_at: Utc::now(),
                };
                state.save_credential(&credential)?;
                tracing::info!(agent_id = %credential.agent_id, %name, "registered with the host");
                return Ok(Some(credential));
            }
            Err(HostError::Unavailable(why)) if mode == Mode::Continuous => {
                let delay = backoff.next_delay();
                tracing::warn!(%why, retry_in_ms = delay.as_millis() as u64,
                    "cannot register yet");
                if !pause(delay, shutdown).await {
                    return Ok(None);
                }
            }
            Err(e) => return Err(AgentError::Host(e)),
        }
    }
}

/// Records contact with the host in the status file, without rewriting it
/// for every exchange (the status is for humans; a few seconds is enough).
#[derive(Clone)]
struct Contact {
    state: StateDir,
    last_write: Arc<Mutex<Option<std::time::Instant>>>,
}

impl Contact {
    const MIN_WRITE_INTERVAL: Duration = Duration::from_secs(5);

    fn new(state: StateDir) -> Contact {
        Contact {
            state,
            last_write: Arc::new(Mutex::new(None)),
        }
    }

    fn ok(&self) {
        let due = self.last_write.lock().is_ok_and(|mut last| {
            let due = last.is_none_or(|t| t.elapsed() >= Self::MIN_WRITE_INTERVAL);
            if due {
                *last = Some(std::time::Instant::now());
            }
            due
        });
        if due {
            self.write(|s| s.last_contact = Some(Utc::now()));
        }
    }

    fn failed(&self, why: &str) {
        self.write(|s| {
            s.last_error = Some(why.to_owned());
            s.last_error_at = Some(Utc::now());
        });
        if let Ok(mut last) = self.last_write.lock() {
            *last = None;
        }
    }

    fn write(&self, change: impl FnOnce(&mut crate::state::Status)) {
        if let Err(e) = self.state.update_status(change) {
            tracing::warn!(error = %e, "cannot update the status file");
        }
    }
}

async fn once(
    api: &HostApi,
    executor: &Executor,
    challenges: &Challenges,
    contact: &Contact,
) -> Result<Exit, AgentError> {
    let step = async {
        api.heartbeat(&[]).await?;
        contact.ok();
        let work = api.work(Duration::ZERO, WORK_LIMIT).await?;
        contact.ok();
        tracing::info!(
            jobs = work.jobs.len(),
            challenges = work.challenges.len(),
            "polled once"
        );
        challenges::serve(api, challenges, work.challenges).await?;
        for job in work.jobs {
            run_cancellable(api, executor, job).await?;
        }
        Ok::<_, HostError>(())
    };
    match step.await {
        Ok(()) => Ok(Exit::CycleDone),
        Err(HostError::Retired(_)) => Ok(Exit::Retired),
        Err(e) => {
            contact.failed(&e.to_string());
            Err(AgentError::Host(e))
        }
    }
}

/// How often the agent asks the host whether the job it runs was
/// cancelled: the bound on how long a cancelled job's connector call goes on.
const CANCEL_CHECK: Duration = Duration::from_secs(1);

/// Runs `job`, stopping it (its connector call included) when the host
/// reports it cancelled; a cancelled job is not reported (the host would
/// refuse the report).
async fn run_cancellable(
    api: &HostApi,
    executor: &Executor,
    job: AgentJob,
) -> Result<Progress, HostError> {
    let id = job.id.clone();
    tokio::select! {
        progress = executor.execute(job) => progress,
        () = cancelled_on_host(api, &id) => {
            tracing::warn!(job = %id, "job cancelled on the host: stopped, connector call included");
            Ok(Progress::Done)
        }
    }
}

/// Returns once a heartbeat lists job `id` as cancelled; never otherwise.
async fn cancelled_on_host(api: &HostApi, id: &str) {
    loop {
        tokio::time::sleep(CANCEL_CHECK).await;
        match api.heartbeat(&[]).await {
            Ok(beat) if beat.cancelled_jobs.iter().any(|j| j == id) => return,
            Ok(_) => {}
            Err(e) => tracing::debug!(job = %id, error = %e, "cannot ask the host about the job"),
        }
    }
}

async fn heartbeat_loop(
    api: HostApi,
    interval: Duration,
    contact: Contact,
    held: HeldJobs,
    shutdown: CancellationToken,
    retired: CancellationToken,
) {
    loop {
        match api.heartbeat(&held.ids()).await {
            Ok(beat) => {
                contact.ok();
                let skew = (Utc::now() - beat.server_time).num_seconds().abs();
                if skew > 60 {
                    tracing::warn!(skew_secs = skew, "the clock differs from the host's");
                }
            }
            Err(HostError::Retired(_)) => {
                retired.cancel();
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed");
                contact.failed(&e.to_string());
            }
        }
        if !pause(interval, &shutdown).await {
            return;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn poll_loop(
    api: &HostApi,
    executor: &Executor,
    challenges: &Challenges,
    contact: &Contact,
    config: &AgentConfig,
    poll_wait: Duration,
    held: &HeldJobs,
    shutdown: &CancellationToken,
    retired: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<Exit, AgentError> {
    loop {
        let polled = tokio::select! {
            () = shutdown.cancelled() => return Ok(Exit::Stopped),
            () = retired.cancelled() => return Ok(Exit::Retired),
            r = api.work(poll_wait, WORK_LIMIT) => r,
        };
        let delay = match polled {
            Ok(work) => {
                contact.ok();
                let (jobs, tasks) = (work.jobs, work.challenges);
                let mut progressed = jobs.is_empty() && tasks.is_empty();
                let mut host_failed = false;
                // Challenges first: an issuance waits on them, and they
                // take seconds, not a connector's deadline.
                if !tasks.is_empty() {
                    match challenges::serve(api, challenges, tasks).await {
                        Ok(reported) => progressed |= reported > 0,
                        // The jobs in hand are still run: their reports
                        // are retried on their own.
                        Err(e) => match on_host_error(e, contact, config) {
                            OnHostError::BackOff => host_failed = true,
                            OnHostError::Stop(exit) => return exit,
                        },
                    }
                }
                held.hold(jobs.iter().map(|j| j.id.clone()));
                for job in jobs {
                    let id = job.id.clone();
                    let ran = run_cancellable(api, executor, job).await;
                    held.release(&id);
                    match ran {
                        Ok(Progress::Done) => progressed = true,
                        Ok(Progress::Skipped) => {}
                        Err(e) => match on_host_error(e, contact, config) {
                            // The rest of the batch is leased to us; its
                            // leases lapse and the host hands it out again.
                            OnHostError::BackOff => {
                                host_failed = true;
                                break;
                            }
                            OnHostError::Stop(exit) => return exit,
                        },
                    }
                    if shutdown.is_cancelled() {
                        return Ok(Exit::Stopped);
                    }
                }
                // Jobs of the batch left unrun (the host failed mid-batch)
                // are no longer renewed: their leases lapse and the host
                // hands them out again.
                held.hold(std::iter::empty());
                if progressed && !host_failed {
                    backoff.reset();
                    None
                } else {
                    // The host failed mid-batch, or only jobs (or
                    // challenges) this agent cannot serve came back (the
                    // host hands them out on every poll until they expire).
                    Some(backoff.next_delay())
                }
            }
            Err(e) => match on_host_error(e, contact, config) {
                OnHostError::BackOff => Some(backoff.next_delay()),
                OnHostError::Stop(exit) => return exit,
            },
        };
        if let Some(delay) = delay
            && !pause(delay, shutdown).await
        {
            return Ok(Exit::Stopped);
        }
    }
}

/// What a host error means for the poll loop.
enum OnHostError {
    /// The host or network is (or the request was) unavailable: keep
    /// going after a backoff.
    BackOff,
    /// End the agent with this result.
    Stop(Result<Exit, AgentError>),
}

fn on_host_error(e: HostError, contact: &Contact, config: &AgentConfig) -> OnHostError {
    match e {
        HostError::Retired(_) => OnHostError::Stop(Ok(Exit::Retired)),
        HostError::Unavailable(why) | HostError::Refused(why) => {
            tracing::warn!(host = %config.host_url, error = %why, "cannot reach the host; backing off");
            contact.failed(&why);
            OnHostError::BackOff
        }
        e => {
            contact.failed(&e.to_string());
            OnHostError::Stop(Err(AgentError::Host(e)))
        }
    }
}

/// Sleeps `delay` unless shut down first; false when shut down.
async fn pause(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// Compiling plugins on a cold cache leaves ~30 MiB of freed compiler heap
/// that glibc keeps mapped; an idle agent should not sit on it (measured:
/// 47 MiB RSS after a cold start, 15 MiB after a warm one).
fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it
    // touches no memory in use and is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
