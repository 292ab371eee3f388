//! The other limits of a list, counted by tollgate from what Envoys report.
//!
//! Envoy enforces one token bucket per bucket. When the descriptor a bucket falls under has a
//! list of limits (`rate_limits:`), the one with the shortest window is sent as the token
//! bucket (see [`super::bucket`]); every other limit is a [`Tally`]: it is charged with the
//! requests the budget's Envoys report allowed (`num_requests_allowed`), in the limit's own
//! algorithm and windows, past the limit if they overshot (the requests passed; the limit
//! then stays used up until they are repaid, as `debt: true` does).
//!
//! The [`gate`] decides from the tallies what the budget may hand out: nothing (`DENY_ALL`)
//! while one is used up, and near the end of one, a token bucket cut so that what it admits in
//! one report period fits in what that limit still admits in that period. Envoys learn of
//! their usage only at their reports, so a budget can pass at most what its shares admit in
//! one report period over a counted limit (see the README's RLQS section).
//!
//! Pure: quota, state, `now` in; no clock, no I/O.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::algorithm::{self, Verdict, sliding_log, token_bucket};
use crate::clock::Nanos;
use crate::quota::{Algorithm, Quota};
use crate::rule::Rule;
use crate::store::BucketKey;

/// One counted limit of a budget and what the budget's Envoys used of it.
#[derive(Debug, Clone)]
pub struct Tally {
    /// The limit.
    pub rule: Arc<Rule>,
    /// Its whole quota (before it is divided among replicas).
    pub quota: Quota,
    /// Its identity: a reload that keeps the limit keeps its count.
    pub key: BucketKey,
    count: Count,
}

/// The count, in the state of the limit's algorithm.
#[derive(Debug, Clone)]
enum Count {
    /// The state word of a token bucket, fixed or sliding window, and the scale it was
    /// written at ([`algorithm::scale`]: a replica count change re-scales it).
    Word { state: u64, scale: u64 },
    /// A sliding log's hit times.
    Log(VecDeque<u64>),
}

/// What a budget may hand out at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gate {
    /// The token-bucket capacity to share: the replica's part of the limit, or less near the
    /// end of a counted limit, or a rate of 0 while one is used up.
    pub capacity: Quota,
    /// The tally that closed the budget (used up), if one did.
    pub closed_by: Option<usize>,
}

impl Tally {
    /// Nothing counted yet of `quota`.
    pub fn new(rule: Arc<Rule>, quota: Quota, key: BucketKey) -> Self {
        let count = match quota.algorithm() {
            Algorithm::SlidingLog => Count::Log(VecDeque::new()),
            _ => Count::Word {
                state: algorithm::FRESH,
                scale: algorithm::scale(&quota),
            },
        };
        Self {
            rule,
            quota,
            key,
            count,
        }
    }

    /// The same limit as configured now (a reload): the count is kept unless the algorithm
    /// changed (then the limit has a new key, and a new tally).
    pub fn reconfigure(&mut self, rule: Arc<Rule>, quota: Quota) {
        if quota.algorithm() != self.quota.algorithm() {
            *self = Tally::new(rule, quota, self.key);
            return;
        }
        self.rule = rule;
        self.quota = quota;
    }

    /// Charges `used` requests that Envoys reported allowed, at `now`, against `part` (this
    /// replica's part of the quota): they passed, so they count even past the limit, as far as
    /// the algorithm counts (one capacity of debt at most).
    pub fn charge(&mut self, part: &Quota, used: u64, now: Nanos) {
        if used == 0 {
            return;
        }
        let counting = counting(part);
        match &mut self.count {
            Count::Word { state, scale } => {
                let word = current(part, *state, *scale, now);
                *state = algorithm::decide(&counting, word, now, used).state;
                *scale = algorithm::scale(part);
            }
            Count::Log(log) => {
                sliding_log::decide(&counting, log, now, used);
            }
        }
    }

    /// What `part` has left at `now`.
    pub fn remaining(&self, part: &Quota, now: Nanos) -> u64 {
        self.verdict(&counting(part), now, 0).remaining
    }

