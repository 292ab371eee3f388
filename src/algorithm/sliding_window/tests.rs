use proptest::prelude::*;

use super::*;
use crate::algorithm::FRESH;
use crate::clock::NANOS_PER_SEC;
use crate::quota::{Algorithm, Unit};

const SEC: u64 = NANOS_PER_SEC;
/// A minute boundary.
const T0: u64 = 1_800_000_000 * SEC;

fn quota(rpu: u32, unit: Unit) -> Quota {
    Quota::new(rpu, unit, Algorithm::SlidingWindow)
}

/// The weighted two-window counter, written independently: a map from window index to count,
/// with time in whole milliseconds.
struct Model {
    window_ms: u64,
    limit: u64,
    debt: u64,
    counts: std::collections::HashMap<u64, u64>,
}

impl Model {
    fn hit(&mut self, now: u64, cost: u64) -> (bool, u64) {
        let now_ms = now / 1_000_000;
        let index = now_ms / self.window_ms;
        let into = now_ms % self.window_ms;
        let previous = self.counts.get(&(index - 1)).copied().unwrap_or(0);
        let current = self.counts.get(&index).copied().unwrap_or(0);
        // previous × (1 − into/window), rounded up, in exact rationals.
        let weighted = (previous * (self.window_ms - into)).div_ceil(self.window_ms);
        let used = weighted + current;
        let available = self.limit.saturating_sub(used);
        let taken = if used <= self.limit && cost <= available {
            cost
        } else if self.debt > 0 {
            cost.min((self.limit + self.debt).saturating_sub(used))
        } else {
            0
        };
        *self.counts.entry(index).or_default() += taken;
        (
            used <= self.limit && cost <= available,
            available.saturating_sub(taken),
        )
    }
}

#[test]
fn a_full_previous_window_slides_out_gradually() {
    let q = quota(10, Unit::Minute);
    let mut state = FRESH;
    for _ in 0..10 {
        let v = decide(&q, state, T0 + 30 * SEC, 1);
        assert!(v.allowed);
        state = v.state;
    }
    assert!(!decide(&q, state, T0 + 59 * SEC, 1).allowed);
    // At the next window's start all 10 still count; a quarter in, 7.5 → 8 of them.
    let v = decide(&q, state, T0 + 60 * SEC, 1);
    assert_eq!((v.allowed, v.remaining), (false, 0));
    let v = decide(&q, state, T0 + 75 * SEC, 1);
    assert_eq!((v.allowed, v.remaining), (true, 1));
    // A fixed window would admit 10 at once here; the sliding window admits 2.
    let mut admitted = 0;
    let mut s = state;
    for _ in 0..10 {
        let v = decide(&q, s, T0 + 75 * SEC, 1);
        if v.allowed {
            admitted += 1;
            s = v.state;
        }
    }
    assert_eq!(admitted, 2);
}

#[test]
fn a_denial_says_when_the_request_fits() {
    let q = quota(10, Unit::Minute);
    let mut state = FRESH;
    for _ in 0..10 {
        state = decide(&q, state, T0 + 30 * SEC, 1).state;
    }
    let v = decide(&q, state, T0 + 60 * SEC, 1);
    // 10 × (60 − t)/60 ≤ 9  ⇔  t ≥ 6 s.
    assert_eq!(v.retry_after, Some(6 * SEC));
    assert!(decide(&q, state, T0 + 66 * SEC, 1).allowed);
    assert!(!decide(&q, state, T0 + 66 * SEC - 1_000_000, 1).allowed);
    // More than the limit never fits.
    assert_eq!(decide(&q, state, T0 + 60 * SEC, 11).retry_after, None);
    // Within the same window: the current count has to slide out, one window on.
    let v = decide(&q, state, T0 + 40 * SEC, 1);
    assert_eq!(v.retry_after, Some(26 * SEC));
}

