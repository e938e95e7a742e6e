-- Facts every replica sharing this database must agree on, one row each:
--   'secrets.check'     a value sealed with the secrets key the database was
--                       set up with; a host whose key cannot open it refuses
--                       to start (its connector secrets would not open).
--   'bootstrap-admin'   claimed (INSERT .. ON CONFLICT DO NOTHING) by the one
--                       host that creates and prints the first admin key.
CREATE TABLE host_meta (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
