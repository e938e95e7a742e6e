//! A fake PagerDuty Events API v2 for the `pagerduty` notifier's tests.
//!
//! It runs in the test process on its own thread and Tokio runtime, like
//! [`crate::fake_cloudflare`], and follows PagerDuty's documentation:
//! `POST http://127.0.0.1:PORT/v2/enqueue` ([`FakePagerDutyHandle::url`], the
//! connector's `events_url`) with a JSON body
//! `{"routing_key", "event_action", "dedup_key", "payload": {"summary",
//! "source", "severity", "timestamp", "component", "group", "class",
//! "custom_details"}}`.
//!
//! Checks, each a `400 {"status": "invalid event", "message": "Event object
//! is invalid", "errors": [...]}` listing every problem found (the wording
//! of the errors is the fake's own, after PagerDuty's):
//!
//! | field | rule |
//! | --- | --- |
//! | body | a JSON object, else `400 {"status": "Unrecognized object", ...}` |
//! | `routing_key` | 32 characters, else "Length of 'routing_key' is incorrect (should be 32 characters)"; one the fake knows ([`ROUTING_KEY`], [`FakePagerDutyHandle::add_routing_key`]), else "Invalid routing key" |
//! | `event_action` | `trigger`, `acknowledge` or `resolve` |
//! | `dedup_key` | a string of at most 255 characters; required unless `trigger` (a trigger without one gets a generated key) |
//! | `payload` (trigger) | an object with `summary` (1..=1024 characters), `source` (non-empty), `severity` (`critical`, `error`, `warning` or `info`); `timestamp` ISO 8601 / RFC 3339 when present (`2015-07-17T08:42:58.315+0000` or `...Z`); `component`, `group`, `class` strings, `custom_details` an object when present |
//!
//! An accepted event is answered `202 {"status": "success", "message":
//! "Event processed", "dedup_key"}` and applied the way PagerDuty documents
//! alert de-duplication, per routing key and dedup key: a trigger opens an
//! incident or, when one with that key is open (triggered or acknowledged),
//! adds to it (its severity, summary and payload become the latest; its
//! trigger count grows); acknowledge and resolve apply to the open incident
//! and are dropped (still 202) when there is none; a trigger after a
//! resolve opens a new incident.
//!
//! Faults ([`FakePagerDutyHandle::fail_next_requests`],
//! [`FakePagerDutyHandle::fail_requests_after`]): `429` with or without
//! `Retry-After`, `500`, or a `400` with a given error; they apply before
//! any check and change nothing. Other paths answer `404`.
//!
//! ```no_run
//! use certplane_testkit::fake_pagerduty::FakePagerDuty;
//! # fn t() {
//! let pd = FakePagerDuty::start();
//! // settings {"events_url": pd.url()}, secret routing_key = pd.routing_key(),
//! // grant pd.grant(); then notify through the connector.
//! assert!(pd.incidents().is_empty());
//! # }
//! ```

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use crate::server_thread::ServerThread;

/// Path of the enqueue endpoint on the fake's address.
pub const ENQUEUE_PATH: &str = "/v2/enqueue";

/// The integration key the fake accepts from the start (32 characters).
pub const ROUTING_KEY: &str = "Rfake0pagerduty0routing0key01234";

/// PagerDuty's length of an integration key.
pub const ROUTING_KEY_LEN: usize = 32;

/// PagerDuty's limit on `dedup_key`, in characters.
pub const MAX_DEDUP_KEY_CHARS: usize = 255;

/// PagerDuty's limit on `payload.summary`, in characters.
pub const MAX_SUMMARY_CHARS: usize = 1024;

/// The severities PagerDuty accepts.
pub const SEVERITIES: [&str; 4] = ["critical", "error", "warning", "info"];

/// A failure the fake answers with instead of processing the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PdFault {
    /// `429 Too Many Requests`, with `Retry-After` when given.
    RateLimited {
        /// The `Retry-After` header, in seconds.
        retry_after_secs: Option<u32>,
    },
    /// `500 Internal Server Error`.
    ServerError,
    /// `400` "invalid event" with this one entry in `errors`.
    BadRequest(String),
}

/// The state of an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncidentState {
    /// Open, not acknowledged.
    Triggered,
    /// Open, acknowledged.
    Acknowledged,
    /// Closed.
    Resolved,
}

impl IncidentState {
    fn is_open(self) -> bool {
        self != IncidentState::Resolved
    }
}

