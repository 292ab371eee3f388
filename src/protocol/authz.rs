//! Envoy's `envoy.service.auth.v3.Authorization/Check` (the ext_authz filter): API key →
//! tenant → tier descriptors → the same decision, buckets and store as the rate limit service.
//!
//! Answers: no key or an unknown key → 401 (one body for both, so a caller cannot tell them
//! apart); over a limit → 429 with `Retry-After`, `RateLimit`/`RateLimit-Policy` (IETF draft)
//! and `X-RateLimit-*`; a tenant whose request meets no limit → allowed, or 403 with
//! `deny_unlimited`; allowed → OK, adding `x-tenant-id` and `x-tenant-tier` upstream (and
//! removing the key header when `strip_api_key`), and the RateLimit headers on the response.
//! A request denied only by limits with `max_delay` is held until it conforms instead (at
//! most that long), so callers are shaped rather than refused. A recognised tenant's answer
//! carries dynamic metadata (`tenant`, `tier`, and `total_limit`: the limit closest to running
//! out as `{requests_per_unit, unit}`), which a rate limit rule can take as its limit
//! (Envoy's `limit: {dynamic_metadata: …}`, Envoy Gateway's `limit.fromMetadata`).

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction,
    HttpStatusCode,
};
use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, UInt64Value, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};

use super::Shared;
use super::headers::{binding, rate_limit_headers, retry_after_secs};
use crate::authz::{Attributes, Tenant, key_digest};
use crate::clock::saturating_nanos;
use crate::decision::{Code, Decision, DescriptorStatus, RequestError};
use crate::metrics::service::{AuthzLabels, AuthzResult, CallCode, CallResult, Method};

/// The ext_authz gRPC service.
#[derive(Debug, Clone)]
pub struct AuthorizationGrpc {
    shared: Shared,
}

impl AuthorizationGrpc {
    /// Counts `cost` failed keys from `client` against `domain`'s failed-key limit (0: only
    /// reads it), with tollgate's own limiter: a limit sent with the request, keyed by the
    /// address, in the same store as every other limit (global with Redis).
    async fn failed_keys(
        &self,
        domain: &str,
        (per_unit, unit): (u32, crate::quota::Unit),
        client: &str,
        cost: u64,
        budget: Option<Duration>,
    ) -> Option<Decision> {
        let request = RateLimitRequest {
            domain: domain.to_owned(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: FAILED_KEYS_FROM.to_owned(),
                    value: client.to_owned(),
                }],
                limit: Some(RateLimitOverride {
                    requests_per_unit: per_unit,
                    unit: unit.to_envoy(),
                }),
                hits_addend: Some(UInt64Value { value: cost }),
            }],
            hits_addend: 0,
        };
        let limiter = self.shared.reloader.limiter();
        limiter.decide_within(&request, budget).await.ok()
    }

    /// A service deciding with `shared`.
    pub fn new(shared: Shared) -> Self {
        Self { shared }
    }

    /// As a tonic service.
    pub fn into_server(self) -> AuthorizationServer<Self> {
        AuthorizationServer::new(self)
    }
}

/// What one check came to, before it becomes a `CheckResponse`.
enum Verdict {
    Unauthorized,
    Forbidden,
    Limited(Box<Decision>),
}

