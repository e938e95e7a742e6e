//! Job outcomes: a job's status change and everything it implies (the
//! certificate version, follow-up jobs, audit rows, notification rows)
//! committed in one transaction, so a host killed at any point leaves
//! either all of it or none of it.
//!
//! Invariant: the job's own UPDATE comes first and is guarded (by the
//! lease for a claimed job, by the status otherwise); when the guard fails
//! nothing is written and the caller learns that it lost the job.

use sqlx::QueryBuilder;

use crate::faults;
use crate::store::codec::{now, ts};
use crate::store::postgres::claims as pg;
use crate::store::repo::notices::Notice;
use crate::store::sqlite::claims as lite;
use crate::store::{
    AlertChange, BeginWrite, CertificateVersion, Job, JobFailure, JobLease, JobStatus, JobUpdate,
    NewAuditEvent, NewCertificateVersion, NewJob, Store, StoreError, StoreResult, on_write,
};

/// Who may end the job: the holder of its lease, or anyone finding it in a
/// given status (jobs that are not claimed, e.g. awaiting a CSR).
#[derive(Debug, Clone)]
pub enum Guard {
    /// The job is Running under this lease.
    Lease(JobLease),
    /// The job is in this status.
    Status {
        /// The job.
        job_id: String,
        /// Its expected status.
        status: JobStatus,
    },
}

impl Guard {
    fn expected_status(&self) -> JobStatus {
        match self {
            Guard::Lease(_) => JobStatus::Running,
            Guard::Status { status, .. } => *status,
        }
    }
}

/// Where the job goes.
#[derive(Debug, Clone)]
pub enum JobEnd {
    /// Completed.
    Complete,
    /// Failed; retried per the failure (lease guard only).
    Fail(JobFailure),
    /// Another live status (Polling, AwaitingCsr, Pending).
    Move(JobStatus),
}

/// One job outcome. Build it, then [`Store::commit_outcome`].
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Names the outcome's fault points (`crate::faults::KINDS`).
    pub kind: &'static str,
    /// Who may end the job.
    pub guard: Guard,
    /// Where it goes.
    pub end: JobEnd,
    /// Columns set with the status change.
    pub update: JobUpdate,
    /// A certificate version recorded and made current.
    pub version: Option<NewCertificateVersion>,
    /// Jobs created; one without a `certificate_version_id` gets the
    /// version recorded by this outcome.
    pub follow_ups: Vec<NewJob>,
    /// Audit rows.
    pub audit: Vec<NewAuditEvent>,
    /// Notifications, one per enabled notifier each.
    pub notices: Vec<Notice>,
}

impl Outcome {
    /// An outcome of `kind` moving the job guarded by `guard` to `end`,
    /// implying nothing else yet.
    pub fn new(kind: &'static str, guard: Guard, end: JobEnd) -> Self {
        Outcome {
            kind,
            guard,
            end,
            update: JobUpdate::default(),
            version: None,
            follow_ups: Vec::new(),
            audit: Vec::new(),
            notices: Vec::new(),
        }
    }
}

/// What a committed outcome wrote.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The job after its change.
    pub job: Job,
    /// The version recorded, if any.
    pub version: Option<CertificateVersion>,
    /// The follow-up jobs created.
    pub follow_ups: Vec<Job>,
    /// Notifications queued.
    pub notifications: u64,
}

/// Appends `SET ...` columns of a job update after `status = ...`.
macro_rules! push_job_update {
    ($qb:ident, $update:expr) => {{
        let $crate::store::JobUpdate {
            last_error,
            run_at,
            csr_pem,
            order_id,
            order_state,
            next_poll_at,
            poll_deadline_at,
            verification_result,
            certificate_version_id,
            payload,
        } = $update;
        if let Some(v) = last_error {
            $qb.push(", last_error = ")
                .push_bind($crate::store::codec::storable(&v).into_owned());
        }
        if let Some(v) = run_at {
            $qb.push(", run_at = ")
                .push_bind($crate::store::codec::ts(v));
        }
        if let Some(v) = csr_pem {
            $qb.push(", csr_pem = ").push_bind(v);
        }
        if let Some(v) = order_id {
            $qb.push(", order_id = ")
                .push_bind($crate::store::codec::storable(&v).into_owned());
        }
        if let Some(v) = order_state {
            $qb.push(", order_state = ")
                .push_bind($crate::store::codec::storable(&v).into_owned());
        }
        if let Some(v) = next_poll_at {
            $qb.push(", next_poll_at = ")
                .push_bind($crate::store::codec::ts(v));
        }
        if let Some(v) = poll_deadline_at {
            $qb.push(", poll_deadline_at = ")
                .push_bind($crate::store::codec::ts(v));
        }
        if let Some(v) = verification_result {
            $qb.push(", verification_result = ")
                .push_bind(sqlx::types::Json($crate::store::codec::storable_json(v)));
        }
        if let Some(v) = certificate_version_id {
            $qb.push(", certificate_version_id = ").push_bind(v);
        }
        if let Some(v) = payload {
            $qb.push(", payload = ")
                .push_bind(sqlx::types::Json($crate::store::codec::storable_json(v)));
        }
    }};
}
pub(crate) use push_job_update;

