//! Bucket identities: a keyed 128-bit hash of what makes a bucket distinct.
//!
//! Hashing the domain, rule and request values directly (no string building) keeps the hot
//! path free of allocation, and a per-process random key means crafted descriptor values cannot
//! aim for collisions. 128 bits make accidental sharing of two buckets practically impossible.

use std::hash::Hasher;

use siphasher::sip128::{Hasher128, SipHasher13};

use crate::matcher::EntryView;
use crate::quota::{Algorithm, Quota};
use crate::rule::{KeyPart, Rule};

/// A bucket's identity in a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct BucketKey(pub u128);

/// Builds [`BucketKey`]s with this process's secret hash key.
#[derive(Debug, Clone)]
pub struct KeyBuilder {
    k0: u64,
    k1: u64,
}

/// What kind of bucket a key names; hashed first so kinds never collide.
#[repr(u8)]
enum Kind {
    Rule = 1,
    Override = 2,
    Overflow = 3,
    Reservation = 4,
}

impl KeyBuilder {
    /// A builder with a random secret key.
    pub fn random() -> Self {
        let mut seed = [0u8; 16];
        // Without OS randomness, a fixed key still works; it only loses collision resistance
        // against crafted input, so say so rather than refuse to start.
        if let Err(error) = getrandom::fill(&mut seed) {
            tracing::warn!(%error, "no OS randomness: bucket keys use a fixed hash key");
        }
        let (a, b) = seed.split_at(8);
        Self {
            k0: u64::from_le_bytes(a.try_into().unwrap_or_default()),
            k1: u64::from_le_bytes(b.try_into().unwrap_or_default()),
        }
    }

    /// A builder whose key is derived from `seed`, so every process given the same seed names
    /// a bucket alike (buckets shared through Redis). Collision resistance then rests on the
    /// 128-bit width alone, not on a secret.
    pub fn shared(seed: &str) -> Self {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(seed.as_bytes());
        let (a, rest) = digest.split_at(8);
        Self {
            k0: u64::from_le_bytes(a.try_into().unwrap_or_default()),
            k1: u64::from_le_bytes(rest[..8].try_into().unwrap_or_default()),
        }
    }

    /// The secret hash key, to name buckets alike after a restart (memory snapshots keep it).
    pub fn secret(&self) -> [u64; 2] {
        [self.k0, self.k1]
    }

    /// A builder with the secret hash key of an earlier one ([`KeyBuilder::secret`]).
    pub fn from_secret([k0, k1]: [u64; 2]) -> Self {
        Self { k0, k1 }
    }

    fn hasher(&self, kind: Kind, domain: &str, algorithm: Algorithm) -> SipHasher13 {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write_u8(kind as u8);
        write_str(&mut h, domain);
        h.write_u8(algorithm as u8);
        h
    }

    /// The bucket of `rule` for a request descriptor's `entries`.
    pub fn rule<E: EntryView>(
        &self,
        domain: &str,
        rule: &Rule,
        algorithm: Algorithm,
        entries: &[E],
    ) -> BucketKey {
        let mut h = self.hasher(Kind::Rule, domain, algorithm);
        write_str(&mut h, &rule.id);
        for (entry, part) in entries.iter().zip(&rule.key_parts) {
            write_str(&mut h, entry.key());
            match part {
                KeyPart::Value => write_str(&mut h, entry.value()),
                KeyPart::Shared(pattern) => write_str(&mut h, pattern),
            }
        }
        BucketKey(h.finish128().as_u128())
    }

    /// The bucket of a limit that Envoy sent with the request (`descriptor.limit`). Like the
    /// reference service, the limit's value is part of the identity.
    pub fn override_limit<E: EntryView>(
        &self,
        domain: &str,
        quota: &Quota,
        entries: &[E],
    ) -> BucketKey {
        let mut h = self.hasher(Kind::Override, domain, quota.algorithm());
        h.write_u32(quota.requests_per_unit());
        h.write_u64(quota.unit().seconds());
        h.write_usize(entries.len());
        for entry in entries {
            write_str(&mut h, entry.key());
            write_str(&mut h, entry.value());
        }
        BucketKey(h.finish128().as_u128())
    }

    /// The id of `request`'s reservation on `bucket` (`request` is a request's identity, such
    /// as Envoy's `x-request-id`).
    pub fn reservation(&self, bucket: BucketKey, request: &str) -> u128 {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write_u8(Kind::Reservation as u8);
        h.write_u128(bucket.0);
        write_str(&mut h, request);
        h.finish128().as_u128()
    }

    /// The shared bucket that new values of one limit fall into while the store is full:
    /// one per rule (`limit_id`), and one per domain and algorithm for limits sent in requests
    /// (`limit_id` empty), so their number is bounded by the configuration.
    pub fn overflow(&self, domain: &str, limit_id: &str, algorithm: Algorithm) -> BucketKey {
        let mut h = self.hasher(Kind::Overflow, domain, algorithm);
        write_str(&mut h, limit_id);
        BucketKey(h.finish128().as_u128())
    }
}

/// Length-prefixed, so ("ab","c") and ("a","bc") differ.
fn write_str(h: &mut SipHasher13, s: &str) {
    h.write_usize(s.len());
    h.write(s.as_bytes());
}

/// A map hasher for [`BucketKey`]s, which are already uniformly random: it folds the bits
/// instead of hashing them again.
#[derive(Debug, Default, Clone, Copy)]
pub struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 ^= (n as u64) ^ ((n >> 64) as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::Unit;

    fn rule(parts: Vec<KeyPart>) -> Rule {
        Rule {
            id: "d.k".into(),
            name: None,
            policy: crate::rule::Policy::Unlimited,
            shadow_mode: false,
            quota_mode: false,
            replaces: vec![],
            detailed_metric: false,
            value_to_metric: false,
            key_parts: parts,
            metadata: None,
            consistency: None,
            max_delay: None,
            tag: 0,
        }
    }

    #[test]
    fn values_separate_buckets_unless_shared() {
        let keys = KeyBuilder::random();
        let tb = Algorithm::TokenBucket;
        let own = rule(vec![KeyPart::Value]);
        let a = keys.rule("d", &own, tb, &[("k", "a")]);
        assert_eq!(a, keys.rule("d", &own, tb, &[("k", "a")]));
        assert_ne!(a, keys.rule("d", &own, tb, &[("k", "b")]));
        assert_ne!(a, keys.rule("e", &own, tb, &[("k", "a")]));
        assert_ne!(
            a,
            keys.rule("d", &own, Algorithm::FixedWindow, &[("k", "a")])
        );
        let shared = rule(vec![KeyPart::Shared("a*".into())]);
        assert_eq!(
            keys.rule("d", &shared, tb, &[("k", "a1")]),
            keys.rule("d", &shared, tb, &[("k", "a2")])
        );
    }

    #[test]
    fn overrides_are_keyed_by_their_limit() {
        let keys = KeyBuilder::random();
        let q1 = Quota::new(5, Unit::Second, Algorithm::TokenBucket);
        let q2 = Quota::new(6, Unit::Second, Algorithm::TokenBucket);
        let e = [("k", "v")];
        assert_ne!(
            keys.override_limit("d", &q1, &e),
            keys.override_limit("d", &q2, &e)
        );
        assert_ne!(
            keys.override_limit("d", &q1, &e),
            keys.overflow("d", "d.k", q1.algorithm())
        );
        assert_ne!(
            keys.override_limit("d", &q1, &[("ab", "c")]),
            keys.override_limit("d", &q1, &[("a", "bc")])
        );
    }
}
