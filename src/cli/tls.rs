//! `--grpc-tls-*`: TLS, and mutual TLS, on the gRPC port.

use std::path::PathBuf;

use clap::Args;

use crate::tls::ServerTlsFiles;

/// TLS on the gRPC port. The files are re-read when they change (a renewal by cert-manager, a
/// Kubernetes Secret update): new connections get them, open ones keep theirs.
#[derive(Debug, Args)]
#[command(next_help_heading = "TLS on the gRPC port")]
pub(super) struct GrpcTlsArgs {
    /// Serve gRPC over TLS with this PEM certificate chain (with --grpc-tls-key).
    #[arg(
        long,
        env = "TOLLGATE_GRPC_TLS_CERT",
        value_name = "PATH",
        requires = "grpc_tls_key"
    )]
    grpc_tls_cert: Option<PathBuf>,
    /// PEM private key of --grpc-tls-cert.
    #[arg(
        long,
        env = "TOLLGATE_GRPC_TLS_KEY",
        value_name = "PATH",
        requires = "grpc_tls_cert"
    )]
    grpc_tls_key: Option<PathBuf>,
    /// Mutual TLS: require a client certificate that chains to these PEM CA certificates;
    /// a client without one is refused at the handshake.
    #[arg(
        long,
        env = "TOLLGATE_GRPC_TLS_CLIENT_CA",
        value_name = "PATH",
        requires = "grpc_tls_cert"
    )]
    grpc_tls_client_ca: Option<PathBuf>,
    /// With --grpc-tls-client-ca: the client certificate must also be valid for this DNS name.
    #[arg(
        long,
        env = "TOLLGATE_GRPC_TLS_CLIENT_SAN",
        value_name = "NAME",
        requires = "grpc_tls_client_ca"
    )]
    grpc_tls_client_san: Option<String>,
}

impl GrpcTlsArgs {
    /// The TLS files, if TLS is asked for; they are read (and checked) when the port binds.
    pub(super) fn files(&self) -> Option<ServerTlsFiles> {
        Some(ServerTlsFiles {
            cert: self.grpc_tls_cert.clone()?,
            key: self.grpc_tls_key.clone()?,
            client_ca: self.grpc_tls_client_ca.clone(),
            client_san: self.grpc_tls_client_san.clone(),
        })
    }
}
