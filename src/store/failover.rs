//! The failure policy: what to answer while the store behind it cannot (Redis unreachable,
//! failing, or slower than its timeout).
//!
//! [`Failover`] settles through its inner store and, when that fails, answers by the policy:
//! `local` settles on this replica's own memory buckets, `allow` admits and `deny` denies every
//! claim. The inner store took nothing of a request it failed, so the policy's answer is the
//! only one counted.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::future::{BoxFuture, Either};

use super::contract::{self, Claim, Outcome, Parts, Settled, Settlement, Settling, Store};
use super::memory::MemoryStore;
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
    /// `local`'s buckets.
    local: Option<MemoryStore>,
    fallbacks: AtomicU64,
}

impl Failover {
    /// Settles through `inner`, answering by `policy` when it fails; `local` keeps at most
    /// `max_buckets` buckets.
    pub fn new(inner: Arc<dyn Store>, policy: FailurePolicy, max_buckets: usize) -> Self {
        Self {
            inner,
            policy,
            local: (policy == FailurePolicy::Local).then(|| MemoryStore::new(max_buckets)),
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

    /// The inner store's settlement, or the policy's answer when it has none.
    fn or_fall_back(&self, settled: Settled, claims: &[Claim], now: Nanos) -> Settled {
        match settled {
            Ok(settlement) => Ok(settlement),
            Err(_) => {
                self.fallbacks
                    .fetch_add(claims.len() as u64, Ordering::Relaxed);
                Ok(self.by_policy(claims, now))
            }
        }
    }

    /// The policy's answer.
    fn by_policy(&self, claims: &[Claim], now: Nanos) -> Settlement {
        if let Some(local) = &self.local {
            return local.settle_now(claims, now);
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
    fn settle<'a>(&'a self, claims: &'a [Claim], now: Nanos) -> Settling<'a> {
        match self.inner.settle(claims, now) {
            // Settled at once (cached mode's leases): nothing to wait for, nothing to box.
            Either::Left(ready) => {
                contract::settled(self.or_fall_back(ready.into_inner(), claims, now))
            }
            Either::Right(pending) => Either::Right(Box::pin(async move {
                self.or_fall_back(pending.await, claims, now)
            })),
        }
    }

    fn forget(&self, removed: &HashSet<u32>) {
        if let Some(local) = &self.local {
            Store::forget(local, removed);
        }
        self.inner.forget(removed);
    }

    fn sweep(&self, now: Nanos) -> usize {
        let local = self
            .local
            .as_ref()
            .map_or(0, |local| Store::sweep(local, now));
        local + self.inner.sweep(now)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.inner.close()
    }

    fn parts<'a>(&'a self, parts: &mut Parts<'a>) {
        parts.failover = Some(self);
        if let Some(local) = &self.local {
            parts.memory = Some(local);
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
