//! Who sets a connector's limits: the operator. A manifest's limits are the
//! plugin author's *request*; the operator may set an instance's deadline,
//! memory cap and concurrency explicitly; the host's (or agent's) policy
//! caps both. The one resolution rule, used by host and agent alike.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::limits::{Limits, MAX_DEADLINE};
use crate::manifest::Manifest;

/// Limits an operator sets on one instance (any may be left to the
/// manifest's request and the policy's defaults). Stored with the
/// instance's grants as `limits`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceLimits {
    /// Wall-clock deadline of one call, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_secs: Option<u64>,
    /// Linear-memory cap of one call, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Calls of this instance that may run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

impl InstanceLimits {
    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == InstanceLimits::default()
    }
}

/// The host's or agent's policy: the ceiling no instance may exceed and the
/// defaults for what neither operator nor manifest sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitPolicy {
    /// Longest deadline of any call, in seconds.
    pub max_deadline_secs: u64,
    /// Largest memory cap of any call, in MiB.
    pub max_memory_mib: u64,
    /// Most concurrent calls of any one instance.
    pub max_concurrency: u32,
    /// Deadline when neither operator nor manifest sets one, in seconds.
    pub default_deadline_secs: u64,
    /// Memory cap when neither operator nor manifest sets one, in MiB.
    pub default_memory_mib: u64,
    /// Concurrency when neither operator nor manifest sets one.
    pub default_concurrency: u32,
    /// The memory caps of all calls running at once add up to at most
    /// this, in MiB; further calls wait (the runtime's global budget).
    pub memory_budget_mib: u64,
}

impl Default for LimitPolicy {
    /// A minute and 128 MiB at most per call, four calls of one instance at
    /// once; 10 s and 64 MiB unless asked otherwise. A CA answering slower
    /// than a minute is an asynchronous CA (submit returns an order).
    fn default() -> Self {
        LimitPolicy {
            max_deadline_secs: 60,
            max_memory_mib: 128,
            max_concurrency: 16,
            default_deadline_secs: 10,
            default_memory_mib: 64,
            default_concurrency: 4,
            memory_budget_mib: crate::limits::DEFAULT_MEMORY_BUDGET_BYTES >> 20,
        }
    }
}

/// What an instance runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// Per-call deadline and memory cap.
    pub limits: Limits,
    /// Calls of the instance that may run at once.
    pub concurrency: u32,
}

/// Why an operator's limits were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The policy itself is unusable.
    #[error("invalid limit policy: {0}")]
    Policy(String),
    /// The operator asked for more than the policy allows (or for zero).
    #[error("limits.{field} = {value} is not allowed: {reason}")]
    Limit {
        /// The field, e.g. `deadline_secs`.
        field: &'static str,
        /// The value asked for.
        value: u64,
        /// Why not.
        reason: String,
    },
}

impl LimitPolicy {
    /// Checks the policy's own consistency (at configuration load).
    pub fn validate(&self) -> Result<(), PolicyError> {
        let bad = |m: String| Err(PolicyError::Policy(m));
        if self.max_deadline_secs == 0 || self.max_memory_mib == 0 || self.max_concurrency == 0 {
            return bad("maxima must be positive".into());
        }
        if Duration::from_secs(self.max_deadline_secs) > MAX_DEADLINE {
            return bad(format!(
                "max_deadline_secs {} exceeds {} s",
                self.max_deadline_secs,
                MAX_DEADLINE.as_secs()
            ));
        }
        if self.default_deadline_secs == 0
            || self.default_memory_mib == 0
            || self.default_concurrency == 0
        {
            return bad("defaults must be positive".into());
        }
        if self.memory_budget_mib < self.max_memory_mib {
            return bad(format!(
                "memory_budget_mib ({}) must be at least max_memory_mib ({}), or the largest \
                 instance allowed could never run",
                self.memory_budget_mib, self.max_memory_mib
            ));
        }
        if self.default_deadline_secs > self.max_deadline_secs
            || self.default_memory_mib > self.max_memory_mib
            || self.default_concurrency > self.max_concurrency
        {
            return bad("defaults must not exceed the maxima".into());
        }
        Ok(())
    }

