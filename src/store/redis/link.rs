//! The connection to Redis: one multiplexed, self-reconnecting connection to a single node,
//! or a Redis Cluster connection (one per shard, following slot moves).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{ClientTlsConfig, RedisResult, ScriptInvocation, TlsCertificates};

use super::{RedisOptions, RedisTls, tls};

/// How long connecting may take before the attempt counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

pub(super) enum Link {
    Single(ConnectionManager),
    Cluster {
        client: Box<ClusterClient>,
        /// Set once the first connection succeeds; the cluster connection then follows
        /// topology changes and reconnects shards by itself.
        connection: ArcSwapOption<ClusterConnection>,
    },
}

impl Link {
    /// A link for `options`; nothing is connected yet.
    pub(super) fn new(options: &RedisOptions) -> RedisResult<Self> {
        // Each call has the caller's own deadline; these bound what happens under it.
        let response_timeout = options.timeout.max(Duration::from_millis(100));
        tls::install_crypto_provider();
        let certificates = certificates(&options.tls);
        if options.cluster || options.urls.len() > 1 {
            let mut builder = ClusterClient::builder(options.urls.clone())
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(response_timeout)
                .retries(1);
            if let Some(certificates) = certificates {
                builder = builder.certs(certificates);
            }
            let client = builder.build()?;
            return Ok(Self::Cluster {
                client: Box::new(client),
                connection: ArcSwapOption::empty(),
            });
        }
        let url = options.urls.first().map_or("redis://127.0.0.1:6379", |u| u);
        let client = match certificates {
            Some(certificates) => redis::Client::build_with_tls(url, certificates)?,
            None => redis::Client::open(url)?,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2));
        Ok(Self::Single(ConnectionManager::new_lazy_with_config(
            client, config,
        )?))
    }

    /// Runs a script invocation.
    pub(super) async fn invoke(&self, invocation: &ScriptInvocation<'_>) -> RedisResult<Vec<i64>> {
        match self {
            Self::Single(manager) => invocation.invoke_async(&mut manager.clone()).await,
            Self::Cluster { connection, .. } => {
                let Some(connection) = connection.load_full() else {
                    return Err(not_connected());
                };
                invocation.invoke_async(&mut (*connection).clone()).await
            }
        }
    }

    /// Checks that Redis answers for `key`'s slot, connecting first if need be: a PING on a
    /// single node; on a Cluster, a read of `key`, which goes to the master serving its slot
    /// (a cluster-wide PING skips masters the client has lost, so it would pass while the
    /// slot that failed is still down).
    pub(super) async fn ping(&self, key: &str) -> RedisResult<()> {
        match self {
            Self::Single(manager) => redis::cmd("PING").query_async(&mut manager.clone()).await,
            Self::Cluster { client, connection } => {
                let mut live = match connection.load_full() {
                    Some(live) => (*live).clone(),
                    None => {
                        let fresh = client.get_async_connection().await?;
                        connection.store(Some(Arc::new(fresh.clone())));
                        fresh
                    }
                };
                redis::cmd("EXISTS")
                    .arg(key)
                    .query_async::<i64>(&mut live)
                    .await
                    .map(drop)
            }
        }
    }
}

/// The TLS material to use instead of the defaults, if any was given.
fn certificates(tls: &RedisTls) -> Option<TlsCertificates> {
    if tls.ca.is_none() && tls.identity.is_none() {
        return None;
    }
    Some(TlsCertificates {
        client_tls: tls
            .identity
            .clone()
            .map(|(client_cert, client_key)| ClientTlsConfig {
                client_cert,
                client_key,
            }),
        root_cert: tls.ca.clone(),
    })
}

fn not_connected() -> redis::RedisError {
    (redis::ErrorKind::Io, "not connected to the cluster yet").into()
}
