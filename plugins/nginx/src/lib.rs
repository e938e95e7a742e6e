//! `nginx` connector (being written).
