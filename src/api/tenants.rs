//! Tenants at runtime, for domains with an `authorization:` section: create, list, read,
//! update and delete them (their keys: [`super::keys`]).
//!
//! Tenants of the files are listed and read too (`"source": "file"`) but changed only in the
//! files. Every change goes through [`Tenants::change`](crate::tenants::Tenants::change), which
//! writes the audit entry with it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::input::{self, Segments};
use super::{Admin, ApiState};
use crate::authz::{Authorization, Tenant};
use crate::config::RateLimitConfig;
use crate::tenants::record::{self, Action, AuditEntry, MAX_TENANTS, TenantRecord, key_id, now};
use crate::tenants::{Edit, problem};

/// A tenant, from the files or the API.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"id": "initech", "tier": "free", "labels": {"team": "billing"},
    "source": "api", "keys": [{"id": "5b0d6f3a9c1e2d47", "created_at": "2026-05-01T12:00:00Z"}],
    "created_at": "2026-05-01T12:00:00Z", "updated_at": "2026-05-01T12:00:00Z", "error": null}))]
pub struct TenantBody {
    /// Its id.
    pub id: String,
    /// Its tier.
    pub tier: String,
    /// Its labels (none for tenants of the files).
    pub labels: BTreeMap<String, String>,
    /// Where it is defined.
    pub source: Source,
    /// Its API keys, by id (the first 16 hex digits of the key's digest).
    pub keys: Vec<KeyBody>,
    /// When it was created through the API.
    pub created_at: Option<String>,
    /// When it last changed through the API.
    pub updated_at: Option<String>,
    /// Why its keys are refused, when they are (its id is also a file's tenant, its tier is
    /// not defined).
    pub error: Option<String>,
}

/// Where a tenant is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// In the domain's file (read-only here).
    File,
    /// Through this API.
    Api,
}

/// An API key, without the key.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyBody {
    /// Its id.
    pub id: String,
    /// When it was created (null for keys of the files).
    pub created_at: Option<String>,
}

/// The tenants of a domain.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantList {
    /// By id; the files' first where an id is in both.
    pub tenants: Vec<TenantBody>,
}

/// A tenant to create.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"id": "initech", "tier": "free", "labels": {"team": "billing"}}))]
pub struct NewTenant {
    /// 1 to 64 ASCII letters, digits, `.`, `_` or `-`, starting with a letter or digit.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub id: String,
    /// One of the domain's tiers.
    pub tier: String,
    /// At most 32; names as ids, values up to 256 bytes.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A tenant's new tier and labels (the labels replace the old ones).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"tier": "pro", "labels": {"team": "billing"}}))]
pub struct TenantUpdate {
    /// One of the domain's tiers.
    pub tier: String,
    /// At most 32; names as ids, values up to 256 bytes.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A domain, in a path.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DomainPath {
    /// A domain with an `authorization:` section.
    #[param(example = "saas")]
    domain: String,
}

/// A tenant, in a path.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TenantPath {
    /// A domain with an `authorization:` section.
    #[param(example = "saas")]
    pub(super) domain: String,
    /// The tenant's id.
    #[param(example = "initech")]
    pub(super) id: String,
}

/// The configuration in force and the `authorization:` section of `domain`, or 404.
pub(super) fn section(
    api: &ApiState,
    domain: &str,
) -> Result<(Arc<RateLimitConfig>, Arc<Authorization>), ApiError> {
    let config = api.shared.reloader.limiter().config();
    let authz = config
        .domain(domain)
        .and_then(|d| d.authorization.clone())
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "domain '{domain}' is not configured or has no authorization: section"
            ))
        })?;
    Ok((config, authz))
}

/// A tenant of the files, with the digests of its keys from
/// [`Authorization::key_digests`].
fn file_body(tenant: &Tenant, digests: &HashMap<&str, Vec<[u8; 32]>>) -> TenantBody {
    TenantBody {
        id: tenant.id.clone(),
        tier: tenant.tier.clone(),
        labels: BTreeMap::new(),
        source: Source::File,
        keys: digests
            .get(tenant.id.as_str())
            .into_iter()
            .flatten()
            .map(|digest| KeyBody {
                id: key_id(digest),
                created_at: None,
            })
            .collect(),
        created_at: None,
        updated_at: None,
        error: None,
    }
}

