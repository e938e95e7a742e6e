//! Managed certificates: `/certificates`, "renew now" and revocation.
//!
//! Creating a certificate makes it due for issuance at once (the renewal
//! sweep turns it into an issuance job). Private keys are never returned:
//! versions show the chain, validity and fingerprint only.
//!
//! `DELETE` retires: 200 with the certificate as `GET` shows it
//! (`retired_at` set), the same on a repeat. The list hides retired ones
//! unless `include_retired=true`. `GET` has a strong `ETag`
//! (`If-None-Match` → 304) and `PATCH` honours `If-Match` (412). `PATCH`
//! checks the fields it shares with create exactly as create does.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::str::FromStr;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::{OperatorAccess, ReadAccess};
use super::error::{ApiError, ApiResult, ErrorBody};
use super::instances::{ApiJson, check_name};
use super::listing::{
    Page, PageQuery, check_if_match, conditional_json, etag_of, has_if_match, json as json_response,
};
use crate::pipeline::keygen::KeyType;
use crate::store::{
    ActorType, Certificate, CertificateCreate, CertificateOptions, CertificateStatus,
    CertificateVersion, JobStatus, JobType, KeySource, NewAuditEvent, NewCertificate, NewJob,
    PluginInstance, SENTINEL_AGENT_ID, Target, new_id, now,
};

/// Most subject alternative names per certificate.
pub const MAX_SANS: usize = 100;
/// Most deployment targets per certificate.
pub const MAX_TARGETS: usize = 50;
/// Longest renewal window, in days.
pub const MAX_RENEW_BEFORE_DAYS: u32 = 3650;
/// Default renewal window, in days.
pub const DEFAULT_RENEW_BEFORE_DAYS: u32 = 30;
/// Longest owner string.
pub const MAX_OWNER_LEN: usize = 128;
/// Longest common name (X.509 `ub-common-name`).
pub const MAX_COMMON_NAME_LEN: usize = 64;

const SECS_PER_DAY: i64 = 86_400;

/// Body of `POST /certificates`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCertificate {
    /// Unique display name: letters, digits, `.`, `_`, `-`, starting with
    /// a letter or digit.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub name: String,
    /// Subject common name: a DNS name or IP address (also added to the
    /// SANs when missing there).
    #[schema(min_length = 1, max_length = 64)]
    pub common_name: String,
    /// Subject alternative names: DNS names (`*.` allowed as the first
    /// label) or IP addresses; at most 100, no duplicates.
    #[serde(default)]
    #[schema(max_items = 100)]
    pub sans: Vec<String>,
    /// `ecdsa-p256` (default), `ecdsa-p384`, `rsa-2048`, `rsa-3072`,
    /// `rsa-4096` or `ed25519`.
    #[serde(default)]
    #[schema(schema_with = super::openapi::key_type_schema)]
    pub key_type: Option<KeyType>,
    /// Issuer instance id.
    pub issuer_id: String,
    /// Deployment targets; the first one holds the key when it is
    /// agent-generated.
    #[serde(default)]
    #[schema(max_items = 50)]
    pub target_ids: Vec<String>,
    /// `agent` (the key is generated on the first target's agent and never
    /// leaves it) or `host`. Default: `agent` when the first target belongs
    /// to an agent, else `host`.
    #[serde(default)]
    #[schema(schema_with = super::openapi::key_source_schema)]
    pub key_source: Option<KeySource>,
    /// Renew this many days before expiry (default 30, at most 3650). A
    /// window longer than two thirds of an issued certificate's lifetime is
    /// not used for it: it renews two thirds into its lifetime instead (and
    /// the host warns), so a short-lived certificate never renews on every
    /// sweep.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 3650)]
    pub renew_before_days: Option<u32>,
    /// Owner (team, person) for notifications.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128)]
    pub owner: Option<String>,
    /// Options for the issuer connector (its `context.options`): a JSON
    /// object of at most 16 KiB, e.g. an ACME profile. Default `{}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub issuer_options: Option<Value>,
    /// Options for every target connector (`deploy`/`remove`): a JSON
    /// object of at most 16 KiB. Default `{}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub target_options: Option<Value>,
}

/// Most certificates in one `POST /certificates/batch`.
pub const MAX_CREATE_BATCH: usize = 1000;

/// Body of `POST /certificates/batch`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCertificates {
    /// 1 to 1,000 certificates, each as `POST /certificates` takes one;
    /// names must differ. All are created or none.
    #[schema(min_items = 1, max_items = 1000)]
    pub certificates: Vec<CreateCertificate>,
}

/// Answer of `POST /certificates/batch`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CertificatesCreated {
    /// The certificates created, in the order of the request.
    pub items: Vec<CertificateView>,
}

/// Largest serialised options object, in bytes.
pub const MAX_OPTIONS_BYTES: usize = 16 * 1024;

