//! Every stream, bucket and budget of the service, and what each event sends. No I/O and no
//! clock: the time, the configuration and the replica count come in a [`Context`], and each
//! operation returns an [`Outcome`]: the messages to deliver.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::rate_limit_quota::v3::RateLimitQuotaUsageReports;

use super::assignment::{Action, Assignment};
use super::bucket::{self, BucketName, Limit};
use super::budget::{self, Seat, Trigger};
use super::check::check;
use super::member::{Member, Stream};
pub use super::outcome::{Message, Outcome, Reported};
use super::share::Demand;
use super::tally::{self, Tally};
use super::{ReportError, RlqsOptions};
use crate::clock::{Nanos, saturating_nanos};
use crate::config::RateLimitConfig;
use crate::quota::Quota;
use crate::rule::Rule;
use crate::store::{BucketKey, KeyBuilder};

/// A stream's identity, unique within the process.
pub type StreamId = u64;

/// One Envoy's bucket: its stream and the bucket's name.
pub type MemberId = (StreamId, BucketName);

/// What an operation needs to know about the world.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The configuration in force.
    pub config: &'a RateLimitConfig,
    /// How budgets are named.
    pub keys: &'a KeyBuilder,
    /// Live replicas sharing each limit (1 without Redis).
    pub replicas: u32,
    /// Now.
    pub now: Nanos,
    /// The server-wide `--shadow-mode`: every bucket is assigned `ALLOW_ALL`; reports are
    /// still counted (metrics, `/rlqs`).
    pub shadow_mode: bool,
}

/// A limit's budget, shared by the buckets of every stream that fall in it.
#[derive(Debug)]
pub struct Budget {
    /// The rule Envoys enforce as their token bucket.
    pub rule: Arc<Rule>,
    /// Its whole quota (before it is divided among replicas).
    pub quota: Quota,
    /// The other limits of its list, counted from the reports.
    pub tallies: Vec<Tally>,
    /// Whether a tally is used up: every bucket was sent `DENY_ALL`.
    pub closed: bool,
    /// The buckets sharing it.
    pub members: BTreeSet<MemberId>,
}

impl Budget {
    /// What it may hand out at `now` with `replicas` sharing it and Envoys reporting every
    /// `report_period`: this replica's part of the limit, cut or closed by the tallies.
    pub fn gate(&self, replicas: u32, now: Nanos, report_period: Nanos) -> tally::Gate {
        tally::gate(
            &self.quota.share(replicas),
            &self.tallies,
            replicas,
            now,
            report_period,
        )
    }

    /// Takes the counted limits of `tallied` (a reload may have changed them), keeping the
    /// count of every limit that stays.
    fn retally(&mut self, tallied: &[bucket::Tallied]) {
        let mut old = std::mem::take(&mut self.tallies);
        for limit in tallied {
            let tally = match old.iter().position(|t| t.key == limit.key) {
                Some(at) => {
                    let mut tally = old.swap_remove(at);
                    tally.reconfigure(limit.rule.clone(), limit.quota);
                    tally
                }
                None => Tally::new(limit.rule.clone(), limit.quota, limit.key),
            };
            self.tallies.push(tally);
        }
    }
}

/// The service's state.
#[derive(Debug)]
pub struct State {
    options: RlqsOptions,
    streams: HashMap<StreamId, Stream>,
    budgets: HashMap<BucketKey, Budget>,
    next_id: StreamId,
    closing: bool,
}

impl State {
    /// No streams yet.
    pub fn new(options: RlqsOptions) -> Self {
        Self {
            options,
            streams: HashMap::new(),
            budgets: HashMap::new(),
            next_id: 1,
            closing: false,
        }
    }

    /// Open streams.
    pub fn streams(&self) -> &HashMap<StreamId, Stream> {
        &self.streams
    }

    /// Budgets in use.
    pub fn budgets(&self) -> &HashMap<BucketKey, Budget> {
        &self.budgets
    }

    /// How often Envoys report, as the budgets' gates assume.
    pub fn report_period(&self) -> Nanos {
        saturating_nanos(self.options.report_period)
    }

    /// Buckets followed, over every stream.
    pub fn buckets(&self) -> usize {
        self.streams.values().map(|s| s.buckets.len()).sum()
    }

