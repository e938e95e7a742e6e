//! The `caddy` connector on the real runtime (being written).
