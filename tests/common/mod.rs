//! A real tollgate server on free loopback ports, with a clock the test controls.

#![allow(dead_code)] // each test binary uses its own part of this helper

pub mod ads;
pub mod pki;
pub mod process;
pub mod redis;
pub mod scrape;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use tollgate::api::ApiConfig;
use tollgate::app::{self, App, RedisConfig, StoreConfig};
use tollgate::clock::{ManualClock, NANOS_PER_SEC};
use tollgate::config::{Options, RateLimitConfig};
use tollgate::decision::{Limiter, Settings};
use tollgate::metrics::MetricsOptions;
use tollgate::protocol::answers::Answers;
use tollgate::reload::{Reloader, Source};
use tollgate::rule::Consistency;
use tollgate::server::{Limits, ServerOptions};
use tollgate::store::{FailurePolicy, Parts, RedisOptions, RedisStore, RedisTls, Sentinel};
use tollgate::tls::ServerTlsFiles;
use tollgate::xds::XdsOptions;

/// Limits exercising every request semantic (rls.rs; redis.rs replays it against Redis).
pub const SEMANTICS: &str = r#"
domain: test
descriptors:
  - key: user
    rate_limit: {name: per_user, unit: minute, requests_per_unit: 3}
  - key: window
    rate_limit: {unit: minute, requests_per_unit: 2, algorithm: fixed_window}
  - key: bursty
    rate_limit: {unit: second, requests_per_unit: 1, burst: 3}
  - key: free
    rate_limit: {unlimited: true}
  - key: blocked
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: shadow
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: general
    rate_limit: {name: general, unit: minute, requests_per_unit: 100}
  - key: special
    rate_limit: {name: special, unit: minute, requests_per_unit: 1, replaces: [{name: general}]}
  - key: quota_a
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: quota_b
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: files
    value: "*.pdf"
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: ip
    value: 10.0.0.1
  - key: ip
    rate_limit: {unit: minute, requests_per_unit: 1}
"#;

/// A minute boundary, so fixed windows start at a known place.
pub const T0: u64 = 1_800_000_000 * NANOS_PER_SEC;

/// A running server and a client connected to it.
pub struct TestServer {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// The service API's address, when it is served.
    pub api: Option<SocketAddr>,
    pub clock: Arc<ManualClock>,
    pub client: RateLimitServiceClient<Channel>,
    pub reloader: Arc<Reloader>,
    /// The watched configuration directory; `limits.yaml` in it holds the first config.
    pub dir: std::path::PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tollgate::server::ServeError>>>,
    _tempdir: tempfile::TempDir,
}

/// Knobs for [`start_with`].
#[derive(Clone)]
pub struct Setup {
    pub shadow_mode: bool,
    /// `--count-denied`: every limit runs debt.
    pub count_denied: bool,
    /// `--reservation-ttl`.
    pub reservation_ttl: Duration,
    pub max_buckets: usize,
    /// Watch the config directory for changes.
    pub watch: bool,
    pub max_metric_series: usize,
    /// Serve the single file `limits.yaml` instead of its directory.
    pub single_file: bool,
    /// Count in Redis (`--store redis`) instead of memory.
    pub redis: Option<RedisSetup>,
    /// What clients may hold of the ports.
    pub limits: Limits,
    /// `--quota-mode`: every limit in quota mode.
    pub quota_mode: bool,
    /// The limits come over xDS instead of from the configuration directory.
    pub xds: Option<XdsOptions>,
    /// TLS on the gRPC port (the test's own client is then not connected).
    pub grpc_tls: Option<ServerTlsFiles>,
    /// `--response-*`: what answers carry beyond their statuses.
    pub answers: Answers,
    /// The service API (`--api-addr` and its flags); port 0 binds a free one.
    pub api: ApiConfig,
}

