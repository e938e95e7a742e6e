//! What an issuer call knows and leaves behind (contract 1.1), and the
//! challenge publisher.
//!
//! Before an issuer call the host gathers its [`CallContext`]: the job, the
//! version it replaces, the certificate's issuer options, the instance's
//! store and the job's challenges. After the call it applies the
//! [`CallEffects`]: store writes (sealed), challenges to publish, challenges
//! to withdraw, whatever the call's outcome.
//!
//! The publisher loop works on challenge rows: it publishes each
//! (`host`: the responder answers from the database at once; `dns:<id>`:
//! the dns-solver's `present`), checks that it is visible the way the CA
//! will look (an HTTP request to the responder with the name as `Host`; a
//! TXT query to the configured resolvers), and reports `ready` only then.
//! When a job ends (completed, cancelled, or failed for good) every live
//! challenge of it is withdrawn (`cleanup` at the solver).
//!
//! http-01 routed to the agent (`agent:<id>`) is published, checked and
//! withdrawn by that agent ([`agent`]); the publisher only keeps its time.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certplane_runtime::challenges::{ChallengeKind, ChallengeState, ChallengeStatus, kind_name};
use certplane_runtime::context::{CallContext, CallEffects, JobRef, PreviousVersion};
use certplane_runtime::dns_solver::TxtRecord;
use certplane_runtime::{CallError, PluginInstance, PluginKind};
use chrono::Utc;

use super::connectors::{build_instance, observed};
use crate::engine::Engine;
use crate::grants::{ChallengeRoutes, Http01Route};
use crate::store::{Certificate, ChallengeProgress, ChallengeRow, Job, NewChallenge, StoreError};

pub mod agent;

/// Challenges one publisher tick works on at most.
const BATCH: u32 = 64;
/// Failed withdrawals are retried this often before the row is given up.
const MAX_WITHDRAW_ATTEMPTS: i32 = 20;

/// The sealing owner of one store value.
fn store_owner(owner: &str, key: &str) -> String {
    format!("{owner}/store/{key}")
}

/// An issuer's challenge routes, from its `grants.challenges`.
pub fn routes_of(grants: &serde_json::Value) -> ChallengeRoutes {
    grants
        .get("challenges")
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default()
}

/// What `challenges.supported` answers for each name of `cert`.
/// `http_agent` is the agent that serves http-01 routed to `agent` (the one
/// running the certificate's key-holding target); without one, http-01 so
/// routed is not offered.
fn supported(
    cert: &Certificate,
    routes: &ChallengeRoutes,
    http_agent: Option<&str>,
) -> BTreeMap<String, Vec<ChallengeKind>> {
    let mut out: BTreeMap<String, Vec<ChallengeKind>> = BTreeMap::new();
    for name in std::iter::once(&cert.common_name).chain(cert.sans.iter()) {
        if name.parse::<IpAddr>().is_ok() {
            continue;
        }
        let base = name.trim_start_matches("*.").to_ascii_lowercase();
        let kinds = out.entry(base.clone()).or_default();
        let http = match routes.http_for(name) {
            Some(Http01Route::Host) => true,
            Some(Http01Route::Agent) => http_agent.is_some(),
            None => false,
        };
        if http && !kinds.contains(&ChallengeKind::Http01) {
            kinds.insert(0, ChallengeKind::Http01);
        }
        if routes.dns_for(&base).is_some() && !kinds.contains(&ChallengeKind::Dns01) {
            kinds.push(ChallengeKind::Dns01);
        }
    }
    out
}

/// The instance's store, opened. A value that no longer opens (a rotated
/// key) is left out and logged: the connector sees it unset.
async fn open_store(engine: &Engine, owner: &str) -> Result<BTreeMap<String, String>, StoreError> {
    let sealed = engine.store.plugin_store(owner).await?;
    let mut open = BTreeMap::new();
    for (key, value) in sealed {
        match engine.secrets.open_str(&value, &store_owner(owner, &key)) {
            Ok(v) => {
                open.insert(key, v.to_string());
            }
            Err(e) => {
                tracing::warn!(instance = owner, key, error = %e, "a store value does not open; left out")
            }
        }
    }
    Ok(open)
}

