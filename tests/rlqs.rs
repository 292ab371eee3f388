//! The Rate Limit Quota Service over a real socket: a tonic client plays the Envoys against a
//! server from `tests/common`, on its manual clock. Subscriptions, fair shares between
//! streams, time to live, idle buckets, several domains, malformed reports, Redis replicas and
//! the shutdown push.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::time::Duration;

use common::scrape::{samples, value};
use common::{RedisSetup, Setup, TestServer, eventually, start_in, start_with};
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
