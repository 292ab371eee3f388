//! One script call: its entries as the wire wants them, and the call itself as a future that
//! owns everything it needs, so a call given up on can still be awaited for its late answer.

use std::fmt::Write as _;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use redis::{RedisError, Script};
use smallvec::SmallVec;

use super::health::Failure;
use super::lanes;
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
    /// An entry on `hit`'s bucket for `cost` units at `now` (decide entries also carry a
    /// role).
    pub(super) fn of(hit: &Hit, cost: u64, role: Option<(u64, u64)>, now: Nanos) -> Self {
        let (kind, p1, p2) = wire::shape(&hit.quota, now);
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

    /// An entry its caller already decided (`allowed`), which only takes part in settling.
    pub(super) fn decided(allowed: bool, role: (u64, u64)) -> Self {
        Self {
            key: None,
            kind: wire::KIND_DECIDED,
            cost: 0,
            p1: u64::from(allowed),
            p2: 0,
            debt: 0,
            ticket: (wire::TICKET_NONE, 0, 0),
            role: Some(role),
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

    /// The lane of its bucket, if it has one.
    pub(super) fn lane(&self) -> Option<u64> {
        self.key.map(lanes::of)
    }
}

/// One request of a `decide.lua` call.
#[derive(Debug, Clone)]
pub(super) struct Request {
    /// The time its algorithms read.
    pub(super) now: Nanos,
    /// [`wire::MODE_SETTLE`], [`wire::MODE_PROVISIONAL`] or [`wire::MODE_UNDO`].
    pub(super) mode: u64,
    pub(super) entries: SmallVec<[Entry; 4]>,
}

/// Why a call has no reply: what failed, and Redis's message.
#[derive(Debug, Clone)]
pub(super) struct CallFailure {
    pub(super) failure: Failure,
    pub(super) message: String,
}

impl CallFailure {
    /// Classifies `error`: only what Redis itself answered is a server error; a refused or
    /// dropped connection is a connection failure.
    pub(super) fn of(error: &RedisError) -> Self {
        let failure = if error.is_timeout() {
            Failure::Timeout
        } else if error.is_io_error() || error.is_connection_dropped() {
            Failure::Connection
        } else {
            Failure::Server
        };
        Self {
            failure,
            message: error.to_string(),
        }
    }
}

/// A script call in flight: its reply, one integer array.
pub(super) type InFlight = BoxFuture<'static, Result<Vec<i64>, CallFailure>>;

/// The call of `script` on `entries` at `now` (a lease or a give-back; all in one slot on a
/// Cluster), over `conn`.
pub(super) fn call(
    conn: Conn,
    script: Arc<Script>,
    prefix: &str,
    entries: &[Entry],
    now: Nanos,
) -> InFlight {
    let mut invocation = Invocation::new(now);
    for entry in entries {
        invocation.entry(prefix, entry);
    }
    invocation.send(conn, script)
}

/// The `decide.lua` call of `requests` (a batch, decided in order; all in one slot on a
/// Cluster), over `conn`.
pub(super) fn decide(
    conn: Conn,
    script: Arc<Script>,
    prefix: &str,
    requests: &[Request],
) -> InFlight {
    let mut invocation = Invocation::new(requests.first().map_or(0, |r| r.now));
    for request in requests {
        invocation.args.extend([
            request.now / NANOS_PER_SEC,
            request.now % NANOS_PER_SEC,
            request.mode,
            request.entries.len() as u64,
        ]);
        for entry in &request.entries {
            invocation.entry(prefix, entry);
        }
    }
    invocation.send(conn, script)
}

/// A script call's keys and arguments, as they are built.
struct Invocation {
    keys: SmallVec<[String; 4]>,
    args: SmallVec<[u64; 40]>,
}

impl Invocation {
    /// An invocation whose header says `now`.
    fn new(now: Nanos) -> Self {
        let mut args = SmallVec::new();
        args.extend([now / NANOS_PER_SEC, now % NANOS_PER_SEC, wire::GRACE_MS]);
        Self {
            keys: SmallVec::new(),
            args,
        }
    }

    /// Adds `entry`: its keys (its bucket's, then its reservation's) and its arguments.
    fn entry(&mut self, prefix: &str, entry: &Entry) {
        if let Some(key) = entry.key {
            let lane = lanes::of(key);
            self.keys
                .push(key_name(prefix, lane, &format_args!("{:032x}", key.0)));
            let (ticket, _, id) = entry.ticket;
            if ticket != wire::TICKET_NONE {
                self.keys
                    .push(key_name(prefix, lane, &format_args!("r:{id:032x}")));
            }
        }
        self.args
            .extend([entry.kind, entry.cost, entry.p1, entry.p2]);
        if let Some((role, lease)) = entry.role {
            let (ticket, ttl_ms, _) = entry.ticket;
            self.args.extend([role, lease, entry.debt, ticket, ttl_ms]);
        }
    }

    /// Sends the call: the keys, and the numbers as one argument (see [`numbers`]).
    fn send(self, conn: Conn, script: Arc<Script>) -> InFlight {
        let Self { keys, args } = self;
        let numbers = numbers(&args);
        Box::pin(async move {
            let mut conn = conn;
            let mut invocation = script.prepare_invoke();
            for key in &keys {
                invocation.key(key.as_str());
            }
            invocation.arg(numbers);
            invocation
                .invoke_async(&mut conn)
                .await
                .map_err(|error| CallFailure::of(&error))
        })
    }
}

/// The script's numbers as its one argument: each a little-endian double, as `as f64` rounds it
/// (the double Lua's `tonumber` reads from its decimal digits), which the scripts read with
/// `struct.unpack` instead of converting an argument string per number.
pub(super) fn numbers(args: &[u64]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(args.len() * 8);
    for &arg in args {
        bytes.extend_from_slice(&(arg as f64).to_le_bytes());
    }
    bytes
}

/// A key's name: `{prefix}{<lane tag>}:<name>`.
pub(super) fn key_name(prefix: &str, lane: u64, name: &dyn std::fmt::Display) -> String {
    let mut key = String::with_capacity(prefix.len() + 48);
    let _ = write!(key, "{prefix}{{{}}}:{name}", lanes::tag(lane));
    key
}

/// A decide reply for one request: whether it was denied, and each entry's figures; `None` if
/// it is not the reply `entries` entries call for.
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

/// Splits a batch's reply into its requests' replies (`sizes`: each request's entry count);
/// `None` if it is not the reply those requests call for.
pub(super) fn split(reply: &[i64], sizes: &[usize]) -> Option<Vec<Vec<i64>>> {
    let mut rest = reply;
    let mut parts = Vec::with_capacity(sizes.len());
    for &entries in sizes {
        let len = 1 + entries * wire::REPLY_FIELDS;
        if rest.len() < len {
            return None;
        }
        let (part, tail) = rest.split_at(len);
        parts.push(part.to_vec());
        rest = tail;
    }
    rest.is_empty().then_some(parts)
}
