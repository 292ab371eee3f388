//! Deciding with buckets in Redis: strict limits in one atomic script call per request, cached
//! limits from local leases, and the failure policy when Redis does not answer in time.
//!
//! Order of work for one request: cached limits are served from their leases (one script call
//! fetches the leases that are missing); then the strict limits go to Redis in one call that
//! also carries the cached verdicts, so the script settles the whole request all or nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use smallvec::SmallVec;

use super::{Claim, Limiter, Source};
use crate::algorithm::Verdict;
use crate::clock::Nanos;
use crate::store::lease::{self, Take, Unspent};
use crate::store::redis::{Entry, Role};
use crate::store::{Acquired, Consistency, FailurePolicy, Hit, Leases, RedisStore};

/// Leases held at most unless [`Global::with_max_leases`] says otherwise.
const DEFAULT_MAX_LEASES: usize = 1_000_000;

/// Redis-backed counting: the store, this replica's leases and the policies.
#[derive(Debug)]
pub struct Global {
    redis: Arc<RedisStore>,
    leases: Arc<Leases>,
    consistency: Consistency,
    failure: FailurePolicy,
    key_seed: String,
    fallbacks: AtomicU64,
}

impl Global {
    /// Counts in `redis`, with `consistency` for limits that set none, answering by `failure`
    /// while Redis is unavailable. `key_seed` (the key prefix) names buckets alike on every
    /// replica.
    pub fn new(
        redis: Arc<RedisStore>,
        consistency: Consistency,
        failure: FailurePolicy,
        key_seed: &str,
    ) -> Self {
        Self {
            redis,
            leases: Arc::new(Leases::new(DEFAULT_MAX_LEASES)),
            consistency,
            failure,
            key_seed: key_seed.to_owned(),
            fallbacks: AtomicU64::new(0),
        }
    }

    /// Holds at most `max` cached-mode leases (default 1 000 000); past it, limits without a
    /// lease are decided strictly, so distinct descriptor values cannot grow memory unbounded.
    pub fn with_max_leases(mut self, max: usize) -> Self {
        self.leases = Arc::new(Leases::new(max));
        self
    }

    pub(super) fn key_seed(&self) -> &str {
        &self.key_seed
    }

    /// The Redis store.
    pub fn redis(&self) -> &Arc<RedisStore> {
        &self.redis
    }

