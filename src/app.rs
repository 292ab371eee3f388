//! The composition root: every setting in one [`Config`], turned into a running service in one
//! place. The command line fills a `Config` from flags; the tests and benchmarks fill one in
//! code; all of them get the same wiring from [`Config::build`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::api::{AdminTokens, ApiConfig, TokenError};
use crate::clock::Clock;
use crate::config::{self, ConfigErrors, RateLimitConfig};
use crate::decision::{Limiter, Settings};
use crate::metrics::MetricsOptions;
use crate::reload::{Reloader, Source};
use crate::rule::Consistency;
use crate::server::{Limits, ServeError, Server, ServerOptions};
use crate::snapshot::{SnapshotOptions, Snapshots};
use crate::store::{
    Failover, FailurePolicy, KeyBuilder, Leasing, MemoryStore, Parts, RedisOptions, RedisStore,
    Store, Unavailable,
};
use crate::tenants::{LocalState, RedisState, StateError, TenantState, Tenants};

/// Everything a tollgate process is made from.
#[derive(Debug, Clone)]
pub struct Config {
    /// The limits: a YAML file or a directory of them, or an xDS subscription.
    pub limits: Source,
    /// Decision settings.
    pub settings: Settings,
    /// Most per-value buckets kept in memory (and most cached-mode leases).
    pub max_buckets: usize,
    /// Where buckets live.
    pub store: StoreConfig,
    /// Ports, sweeping, watching, metrics and draining.
    pub server: ServerOptions,
    /// Crash-recovery snapshots of the memory store.
    pub snapshot: Option<SnapshotOptions>,
    /// The service API, and where runtime tenants are kept.
    pub api: ApiConfig,
}

/// Where buckets live.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// This process's memory: each replica counts alone.
    Memory,
    /// Redis, shared by every replica.
    Redis(RedisConfig),
}

/// Counting in Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// How to reach it.
    pub options: RedisOptions,
    /// The consistency of limits that set none.
    pub consistency: Consistency,
    /// What to answer while Redis cannot.
    pub failure: FailurePolicy,
}

/// Why a service could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Redis settings cannot work (a malformed URL).
    #[error("cannot count in redis: {0}")]
    Redis(#[from] Unavailable),
    /// The limits are invalid.
    #[error("invalid configuration: {0}")]
    Limits(#[from] ConfigErrors),
    /// A port cannot be bound.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// Snapshots asked of a store that keeps no buckets in memory.
    #[error("--snapshot-path saves the memory store's buckets: it needs --store memory")]
    SnapshotWithoutMemory,
    /// Snapshots asked with limits that arrive after the start.
    #[error(
        "--snapshot-path restores buckets at start, before limits pushed over xDS exist: use limit files, or Redis to keep counts across restarts"
    )]
    SnapshotWithXds,
    /// The admin token file cannot be used.
    #[error(transparent)]
    Tokens(#[from] TokenError),
    /// Admin tokens given without the API they are for.
    #[error("--api-admin-token-file is for the service API: it needs --api-addr")]
    TokensWithoutApi,
    /// The runtime tenants cannot be read.
    #[error("cannot read runtime tenants: {0}")]
    Tenants(#[from] StateError),
    /// A state directory asked of a store that keeps runtime tenants in Redis.
    #[error(
        "--state-dir keeps runtime tenants in memory mode; with --store redis they live in redis"
    )]
    StateDirWithRedis,
}

/// A service built and bound, ready to serve.
#[derive(Debug)]
pub struct App {
    /// The configuration in force and its limiter.
    pub reloader: Arc<Reloader>,
    /// The bound server.
    pub server: Server,
}

impl StoreConfig {
    /// The store stack, and the key builder its buckets are named with. Within a Tokio runtime
    /// (Redis stores start background tasks).
    pub fn build(
        &self,
        max_buckets: usize,
        clock: &Arc<dyn Clock>,
    ) -> Result<(Arc<dyn Store>, KeyBuilder), Unavailable> {
        let RedisConfig {
            options,
            consistency,
            failure,
        } = match self {
            Self::Memory => {
                return Ok((
                    Arc::new(MemoryStore::new(max_buckets)),
                    KeyBuilder::random(),
                ));
            }
            Self::Redis(redis) => redis,
        };
        let redis = RedisStore::start(options)?;
        let leasing = Leasing::start(redis, *consistency, max_buckets, clock.clone());
        let store = Failover::new(Arc::new(leasing), *failure, max_buckets);
        // Every replica, and a restarted one, must name a bucket alike.
        Ok((Arc::new(store), KeyBuilder::shared(&options.prefix)))
    }
}

