//! # certplane-sdk
//!
//! Everything a certplane connector needs on the guest side: the generated
//! bindings of the `certplane:connector@1.1.0` worlds (`issuer`, `target`,
//! `notifier`, `dns-solver`) and the 1.1 imports ([`context`], [`store`],
//! [`challenges`], [`actions`], [`signing`]), and small helpers for what
//! every connector does:
//!
//! - [`http`]: a blocking HTTP client over `wasi:http/outgoing-handler`, with
//!   JSON, `Retry-After` parsing, a body size cap and a mapping from statuses
//!   and transport errors to [`ConnectorError`];
//! - [`pem`]: split PEM bundles, order chains leaf-first, SHA-256
//!   fingerprints;
//! - [`settings`]: the instance's settings (typed with serde) and secrets;
//! - [`log`]: `log::info!(...)` and friends into the host's log pipeline;
//! - [`files`]: atomic writes into a granted directory and the `verify_*`
//!   settings every target offers;
//! - [`notify`]: the event kinds of the host's `docs/events.md`, the
//!   `min_severity` / `events` filters and webhook posting notifiers share.
//!
//! A connector is a `cdylib` crate built for `wasm32-wasip2`; rustc then
//! produces a WebAssembly component directly. It implements the trait of one
//! world ([`issuer::Issuer`], [`target::Target`] or [`notifier::Notifier`])
//! and exports it with the matching macro ([`export_issuer!`],
//! [`export_target!`], [`export_notifier!`]).
//!
//! The host calls every export on a fresh instance, so nothing kept in
//! memory survives between calls; it also enforces a CPU deadline and a
//! memory cap per call, lets the connector reach only the hosts and
//! directories the operator granted, and turns a panic or trap into an error
//! for that one call. Return errors instead of panicking: they carry
//! messages the operator sees.
//!
//! ## A minimal connector
//!
//! ```no_run
//! use certplane_sdk::notifier::{Event, Notifier};
//! use certplane_sdk::{ConnectorError, PluginInfo, http, log, settings};
//!
//! struct Webhook;
//!
//! impl Notifier for Webhook {
//!     fn describe() -> PluginInfo {
//!         PluginInfo {
//!             name: "tiny-webhook".into(),
//!             version: env!("CARGO_PKG_VERSION").into(),
//!             description: "POSTs every event as JSON to one URL".into(),
//!             settings_schema: r#"{"type":"object","required":["url"],
//!                 "properties":{"url":{"type":"string","format":"uri"}}}"#
//!                 .into(),
//!             secret_names: vec![],
//!         }
//!     }
//!
//!     fn validate_config() -> Result<(), ConnectorError> {
//!         http::parse_url(&settings::required_setting("url")?)?;
//!         Ok(())
//!     }
//!
//!     fn notify(event: Event) -> Result<(), ConnectorError> {
//!         let url = settings::required_setting("url")?;
//!         log::debug!("delivering {} ({})", event.id, event.kind);
//!         http::Request::post(url)
//!             .header("webhook-id", event.id.as_str())
//!             .json(&serde_json::json!({
//!                 "kind": event.kind,
//!                 "summary": event.summary,
//!                 "subject": event.subject,
//!             }))?
//!             .send()?
//!             .error_for_status()?;
//!         Ok(())
//!     }
//! }
//!
//! certplane_sdk::export_notifier!(Webhook);
//! ```
//!
//! with a `Cargo.toml` holding
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! certplane-sdk = { path = "../sdk" }
//! serde_json = "1"
//! ```
//!
//! and built with `cargo build --release --target wasm32-wasip2`. Ship the
//! `.wasm` with a manifest (`plugin.toml`) naming the world, the capabilities
//! it asks for and its SHA-256; see `scripts/build-plugins` in the certplane
//! repository.
//!
//! ## What a built component imports
//!
//! Only what it uses, from this list: the contract's `certplane:connector`
//! `config`, `log` and `types`; `wasi:http/outgoing-handler` and
//! `wasi:http/types` (when it sends requests); `wasi:filesystem/preopens` and
//! `wasi:filesystem/types` (targets that touch files); `wasi:io`,
//! `wasi:clocks` and `wasi:random`; and, from Rust's standard library,
//! `wasi:cli/environment`, `exit`, `stdin`, `stdout`, `stderr` and the
//! `terminal-*` interfaces. Never `wasi:sockets`: the host does not provide
//! it, so do not use `std::net` sockets or crates that open connections
//! themselves; talk HTTP through [`http`]. Only pure-Rust dependencies build
//! for `wasm32-wasip2` here (no C compiler for wasm): prefer the RustCrypto
//! crates to `ring`.
//!
//! ## Native unit tests
//!
//! The crate also compiles for the host target, so connector logic can be
//! unit-tested with plain `cargo test`. There the contract's imports do not
//! exist: [`log`] writes to standard error, [`http::Request::send`] fails
//! with `unsupported`, and [`settings`] functions that reach the host panic
//! (use [`settings::settings_from_json`] in tests).

