//! Token bucket with continuous refill, kept as one timestamp (GCRA form).
//!
//! A bucket of capacity `burst` refilled at `requests_per_unit` per unit is stored as its
//! *theoretical arrival time* `tat`: the instant at which the bucket will be full again. Each
//! token is worth `T = unit / requests_per_unit` nanoseconds (rounded up). At `now` the bucket
//! holds `(burst·T − (max(tat, now) − now)) / T` tokens; consuming `c` tokens moves `tat`
//! forward by `c·T`. This is exactly a token bucket, needs no floating point, and fits in one
//! atomic word. A fresh bucket is `tat = 0`, which is full at any `now`.

use super::{Verdict, clamp_u64};
use crate::clock::Nanos;
use crate::quota::Quota;

/// Nanoseconds one token is worth: `unit / requests_per_unit`, rounded up, at least 1.
fn token_nanos(quota: &Quota) -> u128 {
    let rpu = u128::from(quota.requests_per_unit().max(1));
    u128::from(quota.unit().nanos()).div_ceil(rpu).max(1)
}

/// Decides a request of `cost` tokens at `now`.
pub fn decide(quota: &Quota, state: u64, now: Nanos, cost: u64) -> Verdict {
    let tat = u128::from(state.max(now));
    let now_wide = u128::from(now);
    if quota.requests_per_unit() == 0 || quota.burst() == 0 {
        // A zero rate never refills: every request that wants a token is denied.
        return Verdict {
            allowed: false,
            state,
            remaining: 0,
            reset_after: quota.unit().nanos(),
            retry_after: None,
        };
    }
    let t = token_nanos(quota);
    let capacity = u128::from(quota.burst()) * t;
    let used = tat - now_wide;
    let available = capacity.saturating_sub(used) / t;
    let cost_wide = u128::from(cost);
    let enough = if cost == 0 {
        available >= 1
    } else {
        cost_wide <= available
    };
    if !enough {
        let retry_after = (cost_wide.max(1) <= u128::from(quota.burst()))
            .then(|| clamp_u64((used + cost_wide.max(1) * t).saturating_sub(capacity)));
        return Verdict {
            allowed: false,
            state,
            remaining: clamp_u64(available),
            reset_after: clamp_u64(used),
            retry_after,
        };
    }
    let new_tat = tat + cost_wide * t;
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
    let back = u128::from(cost) * token_nanos(quota);
    clamp_u64(u128::from(tat).saturating_sub(back))
}

/// A bucket is full, so carries no information, from its `tat` on.
pub fn idle_at(tat: u64) -> Nanos {
    tat
}

#[cfg(test)]
mod tests;
