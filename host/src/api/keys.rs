//! Operator API keys as a resource (admin scope): list, show, create (the
//! key is in the answer once, never again), revoke.
//!
//! Revoking is soft: the key keeps its row with `revoked_at`, is refused
//! from the next request on (keys are read per request, there is no
//! cache), and a repeated `DELETE` answers the same 200. The last active
//! admin key cannot be revoked (409 `invalid_state`), so the operators
//! cannot lock themselves out; any key may revoke itself otherwise. No
//! answer holds a key's hash, and only the creation's holds the key.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::{API_KEY_PREFIX, AdminAccess, new_api_key};
use super::error::{ApiError, ApiResult, ErrorBody};
use super::listing::{Page, PageQuery, conditional_json, offset};
use crate::store::{
    ActorType, ApiKey, ApiKeyRevocation, ApiKeyStatus, ApiScope, NewApiKey, NewAuditEvent,
};

/// Longest key name accepted, in characters.
const MAX_NAME_CHARS: usize = 100;
/// Longest lifetime a key may be given, in days (about ten years).
const MAX_EXPIRES_IN_DAYS: u32 = 3660;
/// Characters of a new key kept as its `key_prefix`: `cpk_` and four of
/// the 43 random ones (24 of 256 bits), enough to tell keys apart.
const PREFIX_CHARS: usize = API_KEY_PREFIX.len() + 4;

/// Routes under `/api/v1`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_keys, create_key))
        .routes(routes!(get_key, revoke_key))
}

/// An API key as the API shows it: never its hash, never the key.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiKeyView {
    /// Key id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Its scope: `admin`, `operator` or `read_only` (the strongest it
    /// holds; scopes nest).
    #[schema(example = "operator")]
    pub scope: String,
    /// `active`, `expired` or `revoked`, at the time of the answer.
    #[schema(example = "active")]
    pub status: String,
    /// The key's first characters, to recognise it by (`cpk_` and four
    /// more); absent for keys created outside the API.
    pub key_prefix: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Who created it through the API (audit actor).
    pub created_by: Option<String>,
    /// When it stops being accepted, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was last used, precise to a minute (a request records its
    /// use only when the recorded one is older than that).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

fn strongest(scopes: &[ApiScope]) -> Option<ApiScope> {
    [ApiScope::Admin, ApiScope::Operator, ApiScope::ReadOnly]
        .into_iter()
        .find(|s| scopes.contains(s))
}

impl ApiKeyView {
    fn of(key: ApiKey, now: DateTime<Utc>) -> Self {
        ApiKeyView {
            scope: strongest(&key.scopes)
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            status: key.status(now).as_str().to_owned(),
            id: key.id,
            name: key.name,
            key_prefix: key.key_prefix,
            created_at: key.created_at,
            created_by: key.created_by,
            expires_at: key.expires_at,
            last_used_at: key.last_used_at,
            revoked_at: key.revoked_at,
        }
    }
}

/// A new key: its row and the key itself, shown this once.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedApiKey {
    /// The key's row.
    #[serde(flatten)]
    pub key: ApiKeyView,
    /// The key to send as `Authorization: Bearer <secret>`. Shown once:
    /// only its hash is stored.
    pub secret: String,
}

/// `POST /api-keys` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    /// Display name (1 to 100 printable characters).
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// `admin`, `operator` or `read_only`.
    #[schema(schema_with = super::openapi::api_scope_schema)]
    pub scope: String,
    /// Lifetime in days from now (1 to 3660); not with `expires_at`.
    #[schema(minimum = 1, maximum = 3660)]
    pub expires_in_days: Option<u32>,
    /// Expiry time (RFC 3339, in the future); not with `expires_in_days`.
    pub expires_at: Option<DateTime<Utc>>,
}

/// `GET /api-keys` query.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ApiKeyListQuery {
    /// Only keys in this state: `active`, `expired` or `revoked` (default:
    /// all, revoked ones included).
    #[param(schema_with = super::openapi::api_key_status_param)]
    pub status: Option<String>,
    /// 1-based page number.
    #[param(minimum = 1)]
    pub page: Option<u32>,
    /// Items per page (1–500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub per_page: Option<u32>,
}

/// List API keys, newest first, revoked and expired ones included unless
/// `status` says otherwise.
#[utoipa::path(get, path = "/api-keys", tag = "api-keys", params(ApiKeyListQuery),
    responses(
        (status = 200, body = Page<ApiKeyView>),
        (status = 304, description = "unchanged (If-None-Match)"),
        (status = 400, description = "bad status filter or page", body = ErrorBody),
        (status = 401, description = "missing, malformed, unknown, expired or revoked API key (`unauthorized`)", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"certplane\"`, with `error=\"invalid_token\"` for a key presented and refused"))),
        (status = 403, description = "the key is not an admin key", body = ErrorBody),
        (status = 429, description = "rate limited (`rate_limited`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "whole seconds (at least 1) until a retry may be admitted"))),
    ),
    security(("bearer" = ["admin"])))]
