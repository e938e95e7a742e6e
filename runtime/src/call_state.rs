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
use crate::egress::{DenialLog, EgressHooks};
use crate::instance::Secret;
use crate::limits::MemoryLimiter;

/// Longest plugin log message forwarded to tracing; the rest is cut so a
/// plugin cannot flood the host's logs with one call.
const MAX_LOG_MESSAGE: usize = 4096;

/// What one call's store holds. Created fresh for every call.
pub(crate) struct CallState {
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) table: ResourceTable,
    pub(crate) hooks: EgressHooks,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) settings: Arc<serde_json::Map<String, serde_json::Value>>,
    pub(crate) secrets: Arc<BTreeMap<String, Secret>>,
    pub(crate) plugin: Arc<str>,
    pub(crate) instance: Arc<str>,
    pub(crate) denials: DenialLog,
    pub(crate) started: Instant,
    pub(crate) deadline_hit: bool,
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

impl log::Host for CallState {
    fn log(&mut self, level: Level, message: String) {
        let message = truncate(&message, MAX_LOG_MESSAGE);
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

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

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
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("hello", 10), "hello");
    }
}
