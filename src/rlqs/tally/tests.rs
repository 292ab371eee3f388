use proptest::prelude::*;

use super::*;
use crate::clock::NANOS_PER_SEC;
use crate::quota::Unit;
use crate::rule::Policy;

const SEC: u64 = NANOS_PER_SEC;
/// A minute boundary.
const T0: Nanos = 1_800_000_000 * SEC;

fn tally(quota: Quota) -> Tally {
    let rule = Rule {
        id: "edge.name_listed#minute".into(),
        name: Some("minute".into()),
        policy: Policy::Limited(quota),
        shadow_mode: false,
        quota_mode: false,
        replaces: vec![],
        detailed_metric: false,
        value_to_metric: false,
        key_parts: vec![],
        metadata: None,
        consistency: None,
        max_delay: None,
        tag: 0,
    };
    Tally::new(Arc::new(rule), quota, BucketKey(7))
}

fn per_minute(algorithm: Algorithm) -> Quota {
    Quota::new(100, Unit::Minute, algorithm)
}

/// 5 per second, burst 5: the token bucket Envoys are sent.
fn per_second() -> Quota {
    Quota::new(5, Unit::Second, Algorithm::TokenBucket)
}

#[test]
fn a_fixed_window_used_up_is_closed_until_the_window_ends() {
    let quota = per_minute(Algorithm::FixedWindow);
    let mut t = tally(quota);
    t.charge(&quota, 60, T0 + 10 * SEC);
    assert_eq!(t.remaining(&quota, T0 + 10 * SEC), 40);
    assert_eq!(t.admits_in(&quota, T0 + 10 * SEC), Some(0));
    // Reports past the limit count: the requests passed.
    t.charge(&quota, 50, T0 + 20 * SEC);
    assert_eq!(t.remaining(&quota, T0 + 20 * SEC), 0);
    assert_eq!(t.admits_in(&quota, T0 + 20 * SEC), Some(40 * SEC));
    // The next window is whole.
    assert_eq!(t.admits_in(&quota, T0 + 60 * SEC), Some(0));
    assert_eq!(t.remaining(&quota, T0 + 60 * SEC), 100);
}

#[test]
fn a_token_bucket_overshot_stays_used_up_until_the_overshoot_is_repaid() {
    let quota = per_minute(Algorithm::TokenBucket);
    let mut t = tally(quota);
    // 120 at once: 20 past the limit, each token 0.6 s, and one more to admit a request.
    t.charge(&quota, 120, T0);
    assert_eq!(t.remaining(&quota, T0), 0);
    assert_eq!(t.admits_in(&quota, T0), Some(12_600_000_000));
    assert_eq!(t.admits_in(&quota, T0 + 12_600_000_000), Some(0));
    assert_eq!(t.remaining(&quota, T0 + 12_600_000_000), 1);
}

#[test]
fn a_sliding_log_counts_reports_as_hits_and_lets_them_slide_out() {
    let quota = per_minute(Algorithm::SlidingLog);
    let mut t = tally(quota);
    t.charge(&quota, 70, T0);
    t.charge(&quota, 40, T0 + 30 * SEC);
    assert_eq!(t.remaining(&quota, T0 + 30 * SEC), 0);
    // 110 counted: 11 must slide out, and they are the first 70.
    assert_eq!(t.admits_in(&quota, T0 + 30 * SEC), Some(30 * SEC));
    assert_eq!(t.remaining(&quota, T0 + 60 * SEC), 60);
}

#[test]
fn a_limit_of_zero_never_admits() {
    let quota = Quota::new(0, Unit::Hour, Algorithm::FixedWindow);
    let t = tally(quota);
    assert_eq!(t.admits_in(&quota, T0), None);
    let gate = gate(&per_second(), &[t], 1, T0, 5 * SEC);
    assert_eq!(gate.closed_by, Some(0));
    assert_eq!(gate.capacity.requests_per_unit(), 0);
}

#[test]
fn room_is_what_is_left_and_what_frees_up_within_the_period() {
    let fixed = per_minute(Algorithm::FixedWindow);
    let mut t = tally(fixed);
    t.charge(&fixed, 40, T0 + 10 * SEC);
    assert_eq!(t.room(&fixed, T0 + 10 * SEC, 5 * SEC), 60);
    // The window ends within the period: the next one is there too.
    assert_eq!(t.room(&fixed, T0 + 57 * SEC, 5 * SEC), 160);
    // A token bucket refills 100/60 per second: 8 whole tokens in 5 s.
    let bucket = per_minute(Algorithm::TokenBucket);
    let mut t = tally(bucket);
    assert_eq!(t.room(&bucket, T0, 5 * SEC), 108);
    t.charge(&bucket, 100, T0);
    assert_eq!(t.room(&bucket, T0, 5 * SEC), 8);
}

