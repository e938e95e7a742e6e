//! End-to-end tests of certplane across crates; the tests live in one
//! binary, `tests/tests/e2e/` (a module per scenario file), and run real
//! processes' code paths over real sockets.
