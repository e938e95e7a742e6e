//! The `agent-health` loop: tells notifiers when an active agent falls
//! silent (`agent.offline`, once per silence) and when a silent one is
//! heard again (`agent.online`); and the `agent.retired` notice the
//! retirement commits with it.

use certplane_runtime::Level;
use chrono::{Duration, Utc};
use serde_json::json;

use super::events::{About, agent_key, kind};
use super::notify::{Announcement, announce, notice};
use crate::engine::Engine;
use crate::store::{Agent, AgentStatus, AlertChange, Notice, SendWhen, StoreResult};

/// Agents one tick looks at in each direction.
const BATCH: u32 = 1_000;

/// One tick: returns how many notifications were queued.
pub async fn tick(engine: &Engine) -> StoreResult<usize> {
    let offline_after = Duration::seconds(
        i64::try_from(engine.config.agents.offline_after_secs).unwrap_or(i64::MAX / 1000),
    );
    let now = Utc::now();
    let silent_since = now - offline_after;
    let mut queued = 0;
    for agent in engine.store.list_silent_agents(silent_since, BATCH).await? {
        queued += offline(engine, &agent).await?;
    }
    for key in engine.store.open_alert_conditions("agent:", BATCH).await? {
        let Some(id) = key.strip_prefix("agent:") else {
            continue;
        };
        let Some(agent) = engine.store.get_agent(id).await? else {
            continue;
        };
        let heard = agent.last_heartbeat_at.is_some_and(|t| t > silent_since);
        if agent.status == AgentStatus::Active && heard {
            queued += online(engine, &agent).await?;
        }
    }
    Ok(queued)
}

fn about(agent: &Agent) -> About {
    About {
        agent: Some(agent.clone()),
        ..About::default()
    }
}

async fn offline(engine: &Engine, agent: &Agent) -> StoreResult<usize> {
    let last = agent
        .last_heartbeat_at
        .map_or_else(|| "never".to_owned(), |t| t.to_rfc3339());
    let summary = format!(
        "agent {} is silent (last heartbeat: {last}); the certificates it deploys are not kept up to date",
        agent.name
    );
    let subject = format!("agent/{}", agent.id);
    let event = Announcement {
        alerts: vec![AlertChange::Trigger(agent_key(&agent.id))],
        send_when: SendWhen::Opened,
        ..Announcement::new(
            kind::AGENT_OFFLINE,
            &subject,
            &summary,
            Level::Error,
            about(agent).details(None, Some("no heartbeat"), json!({})),
        )
    };
    announce(engine, &event, None).await
}

async fn online(engine: &Engine, agent: &Agent) -> StoreResult<usize> {
    let summary = format!("agent {} is heard again", agent.name);
    let subject = format!("agent/{}", agent.id);
    let event = Announcement {
        alerts: vec![AlertChange::Resolve(agent_key(&agent.id))],
        send_when: SendWhen::Resolved,
        ..Announcement::new(
            kind::AGENT_ONLINE,
            &subject,
            &summary,
            Level::Info,
            about(agent).details(None, None, json!({})),
        )
    };
    announce(engine, &event, None).await
}

/// The `agent.retired` notice of `agent`, clearing its silence condition;
/// queued by the retirement's own transaction.
pub fn retired_notice(agent: &Agent, reason: Option<&str>, force: bool) -> Notice {
    let summary = match reason {
        Some(r) => format!("agent {} was retired: {r}", agent.name),
        None => format!("agent {} was retired", agent.name),
    };
    notice(
        &Announcement {
            alerts: vec![AlertChange::Resolve(agent_key(&agent.id))],
            ..Announcement::new(
                kind::AGENT_RETIRED,
                &format!("agent/{}", agent.id),
                &summary,
                Level::Warn,
                about(agent).details(None, reason, json!({ "forced": force })),
            )
        },
        None,
    )
}