#[test]
fn the_gate_cuts_the_token_bucket_to_what_fits_in_one_report_period_and_closes_when_used_up() {
    let quota = per_minute(Algorithm::FixedWindow);
    let at = |used: u64| {
        let mut t = tally(quota);
        t.charge(&quota, used, T0 + 10 * SEC);
        gate(&per_second(), &[t], 1, T0 + 10 * SEC, 5 * SEC)
    };
    // 5/s with a burst of 5 admits 30 in 5 s: more room than that, no cut.
    assert_eq!(at(70).capacity, per_second());
    assert_eq!(at(70).closed_by, None);
    // 20 left: 20 × 5 / 30 = 3 per second (burst 3: 18 in 5 s).
    assert_eq!(at(80).capacity.requests_per_unit(), 3);
    assert_eq!(at(80).capacity.burst(), 3);
    assert!(admits(&at(80).capacity, 5 * SEC) <= 20);
    // 1 left: still 1 per second, the least a token bucket hands out.
    assert_eq!(at(99).capacity.requests_per_unit(), 1);
    assert_eq!(at(99).closed_by, None);
    // Used up: closed.
    assert_eq!(at(100).closed_by, Some(0));
    assert_eq!(at(100).capacity.requests_per_unit(), 0);
    assert_eq!(at(130).closed_by, Some(0));
}

#[test]
fn replicas_count_their_part_and_a_reload_keeps_the_count() {
    let quota = per_minute(Algorithm::FixedWindow);
    let mut t = tally(quota);
    let half = quota.share(2);
    t.charge(&half, 45, T0);
    assert_eq!(t.remaining(&half, T0), 5);
    let gate = gate(&per_second().share(2), &[t.clone()], 2, T0, 5 * SEC);
    assert_eq!(gate.closed_by, None);
    assert_eq!(gate.capacity.requests_per_unit(), 1);
    // The limit raised to 200: what was counted stays counted.
    let raised = Quota::new(200, Unit::Minute, Algorithm::FixedWindow);
    t.reconfigure(t.rule.clone(), raised);
    assert_eq!(t.remaining(&raised, T0), 155);
    // A token-bucket tally re-scaled when its rate changes keeps its tokens used.
    let bucket = per_minute(Algorithm::TokenBucket);
    let mut t = tally(bucket);
    t.charge(&bucket, 80, T0);
    assert_eq!(t.remaining(&bucket.share(2), T0), 0);
    let doubled = Quota::new(200, Unit::Minute, Algorithm::TokenBucket);
    assert_eq!(t.remaining(&doubled, T0), 120);
}

proptest! {
    /// Whatever is reported when, a tally admits exactly while something is left, and the
    /// gate never hands out a token bucket that admits more in one report period than a
    /// counted limit's room, but for the one token the smallest share keeps.
    #[test]
    fn the_gate_hands_out_no_more_than_fits(
        algorithm in prop::sample::select(vec![
            Algorithm::TokenBucket,
            Algorithm::FixedWindow,
            Algorithm::SlidingWindow,
            Algorithm::SlidingLog,
        ]),
        reports in prop::collection::vec((0u64..40, 0u64..10_000), 1..40),
        rate in 1u32..50,
    ) {
        let quota = per_minute(algorithm);
        let capacity = Quota::new(rate, Unit::Second, Algorithm::TokenBucket);
        let period = 5 * SEC;
        let mut t = tally(quota);
        let mut now = T0;
        for (used, after_ms) in reports {
            now += after_ms * 1_000_000;
            t.charge(&quota, used, now);
            let left = t.remaining(&quota, now);
            prop_assert_eq!(left > 0, t.admits_in(&quota, now) == Some(0));
            let gate = gate(&capacity, std::slice::from_ref(&t), 1, now, period);
            prop_assert_eq!(gate.closed_by.is_some(), left == 0);
            let handed = gate.capacity;
            if left > 0 {
                prop_assert!(handed.requests_per_unit() >= 1);
                let room = u128::from(t.room(&quota, now, period));
                let least = admits(&capacity.cut_to(1), period);
                prop_assert!(admits(&handed, period) <= room.max(least));
            } else {
                prop_assert_eq!(handed.requests_per_unit(), 0);
            }
        }
    }
}
