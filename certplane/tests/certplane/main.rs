//! The `certplane` binary's integration tests, one binary (`cargo test -p
//! certplane --test certplane`): the operator CLI against a real host, and
//! the command line's logging. Each former test file is a module; add a
//! module here for a new one.

mod apikey_local;
mod cli;
mod logging;
