//! RLQS metrics: open streams, followed buckets, assignments sent, the requests Envoys report
//! allowed and denied per limit, and the counted limits of lists that were used up. Limit ids
//! come from the configuration (or are empty for buckets under no limit), so the series are
//! bounded.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of an assignment sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AssignmentLabels {
    /// `token_bucket`, `allow_all`, `deny_all`, `abandon`, or `expire` (sent at shutdown).
    pub kind: &'static str,
}

/// Labels of requests Envoys reported.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReportedLabels {
    /// The stream's domain (only domains of the configuration get their own series; others
    /// are counted under an empty domain).
    pub domain: String,
    /// The limit's id, empty for buckets under no limit.
    pub limit: String,
    /// `allowed` or `denied`.
    pub result: &'static str,
}

/// Labels of a counted limit used up.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ExhaustedLabels {
    /// The limit's id (`<key>#<name>`): it starts with its domain.
    pub limit: String,
}

/// Every RLQS metric.
#[derive(Debug, Clone, Default)]
pub struct RlqsMetrics {
    /// Open `StreamRateLimitQuotas` streams.
    pub streams: Gauge,
    /// Buckets followed, one per Envoy and bucket id.
    pub buckets: Gauge,
    /// Bucket actions sent, by kind.
    pub assignments: Family<AssignmentLabels, Counter>,
    /// Requests reported by Envoys, by domain, limit and result.
    pub requests: Family<ReportedLabels, Counter>,
    /// Times a counted limit of a list was used up and closed its budget (`DENY_ALL` to each
    /// of its Envoys), by limit.
    pub exhausted: Family<ExhaustedLabels, Counter>,
}

impl RlqsMetrics {
    /// Registers the RLQS metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "rlqs_streams",
            "Open rate limit quota (RLQS) streams",
            metrics.streams.clone(),
        );
        registry.register(
            "rlqs_buckets",
            "RLQS buckets followed, one per Envoy and bucket id",
            metrics.buckets.clone(),
        );
        registry.register(
            "rlqs_assignments",
            "RLQS bucket actions sent, by kind",
            metrics.assignments.clone(),
        );
        registry.register(
            "rlqs_reported_requests",
            "Requests Envoys reported over RLQS, by domain, limit and result",
            metrics.requests.clone(),
        );
        registry.register(
            "rlqs_limit_exhausted",
            "Times a limit of a list counted from RLQS reports was used up and its budget's Envoys were denied",
            metrics.exhausted.clone(),
        );
        metrics
    }
}
