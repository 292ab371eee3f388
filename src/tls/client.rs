//! TLS to the xDS management server: the CA its certificate chains to (else the bundled
//! webpki roots), an optional client certificate, and the name to verify it by.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::ServerName;

use super::files::{self, TlsFileError};

/// How to reach the xDS server over TLS. The files are read at every connection, so renewed
/// ones are used at the next reconnect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM CA certificates the server's certificate must chain to (`--xds-ca-file`); the
    /// bundled webpki (Mozilla) roots without it.
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain and key presented to the server (`--xds-client-cert`,
    /// `--xds-client-key`).
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name the server's certificate must be valid for, when not the URL's host
    /// (`--xds-server-name`).
    pub server_name: Option<String>,
}

impl ClientTls {
    /// Reads the files into a client configuration that offers h2 in ALPN.
    pub fn config(&self) -> Result<rustls::ClientConfig, TlsFileError> {
        let roots = match &self.ca {
            Some(ca) => files::roots("--xds-ca-file", ca)?,
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let builder = rustls::ClientConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsFileError::new("--xds-ca-file", &PathBuf::new(), e.to_string()))?
            .with_root_certificates(Arc::new(roots));
        let mut config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = files::certificates("--xds-client-cert", cert)?;
                let private = files::private_key("--xds-client-key", key)?;
                builder.with_client_auth_cert(chain, private).map_err(|e| {
                    TlsFileError::new(
                        "--xds-client-key",
                        key,
                        format!("not the key of --xds-client-cert {}: {e}", cert.display()),
                    )
                })?
            }
        };
        config.alpn_protocols = vec![super::H2.to_vec()];
        Ok(config)
    }

    /// The name to verify the server by: `--xds-server-name`, else `host`.
    pub fn server_name(&self, host: &str) -> Result<ServerName<'static>, String> {
        let name = self.server_name.as_deref().unwrap_or(host);
        ServerName::try_from(name.to_owned())
            .map_err(|e| format!("{name:?} cannot name a TLS server: {e}"))
    }
}