/// Checks one options object, as a 422 naming the field.
fn check_options(field: &str, value: Option<&Value>) -> ApiResult<Value> {
    match value {
        None => Ok(Value::Object(Default::default())),
        Some(Value::Object(map)) => {
            let len = Value::Object(map.clone()).to_string().len();
            if len > MAX_OPTIONS_BYTES {
                return Err(ApiError::validation(format!(
                    "{field} is {len} bytes; at most {MAX_OPTIONS_BYTES} are allowed"
                ))
                .with_param(field));
            }
            Ok(Value::Object(map.clone()))
        }
        Some(_) => {
            Err(ApiError::validation(format!("{field} must be a JSON object")).with_param(field))
        }
    }
}

/// The fields create and `PATCH` both set, as given (`None`: not given).
struct Settable<'a> {
    renew_before_days: Option<u32>,
    owner: Option<&'a str>,
    issuer_options: Option<&'a Value>,
    target_options: Option<&'a Value>,
}

/// Checks the fields create and `PATCH` share, one way for both (a `PATCH`
/// must not store what create refuses); returns the options objects given.
fn check_settable(fields: &Settable<'_>) -> ApiResult<(Option<Value>, Option<Value>)> {
    if fields
        .renew_before_days
        .is_some_and(|d| d > MAX_RENEW_BEFORE_DAYS)
    {
        return Err(ApiError::validation(format!(
            "renew_before_days must be at most {MAX_RENEW_BEFORE_DAYS}"
        ))
        .with_param("renew_before_days"));
    }
    if let Some(owner) = fields.owner
        && (owner.is_empty() || owner.len() > MAX_OWNER_LEN || owner.chars().any(char::is_control))
    {
        return Err(ApiError::validation(format!(
            "owner must be 1-{MAX_OWNER_LEN} printable characters (null clears it)"
        ))
        .with_param("owner"));
    }
    let issuer = fields
        .issuer_options
        .map(|v| check_options("issuer_options", Some(v)))
        .transpose()?;
    let target = fields
        .target_options
        .map(|v| check_options("target_options", Some(v)))
        .transpose()?;
    Ok((issuer, target))
}

/// Why a certificate is revoked (RFC 5280 CRLReason subset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RevocationReason {
    /// No reason given.
    #[default]
    Unspecified,
    /// The private key was compromised.
    KeyCompromise,
    /// The CA was compromised.
    CaCompromise,
    /// The subject's affiliation changed.
    AffiliationChanged,
    /// Replaced by another certificate.
    Superseded,
    /// No longer needed.
    CessationOfOperation,
}

/// Body of `POST /certificates/renew`: which active certificates to renew
/// now. At least one filter, or `all: true`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewCertificates {
    /// Only certificates of this issuer (e.g. a distrusted CA's).
    #[serde(default)]
    pub issuer_id: Option<String>,
    /// Only certificates with this owner.
    #[serde(default)]
    pub owner: Option<String>,
    /// Every active certificate (required when no filter is given, so an
    /// empty body never renews the whole inventory by accident).
    #[serde(default)]
    pub all: bool,
}

/// Answer of `POST /certificates/renew`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RenewalsAccepted {
    /// Active certificates made due now that the renewal sweep renews
    /// (already-due ones are not counted).
    pub renewing: u64,
    /// Certificates made due whose issuance or renewal was already under
    /// way: the version that job records is their renewal; they are
    /// renewed again only if it fails for good.
    pub under_way: u64,
}

/// Body of `POST /certificates/{id}/revoke`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeCertificate {
    /// Why (default `unspecified`).
    #[serde(default)]
    pub reason: RevocationReason,
}

/// Body of `PATCH /certificates/{id}`: the fields to change.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCertificate {
    /// `active` (managed and renewed) or `disabled` (kept, not renewed).
    /// Retire with `DELETE /certificates/{id}`.
    #[schema(schema_with = super::openapi::certificate_patch_status_schema)]
    pub status: Option<CertificateStatus>,
    /// Renew this many days before expiry (at most 3650; see the create
    /// body for windows longer than a certificate's lifetime).
    #[schema(minimum = 0, maximum = 3650)]
    pub renew_before_days: Option<u32>,
    /// Owner for notifications; `null` clears it.
    #[serde(default, deserialize_with = "present")]
    pub owner: Option<Option<String>>,
    /// New issuer options (replaced as a whole).
    #[schema(value_type = Option<Object>)]
    pub issuer_options: Option<Value>,
    /// New target options (replaced as a whole).
    #[schema(value_type = Option<Object>)]
    pub target_options: Option<Value>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// A managed certificate.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CertificateView {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Subject common name.
    pub common_name: String,
    /// Subject alternative names.
    pub sans: Vec<String>,
    /// Key type.
    pub key_type: String,
    /// `agent` or `host`.
    pub key_source: String,
    /// Issuer instance id.
    pub issuer_id: String,
    /// Deployment targets, key-holding one first.
    pub target_ids: Vec<String>,
    /// Renewal window in days.
    pub renew_before_days: i64,
    /// Owner.
    pub owner: Option<String>,
    /// `active`, `disabled` or `retired`.
    pub status: String,
    /// Why the host disabled it by itself (e.g. `key holder agent <id> was
    /// retired`); `null` when active or disabled by an operator.
    pub disabled_reason: Option<String>,
    /// Retired since (`DELETE` retires; the certificate stays readable).
    pub retired_at: Option<DateTime<Utc>>,
    /// Version in force.
    pub current_version_id: Option<String>,
    /// Expiry of the version in force.
    pub not_after: Option<DateTime<Utc>>,
    /// When the renewal sweep picks it up next.
    pub renew_at: DateTime<Utc>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Options for the issuer connector.
    #[schema(value_type = Object)]
    pub issuer_options: Value,
    /// Options for every target connector.
    #[schema(value_type = Object)]
    pub target_options: Value,
}

