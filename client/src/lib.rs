//! Client of the certplane host's `/api/v1`, shared by the operator CLI
//! (`certplane certs ...`) and the agent: hyper and rustls, one HTTP/2
//! connection kept and shared by a client's requests ([`conn`]), with the
//! host trusted by CA file or pinned fingerprint and no way to skip
//! verification.

pub mod api;
mod conn;

pub use api::{
    ApiClient, ApiReply, ClientError, ClientOptions, DEFAULT_TIMEOUT, FingerprintVerifier,
    MAX_RESPONSE_BYTES, Trust, parse_pin,
};