/// One incident (PagerDuty: the alert of a dedup key, in its incident).
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    /// 1, 2, ... in the order opened.
    pub number: u64,
    /// The integration key it was opened through.
    pub routing_key: String,
    /// Its dedup key.
    pub dedup_key: String,
    /// Open or resolved.
    pub state: IncidentState,
    /// Triggers applied to it (the first included).
    pub triggers: u32,
    /// The latest trigger's `payload.severity`.
    pub severity: String,
    /// The latest trigger's `payload.summary`.
    pub summary: String,
    /// The latest trigger's whole `payload`.
    pub payload: Value,
}

/// One accepted (202) event and what it did.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptedEvent {
    /// `event_action`.
    pub action: String,
    /// `dedup_key` (the generated one for a trigger that had none).
    pub dedup_key: String,
    /// The number of the incident it opened or applied to; `None` when
    /// dropped (acknowledge or resolve without an open incident).
    pub incident: Option<u64>,
    /// The request body as received.
    pub body: Value,
}

/// One request received, whatever the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedRequest {
    /// `METHOD /path`.
    pub line: String,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The body, as text (lossy).
    pub body: String,
    /// The status answered.
    pub status: u16,
}

/// A running fake, listening on `127.0.0.1` until dropped. Everything to
/// observe and steer it is on [`FakePagerDutyHandle`], which this
/// dereferences to.
pub struct FakePagerDuty {
    handle: FakePagerDutyHandle,
    /// Serves until the fake is dropped.
    _server: ServerThread,
}

/// A cloneable handle on a [`FakePagerDuty`]'s state.
#[derive(Clone)]
pub struct FakePagerDutyHandle {
    shared: Arc<Shared>,
}

struct Shared {
    addr: SocketAddr,
    state: Mutex<PdState>,
}

struct Faults {
    skip: u32,
    count: u32,
    fault: PdFault,
}

#[derive(Default)]
struct PdState {
    routing_keys: Vec<String>,
    incidents: Vec<Incident>,
    events: Vec<AcceptedEvent>,
    requests: Vec<ReceivedRequest>,
    faults: Option<Faults>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, PdState> {
        // A panicking test thread must not hide the fake's state from the
        // others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl FakePagerDuty {
    /// Binds `127.0.0.1:0` and serves on a dedicated thread. Panics when
    /// that fails (tests only).
    pub fn start() -> FakePagerDuty {
        FakePagerDuty::try_start().expect("the fake PagerDuty starts")
    }

    fn try_start() -> std::io::Result<FakePagerDuty> {
        let listener = ServerThread::bind()?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            addr,
            state: Mutex::new(PdState {
                routing_keys: vec![ROUTING_KEY.to_string()],
                ..PdState::default()
            }),
        });
        let router = Router::new()
            .route(ENQUEUE_PATH, post(enqueue))
            .fallback(not_found)
            .with_state(shared.clone());
        let server = ServerThread::spawn("fake PagerDuty", listener, router)?;
        Ok(FakePagerDuty {
            handle: FakePagerDutyHandle { shared },
            _server: server,
        })
    }

    /// A cloneable handle on this fake's state.
    pub fn handle(&self) -> FakePagerDutyHandle {
        self.handle.clone()
    }
}

impl Deref for FakePagerDuty {
    type Target = FakePagerDutyHandle;

    fn deref(&self) -> &FakePagerDutyHandle {
        &self.handle
    }
}

impl std::fmt::Debug for FakePagerDuty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakePagerDuty")
            .field("url", &self.url())
            .finish()
    }
}