#![warn(missing_docs)]

// Lets the generated code and the exported macros name this crate as
// `certplane_sdk` from inside it too.
extern crate self as certplane_sdk;

pub mod bindings;
mod error;
pub mod files;
pub mod http;
pub mod log;
pub mod notify;
pub mod pem;
pub mod settings;

pub use bindings::target::certplane::connector::types::{
    ConnectorError, Level, PluginInfo, RateLimit,
};

/// Re-exported so connectors can use the SDK's `serde_json` without naming
/// it in their own manifest.
pub use serde_json;

pub mod issuer {
    //! The contract's `issuer` world: get certificates signed by a CA.
    //!
    //! Implement [`Issuer`] and export it with [`export_issuer!`](crate::export_issuer).
    //! `submit` returns the certificate or a pending [`Order`] whose `state`
    //! the host persists and hands back to `poll`; never sleep or loop
    //! waiting inside a call.
    pub use crate::bindings::issuer::exports::certplane::connector::issuer_api::{
        CertificateRequest, Guest as Issuer, IssueResult, IssuedCertificate, Order,
        RevocationReason, RevocationRequest,
    };
}

pub mod target {
    //! The contract's `target` world: install certificates where TLS is served.
    //!
    //! Implement [`Target`] and export it with [`export_target!`](crate::export_target).
    //! Targets also see the directories the agent granted, through `std::fs`
    //! (paths under the granted guest path) or
    //! [`crate::bindings::target::wasi::filesystem`]. `deploy` must be
    //! idempotent.
    pub use crate::bindings::target::exports::certplane::connector::target_api::{
        CertificateBundle, DeployResult, Endpoint, Guest as Target,
    };
}

pub mod notifier {
    //! The contract's `notifier` world: tell people about events.
    //!
    //! Implement [`Notifier`] and export it with
    //! [`export_notifier!`](crate::export_notifier). The host retries
    //! `transient` and `rate-limited` failures with the same `event.id`: use
    //! it as an idempotency key upstream.
    pub use crate::bindings::notifier::exports::certplane::connector::notifier_api::{
        Event, Guest as Notifier,
    };
}

pub mod dns_solver {
    //! The contract's `dns-solver` world (since 1.1): publish and remove the
    //! TXT records of ACME dns-01 challenges in one DNS provider's zones.
    //!
    //! Implement [`DnsSolver`] and export it with
    //! [`export_dns_solver!`](crate::export_dns_solver). `present` must be
    //! idempotent and leave other values under the same name alone;
    //! `cleanup` removes exactly the given value.
    pub use crate::bindings::dns_solver::exports::certplane::connector::dns_solver_api::{
        Guest as DnsSolver, TxtRecord,
    };
}

pub mod context {
    //! What an issuer or target call is about, beyond its arguments (since
    //! 1.1): the job (an idempotency key upstream), the version a renewal
    //! replaces, the certificate's options for this connector, and the
    //! real path behind a granted guest path.
    pub use crate::bindings::target::certplane::connector::context::{
        Job, PreviousVersion, current_job, host_path, options, predecessor,
    };
}

