//! Whether Redis is in service: what trips it out, and the probe that brings it back.
//!
//! One slow or failed call is not an outage: that call is answered by the failure policy and
//! the next one tries Redis again. Redis is marked *degraded* (calls fail at once, without
//! waiting) when [`TRIP_AFTER`] calls in a row fail (timeouts, server errors, malformed
//! replies), or at once when the connection is refused or lost. A probe then makes a fresh
//! connection every [`PROBE_EVERY`] (sooner at first) and puts Redis back in service as soon as
//! one answers.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::RedisStore;
use crate::store::contract::Unavailable;

/// Calls in a row that fail (other than by a lost connection) before Redis is degraded.
pub const TRIP_AFTER: u32 = 3;

/// The longest wait between two probes while degraded (the first comes after 25 ms).
pub const PROBE_EVERY: Duration = Duration::from_millis(200);

/// How a call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// No answer within the call's time.
    Timeout,
    /// Redis answered with an error, or with a reply the script cannot have given.
    Server,
    /// The connection was refused, lost or never made.
    Connection,
}

/// Redis's health as this replica sees it.
#[derive(Debug)]
pub(super) struct Health {
    degraded: AtomicBool,
    in_a_row: AtomicU32,
    errors: AtomicU64,
    timeouts: AtomicU64,
    /// The hash tag of the last failed call: the probe checks that slot.
    failed_tag: AtomicU64,
    wake: Arc<Notify>,
}

impl Health {
    /// Degraded until the probe first reaches Redis.
    pub(super) fn new() -> Self {
        Self {
            degraded: AtomicBool::new(true),
            in_a_row: AtomicU32::new(0),
            errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            failed_tag: AtomicU64::new(0),
            wake: Arc::new(Notify::new()),
        }
    }

    pub(super) fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    pub(super) fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub(super) fn timeouts(&self) -> u64 {
        self.timeouts.load(Ordering::Relaxed)
    }

    /// A call was answered.
    pub(super) fn succeeded(&self) {
        if self.in_a_row.load(Ordering::Relaxed) != 0 {
            self.in_a_row.store(0, Ordering::Relaxed);
        }
    }

    /// A call on `hash_tag`'s slot failed: counts it, degrades Redis when the failures say it
    /// is down, and returns the error for the caller.
    pub(super) fn failed(&self, hash_tag: u64, failure: Failure, why: String) -> Unavailable {
        match failure {
            Failure::Timeout => self.timeouts.fetch_add(1, Ordering::Relaxed),
            Failure::Server | Failure::Connection => self.errors.fetch_add(1, Ordering::Relaxed),
        };
        let in_a_row = self.in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if failure == Failure::Connection || in_a_row >= TRIP_AFTER {
            self.degrade(hash_tag, &why);
        }
        Unavailable::new(why)
    }

    fn degrade(&self, hash_tag: u64, why: &str) {
        self.failed_tag.store(hash_tag, Ordering::Relaxed);
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                reason = %why,
                "redis unavailable: degraded, answering by the failure policy until it recovers"
            );
            self.wake.notify_one();
        }
    }

    fn recovered(&self) {
        self.in_a_row.store(0, Ordering::Relaxed);
        self.degraded.store(false, Ordering::Relaxed);
    }

    /// Wakes the probe (to end, when the store is dropped).
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    /// What wakes the probe.
    pub(super) fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }
}

/// While the store lives: whenever it is degraded, tries a fresh connection, 25 ms after the
/// failure and then with backoff up to [`PROBE_EVERY`], until Redis answers.
pub(super) async fn probe(store: Weak<RedisStore>, wake: Arc<Notify>) {
    let first = Duration::from_millis(25);
    let mut backoff = first;
    let mut since: Option<Instant> = None;
    loop {
        let Some(live) = store.upgrade() else { return };
        let health = &live.health;
        if !health.is_degraded() {
            drop(live);
            wake.notified().await;
            since = Some(Instant::now());
            backoff = first;
            tokio::time::sleep(backoff).await;
            continue;
        }
        let key = live.key_name(health.failed_tag.load(Ordering::Relaxed), "probe");
        let answered =
            tokio::time::timeout(Duration::from_secs(1), live.link.reconnect(&key)).await;
        match answered {
            Ok(Ok(())) => {
                health.recovered();
                match since.take() {
                    Some(since) => tracing::info!(
                        outage = ?since.elapsed(),
                        "redis answers: counting globally again"
                    ),
                    None => tracing::info!("redis answers: counting globally"),
                }
            }
            failed => {
                let reason = match failed {
                    Ok(Err(error)) => error.to_string(),
                    _ => "no answer within 1s".to_owned(),
                };
                tracing::debug!(%reason, retry_in = ?backoff, "redis still unavailable");
                drop(live);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(PROBE_EVERY);
            }
        }
    }
}
