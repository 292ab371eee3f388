//! Envoy's Rate Limit Quota Service (RLQS): Envoys stream usage reports per bucket and get
//! token-bucket assignments back, sized so that every Envoy reporting a bucket together stays
//! within the tollgate limit the bucket falls under.
//!
//! Pure logic apart from I/O, one small module per concern:
//! - [`bucket`]: a `BucketId` → the limit it falls under (the descriptor tree walk) and the
//!   budget it shares;
//! - [`share`]: the max-min fair share of a limit among demands (pure);
//! - [`tally`]: the other limits of a list, counted from the reports, and what they let a
//!   budget hand out (pure);
//! - [`budget`]: re-balancing one budget as reports arrive (pure);
//! - [`member`]: one Envoy's bucket: reports measured into a demand, the assignment it holds;
//! - [`state`]: every stream and budget, and what each event sends (no I/O, no clock), as an
//!   [`outcome`];
//! - [`assignment`]: shares in the terms Envoy 1.40 enforces;
//! - [`outbox`]: what waits to be sent on a stream; [`view`]: `GET /rlqs`; [`metrics`].
//!
//! [`Rlqs`] puts them together behind one lock (reports come every few seconds per Envoy, so
//! the lock is not contended), reads the clock, the configuration in force and the number of
//! live replicas, and delivers messages to the streams' outboxes. The gRPC stream handler is
//! `protocol/rlqs.rs`.

pub mod assignment;
pub mod bucket;
pub mod budget;
mod check;
mod error;
pub mod member;
pub mod metrics;
pub mod outbox;
pub mod outcome;
pub mod share;
pub mod state;
pub mod tally;
pub mod view;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub use assignment::{Action, Assignment};
pub use error::ReportError;
pub use metrics::RlqsMetrics;
pub use outbox::{End, Next, Outbox};
pub use state::StreamId;
pub use view::View;

use envoy_types::pb::envoy::service::rate_limit_quota::v3::RateLimitQuotaUsageReports;

use crate::clock::saturating_nanos;
use crate::decision::Limiter;
use crate::reload::Reloader;
use crate::store::Parts;
use metrics::{AssignmentLabels, ExhaustedLabels, ReportedLabels};
use state::{Context, Outcome, State};

/// How assignments are timed.
#[derive(Debug, Clone, Copy)]
pub struct RlqsOptions {
    /// An assignment's time to live, whole seconds (Envoy 1.40 reads the seconds only). It
    /// must outlive a few report periods (Envoy 1.40 reports every 5 s): each report renews it,
    /// so it runs out only when tollgate stops answering, and then Envoy falls back to its
    /// configured behaviour.
    pub assignment_ttl: Duration,
    /// A bucket with no requests for this long is abandoned (Envoy forgets it, and subscribes
    /// again on its next request).
    pub idle_after: Duration,
    /// A bucket not reported for this long is forgotten (Envoy no longer has it).
    pub stale_after: Duration,
    /// The most buckets one stream may report.
    pub max_buckets_per_stream: usize,
    /// Time between sweeps for idle and stale buckets (and for budgets closed by a counted
    /// limit, which open again at the first sweep after it admits).
    pub sweep_interval: Duration,
    /// How often Envoys report (Envoy 1.40: every 5 s, whatever its `reporting_interval`
    /// says): near the end of a counted limit, a budget hands out what fits in that limit over
    /// one such period.
    pub report_period: Duration,
}

impl Default for RlqsOptions {
    fn default() -> Self {
        Self {
            assignment_ttl: Duration::from_secs(15),
            idle_after: Duration::from_secs(60),
            stale_after: Duration::from_secs(30),
            max_buckets_per_stream: 10_000,
            sweep_interval: Duration::from_secs(1),
            report_period: Duration::from_secs(5),
        }
    }
}

impl RlqsOptions {
    /// The time to live in whole seconds.
    pub fn ttl_secs(&self) -> u64 {
        self.assignment_ttl.as_secs()
    }
}

/// A stream as the service knows it.
#[derive(Debug)]
pub struct Connection {
    /// Its id.
    pub id: StreamId,
    /// What to send on it.
    pub outbox: Arc<Outbox>,
}

/// The quota service: state, outboxes, metrics.
#[derive(Debug)]
pub struct Rlqs {
    inner: Mutex<Inner>,
    reloader: Arc<Reloader>,
    metrics: RlqsMetrics,
    options: RlqsOptions,
}

#[derive(Debug)]
struct Inner {
    state: State,
    outboxes: HashMap<StreamId, Arc<Outbox>>,
}

impl Rlqs {
    /// A service reading limits, clock and store from `reloader`'s limiter.
    pub fn new(reloader: Arc<Reloader>, metrics: RlqsMetrics, options: RlqsOptions) -> Self {
        Self {
            inner: Mutex::new(Inner {
                state: State::new(options),
                outboxes: HashMap::new(),
            }),
            reloader,
            metrics,
            options,
        }
    }

    /// Opens a stream from `peer`; refused once shutting down.
    pub fn connect(&self, peer: Option<SocketAddr>) -> Result<Connection, ReportError> {
        let mut inner = self.lock();
        let id = inner.state.connect(peer.map(|p| p.to_string()))?;
        let outbox = Arc::new(Outbox::default());
        inner.outboxes.insert(id, outbox.clone());
        self.update_gauges(&inner);
        Ok(Connection { id, outbox })
    }

