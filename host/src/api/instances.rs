//! Connector instances: `/issuers`, `/targets`, `/notifiers` and
//! `/dns-solvers`.
//!
//! An instance binds a loaded plugin of the right kind to settings, secrets
//! and capability grants. Before anything is saved (on create and on every
//! update) the plugin's `validate-config` runs on an instance built from
//! exactly the submitted configuration; the connector's verdict decides:
//! `invalid-config`, `unauthorized`, `rejected`, `unsupported` and sandbox
//! violations are 422, transient failures (and deadlines) 503.
//!
//! Targets run by a remote agent are validated by that agent (their
//! directory grants name paths on the agent's machine), so the host skips
//! `validate-config` for them and only checks the grants' shape.
//!
//! Secrets are sealed with the host's [`crate::secrets::SecretBox`] for the
//! owner `<kind>/<id>` and never returned: responses list `secret_names`.
//!
//! An issuer's `grants.challenges.dns_01[].solver` must name a dns-solver
//! instance that is not retired (422 otherwise), and a solver is not
//! retired while a live issuer routes to it or a challenge it publishes is
//! live (409).
//!
//! `DELETE` retires, for every kind: 200 with the instance as `GET` shows it
//! (`retired_at` set), the same on a repeated `DELETE`; 409
//! `invalid_state` with `error.details.counts` while something still uses
//! it. Lists hide retired instances unless `include_retired=true`. `GET`
//! answers with a strong `ETag` (`If-None-Match` → 304); `PATCH` honours
//! `If-Match` (412 `precondition_failed` when it is stale).

use std::collections::BTreeMap;

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use certplane_runtime::{
    CallError, ConnectorError, InstanceConfig, InstanceLimits, LimitPolicy, Plugin, PluginKind,
    Resolved,
};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::{OperatorAccess, ReadAccess};
use super::error::{ApiError, ApiResult};
use super::listing::{
    Page, PageQuery, check_if_match, conditional_json, etag_of, has_if_match,
    json as json_response, offset,
};
use crate::grants::{ChallengeRoutes, TlsGrant};
use crate::store::{
    ActorType, AgentStatus, InstanceTable, NewAuditEvent, NewPluginInstance, NewTarget,
    PluginInstance, SENTINEL_AGENT_ID, Target, new_id,
};

/// Longest instance or certificate name.
pub const MAX_NAME_LEN: usize = 128;
/// Largest serialised `settings` object, in bytes.
pub const MAX_SETTINGS_BYTES: usize = 64 * 1024;
/// Most secrets per instance.
pub const MAX_SECRETS: usize = 32;
/// Largest secret value, in bytes.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
/// Most host grants per instance.
pub const MAX_HOST_GRANTS: usize = 64;
/// Most directory grants per instance.
pub const MAX_DIR_GRANTS: usize = 16;
/// Most action grants per instance.
pub const MAX_ACTION_GRANTS: usize = 16;

/// A JSON body whose rejections (malformed JSON, wrong types, unknown
/// fields, wrong content type, too large) become envelope errors.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(ApiError::from(rejection)),
        }
    }
}

/// Whether `name` is a valid display name: 1–128 characters of ASCII
/// letters, digits, `.`, `_` and `-`, starting with a letter or digit.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Checks a display name, as a 422.
pub fn check_name(what: &str, name: &str) -> ApiResult<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::validation(format!(
            "{what} must be 1-{MAX_NAME_LEN} characters of letters, digits, '.', '_' and '-', \
             starting with a letter or digit"
        )))
    }
}

/// The four kinds of connector instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Issuer,
    Target,
    Notifier,
    DnsSolver,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Issuer => "issuer",
            Kind::Target => "target",
            Kind::Notifier => "notifier",
            Kind::DnsSolver => "dns-solver",
        }
    }

    fn plugin_kind(self) -> PluginKind {
        match self {
            Kind::Issuer => PluginKind::Issuer,
            Kind::Target => PluginKind::Target,
            Kind::Notifier => PluginKind::Notifier,
            Kind::DnsSolver => PluginKind::DnsSolver,
        }
    }

    /// Owner string the secrets are sealed for.
    fn owner(self, id: &str) -> String {
        format!("{}/{id}", self.as_str())
    }

    /// The store's table of the kinds shaped as [`PluginInstance`]; `None`
    /// for targets, which have their own.
    fn table(self) -> Option<InstanceTable> {
        match self {
            Kind::Issuer => Some(InstanceTable::Issuers),
            Kind::Notifier => Some(InstanceTable::Notifiers),
            Kind::DnsSolver => Some(InstanceTable::DnsSolvers),
            Kind::Target => None,
        }
    }
}

/// One directory grant (targets only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectoryGrant {
    /// Absolute path on the machine that runs the connector (the host, or
    /// the target's agent).
    pub path: String,
    /// Absolute path the connector sees.
    pub guest_path: String,
    /// Whether the connector may write.
    #[serde(default)]
    pub writable: bool,
}

/// Capability grants of an instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantsBody {
    /// Allowed HTTP destinations (`host`, `host:port`, `*.domain`, ...).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Preopened directories (targets only).
    #[serde(default)]
    pub directories: Vec<DirectoryGrant>,
    /// The operator's limits for this instance's calls, within the host's
    /// `[limits]` (and, for agent targets, the agent's). Unset fields take
    /// the plugin manifest's request, cut to the host's maxima, or the
    /// host's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsBody>,
    /// Trust roots and client certificate for the connector's own HTTPS
    /// (instances the host runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsGrant>,
    /// Issuers: who publishes domain-validation challenges (ACME).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenges: Option<ChallengeRoutes>,
    /// Targets: named actions (a server's configuration test, its reload)
    /// the connector may run, by name only. The agent's `[actions]` (or,
    /// for targets the host deploys itself, the host's) defines what each
    /// runs; the agent also allows each name per connector.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
}

/// Per-instance limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsBody {
    /// Wall-clock deadline of one call, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub deadline_secs: Option<u64>,
    /// Linear-memory cap of one call, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub memory_mib: Option<u64>,
    /// Calls of this instance that may run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub concurrency: Option<u32>,
}