/// An issued version (never its private key).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VersionView {
    /// Id.
    pub id: String,
    /// Serial number, hex.
    pub serial: String,
    /// Leaf and chain, PEM.
    pub pem_chain: String,
    /// Validity start.
    pub not_before: DateTime<Utc>,
    /// Validity end.
    pub not_after: DateTime<Utc>,
    /// SHA-256 of the leaf DER, hex.
    pub fingerprint_sha256: String,
    /// Producing job.
    pub job_id: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

impl From<CertificateVersion> for VersionView {
    fn from(v: CertificateVersion) -> Self {
        VersionView {
            id: v.id,
            serial: v.serial,
            pem_chain: v.pem_chain,
            not_before: v.not_before,
            not_after: v.not_after,
            fingerprint_sha256: v.fingerprint_sha256,
            job_id: v.job_id,
            created_at: v.created_at,
        }
    }
}

/// A certificate with its versions, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CertificateDetail {
    /// The certificate.
    #[serde(flatten)]
    pub certificate: CertificateView,
    /// Issued versions, newest first.
    pub versions: Vec<VersionView>,
}

/// Answer of `POST /certificates/{id}/revoke`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RevocationAccepted {
    /// The revocation job.
    pub job_id: String,
    /// The version being revoked.
    pub certificate_version_id: String,
    /// Why.
    pub reason: RevocationReason,
}

/// `?status=&expiring_within_days=&page=&per_page=` of `GET /certificates`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CertificateListQuery {
    /// 1-based page number.
    #[param(minimum = 1)]
    pub page: Option<u32>,
    /// Items per page (1–500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub per_page: Option<u32>,
    /// Only certificates in this status (`active`, `disabled`, `retired`).
    #[param(schema_with = super::openapi::certificate_status_param)]
    pub status: Option<String>,
    /// Only certificates whose current version expires within this many
    /// days (at most 36500).
    #[param(minimum = 0, maximum = 36500)]
    pub expiring_within_days: Option<u32>,
    /// Also list retired certificates (default `false`; `status=retired`
    /// needs it).
    #[serde(default)]
    pub include_retired: bool,
}

/// Routes under `/api/v1`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_certificates, create_certificate))
        .routes(routes!(create_certificates))
        .routes(routes!(
            get_certificate,
            update_certificate,
            retire_certificate
        ))
        .routes(routes!(renew_certificate))
        .routes(routes!(renew_certificates))
        .routes(routes!(revoke_certificate))
}

// ---------------------------------------------------------------- names

/// Whether `name` is a DNS name a certificate may carry: labels of 1–63
/// letters, digits and hyphens (not at either end), at most 253 characters,
/// optionally `*.` as the whole first label, and not all-numeric at the end
/// (that would be a mistyped IP address).
pub fn valid_dns_name(name: &str) -> bool {
    let base = name.strip_prefix("*.").unwrap_or(name);
    if base.is_empty() || name.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = base.split('.').collect();
    let labels_ok = labels.iter().all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    let last_numeric = labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && !last_numeric
}

/// A SAN in canonical form (lower-case DNS name or canonical IP text), or
/// why it is refused.
pub fn canonical_name(name: &str) -> Result<String, String> {
    if let Ok(ip) = IpAddr::from_str(name) {
        return Ok(ip.to_string());
    }
    if valid_dns_name(name) {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(format!(
            "{name:?} is neither a valid DNS name nor an IP address"
        ))
    }
}

/// Validates the common name and SANs: canonical forms, no duplicates, at
/// most [`MAX_SANS`], the common name included.
pub fn check_names(common_name: &str, sans: &[String]) -> ApiResult<(String, Vec<String>)> {
    if common_name.len() > MAX_COMMON_NAME_LEN {
        return Err(ApiError::validation(format!(
            "common_name is longer than {MAX_COMMON_NAME_LEN} characters"
        )));
    }
    let cn = canonical_name(common_name)
        .map_err(|e| ApiError::validation(format!("common_name: {e}")))?;
    if sans.len() > MAX_SANS {
        return Err(ApiError::validation(format!(
            "{} SANs given; at most {MAX_SANS} are allowed",
            sans.len()
        )));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(sans.len() + 1);
    for san in sans {
        let c = canonical_name(san).map_err(|e| ApiError::validation(format!("sans: {e}")))?;
        if !seen.insert(c.clone()) {
            return Err(ApiError::validation(format!(
                "sans: {san:?} is listed twice"
            )));
        }
        out.push(c);
    }
    if !seen.contains(&cn) {
        if out.len() >= MAX_SANS {
            return Err(ApiError::validation(format!(
                "the common name must be among the SANs, which would make more than {MAX_SANS}"
            )));
        }
        out.insert(0, cn.clone());
    }
    Ok((cn, out))
}

// ---------------------------------------------------------------- handlers

async fn view(state: &AppState, cert: Certificate) -> ApiResult<CertificateView> {
    let target_ids = state.store.certificate_target_ids(&cert.id).await?;
    Ok(view_with_targets(cert, target_ids))
}

fn view_with_targets(cert: Certificate, target_ids: Vec<String>) -> CertificateView {
    CertificateView {
        id: cert.id,
        name: cert.name,
        common_name: cert.common_name,
        sans: cert.sans,
        key_type: cert.key_type,
        key_source: cert.key_source.to_string(),
        issuer_id: cert.issuer_id,
        target_ids,
        renew_before_days: cert.renew_before_secs / SECS_PER_DAY,
        owner: cert.owner,
        status: cert.status.to_string(),
        disabled_reason: cert.disabled_reason,
        retired_at: cert.retired_at,
        current_version_id: cert.current_version_id,
        not_after: cert.not_after,
        renew_at: cert.renew_at,
        created_at: cert.created_at,
        updated_at: cert.updated_at,
        issuer_options: cert.issuer_options,
        target_options: cert.target_options,
    }
}

async fn load(state: &AppState, id: &str) -> ApiResult<Certificate> {
    state
        .store
        .get_certificate(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("certificate {id:?}")))
}

