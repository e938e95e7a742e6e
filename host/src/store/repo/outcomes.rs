//! Job outcomes: a job's status change and everything it implies (the
//! certificate version, follow-up jobs, audit rows, notification rows)
//! committed in one transaction, so a host killed at any point leaves
//! either all of it or none of it.
//!
//! Invariant: the job's own UPDATE comes first and is guarded (by the
//! lease for a claimed job, by the status otherwise); when the guard fails
//! nothing is written and the caller learns that it lost the job.

use sqlx::QueryBuilder;
use sqlx::types::Json;

use crate::faults;
use crate::store::codec::{now, opt_ts, ts};
use crate::store::postgres::claims as pg;
use crate::store::repo::certificates::record_version;
use crate::store::repo::insert_audit;
use crate::store::repo::notices::{Notice, queue_notices};
use crate::store::sqlite::claims as lite;
use crate::store::{
    BeginWrite, CertificateVersion, Job, JobFailure, JobLease, JobStatus, JobUpdate, NewAuditEvent,
    NewCertificateVersion, NewJob, Store, StoreError, StoreResult, new_id, on_write,
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
        let JobUpdate {
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
            $qb.push(", run_at = ").push_bind(ts(v));
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
            $qb.push(", next_poll_at = ").push_bind(ts(v));
        }
        if let Some(v) = poll_deadline_at {
            $qb.push(", poll_deadline_at = ").push_bind(ts(v));
        }
        if let Some(v) = verification_result {
            $qb.push(", verification_result = ")
                .push_bind(Json($crate::store::codec::storable_json(v)));
        }
        if let Some(v) = certificate_version_id {
            $qb.push(", certificate_version_id = ").push_bind(v);
        }
        if let Some(v) = payload {
            $qb.push(", payload = ")
                .push_bind(Json($crate::store::codec::storable_json(v)));
        }
    }};
}
pub(crate) use push_job_update;

/// Appends the WHERE clause of a guard.
macro_rules! push_guard {
    ($qb:ident, $guard:expr) => {{
        match $guard {
            Guard::Lease(lease) => {
                $qb.push(" WHERE id = ")
                    .push_bind(lease.job_id.clone())
                    .push(" AND status = 'running' AND lease_owner = ")
                    .push_bind(lease.owner.clone())
                    .push(" AND attempts = ")
                    .push_bind(lease.attempt);
            }
            Guard::Status { job_id, status } => {
                $qb.push(" WHERE id = ")
                    .push_bind(job_id.clone())
                    .push(" AND status = ")
                    .push_bind(*status);
            }
        }
    }};
}

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
    pub async fn commit_outcome(&self, outcome: Outcome) -> StoreResult<Option<Committed>> {
        let Outcome {
            kind,
            guard,
            end,
            update,
            version,
            mut follow_ups,
            audit,
            notices,
        } = outcome;
        let from = guard.expected_status();
        let to = match &end {
            JobEnd::Complete => JobStatus::Completed,
            JobEnd::Fail(_) => JobStatus::Failed,
            JobEnd::Move(s) => *s,
        };
        if !crate::store::job_state::can_transition(from, to) {
            return Err(StoreError::IllegalTransition { from, to });
        }
        for job in &follow_ups {
            crate::store::repo::jobs::check_new_job(job)?;
        }
        for notice in &notices {
            notice.check()?;
        }
        let now = now();
        let backoff = (
            self.options.backoff.base.as_secs_f64(),
            self.options.backoff.cap.as_secs_f64(),
        );
        let lock_suffix = self.row_lock_suffix();
        on_write!(self, lite::FAIL_JOB, pg::FAIL_JOB, |pool, fail_sql| {
            let mut tx = pool.begin_write().await?;

            // 1. The job itself, guarded.
            let job: Option<Job> = match &end {
                JobEnd::Fail(failure) => {
                    let Guard::Lease(lease) = &guard else {
                        return Err(StoreError::InvalidArgument(
                            "only the holder of a lease can fail a job".into(),
                        ));
                    };
                    if update != JobUpdate::default() {
                        let mut qb = QueryBuilder::new("UPDATE jobs SET updated_at = ");
                        qb.push_bind(ts(now));
                        push_job_update!(qb, update);
                        push_guard!(qb, &guard);
                        if qb.build().execute(&mut *tx).await?.rows_affected() != 1 {
                            return Ok(None);
                        }
                    }
                    sqlx::query_as::<_, Job>(fail_sql)
                        .bind(&lease.job_id)
                        .bind(&lease.owner)
                        .bind(lease.attempt)
                        .bind(ts(now))
                        .bind(&failure.error)
                        .bind(backoff.0)
                        .bind(backoff.1)
                        .bind(failure.permanent)
                        .bind(opt_ts(
                            self.options.backoff.cap_retry_at(failure.retry_at, now),
                        ))
                        .fetch_optional(&mut *tx)
                        .await?
                }
                _ => {
                    let mut qb = QueryBuilder::new("UPDATE jobs SET status = ");
                    qb.push_bind(to).push(", updated_at = ").push_bind(ts(now));
                    if from == JobStatus::Running {
                        qb.push(", lease_expires_at = NULL");
                    }
                    if to == JobStatus::Completed {
                        qb.push(", finished_at = ").push_bind(ts(now));
                    }
                    if to == JobStatus::Pending {
                        qb.push(", lease_owner = NULL, finished_at = NULL");
                    }
                    push_job_update!(qb, update);
                    push_guard!(qb, &guard);
                    qb.push(" RETURNING *");
                    qb.build_query_as::<Job>().fetch_optional(&mut *tx).await?
                }
            };
            let Some(job) = job else {
                // Dropping the transaction rolls it back.
                return Ok(None);
            };
            faults::point(kind, "job");

            // 2. The certificate version, made current.
            let mut recorded = None;
            if let Some(new) = &version {
                let row = record_version!(&mut tx, lock_suffix, new, now, || {
                    faults::point(kind, "version_row")
                })?;
                faults::point(kind, "version");
                recorded = Some(row);
            }

            // 3. Follow-up jobs (deployments of the new version, ...).
            let mut created = Vec::with_capacity(follow_ups.len());
            for new in &mut follow_ups {
                if new.certificate_version_id.is_none() {
                    new.certificate_version_id = recorded.as_ref().map(|v| v.id.clone());
                }
                let mut qb = QueryBuilder::new(crate::store::repo::jobs::INSERT_JOB_COLUMNS);
                qb.push("VALUES (");
                crate::store::repo::jobs::push_job_values(&mut qb, &new_id(), new, now);
                qb.push(") RETURNING *");
                let row = qb
                    .build_query_as::<Job>()
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| StoreError::from_job_insert("follow-up job", e))?;
                created.push(row);
            }
            if !created.is_empty() {
                faults::point(kind, "follow_ups");
            }

            // 4. Audit rows.
            for event in &audit {
                insert_audit!(&mut *tx, now, event)?;
            }
            if !audit.is_empty() {
                faults::point(kind, "audit");
            }

            // 5. Notifications, one per enabled notifier, and the alert
            // conditions they open and clear.
            let queued = queue_notices!(&mut tx, now, &notices)?;
            if !notices.is_empty() {
                faults::point(kind, "notifications");
            }

            tx.commit().await?;
            faults::point(kind, "committed");
            Ok(Some(Committed {
                job,
                version: recorded,
                follow_ups: created,
                notifications: queued,
            }))
        })
    }
}
