//! The numbers Rust and the Lua scripts exchange, in one place.
//!
//! Each script is sent as these constants (as Lua locals), the shared prelude
//! (`lua/prelude.lua`: the algorithms) and its own body (`lua/decide.lua`, `lua/lease.lua`,
//! `lua/give_back.lua`), so the scripts use the names and never restate a number. The prelude's
//! header documents the same list; a test reads it back and compares. The numbers a call sends
//! (header, requests, entries: the counts below are of numbers) travel as one argument of
//! little-endian doubles (`call::numbers`).

use crate::algorithm::{Verdict, fixed_window, sliding_log, sliding_window, token_bucket};
use crate::quota::{Algorithm, Quota};

/// Arguments before the entries: now (whole seconds), now (nanoseconds within the second), the
/// idle grace in milliseconds.
pub const HEADER_ARGS: usize = 3;
/// Arguments before each request's entries in `decide.lua`: now (whole seconds), now
/// (nanoseconds within the second), the mode, the number of entries.
pub const REQUEST_FIELDS: usize = 4;
/// Mode: settle the request in this call, all or nothing.
pub const MODE_SETTLE: u64 = 0;
/// Mode: part of a request whose buckets span Cluster slots: take what conforms, as if admitted.
pub const MODE_PROVISIONAL: u64 = 1;
/// Mode: give back what a provisional call took (each entry's cost) and report checks.
pub const MODE_UNDO: u64 = 2;
/// An entry decided by the caller (a cached-mode lease); it only takes part in settling.
pub const KIND_DECIDED: u64 = 0;
/// Token bucket: p1 nanoseconds per token, p2 capacity.
pub const KIND_TOKEN_BUCKET: u64 = 1;
/// Fixed window: p1 window seconds, p2 the limit.
pub const KIND_FIXED_WINDOW: u64 = 2;
/// Sliding window: p1 window milliseconds, p2 the limit.
pub const KIND_SLIDING_WINDOW: u64 = 3;
/// Sliding log: p1 window milliseconds, p2 the limit.
pub const KIND_SLIDING_LOG: u64 = 4;
/// Calendar window (a fixed window of calendar days, weeks, months or years): p1 the end of
/// the window that holds the request's time (whole seconds since the epoch), p2 the limit.
pub const KIND_CALENDAR_WINDOW: u64 = 5;
/// Role bit: the entry's denial denies the request.
pub const ROLE_DENIES: u64 = 1;
/// Role bit: the entry is a quota-mode limit.
pub const ROLE_QUOTA: u64 = 2;
/// Ticket: none.
pub const TICKET_NONE: u64 = 0;
/// Ticket: hold what the entry takes under its reservation key (the next key).
pub const TICKET_RESERVE: u64 = 1;
/// Ticket: give back what the reservation key holds before deciding.
pub const TICKET_SETTLE: u64 = 2;
/// Fields per entry of `decide.lua`: kind, cost, p1, p2, role, lease, debt, ticket, the
/// reservation's time to live in ms.
pub const DECIDE_FIELDS: usize = 9;
/// Fields per entry of `lease.lua` and `give_back.lua`: kind, cost, p1, p2.
pub const LEASE_FIELDS: usize = 4;
/// Numbers per entry in a reply: allowed, remaining, reset_after, retry_after (-1: never),
/// refunded, units taken, units a settled reservation gave back.
pub const REPLY_FIELDS: usize = 7;

/// Every constant the scripts use, by name.
pub const CONSTANTS: [(&str, u64); 19] = [
    ("HEADER_ARGS", HEADER_ARGS as u64),
    ("REQUEST_FIELDS", REQUEST_FIELDS as u64),
    ("MODE_SETTLE", MODE_SETTLE),
    ("MODE_PROVISIONAL", MODE_PROVISIONAL),
    ("MODE_UNDO", MODE_UNDO),
    ("KIND_DECIDED", KIND_DECIDED),
    ("KIND_TOKEN_BUCKET", KIND_TOKEN_BUCKET),
    ("KIND_FIXED_WINDOW", KIND_FIXED_WINDOW),
    ("KIND_SLIDING_WINDOW", KIND_SLIDING_WINDOW),
    ("KIND_SLIDING_LOG", KIND_SLIDING_LOG),
    ("KIND_CALENDAR_WINDOW", KIND_CALENDAR_WINDOW),
    ("ROLE_DENIES", ROLE_DENIES),
    ("ROLE_QUOTA", ROLE_QUOTA),
    ("TICKET_NONE", TICKET_NONE),
    ("TICKET_RESERVE", TICKET_RESERVE),
    ("TICKET_SETTLE", TICKET_SETTLE),
    ("DECIDE_FIELDS", DECIDE_FIELDS as u64),
    ("LEASE_FIELDS", LEASE_FIELDS as u64),
    ("REPLY_FIELDS", REPLY_FIELDS as u64),
];

