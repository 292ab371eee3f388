//! `tollgate serve`: flags in, an [`app::Config`] out, then serve until told to stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgMatches, Args};

use super::CompileArgs;
use super::answers::AnswerArgs;
use super::api::ApiArgs;
use super::rlqs::RlqsArgs;
use super::store::StoreArgs;
use super::tls::GrpcTlsArgs;
use super::values::{parse_addr, parse_interval, parse_ratio, parse_seconds, redacted};
use super::xds::XdsArgs;
use crate::app::{self, StoreConfig};
use crate::clock::SystemClock;
use crate::decision::Settings;
use crate::metrics::MetricsOptions;
use crate::reload::{Reloader, Source, Trigger};
use crate::server::{Limits, MetricsPort, ServerOptions};
use crate::snapshot::SnapshotOptions;

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// A YAML file, or a directory of *.yaml / *.yml files (one domain per file); or the
    /// limits come over xDS (--xds-server).
    #[arg(
        long,
        env = "TOLLGATE_CONFIG",
        value_name = "PATH",
        required_unless_present = "xds_server",
        conflicts_with = "xds_server"
    )]
    config: Option<PathBuf>,
    /// Address of the gRPC port Envoy calls: RateLimitService, Authorization (ext_authz) and
    /// grpc.health.v1. A host name is resolved at startup.
    #[arg(
        long,
        env = "TOLLGATE_GRPC_ADDR",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:8081",
        value_parser = parse_addr
    )]
    grpc_addr: SocketAddr,
    /// Address of the HTTP admin port (GET /healthcheck, POST /json). Keep it on loopback
    /// unless callers there are trusted.
    #[arg(
        long,
        env = "TOLLGATE_HTTP_ADDR",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:8080",
        value_parser = parse_addr
    )]
    http_addr: SocketAddr,
    /// Also serve GET /metrics on a port of its own (as the reference's PROMETHEUS_ADDR), for
    /// scrapers that must not reach the admin port.
    #[arg(long, env = "TOLLGATE_METRICS_ADDR", value_name = "HOST:PORT", value_parser = parse_addr)]
    metrics_addr: Option<SocketAddr>,
    /// The path of --metrics-addr's metrics.
    #[arg(
        long,
        env = "TOLLGATE_METRICS_PATH",
        value_name = "PATH",
        default_value = "/metrics",
        requires = "metrics_addr"
    )]
    metrics_path: String,
    #[command(flatten)]
    compile: CompileArgs,
    /// Count and report every limit but never deny (global shadow mode): an over-limit
    /// descriptor still reports OVER_LIMIT, the request's overall code stays OK.
    #[arg(long, env = "TOLLGATE_SHADOW_MODE")]
    shadow_mode: bool,
    /// Every limit is a quota-mode limit (global quota mode): a request is denied only when
    /// all of its limits are over.
    #[arg(long, env = "TOLLGATE_QUOTA_MODE")]
    quota_mode: bool,
    /// How long a reservation (`tollgate.reserve`) is held waiting for its settlement; past it,
    /// its units stay spent (set it above your longest response).
    #[arg(long, env = "TOLLGATE_RESERVATION_TTL", value_name = "DURATION", default_value = "10m",
          value_parser = parse_interval)]
    reservation_ttl: Duration,
    /// Most per-value buckets kept in memory (about 100 bytes each; a sliding log counts one
    /// more per 12 hits it can log, so this bounds memory for every algorithm). Past it, new
    /// values of a limit share one overflow bucket until idle buckets are swept.
    #[arg(
        long,
        env = "TOLLGATE_MAX_BUCKETS",
        value_name = "N",
        default_value_t = 1_000_000
    )]
    max_buckets: usize,
    /// Share of a limit in use from which admitted hits also count as near the limit.
    #[arg(long, env = "TOLLGATE_NEAR_LIMIT_RATIO", value_name = "RATIO", default_value_t = 0.8,
          value_parser = parse_ratio)]
    near_limit_ratio: f64,
    /// Most per-limit metric series. Series named from request values (detailed_metric,
    /// value_to_metric, limits sent by Envoy) past it fold into one __overflow__ series.
    #[arg(
        long,
        env = "TOLLGATE_MAX_METRIC_SERIES",
        value_name = "N",
        default_value_t = 10_000
    )]
    max_metric_series: usize,
    /// How long to wait, after SIGTERM/SIGINT, for in-flight calls and open connections
    /// (`10s`, `500ms`; a bare number is seconds).
    #[arg(long, env = "TOLLGATE_DRAIN_TIMEOUT", value_name = "DURATION", default_value = "10s",
          value_parser = parse_seconds)]
    drain_timeout: Duration,
    #[command(flatten)]
    limits: LimitArgs,
    /// Do not watch the configuration files; reload only on SIGHUP or POST /reload.
    #[arg(long, env = "TOLLGATE_NO_WATCH")]
    no_watch: bool,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    rlqs: RlqsArgs,
    /// Save the memory store's buckets to this file every --snapshot-interval and at stop, and
    /// restore them at start, so a restart or a crash does not reset every budget (memory
    /// store only; the file holds the secret that names buckets: it is created mode 0600).
    #[arg(long, env = "TOLLGATE_SNAPSHOT_PATH", value_name = "FILE")]
    snapshot_path: Option<PathBuf>,
    /// Time between two snapshots: what a crash can lose.
    #[arg(long, env = "TOLLGATE_SNAPSHOT_INTERVAL", value_name = "DURATION", default_value = "1s",
          value_parser = parse_interval)]
    snapshot_interval: Duration,
    /// Time between sweeps that drop idle (full) buckets (`10s`; a bare number is seconds).
    #[arg(long, env = "TOLLGATE_SWEEP_INTERVAL", value_name = "DURATION", default_value = "10s",
          value_parser = parse_interval)]
    sweep_interval: Duration,
    // Groups with a help heading of their own come last: a heading applies to every argument
    // after it.
    #[command(flatten)]
    xds: XdsArgs,
    #[command(flatten)]
    grpc_tls: GrpcTlsArgs,
    #[command(flatten)]
    answers: AnswerArgs,
}

