//! Matching rules, checked on trees compiled from YAML.

use crate::config::source::SourceFile;
use crate::config::{Options, RateLimitConfig, compile};

fn config(descriptors: &str) -> RateLimitConfig {
    let text = format!("domain: d\ndescriptors:\n{descriptors}");
    compile(
        &[SourceFile {
            path: "t.yaml".into(),
            text,
        }],
        &Options::default(),
    )
    .unwrap()
}

fn matched(config: &RateLimitConfig, entries: &[(&str, &str)]) -> Option<String> {
    config.find("d", entries).map(|rule| rule.id.to_string())
}

const LIMIT: &str = "rate_limit: {unit: second, requests_per_unit: 1}";

#[test]
fn exact_beats_wildcard_beats_default() {
    let c = config(&format!(
        "  - key: k\n    value: a/b\n    {LIMIT}\n  - key: k\n    value: a/*\n    {LIMIT}\n  - key: k\n    value: '*'\n    {LIMIT}\n  - key: k\n    {LIMIT}\n"
    ));
    assert_eq!(matched(&c, &[("k", "a/b")]).as_deref(), Some("d.k_a/b"));
    assert_eq!(
        matched(&c, &[("k", "a/c")]).as_deref(),
        Some("d.k_a/*"),
        "first matching wildcard in file order"
    );
    assert_eq!(matched(&c, &[("k", "zzz")]).as_deref(), Some("d.k_*"));
    assert_eq!(matched(&c, &[("other", "a")]), None);
}

#[test]
fn the_default_catches_what_nothing_else_does() {
    let c = config(&format!(
        "  - key: k\n    value: a\n    {LIMIT}\n  - key: k\n    {LIMIT}\n"
    ));
    assert_eq!(matched(&c, &[("k", "b")]).as_deref(), Some("d.k"));
    assert_eq!(matched(&c, &[("k", "")]).as_deref(), Some("d.k"));
}

#[test]
fn a_leaf_without_limit_whitelists_a_value() {
    let c = config(&format!(
        "  - key: ip\n    value: 10.0.0.1\n  - key: ip\n    {LIMIT}\n"
    ));
    assert_eq!(matched(&c, &[("ip", "10.0.0.1")]), None);
    assert_eq!(matched(&c, &[("ip", "10.0.0.2")]).as_deref(), Some("d.ip"));
}

#[test]
fn the_request_must_end_on_the_limited_node() {
    let c = config(&format!(
        "  - key: a\n    {LIMIT}\n    descriptors:\n      - key: b\n        value: x\n        {LIMIT}\n  - key: solo\n    {LIMIT}\n"
    ));
    assert_eq!(matched(&c, &[("a", "1")]).as_deref(), Some("d.a"));
    assert_eq!(
        matched(&c, &[("a", "1"), ("b", "x")]).as_deref(),
        Some("d.a.b_x")
    );
    assert_eq!(matched(&c, &[("a", "1"), ("b", "y")]), None);
    assert_eq!(
        matched(&c, &[("a", "1"), ("b", "x"), ("c", "z")]),
        None,
        "deeper than the tree"
    );
    assert_eq!(matched(&c, &[("solo", "1"), ("more", "2")]), None);
    assert_eq!(matched(&c, &[]), None);
}

#[test]
fn intermediate_nodes_without_limits_lead_deeper() {
    let c = config(&format!(
        "  - key: tenant\n    descriptors:\n      - key: route\n        value: /upload*\n        {LIMIT}\n"
    ));
    assert_eq!(matched(&c, &[("tenant", "acme")]), None);
    assert_eq!(
        matched(&c, &[("tenant", "acme"), ("route", "/upload/big")]).as_deref(),
        Some("d.tenant.route_/upload*")
    );
}

#[test]
fn keys_at_one_level_are_independent() {
    let c = config(&format!(
        "  - key: a\n    value: '*'\n    {LIMIT}\n  - key: b\n    value: x\n    {LIMIT}\n"
    ));
    assert_eq!(matched(&c, &[("b", "y")]), None);
    assert_eq!(matched(&c, &[("a", "y")]).as_deref(), Some("d.a_*"));
}

#[test]
fn rules_are_listed_depth_first() {
    let c = config(&format!(
        "  - key: b\n    {LIMIT}\n  - key: a\n    value: x\n    {LIMIT}\n    descriptors:\n      - key: c\n        {LIMIT}\n"
    ));
    let ids: Vec<_> = c
        .domain("d")
        .unwrap()
        .root
        .rules()
        .iter()
        .map(|r| r.id.to_string())
        .collect();
    assert_eq!(ids, ["d.a_x", "d.a_x.c", "d.b"]);
}
