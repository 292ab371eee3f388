use std::path::PathBuf;

use envoy_types::pb::envoy::service::rate_limit_quota::v3::BucketId;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_usage_reports::BucketQuotaUsage;
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;

use super::*;
use crate::clock::NANOS_PER_SEC;
use crate::config::source::SourceFile;
use crate::config::{Options, compile};

const SEC: u64 = NANOS_PER_SEC;

const LIMITS: &str = r#"
domain: edge
descriptors:
  - key: name
    value: shared
    rate_limit: {unit: second, requests_per_unit: 100}
  - key: name
    value: blocked
    rate_limit: {unit: second, requests_per_unit: 0}
"#;

/// The world around the state: configuration, replicas and time.
struct Env {
    config: RateLimitConfig,
    keys: KeyBuilder,
    replicas: u32,
    now: Nanos,
}

struct World {
    env: Env,
    state: State,
}

impl Env {
    fn ctx(&self) -> Context<'_> {
        Context {
            config: &self.config,
            keys: &self.keys,
            replicas: self.replicas,
            now: self.now,
        }
    }
}

impl World {
    fn new() -> Self {
        let file = SourceFile {
            path: PathBuf::from("limits.yaml"),
            text: LIMITS.to_owned(),
        };
        Self {
            env: Env {
                config: compile(&[file], &Options::default()).unwrap(),
                keys: KeyBuilder::shared("t"),
                replicas: 1,
                now: 1_000 * SEC,
            },
            state: State::new(RlqsOptions::default()),
        }
    }

    fn report(
        &mut self,
        id: StreamId,
        domain: &str,
        usages: &[(&str, u64, u64, i64)],
    ) -> Result<Outcome, ReportError> {
        let message = RateLimitQuotaUsageReports {
            domain: domain.to_owned(),
            bucket_quota_usages: usages
                .iter()
                .map(|&(name, allowed, denied, secs)| BucketQuotaUsage {
                    bucket_id: Some(bucket(name)),
                    time_elapsed: Some(ProtoDuration {
                        seconds: secs,
                        nanos: 0,
                    }),
                    num_requests_allowed: allowed,
                    num_requests_denied: denied,
                })
                .collect(),
        };
        self.state.report(id, &message, &self.env.ctx())
    }

    fn sweep(&mut self) -> Outcome {
        self.state.sweep(&self.env.ctx())
    }
}

fn bucket(name: &str) -> BucketId {
    BucketId {
        bucket: [("name".to_owned(), name.to_owned())].into(),
    }
}

fn token_bucket(tokens_per_fill: u32) -> Assignment {
    Assignment::TokenBucket {
        max_tokens: tokens_per_fill,
        tokens_per_fill,
        fill_interval_secs: 1,
    }
}

/// The assignment each message carries, by stream.
fn assigned(outcome: &Outcome) -> Vec<(StreamId, Assignment, u64)> {
    outcome
        .messages
        .iter()
        .filter_map(|m| match m.action {
            Action::Assign {
                assignment,
                ttl_secs,
            } => Some((m.stream, assignment, ttl_secs)),
            Action::Abandon => None,
        })
        .collect()
}

#[test]
fn a_subscription_is_answered_with_the_whole_budget_and_a_ttl() {
    let mut w = World::new();
    let a = w.state.connect(None).unwrap();
    let out = w.report(a, "edge", &[("shared", 1, 0, 0)]).unwrap();
    assert_eq!(out.subscribed, 1);
    assert_eq!(assigned(&out), [(a, token_bucket(100), 15)]);
    assert_eq!(out.reported[0].limit.as_deref(), Some("edge.name_shared"));
}

#[test]
fn two_envoys_split_by_demand_and_never_hold_more_than_the_limit() {
    let mut w = World::new();
    let (a, b) = (
        w.state.connect(None).unwrap(),
        w.state.connect(None).unwrap(),
    );
    w.report(a, "edge", &[("shared", 1, 0, 0)]).unwrap();
    // a measured: 20 per second (the subscription's request counts in the window), wanting
    // 22 with the headroom.
    w.report(a, "edge", &[("shared", 99, 0, 5)]).unwrap();
    // b subscribes: a is shrunk to its demand in the same instant, b takes the rest.
    let out = w.report(b, "edge", &[("shared", 1, 0, 0)]).unwrap();
    assert_eq!(
        assigned(&out),
        [(a, token_bucket(22), 15), (b, token_bucket(78), 15)]
    );
    // b measured busy (denied requests count as demand): a keeps 22.
    let out = w.report(b, "edge", &[("shared", 400, 600, 5)]).unwrap();
    assert_eq!(assigned(&out), [(b, token_bucket(78), 15)]);
}

#[test]
fn a_stream_that_ends_frees_its_share_for_the_others() {
    let mut w = World::new();
    let (a, b) = (
        w.state.connect(None).unwrap(),
        w.state.connect(None).unwrap(),
    );
    for id in [a, b] {
        w.report(id, "edge", &[("shared", 1, 0, 0)]).unwrap();
        w.report(id, "edge", &[("shared", 1000, 0, 5)]).unwrap();
    }
    for id in [a, b] {
        w.report(id, "edge", &[("shared", 1000, 0, 5)]).unwrap();
    }
    let out = w.state.disconnect(a, &w.env.ctx());
    assert_eq!(assigned(&out), [(b, token_bucket(100), 15)]);
    assert!(w.state.budgets().values().all(|b| b.members.len() == 1));
}

