//! A fake chat webhook receiver for the `slack` and `teams` notifier
//! connectors' tests, with two personalities.
//!
//! It runs in the test process on its own thread and Tokio runtime (see
//! [`crate::server_thread`]), records every request, and keeps the messages
//! it accepted.
//!
//! **Slack** ([`FakeChat::slack`]): an incoming webhook at
//! `POST /services/T0FAKE0001/B0FAKE0001/<token>` ([`FakeChatHandle::url`]).
//! It checks what Slack checks and answers Slack's plain-text codes:
//!
//! | request | answer |
//! | --- | --- |
//! | a valid message | `200 ok` |
//! | not JSON, not an object, neither `text` nor `blocks`, or blocks Slack refuses (see [`validate_slack_message`]) | `400 invalid_payload` |
//! | the right team and service with another token | `403 invalid_token` |
//! | any other path or method | `404 no_service` |
//!
//! **Teams** ([`FakeChat::teams`]): a Workflows HTTP trigger at
//! `POST /workflows/<id>/triggers/manual/paths/invoke?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=<sig>`.
//! It checks the Adaptive Card message envelope (see
//! [`validate_teams_message`]) and answers like Logic Apps, with JSON
//! errors `{"error": {"code", "message"}}`:
//!
//! | request | answer |
//! | --- | --- |
//! | a valid card message | `202 Accepted`, empty body |
//! | over 28 KB | `413` `MessageTooLarge` |
//! | not JSON or not a valid card message | `400` `InvalidRequestContent` |
//! | the workflow's path without the right `sig` | `401` `DirectApiInvalidAuthorizationSignature` |
//! | any other path or method | `404` `WorkflowNotFound` |
//!
//! Faults ([`FakeChatHandle::fail_next`]): queued answers (status, body,
//! headers such as `Retry-After` or `Location`) given to the next requests
//! instead of the work, one each, before any check.
//!
//! ```no_run
//! use certplane_testkit::fake_chat::{ChatFault, FakeChat};
//! let chat = FakeChat::slack();
//! // secret webhook_url = chat.url(), grant chat.grant(); then notify.
//! chat.fail_next(ChatFault::text(410, "channel_is_archived"));
//! assert!(chat.messages().is_empty());
//! ```

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::server_thread::ServerThread;

/// The attachment content type of an Adaptive Card.
pub const ADAPTIVE_CARD: &str = "application/vnd.microsoft.card.adaptive";

/// Slack's limits the fake enforces (characters).
pub const SLACK_MAX_BLOCKS: usize = 50;
/// See [`SLACK_MAX_BLOCKS`].
pub const SLACK_MAX_SECTION_TEXT: usize = 3000;
/// See [`SLACK_MAX_BLOCKS`].
pub const SLACK_MAX_HEADER_TEXT: usize = 150;
/// See [`SLACK_MAX_BLOCKS`].
pub const SLACK_MAX_FIELDS: usize = 10;
/// See [`SLACK_MAX_BLOCKS`].
pub const SLACK_MAX_FIELD_TEXT: usize = 2000;
/// See [`SLACK_MAX_BLOCKS`].
pub const SLACK_MAX_CONTEXT_ELEMENTS: usize = 10;

/// Teams' limit on a webhook message, in bytes.
pub const TEAMS_MAX_MESSAGE_BYTES: usize = 28 * 1024;

const SLACK_TEAM: &str = "T0FAKE0001";
const SLACK_SERVICE: &str = "B0FAKE0001";

/// Which chat service the fake plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Personality {
    /// A Slack incoming webhook.
    Slack,
    /// A Microsoft Teams Workflows webhook.
    Teams,
}

/// An answer the fake gives instead of doing the work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatFault {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub body: String,
    /// Extra headers (`Retry-After`, `Location`), `Content-Type` included.
    pub headers: Vec<(String, String)>,
}

