-- The renewal sweep reads only certificates that are due *and* have no open
-- issuance/renewal job. Without this the sweep walked every due certificate
-- that already had a job on each pass: in a renewal storm of N certificates
-- each pass cost O(N) index work for nothing. `open_issuance` counts the
-- certificate's open (not completed, not cancelled) issuance and renewal
-- jobs — at most one, by `jobs_one_open_issuance` — and is kept by triggers,
-- so every path that creates, finishes, cancels, retries or deletes a job
-- keeps it right without the code having to remember.
ALTER TABLE certificates ADD COLUMN open_issuance INTEGER NOT NULL DEFAULT 0;
UPDATE certificates SET open_issuance = (
    SELECT COUNT(*) FROM jobs j
    WHERE j.certificate_id = certificates.id AND j.job_type IN ('issuance', 'renewal')
      AND j.status NOT IN ('completed', 'cancelled'));
CREATE INDEX certificates_renewal_ready ON certificates (renew_at)
    WHERE status = 'active' AND open_issuance = 0;

CREATE TRIGGER jobs_open_issuance_insert AFTER INSERT ON jobs
WHEN NEW.job_type IN ('issuance', 'renewal') AND NEW.status NOT IN ('completed', 'cancelled')
BEGIN
    UPDATE certificates SET open_issuance = open_issuance + 1 WHERE id = NEW.certificate_id;
END;

CREATE TRIGGER jobs_open_issuance_update AFTER UPDATE OF status, job_type, certificate_id ON jobs
WHEN (OLD.job_type IN ('issuance', 'renewal') AND OLD.status NOT IN ('completed', 'cancelled'))
  <> (NEW.job_type IN ('issuance', 'renewal') AND NEW.status NOT IN ('completed', 'cancelled'))
  OR OLD.certificate_id IS NOT NEW.certificate_id
BEGIN
    UPDATE certificates SET open_issuance = open_issuance - 1
    WHERE id = OLD.certificate_id
      AND OLD.job_type IN ('issuance', 'renewal') AND OLD.status NOT IN ('completed', 'cancelled');
    UPDATE certificates SET open_issuance = open_issuance + 1
    WHERE id = NEW.certificate_id
      AND NEW.job_type IN ('issuance', 'renewal') AND NEW.status NOT IN ('completed', 'cancelled');
END;

CREATE TRIGGER jobs_open_issuance_delete AFTER DELETE ON jobs
WHEN OLD.job_type IN ('issuance', 'renewal') AND OLD.status NOT IN ('completed', 'cancelled')
BEGIN
    UPDATE certificates SET open_issuance = open_issuance - 1 WHERE id = OLD.certificate_id;
END;