#[tonic::async_trait]
impl Authorization for AuthorizationGrpc {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let budget = super::grpc_budget(request.metadata());
        let check = request.into_inner();
        let attributes = check.attributes.unwrap_or_default();
        let client = client_address(&attributes);
        let mut http = attributes.request.and_then(|r| r.http).unwrap_or_default();
        let headers = request_headers(&mut http);
        let config = self.shared.reloader.limiter().config();
        let domain = match attributes.context_extensions.get("domain") {
            Some(name) => config.domain(name).filter(|d| d.authorization.is_some()),
            None => match config.authorization_domains().as_slice() {
                [only] => Some(*only),
                _ => None,
            },
        };
        let Some((domain, authz)) =
            domain.and_then(|d| d.authorization.clone().map(|a| (d.name.clone(), a)))
        else {
            self.shared.count_call(
                Method::Check,
                CallCode::FailedPrecondition,
                CallResult::Error,
            );
            return Err(Status::failed_precondition(
                "no domain serves ext_authz: give one domain an authorization: section, or name it in the route's context_extensions (domain)",
            ));
        };
        let guard = authz.failed_keys.zip(client);
        if let Some(((per_unit, unit), client)) = &guard {
            let spent = self
                .failed_keys(&domain, (*per_unit, *unit), client, 0, budget)
                .await;
            if let Some(mut locked) = spent.filter(|d| d.statuses[0].remaining == 0) {
                // Past the failed-key limit: no key is looked at until it refills.
                locked.overall = Code::OverLimit;
                locked.statuses[0].code = Code::OverLimit;
                self.count(&domain, None, AuthzResult::TooManyFailedKeys);
                self.shared
                    .count_call(Method::Check, CallCode::Ok, CallResult::Denied);
                return Ok(Response::new(answer(
                    Verdict::Limited(Box::new(locked)),
                    None,
                    &authz.api_key_header,
                    false,
                )));
            }
        }
        let tenant = authz.presented_key(&headers).and_then(|key| {
            // Hashed once for both: the files' keys, then the API's.
            let digest = key_digest(key);
            authz
                .tenant_by_digest(&digest)
                .cloned()
                .or_else(|| self.shared.tenants.tenant(&domain, &authz, &digest))
        });
        let Some(tenant) = tenant else {
            if let Some(((per_unit, unit), client)) = &guard {
                self.failed_keys(&domain, (*per_unit, *unit), client, 1, budget)
                    .await;
            }
            self.count(&domain, None, AuthzResult::Unauthorized);
            self.shared
                .count_call(Method::Check, CallCode::Ok, CallResult::Denied);
            return Ok(Response::new(answer(
                Verdict::Unauthorized,
                None,
                &authz.api_key_header,
                false,
            )));
        };
        let path = http.path.split(['?', '#']).next().unwrap_or_default();
        let request_attributes = Attributes {
            method: Some(&http.method),
            path: Some(path),
            host: Some(&http.host),
            headers: &headers,
        };
        let descriptors = authz.descriptors(&tenant, &request_attributes);
        let limited = if descriptors.is_empty() {
            None
        } else {
            let request = RateLimitRequest {
                domain: domain.clone(),
                descriptors,
                hits_addend: 1,
            };
            match self.decide_shaped(&request, budget).await {
                Ok(decision) => Some(decision),
                Err(error) => {
                    self.shared.count_call(
                        Method::Check,
                        super::call_code(&error),
                        CallResult::Error,
                    );
                    return Err(super::grpc_status(&error));
                }
            }
        };
        let verdict = match limited {
            Some(decision) if decision.statuses.iter().any(DescriptorStatus::has_limit) => {
                Verdict::Limited(Box::new(decision))
            }
            _ if authz.deny_unlimited => Verdict::Forbidden,
            _ => Verdict::Limited(Box::new(Decision {
                overall: Code::Ok,
                unknown_domain: false,
                statuses: Default::default(),
            })),
        };
        let result = match &verdict {
            Verdict::Unauthorized => AuthzResult::Unauthorized,
            Verdict::Forbidden => AuthzResult::Forbidden,
            Verdict::Limited(d) if d.overall == Code::OverLimit => AuthzResult::OverLimit,
            Verdict::Limited(_) => AuthzResult::Ok,
        };
        self.count(&domain, Some(&tenant), result);
        let decided = match result {
            AuthzResult::Ok => CallResult::Ok,
            AuthzResult::OverLimit => CallResult::OverLimit,
            AuthzResult::Unauthorized | AuthzResult::Forbidden | AuthzResult::TooManyFailedKeys => {
                CallResult::Denied
            }
        };
        self.shared.count_call(Method::Check, CallCode::Ok, decided);
        Ok(Response::new(answer(
            verdict,
            Some(&tenant),
            &authz.api_key_header,
            authz.strip_api_key,
        )))
    }
}

