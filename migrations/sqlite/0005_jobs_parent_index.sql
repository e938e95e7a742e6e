-- Child jobs (verifications of a deployment, deployments of an issuance) are
-- looked up by their parent, and the parent's foreign key is checked on
-- every delete or id change of a job: without an index each is a scan of
-- the whole jobs table.
CREATE INDEX jobs_by_parent ON jobs (parent_job_id) WHERE parent_job_id IS NOT NULL;
