//! One certificate: its versions, where each is deployed and what was seen
//! on the wire, its jobs and audit trail, and renew / revoke / disable.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use maud::{Markup, html};
use serde_json::{Value, json};

use super::layout::{self, Page, badge, text, when};
use super::{
    Session, UiError, UiState, after_action, enc, flash, names_by_id, target_label, wants_fragment,
};

/// `GET /ui/certificates/{id}`.
pub async fn page(
    State(state): State<UiState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, UiError> {
    let path_id = enc(&id);
    let cert_path = format!("/certificates/{path_id}");
    let jobs_path = format!("/jobs?certificate_id={path_id}&per_page=100");
    let audit_path = format!("/audit?subject_type=certificate&subject_id={path_id}&per_page=50");
    let (cert, jobs, audit, targets) = tokio::try_join!(
        state.get(&session, &cert_path),
        state.get(&session, &jobs_path),
        state.get(&session, &audit_path),
        state.all(&session, "/targets?include_retired=true", 1000),
    )?;
    // The issuer by name: its id alone means nothing to an operator. A
    // retired issuer still answers GET; an unknown one falls back to the id.
    let issuer = match cert["issuer_id"].as_str() {
        Some(issuer_id) => state
            .get(&session, &format!("/issuers/{}", enc(issuer_id)))
            .await
            .ok(),
        None => None,
    };
    let target_names: HashMap<&str, &str> = names_by_id(&targets);
    let target_name = |v: &Value| target_label(&target_names, v);
    let jobs = jobs["items"].as_array().cloned().unwrap_or_default();
    let versions = cert["versions"].as_array().cloned().unwrap_or_default();
    let status = cert["status"].as_str().unwrap_or_default();
    let revoked = revoked_versions(&jobs);
    // Revocable: a current version not revoked yet (the API refuses a
    // second open revocation; a done one would be refused by the CA).
    let revocable = cert["current_version_id"]
        .as_str()
        .is_some_and(|v| !revoked.contains_key(v));
    let base = format!("/ui/certificates/{path_id}");
    let content = html! {
        h1 { "Certificate " (text(&cert["name"])) " " (badge(status)) }
        @if session.can_write() && status != "retired" {
            div.actions {
                // Only an active certificate renews: the API refuses the rest.
                @if status == "active" {
                    (layout::button(&session, &format!("{base}/renew"), "Renew now", None))
                    (layout::button(&session, &format!("{base}/disable"), "Disable", Some("Disable this certificate? It will not renew.")))
                } @else if status == "disabled" {
                    (layout::button(&session, &format!("{base}/enable"), "Enable", None))
                }
                @if revocable {
                    form.inline method="post" action={ (base) "/revoke" } data-confirm="Revoke the current version at the CA?" {
                        (layout::csrf(&session))
                        select name="reason" aria-label="revocation reason" {
                            @for r in ["unspecified", "key-compromise", "superseded", "cessation-of-operation", "affiliation-changed"] { option value=(r) { (r) } }
                        }
                        button.danger type="submit" { "Revoke" }
                    }
                }
            }
        }
        dl.facts {
            dt { "Common name" } dd.mono { (text(&cert["common_name"])) }
            dt { "Names" } dd.mono { (cert["sans"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
            dt { "Owner" } dd { (text(&cert["owner"])) }
            dt { "Key" } dd { (text(&cert["key_type"])) ", held by " (text(&cert["key_source"])) }
            dt { "Issuer" } dd {
                @match issuer.as_ref().and_then(|i| i["name"].as_str()) {
                    Some(name) => { (name) " " span.mono.muted { (text(&cert["issuer_id"])) } }
                    None => span.mono { (text(&cert["issuer_id"])) },
                }
            }
            dt { "Targets" } dd { (cert["target_ids"].as_array().map(|a| a.iter().map(&target_name).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
            dt { "Expires" } dd { (when(&cert["not_after"])) }
            dt { "Renews" } dd { (when(&cert["renew_at"])) }
            @if cert["disabled_reason"].is_string() { dt { "Disabled because" } dd { (text(&cert["disabled_reason"])) } }
        }
        h2 { "Versions" }
        table #versions {
            thead { tr { th { "Serial" } th { "Valid" } th { "SHA-256" } th { "Deployed to" } th { "Seen on the wire" } } }
            tbody {
                @for v in &versions {
                    @let vid = v["id"].as_str().unwrap_or_default();
                    tr data-version=(vid) {
                        td.mono {
                            (text(&v["serial"]))
                            @if let Some(at) = revoked.get(vid) { " " (badge("revoked")) " " (when(at)) }
                        }
                        td { (when(&v["not_before"])) " – " (when(&v["not_after"])) }
                        td.mono title=(v["fingerprint_sha256"].as_str().unwrap_or_default()) { (v["fingerprint_sha256"].as_str().map(|f| &f[..f.len().min(16)]).unwrap_or("—")) "…" }
                        td { (deployments(&jobs, vid, &target_name)) }
                        td { (seen_on_wire(&jobs, vid, &target_name)) }
                    }
                }
                @if versions.is_empty() { tr { td colspan="5" .muted { "Not issued yet." } } }
            }
        }
        h2 { "Jobs" }
        (super::jobs::table(&session, &jobs, &target_name, &base))
        h2 { "Audit trail" }
        (super::audit::table(audit["items"].as_array().map(Vec::as_slice).unwrap_or_default()))
    };
    Ok(Page {
        title: cert["name"].as_str().unwrap_or("Certificate"),
        nav: "/ui",
        session: &session,
        flash: flash(&query),
        refresh: true,
    }
    .render(wants_fragment(&headers), content))
}

/// Versions revoked at their CA (a completed revocation job): id → when.
fn revoked_versions(jobs: &[Value]) -> HashMap<&str, &Value> {
    jobs.iter()
        .filter(|j| j["job_type"] == "revocation" && j["status"] == "completed")
        .filter_map(|j| Some((j["certificate_version_id"].as_str()?, &j["finished_at"])))
        .collect()
}

/// The deployment jobs of version `vid`, one line per target.
fn deployments(jobs: &[Value], vid: &str, target_name: &dyn Fn(&Value) -> String) -> Markup {
    let rows: Vec<&Value> = jobs
        .iter()
        .filter(|j| j["job_type"] == "deployment" && j["certificate_version_id"] == vid)
        .collect();
    html! {
        @for j in &rows {
            div { (target_name(&j["target_id"])) " " (badge(j["status"].as_str().unwrap_or_default())) " " (when(&j["finished_at"])) }
        }
        @if rows.is_empty() { span.muted { "—" } }
    }
}

/// What was seen on the wire for version `vid`: the verification an agent
/// reported with its deployment, or a host verification job's.
fn seen_on_wire(jobs: &[Value], vid: &str, target_name: &dyn Fn(&Value) -> String) -> Markup {
    let rows: Vec<&Value> = jobs
        .iter()
        .filter(|j| {
            j["certificate_version_id"] == vid
                && (j["verification_result"].is_object() || j["job_type"] == "verification")
        })
        .collect();
    html! {
        @for j in &rows {
            @let r = &j["verification_result"];
            div.seen {
                (target_name(&j["target_id"])) " "
                @if r.is_object() {
                    (badge(r["status"].as_str().unwrap_or("unknown")))
                    " " (when(&r["checked_at"]))
                    @if let Some(f) = r["observed_fingerprint"].as_str() { " " span.mono title=(f) { (&f[..f.len().min(16)]) "…" } }
                    @if let Some(d) = r["detail"].as_str() { " " span.muted { (d) } }
                } @else {
                    (badge(j["status"].as_str().unwrap_or_default()))
                }
            }
        }
        @if rows.is_empty() { span.muted { "—" } }
    }
}

/// `POST /ui/certificates/{id}/{action}`: renew, revoke, disable, enable.
pub async fn act(
    State(state): State<UiState>,
    session: Session,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, UiError> {
    let path = format!("/certificates/{}", enc(&id));
    let (method, api_path, body, done) = match action.as_str() {
        "renew" => (
            Method::POST,
            format!("{path}/renew"),
            None,
            "renewal queued",
        ),
        "revoke" => (
            Method::POST,
            format!("{path}/revoke"),
            Some(
                json!({ "reason": form.get("reason").map(String::as_str).unwrap_or("unspecified") }),
            ),
            "revocation queued",
        ),
        "disable" => (
            Method::PATCH,
            path.clone(),
            Some(json!({ "status": "disabled" })),
            "disabled",
        ),
        "enable" => (
            Method::PATCH,
            path.clone(),
            Some(json!({ "status": "active" })),
            "enabled",
        ),
        _ => {
            return Err(UiError::Api(
                StatusCode::NOT_FOUND,
                format!("no action {action:?}"),
            ));
        }
    };
    let answer = state
        .call(&session, method, &api_path, body.as_ref())
        .await?;
    let back = format!("/ui/certificates/{}", enc(&id));
    Ok(after_action(
        &back,
        if answer.status.is_success() {
            Ok(done.to_owned())
        } else {
            Err(answer.error_message())
        },
    ))
}