impl AuthorizationGrpc {
    /// Decides `request`; while it would be denied only by limits with a `max_delay`, holds it
    /// (asynchronously: the task sleeps, no thread waits) and decides again, until it conforms
    /// or waiting longer would pass the smallest `max_delay` among them.
    /// Only the final decision is counted in the metrics; `tollgate_authz_held_requests`
    /// shows the requests held meanwhile.
    async fn decide_shaped(
        &self,
        request: &RateLimitRequest,
        budget: Option<Duration>,
    ) -> Result<Decision, RequestError> {
        let limiter = self.shared.reloader.limiter().clone();
        // One clock for the decisions, the waits and the budget: the limiter's.
        let clock = limiter.clock();
        let started = clock.now();
        let decided_since = Instant::now();
        let mut held: Option<HeldGauge<'_>> = None;
        loop {
            let result = limiter.decide_within(request, budget).await;
            let shaping = result.as_ref().ok().and_then(hold);
            let Some((budget, wait)) = shaping else {
                self.shared.record(request, &result, decided_since);
                return result;
            };
            let waited = Duration::from_nanos(clock.now().saturating_sub(started));
            if waited + wait > budget {
                self.shared.record(request, &result, decided_since);
                return result;
            }
            held.get_or_insert_with(|| HeldGauge::new(&self.shared.metrics.service.authz_held));
            let wait = saturating_nanos(wait.max(MIN_HOLD));
            clock.sleep_until(clock.now().saturating_add(wait)).await;
        }
    }

    fn count(&self, domain: &str, tenant: Option<&Tenant>, result: AuthzResult) {
        let labels = AuthzLabels {
            domain: domain.to_owned(),
            tenant: tenant.map(|t| t.id.clone()).unwrap_or_default(),
            tier: tenant.map(|t| t.tier.clone()).unwrap_or_default(),
            result,
        };
        self.shared
            .metrics
            .service
            .authz_checks
            .get_or_create(&labels)
            .inc();
    }
}