    /// A new stream from `peer`; refused once shutting down.
    pub fn connect(&mut self, peer: Option<String>) -> Result<StreamId, ReportError> {
        if self.closing {
            return Err(ReportError::ShuttingDown);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.streams.insert(id, Stream::new(peer));
        Ok(id)
    }

    /// Applies a message of stream `id`: each bucket's usage is recorded and the bucket is
    /// answered (a first report subscribes it). The whole message is checked first: an error
    /// changes nothing.
    pub fn report(
        &mut self,
        id: StreamId,
        message: &RateLimitQuotaUsageReports,
        ctx: &Context<'_>,
    ) -> Result<Outcome, ReportError> {
        let mut outcome = Outcome::default();
        if self.closing {
            // Every bucket has been told to expire, and stays so.
            return Ok(outcome);
        }
        let Some(stream) = self.streams.get_mut(&id) else {
            return Ok(outcome);
        };
        let domain = check(stream, message, self.options.max_buckets_per_stream)?;
        stream.domain = Some(domain.clone());
        let ttl = self.options.ttl_secs();
        for usage in &message.bucket_quota_usages {
            let Some(bucket_id) = &usage.bucket_id else {
                continue;
            };
            let name = BucketName::from_proto(bucket_id);
            let mut limit = bucket::resolve(ctx.config, ctx.keys, &domain, &name);
            if ctx.shadow_mode {
                limit = limit.shadowed();
            }
            outcome.reported.push(Reported {
                domain: domain.clone(),
                limit: limit.rule().map(|rule| rule.id.clone()),
                allowed: usage.num_requests_allowed,
                denied: usage.num_requests_denied,
            });
            let member = (id, name);
            if self.place(&member, limit, ctx, &mut outcome) {
                outcome.subscribed += 1;
            }
            let elapsed = usage
                .time_elapsed
                .map_or(0, |d| d.seconds.max(0).unsigned_abs());
            let Some(seat) = self.member_mut(&member) else {
                continue;
            };
            seat.record(
                usage.num_requests_allowed,
                usage.num_requests_denied,
                elapsed,
                ctx.now,
            );
            match seat.limit.budget() {
                Some(key) => {
                    if let Some(budget) = self.budgets.get_mut(&key) {
                        for tally in &mut budget.tallies {
                            let part = tally.quota.share(ctx.replicas);
                            tally.charge(&part, usage.num_requests_allowed, ctx.now);
                        }
                    }
                    self.rebalance(key, Some(&member), ctx, &mut outcome);
                }
                None => {
                    // No limit, or one that never denies here.
                    seat.hold(Assignment::AllowAll, ctx.now, ttl);
                    outcome
                        .messages
                        .push(assign(&member, Assignment::AllowAll, ttl));
                }
            }
        }
        Ok(outcome)
    }

    /// Stream `id` ended: its buckets leave their budgets, whose other buckets get the share.
    pub fn disconnect(&mut self, id: StreamId, ctx: &Context<'_>) -> Outcome {
        let mut outcome = Outcome::default();
        let Some(stream) = self.streams.remove(&id) else {
            return outcome;
        };
        let mut touched = HashSet::new();
        for (name, member) in stream.buckets {
            if let Some(key) = member.limit.budget() {
                self.leave(key, &(id, name));
                touched.insert(key);
            }
        }
        if !self.closing {
            for key in touched {
                self.rebalance(key, None, ctx, &mut outcome);
            }
        }
        outcome
    }

    /// Abandons buckets idle for `idle_after` and forgets those not reported for
    /// `stale_after` (Envoy no longer has them).
    pub fn sweep(&mut self, ctx: &Context<'_>) -> Outcome {
        let mut outcome = Outcome::default();
        if self.closing {
            return outcome;
        }
        let idle = saturating_nanos(self.options.idle_after);
        let stale = saturating_nanos(self.options.stale_after);
        let mut gone = Vec::new();
        for (&id, stream) in &self.streams {
            for (name, member) in &stream.buckets {
                if ctx.now.saturating_sub(member.last_report) >= stale {
                    gone.push(((id, name.clone()), false));
                } else if ctx.now.saturating_sub(member.last_active) >= idle {
                    gone.push(((id, name.clone()), true));
                }
            }
        }
        let mut touched = HashSet::new();
        for (member, abandon) in gone {
            let Some(stream) = self.streams.get_mut(&member.0) else {
                continue;
            };
            let Some(removed) = stream.buckets.remove(&member.1) else {
                continue;
            };
            if let Some(key) = removed.limit.budget() {
                self.leave(key, &member);
                touched.insert(key);
            }
            if abandon {
                outcome.messages.push(Message {
                    stream: member.0,
                    bucket: member.1,
                    action: Action::Abandon,
                });
            }
        }
        // A closed budget opens once its counted limits admit again, without waiting for a
        // report.
        touched.extend(
            self.budgets
                .iter()
                .filter(|(_, budget)| budget.closed)
                .map(|(key, _)| *key),
        );
        for key in touched {
            self.rebalance(key, None, ctx, &mut outcome);
        }
        outcome
    }

    /// The server is stopping: every bucket's assignment is sent again with a time to live of
    /// zero, so each Envoy falls back to its own configured behaviour at once, and new streams
    /// are refused.
    pub fn shutdown(&mut self) -> Outcome {
        self.closing = true;
        let mut outcome = Outcome::default();
        for (&id, stream) in &self.streams {
            for (name, member) in &stream.buckets {
                let assignment = member.held.map_or(Assignment::AllowAll, |h| h.assignment);
                outcome.messages.push(Message {
                    stream: id,
                    bucket: name.clone(),
                    action: Action::Assign {
                        assignment,
                        ttl_secs: 0,
                    },
                });
            }
        }
        outcome
    }

    /// Puts `member` under `limit`, creating it (true) or moving it between budgets.
    fn place(
        &mut self,
        member: &MemberId,
        limit: Limit,
        ctx: &Context<'_>,
        out: &mut Outcome,
    ) -> bool {
        let new_key = limit.budget();
        if let Limit::Counted {
            rule,
            quota,
            key,
            tallied,
        } = &limit
        {
            let budget = self.budgets.entry(*key).or_insert_with(|| Budget {
                rule: rule.clone(),
                quota: *quota,
                tallies: Vec::new(),
                closed: false,
                members: BTreeSet::new(),
            });
            // A reload may change the rule, its quota or the rest of its list under the same
            // bucket identity.
            budget.rule = rule.clone();
            budget.quota = *quota;
            budget.retally(tallied);
            budget.members.insert(member.clone());
        }
        let Some(stream) = self.streams.get_mut(&member.0) else {
            return false;
        };
        let Some(existing) = stream.buckets.get_mut(&member.1) else {
            stream
                .buckets
                .insert(member.1.clone(), Member::new(limit, ctx.now));
            return true;
        };
        let old_key = existing.limit.budget();
        existing.limit = limit;
        if let Some(old) = old_key.filter(|old| Some(*old) != new_key) {
            self.leave(old, member);
            self.rebalance(old, None, ctx, out);
        }
        false
    }

    /// Takes `member` out of budget `key`, dropping the budget when it empties.
    fn leave(&mut self, key: BucketKey, member: &MemberId) {
        if let Some(budget) = self.budgets.get_mut(&key) {
            budget.members.remove(member);
            if budget.members.is_empty() {
                self.budgets.remove(&key);
            }
        }
    }

    fn member_mut(&mut self, (id, name): &MemberId) -> Option<&mut Member> {
        self.streams.get_mut(id)?.buckets.get_mut(name)
    }

    /// Re-balances budget `key` after a report of `reporter`, or after a change (`None`), and
    /// queues what must be sent.
    fn rebalance(
        &mut self,
        key: BucketKey,
        reporter: Option<&MemberId>,
        ctx: &Context<'_>,
        out: &mut Outcome,
    ) {
        let report_period = self.report_period();
        let Some(budget) = self.budgets.get_mut(&key) else {
            return;
        };
        let gate = budget.gate(ctx.replicas, ctx.now, report_period);
        let closed = gate.closed_by.is_some();
        // Closed or opened: every Envoy of the budget is told at once.
        let flipped = closed != budget.closed;
        budget.closed = closed;
        if let Some(by) = gate.closed_by.filter(|_| flipped) {
            out.exhausted.push(budget.tallies[by].rule.id.clone());
        }
        let budget = &*budget;
        let capacity = gate.capacity;
        let ids: Vec<MemberId> = budget.members.iter().cloned().collect();
        let seats: Vec<Seat> = ids
            .iter()
            .map(|id| {
                let member = self.streams.get(&id.0).and_then(|s| s.buckets.get(&id.1));
                Seat {
                    demand: member.map_or(Demand::Known(0), |m| m.demand(&capacity)),
                    holds: member.map_or(0, |m| m.holds(&capacity, ctx.now)),
                    current: member.and_then(|m| m.held).map(|h| h.assignment),
                }
            })
            .collect();
        let reporter = match reporter {
            Some(reporter) => match ids.iter().position(|id| id == reporter) {
                Some(at) => Some(at),
                None => return,
            },
            None => None,
        };
        let trigger = match reporter {
            Some(at) if !flipped => Trigger::Report(at),
            _ => Trigger::Change(reporter),
        };
        let ttl = self.options.ttl_secs();
        for (at, assignment) in budget::rebalance(&capacity, &seats, trigger) {
            let id = &ids[at];
            if let Some(member) = self.member_mut(id) {
                member.hold(assignment, ctx.now, ttl);
                out.messages.push(assign(id, assignment, ttl));
            }
        }
    }
}

/// An assignment message.
fn assign((stream, bucket): &MemberId, assignment: Assignment, ttl_secs: u64) -> Message {
    Message {
        stream: *stream,
        bucket: bucket.clone(),
        action: Action::Assign {
            assignment,
            ttl_secs,
        },
    }
}

#[cfg(test)]
mod tests;
