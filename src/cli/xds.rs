//! `--xds-*`: limits pushed by an xDS management server instead of read from files.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::values::parse_interval;
use crate::tls::ClientTls;
use crate::xds::{Retry, XdsOptions, server_uri};

/// Limits over xDS (ADS, state of the world), as Envoy Gateway pushes them to the reference
/// service.
#[derive(Debug, Args)]
#[command(next_help_heading = "Limits over xDS")]
pub(super) struct XdsArgs {
    /// Subscribe to the limits (`RateLimitConfig` resources) of this xDS management server
    /// instead of reading --config: `host:port` or `http://host:port`, `https://host:port`
    /// for TLS. Each pushed version is checked like files, ACKed, or NACKed with its errors
    /// while the limits in force stay.
    #[arg(
        long,
        env = "TOLLGATE_XDS_SERVER",
        value_name = "URL",
        requires = "xds_node_id"
    )]
    pub(super) xds_server: Option<String>,
    /// The node id to subscribe as: the server pushes the limits it keeps for this node
    /// (Envoy Gateway's is `envoy-ratelimit`, AI Gateway's `envoy-ai-gateway-ratelimit`).
    #[arg(
        long,
        env = "TOLLGATE_XDS_NODE_ID",
        value_name = "ID",
        requires = "xds_server"
    )]
    xds_node_id: Option<String>,
    /// Node metadata sent with the id (`key=value`, comma-separated or repeated).
    #[arg(long, env = "TOLLGATE_XDS_NODE_METADATA", value_name = "KEY=VALUE",
          value_delimiter = ',', requires = "xds_server", value_parser = key_value('='))]
    xds_node_metadata: Vec<(String, String)>,
    /// Extra gRPC metadata on the xDS stream (`name:value`, comma-separated or repeated).
    #[arg(long, env = "TOLLGATE_XDS_HEADER", value_name = "NAME:VALUE",
          value_delimiter = ',', requires = "xds_server", value_parser = header,
          hide_env_values = true)]
    xds_header: Vec<(String, String)>,
    /// PEM CA certificates the xDS server's certificate must chain to (https://; the
    /// bundled webpki roots without it).
    #[arg(
        long,
        env = "TOLLGATE_XDS_CA_FILE",
        value_name = "PATH",
        requires = "xds_server"
    )]
    xds_ca_file: Option<PathBuf>,
    /// PEM client certificate presented to the xDS server (with --xds-client-key).
    #[arg(long, env = "TOLLGATE_XDS_CLIENT_CERT", value_name = "PATH",
          requires_all = ["xds_server", "xds_client_key"])]
    xds_client_cert: Option<PathBuf>,
    /// PEM private key of --xds-client-cert.
    #[arg(long, env = "TOLLGATE_XDS_CLIENT_KEY", value_name = "PATH",
          requires_all = ["xds_server", "xds_client_cert"])]
    xds_client_key: Option<PathBuf>,
    /// The name the xDS server's certificate must be valid for, when not the URL's host.
    #[arg(
        long,
        env = "TOLLGATE_XDS_SERVER_NAME",
        value_name = "NAME",
        requires = "xds_server"
    )]
    xds_server_name: Option<String>,
    /// First wait before reconnecting a lost xDS stream; it doubles up to --xds-retry-max.
    #[arg(long, env = "TOLLGATE_XDS_RETRY_INITIAL", value_name = "DURATION", default_value = "500ms",
          value_parser = parse_interval)]
    xds_retry_initial: Duration,
    /// Longest wait before reconnecting a lost xDS stream.
    #[arg(long, env = "TOLLGATE_XDS_RETRY_MAX", value_name = "DURATION", default_value = "30s",
          value_parser = parse_interval)]
    xds_retry_max: Duration,
    /// Largest xDS response accepted, in bytes.
    #[arg(long, env = "TOLLGATE_XDS_MAX_MESSAGE_BYTES", value_name = "BYTES", default_value_t = 4 << 20)]
    xds_max_message_bytes: usize,
    /// Serve (with no limits: every request allowed) before the first version arrives,
    /// rather than wait for it.
    #[arg(
        long,
        env = "TOLLGATE_XDS_START_WITHOUT_CONFIG",
        requires = "xds_server"
    )]
    xds_start_without_config: bool,
    /// With --xds-start-without-config: gRPC health and GET /healthcheck answer not serving
    /// until the first version is in force, so a readiness probe keeps traffic away from a
    /// replica that has no limits yet.
    #[arg(
        long,
        env = "TOLLGATE_XDS_UNHEALTHY_UNTIL_FIRST_CONFIG",
        requires = "xds_start_without_config"
    )]
    xds_unhealthy_until_first_config: bool,
}

impl XdsArgs {
    /// The subscription, with --xds-server. The TLS files are checked now, so a wrong one is
    /// named at startup.
    pub(super) fn options(&self) -> Result<Option<XdsOptions>, String> {
        let (Some(server), Some(node_id)) = (&self.xds_server, &self.xds_node_id) else {
            return Ok(None);
        };
        let tls_given = self.xds_ca_file.is_some()
            || self.xds_client_cert.is_some()
            || self.xds_server_name.is_some();
        let server = server_uri(server, tls_given).map_err(|e| format!("--xds-server {e}"))?;
        let tls = (server.scheme_str() == Some("https")).then(|| ClientTls {
            ca: self.xds_ca_file.clone(),
            identity: self
                .xds_client_cert
                .clone()
                .zip(self.xds_client_key.clone()),
            server_name: self.xds_server_name.clone(),
        });
        if let Some(tls) = &tls {
            tls.config().map_err(|e| e.to_string())?;
        }
        if self.xds_retry_initial > self.xds_retry_max {
            return Err("--xds-retry-initial is longer than --xds-retry-max".to_owned());
        }
        Ok(Some(XdsOptions {
            node_metadata: self.xds_node_metadata.clone(),
            headers: self.xds_header.clone(),
            tls,
            retry: Retry {
                initial: self.xds_retry_initial,
                max: self.xds_retry_max,
            },
            max_message_bytes: self.xds_max_message_bytes,
            start_without_config: self.xds_start_without_config,
            unhealthy_until_loaded: self.xds_unhealthy_until_first_config,
            ..XdsOptions::new(server, node_id.clone())
        }))
    }
}

/// A parser of `key<separator>value`.
fn key_value(separator: char) -> impl Fn(&str) -> Result<(String, String), String> + Clone {
    move |text: &str| match text.split_once(separator) {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected key{separator}value, got {text:?}")),
    }
}

/// `name:value`, a valid gRPC metadata name and value.
fn header(text: &str) -> Result<(String, String), String> {
    let (name, value) = key_value(':')(text)?;
    let name = name.trim().to_ascii_lowercase();
    let value = value.trim().to_owned();
    name.parse::<tonic::metadata::AsciiMetadataKey>()
        .map_err(|_| format!("{name:?} is not a gRPC metadata name"))?;
    value
        .parse::<tonic::metadata::AsciiMetadataValue>()
        .map_err(|_| format!("the value of {name:?} is not a valid header value"))?;
    Ok((name, value))
}
