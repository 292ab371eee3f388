//! Running the service: bind both ports, serve until told to stop, then drain.
//!
//! Binding is separate from serving so a taken port is a startup error before anything is
//! announced, and so tests can bind port 0 and learn the addresses. Both ports are bounded
//! ([`Limits`]): connections, streams, message sizes and time, so a misbehaving client cannot
//! take the service down.

mod connections;
mod http;
mod incoming;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::api::AdminTokens;
use crate::decision::Limiter;
use crate::metrics::{Metrics, MetricsOptions};
use crate::protocol::answers::Answers;
use crate::protocol::rlqs::{RateLimitQuotaGrpc, admin_router as rlqs_router};
use crate::protocol::undecodable::UndecodableLayer;
use crate::protocol::{Shared, admin, authz::AuthorizationGrpc, rls::RateLimitGrpc};
use crate::reload::{Reloader, Source, watch};
use crate::rlqs::{Rlqs, RlqsOptions};
use crate::snapshot::Snapshots;
use crate::tenants::Tenants;
use crate::tls::{ServerTls, ServerTlsFiles, TlsFileError};

/// A failure to start or to keep serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not be bound (port taken, no permission, bad address).
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        /// Which port: "gRPC", "HTTP" or "API".
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The gRPC server stopped with an error.
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The HTTP server stopped with an error.
    #[error("HTTP server failed: {0}")]
    Http(#[source] io::Error),
    /// The configuration path cannot be watched.
    #[error("cannot watch {path} for changes: {source}")]
    Watch {
        /// The configuration path.
        path: String,
        /// Why.
        source: notify::Error,
    },
    /// A TLS file of the gRPC port cannot be used.
    #[error("gRPC TLS: {0}")]
    Tls(#[from] TlsFileError),
}

/// Where to listen and how often to sweep idle buckets.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// gRPC (Envoy) address.
    pub grpc_addr: SocketAddr,
    /// TLS on the gRPC port (mutual with a client CA); clear text without.
    pub grpc_tls: Option<ServerTlsFiles>,
    /// HTTP admin address.
    pub http_addr: SocketAddr,
    /// A port of its own for `GET /metrics` (as the reference's `PROMETHEUS_ADDR`), besides
    /// the admin port's.
    pub metrics_port: Option<MetricsPort>,
    /// What rate limit answers carry beyond their statuses.
    pub answers: Answers,
    /// Time between sweeps of idle buckets.
    pub sweep_interval: Duration,
    /// Reload when the configuration files change.
    pub watch: bool,
    /// Metric settings.
    pub metrics: MetricsOptions,
    /// Longest wait for in-flight calls and open connections after a stop signal.
    pub drain_timeout: Duration,
    /// What a client may hold of either port.
    pub limits: Limits,
    /// The Rate Limit Quota Service's timing.
    pub rlqs: RlqsOptions,
}

/// A port that serves only the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsPort {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The path metrics are served at (`/metrics`).
    pub path: String,
}

/// How often an HTTP/2 connection is pinged; a ping unanswered within the handshake timeout
/// closes it (the peer is gone, or never reads).
pub const KEEPALIVE_EVERY: Duration = Duration::from_secs(30);

/// What a client may hold of the ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open gRPC connections at most.
    pub grpc_connections: usize,
    /// Concurrent streams per gRPC connection at most.
    pub grpc_streams: u32,
    /// Largest gRPC request message, in bytes.
    pub grpc_message_bytes: usize,
    /// Longest a gRPC call may take when its caller set no deadline.
    pub grpc_call_timeout: Duration,
    /// How soon a new connection must send its first bytes; then HTTP/2 keepalive pings, each
    /// to be answered within it, close connections whose peer is gone.
    pub handshake_timeout: Duration,
    /// Open admin connections at most.
    pub admin_connections: usize,
    /// Longest wait for an admin request's headers (and between requests) and its answer.
    pub admin_request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            grpc_connections: 1024,
            grpc_streams: 128,
            grpc_message_bytes: 4 << 20,
            grpc_call_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            admin_connections: 256,
            admin_request_timeout: Duration::from_secs(10),
        }
    }
}

