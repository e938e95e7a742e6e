-- The job loops claim host deployments first, by type. The planners served
-- that claim from an index ordered by run_at alone and filtered the type,
-- so while a renewal storm waited every deployment claim walked the whole
-- backlog of pending renewals (PostgreSQL chose so even with fresh
-- statistics). This index holds only the pending host deployments; the
-- claim names the type as a literal so it matches.
CREATE INDEX jobs_pending_host_deployments ON jobs (run_at)
    WHERE status = 'pending' AND agent_id = 'host' AND job_type = 'deployment';

-- The reaper fails jobs that waited too long for an agent's CSR or an
-- approval, oldest first. Without this index each tick scanned every job,
-- holding the write lock.
CREATE INDEX jobs_waiting_since ON jobs (status, updated_at)
    WHERE status IN ('awaiting_csr', 'awaiting_approval');
