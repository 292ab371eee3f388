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

use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use smallvec::SmallVec;

use super::contract::{
    self, Claim, Hit, Outcome, Parts, Recording, Settlement, Settling, Store, Ticket, When,
};
use super::key::{BucketKey, FoldHasher};
use super::reservation::{Book, Reservation};
use crate::algorithm::{self, FRESH, NANOS_PER_MS, Verdict, sliding_log};
use crate::clock::{NANOS_PER_SEC, Nanos};
use crate::quota::Algorithm;

/// How long a bucket stays after it became idle, so a request that read the clock just before
/// a sweep never finds its bucket reset under it.
const IDLE_GRACE: Nanos = NANOS_PER_SEC;

#[derive(Debug)]
struct Bucket {
    state: AtomicU64,
    /// The algorithm scale the state was written at (see `algorithm::scale`); changed only
    /// under the shard's write lock, when a reload changed the rule's rate.
    scale: u64,
    /// The owning rule's tag, so a reload can drop the buckets of removed rules.
    tag: u32,
    algorithm: Algorithm,
    /// Whether the bucket counts against `max_buckets` (overflow buckets do not).
    counted: bool,
}

impl Bucket {
    /// Decides `hit` on this bucket, first re-expressing its state at the hit's scale if a
    /// reload changed it.
    fn decide(&mut self, hit: &Hit, now: Nanos) -> Verdict {
        let scale = algorithm::scale(&hit.quota);
        if self.scale != scale {
            let state = self.state.load(Ordering::Acquire);
            self.state.store(
                algorithm::rescale(&hit.quota, state, now, self.scale),
                Ordering::Release,
            );
            self.scale = scale;
        }
        update(&self.state, |state| {
            algorithm::decide(&hit.quota, state, now, hit.cost)
        })
    }
}

/// A sliding log's bucket: its admitted hits' times, in ms, oldest first.
#[derive(Debug)]
struct LogBucket {
    log: VecDeque<u64>,
    unit_ms: u64,
    tag: u32,
    /// The cap's slots it holds ([`log_slots`]; 0 for an overflow bucket, which holds none).
    slots: usize,
}

/// Timestamps a bucket slot's memory holds: a slot is about 100 bytes, a timestamp 8.
const HITS_PER_SLOT: usize = 12;

/// The slots a sliding log of `quota` holds against the cap: one, and one per 12 hits it can
/// log. So `--max-buckets` bounds memory whatever the algorithm (a log of 10 000 hits costs
/// about 80 KB: 835 slots).
pub fn log_slots(quota: &crate::quota::Quota) -> usize {
    1 + (quota.requests_per_unit() as usize + quota.debt() as usize) / HITS_PER_SLOT
}

/// In-process bucket store.
#[derive(Debug)]
pub struct MemoryStore {
    buckets: DashMap<BucketKey, Bucket, BuildHasherDefault<FoldHasher>>,
    /// Sliding logs, which keep a log instead of a state word (under the shard lock).
    logs: DashMap<BucketKey, LogBucket, BuildHasherDefault<FoldHasher>>,
    live: AtomicUsize,
    evicted: AtomicU64,
    max_buckets: usize,
    /// What `Reserve` tickets hold.
    reservations: Book,
}

