//! Reservations on the wire: two descriptor entries that tollgate reads and never matches.
//!
//! On the request path a descriptor carries `tollgate.reserve: <units>` (the estimate, for
//! example an LLM request's `max_tokens`) and `tollgate.request: <id>` (the request's identity,
//! Envoy's `x-request-id`): the estimate is taken, all or nothing, and held under the id. On the
//! stream-done path the same descriptor carries `tollgate.request: <id>` alone, and its cost is
//! the real usage: what the reservation holds is given back first, then the usage is charged
//! (with the limit's debt, if it runs one). So concurrent requests cannot all pass a check
//! against a nearly empty budget and overspend it together.

use std::borrow::Cow;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;

use super::RequestError;

/// The entry whose value is the units to reserve.
pub const RESERVE: &str = "tollgate.reserve";
/// The entry whose value identifies the request a reservation is for.
pub const REQUEST: &str = "tollgate.request";
/// The prefix of entries tollgate reads itself; they take no part in matching.
const PREFIX: &str = "tollgate.";

/// What a descriptor asks of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted<'r> {
    /// Reserve `estimate` units for `request`.
    Reserve {
        /// The request's identity.
        request: &'r str,
        /// Units to reserve.
        estimate: u64,
    },
    /// Settle `request`'s reservation: give it back, then charge the descriptor's cost.
    Settle {
        /// The request's identity.
        request: &'r str,
    },
}

/// A descriptor as matched: its entries without tollgate's own, and what it asks of a
/// reservation.
#[derive(Debug, Clone)]
pub struct Read<'r> {
    /// The entries to match (borrowed unless tollgate's entries were taken out).
    pub entries: Cow<'r, [Entry]>,
    /// The reservation it asks for, if any.
    pub wanted: Option<Wanted<'r>>,
}

/// Whether `key` names one of tollgate's own entries.
pub fn is_own(key: &str) -> bool {
    key.starts_with(PREFIX)
}

/// Reads descriptor `index`: takes tollgate's entries out and checks them.
pub fn read(index: usize, descriptor: &RateLimitDescriptor) -> Result<Read<'_>, RequestError> {
    let entries = &descriptor.entries;
    if !entries.iter().any(|entry| is_own(&entry.key)) {
        return Ok(Read {
            entries: Cow::Borrowed(entries),
            wanted: None,
        });
    }
    let bad = |reason: String| RequestError::BadReservation { index, reason };
    let (mut reserve, mut request) = (None, None);
    for entry in entries.iter().filter(|entry| is_own(&entry.key)) {
        let slot = match entry.key.as_str() {
            RESERVE => &mut reserve,
            REQUEST => &mut request,
            other => {
                return Err(bad(format!(
                    "unknown entry '{other}' (tollgate reads {RESERVE} and {REQUEST})"
                )));
            }
        };
        if slot.replace(entry.value.as_str()).is_some() {
            return Err(bad(format!("'{}' given twice", entry.key)));
        }
    }
    let request = match request {
        Some("") => return Err(bad(format!("{REQUEST} is empty"))),
        Some(request) => request,
        None => {
            return Err(bad(format!(
                "{RESERVE} needs {REQUEST} (the request's id, e.g. x-request-id)"
            )));
        }
    };
    let wanted = match reserve {
        None => Wanted::Settle { request },
        Some(units) => Wanted::Reserve {
            request,
            estimate: units.parse().map_err(|_| {
                bad(format!(
                    "{RESERVE} '{units}' is not a whole number of units"
                ))
            })?,
        },
    };
    Ok(Read {
        entries: Cow::Owned(
            entries
                .iter()
                .filter(|entry| !is_own(&entry.key))
                .cloned()
                .collect(),
        ),
        wanted: Some(wanted),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(key, value)| Entry {
                    key: (*key).into(),
                    value: (*value).into(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn own_entries_are_read_and_taken_out() {
        let plain = descriptor(&[("tenant", "a")]);
        let read = super::read(0, &plain).unwrap();
        assert!(matches!(read.entries, Cow::Borrowed(_)));
        assert_eq!(read.wanted, None);

        let reserving = descriptor(&[(REQUEST, "r1"), ("tenant", "a"), (RESERVE, "100")]);
        let read = super::read(0, &reserving).unwrap();
        assert_eq!(read.entries.len(), 1);
        assert_eq!(
            read.wanted,
            Some(Wanted::Reserve {
                request: "r1",
                estimate: 100
            })
        );
        let settling = descriptor(&[("tenant", "a"), (REQUEST, "r1")]);
        assert_eq!(
            super::read(0, &settling).unwrap().wanted,
            Some(Wanted::Settle { request: "r1" })
        );
    }

    #[test]
    fn bad_entries_are_named() {
        for (entries, expected) in [
            (vec![(RESERVE, "10")], "needs tollgate.request"),
            (
                vec![(RESERVE, "ten"), (REQUEST, "r")],
                "'ten' is not a whole number",
            ),
            (vec![(REQUEST, "")], "tollgate.request is empty"),
            (vec![(REQUEST, "a"), (REQUEST, "b")], "given twice"),
            (vec![("tollgate.x", "1")], "unknown entry 'tollgate.x'"),
        ] {
            let error = super::read(3, &descriptor(&entries))
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{error}");
            assert!(error.starts_with("descriptors[3]"), "{error}");
        }
    }
}