impl ChatFault {
    /// A plain-text answer, as Slack gives (`ChatFault::text(404,
    /// "channel_not_found")`).
    pub fn text(status: u16, body: &str) -> ChatFault {
        ChatFault {
            status,
            body: body.to_string(),
            headers: vec![("content-type".into(), "text/plain".into())],
        }
    }

    /// A Logic Apps JSON error, `{"error": {"code", "message"}}`.
    pub fn json_error(status: u16, code: &str, message: &str) -> ChatFault {
        ChatFault {
            status,
            body: json!({"error": {"code": code, "message": message}}).to_string(),
            headers: vec![("content-type".into(), "application/json".into())],
        }
    }

    /// The same answer with one more header.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: &str) -> ChatFault {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// One request the fake received, and what it answered.
#[derive(Debug, Clone)]
pub struct Received {
    /// `POST`, ...
    pub method: String,
    /// Path and query as received.
    pub path_and_query: String,
    /// The `Content-Type` header, when sent.
    pub content_type: Option<String>,
    /// The body as received.
    pub body: Vec<u8>,
    /// The status answered.
    pub status: u16,
    /// Why the fake refused the request, when its own checks did (faults
    /// leave this empty).
    pub refusal: Option<String>,
}

/// A running fake, listening on `127.0.0.1` until dropped. Everything to
/// observe and steer it is on [`FakeChatHandle`], which this dereferences
/// to.
pub struct FakeChat {
    handle: FakeChatHandle,
    /// Serves until the fake is dropped.
    _server: ServerThread,
}

/// A cloneable handle on a [`FakeChat`]'s state.
#[derive(Clone)]
pub struct FakeChatHandle {
    shared: Arc<Shared>,
}

struct Shared {
    addr: SocketAddr,
    personality: Personality,
    /// The webhook's path (Slack: with the token; Teams: without the query).
    path: String,
    /// Slack: the token in the path; Teams: the `sig` query parameter.
    credential: String,
    state: Mutex<ChatState>,
}

#[derive(Default)]
struct ChatState {
    faults: VecDeque<ChatFault>,
    messages: Vec<Value>,
    requests: Vec<Received>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, ChatState> {
        // A panicking test thread must not hide the fake's state from the
        // others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
        .collect()
}

impl FakeChat {
    /// A fake Slack incoming webhook. Panics when it cannot start (tests
    /// only).
    pub fn slack() -> FakeChat {
        let token = random_token(24);
        let path = format!("/services/{SLACK_TEAM}/{SLACK_SERVICE}/{token}");
        FakeChat::start(Personality::Slack, path, token).expect("the fake Slack webhook starts")
    }

    /// A fake Teams Workflows webhook. Panics when it cannot start (tests
    /// only).
    pub fn teams() -> FakeChat {
        let workflow = format!("{:032x}", rand::random::<u128>());
        let path = format!("/workflows/{workflow}/triggers/manual/paths/invoke");
        FakeChat::start(Personality::Teams, path, random_token(43))
            .expect("the fake Teams webhook starts")
    }

    fn start(personality: Personality, path: String, credential: String) -> std::io::Result<Self> {
        let listener = ServerThread::bind()?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            addr,
            personality,
            path,
            credential,
            state: Mutex::new(ChatState::default()),
        });
        let router = Router::new().fallback(receive).with_state(shared.clone());
        let name = match personality {
            Personality::Slack => "fake Slack",
            Personality::Teams => "fake Teams",
        };
        let server = ServerThread::spawn(name, listener, router)?;
        Ok(FakeChat {
            handle: FakeChatHandle { shared },
            _server: server,
        })
    }

    /// A cloneable handle on this fake's state.
    pub fn handle(&self) -> FakeChatHandle {
        self.handle.clone()
    }
}

impl Deref for FakeChat {
    type Target = FakeChatHandle;

    fn deref(&self) -> &FakeChatHandle {
        &self.handle
    }
}

impl std::fmt::Debug for FakeChat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeChat")
            .field("personality", &self.shared.personality)
            .field("addr", &self.shared.addr)
            .finish()
    }
}

