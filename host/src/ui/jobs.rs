//! Jobs: live status and last error, filtered by status and type, with
//! retry and cancel.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use maud::{Markup, html};
use serde_json::{Value, json};

use super::layout::{self, Page, badge, pager, text, when};
use super::{
    Session, UiError, UiState, after_action, enc, flash, list_path, names_by_id, page_of,
    target_label, wants_fragment,
};

const PER_PAGE: u32 = 50;
const STATUSES: [&str; 8] = [
    "pending",
    "running",
    "awaiting_csr",
    "polling",
    "failed",
    "completed",
    "cancelled",
    "awaiting_approval",
];
const TYPES: [&str; 5] = [
    "issuance",
    "renewal",
    "deployment",
    "revocation",
    "verification",
];

/// Statuses a job can still be cancelled in.
fn open(status: &str) -> bool {
    !matches!(status, "completed" | "cancelled")
}

/// A table of jobs with their controls; `back` is where actions return.
pub fn table(
    session: &Session,
    jobs: &[Value],
    target_name: &dyn Fn(&Value) -> String,
    back: &str,
) -> Markup {
    html! {
        table.jobs {
            thead { tr { th { "Job" } th { "Type" } th { "Status" } th { "Target" } th { "Attempts" } th { "Last error" } th { "Updated" } @if session.can_write() { th { "" } } } }
            tbody {
                @for j in jobs {
                    @let id = j["id"].as_str().unwrap_or_default();
                    @let status = j["status"].as_str().unwrap_or_default();
                    tr data-job=(id) {
                        td.mono title=(id) { (&id[..id.len().min(8)]) }
                        td { (text(&j["job_type"])) }
                        td { (badge(status)) }
                        td { (target_name(&j["target_id"])) }
                        td { (j["attempts"]) "/" (j["max_attempts"]) }
                        td.error { (text(&j["last_error"])) }
                        td { (when(&j["updated_at"])) }
                        @if session.can_write() {
                            td {
                                @let to = format!("/ui/jobs/{}", enc(id));
                                @let back = format!("?back={}", enc(back));
                                @if status == "failed" { (layout::button(session, &format!("{to}/retry{back}"), "Retry", None)) }
                                @if open(status) { (layout::button(session, &format!("{to}/cancel{back}"), "Cancel", Some("Cancel this job?"))) }
                            }
                        }
                    }
                }
                @if jobs.is_empty() { tr { td colspan="8" .muted { "No jobs." } } }
            }
        }
    }
}

/// `GET /ui/jobs`.
pub async fn page(
    State(state): State<UiState>,
    session: Session,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, UiError> {
    let page_no = page_of(&query);
    let path = list_path(
        "/jobs",
        page_no,
        PER_PAGE,
        &query,
        &["status", "job_type", "certificate_id", "agent_id"],
    );
    let (jobs, targets) = tokio::try_join!(
        state.get(&session, &path),
        state.all(&session, "/targets?include_retired=true", 1000),
    )?;
    let names: HashMap<&str, &str> = names_by_id(&targets);
    let target_name = |v: &Value| target_label(&names, v);
    let items = jobs["items"].as_array().cloned().unwrap_or_default();
    let total = jobs["total"].as_u64().unwrap_or(items.len() as u64);
    let selected = |k: &str, v: &str| query.get(k).is_some_and(|q| q == v);
    let content = html! {
        h1 { "Jobs" }
        form.filters method="get" action="/ui/jobs" {
            label { "Status" select name="status" { option value="" { "any" } @for s in STATUSES { option value=(s) selected[selected("status", s)] { (s) } } } }
            label { "Type" select name="job_type" { option value="" { "any" } @for t in TYPES { option value=(t) selected[selected("job_type", t)] { (t) } } } }
            button type="submit" { "Filter" }
        }
        (table(&session, &items, &target_name, "/ui/jobs"))
        (pager("/ui/jobs", &query, page_no, PER_PAGE, total))
    };
    Ok(Page {
        title: "Jobs",
        nav: "/ui/jobs",
        session: &session,
        flash: flash(&query),
        refresh: true,
    }
    .render(wants_fragment(&headers), content))
}

/// `POST /ui/jobs/{id}/{retry|cancel}?back=…`.
pub async fn act(
    State(state): State<UiState>,
    session: Session,
    Path((id, action)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    // Checked by `forms_guard` (the CSRF token); the body must be a form.
    Form(_): Form<HashMap<String, String>>,
) -> Result<Response, UiError> {
    if !matches!(action.as_str(), "retry" | "cancel") {
        return Err(UiError::Api(
            StatusCode::NOT_FOUND,
            format!("no action {action:?}"),
        ));
    }
    let answer = state
        .call(
            &session,
            Method::POST,
            &format!("/jobs/{}/{action}", enc(&id)),
            Some(&json!({})),
        )
        .await?;
    // Only back to a dashboard page: never an open redirect.
    let back = query
        .get("back")
        .filter(|b| b.starts_with("/ui") && !b.starts_with("//"))
        .cloned()
        .unwrap_or_else(|| "/ui/jobs".into());
    Ok(after_action(
        &back,
        if answer.status.is_success() {
            Ok(if action == "retry" {
                "job queued again"
            } else {
                "job cancelled"
            }
            .to_owned())
        } else {
            Err(answer.error_message())
        },
    ))
}
