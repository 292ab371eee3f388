//! Accepted connections, bounded: at most so many open at once per port, and each must send
//! its first bytes within the handshake timeout (a socket that connects and stays silent is
//! closed, not kept).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// How many connections a port holds at most, and how soon a new one must speak.
#[derive(Debug, Clone)]
pub struct Gate {
    permits: Arc<Semaphore>,
    handshake: Duration,
}

impl Gate {
    /// At most `max` open connections, each speaking within `handshake`.
    pub fn new(max: usize, handshake: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            handshake,
        }
    }

    /// `io` as an admitted connection, or `None` when the port is full (it is then closed).
    pub fn admit<IO>(&self, io: IO) -> Option<Admitted<IO>> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(Admitted {
            io,
            _permit: permit,
            silent_until: Some(Box::pin(tokio::time::sleep(self.handshake))),
        })
    }
}

/// A connection holding its place at the port until it closes.
#[derive(Debug)]
pub struct Admitted<IO> {
    io: IO,
    _permit: OwnedSemaphorePermit,
    /// Until the first bytes arrive: when the peer must have spoken.
    silent_until: Option<Pin<Box<Sleep>>>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Admitted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Some(deadline) = self.silent_until.as_mut() {
            if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
                self.silent_until = None;
            } else if read.is_pending() && deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the connection sent nothing within the handshake timeout",
                )));
            }
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Admitted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for Admitted<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}
