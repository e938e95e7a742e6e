//! Claim SQL for PostgreSQL. Every claim is ONE statement of the robust
//! form (design.md, "Known pitfalls"):
//!
//! ```sql
//! WITH c AS MATERIALIZED (SELECT id .. ORDER BY .. LIMIT n FOR UPDATE SKIP LOCKED)
//! UPDATE jobs SET .. FROM c WHERE jobs.id = c.id RETURNING jobs.*
//! ```
//!
//! The MATERIALIZED CTE is evaluated once (an `IN (subquery)` may be
//! re-evaluated and flip more rows than the limit); SKIP LOCKED makes
//! concurrent claimants take disjoint rows without waiting. The attempt is
//! counted at claim time. RETURNING order is not guaranteed; callers sort.
//!
//! Parameter conventions (shared with `sqlite/claims.rs`):
//! claims: `$1` lease owner, `$2` lease expiry, `$3` now, `$4` limit,
//! `$5` job type / agent id; backoff: `$base`/`$cap` in seconds (f64).

/// Backoff for a row with `attempts`: now + min(cap, base·2^(attempts-1))
/// ± 10 %.
macro_rules! backoff {
    ($now:literal, $base:literal, $cap:literal) => {
        concat!(
            $now,
            " + make_interval(secs => LEAST(",
            $cap,
            "::float8, ",
            $base,
            "::float8 * power(2, LEAST(GREATEST(attempts, 1), 31) - 1))",
            " * (0.9 + random() * 0.2))"
        )
    };
}

