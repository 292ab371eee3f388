//! Time as a parameter: the limiter core never reads a clock itself.
//!
//! Every decision takes `now` as [`Nanos`] since the Unix epoch. Production code reads
//! [`SystemClock`] (monotonic, anchored to wall time once at start so fixed windows stay
//! epoch-aligned and replicas agree); tests drive [`ManualClock`] by hand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use tokio::sync::Notify;

/// Nanoseconds since the Unix epoch. `u64` lasts until the year 2554.
pub type Nanos = u64;

/// Nanoseconds in one second.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current time in nanoseconds since the Unix epoch.
    fn now(&self) -> Nanos;

    /// Resolves once this clock reads `at` or later (for waits measured on this clock, such as
    /// holding a request until it conforms).
    fn sleep_until(&self, at: Nanos) -> BoxFuture<'_, ()>;
}

/// The real clock: wall time read once at start, then advanced by a monotonic timer, so a
/// wall-clock step (NTP, an operator) never makes buckets jump.
#[derive(Debug)]
pub struct SystemClock {
    wall_at_start: Nanos,
    started: Instant,
}

impl SystemClock {
    /// Anchors the monotonic timer to the current wall time.
    pub fn new() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Self {
            wall_at_start: saturating_nanos(wall),
            started: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Nanos {
        self.wall_at_start
            .saturating_add(saturating_nanos(self.started.elapsed()))
    }

    fn sleep_until(&self, at: Nanos) -> BoxFuture<'_, ()> {
        let wait = Duration::from_nanos(at.saturating_sub(self.now()));
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A clock that only moves when told to: for exact, fast tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
    /// Wakes the sleepers whenever the clock moves.
    moved: Notify,
}

impl ManualClock {
    /// A clock stopped at `now`.
    pub fn at(now: Nanos) -> Self {
        Self {
            now: AtomicU64::new(now),
            moved: Notify::new(),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(saturating_nanos(by), Ordering::SeqCst);
        self.moved.notify_waiters();
    }

    /// Sets the clock to `now`.
    pub fn set(&self, now: Nanos) {
        self.now.store(now, Ordering::SeqCst);
        self.moved.notify_waiters();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Nanos {
        self.now.load(Ordering::SeqCst)
    }

    /// Resolves once the clock has been moved to `at` or later.
    fn sleep_until(&self, at: Nanos) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            loop {
                // Registered before the check, so a move in between is not missed.
                let moved = self.moved.notified();
                if self.now() >= at {
                    return;
                }
                moved.await;
            }
        })
    }
}

/// A duration in nanoseconds, saturating at `u64::MAX`.
pub fn saturating_nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::at(5);
        assert_eq!(clock.now(), 5);
        clock.advance(Duration::from_nanos(10));
        assert_eq!(clock.now(), 15);
        clock.set(3);
        assert_eq!(clock.now(), 3);
    }

    #[tokio::test]
    async fn a_manual_sleep_ends_when_the_clock_is_moved_past_it() {
        use futures_util::FutureExt;
        let clock = ManualClock::at(100);
        let mut sleeping = clock.sleep_until(150);
        assert!((&mut sleeping).now_or_never().is_none());
        clock.advance(Duration::from_nanos(49));
        assert!((&mut sleeping).now_or_never().is_none());
        clock.advance(Duration::from_nanos(1));
        assert!(sleeping.now_or_never().is_some());
        assert!(
            clock.sleep_until(10).now_or_never().is_some(),
            "the past is now"
        );
    }

    #[test]
    fn system_clock_is_near_wall_time_and_monotonic() {
        let clock = SystemClock::new();
        let wall = saturating_nanos(SystemTime::now().duration_since(UNIX_EPOCH).unwrap());
        let a = clock.now();
        let b = clock.now();
        assert!(b >= a);
        assert!(a.abs_diff(wall) < 5 * NANOS_PER_SEC);
    }
}
