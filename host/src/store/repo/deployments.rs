//! Where a certificate goes: the query for the live targets it must be
//! deployed to (read with a job's inputs, `job_inputs.rs`).

/// The live targets a certificate (`$1`) deploys to: its key-holding target
/// and its extra targets, by name.
pub(crate) const DEPLOYMENT_TARGETS: &str = "SELECT t.* FROM targets t
 WHERE t.retired_at IS NULL
   AND (t.id IN (SELECT ct.target_id FROM certificate_targets ct
                 WHERE ct.certificate_id = $1)
        OR t.id = (SELECT c.target_id FROM certificates c WHERE c.id = $1))
 ORDER BY t.name, t.id";
