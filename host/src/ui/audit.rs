//! The audit log, filtered by subject and actor.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use maud::{Markup, html};
use serde_json::Value;

use super::layout::{Page, json_block, pager, text, when};
use super::{Session, UiError, UiState, flash, list_path, page_of, wants_fragment};

const PER_PAGE: u32 = 50;

/// Audit events as a table.
pub fn table(events: &[Value]) -> Markup {
    html! {
        table.audit {
            thead { tr { th { "When" } th { "Actor" } th { "Action" } th { "Subject" } th { "Details" } } }
            tbody {
                @for e in events {
                    tr {
                        td { (when(&e["at"])) }
                        td { (text(&e["actor"])) " " span.muted { (text(&e["actor_type"])) } }
                        td { (text(&e["action"])) }
                        td { (text(&e["subject_type"])) " " span.mono { (text(&e["subject_id"])) } }
                        td { (json_block(&e["details"])) }
                    }
                }
                @if events.is_empty() { tr { td colspan="5" .muted { "Nothing recorded." } } }
            }
        }
    }
}

/// `GET /ui/audit`.
pub async fn page(
    State(state): State<UiState>,
    session: Session,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, UiError> {
    let page_no = page_of(&query);
    let path = list_path(
        "/audit",
        page_no,
        PER_PAGE,
        &query,
        &["subject_type", "subject_id", "actor"],
    );
    let list = state.get(&session, &path).await?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let total = list["total"].as_u64().unwrap_or(items.len() as u64);
    let content = html! {
        h1 { "Audit" }
        form.filters method="get" action="/ui/audit" {
            label { "Subject type" input name="subject_type" value=[query.get("subject_type")] placeholder="certificate, job, agent …"; }
            label { "Subject id" input name="subject_id" value=[query.get("subject_id")]; }
            label { "Actor" input name="actor" value=[query.get("actor")]; }
            button type="submit" { "Filter" }
        }
        (table(&items))
        (pager("/ui/audit", &query, page_no, PER_PAGE, total))
    };
    Ok(Page {
        title: "Audit",
        nav: "/ui/audit",
        session: &session,
        flash: flash(&query),
        refresh: false,
    }
    .render(wants_fragment(&headers), content))
}
