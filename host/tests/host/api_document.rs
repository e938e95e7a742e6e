//! The OpenAPI document (`/api/v1/openapi.json`) tells generated clients
//! the truth: parameters sit where the server reads them, paging bounds are
//! the enforced ones, every operation lists the errors its place in the
//! request path can produce (with the error envelope), the roles it lists
//! are the ones its handler demands, and the checked-in copy
//! `docs/openapi.json` is exactly what the server serves.
//!
//! After a change to the API, regenerate the copy with
//! `UPDATE_OPENAPI=1 cargo nextest run -p certplane-host --test host -- api_document::`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use axum::http::{Method, StatusCode};
use certplane_host::api::listing::MAX_PER_PAGE;
use certplane_testkit::Backend;
use certplane_testkit::app::TestApp;
use serde_json::Value;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

/// The one operation exempt from the request timeout.
const LONG_POLL: &str = "/api/v1/agents/work";

fn checked_in_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")
}

/// The document as served, pretty-printed the way the copy is stored.
fn render(doc: &Value) -> String {
    let mut text = serde_json::to_string_pretty(doc).expect("document serialises");
    text.push('\n');
    text
}

async fn served(app: &TestApp) -> Value {
    let r = app
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json
}

/// Every (path, method, operation) of the document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                out.push((path.clone(), method.to_string(), op.clone()));
            }
        }
    }
    assert!(out.len() > 40, "only {} operations documented", out.len());
    out
}

fn responses(op: &Value) -> BTreeSet<String> {
    op["responses"]
        .as_object()
        .map(|r| r.keys().cloned().collect())
        .unwrap_or_default()
}

/// The schemes and roles of an operation's security requirements.
fn security(op: &Value) -> Vec<(String, Vec<String>)> {
    op["security"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .flat_map(|req| {
            req.iter().map(|(scheme, roles)| {
                let roles = roles
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect();
                (scheme.clone(), roles)
            })
        })
        .collect()
}

fn template_vars(path: &str) -> BTreeSet<String> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(str::to_owned)
        .collect()
}

