//! Input hygiene, on SQLite and PostgreSQL: a NUL byte or invalid UTF-8 in
//! any path segment or query parameter, and U+0000 in any JSON string or
//! key, is refused with 400 `invalid_input` before anything is written.
//!
//! The endpoints come from the OpenAPI document, so a route added later is
//! covered without touching this file: every path parameter, every query
//! parameter and every string leaf of every request body schema is tried.
//! A property test then pushes arbitrary strings through the same places
//! and checks that nothing answers 5xx and that a refused request changed
//! no row of any table. The dashboard (`/ui`) gets the same check on its
//! own filters, paths and forms, and the same time bound.

use std::collections::{BTreeMap, BTreeSet};

use crate::ui_session::{login_form, sign_in};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use certplane_host::engine::agent_reports;
use certplane_host::store::*;
use certplane_proto::agent::ResultRequest;
use certplane_testkit::app::{BOOTSTRAP, Reply, TestApp, error_code};
use certplane_testkit::{Backend, both_backends, fixtures};
use proptest::prelude::*;
use serde_json::{Value, json};

both_backends!(
    every_route_refuses_nul_and_invalid_utf8,
    arbitrary_strings_never_fail_badly_nor_write_when_refused,
    a_nul_in_an_agent_result_leaves_the_job_running,
    an_agent_result_ends_the_job_with_its_audit_row_or_not_at_all,
    an_escaped_backslash_is_not_a_nul,
    an_oversized_body_is_still_413,
    the_dashboard_refuses_nul_and_invalid_utf8_and_writes_nothing,
);

/// The endpoint families the API has; each must be found in the document
/// (`api-keys` too when the document has it).
const FAMILIES: &[&str] = &[
    "agents",
    "audit",
    "certificates",
    "dns-solvers",
    "issuers",
    "jobs",
    "notifications",
    "notifiers",
    "plugins",
    "targets",
];

// ------------------------------------------------------------ the document

/// One step into a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// How the host names a body field: `grants.directories[0].path`.
fn render(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn set_at(value: &mut Value, path: &[Step], new: Value) {
    let mut at = value;
    for step in path {
        at = match step {
            Step::Key(k) => &mut at[k.as_str()],
            Step::Index(i) => &mut at[*i],
        };
    }
    *at = new;
}

/// An operation of the API as the OpenAPI document describes it.
#[derive(Debug, Clone)]
struct Operation {
    method: Method,
    /// `/api/v1/agents/{id}`.
    template: String,
    family: String,
    path_params: Vec<String>,
    query_params: Vec<String>,
    /// A body with every string leaf of the schema set (`None`: no body).
    body: Option<Value>,
    /// Where the string leaves are.
    leaves: Vec<Vec<Step>>,
    /// Which credential it takes.
    caller: Caller,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Public,
    Agent,
    Operator,
}

impl Operation {
    fn name(&self) -> String {
        format!("{} {}", self.method, self.template)
    }
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            resolve(doc, &doc["components"]["schemas"][name])
        }
        None => schema,
    }
}

fn has_type(schema: &Value, name: &str) -> bool {
    match &schema["type"] {
        Value::String(t) => t == name,
        Value::Array(ts) => ts.iter().any(|t| t == name),
        _ => false,
    }
}

/// A value of `schema` with every string leaf set (and recorded in
/// `leaves`): objects get all their properties, free-form objects and maps
/// one key `k`, arrays one item.
fn skeleton(
    doc: &Value,
    schema: &Value,
    depth: usize,
    path: &mut Vec<Step>,
    leaves: &mut Vec<Vec<Step>>,
) -> Value {
    let schema = resolve(doc, schema);
    if depth > 6 {
        return Value::Null;
    }
    for combinator in ["oneOf", "anyOf"] {
        if let Some(alternatives) = schema[combinator].as_array()
            && let Some(alt) = alternatives
                .iter()
                .find(|a| !has_type(resolve(doc, a), "null") || a.get("$ref").is_some())
        {
            return skeleton(doc, alt, depth + 1, path, leaves);
        }
    }
    if let Some(parts) = schema["allOf"].as_array() {
        let mut merged = serde_json::Map::new();
        for part in parts {
            if let Value::Object(m) = skeleton(doc, part, depth + 1, path, leaves) {
                merged.extend(m);
            }
        }
        return Value::Object(merged);
    }
    if has_type(schema, "string") || schema["enum"].is_array() {
        leaves.push(path.clone());
        let value = schema["enum"]
            .as_array()
            .and_then(|e| e.first())
            .filter(|v| v.is_string())
            .cloned()
            .unwrap_or_else(|| Value::from("ok"));
        return value;
    }
    if has_type(schema, "array") {
        path.push(Step::Index(0));
        let item = skeleton(doc, &schema["items"], depth + 1, path, leaves);
        path.pop();
        return Value::Array(vec![item]);
    }
    if has_type(schema, "integer") || has_type(schema, "number") {
        return Value::from(1);
    }
    if has_type(schema, "boolean") {
        return Value::Bool(false);
    }
    if has_type(schema, "object") || schema["properties"].is_object() {
        let mut map = serde_json::Map::new();
        if let Some(props) = schema["properties"].as_object() {
            for (name, prop) in props {
                path.push(Step::Key(name.clone()));
                map.insert(name.clone(), skeleton(doc, prop, depth + 1, path, leaves));
                path.pop();
            }
        }
        if map.is_empty() {
            // A map or a free-form object (settings, secrets).
            path.push(Step::Key("k".into()));
            let item = match &schema["additionalProperties"] {
                Value::Object(s) if !s.is_empty() => {
                    skeleton(doc, &Value::Object(s.clone()), depth + 1, path, leaves)
                }
                _ => {
                    leaves.push(path.clone());
                    Value::from("ok")
                }
            };
            path.pop();
            map.insert("k".into(), item);
        }
        return Value::Object(map);
    }
    Value::Null
}

