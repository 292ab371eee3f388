//! `GET /metrics`: exact per-limit counters after known traffic, service metrics, and bounded
//! cardinality, read back with a Prometheus text parser.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use common::scrape::{samples, value};
use common::{Setup, TestServer, descriptor, request, start, start_with};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use prometheus_parse::Sample;

const CONFIG: &str = r#"
domain: m
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: trial
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: path
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 100}
  - key: tenant
    descriptors:
      - key: route
        value: /v1/*
        rate_limit: {unit: minute, requests_per_unit: 100}
"#;

async fn scrape(s: &TestServer) -> Vec<Sample> {
    let response = reqwest::get(format!("http://{}/metrics", s.http))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    samples(&text)
}

fn limit(samples: &[Sample], what: &str, descriptor: &str) -> f64 {
    value(
        samples,
        &format!("tollgate_rate_limit_{what}_total"),
        &[("domain", "m"), ("descriptor", descriptor)],
    )
}

#[tokio::test]
async fn per_limit_counters_are_exact() {
    let mut s = start(CONFIG).await;
    // user: 11 hits of 1 on a limit of 10 (near threshold 8), then one of 3 for another user.
    for _ in 0..11 {
        s.call(request("m", vec![descriptor(&[("user", "alice")])]))
            .await;
    }
    let mut bulk = request("m", vec![descriptor(&[("user", "bob")])]);
    bulk.hits_addend = 3;
    s.call(bulk).await;
    // trial (shadow, limit 1): 3 hits, 2 of them over but let through.
    for _ in 0..3 {
        s.call(request("m", vec![descriptor(&[("trial", "t")])]))
            .await;
    }
    // path (detailed): one series per value.
    for path in ["/a", "/a", "/b"] {
        s.call(request("m", vec![descriptor(&[("path", path)])]))
            .await;
    }
    // nested wildcard: named by the configuration's pattern, whatever the route.
    for route in ["/v1/x", "/v1/y"] {
        s.call(request(
            "m",
            vec![descriptor(&[("tenant", "acme"), ("route", route)])],
        ))
        .await;
    }
    s.call(request("nowhere", vec![descriptor(&[("user", "x")])]))
        .await;
    s.call_err(request("", vec![descriptor(&[("user", "x")])]))
        .await;

    let m = scrape(&s).await;
    assert_eq!(limit(&m, "hits", "user"), 14.0);
    assert_eq!(limit(&m, "within_limit_hits", "user"), 13.0);
    assert_eq!(limit(&m, "over_limit_hits", "user"), 1.0);
    assert_eq!(
        limit(&m, "near_limit_hits", "user"),
        2.0,
        "the 9th and 10th of alice"
    );
    assert_eq!(limit(&m, "shadow_mode_hits", "user"), 0.0);

    assert_eq!(limit(&m, "hits", "trial"), 3.0);
    assert_eq!(limit(&m, "within_limit_hits", "trial"), 1.0);
    assert_eq!(limit(&m, "over_limit_hits", "trial"), 2.0);
    assert_eq!(limit(&m, "shadow_mode_hits", "trial"), 2.0);

    assert_eq!(limit(&m, "hits", "path_/a"), 2.0);
    assert_eq!(limit(&m, "hits", "path_/b"), 1.0);
    assert_eq!(limit(&m, "hits", "tenant.route_/v1/*"), 2.0);

    assert_eq!(
        value(&m, "tollgate_unknown_domain_requests_total", &[]),
        1.0
    );
    let calls = |code, result| {
        value(
            &m,
            "tollgate_calls_total",
            &[
                ("method", "ShouldRateLimit"),
                ("code", code),
                ("result", result),
            ],
        )
    };
    // The decision has its own label: an over-limit answer is a gRPC OK.
    let (ok, over) = (calls("OK", "ok"), calls("OK", "over_limit"));
    assert_eq!(ok + over, 21.0);
    assert!(over > 0.0, "some were over the limit");
    assert_eq!(calls("INVALID_ARGUMENT", "error"), 1.0);
    assert_eq!(
        value(&m, "tollgate_decision_duration_seconds_count", &[]),
        22.0
    );
    assert_eq!(
        value(&m, "tollgate_buckets", &[]),
        7.0,
        "alice, bob, trial, /a, /b, acme×2"
    );
    assert_eq!(value(&m, "tollgate_config_loads_total", &[]), 1.0);
    assert_eq!(value(&m, "tollgate_config_load_failures_total", &[]), 0.0);
    let version = s.reloader.status().version;
    assert_eq!(
        value(&m, "tollgate_config_info", &[("version", &version)]),
        1.0
    );
    assert!(value(&m, "tollgate_process_resident_memory_bytes", &[]) > 0.0);
    assert!(value(&m, "tollgate_process_open_fds", &[]) > 0.0);
    s.stop().await;
}

#[tokio::test]
async fn long_values_make_bounded_labels() {
    let mut s = start(CONFIG).await;
    let long = format!("/{}", "x".repeat(100_000));
    s.call(request("m", vec![descriptor(&[("path", &long)])]))
        .await;
    let m = scrape(&s).await;
    let label = m
        .iter()
        .find(|x| {
            x.metric == "tollgate_rate_limit_hits_total"
                && x.labels
                    .get("descriptor")
                    .is_some_and(|d| d.starts_with("path_/x"))
        })
        .and_then(|x| x.labels.get("descriptor"))
        .unwrap()
        .to_owned();
    assert!(label.len() <= 128, "{} bytes", label.len());
    assert!(label.contains('~'), "cut labels carry a hash: {label}");
    s.stop().await;
}

#[tokio::test]
async fn a_flood_of_unique_values_cannot_grow_the_metrics() {
    let mut s = start_with(
        CONFIG,
        Setup {
            max_metric_series: 1_000,
            ..Setup::default()
        },
    )
    .await;
    // 100 000 unique values of a detailed limit, 1 000 descriptors per request.
    for batch in 0..100 {
        let descriptors: Vec<RateLimitDescriptor> = (0..1_000)
            .map(|i| descriptor(&[("path", &format!("/flood/{batch}/{i}"))]))
            .collect();
        s.call(request("m", descriptors)).await;
    }
    let m = scrape(&s).await;
    let series = m
        .iter()
        .filter(|x| x.metric == "tollgate_rate_limit_hits_total")
        .count();
    assert_eq!(series, 1_001, "1 000 series and one overflow series");
    let folded = limit(&m, "hits", "__overflow__");
    assert_eq!(folded, 99_000.0);
    assert_eq!(
        value(&m, "tollgate_metric_series_overflow_hits_total", &[]),
        folded
    );
    let lines = m.len();
    assert!(lines < 10_000, "{lines} samples");

    // A configured limit still gets its own series after the cap is reached.
    s.call(request("m", vec![descriptor(&[("user", "late")])]))
        .await;
    let m = scrape(&s).await;
    assert_eq!(limit(&m, "hits", "user"), 1.0);
    assert_eq!(limit(&m, "hits", "__overflow__"), 99_000.0);
    s.stop().await;
}
