//! Host-side bindings of the `certplane:connector` worlds, generated from
//! `wit/`. The shared interfaces (`types`, `config`, `log`, and the 1.1
//! imports) are generated once, in the issuer world, and reused by the
//! other worlds.

#![allow(missing_docs)]

/// Bindings of `world issuer`.
pub mod issuer {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "certplane:connector/issuer",
        additional_derives: [PartialEq, Eq],
        exports: { default: async },
        require_store_data_send: true,
        with: {
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        },
    });
}

/// Bindings of `world target`.
pub mod target {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "certplane:connector/target",
        // An action waits for a process; everything else answers at once.
        imports: { "certplane:connector/actions": async },
        exports: { default: async },
        require_store_data_send: true,
        with: {
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "wasi:filesystem": wasmtime_wasi::p2::bindings::filesystem,
            "certplane:connector/types": super::issuer::certplane::connector::types,
            "certplane:connector/config": super::issuer::certplane::connector::config,
            "certplane:connector/log": super::issuer::certplane::connector::log,
            "certplane:connector/context": super::issuer::certplane::connector::context,
        },
    });
}

/// Bindings of `world notifier`.
pub mod notifier {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "certplane:connector/notifier",
        exports: { default: async },
        require_store_data_send: true,
        with: {
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "certplane:connector/types": super::issuer::certplane::connector::types,
            "certplane:connector/config": super::issuer::certplane::connector::config,
            "certplane:connector/log": super::issuer::certplane::connector::log,
        },
    });
}

pub use issuer::certplane::connector::types;

/// Bindings of `world dns-solver` (since 1.1).
pub mod dns_solver {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "certplane:connector/dns-solver",
        additional_derives: [PartialEq, Eq],
        exports: { default: async },
        require_store_data_send: true,
        with: {
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "certplane:connector/types": super::issuer::certplane::connector::types,
            "certplane:connector/config": super::issuer::certplane::connector::config,
            "certplane:connector/log": super::issuer::certplane::connector::log,
        },
    });
}

/// Bindings of `world issuer-with-lifecycle`, used only to probe an issuer
/// for the optional `issuer-lifecycle` export (since 1.1): its imports are
/// the issuer world's, already in the linker.
pub mod lifecycle {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "certplane:connector/issuer-with-lifecycle",
        additional_derives: [PartialEq, Eq],
        exports: { default: async },
        require_store_data_send: true,
        with: {
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "certplane:connector/types": super::issuer::certplane::connector::types,
            "certplane:connector/config": super::issuer::certplane::connector::config,
            "certplane:connector/log": super::issuer::certplane::connector::log,
            "certplane:connector/context": super::issuer::certplane::connector::context,
            "certplane:connector/store": super::issuer::certplane::connector::store,
            "certplane:connector/challenges": super::issuer::certplane::connector::challenges,
            "certplane:connector/signing": super::issuer::certplane::connector::signing,
        },
    });
}
