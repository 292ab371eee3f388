//! The Redis store (`--store redis`) against real `redis-server` processes started by the
//! tests: strict mode decides exactly like the memory store (over gRPC, and on random request
//! sequences), state is shared by replicas and survives restarts, replicas together never admit
//! more than the limit (strict and cached), the failure policies answer while Redis is down or
//! slow and global counting comes back by itself, and Redis Cluster works.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::redis::{Certificates, RedisCluster, RedisSentinel, RedisServer};
use common::{
    RedisHandle, RedisSetup, Setup, T0, TestServer, codes, descriptor, one, request, reset_secs,
    start_in, start_with,
};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;

use tollgate::clock::ManualClock;
use tollgate::config::source::SourceFile;
use tollgate::config::{Options, RateLimitConfig, compile};
use tollgate::decision::Limiter;
use tollgate::rule::Consistency;
use tollgate::store::redis::lanes;
use tollgate::store::{FailurePolicy, RedisOptions, RedisStore, RedisTls, Sentinel};

const OK: i32 = Code::Ok as i32;
const OVER: i32 = Code::OverLimit as i32;
const SEC: Duration = Duration::from_secs(1);

/// How long recovery may take: the probe's backoff tops out at 2 s.
const RECOVERY: Duration = Duration::from_secs(10);

/// The semantics exercised over gRPC, as in tests/rls.rs.
use common::SEMANTICS as CONFIG;

/// `(overall, remaining of the first status, its reset in seconds)`.
fn first(response: &RateLimitResponse) -> (i32, u32, f64) {
    let status = &response.statuses[0];
    (
        response.overall_code,
        status.limit_remaining,
        reset_secs(status),
    )
}

/// One line of `/metrics`: the value of the series named exactly `name` (no labels).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

async fn metrics(s: &TestServer) -> String {
    let (status, text) = s.admin_get("/metrics").await;
    assert_eq!(status, 200);
    text
}

/// A server on `yaml` counting in Redis with `redis`.
async fn start_redis(yaml: &str, redis: RedisSetup) -> TestServer {
    let s = start_with(yaml, redis.setup()).await;
    assert!(
        !s.redis_store().is_degraded(),
        "redis did not answer within 5 s of the server's start"
    );
    s
}

fn with_prefix(mut setup: RedisSetup, prefix: &str) -> RedisSetup {
    setup.prefix = prefix.to_owned();
    setup
}

