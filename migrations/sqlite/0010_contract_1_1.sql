-- Contract 1.1: what the host keeps for connectors beyond 1.0.

-- The CA's own ids of an issued certificate: revocation at a CA that
-- revokes by its id (DigiCert, Sectigo) needs them, and a renewal hands
-- them to the issuer as the predecessor.
ALTER TABLE certificate_versions ADD COLUMN ca_certificate_id TEXT;
ALTER TABLE certificate_versions ADD COLUMN ca_order_id TEXT;

-- Per-certificate options passed to the issuer (context.options) and to
-- every target (deploy/remove options): JSON objects.
ALTER TABLE certificates ADD COLUMN issuer_options TEXT NOT NULL DEFAULT '{}';
ALTER TABLE certificates ADD COLUMN target_options TEXT NOT NULL DEFAULT '{}';

-- ACME renewal information (RFC 9773) through the issuer-lifecycle export:
-- when the host asks the CA for a renewal window next.
ALTER TABLE certificates ADD COLUMN renewal_info_at TEXT;

-- The `store` import: a small key-value space per connector instance,
-- values sealed by the host for the owner `store/<instance>/<key>`.
CREATE TABLE plugin_store (
    instance_id  TEXT NOT NULL,
    key          TEXT NOT NULL,
    sealed_value TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (instance_id, key)
);

-- dns-solver connector instances (issuers route dns-01 challenges of a
-- zone to one of them).
CREATE TABLE dns_solvers (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    plugin_name       TEXT NOT NULL,
    plugin_version    TEXT NOT NULL,
    settings          TEXT NOT NULL DEFAULT '{}',
    encrypted_secrets BLOB,
    grants            TEXT NOT NULL DEFAULT '{}',
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    disabled_at       TEXT
);

-- One row per challenge an issuer presented during a job. `route` says who
-- publishes it: 'host' (the host's http-01 responder) or 'dns:<solver id>'.
-- state: pending (to publish or being checked) -> ready | failed;
-- withdrawing (to unpublish) -> withdrawn.
CREATE TABLE challenges (
    job_id        TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    challenge_id  TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('http-01', 'dns-01')),
    identifier    TEXT NOT NULL,
    name          TEXT NOT NULL,
    value         TEXT NOT NULL,
    route         TEXT NOT NULL,
    zone          TEXT,
    state         TEXT NOT NULL CHECK (state IN
                      ('pending', 'ready', 'failed', 'withdrawing', 'withdrawn')),
    message       TEXT,
    published     BOOLEAN NOT NULL DEFAULT FALSE,
    checks        INTEGER NOT NULL DEFAULT 0,
    next_check_at TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    PRIMARY KEY (job_id, challenge_id)
);
-- The responder finds a token without a scan; only live challenges answer.
CREATE INDEX challenges_http_tokens ON challenges (name)
    WHERE kind = 'http-01' AND state IN ('pending', 'ready');
-- Live challenges, so withdrawing those of ended jobs (every publisher
-- tick) reads only them, however long the history of withdrawn rows.
CREATE INDEX challenges_live ON challenges (job_id)
    WHERE state IN ('pending', 'ready', 'failed');
-- The publisher's work: challenges to publish, check or withdraw.
CREATE INDEX challenges_work ON challenges (next_check_at)
    WHERE state IN ('pending', 'withdrawing');
