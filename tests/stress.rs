//! Limits that hold under stress: three replicas on one real `redis-server`, concurrent clients,
//! and Redis slowed by CPU load, paused (SIGSTOP) and killed. Each test asserts the promise (what
//! is admitted, against the limit) and prints its figures on lines starting `figure:`;
//! `scripts/stress` runs them on a release build and collects those lines. Timing never decides
//! a test: phases end on conditions (denied N times in a row), with deadlines only as guards.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::process::Tollgate;
use common::redis::RedisServer;
use common::{RedisSetup, TestServer, one, request, start_with};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::google::protobuf::UInt64Value;
use tollgate::rule::Consistency;

const OK: i32 = Code::Ok as i32;

/// Denials in a row that say a replica has nothing left to give.
const SPENT: u64 = 20;

/// A limit of `limit` per year on key `k`: nothing refills while a test runs, on any clock.
fn yearly(limit: u32) -> String {
    format!(
        "domain: c\ndescriptors:\n  - key: k\n    rate_limit: {{unit: year, requests_per_unit: {limit}}}\n"
    )
}

/// `count` replicas on `limits`, counting in Redis as `setup` says, once Redis answers.
async fn replicas(count: usize, limits: &str, setup: &RedisSetup) -> Vec<TestServer> {
    let mut replicas = Vec::new();
    for _ in 0..count {
        let replica = start_with(limits, setup.clone().setup()).await;
        assert!(!replica.redis_store().is_degraded(), "redis did not answer");
        replicas.push(replica);
    }
    // Every replica has announced itself and counted the others.
    let end = Instant::now() + Duration::from_secs(10);
    while replicas
        .iter()
        .any(|r| r.redis_store().replicas() < count as u32)
    {
        assert!(Instant::now() < end, "replicas never counted each other");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    replicas
}

/// `tasks` clients per replica send on key `k` until each has been denied [`SPENT`] times in a
/// row; returns how many were admitted in all, and the 99th percentile of the answers' times.
async fn hammer(replicas: &[TestServer], tasks: usize) -> (u64, Duration) {
    let admitted = Arc::new(AtomicU64::new(0));
    let times = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for replica in replicas {
        for _ in 0..tasks {
            let mut client = replica.client.clone();
            let (admitted, times) = (admitted.clone(), times.clone());
            handles.push(tokio::spawn(async move {
                let mut streak = 0;
                let end = Instant::now() + Duration::from_secs(120);
                while streak < SPENT {
                    assert!(Instant::now() < end, "a replica kept admitting");
                    let sent = Instant::now();
                    let r = client
                        .should_rate_limit(request("c", one("k", "same")))
                        .await
                        .expect("gRPC OK")
                        .into_inner();
                    times.lock().unwrap().push(sent.elapsed());
                    if r.overall_code == OK {
                        admitted.fetch_add(1, Ordering::Relaxed);
                        streak = 0;
                    } else {
                        streak += 1;
                    }
                }
            }));
        }
    }
    for handle in handles {
        handle.await.unwrap();
    }
    let mut times = times.lock().unwrap().clone();
    times.sort();
    let p99 = times
        .get(times.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or_default();
    (admitted.load(Ordering::Relaxed), p99)
}

/// Two threads spinning until dropped: the CPU load of other work on the machine.
struct BusyLoops(Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>);

impl BusyLoops {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..2)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                })
            })
            .collect();
        Self(stop, threads)
    }
}

impl Drop for BusyLoops {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        for thread in self.1.drain(..) {
            let _ = thread.join();
        }
    }
}

/// What Redis holds for key `k`: a check through `replica` (strict), its limit_remaining.
async fn remaining_in_redis(replica: &mut TestServer) -> u32 {
    let mut check = request("c", one("k", "same"));
    check.descriptors[0].hits_addend = Some(UInt64Value { value: 0 });
    replica.call(check).await.statuses[0].limit_remaining
}