impl From<LimitsBody> for InstanceLimits {
    fn from(l: LimitsBody) -> Self {
        InstanceLimits {
            deadline_secs: l.deadline_secs,
            memory_mib: l.memory_mib,
            concurrency: l.concurrency,
        }
    }
}

/// Body of `POST /issuers`, `/targets`, `/notifiers`, `/dns-solvers`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInstance {
    /// Unique display name: letters, digits, `.`, `_`, `-`, starting with
    /// a letter or digit.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub name: String,
    /// Name of a loaded plugin of the right kind.
    pub plugin: String,
    /// Non-secret settings (a JSON object; the plugin's schema).
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub settings: Value,
    /// Named secrets (write-only), at most 32, each at most 64 KiB.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Capability grants.
    #[serde(default)]
    pub grants: GrantsBody,
    /// Targets only: the agent that runs it (default `host`).
    #[serde(default)]
    pub agent_id: Option<String>,
}

/// Body of `PATCH /issuers/{id}` (and targets, notifiers, dns-solvers). Absent fields
/// keep their value; `settings` and `grants` are replaced as a whole;
/// `secrets` are merged (a `null` value removes that secret).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateInstance {
    /// New settings object.
    #[schema(value_type = Option<Object>)]
    pub settings: Option<Value>,
    /// Secrets to set (string) or remove (`null`).
    pub secrets: Option<BTreeMap<String, Option<String>>>,
    /// New grants.
    pub grants: Option<GrantsBody>,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// A connector instance as the API shows it (never its secrets).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InstanceView {
    /// Id.
    pub id: String,
    /// `issuer`, `target`, `notifier` or `dns-solver`.
    pub kind: String,
    /// Display name.
    pub name: String,
    /// Plugin name.
    pub plugin: String,
    /// Plugin version at creation / last update.
    pub plugin_version: String,
    /// Settings.
    #[schema(value_type = Object)]
    pub settings: Value,
    /// Names of the secrets set (values are never returned).
    pub secret_names: Vec<String>,
    /// Grants.
    #[schema(value_type = Object)]
    pub grants: Value,
    /// Targets: the agent that runs it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Issuers, notifiers and dns-solvers: disabled since (a retired
    /// notifier is disabled too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_at: Option<DateTime<Utc>>,
    /// Retired since (`DELETE` retires; nothing is erased).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<DateTime<Utc>>,
}

/// Kind-independent row.
struct Row {
    id: String,
    name: String,
    plugin_name: String,
    plugin_version: String,
    settings: Value,
    encrypted_secrets: Option<Vec<u8>>,
    grants: Value,
    agent_id: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    disabled_at: Option<DateTime<Utc>>,
    retired_at: Option<DateTime<Utc>>,
}

impl From<PluginInstance> for Row {
    fn from(p: PluginInstance) -> Row {
        Row {
            id: p.id,
            name: p.name,
            plugin_name: p.plugin_name,
            plugin_version: p.plugin_version,
            settings: p.settings,
            encrypted_secrets: p.encrypted_secrets,
            grants: p.grants,
            agent_id: None,
            created_at: p.created_at,
            updated_at: p.updated_at,
            disabled_at: p.disabled_at,
            retired_at: p.retired_at,
        }
    }
}

impl From<Target> for Row {
    fn from(t: Target) -> Row {
        Row {
            id: t.id,
            name: t.name,
            plugin_name: t.plugin_name,
            plugin_version: t.plugin_version,
            settings: t.settings,
            encrypted_secrets: t.encrypted_secrets,
            grants: t.grants,
            agent_id: Some(t.agent_id),
            created_at: t.created_at,
            updated_at: t.updated_at,
            disabled_at: None,
            retired_at: t.retired_at,
        }
    }
}

impl Row {
    fn view(&self, kind: Kind) -> InstanceView {
        InstanceView {
            id: self.id.clone(),
            kind: kind.as_str().to_string(),
            name: self.name.clone(),
            plugin: self.plugin_name.clone(),
            plugin_version: self.plugin_version.clone(),
            settings: self.settings.clone(),
            secret_names: sealed_names(self.encrypted_secrets.as_deref()),
            grants: self.grants.clone(),
            agent_id: self.agent_id.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            disabled_at: self.disabled_at,
            retired_at: self.retired_at,
        }
    }
}

/// Names in a sealed secret map (the JSON object's keys; values stay
/// sealed).
fn sealed_names(sealed: Option<&[u8]>) -> Vec<String> {
    sealed
        .and_then(|b| serde_json::from_slice::<BTreeMap<String, Value>>(b).ok())
        .map(|m| m.into_keys().collect())
        .unwrap_or_default()
}

/// Routes under `/api/v1`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_issuers, create_issuer))
        .routes(routes!(get_issuer, update_issuer, delete_issuer))
        .routes(routes!(list_targets, create_target))
        .routes(routes!(get_target, update_target, delete_target))
        .routes(routes!(list_notifiers, create_notifier))
        .routes(routes!(get_notifier, update_notifier, delete_notifier))
        .routes(routes!(list_dns_solvers, create_dns_solver))
        .routes(routes!(
            get_dns_solver,
            update_dns_solver,
            delete_dns_solver
        ))
}

/// `?page=&per_page=&include_retired=` of `GET /issuers`, `/targets`,
/// `/notifiers` and `/dns-solvers`.
#[derive(Debug, Clone, Copy, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TargetListQuery {
    /// 1-based page number.
    #[param(minimum = 1)]
    pub page: Option<u32>,
    /// Items per page (1–500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub per_page: Option<u32>,
    /// Also list retired (deleted) instances (default `false`).
    #[serde(default)]
    pub include_retired: bool,
}

// ---------------------------------------------------------------- handlers

/// List issuers.
#[utoipa::path(get, path = "/issuers", tag = "issuers", params(TargetListQuery),
    responses((status = 200, body = Page<InstanceView>), (status = 304, description = "unchanged")),
    security(("bearer" = ["read_only"])))]
