//! The error responses every operation shares, added to the assembled
//! OpenAPI document in one place so no annotation can forget them.
//!
//! What each operation can answer besides its own statuses follows from
//! where it sits in the request path, not from its handler:
//!
//! * 400 `bad_request` / `invalid_input`: every request (the input layer
//!   refuses NUL bytes and invalid UTF-8, the query and path extractors
//!   refuse what does not parse);
//! * 401 `unauthorized` (with `WWW-Authenticate`) and 429 `rate_limited`
//!   (with `Retry-After`): every operation with a security requirement
//!   (credentials are checked, then limited per key or agent);
//! * 403 `forbidden`: operations whose API-key requirement names the
//!   `operator` or `admin` role (the annotations list the role the
//!   handler's extractor demands: `security(("bearer" = ["operator"]))`);
//! * 410 `agent_retired`: every operation authenticated by an agent
//!   credential (the `agent` scheme);
//! * 413, 415 and 422: operations with a required JSON body (axum's `Json`
//!   refuses an oversized body, a missing `Content-Type:
//!   application/json` and a body that does not deserialize); an optional
//!   body (job cancellation) is parsed by its handler without a content
//!   type check, so it gets 413 only;
//! * 500 `internal`: every operation (a database failure);
//! * 503 `timeout`: every operation but the agents' long poll, which is
//!   exempt from `api.request_timeout_secs`.
//!
//! Operations that answer 304 or 412 also get their conditional headers
//! (`If-None-Match` and `ETag`, `If-Match`). A status an annotation
//! already documents keeps its description there.
//!
//! This runs on the document after the routers are merged
//! ([`super::openapi()`], [`super::router()`]): a modifier of `ApiDoc` would
//! run before any path exists.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBody;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Required, Response, ResponseBuilder};

use crate::pipeline::keygen::KeyType;
use crate::store::{
    ApiKeyStatus, ApiScope, CertificateStatus, JobStatus, JobType, KeySource, NotificationStatus,
};

/// The path of the one operation exempt from the request timeout.
const LONG_POLL: &str = super::LONG_POLL_PATH;

/// The security scheme of operator API keys (`cpk_…`).
pub const API_KEY_SCHEME: &str = "bearer";
/// The security scheme of agent credentials (`cpa_<agent-id>.<secret>`).
pub const AGENT_SCHEME: &str = "agent";

/// Adds the security schemes and the shared error responses to `doc`.
pub fn finish(doc: &mut OpenApi) {
    add_security_schemes(doc);
    for (path, item) in doc.paths.paths.iter_mut() {
        let operations = [
            item.get.as_mut(),
            item.put.as_mut(),
            item.post.as_mut(),
            item.delete.as_mut(),
            item.patch.as_mut(),
            item.head.as_mut(),
            item.options.as_mut(),
            item.trace.as_mut(),
        ];
        for operation in operations.into_iter().flatten() {
            add_common_responses(path, operation);
        }
    }
}

fn add_security_schemes(doc: &mut OpenApi) {
    use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        API_KEY_SCHEME,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An operator API key (`cpk_…`). The roles an operation lists are the \
                     least scope the key needs (`admin` ⊇ `operator` ⊇ `read_only`); a \
                     key without it gets 403.",
                ))
                .build(),
        ),
    );
    components.add_security_scheme(
        AGENT_SCHEME,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An agent credential (`cpa_<agent-id>.<secret>`), issued once by \
                     `POST /api/v1/agents/register`. A retired agent gets 410.",
                ))
                .build(),
        ),
    );
}

/// Which credentials an operation takes, read from its security
/// requirements.
#[derive(Debug, Default)]
struct Security {
    api_key: bool,
    agent: bool,
    /// The API-key roles required (`operator`, `admin`, `read_only`).
    roles: Vec<String>,
}