impl FakeChatHandle {
    fn state(&self) -> MutexGuard<'_, ChatState> {
        self.shared.state()
    }

    /// Which service this fake plays.
    pub fn personality(&self) -> Personality {
        self.shared.personality
    }

    /// The webhook URL (the connectors' secret `webhook_url`).
    pub fn url(&self) -> String {
        match self.shared.personality {
            Personality::Slack => format!("http://{}{}", self.shared.addr, self.shared.path),
            Personality::Teams => format!(
                "http://{}{}?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={}",
                self.shared.addr, self.shared.path, self.shared.credential
            ),
        }
    }

    /// The part of [`FakeChatHandle::url`] that is the credential (Slack's
    /// token, Teams' `sig`): must never show in errors or logs.
    pub fn credential(&self) -> &str {
        &self.shared.credential
    }

    /// The host grant a connector instance needs, `http://127.0.0.1:PORT`.
    pub fn grant(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Answers the next request with `fault` (after the faults already
    /// queued), changing nothing.
    pub fn fail_next(&self, fault: ChatFault) {
        self.state().faults.push_back(fault);
    }

    /// The messages accepted, in arrival order.
    pub fn messages(&self) -> Vec<Value> {
        self.state().messages.clone()
    }

    /// Every request received, faulted and refused ones included.
    pub fn requests(&self) -> Vec<Received> {
        self.state().requests.clone()
    }
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut received = Received {
        method: method.to_string(),
        path_and_query: uri
            .path_and_query()
            .map_or(uri.path(), |p| p.as_str())
            .to_string(),
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: body.to_vec(),
        status: 0,
        refusal: None,
    };
    let mut st = shared.state();
    let (answer, accepted) = match st.faults.pop_front() {
        Some(fault) => (fault, None),
        None => match shared.personality {
            Personality::Slack => slack(&shared, &method, &uri, &received),
            Personality::Teams => teams(&shared, &method, &uri, &received),
        },
    };
    received.status = answer.status;
    if let Some(Err(why)) = &accepted {
        received.refusal = Some(why.clone());
    }
    if let Some(Ok(message)) = accepted {
        st.messages.push(message);
    }
    st.requests.push(received);
    drop(st);
    respond(answer)
}

fn respond(answer: ChatFault) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Body::from(answer.body)).into_response();
    for (name, value) in answer.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            response.headers_mut().insert(n, v);
        }
    }
    response
}

fn is_json(received: &Received) -> bool {
    received
        .content_type
        .as_deref()
        .and_then(|c| c.split(';').next())
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("application/json"))
}

/// The answer, and the message (accepted) or why it was refused; `None`
/// when the request never reached the message checks.
type Verdict = (ChatFault, Option<Result<Value, String>>);

fn slack(shared: &Shared, method: &Method, uri: &Uri, received: &Received) -> Verdict {
    let prefix = format!("/services/{SLACK_TEAM}/{SLACK_SERVICE}/");
    if method != Method::POST || !uri.path().starts_with(&prefix) {
        return (ChatFault::text(404, "no_service"), None);
    }
    if uri.path() != shared.path {
        return (ChatFault::text(403, "invalid_token"), None);
    }
    let checked = if is_json(received) {
        serde_json::from_slice::<Value>(&received.body)
            .map_err(|e| format!("not JSON: {e}"))
            .and_then(|v| validate_slack_message(&v).map(|()| v))
    } else {
        Err(format!(
            "content type {:?} is not application/json",
            received.content_type
        ))
    };
    match checked {
        Ok(v) => (ChatFault::text(200, "ok"), Some(Ok(v))),
        Err(why) => (ChatFault::text(400, "invalid_payload"), Some(Err(why))),
    }
}