/// Appends the WHERE clause of a guard.
macro_rules! push_guard {
    ($qb:ident, $guard:expr) => {{
        match $guard {
            $crate::store::Guard::Lease(lease) => {
                $qb.push(" WHERE id = ")
                    .push_bind(lease.job_id.clone())
                    .push(" AND status = 'running' AND lease_owner = ")
                    .push_bind(lease.owner.clone())
                    .push(" AND attempts = ")
                    .push_bind(lease.attempt);
            }
            $crate::store::Guard::Status { job_id, status } => {
                $qb.push(" WHERE id = ")
                    .push_bind(job_id.clone())
                    .push(" AND status = ")
                    .push_bind(*status);
            }
        }
    }};
}
pub(crate) use push_guard;

impl Store {
    /// Records what a side effect outside the database achieved (the CA's
    /// order id and state) on a claimed job, in one statement, without
    /// changing its status: the receipt that keeps a re-run from placing a
    /// second order. False if the lease was lost (nothing written).
    pub async fn record_order(&self, lease: &JobLease, update: JobUpdate) -> StoreResult<bool> {
        let now = now();
        let guard = Guard::Lease(lease.clone());
        let written = on_write!(self, |pool| {
            let mut qb = QueryBuilder::new("UPDATE jobs SET updated_at = ");
            qb.push_bind(ts(now));
            push_job_update!(qb, update);
            push_guard!(qb, &guard);
            qb.build().execute(pool).await?.rows_affected() == 1
        });
        if written {
            faults::point("order_receipt", "committed");
        }
        Ok(written)
    }

    /// Extends a claimed job's lease to a full lease from now, in one
    /// guarded statement, and returns its new end; `None` when the lease
    /// was lost (cancelled, reaped, claimed again) and nothing was written.
    pub async fn renew_lease(
        &self,
        lease: &JobLease,
    ) -> StoreResult<Option<chrono::DateTime<chrono::Utc>>> {
        let until = self.lease_expiry(now());
        let guard = Guard::Lease(lease.clone());
        let renewed = on_write!(self, |pool| {
            let mut qb = QueryBuilder::new("UPDATE jobs SET lease_expires_at = ");
            qb.push_bind(ts(until));
            push_guard!(qb, &guard);
            qb.build().execute(pool).await?.rows_affected() == 1
        });
        Ok(renewed.then_some(until))
    }

    /// Extends the leases of the jobs `ids` that agent `agent_id` holds
    /// (running, leased to it) to a full lease from now, where less than
    /// `renew_within` is left and the job started after `started_after`
    /// (a job held longer is left to lapse, as a host job's renewals end);
    /// returns how many were extended. One statement; none for no ids.
    pub async fn renew_agent_leases(
        &self,
        agent_id: &str,
        ids: &[String],
        renew_within: std::time::Duration,
        started_after: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let now = now();
        let until = self.lease_expiry(now);
        let due = chrono::Duration::from_std(renew_within)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
        let ids = crate::store::repo::id_list(ids.iter().map(String::as_str));
        let renewed = on_write!(
            self,
            "UPDATE jobs SET lease_expires_at = $1
             WHERE id IN (SELECT value FROM json_each($2))
               AND status = 'running' AND lease_owner = $3
               AND lease_expires_at < $4 AND started_at > $5",
            "UPDATE jobs SET lease_expires_at = $1
             WHERE id = ANY(ARRAY(SELECT json_array_elements_text($2::json)))
               AND status = 'running' AND lease_owner = $3
               AND lease_expires_at < $4 AND started_at > $5",
            |pool, sql| {
                sqlx::query(sql)
                    .bind(ts(until))
                    .bind(&ids)
                    .bind(agent_id)
                    .bind(ts(due))
                    .bind(ts(started_after))
                    .execute(pool)
                    .await?
                    .rows_affected()
            }
        );
        Ok(renewed)
    }

