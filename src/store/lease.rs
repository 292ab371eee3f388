//! Cached mode's local side: tokens leased from the global bucket in Redis, spent here.
//!
//! A replica takes a *slice* of a limit (1 % of its capacity, at least one unit) from Redis
//! and admits requests from it without a round trip; when a lease runs low it is topped up in
//! the background. Leased tokens were taken from the global bucket before they are spent, so
//! replicas together never admit more than the limit; what they can fall short by is the
//! leased tokens not yet spent, at most a slice per replica and key, which are given back when
//! a lease expires (after a second unused, or when its fixed window ends). When the global
//! bucket is empty, the replica remembers until when, and denies locally until then.
//!
//! Nothing here does I/O: the caller fetches and returns leases with the Redis store.

use std::hash::BuildHasherDefault;

use dashmap::DashMap;

use super::Hit;
use super::key::{BucketKey, FoldHasher};
use super::redis::Figures;
use crate::algorithm::Verdict;
use crate::clock::{NANOS_PER_SEC, Nanos};
use crate::quota::{Algorithm, Quota};

/// How long a lease is kept unused before its unspent tokens are given back.
pub const LEASE_TTL: Nanos = NANOS_PER_SEC;

#[derive(Debug)]
struct Lease {
    quota: Quota,
    domain_tag: u64,
    tokens: u64,
    expires: Nanos,
    /// The global bucket was empty: deny here until then.
    denied_until: Nanos,
    /// The global bucket's remaining units and reset time at the last fetch.
    global_remaining: u64,
    reset_at: Nanos,
    retry_after: Option<Nanos>,
    refilling: bool,
}

/// What a lease can say about a hit without asking Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Decided locally; `refill` asks the caller to top the lease up in the background.
    Served {
        /// The verdict.
        verdict: Verdict,
        /// The lease ran low and no top-up is under way.
        refill: bool,
    },
    /// No usable lease: fetch one.
    Miss,
}

/// A lease to give back: its bucket, limit, slot and unspent units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unspent {
    /// The bucket.
    pub key: BucketKey,
    /// Its limit.
    pub quota: Quota,
    /// The domain's hash tag.
    pub domain_tag: u64,
    /// Units leased and not spent.
    pub tokens: u64,
}

/// This replica's leases, at most `max` of them.
#[derive(Debug)]
pub struct Leases {
    leases: DashMap<BucketKey, Lease, BuildHasherDefault<FoldHasher>>,
    max: usize,
}

/// Units leased at a time for `quota`: 1 % of its capacity, at least 1.
pub fn slice(quota: &Quota) -> u64 {
    (u64::from(quota.burst()) / 100).max(1)
}

impl Leases {
    /// No leases yet; room for `max`. Past it, keys without a lease are decided strictly, so
    /// a flood of distinct descriptor values cannot grow this map without bound.
    pub fn new(max: usize) -> Self {
        Self {
            leases: DashMap::default(),
            max,
        }
    }

    /// Whether no new lease may be taken.
    pub fn is_full(&self) -> bool {
        self.leases.len() >= self.max
    }

    /// Leases held.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether no lease is held.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Spends `hit.cost` from the hit's lease if it can, or denies if the global bucket is
    /// known to be empty.
    pub fn take(&self, hit: &Hit, now: Nanos) -> Take {
        let Some(mut lease) = self.leases.get_mut(&hit.key) else {
            return Take::Miss;
        };
        if lease.quota != hit.quota {
            // A reload changed the limit: start over from the global bucket.
            return Take::Miss;
        }
        let enough = if hit.cost == 0 {
            lease.tokens >= 1
        } else {
            lease.tokens >= hit.cost
        };
        if now < lease.expires && enough {
            lease.tokens -= hit.cost;
            lease.expires = lease.expires.max(lease.expiry(now));
            let refill = !lease.refilling && lease.tokens < slice(&hit.quota).div_ceil(2);
            lease.refilling |= refill;
            return Take::Served {
                verdict: lease.admitted(now),
                refill,
            };
        }
        if now < lease.denied_until {
            return Take::Served {
                verdict: lease.denied(now),
                refill: false,
            };
        }
        Take::Miss
    }

    /// Gives `cost` units back to the hit's lease (its request was denied by another limit).
    pub fn untake(&self, hit: &Hit) {
        if let Some(mut lease) = self.leases.get_mut(&hit.key) {
            lease.tokens += hit.cost;
        }
    }

