//! Hostile clients against the real server: header-only gRPC streams, silent connections,
//! connection floods, slowloris on the admin and service API ports, undecodable requests. Each
//! must be refused, reset or closed within the configured time, and memory must stay bounded.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Setup, TestServer, start_with};
use tollgate::api::ApiConfig;
use tollgate::server::Limits;

const LIMITS: &str =
    "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 5}\n";

/// A server with tight limits, so each attack meets them quickly.
async fn tight() -> TestServer {
    let limits = Limits {
        grpc_connections: 4,
        grpc_streams: 8,
        grpc_call_timeout: Duration::from_millis(300),
        handshake_timeout: Duration::from_millis(300),
        admin_connections: 4,
        admin_request_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    start_with(
        LIMITS,
        Setup {
            limits,
            api: ApiConfig {
                addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
                ..ApiConfig::default()
            },
            ..Setup::default()
        },
    )
    .await
}

/// The HTTP ports: admin and service API, bounded alike.
fn http_ports(s: &TestServer) -> [SocketAddr; 2] {
    [s.http, s.api.unwrap()]
}

/// Whether the server closes `stream` within `deadline` (a read returns end of file or an
/// error), reading and discarding whatever it sends first.
fn closed_within(stream: &mut TcpStream, deadline: Duration) -> bool {
    let end = Instant::now() + deadline;
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buffer = [0u8; 4096];
    while Instant::now() < end {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// `closed_within` off the async runtime.
async fn closed(mut stream: TcpStream, deadline: Duration) -> bool {
    tokio::task::spawn_blocking(move || closed_within(&mut stream, deadline))
        .await
        .unwrap()
}

fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).unwrap()
}

/// This process's resident memory, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    let s = tight().await;
    for addr in [s.grpc, s.http, s.api.unwrap()] {
        assert!(
            closed(connect(addr), Duration::from_secs(5)).await,
            "{addr} kept a silent connection"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_at_once() {
    let s = tight().await;
    for addr in [s.grpc, s.http, s.api.unwrap()] {
        // Four held open by sending a little (not enough to finish anything).
        let mut held: Vec<TcpStream> = (0..4).map(|_| connect(addr)).collect();
        for stream in &mut held {
            stream.write_all(b"P").unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let fifth = connect(addr);
        assert!(
            closed(fifth, Duration::from_millis(250)).await,
            "{addr}: a fifth connection was kept"
        );
        drop(held);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_idle_admin_connections_are_closed() {
    let s = tight().await;
    for (addr, post) in http_ports(&s).into_iter().zip(["/json", "/v1/check"]) {
        // Headers that never end.
        let mut slow = connect(addr);
        slow.write_all(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        assert!(
            closed(slow, Duration::from_secs(5)).await,
            "{addr}: slowloris kept"
        );
        // A body that never ends: 408.
        let mut body = connect(addr);
        let head = format!("POST {post} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{");
        body.write_all(head.as_bytes()).unwrap();
        let answer = tokio::task::spawn_blocking(move || {
            body.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut text = String::new();
            let _ = body.read_to_string(&mut text);
            text
        })
        .await
        .unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{addr}: {answer}");
        if post == "/v1/check" {
            // The service API answers in its JSON error shape.
            assert!(answer.contains(r#""error":"request_timeout""#), "{answer}");
        }
        // A keep-alive connection that answered once, then idles.
        let mut idle = connect(addr);
        idle.write_all(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert!(
            closed(idle, Duration::from_secs(5)).await,
            "{addr}: idle kept"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_only_streams_are_capped_per_connection_and_reset_in_time() {
    let s = tight().await;
    let tcp = tokio::net::TcpStream::connect(s.grpc).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let mut responses = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..8 {
        let request = http::Request::post(format!(
            "http://{}/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
            s.grpc
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
        // Headers only: the body never comes.
        let (response, stream) = client.send_request(request, false).unwrap();
        responses.push(response);
        streams.push(stream);
        client = client.ready().await.unwrap();
    }
    // Every stream is answered (the call times out), well within the guard.
    let started = Instant::now();
    for response in responses {
        let answered = tokio::time::timeout(Duration::from_secs(5), response).await;
        assert!(answered.is_ok(), "a header-only stream was kept open");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(streams);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_header_only_streams_stay_within_a_memory_bound() {
    let limits = Limits {
        grpc_call_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let s = start_with(
        LIMITS,
        Setup {
            limits,
            ..Setup::default()
        },
    )
    .await;
    let before = rss();
    let mut kept = Vec::new();
    // 16 connections × 128 streams (the default cap): 2 048 calls that never send a body.
    for _ in 0..16 {
        let tcp = tokio::net::TcpStream::connect(s.grpc).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        for _ in 0..128 {
            let request = http::Request::post(format!(
                "http://{}/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
                s.grpc
            ))
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
            let sent = client.send_request(request, false);
            let Ok((response, stream)) = sent else { break };
            kept.push((response, stream));
            match tokio::time::timeout(Duration::from_millis(200), client.ready()).await {
                Ok(Ok(ready)) => client = ready,
                _ => break,
            }
        }
    }
    let grown = rss().saturating_sub(before);
    eprintln!(
        "figure: {} header-only streams held, RSS grew {} MiB",
        kept.len(),
        grown >> 20
    );
    assert!(
        grown < 200 << 20,
        "{} header-only streams grew RSS by {} MiB",
        kept.len(),
        grown >> 20
    );
    drop(kept);
    s.stop().await;
}

#[tokio::test]
async fn undecodable_requests_get_invalid_argument_and_are_counted() {
    let s = tight().await;
    for body in [
        // Not protobuf at all.
        b"\xff\xff\xff\xff\xff\xff\xff".to_vec(),
        // Field 1 (domain) as a string that is not UTF-8.
        vec![0x0a, 0x02, 0xc3, 0x28],
    ] {
        let tcp = tokio::net::TcpStream::connect(s.grpc).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let request = http::Request::post(format!(
            "http://{}/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
            s.grpc
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
        let (response, mut stream) = client.send_request(request, false).unwrap();
        let mut framed = vec![0u8];
        framed.extend(u32::try_from(body.len()).unwrap().to_be_bytes());
        framed.extend(&body);
        stream.send_data(framed.into(), true).unwrap();
        let response = response.await.unwrap();
        let status = response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(status.as_deref(), Some("3"), "{response:?}");
        client = client.ready().await.unwrap();
        drop(client);
    }
    let (_, text) = s.admin_get("/metrics").await;
    assert!(
        text.contains(
            "tollgate_calls_total{method=\"ShouldRateLimit\",code=\"INVALID_ARGUMENT\",result=\"error\"} 2"
        ),
        "{text}"
    );
    s.stop().await;
}
