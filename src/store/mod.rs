//! Where buckets live: process memory, or Redis shared by every replica (see the README's
//! "Global limits with Redis").

pub mod key;
pub mod lease;
pub mod memory;
pub mod redis;

pub use key::{BucketKey, KeyBuilder};
pub use lease::Leases;
pub use memory::{Acquired, MemoryStore, SweepReport};
pub use redis::{RedisOptions, RedisStore, RedisTls, TlsError, is_tls_url};

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

/// How replicas agree on a limit kept in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Consistency {
    /// Every decision is made atomically in Redis: admitted never exceeds the limit.
    Strict,
    /// Decisions are made from tokens leased from Redis in slices, off the request path.
    Cached,
}

impl Consistency {
    /// Parses `strict` or `cached`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "strict" => Some(Self::Strict),
            "cached" => Some(Self::Cached),
            _ => None,
        }
    }
}

/// What to answer while Redis is unreachable or slower than its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Decide from this replica's own memory buckets.
    Local,
    /// Admit every request.
    Allow,
    /// Deny every request that has a limit.
    Deny,
}
