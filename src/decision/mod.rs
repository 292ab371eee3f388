//! Deciding a request: match each descriptor to a limit, apply the algorithms to the buckets,
//! and settle the outcome all-or-nothing.
//!
//! A request is admitted only if every descriptor that can deny conforms; when it is not, every
//! bucket it took from is given back, so a denied request consumes nothing (the reference
//! service, by contrast, counts denied hits). Shadow-mode limits count but never deny;
//! quota-mode limits deny only when all the request's quota-mode limits are over.

mod global;
mod outcome;
mod request;

pub use global::Global;
pub use outcome::{Code, Decision, DescriptorStatus, ReportedLimit, Usage};
pub use request::{MAX_DESCRIPTORS, RequestError};

use std::sync::Arc;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use smallvec::SmallVec;

use crate::clock::{Clock, Nanos};
use crate::config::RateLimitConfig;
use crate::quota::Algorithm;
use crate::store::{Acquired, Hit, KeyBuilder, MemoryStore};
use request::Limit;

/// Server-wide decision settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Treat every limit as shadow mode: count, never deny.
    pub shadow_mode: bool,
    /// The algorithm of limits Envoy sends in `descriptor.limit`.
    pub default_algorithm: Algorithm,
}

/// The rate limiter: the configuration in force, the buckets and the clock.
pub struct Limiter {
    config: ArcSwap<RateLimitConfig>,
    store: MemoryStore,
    global: Option<Global>,
    keys: KeyBuilder,
    clock: Arc<dyn Clock>,
    settings: Settings,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("settings", &self.settings)
            .field("live_buckets", &self.store.live())
            .finish_non_exhaustive()
    }
}

/// One descriptor's limit, with its bucket claim when it counts.
struct Claim<'a> {
    limit: Limit<'a>,
    hit: Option<Hit>,
    acquired: Option<Acquired>,
    /// Where `acquired` was decided, so a denial gives back to the right place.
    source: Source,
    /// Its hits were given back because the request was denied.
    refunded: bool,
}

/// Where a claim was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// This process's memory buckets.
    Memory,
    /// Redis, atomically with the rest of the request (it gives back by itself).
    Redis,
    /// A cached-mode lease held here.
    Lease,
    /// The Redis failure policy `allow` or `deny`: nothing was taken.
    Policy,
}

