//! Agents: registration, heartbeats, dependency counts and retirement.

use crate::store::codec::{now, ts};
use crate::store::repo::insert_audit;
use crate::store::repo::notices::queue_notices;
use crate::store::{
    Agent, AgentDependencies, AgentStatus, BeginWrite, HeartbeatOutcome, NewAgent, NewAuditEvent,
    RetireAgent, RetireOutcome, SENTINEL_AGENT_ID, Store, StoreError, StoreResult, new_id, on_read,
    on_write,
};

/// Dependency counts of agent `$1` (see [`AgentDependencies`]).
const DEPENDENCIES_SQL: &str = "
SELECT
  (SELECT COUNT(*) FROM targets WHERE agent_id = $1 AND retired_at IS NULL) AS active_targets,
  (SELECT COUNT(*) FROM certificates c
    WHERE c.status = 'active'
      AND (c.target_id IN (SELECT id FROM targets WHERE agent_id = $1 AND retired_at IS NULL)
           OR EXISTS (SELECT 1 FROM certificate_targets ct JOIN targets t ON t.id = ct.target_id
                      WHERE ct.certificate_id = c.id AND t.agent_id = $1
                        AND t.retired_at IS NULL))) AS active_certificates,
  (SELECT COUNT(*) FROM jobs j
    WHERE j.status IN ('pending', 'awaiting_csr', 'awaiting_approval', 'polling', 'running')
      AND (j.agent_id = $1
           OR (j.agent_id IS NULL AND j.target_id IN (SELECT id FROM targets WHERE agent_id = $1))
           OR (j.status = 'awaiting_csr' AND j.certificate_id IN
                (SELECT c.id FROM certificates c JOIN targets t ON t.id = c.target_id
                  WHERE t.agent_id = $1)))) AS pending_jobs";

/// Cancels the open jobs routed to agent `$1` (force retirement); `$2` now,
/// `$3` reason.
const CANCEL_AGENT_JOBS_SQL: &str = "
UPDATE jobs SET status = 'cancelled', last_error = $3, lease_expires_at = NULL,
       finished_at = $2, updated_at = $2
WHERE status IN ('pending', 'awaiting_csr', 'awaiting_approval', 'polling', 'running')
  AND (agent_id = $1
       OR (agent_id IS NULL AND target_id IN (SELECT id FROM targets WHERE agent_id = $1))
       OR (status = 'awaiting_csr' AND certificate_id IN
            (SELECT c.id FROM certificates c JOIN targets t ON t.id = c.target_id
              WHERE t.agent_id = $1)))";

/// Certificates whose private key agent `$1` holds: agent key mode with
/// the key-holding target on that agent (retired targets included: a
/// forced retirement retires them in the same transaction).
const KEY_HELD_CERTIFICATES_SQL: &str = "
SELECT id, target_id FROM certificates
WHERE key_source = 'agent' AND status <> 'retired'
  AND target_id IN (SELECT id FROM targets WHERE agent_id = $1)
ORDER BY id";

/// Cancels certificate `$1`'s issuance and renewal jobs that have not
/// started (`$2` now, `$3` why): with its key holder gone, no CSR comes.
const CANCEL_KEY_JOBS_SQL: &str = "
UPDATE jobs SET status = 'cancelled', finished_at = $2, updated_at = $2,
       lease_owner = NULL, lease_expires_at = NULL, last_error = $3
WHERE certificate_id = $1 AND job_type IN ('issuance', 'renewal')
  AND status IN ('pending', 'awaiting_csr', 'awaiting_approval', 'polling', 'failed')";

/// What a forced retirement does with the certificates whose keys the agent
/// held.
enum KeyHolderPlan {
    /// Disable them (`disabled_reason` says why).
    Disable,
    /// Move them to this target, run by this agent (`host` or another one).
    Move { target_id: String, agent_id: String },
}

impl Store {
    /// Registers an agent (status active) and returns it.
    pub async fn register_agent(&self, agent: NewAgent) -> StoreResult<Agent> {
        self.register_agent_with_id(&new_id(), agent, None).await
    }

