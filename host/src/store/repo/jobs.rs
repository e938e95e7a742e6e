//! Jobs: creation, reads and conditional transitions.

use std::collections::BTreeMap;

use sqlx::QueryBuilder;
use sqlx::types::Json;

use crate::store::codec::{now, opt_ts, ts};
use crate::store::job_state::can_transition;
use crate::store::repo::insert_audit;
use crate::store::{
    BeginWrite, Job, JobFailure, JobFilter, JobLease, JobStatus, JobUpdate, NewAuditEvent, NewJob,
    Store, StoreError, StoreResult, new_id, on_read, on_write,
};

pub(crate) const INSERT_JOB_COLUMNS: &str = "INSERT INTO jobs (id, job_type, status, certificate_id, target_id, agent_id, \
     parent_job_id, certificate_version_id, payload, attempts, max_attempts, run_at, created_at, updated_at) ";

/// Executor resolution: explicit agent, else the target's agent, else host.
const AGENT_EXPR: &str = "COALESCE(";

pub(crate) fn check_new_job(job: &NewJob) -> StoreResult<()> {
    if !matches!(
        job.status,
        JobStatus::Pending | JobStatus::AwaitingCsr | JobStatus::AwaitingApproval
    ) {
        return Err(StoreError::InvalidArgument(format!(
            "a new job cannot start as {}",
            job.status
        )));
    }
    if job.max_attempts < 1 {
        return Err(StoreError::InvalidArgument(
            "max_attempts must be >= 1".into(),
        ));
    }
    Ok(())
}

/// Appends the WHERE conditions of a [`JobFilter`] (shared by listing and
/// counting so the two cannot disagree).
macro_rules! job_conditions {
    ($qb:ident, $filter:expr) => {{
        let filter: &JobFilter = $filter;
        if let Some(s) = filter.status {
            $qb.push(" AND status = ").push_bind(s);
        }
        if let Some(t) = filter.job_type {
            $qb.push(" AND job_type = ").push_bind(t);
        }
        if let Some(c) = &filter.certificate_id {
            $qb.push(" AND certificate_id = ").push_bind(c.clone());
        }
        if let Some(a) = &filter.agent_id {
            $qb.push(" AND agent_id = ").push_bind(a.clone());
        }
    }};
}
pub(crate) use job_conditions;

/// The page of jobs matching `$filter` (`&JobFilter`), newest first: a
/// `QueryBuilder` of the backend its use decides. Served by the index
/// `jobs_by_created`, so a page reads its rows, not the whole table.
macro_rules! list_jobs_query {
    ($filter:expr) => {{
        let filter: &$crate::store::JobFilter = $filter;
        let mut qb = sqlx::QueryBuilder::new("SELECT * FROM jobs WHERE 1 = 1");
        $crate::store::repo::jobs::job_conditions!(qb, filter);
        qb.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind($crate::store::repo::sql_limit(filter.limit.unwrap_or(100)))
            .push(" OFFSET ")
            .push_bind(i64::try_from(filter.offset.unwrap_or(0)).unwrap_or(i64::MAX));
        qb
    }};
}
pub(crate) use list_jobs_query;

impl Store {
    /// Inserts one job and returns it. `agent_id` left `None` is resolved to
    /// the target's agent, or `"host"` when there is no target.
    pub async fn create_job(&self, job: NewJob) -> StoreResult<Job> {
        self.create_job_with_id(&new_id(), job, None).await
    }