impl Limiter {
    /// A limiter serving `config` from `store`, reading time from `clock`.
    pub fn new(
        config: RateLimitConfig,
        store: MemoryStore,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> Self {
        Self {
            config: ArcSwap::from_pointee(config),
            store,
            global: None,
            keys: KeyBuilder::random(),
            clock,
            settings,
        }
    }

    /// Counts limits in Redis through `global`. Bucket identities then no longer depend on a
    /// per-process secret, so every replica (and a restarted one) names a bucket alike.
    pub fn with_global(mut self, global: Global) -> Self {
        self.keys = KeyBuilder::shared(global.key_seed());
        self.global = Some(global);
        self
    }

    /// The Redis side, when limits are counted there.
    pub fn global(&self) -> Option<&Global> {
        self.global.as_ref()
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<RateLimitConfig> {
        self.config.load_full()
    }

    /// Puts `config` in force for the next requests; requests already deciding finish on the
    /// old one. Buckets of rules that `config` no longer has are dropped; every other bucket
    /// is kept (see the README's reload rules).
    pub fn swap_config(&self, config: RateLimitConfig) {
        let kept = config.rule_tags();
        let old = self.config.swap(Arc::new(config));
        let removed = old.rule_tags().difference(&kept).copied().collect();
        let report = self.store.forget(&removed);
        if report.evicted > 0 {
            tracing::info!(
                evicted = report.evicted,
                "dropped buckets of removed limits"
            );
        }
    }

    /// The bucket store.
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// The clock decisions read.
    pub fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    /// Decides `request`, taking from buckets if it is admitted: in Redis when limits are
    /// counted there, else in memory.
    pub async fn decide(&self, request: &RateLimitRequest) -> Result<Decision, RequestError> {
        let Some(global) = &self.global else {
            return self.should_rate_limit(request);
        };
        request::check(request)?;
        let config = self.config.load_full();
        let now = self.clock.now();
        let mut claims = self.claims(&config, request)?;
        global
            .acquire(self, &request.domain, &mut claims, now)
            .await;
        let overall = self.settle(&claims);
        if overall == Code::OverLimit {
            for claim in &mut claims {
                global.give_back(self, claim, now);
            }
            self.report_untouched(&mut claims, now);
        }
        Ok(self.finish(&config, request, overall, &claims))
    }

    /// Decides `request` on this process's memory buckets only (the memory store, and the
    /// Redis failure policy `local`).
    pub fn should_rate_limit(&self, request: &RateLimitRequest) -> Result<Decision, RequestError> {
        request::check(request)?;
        let config = self.config.load();
        let now = self.clock.now();
        let mut claims = self.claims(&config, request)?;
        for claim in &mut claims {
            self.acquire_in_memory(claim, now);
        }
        let overall = self.settle(&claims);
        if overall == Code::OverLimit {
            for claim in &mut claims {
                self.give_back_in_memory(claim, now);
            }
            self.report_untouched(&mut claims, now);
        }
        Ok(self.finish(&config, request, overall, &claims))
    }

    /// Each descriptor's limit and bucket claim, after `replaces`.
    fn claims<'c>(
        &self,
        config: &'c RateLimitConfig,
        request: &RateLimitRequest,
    ) -> Result<SmallVec<[Claim<'c>; 4]>, RequestError> {
        let mut claims: SmallVec<[Claim<'_>; 4]> = SmallVec::new();
        for (index, descriptor) in request.descriptors.iter().enumerate() {
            let limit = request::limit(config, request, index, self.settings.default_algorithm)?;
            let cost = request::cost(request, descriptor);
            let hit = limit.hit(&self.keys, &request.domain, &descriptor.entries, cost);
            claims.push(Claim {
                limit,
                hit,
                acquired: None,
                source: Source::Memory,
                refunded: false,
            });
        }
        drop_replaced(&mut claims);
        Ok(claims)
    }

    fn acquire_in_memory(&self, claim: &mut Claim<'_>, now: Nanos) {
        claim.source = Source::Memory;
        claim.acquired = claim.hit.as_ref().map(|hit| self.store.acquire(hit, now));
    }

    /// Gives back what a memory claim took, for a denied request.
    fn give_back_in_memory(&self, claim: &mut Claim<'_>, now: Nanos) {
        if let (Some(hit), Some(acquired)) = (&claim.hit, &claim.acquired) {
            if acquired.verdict.allowed && hit.cost > 0 {
                self.store.refund(hit, acquired, now);
                claim.refunded = true;
            }
        }
    }

    /// Once every claim of a denied request has given back, reports each memory bucket as it
    /// stands, untouched by the request (also when two claims share a bucket).
    fn report_untouched(&self, claims: &mut [Claim<'_>], now: Nanos) {
        for claim in claims {
            if let (true, Source::Memory, Some(hit), Some(acquired)) = (
                claim.refunded,
                claim.source,
                &claim.hit,
                &mut claim.acquired,
            ) {
                *acquired = self.store.acquire(&Hit { cost: 0, ..*hit }, now);
            }
        }
    }

    fn finish(
        &self,
        config: &RateLimitConfig,
        request: &RateLimitRequest,
        overall: Code,
        claims: &[Claim<'_>],
    ) -> Decision {
        Decision {
            overall,
            unknown_domain: config.domain(&request.domain).is_none(),
            statuses: claims.iter().map(|c| self.status(c)).collect(),
        }
    }

    /// Whether the claim's limit may deny at all (not in shadow mode).
    fn can_deny(&self, claim: &Claim<'_>) -> bool {
        !self.settings.shadow_mode && !claim.limit.rule().is_some_and(|r| r.shadow_mode)
    }

    fn denies(&self, claim: &Claim<'_>) -> bool {
        claim.acquired.is_some_and(|a| !a.verdict.allowed) && self.can_deny(claim)
    }

    fn settle(&self, claims: &[Claim<'_>]) -> Code {
        let quota_mode = |c: &&Claim<'_>| c.limit.rule().is_some_and(|r| r.quota_mode);
        let strict_denial = claims
            .iter()
            .filter(|c| !quota_mode(c))
            .any(|c| self.denies(c));
        let mut quota_claims = claims
            .iter()
            .filter(|c| c.hit.is_some())
            .filter(quota_mode)
            .peekable();
        let quota_denial = quota_claims.peek().is_some() && quota_claims.all(|c| self.denies(c));
        if strict_denial || quota_denial {
            Code::OverLimit
        } else {
            Code::Ok
        }
    }

    fn status(&self, claim: &Claim<'_>) -> DescriptorStatus {
        if claim.limit.is_unlimited() {
            return DescriptorStatus::unlimited();
        }
        match (&claim.hit, &claim.acquired) {
            (Some(hit), Some(Acquired { verdict, .. })) => {
                let denies = self.denies(claim);
                let code = if denies { Code::OverLimit } else { Code::Ok };
                let capacity = hit.quota.burst();
                let mut used_after = u64::from(capacity).saturating_sub(verdict.remaining);
                if claim.refunded {
                    used_after += hit.cost;
                }
                let usage = Usage {
                    rule: claim.limit.rule().cloned(),
                    hits: hit.cost,
                    capacity,
                    used_after,
                    over_limit: !verdict.allowed,
                    shadowed: !verdict.allowed && !denies,
                };
                DescriptorStatus::limited(code, claim.limit.name(), &hit.quota, verdict, usage)
            }
            _ => DescriptorStatus::no_limit(),
        }
    }
}

/// Drops limits whose `name` another matched limit `replaces`.
fn drop_replaced(claims: &mut [Claim<'_>]) {
    let replaced: Vec<Arc<str>> = claims
        .iter()
        .filter_map(|c| c.limit.rule())
        .flat_map(|rule| rule.replaces.iter().cloned())
        .collect();
    if replaced.is_empty() {
        return;
    }
    for claim in claims {
        let name = claim.limit.rule().and_then(|rule| rule.name.as_ref());
        if name.is_some_and(|n| replaced.contains(n)) {
            claim.limit = Limit::None;
            claim.hit = None;
        }
    }
}

#[cfg(test)]
mod tests;
