//! Where buckets live: `--store` and the Redis flags, checked together.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, ValueEnum};

use super::values::{parse_duration, redacted};
use crate::app::{RedisConfig, StoreConfig};
use crate::rule::Consistency;
use crate::store::{FailurePolicy, RedisOptions, RedisTls, Sentinel, TlsError, is_tls_url};

/// Where buckets live.
#[derive(Debug, Args)]
pub(super) struct StoreArgs {
    /// Where buckets live: this process's memory, or Redis shared by every replica. Default:
    /// redis when a --redis-url is given, else memory.
    #[arg(long, env = "TOLLGATE_STORE", value_enum)]
    store: Option<StoreArg>,
    /// Redis to count in (`redis://[user:password@]host:port[/db]`, `rediss://` for TLS).
    /// Repeat it (or give a comma-separated list) with --redis-cluster to seed a Redis Cluster.
    #[arg(
        long,
        env = "TOLLGATE_REDIS_URL",
        value_name = "URL",
        value_delimiter = ',',
        // It may carry a password: --help never shows what the environment holds.
        hide_env_values = true
    )]
    pub(super) redis_url: Vec<String>,
    /// The --redis-url addresses are Redis Cluster nodes.
    #[arg(
        long,
        env = "TOLLGATE_REDIS_CLUSTER",
        conflicts_with = "redis_sentinel"
    )]
    redis_cluster: bool,
    /// The --redis-url addresses are Redis Sentinels (`redis://host:26379`, one per
    /// Sentinel): count in the master of this master set, and follow its failovers.
    /// Credentials in the first URL are used for the master, and for the Sentinels unless
    /// --redis-sentinel-auth is given. `rediss://` Sentinels mean TLS to them and to the
    /// master, both checked with --redis-ca-file and shown the client certificate if given.
    #[arg(long, env = "TOLLGATE_REDIS_SENTINEL", value_name = "MASTER_NAME")]
    redis_sentinel: Option<String>,
    /// Credentials for the Sentinels when they are not the master's: `[USER:]PASSWORD`, or
    /// empty for none (Sentinels without `requirepass` in front of a master with one).
    #[arg(
        long,
        env = "TOLLGATE_REDIS_SENTINEL_AUTH",
        value_name = "[USER:]PASSWORD",
        requires = "redis_sentinel",
        hide_env_values = true
    )]
    redis_sentinel_auth: Option<String>,
    /// How replicas agree on a limit: `strict` decides every request atomically in Redis;
    /// `cached` spends tokens leased from Redis in slices, off the request path. A limit's
    /// `consistency:` overrides it.
    #[arg(long, env = "TOLLGATE_CONSISTENCY", value_enum, default_value_t = Consistency::Strict)]
    consistency: Consistency,
    /// What to answer while Redis is unreachable or slower than its time: decide from this
    /// replica's share of each limit (`local`: the limit divided among the live replicas,
    /// starting from what Redis last reported), admit (`allow`), or deny (`deny`).
    #[arg(long, env = "TOLLGATE_REDIS_FAILURE", value_enum, default_value_t = FailurePolicy::Local)]
    pub(super) redis_failure: FailurePolicy,
    /// Longest wait for Redis on one request before the failure policy answers. A call also
    /// waits at most three quarters of what the caller allows (Envoy's grpc-timeout), so
    /// Envoy always gets tollgate's answer; a call given up on is reconciled when it answers.
    #[arg(long, env = "TOLLGATE_REDIS_TIMEOUT", value_name = "DURATION", default_value = "50ms",
          value_parser = parse_duration)]
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
pub(super) enum StoreArg {
    /// Buckets in this process (per replica).
    Memory,
    /// Buckets in Redis (global across replicas).
    Redis,
}

/// The flags that only mean something with the Redis store: (argument id, flag, variable).
const REDIS_ONLY: [(&str, &str, &str); 10] = [
    ("redis_url", "--redis-url", "TOLLGATE_REDIS_URL"),
    ("redis_cluster", "--redis-cluster", "TOLLGATE_REDIS_CLUSTER"),
    (
        "redis_sentinel",
        "--redis-sentinel",
        "TOLLGATE_REDIS_SENTINEL",
    ),
    ("consistency", "--consistency", "TOLLGATE_CONSISTENCY"),
    ("redis_failure", "--redis-failure", "TOLLGATE_REDIS_FAILURE"),
    ("redis_timeout", "--redis-timeout", "TOLLGATE_REDIS_TIMEOUT"),
    ("redis_prefix", "--redis-prefix", "TOLLGATE_REDIS_PREFIX"),
    ("redis_ca_file", "--redis-ca-file", "TOLLGATE_REDIS_CA_FILE"),
    (
        "redis_client_cert",
        "--redis-client-cert",
        "TOLLGATE_REDIS_CLIENT_CERT",
    ),
    (
        "redis_client_key",
        "--redis-client-key",
        "TOLLGATE_REDIS_CLIENT_KEY",
    ),
];

impl StoreArgs {
    /// Where buckets live, as the flags say (`given` tells which flags were set, on the
    /// command line or in the environment). A Redis flag with the memory store is an error,
    /// never silently ignored: every replica would count alone.
    pub(super) fn config(&self, given: &ArgMatches) -> Result<StoreConfig, String> {
        let is_given = |id: &str| {
            matches!(
                given.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        let store = match self.store {
            Some(store) => store,
            None if !self.redis_url.is_empty() => StoreArg::Redis,
            None => StoreArg::Memory,
        };
        if store == StoreArg::Memory {
            if let Some((_, flag, variable)) = REDIS_ONLY.iter().find(|(id, ..)| is_given(id)) {
                return Err(format!(
                    "{flag} (or {variable}) is for --store redis, but the store is memory, where each replica counts alone: give --store redis with a --redis-url, or drop {flag}"
                ));
            }
            return Ok(StoreConfig::Memory);
        }
        if self.redis_url.is_empty() {
            return Err("--store redis needs --redis-url (or TOLLGATE_REDIS_URL)".to_owned());
        }
        for url in &self.redis_url {
            redis::IntoConnectionInfo::into_connection_info(url.as_str())
                .map_err(|error| format!("--redis-url {}: {error}", redacted(url)))?;
        }
        Ok(StoreConfig::Redis(RedisConfig {
            options: RedisOptions {
                urls: self.redis_url.clone(),
                cluster: self.redis_cluster,
                sentinel: self.redis_sentinel.as_ref().map(|master| Sentinel {
                    master: master.clone(),
                    auth: self.redis_sentinel_auth.clone(),
                }),
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
