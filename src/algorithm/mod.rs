//! Rate-limit algorithms as pure functions of (state, now, cost).
//!
//! Each algorithm keeps its whole per-key state in one `u64`, so a bucket store can update it
//! with a single compare-and-swap and never needs a lock. Nothing here reads a clock, touches a
//! map or does I/O: the functions are exact, deterministic and cheap to test.

pub mod fixed_window;
pub mod sliding_log;
pub mod sliding_window;
pub mod token_bucket;

use crate::clock::Nanos;
use crate::quota::{Algorithm, Quota, QuotaError};

/// The per-key state word of a fresh (full, never used) bucket.
pub const FRESH: u64 = 0;

/// What an algorithm decided for one request against one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the request conforms. A `cost` of 0 (check only) conforms while at least one
    /// unit remains.
    pub allowed: bool,
    /// The state to store: the old state when nothing was consumed.
    pub state: u64,
    /// Requests still allowed right now, after this one.
    pub remaining: u64,
    /// Time until the bucket is whole again (token bucket: full; fixed window: the window ends).
    pub reset_after: Nanos,
    /// For a denial, the wait until the same request would conform; `None` if it never can.
    pub retry_after: Option<Nanos>,
}

impl Verdict {
    /// Whether storing this verdict changes the bucket.
    pub fn consumed(&self, old_state: u64) -> bool {
        self.state != old_state
    }
}

/// Decides a request of `cost` units against the state word `state` at `now`. The sliding
/// log keeps a log instead of a word and is decided by [`sliding_log::decide`]; given a word,
/// it fails closed (denies) rather than guess.
pub fn decide(quota: &Quota, state: u64, now: Nanos, cost: u64) -> Verdict {
    match quota.algorithm() {
        Algorithm::SlidingLog => Verdict {
            allowed: false,
            state,
            remaining: 0,
            reset_after: quota.period_nanos(),
            retry_after: None,
        },
        Algorithm::TokenBucket => token_bucket::decide(quota, state, now, cost),
        Algorithm::FixedWindow => fixed_window::decide(quota, state, now, cost),
        Algorithm::SlidingWindow => sliding_window::decide(quota, state, now, cost),
    }
}

/// Why `quota` cannot be enforced by its algorithm, if it cannot ([`Quota::try_new`] asks).
pub fn check(quota: &Quota) -> Result<(), QuotaError> {
    match quota.algorithm() {
        Algorithm::TokenBucket => token_bucket::check(quota),
        // The count is 32 bits of the state word.
        Algorithm::FixedWindow => quota.debt_within(most_counted(quota)),
        Algorithm::SlidingWindow => sliding_window::check(quota),
        Algorithm::SlidingLog => sliding_log::check(quota),
    }
}

/// The most units `quota`'s algorithm counts exactly in one bucket, its capacity and any debt
/// together: a token bucket what refills within 100 years, a fixed window 2^32 − 1 (its count is
/// 32 bits of the state word), a sliding window what its 20-bit counts and the Redis script's
/// 2^53 products allow, a sliding log its 10 000 timestamps.
pub fn most_counted(quota: &Quota) -> u64 {
    match quota.algorithm() {
        Algorithm::TokenBucket => token_bucket::MAX_REFILL / token_bucket::token_nanos(quota),
        Algorithm::FixedWindow => u64::from(u32::MAX),
        Algorithm::SlidingWindow => {
            let span = ((1u64 << 53) - 1) / sliding_window::unit_ms(quota).max(1);
            u64::from(sliding_window::MAX_LIMIT).min(span)
        }
        Algorithm::SlidingLog => u64::from(sliding_log::MAX_LIMIT),
    }
}

/// Gives back `cost` units that `acquired` (a state this bucket held after consuming them)
/// took, from the bucket's `current` state. Used to roll back an all-or-nothing request.
pub fn refund(quota: &Quota, current: u64, acquired: u64, cost: u64) -> u64 {
    match quota.algorithm() {
        Algorithm::TokenBucket => token_bucket::refund(quota, current, cost),
        Algorithm::FixedWindow => fixed_window::refund(current, acquired, cost),
        Algorithm::SlidingWindow => sliding_window::refund(current, acquired, cost),
        Algorithm::SlidingLog => current,
    }
}

