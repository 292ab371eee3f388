//! The `tollgate` command line: `serve` and `validate`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::app::{self, RedisConfig, StoreConfig};
use crate::clock::SystemClock;
use crate::config::{self, Options};
use crate::decision::Settings;
use crate::metrics::MetricsOptions;
use crate::quota::Algorithm;
use crate::reload::{Reloader, Trigger};
use crate::rule::Consistency;
use crate::server::ServerOptions;
use crate::snapshot::SnapshotOptions;
use crate::store::{FailurePolicy, RedisOptions, RedisTls, TlsError, is_tls_url};
use crate::telemetry::{self, LogFormat};

/// tollgate: an Envoy rate limit service (envoy.service.ratelimit.v3) with hot in-memory
/// token buckets, reading envoyproxy/ratelimit YAML files unchanged.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log level or filter (e.g. `info`, `tollgate=debug`); RUST_LOG overrides it.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_LOG_LEVEL",
        default_value = "info"
    )]
    log_level: String,
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, global = true, env = "TOLLGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Export spans over OTLP/HTTP to this collector (e.g. http://127.0.0.1:4318), continuing
    /// the trace context Envoy sends. Needs a build with `--features otlp`.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    otlp_endpoint: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve Envoy's RateLimitService over gRPC, with health and JSON endpoints over HTTP.
    ///
    /// Loads and checks every configuration file first and exits with status 1 if any is
    /// invalid or a port is taken. While serving, configuration changes are picked up from the
    /// files (unless --no-watch), on SIGHUP and on POST /reload; an invalid change keeps the
    /// last good configuration. SIGTERM or SIGINT stops accepting calls, lets in-flight calls
    /// finish and exits 0.
    Serve(Box<ServeArgs>),
    /// Check configuration files without serving.
    ///
    /// Prints one summary line per domain and exits 0 when valid; prints one line per problem
    /// (file, line, descriptor, what is wrong) and exits 1 when not.
    Validate(ValidateArgs),
    /// Print the digest of an API key read from stdin, for a tenant's `api_keys:`.
    ///
    /// Reads the key from standard input (a trailing newline is ignored) so it never appears
    /// in the process list or shell history, and prints `sha256:<64 hex digits>`.
    HashKey,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// A YAML file, or a directory of *.yaml / *.yml files (one domain per file).
    #[arg(long, env = "TOLLGATE_CONFIG", value_name = "PATH")]
    config: PathBuf,
    /// Address of the gRPC port Envoy calls (RateLimitService and grpc.health.v1).
    #[arg(
        long,
        env = "TOLLGATE_GRPC_ADDR",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:8081"
    )]
    grpc_addr: SocketAddr,
    /// Address of the HTTP admin port (GET /healthcheck, POST /json). Keep it on loopback
    /// unless callers there are trusted.
    #[arg(
        long,
        env = "TOLLGATE_HTTP_ADDR",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:8080"
    )]
    http_addr: SocketAddr,
    #[command(flatten)]
    compile: CompileArgs,
    /// Count and report every limit but never deny (global shadow mode).
    #[arg(long, env = "TOLLGATE_SHADOW_MODE")]
    shadow_mode: bool,
    /// Most per-value buckets kept in memory (about 100 bytes each). Past it, new values of a
    /// limit share one overflow bucket until idle buckets are swept.
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
    /// Seconds to wait, after SIGTERM/SIGINT, for in-flight calls and open connections.
    #[arg(
        long,
        env = "TOLLGATE_DRAIN_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 10
    )]
    drain_timeout: u64,
    /// Do not watch the configuration files; reload only on SIGHUP or POST /reload.
    #[arg(long, env = "TOLLGATE_NO_WATCH")]
    no_watch: bool,
    #[command(flatten)]
    store: StoreArgs,
    /// Save the memory store's buckets to this file every --snapshot-interval and at stop, and
    /// restore them at start, so a restart or a crash does not reset every budget (memory
    /// store only; the file holds the secret that names buckets: it is created mode 0600).
    #[arg(long, env = "TOLLGATE_SNAPSHOT_PATH", value_name = "FILE")]
    snapshot_path: Option<PathBuf>,
    /// Time between two snapshots: what a crash can lose.
    #[arg(long, env = "TOLLGATE_SNAPSHOT_INTERVAL", value_name = "DURATION", default_value = "1s",
          value_parser = parse_interval)]
    snapshot_interval: Duration,
    /// Seconds between sweeps that drop idle (full) buckets.
    #[arg(long, env = "TOLLGATE_SWEEP_INTERVAL", value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    sweep_interval: u64,
}

