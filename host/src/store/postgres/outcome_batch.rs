//! The outcomes of a PostgreSQL group written set by set: one statement
//! per phase for the whole group instead of one per outcome.
//!
//! Each statement costs the server an executor start and the host a round
//! trip through the pool's connection, and on two cores the server and
//! the host share the CPU; a group of a dozen outcomes written one
//! statement at a time was some thirty round trips, each waiting for the
//! last (BENCHMARKS.md, issue 13). Here the guarded job UPDATEs of the
//! outcomes that make the same change are one `UPDATE … FROM UNNEST(…)`,
//! the versions of those whose guard held one `INSERT … SELECT FROM
//! UNNEST(…)`, and their certificates one more UPDATE; each statement's
//! text depends only on the shape of the change, never on the group's
//! size, so it stays prepared.
//!
//! Each outcome's writes are the ones `write_outcome!` makes, in the same
//! order per outcome (job, version, certificate, alert conditions,
//! notifications, then the deferred follow-ups and audit rows). Whatever
//! this path does not handle as cheaply (two outcomes of one job or one
//! certificate, a version refused, a certificate whose renewal window
//! changed, alert keys shared by two outcomes) is not guessed at: the
//! caller rolls the group back and commits each outcome alone, where
//! `write_outcome!` says precisely what went wrong.

use std::collections::{HashMap, HashSet};

use sqlx::{Postgres, QueryBuilder, Transaction};

use crate::faults;
use crate::store::codec::storable;
use crate::store::group_commit::Batched;
use crate::store::postgres::column;
use crate::store::repo::outcomes::{
    CLEAR_ALERTS_POSTGRES, Deferred, Guard, Prepared, finish_outcomes, push_move,
};
use crate::store::{
    CertificateVersion, Job, JobStatus, JobUpdate, NewCertificateVersion, StoreError, StoreResult,
};

