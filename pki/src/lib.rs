//! Key material shared by the certplane host and agent: private key and CSR
//! generation ([`keygen`]) and PEM/fingerprint helpers ([`pem`]).
//!
//! Both sides generate keys the same way (the host in "host key mode", the
//! agent for the certificates it serves), so the code lives here once.

pub mod keygen;
pub mod pem;
