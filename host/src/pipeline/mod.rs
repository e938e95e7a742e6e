//! The host's issuance pipeline: pure building blocks used between asking a
//! connector for a certificate and storing or deploying what it returned.
//!
//! - [`keygen`]: private key and CSR generation for "host key mode" (the
//!   host, not an agent, holds the key); re-exported from `certplane-pki`,
//!   which the agent uses too;
//! - [`certcheck`]: checks on an issued certificate (parse, key match,
//!   SANs, profile, validity, chain) before anything is stored, since
//!   nothing a connector returns is trusted;
//! - [`csrcheck`]: checks on a CSR an agent submits (signature, names, key
//!   type).

pub mod certcheck;
pub mod csrcheck;
pub use certplane_pki::keygen;