/// The audit row of an operator's change to certificate `id`, written by
/// the store in the change's own transaction.
fn audit_event(caller: &OperatorAccess, action: &str, id: &str, details: Value) -> NewAuditEvent {
    NewAuditEvent {
        actor: caller.0.actor(),
        actor_type: ActorType::ApiKey,
        action: action.to_string(),
        subject_type: "certificate".to_string(),
        subject_id: Some(id.to_string()),
        details,
    }
}

/// List certificates, optionally filtered.
#[utoipa::path(get, path = "/certificates", tag = "certificates", params(CertificateListQuery),
    responses((status = 200, body = Page<CertificateView>), (status = 304, description = "unchanged"),
        (status = 400, body = ErrorBody)),
    security(("bearer" = ["read_only"])))]
async fn list_certificates(
    State(state): State<AppState>,
    _caller: ReadAccess,
    headers: HeaderMap,
    query: Result<Query<CertificateListQuery>, QueryRejection>,
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
        .map(CertificateStatus::from_str)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if status == Some(CertificateStatus::Retired) && !q.include_retired {
        // One way to show retired items on every list: include_retired.
        return Err(ApiError::bad_request(
            "status=retired lists retired certificates: add include_retired=true",
        )
        .with_param("include_retired"));
    }
    let expiring_before = match q.expiring_within_days {
        Some(d) if d > 36_500 => {
            return Err(ApiError::bad_request(
                "expiring_within_days must be at most 36500",
            ));
        }
        Some(d) => Some(now() + chrono::Duration::days(i64::from(d))),
        None => None,
    };
    let offset = super::listing::offset(page, per_page);
    let total = state
        .store
        .count_certificates(q.include_retired, status, expiring_before)
        .await?;
    let rows = state
        .store
        .list_certificates(q.include_retired, status, expiring_before, offset, per_page)
        .await?;
    // One query for every row's targets, not one per row.
    let ids: Vec<String> = rows.iter().map(|c| c.id.clone()).collect();
    let mut targets = state.store.certificate_target_ids_many(&ids).await?;
    let items: Vec<CertificateView> = rows
        .into_iter()
        .map(|cert| {
            let target_ids = targets.remove(&cert.id).unwrap_or_default();
            view_with_targets(cert, target_ids)
        })
        .collect();
    let body = Page {
        items,
        page,
        per_page,
        total,
    };
    Ok(conditional_json(&headers, &body))
}

/// Create a managed certificate (due for issuance at once).
#[utoipa::path(post, path = "/certificates", tag = "certificates", request_body = CreateCertificate,
    responses((status = 201, body = CertificateView), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = ["operator"])))]
async fn create_certificate(
    State(state): State<AppState>,
    caller: OperatorAccess,
    ApiJson(body): ApiJson<CreateCertificate>,
) -> ApiResult<Response> {
    let fields = check_create_fields(&body)?;
    let target_ids: Vec<&str> = body.target_ids.iter().map(String::as_str).collect();
    let (issuers, targets) = state
        .store
        .certificate_references(&[body.issuer_id.as_str()], &target_ids)
        .await?;
    let refs = References::new(&issuers, &targets);
    let create = check_create_references(&caller, body, fields, &refs)?;
    let cert = state
        .store
        .create_certificate_with_targets(
            create.row.new,
            &create.row.extra_targets,
            &create.row.options,
            create.row.audit.as_ref(),
        )
        .await?;
    state.wake.renewals.notify_one();
    let view = view_with_targets(cert, create.target_ids);
    Ok(json_response(StatusCode::CREATED, view))
}

/// Create up to [`MAX_CREATE_BATCH`] managed certificates in one
/// transaction: all of them or, when any is refused, none (the error's
/// `param` names the item, e.g. `certificates[3].common_name`). Each is
/// checked, created, audited and issued as `POST /certificates` does it.
#[utoipa::path(post, path = "/certificates/batch", tag = "certificates",
    request_body = CreateCertificates,
    responses((status = 201, body = CertificatesCreated), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = ["operator"])))]