/// Every operation of the document.
fn operations(doc: &Value) -> Vec<Operation> {
    let mut out = Vec::new();
    let paths = doc["paths"].as_object().expect("paths");
    for (template, item) in paths {
        let family = template
            .trim_start_matches("/api/v1/")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        if family == "openapi.json" {
            continue;
        }
        for (method, op) in item.as_object().expect("path item") {
            let Ok(method) = Method::from_bytes(method.to_uppercase().as_bytes()) else {
                continue;
            };
            if !op.is_object() || op.get("responses").is_none() {
                continue;
            }
            let mut path_params = Vec::new();
            let mut query_params = Vec::new();
            let shared = item["parameters"].as_array().cloned().unwrap_or_default();
            let own = op["parameters"].as_array().cloned().unwrap_or_default();
            for p in shared.iter().chain(own.iter()) {
                let p = resolve(doc, p);
                let name = p["name"].as_str().expect("parameter name").to_owned();
                match p["in"].as_str() {
                    Some("path") => path_params.push(name),
                    Some("query") => query_params.push(name),
                    _ => {}
                }
            }
            let mut leaves = Vec::new();
            let body = op["requestBody"]["content"]
                .as_object()
                .and_then(|c| c.get("application/json"))
                .map(|media| skeleton(doc, &media["schema"], 0, &mut Vec::new(), &mut leaves));
            let schemes: Vec<String> = op["security"]
                .as_array()
                .map(|reqs| {
                    reqs.iter()
                        .filter_map(|r| r.as_object())
                        .flat_map(|r| r.keys().cloned())
                        .collect()
                })
                .unwrap_or_default();
            let caller = if schemes.iter().any(|s| s == "agent") {
                Caller::Agent
            } else if schemes.is_empty() {
                Caller::Public
            } else {
                Caller::Operator
            };
            out.push(Operation {
                method,
                template: template.clone(),
                family: family.clone(),
                path_params,
                query_params,
                body,
                leaves,
                caller,
            });
        }
    }
    out
}

async fn document(app: &TestApp) -> Value {
    let r = app
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json
}

// ------------------------------------------------------------- the world

/// Rows the requests can name, and an agent to make agent calls as.
struct World {
    credential: String,
    /// The agent's running job.
    job_id: String,
    /// Path parameter values by (family, parameter).
    ids: BTreeMap<(String, String), String>,
}

