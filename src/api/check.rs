//! Checks for callers outside Envoy: `GET /allow`, `POST /v1/check`, `GET /v1/usage` (consumes
//! nothing) and `POST /v1/usage` (records usage already spent). Each becomes a
//! `RateLimitRequest` decided by the same limiter, buckets and store as Envoy's calls.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::Uri;
use axum::response::Response;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::google::protobuf::UInt64Value;
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::answer::{Answer, CheckResponse, respond};
use super::error::{ApiError, ErrorBody};
use super::input::{self, bounded};
use crate::decision::{Decision, MAX_DESCRIPTORS, RequestError};
use crate::metrics::service::Method;

/// `POST /v1/check`'s body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"domain": "checkout", "descriptors": [
    {"entries": [{"key": "user_id", "value": "u1"}, {"key": "plan", "value": "free"}]}]}))]
pub struct CheckRequest {
    /// The domain: one of the configuration's.
    domain: String,
    /// What to count against, like Envoy's descriptors: 1 to 1 000.
    #[serde(deserialize_with = "bounded::<_, _, MAX_DESCRIPTORS>")]
    #[schema(min_items = 1, max_items = 1000)]
    descriptors: Vec<CheckDescriptor>,
    /// Units each descriptor takes unless it says otherwise (default 1; 0 checks without
    /// taking anything).
    #[serde(default)]
    hits: Option<u64>,
}

/// One descriptor of a check.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckDescriptor {
    /// Its entries, matched level by level against the domain's descriptor tree: 1 to 64.
    #[serde(deserialize_with = "bounded::<_, _, MAX_ENTRIES>")]
    #[schema(min_items = 1, max_items = 64)]
    entries: Vec<EntryBody>,
    /// Units it takes (0: check only); default the request's `hits`.
    #[serde(default)]
    hits: Option<u64>,
}

/// `POST /v1/usage`'s body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"domain": "llm-gateway", "amount": 1200,
    "descriptors": [{"entries": [{"key": "tenant", "value": "acme"}]}]}))]
pub struct UsageRequest {
    /// The domain.
    domain: String,
    /// What the usage counts against: 1 to 1 000.
    #[serde(deserialize_with = "bounded::<_, _, MAX_DESCRIPTORS>")]
    #[schema(min_items = 1, max_items = 1000)]
    descriptors: Vec<UsageDescriptor>,
    /// Units spent, charged to every descriptor.
    amount: u64,
}

/// One descriptor of recorded usage.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageDescriptor {
    /// Its entries: 1 to 64.
    #[serde(deserialize_with = "bounded::<_, _, MAX_ENTRIES>")]
    #[schema(min_items = 1, max_items = 64)]
    entries: Vec<EntryBody>,
}

/// One descriptor entry.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EntryBody {
    /// The key (`user_id`).
    pub key: String,
    /// The value (`u1`).
    pub value: String,
}

/// A request for the limiter: `descriptors` (entries and units each) in `domain`.
pub fn rls_request(
    domain: String,
    descriptors: impl IntoIterator<Item = (Vec<Entry>, u64)>,
) -> RateLimitRequest {
    RateLimitRequest {
        domain,
        descriptors: descriptors
            .into_iter()
            .map(|(entries, hits)| RateLimitDescriptor {
                entries,
                hits_addend: Some(UInt64Value { value: hits }),
                ..Default::default()
            })
            .collect(),
        hits_addend: 0,
    }
}

fn entries(entries: Vec<EntryBody>) -> Vec<Entry> {
    entries
        .into_iter()
        .map(|e| Entry {
            key: e.key,
            value: e.value,
        })
        .collect()
}

/// Checks that every descriptor has an entry, naming the first that has none.
fn non_empty<'a>(mut lists: impl Iterator<Item = &'a Vec<EntryBody>>) -> Result<(), ApiError> {
    match lists.position(Vec::is_empty) {
        Some(index) => Err(ApiError::field(
            format!("descriptors[{index}].entries"),
            "at least one entry is needed",
        )),
        None => Ok(()),
    }
}

