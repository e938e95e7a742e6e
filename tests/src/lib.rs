//! End-to-end tests of certplane across crates; the tests live in
//! `tests/tests/*.rs` and run real processes' code paths over real sockets.