/// Where buckets live.
#[derive(Debug, Args)]
struct StoreArgs {
    /// Where buckets live: this process's memory, or Redis shared by every replica.
    #[arg(long, env = "TOLLGATE_STORE", value_enum, default_value_t = StoreArg::Memory)]
    store: StoreArg,
    /// Redis to count in (`redis://[user:password@]host:port[/db]`, `rediss://` for TLS).
    /// Repeat it (or give a comma-separated list) with --redis-cluster to seed a Redis Cluster.
    #[arg(
        long,
        env = "TOLLGATE_REDIS_URL",
        value_name = "URL",
        value_delimiter = ',',
        required_if_eq("store", "redis")
    )]
    redis_url: Vec<String>,
    /// The --redis-url addresses are Redis Cluster nodes.
    #[arg(long, env = "TOLLGATE_REDIS_CLUSTER")]
    redis_cluster: bool,
    /// How replicas agree on a limit: `strict` decides every request atomically in Redis;
    /// `cached` spends tokens leased from Redis in slices, off the request path. A limit's
    /// `consistency:` overrides it.
    #[arg(long, env = "TOLLGATE_CONSISTENCY", value_enum, default_value_t = Consistency::Strict)]
    consistency: Consistency,
    /// What to answer while Redis is unreachable or slower than its time: decide from this
    /// replica's share of each limit (`local`: the limit divided among the live replicas,
    /// starting from what Redis last reported), admit (`allow`), or deny (`deny`).
    #[arg(long, env = "TOLLGATE_REDIS_FAILURE", value_enum, default_value_t = FailurePolicy::Local)]
    redis_failure: FailurePolicy,
    /// Longest wait for Redis on one request before the failure policy answers. A call also
    /// waits at most three quarters of what the caller allows (Envoy's grpc-timeout), so
    /// Envoy always gets tollgate's answer; a call given up on is reconciled when it answers.
    #[arg(long, env = "TOLLGATE_REDIS_TIMEOUT", value_name = "DURATION", default_value = "50ms",
          value_parser = humantime::parse_duration)]
    redis_timeout: Duration,
    /// Prefix of every Redis key (also seeds bucket names: replicas sharing limits must agree).
    #[arg(
        long,
        env = "TOLLGATE_REDIS_PREFIX",
        value_name = "PREFIX",
        default_value = "tollgate:"
    )]
    redis_prefix: String,
    /// PEM file of the CA certificates that sign the rediss:// server's certificate, trusted
    /// instead of the bundled webpki (Mozilla) roots (for a private CA).
    #[arg(long, env = "TOLLGATE_REDIS_CA_FILE", value_name = "PATH")]
    redis_ca_file: Option<PathBuf>,
    /// PEM client certificate presented to rediss:// servers that require mutual TLS (with
    /// --redis-client-key).
    #[arg(
        long,
        env = "TOLLGATE_REDIS_CLIENT_CERT",
        value_name = "PATH",
        requires = "redis_client_key"
    )]
    redis_client_cert: Option<PathBuf>,
    /// PEM private key of --redis-client-cert.
    #[arg(
        long,
        env = "TOLLGATE_REDIS_CLIENT_KEY",
        value_name = "PATH",
        requires = "redis_client_cert"
    )]
    redis_client_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreArg {
    /// Buckets in this process (per replica).
    Memory,
    /// Buckets in Redis (global across replicas).
    Redis,
}

