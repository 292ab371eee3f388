//! `tollgate-bench`: drives `ShouldRateLimit` at a server and reports throughput and latency.
//!
//! Every answer is checked: a gRPC OK with one status per descriptor (h2load cannot check
//! grpc-status); anything else counts as an error and makes the run fail.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use hdrhistogram::Histogram;
use tonic::transport::{Channel, Endpoint};

/// Load generator for Envoy rate limit services (tollgate, or any RLS v3 server).
#[derive(Debug, Parser)]
#[command(name = "tollgate-bench", version)]
struct Args {
    /// The server's gRPC address.
    #[arg(long, default_value = "127.0.0.1:8081")]
    target: String,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Concurrent calls per connection.
    #[arg(long, default_value_t = 32)]
    streams: usize,
    /// How long to send, in seconds (after a 1 s warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Calls per second in total; 0 sends as fast as answers come (closed loop).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Distinct descriptor values (1 … 10 000 000).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    keys: u64,
    /// The first key's number: successive runs can cover new keys.
    #[arg(long, default_value_t = 0)]
    first_key: u64,
    /// Descriptors per request.
    #[arg(long, default_value_t = 1)]
    descriptors: usize,
    /// Share of requests (0 … 1) sent to a key whose limit is 0, so they are over the limit.
    #[arg(long, default_value_t = 0.0)]
    over_ratio: f64,
    /// The domain; the bench config (examples/bench) defines `user` (high limit) and `blocked`.
    #[arg(long, default_value = "bench")]
    domain: String,
}

struct Totals {
    ok: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
}

fn request(args: &Args, n: u64) -> RateLimitRequest {
    // A cheap, well-spread sequence: a multiplicative hash of the call number.
    let mixed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let over = (mixed % 10_000) as f64 / 10_000.0 < args.over_ratio;
    let descriptors = (0..args.descriptors as u64)
        .map(|d| {
            let (key, value) = if over {
                ("blocked".to_owned(), "x".to_owned())
            } else {
                (
                    "user".to_owned(),
                    format!(
                        "u{}",
                        args.first_key.wrapping_add(n).wrapping_add(d) % args.keys
                    ),
                )
            };
            RateLimitDescriptor {
                entries: vec![Entry { key, value }],
                ..Default::default()
            }
        })
        .collect();
    RateLimitRequest {
        domain: args.domain.clone(),
        descriptors,
        hits_addend: 0,
    }
}

async fn worker(
    args: Arc<Args>,
    mut client: RateLimitServiceClient<Channel>,
    totals: Arc<Totals>,
    id: u64,
    step: u64,
    interval: Option<Duration>,
    measure_from: Instant,
) -> Histogram<u64> {
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut n = id;
    let mut next = Instant::now();
    while !totals.stop.load(Ordering::Relaxed) {
        if let Some(interval) = interval {
            next += interval;
            tokio::time::sleep_until(next.into()).await;
        }
        let req = request(&args, n);
        // Workers interleave, so together they visit every key in turn.
        n += step;
        let started = Instant::now();
        let answer = client.should_rate_limit(req).await;
        let micros = started.elapsed().as_micros() as u64;
        let valid = matches!(&answer, Ok(r) if r.get_ref().statuses.len() == args.descriptors && r.get_ref().overall_code != 0);
        if started >= measure_from {
            if valid {
                totals.ok.fetch_add(1, Ordering::Relaxed);
                let _ = latencies.record(micros.max(1));
            } else {
                totals.errors.fetch_add(1, Ordering::Relaxed);
                if let Err(status) = answer {
                    eprintln!("error: {status}");
                }
            }
        }
    }
    latencies
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Arc::new(Args::parse());
    let totals = Arc::new(Totals {
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let workers = args.connections * args.streams;
    let interval =
        (args.rate > 0).then(|| Duration::from_secs_f64(workers as f64 / args.rate as f64));
    let mut tasks = Vec::new();
    let measure_from = Instant::now() + Duration::from_secs(1);
    for c in 0..args.connections {
        let endpoint = match Endpoint::from_shared(format!("http://{}", args.target)) {
            Ok(endpoint) => endpoint.tcp_nodelay(true),
            Err(e) => {
                eprintln!("error: bad --target: {e}");
                return ExitCode::FAILURE;
            }
        };
        let channel = match endpoint.connect().await {
            Ok(channel) => channel,
            Err(e) => {
                eprintln!("error: cannot connect to {}: {e}", args.target);
                return ExitCode::FAILURE;
            }
        };
        for s in 0..args.streams {
            let client = RateLimitServiceClient::new(channel.clone());
            let id = (c * args.streams + s) as u64;
            tasks.push(tokio::spawn(worker(
                args.clone(),
                client,
                totals.clone(),
                id,
                workers as u64,
                interval,
                measure_from,
            )));
        }
    }
    tokio::time::sleep(Duration::from_secs(1 + args.duration)).await;
    totals.stop.store(true, Ordering::Relaxed);
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    for task in tasks {
        if let Ok(h) = task.await {
            let _ = latencies.add(&h);
        }
    }
    let ok = totals.ok.load(Ordering::Relaxed);
    let errors = totals.errors.load(Ordering::Relaxed);
    let rate = ok as f64 / args.duration as f64;
    println!(
        "calls/s {rate:.0}  ok {ok}  errors {errors}  p50 {}us  p99 {}us  p99.9 {}us  max {}us",
        latencies.value_at_quantile(0.5),
        latencies.value_at_quantile(0.99),
        latencies.value_at_quantile(0.999),
        latencies.max()
    );
    if errors > 0 || ok == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