/// A server with its ports bound, ready to serve.
#[derive(Debug)]
pub struct Server {
    reloader: Arc<Reloader>,
    grpc: TcpListener,
    grpc_tls: Option<Arc<ServerTls>>,
    http: TcpListener,
    metrics: Option<(TcpListener, String)>,
    options: ServerOptions,
    snapshots: Option<Snapshots>,
    tenants: Arc<Tenants>,
    api: Option<(TcpListener, AdminTokens)>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { what, addr, source })
}

impl Server {
    /// Reads the gRPC port's TLS files and binds the ports.
    pub async fn bind(reloader: Arc<Reloader>, options: ServerOptions) -> Result<Self, ServeError> {
        let grpc_tls = match &options.grpc_tls {
            Some(files) => Some(Arc::new(ServerTls::load(files.clone())?)),
            None => None,
        };
        let metrics = match &options.metrics_port {
            Some(port) => Some((bind("metrics", port.addr).await?, port.path.clone())),
            None => None,
        };
        Ok(Self {
            grpc: bind("gRPC", options.grpc_addr).await?,
            grpc_tls,
            http: bind("HTTP", options.http_addr).await?,
            metrics,
            reloader,
            options,
            snapshots: None,
            tenants: Default::default(),
            api: None,
        })
    }

    /// Serves `tenants` (runtime tenants) to ext_authz and the service API, following their
    /// changes, instead of an empty set in memory.
    pub fn with_tenants(mut self, tenants: Arc<Tenants>) -> Self {
        self.tenants = tenants;
        self
    }

    /// Also serves the service API on `addr` (bound now), letting the holders of `tokens`
    /// manage tenants.
    pub async fn with_api(
        mut self,
        addr: SocketAddr,
        tokens: AdminTokens,
    ) -> Result<Self, ServeError> {
        self.api = Some((bind("API", addr).await?, tokens));
        Ok(self)
    }

    /// The bound service API address, if it is served.
    pub fn api_addr(&self) -> Option<io::Result<SocketAddr>> {
        self.api.as_ref().map(|(listener, _)| listener.local_addr())
    }

    /// Also writes snapshots of the memory store while serving, and one at stop.
    pub fn with_snapshots(mut self, snapshots: Snapshots) -> Self {
        self.snapshots = Some(snapshots);
        self
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// The bound metrics address, with a metrics port.
    pub fn metrics_addr(&self) -> Option<io::Result<SocketAddr>> {
        self.metrics
            .as_ref()
            .map(|(listener, _)| listener.local_addr())
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight calls finish
    /// and returns.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let limiter = self.reloader.limiter().clone();
        let metrics = Arc::new(Metrics::new(self.reloader.clone(), self.options.metrics));
        let shared = Shared::new(
            self.reloader.clone(),
            metrics,
            self.options.answers.clone(),
            self.tenants.clone(),
        );
        let rlqs = Arc::new(Rlqs::new(
            self.reloader.clone(),
            shared.metrics.rlqs.clone(),
            self.options.rlqs,
        ));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let deadline_rx = stop_rx.clone();
        match self.reloader.source() {
            Source::Files(path) if self.options.watch => {
                let (watch, events) = watch::watch(path).map_err(|source| ServeError::Watch {
                    path: path.display().to_string(),
                    source,
                })?;
                tokio::spawn(watch::run(
                    self.reloader.clone(),
                    watch,
                    events,
                    stopped(stop_rx.clone()),
                ));
            }
            Source::Files(_) => {}
            Source::Xds(xds) => {
                tokio::spawn(crate::xds::run(
                    self.reloader.clone(),
                    (**xds).clone(),
                    stopped(stop_rx.clone()),
                ));
            }
        }
        if let Some(tls) = &self.grpc_tls {
            watch_tls(tls, &stop_rx)?;
        }
        let (health, health_service) = tonic_health::server::health_reporter();
        // Not serving until the first xDS version with --xds-unhealthy-until-first-config.
        let ready = !self.reloader.unhealthy();
        set_health(&health, ready).await;
        if !ready {
            let (health, reloader, stop) = (health.clone(), self.reloader.clone(), stop_rx.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = reloader.first_loaded() => set_health(&health, true).await,
                    () = stopped(stop) => {}
                }
            });
        }