async fn list_issuers(
    State(state): State<AppState>,
    _caller: ReadAccess,
    headers: HeaderMap,
    query: Result<Query<TargetListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    list(&state, Kind::Issuer, &headers, q).await
}

/// Create an issuer (its plugin validates the configuration first).
#[utoipa::path(post, path = "/issuers", tag = "issuers", request_body = CreateInstance,
    responses((status = 201, body = InstanceView), (status = 409, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody), (status = 503, body = super::error::ErrorBody)),
    security(("bearer" = ["operator"])))]
async fn create_issuer(
    State(state): State<AppState>,
    caller: OperatorAccess,
    ApiJson(body): ApiJson<CreateInstance>,
) -> ApiResult<Response> {
    create(&state, Kind::Issuer, &caller, body).await
}

/// One issuer.
#[utoipa::path(get, path = "/issuers/{id}", tag = "issuers", params(("id" = String, Path)),
    responses((status = 200, body = InstanceView), (status = 304, description = "unchanged (If-None-Match)"), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = ["read_only"])))]
async fn get_issuer(
    State(state): State<AppState>,
    _caller: ReadAccess,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    get(&state, Kind::Issuer, &headers, &id).await
}

/// Update an issuer's settings, secrets or grants (re-validated).
#[utoipa::path(patch, path = "/issuers/{id}", tag = "issuers", params(("id" = String, Path)),
    request_body = UpdateInstance,
    responses((status = 200, body = InstanceView), (status = 404, body = super::error::ErrorBody),
        (status = 412, description = "If-Match names an older version", body = super::error::ErrorBody),
        (status = 409, description = "its plugin is no longer loaded", body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody), (status = 503, body = super::error::ErrorBody)),
    security(("bearer" = ["operator"])))]
async fn update_issuer(
    State(state): State<AppState>,
    caller: OperatorAccess,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateInstance>,
) -> ApiResult<Response> {
    update(&state, Kind::Issuer, &caller, &headers, &id, body).await
}

/// Retire an issuer (409 while certificates not retired use it).
#[utoipa::path(delete, path = "/issuers/{id}", tag = "issuers", params(("id" = String, Path)),
    responses((status = 200, description = "retired (also when it already was)", body = InstanceView),
        (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody)),
    security(("bearer" = ["operator"])))]
async fn delete_issuer(
    State(state): State<AppState>,
    caller: OperatorAccess,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    retire(&state, Kind::Issuer, &caller, &id).await
}

/// List targets (retired ones with `include_retired=true`).
#[utoipa::path(get, path = "/targets", tag = "targets", params(TargetListQuery),
    responses((status = 200, body = Page<InstanceView>), (status = 304, description = "unchanged")),
    security(("bearer" = ["read_only"])))]
async fn list_targets(
    State(state): State<AppState>,
    _caller: ReadAccess,
    headers: HeaderMap,
    query: Result<Query<TargetListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    list(&state, Kind::Target, &headers, q).await
}

/// Create a target (run by `agent_id`, default the host).
#[utoipa::path(post, path = "/targets", tag = "targets", request_body = CreateInstance,
    responses((status = 201, body = InstanceView), (status = 409, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody), (status = 503, body = super::error::ErrorBody)),
    security(("bearer" = ["operator"])))]
async fn create_target(
    State(state): State<AppState>,
    caller: OperatorAccess,
    ApiJson(body): ApiJson<CreateInstance>,
) -> ApiResult<Response> {
    create(&state, Kind::Target, &caller, body).await
}

/// One target (also a retired one).
#[utoipa::path(get, path = "/targets/{id}", tag = "targets", params(("id" = String, Path)),
    responses((status = 200, body = InstanceView), (status = 304, description = "unchanged (If-None-Match)"), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = ["read_only"])))]
async fn get_target(
    State(state): State<AppState>,
    _caller: ReadAccess,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    get(&state, Kind::Target, &headers, &id).await
}

/// Update a target's settings, secrets or grants (re-validated).
#[utoipa::path(patch, path = "/targets/{id}", tag = "targets", params(("id" = String, Path)),
    request_body = UpdateInstance,
    responses((status = 200, body = InstanceView), (status = 404, body = super::error::ErrorBody),
        (status = 412, description = "If-Match names an older version", body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody), (status = 503, body = super::error::ErrorBody)),
    security(("bearer" = ["operator"])))]
async fn update_target(
    State(state): State<AppState>,
    caller: OperatorAccess,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateInstance>,
) -> ApiResult<Response> {
    update(&state, Kind::Target, &caller, &headers, &id, body).await
}

/// Retire a target: 409 while certificates deploy to it or it has open
/// jobs.
#[utoipa::path(delete, path = "/targets/{id}", tag = "targets", params(("id" = String, Path)),
    responses((status = 200, description = "retired (also when it already was)", body = InstanceView),
        (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody)),
    security(("bearer" = ["operator"])))]
async fn delete_target(
    State(state): State<AppState>,
    caller: OperatorAccess,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    retire(&state, Kind::Target, &caller, &id).await
}

/// List notifiers.
#[utoipa::path(get, path = "/notifiers", tag = "notifiers", params(TargetListQuery),
    responses((status = 200, body = Page<InstanceView>), (status = 304, description = "unchanged")),
    security(("bearer" = ["read_only"])))]
async fn list_notifiers(
    State(state): State<AppState>,
    _caller: ReadAccess,
    headers: HeaderMap,
    query: Result<Query<TargetListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    list(&state, Kind::Notifier, &headers, q).await
}

/// Create a notifier.
#[utoipa::path(post, path = "/notifiers", tag = "notifiers", request_body = CreateInstance,
    responses((status = 201, body = InstanceView), (status = 409, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody), (status = 503, body = super::error::ErrorBody)),
    security(("bearer" = ["operator"])))]
