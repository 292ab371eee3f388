//! The answer to a check: whether it was allowed, one status per descriptor, and the IETF
//! `RateLimit` headers (with `Retry-After` on a 429), for every endpoint that decides.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::decision::{Code, Decision, DescriptorStatus};
use crate::protocol::headers::{rate_limit_headers, retry_after_secs, secs};

/// The answer to a check: whether it was allowed, and one status per descriptor, in order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"allowed": true, "statuses": [{"code": "OK",
    "limit": {"requests_per_unit": 5, "unit": "minute", "name": "free"},
    "remaining": 4, "reset_seconds": 12}]}))]
pub struct CheckResponse {
    /// No limit denied (for usage: every limit is still within itself).
    pub allowed: bool,
    /// One per descriptor, in request order.
    pub statuses: Vec<LimitStatus>,
}

/// One descriptor's status.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LimitStatus {
    /// `OK`, or `OVER_LIMIT` when this limit denies (or is over).
    pub code: LimitCode,
    /// The limit that applied; null when none did (no match, an unknown domain, or
    /// `unlimited: true`).
    pub limit: Option<LimitBody>,
    /// Units left now; null when no limit applied.
    pub remaining: Option<u32>,
    /// Seconds until the limit is whole again, rounded up; null when no limit applied.
    pub reset_seconds: Option<u64>,
}

/// A status's code.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
#[schema(as = Code)]
pub enum LimitCode {
    /// Within the limit.
    #[serde(rename = "OK")]
    Ok,
    /// Over it.
    #[serde(rename = "OVER_LIMIT")]
    OverLimit,
}

/// The limit a status was decided by.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LimitBody {
    /// Requests (units) per unit of time.
    pub requests_per_unit: u32,
    /// `second`, `minute`, `hour`, `day`, `week`, `month` or `year`.
    #[schema(example = "minute")]
    pub unit: String,
    /// The limit's `name`, if it has one.
    pub name: Option<String>,
}

impl From<&DescriptorStatus> for LimitStatus {
    fn from(status: &DescriptorStatus) -> Self {
        let limit = status.limit.as_ref().map(|limit| LimitBody {
            requests_per_unit: limit.requests_per_unit,
            unit: limit.unit.name().to_owned(),
            name: limit.name.as_deref().map(str::to_owned),
        });
        let limited = limit.is_some();
        Self {
            code: match status.code {
                Code::Ok => LimitCode::Ok,
                Code::OverLimit => LimitCode::OverLimit,
            },
            limit,
            remaining: limited.then_some(status.remaining),
            reset_seconds: status.reset_after.filter(|_| limited).map(secs),
        }
    }
}

impl From<&Decision> for CheckResponse {
    fn from(decision: &Decision) -> Self {
        Self {
            allowed: decision.overall == Code::Ok,
            statuses: decision.statuses.iter().map(LimitStatus::from).collect(),
        }
    }
}

/// How an answer's HTTP status follows from its decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 200 when allowed, 429 (with `Retry-After`) when not.
    Decided,
    /// 200 whatever the statuses say (a query, or usage recorded).
    Reported,
}

/// The response for `decision`: status, RateLimit headers and JSON body.
pub fn respond(decision: &Decision, answer: Answer, body: impl Serialize) -> Response {
    let denied = answer == Answer::Decided && decision.overall == Code::OverLimit;
    let status = if denied {
        StatusCode::TOO_MANY_REQUESTS
    } else {
        StatusCode::OK
    };
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    for (name, value) in rate_limit_headers(decision) {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    if denied {
        headers.insert(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from(retry_after_secs(decision)),
        );
    }
    response
}