async fn list_keys(
    State(state): State<AppState>,
    _caller: AdminAccess,
    headers: HeaderMap,
    query: Result<Query<ApiKeyListQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    let (page, per_page) = PageQuery {
        page: q.page,
        per_page: q.per_page,
    }
    .resolve()?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            s.parse::<ApiKeyStatus>().map_err(|_| {
                ApiError::bad_request(format!(
                    "status must be active, expired or revoked, not {s:?}"
                ))
                .with_param("status")
            })
        })
        .transpose()?;
    let now = Utc::now();
    let (keys, total) = state
        .store
        .list_api_keys(status, now, offset(page, per_page), per_page)
        .await?;
    let body = Page {
        items: keys.into_iter().map(|k| ApiKeyView::of(k, now)).collect(),
        page,
        per_page,
        total,
    };
    Ok(conditional_json(&headers, &body))
}

/// The expiry a creation asks for, checked.
fn expiry_of(req: &CreateApiKeyRequest, now: DateTime<Utc>) -> ApiResult<Option<DateTime<Utc>>> {
    match (req.expires_in_days, req.expires_at) {
        (Some(_), Some(_)) => Err(ApiError::invalid_field(
            "expires_at",
            "give expires_in_days or expires_at, not both",
        )),
        (Some(days), None) => {
            if days == 0 || days > MAX_EXPIRES_IN_DAYS {
                return Err(ApiError::invalid_field(
                    "expires_in_days",
                    format!("expires_in_days must be between 1 and {MAX_EXPIRES_IN_DAYS}"),
                ));
            }
            Ok(Some(now + Duration::days(i64::from(days))))
        }
        (None, Some(at)) => {
            if at <= now {
                return Err(ApiError::invalid_field(
                    "expires_at",
                    "expires_at must be in the future",
                ));
            }
            if at > now + Duration::days(i64::from(MAX_EXPIRES_IN_DAYS)) {
                return Err(ApiError::invalid_field(
                    "expires_at",
                    format!("expires_at must be within {MAX_EXPIRES_IN_DAYS} days"),
                ));
            }
            Ok(Some(at))
        }
        (None, None) => Ok(None),
    }
}

/// Create an API key. The answer holds the key (`secret`) this once; only
/// its hash is stored.
#[utoipa::path(post, path = "/api-keys", tag = "api-keys",
    request_body = CreateApiKeyRequest,
    responses(
        (status = 201, body = CreatedApiKey),
        (status = 400, description = "malformed body", body = ErrorBody),
        (status = 401, description = "missing, malformed, unknown, expired or revoked API key (`unauthorized`)", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"certplane\"`, with `error=\"invalid_token\"` for a key presented and refused"))),
        (status = 403, description = "the key is not an admin key", body = ErrorBody),
        (status = 422, description = "bad name, scope or expiry", body = ErrorBody),
        (status = 429, description = "rate limited (`rate_limited`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "whole seconds (at least 1) until a retry may be admitted"))),
    ),
    security(("bearer" = ["admin"])))]
async fn create_key(
    State(state): State<AppState>,
    AdminAccess(caller): AdminAccess,
    body: Result<Json<CreateApiKeyRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(req) = body?;
    let name = req.name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::invalid_field(
            "name",
            format!("name must be 1 to {MAX_NAME_CHARS} printable characters"),
        ));
    }
    let scope = req.scope.parse::<ApiScope>().map_err(|_| {
        ApiError::invalid_field(
            "scope",
            format!(
                "scope must be admin, operator or read_only, not {:?}",
                req.scope
            ),
        )
    })?;
    let now = Utc::now();
    let expires_at = expiry_of(&req, now)?;
    let (secret, hash) = new_api_key();
    let prefix: String = secret.chars().take(PREFIX_CHARS).collect();
    let key = state
        .store
        .create_api_key_audited(
            NewApiKey {
                name: name.to_owned(),
                key_hash: hash,
                scopes: vec![scope],
                expires_at,
            },
            &prefix,
            NewAuditEvent {
                actor: caller.actor(),
                actor_type: ActorType::ApiKey,
                action: "api_key.create".into(),
                subject_type: "api_key".into(),
                subject_id: None,
                details: json!({
                    "name": name,
                    "scope": scope,
                    "expires_at": expires_at,
                    "key_prefix": prefix,
                    "by_key": caller.key.id,
                }),
            },
        )
        .await?;
    let body = CreatedApiKey {
        key: ApiKeyView::of(key, now),
        secret,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Show one API key (revoked ones too).
#[utoipa::path(get, path = "/api-keys/{id}", tag = "api-keys",
    params(("id" = String, Path, description = "API key id")),
    responses(
        (status = 200, body = ApiKeyView),
        (status = 304, description = "unchanged (If-None-Match)"),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 401, description = "missing, malformed, unknown, expired or revoked API key (`unauthorized`)", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"certplane\"`, with `error=\"invalid_token\"` for a key presented and refused"))),
        (status = 403, description = "the key is not an admin key", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 429, description = "rate limited (`rate_limited`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "whole seconds (at least 1) until a retry may be admitted"))),
    ),
    security(("bearer" = ["admin"])))]