/// The instance's store, opened, when the connector imports `store`; a
/// connector that does not can never read it, so it is not loaded.
async fn store_for(
    engine: &Engine,
    instance: &PluginInstance,
    owner: &str,
) -> Result<BTreeMap<String, String>, StoreError> {
    if instance.plugin().imports_interface("store") {
        open_store(engine, owner).await
    } else {
        Ok(BTreeMap::new())
    }
}

/// The context of a call of `instance` outside any job (revocation): the
/// store only.
pub async fn instance_context(
    engine: &Engine,
    instance: &PluginInstance,
    owner: &str,
) -> Result<CallContext, StoreError> {
    Ok(CallContext {
        store: store_for(engine, instance, owner).await?,
        ..CallContext::default()
    })
}

/// The context of a call of the issuer `instance` for `job` on `cert`.
/// Only what the connector imports is read from the database: the version
/// it replaces for `context`, the job's challenges for `challenges`, the
/// store for `store` (local-ca imports none of them).
pub async fn issuer_context(
    engine: &Engine,
    instance: &PluginInstance,
    job: &Job,
    cert: &Certificate,
    owner: &str,
    routes: &ChallengeRoutes,
) -> Result<CallContext, StoreError> {
    let plugin = instance.plugin();
    let predecessor = match &cert.current_version_id {
        Some(id) if plugin.imports_interface("context") => engine
            .store
            .get_certificate_version(&cert.id, id)
            .await?
            .map(|v| PreviousVersion {
                certificate_pem: super::versions::split_pem(&v.pem_chain)
                    .into_iter()
                    .next()
                    .unwrap_or_default(),
                serial_hex: v.serial,
                ca_certificate_id: v.ca_certificate_id,
                ca_order_id: v.ca_order_id,
                not_after: u64::try_from(v.not_after.timestamp()).unwrap_or(0),
            }),
        _ => None,
    };
    let uses_challenges = plugin.imports_interface("challenges");
    let challenges = if uses_challenges {
        engine
            .store
            .job_challenges(&job.id)
            .await?
            .into_iter()
            .map(|row| (row.challenge_id.clone(), status_of(row)))
            .collect()
    } else {
        BTreeMap::new()
    };
    let http_agent = match routes.http_01 {
        Some(Http01Route::Agent) if uses_challenges => {
            engine.store.http01_agent_for_job(&job.id).await?
        }
        _ => None,
    };
    Ok(CallContext {
        job: Some(JobRef {
            id: job.id.clone(),
            attempt: u32::try_from(job.attempts.max(1)).unwrap_or(1),
        }),
        predecessor,
        options: cert.issuer_options.to_string(),
        store: store_for(engine, instance, owner).await?,
        routes: supported(cert, routes, http_agent.as_deref()),
        challenges,
    })
}

fn status_of(row: ChallengeRow) -> ChallengeStatus {
    let state = match row.state.as_str() {
        "ready" => ChallengeState::Ready,
        "pending" => ChallengeState::Pending,
        _ => ChallengeState::Failed,
    };
    let message = match row.state.as_str() {
        "withdrawing" | "withdrawn" => Some("withdrawn".to_string()),
        _ => row.message,
    };
    ChallengeStatus {
        id: row.challenge_id,
        state,
        message,
    }
}

