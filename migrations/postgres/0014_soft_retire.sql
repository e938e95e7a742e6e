-- Every DELETE of the API retires (issue 14): the row stays readable with
-- `retired_at` set, so a repeated DELETE, an audit trail and the versions a
-- retired issuer signed keep pointing at something. Issuers, notifiers and
-- dns-solvers were hard-deleted before; certificates had a `retired` status
-- but no time.
ALTER TABLE issuers ADD COLUMN retired_at TIMESTAMPTZ;
ALTER TABLE notifiers ADD COLUMN retired_at TIMESTAMPTZ;
ALTER TABLE dns_solvers ADD COLUMN retired_at TIMESTAMPTZ;
ALTER TABLE certificates ADD COLUMN retired_at TIMESTAMPTZ;
UPDATE certificates SET retired_at = updated_at WHERE status = 'retired';

-- Why a certificate the host disabled by itself is disabled (its key-holding
-- agent was retired): the operator reads it in GET, and the renewal sweep
-- skips the certificate instead of creating CSR jobs nobody can answer.
ALTER TABLE certificates ADD COLUMN disabled_reason TEXT;
