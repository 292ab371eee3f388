//! The `tollgate` command line: `serve`, `validate` and `hash-key`.

mod answers;
mod api;
mod reference;
mod rlqs;
mod serve;
mod store;
mod tls;
mod values;
mod xds;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{self, Options};
use crate::quota::Algorithm;
use crate::telemetry::{self, LogFormat};
use serve::ServeArgs;
pub use values::{redacted, write_value};

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
    /// Serve Envoy's RateLimitService and ext_authz Authorization over gRPC, with health, metrics
    /// and JSON endpoints over HTTP.
    ///
    /// Loads and checks every configuration file first and exits with status 1 if any is
    /// invalid or a port is taken. While serving, configuration changes are picked up from the
    /// files (unless --no-watch), on SIGHUP and on POST /reload; an invalid change keeps the
    /// last good configuration. With --xds-server the limits are pushed by an xDS management
    /// server instead. SIGTERM or SIGINT stops accepting calls, lets in-flight calls finish and
    /// exits 0.
    ///
    /// `tollgate serve` with no flag and no TOLLGATE_* variable (or the binary run as
    /// `ratelimit`) reads envoyproxy/ratelimit's environment variables instead (GRPC_PORT,
    /// CONFIG_TYPE, RUNTIME_ROOT, REDIS_URL, ...), with its defaults: fixed windows, every hit
    /// counted. See the README's "Drop-in for envoyproxy/ratelimit".
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
struct ValidateArgs {
    /// A YAML file, or a directory of *.yaml / *.yml files.
    #[arg(value_name = "PATH", env = "TOLLGATE_CONFIG")]
    path: PathBuf,
    #[command(flatten)]
    compile: CompileArgs,
}

#[derive(Debug, Args)]
pub(crate) struct CompileArgs {
    /// Algorithm of limits that set no `algorithm:` (and of limits Envoy sends in requests).
    #[arg(long, env = "TOLLGATE_DEFAULT_ALGORITHM", value_enum, default_value_t = Algorithm::TokenBucket)]
    default_algorithm: Algorithm,
    /// Count every hit, as envoyproxy/ratelimit does: a hit larger than what is left still
    /// counts, putting the limit in debt (as if every limit said `debt: true`, limits Envoy
    /// sends in requests included; a limit's `debt: false` opts out).
    #[arg(long, env = "TOLLGATE_COUNT_DENIED")]
    count_denied: bool,
}

impl CompileArgs {
    fn options(&self) -> Options {
        Options {
            default_algorithm: self.default_algorithm,
            count_denied: self.count_denied,
        }
    }
}

/// Parses the command line (or, in reference mode, the reference service's environment) and
/// runs it.
pub fn main() -> ExitCode {
    let env =
        reference::Env::new(std::env::vars_os().filter_map(|(name, value)| {
            Some((name.into_string().ok()?, value.into_string().ok()?))
        }));
    let invocation = match reference::invocation(
        std::env::args_os().collect(),
        &env,
        &tollgate_variables(),
    ) {
        Ok(invocation) => invocation,
        Err(errors) => {
            for error in &errors {
                eprintln!("error: {error}");
            }
            eprintln!(
                "error: the envoyproxy/ratelimit environment above cannot be served (reference mode: `tollgate serve` with no flag and no TOLLGATE_* variable)"
            );
            return ExitCode::FAILURE;
        }
    };
    let matches = Cli::command().get_matches_from(&invocation.args);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    let telemetry =
        match telemetry::init(&cli.log_level, cli.log_format, cli.otlp_endpoint.as_deref()) {
            Ok(telemetry) => telemetry,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::FAILURE;
            }
        };
    if let Some(translation) = &invocation.reference {
        let flags: Vec<String> = translation.flags.iter().map(|f| redacted(f)).collect();
        // At warn: the reference's default log level.
        tracing::warn!(
            "reference mode: no tollgate flag and no TOLLGATE_* variable, so the envoyproxy/ratelimit environment is read, as `tollgate serve {}`",
            flags.join(" ")
        );
        for warning in &translation.warnings {
            tracing::warn!("{warning}");
        }
    }
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
            let given = matches.subcommand_matches("serve").unwrap_or(&matches);
            runtime.block_on(serve::serve(*args, given))
        }
    };
    telemetry.flush();
    code
}

/// Every `TOLLGATE_*` variable a flag reads: with one set, the command line is tollgate's.
fn tollgate_variables() -> Vec<String> {
    let command = Cli::command();
    let mut commands = vec![&command];
    commands.extend(command.get_subcommands());
    commands
        .iter()
        .flat_map(|command| command.get_arguments())
        .filter_map(|arg| arg.get_env()?.to_str().map(str::to_owned))
        .collect()
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