fn security_of(operation: &Operation) -> Security {
    let mut found = Security::default();
    for requirement in operation.security.iter().flatten() {
        // The requirement's map is private; its serialised form is the
        // OpenAPI object `{scheme: [roles]}`.
        let Ok(serde_json::Value::Object(map)) = serde_json::to_value(requirement) else {
            continue;
        };
        for (scheme, roles) in map {
            match scheme.as_str() {
                API_KEY_SCHEME => {
                    found.api_key = true;
                    found.roles.extend(
                        roles
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|r| r.as_str().map(str::to_owned)),
                    );
                }
                AGENT_SCHEME => found.agent = true,
                _ => {}
            }
        }
    }
    found
}

/// The conditional-request headers of operations that answer 304
/// (`If-None-Match`, with `ETag` on their 200 and 304) or 412
/// (`If-Match`), as `listing::conditional_json` and `check_if_match` read
/// and write them.
fn add_conditional_headers(operation: &mut Operation) {
    let responses = &mut operation.responses.responses;
    let conditional_get = responses.contains_key("304");
    let conditional_write = responses.contains_key("412");
    if conditional_get {
        for status in ["200", "304"] {
            if let Some(RefOr::T(response)) = responses.get_mut(status) {
                response
                    .headers
                    .entry("ETag".to_string())
                    .or_insert_with(|| string_header("the representation's strong entity tag"));
            }
        }
    }
    let mut add = |name: &str, description: &str| {
        let parameters = operation.parameters.get_or_insert_with(Vec::new);
        if !parameters.iter().any(|p| p.name.eq_ignore_ascii_case(name)) {
            parameters.push(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Header)
                    .required(Required::False)
                    .description(Some(description))
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                    .build(),
            );
        }
    };
    if conditional_get {
        add(
            "If-None-Match",
            "ETags of a copy the client holds; 304 when one is current",
        );
    }
    if conditional_write {
        add(
            "If-Match",
            "the ETag the change is based on (`*`: any); 412 when the resource changed since",
        );
    }
}

fn add_common_responses(path: &str, operation: &mut Operation) {
    add_conditional_headers(operation);
    let security = security_of(operation);
    let body = operation.request_body.as_ref().map(body_kind);
    let responses = &mut operation.responses.responses;
    let mut add = |status: u16, response: Response| {
        responses
            .entry(status.to_string())
            .or_insert(RefOr::T(response));
    };
    add(
        400,
        error(
            "bad input: a query, path value or JSON body that does not parse, NUL bytes or invalid \
             UTF-8 anywhere in the request (`bad_request`, `invalid_input`)",
        ),
    );
    if security.api_key || security.agent {
        add(
            401,
            error("missing, malformed, unknown, revoked or expired credential (`unauthorized`)"),
        );
        add(429, rate_limited());
    }
    if security
        .roles
        .iter()
        .any(|r| r == "operator" || r == "admin")
    {
        add(
            403,
            error("the API key lacks the scope this operation needs (`forbidden`)"),
        );
    }
    if security.agent {
        add(
            410,
            error("the agent is retired; it should stop calling (`agent_retired`)"),
        );
    }
    if let Some(kind) = body {
        add(
            413,
            error("the body is larger than `api.max_body_bytes` (`payload_too_large`)"),
        );
        if kind == BodyKind::RequiredJson {
            add(
                415,
                error(
                    "the body is not `Content-Type: application/json` (`unsupported_media_type`)",
                ),
            );
            add(
                422,
                error(
                    "the body does not match the schema or fails validation (`validation_failed`)",
                ),
            );
        }
    }
    add(
        500,
        error("internal error; the log has the details under the request id (`internal`)"),
    );
    if path != LONG_POLL {
        add(
            503,
            error(
                "the request did not finish within `api.request_timeout_secs` and was stopped; \
                 retry later (`timeout`)",
            ),
        );
    }
    // The refusal headers `auth::with_refusal_headers` guarantees, also on the
    // annotations' own 401 and 429 (registration's).
    if let Some(RefOr::T(response)) = responses.get_mut("401") {
        response
            .headers
            .entry("WWW-Authenticate".to_string())
            .or_insert_with(www_authenticate);
    }
    if let Some(RefOr::T(response)) = responses.get_mut("429") {
        response
            .headers
            .entry("Retry-After".to_string())
            .or_insert_with(retry_after);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    /// Read by axum's `Json`: content type checked, deserialised by axum.
    RequiredJson,
    /// An optional body the handler parses itself.
    Optional,
}

fn body_kind(body: &RequestBody) -> BodyKind {
    match body.required {
        Some(Required::True) => BodyKind::RequiredJson,
        _ => BodyKind::Optional,
    }
}

/// A response with the error envelope.
fn error(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

fn rate_limited() -> Response {
    error(
        "too many requests from this API key or agent (`rate_limited`); \
         `error.details.retry_after_secs` and `Retry-After` say when to try again",
    )
}

fn www_authenticate() -> utoipa::openapi::header::Header {
    string_header("the `Bearer` challenge (RFC 6750)")
}

fn string_header(description: &str) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(Type::String))
        .description(Some(description))
        .build()
}