async fn register(app: &TestApp, name: &str) -> (String, String) {
    let r = app
        .call(
            Method::POST,
            "/api/v1/agents/register",
            None,
            Some(json!({ "name": name, "bootstrap_token": BOOTSTRAP })),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    (
        r.json["agent_id"].as_str().unwrap().to_owned(),
        r.json["credential"].as_str().unwrap().to_owned(),
    )
}

/// An agent holding the lease of a deployment job of a target of its own.
async fn agent_with_running_job(app: &TestApp, name: &str) -> (String, String, Job) {
    let (agent_id, credential) = register(app, name).await;
    let target = fixtures::target(&app.store, &agent_id, name).await;
    let job = app
        .store
        .create_job(NewJob::new(JobType::Deployment).target(&target.id))
        .await
        .unwrap();
    let r = app
        .get("/api/v1/agents/work?wait_secs=0", &credential)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let job = app.store.get_job(&job.id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Running, "the poll claims it");
    (agent_id, credential, job)
}

async fn world(app: &TestApp, tag: &str) -> World {
    let (agent_id, credential, job) = agent_with_running_job(app, &format!("agent-{tag}")).await;
    let issuer = fixtures::issuer(&app.store).await;
    let target = job.target_id.clone().expect("deployment target");
    let cert = fixtures::certificate(&app.store, &issuer.id, Some(&target), KeySource::Agent).await;
    let notifier = app
        .store
        .create_notifier(NewPluginInstance::new(
            format!("n-{}", new_id()),
            "webhook",
            "1.0.0",
        ))
        .await
        .unwrap();
    let solver = app
        .store
        .create_dns_solver(NewPluginInstance::new(
            format!("d-{}", new_id()),
            "cloudflare",
            "1.0.0",
        ))
        .await
        .unwrap();
    let mut ids = BTreeMap::new();
    let mut put = |family: &str, param: &str, value: &str| {
        ids.insert((family.to_owned(), param.to_owned()), value.to_owned());
    };
    put("agents", "id", &agent_id);
    put("agents", "job_id", &job.id);
    put("issuers", "id", &issuer.id);
    put("targets", "id", &target);
    put("certificates", "id", &cert.id);
    put("jobs", "id", &job.id);
    put("notifiers", "id", &notifier.id);
    put("dns-solvers", "id", &solver.id);
    World {
        credential,
        job_id: job.id,
        ids,
    }
}

impl World {
    /// The value of a path parameter that is not under test: a real id
    /// where one fits, so the request gets as far as it can.
    fn fill(&self, op: &Operation, param: &str) -> String {
        // The job of `/agents/jobs/{id}/...` is the agent's job.
        let key = if op.template.starts_with("/api/v1/agents/jobs/") && param == "id" {
            ("agents".to_owned(), "job_id".to_owned())
        } else {
            (op.family.clone(), param.to_owned())
        };
        self.ids
            .get(&key)
            .cloned()
            .unwrap_or_else(|| "missing".to_owned())
    }

    fn token<'a>(&'a self, app: &'a TestApp, op: &Operation) -> Option<&'a str> {
        match op.caller {
            Caller::Public => None,
            Caller::Agent => Some(&self.credential),
            Caller::Operator => Some(&app.admin),
        }
    }
}

/// Where a value goes.
#[derive(Debug, Clone)]
enum Site {
    Path(String),
    Query(String),
    Body(Vec<Step>),
}

impl Site {
    /// What the error's `param` should say.
    fn param(&self) -> String {
        match self {
            Site::Path(p) | Site::Query(p) => p.clone(),
            Site::Body(path) => render(path),
        }
    }
}

/// Every place of `op` a value can go; an operation with no declared
/// place gets an undeclared query parameter and, when it takes a body
/// method, an undeclared body field.
fn sites(op: &Operation) -> Vec<Site> {
    let mut out: Vec<Site> = op.path_params.iter().cloned().map(Site::Path).collect();
    out.extend(op.query_params.iter().cloned().map(Site::Query));
    out.extend(op.leaves.iter().cloned().map(Site::Body));
    out.push(Site::Query("undeclared".into()));
    if op.body.is_none() && op.method != Method::GET {
        out.push(Site::Body(vec![Step::Key("undeclared".into())]));
    }
    out
}

/// Percent-encodes everything but unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A request of `op` with `uri_value` (already encoded) or `json_literal`
/// (JSON text) at `site`, every other place filled with something sane.
fn request(
    app: &TestApp,
    world: &World,
    op: &Operation,
    site: &Site,
    uri_value: &str,
    json_literal: &str,
) -> Request<Body> {
    let mut path = op.template.clone();
    for param in &op.path_params {
        let value = match site {
            Site::Path(p) if p == param => uri_value.to_owned(),
            _ => encode(&world.fill(op, param)),
        };
        path = path.replace(&format!("{{{param}}}"), &value);
    }
    let mut query = Vec::new();
    if op.template == "/api/v1/agents/work" && !matches!(site, Site::Query(q) if q == "wait_secs") {
        query.push("wait_secs=0".to_owned());
    }
    if let Site::Query(name) = site {
        query.push(format!("{}={uri_value}", encode(name)));
    }
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let body = match site {
        Site::Body(leaf) => {
            const MARK: &str = "@@value-under-test@@";
            let mut body = op.body.clone().unwrap_or_else(|| json!({}));
            set_at(&mut body, leaf, Value::from(MARK));
            Some(
                body.to_string()
                    .replace(&format!("\"{MARK}\""), json_literal),
            )
        }
        _ => op.body.as_ref().map(Value::to_string),
    };
    let mut builder = Request::builder().method(op.method.clone()).uri(&path);
    if let Some(token) = world.token(app, op) {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let body = match body {
        Some(text) => {
            builder = builder.header("content-type", "application/json");
            Body::from(text)
        }
        None => Body::empty(),
    };
    builder
        .body(body)
        .unwrap_or_else(|e| panic!("{} {path}: {e}", op.method))
}

// ----------------------------------------------------------- the database

/// One query reading every row of every table, as text, by table;
/// `last_used_at` (which an authenticated request may record) left out.
/// Built once from the catalog, so a snapshot is one round trip.
async fn snapshot_query(store: &Store) -> String {
    let parts: Vec<String> = match store.pool() {
        PoolRef::Sqlite(pool) => {
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT name FROM sqlite_master WHERE type = 'table'
                 AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%' ORDER BY name",
            )
            .fetch_all(pool)
            .await
            .unwrap();
            let mut parts = Vec::new();
            for table in tables {
                let columns: Vec<String> = sqlx::query_scalar(&format!(
                    "SELECT name FROM pragma_table_info('{table}') WHERE name != 'last_used_at'"
                ))
                .fetch_all(pool)
                .await
                .unwrap();
                let row = columns
                    .iter()
                    .map(|c| format!("quote(\"{c}\")"))
                    .collect::<Vec<_>>()
                    .join(" || '|' || ");
                parts.push(format!(
                    "SELECT '{table}', (SELECT group_concat(r, char(10)) FROM
                     (SELECT {row} AS r FROM \"{table}\" ORDER BY r))"
                ));
            }
            parts
        }
        PoolRef::Postgres(pool) => {
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()
                 AND tablename NOT LIKE '_sqlx%' ORDER BY tablename",
            )
            .fetch_all(pool)
            .await
            .unwrap();
            tables
                .into_iter()
                .map(|table| {
                    format!(
                        "SELECT '{table}'::text, (SELECT string_agg(r, E'\\n' ORDER BY r) FROM
                         (SELECT (to_jsonb(t) - 'last_used_at')::text AS r FROM \"{table}\" t) s)"
                    )
                })
                .collect()
        }
    };
    assert!(parts.len() > 5, "{parts:?}");
    parts.join(" UNION ALL ")
}

/// Every row of every table (see [`snapshot_query`]), by table.
async fn snapshot(store: &Store, query: &str) -> BTreeMap<String, String> {
    let rows: Vec<(String, Option<String>)> = match store.pool() {
        PoolRef::Sqlite(pool) => sqlx::query_as(query).fetch_all(pool).await.unwrap(),
        PoolRef::Postgres(pool) => sqlx::query_as(query).fetch_all(pool).await.unwrap(),
    };
    let out: BTreeMap<String, String> = rows
        .into_iter()
        .map(|(table, rows)| (table, rows.unwrap_or_default()))
        .collect();
    assert!(out.contains_key("jobs") && out.contains_key("audit_events"));
    out
}

/// The tables whose rows differ.
fn changed(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    before
        .keys()
        .chain(after.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|t| before.get(*t) != after.get(*t))
        .cloned()
        .collect()
}

fn assert_invalid_input(r: &Reply, what: &str, param: Option<&str>) {
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {}", r.text);
    assert_eq!(error_code(r), "invalid_input", "{what}: {}", r.text);
    let message = r.json["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("NUL") || message.contains("UTF-8"),
        "{what}: the message says what is wrong: {message}"
    );
    if let Some(param) = param.filter(|p| !p.is_empty()) {
        assert_eq!(r.json["error"]["param"], param, "{what}: {}", r.text);
        assert!(
            message.contains(&format!("`{param}`")),
            "{what}: the message names `{param}`: {message}"
        );
    }
}

async fn app(backend: Backend) -> TestApp {
    TestApp::with_config(backend, |c| {
        c.api.rate_limit_per_second = 1_000_000;
        c.api.rate_limit_burst = 1_000_000;
        c.api.long_poll_max_secs = 1;
    })
    .await
}

// ---------------------------------------------------------------- tests

/// Every path parameter, query parameter and body string of every
/// operation, given a NUL (`%00`, `\u0000`) or invalid UTF-8 (`%FF`, an
/// overlong `%C0%80`): 400 `invalid_input` naming the place, and not one
/// row of the database changed.
async fn every_route_refuses_nul_and_invalid_utf8(backend: Backend) {
    let app = app(backend).await;
    let doc = document(&app).await;
    let ops = operations(&doc);
    let world = world(&app, "nul").await;
    let query = snapshot_query(&app.store).await;
    let before = snapshot(&app.store, &query).await;

    let families: BTreeSet<&str> = ops.iter().map(|o| o.family.as_str()).collect();
    for family in FAMILIES {
        assert!(families.contains(family), "no {family} in {families:?}");
    }
    // The schema walk reaches nested and repeated fields.
    for (op, field) in [
        ("POST /api/v1/agents/jobs/{id}/result", "changed[0]"),
        ("POST /api/v1/targets", "grants.directories[0].path"),
        ("POST /api/v1/certificates", "common_name"),
    ] {
        assert!(
            ops.iter()
                .any(|o| o.name() == op && o.leaves.iter().any(|l| render(l) == field)),
            "{op} has no body field {field}"
        );
    }

    let mut tried: BTreeMap<&str, usize> = BTreeMap::new();
    for op in &ops {
        for site in sites(op) {
            let cases: &[(&str, &str)] = match site {
                Site::Body(_) => &[("", r#""a\u0000b""#), ("", r#"["ok","\u0000"]"#)],
                _ => &[("a%00b", ""), ("%FF", ""), ("x%C0%80", "")],
            };
            for (uri_value, json_literal) in cases {
                let r = app
                    .send(request(&app, &world, op, &site, uri_value, json_literal))
                    .await;
                let what = format!("{} with {site:?} = {uri_value}{json_literal}", op.name());
                // `["ok","\u0000"]` puts the NUL one level down.
                let param = match &site {
                    Site::Body(_) if json_literal.starts_with('[') => {
                        format!("{}[1]", site.param())
                    }
                    _ => site.param(),
                };
                assert_invalid_input(&r, &what, Some(&param));
                *tried.entry(op.family.as_str()).or_default() += 1;
            }
        }
        if op.body.is_some() {
            // A key with U+0000 at the top of the body.
            let mut body = op.body.clone().unwrap();
            if let Value::Object(map) = &mut body {
                map.insert("bad\u{0}key".into(), Value::from(1));
            }
            let mut builder = Request::builder()
                .method(op.method.clone())
                .uri(op.template.replace(['{', '}'], ""))
                .header("content-type", "application/json");
            if let Some(token) = world.token(&app, op) {
                builder = builder.header("authorization", format!("Bearer {token}"));
            }
            let r = app
                .send(builder.body(Body::from(body.to_string())).unwrap())
                .await;
            assert_invalid_input(&r, &format!("{} with a NUL key", op.name()), None);
        }
    }
    // An unknown route: the segment is named by its position.
    let r = app.get("/api/v1/nowhere/%00", &app.admin).await;
    assert_invalid_input(&r, "unknown route", None);
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("path segment 4 "),
        "{}",
        r.text
    );

    assert!(tried.values().sum::<usize>() > 200, "{tried:?}");
    for family in FAMILIES {
        assert!(tried.get(family).is_some_and(|n| *n >= 3), "{tried:?}");
    }
    let after = snapshot(&app.store, &query).await;
    assert_eq!(changed(&before, &after), Vec::<String>::new());
    // The agent's job (every result above carried a NUL) is still running.
    let job = app.store.get_job(&world.job_id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Running);
}

/// A value for a place: arbitrary text (encoded properly wherever it
/// goes), raw percent-escapes, or a raw JSON string literal.
#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    RawUri(String),
    RawJson(String),
}

const SPECIAL: &[&str] = &[
    "\0",
    "\0\0",
    "a\0",
    "\u{FFFD}",
    "\u{10FFFF}",
    "\u{FEFF}",
    "\u{202E}",
    "💥",
    "\\u0000",
    "%00",
    "'; DROP TABLE jobs; --",
    "..",
    "/",
    "?",
    "#",
    "&",
    "=",
    "+",
    " ",
    "\r\n",
    "\t",
    "\u{1}",
    "\u{7F}",
];

const RAW_URI: &[&str] = &[
    "%00",
    "a%00",
    "%FF",
    "%C3",
    "%C3%28",
    "%ED%A0%80",
    "%F4%90%80%80",
    "%C0%80",
    "%",
    "%G0",
    "%0",
    "%E2%82%AC",
    "%F0%9F%92%A5",
];

const RAW_JSON: &[&str] = &[
    r#""\ud800""#,
    r#""\udc00x""#,
    r#""a\ud83d""#,
    r#""\ud83d\ude00""#,
    r#""\u0000""#,
    r#""x\u0000y""#,
    r#""\\u0000""#,
    r#""\\\u0000""#,
    r#""\U0000""#,
    r#""\u00""#,
    r#""\ud800\u0000""#,
];

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        3 => any::<String>().prop_map(Piece::Text),
        3 => prop::collection::vec(any::<char>(), 0..24)
            .prop_map(|c| Piece::Text(c.into_iter().collect())),
        1 => prop::collection::vec(any::<char>(), 1000..3000)
            .prop_map(|c| Piece::Text(c.into_iter().collect())),
        2 => (".{0,6}", prop::sample::select(SPECIAL), ".{0,6}")
            .prop_map(|(a, b, c)| Piece::Text(format!("{a}{b}{c}"))),
        2 => (prop::sample::select(RAW_URI), ".{0,6}")
            .prop_map(|(raw, tail)| Piece::RawUri(format!("{raw}{}", encode(&tail)))),
        2 => prop::sample::select(RAW_JSON).prop_map(|s| Piece::RawJson(s.to_owned())),
    ]
}

