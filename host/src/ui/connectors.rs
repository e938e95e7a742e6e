//! Connectors: the loaded plugins (digest, contract version, limits) and
//! the issuer, target, notifier and DNS-solver instances with their
//! settings, grants and secret *names* — the API never returns secret
//! values, so neither can this page.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use maud::{Markup, html};
use serde_json::Value;

use super::layout::{Page, json_block, text, when};
use super::{Session, UiError, UiState, flash, wants_fragment};

/// `GET /ui/connectors`.
pub async fn page(
    State(state): State<UiState>,
    session: Session,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, UiError> {
    let (plugins, issuers, targets, notifiers, solvers) = tokio::try_join!(
        state.get(&session, "/plugins"),
        state.all(&session, "/issuers", 1000),
        state.all(&session, "/targets", 1000),
        state.all(&session, "/notifiers", 1000),
        state.all(&session, "/dns-solvers", 1000),
    )?;
    let plugins = plugins
        .as_array()
        .cloned()
        .or_else(|| plugins["items"].as_array().cloned())
        .unwrap_or_default();
    let content = html! {
        h1 { "Connectors" }
        h2 { "Loaded plugins" }
        table #plugins {
            thead { tr { th { "Plugin" } th { "Kind" } th { "Version" } th { "Contract" } th { "Digest" } th { "Limits" } th { "Secrets it takes" } } }
            tbody {
                @for p in &plugins {
                    tr {
                        td { (text(&p["name"])) div.muted { (text(&p["description"])) } }
                        td { (text(&p["kind"])) }
                        td { (text(&p["version"])) }
                        td { (text(&p["world_version"])) }
                        td.mono title=(p["sha256"].as_str().unwrap_or_default()) { "sha256:" (p["sha256"].as_str().map(|d| &d[..d.len().min(16)]).unwrap_or("—")) "…" }
                        td { (limits(&p["limits"])) }
                        td { (names(&p["secret_names"])) }
                    }
                }
            }
        }
        (instances("Issuers", &issuers))
        (instances("Targets", &targets))
        (instances("Notifiers", &notifiers))
        (instances("DNS solvers", &solvers))
    };
    Ok(Page {
        title: "Connectors",
        nav: "/ui/connectors",
        session: &session,
        flash: flash(&query),
        refresh: false,
    }
    .render(wants_fragment(&headers), content))
}

fn names(value: &Value) -> Markup {
    let list: Vec<&str> = value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    html! {
        @if list.is_empty() { span.muted { "none" } }
        @else { span.mono { (list.join(", ")) } }
    }
}

fn limits(value: &Value) -> Markup {
    let shown = |v: &Value, unit: &str| match v.as_u64() {
        Some(n) => format!("{n} {unit}"),
        None => "host default".to_owned(),
    };
    html! {
        div { span.muted { "deadline: " } (shown(&value["cpu_deadline_ms"], "ms")) }
        div { span.muted { "memory: " } (shown(&value["memory_mib"], "MiB")) }
        div { span.muted { "concurrency: " } (shown(&value["concurrency"], "calls at once")) }
    }
}

fn instances(title: &str, rows: &[Value]) -> Markup {
    html! {
        h2 { (title) }
        table.instances {
            thead { tr { th { "Name" } th { "Plugin" } th { "Runs on" } th { "Settings" } th { "Grants" } th { "Secret names" } th { "Updated" } } }
            tbody {
                @for r in rows {
                    tr {
                        td { (text(&r["name"])) @if r["disabled_at"].is_string() { " " span.badge.s-disabled { "disabled" } } }
                        td { (text(&r["plugin"])) " " span.muted { (text(&r["plugin_version"])) } }
                        td { @match r["agent_id"].as_str() { Some(a) => span.mono { (a) }, None => "host" } }
                        td { (json_block(&r["settings"])) }
                        td { (json_block(&r["grants"])) }
                        td { (names(&r["secret_names"])) }
                        td { (when(&r["updated_at"])) }
                    }
                }
                @if rows.is_empty() { tr { td colspan="7" .muted { "None." } } }
            }
        }
    }
}
