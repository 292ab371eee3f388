//! Checking a message before any of it is applied, so a malformed one changes nothing.

use std::collections::HashSet;

use envoy_types::pb::envoy::service::rate_limit_quota::v3::RateLimitQuotaUsageReports;

use super::ReportError;
use super::bucket::{BucketName, MAX_ENTRIES};
use super::member::Stream;

/// Checks a message of `stream` before anything is applied: its domain (the first message
/// names it, later ones repeat it or leave it empty) and its bucket ids. The stream's domain.
pub fn check(
    stream: &Stream,
    message: &RateLimitQuotaUsageReports,
    max_buckets: usize,
) -> Result<String, ReportError> {
    let domain = match (&stream.domain, message.domain.as_str()) {
        (None, "") => return Err(ReportError::NoDomain),
        (None, named) => named.to_owned(),
        (Some(first), "") => first.clone(),
        (Some(first), named) if named == first => first.clone(),
        (Some(first), named) => {
            return Err(ReportError::DomainChanged {
                first: first.clone(),
                now: named.to_owned(),
            });
        }
    };
    let mut new = HashSet::new();
    for (index, usage) in message.bucket_quota_usages.iter().enumerate() {
        let id = usage
            .bucket_id
            .as_ref()
            .ok_or(ReportError::NoBucketId { index })?;
        match id.bucket.len() {
            0 => return Err(ReportError::EmptyBucketId { index }),
            count if count > MAX_ENTRIES => {
                return Err(ReportError::TooManyEntries {
                    index,
                    count,
                    max: MAX_ENTRIES,
                });
            }
            _ => {}
        }
        let name = BucketName::from_proto(id);
        if !stream.buckets.contains_key(&name) {
            new.insert(name);
        }
    }
    let count = stream.buckets.len() + new.len();
    if count > max_buckets {
        return Err(ReportError::TooManyBuckets {
            count,
            max: max_buckets,
        });
    }
    Ok(domain)
}
