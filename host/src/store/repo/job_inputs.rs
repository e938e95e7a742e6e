//! What a host job reads before it runs, read on one pooled connection.
//!
//! A job needs several rows (its certificate, the issuer or target, the
//! version to deploy). Read one by one, each read checks a connection out
//! of the pool and back in, and each check-in is one more round trip to
//! the connection's worker thread on SQLite (a ping on PostgreSQL). One
//! checkout for all of them halves those round trips on the busiest path
//! of a mass issuance (BENCHMARKS.md, issue 13). The reads are the same
//! statements as the single-row getters.

use crate::store::repo::certificates::{GET_CERTIFICATE, GET_CERTIFICATE_VERSION};
use crate::store::repo::deployments::DEPLOYMENT_TARGETS;
use crate::store::repo::plugins::{GET_TARGET, instance_by_id};
use crate::store::{
    Certificate, CertificateVersion, InstanceTable, PluginInstance, Store, StoreResult, Target,
    on_read,
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
    /// set when it is created).
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
}

impl Store {
    /// The certificate `certificate_id`, its issuer and its live targets;
    /// `None` if the certificate no longer exists.
    pub async fn issuance_inputs(
        &self,
        certificate_id: &str,
    ) -> StoreResult<Option<IssuanceInputs>> {
        let issuer_sql = instance_by_id(InstanceTable::Issuers);
        Ok(on_read!(self, |pool| {
            let mut conn = pool.acquire().await?;
            let certificate = sqlx::query_as::<_, Certificate>(GET_CERTIFICATE)
                .bind(certificate_id)
                .fetch_optional(&mut *conn)
                .await?;
            match certificate {
                None => None,
                Some(certificate) => {
                    let issuer = sqlx::query_as::<_, PluginInstance>(&issuer_sql)
                        .bind(&certificate.issuer_id)
                        .fetch_optional(&mut *conn)
                        .await?;
                    let targets = sqlx::query_as::<_, Target>(DEPLOYMENT_TARGETS)
                        .bind(certificate_id)
                        .fetch_all(&mut *conn)
                        .await?;
                    Some(IssuanceInputs {
                        certificate,
                        issuer,
                        targets,
                    })
                }
            }
        }))
    }

    /// The target `target_id`, the certificate `certificate_id` and its
    /// version `version_id`.
    pub async fn deployment_inputs(
        &self,
        target_id: &str,
        certificate_id: &str,
        version_id: &str,
    ) -> StoreResult<DeploymentInputs> {
        Ok(on_read!(self, |pool| {
            let mut conn = pool.acquire().await?;
            let target = sqlx::query_as::<_, Target>(GET_TARGET)
                .bind(target_id)
                .fetch_optional(&mut *conn)
                .await?;
            let certificate = sqlx::query_as::<_, Certificate>(GET_CERTIFICATE)
                .bind(certificate_id)
                .fetch_optional(&mut *conn)
                .await?;
            let version = sqlx::query_as::<_, CertificateVersion>(GET_CERTIFICATE_VERSION)
                .bind(version_id)
                .bind(certificate_id)
                .fetch_optional(&mut *conn)
                .await?;
            DeploymentInputs {
                target,
                certificate,
                version,
            }
        }))
    }
}
