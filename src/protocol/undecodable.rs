//! Calls whose request cannot be decoded (not protobuf, a string that is not UTF-8, a message
//! over the size limit) answer `INVALID_ARGUMENT`, not tonic's `INTERNAL`, and are counted in
//! `tollgate_calls_total` like every other call: the cause is the caller's, and it must show.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::Shared;
use crate::metrics::service::{CallCode, CallResult, Method};

/// gRPC's `INTERNAL` and `OUT_OF_RANGE`, as tonic answers requests it cannot decode.
const INTERNAL: &str = "13";
const OUT_OF_RANGE: &str = "11";
/// `INVALID_ARGUMENT`.
const INVALID_ARGUMENT: &str = "3";

/// Wraps the gRPC services.
#[derive(Debug, Clone)]
pub struct UndecodableLayer {
    shared: Shared,
}

impl UndecodableLayer {
    /// Counting in `shared`'s metrics.
    pub fn new(shared: Shared) -> Self {
        Self { shared }
    }
}

impl<S> Layer<S> for UndecodableLayer {
    type Service = Undecodable<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Undecodable {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`UndecodableLayer`].
#[derive(Debug, Clone)]
pub struct Undecodable<S> {
    inner: S,
    shared: Shared,
}

impl<S, B, R> Service<Request<B>> for Undecodable<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Answered<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let method = match request.uri().path().rsplit('/').next() {
            Some("ShouldRateLimit") => Some(Method::ShouldRateLimit),
            Some("Check") => Some(Method::Check),
            _ => None,
        };
        Answered {
            inner: self.inner.call(request),
            method,
            shared: self.shared.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A call's answer, checked for a request that could not be decoded.
    pub struct Answered<F> {
        #[pin]
        inner: F,
        method: Option<Method>,
        shared: Shared,
    }
}

impl<F, R, E> Future for Answered<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut answer = std::task::ready!(this.inner.poll(cx));
        if let (Ok(response), Some(method)) = (&mut answer, *this.method)
            && undecodable(response)
        {
            response
                .headers_mut()
                .insert("grpc-status", HeaderValue::from_static(INVALID_ARGUMENT));
            this.shared
                .count_call(method, CallCode::InvalidArgument, CallResult::Error);
        }
        Poll::Ready(answer)
    }
}

/// Whether tonic answered that it could not decode the request.
fn undecodable<R>(response: &Response<R>) -> bool {
    let headers = response.headers();
    let status = headers.get("grpc-status").and_then(|v| v.to_str().ok());
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match status {
        Some(INTERNAL) => message.contains("decode"),
        Some(OUT_OF_RANGE) => message.contains("message%20length%20too%20large"),
        _ => false,
    }
}
