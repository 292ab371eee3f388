//! The service API (`--api-addr`) over real HTTP against a real server, on memory and Redis:
//! checks (200/429 and the RateLimit headers, one budget with Envoy's calls), usage (read and
//! recorded into debt), bad input (4xx naming the field, memory bounded), admin tokens, runtime
//! tenants and keys used through ext_authz over gRPC, an id in the files and the API, restarts,
//! two replicas on one Redis and on a Redis Cluster, and the OpenAPI document
//! (openapi-spec-validator, and a bounded schemathesis run against it, both run by
//! `scripts/test`).

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::process::Tollgate;
use common::redis::{RedisCluster, RedisServer};
use common::{
    Backend, RedisSetup, Setup, TestServer, descriptor, output_text, request, start_in, tool,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use reqwest::Method;
use serde_json::{Value, json};
use tollgate::api::ApiConfig;
use tollgate::authz::hash_key;

const DEADLINE: Duration = Duration::from_secs(10);

/// The admin token; its digest is in the token file.
const TOKEN: &str = "admin-token-7c1d9e";
/// The file tenant acme's key.
const ACME_KEY: &str = "acme-file-key-42";

const SHOP: &str = r#"
domain: shop
descriptors:
  - key: user_id
    rate_limit: {name: per_user, unit: minute, requests_per_unit: 3}
  - key: plan
    value: free
    descriptors:
      - key: user_id
        rate_limit: {name: free, unit: hour, requests_per_unit: 2}
"#;

const LLM: &str = r#"
domain: llm
descriptors:
  - key: tenant
    rate_limit: {name: tokens, unit: minute, requests_per_unit: 1000, debt: true}
"#;

/// Domain `saas`: tiers free (5 a minute per tenant) and pro (100), file tenant acme.
fn saas(extra_tenants: &str) -> String {
    format!(
        r#"
domain: saas
descriptors:
  - key: tier
    value: free
    descriptors:
      - key: tenant
        rate_limit: {{name: free, unit: minute, requests_per_unit: 5}}
  - key: tier
    value: pro
    descriptors:
      - key: tenant
        rate_limit: {{name: pro, unit: minute, requests_per_unit: 100}}
  - key: tenant
    descriptors:
      - key: path
        value: /v1/exports*
        share_threshold: true
        rate_limit: {{name: exports, unit: minute, requests_per_unit: 2}}
authorization:
  tiers:
    free:
      descriptors:
        - [{{key: tier, value: free}}, {{key: tenant, from: tenant}}]
        - [{{key: tenant, from: tenant}}, {{key: path, from: path}}]
    pro:
      descriptors:
        - [{{key: tier, value: pro}}, {{key: tenant, from: tenant}}]
  tenants:
    - id: acme
      tier: free
      api_keys: ["{acme}"]
{extra_tenants}"#,
        acme = hash_key(ACME_KEY)
    )
}

/// A server with the API on a free port, its limits in a fresh directory, the admin token
/// file beside them, runtime tenants in `state_dir` (memory mode), counting in `backend`.
async fn serve(backend: &Backend, state_dir: Option<&Path>) -> TestServer {
    serve_with(backend.setup(Setup::default()), state_dir).await
}

async fn serve_with(mut setup: Setup, state_dir: Option<&Path>) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shop.yaml"), SHOP).unwrap();
    std::fs::write(dir.path().join("llm.yaml"), LLM).unwrap();
    std::fs::write(dir.path().join("saas.yaml"), saas("")).unwrap();
    let tokens = dir.path().join(".tokens");
    std::fs::write(&tokens, format!("# ops\n{}\n", hash_key(TOKEN))).unwrap();
    setup.api = ApiConfig {
        addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        admin_token_file: Some(tokens),
        state_dir: state_dir.map(Path::to_path_buf),
    };
    start_in(dir, setup).await
}

