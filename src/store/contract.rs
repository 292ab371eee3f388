//! The bucket-store contract: one request's claims in, one settlement out.
//!
//! A [`Store`] settles a request at a time. Given the request's [`Claim`]s (one per descriptor
//! that a limit counts: its bucket, its quota, its cost and its part in the settlement) and
//! `now`, it decides each claim with its quota's algorithm, in order, so two claims on one
//! bucket see each other; then it applies the request **all or nothing**:
//!
//! - the request is *denied* when [`denied`] says so (a denying claim did not conform, or every
//!   quota-mode claim is over); a denied request leaves every bucket as it found it, and each
//!   claim that had conformed reports its bucket as it stands without the request
//!   ([`Outcome::refunded`]);
//! - otherwise every claim that conformed keeps its cost, and claims that did not conform (shadow
//!   mode, quota mode) take nothing;
//! - whatever the answer, a claim whose quota runs debt ([`keeps`]) keeps what it took: its
//!   whole cost if it conformed, else its cost down to the debt's ceiling. Its usage happened
//!   (a cost learned after the response), so it is counted even when the request is denied;
//! - a claim may hold a [`Ticket`]: `Reserve` keeps what the claim took, if the request is
//!   admitted, under the ticket's id until it is settled or expires (its units then stay
//!   spent); `Settle` first gives back what that id holds, if anything, then the claim is
//!   decided as any other. A settlement stands whatever the answer.
//!
//! A store may fail ([`Unavailable`]) only as a whole: then nothing of the request was taken
//! anywhere, and a wrapper ([`Failover`]) or the caller decides what to answer.
//!
//! Implementations: [`MemoryStore`] (this process),
//! [`RedisStore`] (script calls in Redis, batched), [`Leasing`](super::Leasing)
//! (cached mode: slices leased from Redis, spent here) and [`Failover`] (the
//! failure policy in front of another store). They give the same answers for the same claims and
//! times: one behaviour suite and a random differential test run against each.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use futures_util::future::{BoxFuture, Either, Ready, ready};
use smallvec::SmallVec;

use super::{Failover, Leases, MemoryStore, RedisStore};
use crate::algorithm::Verdict;
use crate::clock::Nanos;
use crate::quota::Quota;
use crate::rule::Consistency;

use super::key::BucketKey;

/// When a request is settled: the time its algorithms read, and how long its caller waits for
/// the answer, when it said (Envoy's `grpc-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct When {
    /// The clock's reading for this request.
    pub now: Nanos,
    /// How long the caller waits at most.
    pub budget: Option<Duration>,
}

impl When {
    /// At `now`, for a caller that set no deadline.
    pub fn at(now: Nanos) -> Self {
        Self { now, budget: None }
    }

    /// The same, for a caller that waits at most `budget`.
    pub fn within(self, budget: Option<Duration>) -> Self {
        Self { budget, ..self }
    }
}

/// One descriptor's claim on a bucket: what to take and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// The bucket.
    pub key: BucketKey,
    /// The bucket to use instead while a memory store is at its cap and `key` is new.
    pub overflow: BucketKey,
    /// The limit the bucket enforces.
    pub quota: Quota,
    /// Units to take; 0 checks without taking.
    pub cost: u64,
    /// The rule's tag (`Rule::tag`), or 0 for limits sent in the request.
    pub rule_tag: u32,
}

/// How a claim takes part in settling its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Role {
    /// Its not conforming can deny the request (false in shadow mode).
    pub denies: bool,
    /// It is a quota-mode limit: it denies only together with every other quota-mode claim.
    pub quota_mode: bool,
}

/// A claim as a store receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The bucket, quota and cost.
    pub hit: Hit,
    /// Its part in the settlement.
    pub role: Role,
    /// The limit's own `consistency:`, if it sets one (Redis stores only).
    pub consistency: Option<Consistency>,
    /// Its part in a reservation, if it has one.
    pub ticket: Option<Ticket>,
}

/// A claim's part in a reservation: a cost estimated when a request is admitted, settled
/// with the real cost once it is known (after the response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ticket {
    /// Holds what the claim takes under `id` (if the request is admitted) until a `Settle`
    /// of the same id, or `ttl` (after which its units stay spent).
    Reserve {
        /// The reservation: the bucket and the request it is for.
        id: u128,
        /// How long it is held unsettled.
        ttl: Duration,
    },
    /// Gives back what reservation `id` holds before the claim is decided.
    Settle {
        /// The reservation.
        id: u128,
    },
}

/// What a store answers for one claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The algorithm's verdict on the claim's bucket (its `state` is the store's own business
    /// and reads 0).
    pub verdict: Verdict,
    /// It conformed but the request was denied, so nothing was taken; `verdict` then shows the
    /// bucket as it stands without the request.
    pub refunded: bool,
    /// Units a `Settle` ticket found reserved and gave back (0: none was held).
    pub released: u64,
}

/// A settled request: whether it was denied, and one outcome per claim, in claim order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settlement {
    /// The request was denied: nothing was taken.
    pub denied: bool,
    /// One per claim (inline up to four: no allocation).
    pub outcomes: SmallVec<[Outcome; 4]>,
}

/// The store could not settle the request; nothing was taken, unless a call the store gave up
/// on still takes effect: then [`Unavailable::late`] is set, and whoever answers instead must
/// tell it what it answered, so the store can make its late effect agree with that answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("store unavailable: {reason}")]
pub struct Unavailable {
    /// Why.
    pub reason: String,
    /// A call given up on that may still take effect.
    pub late: Option<Late>,
}