/// Applies what an issuer call left behind. Store writes are kept whatever
/// the call's outcome (an ACME account created before a failure stays).
pub async fn apply_effects(
    engine: &Engine,
    owner: &str,
    job_id: Option<&str>,
    routes: &ChallengeRoutes,
    effects: CallEffects,
) -> Result<(), StoreError> {
    if !effects.store_writes.is_empty() {
        let mut sealed = BTreeMap::new();
        for (key, value) in effects.store_writes {
            let value = match value {
                Some(v) => match engine.secrets.seal_str(&v, &store_owner(owner, &key)) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::error!(instance = owner, key, error = %e, "cannot seal a store value; not kept");
                        continue;
                    }
                },
                None => None,
            };
            sealed.insert(key, value);
        }
        engine.store.write_plugin_store(owner, &sealed).await?;
    }
    let Some(job_id) = job_id else {
        if !effects.presented.is_empty() {
            tracing::warn!(
                instance = owner,
                "challenges presented outside a job are ignored"
            );
        }
        return Ok(());
    };
    if !effects.presented.is_empty() {
        let http_agent = match routes.http_01 {
            Some(Http01Route::Agent)
                if effects
                    .presented
                    .iter()
                    .any(|c| c.kind == ChallengeKind::Http01) =>
            {
                engine.store.http01_agent_for_job(job_id).await?
            }
            _ => None,
        };
        let mut rows = Vec::with_capacity(effects.presented.len());
        for c in effects.presented {
            // The runtime only lets routed kinds through; route them the
            // same way here.
            let (route, zone) = match c.kind {
                ChallengeKind::Http01 => match (routes.http_01, &http_agent) {
                    (Some(Http01Route::Agent), Some(id)) => (agent::route(id), None),
                    (Some(Http01Route::Agent), None) => {
                        // No agent runs the certificate's first target
                        // (any more): nobody could publish it.
                        tracing::warn!(job = job_id, challenge = %c.id,
                            "http-01 is routed to the agent, but no agent runs the certificate's first target; not recorded");
                        continue;
                    }
                    _ => ("host".to_string(), None),
                },
                ChallengeKind::Dns01 => match routes.dns_for(&c.identifier) {
                    Some(r) => (format!("dns:{}", r.solver), Some(r.zone.to_string())),
                    None => continue,
                },
            };
            rows.push(NewChallenge {
                challenge_id: c.id,
                kind: kind_name(c.kind).to_string(),
                identifier: c.identifier,
                name: c.name,
                value: c.value,
                route,
                zone,
            });
        }
        engine.store.insert_challenges(job_id, &rows).await?;
        tracing::info!(job = job_id, count = rows.len(), "challenges presented");
        if let Some(id) = &http_agent {
            engine.wake.wake_agent(id);
        }
        engine.wake.challenges.notify_one();
    }
    if !effects.withdrawn.is_empty() {
        engine
            .store
            .withdraw_challenges(job_id, &effects.withdrawn)
            .await?;
        // Agents serving them remove the files themselves: tell them now.
        let agents: std::collections::BTreeSet<String> = engine
            .store
            .job_challenges(job_id)
            .await?
            .iter()
            .filter(|row| {
                row.state == "withdrawing" && effects.withdrawn.contains(&row.challenge_id)
            })
            .filter_map(|row| agent::agent_of(row).map(str::to_string))
            .collect();
        for id in agents {
            engine.wake.wake_agent(&id);
        }
        engine.wake.challenges.notify_one();
    }
    Ok(())
}

/// Runs an issuer call through [`observed`] and hands back its effects
/// too (the metrics see the call's own result).
pub async fn observed_with_effects<T, F, Fut>(
    engine: &Engine,
    instance: &PluginInstance,
    call_name: &str,
    call: F,
) -> (Result<T, CallError>, CallEffects)
where
    T: Send + 'static,
    F: FnOnce(PluginInstance) -> Fut + Send + 'static,
    Fut: Future<Output = (Result<T, CallError>, CallEffects)> + Send + 'static,
{
    let slot: Arc<Mutex<CallEffects>> = Arc::default();
    let keep = slot.clone();
    let result = observed(engine, instance, call_name, move |i| async move {
        let (result, effects) = call(i).await;
        if let Ok(mut kept) = keep.lock() {
            *kept = effects;
        }
        result
    })
    .await;
    let effects = slot
        .lock()
        .map(|mut e| std::mem::take(&mut *e))
        .unwrap_or_default();
    (result, effects)
}

// ------------------------------------------------------------ publisher