#[test]
fn checks_conform_at_the_limit_and_debt_is_counted() {
    let q = quota(4, Unit::Minute);
    let full = decide(&q, FRESH, T0 + SEC, 4).state;
    assert!(
        decide(&q, full, T0 + SEC, 0).allowed,
        "at the limit: not over"
    );
    let owing = decide(&q.with_debt(4), full, T0 + SEC, 3);
    assert!(!owing.allowed);
    assert_eq!(owing.state & COUNT_MASK, 7, "what was asked is counted");
    assert!(
        !decide(&q, owing.state, T0 + SEC, 0).allowed,
        "past it: over"
    );
    let capped = decide(&q.with_debt(4), owing.state, T0 + SEC, 10);
    assert_eq!(
        capped.state & COUNT_MASK,
        8,
        "up to the limit plus the debt"
    );
    assert!(check(&quota(MAX_LIMIT, Unit::Second).with_debt(1)).is_err());
}

#[test]
fn refunds_and_idle_buckets() {
    let q = quota(5, Unit::Second);
    let taken = decide(&q, FRESH, T0 + SEC / 2, 2);
    assert_eq!(
        refund(taken.state, taken.state, 2),
        pack(counts_index(taken.state), 0, 0)
    );
    let window = q.unit().nanos();
    assert_eq!(idle_at(taken.state, window, T0 + SEC / 2), T0 + 2 * SEC);
    assert_eq!(idle_at(FRESH, window, T0), 0);
}

fn counts_index(state: u64) -> u64 {
    state >> (2 * COUNT_BITS)
}

#[test]
fn limits_past_the_exact_range_are_refused() {
    assert!(check(&quota(MAX_LIMIT, Unit::Day)).is_ok());
    assert!(check(&quota(MAX_LIMIT + 1, Unit::Second)).is_err());
    assert!(check(&quota(MAX_LIMIT, Unit::Year)).is_err());
}

proptest! {
    #[test]
    fn matches_the_reference_model(
        rpu in 1u32..40,
        debt in prop_oneof![Just(0u32), 0u32..20],
        unit in prop::sample::select(vec![Unit::Second, Unit::Minute]),
        steps in prop::collection::vec((0u64..2 * SEC, 0u64..5), 1..300),
    ) {
        let q = quota(rpu, unit).with_debt(debt);
        let mut model = Model {
            window_ms: unit_ms(&q),
            limit: u64::from(rpu),
            debt: u64::from(debt),
            counts: Default::default(),
        };
        let mut state = FRESH;
        let mut now = T0;
        for (gap, cost) in steps {
            now += gap;
            let v = decide(&q, state, now, cost);
            let (ok, remaining) = model.hit(now, cost);
            prop_assert_eq!(v.allowed, ok);
            prop_assert_eq!(v.remaining, remaining);
            if let Some(wait) = v.retry_after {
                // The request fits exactly after the wait, and not 1 ms before it.
                prop_assert!(decide(&q, v.state, now + wait, cost).allowed);
                if wait >= 1_000_000 {
                    prop_assert!(!decide(&q, v.state, now + wait - 1_000_000, cost).allowed);
                }
            }
            state = v.state;
        }
    }
}

#[test]
fn a_release_gives_back_from_the_window_it_was_counted_in() {
    let q = quota(10, Unit::Minute);
    let taken_ms = (T0 + SEC) / 1_000_000;
    let state = decide(&q, FRESH, T0 + SEC, 6).state;
    assert_eq!(release(&q, state, taken_ms, 4) & COUNT_MASK, 2);
    // A window on, the reservation's hits are the previous window's.
    let next = decide(&q, state, T0 + 61 * SEC, 1).state;
    let released = release(&q, next, taken_ms, 4);
    assert_eq!(
        ((released >> COUNT_BITS) & COUNT_MASK, released & COUNT_MASK),
        (2, 1)
    );
    let gone = decide(&q, next, T0 + 121 * SEC, 1).state;
    assert_eq!(release(&q, gone, taken_ms, 4), gone, "slid out");
}
