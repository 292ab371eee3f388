//! How many replicas share Redis: each announces itself every [`HEARTBEAT`] in a sorted set
//! (`{prefix}{replicas}:live`, members scored by when their announcement expires), so every
//! replica knows the count before an outage, when the failure policy `local` divides a limit
//! among them.

use std::sync::Weak;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::RedisStore;

/// How often a replica announces itself.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long an announcement counts: a replica that stopped (or crashed) drops out of the
/// count within this long.
pub const ANNOUNCEMENT: Duration = Duration::from_secs(3);

/// This replica's identity in the set, and the count last read.
#[derive(Debug)]
pub(super) struct Replicas {
    id: String,
    count: AtomicU32,
}

impl Replicas {
    /// A fresh identity; until the first heartbeat, the count is 1 (this replica).
    pub(super) fn new() -> Self {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        Self {
            id: format!("{:016x}", u64::from_le_bytes(seed)),
            count: AtomicU32::new(1),
        }
    }

    /// Live replicas at the last heartbeat, this one included (at least 1).
    pub(super) fn count(&self) -> u32 {
        self.count.load(Ordering::Relaxed).max(1)
    }

    pub(super) fn id(&self) -> &str {
        &self.id
    }

    fn set(&self, count: u32) {
        self.count.store(count, Ordering::Relaxed);
    }
}

/// Wall-clock milliseconds: announcements are compared across processes.
pub(super) fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// While the store lives: announces this replica and reads the count, every [`HEARTBEAT`].
pub(super) async fn heartbeat(store: Weak<RedisStore>) {
    let mut ticks = tokio::time::interval(HEARTBEAT);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(live) = store.upgrade() else { return };
        if live.is_degraded() {
            continue;
        }
        let Some(mut conn) = live.link.conn() else {
            continue;
        };
        let now = wall_ms();
        let expires = now + u64::try_from(ANNOUNCEMENT.as_millis()).unwrap_or(u64::MAX);
        let key = live.replicas_key();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .zadd(&key, live.replicas.id(), expires)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now)
            .ignore()
            .zcard(&key)
            .pexpire(
                &key,
                10 * i64::try_from(ANNOUNCEMENT.as_millis()).unwrap_or(i64::MAX),
            )
            .ignore();
        let counted = pipe.query_async::<(u32,)>(&mut conn);
        match tokio::time::timeout(HEARTBEAT, counted).await {
            Ok(Ok((count,))) => live.replicas.set(count),
            Ok(Err(error)) => tracing::debug!(%error, "replica heartbeat failed"),
            Err(_) => tracing::debug!("replica heartbeat timed out"),
        }
    }
}