    /// The version a job recorded, if any (at most one per job).
    pub async fn version_of_job(&self, job_id: &str) -> StoreResult<Option<CertificateVersion>> {
        Ok(crate::store::on_read!(self, |pool| {
            sqlx::query_as::<_, CertificateVersion>(
                "SELECT * FROM certificate_versions WHERE job_id = $1",
            )
            .bind(job_id)
            .fetch_optional(pool)
            .await?
        }))
    }

    /// Commits `outcome` in one transaction. `Ok(None)`: the guard failed
    /// (lease lost, job no longer in the expected status) and nothing was
    /// written.
    ///
    /// Completions and moves go through the group committer
    /// (`store::group_commit`): several outcomes share one transaction,
    /// each still all or nothing.
    pub async fn commit_outcome(&self, outcome: Outcome) -> StoreResult<Option<Committed>> {
        let prepared = Prepared::new(outcome, self)?;
        if let Some(group) = self.group_committer()
            && prepared.groupable()
        {
            return match group.commit(prepared).await {
                Ok(result) => {
                    self.counts.write();
                    result
                }
                Err(unsent) => self.commit_prepared(&unsent).await,
            };
        }
        self.commit_prepared(&prepared).await
    }

    /// Commits one checked outcome in its own transaction.
    pub(crate) async fn commit_prepared(
        &self,
        prepared: &Prepared,
    ) -> StoreResult<Option<Committed>> {
        on_write!(self, lite::FAIL_JOB, pg::FAIL_JOB, |pool, fail_sql| {
            commit_one!(pool, prepared, fail_sql)
        })
    }
}

/// An outcome checked and ready to write: where the job goes, its time
/// and the store's settings it is written with.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    pub(crate) outcome: Outcome,
    pub(crate) from: JobStatus,
    pub(crate) to: JobStatus,
    pub(crate) now: chrono::DateTime<chrono::Utc>,
    /// Retry backoff base and cap, seconds.
    pub(crate) backoff: (f64, f64),
    /// A failure's retry time, cut to the backoff cap.
    pub(crate) retry_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `" FOR UPDATE"` on PostgreSQL.
    pub(crate) lock_suffix: &'static str,
}

impl Prepared {
    fn new(outcome: Outcome, store: &Store) -> StoreResult<Prepared> {
        let from = outcome.guard.expected_status();
        let to = match &outcome.end {
            JobEnd::Complete => JobStatus::Completed,
            JobEnd::Fail(_) => JobStatus::Failed,
            JobEnd::Move(s) => *s,
        };
        if !crate::store::job_state::can_transition(from, to) {
            return Err(StoreError::IllegalTransition { from, to });
        }
        if matches!(outcome.end, JobEnd::Fail(_)) && !matches!(outcome.guard, Guard::Lease(_)) {
            return Err(StoreError::InvalidArgument(
                "only the holder of a lease can fail a job".into(),
            ));
        }
        for job in &outcome.follow_ups {
            crate::store::repo::jobs::check_new_job(job)?;
        }
        for notice in &outcome.notices {
            notice.check()?;
        }
        let now = now();
        let options = store.options();
        let retry_at = match &outcome.end {
            JobEnd::Fail(failure) => options.backoff.cap_retry_at(failure.retry_at, now),
            _ => None,
        };
        Ok(Prepared {
            outcome,
            from,
            to,
            now,
            backoff: (
                options.backoff.base.as_secs_f64(),
                options.backoff.cap.as_secs_f64(),
            ),
            retry_at,
            lock_suffix: store.row_lock_suffix(),
        })
    }

    /// Whether this outcome may share a transaction with others: its first
    /// statement is the guarded job UPDATE, and when that guard fails
    /// nothing at all was written. A failure (which may write twice before
    /// knowing) always gets a transaction of its own.
    pub(crate) fn groupable(&self) -> bool {
        !matches!(self.outcome.end, JobEnd::Fail(_))
    }
}

