//! Buckets in Redis, shared by every replica.
//!
//! Three server-side scripts share one prelude of algorithms (see [`wire`]): `decide.lua`
//! settles a request's claims atomically, all or nothing, with the same algorithms as the memory
//! store (this is the [`Store`] implementation: strict mode); `lease.lua` and `give_back.lua`
//! hand out and take back cached mode's slices ([`Leasing`](super::Leasing)). Calls from
//! concurrent requests are pipelined over one multiplexed connection (single node) or one per
//! shard (Redis Cluster).
//!
//! Keys are `{prefix}{<domain tag>}:<bucket>`: the hash tag is a digest of the request's
//! domain, so all of a request's keys live in one Cluster slot and one script can use them
//! together. Every key carries a TTL that ends when its bucket is whole again (plus a second),
//! so Redis memory never outgrows the buckets in use.
//!
//! A call that fails or outlasts the timeout marks Redis *degraded*: calls then fail at once,
//! without waiting, while a background probe pings with backoff and restores global counting
//! as soon as Redis answers again.

mod link;
mod tls;
pub mod wire;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use redis::Script;
use smallvec::SmallVec;
use tokio::sync::Notify;

use super::contract::{
    Claim, Hit, Outcome, Parts, Settled, Settlement, Settling, Store, Unavailable,
};
use super::key::BucketKey;
use super::lease::Unspent;
use crate::clock::{NANOS_PER_SEC, Nanos};
use link::Link;
pub use tls::{RedisTls, TlsError, is_tls_url};
use wire::{Figures, Purpose};

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://` or `rediss://` URLs; more than one, or `cluster`, seeds a Redis Cluster.
    pub urls: Vec<String>,
    /// Treat the URLs as Redis Cluster seeds.
    pub cluster: bool,
    /// Prepended to every key.
    pub prefix: String,
    /// Longest wait for one decision before the failure policy answers instead.
    pub timeout: Duration,
    /// Trust and identity for `rediss://` other than the webpki roots.
    pub tls: RedisTls,
}

/// The Redis bucket store.
pub struct RedisStore {
    link: Link,
    decide: Script,
    lease: Script,
    give_back: Script,
    prefix: String,
    timeout: Duration,
    degraded: AtomicBool,
    wake_probe: Arc<Notify>,
    errors: AtomicU64,
    timeouts: AtomicU64,
    /// The domain tag of the last failed call: the probe checks that slot.
    failed_tag: AtomicU64,
    /// How long answered calls took (timed-out calls are counted in `timeouts` instead).
    call_seconds: Histogram,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("degraded", &self.is_degraded())
            .finish_non_exhaustive()
    }
}

/// One entry of a script call.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The bucket, or none for [`wire::KIND_DECIDED`].
    key: Option<BucketKey>,
    kind: u64,
    cost: u64,
    p1: u64,
    p2: u64,
    /// Decide entries only: the role bits and the units to lease.
    role: Option<(u64, u64)>,
}

impl Entry {
    fn of(hit: &Hit, cost: u64, role: Option<(u64, u64)>) -> Self {
        let (kind, p1, p2) = wire::shape(&hit.quota);
        Self {
            key: Some(hit.key),
            kind,
            cost,
            p1,
            p2,
            role,
        }
    }
}

impl RedisStore {
    /// A store for `options`, connecting in the background: it starts degraded when Redis is
    /// not reachable yet and recovers by itself. Errors only for a malformed URL.
    pub fn start(options: &RedisOptions) -> Result<Arc<Self>, Unavailable> {
        let link = Link::new(options).map_err(|e| Unavailable(e.to_string()))?;
        let store = Arc::new(Self {
            link,
            decide: Script::new(&Purpose::Decide.script()),
            lease: Script::new(&Purpose::Lease.script()),
            give_back: Script::new(&Purpose::GiveBack.script()),
            prefix: options.prefix.clone(),
            timeout: options.timeout,
            degraded: AtomicBool::new(true),
            wake_probe: Arc::new(Notify::new()),
            errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            failed_tag: AtomicU64::new(0),
            // 50 µs … ~100 ms, doubling.
            call_seconds: Histogram::new(exponential_buckets(5e-5, 2.0, 12)),
        });
        tokio::spawn(probe(Arc::downgrade(&store), store.wake_probe.clone()));
        Ok(store)
    }

