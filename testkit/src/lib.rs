//! # certplane-testkit
//!
//! The test kit of certplane. Not shipped: only tests depend on it.
//!
//! * [`fake_ca`]: a fake asynchronous CA over HTTP that counts the orders it
//!   receives, for tests that must prove "exactly one order per
//!   certificate" (crash windows included). The `http-ca` test connector
//!   (`runtime/tests/fixtures/http-ca`) talks to it.
//! * [`test_plugin_manifest`]: where `scripts/build-plugins` put a test
//!   connector's manifest.

use std::path::PathBuf;

pub mod fake_ca;

pub use fake_ca::{FakeCa, FakeCaHandle, Fault, OrderInfo, OrderStatus};

/// The repository root (the directory holding the workspace `Cargo.toml`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ lives in the repository root")
        .to_path_buf()
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
