//! The repository methods of [`crate::store::Store`], one file per
//! aggregate. SQL that is identical on both backends is written here with
//! `$n` placeholders (SQLite accepts them too); SQL that differs lives in
//! `sqlite/claims.rs` / `postgres/claims.rs`.

mod agent_challenges;
mod agents;
mod api_keys;
mod audit;
pub(crate) mod certificates;
pub(crate) mod challenges;
pub(crate) mod claims;
pub(crate) mod host_meta;
pub(crate) mod inventory;
pub(crate) mod job_inputs;
pub(crate) mod jobs;
pub(crate) mod notices;
mod notifications;
pub(crate) mod outcomes;
mod plans;
pub(crate) mod plugins;
pub(crate) mod reclaim;
mod renewal_info;
pub(crate) mod renewals;
pub(crate) mod signals;
pub(crate) mod waits;

/// Ids as a JSON array (each once, sorted), bound as one parameter and
/// unpacked by `json_each` (SQLite) or `json_array_elements_text`
/// (PostgreSQL): one statement whatever the number of ids.
pub(crate) fn id_list<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    let ids: std::collections::BTreeSet<&str> = ids.into_iter().collect();
    serde_json::Value::from(ids.into_iter().collect::<Vec<_>>()).to_string()
}

/// Clamps a caller's limit to a positive SQL LIMIT.
pub(crate) fn sql_limit(limit: u32) -> i64 {
    i64::from(limit.max(1))
}

/// Inserts an audit event on an executor (`$tx` is `&mut *tx` or a pool).
macro_rules! insert_audit {
    ($exec:expr, $now:expr, $event:expr) => {{
        let event: &$crate::store::NewAuditEvent = $event;
        let details = if event.details.is_null() {
            serde_json::Value::Object(Default::default())
        } else {
            event.details.clone()
        };
        sqlx::query(
            "INSERT INTO audit_events (id, at, actor, actor_type, action, subject_type, subject_id, details)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind($crate::store::new_id())
        .bind($crate::store::codec::ts($now))
        .bind(event.actor.clone())
        .bind(event.actor_type)
        .bind(event.action.clone())
        .bind(event.subject_type.clone())
        .bind(event.subject_id.clone())
        .bind(sqlx::types::Json(details))
        .execute($exec)
        .await
    }};
}
pub(crate) use insert_audit;

/// Rows per multi-row INSERT: SQLite binds at most 32,766 parameters in
/// one statement and PostgreSQL 65,535; a job row takes 14, an audit row 8.
pub(crate) const INSERT_CHUNK: usize = 500;

/// Inserts audit events `$rows` (a slice of `(DateTime<Utc>, Cow<NewAuditEvent>)`)
/// on an executor, [`INSERT_CHUNK`] rows per statement: the outcomes of a
/// group commit write their audit rows together.
macro_rules! insert_audits {
    ($exec:expr, $rows:expr) => {
        async {
            let rows: &[(
                chrono::DateTime<chrono::Utc>,
                std::borrow::Cow<'_, $crate::store::NewAuditEvent>,
            )] = $rows;
            for chunk in rows.chunks($crate::store::repo::INSERT_CHUNK) {
                let mut qb = sqlx::QueryBuilder::new(
                    "INSERT INTO audit_events (id, at, actor, actor_type, action, subject_type, subject_id, details) ",
                );
                qb.push_values(chunk, |mut row, (at, event)| {
                    let details = if event.details.is_null() {
                        serde_json::Value::Object(Default::default())
                    } else {
                        event.details.clone()
                    };
                    row.push_bind($crate::store::new_id())
                        .push_bind($crate::store::codec::ts(*at))
                        .push_bind(event.actor.clone())
                        .push_bind(event.actor_type)
                        .push_bind(event.action.clone())
                        .push_bind(event.subject_type.clone())
                        .push_bind(event.subject_id.clone())
                        .push_bind(sqlx::types::Json(details));
                });
                qb.build().execute(&mut *$exec).await?;
            }
            Ok::<(), $crate::store::StoreError>(())
        }
        .await
    };
}
pub(crate) use insert_audits;

/// Ends a write transaction `$tx` whose change happened when `$done`: then
/// writes the audit event `$audit` (an `Option<&NewAuditEvent>`) and
/// commits; otherwise rolls back, so a refused change leaves no audit row.
macro_rules! commit_audited_if {
    ($tx:ident, $done:expr, $now:expr, $audit:expr) => {{
        if $done {
            if let Some(event) = $audit {
                $crate::store::repo::insert_audit!(&mut *$tx, $now, event)?;
            }
            $tx.commit().await?;
        } else {
            $tx.rollback().await?;
        }
    }};
}
pub(crate) use commit_audited_if;
