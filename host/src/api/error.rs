//! The error envelope every 4xx/5xx response carries:
//! `{"error": {"code", "message", "param", "details", "request_id"}}`.
//!
//! `code` is stable and specific (`name_taken`, `invalid_state`,
//! `lease_lost`, `validation_failed` …) so clients branch on it, never on
//! the message; `param` names the request field at fault when there is one;
//! `details` holds structured context (dependency counts, a retry delay).

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::engine::error::EngineError;
use crate::store::StoreError;

tokio::task_local! {
    /// The id of the request being handled, set by the request-id middleware
    /// so errors can quote it without threading it through every handler.
    pub static REQUEST_ID: String;
}

/// The current request's id, or `-` outside a request.
pub fn current_request_id() -> String {
    REQUEST_ID
        .try_with(|id| id.clone())
        .unwrap_or_else(|_| "-".to_string())
}

/// An API error: status, stable machine code, human message, the field at
/// fault and structured details.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable, machine-readable code (`not_found`, `validation_failed`, ...).
    pub code: &'static str,
    /// What went wrong, for humans.
    pub message: String,
    /// The request field at fault (`common_name`, `page`, `sans[2]`).
    pub param: Option<String>,
    /// Structured context, e.g. retirement `counts`.
    pub details: Option<Value>,
}

impl ApiError {
    /// An error with the given status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            param: None,
            details: None,
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 422 `validation_failed`.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            message,
        )
    }

    /// 404 `not_found`.
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 422 `validation_failed` naming the field at fault.
    pub fn invalid_field(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::validation(message).with_param(param)
    }

    /// 409 `invalid_state`: the resource is not in a state that allows
    /// this (a finished job cancelled, a retired item changed, an issuer
    /// still in use retired).
    pub fn invalid_state(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "invalid_state", message)
    }

    /// 409 `name_taken`: a unique name or id already exists.
    pub fn name_taken(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "name_taken", message)
    }

    /// 409 `lease_lost`: the caller's lease on a job expired or moved on.
    pub fn lease_lost(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "lease_lost", message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 500 `internal`: the details go to the log, not to the client.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        let request_id = current_request_id();
        tracing::error!(request_id, error = %err, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error; quote request id {request_id} when reporting it"),
        )
    }

    /// Sets `error.details`.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Sets `error.param`.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }
}

