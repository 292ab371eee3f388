//! Buckets in Redis, shared by every replica.
//!
//! One server-side script ([`decide.lua`](decide.lua)) decides all of a request's counted
//! descriptors atomically, all or nothing, with the same algorithms as the memory store. It
//! also hands out and takes back the token leases of cached mode. Calls from concurrent
//! requests are pipelined over one multiplexed connection (single node) or one per shard
//! (Redis Cluster).
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

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use smallvec::SmallVec;
use tokio::sync::Notify;

use super::BucketKey;
use crate::algorithm::{Verdict, sliding_log, sliding_window, token_bucket};
use crate::clock::{NANOS_PER_SEC, Nanos};
use crate::quota::{Algorithm, Quota};
use link::Link;
pub use tls::{RedisTls, TlsError, is_tls_url};

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

/// Redis could not decide in time: unreachable, too slow, or failing.
#[derive(Debug, Clone, thiserror::Error)]
#[error("redis unavailable: {0}")]
pub struct Unavailable(pub String);

/// What an entry asks of the script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Decide the entry on its bucket.
    Decide {
        /// Its denial denies the request (not shadow mode).
        denies: bool,
        /// It is a quota-mode limit.
        quota: bool,
    },
    /// Already decided by the caller (a cached-mode limit); it only takes part in settling.
    Decided {
        /// The caller's verdict.
        allowed: bool,
        /// Its denial denies the request.
        denies: bool,
        /// It is a quota-mode limit.
        quota: bool,
    },
    /// Lease up to `cost` units, as many as remain (cached mode).
    Lease,
    /// Give back `cost` units of an unused lease.
    GiveBack,
}

/// One descriptor's part in a script call.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// The bucket (unused for [`Role::Decided`]).
    pub key: BucketKey,
    /// The limit.
    pub quota: Quota,
    /// Units to take (or lease, or give back).
    pub cost: u64,
    /// What to do.
    pub role: Role,
}

/// What the script answered for one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    /// The verdict, as the memory store would give it (its `state` is not used).
    pub verdict: Verdict,
    /// It conformed but the request was denied, so nothing was taken; the verdict is a check.
    pub refunded: bool,
    /// Units taken from the bucket (for a lease: the units granted).
    pub taken: u64,
}

/// The Redis bucket store.
pub struct RedisStore {
    link: Link,
    script: redis::Script,
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

/// The most a token bucket's key lives past the time its bucket is full again.
const GRACE_MS: u64 = 1000;

impl RedisStore {
    /// A store for `options`, connecting in the background: it starts degraded when Redis is
    /// not reachable yet and recovers by itself. Errors only for a malformed URL.
    pub fn start(options: &RedisOptions) -> Result<Arc<Self>, Unavailable> {
        let link = Link::new(options).map_err(|e| Unavailable(e.to_string()))?;
        let store = Arc::new(Self {
            link,
            script: redis::Script::new(include_str!("decide.lua")),
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

    /// Runs `entries` of one request in `domain_tag`'s slot, atomically, at `now`.
    pub async fn run(
        &self,
        domain_tag: u64,
        entries: &[Entry],
        now: Nanos,
    ) -> Result<SmallVec<[Figures; 4]>, Unavailable> {
        if self.is_degraded() {
            return Err(Unavailable("degraded, waiting for redis to answer".into()));
        }
        let mut invocation = self.script.prepare_invoke();
        invocation
            .arg(now / NANOS_PER_SEC)
            .arg(now % NANOS_PER_SEC)
            .arg(GRACE_MS);
        let mut name = String::with_capacity(self.prefix.len() + 56);
        for entry in entries {
            let (kind, p1, p2) = shape(&entry.quota);
            let (kind, p1, role) = match entry.role {
                Role::Decide { denies, quota } => (kind, p1, role_bits(denies, quota)),
                Role::Decided {
                    allowed,
                    denies,
                    quota,
                } => (0, u64::from(allowed), role_bits(denies, quota)),
                Role::Lease => (kind, p1, 4),
                Role::GiveBack => (kind, p1, 8),
            };
            if kind != 0 {
                name.clear();
                let _ = write!(
                    name,
                    "{}{{{domain_tag:016x}}}:{:032x}",
                    self.prefix, entry.key.0
                );
                invocation.key(name.as_str());
            }
            invocation
                .arg(kind)
                .arg(entry.cost)
                .arg(p1)
                .arg(p2)
                .arg(role);
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
        let reply: Vec<i64> = match answer {
            Ok(Ok(reply)) => reply,
            Ok(Err(error)) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                return Err(self.fail(domain_tag, error.to_string()));
            }
            Err(_) => {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
                return Err(self.fail(domain_tag, format!("no answer within {:?}", self.timeout)));
            }
        };
        if reply.len() != entries.len() * 6 {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return Err(self.fail(
                domain_tag,
                format!(
                    "script answered {} values for {} entries",
                    reply.len(),
                    entries.len()
                ),
            ));
        }
        Ok(reply.chunks_exact(6).map(figures).collect())
    }

    fn fail(&self, domain_tag: u64, why: String) -> Unavailable {
        self.failed_tag.store(domain_tag, Ordering::Relaxed);
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

/// The script's algorithm code and parameters for `quota`.
fn shape(quota: &Quota) -> (u8, u64, u64) {
    match quota.algorithm() {
        Algorithm::TokenBucket if quota.requests_per_unit() == 0 || quota.burst() == 0 => {
            (1, quota.unit().nanos(), 0)
        }
        Algorithm::TokenBucket => (
            1,
            token_bucket::token_nanos(quota),
            u64::from(quota.burst()),
        ),
        Algorithm::FixedWindow => (
            2,
            quota.unit().seconds(),
            u64::from(quota.requests_per_unit()),
        ),
        Algorithm::SlidingWindow => (
            3,
            sliding_window::unit_ms(quota),
            u64::from(quota.requests_per_unit()),
        ),
        Algorithm::SlidingLog => (
            4,
            sliding_log::unit_ms(quota),
            u64::from(quota.requests_per_unit()),
        ),
    }
}

fn role_bits(denies: bool, quota: bool) -> u8 {
    u8::from(denies) + 2 * u8::from(quota)
}

fn figures(values: &[i64]) -> Figures {
    let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
    Figures {
        verdict: Verdict {
            allowed: values[0] == 1,
            state: 0,
            remaining: unsigned(values[1]),
            reset_after: unsigned(values[2]),
            retry_after: u64::try_from(values[3]).ok(),
        },
        refunded: values[4] == 1,
        taken: unsigned(values[5]),
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
