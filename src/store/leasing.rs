//! Cached mode: claims served from slices leased from Redis, in front of the Redis store.
//!
//! A claim whose limit is cached (its `consistency:`, or the server's) is decided from this
//! replica's lease of its bucket ([`Leases`]); a miss fetches a lease first (one fetch per key
//! at a time: concurrent misses on a key being fetched are decided strictly). Claims decided
//! strictly, and the leased verdicts, are then settled together by one `decide.lua` call, so
//! the request stays all or nothing; a request with only leased claims is settled here.
//!
//! The store owns one background task: it tops up leases that run low, gives back the unspent
//! units of leases unused for [`LEASE_TTL`](super::lease::LEASE_TTL), and, at
//! [`Store::close`], waits for the top-ups under way, then gives every lease back.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{BoxFuture, Either};
use smallvec::SmallVec;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::contract::{
    self, Claim, Hit, Outcome, Parts, Recording, Settled, Settlement, Settling, Store, When,
};
use super::lease::{self, Leases, Take};
use super::redis::RedisStore;
use super::redis::wire::Figures;
use crate::algorithm::Verdict;
use crate::clock::{Clock, Nanos};
use crate::rule::Consistency;

/// How often unused leases are given back.
const UPKEEP_EVERY: Duration = Duration::from_millis(250);

/// Top-ups waiting to be sent at most; past it a top-up is skipped (the next take asks again).
const TOPUP_QUEUE: usize = 4096;

/// What leases can say about a request's claims before Redis is asked.
struct Plan {
    /// Verdicts served from leases; `None` is decided in Redis.
    served: SmallVec<[Option<Verdict>; 4]>,
    /// Claims whose lease missed: fetched with their decision, `lease` more units each.
    fetching: SmallVec<[usize; 4]>,
    lease: SmallVec<[u64; 4]>,
}

/// The cached-mode store: leases in front of [`RedisStore`].
#[derive(Debug)]
pub struct Leasing {
    shared: Arc<Shared>,
    topups: mpsc::Sender<Hit>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Shared {
    redis: Arc<RedisStore>,
    leases: Leases,
    consistency: Consistency,
    clock: Arc<dyn Clock>,
}

impl Leasing {
    /// Serves limits that are `consistency` by default (a limit's `consistency:` wins) from at
    /// most `max_leases` leases of `redis`'s buckets, and starts the upkeep task (within a Tokio
    /// runtime).
    pub fn start(
        redis: Arc<RedisStore>,
        consistency: Consistency,
        max_leases: usize,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let shared = Arc::new(Shared {
            redis,
            leases: Leases::new(max_leases),
            consistency,
            clock,
        });
        let (topups, queue) = mpsc::channel(TOPUP_QUEUE);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(upkeep(shared.clone(), queue, stopped));
        Self {
            shared,
            topups,
            stop,
            task: Mutex::new(Some(task)),
        }
    }

    /// This replica's leases.
    pub fn leases(&self) -> &Leases {
        &self.shared.leases
    }

    /// Whether `claim` is served from a lease: a cached limit whose slice is more than one
    /// unit (smaller limits would fetch a unit per request: they are decided strictly), that
    /// runs no debt and holds no reservation ticket (a charge past what is left, and a
    /// reservation, must land where every replica sees them).
    fn leasable(&self, claim: &Claim) -> bool {
        claim.consistency.unwrap_or(self.shared.consistency) == Consistency::Cached
            && lease::slice(&claim.hit.quota) > 1
            && !contract::keeps(claim)
            && claim.ticket.is_none()
    }

    /// Serves what leases can: each claim's verdict from its lease, or the fetch to make.
    fn plan(&self, claims: &[Claim], now: Nanos) -> Plan {
        let leases = &self.shared.leases;
        let mut plan = Plan {
            served: claims.iter().map(|_| None).collect(),
            fetching: SmallVec::new(),
            lease: claims.iter().map(|_| 0).collect(),
        };
        for (index, claim) in claims.iter().enumerate() {
            if !self.leasable(claim) {
                continue;
            }
            match leases.take(&claim.hit, now) {
                Take::Served { verdict, refill } => {
                    plan.served[index] = Some(verdict);
                    if refill && self.topups.try_send(claim.hit).is_err() {
                        leases.refill_failed(&claim.hit);
                    }
                }
                // A check takes nothing: Redis answers it without a lease. A miss fetches the
                // lease with its decision, unless another request is fetching it already.
                Take::Miss if claim.hit.cost > 0 && leases.begin_fetch(&claim.hit, now) => {
                    plan.fetching.push(index);
                    plan.lease[index] =
                        lease::slice(&claim.hit.quota).saturating_sub(claim.hit.cost);
                }
                Take::Miss => {}
            }
        }
        plan
    }

