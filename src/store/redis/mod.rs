//! Buckets in Redis, shared by every replica.
//!
//! Three server-side scripts share one prelude of algorithms (see [`wire`]): `decide.lua`
//! settles requests' claims atomically, all or nothing, with the same algorithms as the memory
//! store (this is the [`Store`] implementation: strict mode, see `settle.rs`); `lease.lua` and
//! `give_back.lua` hand out and take back cached mode's slices ([`Leasing`](super::Leasing)).
//! Decisions bound for one Redis (one Cluster slot) are batched into shared script calls
//! (`batch.rs`), over one multiplexed connection (single node, or the master Sentinels name) or
//! one per shard (Redis Cluster).
//!
//! Keys are `{prefix}{<lane>}:<bucket>`: the hash tag is the bucket's lane ([`lanes`]), so one
//! domain's buckets spread over every master of a Cluster. Every key carries a TTL that ends
//! when its bucket is whole again (plus a second), so Redis memory never outgrows the buckets
//! in use.
//!
//! A call waits at most `--redis-timeout`, and less when the caller's own deadline is nearer
//! (three quarters of what is left of it). A call that fails is answered by the failure
//! policy; [`health`] says when failures mean an outage, and [`reconcile`] makes a call that
//! answered too late agree with the answer given instead.

mod batch;
mod call;
pub mod health;
pub mod lanes;
pub(crate) mod link;
pub mod reconcile;
pub mod replicas;
mod settle;
mod tls;
pub mod wire;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use redis::Script;
use smallvec::SmallVec;

use super::contract::{
    Claim, Hit, Outcome, Parts, Recording, Settled, Settlement, Settling, Store, Unavailable, When,
};
use super::lease::Unspent;
use batch::{Batches, Route};
use call::{CallFailure, Entry, InFlight};
use health::{Failure, Health};
use link::Link;
pub use link::Sentinel;
use reconcile::LateCounts;
use replicas::Replicas;
pub use tls::{RedisTls, TlsError, is_tls_url};
use wire::{Figures, Purpose};

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://` or `rediss://` URLs; more than one, or `cluster`, seeds a Redis Cluster.
    pub urls: Vec<String>,
    /// Treat the URLs as Redis Cluster seeds.
    pub cluster: bool,
    /// Treat the URLs as Redis Sentinels, and count in the master set they name, following
    /// failovers.
    pub sentinel: Option<Sentinel>,
    /// Prepended to every key.
    pub prefix: String,
    /// Longest wait for one decision before the failure policy answers instead.
    pub timeout: Duration,
    /// Trust and identity for `rediss://` other than the webpki roots.
    pub tls: RedisTls,
}

/// The Redis bucket store.
pub struct RedisStore {
    me: Weak<RedisStore>,
    link: Link,
    decide: Arc<Script>,
    lease: Arc<Script>,
    give_back: Arc<Script>,
    prefix: String,
    timeout: Duration,
    health: Health,
    replicas: Replicas,
    late: LateCounts,
    /// How long answered calls took (timed-out calls are counted in `timeouts` instead).
    call_seconds: Histogram,
    /// Decisions waiting to go to Redis, per slot.
    batches: Batches,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("degraded", &self.is_degraded())
            .finish_non_exhaustive()
    }
}

/// The entries of one call's slot: a lane of it (its keys' slot, and the probe's), and their
/// positions in what was asked.
type Group = (u64, SmallVec<[usize; 4]>);

/// A failed call, and the call itself when it may still answer (it timed out).
struct Failed {
    error: Unavailable,
    in_flight: Option<InFlight>,
}