    /// Records a lease fetched for `hit` (`figures` from the script's lease entry) and, if
    /// `spend`, spends the hit's cost from it.
    pub fn fill(
        &self,
        hit: &Hit,
        domain_tag: u64,
        figures: &Figures,
        now: Nanos,
        spend: bool,
    ) -> Verdict {
        let mut lease = self.leases.entry(hit.key).or_insert_with(|| Lease {
            quota: hit.quota,
            domain_tag,
            tokens: 0,
            expires: 0,
            denied_until: 0,
            global_remaining: 0,
            reset_at: 0,
            retry_after: None,
            refilling: false,
        });
        let window_ended =
            lease.quota.algorithm() == Algorithm::FixedWindow && now >= lease.reset_at;
        if lease.quota != hit.quota || window_ended {
            // Old tokens of a changed limit or an ended window are void.
            lease.quota = hit.quota;
            lease.tokens = 0;
        }
        let verdict = figures.verdict;
        lease.tokens += figures.taken;
        lease.refilling = false;
        lease.global_remaining = verdict.remaining;
        lease.reset_at = now.saturating_add(verdict.reset_after);
        lease.retry_after = verdict.retry_after;
        lease.expires = lease.expiry(now);
        lease.denied_until = if figures.taken == 0 {
            now.saturating_add(verdict.retry_after.unwrap_or(verdict.reset_after))
        } else {
            0
        };
        if !spend {
            return lease.admitted(now);
        }
        let enough = if hit.cost == 0 {
            lease.tokens >= 1
        } else {
            lease.tokens >= hit.cost
        };
        if enough {
            lease.tokens -= hit.cost;
            lease.admitted(now)
        } else {
            lease.denied(now)
        }
    }

    /// A top-up for `hit`'s lease failed: allow another.
    pub fn refill_failed(&self, hit: &Hit) {
        if let Some(mut lease) = self.leases.get_mut(&hit.key) {
            lease.refilling = false;
        }
    }

    /// Removes the leases that expired by `now` and returns the unspent units that still
    /// count in Redis (a token bucket's, or a fixed window's that has not ended).
    pub fn expire(&self, now: Nanos) -> Vec<Unspent> {
        let mut unspent = Vec::new();
        self.leases.retain(|key, lease| {
            if now < lease.expires || now < lease.denied_until {
                return true;
            }
            // Giving back is harmless where the window moved on (the script checks it).
            let window_open =
                lease.quota.algorithm() != Algorithm::FixedWindow || now < lease.reset_at;
            if lease.tokens > 0 && window_open {
                unspent.push(lease.unspent(*key));
            }
            false
        });
        unspent
    }

    /// Removes every lease (at shutdown) and returns their unspent units.
    pub fn drain(&self) -> Vec<Unspent> {
        let mut unspent = Vec::new();
        self.leases.retain(|key, lease| {
            if lease.tokens > 0 {
                unspent.push(lease.unspent(*key));
            }
            false
        });
        unspent
    }
}

impl Lease {
    fn unspent(&self, key: BucketKey) -> Unspent {
        Unspent {
            key,
            quota: self.quota,
            domain_tag: self.domain_tag,
            tokens: self.tokens,
        }
    }

    /// When the lease expires if used at `now`: after [`LEASE_TTL`] unused, and for a fixed
    /// window at the window's end at the latest.
    fn expiry(&self, now: Nanos) -> Nanos {
        let unused = now.saturating_add(LEASE_TTL);
        match self.quota.algorithm() {
            // A sliding window's leased hits count where they were leased, as a token
            // bucket's tokens do: they stay good until given back.
            Algorithm::TokenBucket | Algorithm::SlidingWindow | Algorithm::SlidingLog => unused,
            Algorithm::FixedWindow => unused.min(self.reset_at),
        }
    }

    fn admitted(&self, now: Nanos) -> Verdict {
        Verdict {
            allowed: true,
            state: 0,
            remaining: self.tokens.saturating_add(self.global_remaining),
            reset_after: self.reset_at.saturating_sub(now),
            retry_after: None,
        }
    }

    fn denied(&self, now: Nanos) -> Verdict {
        Verdict {
            allowed: false,
            state: 0,
            remaining: self.tokens,
            reset_after: self.reset_at.saturating_sub(now),
            retry_after: self
                .retry_after
                .map(|_| self.denied_until.saturating_sub(now)),
        }
    }
}

#[cfg(test)]
mod tests;