/// One tick of the publisher: withdraws the challenges of ended jobs, then
/// publishes, checks and withdraws what is due. Returns how many rows it
/// worked on.
pub async fn tick(engine: &Engine) -> Result<usize, StoreError> {
    let ended = engine.store.withdraw_challenges_of_ended_jobs(500).await?;
    if ended > 0 {
        tracing::info!(
            challenges = ended,
            "withdrawing the challenges of ended jobs"
        );
    }
    let due = engine.store.due_challenges(BATCH).await?;
    let n = due.len();
    if n == 0 {
        // The common case, every half second on every replica: no
        // resolver set-up (it reads the system's configuration).
        return Ok(0);
    }
    let checker = Checker::new(engine);
    let work = due.into_iter().map(|row| {
        let checker = &checker;
        async move {
            let progress = step(engine, checker, &row).await;
            if let Err(e) = engine.store.progress_challenge(&row, &progress).await {
                tracing::error!(job = %row.job_id, challenge = %row.challenge_id, error = %e, "cannot record a challenge's progress");
            } else if progress.state != row.state {
                tracing::info!(job = %row.job_id, challenge = %row.challenge_id, kind = %row.kind,
                    identifier = %row.identifier, from = %row.state, to = progress.state,
                    message = progress.message.as_deref().unwrap_or(""), "challenge");
            }
        }
    });
    futures::future::join_all(work).await;
    Ok(n)
}

fn later(engine: &Engine, row: &ChallengeRow) -> chrono::DateTime<Utc> {
    let base = engine.config.challenges.check_interval_ms.max(50);
    // Checks slow down gently: a record that takes minutes to propagate is
    // not asked for every half second.
    let factor = 1 + u64::try_from(row.checks / 10).unwrap_or(0).min(9);
    Utc::now() + chrono::Duration::milliseconds((base * factor) as i64)
}

async fn step(engine: &Engine, checker: &Checker, row: &ChallengeRow) -> ChallengeProgress {
    if let Some(id) = agent::agent_of(row) {
        return agent::step(engine, row, id);
    }
    let mut progress = ChallengeProgress {
        state: if row.state == "withdrawing" {
            "withdrawing"
        } else {
            "pending"
        },
        message: row.message.clone(),
        published: row.published,
        checks: row.checks + 1,
        next_check_at: later(engine, row),
    };
    if row.state == "withdrawing" {
        match unpublish(engine, row).await {
            Ok(()) => {
                progress.state = "withdrawn";
                progress.published = false;
            }
            Err(e) if row.checks + 1 >= MAX_WITHDRAW_ATTEMPTS => {
                progress.state = "withdrawn";
                progress.message = Some(format!("withdrawal gave up: {e}"));
                tracing::warn!(job = %row.job_id, challenge = %row.challenge_id, error = %e, "a challenge could not be withdrawn; left behind");
            }
            Err(e) => progress.message = Some(format!("withdrawal failed, retrying: {e}")),
        }
        return progress;
    }
    if !row.published {
        match publish(engine, row).await {
            Ok(()) => progress.published = true,
            Err(Publish::Retry(e)) => {
                progress.message = Some(format!("publishing failed, retrying: {e}"));
                return give_up_if_late(engine, row, progress);
            }
            Err(Publish::Fail(e)) => {
                progress.state = "failed";
                progress.message = Some(e);
                return progress;
            }
        }
    }
    match checker.visible(row).await {
        Ok(()) => {
            progress.state = "ready";
            progress.message = None;
        }
        Err(seen) => {
            progress.message = Some(seen);
            progress = give_up_if_late(engine, row, progress);
        }
    }
    progress
}

fn give_up_if_late(
    engine: &Engine,
    row: &ChallengeRow,
    mut progress: ChallengeProgress,
) -> ChallengeProgress {
    let limit = engine.config.challenges.visible_within_secs;
    if (Utc::now() - row.created_at).num_seconds() >= i64::try_from(limit).unwrap_or(i64::MAX) {
        progress.state = "failed";
        progress.message = Some(format!(
            "not visible within {limit} s: {}",
            progress.message.as_deref().unwrap_or("no answer")
        ));
    }
    progress
}

enum Publish {
    Retry(String),
    Fail(String),
}

fn solver_id(row: &ChallengeRow) -> Option<&str> {
    row.route.strip_prefix("dns:")
}

