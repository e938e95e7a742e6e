//! Logging into the host's log pipeline.
//!
//! Lines land in the host's `tracing` output tagged with the plugin's name
//! and instance id. The host may drop lines below its configured level and
//! truncates very long ones. Never log secrets.
//!
//! ```no_run
//! use certplane_sdk::log;
//!
//! let order_id = 42;
//! log::info!("order {order_id} placed");
//! log::warn!("CA answered slowly ({} ms)", 1200);
//! ```
//!
//! Outside WebAssembly (native unit tests of connector logic) the lines go to
//! standard error instead, so code that logs can be tested natively.

pub use crate::Level;

/// Emits one log line at `level`. The macros ([`info!`] and friends) are the
/// usual way to call this.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::target::certplane::connector::log::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{}] {message}", level_name(level));
}

/// Lower-case name of a level (`trace` .. `error`).
pub fn level_name(level: Level) -> &'static str {
    match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

/// Logs a line at `trace` level; arguments as for `format!`.
#[doc(hidden)]
#[macro_export]
macro_rules! __certplane_log_trace {
    ($($arg:tt)+) => {
        $crate::log::log($crate::log::Level::Trace, &::std::format!($($arg)+))
    };
}

/// Logs a line at `debug` level; arguments as for `format!`.
#[doc(hidden)]
#[macro_export]
macro_rules! __certplane_log_debug {
    ($($arg:tt)+) => {
        $crate::log::log($crate::log::Level::Debug, &::std::format!($($arg)+))
    };
}

/// Logs a line at `info` level; arguments as for `format!`.
#[doc(hidden)]
#[macro_export]
macro_rules! __certplane_log_info {
    ($($arg:tt)+) => {
        $crate::log::log($crate::log::Level::Info, &::std::format!($($arg)+))
    };
}

/// Logs a line at `warn` level; arguments as for `format!`.
#[doc(hidden)]
#[macro_export]
macro_rules! __certplane_log_warn {
    ($($arg:tt)+) => {
        $crate::log::log($crate::log::Level::Warn, &::std::format!($($arg)+))
    };
}

/// Logs a line at `error` level; arguments as for `format!`.
#[doc(hidden)]
#[macro_export]
macro_rules! __certplane_log_error {
    ($($arg:tt)+) => {
        $crate::log::log($crate::log::Level::Error, &::std::format!($($arg)+))
    };
}

/// Logs a line at `trace` level; arguments as for `format!`.
#[doc(inline)]
pub use crate::__certplane_log_trace as trace;

/// Logs a line at `debug` level; arguments as for `format!`.
#[doc(inline)]
pub use crate::__certplane_log_debug as debug;

/// Logs a line at `info` level; arguments as for `format!`.
#[doc(inline)]
pub use crate::__certplane_log_info as info;

/// Logs a line at `warn` level; arguments as for `format!`.
#[doc(inline)]
pub use crate::__certplane_log_warn as warn;

/// Logs a line at `error` level; arguments as for `format!`.
#[doc(inline)]
pub use crate::__certplane_log_error as error;

#[cfg(test)]
mod tests {
    #[test]
    fn macros_expand_natively() {
        let n = 3;
        crate::log::trace!("t {n}");
        crate::log::debug!("d {}", n);
        crate::log::info!("i");
        crate::log::warn!("w {n:?}");
        crate::log::error!("e");
        assert_eq!(super::level_name(super::Level::Warn), "warn");
    }
}
