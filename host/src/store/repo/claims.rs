//! Claims, leases, the reaper and retries: the repository's hot path. The
//! SQL itself is in `sqlite/claims.rs` and `postgres/claims.rs`.

use crate::store::codec::{now, ts};
use crate::store::postgres::claims as pg;
use crate::store::repo::sql_limit;
use crate::store::sqlite::claims as lite;
use crate::store::{Job, JobInputs, JobType, Store, StoreResult, on_read, on_write};

/// What a claim of host jobs took.
#[derive(Debug, Default)]
pub struct HostClaimed {
    /// The jobs, oldest `run_at` first.
    pub jobs: Vec<Job>,
    /// How many of them the deployments' claim took.
    pub deployments: usize,
    /// The rows the jobs work with, by job id, when the claim read them in
    /// its own transaction (SQLite's group committer, whose connection has
    /// every page it just wrote in its cache, where a reader connection
    /// would read them again from the file); `None` when the caller reads
    /// them with [`Store::job_inputs`].
    pub inputs: Option<std::collections::HashMap<String, JobInputs>>,
}

impl From<Vec<Job>> for HostClaimed {
    /// Jobs claimed without their rows (the caller reads them).
    fn from(jobs: Vec<Job>) -> Self {
        HostClaimed {
            jobs,
            ..HostClaimed::default()
        }
    }
}

/// A claim of host jobs (see [`Store::claim_pending_jobs`]), its times
/// fixed when it was asked for.
#[derive(Debug, Clone)]
pub(crate) struct HostClaim {
    pub(crate) owner: String,
    pub(crate) lease_expires_at: chrono::DateTime<chrono::Utc>,
    pub(crate) now: chrono::DateTime<chrono::Utc>,
    pub(crate) limit: u32,
    pub(crate) job_type: Option<JobType>,
    /// Targets whose deployments are left alone, as a JSON array; `None`
    /// for none.
    pub(crate) except_targets: Option<String>,
    /// With no `job_type`: claim deployments first, then anything for
    /// what is left of `limit`, both in the same write (one trip through
    /// SQLite's group committer instead of two).
    pub(crate) deployments_first: bool,
    /// Read the claimed jobs' rows where the claim runs, if it runs in
    /// SQLite's group committer ([`HostClaimed::inputs`]).
    pub(crate) with_inputs: bool,
}

impl HostClaim {
    /// The claim's statement on SQLite and on PostgreSQL, and what it
    /// binds as `$5`: deployments have a statement of their own with the
    /// type written in, so they bind no type; a claim leaving some targets
    /// alone binds their list instead (only claims that may take
    /// deployments do).
    fn form(&self) -> (&'static str, &'static str, Option<ClaimParam<'_>>) {
        let except = self.except_targets.as_deref();
        match (self.job_type, except) {
            (None, None) => (lite::CLAIM_HOST, pg::CLAIM_HOST, None),
            (None, Some(list)) => (
                lite::CLAIM_HOST_EXCEPT,
                pg::CLAIM_HOST_EXCEPT,
                Some(ClaimParam::Targets(list)),
            ),
            (Some(JobType::Deployment), None) => (
                lite::CLAIM_HOST_DEPLOYMENTS,
                pg::CLAIM_HOST_DEPLOYMENTS,
                None,
            ),
            (Some(JobType::Deployment), Some(list)) => (
                lite::CLAIM_HOST_DEPLOYMENTS_EXCEPT,
                pg::CLAIM_HOST_DEPLOYMENTS_EXCEPT,
                Some(ClaimParam::Targets(list)),
            ),
            (Some(t), _) => (
                lite::CLAIM_HOST_TYPED,
                pg::CLAIM_HOST_TYPED,
                Some(ClaimParam::Type(t)),
            ),
        }
    }

    /// The claim's statement on (SQLite, PostgreSQL).
    pub(crate) fn sql(&self) -> (&'static str, &'static str) {
        let (lite, pg, _) = self.form();
        (lite, pg)
    }

    /// What is bound as `$5`, if anything.
    pub(crate) fn param(&self) -> Option<ClaimParam<'_>> {
        self.form().2
    }

    /// The claims this one runs, in order: with `deployments_first`, the
    /// deployments' claim, then (its limit cut by what the first took) the
    /// claim of any type; otherwise itself.
    pub(crate) fn steps(&self) -> (Option<HostClaim>, HostClaim) {
        let plain = HostClaim {
            deployments_first: false,
            ..self.clone()
        };
        if self.deployments_first && self.job_type.is_none() {
            let deployments = HostClaim {
                job_type: Some(JobType::Deployment),
                ..plain.clone()
            };
            (Some(deployments), plain)
        } else {
            (None, plain)
        }
    }
}

