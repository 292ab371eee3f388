//! The admin port's HTTP server, bounded: at most so many connections, each must send a
//! request's headers within the request timeout (idle keep-alive connections included) and be
//! answered within it (a slow body gets 408), and a stop lets requests in flight finish.

use std::future::Future;
use std::io;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use super::connections::Gate;

/// The admin port's bounds.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Longest wait for a request's headers (also while a connection idles between requests)
    /// and for its answer.
    pub request_timeout: Duration,
    /// The answer to a request not answered within `request_timeout` (a 408).
    pub late: fn(Duration) -> Response,
}

/// The admin port's 408: plain text.
pub fn late_text(timeout: Duration) -> Response {
    (
        StatusCode::REQUEST_TIMEOUT,
        format!("request not complete within {timeout:?}\n"),
    )
        .into_response()
}

/// Serves `router` on `listener` within `limits` until `stop`, then lets the requests in
/// flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    let router = router.layer(middleware::from_fn_with_state(limits, answer_in_time));
    let service = TowerToHyperService::new(router);
    let gate = Gate::new(limits.max_connections, limits.request_timeout);
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors, say: wait a little rather than spin.
                Err(error) => {
                    tracing::warn!(%error, "admin port: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(stream) = gate.admit(stream) else {
            tracing::debug!("admin port full: connection closed");
            continue;
        };
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.request_timeout)
            .serve_connection(TokioIo::new(stream), service.clone());
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "admin connection closed");
            }
        });
    }
    graceful.shutdown().await;
    Ok(())
}

/// `late`'s 408 for a request not answered within the timeout (a body sent too slowly, say).
async fn answer_in_time(
    State(limits): State<HttpLimits>,
    request: Request,
    next: Next,
) -> Response {
    let timeout = limits.request_timeout;
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (limits.late)(timeout),
    }
}
