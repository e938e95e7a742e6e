//! Domain-validation challenges an issuer presented during a job (contract
//! 1.1 `challenges`), and the small per-instance key-value store (`store`).
//!
//! A challenge row lives from `present` until the publisher withdrew it:
//! `pending` (to publish, then to check) → `ready` | `failed`, and once the
//! job ends (or the connector withdraws it) `withdrawing` → `withdrawn`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::store::codec::{now, ts};
use crate::store::repo::sql_limit;
use crate::store::{BeginWrite, Store, StoreResult, on_read, on_write};

/// One challenge as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ChallengeRow {
    /// The job that presented it.
    pub job_id: String,
    /// The connector's id, unique within the job.
    pub challenge_id: String,
    /// `http-01` or `dns-01`.
    pub kind: String,
    /// The DNS name being validated.
    pub identifier: String,
    /// http-01: the token; dns-01: the record name.
    pub name: String,
    /// http-01: the key authorization; dns-01: the TXT value.
    pub value: String,
    /// Who publishes it: `host`, or `dns:<dns-solver id>`.
    pub route: String,
    /// dns-01: the zone the solver is configured for.
    pub zone: Option<String>,
    /// `pending`, `ready`, `failed`, `withdrawing`, `withdrawn`.
    pub state: String,
    /// Why it failed, or what the last check saw.
    pub message: Option<String>,
    /// Whether it has been published (a solver called).
    pub published: bool,
    /// Visibility checks so far.
    pub checks: i32,
    /// When the publisher looks at it next.
    pub next_check_at: DateTime<Utc>,
    /// When it was presented.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A challenge to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewChallenge {
    /// The connector's id.
    pub challenge_id: String,
    /// `http-01` or `dns-01`.
    pub kind: String,
    /// The DNS name being validated.
    pub identifier: String,
    /// Token or record name.
    pub name: String,
    /// Key authorization or TXT value.
    pub value: String,
    /// `host` or `dns:<solver id>`.
    pub route: String,
    /// dns-01 zone.
    pub zone: Option<String>,
}

/// A change of a challenge's publication state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeProgress {
    /// New state.
    pub state: &'static str,
    /// Message to keep (replaces the old one).
    pub message: Option<String>,
    /// Published by now.
    pub published: bool,
    /// Checks so far.
    pub checks: i32,
    /// Next look.
    pub next_check_at: DateTime<Utc>,
}

