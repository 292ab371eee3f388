use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::*;
use crate::quota::{Quota, Unit};

const SEC: u64 = NANOS_PER_SEC;
const T0: u64 = 1_700_000_000 * SEC;

fn hit(key: u128, rpu: u32, cost: u64) -> Hit {
    Hit {
        key: BucketKey(key),
        overflow: BucketKey(u128::MAX),
        quota: Quota::new(rpu, Unit::Minute, Algorithm::TokenBucket),
        cost,
        rule_tag: (key % 2) as u32,
    }
}

#[test]
fn concurrent_callers_never_admit_more_than_the_limit() {
    let store = Arc::new(MemoryStore::new(1000));
    let admitted = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (store, admitted) = (store.clone(), admitted.clone());
            std::thread::spawn(move || {
                for _ in 0..500 {
                    if store.acquire(&hit(1, 1000, 1), T0).verdict.allowed {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(admitted.load(Ordering::Relaxed), 1000);
    assert_eq!(store.live(), 1);
}

#[test]
fn checks_and_denials_of_fresh_buckets_store_nothing() {
    let store = MemoryStore::new(10);
    assert!(store.acquire(&hit(1, 5, 0), T0).verdict.allowed);
    assert!(!store.acquire(&hit(2, 5, 6), T0).verdict.allowed);
    assert!(!store.acquire(&hit(3, 0, 1), T0).verdict.allowed);
    assert_eq!(store.live(), 0);
}

#[test]
fn refund_returns_tokens() {
    let store = MemoryStore::new(10);
    let h = hit(1, 2, 2);
    let taken = store.acquire(&h, T0);
    assert!(taken.verdict.allowed);
    assert!(!store.acquire(&hit(1, 2, 1), T0).verdict.allowed);
    store.refund(&h, &taken, T0);
    assert_eq!(store.acquire(&hit(1, 2, 0), T0).verdict.remaining, 2);
    assert_eq!(store.live(), 0, "a bucket refunded to full frees its slot");
}

#[test]
fn sweeping_drops_only_idle_buckets() {
    let store = MemoryStore::new(10);
    store.acquire(&hit(1, 60, 1), T0); // full again after 1 s
    store.acquire(&hit(2, 1, 1), T0); // full again after 60 s
    assert_eq!(
        store.sweep(T0 + SEC).evicted,
        0,
        "still inside the grace period"
    );
    let report = store.sweep(T0 + 2 * SEC + 1);
    assert_eq!(
        report,
        SweepReport {
            evicted: 1,
            live: 1
        }
    );
    assert!(
        !store.acquire(&hit(2, 1, 1), T0 + 3 * SEC).verdict.allowed,
        "state kept"
    );
}

#[test]
fn at_the_cap_new_values_share_their_limits_overflow_bucket() {
    let store = MemoryStore::new(2);
    assert!(store.acquire(&hit(1, 3, 1), T0).verdict.allowed);
    assert!(store.acquire(&hit(2, 3, 1), T0).verdict.allowed);
    // Full: keys 3.. all land in the overflow bucket, which admits 3 in total.
    let admitted = (3..10)
        .filter(|k| store.acquire(&hit(*k, 3, 1), T0).verdict.allowed)
        .count();
    assert_eq!(admitted, 3);
    assert_eq!(store.live(), 2);
    // Tracked buckets keep their own exact state.
    assert!(store.acquire(&hit(1, 3, 2), T0).verdict.allowed);
    assert!(!store.acquire(&hit(1, 3, 1), T0).verdict.allowed);
    // Once idle buckets are swept, new values get their own bucket again.
    let later = T0 + 62 * SEC;
    assert_eq!(
        store.sweep(later),
        SweepReport {
            evicted: 3,
            live: 0
        }
    );
    assert!(store.acquire(&hit(42, 3, 3), later).verdict.allowed);
    assert_eq!(store.live(), 1);
}

#[test]
fn a_flood_of_unique_values_stays_within_the_cap() {
    let store = MemoryStore::new(100);
    for key in 0..10_000 {
        store.acquire(&hit(key, 1_000_000, 1), T0);
    }
    assert_eq!(store.live(), 100);
    assert_eq!(
        store.buckets.len(),
        101,
        "100 buckets and one overflow bucket"
    );
}

#[test]
fn the_cas_loop_retries_on_interference() {
    let state = AtomicU64::new(0);
    let calls = AtomicU64::new(0);
    let verdict = update(&state, |s| {
        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            state.store(7, Ordering::SeqCst); // another writer gets in between
        }
        Verdict {
            allowed: true,
            state: s + 1,
            remaining: 0,
            reset_after: 0,
            retry_after: None,
        }
    });
    assert_eq!(verdict.state, 8);
    assert_eq!(state.load(Ordering::SeqCst), 8);
}

#[test]
fn a_changed_rate_keeps_the_tokens_consumed() {
    let store = MemoryStore::new(10);
    assert!(store.acquire(&hit(1, 100, 80), T0).verdict.allowed);
    // A reload raises the limit to 200: 80 stay consumed.
    assert_eq!(store.acquire(&hit(1, 200, 0), T0).verdict.remaining, 120);
    assert_eq!(store.acquire(&hit(1, 200, 1), T0).verdict.remaining, 119);
}

#[test]
fn forgetting_a_tag_drops_its_buckets() {
    let store = MemoryStore::new(10);
    for key in 0..4 {
        store.acquire(&hit(key, 5, 1), T0);
    }
    let report = store.forget(&HashSet::from([1]));
    assert_eq!(
        report,
        SweepReport {
            evicted: 2,
            live: 2
        }
    );
    assert_eq!(
        store.acquire(&hit(1, 5, 0), T0).verdict.remaining,
        5,
        "key 1 starts afresh"
    );
    assert_eq!(
        store.acquire(&hit(2, 5, 0), T0).verdict.remaining,
        4,
        "key 2 kept"
    );
}

#[test]
fn refunds_and_checks_use_the_bucket_that_was_charged() {
    let store = MemoryStore::new(1);
    store.acquire(&hit(1, 3, 1), T0);
    // Key 2 is charged to the overflow bucket.
    let taken = store.acquire(&hit(2, 3, 3), T0);
    assert_eq!(taken.key, BucketKey(u128::MAX));
    // A check of key 2 sees the exhausted overflow bucket, not a fresh one.
    assert_eq!(store.acquire(&hit(2, 3, 0), T0).verdict.remaining, 0);
    store.refund(&hit(2, 3, 3), &taken, T0);
    assert!(store.acquire(&hit(2, 3, 3), T0).verdict.allowed);
}

#[test]
fn denied_requests_do_not_hold_bucket_slots() {
    let store = MemoryStore::new(2);
    for key in 10..1000 {
        let h = Hit {
            quota: Quota::new(5, Unit::Day, Algorithm::FixedWindow),
            ..hit(key, 5, 1)
        };
        let taken = store.acquire(&h, T0);
        store.refund(&h, &taken, T0);
    }
    assert_eq!(store.live(), 0);
}

fn log_hit(key: u128, rpu: u32, cost: u64) -> Hit {
    Hit {
        key: BucketKey(key),
        overflow: BucketKey(u128::MAX - 1),
        quota: Quota::new(rpu, Unit::Second, Algorithm::SlidingLog),
        cost,
        rule_tag: 7,
    }
}

#[test]
fn sliding_logs_share_the_cap_and_are_swept_refunded_and_forgotten() {
    let store = MemoryStore::new(2);
    assert!(store.acquire(&log_hit(1, 2, 1), T0).verdict.allowed);
    assert!(store.acquire(&log_hit(2, 2, 1), T0).verdict.allowed);
    assert_eq!(store.live(), 2);
    // At the cap, a new value counts in its limit's overflow log.
    let third = store.acquire(&log_hit(3, 2, 2), T0);
    assert_eq!(third.key, BucketKey(u128::MAX - 1));
    assert!(!store.acquire(&log_hit(4, 2, 1), T0).verdict.allowed);
    // A refund that empties a log frees its slot.
    let taken = store.acquire(&log_hit(1, 2, 1), T0);
    store.refund(&log_hit(1, 2, 1), &taken, T0);
    let first = store.acquire(&log_hit(1, 2, 1), T0);
    store.refund(&log_hit(1, 2, 1), &first, T0);
    assert_eq!(store.live(), 2, "hit 1 still holds its first hit");
    // Idle logs are swept once their last hit left the unit (plus the grace).
    assert_eq!(store.sweep(T0 + SEC).evicted, 0);
    assert_eq!(store.sweep(T0 + 3 * SEC).live, 0);
    assert!(
        store
            .acquire(&log_hit(5, 2, 1), T0 + 3 * SEC)
            .verdict
            .allowed
    );
    assert_eq!(store.forget(&HashSet::from([7])).evicted, 1);
    assert_eq!(store.live(), 0);
}

#[test]
fn exported_buckets_are_imported_only_under_their_quota() {
    let store = MemoryStore::new(10);
    let quota = Quota::new(5, Unit::Minute, Algorithm::TokenBucket);
    store.acquire(&hit(1, 5, 2), T0); // tag 1
    store.acquire(&hit(2, 5, 3), T0); // tag 0
    store.acquire(&log_hit(3, 5, 4), T0); // tag 7
    let quotas: HashMap<u32, Quota> = [(1, quota), (7, log_hit(3, 5, 0).quota)].into();
    let images = store.export(&quotas);
    assert_eq!(images.len(), 3);

    let restored = MemoryStore::new(10);
    assert_eq!(restored.import(images.clone(), &quotas), 3);
    assert_eq!(restored.acquire(&hit(1, 5, 0), T0).verdict.remaining, 3);
    assert_eq!(restored.acquire(&hit(2, 5, 0), T0).verdict.remaining, 2);
    assert_eq!(restored.acquire(&log_hit(3, 5, 0), T0).verdict.remaining, 1);
    assert_eq!(restored.live(), 3);

    let changed: HashMap<u32, Quota> =
        [(1, Quota::new(6, Unit::Minute, Algorithm::TokenBucket))].into();
    let fresh = MemoryStore::new(10);
    assert_eq!(
        fresh.import(images, &changed),
        1,
        "tag 1 changed, tag 7 removed: only the request-sent limit (tag 0) is restored"
    );
    assert_eq!(fresh.acquire(&hit(1, 6, 0), T0).verdict.remaining, 6);
}

#[test]
fn a_seeded_bucket_has_what_it_was_seeded_with() {
    let store = MemoryStore::new(10);
    store.seed(&hit(1, 10, 0), 4, T0);
    assert_eq!(store.acquire(&hit(1, 10, 0), T0).verdict.remaining, 4);
    store.seed(&hit(1, 10, 0), 9, T0);
    assert_eq!(
        store.acquire(&hit(1, 10, 0), T0).verdict.remaining,
        4,
        "an existing bucket is kept"
    );
    store.seed(&log_hit(2, 10, 0), 3, T0);
    assert_eq!(store.acquire(&log_hit(2, 10, 0), T0).verdict.remaining, 3);
    store.clear();
    assert_eq!(store.live(), 0);
    assert_eq!(store.acquire(&hit(1, 10, 0), T0).verdict.remaining, 10);
}

#[test]
fn large_sliding_logs_hold_the_cap_in_proportion_to_their_memory() {
    let store = MemoryStore::new(1000);
    let big = |key| Hit {
        quota: Quota::new(10_000, Unit::Hour, Algorithm::SlidingLog),
        ..log_hit(key, 10_000, 1)
    };
    assert_eq!(super::log_slots(&big(1).quota), 834);
    assert_eq!(store.acquire(&big(1), T0).key, BucketKey(1));
    assert_eq!(store.live(), 834);
    // The next one does not fit: it counts in its limit's overflow bucket instead.
    assert_eq!(store.acquire(&big(2), T0).key, log_hit(2, 1, 1).overflow);
    assert_eq!(store.live(), 834);
    // Small logs still fit in what is left.
    assert_eq!(store.acquire(&log_hit(3, 5, 1), T0).key, BucketKey(3));
    assert_eq!(store.live(), 835);
}