/// Counts a request as held for as long as it lives (also when Envoy gives up on it).
struct HeldGauge<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> HeldGauge<'a> {
    fn new(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for HeldGauge<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The descriptor key failed keys are counted under, by client address.
const FAILED_KEYS_FROM: &str = "failed_api_key_from";

/// The client's address, as Envoy saw it.
fn client_address(
    attributes: &envoy_types::pb::envoy::service::auth::v3::AttributeContext,
) -> Option<String> {
    use envoy_types::pb::envoy::config::core::v3::address::Address;
    match attributes
        .source
        .as_ref()?
        .address
        .as_ref()?
        .address
        .as_ref()?
    {
        Address::SocketAddress(socket) if !socket.address.is_empty() => {
            Some(socket.address.clone())
        }
        _ => None,
    }
}

/// The shortest wait between two decisions of a held request.
const MIN_HOLD: Duration = Duration::from_millis(1);

/// For a denial that every denying limit allows to be held: the smallest `max_delay` among
/// them and the wait until the request would conform.
fn hold(decision: &Decision) -> Option<(Duration, Duration)> {
    if decision.overall != Code::OverLimit {
        return None;
    }
    let mut budget: Option<Duration> = None;
    let mut wait = Duration::ZERO;
    for status in decision
        .statuses
        .iter()
        .filter(|s| s.code == Code::OverLimit)
    {
        let rule = status.usage.as_ref()?.rule.as_ref()?;
        let delay = rule.max_delay?;
        budget = Some(budget.map_or(delay, |b| b.min(delay)));
        wait = wait.max(Duration::from_nanos(status.retry_after?));
    }
    Some((budget?, wait))
}

const JSON: &str = "application/json";

fn answer(
    verdict: Verdict,
    tenant: Option<&Tenant>,
    key_header: &str,
    strip_key: bool,
) -> CheckResponse {
    let mut response = CheckResponse::with_status(Status::ok(""));
    let mut denied = DeniedHttpResponseBuilder::new();
    let decision = match verdict {
        Verdict::Unauthorized => {
            denied
                .set_http_status(HttpStatusCode::Unauthorized)
                .add_header("content-type", JSON, None, false)
                .add_header("www-authenticate", challenge(key_header), None, false)
                .set_body(r#"{"error":"unauthorized","message":"a valid API key is required"}"#);
            response
                .set_status(Status::unauthenticated("no valid API key"))
                .set_http_response(denied.build());
            return response;
        }
        Verdict::Forbidden => {
            denied
                .set_http_status(HttpStatusCode::Forbidden)
                .add_header("content-type", JSON, None, false)
                .set_body(r#"{"error":"forbidden","message":"no quota covers this request"}"#);
            response
                .set_status(Status::permission_denied("no quota covers this request"))
                .set_http_response(denied.build());
            return response;
        }
        Verdict::Limited(decision) => decision,
    };
    let headers = rate_limit_headers(&decision);
    if let Some(tenant) = tenant {
        response.dynamic_metadata = Some(tenant_metadata(tenant, &decision));
    }
    if decision.overall == Code::OverLimit {
        denied
            .set_http_status(HttpStatusCode::TooManyRequests)
            .add_header("content-type", JSON, None, false);
        for (name, value) in &headers {
            denied.add_header(*name, value.clone(), None, false);
        }
        let retry = retry_after_secs(&decision);
        denied.add_header("retry-after", retry.to_string(), None, false);
        denied.set_body(format!(
            r#"{{"error":"rate_limited","message":"quota exceeded","retry_after_seconds":{retry}}}"#
        ));
        response
            .set_status(Status::resource_exhausted("quota exceeded"))
            .set_http_response(denied.build());
        return response;
    }
    let mut ok = OkHttpResponseBuilder::new();
    if let Some(tenant) = tenant {
        let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
        ok.add_header("x-tenant-id", tenant.id.clone(), overwrite, false)
            .add_header("x-tenant-tier", tenant.tier.clone(), overwrite, false);
    }
    if strip_key {
        ok.remove_header(key_header);
    }
    for (name, value) in headers {
        ok.add_response_header(name, value, None, false);
    }
    response.set_http_response(ok.build());
    response
}

/// The `WWW-Authenticate` challenge for the header the key is read from.
fn challenge(key_header: &str) -> &'static str {
    if key_header == "authorization" {
        "Bearer"
    } else {
        "ApiKey"
    }
}

/// The request's headers as one map, whichever way Envoy sent them: in `headers` (values
/// of one name already joined), or, with `encode_raw_headers: true`, as a list in
/// `header_map`, whose values of one name are joined here with `,` as Envoy would, and whose
/// bytes that are not UTF-8 become `!`, as Envoy does for `headers`.
fn request_headers(http: &mut HttpRequest) -> HashMap<String, String> {
    let raw = http
        .header_map
        .take()
        .map(|map| map.headers)
        .unwrap_or_default();
    let mut headers = std::mem::take(&mut http.headers);
    for header in raw {
        let value = if header.raw_value.is_empty() {
            header.value
        } else {
            sanitized(&header.raw_value)
        };
        headers
            .entry(header.key.to_ascii_lowercase())
            .and_modify(|joined| {
                joined.push(',');
                joined.push_str(&value);
            })
            .or_insert(value);
    }
    headers
}

/// `bytes` as text with each byte that is not part of valid UTF-8 replaced by `!`, as Envoy
/// sanitizes header values it writes into `headers`.
fn sanitized(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        text.extend(chunk.invalid().iter().map(|_| '!'));
    }
    text
}

/// What Envoy keeps of a tenant's check (namespace `envoy.filters.http.ext_authz`): `tenant`,
/// `tier`, and `total_limit` as Envoy's rate limit `limit` override reads it
/// (`requests_per_unit`, and `unit` by its enum name), for the limit closest to running out.
fn tenant_metadata(tenant: &Tenant, decision: &Decision) -> Struct {
    let text = |text: &str| Value {
        kind: Some(Kind::StringValue(text.to_owned())),
    };
    let mut fields = HashMap::from([
        ("tenant".to_owned(), text(&tenant.id)),
        ("tier".to_owned(), text(&tenant.tier)),
    ]);
    if let Some(limit) = binding(decision).and_then(|(_, status)| status.limit.as_ref()) {
        let total = Struct {
            fields: HashMap::from([
                (
                    "requests_per_unit".to_owned(),
                    Value {
                        kind: Some(Kind::NumberValue(f64::from(limit.requests_per_unit))),
                    },
                ),
                ("unit".to_owned(), text(&limit.unit.name().to_uppercase())),
            ]),
        };
        let total = Value {
            kind: Some(Kind::StructValue(total)),
        };
        fields.insert("total_limit".to_owned(), total);
    }
    Struct { fields }
}