    /// A request every claim of which was served from a lease: settled here.
    fn settle_served(&self, claims: &[Claim], served: &[Option<Verdict>]) -> Settlement {
        let verdicts = served.iter().flatten();
        let mut settlement = Settlement {
            denied: contract::denied(
                claims
                    .iter()
                    .zip(verdicts.clone())
                    .map(|(claim, verdict)| (claim.role, verdict.allowed)),
            ),
            outcomes: verdicts
                .map(|verdict| Outcome {
                    verdict: *verdict,
                    refunded: false,
                    released: 0,
                })
                .collect(),
        };
        self.give_back_if_denied(claims, served, &mut settlement);
        settlement
    }

    /// A request with claims to decide in Redis: one `decide.lua` call settles them with the
    /// served ones.
    async fn settle_in_redis(&self, claims: &[Claim], plan: Plan, when: When) -> Settled {
        let Plan {
            served,
            fetching,
            lease,
        } = plan;
        let known: SmallVec<[Option<bool>; 4]> =
            served.iter().map(|v| v.map(|v| v.allowed)).collect();
        let (denied, figures) = match self.decide(claims, &known, &lease, fetching, when).await {
            Ok(decided) => decided,
            Err(error) => {
                self.untake(claims, &served);
                return Err(error);
            }
        };
        let mut settlement = Settlement {
            denied,
            outcomes: figures
                .iter()
                .zip(&served)
                .map(|(figures, served)| Outcome {
                    verdict: served.unwrap_or(figures.verdict),
                    refunded: served.is_none() && figures.refunded,
                    released: figures.released,
                })
                .collect(),
        };
        self.give_back_if_denied(claims, &served, &mut settlement);
        Ok(settlement)
    }

    /// For a denied request, the served claims' costs go back to their leases (Redis gave back
    /// what it decided itself).
    fn give_back_if_denied(
        &self,
        claims: &[Claim],
        served: &[Option<Verdict>],
        settlement: &mut Settlement,
    ) {
        if !settlement.denied {
            return;
        }
        for ((claim, served), outcome) in claims.iter().zip(served).zip(&mut settlement.outcomes) {
            if served.is_some_and(|v| v.allowed) && claim.hit.cost > 0 {
                self.shared.leases.untake(&claim.hit);
                outcome.verdict.remaining += claim.hit.cost;
                outcome.refunded = true;
            }
        }
    }

    /// One `decide.lua` call. When it fetches the leases of `claims[fetching]`, it records them
    /// itself and runs to completion even if the request is given up on (Envoy's timeout), so
    /// what Redis leased is recorded and every fetch it began ends.
    async fn decide(
        &self,
        claims: &[Claim],
        known: &[Option<bool>],
        lease: &[u64],
        fetching: SmallVec<[usize; 4]>,
        when: When,
    ) -> Result<(bool, SmallVec<[Figures; 4]>), contract::Unavailable> {
        if fetching.is_empty() {
            return self.shared.redis.decide(claims, known, lease, when).await;
        }
        let shared = self.shared.clone();
        let claims: SmallVec<[Claim; 4]> = claims.into();
        let known: SmallVec<[Option<bool>; 4]> = known.into();
        let lease: SmallVec<[u64; 4]> = lease.into();
        Completing::new(async move {
            let decided = shared.redis.decide(&claims, &known, &lease, when).await;
            for &index in &fetching {
                let hit = &claims[index].hit;
                match &decided {
                    Ok((denied, figures)) => {
                        let figures = &figures[index];
                        let leased = if *denied {
                            0
                        } else {
                            figures.taken.saturating_sub(hit.cost)
                        };
                        shared.leases.fill(hit, &figures.verdict, leased, when.now);
                    }
                    Err(_) => shared.leases.fetch_failed(hit),
                }
            }
            decided
        })
        .await
    }

    /// Gives back to their leases the costs that served claims took, for a request that will
    /// be answered by someone else (the failure policy).
    fn untake(&self, claims: &[Claim], served: &[Option<Verdict>]) {
        for (claim, served) in claims.iter().zip(served) {
            if served.is_some_and(|v| v.allowed) && claim.hit.cost > 0 {
                self.shared.leases.untake(&claim.hit);
            }
        }
    }
}

impl Store for Leasing {
    fn settle<'a>(&'a self, claims: &'a [Claim], when: When) -> Settling<'a> {
        let plan = self.plan(claims, when.now);
        if plan.served.iter().all(Option::is_some) {
            // Memory speed: no allocation, no await.
            return contract::settled(Ok(self.settle_served(claims, &plan.served)));
        }
        Either::Right(Box::pin(self.settle_in_redis(claims, plan, when)))
    }

