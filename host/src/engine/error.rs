//! Why an engine call made on behalf of someone (an agent's report, an
//! operator's request) was refused. The API maps each to a status code.

use crate::store::StoreError;

/// An engine refusal.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No such thing, as far as the caller may know.
    #[error("{0} not found")]
    NotFound(String),
    /// The thing is not in a state that allows this (job moved on, a
    /// different CSR already accepted).
    #[error("{0}")]
    InvalidState(String),
    /// The caller's lease on the job expired or passed to another attempt.
    #[error("{0}")]
    LeaseLost(String),
    /// The request itself is wrong (a CSR for other names, a failure
    /// without an error).
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Result of an engine call.
pub type EngineResult<T> = Result<T, EngineError>;
