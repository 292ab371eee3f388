//! Reference mode: started with no tollgate flag and none of tollgate's `TOLLGATE_*`
//! variables (or as `ratelimit`, the name Envoy Gateway's Deployment runs, `/bin/ratelimit`),
//! `tollgate serve` reads the environment of envoyproxy/ratelimit (names and defaults of its
//! `settings.go`) and translates it into tollgate's own flags, so one parser and one set of
//! checks serve both. Defaults are the reference's: fixed windows, every hit counted. A
//! variable tollgate cannot honour is an error or a warning naming it, never ignored.

mod env;
mod redis;
#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) use env::Env;

/// What the process was asked to do, once the reference environment is translated.
#[derive(Debug)]
pub(crate) struct Invocation {
    /// The command line to parse.
    pub(crate) args: Vec<OsString>,
    /// In reference mode: what the environment became, and warnings about variables tollgate
    /// cannot honour, to log once logging is set up.
    pub(crate) reference: Option<Translation>,
}

/// The reference environment as tollgate flags.
#[derive(Debug, Default)]
pub(crate) struct Translation {
    /// The flags, after `serve`.
    pub(crate) flags: Vec<String>,
    /// One line per variable that does not work as in the reference.
    pub(crate) warnings: Vec<String>,
}

/// The binary's name under which it behaves as the reference's `/bin/ratelimit`.
pub(crate) const REFERENCE_BINARY: &str = "ratelimit";

/// Reads the command line `args` and environment `env`: `ratelimit` alone is `serve` (with
/// arguments, it is tollgate's command line); `serve` alone, with none of
/// `tollgate_variables` set, is reference mode.
pub(crate) fn invocation(
    mut args: Vec<OsString>,
    env: &Env,
    tollgate_variables: &[String],
) -> Result<Invocation, Vec<String>> {
    let invoked_as = args
        .first()
        .and_then(|arg0| Path::new(arg0).file_name())
        .and_then(|name| name.to_str())
        .unwrap_or_default();
    if invoked_as == REFERENCE_BINARY && args.len() == 1 {
        args.push(OsString::from("serve"));
    }
    let bare_serve = args.len() == 2 && args[1] == "serve";
    let tollgate_set = tollgate_variables
        .iter()
        .any(|name| env.get(name).is_some());
    if !bare_serve || tollgate_set {
        return Ok(Invocation {
            args,
            reference: None,
        });
    }
    let translation = translate(env)?;
    args.extend(translation.flags.iter().map(OsString::from));
    Ok(Invocation {
        args,
        reference: Some(translation),
    })
}

/// Translates the reference environment, or says every variable that cannot work.
pub(crate) fn translate(env: &Env) -> Result<Translation, Vec<String>> {
    let mut out = Translator {
        env,
        translation: Translation::default(),
        errors: Vec::new(),
    };
    out.listeners();
    out.logs();
    out.limits();
    out.grpc_tls();
    out.store();
    out.decisions();
    out.metrics();
    out.tracing();
    out.unsupported();
    if out.errors.is_empty() {
        Ok(out.translation)
    } else {
        Err(out.errors)
    }
}

struct Translator<'a> {
    env: &'a Env,
    translation: Translation,
    errors: Vec<String>,
}

