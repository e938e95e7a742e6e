//! The `nginx` connector on the real runtime (being written).
