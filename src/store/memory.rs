//! Buckets in a sharded concurrent map, one atomic word each.
//!
//! A decision is a compare-and-swap loop on the bucket's state word under the map shard's read
//! lock: concurrent callers on one key serialise on the CAS, so they can never admit more than
//! the limit, and no lock is held across the whole map. A bucket is created only when a request
//! consumes from it, and dropped by [`MemoryStore::sweep`] once it is full again (a full
//! bucket carries no information).
//!
//! Memory is capped: past `max_buckets` live buckets, a request whose bucket does not exist
//! yet is counted in its limit's shared *overflow* bucket instead. Existing buckets keep their
//! exact state, a flood of new values shares one limit (it can only exhaust its own overflow
//! bucket), and new values get their own bucket again as soon as sweeping frees room.

use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::Hit;
use super::key::{BucketKey, FoldHasher};
use crate::algorithm::{self, FRESH, Verdict};
use crate::clock::{NANOS_PER_SEC, Nanos};
use crate::quota::Algorithm;

/// How long a bucket stays after it became idle, so a request that read the clock just before
/// a sweep never finds its bucket reset under it.
const IDLE_GRACE: Nanos = NANOS_PER_SEC;

#[derive(Debug)]
struct Bucket {
    state: AtomicU64,
    algorithm: Algorithm,
    /// Whether the bucket counts against `max_buckets` (overflow buckets do not).
    counted: bool,
}

/// In-process bucket store.
#[derive(Debug)]
pub struct MemoryStore {
    buckets: DashMap<BucketKey, Bucket, BuildHasherDefault<FoldHasher>>,
    live: AtomicUsize,
    max_buckets: usize,
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Idle buckets dropped.
    pub evicted: usize,
    /// Buckets left.
    pub live: usize,
}

impl MemoryStore {
    /// An empty store that holds at most `max_buckets` per-value buckets.
    pub fn new(max_buckets: usize) -> Self {
        Self {
            buckets: DashMap::default(),
            live: AtomicUsize::new(0),
            max_buckets,
        }
    }

    /// Live per-value buckets (overflow buckets not included).
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Takes `hit.cost` from the hit's bucket if it conforms.
    pub fn acquire(&self, hit: &Hit, now: Nanos) -> Verdict {
        if let Some(bucket) = self.buckets.get(&hit.key) {
            return update(&bucket.state, |state| {
                algorithm::decide(&hit.quota, state, now, hit.cost)
            });
        }
        let fresh = algorithm::decide(&hit.quota, FRESH, now, hit.cost);
        if !fresh.consumed(FRESH) {
            // Nothing to remember: checks and denials of a fresh bucket leave it fresh.
            return fresh;
        }
        let counted = self.reserve();
        let key = if counted { hit.key } else { hit.overflow };
        match self.buckets.entry(key) {
            Entry::Occupied(existing) => {
                if counted {
                    self.release();
                }
                update(&existing.get().state, |state| {
                    algorithm::decide(&hit.quota, state, now, hit.cost)
                })
            }
            Entry::Vacant(slot) => {
                slot.insert(Bucket {
                    state: AtomicU64::new(fresh.state),
                    algorithm: hit.quota.algorithm(),
                    counted,
                });
                fresh
            }
        }
    }

    /// Gives back what `acquired` (a verdict of [`MemoryStore::acquire`] for `hit`) took.
    pub fn refund(&self, hit: &Hit, acquired: &Verdict) {
        for key in [hit.key, hit.overflow] {
            if let Some(bucket) = self.buckets.get(&key) {
                update(&bucket.state, |state| Verdict {
                    state: algorithm::refund(&hit.quota, state, acquired.state, hit.cost),
                    ..*acquired
                });
                return;
            }
        }
    }

    /// Drops every bucket that has been idle since before `now` (less a grace period).
    pub fn sweep(&self, now: Nanos) -> SweepReport {
        let mut evicted = 0;
        let mut uncounted = 0;
        self.buckets.retain(|_, bucket| {
            let state = bucket.state.load(Ordering::Acquire);
            let keep = algorithm::idle_at(bucket.algorithm, state).saturating_add(IDLE_GRACE) > now;
            if !keep {
                evicted += 1;
                uncounted += usize::from(bucket.counted);
            }
            keep
        });
        self.live.fetch_sub(uncounted, Ordering::Relaxed);
        SweepReport {
            evicted,
            live: self.live(),
        }
    }

    /// Claims room for one more counted bucket, if the cap allows.
    fn reserve(&self) -> bool {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |live| {
                (live < self.max_buckets).then_some(live + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The compare-and-swap loop: decide on the current state, store the result if it changed.
fn update(state: &AtomicU64, decide: impl Fn(u64) -> Verdict) -> Verdict {
    let mut current = state.load(Ordering::Acquire);
    loop {
        let verdict = decide(current);
        if verdict.state == current {
            return verdict;
        }
        match state.compare_exchange_weak(
            current,
            verdict.state,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return verdict,
            Err(actual) => current = actual,
        }
    }
}

#[cfg(test)]
mod tests;
