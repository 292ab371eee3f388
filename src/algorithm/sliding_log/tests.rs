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
        steps in prop::collection::vec((0u64..3 * SEC, 0u64..4), 1..200),
    ) {
        let q = quota(rpu, Unit::Second);
        let mut log = VecDeque::new();
        let mut admitted: Vec<u64> = Vec::new();
        let mut now = T0;
        for (gap, cost) in steps {
            now += gap;
            let now_ms = now / 1_000_000;
            let in_unit = admitted.iter().filter(|&&at| at + 1000 > now_ms).count() as u64;
            let fits = if cost == 0 { in_unit < u64::from(rpu) } else { in_unit + cost <= u64::from(rpu) };
            let v = decide(&q, &mut log, now, cost);
            prop_assert_eq!(v.allowed, fits);
            prop_assert_eq!(v.remaining, u64::from(rpu).saturating_sub(in_unit) - if v.allowed { cost } else { 0 });
            if v.allowed {
                admitted.extend(std::iter::repeat_n(now_ms, cost as usize));
            }
        }
    }
}
