//! The runtime's integration tests, one binary (`cargo test -p
//! certplane-runtime --test runtime`): real compiled components, the
//! bundled connectors and the hostile ones. Each former test file is a
//! module; add a module here for a new one.

mod bounds;
mod common;
mod plugins;
mod sandbox;