        let expiring = rlqs.clone();
        tokio::spawn(async move {
            shutdown.await;
            // Envoys fall back to their own behaviour before this server goes away.
            expiring.shutdown();
            tracing::info!("shutting down: draining in-flight calls");
            set_health(&health, false).await;
            // Dropping the statuses ends open Health/Watch streams, which would otherwise keep
            // their connections, and the drain, open forever.
            let mut health = health;
            for service in HEALTH_NAMES {
                health.clear_service_status(service).await;
            }
            let _ = stop_tx.send(true);
        });
        if let Source::Xds(xds) = self.reloader.source()
            && !xds.start_without_config
        {
            tracing::info!(server = %xds.server, "waiting for the first valid configuration from the xDS server before serving");
            tokio::select! {
                () = self.reloader.first_loaded() => {}
                () = stopped(stop_rx.clone()) => {}
            }
        }

        let snapshotter = self.snapshots.clone().map(|snapshots| {
            tokio::spawn(snapshots.run(limiter.clone(), stopped(stop_rx.clone())))
        });
        tokio::spawn(rlqs.clone().upkeep(stopped(stop_rx.clone())));
        let reloader = self.reloader.clone();
        let tenants_matter = move || {
            let config = reloader.limiter().config();
            !config.authorization_domains().is_empty()
        };
        let tenants_read = shared.metrics.service.tenants_read.clone();
        let read = move || {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            tenants_read.set(now.map_or(0, |since| since.as_secs() as i64));
        };
        tokio::spawn(
            self.tenants
                .clone()
                .follow(tenants_matter, read, stopped(stop_rx.clone())),
        );
        let sweeper = tokio::spawn(sweep(
            limiter.clone(),
            self.options.sweep_interval,
            stopped(stop_rx.clone()),
        ));

        let limits = self.options.limits;
        let gate = connections::Gate::new(limits.grpc_connections, limits.handshake_timeout);
        let incoming = incoming::accept(
            self.grpc,
            gate,
            self.grpc_tls.clone(),
            limits.handshake_timeout,
            stopped(stop_rx.clone()),
        );
        let bytes = limits.grpc_message_bytes;
        let grpc = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .max_concurrent_streams(Some(limits.grpc_streams))
            .http2_keepalive_interval(Some(KEEPALIVE_EVERY))
            .http2_keepalive_timeout(Some(limits.handshake_timeout))
            .timeout(limits.grpc_call_timeout)
            .layer(UndecodableLayer::new(shared.clone()))
            .add_service(health_service)
            .add_service(
                RateLimitGrpc::new(shared.clone())
                    .into_server()
                    .max_decoding_message_size(bytes),
            )
            .add_service(
                AuthorizationGrpc::new(shared.clone())
                    .into_server()
                    .max_decoding_message_size(bytes),
            )
            .add_service(
                RateLimitQuotaGrpc::new(rlqs.clone())
                    .into_server()
                    .max_decoding_message_size(bytes),
            )
            .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));
        let http_limits = http::HttpLimits {
            max_connections: limits.admin_connections,
            request_timeout: limits.admin_request_timeout,
            late: http::late_text,
        };
        let metrics_port = self.metrics.map(|(listener, path)| {
            let router = admin::metrics_router(shared.clone(), &path);
            http::serve(listener, router, http_limits, stopped(stop_rx.clone()))
        });
        let api = self.api.map(|(listener, tokens)| {
            tracing::info!(addr = ?listener.local_addr().ok(), "service API serving");
            if tokens.is_empty() {
                tracing::warn!("service API: no --api-admin-token-file, so its management endpoints refuse every call");
            }
            let router = crate::api::router(shared.clone(), tokens);
            let limits = http::HttpLimits {
                late: crate::api::late,
                ..http_limits
            };
            http::serve(listener, router, limits, stopped(stop_rx.clone()))
        });
        let http = http::serve(
            self.http,
            admin::router(shared).merge(rlqs_router(rlqs)),
            http_limits,
            stopped(stop_rx),
        );
        let http = async move {
            let (admin, metrics, api) = tokio::join!(http, optional(metrics_port), optional(api));
            admin.and(metrics).and(api)
        };
        let drain = self.options.drain_timeout;
        let deadline = async move {
            stopped(deadline_rx).await;
            tokio::time::sleep(drain).await;
        };
        let serving = async { tokio::join!(grpc, async { http.await.map_err(ServeError::Http) }) };
        let (grpc, http) = tokio::select! {
            all = serving => all,
            () = deadline => {
                tracing::warn!(?drain, "drain timeout: closing the connections still open");
                (Ok(()), Ok(()))
            }
        };
        sweeper.abort();
        // Every call has been answered: the store stops its background work and gives back
        // what it holds (cached-mode leases), so other replicas can spend it.
        limiter.store().close().await;
        // And the last snapshot, with every answered call in it.
        if let Some(snapshots) = &self.snapshots {
            if let Some(task) = snapshotter {
                let _ = task.await;
            }
            snapshots.write_in_background(&limiter).await;
        }
        grpc?;
        http
    }
}

