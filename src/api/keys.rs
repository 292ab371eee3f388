//! A runtime tenant's API keys: created (the answer holds the key, the only time it is shown;
//! only its digest is kept) and deleted (refused from then on).

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::input::Segments;
use super::tenants::{TenantPath, audit, runtime, section};
use super::{Admin, ApiState};
use crate::tenants::record::{Action, AuditEntry, MAX_KEYS, NewKey, now};
use crate::tenants::{Edit, StateError, problem};

/// A key just created: the only time the key is shown.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"id": "5b0d6f3a9c1e2d47", "created_at": "2026-05-01T12:00:00Z",
    "key": "tgk_9a1c0e5f3b7d2468ace013579bdf2468ace013579bdf2468ace013579bdf2468"}))]
pub struct CreatedKey {
    /// Its id.
    pub id: String,
    /// The key: give it to the tenant now; tollgate keeps only its digest.
    pub key: String,
    /// When it was created.
    pub created_at: String,
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A tenant's key, in a path.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct KeyPath {
    /// A domain with an `authorization:` section.
    #[param(example = "saas")]
    domain: String,
    /// The tenant's id.
    #[param(example = "initech")]
    id: String,
    /// The key's id.
    #[param(example = "5b0d6f3a9c1e2d47")]
    key_id: String,
}

/// Creates an API key for a runtime tenant: the answer holds the key, the only time it is
/// shown.
#[utoipa::path(post, path = "/v1/domains/{domain}/tenants/{id}/keys", tag = "keys", operation_id = "create_key",
    params(TenantPath),
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "Created; the key works on ext_authz at once (on every replica within a second).", body = CreatedKey,
         links(("delete" = (operation_id = "delete_key", parameters(
             ("domain" = "$request.path.domain"), ("id" = "$request.path.id"), ("key_id" = "$response.body#/id")))))),
        (status = 400, description = "A malformed path.", body = ErrorBody),
        (status = 401, description = "No valid admin token.", body = ErrorBody),
        (status = 404, description = "No such domain or tenant.", body = ErrorBody),
        (status = 409, description = "A tenant of the files, one whose keys ext_authz would refuse (its id is in the files too, or its tier is undefined), or one holding the most keys (20).", body = ErrorBody),
        (status = 503, description = "The tenant state cannot be written now.", body = ErrorBody),
    ))]
pub async fn create_key(
    State(api): State<ApiState>,
    Extension(who): Extension<Admin>,
    Segments(TenantPath { domain, id }): Segments<TenantPath>,
) -> Result<Response, ApiError> {
    let (config, authz) = section(&api, &domain)?;
    let created = api
        .shared
        .tenants
        .change(&domain, &id, |current| {
            let mut next = runtime(current, &authz, &config, &domain, &id)?.clone();
            // A key ext_authz would refuse is not handed out.
            if let Some(problem) = problem(&next, &config) {
                return Err(ApiError::conflict(problem));
            }
            if next.keys.len() >= MAX_KEYS {
                return Err(ApiError::conflict(format!(
                    "tenant '{id}' holds {MAX_KEYS} keys, the most kept: delete one first"
                )));
            }
            let new = NewKey::generate(&now()).map_err(StateError::from)?;
            next.keys.push(new.record.clone());
            next.updated_at.clone_from(&new.record.created_at);
            Ok(Edit {
                next: Some(next),
                audit: AuditEntry {
                    key_id: Some(new.record.id.clone()),
                    ..audit(&who, Action::KeyCreated, &domain, &id)
                },
                output: CreatedKey {
                    id: new.record.id,
                    key: new.key,
                    created_at: new.record.created_at,
                },
            })
        })
        .await?;
    let mut response = (StatusCode::CREATED, axum::Json(created)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Deletes a runtime tenant's API key: it is refused from then on.
#[utoipa::path(delete, path = "/v1/domains/{domain}/tenants/{id}/keys/{key_id}", tag = "keys", operation_id = "delete_key",
    params(KeyPath),
    security(("admin_token" = [])),
    responses(
        (status = 204, description = "Deleted: refused at once (on every replica within a second)."),
        (status = 400, description = "A malformed path.", body = ErrorBody),
        (status = 401, description = "No valid admin token.", body = ErrorBody),
        (status = 404, description = "No such domain, tenant or key.", body = ErrorBody),
        (status = 409, description = "A tenant of the files: remove the key there.", body = ErrorBody),
        (status = 503, description = "The tenant state cannot be written now.", body = ErrorBody),
    ))]
pub async fn delete_key(
    State(api): State<ApiState>,
    Extension(who): Extension<Admin>,
    Segments(KeyPath {
        domain,
        id,
        key_id: key,
    }): Segments<KeyPath>,
) -> Result<Response, ApiError> {
    let (config, authz) = section(&api, &domain)?;
    api.shared
        .tenants
        .change(&domain, &id, |current| {
            let mut next = runtime(current, &authz, &config, &domain, &id)?.clone();
            let before = next.keys.len();
            next.keys.retain(|k| k.id != key);
            if next.keys.len() == before {
                return Err(ApiError::not_found(format!(
                    "tenant '{id}' has no key '{key}'"
                )));
            }
            next.updated_at = now();
            Ok(Edit {
                next: Some(next),
                audit: AuditEntry {
                    key_id: Some(key.clone()),
                    ..audit(&who, Action::KeyDeleted, &domain, &id)
                },
                output: (),
            })
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_key_is_never_debug_printed() {
        let created = CreatedKey {
            id: "5b0d6f3a9c1e2d47".into(),
            key: "tgk_secret".into(),
            created_at: now(),
        };
        assert!(!format!("{created:?}").contains("tgk_secret"));
    }
}