async fn create_notifier(
    State(state): State<AppState>,
    caller: OperatorAccess,
    ApiJson(body): ApiJson<CreateInstance>,
) -> ApiResult<Response> {
    create(&state, Kind::Notifier, &caller, body).await
}

/// One notifier.
#[utoipa::path(get, path = "/notifiers/{id}", tag = "notifiers", params(("id" = String, Path)),
    responses((status = 200, body = InstanceView), (status = 304, description = "unchanged (If-None-Match)"), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = ["read_only"])))]
async fn get_notifier(
    State(state): State<AppState>,
    _caller: ReadAccess,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    get(&state, Kind::Notifier, &headers, &id).await
}

/// Update a notifier's settings, secrets or grants (re-validated).
#[utoipa::path(patch, path = "/notifiers/{id}", tag = "notifiers", params(("id" = String, Path)),
    request_body = UpdateInstance,
    responses((status = 200, body = InstanceView), (status = 404, body = super::error::ErrorBody),
        (status = 412, description = "If-Match names an older version", body = super::error::ErrorBody),
        (status = 409, description = "its plugin is no longer loaded", body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody), (status = 503, body = super::error::ErrorBody)),
    security(("bearer" = ["operator"])))]
async fn update_notifier(
    State(state): State<AppState>,
    caller: OperatorAccess,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateInstance>,
) -> ApiResult<Response> {
    update(&state, Kind::Notifier, &caller, &headers, &id, body).await
}

/// Retire (and disable) a notifier, keeping its delivery history (409
/// while notifications are pending or being sent).
#[utoipa::path(delete, path = "/notifiers/{id}", tag = "notifiers", params(("id" = String, Path)),
    responses((status = 200, description = "retired (also when it already was)", body = InstanceView),
        (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody)),
    security(("bearer" = ["operator"])))]
async fn delete_notifier(
    State(state): State<AppState>,
    caller: OperatorAccess,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    retire(&state, Kind::Notifier, &caller, &id).await
}

/// List dns-solvers.
#[utoipa::path(get, path = "/dns-solvers", tag = "dns-solvers", params(TargetListQuery),
    responses((status = 200, body = Page<InstanceView>), (status = 304, description = "unchanged")),
    security(("bearer" = ["read_only"])))]
async fn list_dns_solvers(
    State(state): State<AppState>,
    _caller: ReadAccess,
    headers: HeaderMap,
    query: Result<Query<TargetListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    list(&state, Kind::DnsSolver, &headers, q).await
}

/// Create a dns-solver (its plugin validates the configuration first);
/// issuers route a zone's dns-01 challenges to it in `grants.challenges`.
#[utoipa::path(post, path = "/dns-solvers", tag = "dns-solvers", request_body = CreateInstance,
    responses((status = 201, body = InstanceView), (status = 409, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody), (status = 503, body = super::error::ErrorBody)),
    security(("bearer" = ["operator"])))]
async fn create_dns_solver(
    State(state): State<AppState>,
    caller: OperatorAccess,
    ApiJson(body): ApiJson<CreateInstance>,
) -> ApiResult<Response> {
    create(&state, Kind::DnsSolver, &caller, body).await
}

/// One dns-solver.
#[utoipa::path(get, path = "/dns-solvers/{id}", tag = "dns-solvers", params(("id" = String, Path)),
    responses((status = 200, body = InstanceView), (status = 304, description = "unchanged (If-None-Match)"), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = ["read_only"])))]
async fn get_dns_solver(
    State(state): State<AppState>,
    _caller: ReadAccess,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    get(&state, Kind::DnsSolver, &headers, &id).await
}

/// Update a dns-solver's settings, secrets or grants (re-validated).
#[utoipa::path(patch, path = "/dns-solvers/{id}", tag = "dns-solvers", params(("id" = String, Path)),
    request_body = UpdateInstance,
    responses((status = 200, body = InstanceView), (status = 404, body = super::error::ErrorBody),
        (status = 412, description = "If-Match names an older version", body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody), (status = 503, body = super::error::ErrorBody)),
    security(("bearer" = ["operator"])))]
async fn update_dns_solver(
    State(state): State<AppState>,
    caller: OperatorAccess,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateInstance>,
) -> ApiResult<Response> {
    update(&state, Kind::DnsSolver, &caller, &headers, &id, body).await
}

/// Retire a dns-solver (409 while a live issuer routes dns-01 challenges
/// to it or a challenge it published is not yet withdrawn).
#[utoipa::path(delete, path = "/dns-solvers/{id}", tag = "dns-solvers", params(("id" = String, Path)),
    responses((status = 200, description = "retired (also when it already was)", body = InstanceView),
        (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody)),
    security(("bearer" = ["operator"])))]
async fn delete_dns_solver(
    State(state): State<AppState>,
    caller: OperatorAccess,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    retire(&state, Kind::DnsSolver, &caller, &id).await
}

// ---------------------------------------------------------------- logic

async fn load_row(state: &AppState, kind: Kind, id: &str) -> ApiResult<Row> {
    let row = match kind {
        Kind::Issuer => state.store.get_issuer(id).await?.map(Row::from),
        Kind::Target => state.store.get_target(id).await?.map(Row::from),
        Kind::Notifier => state.store.get_notifier(id).await?.map(Row::from),
        Kind::DnsSolver => state.store.get_dns_solver(id).await?.map(Row::from),
    };
    row.ok_or_else(|| ApiError::not_found(format!("{} {id:?}", kind.as_str())))
}

