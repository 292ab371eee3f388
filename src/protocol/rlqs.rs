//! `envoy.service.rate_limit_quota.v3.RateLimitQuotaService/StreamRateLimitQuotas` over gRPC,
//! and `GET /rlqs` on the admin port.
//!
//! Each stream gets a reader task that applies the Envoy's reports to the service in
//! [`crate::rlqs`], and a response stream that sends what the service queues on the stream's
//! outbox. A malformed report ends the stream with a status that says what is wrong
//! (`INVALID_ARGUMENT`; `RESOURCE_EXHAUSTED` for too many buckets, `UNAVAILABLE` while
//! shutting down).

use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use envoy_types::pb::envoy::r#type::v3::rate_limit_strategy::{BlanketRule, Strategy};
use envoy_types::pb::envoy::r#type::v3::{RateLimitStrategy, TokenBucket};
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_response::BucketAction;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_response::bucket_action::{
    self, AbandonAction, QuotaAssignmentAction,
};
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_service_server::{
    RateLimitQuotaService, RateLimitQuotaServiceServer,
};
use envoy_types::pb::envoy::service::rate_limit_quota::v3::{
    RateLimitQuotaResponse, RateLimitQuotaUsageReports,
};
use envoy_types::pb::google::protobuf::{Duration as ProtoDuration, UInt32Value};
use futures_util::Stream;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status, Streaming};

use crate::rlqs::bucket::BucketName;
use crate::rlqs::{Action, Assignment, Connection, End, Next, Outbox, ReportError, Rlqs, StreamId};

/// The gRPC service, serving streams from the shared quota service.
#[derive(Debug, Clone)]
pub struct RateLimitQuotaGrpc {
    rlqs: Arc<Rlqs>,
}

impl RateLimitQuotaGrpc {
    /// A service answering from `rlqs`.
    pub fn new(rlqs: Arc<Rlqs>) -> Self {
        Self { rlqs }
    }

    /// The tonic server wrapping this service.
    pub fn into_server(self) -> RateLimitQuotaServiceServer<Self> {
        RateLimitQuotaServiceServer::new(self)
    }
}

/// The responses of one stream.
pub type Responses = Pin<Box<dyn Stream<Item = Result<RateLimitQuotaResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RateLimitQuotaService for RateLimitQuotaGrpc {
    type StreamRateLimitQuotasStream = Responses;

    async fn stream_rate_limit_quotas(
        &self,
        request: Request<Streaming<RateLimitQuotaUsageReports>>,
    ) -> Result<Response<Responses>, Status> {
        let peer = request.remote_addr();
        let Connection { id, outbox } = self.rlqs.connect(peer).map_err(|e| status(&e))?;
        // Dropped with the response stream: the reader then stops too.
        let (hangup, hung_up) = oneshot::channel::<()>();
        tokio::spawn(read(self.rlqs.clone(), id, request.into_inner(), hung_up));
        Ok(Response::new(Box::pin(responses(outbox, hangup))))
    }
}

/// Applies the stream's reports until it ends, fails, or nobody reads the responses.
async fn read(
    rlqs: Arc<Rlqs>,
    id: StreamId,
    mut inbound: Streaming<RateLimitQuotaUsageReports>,
    mut hung_up: oneshot::Receiver<()>,
) {
    let end = loop {
        tokio::select! {
            _ = &mut hung_up => break End::Finished,
            message = inbound.message() => match message {
                Ok(Some(message)) => {
                    if let Err(error) = rlqs.report(id, &message) {
                        tracing::debug!(stream = id, %error, "RLQS stream ended: bad report");
                        break End::Failed(error);
                    }
                }
                Ok(None) => break End::Finished,
                Err(status) => {
                    tracing::debug!(stream = id, %status, "RLQS stream broken");
                    break End::Finished;
                }
            },
        }
    };
    rlqs.disconnect(id, end);
}

/// What the outbox gives, as responses; an error ends the stream with its status.
fn responses(
    outbox: Arc<Outbox>,
    hangup: oneshot::Sender<()>,
) -> impl Stream<Item = Result<RateLimitQuotaResponse, Status>> + Send {
    futures_util::stream::unfold(Some((outbox, hangup)), |open| async move {
        let (outbox, hangup) = open?;
        match outbox.next().await {
            Next::Actions(actions) => Some((Ok(response(actions)), Some((outbox, hangup)))),
            Next::End(End::Finished) => None,
            Next::End(End::Failed(error)) => Some((Err(status(&error)), None)),
        }
    })
}

/// A report error as the status that ends the stream.
pub fn status(error: &ReportError) -> Status {
    let message = error.to_string();
    match error {
        ReportError::ShuttingDown => Status::unavailable(message),
        ReportError::TooManyBuckets { .. } => Status::resource_exhausted(message),
        _ => Status::invalid_argument(message),
    }
}

/// Actions as one response message.
pub fn response(actions: Vec<(BucketName, Action)>) -> RateLimitQuotaResponse {
    RateLimitQuotaResponse {
        bucket_action: actions
            .into_iter()
            .map(|(bucket, action)| BucketAction {
                bucket_id: Some(bucket.to_proto()),
                bucket_action: Some(match action {
                    Action::Assign {
                        assignment,
                        ttl_secs,
                    } => {
                        bucket_action::BucketAction::QuotaAssignmentAction(QuotaAssignmentAction {
                            assignment_time_to_live: Some(seconds(ttl_secs)),
                            rate_limit_strategy: Some(strategy(assignment)),
                        })
                    }
                    Action::Abandon => bucket_action::BucketAction::AbandonAction(AbandonAction {}),
                }),
            })
            .collect(),
    }
}

fn strategy(assignment: Assignment) -> RateLimitStrategy {
    let strategy = match assignment {
        Assignment::AllowAll => Strategy::BlanketRule(BlanketRule::AllowAll as i32),
        Assignment::DenyAll => Strategy::BlanketRule(BlanketRule::DenyAll as i32),
        Assignment::TokenBucket {
            max_tokens,
            tokens_per_fill,
            fill_interval_secs,
        } => Strategy::TokenBucket(TokenBucket {
            max_tokens,
            tokens_per_fill: Some(UInt32Value {
                value: tokens_per_fill,
            }),
            fill_interval: Some(seconds(fill_interval_secs)),
        }),
    };
    RateLimitStrategy {
        strategy: Some(strategy),
    }
}

fn seconds(secs: u64) -> ProtoDuration {
    ProtoDuration {
        seconds: i64::try_from(secs).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

/// `GET /rlqs`: the current assignment per bucket and Envoy, as JSON.
pub fn admin_router(rlqs: Arc<Rlqs>) -> Router {
    Router::new().route("/rlqs", get(view)).with_state(rlqs)
}

async fn view(State(rlqs): State<Arc<Rlqs>>) -> axum::Json<crate::rlqs::View> {
    axum::Json(rlqs.view())
}
