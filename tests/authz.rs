//! Envoy's ext_authz `envoy.service.auth.v3.Authorization/Check`, over a real gRPC connection:
//! API keys (header or Bearer token) → tenant → tier descriptors → the rate limit decision, and
//! the exact answers (401/403/429 bodies and headers, OK with tenant and RateLimit headers),
//! descriptor templates, shadow mode, domain selection, hot reload of tenants, one budget
//! shared with the rate limit service (memory and Redis), metrics, `validate` and `hash-key`.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::redis::RedisServer;
use common::scrape::{samples, total, value};
use common::{
    RedisSetup, Setup, TestServer, descriptor, eventually, request, start, start_in, start_with,
};
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code as RlsCode;
use prometheus_parse::Sample;
use tollgate::authz::hash_key;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
const DEADLINE: Duration = Duration::from_secs(10);
const SEC: Duration = Duration::from_secs(1);

const ACME_KEY: &str = "acme-live-3f9a1c";
const ACME_KEY_2: &str = "acme-rotated-77b2e0";
const GLOBEX_KEY: &str = "globex-live-c0ffee";
const INITECH_KEY: &str = "initech-live-5150";
const HOOLI_KEY: &str = "hooli-live-0042";
const UNKNOWN_KEY: &str = "not-a-known-key-9d8e";

const OVERWRITE: i32 = HeaderAppendAction::OverwriteIfExistsOrAdd as i32;

/// The 401 every missing, unknown or malformed key gets.
const UNAUTHORIZED_BODY: &str =
    r#"{"error":"unauthorized","message":"a valid API key is required"}"#;

/// Replaces `@acme@`, `@acme2@`, `@globex@`, `@initech@` and `@hooli@` with key digests.
fn with_keys(yaml: &str) -> String {
    yaml.replace("@acme@", &hash_key(ACME_KEY))
        .replace("@acme2@", &hash_key(ACME_KEY_2))
        .replace("@globex@", &hash_key(GLOBEX_KEY))
        .replace("@initech@", &hash_key(INITECH_KEY))
        .replace("@hooli@", &hash_key(HOOLI_KEY))
}

/// Domain `saas`: free tier `free_limit`/minute per tenant, pro 100/minute, exports 2/minute
/// per tenant (all export paths together: `share_threshold`) with a globex override of 5, and
/// an `internal` tier no limit covers. `options`
/// are extra lines of the `authorization:` section (indented two spaces).
fn saas(free_limit: u32, options: &str) -> String {
    with_keys(
        &r#"
domain: saas
descriptors:
  - key: tier
    value: free
    descriptors:
      - key: tenant
        rate_limit: {name: free, unit: minute, requests_per_unit: @free@}
  - key: tier
    value: pro
    descriptors:
      - key: tenant
        rate_limit: {name: pro, unit: minute, requests_per_unit: 100}
  - key: tenant
    descriptors:
      - key: path
        value: /v1/exports*
        share_threshold: true
        rate_limit: {name: exports, unit: minute, requests_per_unit: 2}
  - key: tenant
    value: globex
    descriptors:
      - key: path
        value: /v1/exports*
        share_threshold: true
        rate_limit: {name: exports_globex, unit: minute, requests_per_unit: 5}
authorization:
@options@  tiers:
    free:
      descriptors:
        - [{key: tier, from: tier}, {key: tenant, from: tenant}]
        - [{key: tenant, from: tenant}, {key: path, from: path}]
    pro:
      descriptors:
        - [{key: tier, value: pro}, {key: tenant, from: tenant}]
        - [{key: tenant, from: tenant}, {key: path, from: path}]
    internal:
      descriptors:
        - [{key: team, value: internal}]
  tenants:
    - id: acme
      tier: free
      api_keys: ["@acme@"]
    - id: globex
      tier: pro
      api_keys: ["@globex@"]
    - id: initech
      tier: internal
      api_keys: ["@initech@"]
"#
        .replace("@free@", &free_limit.to_string())
        .replace("@options@", options),
    )
}

// ---------------------------------------------------------------------------------------------
// Requests and answers.

/// A CheckRequest for an HTTP request; `domain` goes into `context_extensions`.
fn check_request(
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    domain: Option<&str>,
) -> CheckRequest {
    let http = HttpRequest {
        method: method.to_owned(),
        path: path.to_owned(),
        host: host.to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    };
    let context_extensions: HashMap<String, String> = domain
        .map(|d| ("domain".to_owned(), d.to_owned()))
        .into_iter()
        .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(http),
                ..Default::default()
            }),
            context_extensions,
            ..Default::default()
        }),
    }
}

/// `GET path` on api.example.com, with `x-api-key: key` when there is a key.
fn get(path: &str, key: Option<&str>) -> CheckRequest {
    let headers: Vec<(&str, &str)> = key.map(|k| ("x-api-key", k)).into_iter().collect();
    check_request("GET", path, "api.example.com", &headers, None)
}

/// An OK answer: headers added upstream (name, value, append action), headers removed
/// upstream, headers added to the response.
#[derive(Debug, Clone, PartialEq)]
struct Allowed {
    upstream: Vec<(String, String, i32)>,
    removed: Vec<String>,
    response: Vec<(String, String)>,
}

/// A denial: the CheckResponse's gRPC code, the HTTP status, headers and body.
#[derive(Debug, Clone, PartialEq)]
struct Denied {
    grpc: tonic::Code,
    status: i32,
    headers: Vec<(String, String)>,
    body: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Allowed(Allowed),
    Denied(Denied),
}

impl Answer {
    fn allowed(self) -> Allowed {
        match self {
            Answer::Allowed(allowed) => allowed,
            Answer::Denied(denied) => panic!("expected OK, got {denied:?}"),
        }
    }

    fn denied(self) -> Denied {
        match self {
            Answer::Denied(denied) => denied,
            Answer::Allowed(allowed) => panic!("expected a denial, got {allowed:?}"),
        }
    }

    /// The HTTP status Envoy would answer with (200: forwarded upstream).
    fn status(&self) -> i32 {
        match self {
            Answer::Allowed(_) => 200,
            Answer::Denied(denied) => denied.status,
        }
    }

    /// The `ratelimit` header the client sees, on an OK or a denial.
    fn rate_limit(&self) -> Option<String> {
        let headers = match self {
            Answer::Allowed(allowed) => &allowed.response,
            Answer::Denied(denied) => &denied.headers,
        };
        header(headers, "ratelimit").map(str::to_owned)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let mut found = headers.iter().filter(|(k, _)| k == name);
    let first = found.next().map(|(_, v)| v.as_str());
    assert!(found.next().is_none(), "{name} twice in {headers:?}");
    first
}

fn pairs(headers: &[HeaderValueOption]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            let h = h.header.as_ref().unwrap();
            (h.key.clone(), h.value.clone())
        })
        .collect()
}

