//! The host crate's integration tests, one binary (`cargo test -p
//! certplane-host --test host`; one file with e.g. `-- store_claims::`):
//! the store on SQLite and PostgreSQL, the API through the real router,
//! the pipeline with the packaged plugins, several replicas on one
//! database. Helpers come from `certplane-testkit`. Each former test file
//! is a module; add a module here for a new one.

mod actions;
mod api_agents;
mod api_audit_atomic;
mod api_basics;
mod api_certificates;
mod api_dns_solvers;
mod api_document;
mod api_input;
mod api_instances;
mod api_jobs;
mod api_keys;
mod api_semantics;
mod challenges_agent;
mod events;
mod inventory;
mod isolation;
mod issuer_acme;
mod issuer_digicert;
mod issuer_sectigo;
mod notifications;
mod pipeline;
mod pipeline_async;
mod registration_limits;
mod renewal_storm;
mod replicas;
mod store_claims;
mod store_migrations;
mod store_retirement;
mod store_transitions;
mod ui_session;
