//! A memory store's buckets as plain data, to save and restore (crash-recovery snapshots).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::mapref::entry::Entry;

use super::{Bucket, LogBucket, MemoryStore};
use crate::quota::{Algorithm, Quota};
use crate::store::key::BucketKey;
use crate::store::reservation::Reservation;

/// One saved bucket.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Image {
    /// The bucket's key.
    pub key: u128,
    /// Its rule's tag (0 for limits sent in requests, whose key names their quota).
    pub rule_tag: u32,
    /// The quota it was counted under when saved, for rule buckets: restored only under the
    /// same quota.
    pub quota: Option<Quota>,
    /// Whether it counts against the bucket cap (overflow buckets do not).
    pub counted: bool,
    /// What it holds.
    pub saved: Saved,
}

/// A bucket's state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Saved {
    /// A state word, its algorithm and the scale it was written at.
    Word {
        /// The state.
        state: u64,
        /// The algorithm that reads it.
        algorithm: Algorithm,
        /// Its scale (see `algorithm::scale`).
        scale: u64,
    },
    /// A sliding log: its unit and the times of its hits, in ms.
    Log {
        /// The unit in ms.
        unit_ms: u64,
        /// The hits.
        hits: Vec<u64>,
    },
}

impl MemoryStore {
    /// Every bucket, with the quota of its rule taken from `quotas` (by tag).
    pub fn export(&self, quotas: &HashMap<u32, Quota>) -> Vec<Image> {
        let quota = |tag: u32| quotas.get(&tag).copied();
        let words = self.buckets.iter().map(|entry| Image {
            key: entry.key().0,
            rule_tag: entry.tag,
            quota: quota(entry.tag),
            counted: entry.counted,
            saved: Saved::Word {
                state: entry.state.load(Ordering::Acquire),
                algorithm: entry.algorithm,
                scale: entry.scale,
            },
        });
        let logs = self.logs.iter().map(|entry| Image {
            key: entry.key().0,
            rule_tag: entry.tag,
            quota: quota(entry.tag),
            counted: entry.slots > 0,
            saved: Saved::Log {
                unit_ms: entry.unit_ms,
                hits: entry.log.iter().copied().collect(),
            },
        });
        words.chain(logs).collect()
    }

    /// Restores `images` whose quota is still their rule's in `quotas` (limits sent in
    /// requests always: their key names their quota), within the bucket cap. Existing buckets
    /// are kept. Returns how many were restored.
    pub fn import(&self, images: Vec<Image>, quotas: &HashMap<u32, Quota>) -> usize {
        let mut restored = 0;
        for image in images {
            let unchanged = image.rule_tag == 0
                || image
                    .quota
                    .is_some_and(|saved| quotas.get(&image.rule_tag) == Some(&saved));
            // The cap's slots it holds: a log one per 12 hits it can log, besides its own.
            let slots = match (&image.saved, image.quota) {
                (Saved::Log { .. }, Some(quota)) => super::log_slots(&quota),
                (Saved::Log { hits, .. }, None) => 1 + hits.len() / super::HITS_PER_SLOT,
                (Saved::Word { .. }, _) => 1,
            };
            if !unchanged || (image.counted && !self.reserve_slots(slots)) {
                continue;
            }
            let key = BucketKey(image.key);
            let placed = match image.saved {
                Saved::Word {
                    state,
                    algorithm,
                    scale,
                } => match self.buckets.entry(key) {
                    Entry::Vacant(slot) => {
                        slot.insert(Bucket {
                            state: AtomicU64::new(state),
                            scale,
                            tag: image.rule_tag,
                            algorithm,
                            counted: image.counted,
                        });
                        true
                    }
                    Entry::Occupied(_) => false,
                },
                Saved::Log { unit_ms, hits } => match self.logs.entry(key) {
                    Entry::Vacant(slot) => {
                        slot.insert(LogBucket {
                            log: hits.into(),
                            unit_ms,
                            tag: image.rule_tag,
                            slots: if image.counted { slots } else { 0 },
                        });
                        true
                    }
                    Entry::Occupied(_) => false,
                },
            };
            match (placed, image.counted) {
                (true, _) => restored += 1,
                (false, true) => self.release_slots(slots),
                (false, false) => {}
            }
        }
        restored
    }
}

impl MemoryStore {
    /// Every reservation held, by id.
    pub fn export_reservations(&self) -> Vec<(u128, Reservation)> {
        self.reservations.export()
    }

    /// Holds again the `saved` reservations whose bucket is in the store (restored), so their
    /// settlement gives back what they did not use; returns how many. A reservation whose
    /// bucket was not restored (its limit changed) is dropped: that bucket starts full.
    pub fn import_reservations(&self, saved: Vec<(u128, Reservation)>) -> usize {
        let mut held = 0;
        for (id, reservation) in saved {
            let key = reservation.key;
            let restored = self.buckets.contains_key(&key) || self.logs.contains_key(&key);
            if restored && self.reservations.hold(id, reservation) {
                held += 1;
            }
        }
        held
    }
}
