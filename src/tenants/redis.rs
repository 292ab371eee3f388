//! Runtime tenants in Redis (`--store redis`), shared by every replica.
//!
//! Three keys under one hash tag (one Cluster slot, so a commit is one script call):
//! `{prefix}{tenants}:records`, a hash of `<domain>\n<id>` → the record's JSON;
//! `{prefix}{tenants}:version`, a random number every commit replaces (replicas poll it, and
//! read the records again when it differs from theirs: unlike a counter it never comes back
//! after a lost key or a failover that lost writes); `{prefix}{tenants}:audit`, the audit log, newest first,
//! trimmed to [`MAX_AUDIT`]. A commit is `commit.lua`: compare the revision, write, count,
//! log, in one atomic step. The connection is the decision store's kind (single node,
//! Cluster or Sentinel; TLS), but its own, so management calls never queue behind decisions.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use redis::{RedisResult, Script};

use super::record::{AuditEntry, TenantRecord};
use super::state::{Commit, Image, MAX_AUDIT, StateError, TenantState};
use crate::store::RedisOptions;
use crate::store::redis::link::{Conn, Link};

/// The longest wait for one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Runtime tenants in Redis.
pub struct RedisState {
    link: Link,
    records: String,
    version: String,
    audit: String,
    commit: Script,
    /// A call failed: connect afresh before the next one (a restarted Redis, a failover).
    stale: AtomicBool,
}

impl fmt::Debug for RedisState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisState")
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

impl RedisState {
    /// State in the Redis `options` name, under its prefix; nothing is connected until the
    /// first call. Errors only for a malformed URL.
    pub fn new(options: &RedisOptions) -> Result<Self, StateError> {
        let link = Link::new(options).map_err(|e| StateError::Redis(e.to_string()))?;
        let key = |name: &str| format!("{}{{tenants}}:{name}", options.prefix);
        Ok(Self {
            link,
            records: key("records"),
            version: key("version"),
            audit: key("audit"),
            commit: Script::new(include_str!("commit.lua")),
            stale: AtomicBool::new(false),
        })
    }

    /// Runs `call` on a connection, within [`CALL_TIMEOUT`].
    async fn call<T, F>(&self, what: &str, call: impl FnOnce(Conn) -> F) -> Result<T, StateError>
    where
        F: Future<Output = RedisResult<T>>,
    {
        let attempt = async {
            if self.stale.swap(false, Ordering::AcqRel) || self.link.conn().is_none() {
                self.link.reconnect(&self.version).await?;
            }
            match self.link.conn() {
                Some(conn) => call(conn).await,
                None => Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "not connected",
                ))),
            }
        };
        let failed = match tokio::time::timeout(CALL_TIMEOUT, attempt).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(error)) => format!("{what}: {error}"),
            Err(_) => format!("{what}: no answer within {CALL_TIMEOUT:?}"),
        };
        self.stale.store(true, Ordering::Release);
        Err(StateError::Redis(failed))
    }
}

/// The hash field of a tenant: its id cannot hold a newline, so any domain name is safe.
fn field(domain: &str, id: &str) -> String {
    format!("{domain}\n{id}")
}

/// `value` as stored.
fn json(value: &impl serde::Serialize) -> Result<String, StateError> {
    serde_json::to_string(value).map_err(|e| StateError::Redis(e.to_string()))
}

/// Parses stored JSON, leaving out (and logging) what does not parse.
fn parsed<T: serde::de::DeserializeOwned>(
    what: &str,
    texts: impl IntoIterator<Item = String>,
) -> Vec<T> {
    texts
        .into_iter()
        .filter_map(|text| match serde_json::from_str(&text) {
            Ok(value) => Some(value),
            Err(error) => {
                tracing::warn!(%error, "{what} in redis does not parse: left out");
                None
            }
        })
        .collect()
}

impl TenantState for RedisState {
    fn load(&self) -> BoxFuture<'_, Result<Image, StateError>> {
        async move {
            let (version, records): (Option<u64>, HashMap<String, String>) = self
                .call("reading tenants", |mut conn| async move {
                    redis::pipe()
                        .atomic()
                        .get(&self.version)
                        .hgetall(&self.records)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            Ok(Image {
                version: version.unwrap_or(0),
                tenants: parsed::<TenantRecord>("a tenant record", records.into_values()),
            })
        }
        .boxed()
    }

    fn version(&self) -> BoxFuture<'_, Result<u64, StateError>> {
        async move {
            let version: Option<u64> = self
                .call("reading the tenant version", |mut conn| async move {
                    redis::cmd("GET")
                        .arg(&self.version)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            Ok(version.unwrap_or(0))
        }
        .boxed()
    }

    fn commit<'a>(&'a self, commit: Commit<'a>) -> BoxFuture<'a, Result<bool, StateError>> {
        async move {
            let next = match commit.next {
                Some(record) => json(record)?,
                None => String::new(),
            };
            let audit = json(commit.audit)?;
            let field = field(commit.domain, commit.id);
            let expected = commit.expected.unwrap_or_default();
            let mut version = [0u8; 8];
            getrandom::fill(&mut version)?;
            let version = u64::from_le_bytes(version);
            let done: i64 = self
                .call("committing a tenant change", |mut conn| async move {
                    self.commit
                        .key(&self.records)
                        .key(&self.version)
                        .key(&self.audit)
                        .arg(&field)
                        .arg(expected)
                        .arg(&next)
                        .arg(&audit)
                        .arg(MAX_AUDIT)
                        .arg(version)
                        .invoke_async(&mut conn)
                        .await
                })
                .await?;
            Ok(done == 1)
        }
        .boxed()
    }

    fn audit(&self, limit: usize) -> BoxFuture<'_, Result<Vec<AuditEntry>, StateError>> {
        async move {
            if limit == 0 {
                return Ok(Vec::new());
            }
            let last = isize::try_from(limit.min(MAX_AUDIT)).unwrap_or(isize::MAX) - 1;
            let entries: Vec<String> = self
                .call("reading the audit log", |mut conn| async move {
                    redis::cmd("LRANGE")
                        .arg(&self.audit)
                        .arg(0)
                        .arg(last)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            Ok(parsed("an audit entry", entries))
        }
        .boxed()
    }
}
