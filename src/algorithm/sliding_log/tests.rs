use proptest::prelude::*;

use super::*;
use crate::clock::NANOS_PER_SEC;
use crate::quota::{Algorithm, Unit};

const SEC: u64 = NANOS_PER_SEC;
const T0: u64 = 1_800_000_000 * SEC;

fn quota(rpu: u32, unit: Unit) -> Quota {
    Quota::new(rpu, unit, Algorithm::SlidingLog)
}

#[test]
fn counts_exactly_over_the_last_unit() {
    let q = quota(3, Unit::Minute);
    let mut log = VecDeque::new();
    for (at, remaining) in [(0, 2), (10, 1), (20, 0)] {
        let v = decide(&q, &mut log, T0 + at * SEC, 1);
        assert_eq!((v.allowed, v.remaining), (true, remaining));
    }
    let v = decide(&q, &mut log, T0 + 59 * SEC, 1);
    assert!(!v.allowed);
    assert_eq!(v.retry_after, Some(SEC), "the first hit leaves at 60 s");
    assert_eq!(v.reset_after, 21 * SEC, "the last one at 80 s");
    assert!(decide(&q, &mut log, T0 + 60 * SEC, 1).allowed);
    assert!(!decide(&q, &mut log, T0 + 60 * SEC, 1).allowed);
    // Hits at 10, 20 and 60 s: a cost of 2 waits for the two oldest to leave, at 80 s.
    assert_eq!(
        decide(&q, &mut log, T0 + 61 * SEC, 2).retry_after,
        Some(19 * SEC)
    );
    assert_eq!(decide(&q, &mut log, T0 + 61 * SEC, 4).retry_after, None);
}

#[test]
fn checks_conform_at_the_limit_and_debt_is_recorded() {
    let q = quota(3, Unit::Minute);
    let mut log = VecDeque::new();
    decide(&q, &mut log, T0, 3);
    assert!(
        decide(&q, &mut log, T0, 0).allowed,
        "at the limit: not over"
    );
    let owing = decide(&q.with_debt(3), &mut log, T0 + SEC, 2);
    assert!(!owing.allowed);
    assert_eq!(log.len(), 5, "what was asked is recorded");
    assert!(!decide(&q, &mut log, T0 + SEC, 0).allowed, "past it: over");
    assert_eq!(
        owing.retry_after,
        Some(60 * SEC),
        "the 2 hits of 1 s and one of 0 s leave"
    );
    decide(&q.with_debt(3), &mut log, T0 + SEC, 5);
    assert_eq!(log.len(), 6, "up to the limit plus the debt");
    assert!(check(&quota(MAX_LIMIT, Unit::Second).with_debt(1)).is_err());
}

#[test]
fn refunds_take_back_what_was_recorded_now() {
    let q = quota(5, Unit::Second);
    let mut log = VecDeque::new();
    decide(&q, &mut log, T0, 1);
    decide(&q, &mut log, T0 + SEC / 2, 3);
    refund(&mut log, T0 + SEC / 2, 3);
    assert_eq!(log.len(), 1);
    assert_eq!(idle_at(&log, unit_ms(&q)), T0 + SEC);
    assert!(check(&quota(MAX_LIMIT + 1, Unit::Hour)).is_err());
}

proptest! {
    #[test]
    fn admits_at_most_the_limit_in_any_unit_and_everything_that_fits(
        rpu in 1u32..20,
        debt in prop_oneof![Just(0u32), 0u32..10],
        steps in prop::collection::vec((0u64..3 * SEC, 0u64..4), 1..200),
    ) {
        let q = quota(rpu, Unit::Second).with_debt(debt);
        let (limit, debt) = (u64::from(rpu), u64::from(debt));
        let mut log = VecDeque::new();
        let mut admitted: Vec<u64> = Vec::new();
        let mut now = T0;
        for (gap, cost) in steps {
            now += gap;
            let now_ms = now / 1_000_000;
            let in_unit = admitted.iter().filter(|&&at| at + 1000 > now_ms).count() as u64;
            let fits = in_unit <= limit && in_unit + cost <= limit;
            let taken = match (fits, debt) {
                (true, _) => cost,
                (false, 0) => 0,
                (false, _) => cost.min((limit + debt).saturating_sub(in_unit)),
            };
            let v = decide(&q, &mut log, now, cost);
            prop_assert_eq!(v.allowed, fits);
            prop_assert_eq!(v.remaining, limit.saturating_sub(in_unit + taken));
            admitted.extend(std::iter::repeat_n(now_ms, taken as usize));
            if let Some(wait) = v.retry_after {
                // The request fits exactly after the wait, and not 1 ms before it.
                prop_assert!(decide(&q, &mut log.clone(), now + wait, cost).allowed);
                if wait >= 1_000_000 {
                    prop_assert!(!decide(&q, &mut log.clone(), now + wait - 1_000_000, cost).allowed);
                }
            }
        }
    }
}

#[test]
fn a_release_removes_the_hits_recorded_then() {
    let q = quota(10, Unit::Minute);
    let mut log = VecDeque::new();
    decide(&q, &mut log, T0, 2);
    decide(&q, &mut log, T0 + SEC, 3);
    decide(&q, &mut log, T0 + 2 * SEC, 1);
    release(&mut log, (T0 + SEC) / 1_000_000, 2);
    assert_eq!(log.len(), 4);
    release(&mut log, (T0 + SEC) / 1_000_000, 5);
    assert_eq!(log.len(), 3, "only what was recorded then");
}
