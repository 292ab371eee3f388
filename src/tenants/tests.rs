use std::sync::Arc;

use super::record::{Action, NewKey, TenantRecord, now};
use super::*;
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

fn audit(id: &str, action: Action) -> AuditEntry {
    AuditEntry {
        at: now(),
        who: "token:0123456789abcdef".into(),
        action,
        domain: "saas".into(),
        tenant: id.into(),
        key_id: None,
        tier: None,
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
    let tenant = tenants.tenant("saas", &authz, &key).unwrap();
    assert_eq!(
        (tenant.id.as_str(), tenant.tier.as_str()),
        ("initech", "free")
    );
    assert!(tenants.tenant("other", &authz, &key).is_none());
    assert!(tenants.tenant("saas", &authz, "tgk_wrong").is_none());
    assert!(tenants.problems(&config).is_empty());
    // The same id as a file's tenant, or a tier the domain lacks: refused, and said why.
    let shadowed = create(&tenants, "acme", "free").await;
    let orphan = create(&tenants, "hooli", "gold").await;
    assert!(tenants.tenant("saas", &authz, &shadowed).is_none());
    assert!(tenants.tenant("saas", &authz, &orphan).is_none());
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

#[tokio::test]
async fn a_change_made_from_a_stale_view_is_made_again_from_the_current_record() {
    let state = Arc::new(LocalState::in_memory());
    let (one, two) = (Tenants::new(state.clone()), Tenants::new(state));
    create(&one, "initech", "free").await;
    two.sync().await.unwrap();
    add_label(&one, "first").await;
    // `two` still sees the record without "first": its commit is stale, read again, redone.
    add_label(&two, "second").await;
    one.sync().await.unwrap();
    let record = one.view().get("saas", "initech").unwrap().clone();
    let names: Vec<&String> = record.labels.keys().collect();
    assert_eq!(names, ["first", "second"]);
    let actions = actions(&*one.state).await;
    assert_eq!(
        actions,
        [
            Action::TenantUpdated,
            Action::TenantUpdated,
            Action::TenantCreated
        ]
    );
}