fn teams(shared: &Shared, method: &Method, uri: &Uri, received: &Received) -> Verdict {
    if method != Method::POST || uri.path() != shared.path {
        return (
            ChatFault::json_error(404, "WorkflowNotFound", "The workflow could not be found."),
            None,
        );
    }
    let sig = uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("sig="));
    if sig != Some(shared.credential.as_str()) {
        return (
            ChatFault::json_error(
                401,
                "DirectApiInvalidAuthorizationSignature",
                "The provided callback URL signature is not valid.",
            ),
            None,
        );
    }
    if received.body.len() > TEAMS_MAX_MESSAGE_BYTES {
        let why = format!(
            "{} bytes is over the {TEAMS_MAX_MESSAGE_BYTES} byte limit",
            received.body.len()
        );
        return (
            ChatFault::json_error(413, "MessageTooLarge", &why),
            Some(Err(why)),
        );
    }
    let checked = if is_json(received) {
        serde_json::from_slice::<Value>(&received.body)
            .map_err(|e| format!("not JSON: {e}"))
            .and_then(|v| validate_teams_message(&v).map(|()| v))
    } else {
        Err(format!(
            "content type {:?} is not application/json",
            received.content_type
        ))
    };
    match checked {
        Ok(v) => (
            ChatFault {
                status: 202,
                body: String::new(),
                headers: vec![],
            },
            Some(Ok(v)),
        ),
        Err(why) => (
            ChatFault::json_error(400, "InvalidRequestContent", &why),
            Some(Err(why)),
        ),
    }
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// Checks a Slack text object (`plain_text` or `mrkdwn`) of at most `max`
/// characters; `plain_only` for places Slack takes `plain_text` only.
fn slack_text(v: &Value, max: usize, plain_only: bool, at: &str) -> Result<(), String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{at}: a text object must be an object"))?;
    let kind = obj.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "plain_text" => {}
        "mrkdwn" if !plain_only => {}
        other => return Err(format!("{at}: text type {other:?} is not allowed here")),
    }
    for key in obj.keys() {
        let allowed = match kind {
            "plain_text" => matches!(key.as_str(), "type" | "text" | "emoji"),
            _ => matches!(key.as_str(), "type" | "text" | "verbatim"),
        };
        if !allowed {
            return Err(format!("{at}: unknown key {key:?} in a {kind} text object"));
        }
    }
    let text = obj
        .get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{at}: `text` must be a string"))?;
    let n = chars(text);
    if n == 0 || n > max {
        return Err(format!("{at}: text of {n} characters (1..={max} allowed)"));
    }
    Ok(())
}

