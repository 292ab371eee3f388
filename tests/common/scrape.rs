//! Reading `/metrics` (OpenMetrics text) in tests.

use prometheus_parse::{Sample, Scrape, Value};

/// Every sample in a `/metrics` text.
pub fn samples(text: &str) -> Vec<Sample> {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap()
        .samples
}

/// A counter's, gauge's or untyped sample's value.
pub fn number(sample: &Sample) -> f64 {
    match sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        _ => panic!("not a number: {sample:?}"),
    }
}

/// The value of `metric` with exactly `labels`, or 0 when the series does not exist.
pub fn value(samples: &[Sample], metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<_> = samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| {
            s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .collect();
    assert!(found.len() <= 1, "{found:?}");
    found.first().map_or(0.0, |s| number(s))
}

/// The sum of every series of `metric` that has `labels` (and any others).
pub fn total(samples: &[Sample], metric: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(number)
        .sum()
}