/// Every tollgate key in `redis` under `prefix`, checked for shape: `{prefix}{<lane tag>}:<32
/// hex>`, the lane its bucket's, with a TTL. Returns the keys and their hash tags.
fn check_keys(redis: &RedisServer, prefix: &str, max_ttl_ms: i64) -> Vec<(String, String)> {
    let keys = redis.keys(&format!("{prefix}*"));
    keys.iter()
        .filter_map(|key| {
            let rest = key.strip_prefix(prefix).unwrap();
            let (tag, bucket) = rest
                .strip_prefix('{')
                .and_then(|r| r.split_once("}:"))
                .unwrap_or_else(|| panic!("key {key:?} has no {{hash tag}}"));
            let hex = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit());
            assert!(hex(bucket, 32), "key {key:?}");
            let lane = u128::from_str_radix(bucket, 16).unwrap() as u64 % lanes::LANES;
            assert_eq!(tag, lanes::tag(lane), "key {key:?} is in its bucket's lane");
            let ttl = redis.pttl(key);
            // -2: expired between the scan and PTTL (short limits); -1 would be no TTL at all.
            if ttl == -2 {
                return None;
            }
            assert!(
                ttl > 0 && ttl <= max_ttl_ms,
                "key {key:?} has PTTL {ttl} (at most {max_ttl_ms} expected)"
            );
            Some((key.clone(), tag.to_owned()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Strict mode over gRPC: keys, timings and global shadow mode. (tests/rls.rs runs the whole
//    behaviour suite on memory, strict and cached.)

#[tokio::test]
async fn strict_mode_keys_are_prefixed_tagged_by_lane_and_expire() {
    let redis = RedisServer::start();
    let mut s = start_redis(
        CONFIG,
        with_prefix(RedisSetup::strict(&redis.url()), "sem:"),
    )
    .await;
    let calls = [
        one("user", "alice"),
        one("window", "w"),
        one("bursty", "b"),
        one("files", "a.pdf"),
        one("quota_a", "q"),
        one("free", "x"),
    ];
    let count = calls.len();
    for descriptors in calls {
        assert_eq!(s.call(request("test", descriptors)).await.overall_code, OK);
    }
    let store = s.redis_store();
    assert_eq!((store.errors(), store.timeouts()), (0, 0));
    assert!(!store.is_degraded());
    // Each call Redis answered is timed: at most one per request.
    let text = metrics(&s).await;
    let timed = metric(&text, "tollgate_redis_call_duration_seconds_count");
    assert!(
        (1.0..=count as f64).contains(&timed),
        "{timed} timed calls for {count} requests"
    );
    assert!(metric(&text, "tollgate_redis_call_duration_seconds_sum") > 0.0);
    assert_eq!(
        metric(&text, "tollgate_redis_unanswered_undo_units_total"),
        0.0
    );

    // Keys: prefixed, tagged with their bucket's lane (so a domain spreads over a Cluster), a
    // TTL of at most a minute and the grace.
    let keys = check_keys(&redis, "sem:", 61_000 + 1_000);
    assert_eq!(keys.len(), 5, "one per counted descriptor: {keys:?}");
    s.stop().await;
}

#[tokio::test]
async fn global_shadow_mode_counts_in_redis_but_never_denies() {
    let redis = RedisServer::start();
    let setup = Setup {
        shadow_mode: true,
        ..RedisSetup::strict(&redis.url()).setup()
    };
    let mut s = start_with(CONFIG, setup).await;
    for remaining in [2, 1, 0, 0, 0] {
        let r = s.call(request("test", one("user", "u"))).await;
        assert_eq!(
            (r.overall_code, r.statuses[0].limit_remaining),
            (OK, remaining)
        );
    }
    assert_eq!(
        s.call(request("test", one("blocked", "u")))
            .await
            .overall_code,
        OK
    );
    assert_eq!(
        redis.keys("tollgate:*").len(),
        1,
        "only the user bucket took"
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Random request sequences with reloads: memory, strict and cached give identical answers.

const EQUIVALENCE: &str = r#"
domain: eq
descriptors:
  - key: tb
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: burst
    rate_limit: {unit: minute, requests_per_unit: 10, burst: 20}
  - key: hourly
    rate_limit: {unit: hour, requests_per_unit: 100, burst: 7}
  - key: daily
    rate_limit: {unit: day, requests_per_unit: 3}
  - key: fw
    rate_limit: {unit: minute, requests_per_unit: 4, algorithm: fixed_window}
  - key: fwh
    rate_limit: {unit: hour, requests_per_unit: 50, algorithm: fixed_window}
  - key: sw
    rate_limit: {unit: minute, requests_per_unit: 6, algorithm: sliding_window}
  - key: swh
    rate_limit: {unit: hour, requests_per_unit: 40, algorithm: sliding_window}
  - key: sl
    rate_limit: {unit: minute, requests_per_unit: 5, algorithm: sliding_log}
  - key: slh
    rate_limit: {unit: hour, requests_per_unit: 30, algorithm: sliding_log}
  - key: zero
    rate_limit: {unit: minute, requests_per_unit: 0}
  - key: zerofw
    rate_limit: {unit: minute, requests_per_unit: 0, algorithm: fixed_window}
  - key: shadow
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: qa
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: qb
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 3, algorithm: fixed_window}
  - key: free
    rate_limit: {unlimited: true}
  - key: dtb
    rate_limit: {unit: minute, requests_per_unit: 6, debt: true, max_debt: 4}
  - key: dfw
    rate_limit: {unit: minute, requests_per_unit: 4, algorithm: fixed_window, debt: true}
  - key: dsw
    rate_limit: {unit: minute, requests_per_unit: 5, algorithm: sliding_window, debt: true}
  - key: dsl
    rate_limit: {unit: minute, requests_per_unit: 5, algorithm: sliding_log, debt: true}
  - key: cal
    rate_limit: {unit: day, requests_per_unit: 9, calendar: true, timezone: Europe/Berlin}
  - key: q30
    rate_limit: {unit: second, unit_multiplier: 30, requests_per_unit: 4, algorithm: sliding_window}
"#;

/// xorshift64*: a small deterministic generator, so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

fn random_request(rng: &mut Rng) -> RateLimitRequest {
    const KEYS: [&str; 23] = [
        "tb", "burst", "hourly", "daily", "fw", "fwh", "sw", "swh", "sl", "slh", "zero", "zerofw",
        "shadow", "qa", "qb", "free", "nothing", "dtb", "dfw", "dsw", "dsl", "cal", "q30",
    ];
    let count = 1 + rng.below(3) as usize;
    let mut descriptors: Vec<RateLimitDescriptor> = Vec::new();
    while descriptors.len() < count {
        let d = {
            let key = *rng.pick(&KEYS);
            let value = *rng.pick(&["a", "b"]);
            let mut d = descriptor(&[(key, value)]);
            if rng.below(10) == 0 {
                // A limit sent by Envoy: its own bucket, in any known domain.
                d.limit = Some(RateLimitOverride {
                    requests_per_unit: *rng.pick(&[0, 1, 3, 10]),
                    unit: *rng.pick(&[1, 2, 3]),
                });
            }
            if rng.below(5) == 0 {
                d.hits_addend = Some(UInt64Value {
                    value: *rng.pick(&[0, 0, 1, 2, 4, 25, u64::MAX]),
                });
            }
            d
        };
        // One bucket at most once per request: see
        // `a_denied_request_naming_one_bucket_twice_reports_it_alike` for why.
        if !descriptors
            .iter()
            .any(|other| other.entries == d.entries && other.limit == d.limit)
        {
            descriptors.push(d);
        }
    }
    RateLimitRequest {
        domain: "eq".into(),
        descriptors,
        hits_addend: *rng.pick(&[0, 0, 0, 1, 1, 2, 3]),
    }
}

fn random_advance(rng: &mut Rng) -> Duration {
    match rng.below(20) {
        0..=7 => Duration::ZERO,
        8..=13 => Duration::from_nanos(rng.below(2_000_000_000)),
        14..=18 => Duration::from_millis(rng.below(90_000)),
        _ => Duration::from_secs(rng.below(7_200)),
    }
}

/// EQUIVALENCE as a reload changes it: 0 as is; 1 rates changed; 2 bursts changed; 3 units
/// changed; 4 algorithms changed; 5 limits removed (last: a removed limit that comes back
/// continues its count in Redis but starts fresh in memory, the README's one exception).
fn equivalence(variant: u64) -> String {
    let changes: &[(&str, &str)] = match variant {
        1 => &[
            (
                "tb\n    rate_limit: {unit: minute, requests_per_unit: 5}",
                "tb\n    rate_limit: {unit: minute, requests_per_unit: 9}",
            ),
            (
                "requests_per_unit: 100, burst: 7}",
                "requests_per_unit: 40, burst: 7}",
            ),
            (
                "requests_per_unit: 4, algorithm: fixed_window}",
                "requests_per_unit: 6, algorithm: fixed_window}",
            ),
            (
                "requests_per_unit: 6, algorithm: sliding_window}",
                "requests_per_unit: 3, algorithm: sliding_window}",
            ),
            (
                "requests_per_unit: 5, algorithm: sliding_log}",
                "requests_per_unit: 8, algorithm: sliding_log}",
            ),
            (
                "qa\n    quota_mode: true\n    rate_limit: {unit: minute, requests_per_unit: 2}",
                "qa\n    quota_mode: true\n    rate_limit: {unit: minute, requests_per_unit: 4}",
            ),
        ],
        2 => &[
            (
                "requests_per_unit: 10, burst: 20}",
                "requests_per_unit: 10, burst: 5}",
            ),
            (
                "requests_per_unit: 100, burst: 7}",
                "requests_per_unit: 100, burst: 30}",
            ),
            ("debt: true, max_debt: 4}", "debt: true, max_debt: 9}"),
        ],
        3 => &[
            (
                "tb\n    rate_limit: {unit: minute,",
                "tb\n    rate_limit: {unit: hour,",
            ),
            (
                "{unit: day, requests_per_unit: 3}",
                "{unit: hour, requests_per_unit: 3}",
            ),
            (
                "{unit: minute, requests_per_unit: 4, algorithm: fixed_window}",
                "{unit: second, requests_per_unit: 4, algorithm: fixed_window}",
            ),
            (
                "{unit: minute, requests_per_unit: 6, algorithm: sliding_window}",
                "{unit: hour, requests_per_unit: 6, algorithm: sliding_window}",
            ),
            (
                "{unit: hour, requests_per_unit: 40, algorithm: sliding_window}",
                "{unit: minute, requests_per_unit: 40, algorithm: sliding_window}",
            ),
            (
                "{unit: minute, requests_per_unit: 5, algorithm: sliding_log}",
                "{unit: hour, requests_per_unit: 5, algorithm: sliding_log}",
            ),
        ],
        4 => &[
            (
                "tb\n    rate_limit: {unit: minute, requests_per_unit: 5}",
                "tb\n    rate_limit: {unit: minute, requests_per_unit: 5, algorithm: sliding_window}",
            ),
            (
                "{unit: minute, requests_per_unit: 4, algorithm: fixed_window}",
                "{unit: minute, requests_per_unit: 4}",
            ),
            (
                "{unit: minute, requests_per_unit: 6, algorithm: sliding_window}",
                "{unit: minute, requests_per_unit: 6, algorithm: fixed_window}",
            ),
        ],
        5 => &[
            (
                "  - key: tb\n    rate_limit: {unit: minute, requests_per_unit: 5}\n",
                "",
            ),
            (
                "  - key: sw\n    rate_limit: {unit: minute, requests_per_unit: 6, algorithm: sliding_window}\n",
                "",
            ),
            (
                "  - key: qa\n    quota_mode: true\n    rate_limit: {unit: minute, requests_per_unit: 2}\n",
                "",
            ),
        ],
        _ => &[],
    };
    let mut yaml = EQUIVALENCE.to_owned();
    for (from, to) in changes {
        assert!(
            yaml.contains(from),
            "variant {variant}: {from:?} not in EQUIVALENCE"
        );
        yaml = yaml.replace(from, to);
    }
    yaml
}

fn compiled(yaml: &str) -> RateLimitConfig {
    let file = SourceFile {
        path: "eq.yaml".into(),
        text: yaml.into(),
    };
    compile(&[file], &Options::default()).unwrap()
}

/// A limiter per store on `yaml`, sharing `clock`: memory, then strict and cached, each on its
/// own key prefix in the Redis `base` reaches (failure policy `allow`: the test checks nothing
/// fell back).
async fn every_store(
    base: &RedisSetup,
    yaml: &str,
    prefix: &str,
    clock: &Arc<ManualClock>,
) -> Vec<(&'static str, Arc<Limiter>)> {
    let mut strict = with_prefix(base.clone(), &format!("{prefix}s:"));
    strict.failure = FailurePolicy::Allow;
    let cached = RedisSetup {
        consistency: Consistency::Cached,
        ..with_prefix(strict.clone(), &format!("{prefix}c:"))
    };
    let mut limiters = vec![(
        "memory",
        common::limiter(compiled(yaml), &Setup::default(), clock).await,
    )];
    for (name, setup) in [("strict", strict), ("cached", cached)] {
        let limiter = common::limiter(compiled(yaml), &setup.setup(), clock).await;
        assert!(
            !RedisHandle::of(limiter.clone()).is_degraded(),
            "{name}: redis did not answer"
        );
        limiters.push((name, limiter));
    }
    limiters
}

#[tokio::test]
async fn random_sequences_with_reloads_decide_alike_on_every_store() {
    let redis = RedisServer::start();
    decide_alike(&RedisSetup::strict(&redis.url()), 4).await;
}

/// The same on a 3-master Redis Cluster, where a request's buckets often span slots (settled
/// in two phases).
#[tokio::test]
async fn random_sequences_decide_alike_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    decide_alike(&cluster_setup(&cluster), 2).await;
}

/// Random request sequences with reloads, `rounds` of them: memory, strict and cached (on the
/// Redis `base` reaches) must answer every request alike.
async fn decide_alike(base: &RedisSetup, rounds: u64) {
    let seed = std::env::var("TOLLGATE_EQ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let steps = std::env::var("TOLLGATE_EQ_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    // Several short sequences, each on fresh buckets (its own key prefix) from T0.
    for round in 0..rounds {
        let seed = seed.wrapping_add(round.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
        let mut rng = Rng(seed);
        let clock = Arc::new(ManualClock::at(T0));
        let limiters = every_store(base, EQUIVALENCE, &format!("eq{round}"), &clock).await;
        let mut variant = 0;
        for step in 0..steps {
            // Reloads: now and then one of the changed variants (or back to the original);
            // the removal comes last (see `equivalence`).
            let reload = if step == steps * 5 / 6 {
                Some(5)
            } else if step < steps * 5 / 6 && rng.below(25) == 0 {
                Some(rng.below(5))
            } else {
                None
            };
            if let Some(next) = reload {
                variant = next;
                for (_, limiter) in &limiters {
                    limiter.swap_config(compiled(&equivalence(variant)));
                }
            }
            clock.advance(random_advance(&mut rng));
            let req = random_request(&mut rng);
            let expected = limiters[0].1.decide(&req).await.unwrap();
            for (name, limiter) in &limiters[1..] {
                let got = limiter.decide(&req).await.unwrap();
                assert_eq!(
                    expected, got,
                    "seed {seed} (TOLLGATE_EQ_SEED={seed}), step {step}, config variant {variant}: memory (left) and {name} (right) differ on {req:?}"
                );
            }
        }
        for (name, limiter) in &limiters[1..] {
            let store = RedisHandle::of(limiter.clone());
            assert_eq!(
                (store.errors(), store.timeouts()),
                (0, 0),
                "seed {seed}: every {name} decision came from redis"
            );
        }
    }
}

/// A denied request gives back everything it took, so each of its statuses shows the bucket
/// untouched by it, even when two descriptors name the same bucket.
#[tokio::test]
async fn a_denied_request_naming_one_bucket_twice_reports_it_untouched() {
    let redis = RedisServer::start();
    let yaml = "domain: eq\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 3}\n  - key: blocked\n    rate_limit: {unit: minute, requests_per_unit: 0}\n";
    let clock = Arc::new(ManualClock::at(T0));
    let req = request(
        "eq",
        vec![
            descriptor(&[("user", "a")]),
            descriptor(&[("user", "a")]),
            descriptor(&[("blocked", "x")]),
        ],
    );
    for (name, limiter) in
        every_store(&RedisSetup::strict(&redis.url()), yaml, "twice", &clock).await
    {
        let decision = limiter.decide(&req).await.unwrap();
        assert_eq!(
            remaining(&decision),
            vec![3, 3, 0],
            "limit_remaining per status, {name}"
        );
        assert_eq!(
            decision.overall,
            tollgate::decision::Code::OverLimit,
            "{name}"
        );
    }
}

fn remaining(decision: &tollgate::decision::Decision) -> Vec<u32> {
    decision.statuses.iter().map(|s| s.remaining).collect()
}

/// Token buckets count exactly up to a refill of 100 years in Redis too; past 2^53 ns
/// (104 days) of refill, Redis reports times to within a microsecond (README).
#[tokio::test]
async fn long_token_buckets_count_exactly_in_redis() {
    let redis = RedisServer::start();
    let yaml = "domain: eq\ndescriptors:\n  - key: k\n    rate_limit: {unit: year, requests_per_unit: 11}\n";
    let clock = Arc::new(ManualClock::at(T0));
    let limiters = every_store(&RedisSetup::strict(&redis.url()), yaml, "long", &clock).await;
    let req = request("eq", one("k", "v"));
    let brief = |d: &tollgate::decision::Decision| (d.overall, d.statuses[0].remaining);
    let reset = |d: &tollgate::decision::Decision| d.statuses[0].reset_after.unwrap();
    for step in 0..12 {
        let m = limiters[0].1.decide(&req).await.unwrap();
        for (name, limiter) in &limiters[1..] {
            let r = limiter.decide(&req).await.unwrap();
            assert_eq!(
                brief(&m),
                brief(&r),
                "request {step} of 12 at one instant: memory (left), {name} (right)"
            );
            assert!(
                reset(&m).abs_diff(reset(&r)) < 1_000,
                "request {step}: reset {} in memory, {} in {name}",
                reset(&m),
                reset(&r)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. State lives in Redis: a restarted tollgate continues the count.

#[tokio::test]
async fn a_restarted_server_continues_the_count_in_redis() {
    let redis = RedisServer::start();
    let setup = with_prefix(RedisSetup::strict(&redis.url()), "restart:");
    let mut first_life = start_redis(CONFIG, setup.clone()).await;
    for remaining in [2, 1] {
        let r = first_life.call(request("test", one("user", "r"))).await;
        assert_eq!(first(&r), (OK, remaining, f64::from(3 - remaining) * 20.0));
    }
    first_life.stop().await;

    let mut second_life = start_redis(CONFIG, setup).await;
    let r = second_life.call(request("test", one("user", "r"))).await;
    assert_eq!(first(&r), (OK, 0, 60.0));
    let r = second_life.call(request("test", one("user", "r"))).await;
    assert_eq!(first(&r), (OVER, 0, 60.0));
    second_life.stop().await;

    // Another prefix is another set of buckets.
    let mut elsewhere = start_redis(
        CONFIG,
        with_prefix(RedisSetup::strict(&redis.url()), "other:"),
    )
    .await;
    let r = elsewhere.call(request("test", one("user", "r"))).await;
    assert_eq!(first(&r), (OK, 2, 20.0));
    elsewhere.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4 and 5. Replicas sharing one Redis.

const HOURLY: &str =
    "domain: c\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: LIMIT}\n";

fn hourly(limit: u32) -> String {
    HOURLY.replace("LIMIT", &limit.to_string())
}

/// Sends `calls` requests on key `k` from `tasks` concurrent tasks on each replica; returns
/// how many each replica admitted. Any gRPC error fails the test.
async fn load(replicas: &[TestServer], tasks: usize, calls: usize) -> Vec<u64> {
    let mut handles = Vec::new();
    for (index, replica) in replicas.iter().enumerate() {
        for _ in 0..tasks {
            let mut client = replica.client.clone();
            handles.push(tokio::spawn(async move {
                let mut admitted = 0u64;
                for _ in 0..calls {
                    let r = client
                        .should_rate_limit(request("c", one("k", "same")))
                        .await
                        .expect("gRPC OK")
                        .into_inner();
                    admitted += u64::from(r.overall_code == OK);
                }
                (index, admitted)
            }));
        }
    }
    let mut per_replica = vec![0; replicas.len()];
    for handle in handles {
        let (index, admitted) = handle.await.unwrap();
        per_replica[index] += admitted;
    }
    per_replica
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_replicas_admit_exactly_the_limit_together() {
    let redis = RedisServer::start();
    replicas_admit_exactly_the_limit(RedisSetup::strict(&redis.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_replicas_admit_exactly_the_limit_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    replicas_admit_exactly_the_limit(cluster_setup(&cluster)).await;
}

/// Three replicas counting in the Redis `setup` reaches, loaded together on one key, admit
/// exactly its limit.
async fn replicas_admit_exactly_the_limit(mut setup: RedisSetup) {
    // Deny on failure, and check below that nothing failed: the count is Redis's alone.
    setup.failure = FailurePolicy::Deny;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(start_redis(&hourly(300), setup.clone()).await);
    }
    let per_replica = load(&replicas, 4, 100).await;
    assert_eq!(
        per_replica.iter().sum::<u64>(),
        300,
        "admitted per replica: {per_replica:?}"
    );
    for replica in &mut replicas {
        let store = replica.redis_store();
        assert_eq!((store.errors(), store.timeouts()), (0, 0));
        let mut check = request("c", one("k", "same"));
        check.descriptors[0].hits_addend = Some(UInt64Value { value: 0 });
        let r = replica.call(check).await;
        // Exactly at the limit: a check is OK, nothing is left.
        assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 0));
    }
    for replica in replicas {
        replica.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_replicas_admit_the_limit_and_never_more() {
    const LIMIT: u64 = 1000;
    const DENIED_IN_A_ROW: u64 = 20;
    let redis = RedisServer::start();
    let mut setup = RedisSetup::cached(&redis.url());
    setup.failure = FailurePolicy::Deny;
    // Cold start: three replicas with no lease, loaded at once.
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(start_redis(&hourly(LIMIT as u32), setup.clone()).await);
    }
    let admitted = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for (index, replica) in replicas.iter().enumerate() {
        for _ in 0..3 {
            let mut client = replica.client.clone();
            let admitted = admitted.clone();
            // Each task hammers until it has seen its replica deny DENIED_IN_A_ROW times in
            // a row (the clocks stand still, so nothing refills).
            handles.push(tokio::spawn(async move {
                let mut streak = 0;
                for _ in 0..5_000 {
                    let r = client
                        .should_rate_limit(request("c", one("k", "same")))
                        .await
                        .expect("gRPC OK")
                        .into_inner();
                    if r.overall_code == OK {
                        admitted.fetch_add(1, Ordering::Relaxed);
                        streak = 0;
                    } else {
                        streak += 1;
                        if streak == DENIED_IN_A_ROW {
                            return index;
                        }
                    }
                }
                panic!("replica {index} kept admitting");
            }));
        }
    }
    for handle in handles {
        handle.await.unwrap();
    }
    // Every replica now denies, sequentially too.
    for replica in &mut replicas {
        for _ in 0..DENIED_IN_A_ROW {
            assert_eq!(
                replica
                    .call(request("c", one("k", "same")))
                    .await
                    .overall_code,
                OVER
            );
        }
    }
    let admitted = admitted.load(Ordering::Relaxed);
    assert!(
        admitted <= LIMIT,
        "cached replicas admitted {admitted}, over the limit of {LIMIT}"
    );
    assert!(
        admitted >= LIMIT * 95 / 100,
        "cached replicas admitted {admitted}, more than 5 % under the limit of {LIMIT}"
    );
    for replica in &replicas {
        let store = replica.redis_store();
        assert_eq!((store.errors(), store.timeouts()), (0, 0));
        let text = metrics(replica).await;
        assert_eq!(metric(&text, "tollgate_redis_degraded"), 0.0);
        assert!(metric(&text, "tollgate_redis_leases") >= 1.0, "{text}");
    }
    for replica in replicas {
        replica.stop().await;
    }
}

#[tokio::test]
async fn cached_leases_come_out_of_redis_and_go_back_at_shutdown() {
    let redis = RedisServer::start();
    let cached = RedisSetup::cached(&redis.url());
    let strict = RedisSetup::strict(&redis.url());
    let mut spender = start_redis(&hourly(1000), cached).await;
    let mut observer = start_redis(&hourly(1000), strict).await;
    let mut check = request("c", one("k", "same"));
    check.descriptors[0].hits_addend = Some(UInt64Value { value: 0 });

    let r = spender.call(request("c", one("k", "same"))).await;
    assert_eq!(r.overall_code, OK);
    // One slice (1 % of 1000) leased from Redis, one unit of it spent.
    let r = observer.call(check.clone()).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 990));
    assert_eq!(
        metric(&metrics(&spender).await, "tollgate_redis_leases"),
        1.0
    );
    spender.stop().await;
    // The nine unspent units went back.
    let r = observer.call(check).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 999));
    observer.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 6. Redis down: the failure policies, health, metrics, and recovery by itself.

const DOWN: &str = r#"
domain: test
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: free
    rate_limit: {unlimited: true}
"#;

/// Kills `redis` under a server using `policy`, checks the answers with `while_down`, then
/// restarts it and waits until the server counts in Redis again.
async fn redis_down(policy: FailurePolicy, while_down: impl AsyncFnOnce(&mut TestServer)) {
    let mut redis = RedisServer::start();
    let mut setup = RedisSetup::strict(&redis.url());
    setup.failure = policy;
    setup.timeout = Duration::from_millis(500);
    let mut s = start_redis(DOWN, setup).await;
    assert_eq!(s.admin_get("/healthcheck").await, (200, "OK".to_owned()));
    let r = s.call(request("test", one("user", "before"))).await;
    assert_eq!(first(&r), (OK, 2, 20.0));
    assert_eq!(redis.keys("tollgate:*").len(), 1);

    redis.kill();
    while_down(&mut s).await;
    let store = s.redis_store();
    assert!(store.is_degraded());
    let name = match policy {
        FailurePolicy::Local => "local",
        FailurePolicy::Allow => "allow",
        FailurePolicy::Deny => "deny",
    };
    let (status, body) = s.admin_get("/healthcheck").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        format!("OK\ndegraded: redis unavailable, answering by --redis-failure {name}\n")
    );
    let text = metrics(&s).await;
    assert_eq!(metric(&text, "tollgate_redis_degraded"), 1.0);
    assert!(
        metric(&text, "tollgate_redis_errors_total") >= 1.0,
        "{text}"
    );

    // Back on the same port, empty: the server finds it by itself.
    redis.restart();
    let end = Instant::now() + RECOVERY;
    while s.admin_get("/healthcheck").await.1 != "OK" {
        assert!(
            Instant::now() < end,
            "still degraded {RECOVERY:?} after redis came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = s.call(request("test", one("user", "after"))).await;
    assert_eq!(first(&r), (OK, 2, 20.0));
    // Under `local`, the first answer after the outage also recorded in Redis what the local
    // shares admitted meanwhile (the `before` and `new` buckets).
    let owed = if policy == FailurePolicy::Local { 2 } else { 0 };
    assert_eq!(
        redis.keys("tollgate:*").len(),
        1 + owed,
        "the decision after recovery is counted in redis"
    );
    assert_eq!(metric(&metrics(&s).await, "tollgate_redis_degraded"), 0.0);
    s.stop().await;
}

#[tokio::test]
async fn redis_down_with_local_answers_from_memory_and_recovers() {
    redis_down(FailurePolicy::Local, async |s: &mut TestServer| {
        // The local bucket starts from what Redis last said (2 left; one replica, so the
        // whole of it), and is enforced.
        for remaining in [1, 0] {
            let r = s.call(request("test", one("user", "before"))).await;
            assert_eq!(first(&r), (OK, remaining, f64::from(3 - remaining) * 20.0));
        }
        let r = s.call(request("test", one("user", "before"))).await;
        assert_eq!(first(&r), (OVER, 0, 60.0));
        // A key Redis never reported starts from a whole share.
        let r = s.call(request("test", one("user", "new"))).await;
        assert_eq!(first(&r), (OK, 2, 20.0));
        let r = s.call(request("test", one("free", "x"))).await;
        assert_eq!(r.overall_code, OK);
    })
    .await;
}

#[tokio::test]
async fn what_local_admits_during_an_outage_is_recorded_in_redis_after_it() {
    let redis = RedisServer::start();
    let mut setup = RedisSetup::strict(&redis.url());
    setup.timeout = Duration::from_millis(200);
    let mut s = start_redis(DOWN, setup).await;
    let r = s.call(request("test", one("user", "u"))).await;
    assert_eq!(first(&r), (OK, 2, 20.0));
    // Paused, not killed: Redis keeps its counts and answers again where it stopped.
    redis.pause();
    let end = Instant::now() + RECOVERY;
    let mut probes = 0;
    while !s.redis_store().is_degraded() {
        assert!(
            Instant::now() < end,
            "a paused redis never tripped the store"
        );
        s.call(request("test", one("user", &format!("probe{probes}"))))
            .await;
        probes += 1;
    }
    // Local: the share of what Redis last said, 2 left.
    for remaining in [1, 0] {
        let r = s.call(request("test", one("user", "u"))).await;
        assert_eq!(first(&r), (OK, remaining, f64::from(3 - remaining) * 20.0));
    }
    redis.resume();
    assert!(s.redis_store().wait_ready(RECOVERY).await);
    // Any answered request records the outage's admissions; then the key is spent in Redis.
    s.call(request("test", one("user", "other"))).await;
    let r = s.call(request("test", one("user", "u"))).await;
    assert_eq!(
        (r.overall_code, r.statuses[0].limit_remaining),
        (OVER, 0),
        "1 counted before the outage and 2 during it: the 3 per minute are spent"
    );
    s.stop().await;
}

#[tokio::test]
async fn redis_down_with_allow_admits_everything_and_recovers() {
    redis_down(FailurePolicy::Allow, async |s: &mut TestServer| {
        for _ in 0..10 {
            let r = s.call(request("test", one("user", "before"))).await;
            assert_eq!(codes(&r), (OK, vec![OK]));
        }
    })
    .await;
}

#[tokio::test]
async fn redis_down_with_deny_denies_limited_descriptors_and_recovers() {
    redis_down(FailurePolicy::Deny, async |s: &mut TestServer| {
        for _ in 0..3 {
            let r = s.call(request("test", one("user", "new"))).await;
            assert_eq!(codes(&r), (OVER, vec![OVER]));
        }
        // Unlimited and unmatched descriptors have nothing to count: still OK.
        let r = s
            .call(request(
                "test",
                vec![
                    descriptor(&[("free", "x")]),
                    descriptor(&[("nothing", "y")]),
                ],
            ))
            .await;
        assert_eq!(codes(&r), (OK, vec![OK, OK]));
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 7. Slow Redis: answered by the policy within the timeout, never a gRPC error.

#[tokio::test]
async fn slow_redis_is_answered_by_the_policy_within_the_timeout() {
    let redis = RedisServer::start();
    let mut setup = RedisSetup::strict(&redis.url());
    setup.timeout = Duration::from_millis(50);
    let mut s = start_redis(DOWN, setup).await;
    // Warm up (the first call loads the script) until a call is answered by Redis in time.
    let store = s.redis_store();
    let end = Instant::now() + Duration::from_secs(5);
    for warm in 0.. {
        let timeouts = store.timeouts();
        let r = s
            .call(request("test", one("user", &format!("warm{warm}"))))
            .await;
        assert_eq!(r.overall_code, OK);
        if store.timeouts() == timeouts && !store.is_degraded() {
            break;
        }
        assert!(Instant::now() < end, "redis never answered within 50 ms");
        assert!(store.wait_ready(RECOVERY).await);
    }
    let timeouts_before = store.timeouts();

    let mut sleeper = redis.cli_spawn(&["DEBUG", "SLEEP", "0.5"]);
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut calls = 0;
    // Until a call has met the sleeping Redis and been answered by the policy.
    while store.timeouts() == timeouts_before {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "no call ever timed out: did DEBUG SLEEP run?"
        );
        let before = Instant::now();
        let r = s
            .call(request("test", one("user", &format!("slow{calls}"))))
            .await;
        let took = before.elapsed();
        assert_eq!(r.overall_code, OK, "policy local admits a fresh bucket");
        slowest = slowest.max(took);
        calls += 1;
    }
    // And the calls after it, while Redis still sleeps, fail fast.
    while sleeper.try_wait().unwrap().is_none() && store.is_degraded() {
        let before = Instant::now();
        let r = s
            .call(request("test", one("user", &format!("slow{calls}"))))
            .await;
        slowest = slowest.max(before.elapsed());
        assert_eq!(r.overall_code, OK);
        calls += 1;
    }
    assert!(
        slowest < Duration::from_millis(400),
        "the slowest of {calls} answers took {slowest:?}, against a 50 ms timeout and a 500 ms sleep"
    );
    let _ = sleeper.wait();

    // Back to global counting once Redis is awake.
    let end = Instant::now() + RECOVERY;
    while s.admin_get("/healthcheck").await.1 != "OK" {
        assert!(
            Instant::now() < end,
            "still degraded after DEBUG SLEEP ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let keys_before = redis.keys("tollgate:*").len();
    let r = s.call(request("test", one("user", "awake"))).await;
    assert_eq!(first(&r), (OK, 2, 20.0));
    assert_eq!(redis.keys("tollgate:*").len(), keys_before + 1);
    let text = metrics(&s).await;
    assert!(metric(&text, "tollgate_redis_timeouts_total") >= 1.0);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 8. Redis Cluster.

/// Strict counting on `cluster`.
fn cluster_setup(cluster: &RedisCluster) -> RedisSetup {
    RedisSetup {
        urls: cluster.urls(),
        cluster: true,
        ..RedisSetup::strict("unused")
    }
}

/// A server on six domains `d0` … `d5`, each with the same `descriptors` (YAML list lines).
async fn serve_six_domains(descriptors: &str, setup: RedisSetup) -> (TestServer, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let domains: Vec<String> = (0..6).map(|n| format!("d{n}")).collect();
    for domain in &domains {
        std::fs::write(
            dir.path().join(format!("{domain}.yaml")),
            format!("domain: {domain}\ndescriptors:\n{descriptors}"),
        )
        .unwrap();
    }
    (start_in(dir, setup.setup()).await, domains)
}

#[tokio::test]
async fn redis_cluster_counts_exactly_with_keys_spread_over_masters() {
    let cluster = RedisCluster::start();
    let setup = RedisSetup {
        failure: FailurePolicy::Deny,
        prefix: "cl:".to_owned(),
        ..cluster_setup(&cluster)
    };
    let (mut s, domains) = serve_six_domains(
        "  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 5}\n  - key: w\n    rate_limit: {unit: hour, requests_per_unit: 2, algorithm: fixed_window}\n",
        setup,
    )
    .await;
    assert!(!s.redis_store().is_degraded(), "the cluster never answered");
    for domain in &domains {
        for remaining in (0..5).rev() {
            let r = s.call(request(domain, one("k", "v"))).await;
            assert_eq!(
                (r.overall_code, r.statuses[0].limit_remaining),
                (OK, remaining)
            );
        }
        let r = s.call(request(domain, one("k", "v"))).await;
        assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OVER, 0));
        // Two keys of one request, in one slot or in two (settled in two phases): all or
        // nothing still holds.
        let both = request(
            domain,
            vec![descriptor(&[("w", "v")]), descriptor(&[("k", "other")])],
        );
        assert_eq!(codes(&s.call(both.clone()).await), (OK, vec![OK, OK]));
        assert_eq!(codes(&s.call(both.clone()).await), (OK, vec![OK, OK]));
        let r = s.call(both).await;
        assert_eq!(codes(&r), (OVER, vec![OVER, OK]));
        assert_eq!(r.statuses[1].limit_remaining, 3, "untouched by the denial");
    }
    let store = s.redis_store();
    assert_eq!((store.errors(), store.timeouts()), (0, 0));

    // Each key is served by the node that holds its slot; keys are spread over several
    // masters.
    let mut holders = std::collections::BTreeSet::new();
    let mut total = 0;
    for (index, node) in cluster.nodes.iter().enumerate() {
        for key in node.keys("cl:*") {
            let slot = cluster.keyslot(&key);
            assert_eq!(cluster.node_of_slot(slot), index, "{key} on the wrong node");
            assert!(node.pttl(&key) > 0, "{key} has no TTL");
            holders.insert(index);
            total += 1;
        }
    }
    assert_eq!(total, domains.len() * 3, "k=v, k=other and w=v per domain");
    assert!(
        holders.len() >= 2,
        "all {} domains landed on one master",
        domains.len()
    );
    s.stop().await;
}

/// One master of the cluster down: calls for its slots fail, the store stays degraded (calls
/// are answered by the policy at once, without trying Redis) until that master answers again,
/// then counting resumes there by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_down_keeps_the_store_degraded_until_it_is_back() {
    let mut cluster = RedisCluster::start();
    let setup = RedisSetup {
        timeout: Duration::from_millis(500),
        prefix: "down:".to_owned(),
        ..cluster_setup(&cluster)
    };
    let (mut s, domains) = serve_six_domains(
        "  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 1000}\n",
        setup,
    )
    .await;
    let store = s.redis_store();
    assert!(!store.is_degraded(), "the cluster never answered");
    // Which master holds which domain: call each once and see where its key appears.
    let mut placed = Vec::new();
    for domain in &domains {
        let before: Vec<usize> = cluster
            .nodes
            .iter()
            .map(|n| n.keys("down:*").len())
            .collect();
        assert_eq!(
            s.call(request(domain, one("k", "v"))).await.overall_code,
            OK
        );
        let node = (0..cluster.nodes.len())
            .find(|&i| cluster.nodes[i].keys("down:*").len() > before[i])
            .unwrap();
        placed.push((domain.clone(), node));
    }
    let (victim_domain, victim) = placed[0].clone();
    let survivor = placed.iter().find(|(_, node)| *node != victim).cloned();

    cluster.nodes[victim].kill();
    let errors_before = store.errors();
    let calls = 30;
    for _ in 0..calls {
        let r = s.call(request(&victim_domain, one("k", "v"))).await;
        assert_eq!(r.overall_code, OK, "answered from memory (policy local)");
    }
    let tried = store.errors() - errors_before;
    let degraded_while_down = store.is_degraded();
    let health_while_down = s.admin_get("/healthcheck").await.1;

    // The master comes back on its port with its node id and slots (from nodes-N.conf).
    cluster.nodes[victim].restart();
    let end = Instant::now() + Duration::from_secs(20);
    while !cluster
        .nodes
        .iter()
        .all(|node| node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
    {
        assert!(Instant::now() < end, "the cluster did not heal");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let end = Instant::now() + RECOVERY;
    loop {
        let r = s.call(request(&victim_domain, one("k", "v"))).await;
        assert_eq!(r.overall_code, OK);
        if s.admin_get("/healthcheck").await.1 == "OK"
            && !cluster.nodes[victim].keys("down:*").is_empty()
        {
            break;
        }
        assert!(
            Instant::now() < end,
            "no decision counted on the restarted master within {RECOVERY:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some((domain, node)) = survivor {
        assert_eq!(
            s.call(request(&domain, one("k", "v"))).await.overall_code,
            OK
        );
        assert!(!cluster.nodes[node].keys("down:*").is_empty());
    }

    assert!(
        tried <= 3 && degraded_while_down && health_while_down.contains("degraded: redis"),
        "while master {victim} was down, {tried} of {calls} calls went to redis and failed (the \
         probe put the store back in service after each failure); then is_degraded() = \
         {degraded_while_down}, /healthcheck = {health_while_down:?}"
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 9. TLS: `rediss://` with a private CA and a client certificate.

#[tokio::test]
async fn rediss_with_a_private_ca_and_a_client_certificate_counts_in_redis() {
    let certificates = Certificates::generate();
    let (redis, tls_port) = RedisServer::start_tls(&certificates);
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let identity = (
        certificates.read("client.crt"),
        certificates.read("client.key"),
    );
    let trusted = RedisTls {
        ca: Some(certificates.read("ca.crt")),
        identity: Some(identity.clone()),
    };

    let setup = RedisSetup {
        tls: trusted.clone(),
        ..with_prefix(RedisSetup::strict(&url), "tls:")
    };
    let mut s = start_redis(&hourly(2), setup).await;
    let decided: Vec<i32> = overall_codes(&mut s, 3).await;
    assert_eq!(decided, [OK, OK, OVER]);
    assert_eq!(redis.keys("tls:*").len(), 1, "the bucket is in redis");
    s.stop().await;

    // Verification is real: a store that does not trust the CA, or that presents no client
    // certificate, never gets through the handshake.
    for (what, tls) in [
        (
            "without the CA",
            RedisTls {
                ca: None,
                identity: Some(identity),
            },
        ),
        (
            "without a client certificate",
            RedisTls {
                identity: None,
                ..trusted
            },
        ),
    ] {
        let store = RedisStore::start(&RedisOptions {
            urls: vec![url.clone()],
            cluster: false,
            sentinel: None,
            prefix: "tls:".to_owned(),
            timeout: SEC,
            tls,
        })
        .unwrap();
        assert!(
            !store.wait_ready(2 * SEC).await && store.is_degraded(),
            "a store {what} reached the TLS port"
        );
    }
}

/// The overall codes of `n` calls on key `k`.
async fn overall_codes(s: &mut TestServer, n: usize) -> Vec<i32> {
    let mut decided = Vec::new();
    for _ in 0..n {
        decided.push(s.call(request("c", one("k", "same"))).await.overall_code);
    }
    decided
}

// ---------------------------------------------------------------------------------------------
// 9. Redis Sentinel.

/// Counting in the master a Sentinel names; the master killed, the Sentinel promotes its
/// replica, and counting continues there, from where it was, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_is_followed_and_counting_continues() {
    let mut master = RedisServer::start();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    let sentinel = RedisSentinel::start("tollgate-master", master.port);
    // The Sentinel learns of the replica from the master (it must know it to promote it).
    let end = Instant::now() + Duration::from_secs(30);
    while !sentinel
        .cli(&["SENTINEL", "REPLICAS", "tollgate-master"])
        .contains(&replica.port.to_string())
    {
        assert!(Instant::now() < end, "the sentinel never saw the replica");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let setup = RedisSetup {
        urls: vec![sentinel.url()],
        sentinel: Some(Sentinel::of("tollgate-master")),
        failure: FailurePolicy::Deny,
        timeout: Duration::from_millis(500),
        ..RedisSetup::strict("unused")
    };
    let mut s = start_redis(&hourly(100), setup).await;
    for remaining in (90..100).rev() {
        let r = s.call(request("c", one("k", "v"))).await;
        assert_eq!(
            (r.overall_code, r.statuses[0].limit_remaining),
            (OK, remaining)
        );
    }
    // Everything written has reached the replica before the master dies.
    assert_eq!(master.cli(&["WAIT", "1", "5000"]), "1");
    master.kill();
    let end = Instant::now() + Duration::from_secs(30);
    let r = loop {
        // While no master answers, the failure policy (deny) answers: nothing is counted.
        let r = s.call(request("c", one("k", "v"))).await;
        if r.overall_code == OK {
            break r;
        }
        assert!(
            Instant::now() < end,
            "no failover followed within 30 s; sentinel log:\n{}",
            sentinel.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        r.statuses[0].limit_remaining, 89,
        "counting continues where it was"
    );
    assert!(
        replica.cli(&["ROLE"]).starts_with("master"),
        "the replica was promoted"
    );
    s.stop().await;
}

/// Sentinels with their own password in front of a master without one: the URL's credentials
/// would be refused by the Sentinels, `--redis-sentinel-auth` gives theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_with_their_own_password() {
    let master = RedisServer::start();
    let sentinel =
        RedisSentinel::start_with("tollgate-master", master.port, "requirepass s3ntinel\n");
    let setup = |auth: Option<&str>| RedisSetup {
        urls: vec![sentinel.url()],
        sentinel: Some(Sentinel {
            master: "tollgate-master".to_owned(),
            auth: auth.map(str::to_owned),
        }),
        failure: FailurePolicy::Deny,
        timeout: Duration::from_millis(500),
        ..RedisSetup::strict("unused")
    };
    let mut s = start_redis(&hourly(100), setup(Some("s3ntinel"))).await;
    let r = s.call(request("c", one("k", "v"))).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 99));
    s.stop().await;
    // Without them the Sentinel refuses, and the failure policy (deny) answers.
    let mut s = start_with(&hourly(100), setup(None).setup()).await;
    assert_eq!(s.call(request("c", one("k", "v"))).await.overall_code, OVER);
    s.stop().await;
}

/// A TLS-only Sentinel in front of a TLS-only master, both with certificates of a private CA
/// and both requiring a client certificate (the Sentinel reaches the master over TLS too):
/// with the `rediss://` Sentinel URL, the CA and the client identity, tollgate asks the
/// Sentinel and counts in the master it names. Neither would let it in without that identity,
/// nor would it trust either without the CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_sentinel_and_master_with_a_private_ca_and_client_certificates() {
    let certificates = Certificates::generate();
    let master = RedisServer::start_tls_only(&certificates);
    let sentinel = RedisSentinel::start_tls("tollgate-master", master.port, &certificates);
    let trusted = RedisTls {
        ca: Some(certificates.read("ca.crt")),
        identity: Some((
            certificates.read("client.crt"),
            certificates.read("client.key"),
        )),
    };
    let setup = RedisSetup {
        urls: vec![sentinel.url()],
        sentinel: Some(Sentinel::of("tollgate-master")),
        failure: FailurePolicy::Deny,
        timeout: Duration::from_millis(500),
        tls: trusted.clone(),
        ..with_prefix(RedisSetup::strict("unused"), "sentinel-tls:")
    };
    assert!(sentinel.url().starts_with("rediss://"));
    let mut s = start_with(&hourly(100), setup.setup()).await;
    assert!(
        !s.redis_store().is_degraded(),
        "no master reached through the TLS Sentinel within 5 s; sentinel log:\n{}",
        sentinel.log()
    );
    for remaining in (97..100).rev() {
        let r = s.call(request("c", one("k", "v"))).await;
        assert_eq!(
            (r.overall_code, r.statuses[0].limit_remaining),
            (OK, remaining)
        );
    }
    assert_eq!(
        master.keys("sentinel-tls:*").len(),
        1,
        "the bucket is in the master"
    );
    s.stop().await;

    // Verification is real: without the CA, the Sentinel's certificate is not trusted.
    let store = RedisStore::start(&RedisOptions {
        urls: vec![sentinel.url()],
        cluster: false,
        sentinel: Some(Sentinel::of("tollgate-master")),
        prefix: "sentinel-tls:".to_owned(),
        timeout: SEC,
        tls: RedisTls {
            ca: None,
            ..trusted
        },
    })
    .unwrap();
    assert!(
        !store.wait_ready(2 * SEC).await && store.is_degraded(),
        "a store without the CA reached the TLS Sentinel"
    );
}
