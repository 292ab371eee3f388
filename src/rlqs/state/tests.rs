use std::path::PathBuf;

use envoy_types::pb::envoy::service::rate_limit_quota::v3::BucketId;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_usage_reports::BucketQuotaUsage;
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;

use std::collections::HashMap;

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
  - key: name
    value: listed
    rate_limits:
      - {name: burst, unit: second, requests_per_unit: 5}
      - {name: minute, unit: minute, requests_per_unit: 100, algorithm: fixed_window}
  - key: name
    value: listed_tb
    rate_limits:
      - {name: burst, unit: second, requests_per_unit: 5}
      - {name: minute, unit: minute, requests_per_unit: 100}
  - key: name
    value: listed_sw
    rate_limits:
      - {name: burst, unit: second, requests_per_unit: 5}
      - {name: minute, unit: minute, requests_per_unit: 100, algorithm: sliding_window}
"#;

/// The world around the state: configuration, replicas and time.
struct Env {
    config: RateLimitConfig,
    keys: KeyBuilder,
    replicas: u32,
    now: Nanos,
    shadow_mode: bool,
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
            shadow_mode: self.shadow_mode,
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
                shadow_mode: false,
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
fn the_server_wide_shadow_mode_allows_every_bucket() {
    let mut w = World::new();
    w.env.shadow_mode = true;
    let a = w.state.connect(None).unwrap();
    let out = w
        .report(a, "edge", &[("shared", 500, 0, 5), ("blocked", 1, 0, 5)])
        .unwrap();
    assert_eq!(
        assigned(&out),
        [(a, Assignment::AllowAll, 15), (a, Assignment::AllowAll, 15)]
    );
    // Still counted, by the limit it falls under.
    assert_eq!(out.reported[0].limit.as_deref(), Some("edge.name_shared"));
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

/// A minute boundary on the test's clock.
const MINUTE: Nanos = 1_200 * SEC;

/// Two Envoys subscribed to bucket `listed` at [`MINUTE`], and the second's subscription.
fn two_on_listed() -> (World, StreamId, StreamId, Outcome) {
    let mut w = World::new();
    w.env.now = MINUTE;
    let (a, b) = (
        w.state.connect(None).unwrap(),
        w.state.connect(None).unwrap(),
    );
    w.report(a, "edge", &[("listed", 1, 0, 0)]).unwrap();
    let out = w.report(b, "edge", &[("listed", 1, 0, 0)]).unwrap();
    (w, a, b, out)
}

#[test]
fn a_counted_limit_used_up_denies_every_envoy_at_once_until_its_window_ends() {
    let (mut w, a, b, out) = two_on_listed();
    // Both unmeasured: 5 per second split, the burst limit as the token bucket.
    assert_eq!(
        assigned(&out),
        [(a, token_bucket(3), 15), (b, token_bucket(2), 15)]
    );
    // 90 of 100 reported within the minute: 10 left, the budget is cut to 1 per second
    // (burst 1: at most 6 in a report period).
    w.env.now += 5 * SEC;
    let out = w.report(a, "edge", &[("listed", 45, 30, 5)]).unwrap();
    assert!(out.exhausted.is_empty());
    w.env.now += 2 * SEC;
    let out = w.report(b, "edge", &[("listed", 43, 30, 5)]).unwrap();
    // The one token goes to the first of the two short Envoys: a, pushed without a report.
    assert_eq!(
        assigned(&out),
        [(a, token_bucket(1), 15), (b, Assignment::DenyAll, 15)]
    );
    let budget = w.state.budgets().values().next().unwrap();
    assert_eq!(
        budget.tallies[0].remaining(&budget.tallies[0].quota, w.env.now),
        10
    );
    // The rest is reported: the budget is closed (b holds nothing already).
    w.env.now += 3 * SEC;
    let out = w.report(a, "edge", &[("listed", 12, 50, 5)]).unwrap();
    assert_eq!(assigned(&out), [(a, Assignment::DenyAll, 15)]);
    assert_eq!(&*out.exhausted[0], "edge.name_listed#minute");
    // Reports while closed are answered with DENY_ALL; sweeps send nothing.
    for at in (12..60).step_by(5) {
        w.env.now = MINUTE + at * SEC;
        for id in [b, a] {
            let out = w.report(id, "edge", &[("listed", 0, 50, 5)]).unwrap();
            assert_eq!(assigned(&out), [(id, Assignment::DenyAll, 15)]);
            assert!(out.exhausted.is_empty());
        }
        assert!(w.sweep().messages.is_empty());
    }
    w.env.now = MINUTE + 59 * SEC;
    assert!(w.sweep().messages.is_empty());
    // The window ends: the next sweep gives both their token bucket back, at once.
    w.env.now = MINUTE + 60 * SEC;
    let out = w.sweep();
    assert_eq!(
        assigned(&out),
        [(a, token_bucket(3), 15), (b, token_bucket(2), 15)]
    );
}

#[test]
fn a_counted_limit_used_up_by_one_report_denies_the_others_in_the_same_instant() {
    let (mut w, a, b, _) = two_on_listed();
    w.env.now += 5 * SEC;
    w.report(a, "edge", &[("listed", 40, 0, 5)]).unwrap();
    w.env.now += SEC;
    let out = w.report(b, "edge", &[("listed", 70, 0, 5)]).unwrap();
    assert_eq!(
        assigned(&out),
        [(a, Assignment::DenyAll, 15), (b, Assignment::DenyAll, 15)]
    );
}

#[test]
fn a_reload_that_keeps_a_counted_limit_keeps_its_count_and_one_that_drops_it_opens() {
    let mut w = World::new();
    w.env.now = MINUTE;
    let a = w.state.connect(None).unwrap();
    w.report(a, "edge", &[("listed", 1, 0, 0)]).unwrap();
    w.env.now += 5 * SEC;
    w.report(a, "edge", &[("listed", 99, 0, 5)]).unwrap();
    // The burst limit raised: the minute is still used up.
    let raised = LIMITS.replace(
        "- {name: burst, unit: second, requests_per_unit: 5}\n      - {name: minute, unit: minute, requests_per_unit: 100, algorithm: fixed_window}",
        "- {name: burst, unit: second, requests_per_unit: 10}\n      - {name: minute, unit: minute, requests_per_unit: 100, algorithm: fixed_window}",
    );
    assert_ne!(raised, LIMITS);
    w.env.config = compile_text(&raised);
    w.env.now += 5 * SEC;
    let out = w.report(a, "edge", &[("listed", 0, 10, 5)]).unwrap();
    assert_eq!(assigned(&out), [(a, Assignment::DenyAll, 15)]);
    // The minute limit removed: open at the next report, at the new rate.
    let dropped = raised.replace(
        "\n      - {name: minute, unit: minute, requests_per_unit: 100, algorithm: fixed_window}",
        "",
    );
    w.env.config = compile_text(&dropped);
    w.env.now += 5 * SEC;
    let out = w.report(a, "edge", &[("listed", 0, 10, 5)]).unwrap();
    assert_eq!(assigned(&out), [(a, token_bucket(10), 15)]);
}

fn compile_text(text: &str) -> RateLimitConfig {
    let file = SourceFile {
        path: PathBuf::from("limits.yaml"),
        text: text.to_owned(),
    };
    compile(&[file], &Options::default()).unwrap()
}

/// An Envoy enforcing what it was sent as Envoy 1.40 does: a token bucket refilled
/// continuously at `tokens_per_fill / fill_interval`, a changed one starting at the old one's
/// fill ratio, a new one (after a blanket rule, or none) full.
#[derive(Debug, Default)]
struct Model {
    assignment: Option<Assignment>,
    tokens: f64,
    allowed: u64,
    denied: u64,
}

impl Model {
    fn apply(&mut self, assignment: Assignment) {
        let max = |a: Assignment| match a {
            Assignment::TokenBucket { max_tokens, .. } => f64::from(max_tokens),
            _ => 0.0,
        };
        self.tokens = match self.assignment {
            Some(old @ Assignment::TokenBucket { .. }) => self.tokens / max(old) * max(assignment),
            _ => max(assignment),
        };
        self.assignment = Some(assignment);
    }

    fn tick(&mut self, secs: f64) {
        if let Some(Assignment::TokenBucket {
            max_tokens,
            tokens_per_fill,
            fill_interval_secs,
        }) = self.assignment
        {
            let rate = f64::from(tokens_per_fill) / fill_interval_secs as f64;
            self.tokens = (self.tokens + rate * secs).min(f64::from(max_tokens));
        }
    }

    fn request(&mut self) -> bool {
        let pass = match self.assignment {
            None | Some(Assignment::AllowAll) => true,
            Some(Assignment::DenyAll) => false,
            Some(Assignment::TokenBucket { .. }) => {
                let pass = self.tokens >= 1.0;
                if pass {
                    self.tokens -= 1.0;
                }
                pass
            }
        };
        if pass {
            self.allowed += 1;
        } else {
            self.denied += 1;
        }
        pass
    }
}

/// What a run passed: requests admitted at each instant, over every Envoy.
struct Run {
    admitted: Vec<(Nanos, u64)>,
}

/// Envoys offering `loads` requests per second each to bucket `name` for `secs`, reporting
/// every 5 s (staggered evenly), the server sweeping every second; messages arrive at once.
fn simulate(name: &str, loads: &[f64], secs: u64) -> Run {
    const STEP: Nanos = 10_000_000;
    let mut w = World::new();
    let start = MINUTE;
    w.env.now = start;
    let n = loads.len() as u64;
    let ids: Vec<StreamId> = loads
        .iter()
        .map(|_| w.state.connect(None).unwrap())
        .collect();
    let mut models: Vec<Model> = loads.iter().map(|_| Model::default()).collect();
    let mut due = vec![0.0f64; loads.len()];
    let mut next_report: Vec<Nanos> = (0..n).map(|i| start + i * 5 * SEC / n).collect();
    let mut subscribed = vec![false; loads.len()];
    let mut next_sweep = start + SEC;
    let mut admitted = Vec::new();
    let deliver = |out: Outcome, models: &mut [Model]| {
        for m in out.messages {
            if let Action::Assign { assignment, .. } = m.action {
                let at = ids.iter().position(|&id| id == m.stream).unwrap();
                models[at].apply(assignment);
            }
        }
    };
    while w.env.now < start + secs * SEC {
        for i in 0..loads.len() {
            if w.env.now >= next_report[i] {
                let model = &mut models[i];
                let (allowed, denied) = (model.allowed, model.denied);
                let (allowed, elapsed) = if subscribed[i] { (allowed, 5) } else { (1, 0) };
                (model.allowed, model.denied) = (0, 0);
                let out = w
                    .report(ids[i], "edge", &[(name, allowed, denied, elapsed)])
                    .unwrap();
                deliver(out, &mut models);
                if !subscribed[i] {
                    admitted.push((w.env.now, 1));
                }
                subscribed[i] = true;
                next_report[i] += 5 * SEC;
            }
        }
        if w.env.now >= next_sweep {
            let out = w.sweep();
            deliver(out, &mut models);
            next_sweep += SEC;
        }
        let mut passed = 0;
        for (i, model) in models.iter_mut().enumerate() {
            if !subscribed[i] {
                continue;
            }
            model.tick(STEP as f64 / SEC as f64);
            due[i] += loads[i] * STEP as f64 / SEC as f64;
            while due[i] >= 1.0 {
                due[i] -= 1.0;
                passed += u64::from(model.request());
            }
        }
        if passed > 0 {
            admitted.push((w.env.now, passed));
        }
        w.env.now += STEP;
    }
    Run { admitted }
}

impl Run {
    /// The most passed over a fixed window of 100 per minute, beyond the 100.
    fn fixed_window_overshoot(&self) -> u64 {
        let mut windows: HashMap<Nanos, u64> = HashMap::new();
        for &(at, n) in &self.admitted {
            *windows.entry(at / (60 * SEC)).or_default() += n;
        }
        windows
            .values()
            .map(|&n| n.saturating_sub(100))
            .max()
            .unwrap_or(0)
    }

    /// The most a token bucket of `rate` per `period` (burst `rate`) would have run into
    /// debt had it counted every request passed.
    fn token_bucket_overshoot(&self, rate: u64, period: Nanos) -> u64 {
        let t = period / rate;
        let (mut tat, mut most) = (0u64, 0u64);
        for &(at, n) in &self.admitted {
            tat = tat.max(at) + n * t;
            most = most.max((tat - at).div_ceil(t).saturating_sub(rate));
        }
        most
    }

    /// The most passed in any 60 s span ending on a passed request, beyond 100 (the
    /// sliding window's target).
    fn sliding_overshoot(&self) -> u64 {
        let mut most = 0;
        let mut from = 0;
        let mut sum = 0;
        for &(at, n) in &self.admitted {
            sum += n;
            while self.admitted[from].0 + 60 * SEC <= at {
                sum -= self.admitted[from].1;
                from += 1;
            }
            most = most.max(sum.saturating_sub(100));
        }
        most
    }

    fn total(&self) -> u64 {
        self.admitted.iter().map(|&(_, n)| n).sum()
    }
}

/// Envoys passing at most 5 per second (burst 5) report every 5 s: over a counted limit they
/// pass at most the limit and 5 + 5 × 5 = 30 (what the budget's token bucket admits in one
/// report period). Measured here over 10 minutes of simulated Envoys; run with
/// `--nocapture` to see the figures.
#[test]
fn envoys_pass_at_most_a_counted_limit_and_one_report_period_of_the_token_bucket() {
    const BOUND: u64 = 30;
    for loads in [
        &[10.0][..],
        &[10.0, 10.0],
        &[4.0, 4.0, 4.0],
        &[1.0, 20.0],
        &[2.0, 2.0],
    ] {
        let run = simulate("listed", loads, 600);
        let fixed = run.fixed_window_overshoot();
        let burst = run.token_bucket_overshoot(5, SEC);
        eprintln!(
            "fixed_window 100/min, loads {loads:?}: passed {} in 10 min, overshoot {fixed}, over 5/s {burst}",
            run.total()
        );
        assert!(fixed <= BOUND, "{loads:?}: {fixed}");
        let run = simulate("listed_tb", loads, 600);
        let bucket = run.token_bucket_overshoot(100, 60 * SEC);
        eprintln!(
            "token_bucket 100/min, loads {loads:?}: passed {} in 10 min, overshoot {bucket}",
            run.total()
        );
        assert!(bucket <= BOUND, "{loads:?}: {bucket}");
        let run = simulate("listed_sw", loads, 600);
        let sliding = run.sliding_overshoot();
        eprintln!(
            "sliding_window 100/min, loads {loads:?}: passed {} in 10 min, overshoot {sliding}",
            run.total()
        );
        assert!(sliding <= BOUND, "{loads:?}: {sliding}");
    }
}