/// The JSON body of an error response.
pub fn envelope(code: &str, message: &str, param: Option<&str>, details: Option<&Value>) -> Value {
    json!({
        "error": {
            "code": code,
            "message": message,
            "param": param,
            "details": details,
            "request_id": current_request_id(),
        }
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = envelope(
            self.code,
            &self.message,
            self.param.as_deref(),
            self.details.as_ref(),
        );
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", err.to_string())
            }
            StoreError::AlreadyExists(_) => ApiError::name_taken(err.to_string()),
            StoreError::OpenJobExists(_) => ApiError::invalid_state(err.to_string()),
            StoreError::InvalidArgument(m) => ApiError::validation(m),
            StoreError::IllegalTransition { .. } => ApiError::invalid_state(err.to_string()),
            other => ApiError::internal(other),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        match err {
            EngineError::NotFound(what) => ApiError::not_found(what),
            EngineError::InvalidState(m) => ApiError::invalid_state(m),
            EngineError::LeaseLost(m) => ApiError::lease_lost(m),
            EngineError::Invalid(m) => ApiError::validation(m),
            EngineError::Store(e) => e.into(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "validation_failed",
            _ => "bad_request",
        };
        let (param, message) = name_the_field("request body", &rejection.body_text());
        let mut err = ApiError::new(status, code, message);
        err.param = param;
        err
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        let (param, message) = name_the_field("query string", &rejection.body_text());
        let mut err = ApiError::bad_request(message);
        err.param = param;
        err
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::bad_request(rejection.body_text())
    }
}

/// The field a deserializer complaint is about, and a message that names
/// it: axum reports the failing path (`sans[2]: invalid type …`) and serde
/// names missing or unknown fields in backticks; both become `param`.
fn name_the_field(what: &str, text: &str) -> (Option<String>, String) {
    const PREFIXES: [&str; 4] = [
        "Failed to deserialize the JSON body into the target type: ",
        "Failed to parse the request body as JSON: ",
        "Failed to deserialize query string: ",
        "Failed to deserialize form: ",
    ];
    let rest = PREFIXES
        .iter()
        .find_map(|p| text.strip_prefix(p))
        .unwrap_or(text);
    let (path, problem) = match rest.split_once(": ") {
        Some((path, problem))
            if !path.is_empty() && !path.contains(' ') && !path.starts_with('`') =>
        {
            (Some(path), problem)
        }
        _ => (None, rest),
    };
    let named = ["missing field `", "unknown field `", "duplicate field `"]
        .iter()
        .find_map(|marker| {
            let start = problem.find(marker)? + marker.len();
            let len = problem[start..].find('`')?;
            Some(&problem[start..start + len])
        });
    let param = match (path, named) {
        // serde_path_to_error already ends the path with an unknown field.
        (Some(path), Some(field)) if path == field || path.ends_with(&format!(".{field}")) => {
            Some(path.to_owned())
        }
        (Some(path), Some(field)) => Some(format!("{path}.{field}")),
        (Some(path), None) => Some(path.to_owned()),
        (None, Some(field)) => Some(field.to_owned()),
        (None, None) => None,
    };
    let message = match (&param, path) {
        (Some(param), Some(_)) => format!("invalid {what}: `{param}`: {problem}"),
        _ => format!("invalid {what}: {problem}"),
    };
    (param, message)
}

/// Handler result.
pub type ApiResult<T> = Result<T, ApiError>;

/// Canonical code for a bare status (responses produced by layers, not by
/// handlers).
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::CONFLICT => "conflict",
        StatusCode::GONE => "gone",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "validation_failed",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        s if s.is_server_error() => "internal",
        _ => "error",
    }
}

/// OpenAPI shape of the error envelope.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// OpenAPI shape of `error` in the envelope.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    /// Structured context (dependency counts, a retry delay …), when any.
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
    /// The request's id (also in the `x-request-id` header).
    pub request_id: String,
}

#[cfg(test)]
mod tests {
    use super::name_the_field;

    #[test]
    fn deserializer_complaints_name_their_field() {
        let (param, msg) = name_the_field(
            "request body",
            "Failed to deserialize the JSON body into the target type: sans[2]: invalid type: integer `1`, expected a string at line 1 column 30",
        );
        assert_eq!(param.as_deref(), Some("sans[2]"));
        assert!(msg.contains("`sans[2]`"), "{msg}");
        let (param, msg) = name_the_field(
            "request body",
            "Failed to deserialize the JSON body into the target type: missing field `common_name` at line 1 column 2",
        );
        assert_eq!(param.as_deref(), Some("common_name"));
        assert!(msg.contains("common_name"), "{msg}");
        let (param, _) = name_the_field(
            "request body",
            "Failed to deserialize the JSON body into the target type: settings: unknown field `colour`, expected `color`",
        );
        assert_eq!(param.as_deref(), Some("settings.colour"));
        let (param, _) = name_the_field(
            "request body",
            "Failed to deserialize the JSON body into the target type: key_hash: unknown field `key_hash`, expected one of `name`, `scope`",
        );
        assert_eq!(param.as_deref(), Some("key_hash"));
        let (param, _) = name_the_field(
            "query string",
            "Failed to deserialize query string: per_page: invalid digit found in string",
        );
        assert_eq!(param.as_deref(), Some("per_page"));
        let (param, msg) = name_the_field(
            "request body",
            "Failed to parse the request body as JSON: expected value at line 1 column 1",
        );
        assert_eq!(param, None);
        assert_eq!(
            msg,
            "invalid request body: expected value at line 1 column 1"
        );
    }
}