/// The rows of a transaction's outcomes that none of their later
/// statements reads (follow-up jobs, audit rows), written after the last
/// outcome by [`flush_deferred!`] in one multi-row INSERT per table, and
/// the enabled notifiers, read once per transaction. A group commit of 30
/// outcomes thus runs 2 INSERTs instead of 60 round trips to the writer.
#[derive(Debug, Default)]
pub(crate) struct Deferred<'a> {
    /// (the outcome's position in the transaction, the new job's id, the
    /// job, its time).
    pub(crate) follow_ups: Vec<(usize, String, NewJob, chrono::DateTime<chrono::Utc>)>,
    pub(crate) audit: Vec<(
        chrono::DateTime<chrono::Utc>,
        std::borrow::Cow<'a, NewAuditEvent>,
    )>,
    /// Fault points of the deferred steps, passed once they are written.
    pub(crate) points: Vec<(&'static str, &'static str)>,
    pub(crate) notifiers: Option<Vec<(String,)>>,
}

impl<'a> Deferred<'a> {
    /// Defers the follow-up jobs and audit rows of outcome number `index`
    /// of the transaction; its follow-ups point at `version` when they
    /// name none.
    pub(crate) fn add(
        &mut self,
        index: usize,
        p: &'a Prepared,
        version: Option<&CertificateVersion>,
    ) {
        let o = &p.outcome;
        for new in &o.follow_ups {
            let mut new = new.clone();
            if new.certificate_version_id.is_none() {
                new.certificate_version_id = version.map(|v| v.id.clone());
            }
            self.follow_ups
                .push((index, crate::store::new_id(), new, p.now));
        }
        if !o.follow_ups.is_empty() {
            self.points.push((o.kind, "follow_ups"));
        }
        self.audit.extend(
            o.audit
                .iter()
                .map(|event| (p.now, std::borrow::Cow::Borrowed(event))),
        );
        if !o.audit.is_empty() {
            self.points.push((o.kind, "audit"));
        }
    }
}

impl Deferred<'_> {
    /// Defers an audit row of another write of the transaction.
    pub(crate) fn audit_row(&mut self, at: chrono::DateTime<chrono::Utc>, event: NewAuditEvent) {
        self.audit.push((at, std::borrow::Cow::Owned(event)));
    }
}

/// Writes what `$deferred` (`Deferred`) holds on the open transaction `$tx`;
/// evaluates to `StoreResult<Vec<(usize, Job)>>`: the follow-up jobs
/// created, each with its outcome's position in the transaction, in the
/// order they were deferred.
macro_rules! flush_deferred {
    ($tx:expr, $deferred:expr) => {
        async {
            let tx = $tx;
            let deferred: $crate::store::repo::outcomes::Deferred<'_> = $deferred;
            let mut created = Vec::with_capacity(deferred.follow_ups.len());
            for chunk in deferred
                .follow_ups
                .chunks($crate::store::repo::INSERT_CHUNK)
            {
                let mut qb = sqlx::QueryBuilder::new(crate::store::repo::jobs::INSERT_JOB_COLUMNS);
                qb.push("VALUES (");
                for (i, (_, id, new, now)) in chunk.iter().enumerate() {
                    if i > 0 {
                        qb.push("), (");
                    }
                    crate::store::repo::jobs::push_job_values(&mut qb, id, new, *now);
                }
                qb.push(") RETURNING *");
                let rows = qb
                    .build_query_as::<$crate::store::Job>()
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(|e| $crate::store::StoreError::from_job_insert("follow-up job", e))?;
                // RETURNING promises no order: match the rows by id.
                let mut by_id: std::collections::HashMap<String, $crate::store::Job> =
                    rows.into_iter().map(|j| (j.id.clone(), j)).collect();
                for (index, id, _, _) in chunk {
                    let job = by_id.remove(id).ok_or_else(|| {
                        $crate::store::StoreError::Database(sqlx::Error::Protocol(format!(
                            "follow-up job {id} was not returned by its INSERT"
                        )))
                    })?;
                    created.push((*index, job));
                }
            }
            $crate::store::repo::insert_audits!(&mut **tx, &deferred.audit)?;
            for (kind, step) in &deferred.points {
                $crate::faults::point(kind, step);
            }
            Ok::<_, $crate::store::StoreError>(created)
        }
        .await
    };
}
pub(crate) use flush_deferred;

