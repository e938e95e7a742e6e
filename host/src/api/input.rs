//! Input hygiene: a request whose percent-decoded path, query or form
//! body (the dashboard's forms) holds a NUL byte or is not UTF-8, or whose
//! JSON body holds a string or key with U+0000, is refused with 400
//! `invalid_input` before any handler runs.
//!
//! PostgreSQL cannot store U+0000 in `text` or `jsonb` and answers such a
//! write with an error (a 500 to the client), while SQLite stores it and
//! makes ids and paths that compare unequal to what they print as. Refusing
//! at the edge keeps both backends alike and no handler has to remember it.
//! Invalid UTF-8 would otherwise be replaced with U+FFFD by the query
//! decoder and silently look up something else.

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::Value;

use super::error::ApiError;

/// What is wrong with a decoded piece of the request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    Nul,
    NotUtf8,
}

impl Flaw {
    fn describe(self) -> &'static str {
        match self {
            Flaw::Nul => "contains a NUL byte (%00)",
            Flaw::NotUtf8 => "is not valid UTF-8 once percent-decoded",
        }
    }
}

fn refuse(message: String, param: Option<String>) -> Response {
    let mut error = ApiError::new(StatusCode::BAD_REQUEST, "invalid_input", message);
    if let Some(param) = param {
        error = error.with_param(param);
    }
    error.into_response()
}

/// `request` checked: its path, its query and a JSON or form body (read
/// with the `api.max_body_bytes` limit, 413 beyond it); the request with the
/// same body bytes, or the refusal.
pub(super) async fn checked(request: Request, max_body: usize) -> Result<Request, Response> {
    let matched = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    if let Some((message, param)) = path_flaw(request.uri().path(), matched.as_deref()) {
        return Err(refuse(message, param));
    }
    if let Some((message, param)) = request.uri().query().and_then(query_flaw) {
        return Err(refuse(message, param));
    }
    let (parts, body) = request.into_parts();
    let bytes = read_body(body, max_body)
        .await
        .map_err(|refusal| *refusal)?;
    let is_form = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(FORM));
    let flaw = if is_form {
        form_flaw(&bytes)
    } else {
        body_flaw(&bytes)
    };
    if let Some((message, param)) = flaw {
        return Err(refuse(message, param));
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// The whole body, or the response refusing it: 413 beyond `limit` (as the
/// JSON extractors would answer), 400 when the client stopped sending.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, Box<Response>> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(Box::new(
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body exceeds {limit} bytes (api.max_body_bytes)"),
            )
            .into_response(),
        )),
        Err(e) => Err(Box::new(
            ApiError::bad_request(format!("cannot read the request body: {e}")).into_response(),
        )),
    }
}