/// The `--redis-*` flags of a server counting in Redis.
#[derive(Clone, Debug)]
pub struct RedisSetup {
    pub urls: Vec<String>,
    pub cluster: bool,
    /// `--redis-sentinel`: the URLs are Sentinels of this master set.
    pub sentinel: Option<Sentinel>,
    pub consistency: Consistency,
    pub failure: FailurePolicy,
    pub timeout: Duration,
    pub prefix: String,
    pub tls: RedisTls,
}

impl RedisSetup {
    /// Strict consistency on the single node at `url`, failure policy `local`, a timeout
    /// generous enough for a loaded debug build, prefix `tollgate:`.
    pub fn strict(url: &str) -> Self {
        Self {
            urls: vec![url.to_owned()],
            cluster: false,
            sentinel: None,
            consistency: Consistency::Strict,
            failure: FailurePolicy::Local,
            timeout: Duration::from_secs(2),
            prefix: "tollgate:".to_owned(),
            tls: RedisTls::default(),
        }
    }

    /// The same with cached consistency.
    pub fn cached(url: &str) -> Self {
        Self {
            consistency: Consistency::Cached,
            ..Self::strict(url)
        }
    }

    /// A server setup counting in Redis with these flags.
    pub fn setup(self) -> Setup {
        Setup {
            redis: Some(self),
            ..Setup::default()
        }
    }

    /// The composition root's Redis settings for these flags.
    pub fn config(&self) -> RedisConfig {
        RedisConfig {
            options: RedisOptions {
                urls: self.urls.clone(),
                cluster: self.cluster,
                sentinel: self.sentinel.clone(),
                prefix: self.prefix.clone(),
                timeout: self.timeout,
                tls: self.tls.clone(),
            },
            consistency: self.consistency,
            failure: self.failure,
        }
    }
}

/// The composition root's settings for `setup`, serving the limits at `limits`.
pub fn app_config(limits: std::path::PathBuf, setup: &Setup) -> app::Config {
    app::Config {
        limits: match &setup.xds {
            Some(xds) => Source::Xds(Box::new(xds.clone())),
            None => limits.into(),
        },
        settings: Settings {
            shadow_mode: setup.shadow_mode,
            quota_mode: setup.quota_mode,
            compile: Options {
                count_denied: setup.count_denied,
                ..Options::default()
            },
            reservation_ttl: setup.reservation_ttl,
        },
        max_buckets: setup.max_buckets,
        store: match &setup.redis {
            Some(redis) => StoreConfig::Redis(redis.config()),
            None => StoreConfig::Memory,
        },
        server: ServerOptions {
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            grpc_tls: setup.grpc_tls.clone(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            metrics_port: None,
            answers: setup.answers.clone(),
            sweep_interval: Duration::from_secs(3600),
            watch: setup.watch,
            drain_timeout: Duration::from_secs(5),
            limits: setup.limits,
            rlqs: Default::default(),
            metrics: MetricsOptions {
                near_limit_ratio: 0.8,
                max_series: setup.max_metric_series,
            },
        },
        snapshot: None,
        api: setup.api.clone(),
    }
}

/// A limiter on `config` built as a server with `setup` builds it, reading `clock`; with
/// Redis, waits up to 5 s for it to answer (it may be down on purpose).
pub async fn limiter(
    config: RateLimitConfig,
    setup: &Setup,
    clock: &Arc<ManualClock>,
) -> Arc<Limiter> {
    let limiter = app_config(std::path::PathBuf::new(), setup)
        .limiter(config, clock.clone())
        .unwrap();
    let mut parts = Parts::default();
    limiter.store().parts(&mut parts);
    if let Some(redis) = parts.redis {
        redis.wait_ready(Duration::from_secs(5)).await;
    }
    Arc::new(limiter)
}

/// The Redis store of a limiter counting in Redis.
pub struct RedisHandle(Arc<Limiter>);

impl RedisHandle {
    pub fn of(limiter: Arc<Limiter>) -> Self {
        Self(limiter)
    }
}

impl std::ops::Deref for RedisHandle {
    type Target = RedisStore;

    fn deref(&self) -> &RedisStore {
        let mut parts = Parts::default();
        self.0.store().parts(&mut parts);
        parts.redis.expect("a limiter counting in redis")
    }
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            shadow_mode: false,
            count_denied: false,
            reservation_ttl: Duration::from_secs(600),
            max_buckets: 100_000,
            watch: false,
            max_metric_series: 10_000,
            single_file: false,
            redis: None,
            limits: Limits::default(),
            quota_mode: false,
            xds: None,
            grpc_tls: None,
            answers: Answers::default(),
            api: ApiConfig::default(),
        }
    }
}

