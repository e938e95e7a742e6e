//! The per-call store data (`Store<CallState>`) and the host side of the
//! `config` and `log` imports.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::bindings::issuer::certplane::connector::{config, log};
use crate::bindings::types::Level;
use crate::bounds::Redactor;
use crate::egress::{DenialLog, EgressHooks};
use crate::instance::Secret;
use crate::limits::MemoryLimiter;

/// Longest plugin log message forwarded to tracing; the rest is cut so a
/// plugin cannot flood the host's logs with one line.
pub(crate) const MAX_LOG_MESSAGE: usize = 4096;

/// What one call may still write to the host's logs, and what it lost.
/// Lines over the budget are dropped and counted; when the call's store is
/// dropped (whichever way the call ended, cancellation included) one
/// warning reports the count, so a plugin cannot flood the host's logs
/// with one call either.
pub(crate) struct LogBudget {
    plugin: Arc<str>,
    instance: Arc<str>,
    lines_left: u32,
    bytes_left: u64,
    dropped_lines: u64,
    dropped_bytes: u64,
}

impl LogBudget {
    pub(crate) fn new(plugin: Arc<str>, instance: Arc<str>, lines: u32, bytes: u64) -> Self {
        LogBudget {
            plugin,
            instance,
            lines_left: lines,
            bytes_left: bytes,
            dropped_lines: 0,
            dropped_bytes: 0,
        }
    }

    /// Takes one line of `len` bytes from the budget, or counts it dropped.
    fn take(&mut self, len: usize) -> bool {
        let len = len as u64;
        if self.lines_left == 0 || len > self.bytes_left {
            self.dropped(len);
            return false;
        }
        self.lines_left -= 1;
        self.bytes_left -= len;
        true
    }

    fn dropped(&mut self, len: u64) {
        self.dropped_lines += 1;
        self.dropped_bytes = self.dropped_bytes.saturating_add(len);
    }
}

impl Drop for LogBudget {
    fn drop(&mut self) {
        if self.dropped_lines > 0 {
            let (lines, bytes) = (self.dropped_lines, self.dropped_bytes);
            tracing::warn!(
                target: "certplane::plugin",
                plugin = &*self.plugin,
                instance = &*self.instance,
                dropped_lines = lines,
                dropped_bytes = bytes,
                "plugin log: {lines} lines ({bytes} bytes) dropped"
            );
        }
    }
}

/// What one call's store holds. Created fresh for every call.
pub(crate) struct CallState {
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) table: ResourceTable,
    pub(crate) hooks: EgressHooks,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) settings: Arc<serde_json::Map<String, serde_json::Value>>,
    pub(crate) secrets: Arc<BTreeMap<String, Secret>>,
    /// The runtime's parsed signing keys (the `signing` import).
    pub(crate) keys: crate::signing::KeyCache,
    pub(crate) plugin: Arc<str>,
    pub(crate) instance: Arc<str>,
    pub(crate) denials: DenialLog,
    pub(crate) started: Instant,
    /// The call's wall-clock deadline (actions are cut to what is left).
    pub(crate) deadline: std::time::Duration,
    pub(crate) deadline_hit: bool,
    /// The named actions granted to the instance (targets).
    pub(crate) actions: Arc<BTreeMap<String, crate::actions::ActionSpec>>,
    /// The instance's secrets, redacted from every log line.
    pub(crate) redactor: Arc<Redactor>,
    pub(crate) log_budget: LogBudget,
    /// What the 1.1 imports answer, and what the call leaves behind.
    pub(crate) scope: crate::context::CallScope,
    /// Keeps the epoch ticker running for as long as this call's store.
    pub(crate) _ticking: crate::ticker::TickGuard,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for CallState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Renders one setting the way `config.get-setting` documents it: strings
/// and other scalars bare, objects and arrays as compact JSON.
fn render_setting(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl config::Host for CallState {
    fn get_setting(&mut self, name: String) -> Option<String> {
        self.settings
            .get(&name)
            .filter(|v| !v.is_null())
            .map(render_setting)
    }

    fn settings_json(&mut self) -> String {
        serde_json::Value::Object((*self.settings).clone()).to_string()
    }

    fn get_secret(&mut self, name: String) -> Option<String> {
        self.secrets.get(&name).map(|s| s.expose().to_string())
    }
}

/// Whether tracing records plugin lines of `level` at all: lines it would
/// discard neither spend the call's log budget nor cost a redaction.
fn enabled(level: Level) -> bool {
    use tracing::Level as L;
    match level {
        Level::Trace => tracing::enabled!(target: "certplane::plugin", L::TRACE),
        Level::Debug => tracing::enabled!(target: "certplane::plugin", L::DEBUG),
        Level::Info => tracing::enabled!(target: "certplane::plugin", L::INFO),
        Level::Warn => tracing::enabled!(target: "certplane::plugin", L::WARN),
        Level::Error => tracing::enabled!(target: "certplane::plugin", L::ERROR),
    }
}

impl log::Host for CallState {
    fn log(&mut self, level: Level, message: String) {
        if !enabled(level) {
            return;
        }
        if self.log_budget.lines_left == 0 {
            // Spent: count the line without the cost of redacting it.
            self.log_budget.dropped(message.len() as u64);
            return;
        }
        // Redacted before the cut, so a cut never leaves half a secret; the
        // budget counts what reaches the logs.
        let message = self.redactor.bound(&message, MAX_LOG_MESSAGE);
        if !self.log_budget.take(message.len()) {
            return;
        }
        let plugin = &*self.plugin;
        let instance = &*self.instance;
        match level {
            Level::Trace => {
                tracing::trace!(target: "certplane::plugin", plugin, instance, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "certplane::plugin", plugin, instance, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "certplane::plugin", plugin, instance, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "certplane::plugin", plugin, instance, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "certplane::plugin", plugin, instance, "{message}")
            }
        }
    }
}

impl crate::bindings::types::Host for CallState {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_render_scalars_bare_and_structures_as_json() {
        assert_eq!(render_setting(&serde_json::json!("x")), "x");
        assert_eq!(render_setting(&serde_json::json!(42)), "42");
        assert_eq!(render_setting(&serde_json::json!(true)), "true");
        assert_eq!(
            render_setting(&serde_json::json!({"a": [1]})),
            r#"{"a":[1]}"#
        );
    }

    #[test]
    fn the_log_budget_counts_what_it_drops() {
        let mut budget = LogBudget::new("p".into(), "i".into(), 2, 10);
        assert!(budget.take(4));
        assert!(!budget.take(7), "over the byte budget");
        assert!(budget.take(6));
        assert!(!budget.take(1), "over the line budget");
        assert_eq!((budget.dropped_lines, budget.dropped_bytes), (2, 8));
    }
}
