//! The outcomes of a SQLite group written phase by phase, each phase one
//! command to the writer's thread.
//!
//! Every statement sent to a SQLite connection is a hand-off to its worker
//! thread and back, about 100 µs on two busy cores, and the group
//! committer is the pipeline's bottleneck (BENCHMARKS.md, issue 13). A
//! query string holding several statements runs them one after another on
//! the worker thread in one command (sqlx-sqlite 0.8: anonymous `?`
//! arguments are consumed in order across the statements, and each
//! statement's rows are followed by its own result), so a group's guarded
//! job UPDATEs go as one command, then the versions of the outcomes whose
//! guard held, then their certificates' UPDATEs, then one DELETE of the
//! alert conditions they clear.
//!
//! Each outcome's writes are the ones `write_outcome!` makes, in the same
//! order per outcome. Whatever this path does not handle as cheaply
//! (a version refused, a certificate whose renewal window changed, alert
//! keys shared by two outcomes) is not guessed at: the caller rolls the
//! group back and commits each outcome alone, where `write_outcome!` says
//! precisely what went wrong.

use futures::TryStreamExt;
use sqlx::sqlite::SqliteRow;
use sqlx::{Either, Executor, FromRow, QueryBuilder, Sqlite, Transaction};

use crate::faults;
use crate::store::codec::ts;
use crate::store::group_commit::Batched;
use crate::store::repo::outcomes::{
    CLEAR_ALERTS_SQLITE, Deferred, Prepared, finish_outcomes, push_move,
};
use crate::store::{CertificateVersion, Job, NewCertificateVersion, StoreError, StoreResult};

