//! The database's plans for the statements that must stay cheap as the
//! jobs table grows (a claim during a renewal storm, the reaper's expiry
//! of waits, a page of the job listing, the batch reads of claimed jobs'
//! rows): for diagnostics and the tests
//! that pin which index serves them.

use sqlx::QueryBuilder;

use crate::store::codec::now;
use crate::store::repo::claims::{ClaimParam, HostClaim};
use crate::store::repo::jobs::list_jobs_query;
use crate::store::repo::waits::EXPIRE_WAITING;
use crate::store::{JobFilter, JobStatus, JobType, PoolRef, Store, StoreResult};

impl Store {
    /// The plan of the host claim of `job_type`, one line per step.
    /// With `except_targets`, the claim that leaves some targets alone.
    #[doc(hidden)]
    pub async fn explain_host_claim(
        &self,
        job_type: Option<JobType>,
        except_targets: bool,
    ) -> StoreResult<String> {
        let claim = HostClaim {
            owner: String::new(),
            lease_expires_at: now(),
            now: now(),
            limit: 16,
            job_type,
            except_targets: except_targets.then(|| "[\"explain\"]".to_owned()),
            deployments_first: false,
            with_inputs: false,
        };
        let (lite_sql, pg_sql) = claim.sql();
        let mut args = vec!["'explain'", "now()", "now()", "16"];
        let param = claim.param().map(|p| match p {
            ClaimParam::Type(t) => format!("'{}'", t.as_str()),
            ClaimParam::Targets(list) => format!("'{list}'"),
        });
        args.extend(param.as_deref());
        self.explain(lite_sql, pg_sql, &args).await
    }

    /// The plan of the reaper's expiry of jobs waiting in `status`.
    #[doc(hidden)]
    pub async fn explain_expire_waiting(&self, status: JobStatus) -> StoreResult<String> {
        let status = format!("'{}'", status.as_str());
        let args = [status.as_str(), "now()", "'explain'", "now()", "500"];
        self.explain(EXPIRE_WAITING, EXPIRE_WAITING, &args).await
    }

    /// The plan of the page of jobs `filter` lists.
    #[doc(hidden)]
    pub async fn explain_list_jobs(&self, filter: &JobFilter) -> StoreResult<String> {
        let lite_sql = {
            let qb: QueryBuilder<sqlx::Sqlite> = list_jobs_query!(filter);
            qb.sql().to_owned()
        };
        let pg_sql = {
            let qb: QueryBuilder<sqlx::Postgres> = list_jobs_query!(filter);
            qb.sql().to_owned()
        };
        let quote = |v: &str| format!("'{}'", v.replace('\'', "''"));
        let mut args: Vec<String> = [
            filter.status.map(|s| s.as_str().to_owned()),
            filter.job_type.map(|t| t.as_str().to_owned()),
            filter.certificate_id.clone(),
            filter.agent_id.clone(),
        ]
        .iter()
        .flatten()
        .map(|v| quote(v))
        .collect();
        args.push(filter.limit.unwrap_or(100).to_string());
        args.push(filter.offset.unwrap_or(0).to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.explain(&lite_sql, &pg_sql, &args).await
    }

    /// The plans of the batch reads of claimed jobs' rows
    /// (`Store::job_inputs`) from the tables that grow with the inventory:
    /// (table, plan) for certificates, certificate_targets and
    /// certificate_versions.
    #[doc(hidden)]
    pub async fn explain_batch_reads(&self) -> StoreResult<Vec<(&'static str, String)>> {
        use crate::store::repo::job_inputs::{POSTGRES_BATCH as PG, SQLITE_BATCH as LITE};
        let ids = ["'[\"a\", \"b\", \"c\"]'"];
        Ok(vec![
            (
                "certificates",
                self.explain(LITE.certificates, PG.certificates, &ids)
                    .await?,
            ),
            (
                "certificate_targets",
                self.explain(LITE.links, PG.links, &ids).await?,
            ),
            (
                "certificate_versions",
                self.explain(LITE.versions, PG.versions, &ids).await?,
            ),
        ])
    }

    /// SQLite's `EXPLAIN QUERY PLAN` (parameters unbound: its plans do not
    /// depend on their values) or PostgreSQL's generic plan, the one a
    /// prepared statement runs once the server stops planning it for its
    /// values (an EXPLAIN with bound values would show a custom plan).
    /// `args` are the PostgreSQL arguments as SQL literals, in order.
    async fn explain(&self, lite_sql: &str, pg_sql: &str, args: &[&str]) -> StoreResult<String> {
        use sqlx::{Connection, Row};
        let lines: Vec<String> = match self.pool() {
            PoolRef::Sqlite(pool) => {
                let rows = sqlx::raw_sql(&format!("EXPLAIN QUERY PLAN {lite_sql}"))
                    .fetch_all(pool)
                    .await?;
                rows.iter()
                    .map(|r| r.try_get::<String, _>("detail"))
                    .collect::<Result<_, _>>()?
            }
            PoolRef::Postgres(pool) => {
                // PREPARE outlives transactions: the session is closed after.
                let mut conn = pool.acquire().await?.detach();
                sqlx::raw_sql(&format!(
                    "SET plan_cache_mode = force_generic_plan; \
                     PREPARE certplane_explain AS {pg_sql}"
                ))
                .execute(&mut conn)
                .await?;
                let lines = sqlx::query_scalar::<_, String>(&format!(
                    "EXPLAIN EXECUTE certplane_explain({})",
                    args.join(", ")
                ))
                .fetch_all(&mut conn)
                .await;
                conn.close().await?;
                lines?
            }
        };
        Ok(lines.join("\n"))
    }
}