/// What Slack checks of a message (`200 ok` when this passes,
/// `400 invalid_payload` otherwise): a JSON object with a non-empty `text`
/// or non-empty `blocks`; at most 50 blocks, each of a known type; a
/// `header` holds `plain_text` of at most 150 characters; a `section` holds
/// `text` (at most 3000) and/or 1 to 10 `fields` (at most 2000 each); a
/// `context` holds 1 to 10 text or image elements; text objects are
/// `plain_text` or `mrkdwn`, non-empty, without unknown keys.
pub fn validate_slack_message(v: &Value) -> Result<(), String> {
    let obj = v.as_object().ok_or("the body is not a JSON object")?;
    let text = match obj.get("text") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err("`text` must be a string".into()),
    };
    let blocks = match obj.get("blocks") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(b)) => b.clone(),
        Some(_) => return Err("`blocks` must be an array".into()),
    };
    if text.trim().is_empty() && blocks.is_empty() {
        return Err("neither `text` nor `blocks`".into());
    }
    if blocks.len() > SLACK_MAX_BLOCKS {
        return Err(format!(
            "{} blocks (at most {SLACK_MAX_BLOCKS})",
            blocks.len()
        ));
    }
    for (i, block) in blocks.iter().enumerate() {
        let at = format!("blocks[{i}]");
        let kind = block
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{at}: no `type`"))?;
        match kind {
            "header" => slack_text(
                block.get("text").unwrap_or(&Value::Null),
                SLACK_MAX_HEADER_TEXT,
                true,
                &format!("{at}.text"),
            )?,
            "section" => {
                let text = block.get("text");
                let fields = block.get("fields");
                if text.is_none() && fields.is_none() {
                    return Err(format!("{at}: a section needs `text` or `fields`"));
                }
                if let Some(t) = text {
                    slack_text(t, SLACK_MAX_SECTION_TEXT, false, &format!("{at}.text"))?;
                }
                if let Some(f) = fields {
                    let f = f
                        .as_array()
                        .ok_or_else(|| format!("{at}.fields must be an array"))?;
                    if f.is_empty() || f.len() > SLACK_MAX_FIELDS {
                        return Err(format!(
                            "{at}: {} fields (1..={SLACK_MAX_FIELDS} allowed)",
                            f.len()
                        ));
                    }
                    for (j, field) in f.iter().enumerate() {
                        slack_text(
                            field,
                            SLACK_MAX_FIELD_TEXT,
                            false,
                            &format!("{at}.fields[{j}]"),
                        )?;
                    }
                }
            }
            "context" => {
                let elements = block
                    .get("elements")
                    .and_then(Value::as_array)
                    .ok_or_else(|| format!("{at}: a context needs `elements`"))?;
                if elements.is_empty() || elements.len() > SLACK_MAX_CONTEXT_ELEMENTS {
                    return Err(format!(
                        "{at}: {} context elements (1..={SLACK_MAX_CONTEXT_ELEMENTS} allowed)",
                        elements.len()
                    ));
                }
                for (j, e) in elements.iter().enumerate() {
                    if e.get("type").and_then(Value::as_str) == Some("image") {
                        continue;
                    }
                    slack_text(
                        e,
                        SLACK_MAX_SECTION_TEXT,
                        false,
                        &format!("{at}.elements[{j}]"),
                    )?;
                }
            }
            // Known block types this fake does not look into.
            "divider" | "image" | "actions" | "input" | "rich_text" | "file" | "video" => {}
            other => return Err(format!("{at}: unknown block type {other:?}")),
        }
    }
    Ok(())
}

/// What the Workflows trigger (and Teams behind it) needs of a message:
/// `type: "message"`, exactly one attachment of content type
/// [`ADAPTIVE_CARD`] whose `content` has `type: "AdaptiveCard"`, a
/// `version` (`major.minor`), and a `body` array of known elements
/// (`TextBlock` with a string `text`, `FactSet` with `facts` of string
/// `title` and `value`, ...).
pub fn validate_teams_message(v: &Value) -> Result<(), String> {
    if v.get("type").and_then(Value::as_str) != Some("message") {
        return Err("`type` must be \"message\"".into());
    }
    let attachments = v
        .get("attachments")
        .and_then(Value::as_array)
        .ok_or("`attachments` must be an array")?;
    if attachments.len() != 1 {
        return Err(format!(
            "{} attachments (exactly one card expected)",
            attachments.len()
        ));
    }
    let attachment = &attachments[0];
    if attachment.get("contentType").and_then(Value::as_str) != Some(ADAPTIVE_CARD) {
        return Err(format!(
            "attachments[0].contentType must be {ADAPTIVE_CARD}"
        ));
    }
    let card = attachment
        .get("content")
        .ok_or("attachments[0].content is missing")?;
    if card.get("type").and_then(Value::as_str) != Some("AdaptiveCard") {
        return Err("content.type must be \"AdaptiveCard\"".into());
    }
    let version = card
        .get("version")
        .and_then(Value::as_str)
        .ok_or("content.version must be a string")?;
    let well_formed = version
        .split_once('.')
        .is_some_and(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok());
    if !well_formed {
        return Err(format!("content.version {version:?} is not major.minor"));
    }
    let body = card
        .get("body")
        .and_then(Value::as_array)
        .ok_or("content.body must be an array")?;
    for (i, element) in body.iter().enumerate() {
        let at = format!("content.body[{i}]");
        match element.get("type").and_then(Value::as_str) {
            Some("TextBlock") => {
                element
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("{at}: a TextBlock needs a string `text`"))?;
            }
            Some("FactSet") => {
                let facts = element
                    .get("facts")
                    .and_then(Value::as_array)
                    .ok_or_else(|| format!("{at}: a FactSet needs `facts`"))?;
                for (j, fact) in facts.iter().enumerate() {
                    let ok = fact.get("title").is_some_and(Value::is_string)
                        && fact.get("value").is_some_and(Value::is_string);
                    if !ok {
                        return Err(format!(
                            "{at}.facts[{j}]: `title` and `value` must be strings"
                        ));
                    }
                }
            }
            Some(
                "Container" | "ColumnSet" | "Image" | "ImageSet" | "RichTextBlock" | "ActionSet"
                | "Table",
            ) => {}
            Some(other) => return Err(format!("{at}: unknown element type {other:?}")),
            None => return Err(format!("{at}: no `type`")),
        }
    }
    Ok(())
}

