//! In-process wake-ups: work created by the API (or by another loop) wakes
//! the job processor or an agent's long-poll at once instead of waiting for
//! the next tick. A hint only: every waiter also polls on its own schedule.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The host's wake-up signals.
#[derive(Debug, Default)]
pub struct Wake {
    /// The host job processor (issuance, renewal, host-side deployments).
    pub jobs: Arc<Notify>,
    /// Async CA order polling.
    pub orders: Arc<Notify>,
    /// The renewal sweep (a certificate became due: created, "renew now").
    pub renewals: Arc<Notify>,
    /// Notification dispatch.
    pub notifications: Arc<Notify>,
    /// Cancelled when the host shuts down, so parked long polls answer at
    /// once instead of holding the graceful shutdown for their whole wait.
    pub stopping: tokio_util::sync::CancellationToken,
    agents: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Wake {
    /// The signal an agent's long-poll waits on.
    pub fn agent(&self, agent_id: &str) -> Arc<Notify> {
        self.agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(agent_id.to_string())
            .or_default()
            .clone()
    }

    /// Wakes one agent's long-poll (or makes its next poll return at once).
    pub fn wake_agent(&self, agent_id: &str) {
        self.agent(agent_id).notify_one();
    }

    /// Forgets an agent's signal (retired agents).
    pub fn forget_agent(&self, agent_id: &str) {
        self.agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(agent_id);
    }
}
