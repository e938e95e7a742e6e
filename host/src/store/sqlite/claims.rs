//! Claim SQL for SQLite. Every claim is ONE write statement
//! (`UPDATE .. WHERE id IN (SELECT .. LIMIT n) RETURNING *`): SQLite runs it
//! under the database write lock, so concurrent claimants (threads or
//! processes) always see disjoint rows. RETURNING order is not guaranteed;
//! callers sort. Timestamps are bound as fixed-width text (`codec::DbTime`).
//!
//! Parameter conventions (shared with `postgres/claims.rs`):
//! claims: `$1` lease owner, `$2` lease expiry, `$3` now, `$4` limit,
//! `$5` job type / agent id; backoff: `$base`/`$cap` in seconds (f64).

/// Backoff for a row with `attempts`: now + min(cap, base·2^(attempts-1))
/// ± 10 %, in the fixed text format. SQLite date functions work in whole
/// milliseconds (and round), so a zero delay returns `now` itself instead
/// of a value that may round up past it. `random() % n` (not `abs(random())`,
/// which overflows on i64::MIN) gives the jitter.
macro_rules! backoff {
    ($now:literal, $base:literal, $cap:literal) => {
        concat!(
            "CASE WHEN MIN(",
            $cap,
            ", ",
            $base,
            ") <= 0 THEN ",
            $now,
            " ELSE strftime('%Y-%m-%dT%H:%M:%f', ",
            $now,
            ", '+' || CAST(MIN(",
            $cap,
            ", ",
            $base,
            " * (1 << (MIN(MAX(attempts, 1), 31) - 1))) * (1.0 + (random() % 1001) / 10000.0)",
            " AS TEXT) || ' seconds') || '000Z' END"
        )
    };
}

/// A host claim: pending host jobs whose time has come, read from `$from`
/// (the table, with the index to use) and narrowed by `$type` (nothing,
/// or a type term).
macro_rules! host_claim {
    ($from:literal, $type:literal) => {
        host_claim!($from, $type, "")
    };
    ($from:literal, $type:literal, $except:literal) => {
        concat!(
            "
UPDATE jobs SET status = 'running', attempts = attempts + 1, lease_owner = $1,
       lease_expires_at = $2, started_at = $3, updated_at = $3
WHERE id IN (SELECT id FROM ",
            $from,
            "
             WHERE status = 'pending' AND agent_id = 'host'",
            $type,
            $except,
            " AND run_at <= $3
             ORDER BY run_at LIMIT $4)
RETURNING *"
        )
    };
}

/// Host queue, any type.
pub(crate) const CLAIM_HOST: &str = host_claim!("jobs", "");

/// Host queue, one type (`$5`). `INDEXED BY`: left to itself the planner
/// walks the host queue by `run_at` and filters the type, every row of
/// other types queued before the first match.
pub(crate) const CLAIM_HOST_TYPED: &str = host_claim!(
    "jobs INDEXED BY jobs_pending_host_by_type",
    " AND job_type = $5"
);

/// Host queue, deployments only (claimed before everything else, so the
/// hottest typed claim): the type is a literal to match the partial index
/// `jobs_pending_host_deployments`, named so a renewal backlog is never
/// walked.
pub(crate) const CLAIM_HOST_DEPLOYMENTS: &str = host_claim!(
    "jobs INDEXED BY jobs_pending_host_deployments",
    " AND job_type = 'deployment'"
);

/// [`CLAIM_HOST`] without the deployments to the targets in the JSON
/// array `$5` (targets with no room for more in this process).
pub(crate) const CLAIM_HOST_EXCEPT: &str = host_claim!(
    "jobs",
    "",
    " AND NOT (job_type = 'deployment' AND COALESCE(target_id, '') IN (SELECT value FROM json_each($5)))"
);

/// [`CLAIM_HOST_DEPLOYMENTS`] without the targets in the JSON array `$5`.
pub(crate) const CLAIM_HOST_DEPLOYMENTS_EXCEPT: &str = host_claim!(
    "jobs INDEXED BY jobs_pending_host_deployments",
    " AND job_type = 'deployment'",
    " AND COALESCE(target_id, '') NOT IN (SELECT value FROM json_each($5))"
);

/// Agent `$5`: direct `agent_id` match, or target→agent for rows without
/// `agent_id`; never for a retired agent or a retired target.
pub(crate) const CLAIM_AGENT: &str = "
UPDATE jobs SET status = 'running', attempts = attempts + 1, lease_owner = $1,
       lease_expires_at = $2, started_at = $3, updated_at = $3