/// Writes `outcomes` (each with its position in the group) on the open
/// write transaction `tx`, deferring their follow-up jobs and audit rows
/// to `deferred`.
pub(crate) async fn write_outcomes<'a>(
    tx: &mut Transaction<'_, Postgres>,
    outcomes: &[(usize, &'a Prepared)],
    deferred: &mut Deferred<'a>,
) -> StoreResult<Batched> {
    if let Some(settled) = Batched::before_writing(outcomes) {
        return Ok(settled);
    }
    // One UPDATE row per job: a set-based UPDATE that met a job twice
    // would change it once and answer both.
    let mut seen = HashSet::with_capacity(outcomes.len());
    if !outcomes.iter().all(|(_, p)| seen.insert(job_id(p))) {
        return Ok(Batched::Alone("two outcomes of one job"));
    }

    // 1. The jobs, each guarded, one statement per shape of change. Where
    // some may close an issuance, the group keeps `open_issuance` for them
    // itself (migration 0019): the trigger stands aside for these UPDATEs
    // alone, and step 3 takes the count off.
    let keeps_count = outcomes.iter().any(|(_, p)| p.to.is_terminal());
    if keeps_count {
        sqlx::query(GROUP_KEEPS_OPEN_ISSUANCE)
            .execute(&mut **tx)
            .await?;
    }
    let mut jobs: Vec<Option<Job>> = vec![None; outcomes.len()];
    for members in shapes(outcomes) {
        let changed: Vec<Job> = if let [only] = members.as_slice() {
            let mut qb = QueryBuilder::new("");
            push_move!(qb, outcomes[*only].1);
            qb.build_query_as()
                .fetch_optional(&mut **tx)
                .await?
                .into_iter()
                .collect()
        } else {
            let group: Vec<&Prepared> = members.iter().map(|i| outcomes[*i].1).collect();
            let mut qb = QueryBuilder::new("");
            push_moves(&mut qb, &group)?;
            qb.build_query_as().fetch_all(&mut **tx).await?
        };
        // RETURNING promises no order: match the rows by id.
        let mut by_id: HashMap<String, Job> =
            changed.into_iter().map(|j| (j.id.clone(), j)).collect();
        for i in members {
            let p = outcomes[i].1;
            jobs[i] = by_id.remove(job_id(p));
            if jobs[i].is_some() {
                faults::point(p.outcome.kind, "job");
            }
        }
    }

    // The issuances these UPDATEs closed, by certificate.
    let mut closed: HashMap<&str, i64> = HashMap::new();
    if keeps_count {
        sqlx::query(TRIGGER_KEEPS_OPEN_ISSUANCE)
            .execute(&mut **tx)
            .await?;
        for job in jobs.iter().flatten() {
            if let Some(certificate) = job.certificate_id.as_deref()
                && closes_issuance(job)
            {
                *closed.entry(certificate).or_default() += 1;
            }
        }
    }

    // 2. The versions of the outcomes that hold, each only where its
    // certificate exists and takes a stored key.
    let recording: Vec<(usize, &NewCertificateVersion)> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, (_, p))| {
            Some((i, p.outcome.version.as_ref().filter(|_| jobs[i].is_some())?))
        })
        .collect();
    let mut versions: Vec<Option<CertificateVersion>> = vec![None; outcomes.len()];
    if !recording.is_empty() {
        let mut certificates = HashSet::with_capacity(recording.len());
        let mut rows = Vec::with_capacity(recording.len());
        for (i, new) in recording {
            let p = outcomes[i].1;
            if !certificates.insert(new.certificate_id.as_str()) {
                return Ok(Batched::Alone("two versions of one certificate"));
            }
            let Some(renew_before) = new.renew_before_secs else {
                return Ok(Batched::Alone("the renewal window is not known"));
            };
            rows.push((i, new, crate::store::new_id(), p.now, renew_before));
        }
        let inserted: Vec<CertificateVersion> = sqlx::query_as(INSERT_VERSIONS)
            .bind(column(&rows, |r| r.2.clone()))
            .bind(column(&rows, |r| r.1.certificate_id.clone()))
            .bind(column(&rows, |r| r.1.serial.clone()))
            .bind(column(&rows, |r| r.1.pem_chain.clone()))
            .bind(column(&rows, |r| r.1.not_before))
            .bind(column(&rows, |r| r.1.not_after))
            .bind(column(&rows, |r| r.1.fingerprint_sha256.clone()))
            .bind(column(&rows, |r| r.1.encrypted_private_key.clone()))
            .bind(column(&rows, |r| r.1.job_id.clone()))
            .bind(column(&rows, |r| r.3))
            .bind(column(&rows, |r| r.1.ca_certificate_id.clone()))
            .bind(column(&rows, |r| r.1.ca_order_id.clone()))
            .bind(column(&rows, |r| r.1.encrypted_private_key.is_none()))
            .fetch_all(&mut **tx)
            .await
            .map_err(|e| {
                StoreError::from_insert("certificate version for this job or fingerprint", e)
            })?;
        let mut by_id: HashMap<String, CertificateVersion> =
            inserted.into_iter().map(|v| (v.id.clone(), v)).collect();
        for (i, _, id, _, _) in &rows {
            let Some(version) = by_id.remove(id) else {
                return Ok(Batched::Alone("a version was refused"));
            };
            versions[*i] = Some(version);
            faults::point(outcomes[*i].1.outcome.kind, "version_row");
        }

        // 3. Each version made its certificate's current one, where the
        // renewal window is still the one the job saw.
        let renew_at: Vec<_> = rows
            .iter()
            .map(|r| crate::store::renewal_due_at(r.1.not_before, r.1.not_after, r.4).0)
            .collect();
        // Each certificate's closed issuance comes off in this UPDATE.
        let closes: Vec<i64> = rows
            .iter()
            .map(|r| closed.remove(r.1.certificate_id.as_str()).unwrap_or(0))
            .collect();
        let updated: Vec<String> = sqlx::query_scalar(UPDATE_CERTIFICATES)
            .bind(column(&rows, |r| r.1.certificate_id.clone()))
            .bind(column(&rows, |r| r.2.clone()))
            .bind(column(&rows, |r| r.1.not_after))
            .bind(renew_at)
            .bind(column(&rows, |r| r.3))
            .bind(column(&rows, |r| r.4))
            .bind(column(&rows, |r| r.1.encrypted_private_key.is_none()))
            .bind(closes)
            .fetch_all(&mut **tx)
            .await?;
        if updated.len() != rows.len() {
            return Ok(Batched::Alone("a certificate changed under its job"));
        }
        for (i, ..) in &rows {
            faults::point(outcomes[*i].1.outcome.kind, "version");
        }
    }

    // Issuances closed without a version here (cancelled, or completed
    // without one): their certificates' counts come off on their own.
    if !closed.is_empty() {
        let (ids, counts): (Vec<&str>, Vec<i64>) = closed.into_iter().unzip();
        sqlx::query(CLOSE_OPEN_ISSUANCE)
            .bind(ids)
            .bind(counts)
            .execute(&mut **tx)
            .await?;
    }

    // 4. and 5.
    let written = finish_outcomes!(
        tx,
        outcomes,
        jobs,
        versions,
        deferred,
        CLEAR_ALERTS_POSTGRES
    );
    Ok(Batched::Written(written))
}

