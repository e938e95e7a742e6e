//! Agents: health, last heartbeat, the targets each runs, and retirement
//! (refused while targets depend on the agent, with the counts; forced
//! with a reason).

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use chrono::{DateTime, Utc};
use maud::html;
use serde_json::Value;

use super::layout::{self, Page, badge, text, when};
use super::{Session, UiError, UiState, after_action, enc, flash, wants_fragment};

/// `GET /ui/agents`.
pub async fn page(
    State(state): State<UiState>,
    session: Session,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, UiError> {
    let retired = query.get("include_retired").is_some_and(|v| v == "true");
    let agents_path = format!("/agents?include_retired={retired}");
    let (agents, targets) = tokio::try_join!(
        state.all(&session, &agents_path, 5000),
        state.all(&session, "/targets", 5000),
    )?;
    let mut by_agent: HashMap<&str, Vec<&Value>> = HashMap::new();
    for t in &targets {
        if let Some(agent) = t["agent_id"].as_str() {
            by_agent.entry(agent).or_default().push(t);
        }
    }
    let now = Utc::now();
    let content = html! {
        h1 { "Agents" }
        p {
            @if retired { a href="/ui/agents" { "Hide retired agents" } }
            @else { a href="/ui/agents?include_retired=true" { "Show retired agents" } }
        }
        table #agents {
            thead { tr { th { "Name" } th { "Status" } th { "Last heartbeat" } th { "Targets" } @if session.can_write() { th { "" } } } }
            tbody {
                @for a in agents.iter().filter(|a| a["sentinel"] != true) {
                    @let id = a["id"].as_str().unwrap_or_default();
                    @let status = a["status"].as_str().unwrap_or_default();
                    @let health = if a["retired_at"].is_string() { "retired" } else if a["online"] == true { "online" } else { "offline" };
                    @let targets = by_agent.get(id).cloned().unwrap_or_default();
                    tr data-agent=(id) {
                        td { (text(&a["name"])) div.muted.mono { (id) } }
                        td { (badge(health)) " " span.muted { (status) } }
                        td {
                            (when(&a["last_heartbeat_at"]))
                            @if let Some(age) = age_secs(&a["last_heartbeat_at"], now) { div.muted { (age) " s ago" } }
                        }
                        td {
                            @for t in &targets { div { (text(&t["name"])) " " span.muted { "(" (text(&t["plugin"])) ")" } } }
                            @if targets.is_empty() { span.muted { "none" } }
                        }
                        @if session.can_write() {
                            td {
                                @if health != "retired" {
                                    form.inline method="post" action={ "/ui/agents/" (enc(id)) "/retire" } data-confirm="Retire this agent?" {
                                        (layout::csrf(&session))
                                        @if !targets.is_empty() {
                                            label.muted { input type="checkbox" name="force" value="true"; " force, retiring its " (targets.len()) " target(s)" }
                                            input type="text" name="reason" placeholder="reason (needed to force)";
                                        }
                                        button.danger type="submit" { "Retire" }
                                    }
                                } @else {
                                    span.muted { (text(&a["retired_reason"])) }
                                }
                            }
                        }
                    }
                }
                @if agents.is_empty() { tr { td colspan="5" .muted { "No agents." } } }
            }
        }
    };
    Ok(Page {
        title: "Agents",
        nav: "/ui/agents",
        session: &session,
        flash: flash(&query),
        refresh: true,
    }
    .render(wants_fragment(&headers), content))
}

fn age_secs(value: &Value, now: DateTime<Utc>) -> Option<i64> {
    let at: DateTime<Utc> = value.as_str()?.parse().ok()?;
    Some((now - at).num_seconds().max(0))
}

/// `POST /ui/agents/{id}/retire`: without `force`, a retirement the API
/// refuses shows its dependency counts.
pub async fn retire(
    State(state): State<UiState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, UiError> {
    let mut path = format!("/agents/{}", enc(&id));
    if form.get("force").is_some_and(|f| f == "true") {
        let reason = form.get("reason").map(|r| r.trim()).unwrap_or_default();
        path.push_str(&format!("?force=true&reason={}", enc(reason)));
    }
    let answer = state.call(&session, Method::DELETE, &path, None).await?;
    let outcome = if answer.status.is_success() {
        Ok("agent retired".to_owned())
    } else {
        let mut message = answer.error_message();
        if let Some(counts) = answer.json["error"]["details"]["counts"].as_object() {
            let listed: Vec<String> = counts.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            message.push_str(&format!(" ({})", listed.join(", ")));
        }
        Err(message)
    };
    Ok(after_action("/ui/agents", outcome))
}
