//! `traefik` connector (being written).
