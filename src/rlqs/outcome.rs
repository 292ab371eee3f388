//! What an operation on the state sends and learns.

use std::sync::Arc;

use super::assignment::Action;
use super::bucket::BucketName;
use super::state::StreamId;

/// A message to deliver: `action` on `bucket`, to `stream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The stream.
    pub stream: StreamId,
    /// The bucket.
    pub bucket: BucketName,
    /// What to do.
    pub action: Action,
}

/// Requests one report said a bucket allowed and denied, for the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    /// The stream's domain.
    pub domain: String,
    /// The limit's id, if one applies.
    pub limit: Option<Arc<str>>,
    /// Requests allowed.
    pub allowed: u64,
    /// Requests denied.
    pub denied: u64,
}

/// What an operation sends and what it learned.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Messages to deliver.
    pub messages: Vec<Message>,
    /// Usage reported, per bucket.
    pub reported: Vec<Reported>,
    /// Buckets that became new subscriptions.
    pub subscribed: usize,
    /// Counted limits (by id) that were used up and closed their budget.
    pub exhausted: Vec<Arc<str>>,
}
