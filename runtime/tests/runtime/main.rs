//! The runtime's integration tests, one binary (`cargo test -p
//! certplane-runtime --test runtime`): real compiled components, the
//! bundled connectors and the hostile ones. Each former test file is a
//! module; add a module here for a new one.

mod acme;
mod bounds;
mod caddy;
mod cloudflare_dns;
mod common;
mod contract;
mod digicert;
mod instance_tls;
mod local_ca_signing;
mod nginx;
mod notify_events;
mod pagerduty;
mod plugins;
mod sandbox;
mod sectigo;
mod slack;
mod teams;
mod traefik;