fn owned(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn read(response: CheckResponse) -> Answer {
    let grpc = tonic::Code::from_i32(response.status.as_ref().unwrap().code);
    match response.http_response.unwrap() {
        HttpResponse::OkResponse(ok) => {
            assert_eq!(grpc, tonic::Code::Ok);
            assert!(
                ok.query_parameters_to_set.is_empty() && ok.query_parameters_to_remove.is_empty()
            );
            Answer::Allowed(Allowed {
                upstream: ok
                    .headers
                    .iter()
                    .map(|h| {
                        let v = h.header.as_ref().unwrap();
                        (v.key.clone(), v.value.clone(), h.append_action)
                    })
                    .collect(),
                removed: ok.headers_to_remove,
                response: pairs(&ok.response_headers_to_add),
            })
        }
        HttpResponse::DeniedResponse(denied) => {
            assert_ne!(grpc, tonic::Code::Ok);
            Answer::Denied(Denied {
                grpc,
                status: denied.status.unwrap().code,
                headers: pairs(&denied.headers),
                body: denied.body,
            })
        }
        HttpResponse::ErrorResponse(error) => panic!("unexpected error response {error:?}"),
    }
}

/// An ext_authz client of a test server.
struct Authz(AuthorizationClient<Channel>);

impl Authz {
    async fn connect(s: &TestServer) -> Self {
        Self(
            AuthorizationClient::connect(format!("http://{}", s.grpc))
                .await
                .unwrap(),
        )
    }

    /// Checks `request`, expecting a gRPC OK carrying an HTTP answer.
    async fn check(&mut self, request: CheckRequest) -> Answer {
        read(self.0.check(request).await.expect("gRPC OK").into_inner())
    }

    /// Checks `request`, expecting a gRPC error.
    async fn check_err(&mut self, request: CheckRequest) -> tonic::Status {
        self.0.check(request).await.expect_err("a gRPC error")
    }

    /// `GET path` with `x-api-key: key`.
    async fn get(&mut self, path: &str, key: &str) -> Answer {
        self.check(get(path, Some(key))).await
    }
}

/// The upstream headers of an allowed request of `tenant` in `tier`.
fn tenant_headers(tenant: &str, tier: &str) -> Vec<(String, String, i32)> {
    vec![
        ("x-tenant-id".to_owned(), tenant.to_owned(), OVERWRITE),
        ("x-tenant-tier".to_owned(), tier.to_owned(), OVERWRITE),
    ]
}

/// The RateLimit response headers: every policy, and the binding limit's state.
fn rate_limit_headers(
    policy: &str,
    name: &str,
    limit: u32,
    remaining: u32,
    reset: u64,
) -> Vec<(String, String)> {
    vec![
        ("ratelimit-policy".to_owned(), policy.to_owned()),
        (
            "ratelimit".to_owned(),
            format!("\"{name}\";r={remaining};t={reset}"),
        ),
        ("x-ratelimit-limit".to_owned(), limit.to_string()),
        ("x-ratelimit-remaining".to_owned(), remaining.to_string()),
        ("x-ratelimit-reset".to_owned(), reset.to_string()),
    ]
}

/// The exact 429 of a denial by `name`.
fn too_many(policy: &str, name: &str, limit: u32, reset: u64, retry: u64) -> Denied {
    let mut headers = owned(&[("content-type", "application/json")]);
    headers.extend(rate_limit_headers(policy, name, limit, 0, reset));
    headers.push(("retry-after".to_owned(), retry.to_string()));
    Denied {
        grpc: tonic::Code::ResourceExhausted,
        status: 429,
        headers,
        body: format!(
            r#"{{"error":"rate_limited","message":"quota exceeded","retry_after_seconds":{retry}}}"#
        ),
    }
}

fn unauthorized() -> Denied {
    unauthorized_with("ApiKey")
}

/// The 401, with the challenge for the key's header (`Bearer` for `authorization`).
fn unauthorized_with(challenge: &str) -> Denied {
    Denied {
        grpc: tonic::Code::Unauthenticated,
        status: 401,
        headers: owned(&[
            ("content-type", "application/json"),
            ("www-authenticate", challenge),
        ]),
        body: UNAUTHORIZED_BODY.to_owned(),
    }
}

const FREE_POLICY: &str = r#""free";q=3;w=60"#;

// ---------------------------------------------------------------------------------------------
// 1. Keys.

#[tokio::test]
async fn a_missing_or_unknown_key_gets_one_and_the_same_401() {
    let s = start(&saas(3, "")).await;
    let mut authz = Authz::connect(&s).await;
    let missing = authz.check(get("/v1/items", None)).await.denied();
    assert_eq!(missing, unauthorized());

    // Byte for byte the same CheckResponse, whatever is wrong with the key.
    let raw_missing = authz.0.check(get("/v1/items", None)).await.unwrap();
    let raw_missing = raw_missing.into_inner();
    for request in [
        get("/v1/items", Some(UNKNOWN_KEY)),
        get("/v1/items", Some("")),
        get("/v1/items", Some("   ")),
        // Almost right: another case, a digest instead of the key, a key with a suffix.
        get("/v1/items", Some(&ACME_KEY.to_uppercase())),
        get("/v1/items", Some(&hash_key(ACME_KEY))),
        get("/v1/items", Some(&format!("{ACME_KEY}x"))),
        // The right key in the wrong header.
        check_request(
            "GET",
            "/v1/items",
            "api.example.com",
            &[("authorization", &format!("Bearer {ACME_KEY}"))],
            None,
        ),
    ] {
        let answer = authz.0.check(request).await.unwrap().into_inner();
        assert_eq!(answer, raw_missing);
    }

    // Surrounding whitespace is not part of the key; nothing was counted for the 401s.
    let ok = authz.get("/v1/items", &format!(" {ACME_KEY} ")).await;
    assert_eq!(
        ok.rate_limit().as_deref(),
        Some(r#""free";r=2;t=20"#),
        "the first counted request"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_bearer_token_is_read_from_the_authorization_header() {
    // The header name is matched case-insensitively, as Envoy lower-cases header names.
    let s = start(&saas(
        3,
        "  api_key_header: Authorization\n  strip_api_key: true\n",
    ))
    .await;
    let mut authz = Authz::connect(&s).await;
    let with = |value: String| {
        check_request(
            "GET",
            "/v1/items",
            "api.example.com",
            &[("authorization", &value)],
            None,
        )
    };
    let ok = authz
        .check(with(format!("Bearer {ACME_KEY}")))
        .await
        .allowed();
    assert_eq!(
        ok,
        Allowed {
            upstream: tenant_headers("acme", "free"),
            removed: vec!["authorization".to_owned()],
            response: rate_limit_headers(FREE_POLICY, "free", 3, 2, 20),
        }
    );
    // The scheme is case-insensitive and extra spaces do not matter.
    let ok = authz
        .check(with(format!("bearer   {ACME_KEY}")))
        .await
        .allowed();
    assert_eq!(ok.upstream, tenant_headers("acme", "free"));

    let raw_401 = authz.0.check(get("/v1/items", None)).await.unwrap();
    let raw_401 = raw_401.into_inner();
    assert_eq!(
        read(raw_401.clone()),
        Answer::Denied(unauthorized_with("Bearer"))
    );
    for value in [
        format!("Basic {ACME_KEY}"),
        ACME_KEY.to_owned(),
        "Bearer".to_owned(),
        "Bearer ".to_owned(),
        format!("Bearer {UNKNOWN_KEY}"),
    ] {
        let answer = authz.0.check(with(value.clone())).await.unwrap();
        assert_eq!(answer.into_inner(), raw_401, "{value}");
    }
    // x-api-key is not read when the header is `authorization`.
    let answer = authz.check(get("/v1/items", Some(ACME_KEY))).await;
    assert_eq!(answer, Answer::Denied(unauthorized_with("Bearer")));
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Allowed requests.

#[tokio::test]
async fn an_allowed_request_gets_tenant_headers_and_rate_limit_headers() {
    let s = start(&saas(3, "  strip_api_key: true\n")).await;
    let mut authz = Authz::connect(&s).await;
    // A client cannot choose its tenant: the headers overwrite whatever it sent.
    let spoofed = check_request(
        "GET",
        "/v1/items?page=2",
        "api.example.com",
        &[
            ("x-api-key", ACME_KEY),
            ("x-tenant-id", "globex"),
            ("x-tenant-tier", "pro"),
        ],
        None,
    );
    assert_eq!(
        authz.check(spoofed).await.allowed(),
        Allowed {
            upstream: tenant_headers("acme", "free"),
            removed: vec!["x-api-key".to_owned()],
            response: rate_limit_headers(FREE_POLICY, "free", 3, 2, 20),
        }
    );

    // Two limits: every policy is listed, and `ratelimit` names the one closest to running
    // out (pro: 99 left, refilling one token per 0.6 s; exports_globex: 4 left, 12 s each).
    assert_eq!(
        authz.get("/v1/exports/7", GLOBEX_KEY).await.allowed(),
        Allowed {
            upstream: tenant_headers("globex", "pro"),
            removed: vec!["x-api-key".to_owned()],
            response: rate_limit_headers(
                r#""pro";q=100;w=60, "exports_globex";q=5;w=60"#,
                "exports_globex",
                5,
                4,
                12,
            ),
        }
    );
    // Equal remaining: the first limit in the tier's order binds.
    assert_eq!(
        authz
            .get("/v1/exports/1", ACME_KEY)
            .await
            .allowed()
            .response,
        rate_limit_headers(r#""free";q=3;w=60, "exports";q=2;w=60"#, "free", 3, 1, 40)
    );
    s.stop().await;
}

#[tokio::test]
async fn the_key_header_is_kept_without_strip_api_key() {
    let s = start(&saas(3, "  strip_api_key: false\n")).await;
    let mut authz = Authz::connect(&s).await;
    assert_eq!(
        authz.get("/v1/items", ACME_KEY).await.allowed(),
        Allowed {
            upstream: tenant_headers("acme", "free"),
            removed: vec![],
            response: rate_limit_headers(FREE_POLICY, "free", 3, 2, 20),
        }
    );
    // The default is to keep it too.
    let s2 = start(&saas(3, "")).await;
    let mut authz2 = Authz::connect(&s2).await;
    assert!(
        authz2
            .get("/v1/items", ACME_KEY)
            .await
            .allowed()
            .removed
            .is_empty()
    );
    s.stop().await;
    s2.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Over quota.

#[tokio::test]
async fn over_quota_is_429_with_retry_after_and_the_clock_admits_again() {
    let s = start(&saas(3, "")).await;
    let mut authz = Authz::connect(&s).await;
    for (remaining, reset) in [(2, 20), (1, 40), (0, 60)] {
        let ok = authz.get("/v1/items", ACME_KEY).await.allowed();
        assert_eq!(
            ok.response,
            rate_limit_headers(FREE_POLICY, "free", 3, remaining, reset)
        );
    }
    // Half a second later a token is 19.5 s away and the bucket full in 59.5 s: both are
    // rounded up.
    s.clock.advance(Duration::from_millis(500));
    let expected = too_many(FREE_POLICY, "free", 3, 60, 20);
    for _ in 0..3 {
        assert_eq!(
            authz.get("/v1/items", ACME_KEY).await.denied(),
            expected,
            "denials take nothing, so they stay the same"
        );
    }
    // Other tenants have their own budget.
    assert_eq!(authz.get("/v1/items", GLOBEX_KEY).await.status(), 200);

    s.clock.advance(Duration::from_millis(19_499));
    assert_eq!(
        authz.get("/v1/items", ACME_KEY).await.denied(),
        too_many(FREE_POLICY, "free", 3, 41, 1),
        "1 ms before the token"
    );
    s.clock.advance(Duration::from_millis(1));
    assert_eq!(
        authz.get("/v1/items", ACME_KEY).await.allowed().response,
        rate_limit_headers(FREE_POLICY, "free", 3, 0, 60)
    );
    assert_eq!(
        authz.get("/v1/items", ACME_KEY).await.denied(),
        too_many(FREE_POLICY, "free", 3, 60, 20)
    );
    s.clock.advance(60 * SEC);
    for _ in 0..3 {
        assert_eq!(authz.get("/v1/items", ACME_KEY).await.status(), 200);
    }
    assert_eq!(authz.get("/v1/items", ACME_KEY).await.status(), 429);
    s.stop().await;
}

#[tokio::test]
async fn a_denied_check_consumes_nothing_from_any_descriptor() {
    let s = start(&saas(3, "")).await;
    let mut authz = Authz::connect(&s).await;
    let both = r#""free";q=3;w=60, "exports";q=2;w=60"#;
    // exports: 2 a minute over all export paths; free: 3.
    assert_eq!(
        authz.get("/v1/exports/a", ACME_KEY).await.rate_limit(),
        Some(r#""exports";r=1;t=30"#.to_owned())
    );
    assert_eq!(
        authz.get("/v1/exports/b", ACME_KEY).await.rate_limit(),
        Some(r#""exports";r=0;t=60"#.to_owned())
    );
    // The third export is denied by exports, although free has a token left...
    assert_eq!(
        authz.get("/v1/exports/c", ACME_KEY).await.denied(),
        too_many(both, "exports", 2, 60, 30)
    );
    // ...which it still has: the denied check took nothing from free.
    assert_eq!(
        authz.get("/v1/items", ACME_KEY).await.allowed().response,
        rate_limit_headers(FREE_POLICY, "free", 3, 0, 60)
    );
    assert_eq!(
        authz.get("/v1/items", ACME_KEY).await.denied(),
        too_many(FREE_POLICY, "free", 3, 60, 20)
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Descriptor templates and overrides.

const TEMPLATES: &str = r#"
domain: tpl
descriptors:
  - key: path
    value: /v1/search
    rate_limit: {name: search, unit: minute, requests_per_unit: 1}
  - key: method
    value: POST
    rate_limit: {name: writes, unit: minute, requests_per_unit: 1}
  - key: host
    value: eu.example.com
    rate_limit: {name: eu, unit: minute, requests_per_unit: 1}
  - key: client
    rate_limit: {name: per_client, unit: minute, requests_per_unit: 1}
authorization:
  tiers:
    basic:
      descriptors:
        - [{key: path, from: path}]
        - [{key: method, from: method}]
        - [{key: host, from: host}]
        - [{key: client, from: "header:X-Client"}]
  tenants:
    - {id: acme, tier: basic, api_keys: ["@acme@"]}
"#;

#[tokio::test]
async fn descriptors_take_path_method_host_and_header_values() {
    let s = start(&with_keys(TEMPLATES)).await;
    let mut authz = Authz::connect(&s).await;
    let key = ("x-api-key", ACME_KEY);
    let mut send = async |method: &str, path: &str, host: &str, client: Option<&str>| {
        let mut headers = vec![key];
        headers.extend(client.map(|c| ("x-client", c)));
        authz
            .check(check_request(method, path, host, &headers, None))
            .await
    };
    let us = "us.example.com";

    // No limit matches, and the absent x-client leaves its descriptor out (sent with an empty
    // value it would match `client` and be counted).
    for _ in 0..3 {
        assert_eq!(
            send("GET", "/v1/other", us, None).await.allowed().response,
            vec![],
            "no RateLimit headers without a limit"
        );
    }

    // from: path, without the query string or fragment.
    let first = send("GET", "/v1/search?q=rust", us, None).await.allowed();
    assert_eq!(
        first.response,
        rate_limit_headers(r#""search";q=1;w=60"#, "search", 1, 0, 60)
    );
    assert_eq!(
        send("GET", "/v1/search?q=go&page=2", us, None)
            .await
            .denied(),
        too_many(r#""search";q=1;w=60"#, "search", 1, 60, 60)
    );
    assert_eq!(send("GET", "/v1/search#top", us, None).await.status(), 429);
    assert_eq!(
        send("GET", "/v1/search/advanced", us, None).await.status(),
        200
    );

    // from: method.
    assert_eq!(
        send("POST", "/v1/other", us, None).await.rate_limit(),
        Some(r#""writes";r=0;t=60"#.to_owned())
    );
    assert_eq!(
        send("POST", "/v1/other", us, None).await.rate_limit(),
        Some(r#""writes";r=0;t=60"#.to_owned()),
        "denied by writes"
    );
    assert_eq!(send("POST", "/v1/x", us, None).await.status(), 429);
    assert_eq!(send("PUT", "/v1/x", us, None).await.status(), 200);

    // from: host.
    let eu = "eu.example.com";
    assert_eq!(send("GET", "/v1/other", eu, None).await.status(), 200);
    assert_eq!(
        send("GET", "/v1/other", eu, None).await.denied(),
        too_many(r#""eu";q=1;w=60"#, "eu", 1, 60, 60)
    );

    // from: header:X-Client (configured in any case, read lower-case).
    assert_eq!(
        send("GET", "/v1/other", us, Some("c1"))
            .await
            .allowed()
            .response,
        rate_limit_headers(r#""per_client";q=1;w=60"#, "per_client", 1, 0, 60)
    );
    assert_eq!(send("GET", "/v1/other", us, Some("c1")).await.status(), 429);
    assert_eq!(send("GET", "/v1/other", us, Some("c2")).await.status(), 200);
    assert_eq!(send("GET", "/v1/other", us, None).await.status(), 200);

    // Every template at once: all four policies, the first denying one binds.
    let all = r#""search";q=1;w=60, "writes";q=1;w=60, "eu";q=1;w=60, "per_client";q=1;w=60"#;
    let denied = send("POST", "/v1/search?x=1", eu, Some("c3"))
        .await
        .denied();
    assert_eq!(denied, too_many(all, "search", 1, 60, 60));
    s.stop().await;
}

/// `GET /v1/other` with its headers only in `header_map` (Envoy's `encode_raw_headers: true`),
/// as raw bytes, one entry per header line.
fn raw_headers_request(lines: &[(&str, &[u8])]) -> CheckRequest {
    let mut request = check_request("GET", "/v1/other", "us.example.com", &[], None);
    let http = request
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .unwrap();
    http.header_map = Some(HeaderMap {
        headers: lines
            .iter()
            .map(|(key, raw)| HeaderValue {
                key: (*key).to_owned(),
                raw_value: raw.to_vec(),
                ..Default::default()
            })
            .collect(),
    });
    request
}

#[tokio::test]
async fn raw_headers_from_encode_raw_headers_are_read_like_headers() {
    let s = start(&with_keys(TEMPLATES)).await;
    let mut authz = Authz::connect(&s).await;
    let key = ("x-api-key", ACME_KEY.as_bytes());

    assert_eq!(authz.check(raw_headers_request(&[])).await.status(), 401);
    let allowed = authz
        .check(raw_headers_request(&[key, ("x-client", &b"c1"[..])]))
        .await
        .allowed();
    assert_eq!(
        allowed.response,
        rate_limit_headers(r#""per_client";q=1;w=60"#, "per_client", 1, 0, 60)
    );
    // The status of a check from acme with these x-client lines.
    let mut status = async |clients: &[&[u8]]| {
        let mut lines = vec![key];
        lines.extend(clients.iter().map(|c| ("x-client", *c)));
        authz.check(raw_headers_request(&lines)).await.status()
    };
    // Two lines of one header are one value, joined with ',' as Envoy joins `headers`: it is
    // another client than either line alone.
    assert_eq!(status(&[b"c1", b"c2"]).await, 200);
    assert_eq!(status(&[b"c1", b"c2"]).await, 429);
    assert_eq!(status(&[b"c1,c2"]).await, 429);
    // Each byte that is not UTF-8 becomes one '!', as Envoy writes them into `headers`; valid
    // UTF-8 stays as it is.
    assert_eq!(status(&[b"caf\xe9"]).await, 200);
    assert_eq!(status(&[b"caf!"]).await, 429);
    assert_eq!(status(&[b"\xe2\x82"]).await, 200);
    assert_eq!(status(&[b"!!"]).await, 429);
    assert_eq!(status(&["caf\u{e9}".as_bytes()]).await, 200);
    s.stop().await;
}

#[tokio::test]
async fn a_tenant_override_beats_the_default() {
    let s = start(&saas(100, "")).await;
    let mut authz = Authz::connect(&s).await;
    // Default exports limit: 2 a minute.
    for _ in 0..2 {
        assert_eq!(authz.get("/v1/exports", ACME_KEY).await.status(), 200);
    }
    let denied = authz.get("/v1/exports?format=csv", ACME_KEY).await.denied();
    assert_eq!(
        denied,
        too_many(
            r#""free";q=100;w=60, "exports";q=2;w=60"#,
            "exports",
            2,
            60,
            30
        )
    );
    // globex's own node (key: tenant, value: globex): 5 a minute.
    for remaining in (0..5).rev() {
        let path = format!("/v1/exports/{remaining}");
        let ok = authz.get(&path, GLOBEX_KEY).await.allowed();
        assert_eq!(
            header(&ok.response, "x-ratelimit-remaining"),
            Some(remaining.to_string().as_str())
        );
        assert_eq!(header(&ok.response, "x-ratelimit-limit"), Some("5"));
    }
    assert_eq!(
        authz.get("/v1/exports/new", GLOBEX_KEY).await.denied(),
        too_many(
            r#""pro";q=100;w=60, "exports_globex";q=5;w=60"#,
            "exports_globex",
            5,
            60,
            12
        )
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Requests no limit covers.

#[tokio::test]
async fn a_request_no_limit_covers_is_allowed_or_403_with_deny_unlimited() {
    let s = start(&saas(3, "")).await;
    let mut authz = Authz::connect(&s).await;
    for _ in 0..5 {
        assert_eq!(
            authz.get("/v1/items", INITECH_KEY).await.allowed(),
            Allowed {
                upstream: tenant_headers("initech", "internal"),
                removed: vec![],
                response: vec![],
            }
        );
    }
    s.stop().await;

    let s = start(&saas(3, "  deny_unlimited: true\n")).await;
    let mut authz = Authz::connect(&s).await;
    let forbidden = Denied {
        grpc: tonic::Code::PermissionDenied,
        status: 403,
        headers: owned(&[("content-type", "application/json")]),
        body: r#"{"error":"forbidden","message":"no quota covers this request"}"#.to_owned(),
    };
    assert_eq!(
        authz.get("/v1/items", INITECH_KEY).await.denied(),
        forbidden
    );
    // A tenant with limits is unaffected, and a bad key is still a 401, not a 403.
    assert_eq!(
        authz.get("/v1/items", ACME_KEY).await.allowed().upstream,
        tenant_headers("acme", "free")
    );
    assert_eq!(
        authz.get("/v1/items", UNKNOWN_KEY).await.denied(),
        unauthorized()
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 6. Shadow mode.

const SHADOW: &str = r#"
domain: trial
descriptors:
  - key: plan
    value: trial
    descriptors:
      - key: tenant
        shadow_mode: true
        rate_limit: {name: trial, unit: minute, requests_per_unit: 1}
authorization:
  tiers:
    trial:
      descriptors:
        - [{key: plan, value: trial}, {key: tenant, from: tenant}]
  tenants:
    - {id: acme, tier: trial, api_keys: ["@acme@"]}
"#;

#[tokio::test]
async fn a_shadow_mode_limit_counts_but_never_denies() {
    let s = start(&with_keys(SHADOW)).await;
    let mut authz = Authz::connect(&s).await;
    let policy = r#""trial";q=1;w=60"#;
    for _ in 0..3 {
        let ok = authz.get("/v1/items", ACME_KEY).await.allowed();
        assert_eq!(ok.upstream, tenant_headers("acme", "trial"));
        assert_eq!(
            ok.response,
            rate_limit_headers(policy, "trial", 1, 0, 60),
            "the headers still tell the truth"
        );
    }
    let m = scrape(&s).await;
    let per_limit = |what: &str| {
        value(
            &m,
            &format!("tollgate_rate_limit_{what}_total"),
            &[("domain", "trial"), ("descriptor", "plan_trial.tenant")],
        )
    };
    assert_eq!(per_limit("hits"), 3.0);
    assert_eq!(per_limit("within_limit_hits"), 1.0);
    assert_eq!(per_limit("over_limit_hits"), 2.0);
    assert_eq!(per_limit("shadow_mode_hits"), 2.0);
    assert_eq!(checks(&m, "trial", "acme", "trial", "ok"), 3.0);
    assert_eq!(checks(&m, "trial", "acme", "trial", "over_limit"), 0.0);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 7. Which domain serves a check.

/// Domain `name` whose single tenant `tenant` (tier `t`) holds ACME_KEY.
fn tenant_domain(name: &str, tenant: &str) -> String {
    with_keys(&format!(
        "domain: {name}\ndescriptors:\n  - key: t\n    rate_limit: {{name: {name}, unit: minute, requests_per_unit: 10}}\nauthorization:\n  tiers:\n    t:\n      descriptors: [[{{key: t, value: x}}]]\n  tenants:\n    - {{id: {tenant}, tier: t, api_keys: [\"@acme@\"]}}\n"
    ))
}

const PLAIN: &str = "domain: plain\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 1}\n";

async fn start_files(files: &[(&str, &str)]) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    for (name, yaml) in files {
        std::fs::write(dir.path().join(name), yaml).unwrap();
    }
    start_in(dir, Setup::default()).await
}

fn in_domain(domain: Option<&str>) -> CheckRequest {
    check_request(
        "GET",
        "/",
        "api.example.com",
        &[("x-api-key", ACME_KEY)],
        domain,
    )
}

#[tokio::test]
async fn with_several_authorization_domains_the_route_names_one() {
    let s = start_files(&[
        ("alpha.yaml", &tenant_domain("alpha", "alpha-co")),
        ("beta.yaml", &tenant_domain("beta", "beta-co")),
        ("plain.yaml", PLAIN),
    ])
    .await;
    let mut authz = Authz::connect(&s).await;
    let status = authz.check_err(in_domain(None)).await;
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("context_extensions"),
        "{status:?}"
    );
    // The same key is a different tenant in each domain.
    let alpha = authz.check(in_domain(Some("alpha"))).await.allowed();
    assert_eq!(alpha.upstream[0].1, "alpha-co");
    assert_eq!(
        alpha.response,
        rate_limit_headers(r#""alpha";q=10;w=60"#, "alpha", 10, 9, 6)
    );
    let beta = authz.check(in_domain(Some("beta"))).await.allowed();
    assert_eq!(beta.upstream, tenant_headers("beta-co", "t"));
    // A domain without an authorization section, or none at all, cannot serve a check.
    for domain in ["plain", "nowhere", ""] {
        let status = authz.check_err(in_domain(Some(domain))).await;
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{domain}");
    }
    let m = scrape(&s).await;
    let calls = |code| {
        total(
            &m,
            "tollgate_calls_total",
            &[("method", "Check"), ("code", code)],
        )
    };
    assert_eq!((calls("OK"), calls("FAILED_PRECONDITION")), (2.0, 4.0));
    assert_eq!(checks(&m, "alpha", "alpha-co", "t", "ok"), 1.0);
    assert_eq!(checks(&m, "beta", "beta-co", "t", "ok"), 1.0);
    s.stop().await;
}

#[tokio::test]
async fn the_only_authorization_domain_serves_checks_that_name_none() {
    let s = start_files(&[
        ("alpha.yaml", &tenant_domain("alpha", "alpha-co")),
        ("plain.yaml", PLAIN),
    ])
    .await;
    let mut authz = Authz::connect(&s).await;
    let ok = authz.check(in_domain(None)).await.allowed();
    assert_eq!(ok.upstream, tenant_headers("alpha-co", "t"));
    let status = authz.check_err(in_domain(Some("plain"))).await;
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    s.stop().await;

    // No authorization domain at all.
    let s = start(PLAIN).await;
    let mut authz = Authz::connect(&s).await;
    for domain in [None, Some("plain")] {
        let status = authz.check_err(in_domain(domain)).await;
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{domain:?}");
    }
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 8. Hot reload.

/// Writes `limits.yaml` atomically (write aside, rename over), as a deploy tool would.
fn replace_config(s: &TestServer, yaml: &str) {
    let aside = s.dir.join(".limits.yaml.tmp");
    std::fs::write(&aside, yaml).unwrap();
    std::fs::rename(&aside, s.dir.join("limits.yaml")).unwrap();
}

/// `saas(3, "")` with acme's key rotated to ACME_KEY_2 and a new tenant hooli (free).
fn rotated() -> String {
    saas(3, "").replace(
        &format!("api_keys: [\"{}\"]", hash_key(ACME_KEY)),
        &format!("api_keys: [\"{}\"]", hash_key(ACME_KEY_2)),
    ) + &with_keys("    - id: hooli\n      tier: free\n      api_keys: [\"@hooli@\"]\n")
}

#[tokio::test]
async fn a_revoked_key_is_refused_after_a_watched_reload_and_a_new_tenant_admitted() {
    let s = start_with(
        &saas(3, ""),
        Setup {
            watch: true,
            ..Setup::default()
        },
    )
    .await;
    let mut authz = Authz::connect(&s).await;
    assert_eq!(authz.get("/v1/items", ACME_KEY).await.status(), 200);
    assert_eq!(authz.get("/v1/items", HOOLI_KEY).await.status(), 401);

    let before = s.reloader.status().version;
    replace_config(&s, &rotated());
    let reloader = s.reloader.clone();
    assert!(
        eventually(DEADLINE, || reloader.status().version != before).await,
        "no reload within {DEADLINE:?}: {:?}",
        s.reloader.status()
    );
    assert_eq!(s.reloader.status().loaded_by, "file change");

    // The revoked key is refused at once, exactly like an unknown one.
    assert_eq!(
        authz.get("/v1/items", ACME_KEY).await.denied(),
        unauthorized()
    );
    // The new key is acme's, with acme's bucket kept across the reload.
    let ok = authz.get("/v1/items", ACME_KEY_2).await.allowed();
    assert_eq!(ok.upstream, tenant_headers("acme", "free"));
    assert_eq!(
        header(&ok.response, "ratelimit"),
        Some(r#""free";r=1;t=40"#)
    );
    // The new tenant has its own budget.
    let ok = authz.get("/v1/items", HOOLI_KEY).await.allowed();
    assert_eq!(ok.upstream, tenant_headers("hooli", "free"));
    assert_eq!(
        header(&ok.response, "ratelimit"),
        Some(r#""free";r=2;t=20"#)
    );
    s.stop().await;
}

#[tokio::test]
async fn post_reload_applies_tenants_and_a_bad_section_keeps_the_old_ones() {
    let s = start(&saas(3, "")).await;
    let mut authz = Authz::connect(&s).await;
    std::fs::write(s.dir.join("limits.yaml"), rotated()).unwrap();
    assert_eq!(
        authz.get("/v1/items", ACME_KEY).await.status(),
        200,
        "nothing changes until asked"
    );
    let (status, body) = s.admin_post("/reload", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(authz.get("/v1/items", ACME_KEY).await.status(), 401);
    assert_eq!(authz.get("/v1/items", HOOLI_KEY).await.status(), 200);

    // An unknown tier fails the reload; the tenants in force stay.
    let bad = rotated().replace("id: hooli\n      tier: free", "id: hooli\n      tier: gold");
    std::fs::write(s.dir.join("limits.yaml"), bad).unwrap();
    let (status, body) = s.admin_post("/reload", "").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("authorization: tenant 'hooli' has unknown tier 'gold'"),
        "{body}"
    );
    assert_eq!(authz.get("/v1/items", HOOLI_KEY).await.status(), 200);
    assert_eq!(authz.get("/v1/items", ACME_KEY_2).await.status(), 200);
    assert_eq!(authz.get("/v1/items", ACME_KEY).await.status(), 401);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 9. One budget for ext_authz and the rate limit service.

fn rls_acme() -> envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest {
    request(
        "saas",
        vec![descriptor(&[("tier", "free"), ("tenant", "acme")])],
    )
}

/// Two via RLS (on `rls`), two via ext_authz (on `authz`), then the fifth is denied both ways.
async fn one_budget(rls: &mut TestServer, authz: &mut Authz) {
    for remaining in [3, 2] {
        let r = rls.call(rls_acme()).await;
        assert_eq!(r.overall_code, RlsCode::Ok as i32);
        assert_eq!(r.statuses[0].limit_remaining, remaining);
    }
    for remaining in [1, 0] {
        let ok = authz.get("/v1/items", ACME_KEY).await.allowed();
        assert_eq!(
            header(&ok.response, "x-ratelimit-remaining"),
            Some(remaining.to_string().as_str())
        );
    }
    let policy = r#""free";q=4;w=60"#;
    for _ in 0..2 {
        assert_eq!(
            authz.get("/v1/items", ACME_KEY).await.denied(),
            too_many(policy, "free", 4, 60, 15)
        );
        let r = rls.call(rls_acme()).await;
        assert_eq!(r.overall_code, RlsCode::OverLimit as i32);
        assert_eq!(r.statuses[0].limit_remaining, 0);
    }
}

#[tokio::test]
async fn ext_authz_and_rls_share_one_budget_in_memory() {
    let mut s = start(&saas(4, "")).await;
    let mut authz = Authz::connect(&s).await;
    one_budget(&mut s, &mut authz).await;
    // Refilled for both.
    s.advance(15 * SEC);
    assert_eq!(authz.get("/v1/items", ACME_KEY).await.status(), 200);
    let r = s.call(rls_acme()).await;
    assert_eq!(r.overall_code, RlsCode::OverLimit as i32);
    s.stop().await;
}

#[tokio::test]
async fn ext_authz_and_rls_share_one_budget_in_redis_across_replicas() {
    let redis = RedisServer::start();
    let setup = || RedisSetup::strict(&redis.url()).setup();
    // RLS on one replica, ext_authz on another: the budget lives in Redis.
    let mut rls = start_with(&saas(4, ""), setup()).await;
    let other = start_with(&saas(4, ""), setup()).await;
    let mut authz = Authz::connect(&other).await;
    one_budget(&mut rls, &mut authz).await;
    let mut authz_here = Authz::connect(&rls).await;
    assert_eq!(authz_here.get("/v1/items", ACME_KEY).await.status(), 429);
    assert_ne!(
        redis.cli(&["DBSIZE"]),
        "0",
        "the buckets are in Redis, not in the replicas' memory"
    );
    rls.stop().await;
    other.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 10. Metrics.

async fn scrape_text(s: &TestServer) -> String {
    let (status, text) = s.admin_get("/metrics").await;
    assert_eq!(status, 200);
    text
}

async fn scrape(s: &TestServer) -> Vec<Sample> {
    samples(&scrape_text(s).await)
}

fn checks(samples: &[Sample], domain: &str, tenant: &str, tier: &str, result: &str) -> f64 {
    value(
        samples,
        "tollgate_authz_checks_total",
        &[
            ("domain", domain),
            ("tenant", tenant),
            ("tier", tier),
            ("result", result),
        ],
    )
}

#[tokio::test]
async fn checks_are_counted_by_tenant_and_result_and_keys_never_appear() {
    let s = start(&saas(3, "  deny_unlimited: true\n")).await;
    let mut authz = Authz::connect(&s).await;
    for _ in 0..3 {
        assert_eq!(authz.get("/v1/items", ACME_KEY).await.status(), 200);
    }
    assert_eq!(authz.get("/v1/items", ACME_KEY).await.status(), 429);
    assert_eq!(authz.get("/v1/items", GLOBEX_KEY).await.status(), 200);
    assert_eq!(authz.get("/v1/items", INITECH_KEY).await.status(), 403);
    assert_eq!(authz.check(get("/v1/items", None)).await.status(), 401);
    for _ in 0..2 {
        assert_eq!(authz.get("/v1/items", UNKNOWN_KEY).await.status(), 401);
    }

    let text = scrape_text(&s).await;
    let m = scrape(&s).await;
    assert_eq!(checks(&m, "saas", "acme", "free", "ok"), 3.0);
    assert_eq!(checks(&m, "saas", "acme", "free", "over_limit"), 1.0);
    assert_eq!(checks(&m, "saas", "globex", "pro", "ok"), 1.0);
    assert_eq!(checks(&m, "saas", "initech", "internal", "forbidden"), 1.0);
    assert_eq!(checks(&m, "saas", "", "", "unauthorized"), 3.0);
    let series: Vec<_> = m
        .iter()
        .filter(|s| s.metric == "tollgate_authz_checks_total")
        .collect();
    assert_eq!(series.len(), 5, "{series:?}");
    assert!(
        text.contains(
            "tollgate_authz_checks_total{domain=\"saas\",tenant=\"acme\",tier=\"free\",result=\"ok\"} 3\n"
        ),
        "{text}"
    );
    assert_eq!(
        total(
            &m,
            "tollgate_calls_total",
            &[("method", "Check"), ("code", "OK")]
        ),
        9.0
    );
    // The limits counted what ext_authz sent: acme's 3 + 1 denied, globex's 1.
    assert_eq!(
        value(
            &m,
            "tollgate_rate_limit_hits_total",
            &[("domain", "saas"), ("descriptor", "tier_free.tenant")]
        ),
        4.0
    );
    for secret in [ACME_KEY, GLOBEX_KEY, INITECH_KEY, UNKNOWN_KEY] {
        assert!(!text.contains(secret), "{secret} in /metrics:\n{text}");
        let digest = hash_key(secret);
        assert!(!text.contains(&digest[7..]), "{digest} in /metrics");
    }
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 11. The binary: validate and hash-key.

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn hash_key_cli(stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn hash_key_prints_the_digest_of_the_key_on_stdin() {
    let secret = "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";
    assert_eq!(hash_key("secret"), secret);
    for input in [&b"secret\n"[..], b"secret", b"secret\r\n"] {
        let out = hash_key_cli(input);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("{secret}\n"));
        assert_eq!(text(&out.stderr), "");
    }
    // The same digest as the library's, which the server compares against.
    let out = hash_key_cli(format!("{ACME_KEY}\n").as_bytes());
    assert_eq!(text(&out.stdout), format!("{}\n", hash_key(ACME_KEY)));

    for input in [&b""[..], b"\n"] {
        let out = hash_key_cli(input);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(text(&out.stdout), "");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("no key on stdin"), "{stderr}");
    }
}

#[test]
fn validate_reports_a_bad_authorization_section_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("limits.yaml");
    std::fs::write(
        &file,
        r#"domain: bad
descriptors:
  - key: tier
    rate_limit: {unit: minute, requests_per_unit: 1}
authorization:
  tiers:
    free:
      descriptors:
        - [{key: tier, from: cookie}]
  tenants:
    - id: acme
      tier: gold
      api_keys: ["sha256:abc"]
"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    let stderr = text(&out.stderr);
    let at = |line: u32| format!("error: {}:{line}: authorization: ", file.display());
    let expected = [
        format!(
            "{}tier 'free': entry 'tier': unknown from 'cookie' (expected tenant, tier, method, path, host or header:NAME)",
            at(9)
        ),
        format!("{}tenant 'acme' has unknown tier 'gold'", at(12)),
        format!(
            "{}tenant 'acme': api key #1 is not sha256:<64 hex digits> (make one with `tollgate hash-key`)",
            at(13)
        ),
    ];
    for line in &expected {
        assert!(
            stderr.lines().any(|l| l == line),
            "missing {line:?} in:\n{stderr}"
        );
    }
    assert!(stderr.ends_with("3 problem(s) found\n"), "{stderr}");

    // An unknown key in the section is a schema error with its own line.
    std::fs::write(
        &file,
        "domain: bad\nauthorization:\n  strip_key: true\n  tenants: []\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:3:", file.display())) && stderr.contains("strip_key"),
        "{stderr}"
    );

    // A good section validates.
    std::fs::write(&file, saas(3, "  strip_api_key: true\n")).unwrap();
    let out = Command::new(BIN)
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[tokio::test]
async fn the_saas_example_serves_its_demo_keys() {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/config/saas.yaml"
    ))
    .unwrap();
    let s = start(&yaml).await;
    let mut authz = Authz::connect(&s).await;
    let free = authz.get("/v1/items", "demo-free-key").await.allowed();
    assert_eq!(free.upstream, tenant_headers("acme", "free"));
    assert_eq!(free.removed, vec!["x-api-key".to_owned()]);
    let pro = authz.get("/v1/items", "demo-pro-key").await.allowed();
    assert_eq!(pro.upstream, tenant_headers("globex", "pro"));
    assert_eq!(
        authz.get("/v1/items", "demo-nope-key").await.denied(),
        unauthorized()
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 12. Shaping: max_delay holds a request until it conforms instead of denying it.

const SHAPED: &str = r#"
domain: shaped
descriptors:
  - key: tenant
    rate_limit: {name: smooth, unit: second, requests_per_unit: 10, burst: 2, max_delay: 500ms}
  - key: strict_tenant
    rate_limit: {name: strict, unit: second, requests_per_unit: 10, burst: 1, max_delay: 50ms}
authorization:
  tiers:
    smooth:
      descriptors: [[{key: tenant, from: tenant}]]
    strict:
      descriptors: [[{key: strict_tenant, from: tenant}]]
  tenants:
    - {id: acme, tier: smooth, api_keys: ["@acme@"]}
    - {id: globex, tier: strict, api_keys: ["@globex@"]}
"#;

#[tokio::test]
async fn max_delay_holds_a_request_until_it_conforms() {
    let s = start(&with_keys(SHAPED)).await;
    let mut authz = Authz::connect(&s).await;
    for _ in 0..2 {
        assert_eq!(authz.get("/", ACME_KEY).await.status(), 200);
    }
    // The third waits for a token (100 ms away, within 500 ms): it is held, not denied.
    let mut held = Authz::connect(&s).await;
    let pending = tokio::spawn(async move { held.get("/", ACME_KEY).await.status() });
    let held_now = || async { value(&scrape(&s).await, "tollgate_authz_held_requests", &[]) };
    let end = tokio::time::Instant::now() + DEADLINE;
    while held_now().await != 1.0 {
        assert!(
            tokio::time::Instant::now() < end,
            "the request was never held"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !pending.is_finished(),
        "answered while the clock stood still"
    );
    s.clock.advance(Duration::from_millis(100));
    let status = tokio::time::timeout(DEADLINE, pending)
        .await
        .expect("the held request is answered once its token is due")
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(held_now().await, 0.0);
    // Only final decisions are counted: three admitted, nothing over the limit.
    let samples = scrape(&s).await;
    let hits = |what: &str| {
        value(
            &samples,
            &format!("tollgate_rate_limit_{what}_total"),
            &[("domain", "shaped"), ("descriptor", "tenant")],
        )
    };
    assert_eq!((hits("hits"), hits("over_limit")), (3.0, 0.0));
    s.stop().await;
}

#[tokio::test]
async fn a_wait_longer_than_max_delay_is_denied_at_once() {
    let s = start(&with_keys(SHAPED)).await;
    let mut authz = Authz::connect(&s).await;
    assert_eq!(authz.get("/", GLOBEX_KEY).await.status(), 200);
    // The next token is 100 ms away, more than its 50 ms max_delay: denied without waiting.
    let started = std::time::Instant::now();
    assert_eq!(authz.get("/", GLOBEX_KEY).await.status(), 429);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "denied at once, not after a hold"
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Key guessing: failed keys per client address, counted with tollgate's own limiter.

/// `get(path, key)` from client address `address`.
fn get_from(path: &str, key: Option<&str>, address: &str) -> CheckRequest {
    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer;
    let mut request = get(path, key);
    let attributes = request.attributes.as_mut().unwrap();
    attributes.source = Some(Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: address.to_owned(),
                ..Default::default()
            })),
        }),
        ..Default::default()
    });
    request
}

#[tokio::test]
async fn a_client_past_its_failed_key_limit_gets_429_without_its_key_being_read() {
    let s = start(&saas(
        100,
        "  failed_keys: {requests_per_unit: 3, unit: minute}\n",
    ))
    .await;
    let mut authz = Authz::connect(&s).await;
    let guesser = "203.0.113.7";
    for guess in ["a", "b", "c"] {
        let denied = authz
            .check(get_from("/", Some(guess), guesser))
            .await
            .denied();
        assert_eq!(denied.status, 401, "guess {guess}");
    }
    // Past the limit: even the right key is not looked at.
    let locked = authz
        .check(get_from("/", Some(ACME_KEY), guesser))
        .await
        .denied();
    assert_eq!(locked.status, 429);
    assert!(
        locked.headers.iter().any(|(name, _)| name == "retry-after"),
        "{locked:?}"
    );
    // Other addresses are not affected.
    authz
        .check(get_from("/", Some(ACME_KEY), "198.51.100.1"))
        .await
        .allowed();
    // A refilled token later, the right key works again.
    s.advance(Duration::from_secs(20));
    authz
        .check(get_from("/", Some(ACME_KEY), guesser))
        .await
        .allowed();
    let m = scrape(&s).await;
    assert_eq!(
        value(
            &m,
            "tollgate_authz_checks_total",
            &[
                ("domain", "saas"),
                ("tenant", ""),
                ("tier", ""),
                ("result", "too_many_failed_keys")
            ]
        ),
        1.0
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Dynamic metadata for Envoy: the tenant's limit as a rate limit rule can read it.

#[tokio::test]
async fn a_tenants_limit_is_returned_as_dynamic_metadata_for_a_rate_limit_override() {
    use envoy_types::pb::google::protobuf::Value;
    use envoy_types::pb::google::protobuf::value::Kind;
    let s = start(&saas(10, "")).await;
    let mut authz = Authz::connect(&s).await;
    let text = |t: &str| Value {
        kind: Some(Kind::StringValue(t.to_owned())),
    };
    let checked = authz
        .0
        .check(get("/v1/items", Some(ACME_KEY)))
        .await
        .unwrap();
    let metadata = checked.into_inner().dynamic_metadata.unwrap().fields;
    assert_eq!(metadata["tenant"], text("acme"));
    assert_eq!(metadata["tier"], text("free"));
    let Some(Kind::StructValue(total)) = &metadata["total_limit"].kind else {
        panic!("total_limit is a struct: {metadata:?}");
    };
    assert_eq!(
        total.fields["requests_per_unit"].kind,
        Some(Kind::NumberValue(10.0))
    );
    assert_eq!(
        total.fields["unit"],
        text("MINUTE"),
        "an envoy.type.v3.RateLimitUnit name"
    );
    let unknown = authz
        .0
        .check(get("/v1/items", Some(UNKNOWN_KEY)))
        .await
        .unwrap();
    assert!(
        unknown.into_inner().dynamic_metadata.is_none(),
        "no tenant, nothing to say"
    );
    s.stop().await;
}