async fn solver(engine: &Engine, id: &str) -> Result<Result<PluginInstance, String>, StoreError> {
    let Some(row) = engine.store.get_dns_solver(id).await? else {
        return Ok(Err(format!("dns-solver {id} no longer exists")));
    };
    Ok(build_instance(
        engine,
        PluginKind::DnsSolver,
        &format!("dns-solver/{}", row.id),
        &row.plugin_name,
        &row.settings,
        row.encrypted_secrets.as_deref(),
        &row.grants,
    ))
}

fn txt(row: &ChallengeRow) -> TxtRecord {
    TxtRecord {
        zone: row.zone.clone().unwrap_or_default(),
        name: row.name.trim_end_matches('.').to_string(),
        value: row.value.clone(),
    }
}

async fn publish(engine: &Engine, row: &ChallengeRow) -> Result<(), Publish> {
    let Some(id) = solver_id(row) else {
        // The responder answers from this row already.
        return Ok(());
    };
    let instance = solver(engine, id)
        .await
        .map_err(|e| Publish::Retry(format!("database: {e}")))?
        .map_err(Publish::Fail)?;
    let record = txt(row);
    observed(engine, &instance, "present", move |i| async move {
        i.present_txt(&record).await
    })
    .await
    .map_err(|e| {
        if e.class().is_permanent() {
            Publish::Fail(e.to_string())
        } else {
            Publish::Retry(e.to_string())
        }
    })
}

async fn unpublish(engine: &Engine, row: &ChallengeRow) -> Result<(), String> {
    let Some(id) = solver_id(row) else {
        return Ok(());
    };
    if !row.published {
        return Ok(());
    }
    let instance = solver(engine, id)
        .await
        .map_err(|e| format!("database: {e}"))??;
    let record = txt(row);
    observed(engine, &instance, "cleanup", move |i| async move {
        i.cleanup_txt(&record).await
    })
    .await
    .map_err(|e| e.to_string())
}

/// Looks at a challenge the way the CA will.
struct Checker {
    responder: Option<SocketAddr>,
    dns: hickory_resolver::TokioResolver,
}

/// Longest responder answer the check reads.
const MAX_CHECK_BODY: usize = 64 * 1024;

impl Checker {
    fn new(engine: &Engine) -> Checker {
        let responder = engine.config.challenges.http_listen.map(|addr| {
            // A wildcard listener is asked on loopback.
            if addr.ip().is_unspecified() {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
            } else {
                addr
            }
        });
        Checker {
            responder,
            dns: resolver(&engine.config.challenges.dns_resolvers),
        }
    }

    async fn visible(&self, row: &ChallengeRow) -> Result<(), String> {
        match row.kind.as_str() {
            "http-01" => self.http_visible(row).await,
            _ => self.dns_visible(row).await,
        }
    }

    async fn http_visible(&self, row: &ChallengeRow) -> Result<(), String> {
        let Some(addr) = self.responder else {
            return Err(
                "the host's http-01 responder has no plain-HTTP listener ([challenges] http_listen)"
                    .into(),
            );
        };
        let path = format!("/.well-known/acme-challenge/{}", row.name);
        let fetched = tokio::time::timeout(
            Duration::from_secs(5),
            http_get(addr, &path, &row.identifier),
        )
        .await
        .map_err(|_| format!("GET http://{addr}{path}: timed out"))?
        .map_err(|e| format!("GET http://{addr}{path}: {e}"))?;
        match fetched {
            (status, body) if status.is_success() && body.trim() == row.value => Ok(()),
            (status, _) => Err(format!("the responder answered {status}")),
        }
    }

    async fn dns_visible(&self, row: &ChallengeRow) -> Result<(), String> {
        let name = format!("{}.", row.name.trim_end_matches('.'));
        let lookup = self
            .dns
            .txt_lookup(name.as_str())
            .await
            .map_err(|e| format!("TXT {name}: {e}"))?;
        let found = lookup.iter().any(|txt| {
            let joined: Vec<u8> = txt
                .txt_data()
                .iter()
                .flat_map(|p| p.iter().copied())
                .collect();
            joined == row.value.as_bytes()
        });
        if found {
            Ok(())
        } else {
            Err(format!("TXT {name} does not hold the value yet"))
        }
    }
}

