//! The host's background scheduler.
//!
//! Every periodic duty of the control plane (renewal enqueue, job processor,
//! job retry, lease reaper, agent health, notification dispatch, order
//! polling, expiry) is one *loop* run by [`ticker::Scheduler`]: a jittered
//! interval (±10 % by default), a timeout per tick, never two ticks of the
//! same loop at once, immediate wake-ups when the API creates work, and a
//! graceful shutdown that drains ticks in flight within a bound.

pub mod ticker;