/// A verdict and the bucket it was decided on (the hit's own, or its overflow bucket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acquired {
    /// The algorithm's verdict.
    pub verdict: Verdict,
    /// The bucket it was decided on.
    pub key: BucketKey,
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
            logs: DashMap::default(),
            live: AtomicUsize::new(0),
            evicted: AtomicU64::new(0),
            max_buckets,
            reservations: Book::new(max_buckets),
        }
    }

    /// Live per-value buckets (overflow buckets not included).
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Buckets dropped since start: idle, refunded to fresh, or of removed rules.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Settles `claims` at `now` (see [`Store`]): takes from each bucket in turn, then, if the
    /// request is denied, gives back what it took (but debt claims' charges) and reports each
    /// bucket as it stands.
    pub fn settle_now(&self, claims: &[Claim], now: Nanos) -> Settlement {
        let released: SmallVec<[u64; 4]> = claims
            .iter()
            .map(|claim| match claim.ticket {
                Some(Ticket::Settle { id }) => self.settle_reservation(&claim.hit, id, now),
                _ => 0,
            })
            .collect();
        let taken: SmallVec<[Acquired; 4]> =
            claims.iter().map(|c| self.acquire(&c.hit, now)).collect();
        let denied = contract::denied(
            claims
                .iter()
                .zip(&taken)
                .map(|(claim, acquired)| (claim.role, acquired.verdict.allowed)),
        );
        // A state word is this store's business: outcomes carry none, as Redis's.
        let stateless = |verdict: Verdict| Verdict {
            state: 0,
            ..verdict
        };
        let mut outcomes: SmallVec<[Outcome; 4]> = taken
            .iter()
            .zip(released)
            .map(|(acquired, released)| Outcome {
                verdict: stateless(acquired.verdict),
                refunded: false,
                released,
            })
            .collect();
        if !denied {
            self.hold_reservations(claims, &taken, now);
        }
        if denied {
            for ((claim, acquired), outcome) in claims.iter().zip(&taken).zip(&mut outcomes) {
                if acquired.verdict.allowed && claim.hit.cost > 0 && !contract::keeps(claim) {
                    self.refund(&claim.hit, acquired, now);
                    outcome.refunded = true;
                }
            }
            // Once every claim has given back: each bucket as it stands, untouched by the
            // request (also when two claims share a bucket).
            for (claim, outcome) in claims.iter().zip(&mut outcomes) {
                if outcome.refunded {
                    let check = Hit {
                        cost: 0,
                        ..claim.hit
                    };
                    outcome.verdict = stateless(self.acquire(&check, now).verdict);
                }
            }
        }
        Settlement { denied, outcomes }
    }

    /// Gives back what reservation `id` holds on `hit`'s bucket at `now`; returns its units (0
    /// if none is held).
    fn settle_reservation(&self, hit: &Hit, id: u128, now: Nanos) -> u64 {
        let Some(held) = self.reservations.take(id, now) else {
            return 0;
        };
        if hit.quota.algorithm() == Algorithm::SlidingLog {
            if let Some(mut bucket) = self.logs.get_mut(&held.key) {
                sliding_log::release(&mut bucket.log, held.taken_ms, held.units);
            }
        } else if let Some(bucket) = self.buckets.get(&held.key) {
            let release = |state| {
                Some(algorithm::release(
                    &hit.quota,
                    state,
                    held.taken_ms,
                    now,
                    held.units,
                ))
            };
            // Never `None`: the update always succeeds.
            let _ = bucket
                .state
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, release);
        }
        held.units
    }

    /// Holds what the `Reserve` claims of an admitted request took.
    fn hold_reservations(&self, claims: &[Claim], taken: &[Acquired], now: Nanos) {
        for (claim, acquired) in claims.iter().zip(taken) {
            if let Some(Ticket::Reserve { id, ttl }) = claim.ticket
                && acquired.verdict.allowed
                && claim.hit.cost > 0
            {
                let reservation = Reservation {
                    key: acquired.key,
                    units: claim.hit.cost,
                    taken_ms: now / NANOS_PER_MS,
                    expires: now.saturating_add(ttl.as_nanos() as u64),
                };
                self.reservations.hold(id, reservation);
            }
        }
    }

    /// The reservations held.
    pub fn reservations(&self) -> &Book {
        &self.reservations
    }

    /// Takes `hit.cost` from the hit's bucket if it conforms. At the cap, a value without a
    /// bucket of its own is decided on its limit's overflow bucket.
    pub fn acquire(&self, hit: &Hit, now: Nanos) -> Acquired {
        if hit.quota.algorithm() == Algorithm::SlidingLog {
            return self.acquire_log(hit, now);
        }
        if let Some(verdict) = self.decide_existing(hit.key, hit, now) {
            return Acquired {
                verdict,
                key: hit.key,
            };
        }
        let full = self.live() >= self.max_buckets;
        if full && let Some(verdict) = self.decide_existing(hit.overflow, hit, now) {
            return Acquired {
                verdict,
                key: hit.overflow,
            };
        }
        let fresh = algorithm::decide(&hit.quota, FRESH, now, hit.cost);
        if !fresh.consumed(FRESH) {
            // Nothing to remember: checks and denials of a fresh bucket leave it fresh.
            let key = if full { hit.overflow } else { hit.key };
            return Acquired {
                verdict: fresh,
                key,
            };
        }
        let counted = self.reserve();
        let key = if counted { hit.key } else { hit.overflow };
        let verdict = match self.buckets.entry(key) {
            Entry::Occupied(mut existing) => {
                if counted {
                    self.release();
                }
                existing.get_mut().decide(hit, now)
            }
            Entry::Vacant(slot) => {
                slot.insert(Bucket {
                    state: AtomicU64::new(fresh.state),
                    scale: algorithm::scale(&hit.quota),
                    tag: hit.rule_tag,
                    algorithm: hit.quota.algorithm(),
                    counted,
                });
                fresh
            }
        };
        Acquired { verdict, key }
    }

    /// [`MemoryStore::acquire`] for a sliding log: the same cap and overflow rules.
    fn acquire_log(&self, hit: &Hit, now: Nanos) -> Acquired {
        let decide = |log: &mut VecDeque<u64>| sliding_log::decide(&hit.quota, log, now, hit.cost);
        if let Some(mut bucket) = self.logs.get_mut(&hit.key) {
            // A reload may have changed the unit: sweeping goes by the latest.
            bucket.unit_ms = sliding_log::unit_ms(&hit.quota);
            let verdict = decide(&mut bucket.log);
            return Acquired {
                verdict,
                key: hit.key,
            };
        }
        let full = self.live() >= self.max_buckets;
        let mut recorded = VecDeque::new();
        let fresh = decide(&mut recorded);
        if recorded.is_empty() {
            // Nothing to remember: checks and denials that take nothing leave it empty.
            let key = if full { hit.overflow } else { hit.key };
            if let Some(mut bucket) = self.logs.get_mut(&key) {
                return Acquired {
                    verdict: decide(&mut bucket.log),
                    key,
                };
            }
            return Acquired {
                verdict: fresh,
                key,
            };
        }
        let slots = log_slots(&hit.quota);
        let counted = self.reserve_slots(slots);
        let key = if counted { hit.key } else { hit.overflow };
        let mut bucket = match self.logs.entry(key) {
            Entry::Occupied(existing) => {
                if counted {
                    self.release_slots(slots);
                }
                existing.into_ref()
            }
            Entry::Vacant(slot) => slot.insert(LogBucket {
                log: VecDeque::new(),
                unit_ms: sliding_log::unit_ms(&hit.quota),
                tag: hit.rule_tag,
                slots: if counted { slots } else { 0 },
            }),
        };
        Acquired {
            verdict: decide(&mut bucket.log),
            key,
        }
    }

    /// Creates `hit`'s bucket with `remaining` units left at `now`, unless it exists or the
    /// store is at its cap. For the failure policy `local`, which starts each key from its share
    /// of what Redis last reported.
    pub fn seed(&self, hit: &Hit, remaining: u64, now: Nanos) {
        if hit.quota.algorithm() == Algorithm::SlidingLog {
            let slots = log_slots(&hit.quota);
            if self.logs.contains_key(&hit.key) || !self.reserve_slots(slots) {
                return;
            }
            if let Entry::Vacant(slot) = self.logs.entry(hit.key) {
                slot.insert(LogBucket {
                    log: sliding_log::with_remaining(&hit.quota, remaining, now),
                    unit_ms: sliding_log::unit_ms(&hit.quota),
                    tag: hit.rule_tag,
                    slots,
                });
            } else {
                self.release_slots(slots);
            }
            return;
        }
        if self.buckets.contains_key(&hit.key) || !self.reserve() {
            return;
        }
        if let Entry::Vacant(slot) = self.buckets.entry(hit.key) {
            slot.insert(Bucket {
                state: AtomicU64::new(algorithm::with_remaining(&hit.quota, remaining, now)),
                scale: algorithm::scale(&hit.quota),
                tag: hit.rule_tag,
                algorithm: hit.quota.algorithm(),
                counted: true,
            });
        } else {
            self.release();
        }
    }

    /// Drops every bucket.
    pub fn clear(&self) {
        self.drop_where(|_| true, |_| true);
    }

    /// Decides `hit` on the bucket at `key`, if it exists.
    fn decide_existing(&self, key: BucketKey, hit: &Hit, now: Nanos) -> Option<Verdict> {
        let bucket = self.buckets.get(&key)?;
        if bucket.scale == algorithm::scale(&hit.quota) {
            return Some(update(&bucket.state, |state| {
                algorithm::decide(&hit.quota, state, now, hit.cost)
            }));
        }
        // A reload changed the rate: rescale under the write lock.
        drop(bucket);
        self.buckets
            .get_mut(&key)
            .map(|mut bucket| bucket.decide(hit, now))
    }

    /// Gives back what `acquired` (the result of [`MemoryStore::acquire`] for `hit`) took. A
    /// bucket that is as good as fresh afterwards is dropped, freeing its slot, as if the
    /// request had never come.
    pub fn refund(&self, hit: &Hit, acquired: &Acquired, now: Nanos) {
        if hit.quota.algorithm() == Algorithm::SlidingLog {
            if let Some(mut bucket) = self.logs.get_mut(&acquired.key) {
                sliding_log::refund(&mut bucket.log, now, hit.cost);
            }
            if let Some((_, gone)) = self
                .logs
                .remove_if(&acquired.key, |_, bucket| bucket.log.is_empty())
            {
                self.evicted.fetch_add(1, Ordering::Relaxed);
                self.release_slots(gone.slots);
            }
            return;
        }
        let Some(bucket) = self.buckets.get(&acquired.key) else {
            return;
        };
        let after = update(&bucket.state, |state| Verdict {
            state: algorithm::refund(&hit.quota, state, acquired.verdict.state, hit.cost),
            ..acquired.verdict
        });
        let (algorithm, scale) = (bucket.algorithm, bucket.scale);
        drop(bucket);
        let idle = |bucket: &Bucket| {
            let state = bucket.state.load(Ordering::Acquire);
            algorithm::idle_at(bucket.algorithm, state, bucket.scale, now) <= now
        };
        if algorithm::idle_at(algorithm, after.state, scale, now) <= now
            && let Some((_, gone)) = self.buckets.remove_if(&acquired.key, |_, b| idle(b))
        {
            self.evicted.fetch_add(1, Ordering::Relaxed);
            if gone.counted {
                self.release();
            }
        }
    }

    /// Drops every bucket that has been idle since before `now` (less a grace period).
    pub fn sweep(&self, now: Nanos) -> SweepReport {
        self.reservations.expire(now);
        self.drop_where(
            |bucket| {
                let state = bucket.state.load(Ordering::Acquire);
                algorithm::idle_at(bucket.algorithm, state, bucket.scale, now)
                    .saturating_add(IDLE_GRACE)
                    <= now
            },
            |log| sliding_log::idle_at(&log.log, log.unit_ms).saturating_add(IDLE_GRACE) <= now,
        )
    }

    /// Drops the buckets of rules whose tag is in `removed` (rules a reload took away).
    pub fn forget(&self, removed: &HashSet<u32>) -> SweepReport {
        if removed.is_empty() {
            return SweepReport {
                evicted: 0,
                live: self.live(),
            };
        }
        self.drop_where(
            |bucket| removed.contains(&bucket.tag),
            |log| removed.contains(&log.tag),
        )
    }

    fn drop_where(
        &self,
        drop: impl Fn(&Bucket) -> bool,
        drop_log: impl Fn(&LogBucket) -> bool,
    ) -> SweepReport {
        let mut evicted = 0;
        let mut uncounted = 0;
        self.buckets.retain(|_, bucket| {
            let gone = drop(bucket);
            if gone {
                evicted += 1;
                uncounted += usize::from(bucket.counted);
            }
            !gone
        });
        self.logs.retain(|_, log| {
            let gone = drop_log(log);
            if gone {
                evicted += 1;
                uncounted += log.slots;
            }
            !gone
        });
        self.live.fetch_sub(uncounted, Ordering::Relaxed);
        self.evicted.fetch_add(evicted as u64, Ordering::Relaxed);
        SweepReport {
            evicted,
            live: self.live(),
        }
    }

    /// Claims room for one more counted bucket, if the cap allows.
    fn reserve(&self) -> bool {
        self.reserve_slots(1)
    }

    fn release(&self) {
        self.release_slots(1);
    }

    /// Claims `slots` of the cap, if they fit.
    fn reserve_slots(&self, slots: usize) -> bool {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |live| {
                (live + slots <= self.max_buckets).then_some(live + slots)
            })
            .is_ok()
    }

    fn release_slots(&self, slots: usize) {
        self.live.fetch_sub(slots, Ordering::Relaxed);
    }
}

