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
    /// Requests counted since the last measurement, and the time they span.
    window: Window,
    /// The last measured rate: `None` until reports span at least a second.
    rate: Option<Window>,
    /// What it was last told, and until when that holds.
    pub held: Option<Held>,
    /// When it last reported.
    pub last_report: Nanos,
    /// When it last reported a request (or subscribed).
    pub last_active: Nanos,
}

/// Requests over a span of time.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    requests: u64,
    nanos: Nanos,
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

    /// Records a report, received at `now`, of `allowed` and `denied` requests over
    /// `elapsed_secs` (see `span`; a span under a second is added to the next one).
    pub fn record(&mut self, allowed: u64, denied: u64, elapsed_secs: u64, now: Nanos) {
        let requests = allowed.saturating_add(denied);
        self.allowed = self.allowed.saturating_add(allowed);
        self.denied = self.denied.saturating_add(denied);
        self.window.requests = self.window.requests.saturating_add(requests);
        let since = now.saturating_sub(self.last_report);
        self.window.nanos = self.window.nanos.saturating_add(span(elapsed_secs, since));
        if self.window.nanos >= NANOS_PER_SEC {
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
        let Some(Window { requests, nanos }) = self.rate else {
            return Demand::Unknown;
        };
        let per_period = u128::from(requests) * u128::from(quota.period_nanos());
        let wanted = (per_period * 11)
            .div_ceil(u128::from(nanos.max(1)) * 10)
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

/// The time a report covers. Envoy 1.40 truncates `time_elapsed` to whole seconds, and its
/// 5 s report periods often read 4 (seen through real Envoys: a rate 25 % too high, and
/// shares that flap). The time since the bucket's last report on tollgate's clock is exact
/// but for the network's jitter: it is used within the second Envoy truncated away, and
/// Envoy's figure bounds it when the two disagree (a report tollgate never got).
fn span(elapsed_secs: u64, since_last_report: Nanos) -> Nanos {
    let floor = elapsed_secs.saturating_mul(NANOS_PER_SEC);
    since_last_report.clamp(floor, floor.saturating_add(NANOS_PER_SEC - 1))
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
    fn a_truncated_time_elapsed_is_made_exact_by_the_time_between_reports() {
        let quota = Quota::new(100, Unit::Second, Algorithm::TokenBucket);
        let mut member = Member::new(Limit::None, 0);
        member.record(1, 0, 0, 0);
        // 20 requests in 5 s that Envoy reports as 4: 4 a second, and 10 % of headroom.
        member.record(19, 0, 4, 5 * NANOS_PER_SEC);
        assert_eq!(member.demand(&quota), Demand::Known(5));
        // A period a hair over 5 s reads 5: tollgate's clock agrees.
        member.record(20, 0, 5, 10 * NANOS_PER_SEC + 3_000_000);
        assert_eq!(member.demand(&quota), Demand::Known(5));
    }

    #[test]
    fn envoys_whole_seconds_bound_the_span_measured_by_tollgate() {
        assert_eq!(span(4, 4_900_000_000), 4_900_000_000);
        assert_eq!(span(5, 5 * NANOS_PER_SEC + 7), 5 * NANOS_PER_SEC + 7);
        // Received a little later than Envoy sent it: under the next whole second.
        assert_eq!(span(4, 5 * NANOS_PER_SEC + 7), 5 * NANOS_PER_SEC - 1);
        // A report tollgate did not see (Envoy reported while its stream was down): the
        // span is at most Envoy's figure and the second it may have truncated.
        assert_eq!(span(5, 30 * NANOS_PER_SEC), 6 * NANOS_PER_SEC - 1);
        // A clock that did not move (or reports received together): Envoy's figure.
        assert_eq!(span(5, 0), 5 * NANOS_PER_SEC);
        assert_eq!(span(0, 0), 0);
        assert_eq!(span(u64::MAX, 0), u64::MAX);
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
