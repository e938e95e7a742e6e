//! Client of the certplane host's `/api/v1`, shared by the operator CLI
//! (`certplane certs ...`) and the agent: one request per connection over
//! hyper and rustls, with the host trusted by CA file or pinned fingerprint
//! and no way to skip verification.

pub mod api;

pub use api::{
    ApiClient, ApiReply, ClientError, ClientOptions, DEFAULT_TIMEOUT, FingerprintVerifier,
    MAX_RESPONSE_BYTES, Trust, parse_pin,
};
