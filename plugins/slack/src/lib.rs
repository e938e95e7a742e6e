//! `slack` connector (being written).
