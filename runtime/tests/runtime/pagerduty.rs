//! The `pagerduty` connector on the real runtime (being written).
