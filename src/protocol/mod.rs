//! The wire: Envoy's gRPC `RateLimitService` and ext_authz `Authorization`, and the HTTP admin port (health, JSON, reload,
//! metrics).

pub mod admin;
pub mod authz;
pub mod json;
pub mod rls;

use std::sync::Arc;
use std::time::Instant;

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
    /// Decides `request` and counts it in the metrics.
    pub async fn decide(&self, request: &RateLimitRequest) -> Result<Decision, RequestError> {
        let started = Instant::now();
        let result = self.reloader.limiter().decide(request).await;
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
