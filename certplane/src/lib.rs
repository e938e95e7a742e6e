//! The `certplane` binary's own code: the one place that wires the host
//! (API, engine, store), the agent and the API client together.
//!
//! * [`cli`]: the operator CLI (`certplane certs|agents|jobs|...`), an
//!   HTTPS client of the host API;
//! * [`demo`]: `certplane demo`, a host and an agent in one process.
//!
//! The server itself (`certplane serve`) is `certplane_host::serve`.

pub mod cli;
pub mod demo;
