//! Group commit: job outcomes on both backends, and on SQLite also the
//! certificates created through the API and the job loops' claims.
//!
//! SQLite has one writer. A job outcome is several statements, each a
//! round trip between the task that runs it and the connection's worker
//! thread, and the writer is held across all of them, so in a burst the
//! write transactions queue behind each other and the writer, not the CPU,
//! sets the pace (BENCHMARKS.md, issue 13). The committer is one task on a
//! thread of its own: it takes every write waiting, writes them in one
//! `BEGIN IMMEDIATE … COMMIT` and answers each caller after the commit.
//! That saves each write its `BEGIN`, its `COMMIT` and its trip through
//! the pool, and its round trips no longer wait for a busy API worker.
//! Measured before the creates and claims joined, the committer spent
//! twice as long waiting for the writer (held by API creates and claims)
//! as writing. The rows no later statement reads (follow-up jobs, audit
//! rows) are written once per group (`outcomes::Deferred`), and the claims
//! run last, so they see the jobs the group created.
//!
//! PostgreSQL has no single writer, but there every statement costs the
//! server a parse, a plan and a round trip, and on two cores the server and
//! the host share the CPU: an issuance outcome alone is about nine
//! statements (`BEGIN`, the job, the version, the certificate, the alert
//! conditions it clears, the notifier list, the follow-ups, the audit row,
//! `COMMIT`), of which a group shares all of them: the job UPDATEs of
//! outcomes making the same change, the versions and the certificates are
//! one set-based statement each for the whole group
//! (`postgres::outcome_batch`). There the committer takes job outcomes
//! only (creates and claims are one statement per batch already), in
//! [`PG_LANES`] committer tasks taking them in turn, so the server works on
//! one group while the next is being sent. Two groups of
//! one process may lock rows the other wants only when they hold outcomes
//! of the same certificate (an issuance updates its certificate's row, and
//! alert conditions are per certificate); should that make a lock cycle,
//! PostgreSQL fails one of the two with a deadlock error, and that group is
//! written one outcome at a time like any group with a failing statement.
//!
//! Each outcome stays all or nothing: only outcomes whose guard is their
//! first statement are grouped (a guard that fails writes nothing), and
//! when any statement of a group fails the group is rolled back and each
//! of its outcomes is committed again in a transaction of its own, so one
//! bad outcome fails alone. A caller learns its result only after the
//! commit that holds it; a host killed before that commit loses the whole
//! group, none of which any caller had been told about.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use sqlx::{PgPool, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use crate::faults;
use crate::store::Certificate;
use crate::store::postgres::claims as pg;
use crate::store::postgres::outcome_batch as pg_batch;
use crate::store::repo::certificates::{NewCertificateRow, create_one, insert_certificate};
use crate::store::repo::claims::{
    HostClaim, HostClaimed, claim_host_jobs, postgres_sql, sqlite_sql,
};
use crate::store::repo::job_inputs::{BatchSql, SQLITE_BATCH, Wanted, read_inputs};
use crate::store::repo::outcomes::{Committed, Deferred, Prepared, commit_one, flush_deferred};
use crate::store::sqlite::claims as lite;
use crate::store::sqlite::outcome_batch as lite_batch;
use crate::store::{BeginWrite, StoreError, StoreResult};

/// Outcomes written in one transaction at most.
const GROUP_MAX: usize = 64;
/// Outcomes that may wait for the committer before callers wait to send.
const QUEUE: usize = 1024;
/// Committers on PostgreSQL, taking writes in turn.
pub(crate) const PG_LANES: usize = 2;

type Reply<T> = oneshot::Sender<StoreResult<T>>;

