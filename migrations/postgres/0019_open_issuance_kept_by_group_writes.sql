-- A group of job outcomes written set by set (host/src/store/postgres/
-- outcome_batch.rs) keeps `open_issuance` itself for the issuances its job
-- UPDATEs close: it takes the 1 off in the UPDATE of the certificate that
-- the completion writes anyway, one new row version of the certificate
-- instead of two. The trigger's own UPDATE per completed issuance was the
-- largest single cost after the group's job UPDATE itself (639 ms of 8.8 s
-- of statement time per 10,000 issuances; BENCHMARKS.md, issue 13).
-- The group writer says so for the span of those job UPDATEs alone, with
-- the transaction-local setting `certplane.open_issuance = 'kept'`, and
-- unsets it after them; every other statement runs with it unset, and
-- there the trigger keeps the counter as before. The conditions of 0017
-- are unchanged.
DROP TRIGGER jobs_open_issuance_update ON jobs;

CREATE TRIGGER jobs_open_issuance_update
AFTER UPDATE OF status, job_type, certificate_id ON jobs
FOR EACH ROW
WHEN (((OLD.job_type IN ('issuance', 'renewal') AND OLD.status NOT IN ('completed', 'cancelled'))
       IS DISTINCT FROM
       (NEW.job_type IN ('issuance', 'renewal') AND NEW.status NOT IN ('completed', 'cancelled'))
       OR OLD.certificate_id IS DISTINCT FROM NEW.certificate_id)
      AND current_setting('certplane.open_issuance', true) IS DISTINCT FROM 'kept')
EXECUTE FUNCTION certplane_jobs_open_issuance();
