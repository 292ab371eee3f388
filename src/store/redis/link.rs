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
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    ClientTlsConfig, ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisConnectionInfo,
    RedisError, RedisFuture, RedisResult, TlsCertificates, TlsMode, Value,
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

    /// The `(username, password)` the Sentinels are reached with: `auth`'s, else the
    /// master's (`master`, from the first URL).
    fn credentials(&self, master: &RedisConnectionInfo) -> (Option<String>, Option<String>) {
        let Some(auth) = &self.auth else {
            return (
                master.username().map(str::to_owned),
                master.password().map(str::to_owned),
            );
        };
        match auth.split_once(':') {
            Some((user, password)) => (Some(user.to_owned()), Some(password.to_owned())),
            None if auth.is_empty() => (None, None),
            None => (None, Some(auth.clone())),
        }
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
                Mutex::new(sentinel_client(&options.urls, sentinel, certificates)?),
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
/// the first URL are used for the master (and its credentials for every Sentinel unless
/// `sentinel.auth` says otherwise); a `rediss://` Sentinel means a TLS master. `certificates`,
/// if given, are used on both: to verify the Sentinels and the master, and as the client
/// identity presented to them.
fn sentinel_client(
    urls: &[String],
    sentinel: &Sentinel,
    certificates: Option<TlsCertificates>,
) -> RedisResult<SentinelClient> {
    let sentinels = if urls.is_empty() {
        vec!["redis://127.0.0.1:26379".into_connection_info()?]
    } else {
        urls.iter()
            .map(|url| url.as_str().into_connection_info())
            .collect::<RedisResult<Vec<_>>>()?
    };
    let first = &sentinels[0];
    let master = first.redis_settings();
    // Every Sentinel is reached with one set of credentials: without `auth`, a later URL with
    // other ones than the first's would be silently overridden, so it is refused.
    if sentinel.auth.is_none()
        && sentinels[1..].iter().any(|info| {
            let other = info.redis_settings();
            let given = (other.username(), other.password());
            given != (None, None) && given != (master.username(), master.password())
        })
    {
        return Err(RedisError::from((
            ErrorKind::InvalidClientConfig,
            "the Sentinels are reached with the first URL's credentials (or \
             --redis-sentinel-auth), but a later URL has other ones",
        )));
    }
    let mut builder = SentinelClientBuilder::new(
        sentinels.iter().map(|info| info.addr().clone()),
        &sentinel.master,
        SentinelServerType::Master,
    )?
    .set_client_to_redis_db(master.db())
    .set_client_to_redis_protocol(master.protocol());
    if let Some(username) = master.username() {
        builder = builder.set_client_to_redis_username(username);
    }
    if let Some(password) = master.password() {
        builder = builder.set_client_to_redis_password(password);
    }
    if let ConnectionAddr::TcpTls { insecure, .. } = first.addr() {
        builder = builder.set_client_to_redis_tls_mode(if *insecure {
            TlsMode::Insecure
        } else {
            TlsMode::Secure
        });
    }
    let (username, password) = sentinel.credentials(master);
    if let Some(username) = username {
        builder = builder.set_client_to_sentinel_username(username);
    }
    if let Some(password) = password {
        builder = builder.set_client_to_sentinel_password(password);
    }
    builder = builder.set_client_to_sentinel_protocol(master.protocol());
    // Each Sentinel keeps its own URL's TLS (and `#insecure`); the builder refuses
    // certificates for a plain one (the command line already requires rediss:// with them).
    if let Some(certificates) = certificates {
        builder = builder
            .set_client_to_redis_certificates(certificates.clone())
            .set_client_to_sentinel_certificates(certificates);
    }
    builder.build()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinels_use_the_masters_credentials_unless_auth_gives_theirs() {
        let master = RedisConnectionInfo::default()
            .set_username("app")
            .set_password("secret");
        let with = |auth: Option<&str>| Sentinel {
            master: "m".to_owned(),
            auth: auth.map(str::to_owned),
        };
        let owned = |user: Option<&str>, password: Option<&str>| {
            (user.map(str::to_owned), password.map(str::to_owned))
        };
        assert_eq!(
            with(None).credentials(&master),
            owned(Some("app"), Some("secret"))
        );
        assert_eq!(with(Some("")).credentials(&master), owned(None, None));
        assert_eq!(
            with(Some("s3ntinel")).credentials(&master),
            owned(None, Some("s3ntinel"))
        );
        assert_eq!(
            with(Some("watcher:s3n:tinel")).credentials(&master),
            owned(Some("watcher"), Some("s3n:tinel"))
        );
    }

    #[test]
    fn later_sentinel_urls_with_other_credentials_are_refused_without_auth() {
        let urls = |later: &str| vec!["redis://:pw@s1:26379/2".to_owned(), later.to_owned()];
        let master = Sentinel::of("m");
        for fine in ["redis://s2:26379", "redis://:pw@s2:26379"] {
            assert!(
                sentinel_client(&urls(fine), &master, None).is_ok(),
                "{fine}"
            );
        }
        let other = urls("redis://:other@s2:26379");
        let refused = sentinel_client(&other, &master, None).err().unwrap();
        assert!(refused.to_string().contains("later URL"), "{refused}");
        // With the Sentinels' own credentials, the URLs' do not matter to them.
        let auth = Sentinel {
            auth: Some("s3ntinel".to_owned()),
            ..master
        };
        assert!(sentinel_client(&other, &auth, None).is_ok());
    }
}