    /// The wait from `now` until `part` admits a request again: 0 while it admits one, `None`
    /// when it never will (a limit of 0).
    pub fn admits_in(&self, part: &Quota, now: Nanos) -> Option<Nanos> {
        match &self.count {
            Count::Word { state, scale } if part.algorithm() == Algorithm::TokenBucket => {
                // The bucket's own verdict forgives what is past its capacity (without debt)
                // or would charge the probe (with debt): one token is there once the bucket
                // is at most its capacity less one token deep.
                if part.requests_per_unit() == 0 || part.burst() == 0 {
                    return None;
                }
                let t = u128::from(token_bucket::token_nanos(part));
                let depth = u128::from(current(part, *state, *scale, now).saturating_sub(now));
                let capacity = u128::from(part.burst()) * t;
                Some(u64::try_from((depth + t).saturating_sub(capacity)).unwrap_or(u64::MAX))
            }
            _ => {
                // Windows and logs keep every hit counted: probed without debt, the probe
                // takes nothing.
                let verdict = self.verdict(&part.with_debt(0), now, 1);
                if verdict.allowed {
                    Some(0)
                } else {
                    verdict.retry_after
                }
            }
        }
    }

    /// The most `part` admits over `period` from `now`: what is left now, and what frees up by
    /// the end of the period if all of that were used now (the refill of a token bucket, a new
    /// window, hits that slide out).
    pub fn room(&self, part: &Quota, now: Nanos, period: Nanos) -> u64 {
        let left = self.remaining(part, now);
        let later = now.saturating_add(period);
        let counting = counting(part);
        let freed = match &self.count {
            Count::Word { state, scale } => {
                let word = current(part, *state, *scale, now);
                let spent = algorithm::decide(&counting, word, now, left).state;
                algorithm::decide(&counting, spent, later, 0).remaining
            }
            Count::Log(log) => {
                let mut log = log.clone();
                sliding_log::decide(&counting, &mut log, now, left);
                sliding_log::decide(&counting, &mut log, later, 0).remaining
            }
        };
        left.saturating_add(freed)
    }

    /// The verdict of a request of `cost` at `now` against `quota` (a form of this replica's
    /// part), changing nothing.
    fn verdict(&self, quota: &Quota, now: Nanos, cost: u64) -> Verdict {
        match &self.count {
            Count::Word { state, scale } => {
                algorithm::decide(quota, current(quota, *state, *scale, now), now, cost)
            }
            Count::Log(log) => sliding_log::decide(quota, &mut log.clone(), now, cost),
        }
    }
}

/// What `capacity` (this replica's part of the token-bucket limit) may hand out at `now`, with
/// `tallies` counted over `replicas` and Envoys reporting every `report_period`:
///
/// - nothing (a rate of 0: `DENY_ALL`) while a tally does not admit a request;
/// - else `capacity`, cut to the largest rate whose token bucket admits, over one report period
///   (its burst, then its rate for the period), no more than each tally's [`Tally::room`] for
///   that period; at least 1 token per period while every tally admits. The burst is cut in
///   the same proportion as the rate.
pub fn gate(
    capacity: &Quota,
    tallies: &[Tally],
    replicas: u32,
    now: Nanos,
    report_period: Nanos,
) -> Gate {
    let whole = admits(capacity, report_period);
    let rate = u128::from(capacity.requests_per_unit());
    let mut cut = capacity.requests_per_unit();
    for (i, tally) in tallies.iter().enumerate() {
        let part = tally.quota.share(replicas);
        if tally.admits_in(&part, now) != Some(0) {
            return Gate {
                capacity: capacity.cut_to(0),
                closed_by: Some(i),
            };
        }
        let room = u128::from(tally.room(&part, now, report_period));
        if room < whole {
            let fits = u32::try_from(room * rate / whole.max(1)).unwrap_or(u32::MAX);
            cut = cut.min(fits.max(1));
        }
    }
    Gate {
        capacity: capacity.cut_to(cut),
        closed_by: None,
    }
}

/// The most a token bucket of `quota` admits over `period`: its burst, then its refill.
pub fn admits(quota: &Quota, period: Nanos) -> u128 {
    let refill = u128::from(quota.requests_per_unit()) * u128::from(period)
        / u128::from(quota.period_nanos().max(1));
    u128::from(quota.burst()) + refill
}

/// `part` counting past its limit: one capacity of debt, or what the algorithm counts on top
/// of it when that is less (the configured debt when it is more).
fn counting(part: &Quota) -> Quota {
    part.with_debt(part.debt().max(part.default_debt()))
}

/// A state word written at `scale`, in `part`'s scale at `now`.
fn current(part: &Quota, state: u64, scale: u64, now: Nanos) -> u64 {
    if algorithm::scale(part) == scale {
        state
    } else {
        algorithm::rescale(part, state, now, scale)
    }
}

#[cfg(test)]
mod tests;