/// Whether `job`, as an outcome's UPDATE left it, closed an issuance: an
/// issuance or renewal now completed or cancelled. The guard held, so it
/// was in the outcome's `from` status, and no status an outcome moves a
/// job from is final (`job_state::can_transition`): it was open.
fn closes_issuance(job: &Job) -> bool {
    job.job_type.issues() && job.status.is_terminal()
}

/// The job an outcome changes.
fn job_id(p: &Prepared) -> &str {
    match &p.outcome.guard {
        Guard::Lease(lease) => &lease.job_id,
        Guard::Status { job_id, .. } => job_id,
    }
}

/// What decides the text of an outcome's job UPDATE: where the job goes
/// from and to, how it is guarded, and which columns it sets.
#[derive(PartialEq, Eq, Hash)]
struct Shape {
    from: JobStatus,
    to: JobStatus,
    lease: bool,
    columns: [bool; 10],
}

fn shape(p: &Prepared) -> Shape {
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
    } = &p.outcome.update;
    Shape {
        from: p.from,
        to: p.to,
        lease: matches!(p.outcome.guard, Guard::Lease(_)),
        columns: [
            last_error.is_some(),
            run_at.is_some(),
            csr_pem.is_some(),
            order_id.is_some(),
            order_state.is_some(),
            next_poll_at.is_some(),
            poll_deadline_at.is_some(),
            verification_result.is_some(),
            certificate_version_id.is_some(),
            payload.is_some(),
        ],
    }
}

/// The positions of `outcomes` by the shape of their job UPDATE, shapes in
/// the order first seen.
fn shapes(outcomes: &[(usize, &Prepared)]) -> Vec<Vec<usize>> {
    let mut order: Vec<(Shape, Vec<usize>)> = Vec::new();
    for (i, (_, p)) in outcomes.iter().enumerate() {
        let s = shape(p);
        match order.iter_mut().find(|(known, _)| *known == s) {
            Some((_, members)) => members.push(i),
            None => order.push((s, vec![i])),
        }
    }
    order.into_iter().map(|(_, members)| members).collect()
}

