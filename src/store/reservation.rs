//! Reservations held in this process: what a `Reserve` ticket took, by id, until its `Settle`
//! gives it back or it expires.
//!
//! Ids come from request values (Envoy's `x-request-id`), so the book is bounded: past its
//! capacity a reservation is still charged but not held, and its settlement then charges the
//! real cost on top (conservative: never more admitted than the limit).

use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use super::key::{BucketKey, FoldHasher};
use crate::clock::Nanos;

/// One held reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reservation {
    /// The bucket it took from (the hit's own, or its overflow bucket).
    pub key: BucketKey,
    /// Units taken.
    pub units: u64,
    /// When, in whole milliseconds (windows give back only what still counts).
    pub taken_ms: u64,
    /// When it stops being held.
    pub expires: Nanos,
}

/// The reservations of one store.
#[derive(Debug)]
pub struct Book {
    held: DashMap<u128, Reservation, BuildHasherDefault<FoldHasher>>,
    max: usize,
    expired: AtomicU64,
    unheld: AtomicU64,
}

impl Book {
    /// An empty book that holds at most `max` reservations.
    pub fn new(max: usize) -> Self {
        Self {
            held: DashMap::default(),
            max,
            expired: AtomicU64::new(0),
            unheld: AtomicU64::new(0),
        }
    }

    /// Holds `reservation` under `id` (replacing one of the same id), if there is room;
    /// returns whether it is held.
    pub fn hold(&self, id: u128, reservation: Reservation) -> bool {
        if self.held.len() >= self.max && !self.held.contains_key(&id) {
            self.unheld.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.held.insert(id, reservation);
        true
    }

    /// Takes reservation `id` out of the book, if it is held and has not expired by `now`.
    pub fn take(&self, id: u128, now: Nanos) -> Option<Reservation> {
        let (_, reservation) = self.held.remove(&id)?;
        if reservation.expires <= now {
            self.expired.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(reservation)
    }

    /// Drops the reservations expired by `now` (their units stay spent); returns how many.
    pub fn expire(&self, now: Nanos) -> usize {
        let before = self.held.len();
        self.held.retain(|_, reservation| reservation.expires > now);
        let gone = before.saturating_sub(self.held.len());
        self.expired.fetch_add(gone as u64, Ordering::Relaxed);
        gone
    }

    /// Every reservation held, by id (for snapshots).
    pub fn export(&self) -> Vec<(u128, Reservation)> {
        self.held
            .iter()
            .map(|entry| (*entry.key(), *entry.value()))
            .collect()
    }

    /// Reservations held now.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Reservations that expired unsettled since start.
    pub fn expired(&self) -> u64 {
        self.expired.load(Ordering::Relaxed)
    }

    /// Reservations charged but not held because the book was full, since start.
    pub fn unheld(&self) -> u64 {
        self.unheld.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reservation(expires: Nanos) -> Reservation {
        Reservation {
            key: BucketKey(1),
            units: 5,
            taken_ms: 0,
            expires,
        }
    }

    #[test]
    fn held_until_taken_or_expired_and_bounded() {
        let book = Book::new(2);
        book.hold(1, reservation(100));
        book.hold(2, reservation(50));
        book.hold(3, reservation(100));
        assert_eq!((book.len(), book.unheld()), (2, 1), "full: not held");
        assert_eq!(book.take(1, 10), Some(reservation(100)));
        assert_eq!(book.take(1, 10), None, "settled once");
        assert_eq!(book.take(2, 50), None, "expired");
        book.hold(3, reservation(100));
        assert_eq!(book.export(), [(3, reservation(100))]);
        assert_eq!(book.expire(100), 1);
        assert_eq!((book.expired(), book.is_empty()), (2, true));
    }
}
