use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::algorithm::FRESH;
use crate::quota::{Algorithm, Unit};

const SEC: u64 = NANOS_PER_SEC;
/// A minute boundary: 1_700_000_040 is divisible by 60.
const T0: u64 = 1_700_000_040 * SEC;

fn quota(rpu: u32, unit: Unit) -> Quota {
    Quota::new(rpu, unit, Algorithm::FixedWindow)
}

#[test]
fn counts_up_to_the_limit_within_a_window() {
    let q = quota(3, Unit::Minute);
    let mut state = FRESH;
    for left in (0..3).rev() {
        let v = decide(&q, state, T0 + 10 * SEC, 1);
        assert!(v.allowed);
        assert_eq!(v.remaining, left);
        assert_eq!(v.reset_after, 50 * SEC);
        state = v.state;
    }
    let v = decide(&q, state, T0 + 59 * SEC, 1);
    assert!(!v.allowed);
    assert_eq!(v.state, state);
    assert_eq!(v.retry_after, Some(SEC));
}

#[test]
fn the_window_is_epoch_aligned_and_resets_at_its_end() {
    let q = quota(1, Unit::Minute);
    let used = decide(&q, FRESH, T0 + 59 * SEC, 1).state;
    assert!(!decide(&q, used, T0 + 60 * SEC - 1, 1).allowed);
    let v = decide(&q, used, T0 + 60 * SEC, 1);
    assert!(v.allowed);
    assert_eq!(v.reset_after, 60 * SEC);
    assert_eq!(idle_at(used), T0 + 60 * SEC);
    assert_eq!(
        idle_at(refund(used, used, 1)),
        0,
        "a zero count is as good as fresh"
    );
}

#[test]
fn refund_applies_only_to_the_same_window() {
    let q = quota(2, Unit::Second);
    let a = decide(&q, FRESH, T0, 2).state;
    assert_eq!(decide(&q, refund(a, a, 2), T0, 0).remaining, 2);
    let next = decide(&q, a, T0 + SEC, 1).state;
    assert_eq!(refund(next, a, 2), next);
}

#[test]
fn a_check_conforms_at_the_limit_and_not_past_it() {
    let q = quota(2, Unit::Minute);
    let full = decide(&q, FRESH, T0, 2).state;
    assert!(decide(&q, full, T0, 0).allowed, "at the limit: not over");
    let owing = decide(&q.with_debt(5), full, T0, 3);
    assert!(!owing.allowed);
    assert_eq!(count(owing.state), 5, "the 3 are counted past the limit");
    assert!(!decide(&q, owing.state, T0, 0).allowed, "past it: over");
    let capped = decide(&q.with_debt(5), owing.state, T0, 10);
    assert_eq!(
        count(capped.state),
        7,
        "down to the debt's limit, no further"
    );
}

#[test]
fn zero_limit_and_huge_costs_are_denied() {
    let q = quota(0, Unit::Second);
    assert!(!decide(&q, FRESH, T0, 1).allowed);
    assert_eq!(decide(&q, FRESH, T0, 1).retry_after, None);
    let q = quota(u32::MAX, Unit::Year);
    assert!(!decide(&q, FRESH, T0, u64::MAX).allowed);
    assert!(decide(&q, FRESH, T0, u64::from(u32::MAX)).allowed);
}

proptest! {
    #[test]
    fn matches_a_map_of_window_counters(
        rpu in 0u32..20,
        debt in prop_oneof![Just(0u32), 0u32..10],
        steps in prop::collection::vec((0u64..40 * SEC, 0u64..5), 1..200),
    ) {
        let q = quota(rpu, Unit::Minute).with_debt(debt);
        let (limit, debt) = (u64::from(rpu), u64::from(debt));
        let mut windows: HashMap<u64, u64> = HashMap::new();
        let mut state = FRESH;
        let mut now = T0;
        for (gap, cost) in steps {
            now += gap;
            let used = windows.entry(now / (60 * SEC)).or_default();
            // The reference's rule: over when the count would pass the limit.
            let ok = *used + cost <= limit;
            if ok {
                *used += cost;
            } else if debt > 0 {
                *used += cost.min((limit + debt).saturating_sub(*used));
            }
            let v = decide(&q, state, now, cost);
            prop_assert_eq!(v.allowed, ok);
            prop_assert_eq!(v.remaining, limit.saturating_sub(*used));
            state = v.state;
        }
    }
}

#[test]
fn a_release_gives_back_only_in_the_window_it_was_taken_in() {
    let q = quota(10, Unit::Minute);
    let taken_ms = (T0 + SEC) / 1_000_000;
    let state = decide(&q, FRESH, T0 + SEC, 6).state;
    assert_eq!(count(release(&q, state, taken_ms, 4)), 2);
    assert_eq!(count(release(&q, state, taken_ms, 40)), 0);
    let next = decide(&q, state, T0 + 61 * SEC, 3).state;
    assert_eq!(release(&q, next, taken_ms, 4), next, "its window ended");
}
