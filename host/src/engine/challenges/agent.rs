//! http-01 challenges served by an agent (`grants.challenges.http_01 =
//! "agent"`, route `agent:<agent id>`).
//!
//! The agent running the certificate's key-holding target publishes the
//! token (into its web server's webroot, or on its own listener), checks
//! that it is served, and reports; on withdrawal it stops serving it and
//! confirms. The host never
//! names a path on the agent's machine. What is left to the host: handing
//! the tasks out with the agent's work poll, recording the reports, failing
//! a challenge the agent did not report visible within
//! `visible_within_secs`, and giving up a withdrawal the agent never
//! confirms after the solvers' retry budget.

use certplane_proto::agent::{
    ChallengeAction, ChallengeReport, ChallengeReportAccepted, ChallengeTask,
};
use chrono::Utc;

use super::{MAX_WITHDRAW_ATTEMPTS, later};
use crate::engine::Engine;
use crate::engine::error::{EngineError, EngineResult};
use crate::store::{ChallengeProgress, ChallengeRow};

/// Route prefix of agent-served challenges.
const PREFIX: &str = "agent:";
/// Most challenge tasks one work poll hands out.
const MAX_TASKS: u32 = 50;
/// Longest message kept from an agent's report.
const MAX_MESSAGE: usize = 1000;

/// The route of challenges agent `agent_id` serves.
pub(super) fn route(agent_id: &str) -> String {
    format!("{PREFIX}{agent_id}")
}

/// The agent serving a row, if an agent does.
pub(super) fn agent_of(row: &ChallengeRow) -> Option<&str> {
    row.route.strip_prefix(PREFIX)
}

/// The challenge tasks agent `agent_id` has now (a work poll returns at once
/// when there are any).
pub async fn tasks(engine: &Engine, agent_id: &str) -> EngineResult<Vec<ChallengeTask>> {
    let rows = engine
        .store
        .agent_challenge_tasks(agent_id, MAX_TASKS)
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| ChallengeTask {
            action: if row.state == "withdrawing" {
                ChallengeAction::Withdraw
            } else {
                ChallengeAction::Publish
            },
            job_id: row.job_id,
            challenge_id: row.challenge_id,
            identifier: row.identifier,
            token: row.name,
            key_authorization: row.value,
        })
        .collect())
}

/// Agent `agent_id` reports on one of its challenges. A challenge routed
/// elsewhere (or none) is "not found"; a repeated report is answered with
/// `changed: false`.
pub async fn report(
    engine: &Engine,
    agent_id: &str,
    job_id: &str,
    challenge_id: &str,
    report: ChallengeReport,
) -> EngineResult<ChallengeReportAccepted> {
    let message = report.message.map(|m| cut(&m));
    let to = report.state.as_str();
    let (changed, state) = engine
        .store
        .report_agent_challenge(agent_id, job_id, challenge_id, to, message.as_deref())
        .await?
        .ok_or_else(|| {
            EngineError::NotFound(format!("challenge {challenge_id} of job {job_id}"))
        })?;
    if changed {
        tracing::info!(
            job = job_id,
            challenge = challenge_id,
            agent = agent_id,
            to,
            message = message.as_deref().unwrap_or(""),
            "challenge reported by its agent"
        );
    } else {
        tracing::debug!(job = job_id, challenge = challenge_id, agent = agent_id, reported = to,
            state = %state, "challenge report changed nothing");
    }
    Ok(ChallengeReportAccepted {
        job_id: job_id.to_string(),
        challenge_id: challenge_id.to_string(),
        state,
        changed,
    })
}

fn cut(message: &str) -> String {
    if message.len() <= MAX_MESSAGE {
        return message.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

/// The publisher's look at an agent-served row: the agent does the work,
/// the host keeps the time. Each look wakes the agent (the row may have
/// just been presented or moved to withdrawing).
pub(super) fn step(engine: &Engine, row: &ChallengeRow, agent_id: &str) -> ChallengeProgress {
    engine.wake.wake_agent(agent_id);
    let mut progress = ChallengeProgress {
        state: if row.state == "withdrawing" {
            "withdrawing"
        } else {
            "pending"
        },
        message: row.message.clone(),
        published: row.published,
        checks: row.checks + 1,
        next_check_at: later(engine, row),
    };
    if row.state == "withdrawing" {
        if row.checks + 1 >= MAX_WITHDRAW_ATTEMPTS {
            progress.state = "withdrawn";
            progress.published = false;
            progress.message = Some(format!(
                "withdrawal gave up: agent {agent_id} did not confirm removing the token file"
            ));
            tracing::warn!(job = %row.job_id, challenge = %row.challenge_id, agent = agent_id,
                "an agent did not confirm a challenge's withdrawal; left behind");
        } else {
            progress.message = Some(format!(
                "waiting for agent {agent_id} to remove the token file"
            ));
        }
        return progress;
    }
    let limit = engine.config.challenges.visible_within_secs;
    // Clamped to ten years so the addition cannot overflow.
    let secs = i64::try_from(limit).unwrap_or(i64::MAX).min(315_360_000);
    let deadline = row.created_at + chrono::Duration::seconds(secs);
    if Utc::now() >= deadline {
        progress.state = "failed";
        progress.message = Some(format!(
            "not visible within {limit} s: agent {agent_id} did not report the token served"
        ));
    } else {
        // Nothing to do until the agent reports or time runs out.
        progress.message = Some(format!("waiting for agent {agent_id} to publish"));
        progress.next_check_at = deadline;
    }
    progress
}