impl FakePagerDutyHandle {
    fn state(&self) -> MutexGuard<'_, PdState> {
        self.shared.state()
    }

    /// The enqueue URL, `http://127.0.0.1:PORT/v2/enqueue` (the connector's
    /// `events_url`).
    pub fn url(&self) -> String {
        format!("http://{}{ENQUEUE_PATH}", self.shared.addr)
    }

    /// The host grant a connector instance needs, `http://127.0.0.1:PORT`.
    pub fn grant(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// A valid integration key ([`ROUTING_KEY`]).
    pub fn routing_key(&self) -> &'static str {
        ROUTING_KEY
    }

    /// Accepts `key` as an integration key too (a key that is not 32
    /// characters is still refused for its length, as PagerDuty does).
    pub fn add_routing_key(&self, key: &str) {
        self.state().routing_keys.push(key.to_string());
    }

    /// The next `n` requests answer `fault` and change nothing (replaces
    /// faults still queued; `n` = 0 clears them).
    pub fn fail_next_requests(&self, n: u32, fault: PdFault) {
        self.fail_requests_after(0, n, fault);
    }

    /// After `skip` more requests are processed normally, the `n` following
    /// ones answer `fault` (replaces faults still queued).
    pub fn fail_requests_after(&self, skip: u32, n: u32, fault: PdFault) {
        self.state().faults = (n > 0).then_some(Faults {
            skip,
            count: n,
            fault,
        });
    }

    /// Every incident, in the order opened.
    pub fn incidents(&self) -> Vec<Incident> {
        self.state().incidents.clone()
    }

    /// The incidents with `dedup_key`, in the order opened.
    pub fn incidents_with_key(&self, dedup_key: &str) -> Vec<Incident> {
        self.state()
            .incidents
            .iter()
            .filter(|i| i.dedup_key == dedup_key)
            .cloned()
            .collect()
    }

    /// The open (triggered or acknowledged) incidents.
    pub fn open_incidents(&self) -> Vec<Incident> {
        self.state()
            .incidents
            .iter()
            .filter(|i| i.state.is_open())
            .cloned()
            .collect()
    }

    /// Every accepted event, in order.
    pub fn events(&self) -> Vec<AcceptedEvent> {
        self.state().events.clone()
    }

    /// Every request received, faulted and refused ones included.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.state().requests.clone()
    }
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

fn invalid_event(errors: Vec<String>) -> Response {
    answer(
        StatusCode::BAD_REQUEST,
        json!({"status": "invalid event", "message": "Event object is invalid", "errors": errors}),
    )
}

fn fault_response(fault: &PdFault) -> Response {
    match fault {
        PdFault::RateLimited { retry_after_secs } => {
            let mut r = answer(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"status": "throttle event",
                       "message": "Requests for this service are arriving too quickly. Please retry later."}),
            );
            if let Some(s) = retry_after_secs {
                r.headers_mut().insert(header::RETRY_AFTER, (*s).into());
            }
            r
        }
        PdFault::ServerError => answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"status": "error", "message": "Internal Server Error"}),
        ),
        PdFault::BadRequest(error) => invalid_event(vec![error.clone()]),
    }
}

/// Takes the fault for this request, if one is due.
fn take_fault(st: &mut PdState) -> Option<PdFault> {
    let faults = st.faults.as_mut()?;
    if faults.skip > 0 {
        faults.skip -= 1;
        return None;
    }
    let fault = faults.fault.clone();
    faults.count -= 1;
    if faults.count == 0 {
        st.faults = None;
    }
    Some(fault)
}

fn record(st: &mut PdState, line: String, headers: &HeaderMap, body: &[u8], status: StatusCode) {
    st.requests.push(ReceivedRequest {
        line,
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: String::from_utf8_lossy(body).into_owned(),
        status: status.as_u16(),
    });
}

async fn not_found(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut st = shared.state();
    record(
        &mut st,
        format!("{method} {}", uri.path()),
        &headers,
        &body,
        StatusCode::NOT_FOUND,
    );
    answer(
        StatusCode::NOT_FOUND,
        json!({"status": "Not Found", "message": "No such endpoint"}),
    )
}

async fn enqueue(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let mut st = shared.state();
    let response = match take_fault(&mut st) {
        Some(fault) => fault_response(&fault),
        None => process(&mut st, &body),
    };
    record(
        &mut st,
        format!("POST {ENQUEUE_PATH}"),
        &headers,
        &body,
        response.status(),
    );
    response
}

/// A validated event.
struct Valid {
    routing_key: String,
    action: String,
    dedup_key: Option<String>,
    payload: Option<Map<String, Value>>,
}

