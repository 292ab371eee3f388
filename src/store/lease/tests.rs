use super::*;
use crate::quota::Unit;

const SEC: u64 = NANOS_PER_SEC;
const T0: u64 = 1_800_000_000 * SEC;

fn hit(algorithm: Algorithm, rpu: u32, cost: u64) -> Hit {
    Hit {
        key: BucketKey(7),
        overflow: BucketKey(u128::MAX),
        quota: Quota::new(rpu, Unit::Hour, algorithm),
        cost,
        rule_tag: 0,
    }
}

/// The global bucket's verdict on a fetch: `remaining` units after the hit's own cost (and
/// before the lease); a denial can be retried in 5 s.
fn global(allowed: bool, remaining: u64, reset_after: Nanos) -> Verdict {
    Verdict {
        allowed,
        state: 0,
        remaining,
        reset_after,
        retry_after: (!allowed).then_some(5 * SEC),
    }
}

#[test]
fn a_slice_is_one_percent_of_the_capacity_and_at_least_one() {
    assert_eq!(
        slice(&Quota::new(1000, Unit::Hour, Algorithm::TokenBucket)),
        10
    );
    assert_eq!(
        slice(&Quota::new(50, Unit::Hour, Algorithm::TokenBucket)),
        1
    );
}

#[test]
fn a_lease_serves_its_units_then_misses() {
    let leases = Leases::new(100);
    let h = hit(Algorithm::TokenBucket, 1000, 1);
    assert_eq!(leases.take(&h, T0), Take::Miss);
    // The fetching request took its own unit in Redis, and 9 more for the lease.
    leases.fill(&h, &global(true, 999, 36 * SEC), 9, T0);
    let mut served = 0;
    while let Take::Served { verdict, .. } = leases.take(&h, T0) {
        assert!(verdict.allowed);
        served += 1;
        assert_eq!(
            verdict.remaining,
            999 - served,
            "the lease's units and the rest"
        );
    }
    assert_eq!(served, 9, "the lease's 9 units");
}

#[test]
fn a_low_lease_asks_for_one_refill_at_a_time() {
    let leases = Leases::new(100);
    let h = hit(Algorithm::TokenBucket, 1000, 1);
    leases.fill(&Hit { cost: 0, ..h }, &global(true, 1000, 36 * SEC), 10, T0);
    let refills: Vec<bool> = (0..10)
        .map(|_| match leases.take(&h, T0) {
            Take::Served { refill, .. } => refill,
            Take::Miss => panic!("the lease had units"),
        })
        .collect();
    assert_eq!(refills.iter().filter(|r| **r).count(), 1, "{refills:?}");
    assert!(refills[5], "below half a slice: {refills:?}");
    leases.refill_failed(&h);
    // Empty now: the next take misses rather than asking for a refill.
    assert_eq!(leases.take(&h, T0), Take::Miss);
}

#[test]
fn an_empty_global_bucket_denies_locally_until_it_refills() {
    let leases = Leases::new(100);
    let h = hit(Algorithm::TokenBucket, 1000, 1);
    leases.fill(&h, &global(false, 0, 3600 * SEC), 0, T0);
    match leases.take(&h, T0 + SEC) {
        Take::Served { verdict, .. } => {
            assert!(!verdict.allowed);
            assert_eq!(verdict.retry_after, Some(4 * SEC));
        }
        Take::Miss => panic!("should deny locally"),
    }
    assert_eq!(leases.take(&h, T0 + 5 * SEC), Take::Miss);
}

#[test]
fn a_cost_above_the_lease_is_denied_and_keeps_the_lease() {
    let leases = Leases::new(100);
    let h = hit(Algorithm::TokenBucket, 1000, 1);
    leases.fill(&Hit { cost: 0, ..h }, &global(true, 3, 36 * SEC), 3, T0);
    let big = Hit { cost: 5, ..h };
    assert_eq!(leases.take(&big, T0), Take::Miss);
    // Redis denied the 5: the lease keeps its 3, and a smaller cost is still served.
    leases.fill(&big, &global(false, 0, 36 * SEC), 0, T0);
    assert!(matches!(leases.take(&big, T0), Take::Served { verdict, .. } if !verdict.allowed));
    assert!(matches!(leases.take(&h, T0), Take::Served { verdict, .. } if verdict.allowed));
}

