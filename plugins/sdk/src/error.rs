//! Constructors and accessors for [`ConnectorError`], the error every export
//! of the contract returns.

use crate::{ConnectorError, RateLimit};

impl ConnectorError {
    /// The instance's settings or secrets are wrong or missing (permanent;
    /// the operator must fix the configuration).
    pub fn invalid_config(message: impl Into<String>) -> Self {
        ConnectorError::InvalidConfig(message.into())
    }

    /// The upstream refused our credentials (permanent until they are
    /// rotated).
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ConnectorError::Unauthorized(message.into())
    }

    /// The upstream rejected this particular request for good (not retried).
    pub fn rejected(message: impl Into<String>) -> Self {
        ConnectorError::Rejected(message.into())
    }

    /// The upstream asked us to slow down; `retry_after_secs` is its hint,
    /// when it gave one.
    pub fn rate_limited(retry_after_secs: Option<u32>, message: impl Into<String>) -> Self {
        ConnectorError::RateLimited(RateLimit {
            retry_after_secs,
            message: message.into(),
        })
    }

    /// A temporary failure; the host retries with exponential backoff.
    pub fn transient(message: impl Into<String>) -> Self {
        ConnectorError::Transient(message.into())
    }

    /// The operation is not supported by this connector.
    pub fn unsupported(message: impl Into<String>) -> Self {
        ConnectorError::Unsupported(message.into())
    }

    /// The kebab-case name of the case, as spelled in the WIT contract
    /// (`invalid-config`, `rate-limited`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectorError::InvalidConfig(_) => "invalid-config",
            ConnectorError::Unauthorized(_) => "unauthorized",
            ConnectorError::Rejected(_) => "rejected",
            ConnectorError::RateLimited(_) => "rate-limited",
            ConnectorError::Transient(_) => "transient",
            ConnectorError::Unsupported(_) => "unsupported",
        }
    }

    /// The human-readable message the error carries.
    pub fn message(&self) -> &str {
        match self {
            ConnectorError::InvalidConfig(m)
            | ConnectorError::Unauthorized(m)
            | ConnectorError::Rejected(m)
            | ConnectorError::Transient(m)
            | ConnectorError::Unsupported(m) => m,
            ConnectorError::RateLimited(r) => &r.message,
        }
    }

    /// Returns the same error with `context: ` put in front of its message,
    /// e.g. `err.context("downloading the certificate")`.
    #[must_use]
    pub fn context(self, context: impl core::fmt::Display) -> Self {
        let prefix = |m: String| format!("{context}: {m}");
        match self {
            ConnectorError::InvalidConfig(m) => ConnectorError::InvalidConfig(prefix(m)),
            ConnectorError::Unauthorized(m) => ConnectorError::Unauthorized(prefix(m)),
            ConnectorError::Rejected(m) => ConnectorError::Rejected(prefix(m)),
            ConnectorError::Transient(m) => ConnectorError::Transient(prefix(m)),
            ConnectorError::Unsupported(m) => ConnectorError::Unsupported(prefix(m)),
            ConnectorError::RateLimited(r) => ConnectorError::RateLimited(RateLimit {
                retry_after_secs: r.retry_after_secs,
                message: prefix(r.message),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_message_and_context() {
        let e = ConnectorError::rate_limited(Some(7), "slow down").context("ordering");
        assert_eq!(e.kind(), "rate-limited");
        assert_eq!(e.message(), "ordering: slow down");
        match e {
            ConnectorError::RateLimited(r) => assert_eq!(r.retry_after_secs, Some(7)),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(ConnectorError::invalid_config("x").kind(), "invalid-config");
        assert_eq!(ConnectorError::unsupported("y").message(), "y");
    }
}