fn retry_after() -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1)),
        )
        .description(Some("whole seconds until a retry may be admitted"))
        .build()
}

/// A string parameter that takes one of `values`. (`schema_with` drops
/// the field's doc comment, so the description sits in the schema.)
fn one_of(
    description: &str,
    values: impl IntoIterator<Item = &'static str>,
) -> utoipa::openapi::Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .enum_values(Some(values))
        .build()
}

/// `status` of `GET /jobs`: a job status.
pub fn job_status_param() -> utoipa::openapi::Object {
    one_of(
        "Only jobs in this status.",
        JobStatus::ALL.iter().map(|s| s.as_str()),
    )
}

/// `type` of `GET /jobs`: a job type.
pub fn job_type_param() -> utoipa::openapi::Object {
    one_of(
        "Only jobs of this type.",
        JobType::ALL.iter().map(|s| s.as_str()),
    )
}

/// `status` of `GET /certificates`: a certificate status.
pub fn certificate_status_param() -> utoipa::openapi::Object {
    one_of(
        "Only certificates in this status.",
        CertificateStatus::ALL.iter().map(|s| s.as_str()),
    )
}

/// `status` of `GET /notifications`: a delivery state.
pub fn notification_status_param() -> utoipa::openapi::Object {
    one_of(
        "Only notifications in this delivery state.",
        NotificationStatus::ALL.iter().map(|s| s.as_str()),
    )
}

/// `status` of `GET /api-keys`: a key state.
pub fn api_key_status_param() -> utoipa::openapi::Object {
    one_of(
        "Only keys in this state (default: all, revoked ones included).",
        ApiKeyStatus::ALL.iter().map(|s| s.as_str()),
    )
}

/// `scope` of `POST /api-keys`: an API scope.
pub fn api_scope_schema() -> utoipa::openapi::Object {
    one_of(
        "`admin`, `operator` or `read_only`.",
        ApiScope::ALL.iter().map(|s| s.as_str()),
    )
}

/// `key_type` of a certificate: the key types hosts and agents generate.
pub fn key_type_schema() -> utoipa::openapi::Object {
    one_of(
        "Key type (default `ecdsa-p256`).",
        [
            KeyType::EcdsaP256,
            KeyType::EcdsaP384,
            KeyType::Rsa2048,
            KeyType::Rsa3072,
            KeyType::Rsa4096,
            KeyType::Ed25519,
        ]
        .map(|k| k.as_str()),
    )
}

/// `key_source` of a certificate.
pub fn key_source_schema() -> utoipa::openapi::Object {
    one_of(
        "`agent` (generated on the first target's agent, never leaves it) or `host`.",
        KeySource::ALL.iter().map(|s| s.as_str()),
    )
}

/// `status` a certificate may be given by `PATCH` (retire with `DELETE`).
pub fn certificate_patch_status_schema() -> utoipa::openapi::Object {
    one_of(
        "`active` (managed and renewed) or `disabled` (kept, not renewed).",
        [CertificateStatus::Active, CertificateStatus::Disabled].map(|s| s.as_str()),
    )
}
