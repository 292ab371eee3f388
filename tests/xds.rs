//! Limits over xDS: a tonic ADS server in the test pushes `RateLimitConfig` versions to a real
//! tollgate (in process, on free ports), which compiles each like files, ACKs or NACKs it,
//! reconnects when the server goes away, and shows the version in `GET /config`.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::time::Duration;

use common::ads::AdsServer;
use common::pki::Pki;
use common::{Setup, TestServer, codes, one, request, start_with};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::google::protobuf::UInt64Value;
use tollgate::tls::ClientTls;
use tollgate::xds::resource::{
    RateLimitConfig, RateLimitDescriptor, RateLimitPolicy, RateLimitUnit,
};
use tollgate::xds::{Retry, XdsOptions, server_uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

const OK: i32 = Code::Ok as i32;
const OVER: i32 = Code::OverLimit as i32;

/// Domain `api`: `user` at `per_minute` a minute,
/// `blocked` at 0.
fn limits(per_minute: u32) -> RateLimitConfig {
    let policy = |unit: RateLimitUnit, requests_per_unit| RateLimitPolicy {
        unit: unit as i32,
        requests_per_unit,
        ..Default::default()
    };
    RateLimitConfig {
        name: "api-limits".to_owned(),
        domain: "api".to_owned(),
        descriptors: vec![
            RateLimitDescriptor {
                key: "user".to_owned(),
                rate_limit: Some(policy(RateLimitUnit::Minute, per_minute)),
                ..Default::default()
            },
            RateLimitDescriptor {
                key: "blocked".to_owned(),
                rate_limit: Some(policy(RateLimitUnit::Second, 0)),
                ..Default::default()
            },
        ],
    }
}

/// Subscription options for `ads`, retrying fast.
fn options(ads: &AdsServer) -> XdsOptions {
    XdsOptions {
        retry: Retry {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
        },
        ..XdsOptions::new(
            server_uri(&ads.addr.to_string(), false).unwrap(),
            "envoy-ratelimit",
        )
    }
}

async fn tollgate(xds: XdsOptions) -> TestServer {
    let setup = Setup {
        xds: Some(xds),
        ..Setup::default()
    };
    // No configuration file: the limits come over xDS.
    start_with("", setup).await
}

async fn remaining(s: &mut TestServer, user: &str) -> u32 {
    let mut check = request("api", one("user", user));
    check.descriptors[0].hits_addend = Some(UInt64Value { value: 0 });
    s.call(check).await.statuses[0].limit_remaining
}

async fn status(s: &TestServer) -> serde_json::Value {
    serde_json::from_str(&s.admin_get("/config").await.1).unwrap()
}

#[tokio::test]
async fn a_pushed_version_is_served_acked_and_shown_in_get_config() {
    let mut ads = AdsServer::start().await;
    let nonce = ads.push("v1", &[limits(3)]);
    let mut s = tollgate(options(&ads)).await;

    let subscription = ads.request(|r| r.node.is_some()).await;
    assert_eq!(subscription.node.unwrap().id, "envoy-ratelimit");
    assert_eq!(subscription.type_url, tollgate::xds::resource::TYPE_URL);
    assert!(
        subscription.resource_names.is_empty(),
        "a wildcard subscription"
    );
    ads.acked("v1", &nonce).await;

    for _ in 0..3 {
        assert_eq!(
            s.call(request("api", one("user", "u"))).await.overall_code,
            OK
        );
    }
    assert_eq!(
        s.call(request("api", one("user", "u"))).await.overall_code,
        OVER
    );

    let config = status(&s).await;
    assert_eq!(config["xds"]["version_info"], "v1");
    assert_eq!(config["xds"]["node_id"], "envoy-ratelimit");
    assert_eq!(config["xds"]["connected"], true);
    assert_eq!(config["xds"]["acks"], 1);
    assert_eq!(config["loaded_by"], "xDS push");
    assert_eq!(config["files"], serde_json::json!(["xds:api-limits"]));
    assert_eq!(config["domains"], serde_json::json!(["api"]));
    let (code, body) = s.admin_post("/reload", "").await;
    assert_eq!(code, 409, "{body}");
    s.stop().await;
}

#[tokio::test]
async fn an_update_keeps_the_buckets_and_an_invalid_version_is_nacked_with_its_errors() {
    let mut ads = AdsServer::start().await;
    let first = ads.push("v1", &[limits(3)]);
    let mut s = tollgate(options(&ads)).await;
    ads.acked("v1", &first).await;
    s.call(request("api", one("user", "u"))).await;
    s.call(request("api", one("user", "u"))).await;
    assert_eq!(remaining(&mut s, "u").await, 1);

    let second = ads.push("v2", &[limits(5)]);
    ads.acked("v2", &second).await;
    assert_eq!(
        remaining(&mut s, "u").await,
        3,
        "what was counted stays counted, as on a file reload"
    );

    let mut broken = limits(10);
    broken.descriptors[0].rate_limit.as_mut().unwrap().unit = RateLimitUnit::Unknown as i32;
    let third = ads.push("v3", &[broken]);
    let nack = ads.nacked(&third).await;
    assert_eq!(nack.version_info, "v2", "the NACK names the version kept");
    let error = nack.error_detail.unwrap();
    assert_eq!(error.code, 3, "INVALID_ARGUMENT");
    assert_eq!(
        error.message,
        "xds:api-limits: descriptor 'api.user': invalid rate limit unit 'UNKNOWN' (expected one of second, minute, hour, day, week, month, year)"
    );
    assert_eq!(remaining(&mut s, "u").await, 3, "v2 stays in force");
    let config = status(&s).await;
    assert_eq!(config["xds"]["version_info"], "v2");
    assert_eq!(config["xds"]["nacks"], 1);
    assert_eq!(config["last_error"]["trigger"], "xDS push");
    let (_, metrics) = s.admin_get("/metrics").await;
    for series in [
        "tollgate_xds_connected 1.0",
        r#"tollgate_xds_versions_total{result="ack"} 2"#,
        r#"tollgate_xds_versions_total{result="nack"} 1"#,
    ] {
        assert!(
            metrics.lines().any(|line| line == series),
            "{series}:\n{metrics}"
        );
    }

    // A valid version clears the error.
    let fourth = ads.push("v4", &[limits(5)]);
    ads.acked("v4", &fourth).await;
    let config = status(&s).await;
    assert!(config["last_error"].is_null(), "{config}");
    assert_eq!(config["xds"]["version_info"], "v4");
    s.stop().await;
}

#[tokio::test]
async fn a_lost_server_is_reconnected_and_its_state_taken_again() {
    let mut ads = AdsServer::start().await;
    let first = ads.push("v1", &[limits(3)]);
    let port = ads.addr.port();
    let mut s = tollgate(options(&ads)).await;
    ads.acked("v1", &first).await;
    s.call(request("api", one("user", "u"))).await;
    ads.stop().await;
    assert!(
        common::eventually(Duration::from_secs(20), || {
            s.reloader.status().xds.is_some_and(|xds| !xds.connected)
        })
        .await,
        "the lost stream is seen"
    );
    assert_eq!(
        remaining(&mut s, "u").await,
        2,
        "the limits in force stay meanwhile"
    );

    let mut ads = AdsServer::start_on(port, None).await;
    let again = ads.push("v2", &[limits(5)]);
    let resubscription = ads.request(|r| r.node.is_some()).await;
    assert_eq!(
        resubscription.version_info, "v1",
        "a reconnection says which version it holds"
    );
    ads.acked("v2", &again).await;
    assert_eq!(remaining(&mut s, "u").await, 4);
    assert!(s.reloader.status().xds.unwrap().connected);
    s.stop().await;
}

#[tokio::test]
async fn without_start_without_config_nothing_is_answered_before_the_first_version() {
    let mut ads = AdsServer::start().await;
    let mut s = tollgate(options(&ads)).await;
    ads.request(|r| r.node.is_some()).await;
    // Asked before any version exists: answered only once v1 is in force.
    let mut client = s.client.clone();
    let early = tokio::spawn(async move {
        client
            .should_rate_limit(request("api", one("blocked", "x")))
            .await
            .unwrap()
            .into_inner()
    });
    let nonce = ads.push("v1", &[limits(3)]);
    ads.acked("v1", &nonce).await;
    assert_eq!(codes(&early.await.unwrap()), (OVER, vec![OVER]));
    assert_eq!(
        s.call(request("api", one("blocked", "x")))
            .await
            .overall_code,
        OVER
    );
    s.stop().await;
}

#[tokio::test]
async fn with_start_without_config_everything_passes_until_the_first_version() {
    let mut ads = AdsServer::start().await;
    let mut s = tollgate(XdsOptions {
        start_without_config: true,
        ..options(&ads)
    })
    .await;
    let before = s.call(request("api", one("blocked", "x"))).await;
    assert_eq!(
        codes(&before),
        (OK, vec![OK]),
        "no limits yet: the domain is unknown"
    );
    assert_eq!(status(&s).await["loads"], 0);
    let nonce = ads.push("v1", &[limits(3)]);
    ads.acked("v1", &nonce).await;
    assert_eq!(
        s.call(request("api", one("blocked", "x")))
            .await
            .overall_code,
        OVER
    );
    s.stop().await;
}

#[tokio::test]
async fn with_unhealthy_until_first_config_health_waits_for_the_first_version() {
    let mut ads = AdsServer::start().await;
    let s = tollgate(XdsOptions {
        start_without_config: true,
        unhealthy_until_loaded: true,
        ..options(&ads)
    })
    .await;
    let health = s.health_client().await;
    let status = |name: &str| {
        let mut health = health.clone();
        let request = HealthCheckRequest {
            service: name.to_owned(),
        };
        async move { health.check(request).await.unwrap().into_inner().status }
    };
    for name in ["", "ratelimit"] {
        assert_eq!(
            status(name).await,
            ServingStatus::NotServing as i32,
            "{name:?}"
        );
    }
    let (code, text) = s.admin_get("/healthcheck").await;
    assert_eq!(code, 500, "{text}");
    let nonce = ads.push("v1", &[limits(3)]);
    ads.acked("v1", &nonce).await;
    // Serving once the version is in force: watched, not polled.
    let mut watch = health
        .clone()
        .watch(HealthCheckRequest {
            service: "ratelimit".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let next = tokio::time::timeout_at(deadline, watch.message()).await;
        let answer = next.expect("serving within 5 s").unwrap().unwrap();
        if answer.status == ServingStatus::Serving as i32 {
            break;
        }
    }
    assert_eq!(status("").await, ServingStatus::Serving as i32);
    assert_eq!(s.admin_get("/healthcheck").await.0, 200);
    s.stop().await;
}

#[tokio::test]
async fn the_xds_server_is_reached_over_mutual_tls() {
    let pki = Pki::new();
    let server = pki.server("xds-server", "ca");
    let client = pki.issue("ratelimit", "ca", "clientAuth", &["DNS:envoy-ratelimit"]);
    let mut ads = AdsServer::start_on(0, Some((&server, &pki.path("ca.crt")))).await;
    let nonce = ads.push("v1", &[limits(3)]);
    let xds = XdsOptions {
        tls: Some(ClientTls {
            ca: Some(pki.path("ca.crt")),
            identity: Some((client.cert.clone(), client.key.clone())),
            server_name: None,
        }),
        ..XdsOptions {
            server: server_uri(&format!("localhost:{}", ads.addr.port()), true).unwrap(),
            ..options(&ads)
        }
    };
    let mut s = tollgate(xds).await;
    ads.acked("v1", &nonce).await;
    assert_eq!(
        s.call(request("api", one("blocked", "x")))
            .await
            .overall_code,
        OVER
    );
    s.stop().await;
}
