use proptest::prelude::*;

use super::*;
use crate::algorithm::FRESH;
use crate::clock::NANOS_PER_SEC;
use crate::quota::{Algorithm, Unit};

const SEC: u64 = NANOS_PER_SEC;
const T0: u64 = 1_700_000_000 * SEC;

fn quota(rpu: u32, unit: Unit, burst: u32) -> Quota {
    Quota::new(rpu, unit, Algorithm::TokenBucket).with_burst(burst)
}

/// The textbook token bucket, written independently: a level of stored nanoseconds-worth of
/// tokens, topped up by elapsed time and capped at capacity.
struct Model {
    /// Token-nanoseconds in the bucket; below zero while in debt.
    level: i128,
    last: u64,
    t: i128,
    capacity: i128,
    /// How far below zero the level may go.
    floor: i128,
}

impl Model {
    fn new(q: &Quota, now: u64) -> Self {
        let t = i128::from(q.unit().nanos()).div_ceil_compat(i128::from(q.requests_per_unit()));
        let capacity = i128::from(q.burst()) * t;
        Self {
            level: capacity,
            last: now,
            t,
            capacity,
            floor: -i128::from(q.debt()) * t,
        }
    }

    /// A request of `cost` tokens: it conforms when the bucket is not in debt and holds
    /// them (a check, when not in debt); one that does not takes what it can into debt.
    fn hit(&mut self, now: u64, cost: u64) -> (bool, u64) {
        self.level = (self.level + i128::from(now - self.last)).min(self.capacity);
        self.last = now;
        let want = i128::from(cost) * self.t;
        let ok = self.level - want >= 0;
        if ok {
            self.level -= want;
        } else if self.floor < 0 {
            let room = (self.level - self.floor).max(0) / self.t;
            self.level -= room.min(i128::from(cost)) * self.t;
        }
        (ok, (self.level.max(0) / self.t) as u64)
    }
}

/// `div_ceil` for positive i128s.
trait DivCeil {
    fn div_ceil_compat(self, by: i128) -> i128;
}

impl DivCeil for i128 {
    fn div_ceil_compat(self, by: i128) -> i128 {
        (self + by - 1) / by
    }
}

#[test]
fn a_fresh_bucket_admits_a_burst_of_capacity_then_denies() {
    let q = quota(5, Unit::Second, 5);
    let mut state = FRESH;
    for left in (0..5).rev() {
        let v = decide(&q, state, T0, 1);
        assert!(v.allowed);
        assert_eq!(v.remaining, left);
        state = v.state;
    }
    let denied = decide(&q, state, T0, 1);
    assert!(!denied.allowed);
    assert_eq!(denied.state, state, "a denial consumes nothing");
    assert_eq!(denied.remaining, 0);
    assert_eq!(denied.retry_after, Some(SEC / 5));
    assert_eq!(denied.reset_after, SEC);
}

#[test]
fn tokens_refill_continuously() {
    let q = quota(10, Unit::Second, 10);
    let mut state = FRESH;
    for _ in 0..10 {
        state = decide(&q, state, T0, 1).state;
    }
    assert!(!decide(&q, state, T0 + SEC / 10 - 1, 1).allowed);
    let v = decide(&q, state, T0 + SEC / 10, 1);
    assert!(v.allowed);
    assert_eq!(v.remaining, 0);
    let half = decide(&q, state, T0 + SEC / 2, 0);
    assert_eq!(half.remaining, 5);
    assert_eq!(half.reset_after, SEC / 2);
}

#[test]
fn burst_sets_capacity_apart_from_rate() {
    let q = quota(60, Unit::Minute, 3);
    let mut state = FRESH;
    for _ in 0..3 {
        let v = decide(&q, state, T0, 1);
        assert!(v.allowed);
        state = v.state;
    }
    let v = decide(&q, state, T0, 1);
    assert!(!v.allowed);
    assert_eq!(v.retry_after, Some(SEC));
}

#[test]
fn a_check_consumes_nothing_and_conforms_until_the_bucket_is_in_debt() {
    let q = quota(1, Unit::Hour, 1);
    let v = decide(&q, FRESH, T0, 0);
    assert!(v.allowed);
    assert_eq!(v.state, FRESH);
    let used = decide(&q, FRESH, T0, 1).state;
    let v = decide(&q, used, T0, 0);
    assert!(v.allowed, "exactly at the limit: not over it");
    assert_eq!((v.state, v.remaining), (used, 0));
    // In debt, a check does not conform, and says when it will.
    let owing = decide(&q.with_debt(3), used, T0, 2);
    assert!(!owing.allowed);
    let v = decide(&q.with_debt(3), owing.state, T0, 0);
    assert!(!v.allowed);
    assert_eq!(v.retry_after, Some(2 * 3600 * SEC), "two tokens owed");
}