impl RedisStore {
    /// A store for `options`, connecting in the background: it starts degraded when Redis is
    /// not reachable yet and recovers by itself. Errors only for a malformed URL.
    pub fn start(options: &RedisOptions) -> Result<Arc<Self>, Unavailable> {
        let link = Link::new(options).map_err(|e| Unavailable::new(e.to_string()))?;
        let store = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            link,
            decide: Arc::new(Script::new(&Purpose::Decide.script())),
            lease: Arc::new(Script::new(&Purpose::Lease.script())),
            give_back: Arc::new(Script::new(&Purpose::GiveBack.script())),
            prefix: options.prefix.clone(),
            timeout: options.timeout,
            health: Health::new(),
            replicas: Replicas::new(),
            late: LateCounts::default(),
            // 50 µs … ~100 ms, doubling.
            call_seconds: Histogram::new(exponential_buckets(5e-5, 2.0, 12)),
            batches: Batches::default(),
        });
        tokio::spawn(health::probe(Arc::downgrade(&store), store.health.waker()));
        tokio::spawn(replicas::heartbeat(Arc::downgrade(&store)));
        Ok(store)
    }

    /// Whether Redis is currently bypassed because it failed.
    pub fn is_degraded(&self) -> bool {
        self.health.is_degraded()
    }

    /// Calls that failed with an error since start.
    pub fn errors(&self) -> u64 {
        self.health.errors()
    }

    /// Calls that outlasted their time since start.
    pub fn timeouts(&self) -> u64 {
        self.health.timeouts()
    }

    /// Round-trip times of the calls Redis answered, with a reply or a server error.
    pub fn call_seconds(&self) -> &Histogram {
        &self.call_seconds
    }

    /// Live replicas sharing this Redis at the last heartbeat, this one included.
    pub fn replicas(&self) -> u32 {
        self.replicas.count()
    }

    /// Calls given up on whose late answers were reconciled, those that never answered, and
    /// the units given back or charged to reconcile them.
    pub fn late_calls(&self) -> (u64, u64, u64) {
        (
            self.late.reconciled.load(Ordering::Relaxed),
            self.late.lost.load(Ordering::Relaxed),
            self.late.corrected_units.load(Ordering::Relaxed),
        )
    }

    /// Units a denied request across Cluster slots took provisionally whose undo went
    /// unanswered (they stay taken, unless the undo ran all the same).
    pub fn unanswered_undo_units(&self) -> u64 {
        self.late.unanswered_undo_units.load(Ordering::Relaxed)
    }

    /// Waits until Redis answers (or `deadline` passes); true if it did.
    pub async fn wait_ready(&self, deadline: Duration) -> bool {
        let ready = async {
            while self.is_degraded() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(deadline, ready).await.is_ok()
    }

    /// Leases up to `units` of each hit's bucket, as many as remain (one call per slot on a
    /// Cluster). Returns each lease's figures, in order: the bucket before it, and the units
    /// granted. A lease that answers too late is given back.
    pub async fn lease(
        &self,
        leases: &[(Hit, u64)],
        now: crate::clock::Nanos,
    ) -> Result<SmallVec<[Figures; 4]>, Unavailable> {
        let mut figures: SmallVec<[Option<Figures>; 4]> = leases.iter().map(|_| None).collect();
        for (lane, indices) in self.by_route(leases.iter().map(|(hit, _)| Some(lanes::of(hit.key))))
        {
            let group: SmallVec<[(Hit, u64); 4]> = indices.iter().map(|&i| leases[i]).collect();
            let entries: SmallVec<[Entry; 4]> = group
                .iter()
                .map(|(hit, units)| Entry::of(hit, *units, None, now))
                .collect();
            let reply = match self.run(&self.lease, lane, &entries, now, None).await {
                Ok(reply) => reply,
                Err(Failed { error, in_flight }) => {
                    if let Some(in_flight) = in_flight {
                        self.give_back_when_answered(in_flight, group, now);
                    }
                    return Err(error);
                }
            };
            if reply.len() != entries.len() * wire::REPLY_FIELDS {
                return Err(self.malformed(lane, reply.len(), entries.len()));
            }
            for (&i, part) in indices.iter().zip(reply.chunks_exact(wire::REPLY_FIELDS)) {
                figures[i] = Some(wire::figures(part));
            }
        }
        Ok(figures.into_iter().flatten().collect())
    }

    /// Gives back the unspent units of leases, one call per slot on a Cluster.
    pub async fn give_back(
        &self,
        unspent: &[Unspent],
        now: crate::clock::Nanos,
    ) -> Result<(), Unavailable> {
        for (lane, indices) in
            self.by_route(unspent.iter().map(|lease| Some(lanes::of(lease.hit.key))))
        {
            let entries: SmallVec<[Entry; 4]> = indices
                .iter()
                .map(|&i| Entry::of(&unspent[i].hit, unspent[i].tokens, None, now))
                .collect();
            self.run(&self.give_back, lane, &entries, now, None)
                .await
                .map_err(|failed| failed.error)?;
        }
        Ok(())
    }

    /// The positions of `lanes` grouped by where a call on them goes: one group on a single
    /// node, one per slot on a Cluster (positions without a lane belong to none).
    fn by_route(&self, lanes: impl Iterator<Item = Option<u64>>) -> SmallVec<[Group; 2]> {
        let mut groups: SmallVec<[(Route, Group); 2]> = SmallVec::new();
        for (index, lane) in lanes.enumerate() {
            let Some(lane) = lane else { continue };
            let route = self.route(lane);
            match groups.iter_mut().find(|(r, _)| *r == route) {
                Some((_, (_, indices))) => indices.push(index),
                None => groups.push((route, (lane, smallvec::smallvec![index]))),
            }
        }
        groups.into_iter().map(|(_, group)| group).collect()
    }

    /// Where calls on `lane` go.
    fn route(&self, lane: u64) -> Route {
        self.link.is_cluster().then(|| lanes::slot(lane))
    }

    /// A lease answered after it was given up on: its units go back once it answers.
    fn give_back_when_answered(
        &self,
        in_flight: InFlight,
        leases: SmallVec<[(Hit, u64); 4]>,
        now: crate::clock::Nanos,
    ) {
        let store = self.me.clone();
        tokio::spawn(async move {
            let answer = tokio::time::timeout(reconcile::LATE_WAIT, in_flight).await;
            let (Some(store), Ok(Ok(reply))) = (store.upgrade(), answer) else {
                return;
            };
            let granted: SmallVec<[Unspent; 4]> = leases
                .iter()
                .zip(reply.chunks_exact(wire::REPLY_FIELDS).map(wire::figures))
                .filter(|(_, figures)| figures.taken > 0)
                .map(|((hit, _), figures)| Unspent {
                    hit: *hit,
                    tokens: figures.taken,
                })
                .collect();
            if !granted.is_empty() {
                let _ = store.give_back(&granted, now).await;
            }
        });
    }

    /// Runs `script` on `entries` (a lease or a give-back, all in `lane`'s slot on a Cluster)
    /// at `now`, waiting at most `--redis-timeout`, or three quarters of the caller's `budget`
    /// when that is less. Decisions go through [`RedisStore::ask`] instead (batched).
    async fn run(
        &self,
        script: &Arc<Script>,
        lane: u64,
        entries: &[Entry],
        now: crate::clock::Nanos,
        budget: Option<Duration>,
    ) -> Result<Vec<i64>, Failed> {
        let failed = |error| Failed {
            error,
            in_flight: None,
        };
        if self.is_degraded() {
            return Err(failed(Unavailable::new(
                "degraded, waiting for redis to answer",
            )));
        }
        let Some(conn) = self.link.conn() else {
            return Err(failed(self.health.failed(
                lane,
                Failure::Connection,
                "not connected".to_owned(),
            )));
        };
        let wait = self.wait(budget);
        let mut in_flight = call::call(conn, script.clone(), &self.prefix, entries, now);
        let started = Instant::now();
        match tokio::time::timeout(wait, &mut in_flight).await {
            Ok(answered) => self
                .answered(lane, answered, started)
                .map_err(|failure| failed(Unavailable::new(failure.message))),
            Err(_) => Err(Failed {
                error: self.health.failed(
                    lane,
                    Failure::Timeout,
                    format!("no answer within {wait:?}"),
                ),
                in_flight: Some(in_flight),
            }),
        }
    }

    /// How long a call waits: `--redis-timeout`, or three quarters of what is left of the
    /// caller's `budget` when that is less.
    fn wait(&self, budget: Option<Duration>) -> Duration {
        budget.map_or(self.timeout, |budget| self.timeout.min(budget * 3 / 4))
    }

    /// Accounts for a call on `lane` that answered (with a reply or an error) since `started`.
    fn answered(
        &self,
        lane: u64,
        answered: Result<Vec<i64>, CallFailure>,
        started: Instant,
    ) -> Result<Vec<i64>, CallFailure> {
        match answered {
            Ok(reply) => {
                self.call_seconds.observe(started.elapsed().as_secs_f64());
                self.health.succeeded();
                Ok(reply)
            }
            Err(failure) => {
                // Only what Redis itself answered is timed: a refused or dropped connection
                // fails at once and would make an outage look fast.
                if failure.failure == Failure::Server {
                    self.call_seconds.observe(started.elapsed().as_secs_f64());
                }
                self.health
                    .failed(lane, failure.failure, failure.message.clone());
                Err(failure)
            }
        }
    }

    fn malformed(&self, lane: u64, values: usize, entries: usize) -> Unavailable {
        self.health.failed(
            lane,
            Failure::Server,
            format!("script answered {values} values for {entries} entries"),
        )
    }

    /// A key of this store in `lane`'s slot.
    fn key_name(&self, lane: u64, name: &str) -> String {
        call::key_name(&self.prefix, lane, &name)
    }

    /// The sorted set of live replicas.
    fn replicas_key(&self) -> String {
        format!("{}{{replicas}}:live", self.prefix)
    }

    /// Strict mode: every claim decided in Redis, in one call.
    async fn settle_strictly(&self, claims: &[Claim], when: When) -> Settled {
        let known: SmallVec<[Option<bool>; 4]> = claims.iter().map(|_| None).collect();
        let lease: SmallVec<[u64; 4]> = claims.iter().map(|_| 0).collect();
        let (denied, figures) = self.decide(claims, &known, &lease, when).await?;
        Ok(Settlement {
            denied,
            outcomes: figures
                .iter()
                .map(|f| Outcome {
                    verdict: f.verdict,
                    refunded: f.refunded,
                    released: f.released,
                })
                .collect(),
        })
    }

    /// Leaves the set of live replicas (at graceful stop).
    async fn leave(&self) {
        let Some(mut conn) = self.link.conn() else {
            return;
        };
        let mut leave = redis::cmd("ZREM");
        leave.arg(self.replicas_key()).arg(self.replicas.id());
        let _ = tokio::time::timeout(self.timeout, leave.query_async::<()>(&mut conn)).await;
    }
}

impl Store for RedisStore {
    fn settle<'a>(&'a self, claims: &'a [Claim], when: When) -> Settling<'a> {
        futures_util::future::Either::Right(Box::pin(self.settle_strictly(claims, when)))
    }

    fn record<'a>(&'a self, usage: &'a [(Hit, u64)], when: When) -> Recording<'a> {
        Box::pin(async move {
            // A lease takes as many units as remain.
            self.lease(usage, when.now).await.map(drop)
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.leave())
    }

    fn parts<'a>(&'a self, parts: &mut Parts<'a>) {
        parts.redis = Some(self);
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        // Let the probe see the store is gone and end.
        self.health.wake();
    }
}
