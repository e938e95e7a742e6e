-- `jobs_open_issuance` (0012) ran its PL/pgSQL function after every status
-- change of every job: each claim, each deployment, each completion. Only a
-- job that opens or closes an issuance (or moves one to another
-- certificate) changes `open_issuance`; the conditions below, the ones the
-- SQLite triggers of 0012 carry, are evaluated before any function call or
-- queued trigger event, so the other status changes cost nothing here.
-- The function itself is unchanged.
DROP TRIGGER jobs_open_issuance ON jobs;

CREATE TRIGGER jobs_open_issuance_insert
AFTER INSERT ON jobs
FOR EACH ROW
WHEN (NEW.job_type IN ('issuance', 'renewal') AND NEW.status NOT IN ('completed', 'cancelled'))
EXECUTE FUNCTION certplane_jobs_open_issuance();

CREATE TRIGGER jobs_open_issuance_update
AFTER UPDATE OF status, job_type, certificate_id ON jobs
FOR EACH ROW
WHEN ((OLD.job_type IN ('issuance', 'renewal') AND OLD.status NOT IN ('completed', 'cancelled'))
      IS DISTINCT FROM
      (NEW.job_type IN ('issuance', 'renewal') AND NEW.status NOT IN ('completed', 'cancelled'))
   OR OLD.certificate_id IS DISTINCT FROM NEW.certificate_id)
EXECUTE FUNCTION certplane_jobs_open_issuance();

CREATE TRIGGER jobs_open_issuance_delete
AFTER DELETE ON jobs
FOR EACH ROW
WHEN (OLD.job_type IN ('issuance', 'renewal') AND OLD.status NOT IN ('completed', 'cancelled'))
EXECUTE FUNCTION certplane_jobs_open_issuance();
