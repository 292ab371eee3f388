//! The decision path allocates nothing per request: matching, bucket keys, the bucket update,
//! all-or-nothing settlement and the metrics all run on borrowed and inline data. (Decoding the
//! request and encoding the response are tonic's.)

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::sync::Arc;

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use futures_util::FutureExt;
use tollgate::app;
use tollgate::clock::SystemClock;
use tollgate::config::Options;
use tollgate::decision::Code;
use tollgate::metrics::{Metrics, MetricsOptions};
use tollgate::protocol::Shared;
use tollgate::reload::Reloader;

const CONFIG: &str = "domain: a\ndescriptors:\n  - key: user\n    rate_limit: {name: per_user, unit: hour, requests_per_unit: 1000000}\n  - key: route\n    value: /api/*\n    descriptors:\n      - key: method\n        rate_limit: {unit: minute, requests_per_unit: 1000000, algorithm: fixed_window}\n  - key: blocked\n    rate_limit: {unit: second, requests_per_unit: 0}\n";

fn shared() -> (Shared, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), CONFIG).unwrap();
    let app = app::Config {
        max_buckets: 1000,
        ..app::Config::new(dir.path())
    };
    let build = |config| app.limiter(config, Arc::new(SystemClock::new())).unwrap();
    let reloader = Arc::new(Reloader::start(dir.path(), Options::default(), build).unwrap());
    let metrics = Arc::new(Metrics::new(reloader.clone(), MetricsOptions::default()));
    (
        Shared::new(reloader, metrics, Default::default(), Default::default()),
        dir,
    )
}

fn request(descriptors: &[&[(&str, &str)]]) -> RateLimitRequest {
    let mut request = common::request(
        "a",
        descriptors.iter().map(|d| common::descriptor(d)).collect(),
    );
    request.hits_addend = 1;
    request
}

/// The result of a future that completes on its first poll, as the memory-store path does
/// (polled with a no-op waker, so measuring it allocates nothing).
fn ready<F: std::future::Future>(future: F) -> F::Output {
    future
        .now_or_never()
        .expect("the memory-store decision waited on something")
}

#[test]
fn the_counter_sees_allocations() {
    let info = allocation_counter::measure(|| drop(std::hint::black_box(vec![1u8; 16])));
    assert_eq!(info.count_total, 1);
}

#[test]
fn an_admitted_request_allocates_nothing() {
    let (shared, _dir) = shared();
    let req = request(&[
        &[("user", "alice")],
        &[("route", "/api/users"), ("method", "GET")],
    ]);
    assert_eq!(
        ready(shared.decide(&req, None)).unwrap().overall,
        Code::Ok,
        "warm-up: buckets and series exist"
    );
    let info = allocation_counter::measure(|| {
        for _ in 0..100 {
            assert_eq!(ready(shared.decide(&req, None)).unwrap().overall, Code::Ok);
        }
    });
    assert_eq!(info.count_total, 0, "{info:?}");
}

#[test]
fn a_denied_request_allocates_nothing() {
    let (shared, _dir) = shared();
    let req = request(&[&[("user", "bob")], &[("blocked", "x")]]);
    assert_eq!(
        ready(shared.decide(&req, None)).unwrap().overall,
        Code::OverLimit
    );
    let info = allocation_counter::measure(|| {
        for _ in 0..100 {
            assert_eq!(
                ready(shared.decide(&req, None)).unwrap().overall,
                Code::OverLimit
            );
        }
    });
    assert_eq!(info.count_total, 0, "{info:?}");
}
