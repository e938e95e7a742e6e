//! `teams` connector (being written).