/// What became of a group's writes.
#[derive(Debug)]
pub(crate) enum Batched<T = Vec<Option<Committed>>> {
    /// Written (for outcomes: one result each, `None` where the guard
    /// failed).
    Written(T),
    /// Something only a transaction of its own settles; nothing of the
    /// group may be kept.
    Alone(&'static str),
}

impl Batched {
    /// What a group of `outcomes` comes to before anything of it is
    /// written, on either backend: nothing to write, or alert conditions
    /// two outcomes share (each outcome's notices must see the others'
    /// changes, so they are written one at a time); `None` to go on.
    pub(crate) fn before_writing(outcomes: &[(usize, &Prepared)]) -> Option<Batched> {
        if outcomes.is_empty() {
            return Some(Batched::Written(Vec::new()));
        }
        if !crate::store::repo::outcomes::distinct_alert_keys(outcomes) {
            return Some(Batched::Alone(
                "two outcomes change the same alert condition",
            ));
        }
        None
    }
}

/// The pool a committer writes through.
#[derive(Debug)]
pub(crate) enum Writer {
    /// SQLite's single writer.
    Sqlite(SqlitePool),
    /// PostgreSQL's pool.
    Postgres(PgPool),
}

/// The SQL a group's writes differ in between the backends.
struct BackendSql {
    /// The backend's `FAIL_JOB`.
    fail: &'static str,
    /// The row lock for reading a created certificate's issuer.
    share: &'static str,
    /// The claim SQL picker.
    claims: fn(&HostClaim) -> &'static str,
    /// The batch reads a claim reads its jobs' rows with in the group's
    /// transaction; `None` where claims do not read them there.
    inputs: Option<&'static BatchSql>,
}

const SQLITE_SQL: BackendSql = BackendSql {
    fail: lite::FAIL_JOB,
    share: "",
    claims: sqlite_sql,
    // The committer's connection wrote the claimed jobs' rows moments
    // before, so they are in its page cache; a reader connection drops its
    // cache whenever another connection has committed (WAL), and read the
    // same rows again from the file at a hundred `pread`s per certificate
    // (BENCHMARKS.md, issue 13).
    inputs: Some(&SQLITE_BATCH),
};

const POSTGRES_SQL: BackendSql = BackendSql {
    fail: pg::FAIL_JOB,
    share: " FOR SHARE",
    claims: postgres_sql,
    // PostgreSQL's claims do not join the group (and a failed read would
    // abort its transaction).
    inputs: None,
};

/// Runs `$body` with `$pool` the writer's pool and `$sql` its backend's
/// [`BackendSql`].
macro_rules! on_writer {
    ($writer:expr, |$pool:ident, $sql:ident| $body:expr) => {
        match $writer {
            Writer::Sqlite($pool) => {
                let $sql = &SQLITE_SQL;
                $body
            }
            Writer::Postgres($pool) => {
                let $sql = &POSTGRES_SQL;
                $body
            }
        }
    };
}

/// A write the committer takes: a job outcome, or a certificate the API
/// creates (which would otherwise hold the writer from a busy API task
/// across its statements' round trips).
// Each value moves once, through the queue; boxing would only add an
// allocation per write.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Write {
    Outcome(Prepared, Reply<Option<Committed>>),
    Certificate(NewCertificateRow, Reply<Certificate>),
    /// Run after the group's other writes, so it sees their follow-up jobs.
    Claim(HostClaim, Reply<HostClaimed>),
}

/// What a write of a group came to, told to its caller after the commit.
#[allow(clippy::large_enum_variant)]
enum Done {
    Outcome(Option<Committed>),
    /// `Err` only for a missing or retired issuer: nothing was written.
    Certificate(StoreResult<Certificate>),
    Claim(HostClaimed),
}

/// The handle callers send writes through. The committers stop when the
/// last handle is dropped.
#[derive(Debug, Clone)]
pub(crate) struct GroupCommit {
    /// One queue per committer.
    lanes: Arc<[mpsc::Sender<Write>]>,
    /// The lane the next write goes to (modulo their number).
    next: Arc<AtomicUsize>,
    counts: Arc<GroupCounts>,
}

