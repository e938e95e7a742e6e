-- API keys become a resource of the API (list, show, create, revoke).
-- `revoked_at` and `last_used_at` exist since 0001; revoking is soft, so a
-- revoked key stays listed. `key_prefix` (`cpk_` and the next four
-- characters) lets an operator tell which row is the key they hold without
-- the secret ever being shown again; `created_by` is the audit actor that
-- created it through the API. Both stay NULL for older keys and for keys
-- made by `certplane apikey create` or the bootstrap. Lists are paged
-- newest first.
ALTER TABLE api_keys ADD COLUMN key_prefix TEXT;
ALTER TABLE api_keys ADD COLUMN created_by TEXT;
CREATE INDEX api_keys_created ON api_keys (created_at, id);
