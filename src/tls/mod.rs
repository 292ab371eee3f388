//! TLS: the gRPC port as a server (optionally requiring client certificates, re-read when its
//! files change) and the xDS subscription as a client. rustls with ring throughout, as for
//! `rediss://`.

mod client;
mod files;
mod san;
mod server;

pub use client::ClientTls;
pub use files::TlsFileError;
pub use server::{ServerTls, ServerTlsFiles};

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The crypto every TLS configuration here is built with.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The protocol gRPC speaks over TLS, offered and required in ALPN.
const H2: &[u8] = b"h2";
