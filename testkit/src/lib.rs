//! # certplane-testkit
//!
//! The test kit of certplane. Not shipped: only tests depend on it.
//!
//! * [`fake_ca`]: a fake asynchronous CA over HTTP that counts the orders it
//!   receives, for tests that must prove "exactly one order per
//!   certificate" (crash windows included). The `http-ca` test connector
//!   (`runtime/tests/fixtures/http-ca`) talks to it.
//! * [`fake_sectigo`]: a fake Sectigo Certificate Manager REST API (types,
//!   enroll, collect, status, revoke) for the `sectigo` issuer connector.
//! * [`test_plugin_manifest`]: where `scripts/build-plugins` put a test
//!   connector's manifest; [`plugins`]: the packaged connectors' directory,
//!   the shared compiled-plugin cache, directories with test connectors.
//! * [`ca`]: throwaway CAs and CSRs.
//! * [`pebble`]: a real ACME CA (Pebble, with `pebble-challtestsrv` as its
//!   DNS and HTTP-01 responder) on free ports, validation on;
//!   [`fake_ari`]: a fake ACME server for renewal information (RFC 9773)
//!   and newOrder's `replaces`, which the packaged Pebble predates.
//! * [`fake_cloudflare`]: a fake Cloudflare DNS API (TXT records, faults),
//!   optionally mirrored into a [`challtestsrv`] (`pebble-challtestsrv` on
//!   free ports, plus a TXT lookup) so real DNS queries see its records.
//! * [`server_thread`]: an axum router served on a loopback port from its
//!   own thread and runtime until dropped, which every fake above runs on.
//!
//! With the `host` feature (host, CLI and end-to-end tests):
//!
//! * [`db`]: test databases on SQLite and PostgreSQL and
//!   [`both_backends!`], which runs a scenario on each; [`fixtures`]: store
//!   rows;
//! * [`app`]: the API in process (real router, no socket) on a migrated
//!   store with API keys of every scope;
//! * [`stack`]: the in-process host (`serve` over HTTPS on a loopback
//!   port, the demo's [`stack::LocalHost`]) with a local-CA issuer and
//!   agent configurations, and the file-backed TLS server deployments are
//!   verified against.

use std::path::PathBuf;

pub mod ca;
pub mod caddy;
pub mod challtestsrv;
pub mod fake_ari;
pub mod fake_ca;
pub mod fake_chat;
pub mod fake_cloudflare;
/// A fake DigiCert CertCentral (Services API v2) for the `digicert` issuer
/// connector: counts orders, real certificates, injectable faults.
pub mod fake_digicert;
pub mod fake_pagerduty;
pub mod fake_sectigo;
pub mod nginx;
pub mod pebble;
pub mod plugins;
mod ports;
pub mod server_thread;
pub mod tls;

#[cfg(feature = "host")]
pub mod app;
#[cfg(feature = "host")]
pub mod db;
#[cfg(feature = "host")]
pub mod fixtures;
#[cfg(feature = "host")]
pub mod jobs;
#[cfg(feature = "host")]
pub mod stack;

pub use ca::{test_ca, test_csr};
pub use fake_ari::{FakeAri, RenewalWindow};
pub use fake_ca::{FakeCa, FakeCaHandle, Fault, OrderInfo, OrderStatus};
pub use fake_cloudflare::{CfFault, FakeCloudflare, FakeCloudflareHandle};
pub use fake_sectigo::{FakeSectigo, FakeSectigoHandle};
pub use pebble::{Pebble, PebbleOptions};
pub use plugins::{plugin_cache_dir, plugin_dir, plugin_dir_with_fixtures};

#[cfg(feature = "host")]
pub use app::ca_issuer;
#[cfg(feature = "host")]
pub use db::{Backend, TestDb, count, exec, pg_admin_url, test_options};
#[cfg(feature = "host")]
pub use stack::{Stack, wait_for};

/// The repository root (the directory holding the workspace `Cargo.toml`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ lives in the repository root")
        .to_path_buf()
}

/// A binary of this workspace in the test's own profile directory
/// (`target/<profile>/<name>`), for tests that run it as a process. Panics
/// with `build`, the command that makes it, when it is missing.
pub fn target_bin(name: &str, build: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/<profile>/deps/<test>")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing; build it: {build}",
        bin.display()
    );
    bin
}

/// The manifest of a packaged test connector, `target/test-plugins/{name}.toml`
/// (`http-ca`, `slow-ca`, `hostile`). Panics with the fix when it is missing:
/// tests never skip silently.
pub fn test_plugin_manifest(name: &str) -> PathBuf {
    let path = repo_root()
        .join("target")
        .join("test-plugins")
        .join(format!("{name}.toml"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-plugins first",
        path.display()
    );
    path
}
