//! Per-limit hit counters, named the way envoyproxy/ratelimit names its stats.
//!
//! Each limit's series carries `domain` and `descriptor` labels. `descriptor` is the limit's
//! composite key from the configuration (`key_value.key`), so the number of series is bounded
//! by the configuration, unless a limit asks for request values with `detailed_metric` or
//! `value_to_metric` (or Envoy sends its own `limit`). Those are capped: past `max_series`, new
//! series fold into one `descriptor="__overflow__"` series per domain, and
//! `tollgate_metric_series_overflow_hits_total` counts what was folded.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::MetricsOptions;
use crate::decision::reservation;
use crate::decision::{ReservationUse, Usage};
use crate::rule::{KeyPart, Rule};

/// The label value of series folded at the cap.
pub const OVERFLOW: &str = "__overflow__";

/// Longest `descriptor` label taken from request values; longer ones are cut and suffixed
/// with a hash of the whole, so memory per series stays bounded.
pub const MAX_LABEL_BYTES: usize = 128;

/// Most hits one descriptor adds to a counter, so absurd `hits_addend` values cannot wrap it.
pub const MAX_COUNTED_HITS: u64 = 1 << 32;

/// Labels of a limit's series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LimitLabels {
    /// The domain.
    pub domain: String,
    /// The limit's composite key within the domain, e.g. `user_id` or `tenant.path_/upload*`.
    pub descriptor: String,
}

/// Labels of the reservation counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReservationLabels {
    /// The domain.
    pub domain: String,
    /// `reserved`, `refused`, `settled` or `unmatched` (settled, but none was held).
    pub result: &'static str,
}

/// A domain, alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DomainLabels {
    /// The domain.
    pub domain: String,
}

/// One series' counters.
#[derive(Debug, Clone)]
struct Series {
    hits: Counter,
    over_limit: Counter,
    near_limit: Counter,
    within_limit: Counter,
    shadow_mode: Counter,
    /// Set on a domain's overflow series: counts the hits folded into it.
    folded: Option<Counter>,
}

/// The per-limit families and the cache of their series.
#[derive(Debug)]
pub struct LimitMetrics {
    hits: Family<LimitLabels, Counter>,
    over_limit: Family<LimitLabels, Counter>,
    near_limit: Family<LimitLabels, Counter>,
    within_limit: Family<LimitLabels, Counter>,
    shadow_mode: Family<LimitLabels, Counter>,
    overflow_hits: Counter,
    reservations: Family<ReservationLabels, Counter>,
    released: Family<DomainLabels, Counter>,
    /// Series of configured limits, by rule id: looked up without allocating.
    by_rule: DashMap<Arc<str>, Series>,
    /// Series named from request values, by (domain, descriptor).
    by_value: DashMap<(String, String), Series>,
    series: AtomicUsize,
    options: MetricsOptions,
}

impl LimitMetrics {
    /// Registers the per-limit families.
    pub fn register(registry: &mut Registry, options: MetricsOptions) -> Self {
        let metrics = Self {
            hits: Family::default(),
            over_limit: Family::default(),
            near_limit: Family::default(),
            within_limit: Family::default(),
            shadow_mode: Family::default(),
            overflow_hits: Counter::default(),
            reservations: Family::default(),
            released: Family::default(),
            by_rule: DashMap::new(),
            by_value: DashMap::new(),
            series: AtomicUsize::new(0),
            options,
        };
        let families = [
            (
                "rate_limit_hits",
                "Hits (hits_addend units) on a limit (reference: total_hits)",
                &metrics.hits,
            ),
            (
                "rate_limit_over_limit_hits",
                "Hits over the limit, denied or shadowed (reference: over_limit)",
                &metrics.over_limit,
            ),
            (
                "rate_limit_near_limit_hits",
                "Admitted hits past the near-limit ratio of the limit (reference: near_limit)",
                &metrics.near_limit,
            ),
            (
                "rate_limit_within_limit_hits",
                "Hits within the limit (reference: within_limit)",
                &metrics.within_limit,
            ),
            (
                "rate_limit_shadow_mode_hits",
                "Hits over a shadow-mode limit, let through (reference: shadow_mode)",
                &metrics.shadow_mode,
            ),
        ];
        for (name, help, family) in families {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "metric_series_overflow_hits",
            "Hits counted in an __overflow__ series because the per-limit series cap was reached",
            metrics.overflow_hits.clone(),
        );
        registry.register(
            "reservations",
            "Reservations (tollgate.reserve) by what became of them",
            metrics.reservations.clone(),
        );
        registry.register(
            "reservation_released_units",
            "Reserved units given back when their reservation was settled",
            metrics.released.clone(),
        );
        metrics
    }

