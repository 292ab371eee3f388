//! Reading a request: checks, each descriptor's limit and cost.

use std::sync::Arc;

use smallvec::SmallVec;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;

use crate::config::{Options, RateLimitConfig};
use crate::matcher::EntryView;
use crate::quota::{Quota, QuotaError, Unit};
use crate::rule::{Policy, Rule};
use crate::store::{Hit, KeyBuilder, Unavailable};

/// The most descriptors one request may carry. Envoy sends a handful; more is a bug or abuse.
pub const MAX_DESCRIPTORS: usize = 1_000;

/// A request that cannot be decided. Each maps to gRPC `INVALID_ARGUMENT` / HTTP 400, except
/// [`RequestError::Unavailable`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// `domain` is empty.
    #[error("rate limit domain must not be empty")]
    EmptyDomain,
    /// `descriptors` is empty.
    #[error("rate limit descriptor list must not be empty")]
    NoDescriptors,
    /// Too many descriptors.
    #[error("too many rate limit descriptors: {count} (at most {MAX_DESCRIPTORS})")]
    TooManyDescriptors {
        /// How many the request had.
        count: usize,
    },
    /// A `descriptor.limit` override that the algorithm cannot enforce exactly.
    #[error("descriptors[{index}].limit: {reason}")]
    UnenforceableOverride {
        /// The descriptor's position.
        index: usize,
        /// Why.
        reason: QuotaError,
    },
    /// A descriptor's reservation entries (`tollgate.reserve`, `tollgate.request`) are wrong.
    #[error("descriptors[{index}]: {reason}")]
    BadReservation {
        /// The descriptor's position.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A `descriptor.limit` override names no known unit.
    #[error("descriptors[{index}].limit: unknown unit {unit} (expected SECOND 1 … WEEK 7)")]
    UnknownOverrideUnit {
        /// The descriptor's position.
        index: usize,
        /// The unit number sent.
        unit: i32,
    },
    /// The store could not settle the request and no failure policy answered for it (gRPC
    /// `UNAVAILABLE` / HTTP 503: Envoy then applies its `failure_mode_deny`).
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

impl EntryView for Entry {
    fn key(&self) -> &str {
        &self.key
    }
    fn value(&self) -> &str {
        &self.value
    }
}

/// Rejects requests that cannot be decided.
pub fn check(request: &RateLimitRequest) -> Result<(), RequestError> {
    if request.domain.is_empty() {
        return Err(RequestError::EmptyDomain);
    }
    match request.descriptors.len() {
        0 => Err(RequestError::NoDescriptors),
        count if count > MAX_DESCRIPTORS => Err(RequestError::TooManyDescriptors { count }),
        _ => Ok(()),
    }
}

/// The units a descriptor takes: its own `hits_addend` when set (0 = check only), else the
/// request's, where 0 means 1.
pub fn cost(request: &RateLimitRequest, descriptor: &RateLimitDescriptor) -> u64 {
    match &descriptor.hits_addend {
        Some(own) => own.value,
        None => u64::from(request.hits_addend.max(1)),
    }
}

/// What limits one descriptor.
#[derive(Debug, Clone, Copy)]
pub enum Limit<'a> {
    /// Nothing: unknown domain, no match, or replaced.
    None,
    /// A configured rule.
    Rule(&'a Arc<Rule>),
    /// The limit Envoy sent in `descriptor.limit`.
    Override(Quota),
}

/// Finds descriptor `index`'s limits (one, or a node's `rate_limits`; `Limit::None` when none
/// applies), matching its `entries` (those of tollgate's own taken out). As in the reference
/// service, an override applies in any known domain, matched or not.
pub fn limits<'a>(
    config: &'a RateLimitConfig,
    request: &RateLimitRequest,
    index: usize,
    entries: &[Entry],
    options: &Options,
) -> Result<SmallVec<[Limit<'a>; 1]>, RequestError> {
    let descriptor = &request.descriptors[index];
    let Some(domain) = config.domain(&request.domain) else {
        return Ok(smallvec::smallvec![Limit::None]);
    };
    if let Some(limit) = &descriptor.limit {
        let unit = Unit::from_envoy(limit.unit).ok_or(RequestError::UnknownOverrideUnit {
            index,
            unit: limit.unit,
        })?;
        let quota = Quota::try_new(
            limit.requests_per_unit,
            unit,
            options.default_algorithm,
            None,
        )
        .and_then(|quota| match options.count_denied {
            true => quota.try_with_debt(quota.default_debt()),
            false => Ok(quota),
        })
        .map_err(|reason| RequestError::UnenforceableOverride { index, reason })?;
        return Ok(smallvec::smallvec![Limit::Override(quota)]);
    }
    Ok(match domain.root.find(entries) {
        Some(rules) => rules.iter().map(Limit::Rule).collect(),
        None => smallvec::smallvec![Limit::None],
    })
}

impl Limit<'_> {
    /// The configured rule, if the limit is one.
    pub fn rule(&self) -> Option<&Arc<Rule>> {
        match self {
            Limit::Rule(rule) => Some(rule),
            Limit::None | Limit::Override(_) => None,
        }
    }

    /// The quota to count against, if any.
    pub fn quota(&self) -> Option<Quota> {
        match self {
            Limit::Rule(rule) => match rule.policy {
                Policy::Limited(quota) => Some(quota),
                Policy::Unlimited => None,
            },
            Limit::Override(quota) => Some(*quota),
            Limit::None => None,
        }
    }

    /// Whether the limit is `unlimited: true`.
    pub fn is_unlimited(&self) -> bool {
        self.rule().is_some_and(|r| r.policy == Policy::Unlimited)
    }

    /// The name reported to Envoy.
    pub fn name(&self) -> Option<&Arc<str>> {
        self.rule().and_then(|r| r.name.as_ref())
    }

    /// The bucket claim of a descriptor with `entries` taking `cost`, if this limit counts.
    pub fn hit(
        &self,
        keys: &KeyBuilder,
        domain: &str,
        entries: &[Entry],
        cost: u64,
    ) -> Option<Hit> {
        let quota = self.quota()?;
        let (key, overflow, tag) = match self.rule() {
            Some(rule) => (
                keys.rule(domain, rule, quota.algorithm(), entries),
                keys.overflow(domain, &rule.id, quota.algorithm()),
                rule.tag,
            ),
            None => (
                keys.override_limit(domain, &quota, entries),
                keys.overflow(domain, "", quota.algorithm()),
                0,
            ),
        };
        Some(Hit {
            key,
            overflow,
            quota,
            cost,
            rule_tag: tag,
        })
    }
}