    fn record<'a>(&'a self, usage: &'a [(Hit, u64)], when: When) -> Recording<'a> {
        self.shared.redis.record(usage, when)
    }

    fn forget(&self, removed: &HashSet<u32>) {
        let unspent = self.shared.leases.forget(removed);
        if unspent.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let now = shared.clock.now();
            if let Err(error) = shared.redis.give_back(&unspent, now).await {
                tracing::debug!(%error, "leases of removed limits not given back");
            }
        });
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {
            let _ = self.stop.send(true);
            let task = self
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(task) = task {
                let _ = task.await;
            }
            self.shared.redis.close().await;
        })
    }

    fn parts<'a>(&'a self, parts: &mut Parts<'a>) {
        parts.leases = Some(&self.shared.leases);
        self.shared.redis.parts(parts);
    }
}

/// The upkeep task: tops up leases as asked, gives back unused ones every [`UPKEEP_EVERY`],
/// and at stop waits for the top-ups under way, then gives back every lease.
async fn upkeep(
    shared: Arc<Shared>,
    mut topups: mpsc::Receiver<Hit>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(UPKEEP_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut running = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            Some(hit) = topups.recv() => {
                running.spawn(top_up(shared.clone(), hit));
            }
            Some(_) = running.join_next(), if !running.is_empty() => {}
            _ = ticks.tick() => {
                let now = shared.clock.now();
                give_back(&shared, shared.leases.expire(now), now).await;
            }
        }
    }
    while running.join_next().await.is_some() {}
    let now = shared.clock.now();
    let unspent = shared.leases.drain();
    let count = unspent.len();
    give_back(&shared, unspent, now).await;
    if count > 0 {
        tracing::info!(leases = count, "gave back unspent cached-mode leases");
    }
}

/// Resolves once stop is signalled (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Tops `hit`'s lease back up to one slice: a replica never holds more than a slice of a key,
/// so a crash never strands more.
async fn top_up(shared: Arc<Shared>, hit: Hit) {
    let now = shared.clock.now();
    let wanted = lease::slice(&hit.quota).saturating_sub(shared.leases.tokens(&hit));
    if wanted == 0 {
        shared.leases.refill_failed(&hit);
        return;
    }
    match shared.redis.lease(&[(hit, wanted)], now).await {
        Ok(figures) => {
            let Figures { verdict, taken, .. } = figures[0];
            let topped = Hit { cost: 0, ..hit };
            shared.leases.fill(&topped, &verdict, taken, now);
        }
        Err(_) => shared.leases.refill_failed(&hit),
    }
}

async fn give_back(shared: &Shared, unspent: Vec<lease::Unspent>, now: Nanos) {
    if unspent.is_empty() {
        return;
    }
    if let Err(error) = shared.redis.give_back(&unspent, now).await {
        tracing::debug!(%error, leases = unspent.len(), "unspent leases not given back");
    }
}

/// A future that runs to completion even if whoever awaits it is dropped: the rest of it is
/// then spawned. Polled in place otherwise, so the common case costs no task switch.
struct Completing<T: Send + 'static>(Option<BoxFuture<'static, T>>);

impl<T: Send + 'static> Completing<T> {
    fn new(future: impl Future<Output = T> + Send + 'static) -> Self {
        Self(Some(Box::pin(future)))
    }
}

impl<T: Send + 'static> Future for Completing<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Some(future) = self.0.as_mut() else {
            return Poll::Pending;
        };
        let output = std::task::ready!(future.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(output)
    }
}

impl<T: Send + 'static> Drop for Completing<T> {
    fn drop(&mut self) {
        if let Some(rest) = self.0.take() {
            tokio::spawn(rest);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use futures_util::FutureExt;

    use super::*;

    #[tokio::test]
    async fn a_completing_future_finishes_when_its_awaiter_is_gone() {
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        let mut completing = Completing::new(async move {
            let _ = wait.await;
            flag.store(true, Ordering::SeqCst);
        });
        assert!((&mut completing).now_or_never().is_none());
        drop(completing);
        go.send(()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !finished.load(Ordering::SeqCst) {
            assert!(tokio::time::Instant::now() < deadline, "the rest never ran");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