pub mod store {
    //! A small durable key-value space of this instance (since 1.1;
    //! issuers): at most 32 keys of 128 bytes, values of 16 KiB, sealed at
    //! rest by the host. A value set during a call is kept even if the call
    //! then fails.
    pub use crate::bindings::issuer::certplane::connector::store::{StoreError, delete, get, set};
}

pub mod challenges {
    //! Domain-validation challenges the host publishes for an issuer (since
    //! 1.1): ask which kinds are `supported` for a name, `present` them,
    //! return `pending`, and read their `status` in a later poll. The host
    //! withdraws them when the job ends.
    pub use crate::bindings::issuer::certplane::connector::challenges::{
        Challenge, ChallengeKind, ChallengeState, ChallengeStatus, present, status, supported,
        withdraw,
    };
}

pub mod actions {
    //! Named commands the operator granted this target instance (since
    //! 1.1): reload a web server, test its configuration. The connector
    //! names an action; what runs is defined only in the agent's (or the
    //! host's) configuration. [`run`] returns any exit status as an answer;
    //! [`run_ok`] treats a non-zero one as a failure.
    pub use crate::bindings::target::certplane::connector::actions::{ActionOutput, granted, run};

    use crate::ConnectorError;

    /// Runs `name` and returns its output when it exits 0. A non-zero exit
    /// (or a signal) is `rejected`, with the action's name and the end of
    /// what it wrote to standard error (or standard output when that is
    /// empty), which is where servers explain a refused configuration.
    pub fn run_ok(name: &str) -> Result<ActionOutput, ConnectorError> {
        let output = run(name)?;
        if output.exit_code == Some(0) {
            return Ok(output);
        }
        Err(ConnectorError::Rejected(failure_message(name, &output)))
    }

    /// One line for the operator about an action that did not exit 0.
    pub fn failure_message(name: &str, output: &ActionOutput) -> String {
        let status = match output.exit_code {
            Some(code) => format!("exited with status {code}"),
            None => "was ended by a signal".to_string(),
        };
        let said = if output.stderr.trim().is_empty() {
            output.stdout.trim()
        } else {
            output.stderr.trim()
        };
        let said = tail(said, 1024);
        if said.is_empty() {
            format!("action {name} {status}")
        } else {
            format!("action {name} {status}: {said}")
        }
    }

    fn tail(text: &str, max: usize) -> &str {
        if text.len() <= max {
            return text;
        }
        let mut start = text.len() - max;
        while !text.is_char_boundary(start) {
            start += 1;
        }
        &text[start..]
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn output(code: Option<i32>, stdout: &str, stderr: &str) -> ActionOutput {
            ActionOutput {
                exit_code: code,
                stdout: stdout.into(),
                stderr: stderr.into(),
            }
        }

        #[test]
        fn failure_messages_name_the_action_and_what_it_said() {
            assert_eq!(
                failure_message("nginx-test", &output(Some(1), "", "emerg: bad cert\n")),
                "action nginx-test exited with status 1: emerg: bad cert"
            );
            assert_eq!(
                failure_message("reload", &output(None, "out", "")),
                "action reload was ended by a signal: out"
            );
            assert_eq!(
                failure_message("reload", &output(Some(2), "", "")),
                "action reload exited with status 2"
            );
            let long = "é".repeat(2000);
            assert!(failure_message("x", &output(Some(1), "", &long)).len() < 1100);
        }
    }
}