/// Every text of a Slack message a reader sees: the top-level `text`, and
/// each text object's `text` in the blocks, in order.
pub fn slack_texts(message: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if let (Some(Value::String(kind)), Some(Value::String(text))) =
                    (map.get("type"), map.get("text"))
                    && (kind == "mrkdwn" || kind == "plain_text")
                {
                    out.push(text.clone());
                }
                for value in map.values() {
                    walk(value, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Some(text) = message.get("text").and_then(Value::as_str) {
        out.push(text.to_string());
    }
    if let Some(blocks) = message.get("blocks") {
        walk(blocks, &mut out);
    }
    out
}

/// The Slack control sequences (`<!channel>`, `<@U123>`, `<https://…|…>`,
/// `<!date^…>`) in the `mrkdwn` texts and the top-level `text` of a
/// message: what Slack would turn into mentions, links and dates.
/// `plain_text` is shown as written, so it holds none.
pub fn slack_controls(message: &Value) -> Vec<String> {
    let mut texts = Vec::new();
    if let Some(text) = message.get("text").and_then(Value::as_str) {
        texts.push(text.to_string());
    }
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if map.get("type").and_then(Value::as_str) == Some("mrkdwn")
                    && let Some(Value::String(t)) = map.get("text")
                {
                    out.push(t.clone());
                }
                map.values().for_each(|value| walk(value, out));
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    if let Some(blocks) = message.get("blocks") {
        walk(blocks, &mut texts);
    }
    let mut controls = Vec::new();
    for text in texts {
        let mut rest = text.as_str();
        while let Some(start) = rest.find('<') {
            match rest[start..].find('>') {
                Some(len) => {
                    controls.push(rest[start..start + len + 1].to_string());
                    rest = &rest[start + len + 1..];
                }
                None => {
                    controls.push(rest[start..].to_string());
                    break;
                }
            }
        }
    }
    controls
}

/// Whether every `&` of a Slack `mrkdwn` text starts one of the three
/// escapes Slack knows (`&amp;`, `&lt;`, `&gt;`).
pub fn slack_ampersands_escaped(text: &str) -> bool {
    text.match_indices('&').all(|(i, _)| {
        let rest = &text[i..];
        rest.starts_with("&amp;") || rest.starts_with("&lt;") || rest.starts_with("&gt;")
    })
}

/// A Slack `mrkdwn` text as the reader sees its characters: the three
/// escapes undone.
pub fn slack_unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The Adaptive Card of a Teams message (the first attachment's
/// `content`), `Null` when there is none.
pub fn teams_card(message: &Value) -> &Value {
    message
        .pointer("/attachments/0/content")
        .unwrap_or(&Value::Null)
}

/// The facts of every `FactSet` of a Teams message's card, as (title,
/// value) pairs in order.
pub fn teams_facts(message: &Value) -> Vec<(String, String)> {
    teams_card(message)
        .get("body")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| e.get("type").and_then(Value::as_str) == Some("FactSet"))
        .filter_map(|e| e.get("facts").and_then(Value::as_array))
        .flatten()
        .map(|f| {
            (
                f.get("title")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                f.get("value")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_checks() {
        assert!(validate_slack_message(&json!({"text": "hi"})).is_ok());
        let ok = json!({"text": "x", "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": "h", "emoji": true}},
            {"type": "section", "text": {"type": "mrkdwn", "text": "s"},
             "fields": [{"type": "mrkdwn", "text": "f"}]},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": "c"}]},
            {"type": "divider"}
        ]});
        assert!(validate_slack_message(&ok).is_ok());
        for bad in [
            json!([]),
            json!({}),
            json!({"text": " "}),
            json!({"text": 1}),
            json!({"blocks": [{"type": "banner"}]}),
            json!({"blocks": [{"type": "header", "text": {"type": "mrkdwn", "text": "h"}}]}),
            json!({"blocks": [{"type": "header", "text": {"type": "plain_text", "text": "h".repeat(151)}}]}),
            json!({"blocks": [{"type": "section"}]}),
            json!({"blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "s".repeat(3001)}}]}),
            json!({"blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": ""}}]}),
            json!({"blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "s", "emoji": true}}]}),
            json!({"blocks": [{"type": "section", "fields": (0..11).map(|_| json!({"type": "mrkdwn", "text": "f"})).collect::<Vec<_>>()}]}),
            json!({"blocks": [{"type": "section", "fields": [{"type": "mrkdwn", "text": "f".repeat(2001)}]}]}),
            json!({"blocks": [{"type": "context", "elements": []}]}),
            json!({"blocks": (0..51).map(|_| json!({"type": "divider"})).collect::<Vec<_>>()}),
        ] {
            assert!(validate_slack_message(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn teams_checks() {
        let ok = json!({"type": "message", "attachments": [{
            "contentType": ADAPTIVE_CARD,
            "content": {"type": "AdaptiveCard", "version": "1.2", "body": [
                {"type": "TextBlock", "text": "t"},
                {"type": "FactSet", "facts": [{"title": "a", "value": "b"}]}
            ]}
        }]});
        assert!(validate_teams_message(&ok).is_ok());
        assert_eq!(teams_facts(&ok), [("a".to_string(), "b".to_string())]);
        let mut cases = Vec::new();
        for (pointer, value) in [
            ("/type", json!("MessageCard")),
            ("/attachments", json!([])),
            ("/attachments/0/contentType", json!("application/json")),
            ("/attachments/0/content/type", json!("Card")),
            ("/attachments/0/content/version", json!("one")),
            ("/attachments/0/content/body", json!({})),
            ("/attachments/0/content/body/0/text", json!(1)),
            ("/attachments/0/content/body/1/facts/0/value", json!(null)),
            ("/attachments/0/content/body/0/type", json!("Marquee")),
        ] {
            let mut bad = ok.clone();
            *bad.pointer_mut(pointer).unwrap() = value;
            cases.push(bad);
        }
        let mut two = ok.clone();
        let first = two["attachments"][0].clone();
        two["attachments"].as_array_mut().unwrap().push(first);
        cases.push(two);
        for bad in cases {
            assert!(validate_teams_message(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slack_text_helpers() {
        let m = json!({"text": "<!here> a &amp; b", "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": "<!channel> plain"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": "x <@U1> y &lt;!channel&gt; <https://e|e"}}
        ]});
        assert_eq!(slack_controls(&m), ["<!here>", "<@U1>", "<https://e|e"]);
        assert_eq!(slack_texts(&m).len(), 3);
        assert!(slack_ampersands_escaped("a &amp; &lt; &gt;"));
        assert!(!slack_ampersands_escaped("a & b"));
        assert!(!slack_ampersands_escaped("&quot;"));
        assert_eq!(
            slack_unescape("&lt;!channel&gt; &amp;lt;"),
            "<!channel> &lt;"
        );
    }
}
