//! The failure policy `local`, spending only this replica's share.
//!
//! While Redis cannot answer, each replica decides from its own memory. Left alone, N replicas
//! would then admit N × a limit. Instead, during an outage each key is enforced here as one
//! of N equal shares of its limit ([`Quota::share`](crate::quota::Quota::share): rate and capacity divided by N, rounded
//! down), N being the live replicas Redis counted before the outage
//! ([`RedisStore::replicas`](super::RedisStore::replicas)); and each key starts from its share
//! of what Redis last reported left for it (a key Redis never reported, or that has refilled
//! since, starts from a full share). Together the replicas then admit at most what was left,
//! plus what refills meanwhile, as one budget would.
//!
//! An outage starts with the first request the inner store fails after one it answered, and
//! starts from empty local buckets; they are kept (and refill) until the next outage starts.
//! What the shares admit meanwhile is owed to the global budget: the first request Redis
//! answers after the outage records it there ([`Store::record`](super::Store::record)), so the
//! outage is not a free refill. (A call that timed out is reconciled on its own instead: see
//! [`reconcile`](super::redis::reconcile).)

use std::hash::BuildHasherDefault;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use dashmap::DashMap;
use smallvec::SmallVec;

use super::contract::{self, Claim, Hit, Settlement};
use super::key::{BucketKey, FoldHasher};
use super::memory::MemoryStore;
use crate::clock::Nanos;

/// What Redis last said of a key.
#[derive(Debug, Clone, Copy)]
struct Seen {
    remaining: u64,
    /// When the bucket is whole again if nothing more is taken.
    whole_at: Nanos,
}

/// This replica's share of each limit, for outages.
#[derive(Debug)]
pub struct LocalShare {
    buckets: MemoryStore,
    seen: DashMap<BucketKey, Seen, BuildHasherDefault<FoldHasher>>,
    max_seen: usize,
    in_outage: AtomicBool,
    /// Units the shares admitted during an outage, by bucket, to record in Redis after it.
    owed: DashMap<BucketKey, (Hit, u64), BuildHasherDefault<FoldHasher>>,
    /// Live replicas when the outage started.
    replicas: AtomicU32,
    starting: Mutex<()>,
    /// Held while what is owed is recorded: requests wait, so none is decided in Redis before
    /// the outage's admissions are counted there.
    recording: tokio::sync::Mutex<()>,
}

impl LocalShare {
    /// Shares kept in at most `max_buckets` buckets, and as many keys remembered.
    pub fn new(max_buckets: usize) -> Self {
        Self {
            buckets: MemoryStore::new(max_buckets),
            seen: DashMap::default(),
            max_seen: max_buckets,
            in_outage: AtomicBool::new(false),
            owed: DashMap::default(),
            replicas: AtomicU32::new(1),
            starting: Mutex::new(()),
            recording: tokio::sync::Mutex::new(()),
        }
    }

    /// The local buckets.
    pub fn buckets(&self) -> &MemoryStore {
        &self.buckets
    }

    /// Whether an outage is under way (the last request fell back).
    pub fn in_outage(&self) -> bool {
        self.in_outage.load(Ordering::Acquire)
    }

    /// Remembers what the inner store reported for `claims` (Redis answered at `now`), and
    /// ends an outage.
    pub fn saw(&self, claims: &[Claim], settlement: &Settlement, now: Nanos) {
        if self.in_outage.load(Ordering::Relaxed) {
            self.in_outage.store(false, Ordering::Release);
        }
        for (claim, outcome) in claims.iter().zip(&settlement.outcomes) {
            let seen = Seen {
                remaining: outcome.verdict.remaining,
                whole_at: now.saturating_add(outcome.verdict.reset_after),
            };
            match self.seen.get_mut(&claim.hit.key) {
                Some(mut known) => *known = seen,
                None if self.seen.len() < self.max_seen => {
                    self.seen.insert(claim.hit.key, seen);
                }
                None => {}
            }
        }
    }