impl Store {
    /// Records the challenges a call presented for `job_id`. A challenge id
    /// the job already has is kept as it is (a retried call presenting the
    /// same challenge again changes nothing).
    pub async fn insert_challenges(&self, job_id: &str, new: &[NewChallenge]) -> StoreResult<()> {
        if new.is_empty() {
            return Ok(());
        }
        let now = now();
        on_write!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            for c in new {
                sqlx::query(
                    "INSERT INTO challenges (job_id, challenge_id, kind, identifier, name, value,
                         route, zone, state, published, checks, next_check_at, created_at,
                         updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', FALSE, 0, $9, $9, $9)
                     ON CONFLICT (job_id, challenge_id) DO NOTHING",
                )
                .bind(job_id)
                .bind(&c.challenge_id)
                .bind(&c.kind)
                .bind(&c.identifier)
                .bind(&c.name)
                .bind(&c.value)
                .bind(&c.route)
                .bind(c.zone.clone())
                .bind(ts(now))
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Every challenge of a job.
    pub async fn job_challenges(&self, job_id: &str) -> StoreResult<Vec<ChallengeRow>> {
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, ChallengeRow>(
                "SELECT * FROM challenges WHERE job_id = $1 ORDER BY created_at, challenge_id",
            )
            .bind(job_id)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Marks challenges of a job to be withdrawn (the connector asked).
    pub async fn withdraw_challenges(&self, job_id: &str, ids: &[String]) -> StoreResult<u64> {
        let now = now();
        let mut n = 0;
        on_write!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            for id in ids {
                n += sqlx::query(
                    "UPDATE challenges SET state = 'withdrawing', next_check_at = $3,
                            updated_at = $3
                     WHERE job_id = $1 AND challenge_id = $2
                       AND state IN ('pending', 'ready', 'failed')",
                )
                .bind(job_id)
                .bind(id)
                .bind(ts(now))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
            tx.commit().await?;
            Ok::<_, crate::store::StoreError>(())
        })?;
        Ok(n)
    }

    /// Marks for withdrawal every live challenge of a job that has ended:
    /// completed, cancelled, or failed with no attempt left. Returns how
    /// many. The publisher runs this each tick, so an ended job's
    /// challenges go away however it ended (a crash included).
    pub async fn withdraw_challenges_of_ended_jobs(&self, limit: u32) -> StoreResult<u64> {
        let now = now();
        Ok(on_write!(self, |pool| {
            sqlx::query(
                "UPDATE challenges SET state = 'withdrawing', next_check_at = $1, updated_at = $1
                 WHERE state IN ('pending', 'ready', 'failed')
                   AND job_id IN (
                       SELECT c.job_id FROM challenges c JOIN jobs j ON j.id = c.job_id
                        WHERE c.state IN ('pending', 'ready', 'failed')
                          AND (j.status IN ('completed', 'cancelled')
                               OR (j.status = 'failed' AND j.attempts >= j.max_attempts))
                        LIMIT $2)",
            )
            .bind(ts(now))
            .bind(sql_limit(limit))
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }

    /// Challenges the publisher has to work on now (publish, check or
    /// withdraw), oldest first.
    pub async fn due_challenges(&self, limit: u32) -> StoreResult<Vec<ChallengeRow>> {
        let now = now();
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, ChallengeRow>(
                "SELECT * FROM challenges
                 WHERE state IN ('pending', 'withdrawing') AND next_check_at <= $1
                 ORDER BY next_check_at LIMIT $2",
            )
            .bind(ts(now))
            .bind(sql_limit(limit))
            .fetch_all(pool)
            .await?
        }))
    }

    /// Moves one challenge on, unless it changed state meanwhile (a
    /// withdrawal wins over a check that was running).
    pub async fn progress_challenge(
        &self,
        row: &ChallengeRow,
        progress: &ChallengeProgress,
    ) -> StoreResult<bool> {
        let now = now();
        Ok(on_write!(self, |pool| {
            sqlx::query(
                "UPDATE challenges SET state = $4, message = $5, published = $6, checks = $7,
                        next_check_at = $8, updated_at = $9
                 WHERE job_id = $1 AND challenge_id = $2 AND state = $3",
            )
            .bind(&row.job_id)
            .bind(&row.challenge_id)
            .bind(&row.state)
            .bind(progress.state)
            .bind(progress.message.clone())
            .bind(progress.published)
            .bind(progress.checks)
            .bind(ts(progress.next_check_at))
            .bind(ts(now))
            .execute(pool)
            .await?
            .rows_affected()
                > 0
        }))
    }

    /// The key authorization the host's responder serves for an http-01
    /// token, while a job's challenge with that token is live.
    pub async fn http_challenge_response(&self, token: &str) -> StoreResult<Option<String>> {
        Ok(on_read!(self, |pool| {
            sqlx::query_scalar::<_, String>(
                "SELECT value FROM challenges
                 WHERE name = $1 AND kind = 'http-01' AND state IN ('pending', 'ready')
                   AND route = 'host'
                 ORDER BY created_at DESC LIMIT 1",
            )
            .bind(token)
            .fetch_optional(pool)
            .await?
        }))
    }

    /// The sealed values of an instance's store, by key.
    pub async fn plugin_store(&self, instance_id: &str) -> StoreResult<BTreeMap<String, String>> {
        let rows: Vec<(String, String)> = on_read!(self, |pool| {
            sqlx::query_as(
                "SELECT key, sealed_value FROM plugin_store WHERE instance_id = $1 ORDER BY key",
            )
            .bind(instance_id)
            .fetch_all(pool)
            .await?
        });
        Ok(rows.into_iter().collect())
    }

    /// Applies a call's store writes (sealed values; `None` deletes) in one
    /// transaction.
    pub async fn write_plugin_store(
        &self,
        instance_id: &str,
        writes: &BTreeMap<String, Option<String>>,
    ) -> StoreResult<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let now = now();
        on_write!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            for (key, value) in writes {
                match value {
                    Some(sealed) => {
                        sqlx::query(
                            "INSERT INTO plugin_store (instance_id, key, sealed_value, updated_at)
                             VALUES ($1, $2, $3, $4)
                             ON CONFLICT (instance_id, key)
                             DO UPDATE SET sealed_value = excluded.sealed_value,
                                           updated_at = excluded.updated_at",
                        )
                        .bind(instance_id)
                        .bind(key)
                        .bind(sealed)
                        .bind(ts(now))
                        .execute(&mut *tx)
                        .await?;
                    }
                    None => {
                        sqlx::query("DELETE FROM plugin_store WHERE instance_id = $1 AND key = $2")
                            .bind(instance_id)
                            .bind(key)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
            }
            tx.commit().await?;
            Ok(())
        })
    }
}
