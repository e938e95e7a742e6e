//! `pagerduty` connector (being written).