    /// Settles `claims` on this replica's shares, `replicas` sharing each limit (read when an
    /// outage starts).
    pub fn settle(
        &self,
        claims: &[Claim],
        now: Nanos,
        replicas: impl FnOnce() -> u32,
    ) -> Settlement {
        self.start_outage(replicas);
        let parts = self.replicas.load(Ordering::Relaxed);
        let shares: SmallVec<[Claim; 4]> = claims
            .iter()
            .map(|claim| {
                let hit = Hit {
                    quota: claim.hit.quota.share(parts),
                    ..claim.hit
                };
                self.buckets
                    .seed(&hit, self.share_left(&claim.hit, parts, now), now);
                Claim { hit, ..*claim }
            })
            .collect();
        self.buckets.settle_now(&shares, now)
    }

    /// Owes the units `settlement` (decided here, for `claims`) took to the global budget.
    pub fn owe(&self, claims: &[Claim], settlement: &Settlement) {
        for (claim, outcome) in claims.iter().zip(&settlement.outcomes) {
            let units = contract::charged(claim, outcome, settlement.denied);
            if units == 0 {
                continue;
            }
            match self.owed.get_mut(&claim.hit.key) {
                Some(mut owed) => owed.1 = owed.1.saturating_add(units),
                None if self.owed.len() < self.max_seen => {
                    self.owed.insert(claim.hit.key, (claim.hit, units));
                }
                None => {}
            }
        }
    }

    /// Whether the shares admitted something not yet recorded in the global budget.
    pub fn owes(&self) -> bool {
        !self.owed.is_empty()
    }

    /// Records what the shares admitted with `record`, once, before the caller goes on: callers
    /// that come meanwhile wait for it (what is owed stays owed until it is recorded, so they
    /// see it and wait). What cannot be recorded stays owed.
    pub async fn pay<E: std::fmt::Display>(
        &self,
        record: impl AsyncFnOnce(&[(Hit, u64)]) -> Result<(), E>,
    ) {
        let _recording = self.recording.lock().await;
        let owed: Vec<(Hit, u64)> = self.owed.iter().map(|entry| *entry.value()).collect();
        if owed.is_empty() {
            return;
        }
        let units: u64 = owed.iter().map(|(_, units)| units).sum();
        match record(&owed).await {
            Ok(()) => {
                for (hit, paid) in owed {
                    // Owed meanwhile (a new failure) stays owed.
                    self.owed.remove_if_mut(&hit.key, |_, owed| {
                        owed.1 = owed.1.saturating_sub(paid);
                        owed.1 == 0
                    });
                }
                tracing::info!(units, "recorded what the shares admitted during the outage");
            }
            Err(error) => {
                tracing::warn!(%error, units, "what the shares admitted during the outage is not recorded yet");
            }
        }
    }

    /// Drops what no longer says anything: keys whole again, buckets idle.
    pub fn sweep(&self, now: Nanos) -> usize {
        self.seen.retain(|_, seen| now < seen.whole_at);
        self.buckets.sweep(now).evicted
    }

    /// A key's share of what Redis last reported left, or a whole share.
    fn share_left(&self, hit: &Hit, parts: u32, now: Nanos) -> u64 {
        let whole = u64::from(hit.quota.share(parts).burst());
        match self.seen.get(&hit.key) {
            Some(seen) if now < seen.whole_at => {
                (seen.remaining / u64::from(parts.max(1))).min(whole)
            }
            _ => whole,
        }
    }

    fn start_outage(&self, replicas: impl FnOnce() -> u32) {
        if self.in_outage.load(Ordering::Acquire) {
            return;
        }
        let _starting = self
            .starting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.in_outage.load(Ordering::Acquire) {
            return;
        }
        let replicas = replicas().max(1);
        self.buckets.clear();
        self.replicas.store(replicas, Ordering::Relaxed);
        self.in_outage.store(true, Ordering::Release);
        tracing::warn!(
            replicas,
            "redis unavailable: each limit is enforced here as one of {replicas} shares until it answers"
        );
    }
}
