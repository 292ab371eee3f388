//! Operations: Prometheus metrics, served as OpenMetrics text on `GET /metrics`.
//!
//! One struct per component, each registering its families (`register(&mut Registry)`); values
//! that already live elsewhere (live buckets, reloads, the process) are read at scrape time by
//! collectors instead of being copied on the hot path.

mod collectors;
pub mod limits;
pub mod service;

use std::sync::Arc;

use prometheus_client::registry::Registry;

pub use limits::LimitMetrics;
pub use service::ServiceMetrics;

use crate::reload::Reloader;

/// Every metric tollgate exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Per-limit hit counters.
    pub limits: LimitMetrics,
    /// Calls, latency and unknown domains.
    pub service: ServiceMetrics,
    /// Rate Limit Quota Service streams, buckets and assignments.
    pub rlqs: crate::rlqs::RlqsMetrics,
}

/// Metric settings.
#[derive(Debug, Clone, Copy)]
pub struct MetricsOptions {
    /// Share of a limit used from which hits also count as near the limit (0.8 = 80 %).
    pub near_limit_ratio: f64,
    /// Most per-limit series; past it, new series fold into one overflow series per domain.
    pub max_series: usize,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        Self {
            near_limit_ratio: 0.8,
            max_series: 10_000,
        }
    }
}

impl Metrics {
    /// Registers every metric, reading live values from `reloader` at scrape time.
    pub fn new(reloader: Arc<Reloader>, options: MetricsOptions) -> Self {
        let mut registry = Registry::with_prefix("tollgate");
        let limits = LimitMetrics::register(&mut registry, options);
        let service = ServiceMetrics::register(&mut registry);
        let rlqs = crate::rlqs::RlqsMetrics::register(&mut registry);
        collectors::register(&mut registry, reloader);
        Self {
            registry,
            limits,
            service,
            rlqs,
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