#[test]
fn untake_returns_units_to_the_lease() {
    let leases = Leases::new(100);
    let h = hit(Algorithm::TokenBucket, 1000, 2);
    leases.fill(&Hit { cost: 0, ..h }, &global(true, 2, 36 * SEC), 2, T0);
    assert!(matches!(leases.take(&h, T0), Take::Served { .. }));
    assert_eq!(leases.take(&h, T0), Take::Miss);
    leases.untake(&h);
    assert!(matches!(leases.take(&h, T0), Take::Served { verdict, .. } if verdict.allowed));
}

#[test]
fn unused_leases_expire_and_return_their_units_while_they_still_count() {
    let leases = Leases::new(100);
    let tb = hit(Algorithm::TokenBucket, 1000, 1);
    let fw = Hit {
        key: BucketKey(8),
        ..hit(Algorithm::FixedWindow, 1000, 1)
    };
    leases.fill(&tb, &global(true, 10, 36 * SEC), 9, T0);
    // The fixed window ends in half a second: its lease ends with it.
    leases.fill(&fw, &global(true, 10, SEC / 2), 9, T0);
    assert!(leases.expire(T0 + SEC / 4).is_empty());
    // Using a lease keeps it.
    assert!(matches!(
        leases.take(&tb, T0 + SEC / 2),
        Take::Served { .. }
    ));
    assert!(leases.expire(T0 + SEC).is_empty(), "used half a second ago");
    assert_eq!(
        leases.len(),
        1,
        "the ended window's lease is gone, units void"
    );
    let back = leases.expire(T0 + 2 * SEC);
    assert_eq!(
        back,
        vec![Unspent {
            hit: Hit { cost: 1, ..tb },
            tokens: 8
        }]
    );
    assert!(leases.is_empty());
}

#[test]
fn drain_returns_every_unspent_lease() {
    let leases = Leases::new(100);
    let h = hit(Algorithm::TokenBucket, 1000, 1);
    leases.fill(&h, &global(true, 10, 36 * SEC), 9, T0);
    let back = leases.drain();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].tokens, 9);
    assert!(leases.is_empty());
}

#[test]
fn the_table_reports_when_it_is_full() {
    let leases = Leases::new(1);
    let h = hit(Algorithm::TokenBucket, 1000, 1);
    assert!(!leases.is_full());
    leases.fill(&h, &global(true, 10, 36 * SEC), 9, T0);
    assert!(leases.is_full());
}

#[test]
fn one_fetch_per_key_at_a_time() {
    let leases = Leases::new(100);
    let h = hit(Algorithm::TokenBucket, 1000, 1);
    assert!(leases.begin_fetch(&h, T0), "the first miss fetches");
    assert!(
        !leases.begin_fetch(&h, T0),
        "a concurrent miss is decided strictly"
    );
    assert_eq!(leases.take(&h, T0), Take::Miss, "nothing leased yet");
    assert!(
        leases.expire(T0 + SEC / 2).is_empty(),
        "a fetch under way is kept"
    );
    leases.fill(&h, &global(true, 999, 36 * SEC), 9, T0);
    assert!(
        leases.begin_fetch(&h, T0),
        "the fetch ended: the next one may go"
    );
    leases.fetch_failed(&h);
    assert!(matches!(leases.take(&h, T0), Take::Served { verdict, .. } if verdict.allowed));
    let other = Hit {
        key: BucketKey(9),
        ..h
    };
    assert!(leases.begin_fetch(&other, T0));
    leases.fetch_failed(&other);
    assert_eq!(
        leases.len(),
        1,
        "a failed first fetch leaves no lease behind"
    );
    assert!(
        leases.begin_fetch(&other, T0 + 2 * SEC),
        "a fetch abandoned for longer than a lease lives is retried"
    );
}