/// Appends the guarded job UPDATE of an outcome that completes or moves
/// its job (`$p`: `&Prepared`), `RETURNING *`: no row when the guard
/// failed.
macro_rules! push_move {
    ($qb:ident, $p:expr) => {{
        let p: &$crate::store::repo::outcomes::Prepared = $p;
        let now = $crate::store::codec::ts(p.now);
        $qb.push("UPDATE jobs SET status = ")
            .push_bind(p.to)
            .push(", updated_at = ")
            .push_bind(now);
        if p.from == $crate::store::JobStatus::Running {
            $qb.push(", lease_expires_at = NULL");
        }
        if p.to == $crate::store::JobStatus::Completed {
            $qb.push(", finished_at = ").push_bind(now);
        }
        if p.to == $crate::store::JobStatus::Pending {
            $qb.push(", lease_owner = NULL, finished_at = NULL");
        }
        $crate::store::repo::outcomes::push_job_update!($qb, p.outcome.update.clone());
        $crate::store::repo::outcomes::push_guard!($qb, &p.outcome.guard);
        $qb.push(" RETURNING *");
    }};
}
pub(crate) use push_move;

/// Whether no two of `outcomes` open or clear the same alert condition:
/// then clearing all their conditions first, in one statement, changes
/// nothing any of them sees.
pub(crate) fn distinct_alert_keys(outcomes: &[(usize, &Prepared)]) -> bool {
    let mut seen = std::collections::HashSet::new();
    outcomes
        .iter()
        .flat_map(|(_, p)| p.outcome.notices.iter())
        .flat_map(|n| n.alerts.iter())
        .all(|a| match a {
            AlertChange::Resolve(key) | AlertChange::Trigger(key) => seen.insert(key.as_str()),
        })
}

/// The alert conditions cleared by those of `outcomes` whose job UPDATE
/// held (`jobs`, in the same order).
pub(crate) fn alerts_resolved<'a>(
    outcomes: &[(usize, &'a Prepared)],
    jobs: &[Option<Job>],
) -> Vec<&'a str> {
    outcomes
        .iter()
        .zip(jobs)
        .filter(|(_, job)| job.is_some())
        .flat_map(|((_, p), _)| p.outcome.notices.iter())
        .flat_map(|n| n.alerts.iter())
        .filter_map(|a| match a {
            AlertChange::Resolve(key) => Some(key.as_str()),
            AlertChange::Trigger(_) => None,
        })
        .collect()
}

/// Steps 4 and 5 of a group's outcomes written phase by phase
/// (`sqlite::outcome_batch`, `postgres::outcome_batch`), once the jobs
/// (`$jobs`: `Vec<Option<Job>>`, `None` where the guard failed) and the
/// versions (`$versions`: `Vec<Option<CertificateVersion>>`) of `$outcomes`
/// are written on the open transaction `$tx`: the follow-ups and audit rows
/// of the outcomes that hold, deferred to `$deferred`; the alert conditions
/// they clear, in one DELETE (`$clear_sql`; their keys are distinct across
/// the group); each one's notifications. Expands to statements of the
/// calling async function (`?` returns its errors) and evaluates to
/// `Vec<Option<Committed>>`.
macro_rules! finish_outcomes {
    ($tx:expr, $outcomes:expr, $jobs:expr, $versions:expr, $deferred:expr, $clear_sql:expr) => {{
        let outcomes: &[(usize, &$crate::store::repo::outcomes::Prepared)] = $outcomes;
        let jobs: Vec<Option<$crate::store::Job>> = $jobs;
        let versions: Vec<Option<$crate::store::CertificateVersion>> = $versions;
        for (((index, p), job), version) in outcomes.iter().zip(&jobs).zip(&versions) {
            if job.is_some() {
                $deferred.add(*index, p, version.as_ref());
            }
        }
        let cleared = $crate::store::repo::outcomes::clear_alerts!(
            $tx,
            &$crate::store::repo::outcomes::alerts_resolved(outcomes, &jobs),
            $clear_sql
        )?;
        let mut written = Vec::with_capacity(outcomes.len());
        for (((_, p), job), version) in outcomes.iter().zip(jobs).zip(versions) {
            let Some(job) = job else {
                written.push(None);
                continue;
            };
            let o = &p.outcome;
            let queued = $crate::store::repo::notices::queue_notices!(
                &mut *$tx,
                p.now,
                &o.notices,
                &mut $deferred.notifiers,
                Some(cleared.as_slice())
            )?;
            if !o.notices.is_empty() {
                $crate::faults::point(o.kind, "notifications");
            }
            written.push(Some($crate::store::Committed {
                job,
                version,
                follow_ups: Vec::with_capacity(o.follow_ups.len()),
                notifications: queued,
            }));
        }
        written
    }};
}
pub(crate) use finish_outcomes;