async fn create_certificates(
    State(state): State<AppState>,
    caller: OperatorAccess,
    ApiJson(body): ApiJson<CreateCertificates>,
) -> ApiResult<Response> {
    let items = body.certificates;
    if items.is_empty() || items.len() > MAX_CREATE_BATCH {
        return Err(ApiError::invalid_field(
            "certificates",
            format!(
                "give 1 to {MAX_CREATE_BATCH} certificates ({} given)",
                items.len()
            ),
        ));
    }
    let mut names = HashMap::with_capacity(items.len());
    let mut fields = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if let Some(first) = names.insert(item.name.as_str(), i) {
            return Err(ApiError::name_taken(format!(
                "certificates[{first}] and certificates[{i}] are both named {:?}",
                item.name
            ))
            .with_param(format!("certificates[{i}].name")));
        }
        fields.push(check_create_fields(item).map_err(|e| in_item(e, i))?);
    }
    let issuer_ids: BTreeSet<&str> = items.iter().map(|c| c.issuer_id.as_str()).collect();
    let target_ids: BTreeSet<&str> = items
        .iter()
        .flat_map(|c| c.target_ids.iter().map(String::as_str))
        .collect();
    let (issuers, targets) = state
        .store
        .certificate_references(
            &issuer_ids.into_iter().collect::<Vec<_>>(),
            &target_ids.into_iter().collect::<Vec<_>>(),
        )
        .await?;
    let refs = References::new(&issuers, &targets);
    let mut creates = Vec::with_capacity(items.len());
    let mut answer_targets = Vec::with_capacity(items.len());
    for (i, (item, fields)) in items.into_iter().zip(fields).enumerate() {
        let checked =
            check_create_references(&caller, item, fields, &refs).map_err(|e| in_item(e, i))?;
        creates.push(checked.row);
        answer_targets.push(checked.target_ids);
    }
    let certs = state.store.create_certificates(creates).await?;
    state.wake.renewals.notify_one();
    tracing::info!(created = certs.len(), "certificates created in one batch");
    let items = certs
        .into_iter()
        .zip(answer_targets)
        .map(|(cert, target_ids)| view_with_targets(cert, target_ids))
        .collect();
    Ok(json_response(
        StatusCode::CREATED,
        CertificatesCreated { items },
    ))
}

/// `err` about item `index` of a batch: its `param` (or, without one, the
/// message) names the item.
fn in_item(mut err: ApiError, index: usize) -> ApiError {
    match err.param.take() {
        Some(param) => err.param = Some(format!("certificates[{index}].{param}")),
        None => {
            err.message = format!("certificates[{index}]: {}", err.message);
            err.param = Some(format!("certificates[{index}]"));
        }
    }
    err
}

/// A create's own fields, checked before its issuer and targets are read.
struct CreateFields {
    common_name: String,
    sans: Vec<String>,
    renew_before_days: u32,
    issuer_options: Option<Value>,
    target_options: Option<Value>,
}

fn check_create_fields(body: &CreateCertificate) -> ApiResult<CreateFields> {
    check_name("name", &body.name)?;
    let (common_name, sans) = check_names(&body.common_name, &body.sans)?;
    let renew_before_days = body.renew_before_days.unwrap_or(DEFAULT_RENEW_BEFORE_DAYS);
    let (issuer_options, target_options) = check_settable(&Settable {
        renew_before_days: Some(renew_before_days),
        owner: body.owner.as_deref(),
        issuer_options: body.issuer_options.as_ref(),
        target_options: body.target_options.as_ref(),
    })?;
    if body.target_ids.len() > MAX_TARGETS {
        return Err(
            ApiError::validation(format!("at most {MAX_TARGETS} targets are allowed"))
                .with_param("target_ids"),
        );
    }
    Ok(CreateFields {
        common_name,
        sans,
        renew_before_days,
        issuer_options,
        target_options,
    })
}

/// A create checked against its issuer and targets: what the store
/// writes, and the target ids as the answer lists them.
struct CheckedCreate {
    row: CertificateCreate,
    target_ids: Vec<String>,
}

/// The issuers and targets read for creates, by id (a batch may name
/// thousands of targets).
struct References<'a> {
    issuers: HashMap<&'a str, &'a PluginInstance>,
    targets: HashMap<&'a str, &'a Target>,
}

impl<'a> References<'a> {
    fn new(issuers: &'a [PluginInstance], targets: &'a [Target]) -> Self {
        References {
            issuers: issuers.iter().map(|i| (i.id.as_str(), i)).collect(),
            targets: targets.iter().map(|t| (t.id.as_str(), t)).collect(),
        }
    }
}

