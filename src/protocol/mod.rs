//! The wire: Envoy's gRPC `RateLimitService`, ext_authz `Authorization` and `RateLimitQuotaService`, and the HTTP admin
//! port (health, JSON, reload, metrics, `/rlqs`).

pub mod admin;
pub mod authz;
pub mod json;
pub mod rlqs;
pub mod rls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;

use crate::decision::{Decision, RequestError};
use crate::metrics::Metrics;
use crate::metrics::service::{CallCode, Method};
use crate::reload::Reloader;

/// What the wire handlers share: the reloader (and through it the limiter) and the metrics.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The configuration in force and its limiter.
    pub reloader: Arc<Reloader>,
    /// Every metric.
    pub metrics: Arc<Metrics>,
}

impl Shared {
    /// Decides `request` for a caller that waits at most `budget`, and counts it in the
    /// metrics.
    pub async fn decide(
        &self,
        request: &RateLimitRequest,
        budget: Option<Duration>,
    ) -> Result<Decision, RequestError> {
        let started = Instant::now();
        let result = self.reloader.limiter().decide_within(request, budget).await;
        self.record(request, &result, started);
        result
    }

    /// Counts a decision of `request` made since `started` in the metrics.
    pub fn record(
        &self,
        request: &RateLimitRequest,
        result: &Result<Decision, RequestError>,
        started: Instant,
    ) {
        let service = &self.metrics.service;
        service
            .decision_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Ok(decision) = result {
            if decision.unknown_domain {
                service.unknown_domain.inc();
            }
            for (descriptor, status) in request.descriptors.iter().zip(&decision.statuses) {
                if let Some(usage) = &status.usage {
                    self.metrics
                        .limits
                        .record(&request.domain, &descriptor.entries, usage);
                }
            }
        }
    }

    /// Counts a call that failed with `error` by method and gRPC code name.
    pub fn count_error(&self, method: Method, error: &RequestError) {
        self.count_call(method, call_code(error));
    }

    /// Counts a call by method and result code.
    pub fn count_call(&self, method: Method, code: CallCode) {
        let labels = crate::metrics::service::CallLabels { method, code };
        self.metrics.service.calls.get_or_create(&labels).inc();
    }
}

/// The gRPC code of a request error, as counted in `tollgate_calls_total`.
pub fn call_code(error: &RequestError) -> CallCode {
    match error {
        RequestError::Unavailable(_) => CallCode::Unavailable,
        _ => CallCode::InvalidArgument,
    }
}

/// A request error as the gRPC status callers receive: `UNAVAILABLE` when no store answered
/// (Envoy then applies `failure_mode_deny`), `INVALID_ARGUMENT` for everything else.
pub fn grpc_status(error: &RequestError) -> tonic::Status {
    match error {
        RequestError::Unavailable(_) => tonic::Status::unavailable(error.to_string()),
        _ => tonic::Status::invalid_argument(error.to_string()),
    }
}

/// The same as an HTTP status: 503 or 400.
pub fn http_status(error: &RequestError) -> axum::http::StatusCode {
    match error {
        RequestError::Unavailable(_) => axum::http::StatusCode::SERVICE_UNAVAILABLE,
        _ => axum::http::StatusCode::BAD_REQUEST,
    }
}

/// How long a gRPC caller waits, from its `grpc-timeout` header (`20m` is 20 ms; units H, M, S,
/// m, u, n), if it sent one.
pub fn grpc_budget(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(split);
    let amount: u64 = digits.parse().ok()?;
    let per_unit = match unit {
        "H" => Duration::from_secs(3600),
        "M" => Duration::from_secs(60),
        "S" => Duration::from_secs(1),
        "m" => Duration::from_millis(1),
        "u" => Duration::from_micros(1),
        "n" => Duration::from_nanos(1),
        _ => return None,
    };
    per_unit.checked_mul(u32::try_from(amount).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(value: &str) -> Option<Duration> {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("grpc-timeout", value.parse().unwrap());
        grpc_budget(&metadata)
    }

    #[test]
    fn grpc_timeout_headers_read_as_budgets() {
        assert_eq!(budget("20m"), Some(Duration::from_millis(20)));
        assert_eq!(budget("1S"), Some(Duration::from_secs(1)));
        assert_eq!(budget("250u"), Some(Duration::from_micros(250)));
        assert_eq!(budget("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(budget("20x"), None);
        assert_eq!(budget("m"), None);
        assert_eq!(grpc_budget(&tonic::metadata::MetadataMap::new()), None);
    }
}