WHERE id IN (SELECT j.id FROM jobs j LEFT JOIN targets t ON t.id = j.target_id
             WHERE j.status = 'pending' AND j.run_at <= $3
               AND (j.agent_id = $5 OR (j.agent_id IS NULL AND t.agent_id = $5))
               AND t.retired_at IS NULL
               AND EXISTS (SELECT 1 FROM agents a WHERE a.id = $5 AND a.status = 'active')
             ORDER BY j.run_at LIMIT $4)
RETURNING *";

/// AwaitingCSR jobs of agent `$1`, reached through certificate → target →
/// agent; read in place (not claimed).
pub(crate) const AWAITING_CSR_FOR_AGENT: &str = "
SELECT j.* FROM jobs j
JOIN certificates c ON c.id = j.certificate_id
JOIN targets t ON t.id = c.target_id
JOIN agents a ON a.id = t.agent_id
WHERE j.status = 'awaiting_csr' AND t.agent_id = $1 AND t.retired_at IS NULL
  AND a.status = 'active'
ORDER BY j.created_at, j.id
LIMIT $2";

/// Polling jobs due (`next_poll_at <= $3`) → Running with a lease; a poll
/// does not count as an attempt.
pub(crate) const CLAIM_DUE_POLLS: &str = "
UPDATE jobs SET status = 'running', lease_owner = $1, lease_expires_at = $2,
       started_at = $3, updated_at = $3
WHERE id IN (SELECT id FROM jobs WHERE status = 'polling' AND next_poll_at <= $3
             ORDER BY next_poll_at LIMIT $4)
RETURNING *";

/// Reaper: Running jobs whose lease expired before `$1` → Failed with
/// backoff; at most `$2` rows. `$3` base, `$4` cap.
pub(crate) const REAP_EXPIRED: &str = concat!(
    "
UPDATE jobs SET status = 'failed',
       last_error = 'lease expired (held by ' || COALESCE(lease_owner, '?') || ')',
       lease_expires_at = NULL, finished_at = $1, updated_at = $1,
       run_at = ",
    backoff!("$1", "$3", "$4"),
    "
WHERE id IN (SELECT id FROM jobs WHERE status = 'running' AND lease_expires_at < $1
             ORDER BY lease_expires_at LIMIT $2)
RETURNING *"
);

/// Start-up reclaim: Running jobs leased to this host instance (`$2`),
/// which only a previous run of the same instance can have claimed → Failed
/// with backoff, as [`REAP_EXPIRED`] does once their leases lapse. `$1` now,
/// `$3` base, `$4` cap.
pub(crate) const REAP_OWN: &str = concat!(
    "
UPDATE jobs SET status = 'failed',
       last_error = 'lease held by a previous run of this host (' || lease_owner || ') taken back at start',
       lease_expires_at = NULL, finished_at = $1, updated_at = $1,
       run_at = ",
    backoff!("$1", "$3", "$4"),
    "
WHERE status = 'running' AND lease_owner = $2
RETURNING *"
);

/// Fail a claimed job: `$1` id, `$2` owner, `$3` attempt, `$4` now, `$5`
/// error, `$6` base, `$7` cap, `$8` permanent (bool), `$9` retry-at override
/// (nullable).
pub(crate) const FAIL_JOB: &str = concat!(
    "
UPDATE jobs SET status = 'failed', last_error = $5, lease_expires_at = NULL,
       finished_at = $4, updated_at = $4,
       max_attempts = CASE WHEN $8 THEN attempts ELSE max_attempts END,
       run_at = COALESCE($9, ",
    backoff!("$4", "$6", "$7"),
    ")
WHERE id = $1 AND status = 'running' AND lease_owner = $2 AND attempts = $3
RETURNING *"
);

/// Retry: Failed jobs below their budget whose `run_at <= $1` → Pending;
/// at most `$2`.
pub(crate) const RETRY_FAILED: &str = "
UPDATE jobs SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,
       finished_at = NULL, updated_at = $1
WHERE id IN (SELECT id FROM jobs
             WHERE status = 'failed' AND attempts < max_attempts AND run_at <= $1
             ORDER BY run_at LIMIT $2)";

/// Set-based renewal enqueue: one issuance (never issued) or renewal job for
/// every active certificate with `renew_at <= $1` and no open
/// issuance/renewal job; `$2` max attempts, `$3` limit, `$4` now in Unix
/// milliseconds (the job ids are UUIDv7, like every id the host makes: the
/// time in the first 48 bits, random bits after). The partial unique
/// index `jobs_one_open_issuance` makes concurrent callers harmless. Reads
/// only `certificates_renewal_ready` (due, no open job: the trigger-kept
/// `open_issuance`, with no second probe of `jobs`, as on PostgreSQL), so a
/// pass costs what it creates, not the backlog.
pub(crate) const ENQUEUE_RENEWALS: &str = "
INSERT INTO jobs (id, job_type, status, certificate_id, agent_id, attempts, max_attempts,
                  run_at, created_at, updated_at)
SELECT lower(printf('%08x', $4 >> 16) || '-' || printf('%04x', $4 & 65535) || '-7' ||
             substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + (random() & 3), 1) ||
             substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6))),
       CASE WHEN c.current_version_id IS NULL THEN 'issuance' ELSE 'renewal' END,
       CASE WHEN c.key_source = 'agent' THEN 'awaiting_csr' ELSE 'pending' END,
       c.id, 'host', 0, $2, $1, $1, $1