async fn get_key(
    State(state): State<AppState>,
    _caller: AdminAccess,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let Path(id) = id?;
    let key = state
        .store
        .get_api_key(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("API key {id}")))?;
    Ok(conditional_json(&headers, &ApiKeyView::of(key, Utc::now())))
}

/// Revoke an API key: refused from the next request on, still listed with
/// `revoked_at`. Repeating it answers the same 200. The last active admin
/// key cannot be revoked (409 `invalid_state`): create another admin key
/// first.
#[utoipa::path(delete, path = "/api-keys/{id}", tag = "api-keys",
    params(("id" = String, Path, description = "API key id")),
    responses(
        (status = 200, description = "revoked (now or before)", body = ApiKeyView),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 401, description = "missing, malformed, unknown, expired or revoked API key (`unauthorized`)", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"certplane\"`, with `error=\"invalid_token\"` for a key presented and refused"))),
        (status = 403, description = "the key is not an admin key", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the last active admin key (`invalid_state`)", body = ErrorBody),
        (status = 429, description = "rate limited (`rate_limited`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "whole seconds (at least 1) until a retry may be admitted"))),
    ),
    security(("bearer" = ["admin"])))]
async fn revoke_key(
    State(state): State<AppState>,
    AdminAccess(caller): AdminAccess,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let Path(id) = id?;
    let audit = NewAuditEvent {
        actor: caller.actor(),
        actor_type: ActorType::ApiKey,
        action: "api_key.revoke".into(),
        subject_type: "api_key".into(),
        subject_id: Some(id.clone()),
        details: json!({ "by_key": caller.key.id, "own_key": caller.key.id == id }),
    };
    let now = Utc::now();
    match state.store.revoke_api_key_audited(&id, audit).await? {
        ApiKeyRevocation::Revoked(key) | ApiKeyRevocation::AlreadyRevoked(key) => {
            Ok(Json(ApiKeyView::of(key, now)).into_response())
        }
        ApiKeyRevocation::NotFound => Err(ApiError::not_found(format!("API key {id}"))),
        ApiKeyRevocation::LastAdmin(key) => Err(ApiError::invalid_state(format!(
            "API key {} is the last active admin key; create another admin key before revoking it",
            key.id
        ))
        .with_details(json!({ "active_admin_keys": 1 }))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(days: Option<u32>, at: Option<DateTime<Utc>>) -> CreateApiKeyRequest {
        CreateApiKeyRequest {
            name: "k".into(),
            scope: "operator".into(),
            expires_in_days: days,
            expires_at: at,
        }
    }

    #[test]
    fn expiries_are_checked() {
        let now = Utc::now();
        assert_eq!(expiry_of(&request(None, None), now).unwrap(), None);
        assert_eq!(
            expiry_of(&request(Some(2), None), now).unwrap(),
            Some(now + Duration::days(2))
        );
        let later = now + Duration::hours(3);
        assert_eq!(
            expiry_of(&request(None, Some(later)), now).unwrap(),
            Some(later)
        );
        for bad in [
            request(Some(0), None),
            request(Some(MAX_EXPIRES_IN_DAYS + 1), None),
            request(None, Some(now)),
            request(None, Some(now + Duration::days(4000))),
            request(Some(1), Some(later)),
        ] {
            let err = expiry_of(&bad, now).unwrap_err();
            assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}");
            assert!(err.param.is_some(), "{bad:?}");
        }
    }

    #[test]
    fn the_strongest_scope_is_shown() {
        assert_eq!(
            strongest(&[ApiScope::ReadOnly, ApiScope::Admin]),
            Some(ApiScope::Admin)
        );
        assert_eq!(strongest(&[ApiScope::ReadOnly]), Some(ApiScope::ReadOnly));
        assert_eq!(strongest(&[]), None);
    }
}
