//! The wire: Envoy's gRPC `RateLimitService`, ext_authz `Authorization` and `RateLimitQuotaService`, and the HTTP admin
//! port (health, JSON, reload, metrics, `/rlqs`).

pub mod admin;
pub mod answers;
pub mod authz;
pub mod headers;
pub mod json;
pub mod rlqs;
pub mod rls;
pub mod undecodable;

use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;

use crate::decision::Code;
use crate::decision::{Decision, RequestError};
use crate::metrics::Metrics;
use crate::metrics::service::{CallCode, CallResult, Method};
use crate::reload::Reloader;

/// What the wire handlers share: the reloader (and through it the limiter) and the metrics.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The configuration in force and its limiter.
    pub reloader: Arc<Reloader>,
    /// Every metric.
    pub metrics: Arc<Metrics>,
    /// Unknown domains already warned about.
    pub unknown: Arc<UnknownDomains>,
    /// What rate limit answers carry beyond their statuses.
    pub answers: Arc<answers::Answers>,
    /// Tenants and keys created at runtime (the service API), which ext_authz reads too.
    pub tenants: Arc<crate::tenants::Tenants>,
}

impl Shared {
    /// Handlers on `reloader`'s limiter, counting in `metrics`, answering as `answers` says,
    /// with `tenants` created at runtime beside the files' own.
    pub fn new(
        reloader: Arc<Reloader>,
        metrics: Arc<Metrics>,
        answers: answers::Answers,
        tenants: Arc<crate::tenants::Tenants>,
    ) -> Self {
        Self {
            reloader,
            metrics,
            unknown: Default::default(),
            answers: Arc::new(answers),
            tenants,
        }
    }

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
                self.unknown.warn(&request.domain);
            }
            if tracing::enabled!(tracing::Level::DEBUG) {
                log_decision(request, decision);
            }
            for (descriptor, status) in request.descriptors.iter().zip(&decision.statuses) {
                for usage in status.usage.iter().chain(&status.more_usage) {
                    self.metrics
                        .limits
                        .record(&request.domain, &descriptor.entries, usage);
                }
            }
        }
    }

    /// Counts a decided call, or one that failed, by method, code and result.
    pub fn count_decided(&self, method: Method, result: &Result<Decision, RequestError>) {
        match result {
            Ok(decision) => self.count_call(
                method,
                CallCode::Ok,
                match decision.overall {
                    Code::Ok => CallResult::Ok,
                    Code::OverLimit => CallResult::OverLimit,
                },
            ),
            Err(error) => self.count_call(method, call_code(error), CallResult::Error),
        }
    }

    /// Counts a call by method, gRPC code and result.
    pub fn count_call(&self, method: Method, code: CallCode, result: CallResult) {
        let labels = crate::metrics::service::CallLabels {
            method,
            code,
            result,
        };
        self.metrics.service.calls.get_or_create(&labels).inc();
    }
}

/// One debug line per decision: the domain, the result and each limit that applied with its
/// code (never descriptor values: they may identify users).
fn log_decision(request: &RateLimitRequest, decision: &Decision) {
    let limits: Vec<String> = decision
        .statuses
        .iter()
        .filter_map(|status| {
            let usage = status.usage.as_ref()?;
            let limit = usage
                .rule
                .as_ref()
                .map_or("(sent in the request)", |r| &r.id);
            let code = match status.code {
                Code::Ok => "ok",
                Code::OverLimit => "over_limit",
            };
            Some(format!("{limit}={code}"))
        })
        .collect();
    tracing::debug!(
        domain = %request.domain,
        overall = ?decision.overall,
        limits = %limits.join(" "),
        "decided"
    );
}

/// Warns of requests for domains no configuration file defines, at most once a minute per
/// domain (a typo in Envoy's `domain:` turns limiting off: it must be seen). At most
/// [`UnknownDomains::MAX`] domains are remembered; past that, one warning a minute covers them.
#[derive(Debug, Default)]
pub struct UnknownDomains {
    warned: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
}

impl UnknownDomains {
    /// Domains remembered at most.
    pub const MAX: usize = 1000;
    const EVERY: Duration = Duration::from_secs(60);

    /// Warns about `domain` unless that was done less than a minute ago.
    pub fn warn(&self, domain: &str) {
        let mut warned = self
            .warned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let recent = |at: &Instant| now.duration_since(*at) < Self::EVERY;
        if warned.get(domain).is_some_and(recent) {
            return;
        }
        if warned.len() >= Self::MAX && !warned.contains_key(domain) {
            warned.retain(|_, at| recent(at));
            if warned.len() >= Self::MAX {
                if warned.get("").is_some_and(recent) {
                    return;
                }
                warned.insert(String::new(), now);
                tracing::warn!(
                    "requests for more than {} unknown domains: allowed without limits",
                    Self::MAX
                );
                return;
            }
        }
        warned.insert(domain.to_owned(), now);
        tracing::warn!(
            domain,
            "request for a domain no configuration file defines: allowed without limits (check Envoy's rate limit `domain:`)"
        );
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