/// A store the behaviour suite runs on; a Redis store brings its own `redis-server`.
pub enum Backend {
    Memory,
    Strict(redis::RedisServer),
    Cached(redis::RedisServer),
}

impl Backend {
    pub fn memory() -> Self {
        Self::Memory
    }

    pub fn strict() -> Self {
        Self::Strict(redis::RedisServer::start())
    }

    pub fn cached() -> Self {
        Self::Cached(redis::RedisServer::start())
    }

    /// `setup`, counting in this store.
    pub fn setup(&self, setup: Setup) -> Setup {
        let redis = match self {
            Self::Memory => None,
            Self::Strict(server) => Some(RedisSetup::strict(&server.url())),
            Self::Cached(server) => Some(RedisSetup::cached(&server.url())),
        };
        Setup { redis, ..setup }
    }

    /// A server on `yaml` counting in this store.
    pub async fn start(&self, yaml: &str) -> TestServer {
        self.start_with(yaml, Setup::default()).await
    }

    /// A server on `yaml` with `setup`, counting in this store.
    pub async fn start_with(&self, yaml: &str, setup: Setup) -> TestServer {
        start_with(yaml, self.setup(setup)).await
    }
}

/// Starts a server whose only config file is `yaml`.
pub async fn start(yaml: &str) -> TestServer {
    start_with(yaml, Setup::default()).await
}

pub async fn start_with(yaml: &str, setup: Setup) -> TestServer {
    let tempdir = tempfile::tempdir().unwrap();
    std::fs::write(tempdir.path().join("limits.yaml"), yaml).unwrap();
    start_in(tempdir, setup).await
}

/// Starts a server on the configuration directory `tempdir`, prepared by the caller.
pub async fn start_in(tempdir: tempfile::TempDir, setup: Setup) -> TestServer {
    let inside = if setup.single_file { "limits.yaml" } else { "" };
    start_at(tempdir, inside, setup).await
}

/// Starts a server on the configuration at `inside` (relative to `tempdir`; empty for the
/// directory itself).
pub async fn start_at(tempdir: tempfile::TempDir, inside: &str, setup: Setup) -> TestServer {
    let clock = Arc::new(ManualClock::at(T0));
    let limits = if inside.is_empty() {
        tempdir.path().to_path_buf()
    } else {
        tempdir.path().join(inside)
    };
    let app = app_config(limits, &setup)
        .build(clock.clone())
        .await
        .unwrap();
    // Redis may be down on purpose: the store then starts degraded.
    app.redis_ready(Duration::from_secs(5)).await;
    let App { reloader, server } = app;
    let (grpc, http) = (server.grpc_addr().unwrap(), server.http_addr().unwrap());
    let api = server.api_addr().map(Result::unwrap);
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{grpc}")).unwrap();
    // Over TLS the test brings its own client; over xDS the server may wait for its first
    // version before it serves.
    let client = if setup.grpc_tls.is_some() || setup.xds.is_some() {
        RateLimitServiceClient::new(endpoint.connect_lazy())
    } else {
        RateLimitServiceClient::new(endpoint.connect().await.unwrap())
    };
    TestServer {
        grpc,
        http,
        api,
        clock,
        client,
        reloader,
        dir: tempdir.path().to_path_buf(),
        stop: Some(stop),
        task: Some(task),
        _tempdir: tempdir,
    }
}

