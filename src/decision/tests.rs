//! The all-or-nothing invariant, checked on random request sequences.

use std::sync::Arc;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use futures_util::FutureExt;
use proptest::prelude::*;

use super::*;
use crate::clock::{ManualClock, NANOS_PER_SEC};
use crate::config::source::SourceFile;
use crate::config::{Options, compile};
use crate::store::MemoryStore;

const CONFIG: &str = "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: hour, requests_per_unit: 5}\n  - key: b\n    rate_limit: {unit: hour, requests_per_unit: 3, algorithm: fixed_window}\n  - key: c\n    rate_limit: {unit: hour, requests_per_unit: 8, burst: 4}\n";

fn limiter() -> Limiter {
    let file = SourceFile {
        path: "t.yaml".into(),
        text: CONFIG.into(),
    };
    let config = compile(&[file], &Options::default()).unwrap();
    let settings = Settings {
        shadow_mode: false,
        quota_mode: false,
        compile: Options::default(),
        reservation_ttl: std::time::Duration::from_secs(600),
    };
    let clock = Arc::new(ManualClock::at(1_800_000_000 * NANOS_PER_SEC));
    Limiter::new(
        config,
        Arc::new(MemoryStore::new(100)),
        KeyBuilder::random(),
        clock,
        settings,
    )
}

/// Decides `request` on the memory store, which answers without waiting.
fn decide(limiter: &Limiter, request: &RateLimitRequest) -> Decision {
    limiter
        .decide(request)
        .now_or_never()
        .expect("the memory store answers at once")
        .unwrap()
}

fn request(keys: &[(usize, u64)]) -> RateLimitRequest {
    let names = ["a", "b", "c"];
    RateLimitRequest {
        domain: "d".into(),
        descriptors: keys
            .iter()
            .map(|(k, cost)| RateLimitDescriptor {
                entries: vec![Entry {
                    key: names[*k].into(),
                    value: "v".into(),
                }],
                hits_addend: Some(envoy_types::pb::google::protobuf::UInt64Value { value: *cost }),
                ..Default::default()
            })
            .collect(),
        hits_addend: 0,
    }
}

/// What each bucket has left, read with check-only calls.
fn remaining(limiter: &Limiter) -> Vec<u32> {
    (0..3)
        .map(|k| decide(limiter, &request(&[(k, 0)])).statuses[0].remaining)
        .collect()
}

proptest! {
    #[test]
    fn denied_requests_change_nothing_and_admitted_ones_take_exactly_their_cost(
        requests in prop::collection::vec(prop::collection::vec((0usize..3, 0u64..4), 1..4), 1..40),
    ) {
        let limiter = limiter();
        for descriptors in requests {
            let before = remaining(&limiter);
            let decision = decide(&limiter, &request(&descriptors));
            let after = remaining(&limiter);
            if decision.overall == Code::OverLimit {
                prop_assert_eq!(before, after);
            } else {
                let mut expected = before.clone();
                for (k, cost) in &descriptors {
                    expected[*k] -= u32::try_from(*cost).unwrap();
                }
                prop_assert_eq!(expected, after);
            }
        }
    }
}

#[test]
fn statuses_of_a_denied_request_report_untouched_buckets() {
    let limiter = limiter();
    let decision = decide(&limiter, &request(&[(0, 2), (1, 4)]));
    assert_eq!(decision.overall, Code::OverLimit);
    assert_eq!(decision.statuses[0].code, Code::Ok);
    assert_eq!(decision.statuses[0].remaining, 5);
    assert_eq!(decision.statuses[1].code, Code::OverLimit);
    assert_eq!(
        decision.statuses[1].retry_after, None,
        "4 can never fit in 3"
    );
}

/// Records `request` as usage that already happened.
fn record(limiter: &Limiter, request: &RateLimitRequest) -> Decision {
    limiter
        .record_within(request, None)
        .now_or_never()
        .expect("the memory store answers at once")
        .unwrap()
}

#[test]
fn recorded_usage_is_charged_in_full_past_the_limit() {
    let limiter = limiter();
    // a: 5 an hour, b: 3 an hour (fixed window). 7 on a does not fit, 2 on b does: both stand.
    let recorded = record(&limiter, &request(&[(0, 7), (1, 2)]));
    assert_eq!(recorded.overall, Code::OverLimit);
    assert_eq!(
        (recorded.statuses[0].code, recorded.statuses[0].remaining),
        (Code::OverLimit, 0)
    );
    assert_eq!(
        (recorded.statuses[1].code, recorded.statuses[1].remaining),
        (Code::Ok, 1)
    );
    // A token bucket without debt forgives what went past empty; a window counts it until
    // it ends, so b, charged 2 more, stays over.
    assert_eq!(decide(&limiter, &request(&[(0, 0)])).overall, Code::Ok);
    assert_eq!(remaining(&limiter), vec![0, 1, 4]);
    assert_eq!(
        record(&limiter, &request(&[(1, 2)])).overall,
        Code::OverLimit
    );
    assert_eq!(
        decide(&limiter, &request(&[(1, 0)])).overall,
        Code::OverLimit
    );
    // Usage past one full capacity of debt is charged down to that ceiling, not beyond.
    let more = record(&limiter, &request(&[(2, 100)]));
    assert_eq!(more.statuses[0].code, Code::OverLimit);
    assert_eq!(
        decide(&limiter, &request(&[(2, 1)])).overall,
        Code::OverLimit
    );
}
