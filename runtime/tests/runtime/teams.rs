//! The `teams` connector on the real runtime (being written).
