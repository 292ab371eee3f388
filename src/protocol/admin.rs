//! The HTTP admin port: `GET /healthcheck`, `POST /json`, `POST /reload`, `GET /config` and
//! `GET /rlconfig`.
//!
//! It binds to loopback by default; it carries no secrets but can consume quota (`/json`), so
//! expose it only where callers are trusted.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::{Shared, json};
use crate::decision::Code;
use crate::metrics::service::{CallCode, CallResult, Method};
use crate::reload::{Outcome, Source, Trigger};
use crate::rule::Policy;

/// The admin routes.
pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/healthcheck", get(healthcheck))
        .route("/json", post(decide_json))
        .route("/reload", post(reload))
        .route("/config", get(config_status))
        .route("/rlconfig", get(rlconfig))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// Only `GET {path}`: the metrics, for a port of their own.
pub fn metrics_router(shared: Shared, path: &str) -> Router {
    Router::new().route(path, get(metrics)).with_state(shared)
}

/// Every metric, as OpenMetrics text.
async fn metrics(State(shared): State<Shared>) -> Response {
    match shared.metrics.encode() {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// 200 while serving. With Redis unavailable it stays 200 (the failure policy answers) and
/// says so on a second line, for readiness checks and people; 500 while limits over xDS are
/// awaited with `--xds-unhealthy-until-first-config`.
async fn healthcheck(State(shared): State<Shared>) -> Response {
    if shared.reloader.unhealthy() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "no configuration yet: waiting for the first version from the xDS server\n",
        )
            .into_response();
    }
    let limiter = shared.reloader.limiter();
    let mut parts = crate::store::Parts::default();
    limiter.store().parts(&mut parts);
    match (parts.redis, parts.failover) {
        (Some(redis), Some(failover)) if redis.is_degraded() => format!(
            "OK\ndegraded: redis unavailable, answering by --redis-failure {}\n",
            failover.policy()
        )
        .into_response(),
        _ => "OK".into_response(),
    }
}

/// 200 with the JSON response when OK, 429 when OVER_LIMIT, 400 with a message on bad input.
async fn decide_json(State(shared): State<Shared>, body: Bytes) -> Response {
    let request = match json::parse_request(&body) {
        Ok(request) => request,
        Err(message) => {
            shared.count_call(Method::Json, CallCode::InvalidArgument, CallResult::Error);
            return (StatusCode::BAD_REQUEST, message).into_response();
        }
    };
    let decision = shared.decide(&request, None).await;
    shared.count_decided(Method::Json, &decision);
    match decision {
        Ok(decision) => {
            let status = match decision.overall {
                Code::Ok => StatusCode::OK,
                Code::OverLimit => StatusCode::TOO_MANY_REQUESTS,
            };
            (status, axum::Json(json::response(&decision))).into_response()
        }
        Err(error) => (super::http_status(&error), error.to_string()).into_response(),
    }
}

/// Reloads now: 200 with the status when applied or unchanged, 422 with every problem when the
/// files are invalid (the configuration in force is kept); 409 when the limits come over xDS
/// (they change when the server pushes a version).
async fn reload(State(Shared { reloader, .. }): State<Shared>) -> Response {
    if let Source::Xds(xds) = reloader.source() {
        let body = serde_json::json!({
            "result": "not_files",
            "message": format!("the limits come over xDS from {}: they change when it pushes a version", xds.server),
            "status": reloader.status(),
        });
        return (StatusCode::CONFLICT, axum::Json(body)).into_response();
    }
    match reloader.reload(Trigger::Http).await {
        Ok(outcome) => {
            let result = match outcome {
                Outcome::Applied => "applied",
                Outcome::Unchanged => "unchanged",
            };
            let body = serde_json::json!({"result": result, "status": reloader.status()});
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(errors) => {
            let errors: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
            let body = serde_json::json!({"result": "failed", "errors": errors, "status": reloader.status()});
            (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response()
        }
    }
}

/// The version in force, when and from which files it was loaded, the last reload error, and
/// what is wrong with runtime tenants (`tenant_errors`: an id also in the files, say).
async fn config_status(State(shared): State<Shared>) -> Response {
    let mut status = serde_json::to_value(shared.reloader.status()).unwrap_or_default();
    let problems = shared.tenants.problems(&shared.reloader.limiter().config());
    if let Some(fields) = status.as_object_mut() {
        fields.insert("tenant_errors".to_owned(), problems.into());
    }
    axum::Json(status).into_response()
}

/// The limits in force, one line each, like the reference service's debug page.
async fn rlconfig(State(Shared { reloader, .. }): State<Shared>) -> String {
    let config = reloader.limiter().config();
    let mut out = String::new();
    for domain in config.domains() {
        for rule in domain.root.rules() {
            let limit = match rule.policy {
                Policy::Unlimited => "unlimited".to_owned(),
                Policy::Limited(q) => format!(
                    "unit={} requests_per_unit={} algorithm={} burst={}",
                    q.unit().name().to_uppercase(),
                    q.requests_per_unit(),
                    q.algorithm(),
                    q.burst()
                ),
            };
            let name = rule
                .name
                .as_deref()
                .map(|n| format!(" name={n}"))
                .unwrap_or_default();
            out.push_str(&format!(
                "{}: {limit}{name}, shadow_mode: {}\n",
                rule.id, rule.shadow_mode
            ));
        }
    }
    out
}