/// Percent-decodes `raw`; `plus_is_space` for form-encoded query parts.
/// A `%` not followed by two hex digits stays as it is, as decoders do.
fn percent_decode(raw: &str, plus_is_space: bool) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let pair = bytes
                    .get(i + 1)
                    .copied()
                    .and_then(hex)
                    .zip(bytes.get(i + 2).copied().and_then(hex));
                match pair {
                    Some((hi, lo)) => {
                        out.push(hi << 4 | lo);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Whether `raw`, percent-decoded, holds a NUL or is not UTF-8.
fn flaw_of(raw: &str, plus_is_space: bool) -> Option<Flaw> {
    // Nothing escaped and `&str` is UTF-8 already: the common case costs
    // one scan (`+` only ever decodes to a space).
    if !raw.contains(['%', '\0']) {
        return None;
    }
    let decoded = percent_decode(raw, plus_is_space);
    if decoded.contains(&0) {
        Some(Flaw::Nul)
    } else if std::str::from_utf8(&decoded).is_err() {
        Some(Flaw::NotUtf8)
    } else {
        None
    }
}

/// The first flawed path segment, named after the route's parameter at
/// that place when the route is known (path parameter `id`), else by its
/// 1-based position.
fn path_flaw(path: &str, matched: Option<&str>) -> Option<(String, Option<String>)> {
    let route: Vec<&str> = matched
        .map(|m| m.trim_start_matches('/').split('/').collect())
        .unwrap_or_default();
    for (index, segment) in path.trim_start_matches('/').split('/').enumerate() {
        let Some(flaw) = flaw_of(segment, false) else {
            continue;
        };
        // A trailing wildcard (`{*rest}`) covers every later segment.
        let param = route
            .get(index)
            .or_else(|| route.last().filter(|last| last.starts_with("{*")))
            .and_then(|r| r.strip_prefix('{'))
            .and_then(|r| r.strip_suffix('}'))
            .map(|name| name.trim_start_matches('*').to_owned());
        return Some(match param {
            Some(name) => (
                format!("path parameter `{name}` {}", flaw.describe()),
                Some(name),
            ),
            None => (
                format!("path segment {} {}", index + 1, flaw.describe()),
                None,
            ),
        });
    }
    None
}

/// The first flawed query parameter (name or value).
fn query_flaw(query: &str) -> Option<(String, Option<String>)> {
    pairs_flaw(query, "query parameter")
}

/// The media type of an HTML form's body.
const FORM: &str = "application/x-www-form-urlencoded";

/// The first flawed field (name or value) of a form body, which is encoded
/// like a query.
fn form_flaw(body: &[u8]) -> Option<(String, Option<String>)> {
    match std::str::from_utf8(body) {
        Ok(text) => pairs_flaw(text, "form field"),
        // Browsers percent-encode every byte beyond ASCII: raw ones are not
        // a form any parser reads the same way.
        Err(_) => Some((format!("the form body {}", Flaw::NotUtf8.describe()), None)),
    }
}

/// The first flawed `name=value` pair of `text` (a query or form body);
/// `what` names a pair in the message.
fn pairs_flaw(text: &str, what: &str) -> Option<(String, Option<String>)> {
    for pair in text.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if let Some(flaw) = flaw_of(name, true) {
            return Some((format!("a {what} name {}", flaw.describe()), None));
        }
        if let Some(flaw) = flaw_of(value, true) {
            // The name passed the check above: it decodes to UTF-8.
            let name = String::from_utf8_lossy(&percent_decode(name, true)).into_owned();
            return Some((format!("{what} `{name}` {}", flaw.describe()), Some(name)));
        }
    }
    None
}

/// The escape that is the only way JSON text can hold U+0000 (a raw
/// control character is invalid JSON, which every handler refuses).
const NUL_ESCAPE: &str = r"\u0000";

/// Whether the body may hold U+0000 in a JSON string: one substring scan,
/// the only cost on the hot path (heartbeats, results).
fn may_hold_nul(body: &[u8]) -> bool {
    match std::str::from_utf8(body) {
        Ok(text) => text.contains(NUL_ESCAPE),
        // Not UTF-8, so not JSON that any handler accepts; scan anyway so
        // the answer never depends on that.
        Err(_) => body
            .windows(NUL_ESCAPE.len())
            .any(|w| w == NUL_ESCAPE.as_bytes()),
    }
}

/// The message and field path (none for the body itself) of the first
/// string or key holding U+0000 in a JSON body. A body that is not JSON is
/// left to the handler, which refuses it on its own terms. The scan only
/// hints: `\\u0000` is an escaped backslash before `u0000`, so the parsed
/// value decides.
fn body_flaw(body: &[u8]) -> Option<(String, Option<String>)> {
    if !may_hold_nul(body) {
        return None;
    }
    let value: Value = serde_json::from_slice(body).ok()?;
    let mut path = String::new();
    let (field, in_key) = nul_in(&value, &mut path)?;
    let message = match (field.is_empty(), in_key) {
        (true, true) => "a key of the JSON body contains a NUL character".to_owned(),
        (true, false) => "the JSON body is a string with a NUL character".to_owned(),
        (false, true) => format!("a key of body field `{field}` contains a NUL character"),
        (false, false) => format!("body field `{field}` contains a NUL character"),
    };
    Some((message, (!field.is_empty()).then_some(field)))
}

/// Depth-first search for U+0000: the path of the first string holding it
/// (`changed[0]`, `settings.dir`), or of the object with such a key
/// (`true`).
fn nul_in(value: &Value, path: &mut String) -> Option<(String, bool)> {
    match value {
        Value::String(s) if s.contains('\0') => Some((path.clone(), false)),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let found = nul_in(item, path);
            path.truncate(len);
            found
        }),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            if key.contains('\0') {
                return Some((path.clone(), true));
            }
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(key);
            let found = nul_in(item, path);
            path.truncate(len);
            found
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_named_after_the_route() {
        let (message, param) =
            path_flaw("/api/v1/agents/a%00b", Some("/api/v1/agents/{id}")).unwrap();
        assert_eq!(param.as_deref(), Some("id"));
        assert!(message.contains("NUL"), "{message}");
        let (message, param) = path_flaw(
            "/api/v1/agents/jobs/j/challenges/%FF",
            Some("/api/v1/agents/jobs/{job_id}/challenges/{challenge_id}"),
        )
        .unwrap();
        assert_eq!(param.as_deref(), Some("challenge_id"));
        assert!(message.contains("UTF-8"), "{message}");
        let (message, param) = path_flaw("/api/v1/nowhere/%00", None).unwrap();
        assert_eq!(param, None);
        assert!(message.starts_with("path segment 4 "), "{message}");
        // Valid percent-encodings and stray percent signs pass.
        assert_eq!(
            path_flaw("/api/v1/agents/caf%C3%A9%20x%", Some("/api/v1/agents/{id}")),
            None
        );
    }

    #[test]
    fn query_values_and_names_are_checked_after_decoding() {
        assert_eq!(query_flaw("page=1&owner=team+a%C3%A9"), None);
        let (message, param) = query_flaw("page=1&owner=a%00").unwrap();
        assert_eq!(param.as_deref(), Some("owner"));
        assert!(message.contains("`owner`") && message.contains("NUL"));
        let (message, _) = query_flaw("owner=%ff").unwrap();
        assert!(message.contains("UTF-8"), "{message}");
        let (message, param) = query_flaw("a%00=1").unwrap();
        assert_eq!(param, None);
        assert!(message.contains("name"), "{message}");
        // A half escape is literal text, not a NUL.
        assert_eq!(query_flaw("q=%0&r=%"), None);
    }

    #[test]
    fn form_fields_are_checked_like_query_parameters() {
        assert_eq!(form_flaw(b"csrf=abc&name=caf%C3%A9+x&q=%"), None);
        let (message, param) = form_flaw(b"csrf=abc&name=a%00b").unwrap();
        assert_eq!(param.as_deref(), Some("name"));
        assert!(message.starts_with("form field `name` "), "{message}");
        assert!(message.contains("NUL"), "{message}");
        let (message, param) = form_flaw(b"owner=%FF").unwrap();
        assert_eq!(param.as_deref(), Some("owner"));
        assert!(message.contains("UTF-8"), "{message}");
        // Raw bytes, not escaped: a NUL, and bytes that are not UTF-8.
        let (_, param) = form_flaw(b"name=a\0b").unwrap();
        assert_eq!(param.as_deref(), Some("name"));
        let (message, param) = form_flaw(&[b'a', b'=', 0xff]).unwrap();
        assert_eq!(param, None);
        assert!(message.contains("UTF-8"), "{message}");
    }

    #[test]
    fn json_bodies_name_the_field_holding_nul() {
        let flaw = |s: &str| body_flaw(s.as_bytes()).map(|(_, field)| field.unwrap_or_default());
        assert_eq!(
            flaw(r#"{"outcome":"success","changed":["a","b\u0000"]}"#).as_deref(),
            Some("changed[1]")
        );
        assert_eq!(
            flaw(r#"{"settings":{"dirs":["/x\u0000"]}}"#).as_deref(),
            Some("settings.dirs[0]")
        );
        assert_eq!(
            flaw(r#"{"grants":{"a\u0000":1}}"#).as_deref(),
            Some("grants")
        );
        assert_eq!(flaw(r#""\u0000""#).as_deref(), Some(""));
        // An escaped backslash before `u0000` is no NUL.
        assert_eq!(flaw(r#"{"name":"C:\\u0000"}"#), None);
        assert_eq!(flaw(r#"{"name":"\\\u0000"}"#).as_deref(), Some("name"));
        // Not JSON: the handler's business.
        assert_eq!(flaw(r#"{"name":"\u0000"#), None);
        assert_eq!(flaw("plain text"), None);
    }

    #[test]
    fn the_key_message_says_key() {
        let (message, param) = body_flaw(br#"{"a\u0000":1}"#).unwrap();
        assert_eq!(param, None);
        assert!(message.starts_with("a key of the JSON body"), "{message}");
        let (message, param) = body_flaw(br#"{"grants":{"a\u0000":1}}"#).unwrap();
        assert_eq!(param.as_deref(), Some("grants"));
        assert!(
            message.starts_with("a key of body field `grants`"),
            "{message}"
        );
    }
}
