//! Limits over xDS: an ADS client (state of the world) subscribed to
//! `ratelimit.config.ratelimit.v3.RateLimitConfig`, as Envoy Gateway and AI Gateway serve it to
//! the reference service.
//!
//! Each pushed version is compiled through the same pipeline as files ([`convert`]) and put in
//! force by the [`Reloader`](crate::reload::Reloader) with the same atomic swap (buckets kept as
//! on a file reload); it is then ACKed, or NACKed with every error while the limits in force
//! stay. A lost stream is reopened after a backoff; the server then pushes its state again.

mod client;
mod connect;
pub mod convert;
pub mod resource;

pub use client::run;

use std::time::Duration;

use http::Uri;

use crate::tls::ClientTls;

/// Where to subscribe, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsOptions {
    /// The management server, `http://` or `https://` (then with `tls`).
    pub server: Uri,
    /// The node id sent to the server, which serves the resources of that node.
    pub node_id: String,
    /// Node metadata sent with the id (`key=value` pairs).
    pub node_metadata: Vec<(String, String)>,
    /// Extra gRPC metadata (headers) on the stream.
    pub headers: Vec<(String, String)>,
    /// TLS to the server, for `https://`.
    pub tls: Option<ClientTls>,
    /// Waits between attempts to (re)connect.
    pub retry: Retry,
    /// Largest response accepted, in bytes.
    pub max_message_bytes: usize,
    /// Serve before the first version arrives (with no limits), rather than wait for it.
    pub start_without_config: bool,
    /// With `start_without_config`: health checks answer not serving until the first version
    /// is in force (the reference's `HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED`).
    pub unhealthy_until_loaded: bool,
}

/// Waits between connection attempts: `initial`, doubling up to `max`, each with up to a fifth
/// of jitter either way; back to `initial` once a stream delivered a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// The first wait.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl XdsOptions {
    /// Plain-text ADS to `server` as node `node_id`, with the defaults of the command line.
    pub fn new(server: Uri, node_id: impl Into<String>) -> Self {
        Self {
            server,
            node_id: node_id.into(),
            node_metadata: Vec::new(),
            headers: Vec::new(),
            tls: None,
            retry: Retry::default(),
            max_message_bytes: 4 << 20,
            start_without_config: false,
            unhealthy_until_loaded: false,
        }
    }
}

/// A server address as given (`host:port`, `http://…`, `https://…`), as a URI with its scheme:
/// `https` when `tls` is wanted. A scheme that contradicts `tls` is an error.
pub fn server_uri(text: &str, tls: bool) -> Result<Uri, String> {
    let with_scheme = if text.contains("://") {
        text.to_owned()
    } else if tls {
        format!("https://{text}")
    } else {
        format!("http://{text}")
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|e| format!("{text:?} is not a server address (host:port or a URL): {e}"))?;
    match (uri.scheme_str(), tls) {
        (Some("https"), true) | (Some("http"), false) => {}
        (Some("http"), true) => {
            return Err(format!(
                "{text:?} is plain http, but TLS settings are given: use https://"
            ));
        }
        (Some("https"), false) => {}
        _ => return Err(format!("{text:?}: the scheme must be http or https")),
    }
    if uri.host().is_none_or(str::is_empty) || uri.port_u16().is_none() {
        return Err(format!("{text:?} needs a host and a port"));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_take_the_reference_form_and_urls() {
        assert_eq!(
            server_uri("envoy-gateway:18001", false)
                .unwrap()
                .to_string(),
            "http://envoy-gateway:18001/"
        );
        assert_eq!(
            server_uri("envoy-gateway:18001", true)
                .unwrap()
                .scheme_str(),
            Some("https")
        );
        assert_eq!(
            server_uri("https://10.0.0.1:18000", false)
                .unwrap()
                .scheme_str(),
            Some("https")
        );
        assert!(
            server_uri("http://x:1", true)
                .unwrap_err()
                .contains("https://")
        );
        assert!(
            server_uri("envoy-gateway", false)
                .unwrap_err()
                .contains("port")
        );
        assert!(server_uri("ftp://x:1", false).is_err());
    }
}