    /// Applies a message of stream `id`; an error ends the stream (the caller ends it).
    pub fn report(
        &self,
        id: StreamId,
        message: &RateLimitQuotaUsageReports,
    ) -> Result<(), ReportError> {
        self.with_context(|inner, ctx| {
            let outcome = inner.state.report(id, message, ctx)?;
            for reported in &outcome.reported {
                self.count_reported(reported, ctx);
            }
            self.deliver(inner, outcome);
            Ok(())
        })
    }

    /// Stream `id` ended as `end`: its share goes to the others.
    pub fn disconnect(&self, id: StreamId, end: End) {
        self.with_context(|inner, ctx| {
            let outcome = inner.state.disconnect(id, ctx);
            if let Some(outbox) = inner.outboxes.remove(&id) {
                outbox.end(end);
            }
            self.deliver(inner, outcome);
        });
    }

    /// Abandons idle buckets and forgets stale ones.
    pub fn sweep(&self) {
        self.with_context(|inner, ctx| {
            let outcome = inner.state.sweep(ctx);
            self.deliver(inner, outcome);
        });
    }

    /// Sweeps every `sweep_interval` of the limiter's clock until `stop`.
    pub async fn upkeep(self: Arc<Self>, stop: impl Future<Output = ()>) {
        let limiter = self.reloader.limiter().clone();
        let every = saturating_nanos(self.options.sweep_interval);
        tokio::pin!(stop);
        loop {
            let next = limiter.clock().now().saturating_add(every);
            tokio::select! {
                () = &mut stop => return,
                () = limiter.clock().sleep_until(next) => self.sweep(),
            }
        }
    }

    /// Before the server stops: every bucket's assignment is sent again expiring at once, so
    /// Envoys fall back to their own configured behaviour rather than enforce a share nobody
    /// re-balances; then every stream ends and new ones are refused.
    pub fn shutdown(&self) {
        let mut inner = self.lock();
        let outcome = inner.state.shutdown();
        let sent = outcome.messages.len();
        self.deliver(&mut inner, outcome);
        for outbox in inner.outboxes.values() {
            outbox.end(End::Finished);
        }
        self.metrics
            .assignments
            .get_or_create(&AssignmentLabels { kind: "expire" })
            .inc_by(sent as u64);
        tracing::info!(assignments = sent, "RLQS: assignments expired for shutdown");
    }

    /// The current assignments, for `GET /rlqs`.
    pub fn view(&self) -> View {
        self.with_context(|inner, ctx| View::of(&inner.state, ctx))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the state with the context of now.
    fn with_context<T>(&self, f: impl FnOnce(&mut Inner, &Context<'_>) -> T) -> T {
        let limiter = self.reloader.limiter();
        let config = limiter.config();
        let ctx = Context {
            config: &config,
            keys: limiter.keys(),
            replicas: replicas(limiter),
            now: limiter.clock().now(),
            shadow_mode: limiter.settings().shadow_mode,
        };
        let mut inner = self.lock();
        let result = f(&mut inner, &ctx);
        self.update_gauges(&inner);
        result
    }

    /// Queues `outcome`'s messages on their streams' outboxes.
    fn deliver(&self, inner: &mut Inner, outcome: Outcome) {
        for limit in outcome.exhausted {
            self.metrics
                .exhausted
                .get_or_create(&ExhaustedLabels {
                    limit: limit.to_string(),
                })
                .inc();
        }
        for message in outcome.messages {
            let kind = match message.action {
                Action::Assign { ttl_secs: 0, .. } => None,
                Action::Assign { assignment, .. } => Some(assignment.kind()),
                Action::Abandon => Some("abandon"),
            };
            if let Some(kind) = kind {
                self.metrics
                    .assignments
                    .get_or_create(&AssignmentLabels { kind })
                    .inc();
            }
            if let Some(outbox) = inner.outboxes.get(&message.stream) {
                outbox.push(message.bucket, message.action);
            }
        }
    }

    fn count_reported(&self, reported: &state::Reported, ctx: &Context<'_>) {
        // Only configured domains get their own series: Envoys name domains freely.
        let domain = match ctx.config.domain(&reported.domain) {
            Some(_) => reported.domain.clone(),
            None => String::new(),
        };
        let limit = reported.limit.as_deref().unwrap_or_default().to_owned();
        for (result, count) in [("allowed", reported.allowed), ("denied", reported.denied)] {
            if count > 0 {
                self.metrics
                    .requests
                    .get_or_create(&ReportedLabels {
                        domain: domain.clone(),
                        limit: limit.clone(),
                        result,
                    })
                    .inc_by(count);
            }
        }
    }

    fn update_gauges(&self, inner: &Inner) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics.streams.set(gauge(inner.state.streams().len()));
        self.metrics.buckets.set(gauge(inner.state.buckets()));
    }
}

/// Live replicas sharing the limits: Redis's count with `--store redis`, else 1.
fn replicas(limiter: &Limiter) -> u32 {
    let mut parts = Parts::default();
    limiter.store().parts(&mut parts);
    parts.redis.map_or(1, |redis| redis.replicas())
}