impl Piece {
    fn uri(&self) -> String {
        match self {
            Piece::Text(s) | Piece::RawJson(s) => encode(s),
            Piece::RawUri(raw) => raw.clone(),
        }
    }

    fn json(&self) -> String {
        match self {
            Piece::Text(s) | Piece::RawUri(s) => Value::from(s.as_str()).to_string(),
            Piece::RawJson(literal) => literal.clone(),
        }
    }
}

fn percent_decode(raw: &str) -> Vec<u8> {
    let bytes = raw.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// Arbitrary strings (NUL, lone surrogates, invalid percent-encodings,
/// long and exotic unicode) through every place of every operation, 64
/// per family: never a 5xx, a 4xx always in the envelope and with no row
/// of any table changed, and whatever holds a NUL or invalid UTF-8 is
/// `invalid_input`.
async fn arbitrary_strings_never_fail_badly_nor_write_when_refused(backend: Backend) {
    let app = app(backend).await;
    let doc = document(&app).await;
    let ops = operations(&doc);
    let handle = tokio::runtime::Handle::current();
    let families: BTreeSet<String> = ops.iter().map(|o| o.family.clone()).collect();
    let query = snapshot_query(&app.store).await;
    for family in families {
        let world = world(&app, &family).await;
        let family_ops: Vec<&Operation> = ops.iter().filter(|o| o.family == family).collect();
        let state = std::sync::Mutex::new(snapshot(&app.store, &query).await);
        let config = ProptestConfig {
            cases: 64,
            failure_persistence: None,
            ..ProptestConfig::default()
        };
        let mut runner = proptest::test_runner::TestRunner::new(config);
        let strategy = (
            any::<prop::sample::Index>(),
            any::<prop::sample::Index>(),
            piece(),
        );
        let result = tokio::task::block_in_place(|| {
            runner.run(&strategy, |(op_at, site_at, piece)| {
                let op = family_ops[op_at.index(family_ops.len())];
                let places = sites(op);
                let site = &places[site_at.index(places.len())];
                let (uri_value, json_literal) = (piece.uri(), piece.json());
                let expect_invalid = match site {
                    Site::Path(_) | Site::Query(_) => {
                        let decoded = percent_decode(&uri_value);
                        decoded.contains(&0) || std::str::from_utf8(&decoded).is_err()
                    }
                    Site::Body(_) => {
                        // The body as sent, parsed by someone else.
                        let req = request(&app, &world, op, site, &uri_value, &json_literal);
                        let bytes = handle
                            .block_on(certplane_host::api::body_bytes(req.into_body()))
                            .unwrap();
                        serde_json::from_slice::<Value>(&bytes).is_ok_and(|v| holds_nul(&v))
                    }
                };
                let (r, after) = handle.block_on(async {
                    let r = app
                        .send(request(&app, &world, op, site, &uri_value, &json_literal))
                        .await;
                    (r, snapshot(&app.store, &query).await)
                });
                // Taken before any assertion, so that the shrinking runs
                // after a failure compare against the right rows.
                let before = std::mem::replace(&mut *state.lock().unwrap(), after.clone());
                let what = format!("{} with {site:?} = {piece:?}", op.name());
                prop_assert!(
                    !r.status.is_server_error(),
                    "{what}: {} {}",
                    r.status,
                    r.text
                );
                if r.status.is_client_error() {
                    let err = &r.json["error"];
                    prop_assert!(
                        err["code"].is_string()
                            && err["message"].is_string()
                            && err["request_id"].is_string(),
                        "{what}: no envelope: {}",
                        r.text
                    );
                    let diff = changed(&before, &after);
                    prop_assert!(
                        diff.is_empty(),
                        "{what}: refused with {} but changed {diff:?}: {}",
                        r.status,
                        r.text
                    );
                }
                if expect_invalid {
                    prop_assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}: {}", what, r.text);
                    prop_assert_eq!(&r.json["error"]["code"], "invalid_input", "{}", what);
                } else {
                    prop_assert!(
                        r.json["error"]["code"] != "invalid_input",
                        "{what}: refused as invalid input: {}",
                        r.text
                    );
                }
                Ok(())
            })
        });
        if let Err(e) = result {
            panic!("{family}: {e}");
        }
    }
}

