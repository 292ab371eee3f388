//! The gRPC port's accepted connections, bounded by the [`Gate`]: plain TCP, or TLS with the
//! configuration in force when the connection arrived (so a renewed certificate serves new
//! connections while open ones keep theirs).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

use super::connections::{Admitted, Gate};
use crate::tls::ServerTls;

/// An accepted gRPC connection.
#[derive(Debug)]
pub enum Connection {
    /// HTTP/2 in clear text.
    Plain(Admitted<TcpStream>),
    /// HTTP/2 over TLS, the handshake done.
    Tls(Box<TlsStream<Admitted<TcpStream>>>),
}

/// The stream of connections tonic serves.
pub type Incoming = Pin<Box<dyn Stream<Item = io::Result<Connection>> + Send>>;

/// Connections accepted on `listener` past `gate`: TCP_NODELAY set on each (Nagle and delayed
/// ACKs stall answers ~40 ms), and with `tls` a handshake within `handshake` each, off the
/// accept loop. Accepting stops when `stop` resolves.
pub fn accept(
    listener: TcpListener,
    gate: Gate,
    tls: Option<Arc<ServerTls>>,
    handshake: Duration,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Incoming {
    let Some(tls) = tls else {
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let admitted = futures_util::StreamExt::filter_map(incoming, move |accepted| {
            let admitted = match accepted {
                Ok(stream) => gate
                    .admit(stream)
                    .map(|io| Ok(Connection::Plain(io)))
                    .or_else(|| {
                        tracing::debug!("gRPC port full: connection closed");
                        None
                    }),
                Err(error) => Some(Err(error)),
            };
            std::future::ready(admitted)
        });
        return Box::pin(admitted);
    };
    let (ready, connections) = mpsc::channel(64);
    tokio::spawn(handshakes(listener, gate, tls, handshake, ready, stop));
    Box::pin(futures_util::stream::unfold(
        connections,
        |mut connections| async move { connections.recv().await.map(|c| (Ok(c), connections)) },
    ))
}

/// Accepts until `stop`, each handshake in its own task.
async fn handshakes(
    listener: TcpListener,
    gate: Gate,
    tls: Arc<ServerTls>,
    handshake: Duration,
    ready: mpsc::Sender<Connection>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors, say: wait a little rather than spin.
                Err(error) => {
                    tracing::warn!(%error, "gRPC port: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Some(admitted) = gate.admit(stream) else {
            tracing::debug!("gRPC port full: connection closed");
            continue;
        };
        let acceptor = tls.acceptor();
        let ready = ready.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(handshake, acceptor.accept(admitted)).await {
                Ok(Ok(stream)) => {
                    // Refused only once serving has stopped.
                    let _ = ready.send(Connection::Tls(Box::new(stream))).await;
                }
                Ok(Err(error)) => {
                    tracing::warn!(%peer, %error, "gRPC port: TLS handshake refused");
                }
                Err(_) => {
                    tracing::warn!(%peer, ?handshake, "gRPC port: TLS handshake not done in time")
                }
            }
        });
    }
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            Connection::Plain(io) => io.connect_info(),
            Connection::Tls(io) => io.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Connection::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(io) => Pin::new(io).poll_write(cx, data),
            Connection::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(io) => Pin::new(io).poll_flush(cx),
            Connection::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Connection::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Connection::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Connection::Plain(io) => io.is_write_vectored(),
            Connection::Tls(io) => io.is_write_vectored(),
        }
    }
}
