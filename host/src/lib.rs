//! certplane host: the control plane library behind the `certplane` binary.
//!
//! * [`store`]: the database (SQLite or PostgreSQL), migrations and the job
//!   claim repository.
//! * [`api`]: the REST API.
//! * [`config`]: configuration loading.
//! * [`plugins`]: the connector plugin registry.
//!
//! The `certplane` binary (its own crate) adds the command line, the
//! operator CLI and the demo; this library does not depend on the agent.

pub mod api;
pub mod config;
pub mod engine;
pub mod faults;
pub mod grants;
pub mod metrics;
pub mod pipeline;
pub mod plugins;
pub mod replica;
pub mod scheduler;
pub mod secrets;
pub mod serve;
pub mod server;
pub mod store;
pub mod tls;
pub mod ui;
pub mod wake;
