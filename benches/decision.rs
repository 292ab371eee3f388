//! The decision path: match → key hash → bucket CAS, through `Limiter::decide` on the memory store,
//! with one live key and with a million.
//!
//! Run: `cargo bench --bench decision`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use futures_util::FutureExt;
use tollgate::app;
use tollgate::clock::SystemClock;
use tollgate::config::source::SourceFile;
use tollgate::config::{Options, compile};
use tollgate::decision::{Decision, Limiter};
use tollgate::store::{MemoryStore, Parts};

const CONFIG: &str = "domain: bench\ndescriptors:\n  - key: user\n    rate_limit: {unit: second, requests_per_unit: 1000000000}\n  - key: route\n    value: /api/*\n    descriptors:\n      - key: user\n        rate_limit: {unit: second, requests_per_unit: 1000000000, algorithm: fixed_window}\n";

fn limiter() -> Limiter {
    let file = SourceFile {
        path: "bench.yaml".into(),
        text: CONFIG.into(),
    };
    let config = compile(&[file], &Options::default()).expect("valid bench config");
    let app = app::Config {
        max_buckets: 2_000_000,
        ..app::Config::new("bench.yaml")
    };
    app.limiter(config, Arc::new(SystemClock::new()))
        .expect("a memory store")
}

/// Decides `request` on the memory store, which answers on the first poll.
fn decide(limiter: &Limiter, request: &RateLimitRequest) -> Decision {
    limiter
        .decide(request)
        .now_or_never()
        .expect("the memory store answers at once")
        .expect("a valid request")
}

fn request(user: &str) -> RateLimitRequest {
    let entry = |key: &str, value: &str| Entry {
        key: key.into(),
        value: value.into(),
    };
    RateLimitRequest {
        domain: "bench".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![entry("user", user)],
            ..Default::default()
        }],
        hits_addend: 1,
    }
}

fn decision(c: &mut Criterion) {
    let mut group = c.benchmark_group("should_rate_limit");

    let one = limiter();
    let req = request("alice");
    group.bench_function("1 live key", |b| b.iter(|| decide(&one, &req)));

    let nested = RateLimitRequest {
        descriptors: vec![RateLimitDescriptor {
            entries: vec![
                Entry {
                    key: "route".into(),
                    value: "/api/users".into(),
                },
                Entry {
                    key: "user".into(),
                    value: "alice".into(),
                },
            ],
            ..Default::default()
        }],
        ..req.clone()
    };
    group.bench_function("1 live key, nested wildcard", |b| {
        b.iter(|| decide(&one, &nested))
    });

    // A million live buckets (fewer when run as a test, to keep `cargo test` quick).
    let keys = if std::env::args().any(|a| a == "--bench") {
        1_000_000
    } else {
        1_000
    };
    let many = limiter();
    let requests: Vec<_> = (0..keys).map(|i| request(&format!("user-{i}"))).collect();
    for r in &requests {
        decide(&many, r);
    }
    let mut parts = Parts::default();
    many.store().parts(&mut parts);
    assert_eq!(parts.memory.map(MemoryStore::live), Some(keys));
    let mut i = 0;
    group.bench_function(format!("{keys} live keys"), |b| {
        b.iter(|| {
            i = (i + 7919) % keys;
            decide(&many, &requests[i])
        })
    });
    group.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