/// A host claim: pending host jobs whose time has come, narrowed by
/// `$type` (nothing, or a type term).
macro_rules! host_claim {
    ($type:literal) => {
        host_claim!($type, "")
    };
    ($type:literal, $except:literal) => {
        concat!(
            "
WITH c AS MATERIALIZED (
    SELECT id FROM jobs
    WHERE status = 'pending' AND agent_id = 'host'",
            $type,
            $except,
            " AND run_at <= $3
    ORDER BY run_at
    LIMIT $4
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs SET status = 'running', attempts = jobs.attempts + 1, lease_owner = $1,
       lease_expires_at = $2, started_at = $3, updated_at = $3
FROM c WHERE jobs.id = c.id
RETURNING jobs.*"
        )
    };
}

/// Host queue, any type.
pub(crate) const CLAIM_HOST: &str = host_claim!("");

/// Host queue, one type (`$5`).
pub(crate) const CLAIM_HOST_TYPED: &str = host_claim!(" AND job_type = $5");

/// Host queue, deployments only (claimed before everything else): the
/// type is a literal so the partial index `jobs_pending_host_deployments`
/// matches. With `job_type = $5` the planner walks the host queue by
/// `run_at` and filters the type, through every pending renewal of a storm,
/// even with fresh statistics (most finished jobs are deployments).
pub(crate) const CLAIM_HOST_DEPLOYMENTS: &str = host_claim!(" AND job_type = 'deployment'");

/// [`CLAIM_HOST`] without the deployments to the targets in the JSON
/// array `$5` (targets with no room for more in this process).
pub(crate) const CLAIM_HOST_EXCEPT: &str = host_claim!(
    "",
    " AND NOT (job_type = 'deployment' AND COALESCE(target_id, '') = ANY(ARRAY(SELECT json_array_elements_text($5::json))))"
);

/// [`CLAIM_HOST_DEPLOYMENTS`] without the targets in the JSON array `$5`.
pub(crate) const CLAIM_HOST_DEPLOYMENTS_EXCEPT: &str = host_claim!(
    " AND job_type = 'deployment'",
    " AND NOT (COALESCE(target_id, '') = ANY(ARRAY(SELECT json_array_elements_text($5::json))))"
);

/// Agent `$5`: direct `agent_id` match, or target→agent for rows without
/// `agent_id`; never for a retired agent or a retired target.
pub(crate) const CLAIM_AGENT: &str = "
WITH c AS MATERIALIZED (
    SELECT j.id FROM jobs j LEFT JOIN targets t ON t.id = j.target_id
    WHERE j.status = 'pending' AND j.run_at <= $3
      AND (j.agent_id = $5 OR (j.agent_id IS NULL AND t.agent_id = $5))
      AND t.retired_at IS NULL
      AND EXISTS (SELECT 1 FROM agents a WHERE a.id = $5 AND a.status = 'active')
    ORDER BY j.run_at
    LIMIT $4
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE jobs SET status = 'running', attempts = jobs.attempts + 1, lease_owner = $1,
       lease_expires_at = $2, started_at = $3, updated_at = $3
FROM c WHERE jobs.id = c.id
RETURNING jobs.*";

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
WITH c AS MATERIALIZED (
    SELECT id FROM jobs WHERE status = 'polling' AND next_poll_at <= $3
    ORDER BY next_poll_at
    LIMIT $4
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs SET status = 'running', lease_owner = $1, lease_expires_at = $2,
       started_at = $3, updated_at = $3
FROM c WHERE jobs.id = c.id
RETURNING jobs.*";

/// Reaper: Running jobs whose lease expired before `$1` → Failed with
/// backoff; at most `$2` rows. `$3` base, `$4` cap.
pub(crate) const REAP_EXPIRED: &str = concat!(
    "
WITH c AS MATERIALIZED (
    SELECT id FROM jobs WHERE status = 'running' AND lease_expires_at < $1
    ORDER BY lease_expires_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs SET status = 'failed',
       last_error = 'lease expired (held by ' || COALESCE(jobs.lease_owner, '?') || ')',
       lease_expires_at = NULL, finished_at = $1, updated_at = $1,
       run_at = ",
    backoff!("$1", "$3", "$4"),
    "
FROM c WHERE jobs.id = c.id
RETURNING jobs.*"
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
WITH c AS MATERIALIZED (
    SELECT id FROM jobs
    WHERE status = 'failed' AND attempts < max_attempts AND run_at <= $1
    ORDER BY run_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,
       finished_at = NULL, updated_at = $1
FROM c WHERE jobs.id = c.id";

/// Set-based renewal enqueue: one issuance (never issued) or renewal job for
/// every active certificate with `renew_at <= $1` and no open
/// issuance/renewal job; `$2` max attempts, `$3` limit, `$4` now in Unix
/// milliseconds (job ids are UUIDv7: a random UUID's first 15 characters
/// replaced by the time and the version). Concurrent callers
/// collide on the partial unique index `jobs_one_open_issuance`, and ON
/// CONFLICT DO NOTHING turns that into a no-op. "No open job" is the
/// trigger-kept `open_issuance = 0` alone (the storm tests check it against
/// the jobs through every path): a `NOT EXISTS` probe of `jobs` beside it
/// was planned, while `jobs` had no statistics, as a scan of every open job
/// for each certificate (2.9 s for one pass of 5,400 in the issuance bench).
pub(crate) const ENQUEUE_RENEWALS: &str = "
INSERT INTO jobs (id, job_type, status, certificate_id, agent_id, attempts, max_attempts,
                  run_at, created_at, updated_at)
SELECT overlay(gen_random_uuid()::text
               placing lpad(to_hex($4::bigint >> 16), 8, '0') || '-'
                       || lpad(to_hex($4::bigint & 65535), 4, '0') || '-7'
               from 1 for 15),
       CASE WHEN c.current_version_id IS NULL THEN 'issuance' ELSE 'renewal' END,
       CASE WHEN c.key_source = 'agent' THEN 'awaiting_csr' ELSE 'pending' END,
       c.id, 'host', 0, $2, $1, $1, $1
FROM certificates c
WHERE c.status = 'active' AND c.open_issuance = 0 AND c.renew_at <= $1
ORDER BY c.renew_at
LIMIT $3
ON CONFLICT DO NOTHING";

/// Notifications: pending, due → Sending, attempt counted.
pub(crate) const CLAIM_NOTIFICATIONS: &str = "
WITH c AS MATERIALIZED (
    SELECT id FROM notifications WHERE status = 'pending' AND run_at <= $3
    ORDER BY run_at
    LIMIT $4
    FOR UPDATE SKIP LOCKED
)
UPDATE notifications SET status = 'sending', attempts = notifications.attempts + 1,
       lease_owner = $1, lease_expires_at = $2, updated_at = $3
FROM c WHERE notifications.id = c.id
RETURNING notifications.*";

/// One notifier's queue (`$5`): its pending, due notifications → Sending,
/// attempt counted, leased until `$2`; none while the notifier is disabled
/// (they wait for it to be enabled or for the operator to cancel them).
pub(crate) const CLAIM_NOTIFIER_NOTIFICATIONS: &str = "
WITH c AS MATERIALIZED (
    SELECT id FROM notifications
    WHERE notifier_id = $5 AND status = 'pending' AND run_at <= $3
      AND EXISTS (SELECT 1 FROM notifiers WHERE id = $5 AND disabled_at IS NULL)
    ORDER BY run_at
    LIMIT $4
    FOR UPDATE SKIP LOCKED
)
UPDATE notifications SET status = 'sending', attempts = notifications.attempts + 1,
       lease_owner = $1, lease_expires_at = $2, updated_at = $3
FROM c WHERE notifications.id = c.id
RETURNING notifications.*";

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
WITH c AS MATERIALIZED (
    SELECT id FROM notifications WHERE status = 'sending' AND lease_expires_at < $1
    ORDER BY lease_expires_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE notifications SET
       status = CASE WHEN notifications.cancel_requested_at IS NOT NULL THEN 'cancelled'
                     WHEN notifications.attempts >= notifications.max_attempts
                     THEN 'failed' ELSE 'pending' END,
       last_error = 'lease expired (held by ' || COALESCE(notifications.lease_owner, '?') || ')',
       lease_expires_at = NULL, updated_at = $1,
       run_at = ",
    backoff!("$1", "$3", "$4"),
    "
FROM c WHERE notifications.id = c.id"
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
