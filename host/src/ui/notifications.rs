//! Notifications: each delivery's state, and the notifiers with their
//! queues (disabled ones marked).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use maud::html;

use super::layout::{Page, badge, pager, text, when};
use super::{
    Session, UiError, UiState, enc, flash, list_path, names_by_id, page_of, wants_fragment,
};

const PER_PAGE: u32 = 50;

/// `GET /ui/notifications`.
pub async fn page(
    State(state): State<UiState>,
    session: Session,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, UiError> {
    let page_no = page_of(&query);
    let path = list_path(
        "/notifications",
        page_no,
        PER_PAGE,
        &query,
        &["status", "notifier_id"],
    );
    let (list, notifiers) = tokio::try_join!(
        state.get(&session, &path),
        state.all(&session, "/notifiers", 1000),
    )?;
    let names: HashMap<&str, &str> = names_by_id(&notifiers);
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let total = list["total"].as_u64().unwrap_or(items.len() as u64);
    let selected = |k: &str, v: &str| query.get(k).is_some_and(|q| q == v);
    let content = html! {
        h1 { "Notifications" }
        h2 { "Notifiers" }
        table #notifiers {
            thead { tr { th { "Name" } th { "Plugin" } th { "State" } } }
            tbody {
                @for n in &notifiers {
                    tr {
                        td { a href={ "/ui/notifications?notifier_id=" (enc(n["id"].as_str().unwrap_or_default())) } { (text(&n["name"])) } }
                        td { (text(&n["plugin"])) }
                        td { @if n["disabled_at"].is_string() { (badge("disabled")) " since " (when(&n["disabled_at"])) } @else { (badge("active")) } }
                    }
                }
                @if notifiers.is_empty() { tr { td colspan="3" .muted { "No notifiers." } } }
            }
        }
        h2 { "Deliveries" }
        form.filters method="get" action="/ui/notifications" {
            label { "Status" select name="status" { option value="" { "any" } @for s in ["pending", "sending", "sent", "failed", "cancelled"] { option value=(s) selected[selected("status", s)] { (s) } } } }
            @if let Some(n) = query.get("notifier_id") { input type="hidden" name="notifier_id" value=(n); }
            button type="submit" { "Filter" }
        }
        table #deliveries {
            thead { tr { th { "Event" } th { "Notifier" } th { "Subject" } th { "Status" } th { "Attempts" } th { "Last error" } th { "Created" } th { "Sent" } } }
            tbody {
                @for d in &items {
                    tr {
                        td { (text(&d["event_type"])) }
                        td { (d["notifier_id"].as_str().map(|id| names.get(id).copied().unwrap_or(id)).unwrap_or("—")) }
                        td { (text(&d["subject"])) }
                        td { (badge(d["status"].as_str().unwrap_or_default())) }
                        td { (d["attempts"]) "/" (d["max_attempts"]) }
                        td { (text(&d["last_error"])) }
                        td { (when(&d["created_at"])) }
                        td { (when(&d["sent_at"])) }
                    }
                }
                @if items.is_empty() { tr { td colspan="8" .muted { "No notifications." } } }
            }
        }
        (pager("/ui/notifications", &query, page_no, PER_PAGE, total))
    };
    Ok(Page {
        title: "Notifications",
        nav: "/ui/notifications",
        session: &session,
        flash: flash(&query),
        refresh: true,
    }
    .render(wants_fragment(&headers), content))
}
