//! What claimed host jobs read before they run, read for a whole claimed
//! batch at once.
//!
//! A job needs several rows (its certificate, the issuer or target, the
//! version to deploy). Read job by job, that is three statements and one
//! pool checkout per job; on SQLite each statement is a round trip to the
//! reader connection's worker thread, and each checkout one more (the
//! pool's check-in). The job loops claim several jobs at a time, so their
//! rows are read together: one statement per table for the whole batch
//! (an id list bound as one JSON array), on one connection
//! (BENCHMARKS.md, issue 13). The API's certificate create reads the
//! issuer and targets it checks the same way.

use std::collections::HashMap;

use crate::store::repo::id_list;
use crate::store::repo::notices::{deployment_key, verification_key};

use crate::store::{
    Backend, Certificate, CertificateVersion, Job, JobType, PluginInstance, Store, StoreResult,
    Target, on_read,
};

/// What an issuance or renewal job works with.
#[derive(Debug, Clone)]
pub struct IssuanceInputs {
    /// The certificate.
    pub certificate: Certificate,
    /// Its issuer's row; `None` if the issuer no longer exists.
    pub issuer: Option<PluginInstance>,
    /// The live targets the new version goes to
    /// (its key-holding target and its extra targets), as they were before the issuer's
    /// call: a target retired during the call still gets its deployment
    /// job, which ends as "target is retired" (a certificate's targets are
    /// set when it is created). Ordered by name, then id.
    pub targets: Vec<Target>,
}

/// What a deployment job works with; each `None` if that row is gone.
#[derive(Debug, Clone)]
pub struct DeploymentInputs {
    /// The target.
    pub target: Option<Target>,
    /// The certificate.
    pub certificate: Option<Certificate>,
    /// The version to deploy.
    pub version: Option<CertificateVersion>,
    /// Its open deployment and verification conditions
    /// ([`crate::store::deployment_key`], [`crate::store::verification_key`]),
    /// read with the batch: a success clears those and tells their
    /// recovery, and reads nothing more when there are none.
    pub open_alerts: Vec<String>,
}

/// The rows one claimed job reads, from [`Store::job_inputs`].
// Each value is made once and moved into its job's task; boxing the larger
// variant would only add an allocation per job.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum JobInputs {
    /// An issuance or renewal job's; `None` if its certificate no longer
    /// exists.
    Issuance(Option<IssuanceInputs>),
    /// A deployment job's.
    Deployment(DeploymentInputs),
}

/// The batch reads of one backend; `$1` is a JSON array of ids.
pub(crate) struct BatchSql {
    pub(crate) certificates: &'static str,
    pub(crate) links: &'static str,
    pub(crate) issuers: &'static str,
    pub(crate) targets: &'static str,
    pub(crate) versions: &'static str,
    pub(crate) alerts: &'static str,
}

/// The six batch reads, `$in` being each backend's test of `id` against
/// a JSON array of ids.
macro_rules! batch_sql {
    ($in:literal) => {
        BatchSql {
            certificates: concat!("SELECT * FROM certificates WHERE id", $in),
            links: concat!(
                "SELECT certificate_id, target_id FROM certificate_targets WHERE certificate_id",
                $in
            ),
            issuers: concat!("SELECT * FROM issuers WHERE id", $in),
            targets: concat!("SELECT * FROM targets WHERE id", $in, " ORDER BY name, id"),
            versions: concat!("SELECT * FROM certificate_versions WHERE id", $in),
            alerts: concat!("SELECT key FROM alert_conditions WHERE key", $in),
        }
    };
}

pub(crate) const SQLITE_BATCH: BatchSql = batch_sql!(" IN (SELECT value FROM json_each($1))");
/// An array, not `IN (SELECT json_array_elements_text(...))`: the planner
/// guesses 100 rows for the function and hash-joins it against a
/// sequential scan of the whole table (3 ms per batch of certificates at
/// 10,000 of them); `= ANY` of an array evaluated once is an index scan.
pub(crate) const POSTGRES_BATCH: BatchSql =
    batch_sql!(" = ANY(ARRAY(SELECT json_array_elements_text($1::json)))");

/// What the batch statements returned.
#[derive(Default)]
pub(crate) struct Rows {
    pub(crate) certificates: Vec<Certificate>,
    pub(crate) links: Vec<(String, String)>,
    pub(crate) issuers: Vec<PluginInstance>,
    /// Ordered by name, then id.
    pub(crate) targets: Vec<Target>,
    pub(crate) versions: Vec<CertificateVersion>,
    /// The open conditions of the deployments.
    pub(crate) alerts: Vec<String>,
}

/// A deployment job's (target, certificate, version) ids, if it names all
/// three.
fn deployment_ids(job: &Job) -> Option<(&str, &str, &str)> {
    if job.job_type != JobType::Deployment {
        return None;
    }
    Some((
        job.target_id.as_deref()?,
        job.certificate_id.as_deref()?,
        job.certificate_version_id.as_deref()?,
    ))
}

