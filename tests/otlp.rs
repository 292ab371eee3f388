//! With `--features otlp`: spans go to an OTLP/HTTP collector and continue the trace whose
//! context Envoy sends in the gRPC metadata (`traceparent`).

#![cfg(feature = "otlp")]
#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::time::Duration;

use axum::body::Bytes;
use common::{descriptor, request, start};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tollgate::telemetry::{self, LogFormat};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_continue_the_trace_envoy_sends() {
    // A collector: OTLP/HTTP on a free loopback port, handing over every export it receives.
    let (exports, mut received) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let collector = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let _ = exports.send(body);
            async {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, collector).await.unwrap() });

    // Logs at warn: the exported spans have their own filter.
    let telemetry = telemetry::init("warn", LogFormat::Text, Some(&endpoint)).unwrap();
    let mut s = start("domain: t\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 5}\n").await;
    let mut call = tonic::Request::new(request("t", vec![descriptor(&[("k", "v")])]));
    let traceparent = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    call.metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    s.client.should_rate_limit(call).await.unwrap();
    tokio::task::block_in_place(|| telemetry.flush());

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let span = loop {
        let body = tokio::time::timeout_at(deadline, received.recv())
            .await
            .expect("no span export within 10 s")
            .unwrap();
        let export = ExportTraceServiceRequest::decode(body).unwrap();
        let found = export
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .find(|span| span.name == "should_rate_limit")
            .cloned();
        if let Some(span) = found {
            break span;
        }
    };
    assert_eq!(
        hex(&span.trace_id),
        TRACE_ID,
        "the span joins Envoy's trace"
    );
    assert_eq!(
        hex(&span.parent_span_id),
        PARENT_ID,
        "as a child of Envoy's span"
    );
    s.stop().await;
}
