//! Where a bucket's keys live in Redis: one of [`LANES`] hash tags, picked by the bucket.
//!
//! Every key is `{prefix}{<lane tag>}:<name>`. A lane's tag is chosen so that the lanes' Cluster
//! slots are spread evenly over the 16 384 slots (lane `n` sits at slot `n × 16384 / LANES`):
//! whatever the cluster's shape, each master serves the lanes of its slot ranges, in proportion
//! to them, so one hot domain spreads over every master. A bucket's lane comes from its key, so
//! every replica puts it in the same place. Few lanes keep concurrent requests sharing a slot,
//! which lets their script calls be batched (keys of one script call must share a slot).

use std::sync::OnceLock;

use redis::cluster_routing::Slot;

use crate::store::key::BucketKey;

/// How many lanes keys are spread over.
pub const LANES: u64 = 64;

/// Slots in a Redis Cluster.
const SLOTS: u64 = 16_384;

/// The lane of a bucket.
pub fn of(key: BucketKey) -> u64 {
    // The key is a keyed hash: its low bits are as good as random.
    key.0 as u64 % LANES
}

/// A lane's hash tag (what goes between the braces).
pub fn tag(lane: u64) -> &'static str {
    &table()[(lane % LANES) as usize].0
}

/// A lane's Cluster slot, as the cluster client computes it.
pub fn slot(lane: u64) -> Slot {
    table()[(lane % LANES) as usize].1
}

/// Each lane's tag and slot, found once: the first tag `l<lane>.<n>` (n = 0, 1, …) whose slot
/// is the lane's.
fn table() -> &'static [(String, Slot)] {
    static TABLE: OnceLock<Vec<(String, Slot)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..LANES)
            .map(|lane| {
                let wanted = Slot::new((lane * SLOTS / LANES) as u16)
                    .unwrap_or_else(|| unreachable!("lane slots are below {SLOTS}"));
                // CRC16 reaches every slot within 2^16 candidates.
                (0u32..)
                    .map(|n| format!("l{lane}.{n}"))
                    .find(|tag| Slot::for_key(tag) == wanted)
                    .map(|tag| (tag, wanted))
                    .unwrap_or_else(|| unreachable!("CRC16 reaches every slot"))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_lane_sits_at_its_own_evenly_spaced_slot() {
        for lane in 0..LANES {
            let wanted = Slot::new((lane * SLOTS / LANES) as u16).unwrap();
            assert_eq!(Slot::for_key(format!("{{{}}}:x", tag(lane))), wanted);
            assert_eq!(slot(lane), wanted);
        }
        // A 3-master cluster's default ranges get 22, 21 and 21 lanes.
        let ranges = [(0, 5460), (5461, 10922), (10923, 16383)];
        let per_master: Vec<usize> = ranges
            .iter()
            .map(|&(low, high)| {
                (0..LANES)
                    .filter(|lane| (low..=high).contains(&(lane * SLOTS / LANES)))
                    .count()
            })
            .collect();
        assert_eq!(per_master, [22, 21, 21]);
    }

    #[test]
    fn buckets_spread_over_every_lane() {
        let mut seen = [0u32; LANES as usize];
        for n in 0..6_400u128 {
            seen[of(BucketKey(
                n.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835),
            )) as usize] += 1;
        }
        assert!(seen.iter().all(|&count| count > 50), "{seen:?}");
    }
}