async fn list(
    state: &AppState,
    kind: Kind,
    headers: &HeaderMap,
    query: TargetListQuery,
) -> ApiResult<Response> {
    let include_retired = query.include_retired;
    let (page, per_page) = PageQuery {
        page: query.page,
        per_page: query.per_page,
    }
    .resolve()?;
    let (limit, skip) = (per_page, offset(page, per_page));
    let (rows, total): (Vec<Row>, i64) = match kind {
        Kind::Issuer => {
            let (rows, total) = state
                .store
                .page_issuers(include_retired, limit, skip)
                .await?;
            (rows.into_iter().map(Row::from).collect(), total)
        }
        Kind::Target => {
            let (rows, total) = state
                .store
                .page_targets(include_retired, limit, skip)
                .await?;
            (rows.into_iter().map(Row::from).collect(), total)
        }
        Kind::Notifier => {
            let (rows, total) = state
                .store
                .page_notifiers(include_retired, limit, skip)
                .await?;
            (rows.into_iter().map(Row::from).collect(), total)
        }
        Kind::DnsSolver => {
            let (rows, total) = state
                .store
                .page_dns_solvers(include_retired, limit, skip)
                .await?;
            (rows.into_iter().map(Row::from).collect(), total)
        }
    };
    let body = Page {
        items: rows
            .iter()
            .map(|r| r.view(kind))
            .collect::<Vec<InstanceView>>(),
        page,
        per_page,
        total: u64::try_from(total).unwrap_or(0),
    };
    Ok(conditional_json(headers, &body))
}

async fn get(state: &AppState, kind: Kind, headers: &HeaderMap, id: &str) -> ApiResult<Response> {
    let row = load_row(state, kind, id).await?;
    Ok(conditional_json(headers, &row.view(kind)))
}

/// A configuration checked for shape, ready to validate and store.
struct Checked {
    settings: Value,
    secrets: BTreeMap<String, String>,
    grants: GrantsBody,
    /// The limits the instance will run with on the host.
    resolved: Resolved,
}

/// Shape checks that need no plugin call.
fn check_config(
    kind: Kind,
    policy: &LimitPolicy,
    plugin: &Plugin,
    settings: Value,
    secrets: BTreeMap<String, String>,
    grants: GrantsBody,
) -> ApiResult<Checked> {
    if !settings.is_object() {
        return Err(ApiError::validation("settings must be a JSON object"));
    }
    let settings_len = serde_json::to_vec(&settings)
        .map_err(ApiError::internal)?
        .len();
    if settings_len > MAX_SETTINGS_BYTES {
        return Err(ApiError::validation(format!(
            "settings are {settings_len} bytes; at most {MAX_SETTINGS_BYTES} are allowed"
        )));
    }
    if secrets.len() > MAX_SECRETS {
        return Err(ApiError::validation(format!(
            "at most {MAX_SECRETS} secrets are allowed"
        )));
    }
    let known = &plugin.info().secret_names;
    let client_key = grants
        .tls
        .as_ref()
        .and_then(|t| t.client_key_secret.as_deref());
    for (name, value) in &secrets {
        if !known.iter().any(|k| k == name) && client_key != Some(name.as_str()) {
            return Err(ApiError::validation(format!(
                "plugin {} reads no secret named {name:?} (it reads: {})",
                plugin.name(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        if value.len() > MAX_SECRET_BYTES {
            return Err(ApiError::validation(format!(
                "secret {name:?} is larger than {MAX_SECRET_BYTES} bytes"
            )));
        }
    }
    if grants.hosts.len() > MAX_HOST_GRANTS {
        return Err(ApiError::validation(format!(
            "at most {MAX_HOST_GRANTS} host grants are allowed"
        )));
    }
    if grants.directories.len() > MAX_DIR_GRANTS {
        return Err(ApiError::validation(format!(
            "at most {MAX_DIR_GRANTS} directory grants are allowed"
        )));
    }
    if kind != Kind::Target && !grants.directories.is_empty() {
        return Err(ApiError::validation(format!(
            "directory grants only apply to targets, not to a {}",
            kind.as_str()
        )));
    }
    for dir in &grants.directories {
        for (field, path) in [("path", &dir.path), ("guest_path", &dir.guest_path)] {
            if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
                return Err(ApiError::validation(format!(
                    "directory grant {field} {path:?} must be absolute and must not contain '..'"
                )));
            }
        }
    }
    if !grants.actions.is_empty() && kind != Kind::Target {
        return Err(ApiError::validation(format!(
            "grants.actions only apply to targets, not to a {}",
            kind.as_str()
        )));
    }
    if grants.actions.len() > MAX_ACTION_GRANTS {
        return Err(ApiError::validation(format!(
            "at most {MAX_ACTION_GRANTS} action grants are allowed"
        )));
    }
    if let Some(bad) = grants
        .actions
        .iter()
        .find(|a| !certplane_runtime::actions::valid_name(a))
    {
        return Err(ApiError::validation(format!(
            "grants.actions: {bad:?} is not an action name (1-64 characters of a-z, 0-9, '-', '_', '.'); \
             actions are named here and defined in the agent's or host's [actions]"
        )));
    }
    if let Some(routes) = &grants.challenges {
        if kind != Kind::Issuer {
            return Err(ApiError::validation(format!(
                "grants.challenges only apply to issuers, not to a {}",
                kind.as_str()
            )));
        }
        routes.check().map_err(ApiError::validation)?;
    }
    if let Some(tls) = &grants.tls {
        if kind == Kind::Target {
            return Err(ApiError::validation(
                "grants.tls applies to issuers, notifiers and dns-solvers (targets run on agents)",
            ));
        }
        // The PEM itself is checked when the instance is built below.
        tls.instance_tls(|name| secrets.get(name).map(String::as_str))
            .map_err(ApiError::validation)?;
    }
    // Host grant syntax is checked without running anything.
    InstanceConfig::new("check")
        .with_hosts(&grants.hosts)
        .map_err(|e| ApiError::validation(e.to_string()))?;
    // Last of the shape checks: the cheap structural ones (sizes, counts,
    // names) answer first.
    check_settings_schema(plugin, &settings)?;
    let resolved = policy
        .resolve(
            plugin.manifest(),
            &grants.limits.map(InstanceLimits::from).unwrap_or_default(),
        )
        .map_err(|e| ApiError::validation(format!("grants.{e}")))?;
    Ok(Checked {
        settings,
        secrets,
        grants,
        resolved,
    })
}

/// Most schema violations one answer lists.
const MAX_SCHEMA_ERRORS: usize = 5;

/// Checks `settings` against the plugin's `settings-schema` (JSON Schema),
/// before the plugin itself is asked: the answer names each field that
/// does not match. A plugin whose schema is not valid JSON Schema gets its
/// settings checked by its own `validate-config` only (logged).
fn check_settings_schema(plugin: &Plugin, settings: &Value) -> ApiResult<()> {
    let schema = match serde_json::from_str::<Value>(&plugin.info().settings_schema) {
        Ok(schema) => schema,
        Err(e) => {
            tracing::warn!(plugin = plugin.name(), error = %e, "the plugin's settings schema is not JSON; not checked");
            return Ok(());
        }
    };
    let validator = match jsonschema::validator_for(&schema) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(plugin = plugin.name(), error = %e, "the plugin's settings schema is not valid JSON Schema; not checked");
            return Ok(());
        }
    };
    let errors: Vec<String> = validator
        .iter_errors(settings)
        .take(MAX_SCHEMA_ERRORS)
        .map(|e| {
            let at = e.instance_path.to_string();
            let field = if at.is_empty() {
                "settings".to_string()
            } else {
                format!("settings{}", at.replace('/', "."))
            };
            format!("{field}: {e}")
        })
        .collect();
    if errors.is_empty() {
        return Ok(());
    }
    Err(ApiError::validation(format!(
        "settings do not match plugin {}'s schema: {}",
        plugin.name(),
        errors.join("; ")
    )))
}

/// Builds the runtime instance from exactly this configuration and runs the
/// plugin's `validate-config`.
async fn validate_with_plugin(
    state: &AppState,
    plugin: &std::sync::Arc<Plugin>,
    instance_id: &str,
    checked: &Checked,
) -> ApiResult<()> {
    let mut config = InstanceConfig::new(instance_id)
        .with_settings(checked.settings.clone())
        .map_err(|e| ApiError::validation(e.to_string()))?
        .with_hosts(&checked.grants.hosts)
        .map_err(|e| ApiError::validation(e.to_string()))?;
    for (name, value) in &checked.secrets {
        config = config.with_secret(name.clone(), value.clone());
    }
    for dir in &checked.grants.directories {
        config = config.with_dir(&dir.path, dir.guest_path.clone(), dir.writable);
    }
    config = config.with_limits(checked.resolved.limits);
    config.grants.actions =
        certplane_runtime::actions::granted_specs(&checked.grants.actions, &state.config.actions)
            .map_err(|e| ApiError::validation(format!("grants.actions: {e}")))?;
    if let Some(tls) = &checked.grants.tls {
        config = config.with_tls(
            tls.instance_tls(|name| checked.secrets.get(name).map(String::as_str))
                .map_err(ApiError::validation)?,
        );
    }
    let instance = certplane_runtime::PluginInstance::new(plugin.clone(), config)
        .map_err(|e| ApiError::validation(e.to_string()))?;
    // On the plugin threads, like every connector call: a spinning
    // validate-config must not take turns with the API's own requests (the
    // request timeout drops it, which aborts the call).
    state
        .plugin_exec
        .run(
            plugin.name(),
            async move { instance.validate_config().await },
        )
        .await
        .map_err(call_error)
}

/// How a failed `validate-config` call is answered.
fn call_error(err: CallError) -> ApiError {
    let unavailable = |message: String| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "connector_unavailable",
            message,
        )
    };
    match err {
        CallError::Connector { plugin, error } => match error {
            ConnectorError::InvalidConfig(m) => {
                ApiError::validation(format!("plugin {plugin}: invalid configuration: {m}"))
            }
            ConnectorError::Unauthorized(m) => {
                ApiError::validation(format!("plugin {plugin}: unauthorized: {m}"))
            }
            ConnectorError::Rejected(m) => {
                ApiError::validation(format!("plugin {plugin}: rejected: {m}"))
            }
            ConnectorError::Unsupported(m) => {
                ApiError::validation(format!("plugin {plugin}: unsupported: {m}"))
            }
            ConnectorError::Transient(m) => unavailable(format!(
                "plugin {plugin} could not validate the configuration now: {m}; retry later"
            )),
            ConnectorError::RateLimited(limit) => unavailable(format!(
                "plugin {plugin} was rate limited upstream{}; retry later",
                limit
                    .retry_after_secs
                    .map(|s| format!(" (retry after {s} s)"))
                    .unwrap_or_default()
            )),
        },
        e @ (CallError::Deadline { .. } | CallError::Instantiate { .. }) => {
            unavailable(format!("{e}; retry later"))
        }
        e => ApiError::validation(format!("validating the configuration failed: {e}")),
    }
}

