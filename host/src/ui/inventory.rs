//! The inventory (every certificate, searched and filtered, soonest expiry
//! first, with the weekly expiry chart) and the form that creates one.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use chrono::Utc;
use maud::html;
use serde_json::{Value, json};

use super::layout::{self, Page, badge, expiry_class, pager};
use super::{
    Session, UiError, UiState, after_action, enc, flash, names_by_id, page_of, wants_fragment,
};
use crate::store::{CertificateStatus, InventoryFilter};

/// Rows per inventory page.
const PER_PAGE: u32 = 50;
/// Weeks in the expiry chart.
const CHART_WEEKS: u32 = 12;

fn filter_of(query: &HashMap<String, String>) -> Result<InventoryFilter, String> {
    let non_empty = |k: &str| {
        query
            .get(k)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let status = match non_empty("status") {
        Some(s) => Some(
            s.parse::<CertificateStatus>()
                .map_err(|_| format!("unknown status {s:?}"))?,
        ),
        None => None,
    };
    Ok(InventoryFilter {
        search: non_empty("q"),
        owner: non_empty("owner"),
        issuer_id: non_empty("issuer"),
        status,
    })
}

/// `GET /ui`.
pub async fn page(
    State(state): State<UiState>,
    session: Session,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, UiError> {
    let filter =
        filter_of(&query).map_err(|e| UiError::Api(axum::http::StatusCode::BAD_REQUEST, e))?;
    let page_no = page_of(&query);
    let store = &state.engine.store;
    let offset = u64::from(page_no - 1) * u64::from(PER_PAGE);
    let ((rows, total), weeks, issuers) = tokio::try_join!(
        async {
            store
                .inventory_page(&filter, offset, PER_PAGE)
                .await
                .map_err(|e| {
                    UiError::Api(axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                })
        },
        async {
            store
                .expiry_by_week(&filter, CHART_WEEKS)
                .await
                .map_err(|e| {
                    UiError::Api(axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                })
        },
        state.all(&session, "/issuers", 1000),
    )?;
    let issuer_names: HashMap<&str, &str> = names_by_id(&issuers);
    let now = Utc::now();
    let selected = |k: &str, v: &str| query.get(k).is_some_and(|q| q == v);
    let content = html! {
        h1 { "Inventory" }
        form.filters method="get" action="/ui" {
            label { "Name" input type="search" name="q" value=[query.get("q")] placeholder="name or common name"; }
            label { "Owner" input type="text" name="owner" value=[query.get("owner")]; }
            label { "Issuer"
                select name="issuer" {
                    option value="" { "any" }
                    @for issuer in &issuers {
                        @let id = issuer["id"].as_str().unwrap_or_default();
                        option value=(id) selected[selected("issuer", id)] { (issuer["name"].as_str().unwrap_or(id)) }
                    }
                }
            }
            label { "Status"
                select name="status" {
                    option value="" { "active and disabled" }
                    @for s in ["active", "disabled", "retired"] {
                        option value=(s) selected[selected("status", s)] { (s) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        (layout::expiry_chart(&weeks))
        table #inventory {
            thead { tr { th { "Name" } th { "Common name" } th { "Owner" } th { "Issuer" } th { "Status" } th { "Expires" } th { "Renews" } } }
            tbody {
                @for cert in &rows {
                    tr {
                        td { a href={ "/ui/certificates/" (enc(&cert.id)) } { (cert.name) } }
                        td.mono { (cert.common_name) }
                        td { (cert.owner.as_deref().unwrap_or("—")) }
                        td { (issuer_names.get(cert.issuer_id.as_str()).copied().unwrap_or(cert.issuer_id.as_str())) }
                        td { (badge(&cert.status.to_string())) }
                        td class=(expiry_class(cert.not_after, now)) {
                            @match cert.not_after {
                                Some(t) => { (t.format("%Y-%m-%d")) " (" (human_days((t - now).num_days())) ")" }
                                None => "not issued yet",
                            }
                        }
                        td { (cert.renew_at.format("%Y-%m-%d %H:%M")) }
                    }
                }
                @if rows.is_empty() { tr { td colspan="7" .muted { "No certificate matches." } } }
            }
        }
        (pager("/ui", &query, page_no, PER_PAGE, total))
    };
    Ok(Page {
        title: "Inventory",
        nav: "/ui",
        session: &session,
        flash: flash(&query),
        refresh: true,
    }
    .render(wants_fragment(&headers), content))
}

fn human_days(days: i64) -> String {
    match days {
        d if d < 0 => format!("expired {} d ago", -d),
        0 => "today".into(),
        1 => "in 1 day".into(),
        d => format!("in {d} days"),
    }
}

/// `GET /ui/certificates/new`.
pub async fn new_form(
    State(state): State<UiState>,
    session: Session,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, UiError> {
    let issuers = state.all(&session, "/issuers", 1000).await?;
    let targets = state.all(&session, "/targets", 1000).await?;
    let content = html! {
        h1 { "New certificate" }
        @if !session.can_write() {
            p.muted { "This API key is read only." }
        } @else {
            form.stack method="post" action="/ui/certificates" {
                (layout::csrf(&session))
                label { "Name" input name="name" required pattern="[A-Za-z0-9._-]+" title="letters, digits, . _ -"; }
                label { "Common name" input name="common_name" required placeholder="www.example.com"; }
                label { "Other names (comma separated)" input name="sans"; }
                label { "Owner" input name="owner"; }
                label { "Issuer"
                    select name="issuer_id" required {
                        @for i in &issuers { option value=(i["id"].as_str().unwrap_or_default()) { (i["name"].as_str().unwrap_or_default()) " (" (i["plugin"].as_str().unwrap_or_default()) ")" } }
                    }
                }
                label { "Target"
                    select name="target_id" {
                        option value="" { "none" }
                        @for t in &targets { option value=(t["id"].as_str().unwrap_or_default()) { (t["name"].as_str().unwrap_or_default()) " (" (t["plugin"].as_str().unwrap_or_default()) ")" } }
                    }
                }
                label { "Key type"
                    select name="key_type" { @for k in ["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096", "ed25519"] { option value=(k) { (k) } } }
                }
                label { "Private key held by"
                    select name="key_source" { option value="" { "default (the target's agent if it has one)" } option value="host" { "the host" } option value="agent" { "the target's agent" } }
                }
                button type="submit" { "Create" }
            }
        }
    };
    Ok(Page {
        title: "New certificate",
        nav: "/ui/certificates/new",
        session: &session,
        flash: flash(&query),
        refresh: false,
    }
    .render(false, content))
}

/// `POST /ui/certificates`.
pub async fn create(
    State(state): State<UiState>,
    session: Session,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, UiError> {
    let field = |k: &str| form.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let mut body = json!({
        "name": field("name").unwrap_or_default(),
        "common_name": field("common_name").unwrap_or_default(),
        "issuer_id": field("issuer_id").unwrap_or_default(),
    });
    if let Some(sans) = field("sans") {
        let sans: Vec<&str> = sans
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        body["sans"] = json!(sans);
    }
    for key in ["owner", "key_type", "key_source"] {
        if let Some(v) = field(key) {
            body[key] = Value::from(v);
        }
    }
    if let Some(target) = field("target_id") {
        body["target_ids"] = json!([target]);
    }
    let answer = state
        .call(&session, Method::POST, "/certificates", Some(&body))
        .await?;
    if answer.status.is_success() {
        let id = answer.json["id"].as_str().unwrap_or_default();
        Ok(after_action(
            &format!("/ui/certificates/{}", enc(id)),
            Ok("certificate created; issuance is queued".into()),
        ))
    } else {
        Ok(after_action(
            "/ui/certificates/new",
            Err(answer.error_message()),
        ))
    }
}
