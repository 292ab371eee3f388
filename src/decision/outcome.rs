//! The decision, independent of how it is sent back (gRPC or JSON).

use crate::algorithm::Verdict;
use crate::clock::Nanos;
use crate::quota::{Quota, Unit};

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
    /// The rule's `name`, or empty.
    pub name: String,
    /// Requests per unit.
    pub requests_per_unit: u32,
    /// The unit.
    pub unit: Unit,
}

/// One descriptor's outcome, in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorStatus {
    /// This descriptor's code.
    pub code: Code,
    /// The limit applied, if any (none for no match and for unlimited).
    pub limit: Option<ReportedLimit>,
    /// Requests left now; `u32::MAX` for unlimited.
    pub remaining: u32,
    /// Time until the limit is whole again, when there is a limit.
    pub reset_after: Option<Nanos>,
    /// For a denial that can succeed later, how long to wait.
    pub retry_after: Option<Nanos>,
}

/// The decision for a whole request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// OVER_LIMIT when the request is denied.
    pub overall: Code,
    /// One status per request descriptor, same order.
    pub statuses: Vec<DescriptorStatus>,
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
        }
    }

    /// `unlimited: true`.
    pub fn unlimited() -> Self {
        Self {
            remaining: u32::MAX,
            ..Self::no_limit()
        }
    }

    /// A counted limit.
    pub fn limited(code: Code, name: Option<&str>, quota: &Quota, verdict: &Verdict) -> Self {
        Self {
            code,
            limit: Some(ReportedLimit {
                name: name.unwrap_or_default().to_owned(),
                requests_per_unit: quota.requests_per_unit(),
                unit: quota.unit(),
            }),
            remaining: u32::try_from(verdict.remaining).unwrap_or(u32::MAX),
            reset_after: Some(verdict.reset_after),
            retry_after: if verdict.allowed {
                None
            } else {
                verdict.retry_after
            },
        }
    }
}