/// Strict mode, default flags (a 50 ms wait, failure policy `local`), three replicas and 48
/// clients, with two busy loops taking the CPU: exactly the limit is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_replicas_admit_the_limit_under_cpu_load() {
    let redis = RedisServer::start();
    let mut setup = RedisSetup::strict(&redis.url());
    setup.timeout = Duration::from_millis(50);
    let replicas = replicas(3, &yearly(300), &setup).await;
    let load = BusyLoops::start();
    let (admitted, p99) = hammer(&replicas, 16).await;
    drop(load);
    let timeouts: u64 = replicas.iter().map(|r| r.redis_store().timeouts()).sum();
    let reconciled: u64 = replicas
        .iter()
        .map(|r| r.redis_store().late_calls().0)
        .sum();
    eprintln!(
        "figure: strict, 3 replicas, 48 clients, CPU load: admitted {admitted} of 300 ({timeouts} calls past their wait, {reconciled} reconciled), p99 {p99:.1?}"
    );
    assert!(
        admitted <= 300,
        "admitted {admitted}, over the limit of 300 ({timeouts} timeouts)"
    );
    assert!(admitted >= 295, "admitted {admitted}, well under the limit");
    for replica in replicas {
        replica.stop().await;
    }
}

/// Strict mode, `local`: half the limit spent, then Redis paused (SIGSTOP) while three replicas
/// spend their shares, then resumed and the rest spent. At most the limit plus 10 % in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_spends_the_shares_not_the_replicas_times_the_limit() {
    let redis = RedisServer::start();
    let mut setup = RedisSetup::strict(&redis.url());
    setup.timeout = Duration::from_millis(50);
    let mut replicas = replicas(3, &yearly(300), &setup).await;
    let mut before = 0;
    for index in 0..150 {
        let r = replicas[index % 3]
            .call(request("c", one("k", "same")))
            .await;
        before += u64::from(r.overall_code == OK);
    }
    assert_eq!(before, 150);
    redis.pause();
    let started = Instant::now();
    let (during, p99) = hammer(&replicas, 4).await;
    let outage = started.elapsed();
    assert!(
        replicas.iter().all(|r| r.redis_store().is_degraded()),
        "every replica saw the outage"
    );
    redis.resume();
    for replica in &replicas {
        assert!(
            replica
                .redis_store()
                .wait_ready(Duration::from_secs(10))
                .await
        );
    }
    let (after, _) = hammer(&replicas, 4).await;
    let total = before + during + after;
    let left = remaining_in_redis(&mut replicas[0]).await;
    eprintln!(
        "figure: local, 3 replicas, Redis paused {outage:.1?}: admitted {before} before, {during} during (p99 {p99:.1?}), {after} after: {total} of 300; Redis then says {left} left"
    );
    assert!(
        during <= 150,
        "the shares of the 150 left admitted {during} during the outage"
    );
    assert!(
        total <= 330,
        "{total} admitted, over the limit of 300 + 10 %"
    );
    for replica in replicas {
        replica.stop().await;
    }
}

/// Cached mode: 64 concurrent first hits on a cold key lease one slice, not 64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_hits_lease_one_slice() {
    const LIMIT: u32 = 100_000;
    let redis = RedisServer::start();
    let cached = RedisSetup {
        consistency: Consistency::Cached,
        ..RedisSetup::strict(&redis.url())
    };
    let spender = start_with(&yearly(LIMIT), cached.setup()).await;
    let mut observer = start_with(&yearly(LIMIT), RedisSetup::strict(&redis.url()).setup()).await;
    assert!(
        spender
            .redis_store()
            .wait_ready(Duration::from_secs(5))
            .await
    );
    let calls: Vec<_> = (0..64)
        .map(|_| {
            let mut client = spender.client.clone();
            tokio::spawn(async move {
                client
                    .should_rate_limit(request("c", one("k", "same")))
                    .await
                    .unwrap()
                    .into_inner()
                    .overall_code
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), OK);
    }
    let taken = u64::from(LIMIT - remaining_in_redis(&mut observer).await);
    let slice = u64::from(LIMIT / 100);
    eprintln!(
        "figure: cached, 64 concurrent cold hits: {taken} units out of Redis (a slice is {slice})"
    );
    assert!(
        taken <= 64 + 2 * slice,
        "64 cold hits took {taken} units: more than two slices"
    );
    spender.stop().await;
    observer.stop().await;
}

