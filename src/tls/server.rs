//! The gRPC port's TLS: certificate and key, optionally a CA that client certificates must
//! chain to (mutual TLS) and a name they must carry; re-read when the files change, so a
//! renewed certificate (cert-manager, a Kubernetes Secret update) is served without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::ServerName;
use rustls::server::WebPkiClientVerifier;

use super::files::{self, TlsFileError};
use super::san::RequireName;

/// The files of the gRPC port's TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// PEM certificate chain served (`--grpc-tls-cert`).
    pub cert: PathBuf,
    /// PEM private key of `cert` (`--grpc-tls-key`).
    pub key: PathBuf,
    /// PEM CA certificates client certificates must chain to; with it, a client without a
    /// valid certificate is refused (`--grpc-tls-client-ca`).
    pub client_ca: Option<PathBuf>,
    /// A DNS name client certificates must be valid for (`--grpc-tls-client-san`).
    pub client_san: Option<String>,
}

impl ServerTlsFiles {
    /// Reads the files into a server configuration that offers h2 in ALPN.
    pub fn config(&self) -> Result<rustls::ServerConfig, TlsFileError> {
        let chain = files::certificates("--grpc-tls-cert", &self.cert)?;
        let key = files::private_key("--grpc-tls-key", &self.key)?;
        let builder = rustls::ServerConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsFileError::new("--grpc-tls-cert", &self.cert, e.to_string()))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let roots = files::roots("--grpc-tls-client-ca", ca)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), super::provider())
                        .build()
                        .map_err(|e| {
                            TlsFileError::new("--grpc-tls-client-ca", ca, e.to_string())
                        })?;
                match &self.client_san {
                    None => builder.with_client_cert_verifier(verifier),
                    Some(san) => {
                        let name = ServerName::try_from(san.clone()).map_err(|e| {
                            TlsFileError::new(
                                "--grpc-tls-client-san",
                                Path::new(san),
                                e.to_string(),
                            )
                        })?;
                        builder.with_client_cert_verifier(Arc::new(RequireName {
                            inner: verifier,
                            name,
                        }))
                    }
                }
            }
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| {
            TlsFileError::new(
                "--grpc-tls-key",
                &self.key,
                format!(
                    "not the key of --grpc-tls-cert {}: {e}",
                    self.cert.display()
                ),
            )
        })?;
        config.alpn_protocols = vec![super::H2.to_vec()];
        Ok(config)
    }

    /// Every file, to watch.
    pub fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![self.cert.as_path(), self.key.as_path()];
        paths.extend(self.client_ca.as_deref());
        paths
    }
}

/// The gRPC port's TLS configuration in force.
#[derive(Debug)]
pub struct ServerTls {
    files: ServerTlsFiles,
    config: ArcSwap<rustls::ServerConfig>,
}

impl ServerTls {
    /// Reads `files`: an error names the flag and the file.
    pub fn load(files: ServerTlsFiles) -> Result<Self, TlsFileError> {
        let config = files.config()?;
        Ok(Self {
            files,
            config: ArcSwap::from_pointee(config),
        })
    }

    /// The files read.
    pub fn files(&self) -> &ServerTlsFiles {
        &self.files
    }

    /// An acceptor for the next connection, with the configuration in force now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
    }

    /// Reads the files again and puts them in force for new connections; connections open
    /// keep theirs. A file that cannot be used (caught half-written, say) keeps the
    /// configuration in force: the error is returned, and the next change tries again.
    pub fn reload(&self) -> Result<(), TlsFileError> {
        let config = self.files.config()?;
        self.config.store(Arc::new(config));
        Ok(())
    }
}
