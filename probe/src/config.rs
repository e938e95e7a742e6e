//! The `[verify]` settings of the agent and of the host: one definition,
//! one set of defaults.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ProbePolicy;

/// How the deployed certificate is checked on the wire.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// Connection attempts before giving up (servers reload asynchronously).
    #[serde(default = "defaults::attempts")]
    pub attempts: u32,
    /// Milliseconds between attempts.
    #[serde(default = "defaults::interval_ms")]
    pub interval_ms: u64,
    /// Seconds one attempt may take.
    #[serde(default = "defaults::timeout_secs")]
    pub timeout_secs: u64,
}

impl VerifyConfig {
    /// The probe's retry policy these settings describe.
    pub fn policy(&self) -> ProbePolicy {
        ProbePolicy {
            attempts: self.attempts,
            interval: Duration::from_millis(self.interval_ms),
            attempt_timeout: Duration::from_secs(self.timeout_secs),
        }
    }
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            attempts: defaults::attempts(),
            interval_ms: defaults::interval_ms(),
            timeout_secs: defaults::timeout_secs(),
        }
    }
}

mod defaults {
    pub fn attempts() -> u32 {
        5
    }
    pub fn interval_ms() -> u64 {
        1_000
    }
    pub fn timeout_secs() -> u64 {
        5
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_default_policy() {
        assert_eq!(VerifyConfig::default().policy(), ProbePolicy::default());
        let empty: VerifyConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, VerifyConfig::default());
    }
}
