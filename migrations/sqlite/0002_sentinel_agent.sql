-- The built-in sentinel agent: the host itself. Host-executed jobs carry
-- agent_id = 'host' and targets the host deploys to itself belong to it. It
-- can never be retired (CHECK on agents and refused by the repository).
INSERT INTO agents (id, name, credential_hash, sentinel, status, created_at)
VALUES ('host', 'host (built-in)', NULL, 1, 'active',
        strftime('%Y-%m-%dT%H:%M:%S', 'now') || '.000000Z')
ON CONFLICT (id) DO NOTHING;