/// Every dns-solver an issuer's `grants.challenges.dns_01` routes to must
/// exist and not be retired (checked again, with the rows locked, when the
/// issuer is written).
async fn check_solvers_exist(state: &AppState, grants: &GrantsBody) -> ApiResult<()> {
    let Some(routes) = &grants.challenges else {
        return Ok(());
    };
    for (i, route) in routes.dns_01.iter().enumerate() {
        let solver = state.store.get_dns_solver(&route.solver).await?;
        if solver.is_none_or(|s| s.retired_at.is_some()) {
            return Err(ApiError::validation(format!(
                "grants.challenges.dns_01[{i}].solver: no dns-solver instance {:?}, or it is \
                 retired (create one with POST /api/v1/dns-solvers and give its id)",
                route.solver
            )));
        }
    }
    Ok(())
}

fn seal(
    state: &AppState,
    kind: Kind,
    id: &str,
    secrets: &BTreeMap<String, String>,
) -> ApiResult<Option<Vec<u8>>> {
    if secrets.is_empty() {
        return Ok(None);
    }
    let sealed = state
        .secrets
        .seal_map(secrets, &kind.owner(id))
        .map_err(ApiError::internal)?;
    Ok(Some(sealed.into_bytes()))
}

fn grants_json(grants: &GrantsBody) -> ApiResult<Value> {
    serde_json::to_value(grants).map_err(ApiError::internal)
}