/// What a client may hold of the ports (see the README's security section).
#[derive(Debug, Args)]
struct LimitArgs {
    /// Open gRPC connections at most; past it a new connection is closed at once.
    #[arg(
        long,
        env = "TOLLGATE_GRPC_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 1024
    )]
    grpc_max_connections: usize,
    /// Concurrent calls (HTTP/2 streams) per gRPC connection at most.
    #[arg(
        long,
        env = "TOLLGATE_GRPC_MAX_CONCURRENT_STREAMS",
        value_name = "N",
        default_value_t = 128
    )]
    grpc_max_concurrent_streams: u32,
    /// Largest gRPC request message in bytes (a RateLimitRequest of 1 000 descriptors is far
    /// smaller).
    #[arg(long, env = "TOLLGATE_GRPC_MAX_MESSAGE_BYTES", value_name = "BYTES", default_value_t = 4 << 20)]
    grpc_max_message_bytes: usize,
    /// Longest a gRPC call may take when its caller sets no deadline (Envoy always sets one).
    #[arg(long, env = "TOLLGATE_GRPC_CALL_TIMEOUT", value_name = "DURATION", default_value = "10s",
          value_parser = parse_interval)]
    grpc_call_timeout: Duration,
    /// How soon a new connection must send its first bytes, on either port; HTTP/2 keepalive
    /// pings (every 30 s) must be answered within it too.
    #[arg(long, env = "TOLLGATE_HANDSHAKE_TIMEOUT", value_name = "DURATION", default_value = "5s",
          value_parser = parse_interval)]
    handshake_timeout: Duration,
    /// Open admin connections at most.
    #[arg(
        long,
        env = "TOLLGATE_ADMIN_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 256
    )]
    admin_max_connections: usize,
    /// Longest wait for an admin request's headers (idle keep-alive connections included) and
    /// for its whole body and answer (408 past it).
    #[arg(long, env = "TOLLGATE_ADMIN_REQUEST_TIMEOUT", value_name = "DURATION", default_value = "10s",
          value_parser = parse_interval)]
    admin_request_timeout: Duration,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            grpc_connections: self.grpc_max_connections,
            grpc_streams: self.grpc_max_concurrent_streams,
            grpc_message_bytes: self.grpc_max_message_bytes,
            grpc_call_timeout: self.grpc_call_timeout,
            handshake_timeout: self.handshake_timeout,
            admin_connections: self.admin_max_connections,
            admin_request_timeout: self.admin_request_timeout,
        }
    }
}