/// `?domain=D&KEY=VALUE…`: the domain and one descriptor of the other pairs, in order.
fn descriptor_query(uri: &Uri) -> Result<(String, Vec<Entry>), ApiError> {
    let mut pairs = input::query_pairs(uri.query());
    let domain = input::take_one(&mut pairs, "domain", true)?.unwrap_or_default();
    if pairs.is_empty() {
        return Err(ApiError::bad_request(
            "the query needs at least one KEY=VALUE entry besides domain",
        ));
    }
    if pairs.len() > MAX_ENTRIES {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_ENTRIES} KEY=VALUE entries"
        )));
    }
    let entries = pairs
        .into_iter()
        .map(|(key, value)| Entry { key, value })
        .collect();
    Ok((domain, entries))
}

/// The most entries one descriptor may have (in a query or a body).
const MAX_ENTRIES: usize = 64;

/// The schema of a query's descriptor: every parameter but `domain`, in order, 1 to
/// [`MAX_ENTRIES`].
struct QueryEntries;

impl utoipa::PartialSchema for QueryEntries {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .additional_properties(Some(ObjectBuilder::new().schema_type(Type::String)))
            .min_properties(Some(1))
            .max_properties(Some(MAX_ENTRIES))
            .examples([serde_json::json!({"user_id": "u1", "plan": "free"})])
            .into()
    }
}

impl utoipa::ToSchema for QueryEntries {}

impl ApiState {
    /// Decides `request`, counting it in the metrics as an API check.
    pub async fn decide(&self, request: &RateLimitRequest) -> Result<Decision, ApiError> {
        let limiter = self.shared.reloader.limiter();
        self.counted(
            request,
            Method::ApiCheck,
            limiter.decide_within(request, None),
        )
        .await
    }

    /// Records `request` as usage already spent, counting it in the metrics as API usage.
    pub async fn record_usage(&self, request: &RateLimitRequest) -> Result<Decision, ApiError> {
        let limiter = self.shared.reloader.limiter();
        self.counted(
            request,
            Method::ApiUsage,
            limiter.record_within(request, None),
        )
        .await
    }

    /// What `deciding` (a decision of `request`) answers, counted in the metrics as `method`.
    async fn counted(
        &self,
        request: &RateLimitRequest,
        method: Method,
        deciding: impl Future<Output = Result<Decision, RequestError>>,
    ) -> Result<Decision, ApiError> {
        let started = Instant::now();
        let result = deciding.await;
        self.shared.record(request, &result, started);
        self.shared.count_decided(method, &result);
        result.map_err(ApiError::from)
    }
}

/// Takes one unit for the descriptor the query names: 200 when it was taken, 429 when not.
#[utoipa::path(get, path = "/allow", tag = "check", operation_id = "allow",
    params(
        ("domain" = String, Query, description = "The domain.", example = "checkout"),
        ("entries" = inline(QueryEntries), Query, style = Form, explode,
         description = "Every other parameter, in order, is one entry of the descriptor: `user_id=u1&plan=free`."),
    ),
    responses(
        (status = 200, description = "Allowed: a unit was taken (or no limit applies).", body = CheckResponse,
         headers(("RateLimit" = String, description = "IETF draft: the closest limit, `\"name\";r=<remaining>;t=<reset seconds>`."),
                 ("RateLimit-Policy" = String, description = "IETF draft: every limit, `\"name\";q=<limit>;w=<window seconds>`."))),
        (status = 429, description = "Over a limit: nothing was taken.", body = CheckResponse,
         headers(("RateLimit" = String), ("RateLimit-Policy" = String),
                 ("Retry-After" = u64, description = "Seconds until the request could pass."))),
        (status = 400, description = "No domain (or an empty one), no entry, more than 64 entries, or a parameter given twice.", body = ErrorBody),
        (status = 503, description = "No store could answer.", body = ErrorBody),
    ))]