/// Validates the body the way PagerDuty documents it; every problem found.
fn validate(body: &Map<String, Value>, known_keys: &[String]) -> Result<Valid, Vec<String>> {
    let mut errors = Vec::new();
    let routing_key = body
        .get("routing_key")
        .and_then(Value::as_str)
        .unwrap_or("");
    if routing_key.chars().count() != ROUTING_KEY_LEN {
        errors.push("Length of 'routing_key' is incorrect (should be 32 characters)".to_string());
    } else if !known_keys.iter().any(|k| k == routing_key) {
        errors.push("Invalid routing key".to_string());
    }
    let action = body
        .get("event_action")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !["trigger", "acknowledge", "resolve"].contains(&action) {
        errors.push(
            "'event_action' is missing or invalid (should be 'trigger', 'acknowledge' or \
             'resolve')"
                .to_string(),
        );
    }
    let dedup_key = match body.get("dedup_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => {
            errors.push("'dedup_key' must be a string".to_string());
            None
        }
    };
    match &dedup_key {
        Some(k) if k.chars().count() > MAX_DEDUP_KEY_CHARS => errors.push(format!(
            "'dedup_key' is too long (should be at most {MAX_DEDUP_KEY_CHARS} characters)"
        )),
        Some(k) if k.is_empty() && action != "trigger" => {
            errors.push("'dedup_key' is missing or blank".to_string())
        }
        None if action == "acknowledge" || action == "resolve" => {
            errors.push("'dedup_key' is missing or blank".to_string())
        }
        _ => {}
    }
    let payload = if action == "trigger" {
        match body.get("payload") {
            Some(Value::Object(p)) => {
                check_payload(p, &mut errors);
                Some(p.clone())
            }
            _ => {
                errors.push("'payload' is missing or blank".to_string());
                None
            }
        }
    } else {
        None
    };
    if errors.is_empty() {
        Ok(Valid {
            routing_key: routing_key.to_string(),
            action: action.to_string(),
            dedup_key: dedup_key.filter(|k| !k.is_empty()),
            payload,
        })
    } else {
        Err(errors)
    }
}

