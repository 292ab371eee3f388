//! What `GET /rlqs` shows: every bucket, its limit and this replica's part of it, and per
//! Envoy what it wants, what it was assigned and until when.

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
                let view = buckets
                    .entry((domain.clone(), name.clone()))
                    .or_insert_with(|| BucketView {
                        domain: domain.clone(),
                        bucket: name.clone(),
                        limit: member.limit.rule().map(|r| r.id.to_string()),
                        budget: budget.zip(capacity).map(|(b, c)| BudgetView {
                            requests_per_unit: b.quota.requests_per_unit(),
                            unit: b.quota.unit().name(),
                            burst: b.quota.burst(),
                            replica_requests_per_unit: c.requests_per_unit(),
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
