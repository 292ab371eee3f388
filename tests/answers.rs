//! Answers as the reference service gives them, through the real gRPC API: the limit closest
//! to running out as response headers, dynamic metadata with the matched limits' `metadata`,
//! `limit_remaining` 0 when over, fixed-window resets in whole seconds, global quota mode, and
//! gRPC health for the service name `ratelimit`.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::time::Duration;

use common::{Setup, TestServer, descriptor, request, start_with};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, UInt64Value, Value};
use tollgate::protocol::answers::{Answers, HeaderNames};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

const OK: i32 = Code::Ok as i32;
const OVER: i32 = Code::OverLimit as i32;

const CONFIG: &str = r#"
domain: api
descriptors:
  - key: user
    metadata: {tier: {name: gold}, route: a}
    rate_limit: {name: per_user, unit: minute, requests_per_unit: 3}
  - key: path
    metadata: {tier: {weight: 2}, route: b}
    rate_limit: {unit: hour, requests_per_unit: 100}
  - key: window
    rate_limit: {unit: minute, requests_per_unit: 5, algorithm: fixed_window}
"#;

async fn serve(answers: Answers) -> TestServer {
    let setup = Setup {
        answers,
        ..Setup::default()
    };
    start_with(CONFIG, setup).await
}

fn headers(response: &RateLimitResponse) -> Vec<(String, String)> {
    response
        .response_headers_to_add
        .iter()
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect()
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn yaml_struct(text: &str) -> Struct {
    let value: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
    match tollgate::protocol::answers::from_yaml(&value).kind {
        Some(Kind::StructValue(s)) => s,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn response_headers_describe_the_limit_closest_to_running_out() {
    let mut s = serve(Answers {
        headers: Some(HeaderNames::default()),
        ..Answers::default()
    })
    .await;
    let both = || {
        request(
            "api",
            vec![descriptor(&[("user", "u")]), descriptor(&[("path", "/x")])],
        )
    };
    let r = s.call(both()).await;
    assert_eq!(
        headers(&r),
        owned(&[
            ("RateLimit-Limit", "3"),
            ("RateLimit-Remaining", "2"),
            ("RateLimit-Reset", "20")
        ])
    );
    s.call(both()).await;
    s.call(both()).await;
    let denied = s.call(both()).await;
    assert_eq!(denied.overall_code, OVER);
    assert_eq!(
        headers(&denied),
        owned(&[
            ("RateLimit-Limit", "3"),
            ("RateLimit-Remaining", "0"),
            ("RateLimit-Reset", "60")
        ])
    );
    let none = s
        .call(request("api", vec![descriptor(&[("nothing", "x")])]))
        .await;
    assert!(
        none.response_headers_to_add.is_empty(),
        "no limit, no headers"
    );
    s.stop().await;

    let mut s = serve(Answers {
        headers: Some(HeaderNames {
            limit: "X-Limit".to_owned(),
            remaining: "X-Left".to_owned(),
            reset: "X-Reset".to_owned(),
        }),
        ..Answers::default()
    })
    .await;
    let r = s
        .call(request("api", vec![descriptor(&[("path", "/x")])]))
        .await;
    assert_eq!(
        headers(&r),
        owned(&[("X-Limit", "100"), ("X-Left", "99"), ("X-Reset", "36")])
    );
    s.stop().await;

    let mut s = serve(Answers::default()).await;
    let r = s
        .call(request("api", vec![descriptor(&[("user", "u")])]))
        .await;
    assert!(r.response_headers_to_add.is_empty() && r.dynamic_metadata.is_none());
    s.stop().await;
}

#[tokio::test]
async fn dynamic_metadata_carries_the_request_and_the_metadata_of_limits_not_over() {
    let mut s = serve(Answers {
        dynamic_metadata: true,
        ..Answers::default()
    })
    .await;
    let mut both = request(
        "api",
        vec![descriptor(&[("user", "u")]), descriptor(&[("path", "/x")])],
    );
    both.hits_addend = 1;
    both.descriptors[1].hits_addend = Some(UInt64Value { value: 2 });
    let expected = |metadata: &str| {
        yaml_struct(&format!(
            r#"{{domain: api, hitsAddend: 1, descriptors: [{{entries: ["user=u"]}}, {{entries: ["path=/x"], hitsAddend: 2}}], metadata: {metadata}}}"#
        ))
    };
    let r = s.call(both.clone()).await;
    assert_eq!(
        r.dynamic_metadata.unwrap(),
        expected("{tier: {name: gold, weight: 2}, route: a}"),
        "merged in descriptor order, the first value of a key kept"
    );
    s.call(request("api", vec![descriptor(&[("user", "u")])]))
        .await;
    s.call(request("api", vec![descriptor(&[("user", "u")])]))
        .await;
    let mut over = both.clone();
    over.descriptors[1].hits_addend = None;
    let r = s.call(over).await;
    assert_eq!(r.overall_code, OVER);
    let metadata = r.dynamic_metadata.unwrap();
    assert_eq!(
        metadata.fields["metadata"],
        Value {
            kind: Some(Kind::StructValue(yaml_struct(
                "{tier: {weight: 2}, route: b}"
            )))
        },
        "the limit over has no say"
    );
    s.stop().await;
}

#[tokio::test]
async fn over_the_limit_nothing_remains_and_windows_reset_on_whole_seconds() {
    let mut s = serve(Answers::default()).await;
    let mut costly = request("api", vec![descriptor(&[("user", "u")])]);
    costly.hits_addend = 5;
    let r = s.call(costly).await;
    assert_eq!(
        (
            r.overall_code,
            r.statuses[0].code,
            r.statuses[0].limit_remaining
        ),
        (OVER, OVER, 0),
        "3 were left, 5 asked: over, and reported as nothing left"
    );
    s.advance(Duration::from_millis(10_300));
    let r = s
        .call(request("api", vec![descriptor(&[("window", "w")])]))
        .await;
    let reset = r.statuses[0].duration_until_reset.unwrap();
    assert_eq!(
        (reset.seconds, reset.nanos),
        (50, 0),
        "49.7 s to the window's end, reported as the reference does"
    );
    s.stop().await;
}

#[tokio::test]
async fn global_quota_mode_denies_only_when_every_limit_is_over() {
    let setup = Setup {
        quota_mode: true,
        ..Setup::default()
    };
    let mut s = start_with(CONFIG, setup).await;
    let both = || {
        request(
            "api",
            vec![descriptor(&[("user", "u")]), descriptor(&[("path", "/x")])],
        )
    };
    for _ in 0..3 {
        s.call(both()).await;
    }
    let r = s.call(both()).await;
    assert_eq!(
        (r.overall_code, r.statuses[0].code, r.statuses[1].code),
        (OK, OVER, OK)
    );
    s.stop().await;
}

#[tokio::test]
async fn grpc_health_answers_for_ratelimit_as_the_reference_does() {
    let s = serve(Answers::default()).await;
    let mut health = s.health_client().await;
    for service in [
        "",
        "ratelimit",
        "envoy.service.ratelimit.v3.RateLimitService",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    s.stop().await;
}