    /// [`Store::create_job`] with a caller-chosen id (so the audit row of an
    /// operator's request can name the job), and `audit`, when given, in
    /// the same transaction.
    pub async fn create_job_with_id(
        &self,
        id: &str,
        job: NewJob,
        audit: Option<&NewAuditEvent>,
    ) -> StoreResult<Job> {
        check_new_job(&job)?;
        let now = now();
        on_write!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let mut qb = QueryBuilder::new(INSERT_JOB_COLUMNS);
            qb.push("VALUES (");
            push_job_values(&mut qb, id, &job, now);
            qb.push(") RETURNING *");
            let created = qb
                .build_query_as::<Job>()
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| {
                    StoreError::from_job_insert(
                        format!("open job for certificate {:?}", job.certificate_id),
                        e,
                    )
                })?;
            if let Some(event) = audit {
                insert_audit!(&mut *tx, now, event)?;
            }
            tx.commit().await?;
            Ok(created)
        })
    }

    /// Inserts many jobs in chunks (one statement per chunk); returns how
    /// many were inserted. For seeding, fan-out and benchmarks.
    pub async fn create_jobs(&self, jobs: &[NewJob]) -> StoreResult<u64> {
        for job in jobs {
            check_new_job(job)?;
        }
        let now = now();
        let mut total = 0;
        // 14 binds per row; stay below SQLite's 32766 variable limit.
        for chunk in jobs.chunks(1000) {
            total += on_write!(self, |pool| {
                let mut tx = pool.begin_write().await?;
                let mut qb = QueryBuilder::new(INSERT_JOB_COLUMNS);
                qb.push("VALUES ");
                for (i, job) in chunk.iter().enumerate() {
                    if i > 0 {
                        qb.push(", ");
                    }
                    qb.push("(");
                    push_job_values(&mut qb, &new_id(), job, now);
                    qb.push(")");
                }
                let n = qb
                    .build()
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| StoreError::from_job_insert("open job for a certificate", e))?
                    .rows_affected();
                tx.commit().await?;
                n
            });
        }
        Ok(total)
    }

    /// One job by id.
    pub async fn get_job(&self, id: &str) -> StoreResult<Option<Job>> {
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, Job>("SELECT * FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Jobs matching `filter`, newest first, `filter.offset` rows skipped.
    pub async fn list_jobs(&self, filter: &JobFilter) -> StoreResult<Vec<Job>> {
        Ok(on_read!(self, |pool| {
            let mut qb = list_jobs_query!(filter);
            qb.build_query_as::<Job>().fetch_all(pool).await?
        }))
    }

    /// Number of jobs matching `filter` (its limit and offset ignored).
    pub async fn count_jobs(&self, filter: &JobFilter) -> StoreResult<u64> {
        let count: i64 = on_read!(self, |pool| {
            let mut qb = QueryBuilder::new("SELECT COUNT(*) FROM jobs WHERE 1 = 1");
            job_conditions!(qb, filter);
            qb.build_query_scalar::<i64>().fetch_one(pool).await?
        });
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Number of jobs per status (statuses without jobs are absent).
    pub async fn job_status_counts(&self) -> StoreResult<BTreeMap<JobStatus, i64>> {
        let rows: Vec<(JobStatus, i64)> = on_read!(self, |pool| {
            sqlx::query_as("SELECT status, COUNT(*) FROM jobs GROUP BY status")
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().collect())
    }

    /// Moves job `id` from `from` to `to` if, and only if, it is in `from`
    /// now (one conditional UPDATE). Returns whether this caller won. The
    /// transition must be legal ([`crate::store::job_state`]). Columns in
    /// `update` are set in the same statement; leaving `Running` clears the
    /// lease expiry, reaching Completed/Failed/Cancelled sets `finished_at`.
    /// `audit`, if given, is written in the same transaction, only when won.
    pub async fn transition_job(
        &self,
        id: &str,
        from: JobStatus,
        to: JobStatus,
        update: JobUpdate,
        audit: Option<NewAuditEvent>,
    ) -> StoreResult<bool> {
        self.transition_job_holding(id, from, to, update, audit, None)
            .await
    }

    /// An operator's cancellation of job `id` (in status `from`), audited.
    /// A cancelled issuance or renewal also holds its certificate back from
    /// the renewal sweep until `hold_until`, in the same transaction:
    /// otherwise the next sweep would create the job the operator just
    /// cancelled again.
    pub async fn cancel_job_by_operator(
        &self,
        id: &str,
        from: JobStatus,
        reason: &str,
        audit: NewAuditEvent,
        hold_until: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<bool> {
        let update = JobUpdate {
            last_error: Some(reason.to_owned()),
            ..JobUpdate::default()
        };
        self.transition_job_holding(
            id,
            from,
            JobStatus::Cancelled,
            update,
            Some(audit),
            Some(hold_until),
        )
        .await
    }

    async fn transition_job_holding(
        &self,
        id: &str,
        from: JobStatus,
        to: JobStatus,
        update: JobUpdate,
        audit: Option<NewAuditEvent>,
        hold_until: Option<chrono::DateTime<chrono::Utc>>,
    ) -> StoreResult<bool> {
        if !can_transition(from, to) {
            return Err(StoreError::IllegalTransition { from, to });
        }
        let now = now();
        on_write!(self, |pool| {
            let mut qb = QueryBuilder::new("UPDATE jobs SET status = ");
            qb.push_bind(to).push(", updated_at = ").push_bind(ts(now));
            if from == JobStatus::Running {
                qb.push(", lease_expires_at = NULL");
            }
            if matches!(
                to,
                JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
            ) {
                qb.push(", finished_at = ").push_bind(ts(now));
            }
            if to == JobStatus::Pending {
                qb.push(", lease_owner = NULL, finished_at = NULL");
            }
            crate::store::repo::outcomes::push_job_update!(qb, update);
            qb.push(" WHERE id = ").push_bind(id.to_owned());
            qb.push(" AND status = ").push_bind(from);
            match (audit, hold_until) {
                (None, None) => Ok(qb.build().execute(pool).await?.rows_affected() == 1),
                (audit, hold_until) => {
                    let mut tx = pool.begin_write().await?;
                    let won = qb.build().execute(&mut *tx).await?.rows_affected() == 1;
                    if won {
                        if let Some(event) = &audit {
                            insert_audit!(&mut *tx, now, event)?;
                        }
                        if let Some(until) = hold_until {
                            sqlx::query(
                                "UPDATE certificates SET renew_at = $2, updated_at = $3
                                 WHERE id = (SELECT certificate_id FROM jobs
                                             WHERE id = $1 AND job_type IN ('issuance', 'renewal'))
                                   AND (renew_at IS NULL OR renew_at < $2)",
                            )
                            .bind(id)
                            .bind(ts(until))
                            .bind(ts(now))
                            .execute(&mut *tx)
                            .await?;
                        }
                    }
                    tx.commit().await?;
                    Ok(won)
                }
            }
        })
    }

    /// Running → Completed for the holder of `lease`. False if the lease was
    /// lost (reaped, re-claimed, cancelled).
    pub async fn complete_job(&self, lease: &JobLease) -> StoreResult<bool> {
        let now = now();
        Ok(on_write!(self, |pool| {
            sqlx::query(
                "UPDATE jobs SET status = 'completed', lease_expires_at = NULL, finished_at = $4,
                        updated_at = $4
                 WHERE id = $1 AND status = 'running' AND lease_owner = $2 AND attempts = $3",
            )
            .bind(&lease.job_id)
            .bind(&lease.owner)
            .bind(lease.attempt)
            .bind(ts(now))
            .execute(pool)
            .await?
            .rows_affected()
                == 1
        }))
    }

    /// Running → Failed for the holder of `lease`. The next attempt time is
    /// `failure.retry_at`, else exponential backoff on the attempt count; a
    /// permanent failure spends the budget. Returns the failed job, or `None`
    /// if the lease was lost.
    pub async fn fail_job(
        &self,
        lease: &JobLease,
        failure: JobFailure,
    ) -> StoreResult<Option<Job>> {
        let now = now();
        let base = self.options.backoff.base.as_secs_f64();
        let cap = self.options.backoff.cap.as_secs_f64();
        Ok(on_write!(
            self,
            crate::store::sqlite::claims::FAIL_JOB,
            crate::store::postgres::claims::FAIL_JOB,
            |pool, sql| {
                sqlx::query_as::<_, Job>(sql)
                    .bind(&lease.job_id)
                    .bind(&lease.owner)
                    .bind(lease.attempt)
                    .bind(ts(now))
                    .bind(&failure.error)
                    .bind(base)
                    .bind(cap)
                    .bind(failure.permanent)
                    .bind(opt_ts(
                        self.options.backoff.cap_retry_at(failure.retry_at, now),
                    ))
                    .fetch_optional(pool)
                    .await?
            }
        ))
    }

    /// Any non-terminal status → Cancelled. Returns whether it was cancelled
    /// by this call.
    pub async fn cancel_job(&self, id: &str, reason: &str) -> StoreResult<bool> {
        let now = now();
        Ok(on_write!(self, |pool| {
            sqlx::query(
                "UPDATE jobs SET status = 'cancelled', last_error = $2, lease_expires_at = NULL,
                        finished_at = $3, updated_at = $3
                 WHERE id = $1 AND status NOT IN ('completed', 'cancelled')",
            )
            .bind(id)
            .bind(reason)
            .bind(ts(now))
            .execute(pool)
            .await?
            .rows_affected()
                == 1
        }))
    }

    /// AwaitingCsr → Pending with the agent's CSR stored; false if the job
    /// was not awaiting a CSR (e.g. a replayed submission).
    pub async fn submit_csr(&self, job_id: &str, csr_pem: &str) -> StoreResult<bool> {
        self.transition_job(
            job_id,
            JobStatus::AwaitingCsr,
            JobStatus::Pending,
            JobUpdate {
                csr_pem: Some(csr_pem.to_owned()),
                run_at: Some(now()),
                ..JobUpdate::default()
            },
            None,
        )
        .await
    }

    /// Jobs that failed for good (attempt budget spent) and last changed
    /// at or after `since`, oldest first: the failures worth telling
    /// someone about.
    pub async fn list_jobs_failed_for_good(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Job>> {
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, Job>(
                "SELECT * FROM jobs WHERE status = 'failed' AND attempts >= max_attempts
                   AND updated_at >= $1
                 ORDER BY updated_at, id LIMIT $2",
            )
            .bind(ts(since))
            .bind(crate::store::repo::sql_limit(limit))
            .fetch_all(pool)
            .await?
        }))
    }
}

/// Pushes the 14 VALUES of one job row.
pub(crate) fn push_job_values<'a, DB: sqlx::Database>(
    qb: &mut QueryBuilder<'a, DB>,
    id: &str,
    job: &NewJob,
    now: chrono::DateTime<chrono::Utc>,
) where
    String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Option<String>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    crate::store::JobType: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    JobStatus: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Option<Json<serde_json::Value>>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i32: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    crate::store::codec::DbTime: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let run_at = job.run_at.unwrap_or(now);
    qb.push_bind(id.to_owned())
        .push(", ")
        .push_bind(job.job_type)
        .push(", ")
        .push_bind(job.status)
        .push(", ")
        .push_bind(job.certificate_id.clone())
        .push(", ")
        .push_bind(job.target_id.clone())
        .push(", ");
    // agent: explicit, else the target's agent, else the host.
    qb.push(AGENT_EXPR)
        .push_bind(job.agent_id.clone())
        .push(", (SELECT agent_id FROM targets WHERE id = ")
        .push_bind(job.target_id.clone())
        .push("), 'host'), ")
        .push_bind(job.parent_job_id.clone())
        .push(", ")
        .push_bind(job.certificate_version_id.clone())
        .push(", ")
        .push_bind(job.payload.clone().map(Json))
        .push(", 0, ")
        .push_bind(job.max_attempts)
        .push(", ")
        .push_bind(crate::store::codec::ts(run_at))
        .push(", ")
        .push_bind(crate::store::codec::ts(now))
        .push(", ")
        .push_bind(crate::store::codec::ts(now));
}
