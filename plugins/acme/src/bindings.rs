//! Bindings of `world issuer-with-lifecycle`.
//!
//! The SDK generates the `issuer` world but not this one: two generated
//! export macros for `issuer-api` in one crate would collide. So the world is
//! generated here, and every interface it imports is mapped (`with`) onto the
//! module the SDK already generated, so `ConnectorError`, the `wasi:http`
//! types behind `certplane_sdk::http` and the `config` behind
//! `certplane_sdk::settings` are the SDK's own types. Only the two exported
//! interfaces (`issuer-api`, `issuer-lifecycle`) are new code.

#![allow(missing_docs, clippy::all)]

wit_bindgen::generate!({
    path: "../../wit",
    world: "certplane:connector/issuer-with-lifecycle@1.1.0",
    with: {
        "certplane:connector/types@1.1.0": certplane_sdk::bindings::target::certplane::connector::types,
        "certplane:connector/config@1.1.0": certplane_sdk::bindings::target::certplane::connector::config,
        "certplane:connector/log@1.1.0": certplane_sdk::bindings::target::certplane::connector::log,
        "certplane:connector/context@1.1.0": certplane_sdk::bindings::target::certplane::connector::context,
        "certplane:connector/store@1.1.0": certplane_sdk::bindings::issuer::certplane::connector::store,
        "certplane:connector/challenges@1.1.0": certplane_sdk::bindings::issuer::certplane::connector::challenges,
        "wasi:http/outgoing-handler@0.2.12": certplane_sdk::bindings::target::wasi::http::outgoing_handler,
        "wasi:http/types@0.2.12": certplane_sdk::bindings::target::wasi::http::types,
        "wasi:io/error@0.2.12": certplane_sdk::bindings::target::wasi::io::error,
        "wasi:io/poll@0.2.12": certplane_sdk::bindings::target::wasi::io::poll,
        "wasi:io/streams@0.2.12": certplane_sdk::bindings::target::wasi::io::streams,
        "wasi:clocks/monotonic-clock@0.2.12": certplane_sdk::bindings::target::wasi::clocks::monotonic_clock,
    },
});

pub use certplane_sdk::bindings::issuer::certplane::connector::challenges::{
    self, Challenge, ChallengeKind, ChallengeState, ChallengeStatus,
};
pub use certplane_sdk::bindings::issuer::certplane::connector::store;
pub use certplane_sdk::bindings::target::certplane::connector::context;
pub use exports::certplane::connector::issuer_api::{
    CertificateRequest, Guest as IssuerApi, IssueResult, IssuedCertificate, Order,
    RevocationReason, RevocationRequest,
};
pub use exports::certplane::connector::issuer_lifecycle::{Guest as Lifecycle, RenewalInfo};