impl StoreArgs {
    /// Where buckets live, as the flags say.
    fn config(&self) -> Result<StoreConfig, String> {
        if self.store == StoreArg::Memory {
            return Ok(StoreConfig::Memory);
        }
        Ok(StoreConfig::Redis(RedisConfig {
            options: RedisOptions {
                urls: self.redis_url.clone(),
                cluster: self.redis_cluster,
                prefix: self.redis_prefix.clone(),
                timeout: self.redis_timeout,
                tls: self.tls()?,
            },
            consistency: self.consistency,
            failure: self.redis_failure,
        }))
    }

    /// The --redis-ca-file and client identity, read; only with rediss:// URLs.
    fn tls(&self) -> Result<RedisTls, String> {
        let flag = match (&self.redis_ca_file, &self.redis_client_cert) {
            (Some(_), _) => "--redis-ca-file",
            (None, Some(_)) => "--redis-client-cert",
            (None, None) => return Ok(RedisTls::default()),
        };
        if let Some(url) = self.redis_url.iter().find(|u| !is_tls_url(u)) {
            return Err(format!(
                "{flag} needs rediss:// URLs, not {}",
                redacted(url)
            ));
        }
        // Checked now, so that a wrong file is named at startup rather than failing every
        // handshake later.
        let read = |flag: &str, path: &Path, check: &dyn Fn(&[u8]) -> Result<(), TlsError>| {
            let at = |e: &dyn std::fmt::Display| format!("{flag} {}: {e}", path.display());
            let pem = std::fs::read(path).map_err(|e| at(&e))?;
            check(&pem).map_err(|e| at(&e))?;
            Ok::<_, String>(pem)
        };
        let ca = match &self.redis_ca_file {
            Some(path) => Some(read(
                "--redis-ca-file",
                path,
                &RedisTls::check_certificates,
            )?),
            None => None,
        };
        let identity = match (&self.redis_client_cert, &self.redis_client_key) {
            (Some(cert), Some(key)) => {
                let chain = read("--redis-client-cert", cert, &RedisTls::check_certificates)?;
                let check_key = |pem: &[u8]| RedisTls::check_identity(&chain, pem);
                let key = read("--redis-client-key", key, &check_key)?;
                Some((chain, key))
            }
            _ => None,
        };
        Ok(RedisTls { ca, identity })
    }
}

/// `url` without its password, for logs.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[derive(Debug, Args)]
struct ValidateArgs {
    /// A YAML file, or a directory of *.yaml / *.yml files.
    #[arg(value_name = "PATH")]
    path: PathBuf,
    #[command(flatten)]
    compile: CompileArgs,
}

#[derive(Debug, Args)]
struct CompileArgs {
    /// Algorithm of limits that set no `algorithm:` (and of limits Envoy sends in requests).
    #[arg(long, env = "TOLLGATE_DEFAULT_ALGORITHM", value_enum, default_value_t = Algorithm::TokenBucket)]
    default_algorithm: Algorithm,
}

impl CompileArgs {
    fn options(&self) -> Options {
        Options {
            default_algorithm: self.default_algorithm,
        }
    }
}

/// Writes a command-line value's name (`strict`, `local`, …): the one place each enum's names
/// are spelt is its `ValueEnum` derive.
pub fn write_value(value: &impl ValueEnum, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    match value.to_possible_value() {
        Some(possible) => f.write_str(possible.get_name()),
        None => Ok(()),
    }
}

