//! `GET /v1/audit`: the newest changes to runtime tenants (who, what, when), from the
//! tenant state's audit log.

use axum::extract::State;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::ApiState;
use super::error::{ApiError, ErrorBody};
use super::input;
use crate::tenants::record::AuditEntry;
use crate::tenants::state::MAX_AUDIT;

/// The most entries one answer holds unless `limit` says.
const DEFAULT_LIMIT: usize = 100;

/// The audit log's entries.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditLog {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
}

/// The newest changes to runtime tenants, newest first.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", operation_id = "audit_log",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "At most this many entries (1 to 10000; default 100)."),
           ("domain" = Option<String>, Query, description = "Only this domain's."),
           ("tenant" = Option<String>, Query, description = "Only this tenant's.")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The entries, newest first.", body = AuditLog),
        (status = 400, description = "An unknown, repeated or malformed parameter.", body = ErrorBody),
        (status = 401, description = "No valid admin token.", body = ErrorBody),
        (status = 503, description = "The tenant state cannot be read now.", body = ErrorBody),
    ))]
pub async fn audit_log(State(api): State<ApiState>, uri: Uri) -> Result<Response, ApiError> {
    let mut pairs = input::query_pairs(uri.query());
    let limit = match input::take_one(&mut pairs, "limit", false)? {
        None => DEFAULT_LIMIT,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_AUDIT).contains(n))
            .ok_or_else(|| ApiError::field("limit", "must be a number from 1 to 10000"))?,
    };
    let domain = input::take_one(&mut pairs, "domain", false)?;
    let tenant = input::take_one(&mut pairs, "tenant", false)?;
    input::no_more(&pairs)?;
    let filtered = domain.is_some() || tenant.is_some();
    let fetch = if filtered { MAX_AUDIT } else { limit };
    let entries = api
        .shared
        .tenants
        .audit(fetch)
        .await?
        .into_iter()
        .filter(|e| domain.as_ref().is_none_or(|d| *d == e.domain))
        .filter(|e| tenant.as_ref().is_none_or(|t| *t == e.tenant))
        .take(limit)
        .collect();
    Ok(axum::Json(AuditLog { entries }).into_response())
}