FROM certificates c INDEXED BY certificates_renewal_ready
WHERE c.status = 'active' AND c.open_issuance = 0 AND c.renew_at <= $1
ORDER BY c.renew_at
LIMIT $3
ON CONFLICT DO NOTHING";

/// Notifications: pending, due → Sending, attempt counted.
pub(crate) const CLAIM_NOTIFICATIONS: &str = "
UPDATE notifications SET status = 'sending', attempts = attempts + 1, lease_owner = $1,
       lease_expires_at = $2, updated_at = $3
WHERE id IN (SELECT id FROM notifications WHERE status = 'pending' AND run_at <= $3
             ORDER BY run_at LIMIT $4)
RETURNING *";

/// One notifier's queue (`$5`): its pending, due notifications → Sending,
/// attempt counted, leased until `$2`; none while the notifier is disabled
/// (they wait for it to be enabled or for the operator to cancel them).
pub(crate) const CLAIM_NOTIFIER_NOTIFICATIONS: &str = "
UPDATE notifications SET status = 'sending', attempts = attempts + 1, lease_owner = $1,
       lease_expires_at = $2, updated_at = $3
WHERE id IN (SELECT id FROM notifications
             WHERE notifier_id = $5 AND status = 'pending' AND run_at <= $3
               AND EXISTS (SELECT 1 FROM notifiers WHERE id = $5 AND disabled_at IS NULL)
             ORDER BY run_at LIMIT $4)
RETURNING *";

/// Failed delivery: `$1` id, `$2` owner, `$3` attempt, `$4` now, `$5` error,
/// `$6` base, `$7` cap, `$8` permanent. Back to pending with backoff while
/// the budget lasts, else failed; cancelled if an operator cancelled it while
/// it was being sent.
pub(crate) const FAIL_NOTIFICATION: &str = concat!(
    "
UPDATE notifications SET
       status = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled'
                     WHEN $8 OR attempts >= max_attempts THEN 'failed' ELSE 'pending' END,
       last_error = $5, lease_expires_at = NULL, updated_at = $4,
       run_at = COALESCE($9, ",
    backoff!("$4", "$6", "$7"),
    ")
WHERE id = $1 AND status = 'sending' AND lease_owner = $2 AND attempts = $3"
);

/// Notification reaper: Sending with an expired lease (`< $1`) → pending
/// with backoff (or failed when out of budget); at most `$2`; `$3` base,
/// `$4` cap.
pub(crate) const REAP_NOTIFICATIONS: &str = concat!(
    "
UPDATE notifications SET
       status = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled'
                     WHEN attempts >= max_attempts THEN 'failed' ELSE 'pending' END,
       last_error = 'lease expired (held by ' || COALESCE(lease_owner, '?') || ')',
       lease_expires_at = NULL, updated_at = $1,
       run_at = ",
    backoff!("$1", "$3", "$4"),
    "
WHERE id IN (SELECT id FROM notifications WHERE status = 'sending' AND lease_expires_at < $1
             ORDER BY lease_expires_at LIMIT $2)"
);

/// Start-up reclaim of notifications: Sending rows leased to this host
/// instance (`$2`) → pending with backoff (failed when out of budget), as
/// [`REAP_NOTIFICATIONS`] does once their leases lapse; returns their ids.
/// `$1` now, `$3` base, `$4` cap.
pub(crate) const REAP_OWN_NOTIFICATIONS: &str = concat!(
    "
UPDATE notifications SET
       status = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled'
                     WHEN attempts >= max_attempts THEN 'failed' ELSE 'pending' END,
       last_error = 'lease held by a previous run of this host (' || lease_owner || ') taken back at start',
       lease_expires_at = NULL, updated_at = $1,
       run_at = ",
    backoff!("$1", "$3", "$4"),
    "
WHERE status = 'sending' AND lease_owner = $2
RETURNING id"
);