impl Store for MemoryStore {
    fn settle<'a>(&'a self, claims: &'a [Claim], when: When) -> Settling<'a> {
        contract::settled(Ok(self.settle_now(claims, when.now)))
    }

    fn record<'a>(&'a self, usage: &'a [(Hit, u64)], when: When) -> Recording<'a> {
        for (hit, units) in usage {
            let left = self
                .acquire(&Hit { cost: 0, ..*hit }, when.now)
                .verdict
                .remaining;
            let taken = (*units).min(left);
            if taken > 0 {
                self.acquire(
                    &Hit {
                        cost: taken,
                        ..*hit
                    },
                    when.now,
                );
            }
        }
        Box::pin(async { Ok(()) })
    }

    fn forget(&self, removed: &HashSet<u32>) {
        let report = MemoryStore::forget(self, removed);
        if report.evicted > 0 {
            tracing::info!(
                evicted = report.evicted,
                "dropped buckets of removed limits"
            );
        }
    }

    fn sweep(&self, now: Nanos) -> usize {
        let report = MemoryStore::sweep(self, now);
        if report.evicted > 0 {
            tracing::debug!(
                evicted = report.evicted,
                live = report.live,
                "swept idle buckets"
            );
        }
        report.evicted
    }

    fn parts<'a>(&'a self, parts: &mut Parts<'a>) {
        parts.memory = Some(self);
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

mod image;
pub use image::{Image, Saved};

#[cfg(test)]
mod tests;
