//! Token bucket with continuous refill, kept as one timestamp (GCRA form).
//!
//! A bucket of capacity `burst` refilled at `requests_per_unit` per unit is stored as its
//! *theoretical arrival time* `tat`: the instant at which the bucket will be full again. Each
//! token is worth `T = unit / requests_per_unit` nanoseconds (rounded up). At `now` the bucket
//! holds `(burst·T − (max(tat, now) − now)) / T` tokens; consuming `c` tokens moves `tat`
//! forward by `c·T`. This is exactly a token bucket, needs no floating point, and fits in one
//! atomic word. A fresh bucket is `tat = 0`, which is full at any `now`.

use super::{Verdict, clamp_u64};
use crate::clock::{NANOS_PER_SEC, Nanos};
use crate::quota::{Quota, QuotaError};

/// The fastest rate counted exactly: a token's length is rounded up to whole nanoseconds, an
/// error of at most 0.1 % at this rate and less below it.
pub const MAX_RATE_PER_SECOND: u64 = 1_000_000;

/// The longest an empty bucket may take to refill (100 years), so its timestamp stays in range.
pub const MAX_REFILL: Nanos = 100 * 365 * 86_400 * NANOS_PER_SEC;

/// Why `quota` cannot be enforced as a token bucket, if it cannot.
pub fn check(quota: &Quota) -> Result<(), QuotaError> {
    let rpu = quota.requests_per_unit();
    let unit = quota.unit();
    if rpu == 0 {
        return Ok(());
    }
    if u64::from(rpu) > MAX_RATE_PER_SECOND * quota.period_secs() {
        return Err(QuotaError::TooFast {
            requests_per_unit: rpu,
            unit,
            max_per_second: MAX_RATE_PER_SECOND,
        });
    }
    let refill = u128::from(quota.burst()) * u128::from(token_nanos(quota));
    if refill > u128::from(MAX_REFILL) {
        return Err(QuotaError::RefillTooLong {
            burst: quota.burst(),
            requests_per_unit: rpu,
            unit,
        });
    }
    quota.debt_within(super::most_counted(quota))
}

/// Nanoseconds one token is worth: `unit / requests_per_unit`, rounded up, at least 1.
pub fn token_nanos(quota: &Quota) -> u64 {
    let rpu = u64::from(quota.requests_per_unit().max(1));
    quota.period_nanos().div_ceil(rpu).max(1)
}

/// Decides a request of `cost` tokens at `now`: it conforms when the bucket is not in debt and
/// holds `cost` tokens (a check, `cost` 0, conforms when the bucket is not in debt, however
/// few tokens are left, as envoyproxy/ratelimit answers). A hit that does not conform takes
/// nothing, unless the quota runs debt: then it takes what it asked, down to the debt's
/// ceiling.
pub fn decide(quota: &Quota, state: u64, now: Nanos, cost: u64) -> Verdict {
    let now_wide = u128::from(now);
    if quota.requests_per_unit() == 0 || quota.burst() == 0 {
        // A zero rate never refills: a check finds it empty but not in debt; every request
        // that wants a token is denied, and runs no debt that could never be repaid.
        return Verdict {
            allowed: cost == 0,
            state,
            remaining: 0,
            reset_after: quota.period_nanos(),
            retry_after: None,
        };
    }
    let t = u128::from(token_nanos(quota));
    let capacity = u128::from(quota.burst()) * t;
    // A bucket never owes more than its debt allows: what is past it (left by a lowered
    // `burst` or rate) is forgiven, so it refills within (`burst` + debt)·T.
    let ceiling = capacity + u128::from(quota.debt()) * t;
    let tat = u128::from(state.max(now)).min(now_wide + ceiling);
    let used = tat - now_wide;
    let available = capacity.saturating_sub(used) / t;
    let cost_wide = u128::from(cost);
    let conforms = used <= capacity && cost_wide <= available;
    // The wait until `cost` conforms, from a bucket `used` deep.
    let retry = |used: u128| {
        (cost_wide <= u128::from(quota.burst()))
            .then(|| clamp_u64((used + cost_wide * t).saturating_sub(capacity)))
    };
    if !conforms {
        // Debt: the hit takes what it asked, as far as the ceiling allows; without debt,
        // nothing.
        let taken = match quota.debt() {
            0 => 0,
            _ => cost_wide.min(ceiling.saturating_sub(used) / t),
        };
        let after = tat + taken * t;
        let (state, used) = match u64::try_from(after) {
            Ok(after_state) if taken > 0 => (after_state, after - now_wide),
            _ => (state, used),
        };
        return Verdict {
            allowed: false,
            state,
            remaining: clamp_u64(capacity.saturating_sub(used) / t),
            reset_after: clamp_u64(used),
            retry_after: retry(used),
        };
    }
    let new_tat = tat + cost_wide * t;
    if u64::try_from(new_tat).is_err() {
        // Out of the timestamp's range (`check` rejects such quotas): deny rather than clamp.
        return Verdict {
            allowed: false,
            state,
            remaining: clamp_u64(available),
            reset_after: clamp_u64(used),
            retry_after: None,
        };
    }
    Verdict {
        allowed: true,
        state: if cost == 0 { state } else { clamp_u64(new_tat) },
        remaining: clamp_u64(available - cost_wide),
        reset_after: clamp_u64(new_tat - now_wide),
        retry_after: None,
    }
}

/// Returns `cost` tokens to the bucket.
pub fn refund(quota: &Quota, tat: u64, cost: u64) -> u64 {
    let back = u128::from(cost) * u128::from(token_nanos(quota));
    clamp_u64(u128::from(tat).saturating_sub(back))
}

/// Gives back `units` tokens taken some time before `now`: the bucket refills at most to full.
pub fn release(quota: &Quota, tat: u64, now: Nanos, units: u64) -> u64 {
    if tat <= now {
        return tat;
    }
    refund(quota, tat, units).max(now)
}

/// Re-expresses a bucket written with tokens of `from` nanoseconds in tokens of `to`
/// nanoseconds, keeping the number of tokens consumed: after a reload raises a limit from 100 to
/// 200, a user who had used 80 has 120 left, not 200 and not 40. A token partly refilled counts
/// as consumed (the new rate refills it from scratch), which the Redis script computes exactly.
pub fn rescale(quota: &Quota, tat: u64, now: Nanos, from: u64) -> u64 {
    let to = u128::from(token_nanos(quota));
    let debt = u128::from(tat.saturating_sub(now));
    let consumed = debt.div_ceil(u128::from(from.max(1)));
    // At most an empty bucket run to its debt's ceiling, so it refills (and can be swept)
    // within (`burst` + debt)·T.
    let ceiling = (u128::from(quota.burst()) + u128::from(quota.debt())) * to;
    clamp_u64(u128::from(now) + (consumed * to).min(ceiling))
}

/// The state of a bucket that has `remaining` tokens at `now` (at most a full one).
pub fn with_remaining(quota: &Quota, remaining: u64, now: Nanos) -> u64 {
    let missing = u64::from(quota.burst()).saturating_sub(remaining);
    let debt = u128::from(missing) * u128::from(token_nanos(quota));
    clamp_u64(u128::from(now) + debt)
}

/// A bucket is full, so carries no information, from its `tat` on.
pub fn idle_at(tat: u64) -> Nanos {
    tat
}

#[cfg(test)]
mod tests;