/// Checks `body` against the issuers and targets read for it (rows
/// missing from them do not exist).
fn check_create_references(
    caller: &OperatorAccess,
    body: CreateCertificate,
    fields: CreateFields,
    refs: &References<'_>,
) -> ApiResult<CheckedCreate> {
    match refs.issuers.get(body.issuer_id.as_str()) {
        Some(i) if i.retired_at.is_some() => {
            return Err(
                ApiError::validation(format!("issuer {:?} is retired", body.issuer_id))
                    .with_param("issuer_id"),
            );
        }
        Some(i) if i.disabled_at.is_none() => {}
        Some(_) => {
            return Err(
                ApiError::validation(format!("issuer {:?} is disabled", body.issuer_id))
                    .with_param("issuer_id"),
            );
        }
        None => {
            return Err(
                ApiError::validation(format!("no issuer {:?}", body.issuer_id))
                    .with_param("issuer_id"),
            );
        }
    }
    let mut agents = Vec::with_capacity(body.target_ids.len());
    let mut seen = BTreeSet::new();
    for id in &body.target_ids {
        if !seen.insert(id.as_str()) {
            return Err(
                ApiError::validation(format!("target {id:?} is listed twice"))
                    .with_param("target_ids"),
            );
        }
        match refs.targets.get(id.as_str()) {
            Some(t) if t.retired_at.is_none() => agents.push(t.agent_id.clone()),
            Some(_) => {
                return Err(ApiError::validation(format!("target {id:?} is retired"))
                    .with_param("target_ids"));
            }
            None => {
                return Err(
                    ApiError::validation(format!("no target {id:?}")).with_param("target_ids")
                );
            }
        }
    }
    let first_agent = agents.first().cloned();
    let on_agent = first_agent
        .as_deref()
        .is_some_and(|a| a != SENTINEL_AGENT_ID);
    let key_source = body.key_source.unwrap_or(if on_agent {
        KeySource::Agent
    } else {
        KeySource::Host
    });
    if key_source == KeySource::Agent {
        if !on_agent {
            return Err(ApiError::validation(
                "key_source agent needs a first target that an agent runs",
            )
            .with_param("key_source"));
        }
        if agents.iter().any(|a| Some(a) != first_agent.as_ref()) {
            return Err(ApiError::validation(
                "with key_source agent every target must be run by the same agent (the key \
                 never leaves it)",
            )
            .with_param("key_source"));
        }
    }
    let key_type = body.key_type.unwrap_or_default();
    let new = NewCertificate {
        name: body.name,
        common_name: fields.common_name,
        sans: fields.sans,
        key_type: key_type.as_str().to_string(),
        key_source,
        issuer_id: body.issuer_id,
        target_id: body.target_ids.first().cloned(),
        renew_before_secs: i64::from(fields.renew_before_days) * SECS_PER_DAY,
        owner: body.owner,
    };
    let options = CertificateOptions {
        issuer: fields
            .issuer_options
            .unwrap_or_else(|| Value::Object(Default::default())),
        target: fields
            .target_options
            .unwrap_or_else(|| Value::Object(Default::default())),
    };
    let event = NewAuditEvent {
        actor: caller.0.actor(),
        actor_type: ActorType::ApiKey,
        action: "certificate.create".to_string(),
        subject_type: "certificate".to_string(),
        subject_id: None,
        details: json!({
            "name": new.name,
            "common_name": new.common_name,
            "sans": new.sans,
            "key_type": new.key_type,
            "key_source": new.key_source,
            "issuer_id": new.issuer_id,
            "target_ids": body.target_ids,
        }),
    };
    let extra_targets: Vec<String> = body.target_ids.iter().skip(1).cloned().collect();
    // Just written: no need to read them back. Listed as
    // `certificate_target_ids` orders them (key-holding target first, then
    // the others, written together, by id).
    let mut target_ids = body.target_ids;
    if let Some(rest) = target_ids.get_mut(1..) {
        rest.sort();
    }
    Ok(CheckedCreate {
        row: CertificateCreate {
            new,
            extra_targets,
            options,
            audit: Some(event),
        },
        target_ids,
    })
}

/// One certificate with its versions (never private keys).
#[utoipa::path(get, path = "/certificates/{id}", tag = "certificates",
    params(("id" = String, Path)),
    responses((status = 200, body = CertificateDetail), (status = 304, description = "unchanged (If-None-Match)"), (status = 404, body = ErrorBody)),
    security(("bearer" = ["read_only"])))]
async fn get_certificate(
    State(state): State<AppState>,
    _caller: ReadAccess,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let cert = load(&state, &id).await?;
    Ok(conditional_json(&headers, &detail(&state, cert).await?))
}

/// A certificate as `GET /certificates/{id}` shows it (what its ETag is
/// computed from).
async fn detail(state: &AppState, cert: Certificate) -> ApiResult<CertificateDetail> {
    let versions = state
        .store
        .list_certificate_versions(&cert.id)
        .await?
        .into_iter()
        .map(VersionView::from)
        .collect();
    Ok(CertificateDetail {
        certificate: view(state, cert).await?,
        versions,
    })
}

/// Change a certificate's status (`active`/`disabled`), renewal window or
/// owner. 409 for a retired certificate.
#[utoipa::path(patch, path = "/certificates/{id}", tag = "certificates",
    params(("id" = String, Path)), request_body = UpdateCertificate,
    responses((status = 200, body = CertificateView), (status = 404, body = ErrorBody),
        (status = 412, description = "If-Match names an older version", body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = ["operator"])))]
