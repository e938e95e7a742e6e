//! Issuer, notifier, dns-solver and target instances.
//!
//! An issuer's `grants.challenges.dns_01[].solver` names dns-solver
//! instances: writing such an issuer checks they exist and are not
//! retired, and retiring a solver checks no live issuer routes to it, each
//! in the same transaction as the write, with the solver's row locked on
//! PostgreSQL (shared by the issuer write, exclusive by the retirement) so
//! neither can slip past the other.
//!
//! Nothing here is deleted: `retire_*` sets `retired_at` and the row stays
//! readable (a retired instance is not changed again).

use serde_json::Value;
use sqlx::types::Json;

use chrono::{DateTime, Utc};

use crate::store::codec::{now, opt_ts, ts};
use crate::store::repo::{commit_audited_if, insert_audit, sql_limit};
use crate::store::{
    BeginWrite, InstanceTable, NewAuditEvent, NewPluginInstance, NewTarget, PluginInstance, Store,
    StoreError, StoreResult, Target, new_id, on_read, on_write,
};

/// Certificates that are not retired and use a target, as key holder or as
/// a further deployment target (`$1` is the target id).
const TARGET_CERTIFICATES_SQL: &str = "SELECT COUNT(*) FROM certificates c
     WHERE c.status <> 'retired'
       AND (c.target_id = $1 OR EXISTS (SELECT 1 FROM certificate_targets ct
                                        WHERE ct.certificate_id = c.id AND ct.target_id = $1))";

/// Certificates not retired that name issuer `$1`.
const ISSUER_CERTIFICATES_SQL: &str =
    "SELECT COUNT(*) FROM certificates WHERE issuer_id = $1 AND status <> 'retired'";

/// Open jobs (any state but completed/cancelled) of a target (`$1`).
const TARGET_OPEN_JOBS_SQL: &str = "SELECT COUNT(*) FROM jobs
     WHERE target_id = $1 AND status NOT IN ('completed', 'cancelled')";

/// Counts a solver's live challenges (not yet withdrawn); `route` is the
/// SQL parameter (`$n`) bound to its route, `dns:<id>`.
fn solver_live_challenges_sql(route: &str) -> String {
    format!(
        "SELECT COUNT(*) FROM challenges
         WHERE route = {route} AND state IN ('pending', 'ready', 'failed', 'withdrawing')"
    )
}

/// Live (not retired) issuers whose `grants.challenges.dns_01[].solver` is
/// `$1` (SQLite).
const SOLVER_ISSUERS_WHERE_SQLITE: &str = "issuers.retired_at IS NULL AND EXISTS (
         SELECT 1 FROM json_each(issuers.grants, '$.challenges.dns_01') r
         WHERE CASE WHEN r.type = 'object' THEN json_extract(r.value, '$.solver') END = $1)";

/// Live (not retired) issuers whose `grants.challenges.dns_01[].solver` is
/// `$1` (PostgreSQL: array containment matches any element holding that
/// solver).
const SOLVER_ISSUERS_WHERE_PG: &str =
    "issuers.retired_at IS NULL AND issuers.grants @> jsonb_build_object('challenges',
         jsonb_build_object('dns_01', jsonb_build_array(jsonb_build_object('solver', $1::text))))";