/// The most a key lives past the time its bucket is whole again, in milliseconds (sent as the
/// header's third argument).
pub const GRACE_MS: u64 = 1000;

/// The algorithms every script shares.
pub const PRELUDE: &str = include_str!("lua/prelude.lua");

/// The scripts, by purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Decide one request's entries and settle it.
    Decide,
    /// Lease slices for cached mode.
    Lease,
    /// Give unspent leased units back.
    GiveBack,
}

impl Purpose {
    /// The script's own part.
    pub fn body(self) -> &'static str {
        match self {
            Self::Decide => include_str!("lua/decide.lua"),
            Self::Lease => include_str!("lua/lease.lua"),
            Self::GiveBack => include_str!("lua/give_back.lua"),
        }
    }

    /// The whole script text: the constants, the prelude and the body.
    pub fn script(self) -> String {
        let mut text = String::new();
        for (name, value) in CONSTANTS {
            text.push_str(&format!("local {name} = {value}\n"));
        }
        text.push_str(PRELUDE);
        text.push_str(self.body());
        text
    }
}

/// An algorithm's kind and parameters (p1, p2) for `quota` at `now`.
pub fn shape(quota: &Quota, now: crate::clock::Nanos) -> (u64, u64, u64) {
    match quota.algorithm() {
        Algorithm::FixedWindow if quota.calendar().is_some() => (
            KIND_CALENDAR_WINDOW,
            fixed_window::window_end(quota, now),
            u64::from(quota.requests_per_unit()),
        ),
        Algorithm::TokenBucket if quota.requests_per_unit() == 0 || quota.burst() == 0 => {
            (KIND_TOKEN_BUCKET, quota.period_nanos(), 0)
        }
        Algorithm::TokenBucket => (
            KIND_TOKEN_BUCKET,
            token_bucket::token_nanos(quota),
            u64::from(quota.burst()),
        ),
        Algorithm::FixedWindow => (
            KIND_FIXED_WINDOW,
            quota.period_secs(),
            u64::from(quota.requests_per_unit()),
        ),
        Algorithm::SlidingWindow => (
            KIND_SLIDING_WINDOW,
            sliding_window::unit_ms(quota),
            u64::from(quota.requests_per_unit()),
        ),
        Algorithm::SlidingLog => (
            KIND_SLIDING_LOG,
            sliding_log::unit_ms(quota),
            u64::from(quota.requests_per_unit()),
        ),
    }
}

/// A decide entry's role bits.
pub fn role(denies: bool, quota_mode: bool) -> u64 {
    u64::from(denies) * ROLE_DENIES + u64::from(quota_mode) * ROLE_QUOTA
}

/// What a script answered for one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    /// The verdict, as the memory store would give it (its `state` is not used).
    pub verdict: Verdict,
    /// It conformed but the request was denied, so nothing was taken; the verdict is a check.
    pub refunded: bool,
    /// Units taken from the bucket (for a lease: the units granted).
    pub taken: u64,
    /// Units a settled reservation gave back before the entry was decided.
    pub released: u64,
}

/// Reads one entry's [`REPLY_FIELDS`] numbers.
pub fn figures(values: &[i64]) -> Figures {
    let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
    Figures {
        verdict: Verdict {
            allowed: values[0] == 1,
            state: 0,
            remaining: unsigned(values[1]),
            reset_after: unsigned(values[2]),
            retry_after: u64::try_from(values[3]).ok(),
        },
        refunded: values[4] == 1,
        taken: unsigned(values[5]),
        released: unsigned(values[6]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `NAME = value` lines of the prelude's header comment.
    fn documented() -> Vec<(String, u64)> {
        PRELUDE
            .lines()
            .take_while(|line| line.starts_with("--"))
            .filter_map(|line| {
                let (name, rest) = line.trim_start_matches('-').trim().split_once(" = ")?;
                let value = rest.split_whitespace().next()?.parse().ok()?;
                Some((name.to_owned(), value))
            })
            .collect()
    }

    #[test]
    fn the_prelude_header_documents_every_wire_constant_as_rust_defines_it() {
        let mut expected: Vec<(String, u64)> = CONSTANTS
            .iter()
            .map(|(name, value)| ((*name).to_owned(), *value))
            .collect();
        let mut seen = documented();
        expected.sort();
        seen.sort();
        assert_eq!(seen, expected);
    }

    #[test]
    fn each_script_gets_every_constant_once_from_rust() {
        for purpose in [Purpose::Decide, Purpose::Lease, Purpose::GiveBack] {
            let script = purpose.script();
            for (name, _) in CONSTANTS {
                assert_eq!(
                    script.matches(&format!("local {name} =")).count(),
                    1,
                    "{purpose:?}: {name} is defined once, by Rust"
                );
            }
        }
        assert!(Purpose::Decide.script().contains("DECIDE_FIELDS"));
        assert!(Purpose::Lease.script().contains("LEASE_FIELDS"));
        assert!(Purpose::GiveBack.script().contains("LEASE_FIELDS"));
    }
}
