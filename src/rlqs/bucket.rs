//! Buckets: Envoy's `BucketId`, an unordered string map, and the limit it falls under.
//!
//! A bucket id is matched against its domain's descriptor tree as the descriptor made of its
//! entries would be, the entries taken in the order of a path down the tree: the first entry
//! is one whose key the tree's top level has, the next one whose key that node's children
//! have, and so on, each entry used once. Every entry must be used and the path must end on a
//! limit, exactly as a descriptor must end on one. At each level the candidate entries are
//! tried in the alphabetical order of their keys, and the first path that reaches a limit wins.
//! A bucket that reaches no limit (or names an unknown domain) is not limited: `ALLOW_ALL`.
//!
//! A node with a list of limits (`rate_limits:`) enforces every limit of it that can deny
//! (not `unlimited`, not in shadow mode). Envoy enforces one token bucket per bucket: the
//! limit with the shortest window becomes it ([`token_bucket_of`]), and every other one is
//! counted by tollgate from the Envoys' reports ([`super::tally`]).

use std::fmt;
use std::sync::Arc;

use envoy_types::pb::envoy::service::rate_limit_quota::v3::BucketId;

use crate::config::RateLimitConfig;
use crate::matcher::Level;
use crate::quota::Quota;
use crate::rule::{Policy, Rule};
use crate::store::{BucketKey, KeyBuilder};

/// The most entries a bucket id may have.
pub const MAX_ENTRIES: usize = 32;

/// The most tree nodes one match may visit; past it the bucket matches nothing. Real trees and
/// bucket ids stay far below it; it bounds what a crafted id can cost.
const MAX_VISITS: usize = 4_096;

/// A bucket id, its entries sorted by key (a map's keys are unique), so equal maps are equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketName(Box<[(String, String)]>);

/// The limit a bucket falls under.
#[derive(Debug, Clone)]
pub enum Limit {
    /// No limit: an unknown domain, or no path reaches a limit.
    None,
    /// A limit that never denies here: `unlimited: true` or shadow mode.
    Open(Arc<Rule>),
    /// A counted limit. Buckets with the same `key` share one budget: the bucket an RLS
    /// descriptor with the same entries would count in.
    Counted {
        /// The rule Envoy enforces as its token bucket.
        rule: Arc<Rule>,
        /// Its quota (the whole limit, before it is divided among replicas).
        quota: Quota,
        /// The budget's identity.
        key: BucketKey,
        /// The other limits of the node's list, counted by tollgate from the reports.
        tallied: Vec<Tallied>,
    },
}

/// A limit of a list that tollgate counts from what Envoys report.
#[derive(Debug, Clone)]
pub struct Tallied {
    /// The rule.
    pub rule: Arc<Rule>,
    /// Its quota (the whole limit).
    pub quota: Quota,
    /// Its identity, as an RLS descriptor with the same entries would count it.
    pub key: BucketKey,
}

impl BucketName {
    /// The name of a bucket with `entries`.
    pub fn new(entries: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut entries: Vec<_> = entries.into_iter().collect();
        entries.sort();
        Self(entries.into_boxed_slice())
    }

    /// The name of a bucket id Envoy sent.
    pub fn from_proto(id: &BucketId) -> Self {
        Self::new(id.bucket.iter().map(|(k, v)| (k.clone(), v.clone())))
    }

    /// The bucket id to send back.
    pub fn to_proto(&self) -> BucketId {
        BucketId {
            bucket: self.0.iter().cloned().collect(),
        }
    }

    /// The entries, sorted by key.
    pub fn entries(&self) -> &[(String, String)] {
        &self.0
    }
}

impl fmt::Display for BucketName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (key, value)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{key}: {value}")?;
        }
        f.write_str("}")
    }
}

impl serde::Serialize for BucketName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

impl Limit {
    /// The rule, if any.
    pub fn rule(&self) -> Option<&Arc<Rule>> {
        match self {
            Limit::None => None,
            Limit::Open(rule) | Limit::Counted { rule, .. } => Some(rule),
        }
    }