#[test]
fn a_hit_past_what_is_left_runs_debt_down_to_its_limit() {
    let q = quota(10, Unit::Minute, 10).with_debt(10);
    let v = decide(&q, FRESH, T0, 12);
    assert!(!v.allowed, "12 do not fit in 10");
    assert_eq!(v.remaining, 0);
    assert_eq!(v.state, T0 + 12 * 6 * SEC, "but all 12 are taken");
    let v = decide(&q, v.state, T0, 20);
    assert_eq!(v.state, T0 + 20 * 6 * SEC, "down to 10 owed, no further");
    let owing = v.state;
    assert!(!decide(&q, owing, T0 + 59 * SEC, 0).allowed, "still owing");
    let v = decide(&q, owing, T0 + 60 * SEC, 0);
    assert!(v.allowed, "repaid: empty, not owing");
    assert_eq!(v.remaining, 0);
    // Without debt, a hit that does not fit takes nothing.
    let plain = quota(10, Unit::Minute, 10);
    assert_eq!(decide(&plain, FRESH, T0, 12).state, FRESH);
}

#[test]
fn zero_rate_denies_every_hit() {
    let q = quota(0, Unit::Second, 0);
    assert!(decide(&q, FRESH, T0, 0).allowed, "a check: empty, not over");
    for cost in [1, 5] {
        let v = decide(&q.with_debt(5), FRESH, T0, cost);
        assert!(!v.allowed);
        assert_eq!(v.retry_after, None);
        assert_eq!(v.state, FRESH, "no debt that could never be repaid");
    }
}

#[test]
fn quotas_beyond_exact_counting_are_rejected() {
    assert!(check(&quota(1_000_000, Unit::Second, 1)).is_ok());
    assert!(
        check(&quota(1_000_001, Unit::Second, 1))
            .unwrap_err()
            .to_string()
            .contains("faster than")
    );
    assert!(check(&quota(1, Unit::Year, 100)).is_ok());
    assert!(
        check(&quota(1, Unit::Year, 1000))
            .unwrap_err()
            .to_string()
            .contains("100 years")
    );
    assert!(check(&quota(0, Unit::Second, 0)).is_ok());
}

#[test]
fn a_timestamp_out_of_range_denies_instead_of_clamping() {
    let q = quota(1, Unit::Year, 1000);
    let mut state = FRESH;
    let admitted = (0..1000)
        .filter(|_| {
            let v = decide(&q, state, T0, 1);
            state = v.state;
            v.allowed
        })
        .count();
    assert!(admitted < 1000, "admitted {admitted}");
}

#[test]
fn cost_above_capacity_is_denied_forever_without_overflow() {
    let q = quota(u32::MAX, Unit::Year, u32::MAX);
    let v = decide(&q, FRESH, T0, u64::MAX);
    assert!(!v.allowed);
    assert_eq!(v.retry_after, None);
    let v = decide(&q, FRESH, T0, u64::from(u32::MAX));
    assert!(v.allowed);
    assert_eq!(v.remaining, 0);
}

#[test]
fn refund_undoes_a_consumption() {
    let q = quota(4, Unit::Second, 4);
    let taken = decide(&q, FRESH, T0, 3);
    let back = refund(&q, taken.state, 3);
    assert_eq!(decide(&q, back, T0, 0).remaining, 4);
}

#[test]
fn rescaling_keeps_the_tokens_consumed() {
    let old = quota(100, Unit::Minute, 100);
    let new = quota(200, Unit::Minute, 200);
    let used = decide(&old, FRESH, T0, 80).state;
    let moved = rescale(&new, used, T0, token_nanos(&old));
    assert_eq!(decide(&new, moved, T0, 0).remaining, 120);
    let lowered = quota(50, Unit::Minute, 50);
    let moved = rescale(&lowered, used, T0, token_nanos(&old));
    assert_eq!(
        decide(&lowered, moved, T0, 0).remaining,
        0,
        "80 used of a new 50"
    );
    assert_eq!(
        moved,
        T0 + 60 * SEC,
        "but at most an empty bucket: full again in one unit"
    );
    assert_eq!(rescale(&new, FRESH, T0, 7), T0, "a full bucket stays full");
    // From a very fast rate to a very slow one: no overflow, no endless debt.
    let fast = quota(1_000_000, Unit::Second, 1_000_000);
    let slow = quota(1, Unit::Day, 1);
    let drained = decide(&fast, FRESH, T0, 1_000_000).state;
    assert_eq!(
        rescale(&slow, drained, T0, token_nanos(&fast)),
        T0 + 86_400 * SEC
    );
}

