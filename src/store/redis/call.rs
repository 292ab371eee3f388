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
use crate::store::contract::{Hit, Ticket};
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
    /// The reservation ticket: its kind, its time to live in ms and its id (decide entries
    /// only).
    pub(super) ticket: (u64, u64, u128),
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
            ticket: (wire::TICKET_NONE, 0, 0),
            role,
        }
    }

    /// The same entry with `ticket`, if any.
    pub(super) fn with_ticket(self, ticket: Option<Ticket>) -> Self {
        let ticket = match ticket {
            None => (wire::TICKET_NONE, 0, 0),
            Some(Ticket::Reserve { id, ttl }) => (
                wire::TICKET_RESERVE,
                u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
                id,
            ),
            Some(Ticket::Settle { id }) => (wire::TICKET_SETTLE, 0, id),
        };
        Self { ticket, ..self }
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
    let mut args: SmallVec<[u64; 39]> = SmallVec::new();
    args.extend([now / NANOS_PER_SEC, now % NANOS_PER_SEC, wire::GRACE_MS]);
    for entry in entries {
        if let Some(key) = entry.key {
            keys.push(key_name(prefix, hash_tag, &format_args!("{:032x}", key.0)));
        }
        let (ticket, ttl_ms, id) = entry.ticket;
        if ticket != wire::TICKET_NONE {
            keys.push(key_name(prefix, hash_tag, &format_args!("r:{id:032x}")));
        }
        args.extend([entry.kind, entry.cost, entry.p1, entry.p2]);
        if let Some((role, lease)) = entry.role {
            args.extend([role, lease, entry.debt, ticket, ttl_ms]);
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
