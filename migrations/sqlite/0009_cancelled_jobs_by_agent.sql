-- A heartbeat tells an agent which of its jobs were cancelled lately (so a
-- job it runs stops): found by agent and finish time, without a scan.
CREATE INDEX jobs_cancelled_by_agent ON jobs (agent_id, finished_at)
    WHERE status = 'cancelled';