fn check_payload(p: &Map<String, Value>, errors: &mut Vec<String>) {
    let text = |k: &str| p.get(k).and_then(Value::as_str).map(str::trim);
    match text("summary") {
        None | Some("") => errors.push("'payload.summary' is missing or blank".to_string()),
        Some(_) => {
            let len = p
                .get("summary")
                .and_then(Value::as_str)
                .map_or(0, |s| s.chars().count());
            if len > MAX_SUMMARY_CHARS {
                errors.push(format!(
                    "'payload.summary' is too long (should be at most {MAX_SUMMARY_CHARS} \
                     characters)"
                ));
            }
        }
    }
    if matches!(text("source"), None | Some("")) {
        errors.push("'payload.source' is missing or blank".to_string());
    }
    match text("severity") {
        Some(s) if SEVERITIES.contains(&s) => {}
        _ => errors.push(
            "'payload.severity' is missing or invalid (should be 'critical', 'error', \
             'warning' or 'info')"
                .to_string(),
        ),
    }
    match p.get("timestamp") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if parse_timestamp(t).is_some() => {}
        Some(_) => errors.push("'payload.timestamp' is not a valid ISO 8601 timestamp".to_string()),
    }
    for k in ["component", "group", "class"] {
        if p.get(k).is_some_and(|v| !v.is_string() && !v.is_null()) {
            errors.push(format!("'payload.{k}' must be a string"));
        }
    }
    if p.get("custom_details")
        .is_some_and(|v| !v.is_object() && !v.is_null())
    {
        errors.push("'payload.custom_details' must be an object".to_string());
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM|±HHMM)` into Unix
/// seconds; `None` when it is not one.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset = match &text[i..] {
        "Z" | "z" => 0,
        rest if rest.len() == 6 && matches!(rest.as_bytes()[0], b'+' | b'-') => {
            if rest.as_bytes()[3] != b':' {
                return None;
            }
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?)
        }
        rest if rest.len() == 5 && matches!(rest.as_bytes()[0], b'+' | b'-') => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (num(i + 1..i + 3)? * 60 + num(i + 3..i + 5)?)
        }
        _ => return None,
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if !(1..=days_in_month).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Days since 1970-01-01 (H. Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset * 60)
}

fn process(st: &mut PdState, body: &[u8]) -> Response {
    let parsed = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        _ => {
            return answer(
                StatusCode::BAD_REQUEST,
                json!({"status": "Unrecognized object",
                       "message": "Event object format is unrecognized",
                       "errors": ["JSON parse error"]}),
            );
        }
    };
    let valid = match validate(&parsed, &st.routing_keys) {
        Ok(v) => v,
        Err(errors) => return invalid_event(errors),
    };
    let dedup_key = valid
        .dedup_key
        .clone()
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    let open = st.incidents.iter_mut().find(|i| {
        i.state.is_open() && i.routing_key == valid.routing_key && i.dedup_key == dedup_key
    });
    let incident = match (valid.action.as_str(), open) {
        ("trigger", Some(i)) => {
            let payload = valid.payload.clone().unwrap_or_default();
            i.triggers += 1;
            i.severity = text_of(&payload, "severity");
            i.summary = text_of(&payload, "summary");
            i.payload = Value::Object(payload);
            Some(i.number)
        }
        ("trigger", None) => {
            let payload = valid.payload.clone().unwrap_or_default();
            let number = st.incidents.len() as u64 + 1;
            st.incidents.push(Incident {
                number,
                routing_key: valid.routing_key.clone(),
                dedup_key: dedup_key.clone(),
                state: IncidentState::Triggered,
                triggers: 1,
                severity: text_of(&payload, "severity"),
                summary: text_of(&payload, "summary"),
                payload: Value::Object(payload),
            });
            Some(number)
        }
        ("acknowledge", Some(i)) => {
            i.state = IncidentState::Acknowledged;
            Some(i.number)
        }
        ("resolve", Some(i)) => {
            i.state = IncidentState::Resolved;
            Some(i.number)
        }
        // Acknowledge or resolve without an open incident: dropped.
        _ => None,
    };
    st.events.push(AcceptedEvent {
        action: valid.action,
        dedup_key: dedup_key.clone(),
        incident,
        body: Value::Object(parsed),
    });
    answer(
        StatusCode::ACCEPTED,
        json!({"status": "success", "message": "Event processed", "dedup_key": dedup_key}),
    )
}

fn text_of(payload: &Map<String, Value>, key: &str) -> String {
    payload
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp("2022-04-07T21:39:13Z"), Some(1_649_367_553));
        assert_eq!(
            parse_timestamp("2015-07-17T08:42:58.315+0000"),
            parse_timestamp("2015-07-17T08:42:58Z")
        );
        assert_eq!(
            parse_timestamp("2022-04-07T23:39:13+02:00"),
            Some(1_649_367_553)
        );
        assert_eq!(
            parse_timestamp("2022-04-07T20:39:13-0100"),
            Some(1_649_367_553)
        );
        assert_eq!(parse_timestamp("2000-02-29T00:00:00Z"), Some(951_782_400));
        for bad in [
            "",
            "yesterday",
            "2022-04-07",
            "2022-04-07T21:39:13",
            "2022-13-07T21:39:13Z",
            "2021-02-29T00:00:00Z",
            "2022-04-07T24:00:00Z",
            "2022-04-07T21:39:13.Z",
            "2022-04-07T21:39:13+2",
            "2022-04-07T21:39:13+02-00",
            "1649367553",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    fn valid(body: Value) -> Result<Valid, Vec<String>> {
        validate(body.as_object().unwrap(), &[ROUTING_KEY.to_string()])
    }

    #[test]
    fn validation_lists_every_problem() {
        let errors = valid(json!({
            "routing_key": "short",
            "event_action": "explode",
            "dedup_key": "k".repeat(256),
        }))
        .err()
        .unwrap();
        assert_eq!(errors.len(), 3, "{errors:?}");
        let errors = valid(json!({
            "routing_key": "0".repeat(32),
            "event_action": "trigger",
            "payload": {"summary": "s".repeat(1025), "severity": "fatal",
                        "timestamp": "now", "custom_details": "x"},
        }))
        .err()
        .unwrap();
        assert_eq!(
            errors,
            [
                "Invalid routing key",
                "'payload.summary' is too long (should be at most 1024 characters)",
                "'payload.source' is missing or blank",
                "'payload.severity' is missing or invalid (should be 'critical', 'error', \
                 'warning' or 'info')",
                "'payload.timestamp' is not a valid ISO 8601 timestamp",
                "'payload.custom_details' must be an object",
            ]
        );
        let errors = valid(json!({"routing_key": ROUTING_KEY, "event_action": "resolve"}))
            .err()
            .unwrap();
        assert_eq!(errors, ["'dedup_key' is missing or blank"]);
        let errors = valid(json!({"routing_key": ROUTING_KEY, "event_action": "trigger"}))
            .err()
            .unwrap();
        assert_eq!(errors, ["'payload' is missing or blank"]);
        let ok = valid(json!({
            "routing_key": ROUTING_KEY,
            "event_action": "trigger",
            "payload": {"summary": "s".repeat(1024), "source": "x", "severity": "critical",
                        "timestamp": "2015-07-17T08:42:58.315+0000"},
        }))
        .unwrap();
        assert_eq!(ok.dedup_key, None);
        assert!(
            valid(
                json!({"routing_key": ROUTING_KEY, "event_action": "resolve",
                         "dedup_key": "k".repeat(255)})
            )
            .is_ok()
        );
    }
}
