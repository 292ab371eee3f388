//! Why a stream of usage reports is ended: each says what is wrong, and maps to one gRPC code
//! at the edge (`protocol/rlqs.rs`).

/// A report that cannot be served. The whole message is checked before any of it is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The stream's first message has no `domain`.
    #[error("the first RateLimitQuotaUsageReports of a stream must name a domain")]
    NoDomain,
    /// A later message names another domain.
    #[error("domain '{now}' in a stream opened for domain '{first}': open one stream per domain")]
    DomainChanged {
        /// The stream's domain.
        first: String,
        /// The domain the message named.
        now: String,
    },
    /// A usage without a `bucket_id`.
    #[error("bucket_quota_usages[{index}]: no bucket_id")]
    NoBucketId {
        /// The usage's position in the message.
        index: usize,
    },
    /// A `bucket_id` with no entries.
    #[error("bucket_quota_usages[{index}].bucket_id: empty (a bucket id needs at least one entry)")]
    EmptyBucketId {
        /// The usage's position in the message.
        index: usize,
    },
    /// A `bucket_id` with more entries than a descriptor tree is walked for.
    #[error("bucket_quota_usages[{index}].bucket_id: {count} entries (at most {max})")]
    TooManyEntries {
        /// The usage's position in the message.
        index: usize,
        /// How many entries it has.
        count: usize,
        /// The most accepted.
        max: usize,
    },
    /// More buckets on one stream than one Envoy may hold.
    #[error("{count} buckets on one stream (at most {max}): the bucket ids vary too much")]
    TooManyBuckets {
        /// How many the stream would hold.
        count: usize,
        /// The most accepted.
        max: usize,
    },
    /// The server is stopping.
    #[error("tollgate is shutting down: reconnect to another replica")]
    ShuttingDown,
}
