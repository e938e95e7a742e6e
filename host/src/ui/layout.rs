//! The frame every page shares (navigation, notices, the refresh script)
//! and the small pieces pages are built from.

use std::collections::HashMap;

use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use super::session::{Session, whoami};

const CSS: &str = include_str!("assets/ui.css");
const JS: &str = include_str!("assets/ui.js");

/// The stylesheet.
pub async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        CSS,
    )
        .into_response()
}

/// The refresh script.
pub async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        JS,
    )
        .into_response()
}

/// The navigation entries: path and label.
const NAV: [(&str, &str); 7] = [
    ("/ui", "Inventory"),
    ("/ui/jobs", "Jobs"),
    ("/ui/agents", "Agents"),
    ("/ui/connectors", "Connectors"),
    ("/ui/notifications", "Notifications"),
    ("/ui/audit", "Audit"),
    ("/ui/certificates/new", "New certificate"),
];

/// A page: the whole document, or only its content when the refresh
/// script asks (`fragment`). `refresh` makes the script reload the
/// content every few seconds.
pub struct Page<'a> {
    pub title: &'a str,
    pub nav: &'a str,
    pub session: &'a Session,
    pub flash: Option<(bool, String)>,
    pub refresh: bool,
}

impl Page<'_> {
    /// The response for `content`.
    pub fn render(self, fragment: bool, content: Markup) -> Response {
        let body = if fragment {
            content
        } else {
            html! {
                (DOCTYPE)
                html lang="en" {
                    head {
                        meta charset="utf-8";
                        meta name="viewport" content="width=device-width, initial-scale=1";
                        title { (self.title) " · certplane" }
                        link rel="stylesheet" href="/ui/assets/ui.css";
                        script src="/ui/assets/ui.js" defer {}
                    }
                    body {
                        header {
                            a.brand href="/ui" { "certplane" }
                            nav {
                                @for (path, label) in NAV {
                                    @if path != "/ui/certificates/new" || self.session.can_write() {
                                        a href=(path) class=[(path == self.nav).then_some("active")] { (label) }
                                    }
                                }
                            }
                            div.session { (whoami(self.session)) }
                        }
                        @if let Some((is_error, text)) = &self.flash {
                            div class=(if *is_error { "flash error" } else { "flash notice" }) role="status" { (text) }
                        }
                        main #content data-refresh=[self.refresh.then_some("3000")] {
                            (content)
                        }
                    }
                }
            }
        };
        (
            [(header::CACHE_CONTROL, "no-store")],
            Html(body.into_string()),
        )
            .into_response()
    }
}

/// The sign-in page.
pub fn login_page(csrf: &str, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Sign in · certplane" }
                link rel="stylesheet" href="/ui/assets/ui.css";
            }
            body.login {
                form.card method="post" action="/ui/login" {
                    h1 { "certplane" }
                    @if let Some(error) = error { p.flash.error { (error) } }
                    label for="api_key" { "API key" }
                    input #api_key type="password" name="api_key" autocomplete="off" required autofocus;
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" { "Sign in" }
                    p.hint { "Any API key works; a read-only key sees no controls that change anything." }
                }
            }
        }
    }
}

/// A page for an error outside the frame.
pub fn bare_error(status: StatusCode, message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { (status) " · certplane" } link rel="stylesheet" href="/ui/assets/ui.css"; }
            body { main { h1 { (status) } p { (message) } p { a href="/ui" { "Back to the inventory" } } } }
        }
    }
}

/// A timestamp from the API as `YYYY-MM-DD HH:MM` UTC, with the exact
/// value as a tooltip.
pub fn when(value: &Value) -> Markup {
    match value.as_str().and_then(|s| s.parse::<DateTime<Utc>>().ok()) {
        Some(t) => {
            html! { time datetime=(t.to_rfc3339()) title=(t.to_rfc3339()) { (t.format("%Y-%m-%d %H:%M")) } }
        }
        None => html! { span.muted { "—" } },
    }
}

/// How soon `not_after` is: the CSS class that colours it.
pub fn expiry_class(not_after: Option<DateTime<Utc>>, now: DateTime<Utc>) -> &'static str {
    match not_after {
        None => "exp-none",
        Some(t) if t <= now => "exp-expired",
        Some(t) if t - now <= chrono::Duration::days(7) => "exp-week",
        Some(t) if t - now <= chrono::Duration::days(30) => "exp-month",
        Some(_) => "exp-ok",
    }
}

/// A status as a coloured badge.
pub fn badge(status: &str) -> Markup {
    html! { span class={ "badge s-" (status) } { (status) } }
}

/// A string field, or a dash.
pub fn text(value: &Value) -> Markup {
    match value.as_str() {
        Some(s) if !s.is_empty() => html! { (s) },
        _ => html! { span.muted { "—" } },
    }
}

/// Previous/next links keeping the other query parameters.
pub fn pager(
    base: &str,
    query: &HashMap<String, String>,
    page: u32,
    per_page: u32,
    total: u64,
) -> Markup {
    let pages = total.div_ceil(u64::from(per_page.max(1))).max(1);
    let link = |p: u64| {
        let mut pairs: Vec<(String, String)> = query
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "page" | "notice" | "error"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        pairs.sort();
        pairs.push(("page".into(), p.to_string()));
        let q: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", super::enc(k), super::enc(v)))
            .collect();
        format!("{base}?{}", q.join("&"))
    };
    let page = u64::from(page);
    html! {
        nav.pager {
            @if page > 1 { a rel="prev" href=(link(page - 1)) { "← Previous" } }
            span { "Page " (page) " of " (pages) " · " (total) " in all" }
            @if page < pages { a rel="next" href=(link(page + 1)) { "Next →" } }
        }
    }
}

/// A hidden CSRF field.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf()); }
}

/// A one-button form posting to `action`.
pub fn button(session: &Session, action: &str, label: &str, confirm: Option<&str>) -> Markup {
    html! {
        form.inline method="post" action=(action) data-confirm=[confirm] {
            (csrf(session))
            button type="submit" { (label) }
        }
    }
}

/// JSON shown as preformatted text.
pub fn json_block(value: &Value) -> Markup {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    html! { pre.json { (text) } }
}

/// The weekly expiry chart: one bar per week, as inline SVG.
pub fn expiry_chart(weeks: &[u64]) -> Markup {
    let max = weeks.iter().copied().max().unwrap_or(0).max(1);
    let (bar, gap, height) = (28u64, 6u64, 120u64);
    let width = weeks.len() as u64 * (bar + gap);
    html! {
        figure.chart {
            figcaption { "Certificates expiring per week (next " (weeks.len()) " weeks)" }
            svg width=(width) height=(height + 34) viewBox={ "0 0 " (width) " " (height + 34) } role="img" aria-label="certificates expiring per week" {
                @for (i, n) in weeks.iter().enumerate() {
                    @let h = n * height / max;
                    @let x = i as u64 * (bar + gap);
                    rect class=(if i == 0 { "bar soon" } else if i < 4 { "bar month" } else { "bar" })
                        x=(x) y=(height - h) width=(bar) height=(h) { title { "week " (i + 1) ": " (n) } }
                    text x=(x + bar / 2) y=(height + 14) text-anchor="middle" { (n) }
                    text.muted x=(x + bar / 2) y=(height + 30) text-anchor="middle" { "w" (i + 1) }
                }
            }
        }
    }
}