    /// Whether Redis is currently bypassed because it failed.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// Calls that failed with an error since start.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Calls that outlasted the timeout since start.
    pub fn timeouts(&self) -> u64 {
        self.timeouts.load(Ordering::Relaxed)
    }

    /// Round-trip times of the calls Redis answered, with a reply or a server error.
    pub fn call_seconds(&self) -> &Histogram {
        &self.call_seconds
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

    /// Decides and settles `claims` of one request in one call. Claims with a `known` verdict
    /// (cached-mode leases) only take part in settling; once the request is admitted, up to
    /// `lease[i]` more units of claim `i`'s bucket are taken for a lease. Returns whether the
    /// request was denied and each claim's figures (`taken`: its cost plus what was leased).
    pub async fn decide(
        &self,
        claims: &[Claim],
        known: &[Option<bool>],
        lease: &[u64],
        now: Nanos,
    ) -> Result<(bool, SmallVec<[Figures; 4]>), Unavailable> {
        let entries: SmallVec<[Entry; 4]> = claims
            .iter()
            .zip(known)
            .zip(lease)
            .map(|((claim, known), lease)| {
                let role = Some((wire::role(claim.role.denies, claim.role.quota_mode), *lease));
                match known {
                    None => Entry::of(&claim.hit, claim.hit.cost, role),
                    Some(allowed) => Entry {
                        key: None,
                        kind: wire::KIND_DECIDED,
                        cost: 0,
                        p1: u64::from(*allowed),
                        p2: 0,
                        role,
                    },
                }
            })
            .collect();
        let hash_tag = claims.first().map_or(0, |c| c.hit.hash_tag);
        let reply = self.run(&self.decide, hash_tag, &entries, now).await?;
        match reply.split_first() {
            Some((denied, rest)) if rest.len() == entries.len() * wire::REPLY_FIELDS => Ok((
                *denied == 1,
                rest.chunks_exact(wire::REPLY_FIELDS)
                    .map(wire::figures)
                    .collect(),
            )),
            _ => Err(self.malformed(hash_tag, reply.len(), entries.len())),
        }
    }

    /// Leases up to `slice` units of each hit's bucket (all in one hash tag), as many as
    /// remain. Returns each lease's figures: the units granted and the bucket after.
    pub async fn lease(
        &self,
        leases: &[(Hit, u64)],
        now: Nanos,
    ) -> Result<SmallVec<[Figures; 4]>, Unavailable> {
        let entries: SmallVec<[Entry; 4]> = leases
            .iter()
            .map(|(hit, slice)| Entry::of(hit, *slice, None))
            .collect();
        let hash_tag = leases.first().map_or(0, |(hit, _)| hit.hash_tag);
        let reply = self.run(&self.lease, hash_tag, &entries, now).await?;
        if reply.len() != entries.len() * wire::REPLY_FIELDS {
            return Err(self.malformed(hash_tag, reply.len(), entries.len()));
        }
        Ok(reply
            .chunks_exact(wire::REPLY_FIELDS)
            .map(wire::figures)
            .collect())
    }

    /// Gives back the unspent units of leases, one call per hash tag.
    pub async fn give_back(&self, unspent: &[Unspent], now: Nanos) -> Result<(), Unavailable> {
        let mut by_tag: std::collections::HashMap<u64, Vec<Entry>> = Default::default();
        for lease in unspent {
            by_tag
                .entry(lease.hit.hash_tag)
                .or_default()
                .push(Entry::of(&lease.hit, lease.tokens, None));
        }
        for (hash_tag, entries) in by_tag {
            self.run(&self.give_back, hash_tag, &entries, now).await?;
        }
        Ok(())
    }

    /// Runs `script` on `entries` (all in `hash_tag`'s slot) at `now`, within the timeout.
    /// Decide entries carry a role (DECIDE_FIELDS), the others do not (LEASE_FIELDS).
    async fn run(
        &self,
        script: &Script,
        hash_tag: u64,
        entries: &[Entry],
        now: Nanos,
    ) -> Result<Vec<i64>, Unavailable> {
        if self.is_degraded() {
            return Err(Unavailable("degraded, waiting for redis to answer".into()));
        }
        let mut invocation = script.prepare_invoke();
        invocation
            .arg(now / NANOS_PER_SEC)
            .arg(now % NANOS_PER_SEC)
            .arg(wire::GRACE_MS);
        let mut name = String::with_capacity(self.prefix.len() + 56);
        for entry in entries {
            if let Some(key) = entry.key {
                name.clear();
                let _ = write!(name, "{}{{{hash_tag:016x}}}:{:032x}", self.prefix, key.0);
                invocation.key(name.as_str());
            }
            invocation
                .arg(entry.kind)
                .arg(entry.cost)
                .arg(entry.p1)
                .arg(entry.p2);
            if let Some((role, lease)) = entry.role {
                invocation.arg(role).arg(lease);
            }
        }
        let call = self.link.invoke(&invocation);
        let started = Instant::now();
        let answer = tokio::time::timeout(self.timeout, call).await;
        // Only what Redis itself answered (a reply or a server error): a refused or dropped
        // connection fails at once and would make an outage look fast.
        let answered = match &answer {
            Ok(Ok(_)) => true,
            Ok(Err(error)) => !(error.is_io_error() || error.is_connection_dropped()),
            Err(_) => false,
        };
        if answered {
            self.call_seconds.observe(started.elapsed().as_secs_f64());
        }
        match answer {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(error)) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                Err(self.fail(hash_tag, error.to_string()))
            }
            Err(_) => {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(self.fail(hash_tag, format!("no answer within {:?}", self.timeout)))
            }
        }
    }

    fn malformed(&self, hash_tag: u64, values: usize, entries: usize) -> Unavailable {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.fail(
            hash_tag,
            format!("script answered {values} values for {entries} entries"),
        )
    }

    fn fail(&self, hash_tag: u64, why: String) -> Unavailable {
        self.failed_tag.store(hash_tag, Ordering::Relaxed);
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                reason = %why,
                "redis unavailable: degraded, answering by the failure policy until it recovers"
            );
            self.wake_probe.notify_one();
        }
        Unavailable(why)
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        // Let the probe see the store is gone and end.
        self.wake_probe.notify_one();
    }
}