async fn update_certificate(
    State(state): State<AppState>,
    caller: OperatorAccess,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateCertificate>,
) -> ApiResult<Response> {
    let cert = load(&state, &id).await?;
    let (etag, _) = etag_of(&detail(&state, cert.clone()).await?)?;
    check_if_match(&headers, &etag)?;
    // The certificate the caller's ETag named must still be the one
    // written: the store refuses the write if it changed since (412).
    let unchanged_since = has_if_match(&headers).then_some(cert.updated_at);
    if cert.status == CertificateStatus::Retired {
        return Err(ApiError::invalid_state(format!(
            "certificate {id:?} is retired and cannot be changed"
        )));
    }
    if body.status == Some(CertificateStatus::Retired) {
        return Err(ApiError::validation(
            "status must be active or disabled; retire with DELETE /certificates/{id}",
        )
        .with_param("status"));
    }
    let (issuer_options, target_options) = check_settable(&Settable {
        renew_before_days: body.renew_before_days,
        owner: body.owner.as_ref().and_then(Option::as_deref),
        issuer_options: body.issuer_options.as_ref(),
        target_options: body.target_options.as_ref(),
    })?;
    if body.status == Some(CertificateStatus::Active) && cert.status != CertificateStatus::Active {
        check_key_holder(&state, &cert).await?;
    }
    let options = if issuer_options.is_some() || target_options.is_some() {
        Some(CertificateOptions {
            issuer: issuer_options.unwrap_or_else(|| cert.issuer_options.clone()),
            target: target_options.unwrap_or_else(|| cert.target_options.clone()),
        })
    } else {
        None
    };
    let event = audit_event(
        &caller,
        "certificate.update",
        &id,
        json!({
            "status": body.status.map(|s| s.to_string()),
            "renew_before_days": body.renew_before_days,
            "owner": body.owner,
            "options_changed": options.is_some(),
        }),
    );
    let updated = state
        .store
        .update_certificate(
            &id,
            body.status,
            body.renew_before_days.map(|d| i64::from(d) * SECS_PER_DAY),
            body.owner.clone(),
            options.as_ref(),
            unchanged_since,
            Some(&event),
        )
        .await?;
    let Some(updated) = updated else {
        let now = load(&state, &id).await?;
        return Err(if now.status == CertificateStatus::Retired {
            ApiError::invalid_state(format!("certificate {id:?} was retired meanwhile"))
        } else {
            ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                format!(
                    "certificate {id:?} changed since the version If-Match names; GET it again \
                     and retry"
                ),
            )
        });
    };
    // Re-enabled, or a wider window: it may be due now.
    state.wake.renewals.notify_one();
    let view = view(&state, updated).await?;
    Ok(json_response(StatusCode::OK, view))
}

/// A certificate with agent-generated keys is enabled again only while its
/// key-holding target and that target's agent are live: otherwise the
/// renewal sweep would create CSR jobs nobody answers.
async fn check_key_holder(state: &AppState, cert: &Certificate) -> ApiResult<()> {
    if cert.key_source != KeySource::Agent {
        return Ok(());
    }
    let Some(target_id) = cert.target_id.as_deref() else {
        return Ok(());
    };
    let target = state.store.get_target(target_id).await?;
    let agent = match &target {
        Some(t) => state.store.get_agent(&t.agent_id).await?,
        None => None,
    };
    let live = target.is_some_and(|t| t.retired_at.is_none())
        && agent.is_some_and(|a| a.status == crate::store::AgentStatus::Active);
    if live {
        return Ok(());
    }
    Err(ApiError::invalid_state(format!(
        "certificate {:?} keeps its key on target {target_id:?}, which is retired (or its \
         agent is); it cannot be enabled again there",
        cert.id
    ))
    .with_param("status"))
}

/// Retire a certificate: it is no longer managed or renewed, and its jobs
/// that have not started are cancelled. Nothing is revoked or removed from
/// targets (revoke first if needed). 200 with the certificate as `GET`
/// shows it, also when it already was retired; 404 if unknown.
#[utoipa::path(delete, path = "/certificates/{id}", tag = "certificates",
    params(("id" = String, Path)),
    responses((status = 200, description = "retired (also when it already was)", body = CertificateDetail),
        (status = 404, body = ErrorBody)),
    security(("bearer" = ["operator"])))]
async fn retire_certificate(
    State(state): State<AppState>,
    caller: OperatorAccess,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let cert = load(&state, &id).await?;
    // Already retired (by an earlier DELETE, or one racing this): nothing
    // changes and nothing is audited (the store writes the audit row only
    // with the change); the answer is the same.
    if cert.status != CertificateStatus::Retired {
        let event = audit_event(&caller, "certificate.retire", &id, json!({}));
        state
            .store
            .retire_certificate_audited(&id, Some(&event))
            .await?;
    }
    let cert = load(&state, &id).await?;
    Ok(json_response(StatusCode::OK, detail(&state, cert).await?))
}

/// Renew now: makes the certificate due at once and wakes the renewal
/// sweep. 409 unless it is active.
#[utoipa::path(post, path = "/certificates/{id}/renew", tag = "certificates",
    params(("id" = String, Path)),
    responses((status = 202, body = CertificateView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = ["operator"])))]