/// Transactions the committer committed, and the writes in them.
#[derive(Debug, Default)]
struct GroupCounts {
    groups: AtomicU64,
    writes: AtomicU64,
}

impl GroupCommit {
    /// Starts SQLite's committer on its own thread, writing through the
    /// single `writer`. `None` (and an error logged) if the thread cannot
    /// be started: the store then commits each write itself.
    pub(crate) fn start_sqlite(writer: SqlitePool) -> Option<GroupCommit> {
        let (queue, rx) = mpsc::channel(QUEUE);
        let counts = Arc::new(GroupCounts::default());
        // Timers only (the pool's acquire timeout): no I/O driver, so the
        // thread parks on a condition variable, and the writer's worker
        // thread wakes it with a futex instead of a write to an eventfd
        // that epoll then reports. That write was 8 % of the writer
        // thread's time in a profile (BENCHMARKS.md, issue 13).
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the group committer; writes commit one by one");
                return None;
            }
        };
        let started = std::thread::Builder::new()
            .name("certplane-commit".into())
            .spawn({
                let counts = counts.clone();
                move || runtime.block_on(run(Writer::Sqlite(writer), rx, counts))
            });
        match started {
            Ok(_) => Some(GroupCommit {
                lanes: Arc::new([queue]),
                next: Arc::default(),
                counts,
            }),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the group committer; writes commit one by one");
                None
            }
        }
    }

    /// Starts PostgreSQL's [`PG_LANES`] committers as tasks of the current
    /// runtime (the pool's connections belong to it), writing through
    /// `pool`.
    pub(crate) fn start_postgres(pool: PgPool) -> GroupCommit {
        let counts = Arc::new(GroupCounts::default());
        let lanes: Vec<mpsc::Sender<Write>> = (0..PG_LANES)
            .map(|_| {
                let (queue, rx) = mpsc::channel(QUEUE);
                tokio::spawn(run(Writer::Postgres(pool.clone()), rx, counts.clone()));
                queue
            })
            .collect();
        GroupCommit {
            lanes: lanes.into(),
            next: Arc::default(),
            counts,
        }
    }

    /// (group transactions committed, outcomes written in them) so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.counts.groups.load(Ordering::Relaxed),
            self.counts.writes.load(Ordering::Relaxed),
        )
    }

    /// Commits `prepared` with whatever else is waiting. `Err` gives the
    /// outcome back, unwritten, when the committer is gone (its thread
    /// ended): the caller commits it itself. Without an answer (the
    /// committer ended with the outcome taken, written or not) the job's
    /// guard settles it when the lease lapses.
    pub(crate) async fn commit(
        &self,
        prepared: Prepared,
    ) -> Result<StoreResult<Option<Committed>>, Box<Prepared>> {
        let (reply, answer) = oneshot::channel();
        self.send(Write::Outcome(prepared, reply), answer, |w| match w {
            Write::Outcome(prepared, _) => Some(prepared),
            _ => None,
        })
        .await
    }

    /// Creates a certificate with whatever else is waiting. `Err` gives it
    /// back, unwritten, when the committer is gone.
    pub(crate) async fn create_certificate(
        &self,
        create: NewCertificateRow,
    ) -> Result<StoreResult<Certificate>, Box<NewCertificateRow>> {
        let (reply, answer) = oneshot::channel();
        self.send(Write::Certificate(create, reply), answer, |w| match w {
            Write::Certificate(create, _) => Some(create),
            _ => None,
        })
        .await
    }

    /// Claims host jobs in the next group. `Err` gives the claim back,
    /// unrun, when the committer is gone; claimed jobs whose answer is
    /// lost are reaped when their lease lapses.
    pub(crate) async fn claim(
        &self,
        claim: HostClaim,
    ) -> Result<StoreResult<HostClaimed>, Box<HostClaim>> {
        let (reply, answer) = oneshot::channel();
        self.send(Write::Claim(claim, reply), answer, |w| match w {
            Write::Claim(claim, _) => Some(claim),
            _ => None,
        })
        .await
    }

    /// Queues `write` and waits for its `answer`; when the committer is
    /// gone, `Err` with what `unsent` takes back of the write. No answer
    /// (the committer ended with the write taken, committed or not) is
    /// `StoreError`, as a lost connection would be.
    async fn send<T, U>(
        &self,
        write: Write,
        answer: oneshot::Receiver<StoreResult<T>>,
        unsent: fn(Write) -> Option<U>,
    ) -> Result<StoreResult<T>, Box<U>> {
        let lane = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        if let Err(e) = self.lanes[lane].send(write).await {
            tracing::error!("the group committer is gone; writing alone");
            return match unsent(e.0) {
                Some(write) => Err(Box::new(write)),
                None => Ok(Err(closed())),
            };
        }
        Ok(answer.await.unwrap_or_else(|_| Err(closed())))
    }
}