    /// Counts one descriptor's hits on its limit.
    pub fn record(&self, domain: &str, entries: &[Entry], usage: &Usage) {
        if let Some(reservation) = usage.reservation {
            self.record_reservation(domain, reservation);
        }
        let series = self.series(domain, entries, usage.rule.as_deref());
        let hits = usage.hits.min(MAX_COUNTED_HITS);
        series.hits.inc_by(hits);
        if let Some(folded) = &series.folded {
            folded.inc_by(hits);
        }
        if usage.over_limit {
            series.over_limit.inc_by(hits);
            if usage.shadowed {
                series.shadow_mode.inc_by(hits);
            }
            return;
        }
        series.within_limit.inc_by(hits);
        let threshold = (f64::from(usage.capacity) * self.options.near_limit_ratio).floor() as u64;
        series
            .near_limit
            .inc_by(hits.min(usage.used_after.saturating_sub(threshold)));
    }

    fn record_reservation(&self, domain: &str, reservation: ReservationUse) {
        let result = match reservation {
            ReservationUse::Reserved => "reserved",
            ReservationUse::Refused => "refused",
            ReservationUse::Settled { released } => {
                let labels = DomainLabels {
                    domain: domain.to_owned(),
                };
                self.released.get_or_create(&labels).inc_by(released);
                "settled"
            }
            ReservationUse::Unmatched => "unmatched",
        };
        let labels = ReservationLabels {
            domain: domain.to_owned(),
            result,
        };
        self.reservations.get_or_create(&labels).inc();
    }

    fn series(&self, domain: &str, entries: &[Entry], rule: Option<&Rule>) -> Series {
        match rule {
            Some(rule) if !rule.detailed_metric && !rule.value_to_metric => {
                if let Some(series) = self.by_rule.get(&*rule.id) {
                    return series.clone();
                }
                // Configured limits are bounded by the configuration: never capped or folded.
                let descriptor = rule
                    .id
                    .strip_prefix(domain)
                    .and_then(|d| d.strip_prefix('.'));
                let labels = LimitLabels {
                    domain: domain.to_owned(),
                    descriptor: descriptor.unwrap_or(&rule.id).to_owned(),
                };
                let series = self.series_for(&labels, false);
                self.by_rule.insert(rule.id.clone(), series.clone());
                series
            }
            _ => {
                let key = (
                    domain.to_owned(),
                    bounded(descriptor_from_values(entries, rule)),
                );
                if let Some(series) = self.by_value.get(&key) {
                    return series.clone();
                }
                self.create(key)
            }
        }
    }

    /// A new series named from request values, or the domain's overflow series at the cap.
    /// Folded series are not cached, so the cache cannot grow past the cap either.
    fn create(&self, key: (String, String)) -> Series {
        let room = |n: usize| (n < self.options.max_series).then_some(n + 1);
        match self.by_value.entry(key) {
            dashmap::Entry::Occupied(existing) => existing.get().clone(),
            dashmap::Entry::Vacant(slot) => {
                if self
                    .series
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, room)
                    .is_err()
                {
                    let (domain, _) = slot.into_key();
                    let labels = LimitLabels {
                        domain,
                        descriptor: OVERFLOW.to_owned(),
                    };
                    return self.series_for(&labels, true);
                }
                let (domain, descriptor) = slot.key().clone();
                let series = self.series_for(&LimitLabels { domain, descriptor }, false);
                slot.insert(series.clone());
                series
            }
        }
    }

    fn series_for(&self, labels: &LimitLabels, folded: bool) -> Series {
        Series {
            hits: self.hits.get_or_create(labels).clone(),
            over_limit: self.over_limit.get_or_create(labels).clone(),
            near_limit: self.near_limit.get_or_create(labels).clone(),
            within_limit: self.within_limit.get_or_create(labels).clone(),
            shadow_mode: self.shadow_mode.get_or_create(labels).clone(),
            folded: folded.then(|| self.overflow_hits.clone()),
        }
    }
}

/// `label` cut to [`MAX_LABEL_BYTES`], with a hash of the whole when it was longer.
fn bounded(label: String) -> String {
    if label.len() <= MAX_LABEL_BYTES {
        return label;
    }
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    label.hash(&mut hasher);
    let mut cut = MAX_LABEL_BYTES - 20;
    while !label.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{:016x}", &label[..cut], hasher.finish())
}

/// `key_value` per level from the request's values; `share_threshold` levels keep their pattern.
fn descriptor_from_values(entries: &[Entry], rule: Option<&Rule>) -> String {
    let mut out = String::new();
    // tollgate's own entries (a request's id) are not part of the limit.
    let entries = entries
        .iter()
        .filter(|entry| !reservation::is_own(&entry.key));
    for (i, entry) in entries.enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(&entry.key);
        let value = match rule.and_then(|r| r.key_parts.get(i)) {
            Some(KeyPart::Shared(pattern)) => pattern,
            _ => entry.value.as_str(),
        };
        if !value.is_empty() {
            out.push('_');
            out.push_str(value);
        }
    }
    out
}