/// The jobs of a batch that read rows: issuance and renewal jobs with
/// their certificate id, deployments with their (target, certificate,
/// version) ids.
pub(crate) struct Wanted<'a> {
    pub(crate) issuance: Vec<(&'a Job, &'a str)>,
    pub(crate) deployments: Vec<(&'a Job, (&'a str, &'a str, &'a str))>,
}

impl<'a> Wanted<'a> {
    /// The jobs of `jobs` that read rows; the others are left out.
    pub(crate) fn of(jobs: &'a [Job]) -> Self {
        Wanted {
            issuance: jobs
                .iter()
                .filter(|j| j.job_type.issues())
                .filter_map(|j| Some((j, j.certificate_id.as_deref()?)))
                .collect(),
            deployments: jobs
                .iter()
                .filter_map(|j| Some((j, deployment_ids(j)?)))
                .collect(),
        }
    }

    /// Whether no job reads anything (then nothing is read).
    pub(crate) fn is_empty(&self) -> bool {
        self.issuance.is_empty() && self.deployments.is_empty()
    }

    /// Whether `certificate` is an issuance job's: only those need their
    /// issuer and targets; a deployment's certificate is read for itself.
    pub(crate) fn for_issuance(&self, certificate: &Certificate) -> bool {
        self.issuance.iter().any(|(_, id)| *id == certificate.id)
    }

    /// The deployments' alert condition keys.
    pub(crate) fn alert_keys(&self) -> Vec<String> {
        self.deployments
            .iter()
            .flat_map(|(_, (t, c, _))| [deployment_key(c, t), verification_key(c, t)])
            .collect()
    }

    /// Each job's inputs from the rows read for the batch.
    pub(crate) fn assemble(&self, rows: Rows) -> HashMap<String, JobInputs> {
        assemble(rows, &self.issuance, &self.deployments)
    }
}

/// Reads the rows `$wanted` (a [`Wanted`]) needs through `$conn` (a
/// connection or a transaction) with the backend's [`BatchSql`] `$sql`, at
/// most one statement per table, and hands each job its own: a map by job
/// id, or the `sqlx::Error` of the first statement that failed. A macro,
/// as the statements run on either backend's connection type.
macro_rules! read_inputs {
    ($conn:expr, $sql:expr, $wanted:expr) => {
        async {
            let sql: &$crate::store::repo::job_inputs::BatchSql = $sql;
            let wanted: &$crate::store::repo::job_inputs::Wanted<'_> = $wanted;
            let certificate_ids = $crate::store::repo::id_list(
                wanted
                    .issuance
                    .iter()
                    .map(|(_, c)| *c)
                    .chain(wanted.deployments.iter().map(|(_, (_, c, _))| *c)),
            );
            let issuance_ids =
                $crate::store::repo::id_list(wanted.issuance.iter().map(|(_, c)| *c));
            let mut rows = $crate::store::repo::job_inputs::Rows {
                certificates: sqlx::query_as(sql.certificates)
                    .bind(&certificate_ids)
                    .fetch_all(&mut *$conn)
                    .await?,
                ..Default::default()
            };
            if !wanted.issuance.is_empty() {
                rows.links = sqlx::query_as(sql.links)
                    .bind(&issuance_ids)
                    .fetch_all(&mut *$conn)
                    .await?;
                let issuers = $crate::store::repo::id_list(
                    rows.certificates
                        .iter()
                        .filter(|c| wanted.for_issuance(c))
                        .map(|c| c.issuer_id.as_str()),
                );
                rows.issuers = sqlx::query_as(sql.issuers)
                    .bind(&issuers)
                    .fetch_all(&mut *$conn)
                    .await?;
            }
            let target_ids = $crate::store::repo::id_list(
                rows.links
                    .iter()
                    .map(|(_, t)| t.as_str())
                    .chain(
                        rows.certificates
                            .iter()
                            .filter(|c| wanted.for_issuance(c))
                            .filter_map(|c| c.target_id.as_deref()),
                    )
                    .chain(wanted.deployments.iter().map(|(_, (t, _, _))| *t)),
            );
            rows.targets = sqlx::query_as(sql.targets)
                .bind(&target_ids)
                .fetch_all(&mut *$conn)
                .await?;
            if !wanted.deployments.is_empty() {
                let versions = $crate::store::repo::id_list(
                    wanted.deployments.iter().map(|(_, (_, _, v))| *v),
                );
                rows.versions = sqlx::query_as(sql.versions)
                    .bind(&versions)
                    .fetch_all(&mut *$conn)
                    .await?;
                let keys = wanted.alert_keys();
                rows.alerts = sqlx::query_scalar(sql.alerts)
                    .bind($crate::store::repo::id_list(
                        keys.iter().map(String::as_str),
                    ))
                    .fetch_all(&mut *$conn)
                    .await?;
            }
            Ok::<_, sqlx::Error>(wanted.assemble(rows))
        }
        .await
    };
}
pub(crate) use read_inputs;

