//! Host-side bindings of the `certplane:connector` worlds, generated from
//! `wit/`. The shared interfaces (`types`, `config`, `log`) are generated once,
//! in the issuer world, and reused by the other two.

#![allow(missing_docs)]

/// Bindings of `world issuer`.
pub mod issuer {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "certplane:connector/issuer",
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