/// Gives back `units` that a reservation took at `taken_ms` (whole milliseconds) from `state`,
/// at `now`, as far as they still count: a token bucket refills at most to full, a window
/// gives back only from the window they were counted in (sliding logs:
/// [`sliding_log::release`]).
pub fn release(quota: &Quota, state: u64, taken_ms: u64, now: Nanos, units: u64) -> u64 {
    match quota.algorithm() {
        Algorithm::TokenBucket => token_bucket::release(quota, state, now, units),
        Algorithm::FixedWindow => fixed_window::release(quota, state, taken_ms, units),
        Algorithm::SlidingWindow => sliding_window::release(quota, state, taken_ms, units),
        Algorithm::SlidingLog => state,
    }
}

/// The state word of a bucket that has `remaining` units left at `now` (the sliding log keeps a
/// log: [`sliding_log::with_remaining`]).
pub fn with_remaining(quota: &Quota, remaining: u64, now: Nanos) -> u64 {
    match quota.algorithm() {
        Algorithm::TokenBucket => token_bucket::with_remaining(quota, remaining, now),
        Algorithm::FixedWindow => fixed_window::with_remaining(quota, remaining, now),
        Algorithm::SlidingWindow => sliding_window::with_remaining(quota, remaining, now),
        Algorithm::SlidingLog => FRESH,
    }
}

/// The size of one unit in `quota`'s state, for algorithms whose state depends on it (the
/// token bucket's token length, the sliding window's window length); 0 for those whose state
/// does not.
pub fn scale(quota: &Quota) -> u64 {
    match quota.algorithm() {
        Algorithm::TokenBucket => token_bucket::token_nanos(quota),
        Algorithm::FixedWindow => 0,
        Algorithm::SlidingWindow | Algorithm::SlidingLog => quota.period_nanos(),
    }
}

/// Re-expresses `state`, written at scale `from`, at `quota`'s scale, keeping what was consumed.
pub fn rescale(quota: &Quota, state: u64, now: Nanos, from: u64) -> u64 {
    match quota.algorithm() {
        Algorithm::TokenBucket => token_bucket::rescale(quota, state, now, from),
        Algorithm::FixedWindow => state,
        Algorithm::SlidingWindow => sliding_window::rescale(quota, state, now, from),
        Algorithm::SlidingLog => state,
    }
}

/// The time from which `state` (written at `scale`, seen at `now`) holds no information (the
/// bucket is as good as fresh), so the bucket can be dropped.
pub fn idle_at(algorithm: Algorithm, state: u64, scale: u64, now: Nanos) -> Nanos {
    match algorithm {
        Algorithm::TokenBucket => token_bucket::idle_at(state),
        Algorithm::FixedWindow => fixed_window::idle_at(state),
        Algorithm::SlidingWindow => sliding_window::idle_at(state, scale, now),
        Algorithm::SlidingLog => 0,
    }
}

/// Nanoseconds per millisecond: the window algorithms count in whole milliseconds, as the
/// Redis script does.
pub(crate) const NANOS_PER_MS: u64 = 1_000_000;

/// `ms` milliseconds after the last whole millisecond at or before `now`, as nanoseconds from
/// `now`.
pub(crate) fn after_ms(ms: u64, now: Nanos) -> Nanos {
    (ms * NANOS_PER_MS).saturating_sub(now % NANOS_PER_MS)
}

/// Saturating conversion for counts reported to callers.
pub(crate) fn clamp_u64(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::NANOS_PER_SEC;
    use crate::quota::Unit;

    #[test]
    fn a_state_made_with_some_remaining_has_that_many_left() {
        let now = 1_800_000_030 * NANOS_PER_SEC;
        for algorithm in [
            Algorithm::TokenBucket,
            Algorithm::FixedWindow,
            Algorithm::SlidingWindow,
        ] {
            let quota = Quota::new(10, Unit::Minute, algorithm);
            for remaining in [0, 3, 10, 12] {
                let state = with_remaining(&quota, remaining, now);
                assert_eq!(
                    decide(&quota, state, now, 0).remaining,
                    remaining.min(10),
                    "{algorithm}, {remaining} left"
                );
            }
        }
        let log = Quota::new(10, Unit::Minute, Algorithm::SlidingLog);
        let mut hits = sliding_log::with_remaining(&log, 4, now);
        assert_eq!(sliding_log::decide(&log, &mut hits, now, 0).remaining, 4);
    }
}