    /// Descriptors decided by the failure policy since start.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// The failure policy's flag value.
    pub fn failure_name(&self) -> &'static str {
        match self.failure {
            FailurePolicy::Local => "local",
            FailurePolicy::Allow => "allow",
            FailurePolicy::Deny => "deny",
        }
    }

    /// This replica's cached-mode leases.
    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    fn consistency_of(&self, claim: &Claim<'_>) -> Consistency {
        claim
            .limit
            .rule()
            .and_then(|rule| rule.consistency)
            .unwrap_or(self.consistency)
    }

    /// Decides every counted claim of a request in `domain`.
    pub(super) async fn acquire(
        &self,
        limiter: &Limiter,
        domain: &str,
        claims: &mut [Claim<'_>],
        now: Nanos,
    ) {
        let tag = limiter.keys.domain_tag(domain);
        self.acquire_cached(limiter, tag, claims, now).await;
        self.acquire_strict(limiter, tag, claims, now).await;
    }

    async fn acquire_cached(
        &self,
        limiter: &Limiter,
        tag: u64,
        claims: &mut [Claim<'_>],
        now: Nanos,
    ) {
        let mut misses: SmallVec<[usize; 4]> = SmallVec::new();
        for (index, claim) in claims.iter_mut().enumerate() {
            let Some(hit) = claim.hit else { continue };
            if self.consistency_of(claim) != Consistency::Cached {
                continue;
            }
            match self.leases.take(&hit, now) {
                Take::Served { verdict, refill } => {
                    claim.source = Source::Lease;
                    claim.acquired = Some(Acquired {
                        verdict,
                        key: hit.key,
                    });
                    if refill {
                        self.refill(limiter, hit, tag);
                    }
                }
                // No room for another lease: the strict path decides it.
                Take::Miss if self.leases.is_full() => {}
                Take::Miss => misses.push(index),
            }
        }
        if misses.is_empty() {
            return;
        }
        let entries: SmallVec<[Entry; 4]> = misses
            .iter()
            .filter_map(|&index| claims[index].hit)
            .map(|hit| Entry {
                key: hit.key,
                quota: hit.quota,
                cost: hit.cost.max(lease::slice(&hit.quota)),
                role: Role::Lease,
            })
            .collect();
        match self.redis.run(tag, &entries, now).await {
            Ok(figures) => {
                for (&index, figures) in misses.iter().zip(&figures) {
                    let claim = &mut claims[index];
                    let Some(hit) = claim.hit else { continue };
                    claim.source = Source::Lease;
                    claim.acquired = Some(Acquired {
                        verdict: self.leases.fill(&hit, tag, figures, now, true),
                        key: hit.key,
                    });
                }
            }
            Err(_) => {
                for &index in &misses {
                    self.fall_back(limiter, &mut claims[index], now);
                }
            }
        }
    }

    async fn acquire_strict(
        &self,
        limiter: &Limiter,
        tag: u64,
        claims: &mut [Claim<'_>],
        now: Nanos,
    ) {
        let strict = |claim: &Claim<'_>| claim.hit.is_some() && claim.acquired.is_none();
        if !claims.iter().any(strict) {
            return;
        }
        let entries: SmallVec<[Entry; 4]> = claims
            .iter()
            .filter_map(|claim| {
                let hit = claim.hit?;
                let denies = limiter.can_deny(claim);
                let quota = claim.limit.rule().is_some_and(|rule| rule.quota_mode);
                let role = match claim.acquired {
                    None => Role::Decide { denies, quota },
                    Some(acquired) => Role::Decided {
                        allowed: acquired.verdict.allowed,
                        denies,
                        quota,
                    },
                };
                Some(Entry {
                    key: hit.key,
                    quota: hit.quota,
                    cost: hit.cost,
                    role,
                })
            })
            .collect();
        match self.redis.run(tag, &entries, now).await {
            Ok(figures) => {
                let counted = claims.iter_mut().filter(|claim| claim.hit.is_some());
                for (claim, (entry, figures)) in counted.zip(entries.iter().zip(&figures)) {
                    if matches!(entry.role, Role::Decide { .. }) {
                        claim.source = Source::Redis;
                        claim.refunded = figures.refunded;
                        claim.acquired = Some(Acquired {
                            verdict: figures.verdict,
                            key: entry.key,
                        });
                    }
                }
            }
            Err(_) => {
                for claim in claims.iter_mut().filter(|claim| strict(claim)) {
                    self.fall_back(limiter, claim, now);
                }
            }
        }
    }

    /// Decides a claim by the failure policy.
    fn fall_back(&self, limiter: &Limiter, claim: &mut Claim<'_>, now: Nanos) {
        let Some(hit) = claim.hit else { return };
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        let verdict = match self.failure {
            FailurePolicy::Local => return limiter.acquire_in_memory(claim, now),
            FailurePolicy::Allow => Verdict {
                allowed: true,
                state: 0,
                remaining: u64::from(hit.quota.burst()),
                reset_after: 0,
                retry_after: None,
            },
            FailurePolicy::Deny => Verdict {
                allowed: false,
                state: 0,
                remaining: 0,
                reset_after: hit.quota.unit().nanos(),
                retry_after: None,
            },
        };
        claim.source = Source::Policy;
        claim.acquired = Some(Acquired {
            verdict,
            key: hit.key,
        });
    }

    /// Gives back what a claim of a denied request took, wherever it took it.
    pub(super) fn give_back(&self, limiter: &Limiter, claim: &mut Claim<'_>, now: Nanos) {
        match claim.source {
            Source::Memory => limiter.give_back_in_memory(claim, now),
            Source::Lease => {
                if let (Some(hit), Some(acquired)) = (&claim.hit, &mut claim.acquired) {
                    if acquired.verdict.allowed && hit.cost > 0 {
                        self.leases.untake(hit);
                        acquired.verdict.remaining += hit.cost;
                        claim.refunded = true;
                    }
                }
            }
            // Redis gave back in the same script call; the policies took nothing.
            Source::Redis | Source::Policy => {}
        }
    }

    /// Tops up `hit`'s lease in the background.
    fn refill(&self, limiter: &Limiter, hit: Hit, tag: u64) {
        let (redis, leases, clock) = (
            self.redis.clone(),
            self.leases.clone(),
            limiter.clock.clone(),
        );
        tokio::spawn(async move {
            let now = clock.now();
            let entry = Entry {
                key: hit.key,
                quota: hit.quota,
                cost: lease::slice(&hit.quota),
                role: Role::Lease,
            };
            match redis.run(tag, &[entry], now).await {
                Ok(figures) => {
                    leases.fill(&hit, tag, &figures[0], now, false);
                }
                Err(_) => leases.refill_failed(&hit),
            }
        });
    }

    /// Gives back the unspent tokens of leases expired by `now` (all of them if `all`, at
    /// shutdown). Returns how many leases were given back.
    pub async fn return_leases(&self, now: Nanos, all: bool) -> usize {
        let unspent = if all {
            self.leases.drain()
        } else {
            self.leases.expire(now)
        };
        let mut by_slot: HashMap<u64, Vec<Entry>> = HashMap::new();
        for Unspent {
            key,
            quota,
            domain_tag,
            tokens,
        } in &unspent
        {
            by_slot.entry(*domain_tag).or_default().push(Entry {
                key: *key,
                quota: *quota,
                cost: *tokens,
                role: Role::GiveBack,
            });
        }
        for (tag, entries) in by_slot {
            if let Err(error) = self.redis.run(tag, &entries, now).await {
                tracing::debug!(%error, leases = entries.len(), "unspent leases not given back");
            }
        }
        unspent.len()
    }
}
