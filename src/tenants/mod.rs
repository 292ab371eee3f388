//! Tenants and API keys created at runtime (through the service API, [`crate::api`]), beside
//! those of the files.
//!
//! A runtime tenant belongs to a domain with an `authorization:` section and has one of its
//! tiers; its keys are stored as digests. [`Tenants`] keeps a [`View`] of every runtime tenant,
//! swapped atomically, that ext_authz reads after the files' own tenants: a key found there
//! works as a file's key would. The records live in a [`TenantState`] (this process, saved
//! under `--state-dir`, or Redis): a change is committed there first, then this replica reads
//! the state again, and the others see it within [`FOLLOW_EVERY`] and one call.
//!
//! A runtime tenant is *inactive* (its keys are refused, and the API and `GET /config` say
//! why) while its domain has no `authorization:` section, while the files define a tenant of
//! the same id (the file's is in force), or while its tier is not defined.

mod local;
pub mod record;
mod redis;
pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::authz::{Authorization, Tenant};
use crate::config::RateLimitConfig;
use crate::config::authz::parse_digest;
pub use local::LocalState;
use record::{AuditEntry, TenantRecord};
pub use redis::RedisState;
pub use state::{Commit, Image, StateError, TenantState};

/// How often a replica asks the state whether it changed.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// Most attempts at one change while other replicas keep changing the same tenant.
const ATTEMPTS: usize = 5;

/// Runtime tenants: the state they live in and the view requests read.
#[derive(Debug)]
pub struct Tenants {
    state: Arc<dyn TenantState>,
    view: ArcSwap<View>,
    /// Reading the state failed last time (warned once until it recovers).
    failing: AtomicBool,
    syncing: tokio::sync::Mutex<()>,
}

/// Every runtime tenant, as of one version of the state.
#[derive(Debug, Default)]
pub struct View {
    /// `None` until the state was read: any version differs.
    version: Option<u64>,
    /// By domain, then id.
    records: BTreeMap<String, BTreeMap<String, Arc<TenantRecord>>>,
    /// Key digest → the domain and tenant it opens.
    keys: HashMap<[u8; 32], (String, Arc<Tenant>)>,
}

/// A change to one tenant, made from its current record by [`Tenants::change`].
#[derive(Debug)]
pub struct Edit<T> {
    /// The record to write (its revision is set when it is committed), or `None` to delete.
    pub next: Option<TenantRecord>,
    /// What the audit log records.
    pub audit: AuditEntry,
    /// What the change gives back to its caller.
    pub output: T,
}

/// Why a runtime tenant's keys are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inactive {
    /// Its domain has no `authorization:` section (or is gone).
    NoAuthorization,
    /// The files define a tenant of the same id: theirs is in force.
    InFiles,
    /// Its tier is not defined.
    UnknownTier,
}

impl View {
    fn new(image: Image) -> Self {
        let mut view = Self {
            version: Some(image.version),
            ..Self::default()
        };
        for record in image.tenants {
            let tenant = Arc::new(Tenant {
                id: record.id.clone(),
                tier: record.tier.clone(),
            });
            for key in &record.keys {
                if let Some(digest) = parse_digest(&key.digest) {
                    view.keys
                        .insert(digest, (record.domain.clone(), tenant.clone()));
                }
            }
            view.records
                .entry(record.domain.clone())
                .or_default()
                .insert(record.id.clone(), Arc::new(record));
        }
        view
    }

    /// Runtime tenant `id` of `domain`.
    pub fn get(&self, domain: &str, id: &str) -> Option<&Arc<TenantRecord>> {
        self.records.get(domain)?.get(id)
    }

    /// The runtime tenants of `domain`, by id.
    pub fn domain(&self, domain: &str) -> impl Iterator<Item = &Arc<TenantRecord>> {
        self.records
            .get(domain)
            .into_iter()
            .flat_map(BTreeMap::values)
    }

    /// Every runtime tenant, by domain and id.
    pub fn all(&self) -> impl Iterator<Item = &Arc<TenantRecord>> {
        self.records.values().flat_map(BTreeMap::values)
    }
}

/// Whether a runtime tenant of `id` and `tier` can be in force under `authz`, and if not, why.
pub fn inactive(id: &str, tier: &str, authz: Option<&Authorization>) -> Option<Inactive> {
    let Some(authz) = authz else {
        return Some(Inactive::NoAuthorization);
    };
    if authz.tenants_by_id().contains_key(id) {
        Some(Inactive::InFiles)
    } else if !authz.has_tier(tier) {
        Some(Inactive::UnknownTier)
    } else {
        None
    }
}

/// What is wrong with `record` under `config`, said for people (the API and `GET /config`).
pub fn problem(record: &TenantRecord, config: &RateLimitConfig) -> Option<String> {
    let domain = config.domain(&record.domain);
    let authz = domain.and_then(|d| d.authorization.as_deref());
    let (domain_name, id, tier) = (&record.domain, &record.id, &record.tier);
    Some(match inactive(id, tier, authz)? {
        Inactive::NoAuthorization => format!(
            "domain '{domain_name}': runtime tenant '{id}': the domain has no authorization: section; its keys are refused"
        ),
        Inactive::InFiles => format!(
            "domain '{domain_name}': tenant '{id}' is defined both in {} and through the API: the file's is in force, the API's keys are refused",
            domain.map_or_else(String::new, |d| d.file.display().to_string())
        ),
        Inactive::UnknownTier => format!(
            "domain '{domain_name}': runtime tenant '{id}' has tier '{tier}', which the domain does not define; its keys are refused"
        ),
    })
}

