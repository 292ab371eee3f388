//! envoyproxy/ratelimit's fixed window: a counter per epoch-aligned window of one unit.
//!
//! The state word packs the window's end (whole seconds since the epoch, high 32 bits, good
//! until 2106) and the count admitted in it (low 32 bits). A state whose window has ended is a
//! zero count in the current window. Unlike the reference service, denied requests are not
//! counted, so the count never exceeds the limit, unless the limit runs debt.

use super::{NANOS_PER_MS, Verdict};
use crate::calendar;
use crate::clock::{NANOS_PER_SEC, Nanos};
use crate::quota::Quota;

fn pack(window_end_secs: u64, count: u64) -> u64 {
    (window_end_secs << 32) | (count & u64::from(u32::MAX))
}

fn window_end_secs(state: u64) -> u64 {
    state >> 32
}

fn count(state: u64) -> u64 {
    state & u64::from(u32::MAX)
}

/// The end, in whole seconds since the epoch, of the window that holds `now`: windows of the
/// quota's period aligned to the epoch, or its calendar's (`calendar: true`).
pub fn window_end(quota: &Quota, now: Nanos) -> u64 {
    match quota.calendar() {
        Some(zone) => calendar::window(zone, quota.unit(), quota.multiplier(), now).1,
        None => {
            let period = quota.period_secs();
            (now / NANOS_PER_SEC / period + 1) * period
        }
    }
}

/// Decides a request of `cost` hits at `now`: it conforms when the window's count plus `cost`
/// stays within the limit (a check conforms unless the count is past it). A hit that does not
/// conform counts nothing, unless the quota runs debt: then it counts what it asked, up to the
/// limit plus the debt.
pub fn decide(quota: &Quota, state: u64, now: Nanos, cost: u64) -> Verdict {
    let end_secs = window_end(quota, now);
    let used = if window_end_secs(state) == end_secs {
        count(state)
    } else {
        0
    };
    let limit = u64::from(quota.requests_per_unit());
    let available = limit.saturating_sub(used);
    let reset_after = (end_secs * NANOS_PER_SEC).saturating_sub(now);
    if used > limit || cost > available {
        let debt = u64::from(quota.debt());
        let taken = match debt {
            0 => 0,
            _ => cost.min((limit + debt).saturating_sub(used)),
        };
        return Verdict {
            allowed: false,
            state: if taken > 0 {
                pack(end_secs, used + taken)
            } else {
                state
            },
            remaining: available.saturating_sub(taken),
            reset_after,
            retry_after: (cost <= limit).then_some(reset_after),
        };
    }
    Verdict {
        allowed: true,
        state: if cost == 0 {
            state
        } else {
            pack(end_secs, used + cost)
        },
        remaining: available - cost,
        reset_after,
        retry_after: None,
    }
}

/// Returns `cost` hits counted by `acquired`, if `current` is still the same window.
pub fn refund(current: u64, acquired: u64, cost: u64) -> u64 {
    if window_end_secs(current) == window_end_secs(acquired) {
        pack(
            window_end_secs(current),
            count(current).saturating_sub(cost),
        )
    } else {
        current
    }
}

/// Gives back `units` counted at `taken_ms`, if `state` is still that window.
pub fn release(quota: &Quota, state: u64, taken_ms: u64, units: u64) -> u64 {
    let end_secs = window_end(quota, taken_ms * NANOS_PER_MS);
    if window_end_secs(state) != end_secs {
        return state;
    }
    pack(end_secs, count(state).saturating_sub(units))
}

/// The state of a window that has `remaining` hits left at `now`.
pub fn with_remaining(quota: &Quota, remaining: u64, now: Nanos) -> u64 {
    let end_secs = window_end(quota, now);
    pack(
        end_secs,
        u64::from(quota.requests_per_unit()).saturating_sub(remaining),
    )
}

/// A window's count means nothing once the window has ended, or while it is zero.
pub fn idle_at(state: u64) -> Nanos {
    if count(state) == 0 {
        return 0;
    }
    window_end_secs(state).saturating_mul(NANOS_PER_SEC)
}

#[cfg(test)]
mod tests;