/// Serves an optional port: nothing to do when it is not configured.
async fn optional<E>(serving: Option<impl Future<Output = Result<(), E>>>) -> Result<(), E> {
    match serving {
        Some(serving) => serving.await,
        None => Ok(()),
    }
}

type Rls = envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer<RateLimitGrpc>;

/// The names gRPC health answers for: `""`, the rate limit service's, and the reference's
/// ([`REFERENCE_HEALTH_NAME`], which Envoy Gateway's health checks ask for).
const HEALTH_NAMES: [&str; 3] = [
    "",
    <Rls as tonic::server::NamedService>::NAME,
    REFERENCE_HEALTH_NAME,
];

/// Sets the gRPC health of every name in [`HEALTH_NAMES`].
async fn set_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    for service in HEALTH_NAMES {
        health.set_service_status(service, status).await;
    }
}

/// The service name the reference service's gRPC health answers for, besides `""`.
pub const REFERENCE_HEALTH_NAME: &str = "ratelimit";

/// Re-reads the gRPC port's TLS files whenever one changes (a renewal), until a stop: new
/// connections get the new certificate; a file that cannot be used keeps the one in force.
fn watch_tls(
    tls: &Arc<ServerTls>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<(), ServeError> {
    for path in tls.files().paths() {
        let (watch, events) = watch::watch(path).map_err(|source| ServeError::Watch {
            path: path.display().to_string(),
            source,
        })?;
        let tls = tls.clone();
        let changed = move || {
            match tls.reload() {
                Ok(()) => {
                    tracing::info!(cert = %tls.files().cert.display(), "gRPC TLS files re-read: new connections use them")
                }
                Err(error) => tracing::error!(
                    "gRPC TLS files changed but cannot be used, keeping the ones in force: {error}"
                ),
            }
            std::future::ready(())
        };
        tokio::spawn(watch::on_changes(
            watch,
            events,
            stopped(stop.clone()),
            changed,
        ));
    }
    Ok(())
}

/// Resolves once a stop has been signalled.
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Drops idle buckets every `interval` until `stop`.
async fn sweep(limiter: Arc<Limiter>, interval: Duration, stop: impl Future<Output = ()>) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticks.tick() => {
                // A sweep scans the whole map: keep it off the request workers.
                let sweeping = limiter.clone();
                let swept = tokio::task::spawn_blocking(move || sweeping.store().sweep(sweeping.clock().now()));
                if swept.await.is_err() {
                    return;
                }
            }
        }
    }
}