impl Config {
    /// The command line's defaults, serving the limits of `limits` (a path, or an xDS
    /// subscription): memory store, a million buckets, gRPC on 127.0.0.1:8081 and HTTP on
    /// 127.0.0.1:8080.
    pub fn new(limits: impl Into<Source>) -> Self {
        Self {
            limits: limits.into(),
            settings: Settings {
                shadow_mode: false,
                quota_mode: false,
                compile: config::Options::default(),
                reservation_ttl: Duration::from_secs(600),
            },
            max_buckets: 1_000_000,
            store: StoreConfig::Memory,
            server: ServerOptions {
                grpc_addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
                grpc_tls: None,
                http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
                metrics_port: None,
                answers: Default::default(),
                sweep_interval: Duration::from_secs(10),
                watch: true,
                metrics: MetricsOptions::default(),
                drain_timeout: Duration::from_secs(10),
                limits: Limits::default(),
                rlqs: Default::default(),
            },
            snapshot: None,
            api: ApiConfig::default(),
        }
    }

    /// A limiter on `config` with this configuration's store, reading `clock`.
    pub fn limiter(
        &self,
        config: RateLimitConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Limiter, Unavailable> {
        let (store, keys) = self.store.build(self.max_buckets, &clock)?;
        Ok(Limiter::new(config, store, keys, clock, self.settings))
    }

    /// Loads the limits, builds the store and the limiter (restoring the last snapshot), and
    /// binds the ports.
    pub async fn build(self, clock: Arc<dyn Clock>) -> Result<App, BuildError> {
        let snapshots = match (&self.snapshot, &self.store, &self.limits) {
            (None, ..) => None,
            (Some(_), StoreConfig::Redis(_), _) => return Err(BuildError::SnapshotWithoutMemory),
            (Some(_), _, Source::Xds(_)) => return Err(BuildError::SnapshotWithXds),
            (Some(options), StoreConfig::Memory, Source::Files(_)) => {
                Some(Snapshots::new(options.clone()))
            }
        };
        let saved = snapshots.as_ref().and_then(Snapshots::load);
        let (store, mut keys) = self.store.build(self.max_buckets, &clock)?;
        if let Some(saved) = &saved {
            // Name buckets as the saved ones were named.
            keys = KeyBuilder::from_secret(saved.secret);
        }
        let tenants = self.tenants().await?;
        let settings = self.settings;
        let reloader = Reloader::start(self.limits, self.settings.compile, |config| {
            Limiter::new(config, store, keys, clock, settings)
        })?;
        let reloader = Arc::new(reloader);
        let mut server = Server::bind(reloader.clone(), self.server)
            .await?
            .with_tenants(tenants);
        match (self.api.addr, &self.api.admin_token_file) {
            (Some(addr), file) => {
                let tokens = file
                    .as_deref()
                    .map_or_else(|| Ok(AdminTokens::none()), AdminTokens::read)?;
                server = server.with_api(addr, tokens).await?;
            }
            (None, Some(_)) => return Err(BuildError::TokensWithoutApi),
            (None, None) => {}
        }
        if let Some(snapshots) = snapshots {
            if let Some(saved) = saved {
                snapshots.restore(saved, reloader.limiter());
            }
            server = server.with_snapshots(snapshots);
        }
        Ok(App { reloader, server })
    }
}

impl Config {
    /// Runtime tenants where the store says: in Redis with `--store redis` (read by the
    /// server as it starts), else in this process, saved under `--state-dir` if given (read
    /// now).
    async fn tenants(&self) -> Result<Arc<Tenants>, BuildError> {
        let state: Arc<dyn TenantState> = match (&self.store, &self.api.state_dir) {
            (StoreConfig::Redis(_), Some(_)) => return Err(BuildError::StateDirWithRedis),
            (StoreConfig::Redis(redis), None) => {
                return Ok(Arc::new(Tenants::new(Arc::new(RedisState::new(
                    &redis.options,
                )?))));
            }
            (StoreConfig::Memory, Some(dir)) => Arc::new(LocalState::open(dir)?),
            (StoreConfig::Memory, None) => Arc::new(LocalState::in_memory()),
        };
        let tenants = Tenants::new(state);
        tenants.sync().await?;
        Ok(Arc::new(tenants))
    }
}

impl App {
    /// Waits up to `deadline` for Redis to answer: `None` without Redis, else whether it did.
    pub async fn redis_ready(&self, deadline: Duration) -> Option<bool> {
        let limiter = self.reloader.limiter();
        let mut parts = Parts::default();
        limiter.store().parts(&mut parts);
        let redis = parts.redis?;
        Some(redis.wait_ready(deadline).await)
    }
}
