//! The runtime-tenant state contract: where tenants created through the service API, and the
//! audit log of their changes, are kept.
//!
//! A [`TenantState`] holds every record and a version that changes with every commit. A
//! [`Commit`] writes or deletes one record **only if it is still at the revision the change
//! was made from** (compare-and-set: two replicas changing one tenant at once cannot lose
//! either change; the second is told to read again), and appends its audit entry in the same
//! atomic step, so the log never misses a change nor records one that did not happen.
//!
//! Implementations: [`LocalState`](super::LocalState) (this process's memory, saved to a file
//! under `--state-dir` when given) and [`RedisState`](super::RedisState) (a hash, a version
//! number and a list in Redis, shared by every replica).

use std::fmt;
use std::path::PathBuf;

use futures_util::future::BoxFuture;

use super::record::{AuditEntry, TenantRecord};

/// The most audit entries kept; older ones are dropped.
pub const MAX_AUDIT: usize = 10_000;

/// Every record, as of one version.
#[derive(Debug, Clone, Default)]
pub struct Image {
    /// Changes with every commit.
    pub version: u64,
    /// Every tenant created through the API.
    pub tenants: Vec<TenantRecord>,
}

/// One change to one tenant.
#[derive(Debug, Clone, Copy)]
pub struct Commit<'a> {
    /// The tenant's domain.
    pub domain: &'a str,
    /// The tenant's id.
    pub id: &'a str,
    /// The revision the record must still have; `None`: it must not exist.
    pub expected: Option<&'a str>,
    /// What to write in its place; `None` deletes it.
    pub next: Option<&'a TenantRecord>,
    /// The audit entry, appended with the change.
    pub audit: &'a AuditEntry,
}

/// Why the state could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state file cannot be read or written.
    #[error("tenant state file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The state file is not one tollgate wrote.
    #[error("tenant state file {path} is unreadable ({why}): fix it or move it away")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Redis did not answer, or answered an error.
    #[error("tenant state in redis: {0}")]
    Redis(String),
    /// No randomness for a revision or a key.
    #[error("no randomness: {0}")]
    Random(#[from] getrandom::Error),
    /// Other replicas kept changing the tenant: the change was not made.
    #[error("the tenant kept changing under this change: try again")]
    Contended,
}

/// Where runtime tenants live. See the module documentation for the contract.
pub trait TenantState: Send + Sync + fmt::Debug {
    /// Every record and the version they make up.
    fn load(&self) -> BoxFuture<'_, Result<Image, StateError>>;

    /// The version now: unchanged means nothing changed.
    fn version(&self) -> BoxFuture<'_, Result<u64, StateError>>;

    /// Applies `commit` if its record is still at `commit.expected`, with its audit entry;
    /// `Ok(false)` when the record changed meanwhile (nothing was written).
    fn commit<'a>(&'a self, commit: Commit<'a>) -> BoxFuture<'a, Result<bool, StateError>>;

    /// The newest audit entries, newest first, at most `limit`.
    fn audit(&self, limit: usize) -> BoxFuture<'_, Result<Vec<AuditEntry>, StateError>>;
}
