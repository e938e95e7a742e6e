//! http-01 challenges served by an agent (route `agent:<agent id>`): which
//! agent serves a job's certificate, the tasks a work poll hands that
//! agent, and the agent's reports.
//!
//! The agent publishes and checks such a row itself; the host's publisher
//! only fails it when it is not reported visible in time and gives up a
//! withdrawal the agent never confirms.

use crate::store::codec::{now, ts};
use crate::store::repo::sql_limit;
use crate::store::{ChallengeRow, Store, StoreResult, on_read, on_write};

/// The `route` of a challenge an agent serves.
fn agent_route(agent_id: &str) -> String {
    format!("agent:{agent_id}")
}

impl Store {
    /// The agent that serves http-01 for the certificate of `job_id`: the
    /// one running the certificate's key-holding (first) target, while that
    /// target is live and the agent active. `None` when the host runs the
    /// target, or the job has no certificate or the certificate no target.
    pub async fn http01_agent_for_job(&self, job_id: &str) -> StoreResult<Option<String>> {
        Ok(on_read!(self, |pool| {
            sqlx::query_scalar::<_, String>(
                "SELECT t.agent_id FROM jobs j
                   JOIN certificates c ON c.id = j.certificate_id
                   JOIN targets t ON t.id = c.target_id
                   JOIN agents a ON a.id = t.agent_id
                  WHERE j.id = $1 AND t.agent_id <> 'host' AND t.retired_at IS NULL
                    AND a.status = 'active'",
            )
            .bind(job_id)
            .fetch_optional(pool)
            .await?
        }))
    }

    /// What agent `agent_id` has to do: its challenges still unreported
    /// (`pending`: write the token, check it, report) and those to remove
    /// (`withdrawing`), oldest first.
    pub async fn agent_challenge_tasks(
        &self,
        agent_id: &str,
        limit: u32,
    ) -> StoreResult<Vec<ChallengeRow>> {
        let route = agent_route(agent_id);
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, ChallengeRow>(
                "SELECT * FROM challenges
                  WHERE route = $1 AND state IN ('pending', 'withdrawing')
                  ORDER BY updated_at, job_id, challenge_id LIMIT $2",
            )
            .bind(&route)
            .bind(sql_limit(limit))
            .fetch_all(pool)
            .await?
        }))
    }

    /// Records agent `agent_id`'s report on one of its challenges: `ready`
    /// or `failed` end a `pending` row, `withdrawn` ends a `withdrawing`
    /// one. A report that finds the row elsewhere (a repeated report, or
    /// the host moved it on first: timed out, withdrawn) changes nothing.
    ///
    /// Returns `None` when no such challenge is routed to this agent, else
    /// whether the report changed the row and the row's state now.
    pub async fn report_agent_challenge(
        &self,
        agent_id: &str,
        job_id: &str,
        challenge_id: &str,
        to: &str,
        message: Option<&str>,
    ) -> StoreResult<Option<(bool, String)>> {
        let from = match to {
            "ready" | "failed" => "pending",
            "withdrawn" => "withdrawing",
            other => {
                return Err(crate::store::StoreError::InvalidArgument(format!(
                    "an agent cannot move a challenge to {other:?}"
                )));
            }
        };
        let route = agent_route(agent_id);
        let now = now();
        let changed = on_write!(self, |pool| {
            sqlx::query(
                "UPDATE challenges SET state = $4, message = $5, published = $6, updated_at = $7
                  WHERE job_id = $1 AND challenge_id = $2 AND route = $3 AND state = $8",
            )
            .bind(job_id)
            .bind(challenge_id)
            .bind(&route)
            .bind(to)
            .bind(message)
            .bind(to == "ready")
            .bind(ts(now))
            .bind(from)
            .execute(pool)
            .await?
            .rows_affected()
                > 0
        });
        // On the writer: the state the update just left, never a stale read.
        let state = on_write!(self, |pool| {
            sqlx::query_scalar::<_, String>(
                "SELECT state FROM challenges
                  WHERE job_id = $1 AND challenge_id = $2 AND route = $3",
            )
            .bind(job_id)
            .bind(challenge_id)
            .bind(&route)
            .fetch_optional(pool)
            .await?
        });
        Ok(state.map(|s| (changed, s)))
    }
}