impl Store {
    /// The rows each issuance, renewal and deployment job of `jobs` works
    /// with, by job id: at most one statement per table for all of them,
    /// on one connection. Other jobs (and deployments that name no target,
    /// certificate or version) are left out.
    pub async fn job_inputs(&self, jobs: &[Job]) -> StoreResult<HashMap<String, JobInputs>> {
        let wanted = Wanted::of(jobs);
        if wanted.is_empty() {
            return Ok(HashMap::new());
        }
        let sql = match &self.backend {
            Backend::Sqlite(_) => &SQLITE_BATCH,
            Backend::Postgres(_) => &POSTGRES_BATCH,
        };
        Ok(on_read!(self, |pool| {
            let mut conn = pool.acquire().await?;
            read_inputs!(&mut *conn, sql, &wanted)?
        }))
    }

    /// The issuers and the targets new certificates name, read on one
    /// connection (two statements, one checkout): the API checks them
    /// before it creates the certificates. Rows that do not exist are
    /// left out; the targets come by name, then id.
    pub async fn certificate_references(
        &self,
        issuer_ids: &[&str],
        target_ids: &[&str],
    ) -> StoreResult<(Vec<PluginInstance>, Vec<Target>)> {
        let sql = match &self.backend {
            Backend::Sqlite(_) => &SQLITE_BATCH,
            Backend::Postgres(_) => &POSTGRES_BATCH,
        };
        let issuers = id_list(issuer_ids.iter().copied());
        let targets = id_list(target_ids.iter().copied());
        Ok(on_read!(self, |pool| {
            let mut conn = pool.acquire().await?;
            let issuers = if issuer_ids.is_empty() {
                Vec::new()
            } else {
                sqlx::query_as(sql.issuers)
                    .bind(&issuers)
                    .fetch_all(&mut *conn)
                    .await?
            };
            let targets = if target_ids.is_empty() {
                Vec::new()
            } else {
                sqlx::query_as(sql.targets)
                    .bind(&targets)
                    .fetch_all(&mut *conn)
                    .await?
            };
            (issuers, targets)
        }))
    }

    /// `job`'s rows: `read` when they came with its claimed batch, else
    /// read now; `None` for a job [`Store::job_inputs`] leaves out.
    pub async fn inputs_for(
        &self,
        job: &Job,
        read: Option<JobInputs>,
    ) -> StoreResult<Option<JobInputs>> {
        match read {
            Some(inputs) => Ok(Some(inputs)),
            None => Ok(self
                .job_inputs(std::slice::from_ref(job))
                .await?
                .remove(&job.id)),
        }
    }
}

/// Hands each job its rows.
fn assemble(
    rows: Rows,
    issuance: &[(&Job, &str)],
    deployments: &[(&Job, (&str, &str, &str))],
) -> HashMap<String, JobInputs> {
    let certificate = |id: &str| rows.certificates.iter().find(|c| c.id == id).cloned();
    let target = |id: &str| rows.targets.iter().find(|t| t.id == id).cloned();
    let mut inputs = HashMap::with_capacity(issuance.len() + deployments.len());
    for (job, cert_id) in issuance {
        let found = certificate(cert_id).map(|certificate| {
            let linked = |t: &Target| {
                certificate.target_id.as_deref() == Some(t.id.as_str())
                    || rows.links.iter().any(|(c, l)| c == cert_id && *l == t.id)
            };
            IssuanceInputs {
                issuer: rows
                    .issuers
                    .iter()
                    .find(|i| i.id == certificate.issuer_id)
                    .cloned(),
                targets: rows
                    .targets
                    .iter()
                    .filter(|t| t.retired_at.is_none() && linked(t))
                    .cloned()
                    .collect(),
                certificate,
            }
        });
        inputs.insert(job.id.clone(), JobInputs::Issuance(found));
    }
    for (job, (target_id, cert_id, version_id)) in deployments {
        let version = rows
            .versions
            .iter()
            .find(|v| v.id == *version_id && v.certificate_id == *cert_id)
            .cloned();
        let keys = [
            deployment_key(cert_id, target_id),
            verification_key(cert_id, target_id),
        ];
        inputs.insert(
            job.id.clone(),
            JobInputs::Deployment(DeploymentInputs {
                target: target(target_id),
                certificate: certificate(cert_id),
                version,
                open_alerts: keys
                    .into_iter()
                    .filter(|key| rows.alerts.contains(key))
                    .collect(),
            }),
        );
    }
    inputs
}