impl Translator<'_> {
    fn flag(&mut self, flag: &str) {
        self.translation.flags.push(flag.to_owned());
    }

    fn set(&mut self, flag: &str, value: impl Into<String>) {
        self.flag(flag);
        self.translation.flags.push(value.into());
    }

    fn warn(&mut self, warning: impl Into<String>) {
        self.translation.warnings.push(warning.into());
    }

    /// Records an error; the value the error stands for, for the rest of the translation.
    fn check<T>(&mut self, result: Result<T, String>, fallback: T) -> T {
        result.unwrap_or_else(|error| {
            self.errors.push(error);
            fallback
        })
    }

    /// `GRPC_HOST`/`GRPC_PORT`, `HOST`/`PORT`; `GRPC_UDS` cannot be served.
    fn listeners(&mut self) {
        let env = self.env;
        let grpc_port = env.number("GRPC_PORT", 8081u16);
        let grpc_port = self.check(grpc_port, 8081);
        let http_port = env.number("PORT", 8080u16);
        let http_port = self.check(http_port, 8080);
        let grpc = address(&env.string("GRPC_HOST", "0.0.0.0"), grpc_port);
        let http = address(&env.string("HOST", "0.0.0.0"), http_port);
        self.set("--grpc-addr", grpc);
        self.set("--http-addr", http);
        if let Some(socket) = env.get("GRPC_UDS") {
            self.errors.push(format!(
                "GRPC_UDS={socket}: tollgate serves gRPC on TCP only (GRPC_HOST, GRPC_PORT)"
            ));
        }
    }

    /// `LOG_LEVEL` (the reference's default is `WARN`) and `LOG_FORMAT`.
    fn logs(&mut self) {
        let level = self.env.string("LOG_LEVEL", "WARN").to_ascii_lowercase();
        let level = match level.as_str() {
            "trace" | "debug" | "info" | "error" => level,
            "warn" | "warning" => "warn".to_owned(),
            // tracing has nothing above error.
            "fatal" | "panic" => "error".to_owned(),
            other => {
                self.errors.push(format!(
                    "LOG_LEVEL={other}: expected trace, debug, info, warn, error, fatal or panic"
                ));
                "warn".to_owned()
            }
        };
        self.set("--log-level", level);
        match self
            .env
            .string("LOG_FORMAT", "text")
            .to_ascii_lowercase()
            .as_str()
        {
            format @ ("text" | "json") => self.set("--log-format", format),
            other => self
                .errors
                .push(format!("LOG_FORMAT={other}: expected text or json")),
        }
    }

    /// `CONFIG_TYPE`: `FILE` (the `RUNTIME_*` layout) or `GRPC_XDS_SOTW` (the
    /// `CONFIG_GRPC_XDS_*` subscription).
    fn limits(&mut self) {
        match self
            .env
            .string("CONFIG_TYPE", "FILE")
            .to_ascii_uppercase()
            .as_str()
        {
            "FILE" => self.files(),
            "GRPC_XDS_SOTW" => self.xds(),
            other => self.errors.push(format!(
                "CONFIG_TYPE={other}: expected FILE or GRPC_XDS_SOTW"
            )),
        }
    }

    /// The files under `RUNTIME_ROOT/RUNTIME_SUBDIRECTORY/RUNTIME_APPDIRECTORY`.
    fn files(&mut self) {
        let env = self.env;
        let root = PathBuf::from(env.string("RUNTIME_ROOT", "/srv/runtime_data/current"));
        let directory = root
            .join(env.string("RUNTIME_SUBDIRECTORY", ""))
            .join(env.string("RUNTIME_APPDIRECTORY", "config"));
        if env.flag("RUNTIME_IGNOREDOTFILES", false) == Ok(false)
            && env.get("RUNTIME_IGNOREDOTFILES").is_some()
        {
            self.warn(
                "RUNTIME_IGNOREDOTFILES=false: tollgate always skips hidden files and directories",
            );
        }
        let watch_root = env.flag("RUNTIME_WATCH_ROOT", true);
        if self.check(watch_root, true) && root.is_symlink() {
            self.warn(format!(
                "RUNTIME_WATCH_ROOT=true: {} is a symlink; tollgate watches {} and its parent, so a swap of the symlink itself is seen on SIGHUP or POST /reload only",
                root.display(),
                directory.display()
            ));
        }
        self.unread_entries(&directory);
        if env.get("FORCE_START_WITHOUT_INITIAL_CONFIG").is_some() {
            self.warn("FORCE_START_WITHOUT_INITIAL_CONFIG applies to CONFIG_TYPE=GRPC_XDS_SOTW: files are read before serving");
        }
        self.set("--config", directory.display().to_string());
    }

    /// Warns of what the reference would read in `directory` and tollgate does not: nested
    /// directories and files that are not `*.yaml` / `*.yml`.
    fn unread_entries(&mut self, directory: &Path) {
        let Ok(entries) = std::fs::read_dir(directory) else {
            // tollgate reports a missing directory by itself.
            return;
        };
        let mut unread: Vec<String> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                let name = name.unwrap_or_default();
                let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
                let hidden = name.starts_with('.');
                let read = yaml && path.is_file();
                !(hidden || read)
            })
            .map(|path| path.display().to_string())
            .collect();
        unread.sort();
        if !unread.is_empty() {
            self.warn(format!(
                "tollgate reads only the *.yaml and *.yml files at the top of {}, not: {}",
                directory.display(),
                unread.join(", ")
            ));
        }
    }

    /// The `CONFIG_GRPC_XDS_*` and `XDS_CLIENT_*` subscription.
    fn xds(&mut self) {
        let env = self.env;
        let tls = env.flag("CONFIG_GRPC_XDS_SERVER_USE_TLS", false);
        let tls = self.check(tls, false);
        let server = env.string("CONFIG_GRPC_XDS_SERVER_URL", "localhost:18000");
        let scheme = if tls { "https" } else { "http" };
        self.set("--xds-server", format!("{scheme}://{server}"));
        self.set(
            "--xds-node-id",
            env.string("CONFIG_GRPC_XDS_NODE_ID", "default"),
        );
        if let Some(metadata) = env.get("CONFIG_GRPC_XDS_NODE_METADATA") {
            for pair in metadata.split(',').filter(|p| !p.is_empty()) {
                if pair.contains('=') {
                    self.set("--xds-node-metadata", pair);
                } else {
                    self.warn(format!("CONFIG_GRPC_XDS_NODE_METADATA: {pair:?} is not key=value: left out, as the reference leaves it out"));
                }
            }
        }
        if let Some(headers) = env.get("CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS") {
            for pair in headers.split(',').filter(|p| !p.is_empty()) {
                self.set("--xds-header", pair);
            }
        }
        for (variable, flag) in [
            ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", "--xds-ca-file"),
            ("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", "--xds-client-cert"),
            ("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", "--xds-client-key"),
            ("CONFIG_GRPC_XDS_SERVER_TLS_SAN", "--xds-server-name"),
        ] {
            match (env.get(variable), tls) {
                (Some(value), true) => self.set(flag, value),
                (Some(_), false) => self.warn(format!(
                    "{variable} is not used: CONFIG_GRPC_XDS_SERVER_USE_TLS is not true (the reference ignores it too)"
                )),
                (None, _) => {}
            }
        }
        let initial = env.duration(
            "XDS_CLIENT_BACKOFF_INITIAL_INTERVAL",
            Duration::from_secs(10),
        );
        let initial = self.check(initial, Duration::from_secs(10));
        let max = env.duration("XDS_CLIENT_BACKOFF_MAX_INTERVAL", Duration::from_secs(60));
        let max = self.check(max, Duration::from_secs(60));
        self.set(
            "--xds-retry-initial",
            humantime::format_duration(initial).to_string(),
        );
        self.set(
            "--xds-retry-max",
            humantime::format_duration(max.max(initial)).to_string(),
        );
        if let Some(bytes) = env.get("XDS_CLIENT_MAX_MSG_SIZE_IN_BYTES") {
            self.set("--xds-max-message-bytes", bytes);
        }
        if self.check(env.flag("FORCE_START_WITHOUT_INITIAL_CONFIG", false), false) {
            self.flag("--xds-start-without-config");
            // Without a forced start (or with files), nothing is served before limits exist:
            // health is then never OK without a configuration anyway.
            if self.check(
                env.flag("HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED", false),
                false,
            ) {
                self.flag("--xds-unhealthy-until-first-config");
            }
        }
    }

    /// `GRPC_SERVER_USE_TLS` and its files; Envoy Gateway names the client CA
    /// `GRPC_SERVER_TLS_CA_CERT`, which the reference does not read: tollgate does, so the
    /// Envoys must present their certificates (Envoy Gateway's do).
    fn grpc_tls(&mut self) {
        let env = self.env;
        let files = [
            ("GRPC_SERVER_TLS_CERT", "--grpc-tls-cert"),
            ("GRPC_SERVER_TLS_KEY", "--grpc-tls-key"),
        ];
        let client_ca = env
            .get("GRPC_CLIENT_TLS_CACERT")
            .map(|ca| ("GRPC_CLIENT_TLS_CACERT", ca))
            .or_else(|| {
                env.get("GRPC_SERVER_TLS_CA_CERT")
                    .map(|ca| ("GRPC_SERVER_TLS_CA_CERT", ca))
            });
        if !self.check(env.flag("GRPC_SERVER_USE_TLS", false), false) {
            let set: Vec<&str> = files
                .iter()
                .map(|(variable, _)| *variable)
                .chain([
                    "GRPC_CLIENT_TLS_CACERT",
                    "GRPC_SERVER_TLS_CA_CERT",
                    "GRPC_CLIENT_TLS_SAN",
                ])
                .filter(|variable| env.get(variable).is_some())
                .collect();
            if !set.is_empty() {
                self.warn(format!(
                    "{} not used: GRPC_SERVER_USE_TLS is not true, so gRPC is served in clear text (as the reference does)",
                    set.join(", ")
                ));
            }
            return;
        }
        for (variable, flag) in files {
            match env.get(variable) {
                Some(path) => self.set(flag, path),
                None => self
                    .errors
                    .push(format!("GRPC_SERVER_USE_TLS=true needs {variable}")),
            }
        }
        if let Some((variable, ca)) = client_ca {
            if variable == "GRPC_SERVER_TLS_CA_CERT" {
                self.warn(format!("GRPC_SERVER_TLS_CA_CERT={ca}: read as GRPC_CLIENT_TLS_CACERT (mutual TLS: clients must present a certificate signed by it), which Envoy Gateway means by it; the reference does not read it"));
            }
            self.set("--grpc-tls-client-ca", ca);
            if let Some(san) = env.get("GRPC_CLIENT_TLS_SAN") {
                self.set("--grpc-tls-client-san", san);
            }
        } else if env.get("GRPC_CLIENT_TLS_SAN").is_some() {
            self.warn("GRPC_CLIENT_TLS_SAN is not used: no GRPC_CLIENT_TLS_CACERT verifies client certificates");
        }
    }

    /// `BACKEND_TYPE` and the Redis variables.
    fn store(&mut self) {
        match self
            .env
            .string("BACKEND_TYPE", "redis")
            .to_ascii_lowercase()
            .as_str()
        {
            "redis" => {
                let flags = redis::flags(self.env);
                for flag in self.check(flags, Vec::new()) {
                    self.flag(&flag);
                }
            }
            "memcache" => self.errors.push(
                "BACKEND_TYPE=memcache: tollgate counts in memory or in Redis, not in memcached"
                    .to_owned(),
            ),
            other => self
                .errors
                .push(format!("BACKEND_TYPE={other}: expected redis")),
        }
    }

    /// The reference's counting: fixed windows, every hit counted unless
    /// `STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT`; shadow and quota modes; what answers carry.
    fn decisions(&mut self) {
        let env = self.env;
        self.set("--default-algorithm", "fixed_window");
        if !self.check(
            env.flag("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", false),
            false,
        ) {
            self.flag("--count-denied");
        }
        for (variable, flag) in [
            ("SHADOW_MODE", "--shadow-mode"),
            ("QUOTA_MODE", "--quota-mode"),
            ("RESPONSE_DYNAMIC_METADATA", "--response-dynamic-metadata"),
        ] {
            if self.check(env.flag(variable, false), false) {
                self.flag(flag);
            }
        }
        if self.check(env.flag("LIMIT_RESPONSE_HEADERS_ENABLED", false), false) {
            self.flag("--response-headers");
            for (variable, flag) in [
                ("LIMIT_LIMIT_HEADER", "--response-header-limit"),
                ("LIMIT_REMAINING_HEADER", "--response-header-remaining"),
                ("LIMIT_RESET_HEADER", "--response-header-reset"),
            ] {
                if let Some(name) = env.get(variable) {
                    self.set(flag, name);
                }
            }
        }
        if let Some(ratio) = env.get("NEAR_LIMIT_RATIO") {
            self.set("--near-limit-ratio", ratio);
        }
        if self.check(env.flag("MERGE_DOMAIN_CONFIG", false), false) {
            self.errors.push(
                "MERGE_DOMAIN_CONFIG=true: tollgate needs one file (or resource) per domain"
                    .to_owned(),
            );
        }
    }

    /// Prometheus on a port of its own (`USE_PROMETHEUS`, `PROMETHEUS_ADDR`,
    /// `PROMETHEUS_PATH`); statsd is not spoken.
    fn metrics(&mut self) {
        let env = self.env;
        if self.check(env.flag("USE_STATSD", true), true) {
            self.warn("USE_STATSD=true (the reference's default): tollgate sends no statsd; it serves Prometheus metrics at GET /metrics on PORT, and on PROMETHEUS_ADDR with USE_PROMETHEUS=true");
        }
        let prometheus = self.check(env.flag("USE_PROMETHEUS", false), false);
        if prometheus {
            let address = env.string("PROMETHEUS_ADDR", ":9090");
            let address = match address.strip_prefix(':') {
                Some(port) => format!("0.0.0.0:{port}"),
                None => address,
            };
            self.set("--metrics-addr", address);
            self.set("--metrics-path", env.string("PROMETHEUS_PATH", "/metrics"));
        }
        if let Some(mapper) = env.get("PROMETHEUS_MAPPER_YAML") {
            self.warn(format!("PROMETHEUS_MAPPER_YAML={mapper} is not read: tollgate's metrics have names of their own (tollgate_rate_limit_*_total with domain and descriptor labels; see the README)"));
        }
    }

    /// `TRACING_*`: OTLP over HTTP, in a build with the `otlp` feature.
    fn tracing(&mut self) {
        let env = self.env;
        if !self.check(env.flag("TRACING_ENABLED", false), false) {
            return;
        }
        let endpoint = env
            .get("OTEL_EXPORTER_OTLP_ENDPOINT")
            .unwrap_or("http://localhost:4318");
        if !cfg!(feature = "otlp") {
            self.warn("TRACING_ENABLED=true: this tollgate is built without the otlp feature and exports no spans");
            return;
        }
        self.set("--otlp-endpoint", endpoint);
        if !env
            .string("TRACING_EXPORTER_PROTOCOL", "http")
            .eq_ignore_ascii_case("http")
        {
            self.warn("TRACING_EXPORTER_PROTOCOL: tollgate exports OTLP over HTTP only: point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's HTTP port (4318)");
        }
        let named: Vec<&str> = [
            "TRACING_SERVICE_NAME",
            "TRACING_SERVICE_NAMESPACE",
            "TRACING_SERVICE_INSTANCE_ID",
        ]
        .into_iter()
        .filter(|variable| env.get(variable).is_some())
        .collect();
        if !named.is_empty() {
            self.warn(format!(
                "{}: spans carry tollgate's own service name",
                named.join(", ")
            ));
        }
        if env.differs("TRACING_SAMPLING_RATE", "1") {
            self.warn(
                "TRACING_SAMPLING_RATE: tollgate exports every span of a trace Envoy samples",
            );
        }
    }

    /// Settings with no counterpart, whose absence changes no decision: a warning when set
    /// to anything but the reference's default.
    fn unsupported(&mut self) {
        for (variable, default, why) in UNSUPPORTED {
            if self.env.differs(variable, default) {
                self.warn(format!("{variable} is not used: {why}"));
            }
        }
        let per_second: Vec<&str> = self.env.starting_with("REDIS_PERSECOND_").collect();
        if self.env.differs("REDIS_PERSECOND", "false") {
            self.warn(format!("REDIS_PERSECOND=true: per-second limits are counted in REDIS_URL's Redis with the others ({} not used)", per_second.join(", ")));
        } else if !per_second.is_empty() {
            self.warn(format!(
                "{} not used: REDIS_PERSECOND is not true",
                per_second.join(", ")
            ));
        }
        if self.env.differs("REDIS_SENTINEL_AUTH", "")
            && !self
                .env
                .string("REDIS_TYPE", "SINGLE")
                .eq_ignore_ascii_case("sentinel")
        {
            self.warn("REDIS_SENTINEL_AUTH is not used: REDIS_TYPE is not sentinel".to_owned());
        }
        let memcache: Vec<&str> = self.env.starting_with("MEMCACHE_").collect();
        if !memcache.is_empty()
            && self
                .env
                .string("BACKEND_TYPE", "redis")
                .eq_ignore_ascii_case("redis")
        {
            self.warn(format!(
                "{} not used: BACKEND_TYPE is redis",
                memcache.join(", ")
            ));
        }
    }
}

