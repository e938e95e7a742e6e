-- A job records at most one certificate version: an issuance re-run after a
-- crash can never add a second version for the same job.
CREATE UNIQUE INDEX certificate_versions_one_per_job ON certificate_versions (job_id)
    WHERE job_id IS NOT NULL;
