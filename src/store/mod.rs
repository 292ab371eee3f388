//! Where buckets live. Today: process memory; the Redis issue adds a shared store.

pub mod key;
pub mod memory;

pub use key::{BucketKey, KeyBuilder};
pub use memory::{Acquired, MemoryStore, SweepReport};

use crate::quota::Quota;

/// One request descriptor's claim on a bucket.
#[derive(Debug, Clone, Copy)]
pub struct Hit {
    /// The bucket.
    pub key: BucketKey,
    /// The bucket to use instead while the store is at its cap and `key` is new.
    pub overflow: BucketKey,
    /// The limit the bucket enforces.
    pub quota: Quota,
    /// Units to take; 0 checks without taking.
    pub cost: u64,
    /// The rule's tag (`Rule::tag`), or 0 for limits sent in the request.
    pub tag: u32,
}
