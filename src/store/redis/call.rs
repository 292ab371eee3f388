//! One script call: its entries as the wire wants them, and the call itself as a future that
//! owns everything it needs, so a call given up on can still be awaited for its late answer.

use std::fmt::Write as _;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use redis::{RedisResult, Script};
use smallvec::SmallVec;

use super::link::Conn;
use super::wire;
use crate::clock::{NANOS_PER_SEC, Nanos};
use crate::store::contract::Hit;
use crate::store::key::BucketKey;

/// One entry of a script call.
#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    /// The bucket, or none for [`wire::KIND_DECIDED`].
    pub(super) key: Option<BucketKey>,
    pub(super) kind: u64,
    pub(super) cost: u64,
    pub(super) p1: u64,
    pub(super) p2: u64,
    /// Units of debt the limit runs (decide entries only).
    pub(super) debt: u64,
    /// Decide entries only: the role bits and the units to lease.
    pub(super) role: Option<(u64, u64)>,
}

impl Entry {
    /// An entry on `hit`'s bucket for `cost` units (decide entries also carry a role).
    pub(super) fn of(hit: &Hit, cost: u64, role: Option<(u64, u64)>) -> Self {
        let (kind, p1, p2) = wire::shape(&hit.quota);
        Self {
            key: Some(hit.key),
            kind,
            cost,
            p1,
            p2,
            debt: u64::from(hit.quota.debt()),
            role,
        }
    }
}

/// A script call in flight: its reply, one integer array.
pub(super) type InFlight = BoxFuture<'static, RedisResult<Vec<i64>>>;

/// The call of `script` on `entries` (all in `hash_tag`'s slot) at `now`, over `conn`; keys
/// are named `{prefix}{<hash tag>}:<bucket>`.
pub(super) fn call(
    conn: Conn,
    script: Arc<Script>,
    prefix: &str,
    hash_tag: u64,
    entries: &[Entry],
    now: Nanos,
) -> InFlight {
    let mut keys: SmallVec<[String; 4]> = SmallVec::new();
    let mut args: SmallVec<[u64; 31]> = SmallVec::new();
    args.extend([now / NANOS_PER_SEC, now % NANOS_PER_SEC, wire::GRACE_MS]);
    for entry in entries {
        if let Some(key) = entry.key {
            keys.push(key_name(prefix, hash_tag, &format_args!("{:032x}", key.0)));
        }
        args.extend([entry.kind, entry.cost, entry.p1, entry.p2]);
        if let Some((role, lease)) = entry.role {
            args.extend([role, lease, entry.debt]);
        }
    }
    Box::pin(async move {
        let mut conn = conn;
        let mut invocation = script.prepare_invoke();
        for key in &keys {
            invocation.key(key.as_str());
        }
        for arg in &args {
            invocation.arg(*arg);
        }
        invocation.invoke_async(&mut conn).await
    })
}

/// A key's name: `{prefix}{<hash tag, 16 hex digits>}:<name>`.
pub(super) fn key_name(prefix: &str, hash_tag: u64, name: &dyn std::fmt::Display) -> String {
    let mut key = String::with_capacity(prefix.len() + 56);
    let _ = write!(key, "{prefix}{{{hash_tag:016x}}}:{name}");
    key
}

/// A decide reply: whether the request was denied, and each entry's figures; `None` if it is
/// not the reply `entries` entries call for.
pub(super) fn decided(
    reply: &[i64],
    entries: usize,
) -> Option<(bool, SmallVec<[wire::Figures; 4]>)> {
    let (denied, rest) = reply.split_first()?;
    (rest.len() == entries * wire::REPLY_FIELDS).then(|| {
        (
            *denied == 1,
            rest.chunks_exact(wire::REPLY_FIELDS)
                .map(wire::figures)
                .collect(),
        )
    })
}
