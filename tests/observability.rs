//! The shipped Grafana dashboard and Prometheus alert rules parse, and every `tollgate_*`
//! metric they query is one the server really exports.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::collections::BTreeSet;

use common::redis::RedisServer;
use common::{RedisSetup, descriptor, request, start, start_with};

const CONFIG: &str = "domain: o\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 1}\n  - key: trial\n    shadow_mode: true\n    rate_limit: {unit: minute, requests_per_unit: 1}\n";

/// Every sample name a server exports after some traffic: one counting in memory and one
/// counting in Redis (which adds the Redis metrics).
async fn exported_names() -> BTreeSet<String> {
    let redis = RedisServer::start();
    let mut names = BTreeSet::new();
    for mut s in [
        start(CONFIG).await,
        start_with(CONFIG, RedisSetup::cached(&redis.url()).setup()).await,
    ] {
        for key in ["user", "user", "trial", "trial"] {
            s.call(request("o", vec![descriptor(&[(key, "x")])])).await;
        }
        let (status, text) = s.admin_get("/metrics").await;
        assert_eq!(status, 200);
        s.stop().await;
        names.extend(
            text.lines()
                .filter(|line| !line.starts_with('#'))
                .map(|line| line.split(['{', ' ']).next().unwrap().to_owned()),
        );
    }
    names
}

/// The `tollgate_*` names a PromQL expression uses.
fn tollgate_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|token| token.starts_with("tollgate_"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn alert_rules_are_well_formed_and_use_exported_metrics() {
    let exported = exported_names().await;
    let text = std::fs::read_to_string("examples/prometheus/alerts.yaml").unwrap();
    let rules: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut alerts = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        assert!(group["name"].as_str().is_some());
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().expect("alert name");
            let expr = rule["expr"].as_str().expect("expr");
            assert!(rule["for"].as_str().is_some(), "{name}: for");
            assert!(
                rule["labels"]["severity"].as_str().is_some(),
                "{name}: severity"
            );
            assert!(
                rule["annotations"]["summary"].as_str().is_some(),
                "{name}: summary"
            );
            for metric in tollgate_names(expr) {
                assert!(
                    exported.contains(&metric),
                    "{name} uses {metric}, which is not exported: {exported:?}"
                );
            }
            alerts.push(name.to_owned());
        }
    }
    for wanted in [
        "TollgateOverLimitSpike",
        "TollgateConfigReloadFailing",
        "TollgateDecisionLatencyHigh",
        "TollgateRedisDegraded",
    ] {
        assert!(
            alerts.iter().any(|a| a == wanted),
            "{wanted} missing from {alerts:?}"
        );
    }
}

#[tokio::test]
async fn the_dashboard_is_well_formed_and_uses_exported_metrics() {
    let exported = exported_names().await;
    let text = std::fs::read_to_string("examples/grafana/tollgate.json").unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dashboard["uid"], "tollgate");
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 6);
    let mut used = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            for metric in tollgate_names(target["expr"].as_str().unwrap()) {
                assert!(
                    exported.contains(&metric),
                    "panel {title:?} uses {metric}, which is not exported"
                );
                used.insert(metric);
            }
        }
    }
    for wanted in [
        "tollgate_calls_total",
        "tollgate_rate_limit_over_limit_hits_total",
        "tollgate_decision_duration_seconds_bucket",
        "tollgate_config_load_failures_total",
        "tollgate_redis_degraded",
    ] {
        assert!(used.contains(wanted), "dashboard lacks {wanted}");
    }
}