pub mod signing {
    //! Signatures made by the host with a private key held in one of this
    //! instance's own secrets, and signature checks (since 1.1; issuers).
    //!
    //! The key never has to enter the connector: name the secret, and the
    //! host parses it once (a changed secret value is a new key), signs
    //! natively and returns the signature as it goes into an X.509
    //! signature BIT STRING. Only the calling instance's secrets can be
    //! named. Much faster than signing with a pure-Rust crate inside the
    //! component (a P-256 signature: tens of µs instead of milliseconds).
    //!
    //! ```no_run
    //! use certplane_sdk::signing;
    //! # fn tbs() -> Vec<u8> { vec![] }
    //! # fn demo() -> Result<(), certplane_sdk::ConnectorError> {
    //! let key = signing::key_info("ca_private_key_pem")?;
    //! // Compare key.spki_der with the CA certificate's public key, put
    //! // key.scheme.algorithm_oid() into the TBSCertificate, then:
    //! let signature = signing::sign("ca_private_key_pem", &tbs())?;
    //! # Ok(()) }
    //! ```
    //!
    //! Errors: `invalid-config` when the instance has no such secret or it
    //! holds no usable key (PKCS#8, SEC1 or PKCS#1 PEM; not encrypted);
    //! `rejected` for a message over [`MAX_MESSAGE_BYTES`]. [`verify`]
    //! answers `false` for a signature that does not verify and
    //! `unsupported` for an algorithm it does not check.
    pub use crate::bindings::issuer::certplane::connector::signing::{
        SignatureScheme, SigningKey, key_info, sign, verify,
    };

    /// Longest message the host signs or verifies (1 MiB).
    pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

    impl SignatureScheme {
        /// The X.509 signature algorithm of this scheme, a dotted OID
        /// (for RSA the AlgorithmIdentifier also carries NULL parameters).
        pub fn algorithm_oid(self) -> &'static str {
            match self {
                SignatureScheme::EcdsaP256Sha256 => "1.2.840.10045.4.3.2",
                SignatureScheme::EcdsaP384Sha384 => "1.2.840.10045.4.3.3",
                SignatureScheme::Ed25519 => "1.3.101.112",
                SignatureScheme::RsaPkcs1Sha256 => "1.2.840.113549.1.1.11",
            }
        }

        /// The key type, for people: `ECDSA P-256`, `Ed25519`, ...
        pub fn key_name(self) -> &'static str {
            match self {
                SignatureScheme::EcdsaP256Sha256 => "ECDSA P-256",
                SignatureScheme::EcdsaP384Sha384 => "ECDSA P-384",
                SignatureScheme::Ed25519 => "Ed25519",
                SignatureScheme::RsaPkcs1Sha256 => "RSA",
            }
        }
    }
}

/// Exports a type implementing [`issuer::Issuer`] as this component's
/// `issuer-api`: `certplane_sdk::export_issuer!(MyIssuer);` at the crate root
/// of a `cdylib`.
///
/// The export only exists when compiling for WebAssembly, so the same crate
/// also builds natively for unit tests (export names such as
/// `certplane:connector/issuer-api@1.1.0#submit` are not valid native symbols).
#[macro_export]
macro_rules! export_issuer {
    ($ty:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::issuer::export_issuer!($ty);
    };
}

/// Exports a type implementing [`target::Target`] as this component's
/// `target-api`: `certplane_sdk::export_target!(MyTarget);` at the crate root
/// of a `cdylib`. Like [`export_issuer!`], only when compiling for
/// WebAssembly.
#[macro_export]
macro_rules! export_target {
    ($ty:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::target::export_target!($ty);
    };
}

/// Exports a type implementing [`notifier::Notifier`] as this component's
/// `notifier-api`: `certplane_sdk::export_notifier!(MyNotifier);` at the
/// crate root of a `cdylib`. Like [`export_issuer!`], only when compiling for
/// WebAssembly.
#[macro_export]
macro_rules! export_notifier {
    ($ty:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::notifier::export_notifier!($ty);
    };
}

/// Exports a type implementing [`dns_solver::DnsSolver`] as this
/// component's `dns-solver-api`: `certplane_sdk::export_dns_solver!(MySolver);`
/// at the crate root of a `cdylib`. Like [`export_issuer!`], only when
/// compiling for WebAssembly.
#[macro_export]
macro_rules! export_dns_solver {
    ($ty:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::dns_solver::export_dns_solver!($ty);
    };
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;
}
