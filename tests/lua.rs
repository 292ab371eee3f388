//! Each algorithm's Lua function beside its Rust one: random quotas and random sequences of
//! (time step, cost), with a reload that changes the quota halfway, settled on the memory store
//! and on the Redis store (a real `redis-server` this test starts); every verdict must match.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::sync::{Arc, OnceLock};

use common::redis::RedisServer;
use proptest::prelude::*;
use tokio::runtime::Runtime;

use tollgate::clock::NANOS_PER_SEC;
use tollgate::quota::{Algorithm, Quota, Unit};
use tollgate::store::{
    BucketKey, Claim, Hit, MemoryStore, RedisOptions, RedisStore, RedisTls, Role, Store,
};

const T0: u64 = 1_800_000_000 * NANOS_PER_SEC;

/// One Redis for the whole binary, and the runtime its store runs on.
struct Shared {
    _server: RedisServer,
    runtime: Runtime,
    store: Arc<RedisStore>,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let server = RedisServer::start();
        let runtime = Runtime::new().unwrap();
        let store = runtime.block_on(async {
            let store = RedisStore::start(&RedisOptions {
                urls: vec![server.url()],
                cluster: false,
                prefix: "lua:".into(),
                timeout: std::time::Duration::from_secs(5),
                tls: RedisTls::default(),
            })
            .unwrap();
            assert!(store.wait_ready(std::time::Duration::from_secs(10)).await);
            store
        });
        Shared {
            _server: server,
            runtime,
            store,
        }
    })
}

/// A bucket key no other case uses.
fn fresh_key() -> BucketKey {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let run = u128::from(std::process::id()) << 64;
    BucketKey(run | u128::from(NEXT.fetch_add(1, Ordering::Relaxed)))
}

fn unit() -> impl Strategy<Value = Unit> {
    prop::sample::select(vec![Unit::Second, Unit::Minute, Unit::Hour, Unit::Day])
}

fn steps() -> impl Strategy<Value = Vec<(u64, u64)>> {
    let advance = prop_oneof![
        Just(0u64),
        0..2 * NANOS_PER_SEC,
        0..120 * NANOS_PER_SEC,
        0..7_200 * NANOS_PER_SEC,
    ];
    prop::collection::vec((advance, prop_oneof![Just(0u64), Just(1), 0..6u64]), 1..30)
}

/// Settles `steps` on `before`, then on `after` (a reload), on both stores; every outcome
/// must be the same.
fn same_answers(
    before: Option<Quota>,
    after: Option<Quota>,
    steps: &[(u64, u64)],
) -> Result<(), TestCaseError> {
    let (Some(before), Some(after)) = (before, after) else {
        // Not a quota its algorithm can enforce: nothing to compare.
        return Ok(());
    };
    let shared = shared();
    let memory = MemoryStore::new(10);
    let key = fresh_key();
    let mut now = T0;
    for (index, &(advance, cost)) in steps.iter().enumerate() {
        let quota = if index < steps.len() / 2 {
            before
        } else {
            after
        };
        now += advance;
        let claim = Claim {
            hit: Hit {
                key,
                overflow: BucketKey(0),
                hash_tag: 7,
                quota,
                cost,
                rule_tag: 1,
            },
            role: Role {
                denies: true,
                quota_mode: false,
            },
            consistency: None,
        };
        let in_memory = memory.settle_now(&[claim], now);
        let in_redis = shared
            .runtime
            .block_on(shared.store.settle(&[claim], now))
            .unwrap();
        prop_assert_eq!(
            &in_memory,
            &in_redis,
            "step {} ({:?}, cost {}): memory (left), lua (right)",
            index,
            quota,
            cost
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn token_bucket(
        rpu in 0u32..40, unit in unit(), burst in 0u32..60,
        rpu2 in 0u32..40, unit2 in unit(), burst2 in 0u32..60,
        steps in steps(),
    ) {
        let quota = |rpu, unit, burst| Quota::try_new(rpu, unit, Algorithm::TokenBucket, Some(burst)).ok();
        same_answers(quota(rpu, unit, burst), quota(rpu2, unit2, burst2), &steps)?;
    }

    #[test]
    fn fixed_window(rpu in 0u32..40, unit in unit(), rpu2 in 0u32..40, unit2 in unit(), steps in steps()) {
        let quota = |rpu, unit| Quota::try_new(rpu, unit, Algorithm::FixedWindow, None).ok();
        same_answers(quota(rpu, unit), quota(rpu2, unit2), &steps)?;
    }

    #[test]
    fn sliding_window(rpu in 0u32..40, unit in unit(), rpu2 in 0u32..40, unit2 in unit(), steps in steps()) {
        let quota = |rpu, unit| Quota::try_new(rpu, unit, Algorithm::SlidingWindow, None).ok();
        same_answers(quota(rpu, unit), quota(rpu2, unit2), &steps)?;
    }

    #[test]
    fn sliding_log(rpu in 0u32..40, unit in unit(), rpu2 in 0u32..40, unit2 in unit(), steps in steps()) {
        let quota = |rpu, unit| Quota::try_new(rpu, unit, Algorithm::SlidingLog, None).ok();
        same_answers(quota(rpu, unit), quota(rpu2, unit2), &steps)?;
    }
}