impl Unavailable {
    /// Unavailable for `reason`, with nothing under way.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            late: None,
        }
    }
}

impl PartialEq for Unavailable {
    fn eq(&self, other: &Self) -> bool {
        self.reason == other.reason
    }
}

impl Eq for Unavailable {}

/// A call a store gave up on (it outlasted its time) that may still take effect. Told the
/// settlement the request got instead, the store waits for the call's own answer and corrects
/// whatever differs (gives back what it took for a request that was denied, charges what it
/// did not take for one that was admitted). Dropped untold, the call's effect stands.
#[derive(Clone)]
pub struct Late(std::sync::Arc<std::sync::Mutex<Option<Reconcile>>>);

type Reconcile = Box<dyn FnOnce(&Settlement) + Send>;

impl Late {
    /// A late call that `reconcile` corrects once told the answer given.
    pub fn new(reconcile: impl FnOnce(&Settlement) + Send + 'static) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(Some(Box::new(
            reconcile,
        )))))
    }

    /// Tells the store the settlement the request got instead (the first call counts).
    pub fn answered(&self, instead: &Settlement) {
        let reconcile = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(reconcile) = reconcile {
            reconcile(instead);
        }
    }
}

impl fmt::Debug for Late {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Late")
    }
}

/// What [`Store::settle`] returns: ready at once for stores in memory (no allocation), a boxed
/// future for stores that wait on the network.
pub type Settling<'a> = Either<Ready<Result<Settlement, Unavailable>>, BoxFuture<'a, Settled>>;

/// A settlement, or why there is none.
pub type Settled = Result<Settlement, Unavailable>;

/// What [`Store::record`] returns.
pub type Recording<'a> = BoxFuture<'a, Result<(), Unavailable>>;

/// A settlement available now.
pub fn settled(settlement: Settled) -> Settling<'static> {
    Either::Left(ready(settlement))
}

/// The parts a store is made of, for metrics and health (each layer fills in its own).
#[derive(Debug, Default, Clone, Copy)]
pub struct Parts<'a> {
    /// Buckets in this process (the store itself, or the failure policy's `local`).
    pub memory: Option<&'a MemoryStore>,
    /// The Redis store.
    pub redis: Option<&'a RedisStore>,
    /// Cached mode's leases.
    pub leases: Option<&'a Leases>,
    /// The failure policy.
    pub failover: Option<&'a Failover>,
}

/// Where buckets live. See the module documentation for the contract.
pub trait Store: Send + Sync + fmt::Debug {
    /// Decides and settles one request's `claims`, all or nothing, at `when.now`, answering
    /// within `when.budget` if it can.
    fn settle<'a>(&'a self, claims: &'a [Claim], when: When) -> Settling<'a>;

    /// Records usage that already happened, outside any settlement (what the failure policy
    /// admitted during an outage): each hit's units are taken from its bucket, as many as
    /// remain.
    fn record<'a>(&'a self, usage: &'a [(Hit, u64)], when: When) -> Recording<'a>;

    /// Drops what is kept for the rules whose tags are in `removed` (a reload took them away).
    fn forget(&self, removed: &HashSet<u32>) {
        let _ = removed;
    }

    /// Drops buckets idle since before `now`; returns how many. Blocking: scans whole maps.
    fn sweep(&self, now: Nanos) -> usize {
        let _ = now;
        0
    }

    /// Stops background work and gives back what this replica holds (cached-mode leases).
    /// Called once, after the last request has been answered.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Fills in the parts this store is made of.
    fn parts<'a>(&'a self, parts: &mut Parts<'a>);
}

/// Whether `claim` keeps its charge whatever the settlement: its quota runs debt.
pub fn keeps(claim: &Claim) -> bool {
    claim.hit.quota.debt() > 0
}

/// Units `settlement` charged to `claim`'s bucket, as far as the answer tells: its cost if it
/// conformed in an admitted request or if it keeps its charge (at most its cost then), else 0.
pub fn charged(claim: &Claim, outcome: &Outcome, denied: bool) -> u64 {
    if keeps(claim) || (!denied && outcome.verdict.allowed) {
        claim.hit.cost
    } else {
        0
    }
}

/// Whether a request is denied, from each claim's role and whether it conformed: any denying
/// claim that did not conform, or every quota-mode claim over (when there is one).
pub fn denied(claims: impl IntoIterator<Item = (Role, bool)>) -> bool {
    let mut quota_seen = false;
    let mut quota_all_over = true;
    for (role, conforms) in claims {
        let over = !conforms && role.denies;
        if role.quota_mode {
            quota_seen = true;
            quota_all_over &= over;
        } else if over {
            return true;
        }
    }
    quota_seen && quota_all_over
}

/// A verdict that admits `quota` without having looked at a bucket (the failure policy
/// `allow`).
pub fn admitted_blindly(quota: &Quota) -> Verdict {
    Verdict {
        allowed: true,
        state: 0,
        remaining: u64::from(quota.burst()),
        reset_after: 0,
        retry_after: None,
    }
}

/// A verdict that denies `quota` without having looked at a bucket (the failure policy `deny`).
pub fn denied_blindly(quota: &Quota) -> Verdict {
    Verdict {
        allowed: false,
        state: 0,
        remaining: 0,
        reset_after: quota.period_nanos(),
        retry_after: None,
    }
}
