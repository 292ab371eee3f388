use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::record::{Action, NewKey, TenantRecord, now};
use super::*;
use crate::authz::key_digest;
use crate::config::source::SourceFile;
use crate::config::{Options, compile};

const SAAS: &str = r#"
domain: saas
descriptors:
  - key: tenant
    rate_limit: {unit: minute, requests_per_unit: 10}
authorization:
  tiers:
    free:
      descriptors: [[{key: tenant, from: tenant}]]
  tenants:
    - id: acme
      tier: free
      api_keys: []
"#;

fn config() -> RateLimitConfig {
    let file = SourceFile {
        path: "saas.yaml".into(),
        text: SAAS.into(),
    };
    compile(&[file], &Options::default()).unwrap()
}

/// An audit entry of `action` on tenant `id` of `saas`.
pub(super) fn audit(id: &str, action: Action) -> AuditEntry {
    AuditEntry {
        at: now(),
        who: "token:0123456789abcdef".into(),
        action,
        domain: "saas".into(),
        tenant: id.into(),
        key_id: None,
        tier: None,
        revoked_keys: Vec::new(),
    }
}

/// The actions of `state`'s audit log, newest first.
pub(super) async fn actions(state: &dyn TenantState) -> Vec<Action> {
    let entries = state.audit(usize::MAX).await.unwrap();
    entries.iter().map(|entry| entry.action).collect()
}

/// Creates tenant `id` with `tier` and one key, returning the key.
async fn create(tenants: &Tenants, id: &str, tier: &str) -> String {
    tenants
        .change("saas", id, |current| {
            assert!(current.is_none());
            let key = NewKey::generate(&now())?;
            Ok::<_, StateError>(Edit {
                next: Some(TenantRecord {
                    domain: "saas".into(),
                    id: id.into(),
                    tier: tier.into(),
                    labels: Default::default(),
                    keys: vec![key.record],
                    created_at: now(),
                    updated_at: now(),
                    revision: String::new(),
                }),
                audit: audit(id, Action::TenantCreated),
                output: key.key,
            })
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_created_key_opens_its_tenant_while_it_is_in_force() {
    let config = config();
    let authz = config
        .domain("saas")
        .unwrap()
        .authorization
        .clone()
        .unwrap();
    let tenants = Tenants::new(Arc::new(LocalState::in_memory()));
    let key = create(&tenants, "initech", "free").await;
    let tenant = tenants.tenant("saas", &authz, &key_digest(&key)).unwrap();
    assert_eq!(
        (tenant.id.as_str(), tenant.tier.as_str()),
        ("initech", "free")
    );
    assert!(tenants.tenant("other", &authz, &key_digest(&key)).is_none());
    assert!(
        tenants
            .tenant("saas", &authz, &key_digest("tgk_wrong"))
            .is_none()
    );
    assert!(tenants.problems(&config).is_empty());
    // The same id as a file's tenant, or a tier the domain lacks: refused, and said why.
    let shadowed = create(&tenants, "acme", "free").await;
    let orphan = create(&tenants, "hooli", "gold").await;
    assert!(
        tenants
            .tenant("saas", &authz, &key_digest(&shadowed))
            .is_none()
    );
    assert!(
        tenants
            .tenant("saas", &authz, &key_digest(&orphan))
            .is_none()
    );
    let problems = tenants.problems(&config);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("'acme' is defined both in saas.yaml"));
    assert!(problems[1].contains("tier 'gold'"));
}

/// Adds label `name` to tenant initech.
async fn add_label(tenants: &Tenants, name: &str) {
    tenants
        .change("saas", "initech", |current| {
            let mut next = current.expect("it exists").clone();
            next.labels.insert(name.into(), "yes".into());
            Ok::<_, StateError>(Edit {
                next: Some(next),
                audit: audit("initech", Action::TenantUpdated),
                output: (),
            })
        })
        .await
        .unwrap();
}

/// What [`Interfering`] does at its first commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interference {
    /// Another replica adds label "first" to initech just before it.
    RaceFirst,
    /// The commit is made, but its answer is lost.
    LoseAnswer,
}

/// A real state with one interference at the first commit through it.
#[derive(Debug)]
struct Interfering {
    inner: Arc<LocalState>,
    once: std::sync::Mutex<Option<Interference>>,
}

impl TenantState for Interfering {
    fn load(&self) -> BoxFuture<'_, Result<Image, StateError>> {
        self.inner.load()
    }

    fn version(&self) -> BoxFuture<'_, Result<u64, StateError>> {
        self.inner.version()
    }

    fn commit<'a>(&'a self, commit: Commit<'a>) -> BoxFuture<'a, Result<bool, StateError>> {
        let interference = self.once.lock().unwrap().take();
        Box::pin(async move {
            match interference {
                None => self.inner.commit(commit).await,
                Some(Interference::LoseAnswer) => {
                    assert!(self.inner.commit(commit).await?);
                    Err(StateError::Redis("connection lost".into()))
                }
                Some(Interference::RaceFirst) => {
                    let other = Tenants::new(self.inner.clone());
                    add_label(&other, "first").await;
                    self.inner.commit(commit).await
                }
            }
        })
    }

    fn audit(&self, limit: usize) -> BoxFuture<'_, Result<Vec<AuditEntry>, StateError>> {
        self.inner.audit(limit)
    }
}

/// Tenants on a state where initech exists, interfered with as `interference` says.
async fn interfered(interference: Interference) -> (Tenants, Arc<LocalState>) {
    let inner = Arc::new(LocalState::in_memory());
    create(&Tenants::new(inner.clone()), "initech", "free").await;
    let state = Interfering {
        inner: inner.clone(),
        once: std::sync::Mutex::new(Some(interference)),
    };
    (Tenants::new(Arc::new(state)), inner)
}

#[tokio::test]
async fn a_change_raced_by_another_replica_is_made_again_from_the_current_record() {
    let (tenants, inner) = interfered(Interference::RaceFirst).await;
    // Its first commit loses the race to "first": read again, redone.
    add_label(&tenants, "second").await;
    let record = tenants.view().get("saas", "initech").unwrap().clone();
    let names: Vec<&String> = record.labels.keys().collect();
    assert_eq!(names, ["first", "second"]);
    let actions = actions(&*inner).await;
    assert_eq!(
        actions,
        [
            Action::TenantUpdated,
            Action::TenantUpdated,
            Action::TenantCreated
        ]
    );
}

#[tokio::test]
async fn a_change_made_whose_answer_was_lost_is_reported_made_once() {
    let (tenants, inner) = interfered(Interference::LoseAnswer).await;
    add_label(&tenants, "once").await;
    let record = tenants.view().get("saas", "initech").unwrap().clone();
    assert!(record.labels.contains_key("once"));
    let actions = actions(&*inner).await;
    assert_eq!(actions, [Action::TenantUpdated, Action::TenantCreated]);
}

#[tokio::test]
async fn a_change_is_made_from_what_another_replica_committed_since_the_last_poll() {
    let state = Arc::new(LocalState::in_memory());
    let (one, two) = (Tenants::new(state.clone()), Tenants::new(state));
    create(&one, "initech", "free").await;
    // `two` never polled: its view has no initech, yet the change finds it.
    add_label(&two, "second").await;
    assert!(two.view().get("saas", "initech").is_some());
}
