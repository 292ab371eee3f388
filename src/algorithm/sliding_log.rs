//! Sliding log: exact counting over the last unit, one timestamp per admitted hit.
//!
//! A request is admitted while the hits admitted in the unit before it, plus its cost, stay
//! within the limit: no estimate, no window edges. The price is memory, one timestamp per hit
//! in the unit, so limits are capped at [`MAX_LIMIT`] per unit. Times are whole milliseconds, as
//! in the Redis script (a sorted set scored in milliseconds), so both stores decide alike.
//!
//! The log is the state: the functions here take it, `now` and the cost, and change nothing
//! but the log they are given.

use std::collections::VecDeque;

use super::{NANOS_PER_MS, Verdict, after_ms};
use crate::clock::Nanos;
use crate::quota::{Quota, QuotaError};

/// The largest `requests_per_unit` a sliding log keeps (one timestamp per hit).
pub const MAX_LIMIT: u32 = 10_000;

/// Why `quota` cannot be enforced as a sliding log, if it cannot.
pub fn check(quota: &Quota) -> Result<(), QuotaError> {
    let rpu = quota.requests_per_unit();
    if rpu > MAX_LIMIT {
        return Err(QuotaError::SlidingLogCount {
            requests_per_unit: rpu,
            max: MAX_LIMIT,
        });
    }
    quota.debt_within(super::most_counted(quota))
}

/// The unit in milliseconds.
pub fn unit_ms(quota: &Quota) -> u64 {
    quota.period_nanos() / NANOS_PER_MS
}

/// Decides a request of `cost` hits at `now` on `log` (counted hits' times, in ms, oldest
/// first): drops the hits that left the unit, and records the request's if it conforms, that
/// is if the log plus `cost` stays within the limit (a check conforms unless the log is past
/// it). A hit that does not conform records nothing, unless the quota runs debt: then it
/// records what it asked, up to the limit plus the debt.
pub fn decide(quota: &Quota, log: &mut VecDeque<u64>, now: Nanos, cost: u64) -> Verdict {
    let unit = unit_ms(quota);
    let now_ms = now / NANOS_PER_MS;
    let after = |ms: u64| after_ms(ms, now);
    while log.front().is_some_and(|&at| at + unit <= now_ms) {
        log.pop_front();
    }
    let limit = u64::from(quota.requests_per_unit());
    let used = log.len() as u64;
    let available = limit.saturating_sub(used);
    let conforms = used <= limit && cost <= available;
    let taken = match (conforms, quota.debt()) {
        (true, _) => cost,
        (false, 0) => 0,
        (false, debt) => cost.min((limit + u64::from(debt)).saturating_sub(used)),
    };
    log.extend(std::iter::repeat_n(now_ms, taken as usize));
    let used = log.len() as u64;
    // The hit whose leaving lets `cost` conform: the (used + cost − limit)-th oldest.
    let retry = (!conforms && cost <= limit)
        .then(|| log.get((used + cost - limit - 1) as usize).copied())
        .flatten()
        .map(|at| after(at + unit - now_ms));
    Verdict {
        allowed: conforms,
        state: 0,
        remaining: limit.saturating_sub(used),
        reset_after: log.back().map_or(0, |&at| after(at + unit - now_ms)),
        retry_after: retry,
    }
}

/// A log that has `remaining` hits left at `now`: the rest recorded at `now`.
pub fn with_remaining(quota: &Quota, remaining: u64, now: Nanos) -> VecDeque<u64> {
    let used = u64::from(quota.requests_per_unit()).saturating_sub(remaining);
    std::iter::repeat_n(now / NANOS_PER_MS, used as usize).collect()
}

/// Takes back `cost` hits that a request recorded at `now` (it was denied by another limit).
pub fn refund(log: &mut VecDeque<u64>, now: Nanos, cost: u64) {
    let now_ms = now / NANOS_PER_MS;
    for _ in 0..cost {
        if log.back() == Some(&now_ms) {
            log.pop_back();
        }
    }
}

/// Gives back `units` hits recorded at `taken_ms` that are still in `log`.
pub fn release(log: &mut VecDeque<u64>, taken_ms: u64, units: u64) {
    let start = log.partition_point(|&at| at < taken_ms);
    let end = log.partition_point(|&at| at <= taken_ms);
    let gone = (end - start).min(units as usize);
    log.drain(start..start + gone);
}

/// When `log` stops counting anything: its newest hit's time plus the unit.
pub fn idle_at(log: &VecDeque<u64>, unit_ms: u64) -> Nanos {
    log.back()
        .map_or(0, |&at| (at + unit_ms).saturating_mul(NANOS_PER_MS))
}

#[cfg(test)]
mod tests;
