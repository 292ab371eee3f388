use std::path::PathBuf;

use super::*;
use crate::config::source::SourceFile;
use crate::config::{Options, compile};

const LIMITS: &str = r#"
domain: edge
descriptors:
  - key: name
    value: api
    descriptors:
      - key: tenant
        rate_limit: {unit: second, requests_per_unit: 10}
      - key: tenant
        value: free
        rate_limit: {unit: second, requests_per_unit: 1}
  - key: tenant
    descriptors:
      - key: name
        value: web
        rate_limit: {unit: minute, requests_per_unit: 60}
  - key: name
    value: open
    rate_limit: {unlimited: true}
  - key: name
    value: shadow
    shadow_mode: true
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: files
    value: "*.pdf"
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: name
    value: listed
    rate_limits:
      - {name: daily, unit: day, requests_per_unit: 5000, algorithm: fixed_window}
      - {name: sustained, unit: minute, requests_per_unit: 100}
      - {name: burst, unit: second, requests_per_unit: 5}
      - {name: watched, unit: second, requests_per_unit: 1, shadow_mode: true}
  - key: name
    value: listed_open
    rate_limits:
      - {name: watched, unit: second, requests_per_unit: 1, shadow_mode: true}
      - {name: open, unlimited: true}
"#;

fn config() -> RateLimitConfig {
    let file = SourceFile {
        path: PathBuf::from("limits.yaml"),
        text: LIMITS.to_owned(),
    };
    compile(&[file], &Options::default()).unwrap()
}

fn name(entries: &[(&str, &str)]) -> BucketName {
    BucketName::new(
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    )
}

fn limit(entries: &[(&str, &str)]) -> Limit {
    resolve(&config(), &KeyBuilder::shared("t"), "edge", &name(entries))
}

fn rule_id(entries: &[(&str, &str)]) -> Option<String> {
    limit(entries).rule().map(|rule| rule.id.to_string())
}

#[test]
fn entries_are_walked_in_the_tree_order_whatever_the_map_order() {
    assert_eq!(
        rule_id(&[("tenant", "acme"), ("name", "api")]).as_deref(),
        Some("edge.name_api.tenant")
    );
    assert_eq!(
        rule_id(&[("name", "api"), ("tenant", "free")]).as_deref(),
        Some("edge.name_api.tenant_free")
    );
    // The tree has tenant → name too: the path that reaches a limit wins.
    assert_eq!(
        rule_id(&[("name", "web"), ("tenant", "acme")]).as_deref(),
        Some("edge.tenant.name_web")
    );
}

#[test]
fn both_orders_reaching_a_limit_take_the_alphabetically_first_key_first() {
    // a → b and b → a both reach a limit: "a" sorts first, so a → b wins.
    let both = r#"
domain: edge
descriptors:
  - key: a
    descriptors: [{key: b, rate_limit: {unit: second, requests_per_unit: 1}}]
  - key: b
    descriptors: [{key: a, rate_limit: {unit: second, requests_per_unit: 2}}]
"#;
    let file = SourceFile {
        path: PathBuf::from("both.yaml"),
        text: both.to_owned(),
    };
    let config = compile(&[file], &Options::default()).unwrap();
    let found = resolve(
        &config,
        &KeyBuilder::shared("t"),
        "edge",
        &name(&[("b", "1"), ("a", "2")]),
    );
    assert_eq!(
        found.rule().map(|r| r.id.to_string()).as_deref(),
        Some("edge.a.b")
    );
}

#[test]
fn every_entry_must_be_used_and_the_path_must_end_on_a_limit() {
    assert!(
        matches!(limit(&[("name", "api")]), Limit::None),
        "no limit on name=api alone"
    );
    assert!(matches!(
        limit(&[("name", "api"), ("tenant", "x"), ("extra", "1")]),
        Limit::None
    ));
    assert!(matches!(limit(&[("other", "x")]), Limit::None));
    let unknown = resolve(
        &config(),
        &KeyBuilder::shared("t"),
        "nope",
        &name(&[("name", "api")]),
    );
    assert!(matches!(unknown, Limit::None));
}

#[test]
fn unlimited_and_shadow_limits_are_open() {
    assert!(matches!(limit(&[("name", "open")]), Limit::Open(_)));
    assert!(matches!(limit(&[("name", "shadow")]), Limit::Open(_)));
}

#[test]
fn buckets_share_a_budget_exactly_when_descriptors_share_a_bucket() {
    let a = limit(&[("tenant", "a"), ("name", "api")]).budget();
    let a_again = limit(&[("name", "api"), ("tenant", "a")]).budget();
    let b = limit(&[("tenant", "b"), ("name", "api")]).budget();
    assert!(a.is_some());
    assert_eq!(a, a_again);
    assert_ne!(a, b, "each tenant value has its own bucket");
    // share_threshold: every matching value shares one bucket.
    assert_eq!(
        limit(&[("files", "a.pdf")]).budget(),
        limit(&[("files", "b.pdf")]).budget()
    );
}

#[test]
fn names_are_canonical_and_round_trip() {
    let id = name(&[("z", "1"), ("a", "2")]).to_proto();
    let back = BucketName::from_proto(&id);
    assert_eq!(back, name(&[("a", "2"), ("z", "1")]));
    assert_eq!(back.to_string(), "{a: 2, z: 1}");
    assert_eq!(
        serde_json::to_string(&back).unwrap(),
        r#"{"a":"2","z":"1"}"#
    );
}

#[test]
fn a_list_is_enforced_by_its_shortest_window_as_the_token_bucket_and_the_others_are_tallied() {
    let Limit::Counted {
        rule,
        quota,
        key,
        tallied,
    } = limit(&[("name", "listed")])
    else {
        panic!("a counted limit");
    };
    assert_eq!(&*rule.id, "edge.name_listed#burst");
    assert_eq!(quota.requests_per_unit(), 5);
    // The others, in the list's order; shadow mode counts nothing here.
    let ids: Vec<&str> = tallied.iter().map(|t| &*t.rule.id).collect();
    assert_eq!(
        ids,
        ["edge.name_listed#daily", "edge.name_listed#sustained"]
    );
    assert_eq!(tallied[1].quota.requests_per_unit(), 100);
    // Each limit has its own identity, as its RLS bucket does.
    assert_ne!(tallied[0].key, key);
    assert_ne!(tallied[0].key, tallied[1].key);
    // A list with nothing that denies is open.
    assert!(matches!(limit(&[("name", "listed_open")]), Limit::Open(_)));
}

#[test]
fn the_token_bucket_is_the_shortest_window_then_the_smallest_capacity_then_the_first() {
    use crate::quota::{Algorithm, Unit};
    let q = |rate, unit| Quota::new(rate, unit, Algorithm::TokenBucket);
    assert_eq!(token_bucket_of(&[]), None);
    assert_eq!(
        token_bucket_of(&[q(100, Unit::Minute), q(5, Unit::Second)]),
        Some(1)
    );
    assert_eq!(
        token_bucket_of(&[
            q(100, Unit::Minute),
            q(60, Unit::Minute),
            q(60, Unit::Minute)
        ]),
        Some(1)
    );
    // A smaller burst binds sooner on the same window.
    assert_eq!(
        token_bucket_of(&[q(10, Unit::Second), q(20, Unit::Second).with_burst(5)]),
        Some(1)
    );
}