async fn run(writer: Writer, mut rx: mpsc::Receiver<Write>, counts: Arc<GroupCounts>) {
    let mut group = Vec::with_capacity(GROUP_MAX);
    while rx.recv_many(&mut group, GROUP_MAX).await > 0 {
        let items: Vec<Write> = std::mem::take(&mut group);
        let written = match write_group(&writer, &items).await {
            Ok(Batched::Written(results)) => Ok(results),
            Ok(Batched::Alone(why)) => Err(why.to_owned()),
            Err(e) => Err(e.to_string()),
        };
        match written {
            Ok(results) => {
                counts.groups.fetch_add(1, Ordering::Relaxed);
                counts
                    .writes
                    .fetch_add(items.len() as u64, Ordering::Relaxed);
                for (write, done) in items.into_iter().zip(results) {
                    match (write, done) {
                        (Write::Outcome(prepared, reply), Done::Outcome(result)) => {
                            if result.is_some() {
                                faults::point(prepared.outcome.kind, "committed");
                            }
                            let _ = reply.send(Ok(result));
                        }
                        (Write::Certificate(_, reply), Done::Certificate(result)) => {
                            let _ = reply.send(result);
                        }
                        (Write::Claim(_, reply), Done::Claim(jobs)) => {
                            let _ = reply.send(Ok(jobs));
                        }
                        // write_group answers each write in kind; a
                        // mismatch drops the reply, which its caller
                        // takes as the committer gone.
                        _ => {}
                    }
                }
            }
            Err(why) => {
                if items.len() > 1 {
                    tracing::debug!(reason = %why, writes = items.len(), "a grouped commit failed; committing its writes one by one");
                }
                for write in items {
                    write_alone(&writer, write).await;
                }
            }
        }
    }
}

/// Writes `write` in a transaction of its own and answers its caller.
async fn write_alone(writer: &Writer, write: Write) {
    on_writer!(writer, |pool, sql| match write {
        Write::Outcome(prepared, reply) => {
            let _ = reply.send(commit_one!(pool, &prepared, sql.fail));
        }
        Write::Certificate(create, reply) => {
            let _ = reply.send(create_one!(pool, &create, sql.share));
        }
        Write::Claim(claim, reply) => {
            if !reply.is_closed() {
                let claimed =
                    claim_host_jobs!(pool, &claim, sql.claims).map(|(jobs, deployments)| {
                        HostClaimed {
                            jobs,
                            deployments,
                            inputs: None,
                        }
                    });
                let _ = reply.send(claimed);
            }
        }
    })
}

/// The rows the claimed `$jobs` read, read through the group's transaction
/// `$tx` with `$batch`; `None` (the job loop then reads them itself) if a
/// statement fails. A failed statement does not end a SQLite transaction,
/// so the group's writes still commit; an error that does end it (a full
/// disk) fails the commit, and the group is written one write at a time.
macro_rules! claimed_inputs {
    ($tx:ident, $batch:expr, $jobs:expr) => {{
        let wanted = Wanted::of($jobs);
        if wanted.is_empty() {
            Some(std::collections::HashMap::new())
        } else {
            match read_inputs!($tx, $batch, &wanted) {
                Ok(inputs) => Some(inputs),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the claimed jobs' rows in the group; the job loop reads them");
                    None
                }
            }
        }
    }};
}

