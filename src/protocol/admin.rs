//! The HTTP admin port: `GET /healthcheck` and `POST /json`.
//!
//! It binds to loopback by default; it carries no secrets but can consume quota (`/json`), so
//! expose it only where callers are trusted.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::json;
use crate::decision::{Code, Limiter};

/// The admin routes, answering from `limiter`.
pub fn router(limiter: Arc<Limiter>) -> Router {
    Router::new()
        .route("/healthcheck", get(healthcheck))
        .route("/json", post(decide_json))
        .with_state(limiter)
}

async fn healthcheck() -> &'static str {
    "OK"
}

/// 200 with the JSON response when OK, 429 when OVER_LIMIT, 400 with a message on bad input.
async fn decide_json(State(limiter): State<Arc<Limiter>>, body: Bytes) -> Response {
    let request = match json::parse_request(&body) {
        Ok(request) => request,
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    match limiter.should_rate_limit(&request) {
        Ok(decision) => {
            let status = match decision.overall {
                Code::Ok => StatusCode::OK,
                Code::OverLimit => StatusCode::TOO_MANY_REQUESTS,
            };
            (status, axum::Json(json::response(&decision))).into_response()
        }
        Err(error) => (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    }
}
