//! The end-to-end tests, one binary (`cargo test -p certplane-e2e --test
//! e2e`): host, agent and plugins together on SQLite and PostgreSQL, the
//! agent in process and as a process. Helpers come from
//! `certplane-testkit` (`Stack`, the in-process host). Each scenario file
//! is a module beside this one (`tests/tests/e2e/<name>.rs`); add `mod
//! <name>;` here for a new one.

mod acme_standalone;
mod acme_webroot;
mod agent_e2e;
mod agent_http01;
mod agent_nginx;
mod agent_process;
mod crash;
mod host_https_e2e;
mod host_verification;
mod ui;