/// Writes `outcomes` (each with its position in the group) on the open
/// write transaction `tx`, deferring their follow-up jobs and audit rows
/// to `deferred`.
pub(crate) async fn write_outcomes<'a>(
    tx: &mut Transaction<'_, Sqlite>,
    outcomes: &[(usize, &'a Prepared)],
    deferred: &mut Deferred<'a>,
) -> StoreResult<Batched> {
    if let Some(settled) = Batched::before_writing(outcomes) {
        return Ok(settled);
    }

    // 1. The jobs, each guarded.
    let results = run_each(tx, outcomes, |qb, (_, p)| push_move!(qb, p)).await?;
    let mut jobs = Vec::with_capacity(outcomes.len());
    for ((rows, _), (_, p)) in results.into_iter().zip(outcomes) {
        let job = match rows.first() {
            Some(row) => Some(Job::from_row(row)?),
            None => None,
        };
        if job.is_some() {
            faults::point(p.outcome.kind, "job");
        }
        jobs.push(job);
    }

    // 2. The versions of the outcomes that hold, each only where its
    // certificate exists and takes a stored key.
    let recording: Vec<(usize, &NewCertificateVersion)> = outcomes
        .iter()
        .zip(&jobs)
        .enumerate()
        .filter_map(|(i, ((_, p), job))| {
            Some((i, p.outcome.version.as_ref().filter(|_| job.is_some())?))
        })
        .collect();
    let mut versions: Vec<Option<CertificateVersion>> = vec![None; outcomes.len()];
    if !recording.is_empty() {
        let results = run_each(tx, &recording, |qb, (i, new)| {
            push_version_insert(qb, new, outcomes[*i].1.now)
        })
        .await
        .map_err(|e| match e {
            StoreError::Database(e) => {
                StoreError::from_insert("certificate version for this job or fingerprint", e)
            }
            other => other,
        })?;
        for ((rows, _), (i, _)) in results.into_iter().zip(&recording) {
            let Some(row) = rows.first() else {
                return Ok(Batched::Alone("a version was refused"));
            };
            versions[*i] = Some(CertificateVersion::from_row(row)?);
            faults::point(outcomes[*i].1.outcome.kind, "version_row");
        }

        // 3. Each version made its certificate's current one, where the
        // renewal window is still the one the job saw.
        let mut updating = Vec::with_capacity(recording.len());
        for (i, new) in &recording {
            let (Some(version), Some(renew_before)) = (&versions[*i], new.renew_before_secs) else {
                return Ok(Batched::Alone("the renewal window is not known"));
            };
            updating.push((*i, *new, version, renew_before));
        }
        let updated = run_each(tx, &updating, |qb, (i, new, version, renew_before)| {
            push_certificate_update(qb, new, version, *renew_before, outcomes[*i].1.now)
        })
        .await?;
        for ((_, changed), (i, _)) in updated.into_iter().zip(&recording) {
            if changed != 1 {
                return Ok(Batched::Alone("a certificate changed under its job"));
            }
            faults::point(outcomes[*i].1.outcome.kind, "version");
        }
    }

    // 4. and 5.
    let written = finish_outcomes!(tx, outcomes, jobs, versions, deferred, CLEAR_ALERTS_SQLITE);
    Ok(Batched::Written(written))
}

/// Statements in one command at most. Commands hold 1, 2, 4 or 8
/// statements of one text, so a handful of strings per statement stay in
/// the writer's statement cache: preparing an UPDATE of `jobs` (which
/// maintains a dozen indexes) again for every group costs more than the
/// hand-offs it saves.
const COMMAND_MAX: usize = 8;

/// Runs one statement per item (`push` writes an item's), as few commands as
/// [`COMMAND_MAX`] and the statements' texts allow; each item's rows and
/// the rows its statement changed, in the items' order.
async fn run_each<T>(
    tx: &mut Transaction<'_, Sqlite>,
    items: &[T],
    push: impl for<'q> Fn(&mut QueryBuilder<'q, Sqlite>, &T),
) -> StoreResult<Vec<(Vec<SqliteRow>, u64)>> {
    // The items by their statement's text, in the order first seen.
    let mut texts: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let mut probe = QueryBuilder::<Sqlite>::new("");
        push(&mut probe, item);
        match texts
            .iter_mut()
            .find(|(text, _)| text.as_str() == probe.sql())
        {
            Some((_, same)) => same.push(i),
            None => texts.push((probe.sql().to_owned(), vec![i])),
        }
    }
    let mut results: Vec<Option<(Vec<SqliteRow>, u64)>> = Vec::new();
    results.resize_with(items.len(), || None);
    for (_, same) in texts {
        let mut rest = same.as_slice();
        while !rest.is_empty() {
            let take = COMMAND_MAX.min(1 << rest.len().ilog2());
            let (command, left) = rest.split_at(take);
            rest = left;
            let mut qb = QueryBuilder::<Sqlite>::new("");
            for (n, i) in command.iter().enumerate() {
                if n > 0 {
                    qb.push("; ");
                }
                push(&mut qb, &items[*i]);
            }
            for (i, result) in command.iter().zip(run(tx, qb, command.len()).await?) {
                results[*i] = Some(result);
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.ok_or_else(|| unanswered(items.len(), 0)))
        .collect()
}

/// Runs the `statements` statements of `qb` as one command; each one's
/// rows and the rows it changed, in order.
async fn run(
    tx: &mut Transaction<'_, Sqlite>,
    mut qb: QueryBuilder<'_, Sqlite>,
    statements: usize,
) -> StoreResult<Vec<(Vec<SqliteRow>, u64)>> {
    let mut results = Vec::with_capacity(statements);
    let mut rows = Vec::new();
    let mut stream = (&mut **tx).fetch_many(qb.build());
    while let Some(step) = stream.try_next().await? {
        match step {
            Either::Right(row) => rows.push(row),
            Either::Left(done) => results.push((std::mem::take(&mut rows), done.rows_affected())),
        }
    }
    if results.len() != statements {
        return Err(unanswered(statements, results.len()));
    }
    Ok(results)
}

fn unanswered(sent: usize, answered: usize) -> StoreError {
    StoreError::Database(sqlx::Error::Protocol(format!(
        "{sent} statements sent, {answered} answered"
    )))
}

/// The version INSERT of `record_version!`, with anonymous arguments.
fn push_version_insert(
    qb: &mut QueryBuilder<'_, Sqlite>,
    new: &NewCertificateVersion,
    now: chrono::DateTime<chrono::Utc>,
) {
    qb.push(concat!(
        crate::store::repo::certificates::insert_version_columns!(),
        " SELECT "
    ));
    let mut values = qb.separated(", ");
    values
        .push_bind(crate::store::new_id())
        .push_bind(new.certificate_id.clone())
        .push_bind(new.serial.clone())
        .push_bind(new.pem_chain.clone())
        .push_bind(ts(new.not_before))
        .push_bind(ts(new.not_after))
        .push_bind(new.fingerprint_sha256.clone())
        .push_bind(new.encrypted_private_key.clone())
        .push_bind(new.job_id.clone())
        .push_bind(ts(now))
        .push_bind(new.ca_certificate_id.clone())
        .push_bind(new.ca_order_id.clone());
    qb.push(" FROM certificates WHERE id = ")
        .push_bind(new.certificate_id.clone())
        .push(" AND (key_source <> 'agent' OR ")
        .push_bind(new.encrypted_private_key.is_none())
        .push(") RETURNING *");
}

/// The certificate UPDATE of `record_version!`, with anonymous arguments.
fn push_certificate_update(
    qb: &mut QueryBuilder<'_, Sqlite>,
    new: &NewCertificateVersion,
    version: &CertificateVersion,
    renew_before: i64,
    now: chrono::DateTime<chrono::Utc>,
) {
    let (renew_at, _) = crate::store::renewal_due_at(new.not_before, new.not_after, renew_before);
    qb.push("UPDATE certificates SET current_version_id = ")
        .push_bind(version.id.clone())
        .push(", not_after = ")
        .push_bind(ts(new.not_after))
        .push(", renew_at = ")
        .push_bind(ts(renew_at))
        .push(", updated_at = ")
        .push_bind(ts(now))
        .push(" WHERE id = ")
        .push_bind(new.certificate_id.clone())
        .push(" AND renew_before_secs = ")
        .push_bind(renew_before)
        .push(" AND (key_source <> 'agent' OR ")
        .push_bind(new.encrypted_private_key.is_none())
        .push(")");
}