    /// [`Store::register_agent`] with a caller-chosen id (the agent is its
    /// own audit actor and subject), and `audit`, when given, in the same
    /// transaction.
    pub async fn register_agent_with_id(
        &self,
        id: &str,
        agent: NewAgent,
        audit: Option<&NewAuditEvent>,
    ) -> StoreResult<Agent> {
        let now = now();
        on_write!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let registered = sqlx::query_as::<_, Agent>(
                "INSERT INTO agents (id, name, credential_hash, sentinel, status, created_at)
                 VALUES ($1, $2, $3, FALSE, 'active', $4) RETURNING *",
            )
            .bind(id)
            .bind(&agent.name)
            .bind(&agent.credential_hash)
            .bind(ts(now))
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| {
                StoreError::from_insert(format!("agent credential for {:?}", agent.name), e)
            })?;
            if let Some(event) = audit {
                insert_audit!(&mut *tx, now, event)?;
            }
            tx.commit().await?;
            Ok(registered)
        })
    }

    /// One agent by id.
    pub async fn get_agent(&self, id: &str) -> StoreResult<Option<Agent>> {
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, Agent>("SELECT * FROM agents WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// All agents (retired ones only if asked), sentinel first, then by name.
    pub async fn list_agents(&self, include_retired: bool) -> StoreResult<Vec<Agent>> {
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, Agent>(
                "SELECT * FROM agents WHERE ($1 OR status = 'active')
                 ORDER BY sentinel DESC, name, id",
            )
            .bind(include_retired)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Active agents (not the sentinel) silent since `before`: no
    /// heartbeat after it (or none at all, registered before it).
    pub async fn list_silent_agents(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Agent>> {
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, Agent>(
                "SELECT * FROM agents WHERE status = 'active' AND NOT sentinel
                   AND COALESCE(last_heartbeat_at, created_at) < $1
                 ORDER BY id LIMIT $2",
            )
            .bind(ts(before))
            .bind(crate::store::repo::sql_limit(limit))
            .fetch_all(pool)
            .await?
        }))
    }

    /// Records a heartbeat. A retired agent's heartbeat is not recorded and
    /// answers [`HeartbeatOutcome::Retired`] (410 Gone).
    pub async fn record_heartbeat(&self, agent_id: &str) -> StoreResult<HeartbeatOutcome> {
        let now = now();
        let updated = on_write!(self, |pool| {
            sqlx::query(
                "UPDATE agents SET last_heartbeat_at = $2 WHERE id = $1 AND status = 'active'",
            )
            .bind(agent_id)
            .bind(ts(now))
            .execute(pool)
            .await?
            .rows_affected()
        });
        if updated == 1 {
            return Ok(HeartbeatOutcome::Recorded);
        }
        Ok(match self.get_agent(agent_id).await? {
            Some(a) if a.status == AgentStatus::Retired => HeartbeatOutcome::Retired,
            Some(_) => HeartbeatOutcome::Recorded,
            None => HeartbeatOutcome::NotFound,
        })
    }

    /// Ids of `agent_id`'s jobs cancelled since `since` (newest first, at
    /// most `limit`): what a heartbeat tells the agent to stop.
    pub async fn cancelled_jobs_of_agent(
        &self,
        agent_id: &str,
        since: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> StoreResult<Vec<String>> {
        Ok(on_read!(self, |pool| {
            sqlx::query_scalar::<_, String>(
                "SELECT id FROM jobs WHERE agent_id = $1 AND status = 'cancelled'
                   AND finished_at >= $2
                 ORDER BY finished_at DESC LIMIT $3",
            )
            .bind(agent_id)
            .bind(ts(since))
            .bind(crate::store::repo::sql_limit(limit))
            .fetch_all(pool)
            .await?
        }))
    }

    /// What still depends on the agent (see [`AgentDependencies`]).
    pub async fn agent_dependencies(&self, agent_id: &str) -> StoreResult<AgentDependencies> {
        let (t, c, j): (i64, i64, i64) = on_read!(self, |pool| {
            sqlx::query_as(DEPENDENCIES_SQL)
                .bind(agent_id)
                .fetch_one(pool)
                .await?
        });
        Ok(AgentDependencies {
            active_targets: t,
            active_certificates: c,
            pending_jobs: j,
        })
    }

    /// Soft-retires an agent in one transaction (agent row locked first):
    ///
    /// * `force` without a non-empty `reason` → `ReasonRequired`;
    /// * unknown → `NotFound`; sentinel → `Sentinel` (even with force);
    /// * already retired → `AlreadyRetired` (idempotent, nothing changes);
    /// * dependencies and no `force` → `Blocked(counts)`;
    /// * `move_to_target` without `force`, or naming a target that is not
    ///   an active target of another active agent → `BadMoveTarget`;
    /// * otherwise `Retired`: the agent gets `retired_at`/`retired_reason`,
    ///   and with `force` its active targets get the **same** timestamp and
    ///   reason, its open jobs are cancelled, and the certificates whose
    ///   keys it held get their open issuance/renewal jobs cancelled and are
    ///   disabled (`disabled_reason`) or moved to `move_to_target` and made
    ///   due; an audit event is written for the agent and for each of those
    ///   certificates.
    pub async fn retire_agent(
        &self,
        agent_id: &str,
        req: RetireAgent,
    ) -> StoreResult<RetireOutcome> {
        let reason = req
            .reason
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_owned);
        if req.force && reason.is_none() {
            return Ok(RetireOutcome::ReasonRequired);
        }
        if req.move_to_target.is_some() && !req.force {
            return Ok(RetireOutcome::BadMoveTarget(
                "move_to_target applies to a forced retirement (force=true)".into(),
            ));
        }
        let now = now();
        let lock_suffix = match self.backend {
            crate::store::Backend::Sqlite(_) => "",
            crate::store::Backend::Postgres(_) => " FOR UPDATE",
        };
        on_write!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let agent = sqlx::query_as::<_, Agent>(&format!(
                "SELECT * FROM agents WHERE id = $1{lock_suffix}"
            ))
            .bind(agent_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(agent) = agent else {
                return Ok(RetireOutcome::NotFound);
            };
            if agent.sentinel {
                return Ok(RetireOutcome::Sentinel);
            }
            if agent.status == AgentStatus::Retired {
                return Ok(RetireOutcome::AlreadyRetired { agent });
            }
            let (t, c, j): (i64, i64, i64) = sqlx::query_as(DEPENDENCIES_SQL)
                .bind(agent_id)
                .fetch_one(&mut *tx)
                .await?;
            let deps = AgentDependencies {
                active_targets: t,
                active_certificates: c,
                pending_jobs: j,
            };
            if !req.force && !deps.is_empty() {
                return Ok(RetireOutcome::Blocked(deps));
            }
            let agent = sqlx::query_as::<_, Agent>(
                "UPDATE agents SET status = 'retired', retired_at = $2, retired_reason = $3
                 WHERE id = $1 AND status = 'active' RETURNING *",
            )
            .bind(agent_id)
            .bind(ts(now))
            .bind(reason.clone())
            .fetch_one(&mut *tx)
            .await?;
            let plan = match &req.move_to_target {
                None => KeyHolderPlan::Disable,
                Some(target_id) => {
                    let target: Option<(String,)> = sqlx::query_as(&format!(
                        "SELECT t.agent_id FROM targets t JOIN agents a ON a.id = t.agent_id
                         WHERE t.id = $1 AND t.retired_at IS NULL AND a.status = 'active'{lock_suffix}"
                    ))
                    .bind(target_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    match target {
                        Some((owner,)) if owner != agent_id => KeyHolderPlan::Move {
                            target_id: target_id.clone(),
                            agent_id: owner,
                        },
                        Some(_) => {
                            return Ok(RetireOutcome::BadMoveTarget(format!(
                                "move_to_target {target_id:?} is run by the agent being retired"
                            )));
                        }
                        None => {
                            return Ok(RetireOutcome::BadMoveTarget(format!(
                                "move_to_target {target_id:?} is not an active target of an \
                                 active agent"
                            )));
                        }
                    }
                }
            };
            let (mut targets_retired, mut jobs_cancelled) = (0, 0);
            let (mut certificates_disabled, mut certificates_moved) = (0, 0);
            if req.force {
                let why = reason.clone().unwrap_or_default();
                // The certificates whose keys it held first: read before its
                // targets are retired, handled in this transaction so the
                // renewal sweep never sees them active with a retired key
                // holder (it would create CSR jobs nobody answers).
                let held: Vec<(String, Option<String>)> = sqlx::query_as(KEY_HELD_CERTIFICATES_SQL)
                    .bind(agent_id)
                    .fetch_all(&mut *tx)
                    .await?;
                let holder_gone = format!("key holder agent {agent_id} was retired");
                for (certificate_id, old_target) in &held {
                    let cancelled = sqlx::query(CANCEL_KEY_JOBS_SQL)
                        .bind(certificate_id)
                        .bind(ts(now))
                        .bind(&holder_gone)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    jobs_cancelled += cancelled;
                    let event = match &plan {
                        KeyHolderPlan::Disable => {
                            sqlx::query(
                                "UPDATE certificates SET status = 'disabled', disabled_reason = $2,
                                        updated_at = $3
                                 WHERE id = $1",
                            )
                            .bind(certificate_id)
                            .bind(&holder_gone)
                            .bind(ts(now))
                            .execute(&mut *tx)
                            .await?;
                            certificates_disabled += 1;
                            NewAuditEvent {
                                actor: req.actor.clone(),
                                actor_type: req.actor_type,
                                action: "certificate.disable".into(),
                                subject_type: "certificate".into(),
                                subject_id: Some(certificate_id.clone()),
                                details: serde_json::json!({
                                    "reason": holder_gone,
                                    "agent_id": agent_id,
                                    "jobs_cancelled": cancelled,
                                }),
                            }
                        }
                        KeyHolderPlan::Move {
                            target_id,
                            agent_id: new_agent,
                        } => {
                            // A new key where it goes: the host's for a
                            // target the host runs, else that agent's; the
                            // renewal made due now brings it.
                            let key_source = if new_agent == SENTINEL_AGENT_ID {
                                "host"
                            } else {
                                "agent"
                            };
                            sqlx::query(
                                "UPDATE certificates SET target_id = $2, key_source = $3,
                                        renew_at = $4, updated_at = $4, disabled_reason = NULL
                                 WHERE id = $1",
                            )
                            .bind(certificate_id)
                            .bind(target_id)
                            .bind(key_source)
                            .bind(ts(now))
                            .execute(&mut *tx)
                            .await?;
                            certificates_moved += 1;
                            NewAuditEvent {
                                actor: req.actor.clone(),
                                actor_type: req.actor_type,
                                action: "certificate.move".into(),
                                subject_type: "certificate".into(),
                                subject_id: Some(certificate_id.clone()),
                                details: serde_json::json!({
                                    "reason": holder_gone,
                                    "from_target_id": old_target,
                                    "to_target_id": target_id,
                                    "key_source": key_source,
                                    "jobs_cancelled": cancelled,
                                }),
                            }
                        }
                    };
                    insert_audit!(&mut *tx, now, &event)?;
                }
                targets_retired = sqlx::query(
                    "UPDATE targets SET retired_at = $2, retired_reason = $3, updated_at = $2
                     WHERE agent_id = $1 AND retired_at IS NULL",
                )
                .bind(agent_id)
                .bind(ts(now))
                .bind(&why)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                jobs_cancelled += sqlx::query(CANCEL_AGENT_JOBS_SQL)
                    .bind(agent_id)
                    .bind(ts(now))
                    .bind(format!("agent retired: {why}"))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            let event = NewAuditEvent {
                actor: req.actor.clone(),
                actor_type: req.actor_type,
                action: "agent.retire".into(),
                subject_type: "agent".into(),
                subject_id: Some(agent_id.to_owned()),
                details: serde_json::json!({
                    "force": req.force,
                    "reason": reason,
                    "targets_retired": targets_retired,
                    "jobs_cancelled": jobs_cancelled,
                    "certificates_disabled": certificates_disabled,
                    "certificates_moved": certificates_moved,
                    "move_to_target": req.move_to_target,
                }),
            };
            insert_audit!(&mut *tx, now, &event)?;
            queue_notices!(&mut tx, now, &req.notices)?;
            tx.commit().await?;
            Ok(RetireOutcome::Retired {
                agent,
                targets_retired,
                jobs_cancelled,
                certificates_disabled,
                certificates_moved,
            })
        })
    }
}
