//! The `traefik` connector on the real runtime (being written).