/// The audit row of an operator's `action` (`create`, `update`, `retire`)
/// on `kind` `id`, written by the store in the change's own transaction.
fn audit_event(
    caller: &OperatorAccess,
    kind: Kind,
    action: &str,
    id: &str,
    details: Value,
) -> NewAuditEvent {
    NewAuditEvent {
        actor: caller.0.actor(),
        actor_type: ActorType::ApiKey,
        action: format!("{}.{action}", kind.as_str()),
        subject_type: kind.as_str().to_string(),
        subject_id: Some(id.to_string()),
        details,
    }
}

async fn create(
    state: &AppState,
    kind: Kind,
    caller: &OperatorAccess,
    body: CreateInstance,
) -> ApiResult<Response> {
    check_name("name", &body.name)?;
    if kind != Kind::Target && body.agent_id.is_some() {
        return Err(ApiError::validation(format!(
            "agent_id only applies to targets, not to a {}",
            kind.as_str()
        )));
    }
    let plugin = state
        .plugins
        .get_kind(&body.plugin, kind.plugin_kind())
        .map_err(ApiError::validation)?
        .clone();
    let agent_id = body
        .agent_id
        .clone()
        .unwrap_or_else(|| SENTINEL_AGENT_ID.to_string());
    if kind == Kind::Target {
        match state.store.get_agent(&agent_id).await? {
            Some(agent) if agent.status == AgentStatus::Active => {}
            Some(_) => {
                return Err(ApiError::validation(format!(
                    "agent {agent_id:?} is retired"
                )));
            }
            None => return Err(ApiError::validation(format!("no agent {agent_id:?}"))),
        }
    }
    let checked = check_config(
        kind,
        &state.config.limits,
        &plugin,
        body.settings,
        body.secrets,
        body.grants,
    )?;
    check_solvers_exist(state, &checked.grants).await?;
    let id = new_id();
    let runs_on_host = kind != Kind::Target || agent_id == SENTINEL_AGENT_ID;
    if runs_on_host {
        validate_with_plugin(state, &plugin, &id, &checked).await?;
    }
    let encrypted_secrets = seal(state, kind, &id, &checked.secrets)?;
    let new = NewPluginInstance {
        name: body.name.clone(),
        plugin_name: plugin.name().to_string(),
        plugin_version: plugin.version().to_string(),
        settings: checked.settings.clone(),
        encrypted_secrets,
        grants: grants_json(&checked.grants)?,
    };
    let event = audit_event(
        caller,
        kind,
        "create",
        &id,
        json!({
            "name": new.name,
            "plugin": new.plugin_name,
            "plugin_version": new.plugin_version,
            "secret_names": checked.secrets.keys().collect::<Vec<_>>(),
            "agent_id": (kind == Kind::Target).then_some(&agent_id),
            "validated_on_host": runs_on_host,
        }),
    );
    let row: Row = match kind.table() {
        Some(table) => state
            .store
            .create_instance(table, &id, new, Some(&event))
            .await?
            .into(),
        None => state
            .store
            .create_target_with_id(
                &id,
                NewTarget {
                    agent_id: agent_id.clone(),
                    instance: new,
                },
                Some(&event),
            )
            .await
            .map_err(|e| match e {
                crate::store::StoreError::NotFound { .. } => {
                    ApiError::validation(format!("agent {agent_id:?} is not active"))
                }
                other => other.into(),
            })?
            .into(),
    };
    Ok(json_response(StatusCode::CREATED, row.view(kind)))
}

async fn update(
    state: &AppState,
    kind: Kind,
    caller: &OperatorAccess,
    headers: &HeaderMap,
    id: &str,
    body: UpdateInstance,
) -> ApiResult<Response> {
    let row = load_row(state, kind, id).await?;
    let (etag, _) = etag_of(&row.view(kind))?;
    check_if_match(headers, &etag)?;
    // The row the caller's ETag named must still be the one written: the
    // store refuses the write if it changed since (412 below).
    let unchanged_since = has_if_match(headers).then_some(row.updated_at);
    if row.retired_at.is_some() {
        return Err(ApiError::invalid_state(format!(
            "{} {id:?} is retired",
            kind.as_str()
        )));
    }
    let plugin = state
        .plugins
        .get_kind(&row.plugin_name, kind.plugin_kind())
        .map_err(|e| {
            ApiError::invalid_state(format!("cannot validate the new configuration: {e}"))
        })?
        .clone();
    let mut changed = Vec::new();
    let settings = match body.settings {
        Some(s) => {
            changed.push("settings");
            s
        }
        None => row.settings.clone(),
    };
    let grants = match body.grants {
        Some(g) => {
            changed.push("grants");
            g
        }
        None => serde_json::from_value(row.grants.clone()).unwrap_or_default(),
    };
    let mut secrets: BTreeMap<String, String> = match row.encrypted_secrets.as_deref() {
        None => BTreeMap::new(),
        Some(bytes) => {
            let text = std::str::from_utf8(bytes).map_err(ApiError::internal)?;
            state
                .secrets
                .open_map(text, &kind.owner(id))
                .map_err(ApiError::internal)?
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect()
        }
    };
    let mut secret_changes = Vec::new();
    if let Some(patch) = body.secrets {
        changed.push("secrets");
        for (name, value) in patch {
            match value {
                Some(v) => {
                    secrets.insert(name.clone(), v);
                }
                None => {
                    secrets.remove(&name);
                }
            }
            secret_changes.push(name);
        }
    }
    let checked = check_config(
        kind,
        &state.config.limits,
        &plugin,
        settings,
        secrets,
        grants,
    )?;
    check_solvers_exist(state, &checked.grants).await?;
    let runs_on_host = row
        .agent_id
        .as_deref()
        .is_none_or(|a| a == SENTINEL_AGENT_ID);
    if runs_on_host {
        validate_with_plugin(state, &plugin, id, &checked).await?;
    }
    let encrypted_secrets = seal(state, kind, id, &checked.secrets)?;
    let grants = grants_json(&checked.grants)?;
    let event = audit_event(
        caller,
        kind,
        "update",
        id,
        json!({ "changed": changed, "secrets_changed": secret_changes,
                "validated_on_host": runs_on_host }),
    );
    let updated: Option<Row> = match kind.table() {
        Some(table) => state
            .store
            .update_instance(
                table,
                id,
                &checked.settings,
                encrypted_secrets,
                &grants,
                unchanged_since,
                Some(&event),
            )
            .await?
            .map(Row::from),
        None => state
            .store
            .update_target(
                id,
                &checked.settings,
                encrypted_secrets,
                &grants,
                unchanged_since,
                Some(&event),
            )
            .await?
            .map(Row::from),
    };
    let Some(updated) = updated else {
        // Retired, or changed since the caller's If-Match, meanwhile.
        let now = load_row(state, kind, id).await?;
        return Err(if now.retired_at.is_some() {
            ApiError::invalid_state(format!("{} {id:?} was retired meanwhile", kind.as_str()))
        } else {
            ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                format!(
                    "{} {id:?} changed since the version If-Match names; GET it again and retry",
                    kind.as_str()
                ),
            )
        });
    };
    Ok(json_response(StatusCode::OK, updated.view(kind)))
}