/// Clears the alert conditions `$keys` (`&[&str]`) on the open transaction
/// `$tx` in one statement (`$sql`: [`CLEAR_ALERTS_SQLITE`] or
/// [`CLEAR_ALERTS_POSTGRES`]); evaluates to `StoreResult<Vec<String>>`, the
/// keys that were open.
macro_rules! clear_alerts {
    ($tx:expr, $keys:expr, $sql:expr) => {{
        let keys: &[&str] = $keys;
        async {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            // One text for any number of keys: it stays prepared.
            Ok::<_, $crate::store::StoreError>(
                sqlx::query_scalar::<_, String>($sql)
                    .bind($crate::store::repo::id_list(keys.iter().copied()))
                    .fetch_all(&mut **$tx)
                    .await?,
            )
        }
        .await
    }};
}
pub(crate) use clear_alerts;

/// [`clear_alerts!`] on SQLite (`$1`: the keys as a JSON array).
pub(crate) const CLEAR_ALERTS_SQLITE: &str =
    "DELETE FROM alert_conditions WHERE key IN (SELECT value FROM json_each($1)) RETURNING key";
/// [`clear_alerts!`] on PostgreSQL.
pub(crate) const CLEAR_ALERTS_POSTGRES: &str = "DELETE FROM alert_conditions \
     WHERE key = ANY(ARRAY(SELECT json_array_elements_text($1::json))) RETURNING key";

/// Step 1 of the prepared outcome `$prepared` on the open write transaction
/// `$tx` (`&mut Transaction`): the job's own guarded UPDATE (for a failure,
/// its update then `$fail_sql`, the backend's `FAIL_JOB`). Evaluates to
/// `StoreResult<Option<Job>>`: `None` when the guard failed, before
/// anything was written (a groupable outcome) or with the transaction to be
/// rolled back (a failure).
macro_rules! write_outcome_job {
    ($tx:expr, $prepared:expr, $fail_sql:expr) => {{
        let tx = $tx;
        let p: &$crate::store::repo::outcomes::Prepared = $prepared;
        let fail_sql: &str = $fail_sql;
        async {
            let o = &p.outcome;
            let (now, guard, update) = (p.now, &o.guard, o.update.clone());
            let job: Option<$crate::store::Job> = match &o.end {
                $crate::store::JobEnd::Fail(failure) => {
                    let $crate::store::Guard::Lease(lease) = guard else {
                        return Err($crate::store::StoreError::InvalidArgument(
                            "only the holder of a lease can fail a job".into(),
                        ));
                    };
                    if update != $crate::store::JobUpdate::default() {
                        let mut qb = sqlx::QueryBuilder::new("UPDATE jobs SET updated_at = ");
                        qb.push_bind($crate::store::codec::ts(now));
                        $crate::store::repo::outcomes::push_job_update!(qb, update);
                        $crate::store::repo::outcomes::push_guard!(qb, guard);
                        if qb.build().execute(&mut **tx).await?.rows_affected() != 1 {
                            return Ok(None);
                        }
                    }
                    sqlx::query_as::<_, $crate::store::Job>(fail_sql)
                        .bind(&lease.job_id)
                        .bind(&lease.owner)
                        .bind(lease.attempt)
                        .bind($crate::store::codec::ts(now))
                        .bind(&failure.error)
                        .bind(p.backoff.0)
                        .bind(p.backoff.1)
                        .bind(failure.permanent)
                        .bind($crate::store::codec::opt_ts(p.retry_at))
                        .fetch_optional(&mut **tx)
                        .await?
                }
                _ => {
                    let mut qb = sqlx::QueryBuilder::new("");
                    $crate::store::repo::outcomes::push_move!(qb, p);
                    qb.build_query_as::<$crate::store::Job>()
                        .fetch_optional(&mut **tx)
                        .await?
                }
            };
            if job.is_some() {
                $crate::faults::point(o.kind, "job");
            }
            Ok::<_, $crate::store::StoreError>(job)
        }
        .await
    }};
}
pub(crate) use write_outcome_job;