fn api_body(record: &TenantRecord, config: &RateLimitConfig) -> TenantBody {
    TenantBody {
        id: record.id.clone(),
        tier: record.tier.clone(),
        labels: record.labels.clone(),
        source: Source::Api,
        keys: record
            .keys
            .iter()
            .map(|key| KeyBody {
                id: key.id.clone(),
                created_at: Some(key.created_at.clone()),
            })
            .collect(),
        created_at: Some(record.created_at.clone()),
        updated_at: Some(record.updated_at.clone()),
        error: problem(record, config),
    }
}

/// Drops runtime tenant `id`'s ext_authz series at `tier`, unless a tenant of the files has
/// that id (the series are then its).
fn forget_series(api: &ApiState, authz: &Authorization, domain: &str, id: &str, tier: &str) {
    if !authz.tenants_by_id().contains_key(id) {
        api.shared.metrics.service.forget_tenant(domain, id, tier);
    }
}

fn check_tier(authz: &Authorization, tier: &str) -> Result<(), ApiError> {
    if authz.has_tier(tier) {
        return Ok(());
    }
    Err(ApiError::field(
        "tier",
        format!(
            "unknown tier '{tier}' (the domain's tiers: {})",
            authz.tier_names().join(", ")
        ),
    ))
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    record::check_labels(labels).map_err(|(name, why)| {
        ApiError::field(
            name.map_or_else(|| "labels".to_owned(), |n| format!("labels.{n}")),
            why,
        )
    })
}

pub(super) fn audit(who: &Admin, action: Action, domain: &str, id: &str) -> AuditEntry {
    AuditEntry {
        at: now(),
        who: who.0.clone(),
        action,
        domain: domain.to_owned(),
        tenant: id.to_owned(),
        key_id: None,
        tier: None,
        revoked_keys: Vec::new(),
    }
}

/// 409 for a tenant of the files: they change only there.
fn in_files(config: &RateLimitConfig, domain: &str, id: &str) -> ApiError {
    let file = config
        .domain(domain)
        .map_or_else(String::new, |d| d.file.display().to_string());
    ApiError::conflict(format!(
        "tenant '{id}' is defined in {file}: change it there"
    ))
}

/// The runtime tenant `current`, or 409 if only the files define `id`, or 404.
pub(super) fn runtime<'a>(
    current: Option<&'a TenantRecord>,
    authz: &Authorization,
    config: &RateLimitConfig,
    domain: &str,
    id: &str,
) -> Result<&'a TenantRecord, ApiError> {
    match current {
        Some(record) => Ok(record),
        None if authz.tenants_by_id().contains_key(id) => Err(in_files(config, domain, id)),
        None => Err(ApiError::not_found(format!(
            "domain '{domain}' has no tenant '{id}'"
        ))),
    }
}

/// The domain's tenants, from the files and the API.
#[utoipa::path(get, path = "/v1/domains/{domain}/tenants", tag = "tenants", operation_id = "list_tenants",
    params(DomainPath),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every tenant of the domain.", body = TenantList),
        (status = 400, description = "A malformed path.", body = ErrorBody),
        (status = 401, description = "No valid admin token.", body = ErrorBody),
        (status = 404, description = "No such domain, or no authorization: section.", body = ErrorBody),
    ))]
pub async fn list(
    State(api): State<ApiState>,
    Segments(DomainPath { domain }): Segments<DomainPath>,
) -> Result<Response, ApiError> {
    let (config, authz) = section(&api, &domain)?;
    let view = api.shared.tenants.view();
    let digests = authz.key_digests();
    let mut tenants: Vec<TenantBody> = authz
        .tenants_by_id()
        .values()
        .map(|tenant| file_body(tenant, &digests))
        .chain(view.domain(&domain).map(|record| api_body(record, &config)))
        .collect();
    tenants.sort_by(|a, b| {
        a.id.cmp(&b.id)
            .then((a.source as u8).cmp(&(b.source as u8)))
    });
    Ok(axum::Json(TenantList { tenants }).into_response())
}

