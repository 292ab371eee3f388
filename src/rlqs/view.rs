//! What `GET /rlqs` shows: every bucket, its limit and this replica's part of it, the other
//! limits of its list counted from the reports and what is left of each, and per Envoy what it
//! wants, what it was assigned and until when.

use std::collections::BTreeMap;

use super::assignment::Assignment;
use super::bucket::BucketName;
use super::share::Demand;
use super::state::{Context, State, StreamId};
use crate::clock::NANOS_PER_SEC;

/// The whole picture.
#[derive(Debug, serde::Serialize)]
pub struct View {
    /// Live replicas the limits are divided among.
    pub replicas: u32,
    /// Open streams.
    pub streams: Vec<StreamView>,
    /// Buckets, by domain and bucket id.
    pub buckets: Vec<BucketView>,
}

/// One stream.
#[derive(Debug, serde::Serialize)]
pub struct StreamView {
    /// Its id in this process.
    pub id: StreamId,
    /// The Envoy's address.
    pub peer: Option<String>,
    /// The domain it named.
    pub domain: Option<String>,
    /// Buckets it reports.
    pub buckets: usize,
}

/// One bucket id of one domain, over every Envoy reporting it.
#[derive(Debug, serde::Serialize)]
pub struct BucketView {
    /// The domain.
    pub domain: String,
    /// The bucket id.
    pub bucket: BucketName,
    /// The limit's id, if one applies.
    pub limit: Option<String>,
    /// The limit and the part this replica hands out, for counted limits.
    pub budget: Option<BudgetView>,
    /// The other limits of the list, counted from the reports (empty for a single limit).
    pub counted: Vec<CountedView>,
    /// Each Envoy reporting it.
    pub envoys: Vec<EnvoyView>,
}

/// A counted limit and this replica's part.
#[derive(Debug, serde::Serialize)]
pub struct BudgetView {
    /// The limit's rate.
    pub requests_per_unit: u32,
    /// Its unit.
    pub unit: &'static str,
    /// Its burst.
    pub burst: u32,
    /// The rate this replica divides among its Envoys (the limit over the replicas).
    pub replica_requests_per_unit: u32,
    /// The rate it divides now: `replica_requests_per_unit`, cut near the end of a counted
    /// limit, 0 while one is used up.
    pub assignable_requests_per_unit: u32,
}

/// A limit of the list counted from the reports, and what is left of this replica's part.
#[derive(Debug, serde::Serialize)]
pub struct CountedView {
    /// The limit's id.
    pub limit: String,
    /// Its rate.
    pub requests_per_unit: u32,
    /// Its unit.
    pub unit: &'static str,
    /// Its algorithm.
    pub algorithm: &'static str,
    /// Requests it admits now, of this replica's part.
    pub remaining: u64,
    /// Seconds until it admits a request again: 0 while it does, `null` if it never will.
    pub admits_in_secs: Option<f64>,
}

/// One Envoy's view of one bucket.
#[derive(Debug, serde::Serialize)]
pub struct EnvoyView {
    /// The stream.
    pub stream: StreamId,
    /// The Envoy's address.
    pub peer: Option<String>,
    /// What it wants, in requests per unit of the limit: `null` until measured.
    pub demand: Option<u64>,
    /// What it was last assigned.
    pub assignment: Option<Assignment>,
    /// Seconds until that assignment expires (0 once expired).
    pub expires_in_secs: Option<f64>,
    /// Requests it reported allowed, in total.
    pub allowed: u64,
    /// Requests it reported denied, in total.
    pub denied: u64,
}

impl View {
    /// The picture of `state` at `ctx.now`.
    pub fn of(state: &State, ctx: &Context<'_>) -> Self {
        let mut streams = Vec::new();
        let mut buckets: BTreeMap<(String, BucketName), BucketView> = BTreeMap::new();
        for (&id, stream) in state.streams() {
            streams.push(StreamView {
                id,
                peer: stream.peer.clone(),
                domain: stream.domain.clone(),
                buckets: stream.buckets.len(),
            });
            let domain = stream.domain.clone().unwrap_or_default();
            for (name, member) in &stream.buckets {
                let budget = member
                    .limit
                    .budget()
                    .and_then(|key| state.budgets().get(&key));
                let capacity = budget.map(|b| b.quota.share(ctx.replicas));
                let gate = budget.map(|b| b.gate(ctx.replicas, ctx.now, state.report_period()));
                let view = buckets
                    .entry((domain.clone(), name.clone()))
                    .or_insert_with(|| BucketView {
                        domain: domain.clone(),
                        bucket: name.clone(),
                        limit: member.limit.rule().map(|r| r.id.to_string()),
                        budget: budget
                            .zip(capacity)
                            .zip(gate)
                            .map(|((b, c), g)| BudgetView {
                                requests_per_unit: b.quota.requests_per_unit(),
                                unit: b.quota.unit().name(),
                                burst: b.quota.burst(),
                                replica_requests_per_unit: c.requests_per_unit(),
                                assignable_requests_per_unit: g.capacity.requests_per_unit(),
                            }),
                        counted: budget.map_or_else(Vec::new, |b| {
                            b.tallies
                                .iter()
                                .map(|tally| {
                                    let part = tally.quota.share(ctx.replicas);
                                    CountedView {
                                        limit: tally.rule.id.to_string(),
                                        requests_per_unit: tally.quota.requests_per_unit(),
                                        unit: tally.quota.unit().name(),
                                        algorithm: tally.quota.algorithm().name(),
                                        remaining: tally.remaining(&part, ctx.now),
                                        admits_in_secs: tally
                                            .admits_in(&part, ctx.now)
                                            .map(|n| n as f64 / NANOS_PER_SEC as f64),
                                    }
                                })
                                .collect()
                        }),
                        envoys: Vec::new(),
                    });
                view.envoys.push(EnvoyView {
                    stream: id,
                    peer: stream.peer.clone(),
                    demand: capacity.and_then(|c| match member.demand(&c) {
                        Demand::Known(tokens) => Some(tokens),
                        Demand::Unknown => None,
                    }),
                    assignment: member.held.map(|h| h.assignment),
                    expires_in_secs: member
                        .held
                        .map(|h| h.expires.saturating_sub(ctx.now) as f64 / NANOS_PER_SEC as f64),
                    allowed: member.allowed,
                    denied: member.denied,
                });
            }
        }
        streams.sort_by_key(|s| s.id);
        let mut buckets: Vec<BucketView> = buckets.into_values().collect();
        for bucket in &mut buckets {
            bucket.envoys.sort_by_key(|e| e.stream);
        }
        View {
            replicas: ctx.replicas,
            streams,
            buckets,
        }
    }
}