/// Appends the job UPDATE of `group`, outcomes of one [`Shape`] on
/// distinct jobs: `push_move!`'s statement for all of them at once, each
/// row guarded as its own would be, `RETURNING` the rows whose guard held.
fn push_moves(qb: &mut QueryBuilder<'_, Postgres>, group: &[&Prepared]) -> StoreResult<()> {
    let Some(first) = group.first() else {
        return Ok(());
    };
    let lease = matches!(first.outcome.guard, Guard::Lease(_));
    // The set columns, each as (name, SQL type, one value per outcome).
    let mut sets: Vec<(&str, &str, Vec<Option<String>>)> = Vec::new();
    let mut times: Vec<(&str, Vec<chrono::DateTime<chrono::Utc>>)> = Vec::new();
    {
        let text = |f: &dyn Fn(&JobUpdate) -> Option<String>| -> Vec<Option<String>> {
            group.iter().map(|p| f(&p.outcome.update)).collect()
        };
        // As `push_job_update!` binds them: text without NULs.
        let stored = |v: &Option<String>| v.as_deref().map(|v| storable(v).into_owned());
        let json = |v: &Option<serde_json::Value>| {
            v.clone()
                .map(|v| crate::store::codec::storable_json(v).to_string())
        };
        let u = &first.outcome.update;
        if u.last_error.is_some() {
            sets.push(("last_error", "text", text(&|u| stored(&u.last_error))));
        }
        if u.csr_pem.is_some() {
            sets.push(("csr_pem", "text", text(&|u| u.csr_pem.clone())));
        }
        if u.order_id.is_some() {
            sets.push(("order_id", "text", text(&|u| stored(&u.order_id))));
        }
        if u.order_state.is_some() {
            sets.push(("order_state", "text", text(&|u| stored(&u.order_state))));
        }
        if u.verification_result.is_some() {
            sets.push((
                "verification_result",
                "jsonb",
                text(&|u| json(&u.verification_result)),
            ));
        }
        if u.certificate_version_id.is_some() {
            sets.push((
                "certificate_version_id",
                "text",
                text(&|u| u.certificate_version_id.clone()),
            ));
        }
        if u.payload.is_some() {
            sets.push(("payload", "jsonb", text(&|u| json(&u.payload))));
        }
        let time = |f: &dyn Fn(&JobUpdate) -> Option<chrono::DateTime<chrono::Utc>>| {
            group
                .iter()
                .map(|p| f(&p.outcome.update))
                .collect::<Option<Vec<_>>>()
        };
        for (name, value) in [
            ("run_at", time(&|u| u.run_at)),
            ("next_poll_at", time(&|u| u.next_poll_at)),
            ("poll_deadline_at", time(&|u| u.poll_deadline_at)),
        ] {
            if let Some(values) = value {
                times.push((name, values));
            }
        }
    }
    qb.push("UPDATE jobs SET status = '")
        .push(first.to.as_str())
        .push("', updated_at = v.now");
    if first.from == JobStatus::Running {
        qb.push(", lease_expires_at = NULL");
    }
    if first.to == JobStatus::Completed {
        qb.push(", finished_at = v.now");
    }
    if first.to == JobStatus::Pending {
        qb.push(", lease_owner = NULL, finished_at = NULL");
    }
    for (name, sql_type, _) in &sets {
        qb.push(format!(", {name} = v.{name}::{sql_type}"));
    }
    for (name, _) in &times {
        qb.push(format!(", {name} = v.{name}"));
    }
    qb.push(" FROM UNNEST(");
    let mut names = vec!["id", "now", "status"];
    let mut args = qb.separated(", ");
    args.push_bind(
        group
            .iter()
            .map(|p| job_id(p).to_owned())
            .collect::<Vec<_>>(),
    )
    .push_unseparated("::text[]");
    args.push_bind(group.iter().map(|p| p.now).collect::<Vec<_>>())
        .push_unseparated("::timestamptz[]");
    // The status each job must still have, bound per row rather than
    // written in: `jobs.status = 'running'` would let the planner read
    // every running job through `jobs_running_lease` and hash-join them
    // with the group (it cannot know how many run; at a thousand running
    // jobs that cost more than the rest of the statement), where a join
    // condition leaves one primary-key probe per row.
    args.push_bind(vec![first.from.as_str(); group.len()])
        .push_unseparated("::text[]");
    if lease {
        let mut owners = Vec::with_capacity(group.len());
        let mut attempts = Vec::with_capacity(group.len());
        for p in group {
            let Guard::Lease(lease) = &p.outcome.guard else {
                return Err(StoreError::InvalidArgument(
                    "outcomes of one shape are guarded alike".into(),
                ));
            };
            owners.push(lease.owner.clone());
            attempts.push(lease.attempt);
        }
        args.push_bind(owners).push_unseparated("::text[]");
        args.push_bind(attempts).push_unseparated("::int4[]");
        names.extend(["owner", "attempt"]);
    }
    // JSON travels as text, cast by the SET above.
    for (name, _, values) in sets {
        args.push_bind(values).push_unseparated("::text[]");
        names.push(name);
    }
    for (name, values) in times {
        args.push_bind(values).push_unseparated("::timestamptz[]");
        names.push(name);
    }
    qb.push(") AS v(").push(names.join(", ")).push(")");
    qb.push(" WHERE jobs.id = v.id AND jobs.status = v.status");
    if lease {
        qb.push(" AND jobs.lease_owner = v.owner AND jobs.attempts = v.attempt");
    }
    qb.push(" RETURNING jobs.*");
    Ok(())
}