/// Creates a tenant.
#[utoipa::path(post, path = "/v1/domains/{domain}/tenants", tag = "tenants", operation_id = "create_tenant",
    params(DomainPath),
    request_body = NewTenant,
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "Created.", body = TenantBody,
         headers(("Location" = String, description = "The tenant's path.")),
         links(
             ("get" = (operation_id = "get_tenant", parameters(("domain" = "$request.path.domain"), ("id" = "$response.body#/id")))),
             ("update" = (operation_id = "update_tenant", parameters(("domain" = "$request.path.domain"), ("id" = "$response.body#/id")))),
             ("delete" = (operation_id = "delete_tenant", parameters(("domain" = "$request.path.domain"), ("id" = "$response.body#/id")))),
             ("create_key" = (operation_id = "create_key", parameters(("domain" = "$request.path.domain"), ("id" = "$response.body#/id")))),
             ("usage" = (operation_id = "tenant_usage", parameters(("domain" = "$request.path.domain"), ("id" = "$response.body#/id")))),
         )),
        (status = 400, description = "Bad input; `field` names what is wrong.", body = ErrorBody),
        (status = 401, description = "No valid admin token.", body = ErrorBody),
        (status = 404, description = "No such domain, or no authorization: section.", body = ErrorBody),
        (status = 409, description = "The id exists (in the files or the API), or the domain holds the most tenants.", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB.", body = ErrorBody),
        (status = 503, description = "The tenant state cannot be written now.", body = ErrorBody),
    ))]
pub async fn create(
    State(api): State<ApiState>,
    Extension(who): Extension<Admin>,
    Segments(DomainPath { domain }): Segments<DomainPath>,
    body: Body,
) -> Result<Response, ApiError> {
    let (config, authz) = section(&api, &domain)?;
    let new: NewTenant = input::json(body).await?;
    record::check_id(&new.id).map_err(|why| ApiError::field("id", why))?;
    check_tier(&authz, &new.tier)?;
    check_labels(&new.labels)?;
    if authz.tenants_by_id().contains_key(&new.id) {
        return Err(ApiError::conflict(format!(
            "tenant '{}' is defined in the files already",
            new.id
        )));
    }
    if api.shared.tenants.view().domain(&domain).count() >= MAX_TENANTS {
        return Err(ApiError::conflict(format!(
            "domain '{domain}' holds {MAX_TENANTS} runtime tenants, the most kept: delete some first"
        )));
    }
    let created = api
        .shared
        .tenants
        .change(&domain, &new.id, |current| {
            if current.is_some() {
                return Err(ApiError::conflict(format!(
                    "tenant '{}' exists already",
                    new.id
                )));
            }
            let at = now();
            let record = TenantRecord {
                domain: domain.clone(),
                id: new.id.clone(),
                tier: new.tier.clone(),
                labels: new.labels.clone(),
                keys: Vec::new(),
                created_at: at.clone(),
                updated_at: at,
                revision: String::new(),
            };
            Ok(Edit {
                audit: AuditEntry {
                    tier: Some(new.tier.clone()),
                    ..audit(&who, Action::TenantCreated, &domain, &new.id)
                },
                next: Some(record.clone()),
                output: record,
            })
        })
        .await?;
    let location = format!(
        "/v1/domains/{}/tenants/{}",
        crate::percent::encode(&domain),
        created.id
    );
    let mut response =
        (StatusCode::CREATED, axum::Json(api_body(&created, &config))).into_response();
    if let Ok(location) = HeaderValue::try_from(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// A tenant: the API's if it has one of this id, else the files'.
#[utoipa::path(get, path = "/v1/domains/{domain}/tenants/{id}", tag = "tenants", operation_id = "get_tenant",
    params(TenantPath),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The tenant.", body = TenantBody),
        (status = 400, description = "A malformed path.", body = ErrorBody),
        (status = 401, description = "No valid admin token.", body = ErrorBody),
        (status = 404, description = "No such domain or tenant.", body = ErrorBody),
    ))]
