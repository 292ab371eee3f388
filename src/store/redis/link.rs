//! The connection to Redis: one multiplexed, self-reconnecting connection to a single node (or
//! to the master that Redis Sentinels name), or a Redis Cluster connection (one per shard,
//! following slot moves). Calls take a cheap
//! clone of it ([`Conn`]), so a call can outlive the request that made it; the health probe
//! replaces it with a freshly made one once Redis answers again.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo,
    RedisFuture, RedisResult, TlsCertificates, TlsMode, Value,
};
use tokio::sync::Mutex;

use super::{RedisOptions, RedisTls, tls};

/// Redis Sentinels to ask for a master set's master.
#[derive(Clone, PartialEq, Eq)]
pub struct Sentinel {
    /// The master set's name.
    pub master: String,
    /// Credentials for the Sentinels themselves, `[user:]password` (empty: none), when they
    /// are not the master's (those of the first URL, which are otherwise used for both).
    pub auth: Option<String>,
}

impl Sentinel {
    /// The master set `master`, its Sentinels reached with the URLs' credentials.
    pub fn of(master: impl Into<String>) -> Self {
        Self {
            master: master.into(),
            auth: None,
        }
    }

    /// The settings a Sentinel is reached with: `url`'s, unless `auth` replaces its
    /// credentials.
    fn connection(&self, url: &str) -> RedisResult<ConnectionInfo> {
        let info = url.into_connection_info()?;
        let Some(auth) = &self.auth else {
            return Ok(info);
        };
        let mut settings = RedisConnectionInfo::default();
        match auth.split_once(':') {
            Some((user, password)) => {
                settings = settings.set_username(user).set_password(password);
            }
            None if auth.is_empty() => {}
            None => settings = settings.set_password(auth),
        }
        Ok(info.set_redis_settings(settings))
    }
}

impl std::fmt::Debug for Sentinel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The credentials are never shown.
        f.debug_struct("Sentinel")
            .field("master", &self.master)
            .field("auth", &self.auth.as_ref().map(|_| "…"))
            .finish()
    }
}

/// How long connecting may take before the attempt counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How to connect, and the connection in use once one is made.
pub(crate) struct Link {
    client: Client,
    connection: ArcSwapOption<Conn>,
}

enum Client {
    Single(Box<(redis::Client, ConnectionManagerConfig)>),
    Cluster(Box<ClusterClient>),
    /// Sentinels, asked for the master at each reconnection (so a failover is followed once
    /// calls to the old master fail).
    Sentinel(Box<(Mutex<SentinelClient>, ConnectionManagerConfig)>),
}

/// A connection in use: cheap to clone, shared by concurrent calls (pipelined).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Link {
    /// A link for `options`; nothing is connected until [`Link::reconnect`].
    pub(crate) fn new(options: &RedisOptions) -> RedisResult<Self> {
        // Each call has its own, shorter wait; a call given up on is still awaited for its late
        // answer (reconcile.rs), so the connection itself waits as long as that.
        let response_timeout = super::reconcile::LATE_WAIT;
        tls::install_crypto_provider();
        let certificates = certificates(&options.tls);
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2));
        let client = if let Some(sentinel) = &options.sentinel {
            Client::Sentinel(Box::new((
                Mutex::new(sentinel_client(&options.urls, sentinel)?),
                manager,
            )))
        } else if options.cluster || options.urls.len() > 1 {
            let mut builder = ClusterClient::builder(options.urls.clone())
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(response_timeout)
                .retries(1);
            if let Some(certificates) = certificates {
                builder = builder.certs(certificates);
            }
            Client::Cluster(Box::new(builder.build()?))
        } else {
            let url = options.urls.first().map_or("redis://127.0.0.1:6379", |u| u);
            let client = match certificates {
                Some(certificates) => redis::Client::build_with_tls(url, certificates)?,
                None => redis::Client::open(url)?,
            };
            Client::Single(Box::new((client, manager)))
        };
        Ok(Self {
            client,
            connection: ArcSwapOption::empty(),
        })
    }

    /// Whether this is a Redis Cluster (keys of one call must then share a slot).
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.client, Client::Cluster(_))
    }

    /// The connection in use, if one was made.
    pub(crate) fn conn(&self) -> Option<Conn> {
        self.connection.load().as_deref().cloned()
    }

    /// Makes a fresh connection, checks that Redis answers on it for `key`'s slot, and puts it
    /// in use. A fresh one, because the one in use may be dead without knowing it yet (a
    /// restarted Redis): reusing it would fail once more before reconnecting. On a single node
    /// the check is a PING; on a Cluster a read of `key`, which goes to the master serving its
    /// slot (a cluster-wide PING skips masters the client has lost).
    pub(crate) async fn reconnect(&self, key: &str) -> RedisResult<()> {
        let fresh = match &self.client {
            Client::Single(single) => {
                let (client, config) = &**single;
                let mut manager =
                    ConnectionManager::new_with_config(client.clone(), config.clone()).await?;
                redis::cmd("PING").query_async::<()>(&mut manager).await?;
                Conn::Single(manager)
            }
            Client::Sentinel(sentinel) => {
                let (sentinels, config) = &**sentinel;
                let master = sentinels.lock().await.async_get_client().await?;
                let mut manager =
                    ConnectionManager::new_with_config(master, config.clone()).await?;
                redis::cmd("PING").query_async::<()>(&mut manager).await?;
                Conn::Single(manager)
            }
            Client::Cluster(client) => {
                let mut connection = client.get_async_connection().await?;
                redis::cmd("EXISTS")
                    .arg(key)
                    .query_async::<i64>(&mut connection)
                    .await?;
                Conn::Cluster(connection)
            }
        };
        self.connection.store(Some(Arc::new(fresh)));
        Ok(())
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(manager) => manager.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(manager) => manager.req_packed_commands(cmd, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(manager) => manager.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

/// A client of the Sentinels at `urls` for `sentinel`'s master set. Credentials and database in
/// the first URL are used for the master (and for the Sentinels unless `sentinel.auth` says
/// otherwise); a `rediss://` Sentinel means a TLS master.
fn sentinel_client(urls: &[String], sentinel: &Sentinel) -> RedisResult<SentinelClient> {
    let first = urls
        .first()
        .map_or("redis://127.0.0.1:26379", String::as_str)
        .into_connection_info()?;
    let mut node = SentinelNodeConnectionInfo::default()
        .set_redis_connection_info(first.redis_settings().clone());
    if let ConnectionAddr::TcpTls { insecure, .. } = first.addr() {
        node = node.set_tls_mode(if *insecure {
            TlsMode::Insecure
        } else {
            TlsMode::Secure
        });
    }
    let sentinels = urls
        .iter()
        .map(|url| sentinel.connection(url))
        .collect::<RedisResult<Vec<_>>>()?;
    SentinelClient::build(
        sentinels,
        &sentinel.master,
        Some(node),
        SentinelServerType::Master,
    )
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
