//! Transport settings of the gRPC port that no answer shows but latency does: accepted
//! connections must have TCP_NODELAY, or Nagle's algorithm and delayed ACKs hold small
//! responses back for ~40 ms. Checked on the sockets themselves, not by timing.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::os::fd::{AsFd, OwnedFd};

use common::{descriptor, request, start};
use rustix::net::SocketAddrAny;
use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};

/// The port of a socket address, if it is an internet one.
fn port(addr: Option<SocketAddrAny>) -> Option<u16> {
    let addr: std::net::SocketAddr = addr?.try_into().ok()?;
    Some(addr.port())
}

/// This process's connected TCP sockets whose local port is `local_port`.
fn accepted_sockets(local_port: u16) -> Vec<OwnedFd> {
    let me = pidfd_open(getpid(), PidfdFlags::empty()).unwrap();
    let mut sockets = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let entry = entry.unwrap();
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        let Ok(number) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // A duplicate of our own descriptor, obtained without unsafe code.
        let Ok(fd) = pidfd_getfd(me.as_fd(), number, PidfdGetfdFlags::empty()) else {
            continue;
        };
        let local = port(rustix::net::getsockname(&fd).ok());
        let peer = rustix::net::getpeername(&fd).ok().flatten();
        if local == Some(local_port) && peer.is_some() {
            sockets.push(fd);
        }
    }
    sockets
}

#[tokio::test]
async fn accepted_grpc_connections_have_tcp_nodelay() {
    let mut s = start("domain: t\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 5}\n").await;
    s.call(request("t", vec![descriptor(&[("k", "v")])])).await;
    let sockets = accepted_sockets(s.grpc.port());
    assert!(
        !sockets.is_empty(),
        "no accepted connection found on the gRPC port"
    );
    for socket in &sockets {
        assert!(
            rustix::net::sockopt::tcp_nodelay(socket).unwrap(),
            "an accepted gRPC connection without TCP_NODELAY"
        );
    }
    s.stop().await;
}