/// A duration with its unit (`500ms`, `2s`), more than zero.
fn parse_interval(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        Ok(_) => Err("must be more than zero".to_owned()),
        Err(error) => Err(format!("{error} (e.g. 500ms, 2s)")),
    }
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!("expected a number from 0 to 1, got {text:?}")),
    }
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry =
        match telemetry::init(&cli.log_level, cli.log_format, cli.otlp_endpoint.as_deref()) {
            Ok(telemetry) => telemetry,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::FAILURE;
            }
        };
    let code = match cli.command {
        Command::Validate(args) => validate(&args.path, &args.compile.options()),
        Command::HashKey => hash_key(),
        Command::Serve(args) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("error: cannot start the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(serve(*args))
        }
    };
    telemetry.flush();
    code
}

fn hash_key() -> ExitCode {
    let mut key = String::new();
    if let Err(error) = std::io::stdin().read_line(&mut key) {
        eprintln!("error: cannot read the key from stdin: {error}");
        return ExitCode::FAILURE;
    }
    let key = key.trim_end_matches(['\n', '\r']);
    if key.is_empty() {
        eprintln!("error: no key on stdin (usage: printf %s \"$KEY\" | tollgate hash-key)");
        return ExitCode::FAILURE;
    }
    println!("{}", crate::authz::hash_key(key));
    ExitCode::SUCCESS
}

fn validate(path: &Path, options: &Options) -> ExitCode {
    match config::load(path, options) {
        Ok(config) => {
            for domain in config.domains() {
                println!("{}", domain.summary());
            }
            for (rule, name) in config::dangling_replaces(&config) {
                eprintln!(
                    "warning: descriptor '{rule}' replaces '{name}', which no limit is named"
                );
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in &errors.0 {
                eprintln!("error: {error}");
            }
            eprintln!("{} problem(s) found", errors.0.len());
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    let hangups = catch_hangups();
    let compile = args.compile.options();
    let store = match args.store.config() {
        Ok(store) => store,
        Err(error) => {
            tracing::error!("cannot count in redis: {error}");
            return ExitCode::FAILURE;
        }
    };
    let config = app::Config {
        limits: args.config.clone(),
        compile,
        settings: Settings {
            shadow_mode: args.shadow_mode,
            default_algorithm: compile.default_algorithm,
        },
        max_buckets: args.max_buckets,
        store,
        server: ServerOptions {
            grpc_addr: args.grpc_addr,
            http_addr: args.http_addr,
            sweep_interval: Duration::from_secs(args.sweep_interval),
            watch: !args.no_watch,
            drain_timeout: Duration::from_secs(args.drain_timeout),
            metrics: MetricsOptions {
                near_limit_ratio: args.near_limit_ratio,
                max_series: args.max_metric_series,
            },
        },
        snapshot: args.snapshot_path.clone().map(|path| SnapshotOptions {
            path,
            interval: args.snapshot_interval,
        }),
    };
    let app = match config.build(Arc::new(SystemClock::new())).await {
        Ok(app) => app,
        Err(app::BuildError::Limits(errors)) => {
            for error in &errors.0 {
                tracing::error!("{error}");
            }
            tracing::error!(path = %args.config.display(), "invalid configuration: not serving");
            return ExitCode::FAILURE;
        }
        Err(error) => {
            tracing::error!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let urls: Vec<String> = args.store.redis_url.iter().map(|u| redacted(u)).collect();
    match app.redis_ready(Duration::from_secs(1)).await {
        Some(true) => tracing::info!(?urls, "counting in redis"),
        Some(false) => tracing::warn!(
            ?urls,
            policy = %args.store.redis_failure,
            "redis not reachable yet: answering by the failure policy until it is"
        ),
        None => {}
    }
    let app::App { reloader, server } = app;
    for domain in reloader.limiter().config().domains() {
        tracing::info!("loaded {}", domain.summary());
    }
    tracing::info!(version = %reloader.status().version, "configuration in force");
    tokio::spawn(reload_on_sighup(reloader, hangups));
    tracing::info!(grpc = %args.grpc_addr, http = %args.http_addr, "serving");
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