/// The versions of a group, each inserted only where its certificate
/// exists and takes a stored key (`$13`: it has none), as
/// `record_version!` inserts one.
const INSERT_VERSIONS: &str = concat!(
    crate::store::repo::certificates::insert_version_columns!(),
    " SELECT v.id, v.certificate_id, v.serial, v.pem_chain, v.not_before, v.not_after,
            v.fingerprint_sha256, v.encrypted_private_key, v.job_id, v.created_at,
            v.ca_certificate_id, v.ca_order_id
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                 $6::timestamptz[], $7::text[], $8::bytea[], $9::text[], $10::timestamptz[],
                 $11::text[], $12::text[], $13::bool[])
          AS v(id, certificate_id, serial, pem_chain, not_before, not_after,
               fingerprint_sha256, encrypted_private_key, job_id, created_at,
               ca_certificate_id, ca_order_id, no_key)
     JOIN certificates c ON c.id = v.certificate_id
     WHERE c.key_source <> 'agent' OR v.no_key
     RETURNING *"
);

/// The certificates of a group's versions made current, each only while
/// its renewal window is the one the job saw and its key source still
/// takes the version, as `record_version!` updates one; the ids updated.
const UPDATE_CERTIFICATES: &str = "
UPDATE certificates SET current_version_id = v.version_id, not_after = v.not_after,
       renew_at = v.renew_at, updated_at = v.now,
       open_issuance = certificates.open_issuance - v.closes
FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::timestamptz[],
            $6::int8[], $7::bool[], $8::int8[])
     AS v(id, version_id, not_after, renew_at, now, renew_before, no_key, closes)
WHERE certificates.id = v.id AND certificates.renew_before_secs = v.renew_before
  AND (certificates.key_source <> 'agent' OR v.no_key)
RETURNING certificates.id";

/// From here to [`TRIGGER_KEEPS_OPEN_ISSUANCE`] the group keeps
/// `open_issuance` for the jobs it closes (the trigger's condition,
/// migration 0019); local to the transaction, so a rollback ends it too.
const GROUP_KEEPS_OPEN_ISSUANCE: &str =
    "SELECT set_config('certplane.open_issuance', 'kept', true)";

/// The trigger keeps `open_issuance` again.
const TRIGGER_KEEPS_OPEN_ISSUANCE: &str = "SELECT set_config('certplane.open_issuance', '', true)";

/// Takes `$2` closed issuances off each certificate `$1`.
const CLOSE_OPEN_ISSUANCE: &str = "
UPDATE certificates SET open_issuance = certificates.open_issuance - v.closes
FROM UNNEST($1::text[], $2::int8[]) AS v(id, closes)
WHERE certificates.id = v.id";