/// Steps 2 to 5 of the prepared outcome `$prepared`, number `$index` of the
/// open write transaction `$tx`, whose job UPDATE held (`$job`, the job
/// after it): the version, the follow-up jobs and audit rows (deferred to
/// `$deferred`, `&mut Deferred`, for [`flush_deferred!`]) and the
/// notifications, with the alert conditions they clear. Evaluates to
/// `StoreResult<Committed>`.
macro_rules! write_outcome_rest {
    ($tx:expr, $prepared:expr, $job:expr, $deferred:expr, $index:expr) => {{
        let tx = $tx;
        let p: &$crate::store::repo::outcomes::Prepared = $prepared;
        let job: $crate::store::Job = $job;
        let deferred: &mut $crate::store::repo::outcomes::Deferred<'_> = $deferred;
        let index: usize = $index;
        async {
            let o = &p.outcome;
            let (kind, now) = (o.kind, p.now);
            // 2. The certificate version, made current.
            let mut recorded = None;
            if let Some(new) = &o.version {
                let row = $crate::store::repo::certificates::record_version!(
                    &mut *tx,
                    p.lock_suffix,
                    new,
                    now,
                    || { $crate::faults::point(kind, "version_row") }
                )?;
                $crate::faults::point(kind, "version");
                recorded = Some(row);
            }

            // 3. Follow-up jobs (deployments of the new version, ...) and
            // 4. audit rows: deferred to the end of the transaction.
            deferred.add(index, p, recorded.as_ref());

            // 5. Notifications, one per enabled notifier, and the alert
            // conditions they open and clear.
            let queued = $crate::store::repo::notices::queue_notices!(
                &mut *tx,
                now,
                &o.notices,
                &mut deferred.notifiers
            )?;
            if !o.notices.is_empty() {
                $crate::faults::point(kind, "notifications");
            }
            Ok::<_, $crate::store::StoreError>($crate::store::Committed {
                job,
                version: recorded,
                follow_ups: Vec::with_capacity(o.follow_ups.len()),
                notifications: queued,
            })
        }
        .await
    }};
}
pub(crate) use write_outcome_rest;

/// Writes the prepared outcome `$prepared`, number `$index` of the open
/// write transaction `$tx` (`&mut Transaction`), except the rows it defers
/// to `$deferred` (`&mut Deferred`) for [`flush_deferred!`]: its job
/// ([`write_outcome_job!`]), then the rest ([`write_outcome_rest!`]).
/// Evaluates to `Ok(None)` when the guard failed, before anything was
/// written (a groupable outcome) or with the transaction to be rolled back
/// (a failure). `$fail_sql` is the backend's `FAIL_JOB`. The caller flushes
/// and commits.
macro_rules! write_outcome {
    ($tx:expr, $prepared:expr, $fail_sql:expr, $deferred:expr, $index:expr) => {{
        let tx = $tx;
        let p: &$crate::store::repo::outcomes::Prepared = $prepared;
        match $crate::store::repo::outcomes::write_outcome_job!(&mut *tx, p, $fail_sql) {
            Ok(Some(job)) => {
                $crate::store::repo::outcomes::write_outcome_rest!(tx, p, job, $deferred, $index)
                    .map(Some)
            }
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        }
    }};
}
pub(crate) use write_outcome;

/// Commits the prepared outcome `$prepared` in a transaction of its own on
/// `$pool`; evaluates to the outcome's result.
macro_rules! commit_one {
    ($pool:expr, $prepared:expr, $fail_sql:expr) => {{
        let prepared: &$crate::store::repo::outcomes::Prepared = $prepared;
        async {
            let mut tx = $pool.begin_write().await?;
            let mut deferred = $crate::store::repo::outcomes::Deferred::default();
            let mut written = $crate::store::repo::outcomes::write_outcome!(
                &mut tx,
                prepared,
                $fail_sql,
                &mut deferred,
                0
            )?;
            if let Some(committed) = &mut written {
                let created = $crate::store::repo::outcomes::flush_deferred!(&mut tx, deferred)?;
                committed
                    .follow_ups
                    .extend(created.into_iter().map(|(_, job)| job));
                tx.commit().await?;
                $crate::faults::point(prepared.outcome.kind, "committed");
            }
            // Otherwise dropping the transaction rolls it back.
            Ok::<_, StoreError>(written)
        }
        .await
    }};
}
pub(crate) use commit_one;