/// The reference's settings tollgate has no counterpart for: name, default, what tollgate does
/// instead.
const UNSUPPORTED: &[(&str, &str, &str)] = &[
    (
        "DEBUG_HOST",
        "0.0.0.0",
        "tollgate has no debug port: GET /rlconfig is on the admin port (PORT)",
    ),
    (
        "DEBUG_PORT",
        "6070",
        "tollgate has no debug port: GET /rlconfig is on the admin port (PORT)",
    ),
    (
        "GRPC_MAX_CONNECTION_AGE",
        "24h",
        "connections are kept while their peer answers keepalive pings",
    ),
    (
        "GRPC_MAX_CONNECTION_AGE_GRACE",
        "1h",
        "connections are kept while their peer answers keepalive pings",
    ),
    (
        "CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL",
        "3s",
        "connections are retried with XDS_CLIENT_BACKOFF_INITIAL_INTERVAL, doubling up to XDS_CLIENT_BACKOFF_MAX_INTERVAL",
    ),
    (
        "XDS_CLIENT_BACKOFF_RANDOM_FACTOR",
        "0.5",
        "waits vary by a fifth either way",
    ),
    (
        "XDS_CLIENT_BACKOFF_JITTER",
        "true",
        "waits always vary by a fifth either way",
    ),
    ("STATSD_HOST", "localhost", "tollgate sends no statsd"),
    ("STATSD_PORT", "8125", "tollgate sends no statsd"),
    ("USE_DOG_STATSD", "false", "tollgate sends no statsd"),
    ("USE_DOG_STATSD_MOGRIFIERS", "", "tollgate sends no statsd"),
    ("EXTRA_TAGS", "", "metrics carry tollgate's own labels"),
    (
        "STATS_FLUSH_INTERVAL",
        "10s",
        "Prometheus reads the metrics when it scrapes",
    ),
    (
        "DISABLE_STATS",
        "false",
        "metrics are always served at GET /metrics",
    ),
    (
        "PROMETHEUS_RESPONSE_TIME_AS_MILLISECONDS",
        "false",
        "tollgate_decision_duration_seconds is in seconds",
    ),
    (
        "EXPIRATION_JITTER_MAX_SECONDS",
        "300",
        "Redis keys expire once their bucket is whole again",
    ),
    (
        "LOCAL_CACHE_SIZE_IN_BYTES",
        "0",
        "over-limit keys are not cached locally; for fewer Redis calls use tollgate's cached consistency (--consistency cached)",
    ),
    (
        "REDIS_POOL_SIZE",
        "10",
        "requests are pipelined on one multiplexed connection",
    ),
    (
        "REDIS_PIPELINE_WINDOW",
        "0",
        "requests are pipelined as they come",
    ),
    (
        "REDIS_PIPELINE_LIMIT",
        "0",
        "requests are pipelined as they come",
    ),
    (
        "REDIS_CLUSTER_PIPELINE_PARALLELISM",
        "1",
        "a request is one script call on one node",
    ),
    (
        "REDIS_HEALTH_CHECK_ACTIVE_CONNECTION",
        "false",
        "health stays OK while Redis is down: the failure policy (--redis-failure, local by default) answers, and /healthcheck says degraded",
    ),
    (
        "REDIS_POOL_ON_EMPTY_BEHAVIOR",
        "WAIT",
        "requests are pipelined on one multiplexed connection",
    ),
    (
        "REDIS_STARTUP_INITIAL_INTERVAL",
        "1s",
        "tollgate serves at once and answers by the failure policy until Redis answers",
    ),
    (
        "REDIS_STARTUP_MAX_INTERVAL",
        "30s",
        "tollgate serves at once and answers by the failure policy until Redis answers",
    ),
    (
        "REDIS_STARTUP_MAX_ELAPSED_TIME",
        "0",
        "tollgate serves at once and answers by the failure policy until Redis answers",
    ),
];

/// `host:port`, bracketing an IPv6 host.
fn address(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
