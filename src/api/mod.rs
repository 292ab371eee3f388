//! The service API (`--api-addr`, off unless given): rate limit checks and usage for callers
//! outside Envoy, and tenants and API keys at runtime, over HTTP/1.1 and JSON, described by
//! the OpenAPI document it serves at `/openapi.json`.
//!
//! - `check.rs`: `GET /allow`, `POST /v1/check`, `GET|POST /v1/usage`: the same limiter,
//!   buckets and store as Envoy's calls, 200 or 429 with the IETF `RateLimit` headers
//!   (`answer.rs`).
//! - `tenants.rs`: `/v1/domains/{domain}/tenants…`: runtime tenants ([`crate::tenants`]);
//!   `keys.rs`: their API keys; `tenant_usage.rs`: what a tenant has left; `audit.rs`:
//!   `GET /v1/audit`. These management endpoints require an admin token ([`AdminTokens`]); a
//!   missing or wrong one gets the same 401.
//! - `input.rs`: bounded bodies and lists, errors naming the field; [`ApiError`]: one error
//!   shape; `openapi.rs`: the document.
//!
//! The port is served like the admin port (`crate::server`): connections capped, headers and
//! answers within the request timeout.

mod answer;
mod audit;
mod check;
mod error;
mod input;
mod keys;
mod openapi;
mod tenant_usage;
mod tenants;
mod token;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};

pub use error::{ApiError, ErrorBody};
pub use token::{AdminTokens, TokenError};

use crate::protocol::Shared;

/// The service API's settings, and where runtime tenants are kept.
#[derive(Debug, Clone, Default)]
pub struct ApiConfig {
    /// Where to serve the API (`--api-addr`); none: not served.
    pub addr: Option<SocketAddr>,
    /// The admin tokens' digests (`--api-admin-token-file`); none: management is refused.
    pub admin_token_file: Option<PathBuf>,
    /// Where runtime tenants are saved in memory mode (`--state-dir`); none: in memory only.
    pub state_dir: Option<PathBuf>,
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    shared: Shared,
    tokens: Arc<AdminTokens>,
}

/// Who made a management call: `token:<id>`.
#[derive(Debug, Clone)]
pub struct Admin(pub String);

/// The API's routes, deciding with `shared` and keeping its runtime tenants, letting the
/// holders of `tokens` manage them.
pub fn router(shared: Shared, tokens: AdminTokens) -> Router {
    let state = ApiState {
        shared,
        tokens: Arc::new(tokens),
    };
    let management = Router::new()
        .route(
            "/v1/domains/{domain}/tenants",
            get(tenants::list).post(tenants::create),
        )
        .route(
            "/v1/domains/{domain}/tenants/{id}",
            get(tenants::get)
                .put(tenants::update)
                .delete(tenants::delete),
        )
        .route(
            "/v1/domains/{domain}/tenants/{id}/keys",
            post(keys::create_key),
        )
        .route(
            "/v1/domains/{domain}/tenants/{id}/keys/{key_id}",
            delete(keys::delete_key),
        )
        .route(
            "/v1/domains/{domain}/tenants/{id}/usage",
            get(tenant_usage::usage),
        )
        .route("/v1/audit", get(audit::audit_log))
        .route_layer(middleware::from_fn_with_state(state.clone(), admin_only));
    Router::new()
        .route("/allow", get(check::allow))
        .route("/v1/check", post(check::check))
        .route("/v1/usage", get(check::usage).post(check::record_usage))
        .route("/openapi.json", get(openapi::document))
        .merge(management)
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state)
}

/// Lets a management call through only with an admin token, and says whose to the handler.
async fn admin_only(State(api): State<ApiState>, mut request: Request, next: Next) -> Response {
    match api.tokens.bearer(request.headers()) {
        Some(who) => {
            request.extensions_mut().insert(Admin(who));
            next.run(request).await
        }
        None => ApiError::unauthorized().into_response(),
    }
}

/// The API port's 408, in its JSON error shape.
pub fn late(timeout: std::time::Duration) -> Response {
    ApiError::request_timeout(timeout).into_response()
}

/// 404 for a path the API does not serve.
async fn no_route() -> ApiError {
    ApiError::not_found("no such endpoint: GET /openapi.json lists them")
}

/// 405 for a method a served path does not take.
async fn wrong_method(method: axum::http::Method) -> ApiError {
    ApiError::method_not_allowed(format!(
        "this endpoint does not take {method}: GET /openapi.json lists what it takes"
    ))
}
