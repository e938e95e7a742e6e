//! `caddy` connector (being written).
