//! Sliding window: the weighted two-window counter.
//!
//! Time is cut into epoch-aligned windows of one unit, as for the fixed window, and each key
//! counts what it admitted in the current window and in the previous one. At a point that is a
//! fraction `f` into the current window, the estimate of the last full unit is
//! `ceil(previous · (1 − f)) + current`: the previous window is assumed to have spread its
//! requests evenly, and the part of it still inside the sliding unit is counted. A request is
//! admitted while the estimate plus its cost stays within the limit.
//!
//! Error bound: the estimate is exact when the previous window's requests were evenly spread.
//! Otherwise, in any sliding unit the admitted count can exceed the limit by at most what the
//! previous window admitted beyond its even share in the part that slid out, which is below the
//! limit itself; against bursts at a window's start it is conservative (it under-admits), and
//! against bursts at the end it can admit up to the limit again right after, as little as
//! `limit · f` late. Rounding the weighted part up makes it never under-count.
//!
//! Time is counted in whole milliseconds so that the Redis script, which computes with doubles,
//! gets exactly the same answers: `requests_per_unit × unit-in-ms` must stay below 2^53 (see
//! [`check`]). The state word packs the window index (low 24 bits, enough to tell the current
//! and previous windows apart; buckets idle that long were swept long before) and the two
//! counts (20 bits each).

use super::{NANOS_PER_MS, Verdict, after_ms};
use crate::clock::Nanos;
use crate::quota::{Quota, QuotaError};

const COUNT_BITS: u32 = 20;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const INDEX_MASK: u64 = (1 << 24) - 1;

/// The largest `requests_per_unit` a sliding window counts.
pub const MAX_LIMIT: u32 = COUNT_MASK as u32;

/// Why `quota` cannot be enforced as a sliding window, if it cannot.
pub fn check(quota: &Quota) -> Result<(), QuotaError> {
    let rpu = quota.requests_per_unit();
    if rpu > MAX_LIMIT {
        return Err(QuotaError::SlidingWindowCount {
            requests_per_unit: rpu,
            max: MAX_LIMIT,
        });
    }
    if u128::from(rpu) * u128::from(unit_ms(quota)) >= 1 << 53 {
        return Err(QuotaError::SlidingWindowSpan {
            requests_per_unit: rpu,
            unit: quota.unit(),
        });
    }
    quota.debt_within(super::most_counted(quota))
}

/// The window length in milliseconds.
pub fn unit_ms(quota: &Quota) -> u64 {
    quota.period_nanos() / NANOS_PER_MS
}

fn pack(index: u64, previous: u64, current: u64) -> u64 {
    ((index & INDEX_MASK) << (2 * COUNT_BITS)) | (previous << COUNT_BITS) | current
}

/// The (previous, current) counts of `state` as seen from window `index`.
fn counts(state: u64, index: u64) -> (u64, u64) {
    let stored = state >> (2 * COUNT_BITS);
    let previous = (state >> COUNT_BITS) & COUNT_MASK;
    let current = state & COUNT_MASK;
    if stored == index & INDEX_MASK {
        (previous, current)
    } else if stored == index.wrapping_sub(1) & INDEX_MASK {
        (current, 0)
    } else {
        (0, 0)
    }
}

/// Where `now` falls: (window index, ms left in the window).
fn position(quota: &Quota, now: Nanos) -> (u64, u64) {
    let window = unit_ms(quota);
    let now_ms = now / NANOS_PER_MS;
    (now_ms / window, window - now_ms % window)
}

/// Decides a request of `cost` hits at `now`: it conforms when the estimate plus `cost` stays
/// within the limit (a check conforms unless the estimate is past it). A hit that does not
/// conform counts nothing, unless the quota runs debt: then it counts what it asked, up to the
/// limit plus the debt.
pub fn decide(quota: &Quota, state: u64, now: Nanos, cost: u64) -> Verdict {
    let window = u128::from(unit_ms(quota));
    let (index, left) = position(quota, now);
    let (previous, current) = counts(state, index);
    let limit = u64::from(quota.requests_per_unit());
    let weighted = (u128::from(previous) * u128::from(left)).div_ceil(window) as u64;
    let used = weighted + current;
    let available = limit.saturating_sub(used);
    // Everything counted now has slid out one window after the current one ends.
    let reset_ms = |previous: u64, current: u64| match (previous, current) {
        (0, 0) => 0,
        (_, 0) => left,
        _ => left + unit_ms(quota),
    };
    if used > limit || cost > available {
        let debt = u64::from(quota.debt());
        let taken = match debt {
            0 => 0,
            _ => cost.min((limit + debt).saturating_sub(used)),
        };
        let current = current + taken;
        return Verdict {
            allowed: false,
            state: if taken > 0 {
                pack(index, previous, current)
            } else {
                state
            },
            remaining: available.saturating_sub(taken),
            reset_after: after_ms(reset_ms(previous, current), now),
            retry_after: retry_ms(quota, previous, current, left, cost).map(|ms| after_ms(ms, now)),
        };
    }
    let counted = cost > 0;
    Verdict {
        allowed: true,
        state: if counted {
            pack(index, previous, current + cost)
        } else {
            state
        },
        remaining: available - cost,
        reset_after: after_ms(
            if counted {
                left + unit_ms(quota)
            } else {
                reset_ms(previous, current)
            },
            now,
        ),
        retry_after: None,
    }
}