impl Store for RedisStore {
    fn settle<'a>(&'a self, claims: &'a [Claim], now: Nanos) -> Settling<'a> {
        futures_util::future::Either::Right(Box::pin(self.settle_strictly(claims, now)))
    }

    fn parts<'a>(&'a self, parts: &mut Parts<'a>) {
        parts.redis = Some(self);
    }
}

impl RedisStore {
    /// Every claim decided in Redis, in one call.
    async fn settle_strictly(&self, claims: &[Claim], now: Nanos) -> Settled {
        let known: SmallVec<[Option<bool>; 4]> = claims.iter().map(|_| None).collect();
        let lease: SmallVec<[u64; 4]> = claims.iter().map(|_| 0).collect();
        let (denied, figures) = self.decide(claims, &known, &lease, now).await?;
        Ok(Settlement {
            denied,
            outcomes: figures
                .iter()
                .map(|f| Outcome {
                    verdict: f.verdict,
                    refunded: f.refunded,
                })
                .collect(),
        })
    }
}

/// While the store lives: whenever it is degraded, pings Redis with backoff (50 ms doubling
/// to 2 s) until it answers, then puts it back in service.
async fn probe(store: std::sync::Weak<RedisStore>, wake: Arc<Notify>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(live) = store.upgrade() else { return };
        if !live.is_degraded() {
            drop(live);
            wake.notified().await;
            continue;
        }
        let key = format!(
            "{}{{{:016x}}}:probe",
            live.prefix,
            live.failed_tag.load(Ordering::Relaxed)
        );
        let answered = tokio::time::timeout(Duration::from_secs(1), live.link.ping(&key)).await;
        match answered {
            Ok(Ok(())) => {
                live.degraded.store(false, Ordering::Relaxed);
                tracing::info!("redis answers: counting globally again");
                backoff = Duration::from_millis(50);
            }
            failed => {
                let reason = match failed {
                    Ok(Err(error)) => error.to_string(),
                    _ => "ping timed out".to_owned(),
                };
                tracing::debug!(%reason, retry_in = ?backoff, "redis still unavailable");
                drop(live);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}