/// Collects every `$ref` under `value`.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    if let Some(r) = v.as_str() {
                        out.push(r.to_owned());
                    }
                } else {
                    refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// The served document equals `docs/openapi.json` (regenerated with
/// `UPDATE_OPENAPI=1`), and is the same on both backends.
async fn document_is_checked_in(backend: Backend) {
    let app = TestApp::new(backend).await;
    let doc = served(&app).await;
    let text = render(&doc);
    let path = checked_in_path();
    if std::env::var_os("UPDATE_OPENAPI").is_some_and(|v| v == "1") {
        std::fs::write(&path, &text).expect("write docs/openapi.json");
        return;
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_default();
    if stored != text {
        let first_difference = stored
            .lines()
            .zip(text.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || "one is a prefix of the other".to_string(),
                |i| format!("line {}", i + 1),
            );
        panic!(
            "docs/openapi.json differs from the served document ({first_difference}); \
             regenerate it with UPDATE_OPENAPI=1 cargo nextest run -p certplane-host \
             --test host -- api_document::"
        );
    }
}

#[tokio::test]
async fn document_is_checked_in_sqlite() {
    document_is_checked_in(Backend::Sqlite).await;
}

#[tokio::test]
async fn document_is_checked_in_postgres() {
    document_is_checked_in(Backend::Postgres).await;
}

/// The structural promises a client generator relies on.
#[tokio::test]
async fn document_is_structurally_true() {
    let app = TestApp::new(Backend::Sqlite).await;
    let doc = served(&app).await;
    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .expect("security schemes");
    let mut problems = Vec::new();
    for (path, method, op) in operations(&doc) {
        let at = format!("{} {path}", method.to_uppercase());
        let statuses = responses(&op);
        let params = op["parameters"].as_array().cloned().unwrap_or_default();

        // Parameters: path ones are exactly the template's, required; the
        // rest sit in the query and are optional.
        let vars = template_vars(&path);
        let mut in_path = BTreeSet::new();
        for p in &params {
            let name = p["name"].as_str().unwrap_or_default().to_owned();
            match p["in"].as_str() {
                Some("path") => {
                    if !vars.contains(&name) {
                        problems.push(format!("{at}: path parameter {name} is not in the route"));
                    }
                    if p["required"] != true {
                        problems.push(format!("{at}: path parameter {name} is not required"));
                    }
                    in_path.insert(name.clone());
                }
                Some("query") => {
                    if p["required"] == true {
                        problems.push(format!("{at}: query parameter {name} is required"));
                    }
                }
                Some("header") if name == "If-None-Match" || name == "If-Match" => {
                    if p["required"] == true {
                        problems.push(format!("{at}: header {name} is required"));
                    }
                }
                other => problems.push(format!("{at}: parameter {name} in {other:?}")),
            }
            if name == "page" || name == "per_page" {
                let schema = &p["schema"];
                if p["in"] != "query" || schema["minimum"] != 1 {
                    problems.push(format!("{at}: {name} is not a query parameter from 1"));
                }
                if name == "per_page" && schema["maximum"] != MAX_PER_PAGE {
                    problems.push(format!("{at}: per_page maximum is not {MAX_PER_PAGE}"));
                }
            }
        }
        if in_path != vars {
            problems.push(format!(
                "{at}: route variables {vars:?} documented as {in_path:?}"
            ));
        }

        // Errors every operation can answer, all with the envelope.
        for status in ["400", "500"] {
            if !statuses.contains(status) {
                problems.push(format!("{at}: no {status}"));
            }
        }
        if path != LONG_POLL && !statuses.contains("503") {
            problems.push(format!("{at}: no 503 (request timeout)"));
        }
        for status in statuses.iter().filter(|s| s.as_str() >= "400") {
            let schema = &op["responses"][status]["content"]["application/json"]["schema"];
            if schema["$ref"] != "#/components/schemas/ErrorBody" {
                problems.push(format!("{at}: {status} is not the error envelope"));
            }
        }

        // Conditional requests: a 304 means If-None-Match in and ETag out,
        // a 412 means If-Match in.
        let header_param = |name: &str| {
            params
                .iter()
                .any(|p| p["in"] == "header" && p["name"] == name)
        };
        if statuses.contains("304")
            && (!header_param("If-None-Match")
                || op["responses"]["200"]["headers"]["ETag"].is_null())
        {
            problems.push(format!("{at}: 304 without If-None-Match and ETag"));
        }
        if statuses.contains("412") && !header_param("If-Match") {
            problems.push(format!("{at}: 412 without If-Match"));
        }

        // Security: every requirement names a scheme; credentials mean 401
        // and 429 (with Retry-After); a role above read_only means 403;
        // agent credentials mean 410.
        let security = security(&op);
        for (scheme, _) in &security {
            if !schemes.contains_key(scheme) {
                problems.push(format!("{at}: unknown security scheme {scheme}"));
            }
        }
        if !security.is_empty() {
            for status in ["401", "429"] {
                if !statuses.contains(status) {
                    problems.push(format!("{at}: secured but no {status}"));
                }
            }
        }
        if statuses.contains("429") && op["responses"]["429"]["headers"]["Retry-After"].is_null() {
            problems.push(format!("{at}: 429 without Retry-After"));
        }
        if statuses.contains("401")
            && op["responses"]["401"]["headers"]["WWW-Authenticate"].is_null()
        {
            problems.push(format!("{at}: 401 without WWW-Authenticate"));
        }
        let elevated = security.iter().any(|(scheme, roles)| {
            scheme == "bearer" && roles.iter().any(|r| r == "operator" || r == "admin")
        });
        if elevated && !statuses.contains("403") {
            problems.push(format!("{at}: needs operator/admin but no 403"));
        }
        if security.iter().any(|(scheme, _)| scheme == "agent") && !statuses.contains("410") {
            problems.push(format!("{at}: agent operation without 410"));
        }

        // Bodies: any body can be too large; a required JSON one can also
        // have the wrong content type or shape.
        if let Some(body) = op.get("requestBody") {
            if !statuses.contains("413") {
                problems.push(format!("{at}: body but no 413"));
            }
            if body["required"] == true {
                for status in ["415", "422"] {
                    if !statuses.contains(status) {
                        problems.push(format!("{at}: JSON body but no {status}"));
                    }
                }
            }
        }
    }

    // Every reference resolves within the document.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let pointer = r.strip_prefix('#').unwrap_or("<not local>");
        if doc.pointer(pointer).is_none() {
            problems.push(format!("$ref {r} does not resolve"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The roles the document lists are the ones the handlers demand: a
/// read-only key is refused (403) exactly where an operator or admin role
/// is listed, an operator key exactly where admin is; an API key is not an
/// agent credential (401), and no secured operation answers without one.
#[tokio::test]
async fn documented_roles_are_enforced() {
    let app = TestApp::new(Backend::Sqlite).await;
    let doc = served(&app).await;
    let mut problems = Vec::new();
    for (path, method, op) in operations(&doc) {
        let concrete: String = path
            .split('/')
            .map(|seg| {
                if seg.starts_with('{') {
                    "no-such-id"
                } else {
                    seg
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let at = format!("{m} {path}");
        let security = security(&op);
        let Some((scheme, roles)) = security.first() else {
            continue;
        };
        let anonymous = app.call(m.clone(), &concrete, None, None).await;
        if anonymous.status != StatusCode::UNAUTHORIZED {
            problems.push(format!("{at}: anonymous call got {}", anonymous.status));
        }
        if scheme == "agent" {
            let r = app.call(m.clone(), &concrete, Some(&app.admin), None).await;
            if r.status != StatusCode::UNAUTHORIZED {
                problems.push(format!(
                    "{at}: an API key got {} from an agent operation",
                    r.status
                ));
            }
            continue;
        }
        let role = roles.first().map(String::as_str).unwrap_or("");
        for (key, key_role) in [(&app.reader, "read_only"), (&app.operator, "operator")] {
            let r = app.call(m.clone(), &concrete, Some(key), None).await;
            let allowed = match role {
                "read_only" => true,
                "operator" => key_role == "operator",
                "admin" => false,
                other => {
                    problems.push(format!("{at}: unknown role {other:?}"));
                    continue;
                }
            };
            let refused = r.status == StatusCode::FORBIDDEN;
            if allowed == refused || r.status == StatusCode::UNAUTHORIZED {
                problems.push(format!(
                    "{at} (role {role}) with a {key_role} key: {} {}",
                    r.status, r.text
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