/// The fifth parameter of a host claim.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ClaimParam<'a> {
    /// The one job type claimed.
    Type(JobType),
    /// The targets left alone, a JSON array.
    Targets(&'a str),
}

/// Runs the claim `$claim` (`&HostClaim`) on an executor (a pool or
/// `&mut *tx`), `$pick` choosing the backend's statement of a claim
/// (`fn(&HostClaim) -> &'static str`); evaluates to `StoreResult<(Vec<Job>,
/// usize)>`: the jobs, unsorted, and how many a first claim of deployments
/// took. When the claim after the deployments fails, the deployments
/// already leased are returned (and run) rather than left to lapse.
macro_rules! claim_host_jobs {
    ($exec:expr, $claim:expr, $pick:expr) => {
        async {
            let claim: &$crate::store::repo::claims::HostClaim = $claim;
            let pick: fn(&$crate::store::repo::claims::HostClaim) -> &'static str = $pick;
            let (first, rest) = claim.steps();
            let mut jobs = Vec::new();
            if let Some(first) = &first {
                jobs = $crate::store::repo::claims::claim_step!($exec, first, pick(first))?;
            }
            let found = jobs.len();
            let left = claim
                .limit
                .saturating_sub(u32::try_from(found).unwrap_or(u32::MAX));
            if left > 0 {
                let rest = $crate::store::repo::claims::HostClaim { limit: left, ..rest };
                match $crate::store::repo::claims::claim_step!($exec, &rest, pick(&rest)) {
                    Ok(more) => jobs.extend(more),
                    Err(e) if found > 0 => {
                        tracing::warn!(error = %e, deployments = found, "cannot claim further jobs; running the deployments claimed");
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok::<_, $crate::store::StoreError>((jobs, found))
        }
        .await
    };
}
pub(crate) use claim_host_jobs;

/// One statement of [`claim_host_jobs!`]: the claim `$claim` with the
/// backend's statement `$sql`.
macro_rules! claim_step {
    ($exec:expr, $claim:expr, $sql:expr) => {
        async {
            let claim: &$crate::store::repo::claims::HostClaim = $claim;
            let sql: &str = $sql;
            let mut q = sqlx::query_as::<_, $crate::store::Job>(sql)
                .bind(claim.owner.as_str())
                .bind($crate::store::codec::ts(claim.lease_expires_at))
                .bind($crate::store::codec::ts(claim.now))
                .bind($crate::store::repo::sql_limit(claim.limit));
            match claim.param() {
                Some($crate::store::repo::claims::ClaimParam::Type(t)) => q = q.bind(t),
                Some($crate::store::repo::claims::ClaimParam::Targets(list)) => q = q.bind(list),
                None => {}
            }
            Ok::<_, $crate::store::StoreError>(q.fetch_all($exec).await?)
        }
        .await
    };
}
pub(crate) use claim_step;

/// A claim's statement on SQLite.
pub(crate) fn sqlite_sql(claim: &HostClaim) -> &'static str {
    claim.sql().0
}

/// A claim's statement on PostgreSQL.
pub(crate) fn postgres_sql(claim: &HostClaim) -> &'static str {
    claim.sql().1
}

fn sort_jobs(jobs: &mut [Job]) {
    jobs.sort_by(|a, b| a.run_at.cmp(&b.run_at).then_with(|| a.id.cmp(&b.id)));
}

impl Store {
    /// Claims up to `limit` pending **host** jobs (`agent_id = "host"`) whose
    /// `run_at` has come, optionally of one type: Pending → Running in one
    /// statement, attempt counted, leased to this store's `instance_id` for
    /// `lease_duration`. Concurrent claimants (tasks, replicas) get disjoint
    /// rows. Returns the claimed rows (status `Running`), oldest `run_at`
    /// first. Agent work is claimed with [`Store::claim_pending_for_agent`].
    pub async fn claim_pending_jobs(
        &self,
        job_type: Option<JobType>,
        limit: u32,
    ) -> StoreResult<Vec<Job>> {
        self.claim_pending_jobs_except(job_type, limit, &[]).await
    }

    /// [`Store::claim_pending_jobs`] leaving alone the deployments to the
    /// targets `except_targets` (ones with no room for more work in this
    /// process: their deployments stay pending for a replica, or a later
    /// claim, that can run them).
    pub async fn claim_pending_jobs_except(
        &self,
        job_type: Option<JobType>,
        limit: u32,
        except_targets: &[String],
    ) -> StoreResult<Vec<Job>> {
        Ok(self
            .claim_host(job_type, limit, except_targets, false, false)
            .await?
            .jobs)
    }

    /// Claims up to `limit` host jobs as [`Store::claim_pending_jobs_except`]
    /// does, deployments first when `deployments_first` (a deployment
    /// finishes what an issuance started), then any type for what is left,
    /// in one write.
    pub async fn claim_host_jobs_deployments_first(
        &self,
        limit: u32,
        except_targets: &[String],
        deployments_first: bool,
    ) -> StoreResult<HostClaimed> {
        self.claim_host(None, limit, except_targets, deployments_first, true)
            .await
    }

    async fn claim_host(
        &self,
        job_type: Option<JobType>,
        limit: u32,
        except_targets: &[String],
        deployments_first: bool,
        with_inputs: bool,
    ) -> StoreResult<HostClaimed> {
        let now = now();
        let except_targets = (!except_targets.is_empty())
            .then(|| crate::store::repo::id_list(except_targets.iter().map(String::as_str)));
        let claim = HostClaim {
            owner: self.options.instance_id.clone(),
            lease_expires_at: self.lease_expiry(now),
            now,
            limit,
            job_type,
            except_targets,
            deployments_first,
            with_inputs,
        };
        // On SQLite the claim joins the group committer's transaction, so
        // the job loops do not take turns with it for the single writer.
        let result = if let crate::store::Backend::Sqlite(b) = &self.backend
            && let Some(group) = &b.group
        {
            match group.claim(claim).await {
                Ok(result) => {
                    self.counts.write();
                    result
                }
                Err(unsent) => self.claim_alone(&unsent).await,
            }
        } else {
            self.claim_alone(&claim).await
        };
        let mut claimed = result?;
        sort_jobs(&mut claimed.jobs);
        Ok(claimed)
    }

    /// Runs one host claim on its own (its statements in autocommit).
    async fn claim_alone(&self, claim: &HostClaim) -> StoreResult<HostClaimed> {
        let pick: fn(&HostClaim) -> &'static str = match self.backend {
            crate::store::Backend::Sqlite(_) => sqlite_sql,
            crate::store::Backend::Postgres(_) => postgres_sql,
        };
        // Both of its steps on one connection: one checkout, and one of the
        // pings sqlx sends each connection returned to the pool, per claim.
        let (jobs, deployments) = on_write!(self, |pool| {
            let mut conn = pool.acquire().await?;
            claim_host_jobs!(&mut *conn, claim, pick)?
        });
        Ok(HostClaimed {
            jobs,
            deployments,
            inputs: None,
        })
    }

    /// The agent routing. Returns, for agent `agent_id`, at most `limit`
    /// jobs:
    ///
    /// * pending jobs routed to it — `agent_id` equal to it, or no
    ///   `agent_id` and a target run by it — flipped to `Running` (attempt
    ///   counted, leased to the agent id);
    /// * then, oldest first, as many `AwaitingCsr` jobs whose certificate's
    ///   key-holding target is run by it as `limit` leaves room for, **in
    ///   place** (still `AwaitingCsr`, not leased): the agent answers with
    ///   [`Store::submit_csr`].
    ///
    /// A retired (or unknown) agent gets nothing; jobs of retired targets are
    /// never returned. Claimed jobs come first, each group in a stable order.
    pub async fn claim_pending_for_agent(
        &self,
        agent_id: &str,
        limit: u32,
    ) -> StoreResult<Vec<Job>> {
        let now = now();
        let mut claimed = on_write!(self, lite::CLAIM_AGENT, pg::CLAIM_AGENT, |pool, sql| {
            sqlx::query_as::<_, Job>(sql)
                .bind(agent_id)
                .bind(ts(self.lease_expiry(now)))
                .bind(ts(now))
                .bind(sql_limit(limit))
                .bind(agent_id)
                .fetch_all(pool)
                .await?
        });
        sort_jobs(&mut claimed);
        // CSR requests only fill what the claimed jobs left of `limit`: in a
        // storm an agent would otherwise answer every CSR before it deploys
        // anything (deployments are claimed first, so they never wait
        // behind more than one poll's worth of CSRs).
        let room = limit.saturating_sub(u32::try_from(claimed.len()).unwrap_or(u32::MAX));
        if room == 0 {
            return Ok(claimed);
        }
        let awaiting = on_read!(
            self,
            lite::AWAITING_CSR_FOR_AGENT,
            pg::AWAITING_CSR_FOR_AGENT,
            |pool, sql| {
                sqlx::query_as::<_, Job>(sql)
                    .bind(agent_id)
                    .bind(sql_limit(room))
                    .fetch_all(pool)
                    .await?
            }
        );
        claimed.extend(awaiting);
        Ok(claimed)
    }

    /// Agents with work that appeared at or after `since`: `AwaitingCsr`
    /// jobs created then (the set-based renewal enqueue creates them
    /// directly) and jobs that became `Pending` then (retries, including
    /// reaped leases), routed directly or through their target. The loops
    /// that create such work wake these agents' long polls with it.
    pub async fn agents_with_new_work_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Vec<String>> {
        Ok(on_read!(self, |pool| {
            sqlx::query_scalar::<_, String>(
                "SELECT t.agent_id FROM jobs j
                 JOIN certificates c ON c.id = j.certificate_id
                 JOIN targets t ON t.id = c.target_id
                 WHERE j.status = 'awaiting_csr' AND j.created_at >= $1
                 UNION
                 SELECT COALESCE(j.agent_id, t.agent_id) FROM jobs j
                 LEFT JOIN targets t ON t.id = j.target_id
                 WHERE j.status = 'pending' AND j.updated_at >= $1
                   AND COALESCE(j.agent_id, t.agent_id) IS NOT NULL
                   AND COALESCE(j.agent_id, t.agent_id) <> 'host'",
            )
            .bind(ts(since))
            .fetch_all(pool)
            .await?
        }))
    }

    /// Claims up to `limit` `Polling` jobs whose `next_poll_at` has come:
    /// Polling → Running, leased to this store (polls do not count as
    /// attempts). After polling, move the job back to `Polling` with a new
    /// `next_poll_at`, or to `Completed`/`Failed`, with
    /// [`Store::transition_job`].
    pub async fn claim_due_polls(&self, limit: u32) -> StoreResult<Vec<Job>> {
        let now = now();
        let owner = self.options.instance_id.as_str();
        let mut jobs = on_write!(
            self,
            lite::CLAIM_DUE_POLLS,
            pg::CLAIM_DUE_POLLS,
            |pool, sql| {
                sqlx::query_as::<_, Job>(sql)
                    .bind(owner)
                    .bind(ts(self.lease_expiry(now)))
                    .bind(ts(now))
                    .bind(sql_limit(limit))
                    .fetch_all(pool)
                    .await?
            }
        );
        sort_jobs(&mut jobs);
        Ok(jobs)
    }

    /// Reaper: Running jobs whose lease expired → Failed (`last_error` says
    /// whose lease), next attempt after backoff. At most `limit` per call;
    /// returns the reaped jobs. Safe to run on every replica.
    pub async fn reap_expired_leases(&self, limit: u32) -> StoreResult<Vec<Job>> {
        let now = now();
        let base = self.options.backoff.base.as_secs_f64();
        let cap = self.options.backoff.cap.as_secs_f64();
        Ok(on_write!(
            self,
            lite::REAP_EXPIRED,
            pg::REAP_EXPIRED,
            |pool, sql| {
                sqlx::query_as::<_, Job>(sql)
                    .bind(ts(now))
                    .bind(sql_limit(limit))
                    .bind(base)
                    .bind(cap)
                    .fetch_all(pool)
                    .await?
            }
        ))
    }

    /// Retry: Failed jobs below their attempt budget whose backoff has
    /// passed → Pending. At most `limit` per call; returns how many.
    pub async fn retry_failed_jobs(&self, limit: u32) -> StoreResult<u64> {
        let now = now();
        Ok(on_write!(
            self,
            lite::RETRY_FAILED,
            pg::RETRY_FAILED,
            |pool, sql| {
                sqlx::query(sql)
                    .bind(ts(now))
                    .bind(sql_limit(limit))
                    .execute(pool)
                    .await?
                    .rows_affected()
            }
        ))
    }
}
