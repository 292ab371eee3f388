//! What an Envoy is told to enforce on one bucket, in the terms Envoy 1.40 enforces.
//!
//! Envoy 1.40 enforces `blanket_rule` and `token_bucket` only, one token per request, with a
//! fill rate of `tokens_per_fill / whole seconds of fill_interval` (it ignores
//! `requests_per_time_unit`). A share is therefore sent as a token bucket refilling its tokens
//! per period over the limit's unit in whole seconds (1 for `second`, 60 for `minute`, …), and a
//! share of nothing as `DENY_ALL` (a token bucket needs at least one token per fill).

use crate::quota::Quota;

/// A strategy for one bucket of one Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Assignment {
    /// No limit applies: every request passes.
    AllowAll,
    /// Nothing to spend: every request is denied.
    DenyAll,
    /// Refill `tokens_per_fill` every `fill_interval_secs`, hold at most `max_tokens`.
    TokenBucket {
        /// Capacity, and the tokens a new bucket starts with.
        max_tokens: u32,
        /// Tokens added per fill interval.
        tokens_per_fill: u32,
        /// The fill interval, whole seconds (at least 1).
        fill_interval_secs: u64,
    },
}

/// What to do with one bucket of one Envoy: the reason a message is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Enforce `assignment` for `ttl_secs` seconds (0: it expires at once).
    Assign {
        /// The strategy.
        assignment: Assignment,
        /// Its time to live, whole seconds (Envoy reads the seconds only).
        ttl_secs: u64,
    },
    /// Forget the bucket: it went idle. Envoy subscribes again on its next request.
    Abandon,
}

impl Assignment {
    /// The assignment of `share` tokens per period of `quota` (the part of the limit this
    /// replica hands out): its rate, and the same part of its burst, rounded down (at least one
    /// token, or the bucket could admit nothing).
    pub fn of_share(share: u64, quota: &Quota) -> Self {
        let rate = u64::from(quota.requests_per_unit());
        let Some(tokens_per_fill) = u32::try_from(share.min(rate)).ok().filter(|&t| t > 0) else {
            return Assignment::DenyAll;
        };
        let burst = u128::from(quota.burst()) * u128::from(tokens_per_fill) / u128::from(rate);
        Assignment::TokenBucket {
            max_tokens: u32::try_from(burst).unwrap_or(u32::MAX).max(1),
            tokens_per_fill,
            fill_interval_secs: quota.period_secs(),
        }
    }

    /// The tokens per period of `quota` this assignment lets an Envoy spend: what it holds of
    /// the budget. `AllowAll` holds everything.
    pub fn tokens_per_period(&self, quota: &Quota) -> u64 {
        match *self {
            Assignment::AllowAll => u64::MAX,
            Assignment::DenyAll => 0,
            Assignment::TokenBucket {
                tokens_per_fill,
                fill_interval_secs,
                ..
            } => {
                let period = u128::from(quota.period_secs());
                let tokens = u128::from(tokens_per_fill) * period;
                u64::try_from(tokens.div_ceil(u128::from(fill_interval_secs.max(1))))
                    .unwrap_or(u64::MAX)
            }
        }
    }

    /// The metric label of the assignment's kind.
    pub const fn kind(&self) -> &'static str {
        match self {
            Assignment::AllowAll => "allow_all",
            Assignment::DenyAll => "deny_all",
            Assignment::TokenBucket { .. } => "token_bucket",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::{Algorithm, Unit};

    #[test]
    fn a_share_is_a_token_bucket_over_the_unit_in_whole_seconds() {
        let quota = Quota::new(100, Unit::Minute, Algorithm::TokenBucket).with_burst(50);
        assert_eq!(
            Assignment::of_share(40, &quota),
            Assignment::TokenBucket {
                max_tokens: 20,
                tokens_per_fill: 40,
                fill_interval_secs: 60
            }
        );
        assert_eq!(
            Assignment::of_share(40, &quota).tokens_per_period(&quota),
            40
        );
    }

    #[test]
    fn nothing_to_share_denies_and_a_small_share_keeps_one_token() {
        let quota = Quota::new(100, Unit::Second, Algorithm::TokenBucket).with_burst(10);
        assert_eq!(Assignment::of_share(0, &quota), Assignment::DenyAll);
        assert_eq!(
            Assignment::of_share(1, &quota),
            Assignment::TokenBucket {
                max_tokens: 1,
                tokens_per_fill: 1,
                fill_interval_secs: 1
            }
        );
        assert_eq!(Assignment::DenyAll.tokens_per_period(&quota), 0);
        assert_eq!(Assignment::AllowAll.tokens_per_period(&quota), u64::MAX);
    }

    #[test]
    fn bursts_of_shares_never_add_up_to_more_than_the_burst() {
        let quota = Quota::new(90, Unit::Hour, Algorithm::TokenBucket).with_burst(7);
        let burst: u32 = [30, 30, 30]
            .iter()
            .map(|&s| match Assignment::of_share(s, &quota) {
                Assignment::TokenBucket { max_tokens, .. } => max_tokens,
                _ => 0,
            })
            .sum();
        assert!(burst <= 7, "{burst}");
    }

    #[test]
    fn a_bucket_sent_before_a_reload_is_read_in_the_new_unit() {
        let minute = Quota::new(60, Unit::Minute, Algorithm::TokenBucket);
        let second = Quota::new(5, Unit::Second, Algorithm::TokenBucket);
        // 30 per minute is half a token per second: it holds one (rounded up).
        assert_eq!(
            Assignment::of_share(30, &minute).tokens_per_period(&second),
            1
        );
    }
}