/// One plain HTTP/1.1 GET with `host` as the `Host` header, the way a CA
/// fetches an http-01 token.
async fn http_get(
    addr: SocketAddr,
    path: &str,
    host: &str,
) -> Result<(hyper::StatusCode, String), Box<dyn std::error::Error + Send + Sync>> {
    use http_body_util::BodyExt;

    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let connection = tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_CHECK_BODY)
        .collect()
        .await?
        .to_bytes();
    connection.abort();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A resolver that asks `servers` (or the system's), without a cache: a
/// record that just appeared must be seen on the next check.
fn resolver(servers: &[SocketAddr]) -> hickory_resolver::TokioResolver {
    use hickory_resolver::Resolver;
    use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
    use hickory_resolver::name_server::TokioConnectionProvider;
    use hickory_resolver::proto::xfer::Protocol;

    let mut opts = ResolverOpts::default();
    opts.cache_size = 0;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 1;
    let builder = if servers.is_empty() {
        match Resolver::builder_tokio() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "no system resolver configuration; using Cloudflare's and Google's");
                Resolver::builder_with_config(
                    ResolverConfig::default(),
                    TokioConnectionProvider::default(),
                )
            }
        }
    } else {
        let mut config = ResolverConfig::new();
        for addr in servers {
            config.add_name_server(NameServerConfig::new(*addr, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(*addr, Protocol::Tcp));
        }
        Resolver::builder_with_config(config, TokioConnectionProvider::default())
    };
    builder.with_options(opts).build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::{DnsZoneRoute, Http01Route};
    use crate::store::{CertificateStatus, KeySource};

    fn cert(names: &[&str]) -> Certificate {
        let now = Utc::now();
        Certificate {
            id: "c".into(),
            name: "c".into(),
            common_name: names[0].into(),
            sans: names.iter().map(|s| s.to_string()).collect(),
            key_type: "ecdsa-p256".into(),
            key_source: KeySource::Host,
            issuer_id: "i".into(),
            target_id: None,
            renew_before_secs: 0,
            owner: None,
            status: CertificateStatus::Active,
            current_version_id: None,
            not_after: None,
            renew_at: now,
            created_at: now,
            updated_at: now,
            issuer_options: serde_json::json!({}),
            target_options: serde_json::json!({}),
            renewal_info_at: None,
            open_issuance: 0,
            retired_at: None,
            disabled_reason: None,
        }
    }

    #[test]
    fn names_get_the_kinds_the_operator_routes() {
        let routes = ChallengeRoutes {
            http_01: Some(Http01Route::Host),
            dns_01: vec![DnsZoneRoute {
                zone: "example.test".into(),
                solver: "s".into(),
            }],
        };
        let got = supported(
            &cert(&[
                "www.example.test",
                "*.example.test",
                "other.test",
                "10.0.0.1",
            ]),
            &routes,
            None,
        );
        assert_eq!(
            got.get("www.example.test").unwrap(),
            &vec![ChallengeKind::Http01, ChallengeKind::Dns01]
        );
        // The wildcard's base name: dns-01 only from the wildcard, but the
        // apex is not a name here, so no http-01.
        assert_eq!(
            got.get("example.test").unwrap(),
            &vec![ChallengeKind::Dns01]
        );
        assert_eq!(got.get("other.test").unwrap(), &vec![ChallengeKind::Http01]);
        assert!(!got.contains_key("10.0.0.1"));
        let none = supported(&cert(&["a.test"]), &ChallengeRoutes::default(), None);
        assert!(none.get("a.test").unwrap().is_empty());
    }

    #[test]
    fn http_01_through_the_agent_needs_an_agent() {
        let routes = ChallengeRoutes {
            http_01: Some(Http01Route::Agent),
            dns_01: Vec::new(),
        };
        let names = cert(&["www.example.test", "*.example.test"]);
        let with = supported(&names, &routes, Some("agent-1"));
        assert_eq!(
            with.get("www.example.test").unwrap(),
            &vec![ChallengeKind::Http01]
        );
        assert!(with.get("example.test").unwrap().is_empty());
        let without = supported(&names, &routes, None);
        assert!(without.get("www.example.test").unwrap().is_empty());
    }
}