/// The dns-solver ids an issuer's grants route to, with the field that
/// names each (sorted by id, each once, so concurrent writers lock solver
/// rows in the same order).
fn routed_solvers(grants: &Value) -> Vec<(String, String)> {
    let mut solvers: Vec<(String, String)> = grants
        .pointer("/challenges/dns_01")
        .and_then(Value::as_array)
        .map(|routes| {
            routes
                .iter()
                .enumerate()
                .filter_map(|(i, route)| {
                    let solver = route.get("solver")?.as_str()?;
                    Some((
                        solver.to_owned(),
                        format!("grants.challenges.dns_01[{i}].solver"),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    solvers.sort();
    solvers.dedup_by(|a, b| a.0 == b.0);
    solvers
}

/// Finds (and on PostgreSQL share-locks, with `$share`) each routed solver
/// in the write transaction `$tx`; returns the refusal from the enclosing
/// function, after a rollback, when one is missing or retired.
macro_rules! lock_routed_solvers {
    ($tx:ident, $solvers:expr, $share:expr) => {
        for (solver, field) in $solvers {
            let found = sqlx::query_scalar::<_, String>(&format!(
                "SELECT id FROM dns_solvers WHERE id = $1 AND retired_at IS NULL{}",
                $share
            ))
            .bind(solver)
            .fetch_optional(&mut *$tx)
            .await?;
            if found.is_none() {
                $tx.rollback().await?;
                return Err(missing_solver(field, solver));
            }
        }
    };
}

/// The refusal of an issuer write whose route names no solver.
fn missing_solver(field: &str, solver: &str) -> StoreError {
    StoreError::InvalidArgument(format!(
        "{field}: no dns-solver instance {solver:?} (or it is retired)"
    ))
}

impl Store {
    /// Creates an instance in `table` with a caller-chosen id (so secrets
    /// can be sealed for the id before the row exists), and `audit`, when
    /// given, in the same transaction. An issuer's dns-solver routes must
    /// name solvers that exist (see [`Store::create_issuer`]).
    pub async fn create_instance(
        &self,
        table: InstanceTable,
        id: &str,
        new: NewPluginInstance,
        audit: Option<&NewAuditEvent>,
    ) -> StoreResult<PluginInstance> {
        let now = now();
        let sql = format!(
            "INSERT INTO {} (id, name, plugin_name, plugin_version, settings, encrypted_secrets,
                             grants, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING *",
            table.name()
        );
        let solvers = self.solvers_to_check(table, &new.grants);
        let share = self.share_lock_suffix();
        on_write!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            lock_routed_solvers!(tx, &solvers, share);
            let created = sqlx::query_as::<_, PluginInstance>(&sql)
                .bind(id)
                .bind(&new.name)
                .bind(&new.plugin_name)
                .bind(&new.plugin_version)
                .bind(Json(&new.settings))
                .bind(new.encrypted_secrets.clone())
                .bind(Json(&new.grants))
                .bind(ts(now))
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| {
                    StoreError::from_insert(format!("{} {:?}", table.name(), new.name), e)
                })?;
            if let Some(event) = audit {
                insert_audit!(&mut *tx, now, event)?;
            }
            tx.commit().await?;
            Ok(created)
        })
    }

    /// The solvers a write of `grants` to `table` must find (issuers only).
    fn solvers_to_check(&self, table: InstanceTable, grants: &Value) -> Vec<(String, String)> {
        if table == InstanceTable::Issuers {
            routed_solvers(grants)
        } else {
            Vec::new()
        }
    }

    /// `" FOR SHARE"` on PostgreSQL, nothing on SQLite (where the write
    /// transaction already holds the database).
    fn share_lock_suffix(&self) -> &'static str {
        match self.backend {
            crate::store::Backend::Sqlite(_) => "",
            crate::store::Backend::Postgres(_) => " FOR SHARE",
        }
    }

    async fn get_instance(
        &self,
        table: InstanceTable,
        id: &str,
    ) -> StoreResult<Option<PluginInstance>> {
        let sql = instance_by_id(table);
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, PluginInstance>(&sql)
                .bind(id)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Creates an issuer instance. Every dns-solver its
    /// `grants.challenges.dns_01` names must exist
    /// ([`StoreError::InvalidArgument`] naming the field otherwise).
    pub async fn create_issuer(&self, new: NewPluginInstance) -> StoreResult<PluginInstance> {
        self.create_instance(InstanceTable::Issuers, &new_id(), new, None)
            .await
    }

    /// Creates an issuer instance with a caller-chosen id (so secrets can be
    /// sealed for the id before the row exists).
    pub async fn create_issuer_with_id(
        &self,
        id: &str,
        new: NewPluginInstance,
    ) -> StoreResult<PluginInstance> {
        self.create_instance(InstanceTable::Issuers, id, new, None)
            .await
    }

    /// One issuer instance by id.
    pub async fn get_issuer(&self, id: &str) -> StoreResult<Option<PluginInstance>> {
        self.get_instance(InstanceTable::Issuers, id).await
    }

    /// Creates a notifier instance.
    pub async fn create_notifier(&self, new: NewPluginInstance) -> StoreResult<PluginInstance> {
        self.create_instance(InstanceTable::Notifiers, &new_id(), new, None)
            .await
    }

    /// Creates a notifier instance with a caller-chosen id.
    pub async fn create_notifier_with_id(
        &self,
        id: &str,
        new: NewPluginInstance,
    ) -> StoreResult<PluginInstance> {
        self.create_instance(InstanceTable::Notifiers, id, new, None)
            .await
    }

    async fn list_instances(&self, table: InstanceTable) -> StoreResult<Vec<PluginInstance>> {
        let sql = format!("SELECT * FROM {} ORDER BY name, id", table.name());
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, PluginInstance>(&sql)
                .fetch_all(pool)
                .await?
        }))
    }

    /// One page of a table's instances by name (`limit` from `offset`),
    /// and how many there are in all.
    async fn page_instances(
        &self,
        table: InstanceTable,
        include_retired: bool,
        limit: u32,
        offset: u64,
    ) -> StoreResult<(Vec<PluginInstance>, i64)> {
        let rows_sql = format!(
            "SELECT * FROM {} WHERE ($1 OR retired_at IS NULL) ORDER BY name, id
             LIMIT $2 OFFSET $3",
            table.name()
        );
        let count_sql = format!(
            "SELECT COUNT(*) FROM {} WHERE ($1 OR retired_at IS NULL)",
            table.name()
        );
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        Ok(on_read!(self, |pool| {
            let rows = sqlx::query_as::<_, PluginInstance>(&rows_sql)
                .bind(include_retired)
                .bind(sql_limit(limit))
                .bind(offset)
                .fetch_all(pool)
                .await?;
            let total = sqlx::query_scalar::<_, i64>(&count_sql)
                .bind(include_retired)
                .fetch_one(pool)
                .await?;
            (rows, total)
        }))
    }

    /// One page of issuers (retired ones only if asked) by name, and how
    /// many there are.
    pub async fn page_issuers(
        &self,
        include_retired: bool,
        limit: u32,
        offset: u64,
    ) -> StoreResult<(Vec<PluginInstance>, i64)> {
        self.page_instances(InstanceTable::Issuers, include_retired, limit, offset)
            .await
    }

    /// One page of notifiers (retired ones only if asked) by name, and how
    /// many there are.
    pub async fn page_notifiers(
        &self,
        include_retired: bool,
        limit: u32,
        offset: u64,
    ) -> StoreResult<(Vec<PluginInstance>, i64)> {
        self.page_instances(InstanceTable::Notifiers, include_retired, limit, offset)
            .await
    }

    /// Every issuer instance, by name.
    pub async fn list_issuers(&self) -> StoreResult<Vec<PluginInstance>> {
        self.list_instances(InstanceTable::Issuers).await
    }

    /// Every notifier instance, by name.
    pub async fn list_notifiers(&self) -> StoreResult<Vec<PluginInstance>> {
        self.list_instances(InstanceTable::Notifiers).await
    }

    /// Replaces the settings, encrypted secrets and grants of `table`'s
    /// instance `id`; `None` if it is unknown, retired, or (with
    /// `unchanged_since`) changed since that `updated_at`. `audit`, when
    /// given, is written in the same transaction, only when the row
    /// changed. An issuer's new routes must name solvers that exist (see
    /// [`Store::create_issuer`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn update_instance(
        &self,
        table: InstanceTable,
        id: &str,
        settings: &Value,
        encrypted_secrets: Option<Vec<u8>>,
        grants: &Value,
        unchanged_since: Option<DateTime<Utc>>,
        audit: Option<&NewAuditEvent>,
    ) -> StoreResult<Option<PluginInstance>> {
        // A notifier (or solver) disabled because its destination refused
        // it for good (HTTP 410, bad credentials) is enabled again by a new,
        // validated configuration.
        let reenable = match table {
            InstanceTable::Notifiers | InstanceTable::DnsSolvers => ", disabled_at = NULL",
            InstanceTable::Issuers => "",
        };
        let sql = format!(
            "UPDATE {} SET settings = $2, encrypted_secrets = $3, grants = $4, updated_at = $5{reenable}
             WHERE id = $1 AND retired_at IS NULL AND ($6 IS NULL OR updated_at = $6) RETURNING *",
            table.name()
        );
        let now = now();
        let solvers = self.solvers_to_check(table, grants);
        let share = self.share_lock_suffix();
        on_write!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            lock_routed_solvers!(tx, &solvers, share);
            let updated = sqlx::query_as::<_, PluginInstance>(&sql)
                .bind(id)
                .bind(Json(settings))
                .bind(encrypted_secrets.clone())
                .bind(Json(grants))
                .bind(ts(now))
                .bind(opt_ts(unchanged_since))
                .fetch_optional(&mut *tx)
                .await?;
            commit_audited_if!(tx, updated.is_some(), now, audit);
            Ok(updated)
        })
    }

    /// Replaces an issuer's settings, encrypted secrets and grants; `None`
    /// if unknown, retired, or (with `unchanged_since`) changed since that
    /// `updated_at`. Every dns-solver the new grants route to must exist
    /// (see [`Store::create_issuer`]).
    pub async fn update_issuer(
        &self,
        id: &str,
        settings: &Value,
        encrypted_secrets: Option<Vec<u8>>,
        grants: &Value,
        unchanged_since: Option<DateTime<Utc>>,
    ) -> StoreResult<Option<PluginInstance>> {
        self.update_instance(
            InstanceTable::Issuers,
            id,
            settings,
            encrypted_secrets,
            grants,
            unchanged_since,
            None,
        )
        .await
    }

    /// Replaces a notifier's settings, encrypted secrets and grants; `None`
    /// as for [`Store::update_issuer`].
    pub async fn update_notifier(
        &self,
        id: &str,
        settings: &Value,
        encrypted_secrets: Option<Vec<u8>>,
        grants: &Value,
        unchanged_since: Option<DateTime<Utc>>,
    ) -> StoreResult<Option<PluginInstance>> {
        self.update_instance(
            InstanceTable::Notifiers,
            id,
            settings,
            encrypted_secrets,
            grants,
            unchanged_since,
            None,
        )
        .await
    }

    /// Disables a notifier (its notifications then fail without being
    /// sent) unless it already is; true if this call disabled it.
    pub async fn disable_notifier(&self, id: &str) -> StoreResult<bool> {
        let now = now();
        Ok(on_write!(self, |pool| {
            sqlx::query(
                "UPDATE notifiers SET disabled_at = $2, updated_at = $2
                 WHERE id = $1 AND disabled_at IS NULL",
            )
            .bind(id)
            .bind(ts(now))
            .execute(pool)
            .await?
            .rows_affected()
                == 1
        }))
    }

    /// How many certificates not retired name this issuer (what keeps it
    /// from being retired).
    pub async fn issuer_certificate_count(&self, id: &str) -> StoreResult<i64> {
        Ok(on_read!(self, |pool| {
            sqlx::query_scalar::<_, i64>(ISSUER_CERTIFICATES_SQL)
                .bind(id)
                .fetch_one(pool)
                .await?
        }))
    }

    /// What keeps `table`'s row `$1` from being retired, as SQL: an
    /// issuer named by a certificate that is not retired (retired ones
    /// keep naming it); a notifier with notifications pending or being
    /// sent; a dns-solver that a live issuer routes dns-01 to or whose
    /// challenges are not all withdrawn (see [`Store::dns_solver_usage`]).
    fn retire_in_use_sql(&self, table: InstanceTable) -> String {
        match table {
            InstanceTable::Issuers => format!("({ISSUER_CERTIFICATES_SQL}) > 0"),
            InstanceTable::Notifiers => "EXISTS (SELECT 1 FROM notifications
                     WHERE notifier_id = $1 AND status IN ('pending', 'sending'))"
                .to_owned(),
            InstanceTable::DnsSolvers => {
                let issuers_where = match self.backend {
                    crate::store::Backend::Sqlite(_) => SOLVER_ISSUERS_WHERE_SQLITE,
                    crate::store::Backend::Postgres(_) => SOLVER_ISSUERS_WHERE_PG,
                };
                // The solver's route is `'dns:' || id`, spelled in SQL so
                // the one bound id serves both checks.
                format!(
                    "EXISTS (SELECT 1 FROM issuers WHERE {issuers_where}) OR ({}) > 0",
                    solver_live_challenges_sql("('dns:' || $1)")
                )
            }
        }
    }

    /// Retires `table`'s row `id` unless it is in use, checked in one
    /// transaction after the row is locked, so a writer that holds it (an
    /// issuer naming a solver, a certificate naming an issuer) commits
    /// first and is seen. True if this call retired it, with `audit` (when
    /// given) written in the same transaction; false if it is unknown,
    /// already retired or in use (nothing is written then). Notifiers are
    /// disabled too, so nothing is queued for or sent by them again.
    pub async fn retire_instance(
        &self,
        table: InstanceTable,
        id: &str,
        audit: Option<&NewAuditEvent>,
    ) -> StoreResult<bool> {
        let now = now();
        let in_use = self.retire_in_use_sql(table);
        let also = match table {
            InstanceTable::Notifiers => ", disabled_at = COALESCE(disabled_at, $2)",
            InstanceTable::Issuers | InstanceTable::DnsSolvers => "",
        };
        let lock = format!(
            "SELECT id FROM {} WHERE id = $1{}",
            table.name(),
            self.row_lock_suffix()
        );
        let retire = format!(
            "UPDATE {} SET retired_at = $2, updated_at = $2{also}
             WHERE id = $1 AND retired_at IS NULL AND NOT ({in_use})",
            table.name()
        );
        on_write!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(&lock).bind(id).fetch_optional(&mut *tx).await?;
            let done = sqlx::query(&retire)
                .bind(id)
                .bind(ts(now))
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            commit_audited_if!(tx, done, now, audit);
            Ok(done)
        })
    }

    /// Retires an issuer that no certificate but retired ones names
    /// (checked in the same transaction; their versions keep naming it).
    /// True if this call retired it; false if it is unknown, already
    /// retired or in use.
    pub async fn retire_issuer(&self, id: &str) -> StoreResult<bool> {
        self.retire_instance(InstanceTable::Issuers, id, None).await
    }

    /// Notifications of a notifier that are still to be delivered (pending
    /// or being sent).
    pub async fn notifier_open_notifications(&self, id: &str) -> StoreResult<i64> {
        Ok(on_read!(self, |pool| {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM notifications
                 WHERE notifier_id = $1 AND status IN ('pending', 'sending')",
            )
            .bind(id)
            .fetch_one(pool)
            .await?
        }))
    }

    /// Retires (and disables) a notifier unless notifications are still
    /// pending or being sent; its delivery history stays. True if this call
    /// retired it; false if it is unknown, already retired or has open
    /// notifications (nothing is changed then).
    pub async fn retire_notifier(&self, id: &str) -> StoreResult<bool> {
        self.retire_instance(InstanceTable::Notifiers, id, None)
            .await
    }

    /// One notifier instance by id.
    pub async fn get_notifier(&self, id: &str) -> StoreResult<Option<PluginInstance>> {
        self.get_instance(InstanceTable::Notifiers, id).await
    }

    /// Creates a dns-solver instance.
    pub async fn create_dns_solver(&self, new: NewPluginInstance) -> StoreResult<PluginInstance> {
        self.create_instance(InstanceTable::DnsSolvers, &new_id(), new, None)
            .await
    }

    /// Creates a dns-solver instance with a caller-chosen id.
    pub async fn create_dns_solver_with_id(
        &self,
        id: &str,
        new: NewPluginInstance,
    ) -> StoreResult<PluginInstance> {
        self.create_instance(InstanceTable::DnsSolvers, id, new, None)
            .await
    }

    /// One dns-solver instance by id.
    pub async fn get_dns_solver(&self, id: &str) -> StoreResult<Option<PluginInstance>> {
        self.get_instance(InstanceTable::DnsSolvers, id).await
    }

    /// One page of dns-solvers (retired ones only if asked) by name, and
    /// how many there are.
    pub async fn page_dns_solvers(
        &self,
        include_retired: bool,
        limit: u32,
        offset: u64,
    ) -> StoreResult<(Vec<PluginInstance>, i64)> {
        self.page_instances(InstanceTable::DnsSolvers, include_retired, limit, offset)
            .await
    }

    /// Every dns-solver instance, by name.
    pub async fn list_dns_solvers(&self) -> StoreResult<Vec<PluginInstance>> {
        self.list_instances(InstanceTable::DnsSolvers).await
    }

    /// Replaces a dns-solver's settings, encrypted secrets and grants (and
    /// enables it again); `None` as for [`Store::update_issuer`].
    pub async fn update_dns_solver(
        &self,
        id: &str,
        settings: &Value,
        encrypted_secrets: Option<Vec<u8>>,
        grants: &Value,
        unchanged_since: Option<DateTime<Utc>>,
    ) -> StoreResult<Option<PluginInstance>> {
        self.update_instance(
            InstanceTable::DnsSolvers,
            id,
            settings,
            encrypted_secrets,
            grants,
            unchanged_since,
            None,
        )
        .await
    }

    /// What keeps a dns-solver in use: (ids of the live issuers whose
    /// `grants.challenges` route dns-01 to it, by name; its challenges not
    /// yet withdrawn: pending, ready, failed or withdrawing).
    pub async fn dns_solver_usage(&self, id: &str) -> StoreResult<(Vec<String>, i64)> {
        let route = format!("dns:{id}");
        let sqlite_sql =
            format!("SELECT id FROM issuers WHERE {SOLVER_ISSUERS_WHERE_SQLITE} ORDER BY name, id");
        let pg_sql =
            format!("SELECT id FROM issuers WHERE {SOLVER_ISSUERS_WHERE_PG} ORDER BY name, id");
        let issuers = on_read!(self, &sqlite_sql, &pg_sql, |pool, sql| {
            sqlx::query_scalar::<_, String>(sql)
                .bind(id)
                .fetch_all(pool)
                .await?
        });
        let live_challenges = on_read!(self, |pool| {
            sqlx::query_scalar::<_, i64>(&solver_live_challenges_sql("$1"))
                .bind(&route)
                .fetch_one(pool)
                .await?
        });
        Ok((issuers, live_challenges))
    }

    /// Retires a dns-solver unless a live issuer routes dns-01 to it or one
    /// of its challenges is not yet withdrawn (see
    /// [`Store::dns_solver_usage`]), checked in the same transaction with
    /// the solver's row locked: an issuer write holding the row (shared)
    /// commits first, so the check sees its routes; one waiting for it
    /// finds the solver retired and is refused. True if this call retired
    /// it; false if it is unknown, already retired or in use.
    pub async fn retire_dns_solver(&self, id: &str) -> StoreResult<bool> {
        self.retire_instance(InstanceTable::DnsSolvers, id, None)
            .await
    }

    /// Creates a target run by `new.agent_id` (which must exist and be
    /// active).
    pub async fn create_target(&self, new: NewTarget) -> StoreResult<Target> {
        self.create_target_with_id(&new_id(), new, None).await
    }

    /// Creates a target with a caller-chosen id (see
    /// [`Store::create_issuer_with_id`]), and `audit`, when given, in the
    /// same transaction.
    pub async fn create_target_with_id(
        &self,
        id: &str,
        new: NewTarget,
        audit: Option<&NewAuditEvent>,
    ) -> StoreResult<Target> {
        let now = now();
        let inst = &new.instance;
        on_write!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let created = sqlx::query_as::<_, Target>(
                "INSERT INTO targets (id, name, agent_id, plugin_name, plugin_version, settings,
                                      encrypted_secrets, grants, created_at, updated_at)
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $9
                 WHERE EXISTS (SELECT 1 FROM agents WHERE id = $3 AND status = 'active')
                 RETURNING *",
            )
            .bind(id)
            .bind(&inst.name)
            .bind(&new.agent_id)
            .bind(&inst.plugin_name)
            .bind(&inst.plugin_version)
            .bind(Json(&inst.settings))
            .bind(inst.encrypted_secrets.clone())
            .bind(Json(&inst.grants))
            .bind(ts(now))
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| StoreError::from_insert(format!("target {:?}", inst.name), e))?;
            let Some(created) = created else {
                tx.rollback().await?;
                return Err(StoreError::NotFound {
                    entity: "active agent",
                    id: new.agent_id.clone(),
                });
            };
            if let Some(event) = audit {
                insert_audit!(&mut *tx, now, event)?;
            }
            tx.commit().await?;
            Ok(created)
        })
    }

    /// One target by id.
    pub async fn get_target(&self, id: &str) -> StoreResult<Option<Target>> {
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, Target>(GET_TARGET)
                .bind(id)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Targets run by an agent (retired ones only if asked), by name.
    pub async fn list_targets_for_agent(
        &self,
        agent_id: &str,
        include_retired: bool,
    ) -> StoreResult<Vec<Target>> {
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, Target>(
                "SELECT * FROM targets WHERE agent_id = $1 AND ($2 OR retired_at IS NULL)
                 ORDER BY name, id",
            )
            .bind(agent_id)
            .bind(include_retired)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Retires one target; false if it was already retired or unknown.
    pub async fn retire_target(&self, id: &str, reason: &str) -> StoreResult<bool> {
        let now = now();
        Ok(on_write!(self, |pool| {
            sqlx::query(
                "UPDATE targets SET retired_at = $2, retired_reason = $3, updated_at = $2
                 WHERE id = $1 AND retired_at IS NULL",
            )
            .bind(id)
            .bind(ts(now))
            .bind(reason)
            .execute(pool)
            .await?
            .rows_affected()
                == 1
        }))
    }

    /// One page of targets (retired ones only if asked) by name, and how
    /// many there are.
    pub async fn page_targets(
        &self,
        include_retired: bool,
        limit: u32,
        offset: u64,
    ) -> StoreResult<(Vec<Target>, i64)> {
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        Ok(on_read!(self, |pool| {
            let rows = sqlx::query_as::<_, Target>(
                "SELECT * FROM targets WHERE ($1 OR retired_at IS NULL) ORDER BY name, id
                 LIMIT $2 OFFSET $3",
            )
            .bind(include_retired)
            .bind(sql_limit(limit))
            .bind(offset)
            .fetch_all(pool)
            .await?;
            let total = sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM targets WHERE ($1 OR retired_at IS NULL)",
            )
            .bind(include_retired)
            .fetch_one(pool)
            .await?;
            (rows, total)
        }))
    }

    /// Every target (retired ones only if asked), by name.
    pub async fn list_targets(&self, include_retired: bool) -> StoreResult<Vec<Target>> {
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, Target>(
                "SELECT * FROM targets WHERE ($1 OR retired_at IS NULL) ORDER BY name, id",
            )
            .bind(include_retired)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Replaces a target's settings, encrypted secrets and grants; `None` if
    /// it is unknown, retired, or (with `unchanged_since`) changed since
    /// that `updated_at`. `audit`, when given, is written in the same
    /// transaction, only when the row changed.
    pub async fn update_target(
        &self,
        id: &str,
        settings: &Value,
        encrypted_secrets: Option<Vec<u8>>,
        grants: &Value,
        unchanged_since: Option<DateTime<Utc>>,
        audit: Option<&NewAuditEvent>,
    ) -> StoreResult<Option<Target>> {
        let now = now();
        on_write!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let updated = sqlx::query_as::<_, Target>(
                "UPDATE targets SET settings = $2, encrypted_secrets = $3, grants = $4,
                        updated_at = $5
                 WHERE id = $1 AND retired_at IS NULL AND ($6 IS NULL OR updated_at = $6)
                 RETURNING *",
            )
            .bind(id)
            .bind(Json(settings))
            .bind(encrypted_secrets.clone())
            .bind(Json(grants))
            .bind(ts(now))
            .bind(opt_ts(unchanged_since))
            .fetch_optional(&mut *tx)
            .await?;
            commit_audited_if!(tx, updated.is_some(), now, audit);
            Ok(updated)
        })
    }

    /// What keeps a target in use: (certificates not retired that deploy to
    /// it, open jobs of it).
    pub async fn target_usage(&self, id: &str) -> StoreResult<(i64, i64)> {
        let certificates = on_read!(self, |pool| {
            sqlx::query_scalar::<_, i64>(TARGET_CERTIFICATES_SQL)
                .bind(id)
                .fetch_one(pool)
                .await?
        });
        let jobs = on_read!(self, |pool| {
            sqlx::query_scalar::<_, i64>(TARGET_OPEN_JOBS_SQL)
                .bind(id)
                .fetch_one(pool)
                .await?
        });
        Ok((certificates, jobs))
    }

    /// Retires a target unless it is in use (see [`Store::target_usage`]),
    /// checked in the same statement. True if this call retired it, with
    /// `audit` (when given) written in the same transaction; false if it is
    /// unknown, already retired or in use (nothing is written then).
    pub async fn retire_unused_target(
        &self,
        id: &str,
        reason: &str,
        audit: Option<&NewAuditEvent>,
    ) -> StoreResult<bool> {
        let now = now();
        let sql = format!(
            "UPDATE targets SET retired_at = $2, retired_reason = $3, updated_at = $2
             WHERE id = $1 AND retired_at IS NULL
               AND ({TARGET_CERTIFICATES_SQL}) = 0 AND ({TARGET_OPEN_JOBS_SQL}) = 0"
        );
        on_write!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let done = sqlx::query(&sql)
                .bind(id)
                .bind(ts(now))
                .bind(reason)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            commit_audited_if!(tx, done, now, audit);
            Ok(done)
        })
    }
}

/// One target by id (`$1`).
pub(crate) const GET_TARGET: &str = "SELECT * FROM targets WHERE id = $1";

/// One instance of `table` by id (`$1`).
pub(crate) fn instance_by_id(table: InstanceTable) -> String {
    format!("SELECT * FROM {} WHERE id = $1", table.name())
}