impl Default for Tenants {
    /// Runtime tenants in this process's memory only.
    fn default() -> Self {
        Self::new(Arc::new(LocalState::in_memory()))
    }
}

impl Tenants {
    /// Runtime tenants kept in `state`; call [`Tenants::sync`] to read what it holds.
    pub fn new(state: Arc<dyn TenantState>) -> Self {
        Self {
            state,
            view: ArcSwap::from_pointee(View::default()),
            failing: AtomicBool::new(false),
            syncing: tokio::sync::Mutex::new(()),
        }
    }

    /// The view in force.
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// Reads the state again if it changed since the view in force.
    pub async fn sync(&self) -> Result<(), StateError> {
        // One at a time, so a view read earlier never replaces one read later.
        let _serial = self.syncing.lock().await;
        let version = self.state.version().await?;
        if Some(version) == self.view.load().version {
            return Ok(());
        }
        let image = self.state.load().await?;
        self.view.store(Arc::new(View::new(image)));
        Ok(())
    }

    /// Until `stop`: reads the state again every [`FOLLOW_EVERY`] while `active` says runtime
    /// tenants can matter (some domain has an `authorization:` section), so changes made by
    /// other replicas are seen; `read` is called after each successful read.
    pub async fn follow(
        self: Arc<Self>,
        active: impl Fn() -> bool,
        read: impl Fn(),
        stop: impl Future<Output = ()>,
    ) {
        let mut ticks = tokio::time::interval(FOLLOW_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = ticks.tick() => {}
            }
            if !active() {
                continue;
            }
            let synced = self.sync().await;
            if synced.is_ok() {
                read();
            }
            match synced {
                Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                    tracing::info!("runtime tenants readable again");
                }
                Ok(()) => {}
                Err(error) if !self.failing.swap(true, Ordering::Relaxed) => {
                    tracing::warn!(%error, "cannot read runtime tenants: keeping the last ones read");
                }
                Err(_) => {}
            }
        }
    }

    /// The runtime tenant whose key has `digest` ([`crate::authz::key_digest`]), for a check in `domain`
    /// under `authz`, if it is in force there.
    pub fn tenant(
        &self,
        domain: &str,
        authz: &Authorization,
        digest: &[u8; 32],
    ) -> Option<Arc<Tenant>> {
        let view = self.view.load();
        let (owner, tenant) = view.keys.get(digest)?;
        let active = owner == domain && inactive(&tenant.id, &tenant.tier, Some(authz)).is_none();
        active.then(|| tenant.clone())
    }

    /// What is wrong with each runtime tenant under `config`.
    pub fn problems(&self, config: &RateLimitConfig) -> Vec<String> {
        self.view
            .load()
            .all()
            .filter_map(|record| problem(record, config))
            .collect()
    }

    /// Changes tenant `id` of `domain`: `edit` makes the change from its current record (none
    /// if it does not exist), which is committed if nobody changed the tenant meanwhile, else
    /// made again from the record as it now is. The view in force includes the change when
    /// this returns (unless the state could not be read again: then it is logged, and the
    /// change, made, is still reported).
    pub async fn change<T, E: From<StateError>>(
        &self,
        domain: &str,
        id: &str,
        mut edit: impl FnMut(Option<&TenantRecord>) -> Result<Edit<T>, E>,
    ) -> Result<T, E> {
        // From the state as it is, not as the last poll saw it: another replica's change is
        // never refused for a view up to a poll old.
        self.sync().await?;
        for _ in 0..ATTEMPTS {
            let view = self.view();
            let current = view.get(domain, id);
            let mut change = edit(current.map(|record| &**record))?;
            if let Some(next) = &mut change.next {
                next.revision = record::revision().map_err(StateError::from)?;
            }
            let committed = self
                .state
                .commit(Commit {
                    domain,
                    id,
                    expected: current.map(|record| record.revision.as_str()),
                    next: change.next.as_ref(),
                    audit: &change.audit,
                })
                .await;
            let synced = self.sync().await;
            let committed = match committed {
                Ok(committed) => committed,
                // No answer (a timeout, a lost connection) says nothing of whether it was
                // made: the state read again does.
                Err(error) if synced.is_ok() && self.shows(domain, id, change.next.as_ref()) => {
                    tracing::warn!(%error, domain, tenant = id, "a tenant commit went unanswered but was made");
                    true
                }
                Err(error) => return Err(error.into()),
            };
            if committed {
                if let Err(error) = synced {
                    tracing::warn!(%error, domain, tenant = id, "a tenant change was made but the state could not be read again: it shows at the next poll");
                }
                let audit = &change.audit;
                tracing::info!(
                    domain,
                    tenant = id,
                    action = ?audit.action,
                    key_id = audit.key_id.as_deref().unwrap_or(""),
                    who = %audit.who,
                    "runtime tenant changed"
                );
                return Ok(change.output);
            }
            // Changed meanwhile: the next attempt starts from the state read again.
            synced?;
        }
        Err(StateError::Contended.into())
    }

    /// Whether the view in force shows tenant `id` of `domain` as `next` left it (its
    /// revision is fresh for each commit attempt; `None`: deleted).
    fn shows(&self, domain: &str, id: &str, next: Option<&TenantRecord>) -> bool {
        let view = self.view();
        let now = view.get(domain, id).map(|record| record.revision.as_str());
        now == next.map(|record| record.revision.as_str())
    }

    /// The newest audit entries, newest first, at most `limit`.
    pub async fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StateError> {
        self.state.audit(limit).await
    }
}

#[cfg(test)]
mod tests;
