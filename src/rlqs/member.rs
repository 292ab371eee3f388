//! One Envoy's bucket: its limit, what it reported and what it holds.

use std::collections::BTreeMap;

use super::assignment::Assignment;
use super::bucket::{BucketName, Limit};
use super::share::Demand;
use crate::clock::{NANOS_PER_SEC, Nanos};
use crate::quota::Quota;

/// One stream: one Envoy reporting the buckets of one domain.
#[derive(Debug)]
pub struct Stream {
    /// The domain, once the first message named it.
    pub domain: Option<String>,
    /// The peer's address, for people reading `/rlqs`.
    pub peer: Option<String>,
    /// Its buckets.
    pub buckets: BTreeMap<BucketName, Member>,
}

/// One bucket of one stream.
#[derive(Debug)]
pub struct Member {
    /// The limit it falls under (resolved again at each report, so reloads apply).
    pub limit: Limit,
    /// Requests Envoy reported allowed, in total.
    pub allowed: u64,
    /// Requests Envoy reported denied, in total.
    pub denied: u64,
    /// Requests counted since the last measurement, over whole seconds.
    window: Window,
    /// The last measured rate: `None` until a report covers at least a second.
    rate: Option<Window>,
    /// What it was last told, and until when that holds.
    pub held: Option<Held>,
    /// When it last reported.
    pub last_report: Nanos,
    /// When it last reported a request (or subscribed).
    pub last_active: Nanos,
}

/// Requests over a span of whole seconds.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    requests: u64,
    secs: u64,
}

/// An assignment sent, and when it expires at the Envoy.
#[derive(Debug, Clone, Copy)]
pub struct Held {
    /// The assignment.
    pub assignment: Assignment,
    /// When its time to live runs out.
    pub expires: Nanos,
}

impl Stream {
    /// A stream from `peer` that has sent nothing yet.
    pub fn new(peer: Option<String>) -> Self {
        Self {
            domain: None,
            peer,
            buckets: BTreeMap::new(),
        }
    }
}

impl Member {
    /// A bucket subscribed at `now` under `limit`.
    pub fn new(limit: Limit, now: Nanos) -> Self {
        Self {
            limit,
            allowed: 0,
            denied: 0,
            window: Window::default(),
            rate: None,
            held: None,
            last_report: now,
            last_active: now,
        }
    }

    /// Records a report of `allowed` and `denied` requests over `elapsed_secs` (Envoy counts
    /// whole seconds, so a short span reads 0: it is added to the next).
    pub fn record(&mut self, allowed: u64, denied: u64, elapsed_secs: u64, now: Nanos) {
        let requests = allowed.saturating_add(denied);
        self.allowed = self.allowed.saturating_add(allowed);
        self.denied = self.denied.saturating_add(denied);
        self.window.requests = self.window.requests.saturating_add(requests);
        self.window.secs = self.window.secs.saturating_add(elapsed_secs);
        if self.window.secs > 0 {
            self.rate = Some(std::mem::take(&mut self.window));
        }
        self.last_report = now;
        if requests > 0 {
            self.last_active = now;
        }
    }

    /// What it wants, in tokens per period of `quota`: the allowed and denied requests of its
    /// last measured window alike (both are traffic that wants to pass), plus 10 % of headroom,
    /// rounded up to a whole token and at least one, so a steady Envoy is not denied by the
    /// jitter of its own traffic and an idle one keeps a token for its next request.
    pub fn demand(&self, quota: &Quota) -> Demand {
        let Some(Window { requests, secs }) = self.rate else {
            return Demand::Unknown;
        };
        let per_period = u128::from(requests) * u128::from(quota.unit().seconds());
        let wanted = (per_period * 11)
            .div_ceil(u128::from(secs.max(1)) * 10)
            .max(1);
        Demand::Known(u64::try_from(wanted).unwrap_or(u64::MAX))
    }

    /// The tokens per period of `quota` it may spend at `now`: nothing once its assignment
    /// expired.
    pub fn holds(&self, quota: &Quota, now: Nanos) -> u64 {
        match self.held {
            Some(held) if held.expires > now => held.assignment.tokens_per_period(quota),
            _ => 0,
        }
    }

    /// Records that `assignment` was sent at `now` for `ttl_secs`.
    pub fn hold(&mut self, assignment: Assignment, now: Nanos, ttl_secs: u64) {
        self.held = Some(Held {
            assignment,
            expires: now.saturating_add(ttl_secs.saturating_mul(NANOS_PER_SEC)),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::{Algorithm, Unit};

    #[test]
    fn demand_is_measured_over_whole_seconds_and_counts_denied_requests() {
        let quota = Quota::new(100, Unit::Minute, Algorithm::TokenBucket);
        let mut member = Member::new(Limit::None, 0);
        assert_eq!(member.demand(&quota), Demand::Unknown);
        // The subscription: one request, no time.
        member.record(1, 0, 0, 1);
        assert_eq!(member.demand(&quota), Demand::Unknown);
        // 9 more over 5 s: 10 in 5 s is 120 per minute, and 10 % of headroom.
        member.record(6, 3, 5, 2);
        assert_eq!(member.demand(&quota), Demand::Known(132));
        assert_eq!((member.allowed, member.denied), (7, 3));
        // An idle period wants one token.
        member.record(0, 0, 5, 3);
        assert_eq!(member.demand(&quota), Demand::Known(1));
        assert_eq!(member.last_active, 2);
    }

    #[test]
    fn an_assignment_holds_until_its_ttl_runs_out() {
        let quota = Quota::new(10, Unit::Second, Algorithm::TokenBucket);
        let mut member = Member::new(Limit::None, 0);
        assert_eq!(member.holds(&quota, 0), 0);
        member.hold(Assignment::of_share(4, &quota), 0, 15);
        assert_eq!(member.holds(&quota, 15 * NANOS_PER_SEC - 1), 4);
        assert_eq!(member.holds(&quota, 15 * NANOS_PER_SEC), 0);
    }
}
