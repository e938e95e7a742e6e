//! Generated guest bindings for the worlds of `certplane:connector@1.1.0`.
//!
//! The `target` world imports a superset of what `issuer` and `notifier`
//! import, so it is generated first with every interface it reaches
//! (`generate_all`); the other two worlds reuse those modules through
//! wit-bindgen's `with` option, so a `ConnectorError` or a `wasi:http` type is
//! the same Rust type whichever world a connector implements.
//!
//! Each world's export macro is public, and the custom section describing a
//! world's *exports* is only emitted where that macro is invoked, so a
//! connector crate gets exactly the world it exports.

#![allow(missing_docs, clippy::all)]

/// Bindings of the `target` world, plus every interface the worlds import
/// (`wasi:http`, `wasi:io`, `wasi:filesystem`, `wasi:clocks`, and the
/// `types`, `config` and `log` interfaces of the contract).
pub mod target {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "certplane:connector/target@1.1.0",
        generate_all,
        pub_export_macro: true,
        export_macro_name: "export_target",
        default_bindings_module: "certplane_sdk::bindings::target",
        runtime_path: "certplane_sdk::__private::wit_bindgen::rt",
    });
}

/// Bindings of the `issuer` world.
pub mod issuer {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "certplane:connector/issuer@1.1.0",
        with: {
            "certplane:connector/context@1.1.0": crate::bindings::target::certplane::connector::context,
            "certplane:connector/types@1.1.0": crate::bindings::target::certplane::connector::types,
            "certplane:connector/config@1.1.0": crate::bindings::target::certplane::connector::config,
            "certplane:connector/log@1.1.0": crate::bindings::target::certplane::connector::log,
            "wasi:http/outgoing-handler@0.2.12": crate::bindings::target::wasi::http::outgoing_handler,
            "wasi:http/types@0.2.12": crate::bindings::target::wasi::http::types,
            "wasi:io/error@0.2.12": crate::bindings::target::wasi::io::error,
            "wasi:io/poll@0.2.12": crate::bindings::target::wasi::io::poll,
            "wasi:io/streams@0.2.12": crate::bindings::target::wasi::io::streams,
            "wasi:clocks/monotonic-clock@0.2.12": crate::bindings::target::wasi::clocks::monotonic_clock,
        },
        pub_export_macro: true,
        export_macro_name: "export_issuer",
        default_bindings_module: "certplane_sdk::bindings::issuer",
        runtime_path: "certplane_sdk::__private::wit_bindgen::rt",
    });
}

/// Bindings of the `notifier` world.
pub mod notifier {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "certplane:connector/notifier@1.1.0",
        with: {
            "certplane:connector/types@1.1.0": crate::bindings::target::certplane::connector::types,
            "certplane:connector/config@1.1.0": crate::bindings::target::certplane::connector::config,
            "certplane:connector/log@1.1.0": crate::bindings::target::certplane::connector::log,
            "wasi:http/outgoing-handler@0.2.12": crate::bindings::target::wasi::http::outgoing_handler,
            "wasi:http/types@0.2.12": crate::bindings::target::wasi::http::types,
            "wasi:io/error@0.2.12": crate::bindings::target::wasi::io::error,
            "wasi:io/poll@0.2.12": crate::bindings::target::wasi::io::poll,
            "wasi:io/streams@0.2.12": crate::bindings::target::wasi::io::streams,
            "wasi:clocks/monotonic-clock@0.2.12": crate::bindings::target::wasi::clocks::monotonic_clock,
        },
        pub_export_macro: true,
        export_macro_name: "export_notifier",
        default_bindings_module: "certplane_sdk::bindings::notifier",
        runtime_path: "certplane_sdk::__private::wit_bindgen::rt",
    });
}

/// Bindings of the `dns-solver` world.
pub mod dns_solver {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "certplane:connector/dns-solver@1.1.0",
        with: {
            "certplane:connector/types@1.1.0": crate::bindings::target::certplane::connector::types,
            "certplane:connector/config@1.1.0": crate::bindings::target::certplane::connector::config,
            "certplane:connector/log@1.1.0": crate::bindings::target::certplane::connector::log,
            "wasi:http/outgoing-handler@0.2.12": crate::bindings::target::wasi::http::outgoing_handler,
            "wasi:http/types@0.2.12": crate::bindings::target::wasi::http::types,
            "wasi:io/error@0.2.12": crate::bindings::target::wasi::io::error,
            "wasi:io/poll@0.2.12": crate::bindings::target::wasi::io::poll,
            "wasi:io/streams@0.2.12": crate::bindings::target::wasi::io::streams,
            "wasi:clocks/monotonic-clock@0.2.12": crate::bindings::target::wasi::clocks::monotonic_clock,
        },
        pub_export_macro: true,
        export_macro_name: "export_dns_solver",
        default_bindings_module: "certplane_sdk::bindings::dns_solver",
        runtime_path: "certplane_sdk::__private::wit_bindgen::rt",
    });
}
