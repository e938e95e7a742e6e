-- The renewal sweep reads only certificates that are due *and* have no open
-- issuance/renewal job. Without this the sweep walked every due certificate
-- that already had a job on each pass: in a renewal storm of N certificates
-- each pass cost O(N) index work for nothing. `open_issuance` counts the
-- certificate's open (not completed, not cancelled) issuance and renewal
-- jobs — at most one, by `jobs_one_open_issuance` — and is kept by a
-- trigger, so every path that creates, finishes, cancels, retries or
-- deletes a job keeps it right without the code having to remember.
ALTER TABLE certificates ADD COLUMN open_issuance BIGINT NOT NULL DEFAULT 0;
UPDATE certificates SET open_issuance = (
    SELECT COUNT(*) FROM jobs j
    WHERE j.certificate_id = certificates.id AND j.job_type IN ('issuance', 'renewal')
      AND j.status NOT IN ('completed', 'cancelled'));
CREATE INDEX certificates_renewal_ready ON certificates (renew_at)
    WHERE status = 'active' AND open_issuance = 0;

CREATE FUNCTION certplane_jobs_open_issuance() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    was_open BOOLEAN := FALSE;
    is_open BOOLEAN := FALSE;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        was_open := OLD.job_type IN ('issuance', 'renewal')
                    AND OLD.status NOT IN ('completed', 'cancelled');
    END IF;
    IF TG_OP <> 'DELETE' THEN
        is_open := NEW.job_type IN ('issuance', 'renewal')
                   AND NEW.status NOT IN ('completed', 'cancelled');
    END IF;
    IF was_open AND (NOT is_open OR OLD.certificate_id IS DISTINCT FROM NEW.certificate_id) THEN
        UPDATE certificates SET open_issuance = open_issuance - 1 WHERE id = OLD.certificate_id;
    END IF;
    IF is_open AND (NOT was_open OR OLD.certificate_id IS DISTINCT FROM NEW.certificate_id) THEN
        UPDATE certificates SET open_issuance = open_issuance + 1 WHERE id = NEW.certificate_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_open_issuance
AFTER INSERT OR DELETE OR UPDATE OF status, job_type, certificate_id ON jobs
FOR EACH ROW EXECUTE FUNCTION certplane_jobs_open_issuance();