impl TestServer {
    /// Calls ShouldRateLimit, expecting a gRPC OK.
    pub async fn call(&mut self, request: RateLimitRequest) -> RateLimitResponse {
        self.client
            .should_rate_limit(request)
            .await
            .expect("gRPC OK")
            .into_inner()
    }

    /// Calls ShouldRateLimit and returns the gRPC status.
    pub async fn call_err(&mut self, request: RateLimitRequest) -> tonic::Status {
        self.client
            .should_rate_limit(request)
            .await
            .expect_err("gRPC error")
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// The limiter in force.
    pub fn limiter(&self) -> Arc<Limiter> {
        self.reloader.limiter().clone()
    }

    /// The Redis store, for a server counting in Redis.
    pub fn redis_store(&self) -> RedisHandle {
        RedisHandle::of(self.reloader.limiter().clone())
    }

    /// What the server's store is made of, read by `read`.
    pub fn store_parts<T>(&self, read: impl FnOnce(&Parts<'_>) -> T) -> T {
        let limiter = self.reloader.limiter();
        let mut parts = Parts::default();
        limiter.store().parts(&mut parts);
        read(&parts)
    }

    /// GET `path` on the admin port: status and body.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("http://{}{path}", self.http))
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// POST `body` to `path` on the admin port: status and body.
    pub async fn admin_post(&self, path: &str, body: &str) -> (u16, String) {
        let response = reqwest::Client::new()
            .post(format!("http://{}{path}", self.http))
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// A grpc.health.v1 client on the server's gRPC port.
    pub async fn health_client(&self) -> tonic_health::pb::health_client::HealthClient<Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        tonic_health::pb::health_client::HealthClient::new(channel)
    }

    /// Stops the server and waits until it has drained.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

/// The tool at `$variable`, or at `default` (relative to the crate), as an absolute path (its
/// symlinks kept: a virtualenv's python is one); fails when it is missing, saying that
/// scripts/test installs it.
pub fn tool(variable: &str, default: &str) -> std::path::PathBuf {
    let path = std::env::var_os(variable).map_or_else(
        || std::path::PathBuf::from(default),
        std::path::PathBuf::from,
    );
    assert!(
        path.exists(),
        "no {variable} at {}: run scripts/test, which installs it",
        path.display()
    );
    std::path::absolute(path).unwrap()
}

/// What a finished tool wrote, stdout then stderr.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A free loopback port (free when asked; bind it soon).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One descriptor from key/value pairs.
pub fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
        ..Default::default()
    }
}

/// A request in `domain` with `descriptors`.
pub fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors,
        hits_addend: 0,
    }
}

/// Waits for `condition` to hold, polling, up to `deadline`.
pub async fn eventually<F: FnMut() -> bool>(deadline: Duration, mut condition: F) -> bool {
    let end = tokio::time::Instant::now() + deadline;
    while tokio::time::Instant::now() < end {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}

/// Waits for the asynchronous `condition` to hold, polling, up to `deadline`.
pub async fn eventually_async<F, C>(deadline: Duration, mut condition: C) -> bool
where
    C: FnMut() -> F,
    F: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    while tokio::time::Instant::now() < end {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition().await
}

/// One descriptor with one entry.
pub fn one(key: &str, value: &str) -> Vec<RateLimitDescriptor> {
    vec![descriptor(&[(key, value)])]
}

/// A response's overall code and its statuses' codes.
pub fn codes(response: &RateLimitResponse) -> (i32, Vec<i32>) {
    (
        response.overall_code,
        response.statuses.iter().map(|s| s.code).collect(),
    )
}

/// A status's `duration_until_reset`, in seconds.
pub fn reset_secs(
    status: &envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::DescriptorStatus,
) -> f64 {
    let d = status
        .duration_until_reset
        .as_ref()
        .expect("duration_until_reset");
    d.seconds as f64 + f64::from(d.nanos) / 1e9
}