    /// The limits an instance of the plugin with `manifest` runs with: the
    /// operator's values where set (refused when above the policy's
    /// maxima: the operator should know), else the manifest's request cut
    /// to the maxima (a plugin author cannot raise them), else the policy's
    /// defaults.
    pub fn resolve(
        &self,
        manifest: &Manifest,
        operator: &InstanceLimits,
    ) -> Result<Resolved, PolicyError> {
        let over = |field: &'static str, value: u64, max: u64, unit: &str| {
            if value == 0 {
                Err(PolicyError::Limit {
                    field,
                    value,
                    reason: "must be positive".into(),
                })
            } else if value > max {
                Err(PolicyError::Limit {
                    field,
                    value,
                    reason: format!("this host allows at most {max}{unit}"),
                })
            } else {
                Ok(value)
            }
        };
        let deadline_ms = match operator.deadline_secs {
            Some(s) => over("deadline_secs", s, self.max_deadline_secs, " s")?.saturating_mul(1000),
            None => manifest
                .limits
                .cpu_deadline_ms
                .unwrap_or(self.default_deadline_secs.saturating_mul(1000))
                .clamp(1, self.max_deadline_secs.saturating_mul(1000)),
        };
        let memory_mib = match operator.memory_mib {
            Some(m) => over("memory_mib", m, self.max_memory_mib, " MiB")?,
            None => manifest
                .limits
                .memory_mib
                .unwrap_or(self.default_memory_mib)
                .clamp(1, self.max_memory_mib),
        };
        let concurrency = match operator.concurrency {
            Some(c) => over(
                "concurrency",
                u64::from(c),
                u64::from(self.max_concurrency),
                "",
            )? as u32,
            None => manifest
                .limits
                .concurrency
                .unwrap_or(self.default_concurrency)
                .clamp(1, self.max_concurrency),
        };
        Ok(Resolved {
            limits: Limits {
                deadline: Duration::from_millis(deadline_ms),
                memory_bytes: memory_mib.saturating_mul(1024 * 1024),
            },
            concurrency,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(
        deadline_ms: Option<u64>,
        memory_mib: Option<u64>,
        concurrency: Option<u32>,
    ) -> Manifest {
        let mut text = String::from(
            "name = \"p\"\nversion = \"0.1.0\"\nkind = \"issuer\"\nworld = \"1.0.0\"\n\
             component = \"p.wasm\"\nsha256 = \"",
        );
        text.push_str(&"ab".repeat(32));
        text.push_str("\"\n[limits]\n");
        if let Some(d) = deadline_ms {
            text.push_str(&format!("cpu_deadline_ms = {d}\n"));
        }
        if let Some(m) = memory_mib {
            text.push_str(&format!("memory_mib = {m}\n"));
        }
        if let Some(c) = concurrency {
            text.push_str(&format!("concurrency = {c}\n"));
        }
        Manifest::parse(&text, std::path::Path::new("/plugins")).expect("manifest")
    }

    #[test]
    fn a_manifest_cannot_raise_the_ceiling() {
        let policy = LimitPolicy::default();
        let r = policy
            .resolve(
                &manifest(Some(600_000), Some(256), Some(64)),
                &InstanceLimits::default(),
            )
            .unwrap();
        assert_eq!(r.limits.deadline, Duration::from_secs(60));
        assert_eq!(r.limits.memory_bytes, 128 * 1024 * 1024);
        assert_eq!(r.concurrency, 16);
        let asked = policy
            .resolve(&manifest(None, None, Some(8)), &InstanceLimits::default())
            .unwrap();
        assert_eq!(asked.concurrency, 8);
    }

    #[test]
    fn the_operator_overrides_the_manifest_within_the_ceiling() {
        let policy = LimitPolicy::default();
        let op = InstanceLimits {
            deadline_secs: Some(2),
            memory_mib: Some(16),
            concurrency: Some(1),
        };
        let r = policy
            .resolve(&manifest(Some(600_000), Some(256), Some(8)), &op)
            .unwrap();
        assert_eq!(r.limits.deadline, Duration::from_secs(2));
        assert_eq!(r.limits.memory_bytes, 16 * 1024 * 1024);
        assert_eq!(r.concurrency, 1);
        for (op, field) in [
            (
                InstanceLimits {
                    deadline_secs: Some(61),
                    ..Default::default()
                },
                "deadline_secs",
            ),
            (
                InstanceLimits {
                    memory_mib: Some(0),
                    ..Default::default()
                },
                "memory_mib",
            ),
            (
                InstanceLimits {
                    concurrency: Some(17),
                    ..Default::default()
                },
                "concurrency",
            ),
        ] {
            let err = policy
                .resolve(&manifest(None, None, None), &op)
                .unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn defaults_fill_what_nobody_set() {
        let policy = LimitPolicy::default();
        let r = policy
            .resolve(&manifest(None, None, None), &InstanceLimits::default())
            .unwrap();
        assert_eq!(r.limits.deadline, Duration::from_secs(10));
        assert_eq!(r.limits.memory_bytes, 64 * 1024 * 1024);
        assert_eq!(r.concurrency, 4);
        assert!(policy.validate().is_ok());
        let broken = LimitPolicy {
            default_memory_mib: 512,
            ..LimitPolicy::default()
        };
        assert!(broken.validate().is_err());
        let starved = LimitPolicy {
            memory_budget_mib: 64,
            ..LimitPolicy::default()
        };
        assert!(starved.validate().is_err());
    }
}
