//! A compiled limit: what a descriptor tree node enforces once a request reaches it.

use std::sync::Arc;

use crate::quota::Quota;

/// What a rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Always allowed; reported with no limit and `u32::MAX` remaining.
    Unlimited,
    /// Counted against a quota.
    Limited(Quota),
}

/// How one level of a request descriptor contributes to a bucket's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The request's own value: each distinct value gets its own bucket.
    Value,
    /// A `share_threshold` wildcard: every value it matches shares one bucket.
    Shared(Arc<str>),
}

/// A limit attached to a descriptor node.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The composite key, as envoyproxy/ratelimit names it: `domain.key_value.key`.
    pub id: Arc<str>,
    /// The limit's `name`, reported to Envoy and used by `replaces`.
    pub name: Option<Arc<str>>,
    /// What it allows.
    pub policy: Policy,
    /// Counts but never denies.
    pub shadow_mode: bool,
    /// Over-limit denies only when all quota-mode descriptors of a request are over.
    pub quota_mode: bool,
    /// Names of limits this one replaces.
    pub replaces: Vec<Arc<str>>,
    /// Metrics: per-value series (kept for the metrics issue).
    pub detailed_metric: bool,
    /// Metrics: matched value in the series name (kept for the metrics issue).
    pub value_to_metric: bool,
    /// Per request level, what identifies the bucket.
    pub key_parts: Vec<KeyPart>,
    /// Free-form `metadata` from the file.
    pub metadata: Option<serde_yaml::Value>,
    /// `consistency:` when the limit sets it (Redis store only): how replicas agree on it.
    pub consistency: Option<Consistency>,
    /// `max_delay:` (ext_authz only): hold a request that would be denied until it conforms,
    /// for at most this long, instead of denying it.
    pub max_delay: Option<std::time::Duration>,
    /// A stable 32-bit digest of the domain and `id`, stamped on the rule's buckets so a reload
    /// can drop the buckets of removed rules.
    pub tag: u32,
}

impl Rule {
    /// The tag of rule `id` in `domain`.
    pub fn tag_of(domain: &str, id: &str) -> u32 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        (domain, id).hash(&mut hasher);
        // Folding to 32 bits: a collision only means a removed rule also resets a live one.
        let h = hasher.finish();
        (h ^ (h >> 32)) as u32
    }
}

/// How replicas agree on a limit kept in Redis (`--consistency`, or a limit's `consistency:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Consistency {
    /// Every decision atomic in Redis: never more than the limit across replicas.
    Strict,
    /// Leased slices spent locally: memory-speed, never more than the limit, up to a slice per
    /// replica less while leases are out.
    Cached,
}

impl Consistency {
    /// Parses `strict` or `cached`, the names of the command line.
    pub fn parse(name: &str) -> Option<Self> {
        <Self as clap::ValueEnum>::from_str(name, false).ok()
    }
}

impl std::fmt::Display for Consistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::cli::write_value(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_names_are_the_command_line_names() {
        for consistency in [Consistency::Strict, Consistency::Cached] {
            assert_eq!(
                Consistency::parse(&consistency.to_string()),
                Some(consistency)
            );
        }
        assert_eq!(Consistency::Cached.to_string(), "cached");
        assert_eq!(Consistency::parse("eventual"), None);
    }
}