async fn job_audit_rows(app: &TestApp, job_id: &str) -> Vec<AuditEvent> {
    app.store
        .list_audit_events(Some("job"), Some(job_id), 100)
        .await
        .unwrap()
}

/// The fuzzer's case: a NUL in `changed` is refused before the job is
/// touched (no 500, no job completed without its audit row); the same
/// report without it then completes the job with its audit row.
async fn a_nul_in_an_agent_result_leaves_the_job_running(backend: Backend) {
    let app = app(backend).await;
    let (agent_id, credential, job) = agent_with_running_job(&app, "edge").await;
    let query = snapshot_query(&app.store).await;
    let before = snapshot(&app.store, &query).await;
    let path = format!("/api/v1/agents/jobs/{}/result", job.id);
    let r = app
        .post(
            &path,
            &credential,
            json!({ "outcome": "success", "changed": ["/etc/ssl/a\u{0}b"], "attempt": job.attempts }),
        )
        .await;
    assert_invalid_input(&r, "result with a NUL", Some("changed[0]"));
    let stored = app.store.get_job(&job.id).await.unwrap().unwrap();
    assert_eq!(stored.status, JobStatus::Running);
    assert_eq!(stored.lease_owner.as_deref(), Some(agent_id.as_str()));
    assert!(job_audit_rows(&app, &job.id).await.is_empty());
    assert_eq!(
        changed(&before, &snapshot(&app.store, &query).await),
        Vec::<String>::new()
    );

    let r = app
        .post(
            &path,
            &credential,
            json!({ "outcome": "success", "changed": ["/etc/ssl/ab"], "attempt": job.attempts }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "completed");
    let stored = app.store.get_job(&job.id).await.unwrap().unwrap();
    assert_eq!(stored.status, JobStatus::Completed);
    let audit = job_audit_rows(&app, &job.id).await;
    assert!(
        audit.iter().any(|e| e.action == "job.complete"
            && e.actor == agent_id
            && e.details["changed"][0] == "/etc/ssl/ab"),
        "{audit:?}"
    );
}

/// Below the API: a result whose audit row the database refuses (PostgreSQL
/// cannot store U+0000 in `jsonb`) ends nothing, and one it accepts ends
/// the job together with its audit row. Never one without the other.
async fn an_agent_result_ends_the_job_with_its_audit_row_or_not_at_all(backend: Backend) {
    let app = app(backend).await;
    let (agent_id, _, job) = agent_with_running_job(&app, "edge").await;
    let result = agent_reports::report_result(
        &app.state.engine,
        &agent_id,
        &job.id,
        ResultRequest::success(job.attempts, vec!["/etc/ssl/a\0b".into()]),
    )
    .await;
    let stored = app.store.get_job(&job.id).await.unwrap().unwrap();
    let completions = job_audit_rows(&app, &job.id)
        .await
        .into_iter()
        .filter(|e| e.action == "job.complete")
        .count();
    match backend {
        Backend::Postgres => {
            assert!(result.is_err(), "PostgreSQL refuses U+0000: {result:?}");
            assert_eq!(stored.status, JobStatus::Running);
            assert_eq!(completions, 0);
        }
        Backend::Sqlite => {
            result.expect("SQLite stores U+0000");
            assert_eq!(stored.status, JobStatus::Completed);
            assert_eq!(completions, 1);
        }
    }
}

/// `\\u0000` is a backslash and the text `u0000`, not a NUL: it passes,
/// and is stored as it was sent.
async fn an_escaped_backslash_is_not_a_nul(backend: Backend) {
    let app = app(backend).await;
    let (agent, _, job) = agent_with_running_job(&app, "edge").await;
    let other = app
        .store
        .create_job(NewJob::new(JobType::Deployment).target(job.target_id.as_deref().unwrap()))
        .await
        .unwrap();
    let reason = "C:\\u0000 was meant";
    let raw = r#"{"reason": "C:\\u0000 was meant"}"#.to_owned();
    assert_eq!(
        serde_json::from_str::<Value>(&raw).unwrap()["reason"],
        reason
    );
    let r = app
        .send(
            Request::builder()
                .method(Method::POST)
                .uri(format!("/api/v1/jobs/{}/cancel", other.id))
                .header("authorization", format!("Bearer {}", app.operator))
                .header("content-type", "application/json")
                .body(Body::from(raw))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let audit = job_audit_rows(&app, &other.id).await;
    assert!(
        audit
            .iter()
            .any(|e| e.action == "job.cancel" && e.details["reason"] == reason),
        "{audit:?}"
    );
    // A directory grant path with a real NUL, on a target of an agent (the
    // host does not open it, so nothing else would stop it).
    let targets = |app: &TestApp| {
        let store = app.store.clone();
        async move { store.list_targets(true).await.unwrap().len() }
    };
    let count = targets(&app).await;
    let r = app
        .post(
            "/api/v1/targets",
            &app.operator,
            json!({
                "name": "grant-nul",
                "plugin": "pem-files",
                "agent_id": agent,
                "settings": { "directory": "/certs" },
                "grants": { "directories": [
                    { "path": "/etc/ssl/site\u{0}/x", "guest_path": "/certs", "writable": true },
                ] },
            }),
        )
        .await;
    assert_invalid_input(
        &r,
        "grant path with a NUL",
        Some("grants.directories[0].path"),
    );
    assert_eq!(targets(&app).await, count);
}

/// A body over `api.max_body_bytes` is 413 `payload_too_large` whether or
/// not it holds a NUL: the limit is checked while reading, before any scan.
async fn an_oversized_body_is_still_413(backend: Backend) {
    let app = TestApp::with_config(backend, |c| c.api.max_body_bytes = 1024).await;
    for padding in ["x".repeat(4096), format!("\u{0}{}", "x".repeat(4096))] {
        let r = app
            .call(
                Method::POST,
                "/api/v1/agents/register",
                None,
                Some(json!({ "name": "a", "bootstrap_token": BOOTSTRAP, "padding": padding })),
            )
            .await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text);
        assert_eq!(error_code(&r), "payload_too_large");
    }
    // Just under the limit with a NUL: refused for the NUL.
    let r = app
        .call(
            Method::POST,
            "/api/v1/agents/register",
            None,
            Some(json!({ "name": "a\u{0}", "bootstrap_token": BOOTSTRAP })),
        )
        .await;
    assert_invalid_input(&r, "small body with a NUL", Some("name"));
}

// ------------------------------------------------------------- dashboard

/// A dashboard request with the `Cookie` header (when not empty) and a
/// form body.
async fn ui_request(
    app: &TestApp,
    method: Method,
    uri: &str,
    cookie: &str,
    form: Option<String>,
) -> Reply {
    let mut builder = Request::builder().method(method).uri(uri);
    if !cookie.is_empty() {
        builder = builder.header("cookie", cookie);
    }
    let body = match form {
        Some(form) => {
            builder = builder.header("content-type", "application/x-www-form-urlencoded");
            Body::from(form)
        }
        None => Body::empty(),
    };
    app.send(builder.body(body).unwrap()).await
}

/// A dashboard answer that is an HTML error page (never the JSON
/// envelope) with the request id on the page and in `x-request-id`.
fn assert_html_error(r: &Reply, status: StatusCode, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text);
    let content_type = r
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("text/html"),
        "{what}: {content_type}: {}",
        r.text
    );
    let id = r
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("{what}: no x-request-id"));
    assert!(
        r.text.contains(id),
        "{what}: the page quotes {id}: {}",
        r.text
    );
}

