//! `tollgate serve`'s service API flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::values::parse_addr;
use crate::api::ApiConfig;

/// The service API, and where runtime tenants are kept (see the README's "Service API").
#[derive(Debug, Args)]
pub(super) struct ApiArgs {
    /// Serve the service API on this address: checks and usage for callers outside Envoy,
    /// runtime tenants and API keys, GET /openapi.json. Off unless given.
    #[arg(long, env = "TOLLGATE_API_ADDR", value_name = "HOST:PORT", value_parser = parse_addr)]
    api_addr: Option<SocketAddr>,
    /// A file of admin token digests (one `sha256:…` per line, as `tollgate hash-key` prints
    /// them): the API's management endpoints require `Authorization: Bearer <token>` with one
    /// of these tokens. Without it they refuse every call.
    #[arg(long, env = "TOLLGATE_API_ADMIN_TOKEN_FILE", value_name = "FILE")]
    api_admin_token_file: Option<PathBuf>,
    /// Save runtime tenants and their audit log in this directory (memory store), so they
    /// survive restarts; with --store redis they live in Redis instead.
    #[arg(long, env = "TOLLGATE_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

impl ApiArgs {
    pub(super) fn config(&self) -> ApiConfig {
        ApiConfig {
            addr: self.api_addr,
            admin_token_file: self.api_admin_token_file.clone(),
            state_dir: self.state_dir.clone(),
        }
    }
}
