//! The decision, independent of how it is sent back (gRPC or JSON).

use std::sync::Arc;

use smallvec::SmallVec;

use crate::algorithm::Verdict;
use crate::clock::{NANOS_PER_SEC, Nanos};
use crate::quota::{Algorithm, Quota, Unit};
use crate::rule::Rule;

/// Allowed or over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Within the limit.
    Ok,
    /// Over the limit.
    OverLimit,
}

/// The limit as reported to Envoy in `current_limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedLimit {
    /// The rule's `name`, if it has one.
    pub name: Option<Arc<str>>,
    /// Requests per unit.
    pub requests_per_unit: u32,
    /// The unit.
    pub unit: Unit,
}

/// What a counted descriptor used, for the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    /// The configured limit, or `None` for a limit Envoy sent in the request.
    pub rule: Option<Arc<Rule>>,
    /// The descriptor's cost (hits_addend).
    pub hits: u64,
    /// The bucket's capacity.
    pub capacity: u32,
    /// Units of the capacity in use once this request's hits are counted.
    pub used_after: u64,
    /// The bucket had too few units left.
    pub over_limit: bool,
    /// Over the limit, but let through by shadow mode.
    pub shadowed: bool,
    /// What the descriptor did with a reservation, if it asked for one.
    pub reservation: Option<ReservationUse>,
}

/// What a descriptor did with a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationUse {
    /// Its estimate was taken and is held.
    Reserved,
    /// Its estimate did not fit (or another limit denied the request): nothing is held.
    Refused,
    /// It settled a reservation that was held, giving back `released` units first.
    Settled {
        /// Units given back.
        released: u64,
    },
    /// It settled a reservation that was not held (expired, never made, or settled already):
    /// its cost was charged in full.
    Unmatched,
}

/// One descriptor's outcome, in request order.
#[derive(Debug, Clone, PartialEq)]
pub struct DescriptorStatus {
    /// This descriptor's code.
    pub code: Code,
    /// The limit applied, if any (none for no match and for unlimited).
    pub limit: Option<ReportedLimit>,
    /// Requests left now: 0 once over the limit (as the reference reports it); `u32::MAX` for
    /// unlimited.
    pub remaining: u32,
    /// Time until the limit is whole again, when there is a limit; for a fixed window, whole
    /// seconds until it ends, as the reference reports its windows.
    pub reset_after: Option<Nanos>,
    /// For a denial that can succeed later, how long to wait.
    pub retry_after: Option<Nanos>,
    /// What was counted, when a limit counted this descriptor.
    pub usage: Option<Usage>,
    /// What the descriptor's other limits counted (a node's `rate_limits`; else empty).
    pub more_usage: Vec<Usage>,
}

/// The decision for a whole request.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// OVER_LIMIT when the request is denied.
    pub overall: Code,
    /// The request named a domain no configuration file defines.
    pub unknown_domain: bool,
    /// One status per request descriptor, same order (inline up to four: no allocation).
    pub statuses: SmallVec<[DescriptorStatus; 4]>,
}

impl DescriptorStatus {
    /// No limit applies.
    pub fn no_limit() -> Self {
        Self {
            code: Code::Ok,
            limit: None,
            remaining: 0,
            reset_after: None,
            retry_after: None,
            usage: None,
            more_usage: Vec::new(),
        }
    }

    /// `unlimited: true`.
    pub fn unlimited() -> Self {
        Self {
            remaining: u32::MAX,
            ..Self::no_limit()
        }
    }

    /// Whether a limit applied: a counted one, or `unlimited: true`.
    pub fn has_limit(&self) -> bool {
        self.limit.is_some() || self.remaining == u32::MAX
    }

    /// A counted limit.
    pub fn limited(
        code: Code,
        name: Option<&Arc<str>>,
        quota: &Quota,
        verdict: &Verdict,
        usage: Usage,
    ) -> Self {
        let reset_after = match quota.algorithm() {
            // The window ends on a whole second (windows are aligned to the epoch).
            Algorithm::FixedWindow => verdict.reset_after.div_ceil(NANOS_PER_SEC) * NANOS_PER_SEC,
            _ => verdict.reset_after,
        };
        Self {
            code,
            limit: Some(ReportedLimit {
                name: name.cloned(),
                requests_per_unit: quota.requests_per_unit(),
                unit: quota.unit(),
            }),
            remaining: if verdict.allowed {
                u32::try_from(verdict.remaining).unwrap_or(u32::MAX)
            } else {
                0
            },
            reset_after: Some(reset_after),
            retry_after: if verdict.allowed {
                None
            } else {
                verdict.retry_after
            },
            usage: Some(usage),
            more_usage: Vec::new(),
        }
    }

    /// One descriptor's status from those of its limits (several for a node's `rate_limits`):
    /// the first that says OVER_LIMIT, else the counted limit with the least remaining (so
    /// Envoy's `X-RateLimit-*` headers read the tightest), else the first. The usage of every
    /// limit is kept, for the metrics.
    pub fn of_all(statuses: SmallVec<[Self; 1]>) -> Self {
        let mut statuses = statuses.into_iter();
        let Some(first) = statuses.next() else {
            return Self::no_limit();
        };
        let mut rest: Vec<Self> = statuses.collect();
        if rest.is_empty() {
            return first;
        }
        rest.insert(0, first);
        let rank = |status: &Self| {
            (
                status.code != Code::OverLimit,
                status.limit.is_none(),
                status.remaining,
            )
        };
        let chosen = (0..rest.len())
            .min_by_key(|&i| rank(&rest[i]))
            .unwrap_or_default();
        let mut status = rest.swap_remove(chosen);
        status.more_usage = rest.into_iter().flat_map(|s| s.usage).collect();
        status
    }
}