pub async fn allow(State(api): State<ApiState>, uri: Uri) -> Result<Response, ApiError> {
    let (domain, entries) = descriptor_query(&uri)?;
    let request = rls_request(domain, [(entries, 1)]);
    let decision = api.decide(&request).await?;
    Ok(respond(
        &decision,
        Answer::Decided,
        CheckResponse::from(&decision),
    ))
}

/// Decides a request of one or more descriptors, all or nothing, as Envoy's calls are.
#[utoipa::path(post, path = "/v1/check", tag = "check", operation_id = "check", request_body = CheckRequest,
    responses(
        (status = 200, description = "Allowed: every descriptor's units were taken.", body = CheckResponse,
         headers(("RateLimit" = String), ("RateLimit-Policy" = String))),
        (status = 429, description = "Over a limit: nothing was taken.", body = CheckResponse,
         headers(("RateLimit" = String), ("RateLimit-Policy" = String), ("Retry-After" = u64))),
        (status = 400, description = "Bad input; `field` names what is wrong.", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB.", body = ErrorBody),
        (status = 503, description = "No store could answer.", body = ErrorBody),
    ))]
pub async fn check(State(api): State<ApiState>, body: Body) -> Result<Response, ApiError> {
    let body: CheckRequest = input::json(body).await?;
    non_empty(body.descriptors.iter().map(|d| &d.entries))?;
    let default = body.hits.unwrap_or(1);
    let request = rls_request(
        body.domain,
        body.descriptors
            .into_iter()
            .map(|d| (entries(d.entries), d.hits.unwrap_or(default))),
    );
    let decision = api.decide(&request).await?;
    Ok(respond(
        &decision,
        Answer::Decided,
        CheckResponse::from(&decision),
    ))
}

/// What is left for the descriptor the query names, consuming nothing.
#[utoipa::path(get, path = "/v1/usage", tag = "usage", operation_id = "read_usage",
    params(
        ("domain" = String, Query, description = "The domain.", example = "checkout"),
        ("entries" = inline(QueryEntries), Query, style = Form, explode,
         description = "Every other parameter, in order, is one entry of the descriptor."),
    ),
    responses(
        (status = 200, description = "The limits and what is left; `allowed` is false when one is over.", body = CheckResponse,
         headers(("RateLimit" = String), ("RateLimit-Policy" = String))),
        (status = 400, description = "No domain (or an empty one), no entry, more than 64 entries, or a parameter given twice.", body = ErrorBody),
        (status = 503, description = "No store could answer.", body = ErrorBody),
    ))]
pub async fn usage(State(api): State<ApiState>, uri: Uri) -> Result<Response, ApiError> {
    let (domain, entries) = descriptor_query(&uri)?;
    let request = rls_request(domain, [(entries, 0)]);
    let decision = api.decide(&request).await?;
    Ok(respond(
        &decision,
        Answer::Reported,
        CheckResponse::from(&decision),
    ))
}

/// Records usage already spent (the cross-language `UsageDelta`): always taken, whatever is
/// left; a limit with `debt: true` goes into debt (up to its `max_debt`) and answers 429 to
/// checks until refills repay it.
#[utoipa::path(post, path = "/v1/usage", tag = "usage", operation_id = "record_usage", request_body = UsageRequest,
    responses(
        (status = 200, description = "Recorded; `allowed` is false when a limit is now over.", body = CheckResponse,
         headers(("RateLimit" = String), ("RateLimit-Policy" = String))),
        (status = 400, description = "Bad input; `field` names what is wrong.", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB.", body = ErrorBody),
        (status = 503, description = "No store could answer.", body = ErrorBody),
    ))]
pub async fn record_usage(State(api): State<ApiState>, body: Body) -> Result<Response, ApiError> {
    let body: UsageRequest = input::json(body).await?;
    non_empty(body.descriptors.iter().map(|d| &d.entries))?;
    let amount = body.amount;
    let request = rls_request(
        body.domain,
        body.descriptors
            .into_iter()
            .map(|d| (entries(d.entries), amount)),
    );
    let decision = api.record_usage(&request).await?;
    Ok(respond(
        &decision,
        Answer::Reported,
        CheckResponse::from(&decision),
    ))
}
