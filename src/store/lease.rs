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
//! One fetch per key at a time: [`Leases::begin_fetch`] marks a key's fetch as under way, and
//! concurrent misses on it are decided strictly instead of each leasing a slice of their own.
//!
//! Nothing here does I/O: [`Leasing`](super::Leasing) fetches and returns leases with the Redis
//! store.

use std::collections::HashSet;
use std::hash::BuildHasherDefault;

use dashmap::DashMap;

use super::contract::Hit;
use super::key::{BucketKey, FoldHasher};
use crate::algorithm::Verdict;
use crate::clock::{NANOS_PER_SEC, Nanos};
use crate::quota::{Algorithm, Quota};

/// How long a lease is kept unused before its unspent tokens are given back.
pub const LEASE_TTL: Nanos = NANOS_PER_SEC;

#[derive(Debug)]
struct Lease {
    /// The bucket and limit (its cost is not used).
    hit: Hit,
    tokens: u64,
    expires: Nanos,
    /// The global bucket had too little for `denied_cost` units: deny that many (or more) here
    /// until then.
    denied_until: Nanos,
    denied_cost: u64,
    /// The global bucket's remaining units and reset time at the last fetch.
    global_remaining: u64,
    reset_at: Nanos,
    retry_after: Option<Nanos>,
    refilling: bool,
    /// A fetch for this key has been under way since then.
    fetching: Option<Nanos>,
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

/// A lease to give back: its bucket and limit, and its unspent units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unspent {
    /// The bucket and limit.
    pub hit: Hit,
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
        if lease.hit.quota != hit.quota {
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
            // A slice of one unit is fetched per request: topping it up would only strand it.
            let slice = slice(&hit.quota);
            let refill = slice > 1 && !lease.refilling && lease.tokens < slice.div_ceil(2);
            lease.refilling |= refill;
            return Take::Served {
                verdict: lease.admitted(now),
                refill,
            };
        }
        // A check conforms at the limit, so only Redis can tell it is over.
        if now < lease.denied_until && hit.cost > 0 && hit.cost >= lease.denied_cost {
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

    /// Records a fetch for `hit`: `leased` units go into its lease; `verdict` is the global
    /// bucket's answer to the fetch (remaining and times after it). When the bucket could not
    /// cover the hit, a hit of its cost or more is denied here until the verdict says it could.
    pub fn fill(&self, hit: &Hit, verdict: &Verdict, leased: u64, now: Nanos) {
        let mut lease = self
            .leases
            .entry(hit.key)
            .or_insert_with(|| Lease::empty(hit));
        let window_ended =
            lease.hit.quota.algorithm() == Algorithm::FixedWindow && now >= lease.reset_at;
        if lease.hit.quota != hit.quota || window_ended {
            // Old tokens of a changed limit or an ended window are void.
            lease.tokens = 0;
        }
        lease.hit = *hit;
        lease.fetching = None;
        lease.tokens += leased;
        lease.refilling = false;
        lease.global_remaining = verdict.remaining.saturating_sub(leased);
        lease.reset_at = now.saturating_add(verdict.reset_after);
        lease.retry_after = verdict.retry_after;
        lease.expires = lease.expiry(now);
        lease.denied_until = if verdict.allowed {
            0
        } else {
            now.saturating_add(verdict.retry_after.unwrap_or(verdict.reset_after))
        };
        lease.denied_cost = hit.cost.max(1);
    }

    /// Marks a fetch of `hit`'s lease as under way at `now`. False when another is already
    /// (the caller decides the hit strictly instead) or no new lease fits.
    pub fn begin_fetch(&self, hit: &Hit, now: Nanos) -> bool {
        if let Some(mut lease) = self.leases.get_mut(&hit.key) {
            let fetching = lease
                .fetching
                .is_some_and(|since| now < since.saturating_add(LEASE_TTL));
            if fetching || lease.refilling {
                return false;
            }
            lease.fetching = Some(now);
            return true;
        }
        if self.is_full() {
            return false;
        }
        let mut placed = false;
        self.leases.entry(hit.key).or_insert_with(|| {
            placed = true;
            Lease {
                fetching: Some(now),
                ..Lease::empty(hit)
            }
        });
        placed
    }

    /// A fetch for `hit`'s lease failed: let the next miss try again.
    pub fn fetch_failed(&self, hit: &Hit) {
        self.leases
            .remove_if(&hit.key, |_, lease| lease.tokens == 0 && lease.expires == 0);
        if let Some(mut lease) = self.leases.get_mut(&hit.key) {
            lease.fetching = None;
        }
    }

    /// Units held in `hit`'s lease.
    pub fn tokens(&self, hit: &Hit) -> u64 {
        self.leases.get(&hit.key).map_or(0, |lease| lease.tokens)
    }

    /// A top-up for `hit`'s lease failed (or was not needed): allow another.
    pub fn refill_failed(&self, hit: &Hit) {
        if let Some(mut lease) = self.leases.get_mut(&hit.key) {
            lease.refilling = false;
        }
    }

    /// Removes the leases that expired by `now` and returns the unspent units that still
    /// count in Redis (a token bucket's, or a fixed window's that has not ended).
    pub fn expire(&self, now: Nanos) -> Vec<Unspent> {
        let mut unspent = Vec::new();
        self.leases.retain(|_, lease| {
            let fetching = lease
                .fetching
                .is_some_and(|since| now < since.saturating_add(LEASE_TTL));
            if fetching || now < lease.expires || now < lease.denied_until {
                return true;
            }
            // Giving back is harmless where the window moved on (the script checks it).
            let window_open =
                lease.hit.quota.algorithm() != Algorithm::FixedWindow || now < lease.reset_at;
            if lease.tokens > 0 && window_open {
                unspent.push(lease.unspent());
            }
            false
        });
        unspent
    }

    /// Removes every lease (at shutdown) and returns their unspent units.
    pub fn drain(&self) -> Vec<Unspent> {
        let mut unspent = Vec::new();
        self.leases.retain(|_, lease| {
            if lease.tokens > 0 {
                unspent.push(lease.unspent());
            }
            false
        });
        unspent
    }

    /// Removes the leases of the rules whose tags are in `removed` and returns their unspent
    /// units.
    pub fn forget(&self, removed: &HashSet<u32>) -> Vec<Unspent> {
        let mut unspent = Vec::new();
        self.leases.retain(|_, lease| {
            if !removed.contains(&lease.hit.rule_tag) {
                return true;
            }
            if lease.tokens > 0 {
                unspent.push(lease.unspent());
            }
            false
        });
        unspent
    }
}

impl Lease {
    /// A lease of `hit`'s bucket holding nothing yet.
    fn empty(hit: &Hit) -> Self {
        Self {
            hit: *hit,
            tokens: 0,
            expires: 0,
            denied_until: 0,
            denied_cost: 0,
            global_remaining: 0,
            reset_at: 0,
            retry_after: None,
            refilling: false,
            fetching: None,
        }
    }

    fn unspent(&self) -> Unspent {
        Unspent {
            hit: self.hit,
            tokens: self.tokens,
        }
    }

    /// When the lease expires if used at `now`: after [`LEASE_TTL`] unused, and for a fixed
    /// window at the window's end at the latest.
    fn expiry(&self, now: Nanos) -> Nanos {
        let unused = now.saturating_add(LEASE_TTL);
        match self.hit.quota.algorithm() {
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