#[test]
fn a_lowered_burst_caps_the_debt() {
    let big = quota(60, Unit::Minute, 60);
    let used = decide(&big, FRESH, T0, 60).state;
    let small = quota(60, Unit::Minute, 1);
    let v = decide(&small, used, T0, 1);
    assert!(!v.allowed);
    assert_eq!(
        v.retry_after,
        Some(SEC),
        "an empty bucket of 1 refills in one token's time"
    );
}

#[test]
fn a_full_bucket_is_idle() {
    let q = quota(2, Unit::Second, 2);
    let v = decide(&q, FRESH, T0, 1);
    assert_eq!(idle_at(v.state), T0 + SEC / 2);
    assert_eq!(idle_at(FRESH), 0);
}

proptest! {
    #[test]
    fn matches_the_textbook_model(
        rpu in 1u32..50,
        burst in 1u32..50,
        debt in prop_oneof![Just(0u32), 0u32..20],
        unit in prop::sample::select(vec![Unit::Second, Unit::Minute]),
        steps in prop::collection::vec((0u64..3 * SEC, 0u64..6), 1..200),
    ) {
        let q = quota(rpu, unit, burst).with_debt(debt);
        let mut model = Model::new(&q, T0);
        let mut state = FRESH;
        let mut now = T0;
        for (gap, cost) in steps {
            now += gap;
            let v = decide(&q, state, now, cost);
            let (ok, remaining) = model.hit(now, cost);
            prop_assert_eq!(v.allowed, ok);
            prop_assert_eq!(v.remaining, remaining);
            state = v.state;
        }
    }
}

/// A leaky bucket used as a meter, written independently: each admitted request pours `cost`
/// units of water into a bucket of `burst` units that leaks `requests_per_unit` per unit; a
/// request that would overflow it is denied. Levels are kept in nanoseconds of leaking.
struct LeakyMeter {
    water: u128,
    last: u64,
    t: u128,
    capacity: u128,
}

impl LeakyMeter {
    fn new(q: &Quota, now: u64) -> Self {
        let t = u128::from(q.unit().nanos()).div_ceil(u128::from(q.requests_per_unit()));
        Self {
            water: 0,
            last: now,
            t,
            capacity: u128::from(q.burst()) * t,
        }
    }

    fn hit(&mut self, now: u64, cost: u64) -> bool {
        self.water = self.water.saturating_sub(u128::from(now - self.last));
        self.last = now;
        let poured = u128::from(cost) * self.t;
        let fits = self.water + poured <= self.capacity;
        if fits && cost > 0 {
            self.water += poured;
        }
        fits
    }
}

proptest! {
    #[test]
    fn a_leaky_bucket_meter_admits_exactly_what_the_token_bucket_does(
        rpu in 1u32..50,
        burst in 1u32..50,
        unit in prop::sample::select(vec![Unit::Second, Unit::Minute]),
        steps in prop::collection::vec((0u64..3 * SEC, 0u64..6), 1..200),
    ) {
        let q = quota(rpu, unit, burst);
        prop_assert_eq!(Algorithm::parse("leaky_bucket"), Some(Algorithm::TokenBucket));
        prop_assert_eq!(Algorithm::parse("gcra"), Some(Algorithm::TokenBucket));
        let mut meter = LeakyMeter::new(&q, T0);
        let mut state = FRESH;
        let mut now = T0;
        for (gap, cost) in steps {
            now += gap;
            let v = decide(&q, state, now, cost);
            prop_assert_eq!(v.allowed, meter.hit(now, cost));
            state = v.state;
        }
    }
}

#[test]
fn a_release_refills_at_most_to_full() {
    let q = Quota::new(10, Unit::Second, Algorithm::TokenBucket);
    let taken = decide(&q, 0, T0, 6).state;
    let later = T0 + NANOS_PER_SEC / 10; // one token refilled
    let released = release(&q, taken, later, 4);
    assert_eq!(decide(&q, released, later, 0).remaining, 9);
    assert_eq!(release(&q, taken, later, 100), later, "full, no more");
    assert_eq!(
        release(&q, taken, T0 + 10 * NANOS_PER_SEC, 4),
        taken,
        "already full"
    );
}
