//! Group commit of job outcomes on SQLite.
//!
//! SQLite has one writer. A job outcome is about ten statements, each a
//! round trip between the task that runs it and the connection's worker
//! thread, and the writer is held across all of them, so in a burst the
//! write transactions queue behind each other and the writer, not the CPU,
//! sets the pace (BENCHMARKS.md, issue 13). The committer is one task on a
//! thread of its own: it takes every outcome waiting, writes them in one
//! `BEGIN IMMEDIATE … COMMIT` and answers each caller after the commit.
//! That saves each outcome its `BEGIN`, its `COMMIT` and its trip through
//! the pool, and its round trips no longer wait for a busy API worker.
//!
//! Each outcome stays all or nothing: only outcomes whose guard is their
//! first statement are grouped (a guard that fails writes nothing), and
//! when any statement of a group fails the group is rolled back and each
//! of its outcomes is committed again in a transaction of its own, so one
//! bad outcome fails alone. A caller learns its result only after the
//! commit that holds it; a host killed before that commit loses the whole
//! group, none of which any caller had been told about.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use crate::faults;
use crate::store::repo::outcomes::{
    Committed, Deferred, Prepared, commit_one, flush_deferred, write_outcome,
};
use crate::store::sqlite::claims::FAIL_JOB;
use crate::store::{BeginWrite, StoreError, StoreResult};

/// Outcomes written in one transaction at most.
const GROUP_MAX: usize = 64;
/// Outcomes that may wait for the committer before callers wait to send.
const QUEUE: usize = 1024;

type Reply = oneshot::Sender<StoreResult<Option<Committed>>>;

/// The handle callers send outcomes through. The committer stops when the
/// last handle is dropped.
#[derive(Debug, Clone)]
pub(crate) struct GroupCommit {
    queue: mpsc::Sender<(Prepared, Reply)>,
    counts: Arc<GroupCounts>,
}

/// Transactions the committer committed, and the outcomes in them.
#[derive(Debug, Default)]
struct GroupCounts {
    groups: AtomicU64,
    outcomes: AtomicU64,
}

impl GroupCommit {
    /// Starts the committer on its own thread, writing through `writer`.
    /// `None` (and an error logged) if the thread cannot be started: the
    /// store then commits each outcome itself.
    pub(crate) fn start(writer: SqlitePool) -> Option<GroupCommit> {
        let (queue, rx) = mpsc::channel(QUEUE);
        let counts = Arc::new(GroupCounts::default());
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the outcome committer; outcomes commit one by one");
                return None;
            }
        };
        let started = std::thread::Builder::new()
            .name("certplane-commit".into())
            .spawn({
                let counts = counts.clone();
                move || runtime.block_on(run(writer, rx, counts))
            });
        match started {
            Ok(_) => Some(GroupCommit { queue, counts }),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the outcome committer; outcomes commit one by one");
                None
            }
        }
    }

    /// (group transactions committed, outcomes written in them) so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.counts.groups.load(Ordering::Relaxed),
            self.counts.outcomes.load(Ordering::Relaxed),
        )
    }

    /// Commits `prepared` with whatever else is waiting. `Err` gives the
    /// outcome back, unwritten, when the committer is gone (its thread
    /// ended): the caller commits it itself.
    pub(crate) async fn commit(
        &self,
        prepared: Prepared,
    ) -> Result<StoreResult<Option<Committed>>, Box<Prepared>> {
        let (reply, answer) = oneshot::channel();
        if let Err(unsent) = self.queue.send((prepared, reply)).await {
            tracing::error!("the outcome committer is gone; committing the outcome alone");
            return Err(Box::new(unsent.0.0));
        }
        // No answer: the committer ended with the outcome taken, written or
        // not; the job's guard settles it when the lease lapses.
        Ok(answer.await.unwrap_or_else(|_| Err(closed())))
    }
}

async fn run(
    writer: SqlitePool,
    mut rx: mpsc::Receiver<(Prepared, Reply)>,
    counts: Arc<GroupCounts>,
) {
    let mut group = Vec::with_capacity(GROUP_MAX);
    while rx.recv_many(&mut group, GROUP_MAX).await > 0 {
        let items: Vec<(Prepared, Reply)> = std::mem::take(&mut group);
        match write_group(&writer, &items).await {
            Ok(results) => {
                counts.groups.fetch_add(1, Ordering::Relaxed);
                counts
                    .outcomes
                    .fetch_add(items.len() as u64, Ordering::Relaxed);
                for ((prepared, reply), result) in items.into_iter().zip(results) {
                    if result.is_some() {
                        faults::point(prepared.outcome.kind, "committed");
                    }
                    let _ = reply.send(Ok(result));
                }
            }
            Err(e) => {
                if items.len() > 1 {
                    tracing::debug!(error = %e, outcomes = items.len(), "a grouped commit failed; committing its outcomes one by one");
                }
                for (prepared, reply) in items {
                    let _ = reply.send(commit_one!(&writer, &prepared, FAIL_JOB));
                }
            }
        }
    }
}

/// Writes every outcome of `items` in one transaction; the result of each,
/// in order, once committed.
async fn write_group(
    writer: &SqlitePool,
    items: &[(Prepared, Reply)],
) -> StoreResult<Vec<Option<Committed>>> {
    let mut tx = writer.begin_write().await?;
    let mut results = Vec::with_capacity(items.len());
    let mut deferred = Deferred::default();
    for (index, (prepared, _)) in items.iter().enumerate() {
        results.push(write_outcome!(
            &mut tx,
            prepared,
            FAIL_JOB,
            &mut deferred,
            index
        )?);
    }
    flush_deferred!(&mut tx, deferred, &mut results)?;
    tx.commit().await?;
    Ok(results)
}

/// The committer is gone (the store is closing).
fn closed() -> StoreError {
    StoreError::Database(sqlx::Error::PoolClosed)
}
