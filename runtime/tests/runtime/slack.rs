//! The `slack` connector on the real runtime (being written).
