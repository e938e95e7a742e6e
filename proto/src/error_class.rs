//! The class of a failed connector call: what the host does with the job
//! (retry or not) follows from it, wherever the call ran (host or agent).

use serde::{Deserialize, Serialize};

/// Why a connector call failed, as the host acts on it.
///
/// On the wire a class is its kebab-case name; a name this version does not
/// know (a newer or foreign agent) reads as `transient`, so an unknown
/// failure is retried rather than refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorClass {
    /// The instance's settings or secrets are wrong (permanent).
    InvalidConfig,
    /// The upstream refused the credentials (permanent).
    Unauthorized,
    /// The upstream refused the request for good (permanent).
    Rejected,
    /// The upstream asked to slow down; retried after its hint.
    RateLimited,
    /// Worth retrying with backoff.
    Transient,
    /// The connector cannot do this (permanent).
    Unsupported,
    /// The sandbox refused a capability the connector was not granted
    /// (permanent: a grant must change first).
    CapabilityDenied,
    /// The call ran past its deadline (retried).
    Deadline,
    /// The call exceeded its memory cap (permanent).
    MemoryLimit,
    /// The guest crashed (retried: crashes can be input- or time-dependent).
    Trap,
    /// The instance could not be created, e.g. no pool slot (retried).
    Instantiate,
    /// The call does not exist for the plugin's kind (permanent).
    WrongKind,
}

impl ErrorClass {
    /// Every class.
    pub const ALL: &'static [ErrorClass] = &[
        ErrorClass::InvalidConfig,
        ErrorClass::Unauthorized,
        ErrorClass::Rejected,
        ErrorClass::RateLimited,
        ErrorClass::Transient,
        ErrorClass::Unsupported,
        ErrorClass::CapabilityDenied,
        ErrorClass::Deadline,
        ErrorClass::MemoryLimit,
        ErrorClass::Trap,
        ErrorClass::Instantiate,
        ErrorClass::WrongKind,
    ];

    /// Whether retrying can never help (the job fails for good).
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            ErrorClass::InvalidConfig
                | ErrorClass::Unauthorized
                | ErrorClass::Rejected
                | ErrorClass::Unsupported
                | ErrorClass::CapabilityDenied
                | ErrorClass::MemoryLimit
                | ErrorClass::WrongKind
        )
    }

    /// The wire name, e.g. `invalid-config`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::InvalidConfig => "invalid-config",
            ErrorClass::Unauthorized => "unauthorized",
            ErrorClass::Rejected => "rejected",
            ErrorClass::RateLimited => "rate-limited",
            ErrorClass::Transient => "transient",
            ErrorClass::Unsupported => "unsupported",
            ErrorClass::CapabilityDenied => "capability-denied",
            ErrorClass::Deadline => "deadline",
            ErrorClass::MemoryLimit => "memory-limit",
            ErrorClass::Trap => "trap",
            ErrorClass::Instantiate => "instantiate",
            ErrorClass::WrongKind => "wrong-kind",
        }
    }
}

impl<'de> Deserialize<'de> for ErrorClass {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Ok(ErrorClass::from_name(&name).unwrap_or(ErrorClass::Transient))
    }
}

impl ErrorClass {
    /// The class named `name` (its wire name), if this version knows it.
    pub fn from_name(name: &str) -> Option<ErrorClass> {
        ErrorClass::ALL.iter().copied().find(|c| c.as_str() == name)
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        for class in ErrorClass::ALL {
            let json = serde_json::to_string(class).unwrap();
            assert_eq!(json, format!("\"{}\"", class.as_str()));
            let back: ErrorClass = serde_json::from_str(&json).unwrap();
            assert_eq!(back, *class);
        }
        let unknown: ErrorClass = serde_json::from_str("\"io\"").unwrap();
        assert_eq!(unknown, ErrorClass::Transient);
        assert!(serde_json::from_str::<ErrorClass>("42").is_err());
    }

    #[test]
    fn permanence() {
        let retried: Vec<_> = ErrorClass::ALL
            .iter()
            .filter(|c| !c.is_permanent())
            .map(|c| c.as_str())
            .collect();
        assert_eq!(
            retried,
            [
                "rate-limited",
                "transient",
                "deadline",
                "trap",
                "instantiate"
            ]
        );
    }
}