/// An answer: status, headers and JSON body (`Null` when empty).
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Calls the API of `server`: `method path`, with the admin token when `admin`, and `body`
/// (JSON, or raw text when it is a string).
async fn call(
    server: &TestServer,
    admin: bool,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Answer {
    let url = format!("http://{}{path}", server.api.unwrap());
    let mut request = reqwest::Client::new().request(method, url);
    if admin {
        request = request.bearer_auth(TOKEN);
    }
    request = match body {
        Some(Value::String(raw)) => request.body(raw),
        Some(value) => request.json(&value),
        None => request,
    };
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    };
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(server: &TestServer, path: &str) -> Answer {
    call(server, false, Method::GET, path, None).await
}

async fn admin(server: &TestServer, method: Method, path: &str, body: Option<Value>) -> Answer {
    call(server, true, method, path, body).await
}

/// An ext_authz check of `GET path` with `x-api-key: key` on `grpc`: the HTTP status Envoy
/// would answer, and the tenant and tier sent upstream when allowed.
async fn authz(grpc: SocketAddr, key: &str, path: &str) -> (i32, Option<(String, String)>) {
    let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let http = HttpRequest {
        method: "GET".into(),
        path: path.into(),
        host: "api.example.com".into(),
        headers: [("x-api-key".to_owned(), key.to_owned())].into(),
        ..Default::default()
    };
    let check = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(http),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let response = client.check(check).await.unwrap().into_inner();
    match response.http_response.unwrap() {
        HttpResponse::OkResponse(ok) => {
            let header = |name: &str| {
                ok.headers
                    .iter()
                    .filter_map(|h| h.header.as_ref())
                    .find(|h| h.key == name)
                    .map(|h| h.value.clone())
                    .unwrap()
            };
            (200, Some((header("x-tenant-id"), header("x-tenant-tier"))))
        }
        HttpResponse::DeniedResponse(denied) => (denied.status.unwrap().code, None),
        HttpResponse::ErrorResponse(error) => panic!("ext_authz error {error:?}"),
    }
}

/// The status of a key on ext_authz: 200 or the denial's.
async fn key_status(server: &TestServer, key: &str) -> i32 {
    authz(server.grpc, key, "/").await.0
}

/// Waits until `key` gets `status` on `server`'s ext_authz; returns how long it took.
async fn until_key(server: &TestServer, key: &str, status: i32) -> Duration {
    let started = Instant::now();
    while key_status(server, key).await != status {
        assert!(
            started.elapsed() < DEADLINE,
            "the key did not get {status} within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

/// Creates runtime tenant `id` of `tier` in saas and one key for it: the key.
async fn tenant_with_key(server: &TestServer, id: &str, tier: &str) -> String {
    let created = admin(
        server,
        Method::POST,
        "/v1/domains/saas/tenants",
        Some(json!({"id": id, "tier": tier, "labels": {"team": "billing"}})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let key = admin(
        server,
        Method::POST,
        &format!("/v1/domains/saas/tenants/{id}/keys"),
        None,
    )
    .await;
    assert_eq!(key.status, 201, "{}", key.body);
    assert_eq!(key.header("cache-control"), Some("no-store"));
    key.body["key"].as_str().unwrap().to_owned()
}

// ---------------------------------------------------------------------------------------------
// Checks and usage.

async fn checks_answer_200_then_429_sharing_envoys_budget(backend: Backend) {
    let mut server = serve(&backend, None).await;
    for remaining in [2, 1] {
        let answer = get(&server, "/allow?domain=shop&user_id=u1").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(
            answer.body,
            json!({"allowed": true, "statuses": [{"code": "OK",
                "limit": {"requests_per_unit": 3, "unit": "minute", "name": "per_user"},
                "remaining": remaining, "reset_seconds": 20 * (3 - remaining)}]})
        );
        assert_eq!(
            answer.header("ratelimit"),
            Some(format!("\"per_user\";r={remaining};t={}", 20 * (3 - remaining)).as_str())
        );
        assert_eq!(
            answer.header("ratelimit-policy"),
            Some("\"per_user\";q=3;w=60")
        );
        assert_eq!(answer.header("retry-after"), None);
    }
    // Envoy's call takes the last unit of the same bucket.
    let envoy = server
        .call(request("shop", vec![descriptor(&[("user_id", "u1")])]))
        .await;
    assert_eq!(envoy.overall_code, 1, "OK");
    let denied = get(&server, "/allow?domain=shop&user_id=u1").await;
    assert_eq!(denied.status, 429);
    assert_eq!(denied.body["allowed"], false);
    assert_eq!(denied.body["statuses"][0]["code"], "OVER_LIMIT");
    assert_eq!(denied.header("retry-after"), Some("20"));
    // POST /v1/check: all or nothing over several descriptors, each with its own cost.
    let body = |u2_hits: u64| {
        json!({"domain": "shop", "descriptors": [
            {"entries": [{"key": "plan", "value": "free"}, {"key": "user_id", "value": "u2"}]},
            {"entries": [{"key": "user_id", "value": "u2"}], "hits": u2_hits}]})
    };
    let over = call(&server, false, Method::POST, "/v1/check", Some(body(4))).await;
    assert_eq!(over.status, 429, "{}", over.body);
    assert_eq!(over.body["statuses"][0]["code"], "OK");
    assert_eq!(over.body["statuses"][1]["code"], "OVER_LIMIT");
    let fits = call(&server, false, Method::POST, "/v1/check", Some(body(3))).await;
    assert_eq!(fits.status, 200, "{}", fits.body);
    assert_eq!(
        fits.body["statuses"][0]["remaining"], 1,
        "nothing taken by the 429"
    );
    assert_eq!(fits.body["statuses"][1]["remaining"], 0);
    // No limit: allowed, with null limit fields; unknown domains likewise.
    for path in [
        "/allow?domain=shop&nobody=x",
        "/allow?domain=nowhere&user_id=u1",
    ] {
        let free = get(&server, path).await;
        assert_eq!(free.status, 200);
        assert_eq!(
            free.body,
            json!({"allowed": true, "statuses": [{"code": "OK", "limit": null, "remaining": null, "reset_seconds": null}]})
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn checks_answer_200_then_429_sharing_envoys_budget_in_memory() {
    checks_answer_200_then_429_sharing_envoys_budget(Backend::memory()).await;
}

#[tokio::test]
async fn checks_answer_200_then_429_sharing_envoys_budget_in_redis() {
    checks_answer_200_then_429_sharing_envoys_budget(Backend::strict()).await;
    checks_answer_200_then_429_sharing_envoys_budget(Backend::cached()).await;
}

async fn usage_is_read_without_consuming_and_recorded_into_debt(backend: Backend) {
    let server = serve(&backend, None).await;
    for _ in 0..3 {
        let read = get(&server, "/v1/usage?domain=llm&tenant=acme").await;
        assert_eq!(read.status, 200);
        assert_eq!(read.body["statuses"][0]["remaining"], 1000);
    }
    // 1 200 tokens spent against 1 000: taken in full, 200 in debt.
    let spent = json!({"domain": "llm", "amount": 1200,
        "descriptors": [{"entries": [{"key": "tenant", "value": "acme"}]}]});
    let recorded = call(&server, false, Method::POST, "/v1/usage", Some(spent)).await;
    assert_eq!(recorded.status, 200, "{}", recorded.body);
    assert_eq!(recorded.body["allowed"], false);
    assert_eq!(recorded.body["statuses"][0]["code"], "OVER_LIMIT");
    let read = get(&server, "/v1/usage?domain=llm&tenant=acme").await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body["allowed"], false);
    assert_eq!(read.body["statuses"][0]["remaining"], 0);
    // 12 s repay the 200 tokens of debt: nothing left, nothing owed; 60 ms more refill one.
    server.advance(Duration::from_secs(12));
    let read = get(&server, "/v1/usage?domain=llm&tenant=acme").await;
    assert_eq!(read.body["statuses"][0]["code"], "OK");
    assert_eq!(read.body["statuses"][0]["remaining"], 0);
    server.advance(Duration::from_millis(60));
    let allow = "/allow?domain=llm&tenant=acme";
    assert_eq!(get(&server, allow).await.status, 200);
    // A check while empty is denied, and (the limit counting every hit) charged too: the
    // next passes two tokens later, not one.
    assert_eq!(get(&server, allow).await.status, 429);
    server.advance(Duration::from_millis(120));
    assert_eq!(get(&server, allow).await.status, 200);
    // Other tenants are not affected.
    assert_eq!(
        get(&server, "/allow?domain=llm&tenant=globex").await.status,
        200
    );
    server.stop().await;
}

#[tokio::test]
async fn usage_is_read_without_consuming_and_recorded_into_debt_in_memory() {
    usage_is_read_without_consuming_and_recorded_into_debt(Backend::memory()).await;
}

#[tokio::test]
async fn usage_is_read_without_consuming_and_recorded_into_debt_in_redis() {
    usage_is_read_without_consuming_and_recorded_into_debt(Backend::strict()).await;
    usage_is_read_without_consuming_and_recorded_into_debt(Backend::cached()).await;
}

// ---------------------------------------------------------------------------------------------
// Bad input.

#[tokio::test]
async fn bad_input_gets_a_4xx_naming_the_field() {
    let server = serve(&Backend::memory(), None).await;
    let cases: Vec<(Value, u16, Option<&str>)> = vec![
        (
            json!({"domain": "shop", "descriptors": [{"entries": [{"key": "user_id", "value": 1}]}]}),
            400,
            Some("descriptors[0].entries[0].value"),
        ),
        (
            json!({"domain": "shop", "descriptors": [{"entries": [{"key": "a", "value": "b"}], "hits": -1}]}),
            400,
            Some("descriptors[0].hits"),
        ),
        (
            json!({"domain": "shop", "descriptors": [{"entries": [{"key": "a", "value": "b"}], "hits": "1"}]}),
            400,
            Some("descriptors[0].hits"),
        ),
        (
            json!({"domain": "shop", "descriptors": [{"entries": [{"key": "a", "value": "b"}]}], "colour": "red"}),
            400,
            Some("colour"),
        ),
        (
            json!({"domain": "shop", "descriptors": []}),
            400,
            Some("descriptors"),
        ),
        (
            json!({"domain": "shop", "descriptors": [{"entries": []}]}),
            400,
            Some("descriptors[0].entries"),
        ),
        (
            json!({"domain": "", "descriptors": [{"entries": [{"key": "a", "value": "b"}]}]}),
            400,
            Some("domain"),
        ),
        (
            json!({"descriptors": [{"entries": [{"key": "a", "value": "b"}]}]}),
            400,
            None,
        ),
        (json!("not json"), 400, None),
        (json!(""), 400, None),
        (json!("[1, 2]"), 400, None),
        (
            json!({"domain": "shop", "descriptors": {"entries": []}}),
            400,
            Some("descriptors"),
        ),
    ];
    for (body, status, field) in cases {
        let answer = call(
            &server,
            false,
            Method::POST,
            "/v1/check",
            Some(body.clone()),
        )
        .await;
        assert_eq!(answer.status, status, "{body}: {}", answer.body);
        assert_eq!(answer.body["error"], "bad_request", "{body}");
        assert!(!answer.body["message"].as_str().unwrap().is_empty());
        if let Some(field) = field {
            assert_eq!(answer.body["field"], field, "{body}: {}", answer.body);
            assert!(answer.body["message"].as_str().unwrap().starts_with(field));
        }
    }
    let unknown = call(
        &server,
        false,
        Method::POST,
        "/v1/check",
        Some(json!(
        {"domain": "shop", "descriptors": [{"entries": [{"key": "a", "value": "b"}], "hitz": 1}]})),
    )
    .await;
    assert_eq!(unknown.body["field"], "descriptors[0].hitz");
    assert!(
        unknown.body["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `hitz`")
    );
    // Unicode is data like any other.
    let unicode = get(
        &server,
        "/allow?domain=shop&user_id=%F0%9F%A6%80%C3%BC%E2%80%AE",
    )
    .await;
    assert_eq!(unicode.status, 200);
    let usage = call(&server, false, Method::POST, "/v1/usage", Some(json!(
        {"domain": "shop", "descriptors": [{"entries": [{"key": "user_id", "value": "ünï"}]}], "amount": "3"}))).await;
    assert_eq!(
        (usage.status, usage.body["field"].as_str()),
        (400, Some("amount"))
    );
    // 10 000 descriptors: refused at the 1 001st, whatever follows.
    let many: Vec<Value> = (0..10_000)
        .map(|i| json!({"entries": [{"key": "user_id", "value": format!("u{i}")}]}))
        .collect();
    let answer = call(
        &server,
        false,
        Method::POST,
        "/v1/check",
        Some(json!({"domain": "shop", "descriptors": many})),
    )
    .await;
    assert_eq!(
        (answer.status, answer.body["field"].as_str()),
        (400, Some("descriptors"))
    );
    assert!(
        answer.body["message"]
            .as_str()
            .unwrap()
            .contains("at most 1000")
    );
    // A body past 1 MiB: 413, not read further.
    let huge = format!(
        r#"{{"domain":"shop","descriptors":[{{"entries":[{{"key":"k","value":"{}"}}]}}]}}"#,
        "x".repeat(2 << 20)
    );
    let answer = call(
        &server,
        false,
        Method::POST,
        "/v1/check",
        Some(Value::String(huge)),
    )
    .await;
    assert_eq!(
        (answer.status, answer.body["error"].as_str()),
        (413, Some("payload_too_large"))
    );
    // Queries: the domain once, at least one entry.
    for (path, field) in [
        ("/allow?user_id=u1", Some("domain")),
        ("/allow?domain=shop&domain=llm&user_id=u1", Some("domain")),
        ("/allow?domain=shop", None),
        ("/v1/usage?domain=shop", None),
        ("/allow?domain=shop&user_id=%FF", None),
    ] {
        let answer = get(&server, path).await;
        match field {
            Some(_) => assert_eq!(
                (answer.status, answer.body["field"].as_str()),
                (400, field),
                "{path}"
            ),
            // A value that is not UTF-8 is read with replacement characters: data like any other.
            None if path.ends_with("%FF") => assert_eq!(answer.status, 200, "{path}"),
            None => assert_eq!(answer.status, 400, "{path}"),
        }
    }
    // Unknown paths and methods.
    let missing = get(&server, "/v2/nothing").await;
    assert_eq!(
        (missing.status, missing.body["error"].as_str()),
        (404, Some("not_found"))
    );
    let wrong = call(&server, false, Method::DELETE, "/v1/check", None).await;
    assert_eq!(
        (wrong.status, wrong.body["error"].as_str()),
        (405, Some("method_not_allowed"))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_huge_requests_keep_memory_bounded() {
    // The real binary, so its memory is measured apart from the client's.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shop.yaml"), SHOP).unwrap();
    let api = common::free_port();
    let config = dir.path().to_str().unwrap();
    let server = Tollgate::serve(&[
        "--config",
        config,
        "--api-addr",
        &format!("127.0.0.1:{api}"),
    ])
    .await;
    let descriptors: Vec<Value> = (0..10_000)
        .map(|i| json!({"entries": [{"key": "user_id", "value": format!("{i:0>40}")}]}))
        .collect();
    let many = json!({"domain": "shop", "descriptors": descriptors}).to_string();
    let huge = format!(r#"{{"domain":"shop","pad":"{}"}}"#, "x".repeat(8 << 20));
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{api}/v1/check");
    let before = rss(server.child.id());
    for _ in 0..8 {
        let calls = (0..16).map(|i| {
            let body = if i % 2 == 0 {
                many.clone()
            } else {
                huge.clone()
            };
            client.post(&url).body(body).send()
        });
        for answer in futures_util::future::join_all(calls).await {
            let status = answer.unwrap().status().as_u16();
            assert!(matches!(status, 400 | 413), "{status}");
        }
    }
    let grown = rss(server.child.id()).saturating_sub(before);
    println!(
        "tollgate's RSS grew {} MiB over 128 huge requests, 16 at a time",
        grown >> 20
    );
    assert!(grown < 64 << 20, "RSS grew {} MiB", grown >> 20);
    server.stop();
}

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap()
        * 1024
}

// ---------------------------------------------------------------------------------------------
// Admin tokens.

#[tokio::test]
async fn management_needs_an_admin_token_and_never_hints_which_is_wrong() {
    let server = serve(&Backend::memory(), None).await;
    let url = format!("http://{}/v1/domains/saas/tenants", server.api.unwrap());
    let mut bodies = Vec::new();
    for authorization in [
        None,
        Some("Bearer wrong"),
        Some("Basic YWRtaW4="),
        Some("Bearer "),
        Some(TOKEN),
    ] {
        let mut request = reqwest::Client::new().get(&url);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{authorization:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        bodies.push(response.text().await.unwrap());
    }
    bodies.dedup();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    for path in [
        "/v1/audit",
        "/v1/domains/nowhere/tenants/x",
        "/v1/domains/saas/tenants/acme/usage",
    ] {
        assert_eq!(get(&server, path).await.status, 401, "{path}");
    }
    assert_eq!(
        admin(&server, Method::GET, "/v1/domains/saas/tenants", None)
            .await
            .status,
        200
    );
    // Checks and the document need no token.
    assert_eq!(get(&server, "/openapi.json").await.status, 200);
    server.stop().await;

    // Without a token file, management refuses everyone.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("saas.yaml"), saas("")).unwrap();
    let setup = Setup {
        api: ApiConfig {
            addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            ..ApiConfig::default()
        },
        ..Setup::default()
    };
    let server = start_in(dir, setup).await;
    assert_eq!(
        admin(&server, Method::GET, "/v1/domains/saas/tenants", None)
            .await
            .status,
        401
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Runtime tenants and keys.

/// A call that is refused: method, path, body, status and the field named.
type Refused = (
    Method,
    &'static str,
    Option<Value>,
    u16,
    Option<&'static str>,
);

async fn tenants_and_keys_work_through_ext_authz(backend: Backend) {
    let state = tempfile::tempdir().unwrap();
    let state_dir = matches!(backend, Backend::Memory).then(|| state.path());
    let server = serve(&backend, state_dir).await;
    assert_eq!(
        key_status(&server, ACME_KEY).await,
        200,
        "the file's tenant"
    );
    let key = tenant_with_key(&server, "initech", "free").await;
    let (status, tenant) = authz(server.grpc, &key, "/").await;
    assert_eq!(
        (status, tenant),
        (200, Some(("initech".into(), "free".into())))
    );
    // Its tier's limits apply: 5 a minute, 1 used.
    for _ in 0..4 {
        assert_eq!(key_status(&server, &key).await, 200);
    }
    assert_eq!(key_status(&server, &key).await, 429);
    let usage = admin(
        &server,
        Method::GET,
        "/v1/domains/saas/tenants/initech/usage?path=/v1/exports/a",
        None,
    )
    .await;
    assert_eq!(usage.status, 200, "{}", usage.body);
    assert_eq!(usage.body["tenant"], "initech");
    // Empty, not over: a check-only call is OK exactly at the limit.
    assert_eq!(usage.body["allowed"], true);
    let limits = usage.body["limits"].as_array().unwrap();
    assert_eq!(limits.len(), 2);
    assert_eq!(
        limits[0]["entries"],
        json!([{"key": "tier", "value": "free"}, {"key": "tenant", "value": "initech"}])
    );
    assert_eq!(
        (limits[0]["remaining"].as_u64(), limits[0]["code"].as_str()),
        (Some(0), Some("OK"))
    );
    assert_eq!(
        (
            limits[1]["remaining"].as_u64(),
            limits[1]["limit"]["name"].as_str()
        ),
        (Some(2), Some("exports"))
    );
    let without_path = admin(
        &server,
        Method::GET,
        "/v1/domains/saas/tenants/initech/usage",
        None,
    )
    .await;
    assert_eq!(
        without_path.body["limits"].as_array().unwrap().len(),
        1,
        "the path template is left out"
    );
    // Listed beside the files' tenant, read, changed.
    let list = admin(&server, Method::GET, "/v1/domains/saas/tenants", None).await;
    let listed: Vec<(&str, &str)> = list.body["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_str().unwrap(), t["source"].as_str().unwrap()))
        .collect();
    assert_eq!(listed, [("acme", "file"), ("initech", "api")]);
    let acme = &list.body["tenants"][0];
    assert_eq!(acme["keys"][0]["id"], &hash_key(ACME_KEY)[7..23]);
    let read = admin(
        &server,
        Method::GET,
        "/v1/domains/saas/tenants/initech",
        None,
    )
    .await;
    assert_eq!(
        (
            read.body["tier"].as_str(),
            read.body["labels"]["team"].as_str()
        ),
        (Some("free"), Some("billing"))
    );
    assert_eq!(read.body["error"], Value::Null);
    let key_id = read.body["keys"][0]["id"].as_str().unwrap().to_owned();
    let updated = admin(
        &server,
        Method::PUT,
        "/v1/domains/saas/tenants/initech",
        Some(json!({"tier": "pro"})),
    )
    .await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_eq!(updated.body["labels"], json!({}));
    until_key(&server, &key, 200).await;
    assert_eq!(
        authz(server.grpc, &key, "/").await.1,
        Some(("initech".into(), "pro".into()))
    );
    // A second key; the first deleted is refused, the second still works.
    let second = admin(
        &server,
        Method::POST,
        "/v1/domains/saas/tenants/initech/keys",
        None,
    )
    .await;
    let second_key = second.body["key"].as_str().unwrap().to_owned();
    let deleted = admin(
        &server,
        Method::DELETE,
        &format!("/v1/domains/saas/tenants/initech/keys/{key_id}"),
        None,
    )
    .await;
    assert_eq!(deleted.status, 204);
    assert_eq!(key_status(&server, &key).await, 401);
    assert_eq!(key_status(&server, &second_key).await, 200);
    let series =
        r#"tollgate_authz_checks_total{domain="saas",tenant="initech",tier="pro",result="ok"}"#;
    assert!(server.admin_get("/metrics").await.1.contains(series));
    // The tenant deleted: every key refused, its series gone.
    let gone = admin(
        &server,
        Method::DELETE,
        "/v1/domains/saas/tenants/initech",
        None,
    )
    .await;
    assert_eq!(gone.status, 204);
    assert_eq!(key_status(&server, &second_key).await, 401);
    assert_eq!(
        admin(
            &server,
            Method::GET,
            "/v1/domains/saas/tenants/initech",
            None
        )
        .await
        .status,
        404
    );
    // What cannot be done, and why.
    let refused: Vec<Refused> = vec![
        (
            Method::POST,
            "/v1/domains/saas/tenants",
            Some(json!({"id": "acme", "tier": "free"})),
            409,
            None,
        ),
        (
            Method::POST,
            "/v1/domains/saas/tenants",
            Some(json!({"id": "hooli", "tier": "gold"})),
            400,
            Some("tier"),
        ),
        (
            Method::POST,
            "/v1/domains/saas/tenants",
            Some(json!({"id": "ho oli", "tier": "free"})),
            400,
            Some("id"),
        ),
        (
            Method::POST,
            "/v1/domains/saas/tenants",
            Some(json!({"id": "hooli", "tier": "free", "labels": {"a b": "c"}})),
            400,
            Some("labels.a b"),
        ),
        (
            Method::POST,
            "/v1/domains/saas/tenants",
            Some(json!({"id": "hooli", "tier": "free", "plan": 1})),
            400,
            Some("plan"),
        ),
        (
            Method::POST,
            "/v1/domains/shop/tenants",
            Some(json!({"id": "hooli", "tier": "free"})),
            404,
            None,
        ),
        (
            Method::PUT,
            "/v1/domains/saas/tenants/acme",
            Some(json!({"tier": "pro"})),
            409,
            None,
        ),
        (
            Method::DELETE,
            "/v1/domains/saas/tenants/acme",
            None,
            409,
            None,
        ),
        (
            Method::POST,
            "/v1/domains/saas/tenants/acme/keys",
            None,
            409,
            None,
        ),
        (
            Method::POST,
            "/v1/domains/saas/tenants/nobody/keys",
            None,
            404,
            None,
        ),
        (
            Method::DELETE,
            "/v1/domains/saas/tenants/nobody",
            None,
            404,
            None,
        ),
        (
            Method::GET,
            "/v1/domains/saas/tenants/acme/usage?colour=red",
            None,
            400,
            Some("colour"),
        ),
    ];
    for (method, path, body, status, field) in refused {
        let answer = admin(&server, method.clone(), path, body.clone()).await;
        assert_eq!(
            answer.status, status,
            "{method} {path} {body:?}: {}",
            answer.body
        );
        assert_eq!(answer.body["field"].as_str(), field, "{method} {path}");
    }
    let twice = tenant_with_key(&server, "hooli", "free").await;
    let again = admin(
        &server,
        Method::POST,
        "/v1/domains/saas/tenants",
        Some(json!({"id": "hooli", "tier": "free"})),
    )
    .await;
    assert_eq!(again.status, 409);
    // The audit log: every change, who made it, never a key.
    let audit = admin(&server, Method::GET, "/v1/audit?limit=50", None).await;
    let entries = audit.body["entries"].as_array().unwrap();
    let actions: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["tenant"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("key_created", "hooli"),
            ("tenant_created", "hooli"),
            ("tenant_deleted", "initech"),
            ("key_deleted", "initech"),
            ("key_created", "initech"),
            ("tenant_updated", "initech"),
            ("key_created", "initech"),
            ("tenant_created", "initech"),
        ]
    );
    let who = format!("token:{}", &hash_key(TOKEN)[7..23]);
    assert!(entries.iter().all(|e| e["who"] == who.as_str()));
    assert_eq!(entries[4]["key_id"], second.body["id"]);
    // The deletion names the key it revoked: the one of initech's two not deleted before.
    let kept = [&entries[6]["key_id"], &entries[4]["key_id"]]
        .into_iter()
        .find(|id| **id != entries[3]["key_id"])
        .unwrap();
    assert_eq!(entries[2]["revoked_keys"], json!([kept]));
    let filtered = admin(&server, Method::GET, "/v1/audit?tenant=hooli&limit=1", None).await;
    assert_eq!(filtered.body["entries"].as_array().unwrap().len(), 1);
    assert_eq!(
        admin(&server, Method::GET, "/v1/audit?limit=0", None)
            .await
            .status,
        400
    );
    // Keys appear nowhere: not in the audit log, the metrics, nor the state file.
    let (_, metrics) = server.admin_get("/metrics").await;
    for key in [&key, &second_key, &twice] {
        assert!(!audit.body.to_string().contains(key.as_str()));
        assert!(!metrics.contains(key.as_str()));
        if let Some(dir) = state_dir {
            let saved = std::fs::read_to_string(dir.join("tenants.json")).unwrap();
            assert!(!saved.contains(key.as_str()));
            // Only hooli's key is still held: as its digest.
            assert_eq!(saved.contains(&hash_key(key)), key == &twice);
        }
    }
    assert!(
        !metrics.contains(series),
        "a deleted tenant's series are dropped"
    );
    let read: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("tollgate_tenants_read_timestamp_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(read > 1.7e9, "the runtime tenants were read: {read}");
    assert!(metrics.contains(r#"method="api_check""#));
    server.stop().await;
}

#[tokio::test]
async fn tenants_and_keys_work_through_ext_authz_in_memory() {
    tenants_and_keys_work_through_ext_authz(Backend::memory()).await;
}

#[tokio::test]
async fn tenants_and_keys_work_through_ext_authz_in_redis() {
    tenants_and_keys_work_through_ext_authz(Backend::strict()).await;
}

#[tokio::test]
async fn an_id_in_the_files_and_the_api_is_an_error_shown_on_both() {
    let server = serve(&Backend::memory(), None).await;
    let key = tenant_with_key(&server, "hooli", "free").await;
    assert_eq!(key_status(&server, &key).await, 200);
    // The files gain a tenant hooli of their own: theirs is in force, the API's is refused.
    let file_key = "hooli-file-key";
    let extra = format!(
        "    - id: hooli\n      tier: pro\n      api_keys: [\"{}\"]\n",
        hash_key(file_key)
    );
    std::fs::write(server.dir.join("saas.yaml"), saas(&extra)).unwrap();
    let (status, _) = server.admin_post("/reload", "").await;
    assert_eq!(status, 200);
    assert_eq!(key_status(&server, &key).await, 401);
    assert_eq!(
        authz(server.grpc, file_key, "/").await.1,
        Some(("hooli".into(), "pro".into()))
    );
    let read = admin(&server, Method::GET, "/v1/domains/saas/tenants/hooli", None).await;
    let error = read.body["error"].as_str().unwrap();
    assert!(
        error.contains("defined both in") && error.contains("saas.yaml"),
        "{error}"
    );
    let (_, config) = server.admin_get("/config").await;
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["tenant_errors"].as_array().unwrap().len(), 1);
    assert_eq!(config["tenant_errors"][0], error);
    // No key is handed out that ext_authz would refuse; its usage is the files' tenant's.
    let refused = admin(
        &server,
        Method::POST,
        "/v1/domains/saas/tenants/hooli/keys",
        None,
    )
    .await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(
        refused.body["message"]
            .as_str()
            .unwrap()
            .contains("defined both in")
    );
    let usage = admin(
        &server,
        Method::GET,
        "/v1/domains/saas/tenants/hooli/usage",
        None,
    )
    .await;
    assert_eq!(
        (usage.status, &usage.body["tier"]),
        (200, &Value::from("pro"))
    );
    // Deleting the API's resolves it.
    assert_eq!(
        admin(
            &server,
            Method::DELETE,
            "/v1/domains/saas/tenants/hooli",
            None
        )
        .await
        .status,
        204
    );
    let (_, config) = server.admin_get("/config").await;
    assert!(config.contains(r#""tenant_errors":[]"#), "{config}");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Persistence and replicas.

#[tokio::test]
async fn runtime_tenants_survive_a_restart_in_memory_mode_with_a_state_dir() {
    let state = tempfile::tempdir().unwrap();
    let server = serve(&Backend::memory(), Some(state.path())).await;
    let key = tenant_with_key(&server, "initech", "free").await;
    server.stop().await;
    let restarted = serve(&Backend::memory(), Some(state.path())).await;
    assert_eq!(
        authz(restarted.grpc, &key, "/").await.1,
        Some(("initech".into(), "free".into()))
    );
    let audit = admin(&restarted, Method::GET, "/v1/audit", None).await;
    assert_eq!(audit.body["entries"].as_array().unwrap().len(), 2);
    restarted.stop().await;
    // Without a state dir they live as long as the process.
    let server = serve(&Backend::memory(), None).await;
    let key = tenant_with_key(&server, "initech", "free").await;
    server.stop().await;
    let restarted = serve(&Backend::memory(), None).await;
    assert_eq!(key_status(&restarted, &key).await, 401);
    restarted.stop().await;
}

#[tokio::test]
async fn two_replicas_on_one_redis_see_each_others_changes() {
    let redis = RedisServer::start();
    replicas_see_each_others_changes(RedisSetup::strict(&redis.url())).await;
}

#[tokio::test]
async fn two_replicas_on_a_redis_cluster_see_each_others_changes() {
    let cluster = RedisCluster::start();
    let redis = RedisSetup {
        urls: cluster.urls(),
        cluster: true,
        ..RedisSetup::strict("")
    };
    replicas_see_each_others_changes(redis).await;
}

/// Two replicas counting in `redis` share runtime tenants, keys, budgets and the audit log; a
/// third, started later, reads them.
async fn replicas_see_each_others_changes(redis: RedisSetup) {
    let setup = || redis.clone().setup();
    let one = serve_with(setup(), None).await;
    let two = serve_with(setup(), None).await;
    let key = tenant_with_key(&one, "initech", "free").await;
    let seen = until_key(&two, &key, 200).await;
    let listed = admin(&two, Method::GET, "/v1/domains/saas/tenants/initech", None).await;
    assert_eq!(listed.status, 200);
    // One budget: the tier's 5 a minute, spent on both.
    let mut admitted = 0;
    for server in [&one, &two, &one, &two, &one, &two] {
        admitted += i32::from(key_status(server, &key).await == 200);
    }
    assert_eq!(admitted, 4, "5 a minute, 1 spent by the wait above");
    // Deleted on the second: refused by the first.
    let id = listed.body["keys"][0]["id"].as_str().unwrap().to_owned();
    let deleted = admin(
        &two,
        Method::DELETE,
        &format!("/v1/domains/saas/tenants/initech/keys/{id}"),
        None,
    )
    .await;
    assert_eq!(deleted.status, 204);
    let refused = until_key(&one, &key, 401).await;
    println!("seen by the other replica after {seen:?}; its deletion after {refused:?}");
    // Both read the one audit log; a restarted replica still has the tenant.
    let audit = admin(&one, Method::GET, "/v1/audit", None).await;
    assert_eq!(audit.body["entries"].as_array().unwrap().len(), 3);
    two.stop().await;
    let three = serve_with(setup(), None).await;
    let started = Instant::now();
    while admin(
        &three,
        Method::GET,
        "/v1/domains/saas/tenants/initech",
        None,
    )
    .await
    .status
        != 200
    {
        assert!(
            started.elapsed() < DEADLINE,
            "a new replica did not read the tenants"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    one.stop().await;
    three.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The OpenAPI document, checked by the tools of its ecosystem (installed by scripts/test).

#[tokio::test]
#[ignore = "needs openapi-spec-validator: run scripts/test"]
async fn the_openapi_document_validates() {
    let validator = tool(
        "TOLLGATE_OPENAPI_SPEC_VALIDATOR",
        ".venv/bin/openapi-spec-validator",
    );
    let server = serve(&Backend::memory(), None).await;
    let document = get(&server, "/openapi.json").await;
    assert_eq!(document.body["openapi"], "3.1.0");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, document.body.to_string()).unwrap();
    let out = std::process::Command::new(validator)
        .arg(&file)
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("OK"), "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs schemathesis: run scripts/test"]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_schema() {
    let schemathesis = tool("TOLLGATE_SCHEMATHESIS", ".venv/bin/schemathesis");
    let server = serve(&Backend::memory(), None).await;
    let api = server.api.unwrap();
    // Schemathesis keeps files where it runs: not in the repository.
    let scratch = tempfile::tempdir().unwrap();
    let cwd = scratch.path().to_owned();
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(schemathesis)
            .current_dir(cwd)
            .args(["run", &format!("http://{api}/openapi.json")])
            .args(["--url", &format!("http://{api}")])
            .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
            .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance"])
            .args(["--max-examples", "40", "--seed", "1", "--workers", "1"])
            .args(["--generation-database", "none", "--no-color"])
            .args(["--request-timeout", "10"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = output_text(&run);
    println!("{text}");
    assert!(run.status.success(), "schemathesis failed:\n{text}");
    server.stop().await;
}
