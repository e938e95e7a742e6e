//! certplane host: control plane library (store, services) behind the `certplane` binary.

pub mod store;
