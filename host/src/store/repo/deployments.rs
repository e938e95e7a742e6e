//! Where a certificate goes: the live targets it must be deployed to.

use crate::store::{Store, StoreResult, Target, on_read};

impl Store {
    /// The live (not retired) targets of a certificate: its key-holding
    /// target and every target linked through `certificate_targets`, each
    /// once, by name.
    pub async fn deployment_targets(&self, certificate_id: &str) -> StoreResult<Vec<Target>> {
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, Target>(DEPLOYMENT_TARGETS)
                .bind(certificate_id)
                .fetch_all(pool)
                .await?
        }))
    }
}

/// The live targets a certificate (`$1`) deploys to: its key-holding target
/// and its extra targets, by name.
pub(crate) const DEPLOYMENT_TARGETS: &str = "SELECT t.* FROM targets t
 WHERE t.retired_at IS NULL
   AND (t.id IN (SELECT ct.target_id FROM certificate_targets ct
                 WHERE ct.certificate_id = $1)
        OR t.id = (SELECT c.target_id FROM certificates c WHERE c.id = $1))
 ORDER BY t.name, t.id";
