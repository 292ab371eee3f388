//! The ADS stream: subscribe, compile each pushed version, ACK or NACK it, and reconnect with
//! a backoff when the stream is lost.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value};
use envoy_types::pb::google::rpc::Status;
use tokio::sync::mpsc;

use super::resource::TYPE_URL;
use super::{XdsOptions, connect, convert};
use crate::reload::{Reloader, Trigger};

/// Keeps `reloader`'s limits subscribed to the server of `options` until `stop` resolves.
pub async fn run(reloader: Arc<Reloader>, options: XdsOptions, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut wait = options.retry.initial;
    // The version in force, sent back on reconnection so the server knows what we hold.
    let mut accepted: Option<String> = None;
    loop {
        let mut delivered = false;
        let ended = tokio::select! {
            () = &mut stop => return,
            ended = session(&reloader, &options, &mut accepted, &mut delivered) => ended,
        };
        reloader.update_xds(|xds| xds.connected = false);
        if delivered {
            wait = options.retry.initial;
        }
        let jittered = jitter(wait);
        tracing::warn!(server = %options.server, retry_in = ?jittered, "xDS stream lost: {ended}");
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(jittered) => {}
        }
        wait = (wait * 2).min(options.retry.max);
    }
}

/// One stream, until it fails: why it ended. `delivered` says whether a version came.
async fn session(
    reloader: &Reloader,
    options: &XdsOptions,
    accepted: &mut Option<String>,
    delivered: &mut bool,
) -> String {
    let channel = match connect::channel(options).await {
        Ok(channel) => channel,
        Err(error) => return format!("cannot connect: {error}"),
    };
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(options.max_message_bytes);
    let (requests, outgoing) = mpsc::channel(4);
    let first = DiscoveryRequest {
        node: Some(node(options)),
        version_info: accepted.clone().unwrap_or_default(),
        ..request()
    };
    // The receiver is alive: it is ours, below.
    let _ = requests.send(first).await;
    let outgoing = futures_util::stream::unfold(outgoing, |mut outgoing| async move {
        outgoing.recv().await.map(|request| (request, outgoing))
    });
    let mut call = tonic::Request::new(outgoing);
    for (name, value) in &options.headers {
        // Checked when the options were made.
        if let (Ok(name), Ok(value)) = (
            name.parse::<tonic::metadata::AsciiMetadataKey>(),
            value.parse(),
        ) {
            call.metadata_mut().insert(name, value);
        }
    }
    let mut responses = match client.stream_aggregated_resources(call).await {
        Ok(stream) => stream.into_inner(),
        Err(status) => return format!("the server refused the stream: {status}"),
    };
    reloader.update_xds(|xds| xds.connected = true);
    tracing::info!(server = %options.server, node = %options.node_id, "xDS stream open: subscribed to RateLimitConfig");
    loop {
        let response = match responses.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return "the server ended the stream".to_owned(),
            Err(status) => return format!("{status}"),
        };
        *delivered = true;
        let answer = answer(reloader, response, accepted).await;
        if requests.send(answer).await.is_err() {
            return "the stream closed".to_owned();
        }
    }
}

/// Compiles and applies a pushed version: the ACK, or the NACK with every error.
async fn answer(
    reloader: &Reloader,
    response: DiscoveryResponse,
    accepted: &mut Option<String>,
) -> DiscoveryRequest {
    let DiscoveryResponse {
        version_info,
        resources,
        type_url,
        nonce,
        ..
    } = response;
    let compiled = if type_url == TYPE_URL {
        let options = *reloader.options();
        tokio::task::spawn_blocking(move || convert::compile(&resources, &options))
            .await
            .unwrap_or_else(|join| {
                Err(crate::config::ConfigErrors(vec![
                    crate::config::ConfigError::file(
                        "xds:",
                        format!("compile task failed: {join}"),
                    ),
                ]))
            })
    } else {
        Err(crate::config::ConfigErrors(vec![
            crate::config::ConfigError::file(
                "xds:",
                format!("a response of type {type_url:?}, not the {TYPE_URL} subscribed to"),
            ),
        ]))
    };
    match reloader.apply(compiled, Trigger::Xds).await {
        Ok(_) => {
            tracing::info!(version_info = %version_info, "xDS version accepted (ACK)");
            reloader.update_xds(|xds| {
                xds.version_info = Some(version_info.clone());
                xds.acks += 1;
            });
            *accepted = Some(version_info.clone());
            DiscoveryRequest {
                version_info,
                response_nonce: nonce,
                ..request()
            }
        }
        Err(errors) => {
            let kept = accepted.clone().unwrap_or_default();
            tracing::warn!(version_info = %version_info, kept = %kept, "xDS version refused (NACK): the limits in force stay");
            reloader.update_xds(|xds| xds.nacks += 1);
            DiscoveryRequest {
                version_info: kept,
                response_nonce: nonce,
                error_detail: Some(Status {
                    // INVALID_ARGUMENT
                    code: 3,
                    message: errors.to_string(),
                    details: Vec::new(),
                }),
                ..request()
            }
        }
    }
}

/// A request for every `RateLimitConfig` (a wildcard subscription).
fn request() -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: TYPE_URL.to_owned(),
        ..Default::default()
    }
}

/// This node, as the server knows it.
fn node(options: &XdsOptions) -> Node {
    let fields = options
        .node_metadata
        .iter()
        .map(|(key, value)| {
            let value = Value {
                kind: Some(Kind::StringValue(value.clone())),
            };
            (key.clone(), value)
        })
        .collect();
    Node {
        id: options.node_id.clone(),
        metadata: Some(Struct { fields }),
        user_agent_name: "tollgate".to_owned(),
        ..Default::default()
    }
}

/// `wait`, give or take up to a fifth, so replicas do not reconnect in step.
fn jitter(wait: Duration) -> Duration {
    let random = getrandom::u32().unwrap_or(u32::MAX / 2);
    // From 0.8 to 1.2.
    let factor = 0.8 + 0.4 * f64::from(random) / f64::from(u32::MAX);
    wait.mul_f64(factor)
}
