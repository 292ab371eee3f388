//! The failure policy: what to answer while the store behind it cannot (Redis unreachable,
//! failing, or slower than its timeout).
//!
//! [`Failover`] settles through its inner store and, when that fails, answers by the policy:
//! `local` settles on this replica's share of each limit ([`LocalShare`]), `allow` admits and
//! `deny` denies every claim. The inner store took nothing of a request it failed, except by a
//! call it gave up on that still runs: that call is told the policy's answer and reconciles.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::future::{BoxFuture, Either};

use super::contract::{
    self, Claim, Hit, Outcome, Parts, Recording, Settled, Settlement, Settling, Store, When,
};
use super::share::LocalShare;
use crate::clock::Nanos;

/// What to answer while the store behind the policy is unavailable (`--redis-failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailurePolicy {
    /// Decide from this replica's memory buckets.
    Local,
    /// Admit every request.
    Allow,
    /// Deny every request that has a limit.
    Deny,
}

impl std::fmt::Display for FailurePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::cli::write_value(self, f)
    }
}

/// A store behind a failure policy.
#[derive(Debug)]
pub struct Failover {
    inner: Arc<dyn Store>,
    policy: FailurePolicy,
    /// `local`'s shares.
    local: Option<LocalShare>,
    fallbacks: AtomicU64,
}

impl Failover {
    /// Settles through `inner`, answering by `policy` when it fails; `local` keeps at most
    /// `max_buckets` buckets.
    pub fn new(inner: Arc<dyn Store>, policy: FailurePolicy, max_buckets: usize) -> Self {
        Self {
            inner,
            policy,
            local: (policy == FailurePolicy::Local).then(|| LocalShare::new(max_buckets)),
            fallbacks: AtomicU64::new(0),
        }
    }

    /// The policy.
    pub fn policy(&self) -> FailurePolicy {
        self.policy
    }

    /// Claims decided by the policy since start.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// The inner store's settlement, or the policy's answer when it has none (told to a call
    /// the inner store gave up on, so its late effect agrees; or else owed by `local`).
    fn or_fall_back(&self, settled: Settled, claims: &[Claim], now: Nanos) -> Settled {
        match settled {
            Ok(settlement) => Ok(settlement),
            Err(error) => {
                self.fallbacks
                    .fetch_add(claims.len() as u64, Ordering::Relaxed);
                let settlement = self.by_policy(claims, now);
                match (error.late, &self.local) {
                    (Some(late), _) => late.answered(&settlement),
                    (None, Some(local)) => local.owe(claims, &settlement),
                    (None, None) => {}
                }
                Ok(settlement)
            }
        }
    }

    /// Before a request goes to the inner store at `now`, once it is back after an outage:
    /// what `local`'s shares admitted meanwhile is recorded there first.
    async fn pay_the_outage(&self, now: Nanos) {
        let Some(local) = &self.local else { return };
        if !local.owes() || self.inner_is_down() {
            return;
        }
        local
            .pay(async |owed: &[(Hit, u64)]| self.inner.record(owed, When::at(now)).await)
            .await;
    }

    /// Live replicas sharing the inner store's Redis (1 without Redis).
    fn replicas(&self) -> u32 {
        let mut parts = Parts::default();
        self.inner.parts(&mut parts);
        parts.redis.map_or(1, super::RedisStore::replicas)
    }

    /// Whether the inner store's Redis is out of service.
    fn inner_is_down(&self) -> bool {
        let mut parts = Parts::default();
        self.inner.parts(&mut parts);
        parts.redis.is_some_and(super::RedisStore::is_degraded)
    }

    /// The policy's answer.
    fn by_policy(&self, claims: &[Claim], now: Nanos) -> Settlement {
        if let Some(local) = &self.local {
            return local.settle(claims, now, || self.replicas());
        }
        let blindly = match self.policy {
            FailurePolicy::Deny => contract::denied_blindly,
            FailurePolicy::Allow | FailurePolicy::Local => contract::admitted_blindly,
        };
        let outcomes: smallvec::SmallVec<[Outcome; 4]> = claims
            .iter()
            .map(|claim| Outcome {
                verdict: blindly(&claim.hit.quota),
                refunded: false,
                released: 0,
            })
            .collect();
        Settlement {
            denied: contract::denied(
                claims
                    .iter()
                    .zip(&outcomes)
                    .map(|(claim, outcome)| (claim.role, outcome.verdict.allowed)),
            ),
            outcomes,
        }
    }
}

impl Store for Failover {
    fn settle<'a>(&'a self, claims: &'a [Claim], when: When) -> Settling<'a> {
        let now = when.now;
        match self.inner.settle(claims, when) {
            // Settled at once (cached mode's leases): nothing to wait for, nothing to box.
            Either::Left(ready) => {
                contract::settled(self.or_fall_back(ready.into_inner(), claims, now))
            }
            Either::Right(pending) => Either::Right(Box::pin(async move {
                self.pay_the_outage(now).await;
                let settled = pending.await;
                if let (Ok(settlement), Some(local)) = (&settled, &self.local) {
                    local.saw(claims, settlement, now);
                }
                self.or_fall_back(settled, claims, now)
            })),
        }
    }

    fn record<'a>(&'a self, usage: &'a [(Hit, u64)], when: When) -> Recording<'a> {
        self.inner.record(usage, when)
    }

    fn forget(&self, removed: &HashSet<u32>) {
        if let Some(local) = &self.local {
            Store::forget(local.buckets(), removed);
        }
        self.inner.forget(removed);
    }

    fn sweep(&self, now: Nanos) -> usize {
        let local = self.local.as_ref().map_or(0, |local| local.sweep(now));
        local + self.inner.sweep(now)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.inner.close()
    }

    fn parts<'a>(&'a self, parts: &mut Parts<'a>) {
        parts.failover = Some(self);
        if let Some(local) = &self.local {
            parts.memory = Some(local.buckets());
        }
        self.inner.parts(parts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_are_named_as_the_flag_spells_them() {
        let names: Vec<String> = [
            FailurePolicy::Local,
            FailurePolicy::Allow,
            FailurePolicy::Deny,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(names, ["local", "allow", "deny"]);
    }
}