/// Cached mode: a graceful stop under load gives back every unspent unit once the last call is
/// answered; a crash (SIGKILL) loses at most one slice per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_under_load_strands_nothing_and_a_crash_at_most_a_slice() {
    const LIMIT: u32 = 100_000;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.yaml"), yearly(LIMIT)).unwrap();
    let config = dir.path().to_str().unwrap();
    let url = redis.url();
    let store = ["--store", "redis", "--redis-url", &url];
    // Real processes on the real clock, as the spender is.
    let observer = Tollgate::serve(&[&["--config", config][..], &store].concat()).await;
    let slice = u64::from(LIMIT / 100);
    for (how, crash) in [("graceful stop", false), ("SIGKILL", true)] {
        let before = observer.remaining("c", &[("k", "same")]).await;
        let spender = Tollgate::serve(
            &[&["--config", config, "--consistency", "cached"][..], &store].concat(),
        )
        .await;
        // Load from several clients, running while the stop comes.
        let admitted = Arc::new(AtomicU64::new(0));
        let stop_load = Arc::new(AtomicBool::new(false));
        let http = spender.http;
        let load: Vec<_> = (0..8)
            .map(|_| {
                let (admitted, stop_load) = (admitted.clone(), stop_load.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let body = r#"{"domain":"c","descriptors":[{"entries":[{"key":"k","value":"same"}]}]}"#;
                    while !stop_load.load(Ordering::Relaxed) {
                        let answer = client
                            .post(format!("http://127.0.0.1:{http}/json"))
                            .body(body)
                            .send()
                            .await;
                        match answer {
                            Ok(response) if response.status() == 200 => {
                                admitted.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(_) => {}
                            // Stopped: the port is closed.
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        while admitted.load(Ordering::Relaxed) < 2_000 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if crash {
            spender.crash();
        } else {
            spender.stop();
        }
        stop_load.store(true, Ordering::Relaxed);
        for task in load {
            task.await.unwrap();
        }
        let admitted = admitted.load(Ordering::Relaxed);
        let after = observer.remaining("c", &[("k", "same")]).await;
        let taken = before - after;
        let stranded = taken.saturating_sub(admitted);
        eprintln!(
            "figure: cached, {how} under load: {admitted} admitted, {taken} taken from Redis, {stranded} stranded (a slice is {slice})"
        );
        assert!(
            taken >= admitted,
            "{how}: Redis counted {taken} of {admitted} admitted"
        );
        if crash {
            assert!(stranded <= slice, "{how} stranded {stranded} units");
        } else {
            assert_eq!(stranded, 0, "{how} stranded {stranded} units");
        }
    }
    observer.stop();
}

/// After Redis restarts, global counting resumes within a probe interval of it answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counting_resumes_soon_after_redis_restarts() {
    let mut redis = RedisServer::start();
    let mut setup = RedisSetup::strict(&redis.url());
    setup.timeout = Duration::from_millis(50);
    let mut s = start_with(&yearly(300), setup.setup()).await;
    assert!(s.redis_store().wait_ready(Duration::from_secs(5)).await);
    redis.kill();
    while !s.redis_store().is_degraded() {
        s.call(request("c", one("k", "same"))).await;
    }
    redis.restart();
    let answered = Instant::now();
    assert!(s.redis_store().wait_ready(Duration::from_secs(10)).await);
    let resumed = answered.elapsed();
    eprintln!("figure: Redis restarted: counting globally again {resumed:.0?} after it answered");
    let r = s.call(request("c", one("k", "after"))).await;
    assert_eq!(r.overall_code, OK);
    assert_eq!(
        redis.keys("tollgate:*").len(),
        2,
        "counted in the restarted redis: `after`, and what `same` admitted while it was down"
    );
    s.stop().await;
}
