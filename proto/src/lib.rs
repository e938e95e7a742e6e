//! Wire types shared by the host, the agent and the CLI, written once.
//!
//! API boundary: this crate depends on nothing of certplane's; everything
//! else may depend on it.

pub mod agent;
pub mod error_class;

pub use agent::Endpoint;
pub use error_class::ErrorClass;