#[test]
fn unknown_domains_and_unmatched_buckets_allow_all_and_zero_limits_deny() {
    let mut w = World::new();
    let a = w.state.connect(None).unwrap();
    let out = w
        .report(a, "edge", &[("nothing", 1, 0, 0), ("blocked", 1, 0, 0)])
        .unwrap();
    assert_eq!(
        assigned(&out),
        [(a, Assignment::AllowAll, 15), (a, Assignment::DenyAll, 15)]
    );
    let other = w.state.connect(None).unwrap();
    let out = w
        .report(other, "elsewhere", &[("shared", 1, 0, 0)])
        .unwrap();
    assert_eq!(assigned(&out), [(other, Assignment::AllowAll, 15)]);
}

#[test]
fn redis_replicas_each_hand_out_their_part_of_the_limit() {
    let mut w = World::new();
    w.env.replicas = 3;
    let a = w.state.connect(None).unwrap();
    let out = w.report(a, "edge", &[("shared", 1, 0, 0)]).unwrap();
    assert_eq!(assigned(&out), [(a, token_bucket(33), 15)]);
}

#[test]
fn idle_buckets_are_abandoned_and_silent_ones_forgotten() {
    let mut w = World::new();
    let a = w.state.connect(None).unwrap();
    w.report(a, "edge", &[("shared", 1, 0, 0), ("nothing", 1, 0, 0)])
        .unwrap();
    // Reported idle (zero requests) for 55 s: kept.
    for _ in 0..11 {
        w.env.now += 5 * SEC;
        w.report(a, "edge", &[("shared", 0, 0, 5)]).unwrap();
        assert!(
            w.sweep()
                .messages
                .iter()
                .all(|m| m.bucket.entries()[0].1 != "shared")
        );
    }
    // "nothing" has not been reported for 30 s: it was forgotten without a message.
    assert_eq!(w.state.buckets(), 1);
    // Idle for 60 s: abandoned.
    w.env.now += 5 * SEC;
    w.report(a, "edge", &[("shared", 0, 0, 5)]).unwrap();
    let out = w.sweep();
    assert_eq!(out.messages.len(), 1);
    assert_eq!(out.messages[0].action, Action::Abandon);
    assert_eq!(w.state.buckets(), 0);
    assert!(w.state.budgets().is_empty());
}

#[test]
fn shutdown_expires_every_assignment_at_once_and_refuses_new_streams() {
    let mut w = World::new();
    let a = w.state.connect(None).unwrap();
    w.report(a, "edge", &[("shared", 1, 0, 0), ("nothing", 1, 0, 0)])
        .unwrap();
    let out = w.state.shutdown();
    let mut expired = assigned(&out);
    expired.sort_by_key(|(_, a, _)| a.kind());
    assert_eq!(
        expired,
        [(a, Assignment::AllowAll, 0), (a, token_bucket(100), 0)]
    );
    assert_eq!(w.state.connect(None), Err(ReportError::ShuttingDown));
    assert!(
        w.report(a, "edge", &[("shared", 1, 0, 5)])
            .unwrap()
            .messages
            .is_empty()
    );
}

#[test]
fn malformed_reports_are_refused_whole_and_say_why() {
    let mut w = World::new();
    let a = w.state.connect(None).unwrap();
    assert_eq!(
        w.report(a, "", &[("shared", 1, 0, 0)]).unwrap_err(),
        ReportError::NoDomain
    );
    w.report(a, "edge", &[("shared", 1, 0, 0)]).unwrap();
    // Later messages may leave the domain out, not change it.
    assert!(w.report(a, "", &[("shared", 1, 0, 5)]).is_ok());
    assert!(matches!(
        w.report(a, "other", &[("shared", 1, 0, 5)]),
        Err(ReportError::DomainChanged { .. })
    ));
    let empty = RateLimitQuotaUsageReports {
        domain: "edge".to_owned(),
        bucket_quota_usages: vec![
            BucketQuotaUsage {
                bucket_id: Some(bucket("new")),
                ..Default::default()
            },
            BucketQuotaUsage {
                bucket_id: Some(BucketId::default()),
                ..Default::default()
            },
        ],
    };
    assert_eq!(
        w.state.report(a, &empty, &w.env.ctx()).unwrap_err(),
        ReportError::EmptyBucketId { index: 1 }
    );
    assert_eq!(
        w.state.buckets(),
        1,
        "nothing of a refused message is applied"
    );
}

#[test]
fn a_stream_holds_a_bounded_number_of_buckets() {
    let mut w = World::new();
    w.state = State::new(RlqsOptions {
        max_buckets_per_stream: 2,
        ..RlqsOptions::default()
    });
    let a = w.state.connect(None).unwrap();
    w.report(a, "edge", &[("x", 1, 0, 0), ("y", 1, 0, 0)])
        .unwrap();
    assert_eq!(
        w.report(a, "edge", &[("z", 1, 0, 0)]).unwrap_err(),
        ReportError::TooManyBuckets { count: 3, max: 2 }
    );
}
