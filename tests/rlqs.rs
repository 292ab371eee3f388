//! The Rate Limit Quota Service over a real socket: a tonic client plays the Envoys against a
//! server from `tests/common`, on its manual clock. Subscriptions, fair shares between
//! streams, time to live, idle buckets, several domains, malformed reports, Redis replicas, the
//! shutdown push, and lists of limits (the others counted from the reports).

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::scrape::{samples, value};
use common::{RedisSetup, Setup, TestServer, eventually, eventually_async, start_in, start_with};
use envoy_types::pb::envoy::r#type::v3::rate_limit_strategy::{BlanketRule, Strategy};
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_response::bucket_action::BucketAction as Kind;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_service_client::RateLimitQuotaServiceClient;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_usage_reports::BucketQuotaUsage;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::{
    BucketId, RateLimitQuotaResponse, RateLimitQuotaUsageReports,
};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use tokio::sync::mpsc;
use tollgate::reload::Trigger;
use tonic::{Code, Status, Streaming};

const LIMITS: &str = r#"
domain: quota
descriptors:
  - key: name
    value: api
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: name
    value: web
    descriptors:
      - key: tenant
        rate_limit: {unit: minute, requests_per_unit: 60, burst: 30}
  - key: name
    value: listed
    rate_limits:
      - {name: burst, unit: second, requests_per_unit: 5}
      - {name: minute, unit: minute, requests_per_unit: 100, algorithm: fixed_window}
"#;

/// How long any one expected message may take.
const WAIT: Duration = Duration::from_secs(10);

/// One Envoy: a `StreamRateLimitQuotas` stream.
struct Envoy {
    tx: Option<mpsc::Sender<RateLimitQuotaUsageReports>>,
    rx: Streaming<RateLimitQuotaResponse>,
}

/// One bucket's report: its id, allowed, denied, seconds elapsed.
type Usage<'a> = (&'a [(&'a str, &'a str)], u64, u64, i64);

/// What one bucket was told: its id and action.
#[derive(Debug, Clone, PartialEq)]
enum Told {
    /// A token bucket: tokens per fill, fill interval seconds, max tokens, TTL seconds.
    Tokens(u32, i64, u32, i64),
    /// A blanket rule, with its TTL.
    Allow(i64),
    Deny(i64),
    Abandon,
}

impl Envoy {
    async fn connect(s: &TestServer) -> Self {
        let mut client = RateLimitQuotaServiceClient::connect(format!("http://{}", s.grpc))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        let outbound =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        let rx = client
            .stream_rate_limit_quotas(outbound)
            .await
            .unwrap()
            .into_inner();
        Self { tx: Some(tx), rx }
    }

    async fn send(&self, domain: &str, usages: &[Usage<'_>]) {
        let message = RateLimitQuotaUsageReports {
            domain: domain.to_owned(),
            bucket_quota_usages: usages
                .iter()
                .map(|&(entries, allowed, denied, secs)| BucketQuotaUsage {
                    bucket_id: Some(bucket(entries)),
                    time_elapsed: Some(ProtoDuration {
                        seconds: secs,
                        nanos: 0,
                    }),
                    num_requests_allowed: allowed,
                    num_requests_denied: denied,
                })
                .collect(),
        };
        self.send_raw(message).await;
    }

    async fn send_raw(&self, message: RateLimitQuotaUsageReports) {
        self.tx.as_ref().unwrap().send(message).await.unwrap();
    }

    /// The next message, within [`WAIT`].
    async fn next(&mut self) -> Result<Option<RateLimitQuotaResponse>, Status> {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a message within the deadline")
    }

    /// The actions of the next message, by bucket.
    async fn told(&mut self) -> Vec<(BucketId, Told)> {
        let response = self.next().await.unwrap().expect("a message, not the end");
        response
            .bucket_action
            .into_iter()
            .map(|action| {
                (
                    action.bucket_id.unwrap(),
                    told(action.bucket_action.unwrap()),
                )
            })
            .collect()
    }

    /// What the next message tells the only bucket it names.
    async fn one(&mut self) -> Told {
        let mut told = self.told().await;
        assert_eq!(told.len(), 1, "{told:?}");
        told.remove(0).1
    }

    /// Reads until the stream fails, and returns its status.
    async fn error(&mut self) -> Status {
        loop {
            match self.next().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without an error"),
                Err(status) => return status,
            }
        }
    }

