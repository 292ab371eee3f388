//! Where buckets live, behind one contract ([`Store`]): this process's memory, Redis shared by
//! every replica, cached mode's leases in front of Redis, and the failure policy in front of
//! either (see the README's "Global limits with Redis").

pub mod contract;
pub mod failover;
pub mod key;
pub mod lease;
pub mod leasing;
pub mod memory;
pub mod redis;
pub mod reservation;
pub mod share;

pub use contract::{
    Claim, Hit, Late, Outcome, Parts, Role, Settlement, Store, Ticket, Unavailable, When,
};
pub use failover::{Failover, FailurePolicy};
pub use key::{BucketKey, KeyBuilder};
pub use lease::Leases;
pub use leasing::Leasing;
pub use memory::{Acquired, MemoryStore, SweepReport};
pub use redis::{RedisOptions, RedisStore, RedisTls, Sentinel, TlsError, is_tls_url};
