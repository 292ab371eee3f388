//! What a tenant has left under each limit of its tier, consuming nothing: the tier's
//! descriptor templates filled in for the tenant and decided as check-only requests.

use axum::extract::State;
use axum::http::Uri;
use axum::response::Response;
use serde::Serialize;

use super::ApiState;
use super::answer::{Answer, LimitStatus, respond};
use super::check::{EntryBody, rls_request};
use super::error::{ApiError, ErrorBody};
use super::input::{self, Segments};
use super::tenants::{TenantPath, section};
use crate::authz::{Attributes, Tenant};
use crate::decision::{Code, Decision};
use crate::tenants::problem;

/// What a tenant has left under each of its tier's limits.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantUsage {
    /// The tenant's id.
    pub tenant: String,
    /// Its tier.
    pub tier: String,
    /// No limit is over.
    pub allowed: bool,
    /// One per descriptor of the tier (those reading what the query did not give are left
    /// out), in the tier's order.
    pub limits: Vec<TenantLimit>,
}

/// One descriptor of a tenant's tier and its status.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantLimit {
    /// The descriptor's entries.
    pub entries: Vec<EntryBody>,
    /// Its status.
    #[serde(flatten)]
    pub status: LimitStatus,
}

/// What a tenant has left under each limit of its tier, consuming nothing. Templates reading
/// the method, path or host use the query's; those reading a header are left out.
#[utoipa::path(get, path = "/v1/domains/{domain}/tenants/{id}/usage", tag = "tenants", operation_id = "tenant_usage",
    params(TenantPath,
           ("method" = Option<String>, Query, description = "The request method templates read."),
           ("path" = Option<String>, Query, description = "The request path templates read."),
           ("host" = Option<String>, Query, description = "The host templates read.")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Each limit and what is left.", body = TenantUsage,
         headers(("RateLimit" = String), ("RateLimit-Policy" = String))),
        (status = 400, description = "An unknown or repeated parameter.", body = ErrorBody),
        (status = 401, description = "No valid admin token.", body = ErrorBody),
        (status = 404, description = "No such domain or tenant.", body = ErrorBody),
        (status = 409, description = "A runtime tenant whose keys ext_authz refuses (its tier is undefined); `message` says why.", body = ErrorBody),
        (status = 503, description = "No store could answer.", body = ErrorBody),
    ))]
pub async fn usage(
    State(api): State<ApiState>,
    Segments(TenantPath { domain, id }): Segments<TenantPath>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let (config, authz) = section(&api, &domain)?;
    let mut pairs = input::query_pairs(uri.query());
    let method = input::take_one(&mut pairs, "method", false)?;
    let path = input::take_one(&mut pairs, "path", false)?;
    let host = input::take_one(&mut pairs, "host", false)?;
    input::no_more(&pairs)?;
    let view = api.shared.tenants.view();
    // The tenant in force: the files' before the API's, as ext_authz decides.
    let tenant = match (authz.tenants_by_id().get(&id), view.get(&domain, &id)) {
        (Some(tenant), _) => Tenant {
            id: tenant.id.clone(),
            tier: tenant.tier.clone(),
        },
        (None, Some(record)) => {
            if let Some(problem) = problem(record, &config) {
                return Err(ApiError::conflict(problem));
            }
            Tenant {
                id: record.id.clone(),
                tier: record.tier.clone(),
            }
        }
        (None, None) => {
            return Err(ApiError::not_found(format!(
                "domain '{domain}' has no tenant '{id}'"
            )));
        }
    };
    let headers = Default::default();
    let attributes = Attributes {
        method: method.as_deref(),
        path: path.as_deref(),
        host: host.as_deref(),
        headers: &headers,
    };
    let descriptors = authz.descriptors(&tenant, &attributes);
    let listed: Vec<Vec<EntryBody>> = descriptors
        .iter()
        .map(|d| {
            d.entries
                .iter()
                .map(|e| EntryBody {
                    key: e.key.clone(),
                    value: e.value.clone(),
                })
                .collect()
        })
        .collect();
    let decision = if descriptors.is_empty() {
        Decision {
            overall: Code::Ok,
            unknown_domain: false,
            statuses: Default::default(),
        }
    } else {
        let request = rls_request(
            domain.clone(),
            descriptors.into_iter().map(|d| (d.entries, 0)),
        );
        api.decide(&request).await?
    };
    let body = TenantUsage {
        tenant: tenant.id.clone(),
        tier: tenant.tier.clone(),
        allowed: decision.overall == Code::Ok,
        limits: listed
            .into_iter()
            .zip(&decision.statuses)
            .map(|(entries, status)| TenantLimit {
                entries,
                status: status.into(),
            })
            .collect(),
    };
    Ok(respond(&decision, Answer::Reported, body))
}
