//! `envoy.service.ratelimit.v3.RateLimitService` over gRPC.

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    self, DescriptorStatus as ProtoStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use tonic::{Request, Response, Status};

use super::Shared;
use crate::clock::NANOS_PER_SEC;
use crate::decision::{Code, Decision, DescriptorStatus};
use crate::metrics::service::Method;

/// The gRPC service, deciding with the shared limiter.
#[derive(Debug, Clone)]
pub struct RateLimitGrpc {
    shared: Shared,
}

impl RateLimitGrpc {
    /// A service answering from `shared`.
    pub fn new(shared: Shared) -> Self {
        Self { shared }
    }

    /// The tonic server wrapping this service.
    pub fn into_server(self) -> RateLimitServiceServer<Self> {
        RateLimitServiceServer::new(self)
    }
}

use tracing::Instrument;

#[tonic::async_trait]
impl RateLimitService for RateLimitGrpc {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        // A span per call only when spans are exported: it costs allocations otherwise unneeded.
        let span = if crate::telemetry::spans_exported() {
            tracing::info_span!("should_rate_limit", domain = tracing::field::Empty)
        } else {
            tracing::Span::none()
        };
        crate::telemetry::continue_trace(&span, request.metadata());
        let budget = super::grpc_budget(request.metadata());
        let request = request.into_inner();
        span.record("domain", request.domain.as_str());
        let decided = self.shared.decide(&request, budget).instrument(span).await;
        self.shared.count_decided(Method::ShouldRateLimit, &decided);
        match decided {
            Ok(decision) => {
                let mut response = to_proto(&decision);
                let answers = &self.shared.answers;
                if let Some(names) = &answers.headers {
                    response.response_headers_to_add = names.headers(&decision);
                }
                if answers.dynamic_metadata {
                    let metadata = super::answers::dynamic_metadata(&request, &decision);
                    response.dynamic_metadata = Some(metadata);
                }
                Ok(Response::new(response))
            }
            Err(error) => {
                tracing::debug!(domain = %request.domain, %error, "rate limit request not decided");
                Err(super::grpc_status(&error))
            }
        }
    }
}

/// The decision as Envoy's response message.
pub fn to_proto(decision: &Decision) -> RateLimitResponse {
    RateLimitResponse {
        overall_code: code(decision.overall),
        statuses: decision.statuses.iter().map(status).collect(),
        ..Default::default()
    }
}

fn code(code: Code) -> i32 {
    match code {
        Code::Ok => rate_limit_response::Code::Ok as i32,
        Code::OverLimit => rate_limit_response::Code::OverLimit as i32,
    }
}

fn status(status: &DescriptorStatus) -> ProtoStatus {
    ProtoStatus {
        code: code(status.code),
        current_limit: status.limit.as_ref().map(|limit| RateLimit {
            name: limit.name.as_deref().unwrap_or_default().to_owned(),
            requests_per_unit: limit.requests_per_unit,
            unit: limit.unit.to_envoy(),
        }),
        limit_remaining: status.remaining,
        duration_until_reset: status.reset_after.map(duration),
        ..Default::default()
    }
}

/// Nanoseconds as a protobuf Duration.
fn duration(nanos: u64) -> ProtoDuration {
    ProtoDuration {
        seconds: i64::try_from(nanos / NANOS_PER_SEC).unwrap_or(i64::MAX),
        // Always below 10^9, so it fits.
        nanos: (nanos % NANOS_PER_SEC) as i32,
    }
}
