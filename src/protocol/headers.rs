//! The rate limit headers of HTTP answers (ext_authz denials and the service API): the IETF
//! draft's `RateLimit` and `RateLimit-Policy`, the older `X-RateLimit-*`, and `Retry-After`.

use crate::clock::NANOS_PER_SEC;
use crate::decision::{Code, Decision, DescriptorStatus};

/// Seconds, rounded up.
pub fn secs(nanos: u64) -> u64 {
    nanos.div_ceil(NANOS_PER_SEC)
}

/// The statuses that carry a limit, with a name for each.
fn limited(decision: &Decision) -> impl Iterator<Item = (String, &DescriptorStatus)> {
    decision
        .statuses
        .iter()
        .enumerate()
        .filter(|(_, s)| s.limit.is_some())
        .map(|(i, s)| {
            let name = s
                .limit
                .as_ref()
                .and_then(|l| l.name.as_deref())
                .map_or_else(|| format!("limit-{i}"), str::to_owned);
            (name, s)
        })
}

/// The limit closest to running out (the one that denied, on a denial), with its name.
pub fn binding(decision: &Decision) -> Option<(String, &DescriptorStatus)> {
    limited(decision).min_by_key(|(_, s)| (s.code != Code::OverLimit, s.remaining))
}

/// `RateLimit-Policy` for every limit, and `RateLimit` plus `X-RateLimit-*` for the one
/// closest to running out (the one that denied, on a denial).
pub fn rate_limit_headers(decision: &Decision) -> Vec<(&'static str, String)> {
    let policies: Vec<String> = limited(decision)
        .filter_map(|(name, s)| {
            let limit = s.limit.as_ref()?;
            Some(format!(
                "\"{name}\";q={};w={}",
                limit.requests_per_unit,
                limit.unit.seconds()
            ))
        })
        .collect();
    let Some((name, status)) = binding(decision) else {
        return Vec::new();
    };
    let reset = secs(status.reset_after.unwrap_or_default());
    let limit = status.limit.as_ref().map_or(0, |l| l.requests_per_unit);
    vec![
        ("ratelimit-policy", policies.join(", ")),
        (
            "ratelimit",
            format!("\"{name}\";r={};t={reset}", status.remaining),
        ),
        ("x-ratelimit-limit", limit.to_string()),
        ("x-ratelimit-remaining", status.remaining.to_string()),
        ("x-ratelimit-reset", reset.to_string()),
    ]
}

/// How long a denied caller should wait: the longest wait among the denying limits (a limit
/// that can never admit the request says its reset).
pub fn retry_after_secs(decision: &Decision) -> u64 {
    decision
        .statuses
        .iter()
        .filter(|s| s.code == Code::OverLimit)
        .map(|s| secs(s.retry_after.or(s.reset_after).unwrap_or_default()))
        .max()
        .unwrap_or(1)
        .max(1)
}
