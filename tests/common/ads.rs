//! A small xDS management server (ADS, state of the world) serving `RateLimitConfig`
//! resources, as Envoy Gateway serves them to its rate limit Deployment: every stream gets the
//! current version, then each new one; every request a client sends (subscriptions, ACKs,
//! NACKs) is recorded for the tests to wait on.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use futures_util::Stream;
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tollgate::xds::resource::{RateLimitConfig, TYPE_URL};
use tonic::{Request, Response, Status, Streaming};

use super::pki::Issued;

/// A version pushed to every stream.
#[derive(Clone, Debug)]
struct Push {
    version: String,
    nonce: String,
    resources: Vec<Any>,
}

#[derive(Default)]
struct Recorded {
    requests: Vec<DiscoveryRequest>,
    streams: usize,
}

struct State {
    current: watch::Sender<Option<Push>>,
    recorded: Mutex<Recorded>,
    arrived: watch::Sender<usize>,
    /// Flipped to end every stream (the server going away).
    closing: watch::Sender<bool>,
}

/// A running management server.
pub struct AdsServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    pushes: u64,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

#[derive(Clone)]
struct Service(Arc<State>);

type Responses = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaResponses = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Service {
    type StreamAggregatedResourcesStream = Responses;
    type DeltaAggregatedResourcesStream = DeltaResponses;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Responses>, Status> {
        let state = self.0.clone();
        state.recorded.lock().unwrap().streams += 1;
        let mut incoming = request.into_inner();
        let recording = state.clone();
        tokio::spawn(async move {
            while let Ok(Some(request)) = incoming.message().await {
                let count = {
                    let mut recorded = recording.recorded.lock().unwrap();
                    recorded.requests.push(request);
                    recorded.requests.len()
                };
                recording.arrived.send_replace(count);
            }
        });
        let versions = state.current.subscribe();
        let closing = state.closing.subscribe();
        // The version current when the stream opens, if any, then each next one.
        let responses = futures_util::stream::unfold(
            (versions, closing, false),
            |(mut versions, mut closing, mut sent)| async move {
                loop {
                    if sent || versions.borrow().is_none() {
                        let closed = tokio::select! {
                            changed = versions.changed() => {
                                changed.ok()?;
                                false
                            }
                            () = async { drop(closing.wait_for(|closing| *closing).await) } => true,
                        };
                        if closed {
                            let gone = Err(Status::unavailable("going away"));
                            return Some((gone, (versions, closing, true)));
                        }
                    }
                    let push = versions.borrow_and_update().clone();
                    if let Some(push) = push {
                        sent = true;
                        let response = DiscoveryResponse {
                            version_info: push.version,
                            resources: push.resources,
                            type_url: TYPE_URL.to_owned(),
                            nonce: push.nonce,
                            ..Default::default()
                        };
                        return Some((Ok(response), (versions, closing, sent)));
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(responses)))
    }

    async fn delta_aggregated_resources(
        &self,
        _: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaResponses>, Status> {
        Err(Status::unimplemented("state of the world only"))
    }
}

impl AdsServer {
    /// A server on a free loopback port, in clear text.
    pub async fn start() -> Self {
        Self::start_on(0, None).await
    }

    /// A server on `port` (0: any), with TLS from `tls` (its certificate, and the CA client
    /// certificates must chain to) when given.
    pub async fn start_on(port: u16, tls: Option<(&Issued, &std::path::Path)>) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            current: watch::channel(None).0,
            recorded: Mutex::default(),
            arrived: watch::channel(0).0,
            closing: watch::channel(false).0,
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let service = AggregatedDiscoveryServiceServer::new(Service(state.clone()));
        let router = tonic::transport::Server::builder().add_service(service);
        let shutdown = async {
            let _ = stopped.await;
        };
        let task = match tls {
            None => {
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                tokio::spawn(async move {
                    let _ = router
                        .serve_with_incoming_shutdown(incoming, shutdown)
                        .await;
                })
            }
            Some((issued, client_ca)) => {
                let acceptor = tls_acceptor(issued, client_ca);
                let incoming = futures_util::stream::unfold(listener, move |listener| {
                    let acceptor = acceptor.clone();
                    async move {
                        loop {
                            let (tcp, _) = listener.accept().await.ok()?;
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                return Some((Ok::<_, std::io::Error>(TlsIo(tls)), listener));
                            }
                        }
                    }
                });
                tokio::spawn(async move {
                    let _ = router
                        .serve_with_incoming_shutdown(incoming, shutdown)
                        .await;
                })
            }
        };
        Self {
            addr,
            state,
            pushes: 0,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Pushes `configs` as version `version` to every stream, now and to come; its nonce.
    pub fn push(&mut self, version: &str, configs: &[RateLimitConfig]) -> String {
        self.pushes += 1;
        let nonce = format!("nonce-{}", self.pushes);
        let resources = configs
            .iter()
            .map(|config| Any {
                type_url: TYPE_URL.to_owned(),
                value: config.encode_to_vec(),
            })
            .collect();
        self.state.current.send_replace(Some(Push {
            version: version.to_owned(),
            nonce: nonce.clone(),
            resources,
        }));
        nonce
    }

    /// Waits up to 20 s for a request the client sent to satisfy `wanted`.
    pub async fn request(&self, wanted: impl Fn(&DiscoveryRequest) -> bool) -> DiscoveryRequest {
        let mut arrived = self.state.arrived.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(found) = self
                .state
                .recorded
                .lock()
                .unwrap()
                .requests
                .iter()
                .find(|r| wanted(r))
            {
                return found.clone();
            }
            let seen = self.state.recorded.lock().unwrap().requests.clone();
            tokio::time::timeout_at(deadline, arrived.changed())
                .await
                .unwrap_or_else(|_| panic!("no such request within 20 s; received: {seen:#?}"))
                .unwrap();
        }
    }

    /// Waits for the ACK of the push with `nonce`, as version `version`.
    pub async fn acked(&self, version: &str, nonce: &str) -> DiscoveryRequest {
        self.request(|r| {
            r.response_nonce == nonce && r.error_detail.is_none() && r.version_info == version
        })
        .await
    }

    /// Waits for the NACK of the push with `nonce`; it carries the version kept.
    pub async fn nacked(&self, nonce: &str) -> DiscoveryRequest {
        self.request(|r| r.response_nonce == nonce && r.error_detail.is_some())
            .await
    }

    /// Streams opened so far.
    pub fn streams(&self) -> usize {
        self.state.recorded.lock().unwrap().streams
    }

    /// Ends every stream and stops listening.
    pub async fn stop(mut self) {
        self.state.closing.send_replace(true);
        let _ = self.stop.take().unwrap().send(());
        let mut task = self.task.take().unwrap();
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for AdsServer {
    fn drop(&mut self) {
        self.state.closing.send_replace(true);
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// An acceptor serving `issued`, requiring client certificates from `client_ca`.
fn tls_acceptor(issued: &Issued, client_ca: &std::path::Path) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(client_ca).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain = CertificateDer::pem_file_iter(&issued.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, PrivateKeyDer::from_pem_file(&issued.key).unwrap())
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// A TLS connection tonic can serve.
struct TlsIo(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = ();

    fn connect_info(&self) {}
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