/// Serves as `args` say (`given`: which flags were set).
pub(super) async fn serve(args: ServeArgs, given: &ArgMatches) -> ExitCode {
    let hangups = catch_hangups();
    let compile = args.compile.options();
    let checked = args.store.config(given).and_then(|store| {
        let limits = match (args.xds.options()?, &args.config) {
            (Some(xds), _) => Source::Xds(Box::new(xds)),
            (None, Some(path)) => Source::Files(path.clone()),
            // clap requires one of them.
            (None, None) => return Err("--config or --xds-server is required".to_owned()),
        };
        Ok((store, limits, args.answers.answers()?))
    });
    let (store, limits, answers) = match checked {
        Ok(checked) => checked,
        Err(error) => {
            tracing::error!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let described = describe(&limits);
    let config = app::Config {
        limits,
        settings: Settings {
            shadow_mode: args.shadow_mode,
            quota_mode: args.quota_mode,
            compile,
            reservation_ttl: args.reservation_ttl,
        },
        max_buckets: args.max_buckets,
        store: store.clone(),
        server: ServerOptions {
            grpc_addr: args.grpc_addr,
            grpc_tls: args.grpc_tls.files(),
            http_addr: args.http_addr,
            metrics_port: args.metrics_addr.map(|addr| MetricsPort {
                addr,
                path: args.metrics_path.clone(),
            }),
            answers,
            sweep_interval: args.sweep_interval,
            watch: !args.no_watch,
            drain_timeout: args.drain_timeout,
            limits: args.limits.limits(),
            rlqs: args.rlqs.options(),
            metrics: MetricsOptions {
                near_limit_ratio: args.near_limit_ratio,
                max_series: args.max_metric_series,
            },
        },
        snapshot: args.snapshot_path.clone().map(|path| SnapshotOptions {
            path,
            interval: args.snapshot_interval,
        }),
        api: args.api.config(),
    };
    let config_store = store;
    let app = match config.build(Arc::new(SystemClock::new())).await {
        Ok(app) => app,
        Err(app::BuildError::Limits(errors)) => {
            for error in &errors.0 {
                tracing::error!("{error}");
            }
            tracing::error!(limits = %described, "invalid configuration: not serving");
            return ExitCode::FAILURE;
        }
        Err(error) => {
            tracing::error!("{error}");
            return ExitCode::FAILURE;
        }
    };
    log_store(
        &config_store,
        &args,
        app.redis_ready(Duration::from_secs(1)).await,
    );
    let app::App { reloader, server } = app;
    let config = reloader.limiter().config();
    for domain in config.domains() {
        tracing::info!("loaded {}", domain.summary());
    }
    for domain in config.authorization_domains() {
        if let Some(authorization) = &domain.authorization {
            tracing::info!(
                domain = %domain.name,
                tenants = authorization.tenants(),
                tiers = authorization.tiers(),
                "ext_authz: this domain checks API keys"
            );
        }
    }
    if let Source::Files(_) = reloader.source() {
        tracing::info!(version = %reloader.status().version, "configuration in force");
        tokio::spawn(reload_on_sighup(reloader, hangups));
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        limits = %described,
        grpc = %args.grpc_addr,
        grpc_tls = args.grpc_tls.files().map_or("off", |tls| if tls.client_ca.is_some() { "mutual" } else { "on" }),
        http = %args.http_addr,
        services = "envoy.service.ratelimit.v3.RateLimitService, envoy.service.auth.v3.Authorization, grpc.health.v1.Health",
        "tollgate serving"
    );
    match server.serve(termination()).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

/// Where the limits come from, for the logs.
fn describe(limits: &Source) -> String {
    match limits {
        Source::Files(path) => path.display().to_string(),
        Source::Xds(xds) => format!("xDS {} as node {}", xds.server, xds.node_id),
    }
}

/// Says at startup where buckets live and how Redis is used (`ready`: whether it answered).
fn log_store(store: &StoreConfig, args: &ServeArgs, ready: Option<bool>) {
    match store {
        StoreConfig::Memory => tracing::info!(
            max_buckets = args.max_buckets,
            snapshots = ?args.snapshot_path,
            "store: memory (each replica counts alone)"
        ),
        StoreConfig::Redis(redis) => {
            let urls: Vec<String> = redis.options.urls.iter().map(|u| redacted(u)).collect();
            tracing::info!(
                ?urls,
                cluster = redis.options.cluster,
                consistency = %redis.consistency,
                failure = %redis.failure,
                timeout = ?redis.options.timeout,
                prefix = %redis.options.prefix,
                "store: redis (one budget for every replica)"
            );
            if ready == Some(false) {
                tracing::warn!(
                    policy = %redis.failure,
                    "redis not reachable yet: answering by the failure policy until it is"
                );
            }
        }
    }
}

/// SIGHUP, caught from the start of `serve`: its default action would kill the process if
/// one arrived while the configuration loads.
#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

fn catch_hangups() -> Hangups {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(hangups) => Some(hangups),
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGHUP; reload with POST /reload");
                None
            }
        }
    }
}

/// Reloads the configuration on every SIGHUP.
async fn reload_on_sighup(reloader: Arc<Reloader>, hangups: Hangups) {
    #[cfg(unix)]
    if let Some(mut hangups) = hangups {
        while hangups.recv().await.is_some() {
            // Errors are logged and kept in the status by the reloader.
            let _ = reloader.reload(Trigger::Signal).await;
        }
    }
    #[cfg(not(unix))]
    let _ = (reloader, hangups);
}

/// Resolves on SIGTERM or SIGINT.
async fn termination() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM; stopping on SIGINT only");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
