//! A batch of certificates created on PostgreSQL in a few set-based
//! statements instead of one INSERT per certificate.
//!
//! `POST /certificates/batch` creates up to a few hundred certificates in
//! one transaction; one INSERT each cost the server an executor start and
//! the host a round trip per certificate (10,000 of the 86,000 statements
//! of a 10,000-certificate run, BENCHMARKS.md). Here the issuers are
//! share-locked once, the certificates inserted in one statement and their
//! extra targets in one more. A batch this path cannot write (a name
//! taken, a missing target) is rolled back and written again row by row by
//! `create_all!`, which names the certificate at fault.

use std::collections::{HashMap, HashSet};

use sqlx::{PgPool, Postgres, Transaction};

use crate::store::postgres::column;
use crate::store::repo::certificates::NewCertificateRow;
use crate::store::repo::outcomes::{Deferred, flush_deferred};
use crate::store::{BeginWrite, Certificate, NewAuditEvent, StoreError, StoreResult};

/// What became of a set-based create.
pub(crate) enum Created {
    /// Committed, the certificates in the order given.
    Written(Vec<Certificate>),
    /// Nothing written: the issuer of `rows[i]` is missing or retired.
    NoIssuer(usize),
    /// Nothing written: a statement failed; written row by row, it says
    /// which certificate is at fault.
    RowByRow(sqlx::Error),
}

/// Creates `rows` in one transaction on `pool`, all or none.
pub(crate) async fn create_all(pool: &PgPool, rows: &[NewCertificateRow]) -> StoreResult<Created> {
    let mut tx = pool.begin_write().await?;
    match write(&mut tx, rows).await {
        Ok(Created::Written(certs)) => {
            tx.commit().await?;
            Ok(Created::Written(certs))
        }
        // Dropping the transaction rolls it back.
        Ok(other) => Ok(other),
        Err(StoreError::Database(e)) => Ok(Created::RowByRow(e)),
        Err(e) => Err(e),
    }
}

async fn write(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[NewCertificateRow],
) -> StoreResult<Created> {
    // The issuers, share-locked so a concurrent retirement waits for this
    // transaction, as `insert_certificate!` locks each.
    let wanted: Vec<String> = rows
        .iter()
        .map(|r| r.new.issuer_id.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let live: HashSet<String> = sqlx::query_scalar(
        "SELECT id FROM issuers WHERE id = ANY($1::text[]) AND retired_at IS NULL FOR SHARE",
    )
    .bind(&wanted)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .collect();
    if let Some(i) = rows.iter().position(|r| !live.contains(&r.new.issuer_id)) {
        return Ok(Created::NoIssuer(i));
    }

    let ids: Vec<String> = rows.iter().map(|_| crate::store::new_id()).collect();
    let inserted: Vec<Certificate> = sqlx::query_as(INSERT_CERTIFICATES)
        .bind(&ids)
        .bind(column(rows, |r| r.new.name.clone()))
        .bind(column(rows, |r| r.new.common_name.clone()))
        .bind(column(rows, |r| serde_json::json!(r.new.sans).to_string()))
        .bind(column(rows, |r| r.new.key_type.clone()))
        .bind(column(rows, |r| r.new.key_source.as_str().to_owned()))
        .bind(column(rows, |r| r.new.issuer_id.clone()))
        .bind(column(rows, |r| r.new.target_id.clone()))
        .bind(column(rows, |r| r.new.renew_before_secs))
        .bind(column(rows, |r| r.new.owner.clone()))
        .bind(column(rows, |r| r.now))
        .bind(column(rows, |r| r.options.issuer.to_string()))
        .bind(column(rows, |r| r.options.target.to_string()))
        .fetch_all(&mut **tx)
        .await?;
    if inserted.len() != rows.len() {
        return Err(StoreError::Database(sqlx::Error::Protocol(format!(
            "{} certificates inserted, {} returned",
            rows.len(),
            inserted.len()
        ))));
    }
    let mut by_id: HashMap<String, Certificate> =
        inserted.into_iter().map(|c| (c.id.clone(), c)).collect();
    let mut certs = Vec::with_capacity(rows.len());
    for id in &ids {
        let cert = by_id.remove(id).ok_or_else(|| {
            StoreError::Database(sqlx::Error::Protocol(format!(
                "certificate {id} was not returned by its INSERT"
            )))
        })?;
        certs.push(cert);
    }

    let targets: Vec<(&str, &str, chrono::DateTime<chrono::Utc>)> = rows
        .iter()
        .zip(&ids)
        .flat_map(|(r, id)| {
            r.extra_targets
                .iter()
                .map(move |t| (id.as_str(), t.as_str(), r.now))
        })
        .collect();
    if !targets.is_empty() {
        sqlx::query(
            "INSERT INTO certificate_targets (certificate_id, target_id, created_at)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[])
             ON CONFLICT DO NOTHING",
        )
        .bind(column(&targets, |t| t.0.to_owned()))
        .bind(column(&targets, |t| t.1.to_owned()))
        .bind(column(&targets, |t| t.2))
        .execute(&mut **tx)
        .await?;
    }

    let mut deferred = Deferred::default();
    for (row, id) in rows.iter().zip(&ids) {
        if let Some(event) = &row.audit {
            deferred.audit_row(
                row.now,
                NewAuditEvent {
                    subject_id: Some(id.clone()),
                    ..event.clone()
                },
            );
        }
    }
    flush_deferred!(&mut *tx, deferred)?;
    Ok(Created::Written(certs))
}

/// The certificates, in the order given, as `insert_certificate!` inserts
/// each (their issuers checked and locked before).
const INSERT_CERTIFICATES: &str = "
INSERT INTO certificates (id, name, common_name, sans, key_type, key_source, issuer_id,
                          target_id, renew_before_secs, owner, status, renew_at, created_at,
                          updated_at, issuer_options, target_options)
SELECT v.id, v.name, v.common_name, v.sans::jsonb, v.key_type, v.key_source, v.issuer_id,
       v.target_id, v.renew_before_secs, v.owner, 'active', v.now, v.now, v.now,
       v.issuer_options::jsonb, v.target_options::jsonb
FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::text[], $9::int8[], $10::text[], $11::timestamptz[], $12::text[], $13::text[])
     WITH ORDINALITY
     AS v(id, name, common_name, sans, key_type, key_source, issuer_id, target_id,
          renew_before_secs, owner, now, issuer_options, target_options, n)
ORDER BY v.n
RETURNING *";