/// The wait, in ms, until `cost` fits: in this window, as the previous one slides out, or in
/// the next; `None` when the cost is above the limit.
fn retry_ms(quota: &Quota, previous: u64, current: u64, left: u64, cost: u64) -> Option<u64> {
    let limit = u64::from(quota.requests_per_unit());
    if cost > limit {
        return None;
    }
    let window = u128::from(unit_ms(quota));
    if let Some(room) = limit.checked_sub(current + cost) {
        // ceil(previous · (left − t) / window) ≤ room  ⇔  left − t ≤ room · window / previous
        let keep = (u128::from(room) * window / u128::from(previous.max(1))) as u64;
        return Some(left.saturating_sub(keep));
    }
    // Next window: the current count becomes the previous one.
    let keep = (u128::from(limit - cost) * window / u128::from(current.max(1))) as u64;
    Some(left + unit_ms(quota).saturating_sub(keep))
}

/// Gives back `units` counted at `taken_ms`, from the window they were counted in if `state`
/// still holds it (as its current or its previous window).
pub fn release(quota: &Quota, state: u64, taken_ms: u64, units: u64) -> u64 {
    let taken = taken_ms / unit_ms(quota);
    let stored = state >> (2 * COUNT_BITS);
    let (previous, current) = ((state >> COUNT_BITS) & COUNT_MASK, state & COUNT_MASK);
    if stored == taken & INDEX_MASK {
        pack(stored, previous, current.saturating_sub(units))
    } else if stored == (taken + 1) & INDEX_MASK {
        pack(stored, previous.saturating_sub(units), current)
    } else {
        state
    }
}

/// Returns `cost` hits counted by `acquired`, if `current` is still that window.
pub fn refund(current: u64, acquired: u64, cost: u64) -> u64 {
    if current >> (2 * COUNT_BITS) == acquired >> (2 * COUNT_BITS) {
        current - (current & COUNT_MASK).min(cost)
    } else {
        current
    }
}

/// When `state` stops counting: two windows after its own began (one after, if it only holds a
/// previous count). `window_ns` is the window length, `now` places the 24-bit index.
pub fn idle_at(state: u64, window_ns: u64, now: Nanos) -> Nanos {
    let window_ms = (window_ns / NANOS_PER_MS).max(1);
    let now_index = now / NANOS_PER_MS / window_ms;
    let stored = state >> (2 * COUNT_BITS);
    let index = now_index - (now_index.wrapping_sub(stored) & INDEX_MASK);
    let (previous, current) = ((state >> COUNT_BITS) & COUNT_MASK, state & COUNT_MASK);
    let windows = match (previous, current) {
        (0, 0) => return 0,
        (_, 0) => 1,
        _ => 2,
    };
    (index + windows)
        .saturating_mul(window_ms)
        .saturating_mul(NANOS_PER_MS)
}

/// The state of a window that has `remaining` hits left at `now`: the rest counted in the
/// current window.
pub fn with_remaining(quota: &Quota, remaining: u64, now: Nanos) -> u64 {
    let (index, _) = position(quota, now);
    let used = u64::from(quota.requests_per_unit()).saturating_sub(remaining);
    pack(index, 0, used.min(COUNT_MASK))
}

/// Re-expresses a state written with windows of `from_ns` in `quota`'s windows: everything it
/// remembers counts in the current window, so a changed unit never forgets a hit.
pub fn rescale(quota: &Quota, state: u64, now: Nanos, from_ns: u64) -> u64 {
    let from_ms = (from_ns / NANOS_PER_MS).max(1);
    let (previous, current) = counts(state, now / NANOS_PER_MS / from_ms);
    let (index, _) = position(quota, now);
    pack(index, 0, (previous + current).min(COUNT_MASK))
}

#[cfg(test)]
mod tests;