/// Refused by the input check: 400, naming the flaw.
fn assert_ui_refused(r: &Reply, what: &str) {
    assert_html_error(r, StatusCode::BAD_REQUEST, what);
    assert!(
        r.text.contains("NUL") || r.text.contains("UTF-8"),
        "{what}: the page names the flaw: {}",
        r.text
    );
}

/// The dashboard's filters, paths and forms with a NUL byte or invalid
/// UTF-8: each is refused with a 400 page before its handler runs (which
/// would search the inventory with it, replace the bytes, or post the form
/// on to the API), and not one row changes; the same form without the
/// flaw goes through and writes.
async fn the_dashboard_refuses_nul_and_invalid_utf8_and_writes_nothing(backend: Backend) {
    let app = app(backend).await;
    let session = sign_in(&app, &app.operator).await;
    let issuer = fixtures::issuer(&app.store).await;
    let job = app
        .store
        .create_job(NewJob::new(JobType::Revocation))
        .await
        .unwrap();
    let query = snapshot_query(&app.store).await;
    let before = snapshot(&app.store, &query).await;

    for uri in [
        "/ui?q=%00",
        "/ui?q=a%00b",
        "/ui?q=%FF",
        "/ui?owner=team%00&status=active",
        "/ui?issuer=%C0%80",
        "/ui?page=1&status=%FF",
        "/ui/jobs?status=%00",
        "/ui/jobs?certificate_id=%FF",
        "/ui/audit?actor=%00",
        "/ui/audit?subject_id=%FF",
        "/ui/notifications?notifier_id=%00",
        "/ui/agents?include_retired=%FF",
        "/ui/certificates/%00",
        "/ui/certificates/a%FFb",
        "/ui/certificates/new?error=%00",
    ] {
        let r = ui_request(&app, Method::GET, uri, &session.cookie, None).await;
        assert_ui_refused(&r, uri);
    }
    let r = ui_request(&app, Method::GET, "/ui/login?error=%FF", "", None).await;
    assert_ui_refused(&r, "the sign-in page");

    let csrf = &session.csrf;
    let cancel = format!("/ui/jobs/{}/cancel", job.id);
    let create = |name: &str| {
        format!(
            "csrf={csrf}&name={name}&common_name=www.example.test&issuer_id={}",
            issuer.id
        )
    };
    for (uri, form) in [
        // The cancel form ignores fields it does not know: without the
        // check, these would cancel the job.
        (cancel.as_str(), format!("csrf={csrf}&reason=a%00b")),
        (cancel.as_str(), format!("csrf={csrf}&reason=%FF")),
        (cancel.as_str(), format!("csrf={csrf}&x%00=1")),
        ("/ui/certificates", create("a%00b")),
        ("/ui/certificates", create("caf%E9")),
        ("/ui/certificates", create("a+%00")),
    ] {
        let r = ui_request(&app, Method::POST, uri, &session.cookie, Some(form.clone())).await;
        assert_ui_refused(&r, &format!("POST {uri} {form}"));
    }
    let (login_cookie, token, _) = login_form(&app).await;
    assert_eq!(
        login_cookie, token,
        "the sign-in form's double-submit token"
    );
    let r = ui_request(
        &app,
        Method::POST,
        "/ui/login",
        &format!("certplane_login={login_cookie}"),
        Some(format!("csrf={token}&api_key=cpk_%00")),
    )
    .await;
    assert_ui_refused(&r, "sign-in with a NUL");

    assert_eq!(
        changed(&before, &snapshot(&app.store, &query).await),
        Vec::<String>::new()
    );
    let stored = app.store.get_job(&job.id).await.unwrap().unwrap();
    assert_eq!(stored.status, JobStatus::Pending);

    // The body limit of the same check answers a page too.
    let max = app.state.config.api.max_body_bytes;
    let r = ui_request(
        &app,
        Method::POST,
        &cancel,
        &session.cookie,
        Some(format!("csrf={csrf}&reason={}", "x".repeat(max))),
    )
    .await;
    assert_html_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "an oversized form");
    assert!(r.text.contains("api.max_body_bytes"), "{}", r.text);

    // The same form without the flaw is written.
    let r = ui_request(
        &app,
        Method::POST,
        &cancel,
        &session.cookie,
        Some(format!("csrf={csrf}&reason=caf%C3%A9")),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    let stored = app.store.get_job(&job.id).await.unwrap().unwrap();
    assert_eq!(stored.status, JobStatus::Cancelled);
    assert!(changed(&before, &snapshot(&app.store, &query).await).contains(&"jobs".to_owned()));
}

/// A dashboard page is bounded by `api.request_timeout_secs` like an API
/// request: with the inventory's table locked by another session, `/ui`
/// answers 503 within the bound instead of waiting for the lock.
/// PostgreSQL only: SQLite readers do not wait for a writer's lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_page_is_bounded_by_the_request_timeout() {
    use sqlx::Connection as _;
    let app = TestApp::with_config(Backend::Postgres, |c| c.api.request_timeout_secs = 1).await;
    let session = sign_in(&app, &app.reader).await;
    let mut holder = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("LOCK TABLE certificates IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        ui_request(&app, Method::GET, "/ui", &session.cookie, None),
    )
    .await
    .expect("the page answers while the table is locked");
    let took = started.elapsed();
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    // The dashboard's own bound answered (its page quotes the request id),
    // not an API call of the page.
    assert_html_error(&r, StatusCode::SERVICE_UNAVAILABLE, "GET /ui, table locked");
    assert!(r.text.contains("request_timeout_secs"), "{}", r.text);
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    let r = ui_request(&app, Method::GET, "/ui", &session.cookie, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}