    /// This limit as the server-wide shadow mode leaves it: never denying.
    pub fn shadowed(self) -> Self {
        match self {
            Limit::Counted { rule, .. } => Limit::Open(rule),
            open => open,
        }
    }

    /// The budget a counted bucket shares.
    pub fn budget(&self) -> Option<BucketKey> {
        match self {
            Limit::Counted { key, .. } => Some(*key),
            Limit::None | Limit::Open(_) => None,
        }
    }
}

/// The limit bucket `name` falls under in `domain`; budgets are named by `keys`.
pub fn resolve(
    config: &RateLimitConfig,
    keys: &KeyBuilder,
    domain: &str,
    name: &BucketName,
) -> Limit {
    let Some(tree) = config.domain(domain) else {
        return Limit::None;
    };
    let entries = name.entries();
    let mut walk = Walk {
        entries,
        used: vec![false; entries.len()],
        path: Vec::with_capacity(entries.len()),
        visits: 0,
    };
    let Some(rules) = walk.level(&tree.root) else {
        return Limit::None;
    };
    // The limits that deny: not unlimited, not in shadow mode.
    let enforced: Vec<(&Arc<Rule>, Quota)> = rules
        .iter()
        .filter_map(|rule| match rule.policy {
            Policy::Limited(quota) if !rule.shadow_mode => Some((rule, quota)),
            Policy::Limited(_) | Policy::Unlimited => None,
        })
        .collect();
    let quotas: Vec<Quota> = enforced.iter().map(|&(_, quota)| quota).collect();
    let Some(at) = token_bucket_of(&quotas) else {
        return match rules.first() {
            Some(rule) => Limit::Open(rule.clone()),
            None => Limit::None,
        };
    };
    let path: Vec<(&str, &str)> = walk
        .path
        .iter()
        .map(|&i| (entries[i].0.as_str(), entries[i].1.as_str()))
        .collect();
    let key = |rule: &Rule, quota: Quota| keys.rule(domain, rule, quota.algorithm(), &path);
    let (rule, quota) = enforced[at];
    Limit::Counted {
        key: key(rule, quota),
        rule: rule.clone(),
        quota,
        tallied: enforced
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != at)
            .map(|(_, &(rule, quota))| Tallied {
                rule: rule.clone(),
                quota,
                key: key(rule, quota),
            })
            .collect(),
    }
}

/// Which of a list's limits Envoy enforces as its token bucket: the one with the shortest
/// window (refill period), the smallest capacity among equal windows, the first among equal
/// ones. Envoy decides every request against its token bucket, while tollgate learns of the
/// requests only at each report (every 5 s): the limit that binds over the shortest time is the
/// one only Envoy can enforce, and limits over longer windows are counted from the reports.
pub fn token_bucket_of(quotas: &[Quota]) -> Option<usize> {
    quotas
        .iter()
        .enumerate()
        .min_by_key(|(_, quota)| (quota.period_nanos(), quota.capacity()))
        .map(|(i, _)| i)
}

/// A depth-first search for a path that uses every entry once and ends on a rule.
struct Walk<'e> {
    entries: &'e [(String, String)],
    used: Vec<bool>,
    /// Entry positions along the path so far.
    path: Vec<usize>,
    visits: usize,
}

impl Walk<'_> {
    fn level<'t>(&mut self, level: &'t Level) -> Option<&'t [Arc<Rule>]> {
        for i in 0..self.entries.len() {
            if self.used[i] {
                continue;
            }
            self.visits += 1;
            if self.visits > MAX_VISITS {
                return None;
            }
            let (key, value) = &self.entries[i];
            let Some(node) = level.child(key, value) else {
                continue;
            };
            self.used[i] = true;
            self.path.push(i);
            let found = if self.path.len() == self.entries.len() {
                (!node.rules.is_empty()).then_some(node.rules.as_slice())
            } else if node.children.is_empty() {
                None
            } else {
                self.level(&node.children)
            };
            if found.is_some() {
                return found;
            }
            self.used[i] = false;
            self.path.pop();
        }
        None
    }
}

#[cfg(test)]
mod tests;