    /// Half-closes the stream, as an Envoy that goes away.
    fn close(&mut self) {
        self.tx = None;
    }
}

fn bucket(entries: &[(&str, &str)]) -> BucketId {
    BucketId {
        bucket: entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn told(action: Kind) -> Told {
    match action {
        Kind::AbandonAction(_) => Told::Abandon,
        Kind::QuotaAssignmentAction(assign) => {
            let ttl = assign.assignment_time_to_live.unwrap().seconds;
            match assign.rate_limit_strategy.unwrap().strategy.unwrap() {
                Strategy::TokenBucket(tb) => Told::Tokens(
                    tb.tokens_per_fill.unwrap().value,
                    tb.fill_interval.unwrap().seconds,
                    tb.max_tokens,
                    ttl,
                ),
                Strategy::BlanketRule(rule) if rule == BlanketRule::AllowAll as i32 => {
                    Told::Allow(ttl)
                }
                Strategy::BlanketRule(_) => Told::Deny(ttl),
                Strategy::RequestsPerTimeUnit(_) => panic!("Envoy 1.40 does not enforce it"),
            }
        }
    }
}

const API: &[(&str, &str)] = &[("name", "api")];

async fn server() -> TestServer {
    start_with(LIMITS, Setup::default()).await
}

async fn rlqs_page(s: &TestServer) -> serde_json::Value {
    let (status, body) = s.admin_get("/rlqs").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn a_subscription_gets_the_limit_as_a_token_bucket_with_a_ttl() {
    let s = server().await;
    let mut envoy = Envoy::connect(&s).await;
    envoy.send("quota", &[(API, 1, 0, 0)]).await;
    assert_eq!(envoy.one().await, Told::Tokens(10, 1, 10, 15));
    // Entries in any order walk the tree: name=web → tenant, 60 per minute, burst 30.
    envoy
        .send(
            "quota",
            &[(&[("tenant", "acme"), ("name", "web")], 1, 0, 0)],
        )
        .await;
    assert_eq!(envoy.one().await, Told::Tokens(60, 60, 30, 15));
    // A bucket under no limit is allowed; it is still followed.
    envoy
        .send("quota", &[(&[("name", "other")], 1, 0, 0)])
        .await;
    assert_eq!(envoy.one().await, Told::Allow(15));
    s.stop().await;
}

#[tokio::test]
async fn envoys_share_the_limit_by_demand_and_a_closed_stream_frees_its_share() {
    let s = server().await;
    let (mut a, mut b) = (Envoy::connect(&s).await, Envoy::connect(&s).await);
    a.send("quota", &[(API, 1, 0, 0)]).await;
    assert_eq!(a.one().await, Told::Tokens(10, 1, 10, 15));
    // a uses 2 per second: it wants 3 (10 % of headroom, rounded up).
    a.send("quota", &[(API, 9, 0, 5)]).await;
    assert_eq!(
        a.one().await,
        Told::Tokens(10, 1, 10, 15),
        "alone, it keeps all"
    );
    // b subscribes: a is shrunk to what it uses, pushed without a report; b gets the rest.
    b.send("quota", &[(API, 1, 0, 0)]).await;
    assert_eq!(b.one().await, Told::Tokens(7, 1, 7, 15));
    assert_eq!(a.one().await, Told::Tokens(3, 1, 3, 15));
    // b is busy (denied requests are demand too); a, still light, keeps what it needs.
    b.send("quota", &[(API, 39, 60, 5)]).await;
    assert_eq!(b.one().await, Told::Tokens(7, 1, 7, 15));
    a.send("quota", &[(API, 10, 0, 5)]).await;
    assert_eq!(a.one().await, Told::Tokens(3, 1, 3, 15));

    let page = rlqs_page(&s).await;
    let envoys = page["buckets"][0]["envoys"].as_array().unwrap();
    let shares: Vec<u64> = envoys
        .iter()
        .map(|e| {
            e["assignment"]["token_bucket"]["tokens_per_fill"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(shares, [3, 7]);
    assert_eq!(envoys[1]["demand"], 22);

    // a goes away: b gets its share at once.
    a.close();
    assert_eq!(b.one().await, Told::Tokens(10, 1, 10, 15));
    assert_eq!(a.next().await.unwrap(), None, "a's stream ends cleanly");
    s.stop().await;
}

#[tokio::test]
async fn reports_renew_the_ttl_and_the_rlqs_page_shows_when_assignments_expire() {
    let s = server().await;
    let mut envoy = Envoy::connect(&s).await;
    envoy.send("quota", &[(API, 1, 0, 0)]).await;
    envoy.one().await;
    s.advance(Duration::from_secs(10));
    let page = rlqs_page(&s).await;
    let bucket = &page["buckets"][0];
    assert_eq!(bucket["domain"], "quota");
    assert_eq!(bucket["bucket"], serde_json::json!({"name": "api"}));
    assert_eq!(bucket["limit"], "quota.name_api");
    assert_eq!(bucket["budget"]["requests_per_unit"], 10);
    assert_eq!(bucket["envoys"][0]["expires_in_secs"], 5.0);
    assert!(
        bucket["envoys"][0]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    envoy.send("quota", &[(API, 3, 0, 5)]).await;
    assert_eq!(envoy.one().await, Told::Tokens(10, 1, 10, 15));
    let page = rlqs_page(&s).await;
    assert_eq!(page["buckets"][0]["envoys"][0]["expires_in_secs"], 15.0);
    assert_eq!(page["buckets"][0]["envoys"][0]["allowed"], 4);
    s.stop().await;
}

#[tokio::test]
async fn idle_buckets_are_abandoned() {
    let s = server().await;
    let mut envoy = Envoy::connect(&s).await;
    envoy.send("quota", &[(API, 1, 0, 0)]).await;
    envoy.one().await;
    // Envoy keeps reporting the bucket, with no requests, every 5 s: kept for 55 s.
    for _ in 0..11 {
        s.advance(Duration::from_secs(5));
        envoy.send("quota", &[(API, 0, 0, 5)]).await;
        assert_eq!(envoy.one().await, Told::Tokens(10, 1, 10, 15));
    }
    // 60 s without a request: the sweep (on the server's clock) abandons it.
    s.advance(Duration::from_secs(5));
    assert_eq!(envoy.told().await, [(bucket(API), Told::Abandon)]);
    let page = rlqs_page(&s).await;
    assert_eq!(page["buckets"], serde_json::json!([]));
    let metrics = samples(&s.admin_get("/metrics").await.1);
    assert_eq!(
        value(
            &metrics,
            "tollgate_rlqs_assignments_total",
            &[("kind", "abandon")]
        ),
        1.0
    );
    assert_eq!(value(&metrics, "tollgate_rlqs_buckets", &[]), 0.0);
    assert_eq!(value(&metrics, "tollgate_rlqs_streams", &[]), 1.0);
    s.stop().await;
}

#[tokio::test]
async fn several_domains_have_their_own_limits() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("quota.yaml"), LIMITS).unwrap();
    std::fs::write(
        dir.path().join("other.yaml"),
        "domain: other\ndescriptors:\n  - key: name\n    value: api\n    rate_limit: {unit: second, requests_per_unit: 3}\n",
    )
    .unwrap();
    let s = start_in(dir, Setup::default()).await;
    let (mut a, mut b, mut c) = (
        Envoy::connect(&s).await,
        Envoy::connect(&s).await,
        Envoy::connect(&s).await,
    );
    a.send("quota", &[(API, 1, 0, 0)]).await;
    b.send("other", &[(API, 1, 0, 0)]).await;
    c.send("unknown", &[(API, 1, 0, 0)]).await;
    // The same bucket id in each domain: its own limit, its own budget.
    assert_eq!(a.one().await, Told::Tokens(10, 1, 10, 15));
    assert_eq!(b.one().await, Told::Tokens(3, 1, 3, 15));
    assert_eq!(
        c.one().await,
        Told::Allow(15),
        "an unknown domain limits nothing"
    );
    a.send("quota", &[(API, 5, 0, 5)]).await;
    b.send("other", &[(API, 2, 1, 5)]).await;
    a.one().await;
    b.one().await;
    let metrics = samples(&s.admin_get("/metrics").await.1);
    let reported = |domain, limit, result| {
        value(
            &metrics,
            "tollgate_rlqs_reported_requests_total",
            &[("domain", domain), ("limit", limit), ("result", result)],
        )
    };
    assert_eq!(reported("quota", "quota.name_api", "allowed"), 6.0);
    assert_eq!(reported("other", "other.name_api", "allowed"), 3.0);
    assert_eq!(reported("other", "other.name_api", "denied"), 1.0);
    assert_eq!(
        reported("", "", "allowed"),
        1.0,
        "unknown domains fold into one series"
    );
    assert_eq!(value(&metrics, "tollgate_rlqs_streams", &[]), 3.0);
    assert_eq!(value(&metrics, "tollgate_rlqs_buckets", &[]), 3.0);
    s.stop().await;
}

#[tokio::test]
async fn malformed_reports_end_the_stream_with_a_status_that_says_why() {
    let s = server().await;
    let cases: Vec<(RateLimitQuotaUsageReports, &str)> = vec![
        (
            RateLimitQuotaUsageReports {
                domain: String::new(),
                bucket_quota_usages: vec![usage(API)],
            },
            "must name a domain",
        ),
        (
            RateLimitQuotaUsageReports {
                domain: "quota".into(),
                bucket_quota_usages: vec![usage(API), usage(&[])],
            },
            "bucket_quota_usages[1].bucket_id: empty",
        ),
        (
            RateLimitQuotaUsageReports {
                domain: "quota".into(),
                bucket_quota_usages: vec![BucketQuotaUsage::default()],
            },
            "bucket_quota_usages[0]: no bucket_id",
        ),
    ];
    for (message, says) in cases {
        let mut envoy = Envoy::connect(&s).await;
        envoy.send_raw(message).await;
        let status = envoy.error().await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(says), "{status:?}");
    }
    // A domain that changes within a stream.
    let mut envoy = Envoy::connect(&s).await;
    envoy.send("quota", &[(API, 1, 0, 0)]).await;
    envoy.one().await;
    envoy.send("other", &[(API, 1, 0, 5)]).await;
    let status = envoy.error().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("open one stream per domain"),
        "{status:?}"
    );
    // The failed streams are gone; the server serves new ones.
    let mut envoy = Envoy::connect(&s).await;
    envoy.send("quota", &[(API, 1, 0, 0)]).await;
    assert_eq!(envoy.one().await, Told::Tokens(10, 1, 10, 15));
    assert_eq!(rlqs_page(&s).await["streams"].as_array().unwrap().len(), 1);
    s.stop().await;
}

fn usage(entries: &[(&str, &str)]) -> BucketQuotaUsage {
    BucketQuotaUsage {
        bucket_id: Some(bucket(entries)),
        num_requests_allowed: 1,
        ..Default::default()
    }
}

#[tokio::test]
async fn at_shutdown_every_assignment_expires_at_once_then_the_stream_ends() {
    let s = server().await;
    let mut envoy = Envoy::connect(&s).await;
    envoy
        .send("quota", &[(API, 1, 0, 0), (&[("name", "other")], 1, 0, 0)])
        .await;
    envoy.told().await;
    let stopping = tokio::spawn(s.stop());
    let mut expired = envoy.told().await;
    expired.sort_by_key(|(id, _)| id.bucket["name"].clone());
    assert_eq!(
        expired,
        [
            (bucket(API), Told::Tokens(10, 1, 10, 0)),
            (bucket(&[("name", "other")]), Told::Allow(0)),
        ]
    );
    assert_eq!(
        envoy.next().await.unwrap(),
        None,
        "then the stream ends, OK"
    );
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("the server drains without waiting for the Envoy")
        .unwrap();
}

#[tokio::test]
async fn redis_replicas_each_hand_out_their_part_of_the_limit() {
    let redis = common::redis::RedisServer::start();
    let setup = RedisSetup::strict(&redis.url()).setup();
    let (one, two) = (
        start_with(LIMITS, setup.clone()).await,
        start_with(LIMITS, setup).await,
    );
    assert!(
        eventually(WAIT, || one.redis_store().replicas() == 2
            && two.redis_store().replicas() == 2)
        .await,
        "both replicas see each other"
    );
    let (mut a, mut b) = (Envoy::connect(&one).await, Envoy::connect(&two).await);
    a.send("quota", &[(API, 1, 0, 0)]).await;
    b.send("quota", &[(API, 1, 0, 0)]).await;
    // 10 per second over two replicas: 5 each, so the Envoys of both never pass 10.
    assert_eq!(a.one().await, Told::Tokens(5, 1, 5, 15));
    assert_eq!(b.one().await, Told::Tokens(5, 1, 5, 15));
    assert_eq!(rlqs_page(&one).await["replicas"], 2);
    two.stop().await;
    // One replica left: its Envoys get the whole limit at their next report.
    assert!(eventually(WAIT, || one.redis_store().replicas() == 1).await);
    a.send("quota", &[(API, 5, 0, 5)]).await;
    assert_eq!(a.one().await, Told::Tokens(10, 1, 10, 15));
    one.stop().await;
}

#[tokio::test]
async fn a_reload_applies_at_each_buckets_next_report() {
    let s = server().await;
    let mut envoy = Envoy::connect(&s).await;
    envoy.send("quota", &[(API, 1, 0, 0)]).await;
    assert_eq!(envoy.one().await, Told::Tokens(10, 1, 10, 15));
    let limits = s.dir.join("limits.yaml");
    let faster = LIMITS.replace("requests_per_unit: 10}", "requests_per_unit: 20}");
    std::fs::write(&limits, &faster).unwrap();
    s.reloader.reload(Trigger::Http).await.unwrap();
    envoy.send("quota", &[(API, 5, 0, 5)]).await;
    assert_eq!(envoy.one().await, Told::Tokens(20, 1, 20, 15));
    // The limit is removed: the bucket is no longer limited, and its budget is gone.
    std::fs::write(&limits, faster.replace("value: api", "value: apis")).unwrap();
    s.reloader.reload(Trigger::Http).await.unwrap();
    envoy.send("quota", &[(API, 5, 0, 5)]).await;
    assert_eq!(envoy.one().await, Told::Allow(15));
    assert_eq!(
        rlqs_page(&s).await["buckets"][0]["limit"],
        serde_json::Value::Null
    );
    s.stop().await;
}

const LISTED: &[(&str, &str)] = &[("name", "listed")];

#[tokio::test]
async fn a_counted_limit_used_up_denies_every_envoy_until_its_window_ends() {
    // The server's clock starts on a minute boundary: the minute's window is [0 s, 60 s).
    let s = server().await;
    let (mut a, mut b) = (Envoy::connect(&s).await, Envoy::connect(&s).await);
    a.send("quota", &[(LISTED, 1, 0, 0)]).await;
    // 5 per second is the token bucket; 100 per minute is counted from the reports.
    assert_eq!(a.one().await, Told::Tokens(5, 1, 5, 15));
    b.send("quota", &[(LISTED, 1, 0, 0)]).await;
    assert_eq!(b.one().await, Told::Tokens(2, 1, 2, 15));
    assert_eq!(a.one().await, Told::Tokens(3, 1, 3, 15));
    s.advance(Duration::from_secs(5));
    a.send("quota", &[(LISTED, 48, 0, 5)]).await;
    assert_eq!(a.one().await, Told::Tokens(3, 1, 3, 15));
    let page = rlqs_page(&s).await;
    let counted = &page["buckets"][0]["counted"][0];
    assert_eq!(counted["limit"], "quota.name_listed#minute");
    assert_eq!(counted["remaining"], 50);
    assert_eq!(counted["admits_in_secs"], 0.0);
    // b's report brings the sum to 100: both are denied in the same instant.
    s.advance(Duration::from_secs(2));
    b.send("quota", &[(LISTED, 50, 0, 5)]).await;
    assert_eq!(b.one().await, Told::Deny(15));
    assert_eq!(a.one().await, Told::Deny(15));
    let page = rlqs_page(&s).await;
    let bucket = &page["buckets"][0];
    assert_eq!(bucket["counted"][0]["remaining"], 0);
    assert_eq!(bucket["counted"][0]["admits_in_secs"], 53.0);
    assert_eq!(bucket["budget"]["assignable_requests_per_unit"], 0);
    let metrics = samples(&s.admin_get("/metrics").await.1);
    assert_eq!(
        value(
            &metrics,
            "tollgate_rlqs_limit_exhausted_total",
            &[("limit", "quota.name_listed#minute")]
        ),
        1.0
    );
    // The Envoys keep reporting (their requests denied) until the window ends.
    for _ in 0..10 {
        s.advance(Duration::from_secs(5));
        for envoy in [&mut a, &mut b] {
            envoy.send("quota", &[(LISTED, 0, 25, 5)]).await;
            assert_eq!(envoy.one().await, Told::Deny(15));
        }
    }
    // 57 s: the next window starts in 3 s, and the sweep then gives both their token
    // bucket back, without a report.
    s.advance(Duration::from_secs(3));
    let (told_a, told_b) = (a.one().await, b.one().await);
    let tokens = |told: &Told| match *told {
        Told::Tokens(tokens, 1, max, 15) if tokens == max => tokens,
        ref other => panic!("a token bucket, not {other:?}"),
    };
    assert_eq!(tokens(&told_a) + tokens(&told_b), 5);
    let page = rlqs_page(&s).await;
    assert_eq!(page["buckets"][0]["counted"][0]["remaining"], 100);
    s.stop().await;
}

/// An Envoy's bucket as Envoy 1.40 enforces it: a token bucket refilled continuously, a
/// changed one starting at the old one's fill ratio, a new one full; blanket rules.
#[derive(Debug, Default)]
struct Enforced {
    told: Option<Told>,
    tokens: f64,
    /// Messages received.
    messages: usize,
}

impl Enforced {
    fn apply(&mut self, told: Told) {
        let max = |told: &Told| match *told {
            Told::Tokens(_, _, max, _) => f64::from(max),
            _ => 0.0,
        };
        self.tokens = match &self.told {
            Some(old @ Told::Tokens(..)) => self.tokens / max(old) * max(&told),
            _ => max(&told),
        };
        self.told = Some(told);
        self.messages += 1;
    }

    fn tick(&mut self, secs: f64) {
        if let Some(Told::Tokens(per_fill, interval, max, _)) = self.told {
            let rate = f64::from(per_fill) / interval as f64;
            self.tokens = (self.tokens + rate * secs).min(f64::from(max));
        }
    }

    fn request(&mut self) -> bool {
        match self.told {
            None | Some(Told::Allow(_)) => true,
            Some(Told::Deny(_) | Told::Abandon) => false,
            Some(Told::Tokens(..)) => {
                let pass = self.tokens >= 1.0;
                if pass {
                    self.tokens -= 1.0;
                }
                pass
            }
        }
    }

    /// The assignment as `/rlqs` shows it.
    fn shown(&self) -> serde_json::Value {
        match self.told {
            Some(Told::Tokens(per_fill, interval, max, _)) => serde_json::json!({
                "token_bucket": {
                    "max_tokens": max,
                    "tokens_per_fill": per_fill,
                    "fill_interval_secs": interval,
                }
            }),
            Some(Told::Deny(_)) => serde_json::json!("deny_all"),
            Some(Told::Allow(_)) => serde_json::json!("allow_all"),
            Some(Told::Abandon) | None => serde_json::Value::Null,
        }
    }
}

#[tokio::test]
async fn two_envoys_pass_at_most_the_per_minute_limit_and_one_report_period_of_their_shares() {
    // 5/s with a burst of 5 admits 5 + 5 × 5 = 30 in one report period: the bound.
    const BOUND: u64 = 30;
    const STEP: Duration = Duration::from_millis(100);
    let s = server().await;
    let envoys = [Envoy::connect(&s).await, Envoy::connect(&s).await];
    let models: Vec<Arc<Mutex<Enforced>>> = (0..2).map(|_| Arc::default()).collect();
    let mut senders = Vec::new();
    for (mut envoy, model) in envoys.into_iter().zip(&models) {
        senders.push(envoy.tx.take().unwrap());
        let model = model.clone();
        tokio::spawn(async move {
            while let Ok(Some(response)) = envoy.rx.message().await {
                for action in response.bucket_action {
                    model
                        .lock()
                        .unwrap()
                        .apply(told(action.bucket_action.unwrap()));
                }
            }
        });
    }
    let report = |i: usize, allowed: u64, denied: u64, secs: i64| {
        let sender = senders[i].clone();
        async move {
            let message = RateLimitQuotaUsageReports {
                domain: "quota".into(),
                bucket_quota_usages: vec![BucketQuotaUsage {
                    bucket_id: Some(bucket(LISTED)),
                    time_elapsed: Some(ProtoDuration {
                        seconds: secs,
                        nanos: 0,
                    }),
                    num_requests_allowed: allowed,
                    num_requests_denied: denied,
                }],
            };
            sender.send(message).await.unwrap();
        }
    };
    // Every message the server sent has been applied: what /rlqs says each Envoy holds.
    let applied = || async {
        let page = rlqs_page(&s).await;
        let Some(shown) = page["buckets"][0]["envoys"].as_array().cloned() else {
            return false;
        };
        shown.len() == 2
            && shown
                .iter()
                .zip(&models)
                .all(|(e, m)| e["assignment"] == m.lock().unwrap().shown())
    };
    for (i, model) in models.iter().enumerate() {
        report(i, 1, 0, 0).await;
        assert!(eventually_async(WAIT, || async { model.lock().unwrap().messages > 0 }).await);
    }
    assert!(eventually_async(WAIT, applied).await);
    // Each Envoy offers 10 requests per second; they report every 5 s, 2.5 s apart.
    let mut counts = [(0u64, 0u64); 2];
    let mut passed_per_minute = [0u64; 3];
    let mut elapsed = Duration::ZERO;
    while elapsed < Duration::from_secs(150) {
        let step = elapsed.as_millis() / STEP.as_millis();
        for i in 0..2 {
            let offset = 25 * i as u128;
            if step >= offset && (step - offset).is_multiple_of(50) && step > 0 {
                let before = models[i].lock().unwrap().messages;
                let (allowed, denied) = std::mem::take(&mut counts[i]);
                report(i, allowed, denied, 5).await;
                assert!(
                    eventually_async(WAIT, || async {
                        models[i].lock().unwrap().messages > before
                    })
                    .await,
                    "the reporter is answered"
                );
                assert!(eventually_async(WAIT, applied).await, "pushes arrive");
            }
        }
        for (i, model) in models.iter().enumerate() {
            let mut model = model.lock().unwrap();
            model.tick(STEP.as_secs_f64());
            // 10 per second: one request per Envoy per step.
            if model.request() {
                counts[i].0 += 1;
                passed_per_minute[(elapsed.as_secs() / 60) as usize] += 1;
            } else {
                counts[i].1 += 1;
            }
        }
        s.advance(STEP);
        elapsed += STEP;
    }
    // The subscriptions passed one request each in the first minute.
    passed_per_minute[0] += 2;
    for (minute, passed) in passed_per_minute.iter().enumerate().take(2) {
        assert!(
            (90..=100 + BOUND).contains(passed),
            "minute {minute}: {passed} passed"
        );
    }
    assert!(passed_per_minute[2] <= 100 + BOUND);
    eprintln!("passed per minute (the last one half): {passed_per_minute:?}");
    s.stop().await;
}
