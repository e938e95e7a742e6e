//! Generates the client from the checked-in OpenAPI document
//! (`docs/openapi.json`, which a host test keeps equal to the served one)
//! with progenitor.
//!
//! utoipa writes OpenAPI 3.1; progenitor reads 3.0 (through `openapiv3`).
//! The document is brought down to 3.0 here, changing nothing a client
//! relies on:
//!
//! * `type: [T, "null"]` becomes `type: T, nullable: true`;
//! * `oneOf`/`anyOf` of `{type: null}` and one schema becomes that schema
//!   (wrapped in `allOf` when it is a `$ref`) with `nullable: true`;
//! * `examples: [..]` inside schemas becomes `example` (the first one);
//!   `const: v` becomes `enum: [v]`.
//!
//! One limit of progenitor is worked around: an operation must have one
//! success type, so where a body-less 2xx sits beside a typed one, the
//! body-less one is dropped from the generated code (the client then
//! reports it as an unexpected response); `DROPPED_SUCCESS_RESPONSES`
//! lists them.

use std::path::Path;

use serde_json::{Map, Value, json};

const DOCUMENT: &str = "../docs/openapi.json";

fn main() {
    println!("cargo:rerun-if-changed={DOCUMENT}");
    let text =
        std::fs::read_to_string(DOCUMENT).unwrap_or_else(|e| panic!("reading {DOCUMENT}: {e}"));
    let mut doc: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DOCUMENT} is not JSON: {e}"));
    doc["openapi"] = json!("3.0.3");
    down_to_3_0(&mut doc);
    let dropped = one_success_type(&mut doc);
    let spec: openapiv3::OpenAPI = serde_json::from_value(doc)
        .unwrap_or_else(|e| panic!("{DOCUMENT} is not OpenAPI 3.0 after conversion: {e}"));
    // Builder style: most operations take optional query parameters.
    let mut settings = progenitor::GenerationSettings::default();
    settings.with_interface(progenitor::InterfaceStyle::Builder);
    let mut generator = progenitor::Generator::new(&settings);
    let tokens = generator
        .generate_tokens(&spec)
        .unwrap_or_else(|e| panic!("progenitor could not generate the client: {e}"));
    let file: syn::File =
        syn::parse2(tokens).unwrap_or_else(|e| panic!("generated code does not parse: {e}"));
    let mut code = prettyplease::unparse(&file);
    code.push_str(&format!(
        "\n/// Body-less success responses left out because their operation also \
         has a typed one (progenitor allows one success type).\n\
         pub const DROPPED_SUCCESS_RESPONSES: &[&str] = &{dropped:?};\n"
    ));
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::write(Path::new(&out).join("codegen.rs"), code).expect("write codegen.rs");
}

/// Rewrites the 3.1 schema forms utoipa uses into their 3.0 equivalents,
/// everywhere in the document.
fn down_to_3_0(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for v in map.values_mut() {
                down_to_3_0(v);
            }
            nullable_type(map);
            nullable_choice(map, "oneOf");
            nullable_choice(map, "anyOf");
            if let Some(Value::Array(examples)) = map.remove("examples")
                && map.contains_key("type")
                && let Some(first) = examples.into_iter().next()
            {
                map.insert("example".into(), first);
            }
            if let Some(c) = map.remove("const") {
                map.insert("enum".into(), json!([c]));
            }
        }
        Value::Array(items) => items.iter_mut().for_each(down_to_3_0),
        _ => {}
    }
}

fn is_null_type(v: &Value) -> bool {
    v.as_str() == Some("null")
}

/// `type: [T, "null"]` → `type: T, nullable: true`.
fn nullable_type(map: &mut Map<String, Value>) {
    let Some(Value::Array(types)) = map.get("type") else {
        return;
    };
    let nullable = types.iter().any(is_null_type);
    let rest: Vec<Value> = types.iter().filter(|t| !is_null_type(t)).cloned().collect();
    match rest.as_slice() {
        [one] => {
            map.insert("type".into(), one.clone());
        }
        _ => panic!("a schema with types {types:?}: 3.0 has one type per schema"),
    }
    if nullable {
        map.insert("nullable".into(), json!(true));
    }
}

/// `oneOf: [{type: null}, S]` → `S` (or `allOf: [S]` for a reference),
/// `nullable: true`.
fn nullable_choice(map: &mut Map<String, Value>, key: &str) {
    let Some(Value::Array(choices)) = map.get(key) else {
        return;
    };
    let is_null = |s: &Value| s.get("type").is_some_and(is_null_type);
    if !choices.iter().any(is_null) {
        return;
    }
    let rest: Vec<Value> = choices.iter().filter(|s| !is_null(s)).cloned().collect();
    map.remove(key);
    map.insert("nullable".into(), json!(true));
    match rest.as_slice() {
        [Value::Object(one)] if one.contains_key("$ref") => {
            map.insert("allOf".into(), json!([one]));
        }
        [Value::Object(one)] => {
            for (k, v) in one {
                map.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        _ => {
            map.insert(key.into(), Value::Array(rest));
        }
    }
}

/// Drops body-less 2xx responses of operations that also have a typed
/// 2xx; returns them as `METHOD path status`.
fn one_success_type(doc: &mut Value) -> Vec<String> {
    let mut dropped = Vec::new();
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return dropped;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            let success: Vec<String> = responses
                .keys()
                .filter(|s| s.starts_with('2'))
                .cloned()
                .collect();
            let typed = |s: &String| responses[s].get("content").is_some();
            if success.iter().any(typed) {
                for status in success
                    .iter()
                    .filter(|s| !typed(s))
                    .cloned()
                    .collect::<Vec<_>>()
                {
                    responses.remove(&status);
                    dropped.push(format!("{} {path} {status}", method.to_uppercase()));
                }
            }
        }
    }
    dropped
}