/// How often a retirement re-reads when what used the instance went away
/// (or came) between the refusal and the count that explains it.
const RETIRE_ATTEMPTS: usize = 3;

/// `DELETE`: retires the instance and answers with it as `GET` shows it,
/// also when it already was retired (nothing changes then, nothing is
/// audited). Each store call checks "in use" in the same transaction as
/// the change; the counts are read only to explain a refusal.
async fn retire(
    state: &AppState,
    kind: Kind,
    caller: &OperatorAccess,
    id: &str,
) -> ApiResult<Response> {
    for _ in 0..RETIRE_ATTEMPTS {
        let row = load_row(state, kind, id).await?;
        if row.retired_at.is_some() {
            return Ok(json_response(StatusCode::OK, row.view(kind)));
        }
        let event = audit_event(
            caller,
            kind,
            "retire",
            id,
            json!({ "name": row.name, "plugin": row.plugin_name }),
        );
        let retired = match kind.table() {
            Some(table) => state.store.retire_instance(table, id, Some(&event)).await?,
            None => {
                let reason = format!("deleted by {}", caller.0.actor());
                state
                    .store
                    .retire_unused_target(id, &reason, Some(&event))
                    .await?
            }
        };
        if retired {
            let row = load_row(state, kind, id).await?;
            return Ok(json_response(StatusCode::OK, row.view(kind)));
        }
        if let Some(refusal) = in_use(state, kind, id).await? {
            return Err(refusal);
        }
    }
    Err(ApiError::invalid_state(format!(
        "{} {id:?} kept changing; try again",
        kind.as_str()
    )))
}

/// Why `kind` `id` cannot be retired now: 409 `invalid_state` with the
/// counts of what uses it in `error.details.counts`; `None` when nothing
/// does (any more).
async fn in_use(state: &AppState, kind: Kind, id: &str) -> ApiResult<Option<ApiError>> {
    Ok(match kind {
        Kind::Issuer => {
            let n = state.store.issuer_certificate_count(id).await?;
            (n > 0).then(|| {
                ApiError::invalid_state(format!(
                    "issuer {id:?} is used by {n} certificate(s) that are not retired; retire \
                     them (DELETE /api/v1/certificates/{{id}}) first (retired ones keep naming \
                     it)"
                ))
                .with_details(json!({ "counts": { "certificates": n } }))
            })
        }
        Kind::Target => {
            let (certificates, jobs) = state.store.target_usage(id).await?;
            (certificates > 0 || jobs > 0).then(|| {
                ApiError::invalid_state(format!(
                    "target {id:?} is in use by {certificates} certificate(s) and {jobs} open \
                     job(s)"
                ))
                .with_details(
                    json!({ "counts": { "certificates": certificates, "open_jobs": jobs } }),
                )
            })
        }
        Kind::DnsSolver => {
            let (issuers, challenges) = state.store.dns_solver_usage(id).await?;
            if issuers.is_empty() && challenges == 0 {
                None
            } else {
                let mut uses = Vec::new();
                let mut fixes = Vec::new();
                if !issuers.is_empty() {
                    uses.push(format!(
                        "{} issuer(s) route dns-01 challenges to it ({})",
                        issuers.len(),
                        issuers.join(", ")
                    ));
                    fixes.push(
                        "route those issuers elsewhere (their grants.challenges.dns_01, PATCH \
                         /api/v1/issuers/{id})",
                    );
                }
                if challenges > 0 {
                    uses.push(format!(
                        "{challenges} challenge(s) it published are not withdrawn yet"
                    ));
                    fixes.push("let their jobs end (it withdraws them then)");
                }
                Some(
                    ApiError::invalid_state(format!(
                        "dns-solver {id:?} is in use: {}; {}, then retire it again",
                        uses.join(" and "),
                        fixes.join(" and ")
                    ))
                    .with_details(json!({
                        "counts": { "issuers": issuers.len(), "live_challenges": challenges },
                        "issuers": issuers,
                    })),
                )
            }
        }
        Kind::Notifier => {
            let n = state.store.notifier_open_notifications(id).await?;
            if n == 0 {
                None
            } else {
                // Say how out of it: cancel the queue, then retire (the
                // deliveries in flight end at the connector's deadline).
                let (pending, sending) = state.store.notifier_queue_counts(id).await?;
                Some(
                    ApiError::invalid_state(format!(
                        "notifier {id:?} has {n} notification(s) pending delivery ({pending} \
                         pending, {sending} being sent): cancel them with POST \
                         /api/v1/notifiers/{id}/notifications/cancel (`certplane notifiers \
                         cancel-pending {id}`; `disable` first stops new ones), then retire it \
                         again once none is being sent"
                    ))
                    .with_details(json!({
                        "counts": { "open_notifications": n, "pending": pending, "sending": sending },
                        "cancel": format!("/api/v1/notifiers/{id}/notifications/cancel"),
                    })),
                )
            }
        }
    })
}
