//! Each algorithm's Lua function beside its Rust one: random quotas (with and without debt) and
//! random sequences of (time step, cost), with a reload that changes the quota halfway, settled on the memory store
//! and on the Redis store (a real `redis-server` this test starts); every verdict must match.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::sync::Arc;

use common::redis::RedisServer;
use proptest::prelude::*;
use tokio::runtime::Runtime;

use tollgate::clock::NANOS_PER_SEC;
use tollgate::quota::{Algorithm, Quota, Unit};
use tollgate::store::{
    BucketKey, Claim, Hit, MemoryStore, RedisOptions, RedisStore, RedisTls, Role, Store, When,
};

const T0: u64 = 1_800_000_000 * NANOS_PER_SEC;

/// A real Redis and the runtime its store runs on, for one test.
struct Lua {
    _server: RedisServer,
    runtime: Runtime,
    store: Arc<RedisStore>,
}

impl Lua {
    fn start() -> Self {
        let server = RedisServer::start();
        let runtime = Runtime::new().unwrap();
        let store = runtime.block_on(async {
            let store = RedisStore::start(&RedisOptions {
                urls: vec![server.url()],
                cluster: false,
                sentinel: None,
                prefix: "lua:".into(),
                timeout: std::time::Duration::from_secs(5),
                tls: RedisTls::default(),
            })
            .unwrap();
            assert!(store.wait_ready(std::time::Duration::from_secs(10)).await);
            store
        });
        Self {
            _server: server,
            runtime,
            store,
        }
    }
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

/// No debt, or some.
fn debt() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), 1u32..30]
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
    lua: &Lua,
    before: Option<Quota>,
    after: Option<Quota>,
    steps: &[(u64, u64)],
) -> Result<(), TestCaseError> {
    let (Some(before), Some(after)) = (before, after) else {
        // Not a quota its algorithm can enforce: nothing to compare.
        return Ok(());
    };
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
                quota,
                cost,
                rule_tag: 1,
            },
            role: Role {
                denies: true,
                quota_mode: false,
            },
            consistency: None,
            ticket: None,
        };
        let in_memory = memory.settle_now(&[claim], now);
        let in_redis = lua
            .runtime
            .block_on(lua.store.settle(&[claim], When::at(now)))
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

/// Runs `check` on `cases` random inputs from `strategy`.
fn run<S: Strategy>(
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> Result<(), String>
where
    S::Value: std::fmt::Debug,
{
    let config = ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    };
    proptest::test_runner::TestRunner::new(config)
        .run(&strategy, check)
        .map_err(|e| e.to_string())
}

#[test]
fn every_algorithm_in_lua_answers_as_in_rust() {
    let lua = Lua::start();
    let token_bucket = run(
        (
            (0u32..40, unit(), 0u32..60, debt()),
            (0u32..40, unit(), 0u32..60, debt()),
            steps(),
        ),
        |((rpu, unit, burst, debt), (rpu2, unit2, burst2, debt2), steps)| {
            let quota = |rpu, unit, burst, debt| {
                Quota::try_new(rpu, unit, Algorithm::TokenBucket, Some(burst))
                    .and_then(|quota| quota.try_with_debt(debt))
                    .ok()
            };
            same_answers(
                &lua,
                quota(rpu, unit, burst, debt),
                quota(rpu2, unit2, burst2, debt2),
                &steps,
            )
        },
    );
    assert_eq!(token_bucket, Ok(()), "token_bucket");
    for algorithm in [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::SlidingLog,
    ] {
        let windows = run(
            (
                (0u32..40, unit(), debt()),
                (0u32..40, unit(), debt()),
                steps(),
            ),
            |((rpu, unit, debt), (rpu2, unit2, debt2), steps)| {
                let quota = |rpu, unit, debt| {
                    Quota::try_new(rpu, unit, algorithm, None)
                        .and_then(|quota| quota.try_with_debt(debt))
                        .ok()
                };
                same_answers(
                    &lua,
                    quota(rpu, unit, debt),
                    quota(rpu2, unit2, debt2),
                    &steps,
                )
            },
        );
        assert_eq!(windows, Ok(()), "{algorithm}");
    }
}