/// The rest of [`write_group`] once the outcomes are `$written` on `$tx`:
/// the certificates, the deferred rows, the claims, the commit, with the
/// backend's `$sql` ([`BackendSql`]).
macro_rules! finish_group {
    ($tx:ident, $items:expr, $written:expr, $deferred:ident, $sql:expr) => {{
        let items: &[Write] = $items;
        let sql: &BackendSql = $sql;
        let mut outcomes_written = $written.into_iter();
        let mut done = Vec::with_capacity(items.len());
        for write in items {
            done.push(match write {
                Write::Outcome(..) => Done::Outcome(outcomes_written.next().flatten()),
                Write::Certificate(create, _) => Done::Certificate(
                    insert_certificate!(&mut $tx, create, sql.share, &mut $deferred)?
                        .ok_or_else(|| create.no_issuer()),
                ),
                Write::Claim(..) => Done::Claim(HostClaimed::default()),
            });
        }
        for (index, job) in flush_deferred!(&mut $tx, $deferred)? {
            if let Some(Done::Outcome(Some(committed))) = done.get_mut(index) {
                committed.follow_ups.push(job);
            }
        }
        // Claims last: they see the jobs this group created. A claim whose
        // caller stopped waiting (its tick timed out while the writer was
        // busy) is not run: nobody would start the jobs it leased, and each
        // would lose an attempt when its lease lapsed.
        for (write, result) in items.iter().zip(done.iter_mut()) {
            if let (Write::Claim(claim, reply), Done::Claim(claimed)) = (write, result)
                && !reply.is_closed()
            {
                let (jobs, deployments) = claim_host_jobs!(&mut *$tx, claim, sql.claims)?;
                let inputs = match sql.inputs {
                    Some(batch) if claim.with_inputs => claimed_inputs!($tx, batch, &jobs),
                    _ => None,
                };
                *claimed = HostClaimed {
                    jobs,
                    deployments,
                    inputs,
                };
            }
        }
        $tx.commit().await?;
        Ok(Batched::Written(done))
    }};
}
/// Writes every write of `items` in one transaction; the result of each,
/// in order, once committed. `Alone` (rolled back) when the outcomes cannot
/// share the transaction's phases.
async fn write_group(writer: &Writer, items: &[Write]) -> StoreResult<Batched<Vec<Done>>> {
    let outcomes: Vec<(usize, &Prepared)> = items
        .iter()
        .enumerate()
        .filter_map(|(index, write)| match write {
            Write::Outcome(prepared, _) => Some((index, prepared)),
            _ => None,
        })
        .collect();
    let mut deferred = Deferred::default();
    // Phase by phase, each phase one command to SQLite's writer thread
    // (`sqlite::outcome_batch`) or one set-based statement on PostgreSQL
    // (`postgres::outcome_batch`).
    macro_rules! phases {
        ($pool:expr, $write_outcomes:path, $sql:expr) => {{
            let mut tx = $pool.begin_write().await?;
            let written = match $write_outcomes(&mut tx, &outcomes, &mut deferred).await? {
                Batched::Written(written) => written,
                Batched::Alone(why) => return Ok(Batched::Alone(why)),
            };
            finish_group!(tx, items, written, deferred, $sql)
        }};
    }
    match writer {
        Writer::Sqlite(pool) => phases!(pool, lite_batch::write_outcomes, &SQLITE_SQL),
        Writer::Postgres(pool) => phases!(pool, pg_batch::write_outcomes, &POSTGRES_SQL),
    }
}

/// The committer is gone (the store is closing).
fn closed() -> StoreError {
    StoreError::Database(sqlx::Error::PoolClosed)
}