pub async fn get(
    State(api): State<ApiState>,
    Segments(TenantPath { domain, id }): Segments<TenantPath>,
) -> Result<Response, ApiError> {
    let (config, authz) = section(&api, &domain)?;
    let view = api.shared.tenants.view();
    let body = match (view.get(&domain, &id), authz.tenants_by_id().get(&id)) {
        (Some(record), _) => api_body(record, &config),
        (None, Some(tenant)) => file_body(tenant, &authz.key_digests()),
        (None, None) => {
            return Err(ApiError::not_found(format!(
                "domain '{domain}' has no tenant '{id}'"
            )));
        }
    };
    Ok(axum::Json(body).into_response())
}

/// Changes a runtime tenant's tier and labels.
#[utoipa::path(put, path = "/v1/domains/{domain}/tenants/{id}", tag = "tenants", operation_id = "update_tenant",
    params(TenantPath),
    request_body = TenantUpdate,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Changed.", body = TenantBody),
        (status = 400, description = "Bad input; `field` names what is wrong.", body = ErrorBody),
        (status = 401, description = "No valid admin token.", body = ErrorBody),
        (status = 404, description = "No such domain or tenant.", body = ErrorBody),
        (status = 409, description = "A tenant of the files: change it there.", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB.", body = ErrorBody),
        (status = 503, description = "The tenant state cannot be written now.", body = ErrorBody),
    ))]
pub async fn update(
    State(api): State<ApiState>,
    Extension(who): Extension<Admin>,
    Segments(TenantPath { domain, id }): Segments<TenantPath>,
    body: Body,
) -> Result<Response, ApiError> {
    let (config, authz) = section(&api, &domain)?;
    let update: TenantUpdate = input::json(body).await?;
    check_tier(&authz, &update.tier)?;
    check_labels(&update.labels)?;
    let updated = api
        .shared
        .tenants
        .change(&domain, &id, |current| {
            let mut next = runtime(current, &authz, &config, &domain, &id)?.clone();
            let before = std::mem::replace(&mut next.tier, update.tier.clone());
            next.labels.clone_from(&update.labels);
            next.updated_at = now();
            Ok::<_, ApiError>(Edit {
                audit: AuditEntry {
                    tier: Some(update.tier.clone()),
                    ..audit(&who, Action::TenantUpdated, &domain, &id)
                },
                next: Some(next.clone()),
                output: (next, before),
            })
        })
        .await?;
    let (updated, before) = updated;
    if before != updated.tier {
        forget_series(&api, &authz, &domain, &id, &before);
    }
    Ok(axum::Json(api_body(&updated, &config)).into_response())
}

/// Deletes a runtime tenant and its keys.
#[utoipa::path(delete, path = "/v1/domains/{domain}/tenants/{id}", tag = "tenants", operation_id = "delete_tenant",
    params(TenantPath),
    security(("admin_token" = [])),
    responses(
        (status = 204, description = "Deleted: its keys are refused from now on."),
        (status = 400, description = "A malformed path.", body = ErrorBody),
        (status = 401, description = "No valid admin token.", body = ErrorBody),
        (status = 404, description = "No such domain or tenant.", body = ErrorBody),
        (status = 409, description = "A tenant of the files: remove it there.", body = ErrorBody),
        (status = 503, description = "The tenant state cannot be written now.", body = ErrorBody),
    ))]
pub async fn delete(
    State(api): State<ApiState>,
    Extension(who): Extension<Admin>,
    Segments(TenantPath { domain, id }): Segments<TenantPath>,
) -> Result<Response, ApiError> {
    let (config, authz) = section(&api, &domain)?;
    let tier = api
        .shared
        .tenants
        .change(&domain, &id, |current| {
            let record = runtime(current, &authz, &config, &domain, &id)?;
            Ok::<_, ApiError>(Edit {
                next: None,
                audit: AuditEntry {
                    revoked_keys: record.keys.iter().map(|key| key.id.clone()).collect(),
                    ..audit(&who, Action::TenantDeleted, &domain, &id)
                },
                output: record.tier.clone(),
            })
        })
        .await?;
    forget_series(&api, &authz, &domain, &id, &tier);
    Ok(StatusCode::NO_CONTENT.into_response())
}