async fn renew_certificate(
    State(state): State<AppState>,
    caller: OperatorAccess,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let cert = load(&state, &id).await?;
    if cert.status != CertificateStatus::Active {
        return Err(ApiError::invalid_state(format!(
            "certificate {id:?} is {}; only active certificates are renewed",
            cert.status
        )));
    }
    let at = now();
    let event = audit_event(
        &caller,
        "certificate.renew_now",
        &id,
        json!({ "renew_at": at, "previous_renew_at": cert.renew_at }),
    );
    if !state
        .store
        .set_certificate_renew_at_audited(&id, at, None, Some(&event))
        .await?
    {
        return Err(ApiError::not_found(format!("certificate {id:?}")));
    }
    state.wake.renewals.notify_one();
    let cert = load(&state, &id).await?;
    let view = view(&state, cert).await?;
    Ok(json_response(StatusCode::ACCEPTED, view))
}

/// Renew many at once (a distrusted CA, a fleet-wide key rotation): every
/// active certificate of the issuer and/or owner given, or all of them,
/// becomes due now in one statement, and the renewal sweep turns them into
/// jobs in batches while deployments of the first ones already run.
#[utoipa::path(post, path = "/certificates/renew", tag = "certificates",
    request_body = RenewCertificates,
    responses((status = 202, body = RenewalsAccepted), (status = 422, body = ErrorBody)),
    security(("bearer" = ["operator"])))]
async fn renew_certificates(
    State(state): State<AppState>,
    caller: OperatorAccess,
    ApiJson(body): ApiJson<RenewCertificates>,
) -> ApiResult<Response> {
    if body.issuer_id.is_none() && body.owner.is_none() && !body.all {
        return Err(ApiError::validation(
            "name issuer_id and/or owner, or set all: true to renew every active certificate",
        ));
    }
    if body.all && (body.issuer_id.is_some() || body.owner.is_some()) {
        return Err(ApiError::validation(
            "all: true renews every active certificate; leave issuer_id and owner out",
        ));
    }
    if let Some(issuer) = &body.issuer_id
        && state.store.get_issuer(issuer).await?.is_none()
    {
        return Err(ApiError::validation(format!("no issuer {issuer:?}")));
    }
    let event = NewAuditEvent {
        actor: caller.0.actor(),
        actor_type: ActorType::ApiKey,
        action: "certificate.renew_now".to_string(),
        subject_type: "certificate".to_string(),
        subject_id: None,
        details: json!({ "issuer_id": body.issuer_id, "owner": body.owner, "all": body.all }),
    };
    let counts = state
        .store
        .renew_now_where(body.issuer_id.as_deref(), body.owner.as_deref(), &event)
        .await?;
    tracing::info!(renewing = counts.renewing, under_way = counts.under_way, issuer_id = ?body.issuer_id, owner = ?body.owner, "certificates made due now");
    state.wake.renewals.notify_one();
    Ok(json_response(
        StatusCode::ACCEPTED,
        RenewalsAccepted {
            renewing: counts.renewing,
            under_way: counts.under_way,
        },
    ))
}

/// Revoke the version in force: creates a revocation job. 409 when nothing
/// was issued yet or a revocation of that version is already open.
#[utoipa::path(post, path = "/certificates/{id}/revoke", tag = "certificates",
    params(("id" = String, Path)), request_body = RevokeCertificate,
    responses((status = 202, body = RevocationAccepted), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = ["operator"])))]
async fn revoke_certificate(
    State(state): State<AppState>,
    caller: OperatorAccess,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RevokeCertificate>,
) -> ApiResult<Response> {
    let cert = load(&state, &id).await?;
    let Some(version_id) = cert.current_version_id.clone() else {
        return Err(ApiError::invalid_state(format!(
            "certificate {id:?} has no issued version to revoke"
        )));
    };
    let open = state
        .store
        .list_jobs(&crate::store::JobFilter {
            job_type: Some(JobType::Revocation),
            certificate_id: Some(id.clone()),
            limit: Some(500),
            ..Default::default()
        })
        .await?
        .into_iter()
        .find(|j| {
            j.certificate_version_id.as_deref() == Some(version_id.as_str())
                && !matches!(j.status, JobStatus::Completed | JobStatus::Cancelled)
        });
    if let Some(job) = open {
        return Err(ApiError::invalid_state(format!(
            "revocation of version {version_id} is already under way (job {})",
            job.id
        ))
        .with_details(json!({ "job_id": job.id })));
    }
    let mut new = NewJob::new(JobType::Revocation)
        .certificate(id.clone())
        .agent(SENTINEL_AGENT_ID)
        .payload(json!({ "reason": body.reason }));
    new.certificate_version_id = Some(version_id.clone());
    let job_id = new_id();
    let event = audit_event(
        &caller,
        "certificate.revoke",
        &id,
        json!({ "job_id": job_id, "certificate_version_id": version_id, "reason": body.reason }),
    );
    let job = state
        .store
        .create_job_with_id(&job_id, new, Some(&event))
        .await?;
    state.wake.wake_jobs();
    Ok(json_response(
        StatusCode::ACCEPTED,
        RevocationAccepted {
            job_id: job.id,
            certificate_version_id: version_id,
            reason: body.reason,
        },
    ))
}
