//! The certplane agent: runs on the machines that serve TLS, generates the
//! private keys of their certificates locally, deploys certificates through
//! sandboxed target connectors with only the grants this machine allows,
//! and verifies on the wire that the new certificate is served.
//!
//! - [`config`]: TOML + `CERTPLANE_AGENT_*` settings, per-connector grants;
//! - [`state`]: the state directory (credential, keys, status; 0700/0600);
//! - [`hostapi`]: the host's agent API and what its answers mean;
//! - [`runner`]: registration, heartbeat and the long-poll loop;
//! - [`executor`]: CSRs, deployments and verification jobs;
//! - [`grants`]: narrowing the host's grant requests to the allowance;
//! - [`challenges`], [`webroot`], [`standalone`]: http-01 tokens, as
//!   files in the local web server's webroot or answered by the agent's
//!   own listener, checked the way the CA fetches them;
//! - [`backoff`]: reconnect delays.
//!
//! [`runner::run`] is the whole agent; the binary and the host's demo
//! both call it.

pub mod backoff;
pub mod challenges;
pub mod config;
pub mod executor;
pub mod grants;
pub mod hostapi;
pub mod runner;
pub mod standalone;
pub mod state;
pub mod webroot;

pub use config::AgentConfig;
pub use runner::{AgentError, Exit, Mode, run};
