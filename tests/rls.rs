//! Envoy's RateLimitService semantics, over a real gRPC connection: one behaviour suite run on
//! every store (memory, Redis strict, Redis cached; each Redis run starts its own
//! `redis-server`), then what only the memory store or the server itself does.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::time::Duration;

use common::{Backend, Setup, codes, descriptor, one, request, reset_secs, start, start_with};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::google::protobuf::UInt64Value;

use common::SEMANTICS as CONFIG;

const OK: i32 = Code::Ok as i32;
const OVER: i32 = Code::OverLimit as i32;
const SEC: Duration = Duration::from_secs(1);

/// Runs each `async fn name(store: Backend)` listed as three tests, `memory::name`,
/// `strict::name` and `cached::name`, so every store answers the same suite.
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        on_every_store!(@store memory, memory; $($name),*);
        on_every_store!(@store strict, strict; $($name),*);
        on_every_store!(@store cached, cached; $($name),*);
    };
    (@store $module:ident, $backend:ident; $($name:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::$backend()).await;
                }
            )*
        }
    };
}

on_every_store!(
    token_bucket_admits_the_limit_then_refills,
    fixed_window_resets_at_the_epoch_aligned_window_end,
    burst_sets_the_capacity_apart_from_the_rate,
    unlimited_no_match_unknown_domain_and_whitelist,
    zero_requests_per_unit_blocks_everything,
    hits_addend_descriptor_level_wins_and_zero_only_checks,
    descriptor_limit_overrides_apply_in_known_domains,
    replaced_limits_are_dropped,
    shadow_mode_counts_but_never_denies,
    a_denied_request_consumes_nothing,
    quota_mode_denies_only_when_every_quota_limit_is_over,
    share_threshold_makes_wildcard_matches_share_one_bucket,
    concurrent_callers_never_exceed_the_limit,
    debt_counts_a_charge_past_what_is_left_until_refills_repay_it,
    usage_learned_after_the_response_limits_the_next_request,
    max_debt_bounds_the_debt,
    a_fixed_window_in_debt_starts_afresh_next_window,
    a_debt_charge_stands_when_another_descriptor_denies,
    count_denied_counts_every_hit_on_limits_without_debt,
    reservations_hold_estimates_so_concurrent_requests_cannot_overspend,
    a_settlement_gives_back_the_estimate_then_charges_the_usage,
    a_large_reservation_on_a_sliding_log_is_given_back_whole,
    several_limits_on_one_descriptor_all_apply,
    a_unit_multiplier_makes_custom_windows,
    calendar_months_reset_at_the_first_of_the_month,
);

/// Budgets that follow the calendar.
const MONTHLY: &str = r#"
domain: monthly
descriptors:
  - key: utc
    rate_limit: {unit: month, requests_per_unit: 2, calendar: true}
  - key: berlin
    rate_limit: {unit: month, requests_per_unit: 2, calendar: true, timezone: Europe/Berlin}
"#;

async fn calendar_months_reset_at_the_first_of_the_month(store: Backend) {
    let mut s = store.start(MONTHLY).await;
    // T0 is 2027-01-15 08:00 UTC: the month ends on 1 February, 16 days 16 hours on (in
    // Berlin an hour earlier, at midnight CET).
    for (key, reset) in [("utc", 1_440_000.0), ("berlin", 1_436_400.0)] {
        for remaining in [1, 0] {
            let r = s.call(request("monthly", one(key, "k"))).await;
            assert_eq!(
                (r.overall_code, r.statuses[0].limit_remaining),
                (OK, remaining)
            );
            assert_eq!(reset_secs(&r.statuses[0]), reset, "{key}");
        }
        assert_eq!(
            s.call(request("monthly", one(key, "k"))).await.overall_code,
            OVER
        );
    }
    s.advance(1_436_400 * SEC);
    assert_eq!(
        s.call(request("monthly", one("berlin", "k")))
            .await
            .overall_code,
        OK
    );
    assert_eq!(
        s.call(request("monthly", one("utc", "k")))
            .await
            .overall_code,
        OVER
    );
    s.advance(3_600 * SEC);
    let r = s.call(request("monthly", one("utc", "k"))).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 1));
    // February 2027 has 28 days.
    assert_eq!(reset_secs(&r.statuses[0]), 28.0 * 86_400.0);
    s.stop().await;
}

/// 30-second windows and refill periods (`unit_multiplier`).
const CUSTOM: &str = r#"
domain: custom
descriptors:
  - key: window
    rate_limit: {unit: second, unit_multiplier: 30, requests_per_unit: 3, algorithm: fixed_window}
  - key: bucket
    rate_limit: {unit: second, unit_multiplier: 30, requests_per_unit: 3}
"#;

async fn a_unit_multiplier_makes_custom_windows(store: Backend) {
    let mut s = store.start(CUSTOM).await;
    s.advance(10 * SEC);
    for remaining in (0..3).rev() {
        let r = s.call(request("custom", one("window", "w"))).await;
        assert_eq!(
            (r.overall_code, r.statuses[0].limit_remaining),
            (OK, remaining)
        );
    }
    let r = s.call(request("custom", one("window", "w"))).await;
    assert_eq!(r.overall_code, OVER);
    // The window is [30 s, 60 s) of the minute: it ends 20 s on.
    assert_eq!(reset_secs(&r.statuses[0]), 20.0);
    s.advance(20 * SEC);
    let r = s.call(request("custom", one("window", "w"))).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 2));
    // A token bucket of 3 per 30 s: a token back every 10 s.
    for _ in 0..3 {
        assert_eq!(
            s.call(request("custom", one("bucket", "b")))
                .await
                .overall_code,
            OK
        );
    }
    let r = s.call(request("custom", one("bucket", "b"))).await;
    assert_eq!((r.overall_code, reset_secs(&r.statuses[0])), (OVER, 30.0));
    s.advance(10 * SEC);
    assert_eq!(
        s.call(request("custom", one("bucket", "b")))
            .await
            .overall_code,
        OK
    );
    s.stop().await;
}

/// Burst and sustained limits on one key (`rate_limits`).
const LAYERED: &str = r#"
domain: layered
descriptors:
  - key: user
    rate_limits:
      - {name: per_second, unit: second, requests_per_unit: 5}
      - {name: per_minute, unit: minute, requests_per_unit: 8}
"#;

async fn several_limits_on_one_descriptor_all_apply(store: Backend) {
    let mut s = store.start(LAYERED).await;
    let hit = || request("layered", one("user", "u"));
    let name = |r: &envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse| {
        r.statuses[0].current_limit.as_ref().unwrap().name.clone()
    };
    for remaining in (0..5).rev() {
        let r = s.call(hit()).await;
        // The tighter of the two is reported: per second until the minute has less left.
        assert_eq!(
            (r.overall_code, r.statuses[0].limit_remaining),
            (OK, remaining)
        );
        assert_eq!(name(&r), "per_second");
    }
    let r = s.call(hit()).await;
    assert_eq!((r.overall_code, name(&r)), (OVER, "per_second".to_owned()));
    // A second later the per-second limit is whole again; the minute has 3 left.
    s.advance(SEC);
    for remaining in (0..3).rev() {
        let r = s.call(hit()).await;
        assert_eq!(
            (r.overall_code, r.statuses[0].limit_remaining),
            (OK, remaining)
        );
        assert_eq!(name(&r), "per_minute");
    }
    let r = s.call(hit()).await;
    assert_eq!((r.overall_code, name(&r)), (OVER, "per_minute".to_owned()));
    s.stop().await;
}

/// LLM token budgets: the same limit with and without debt.
const TOKENS: &str = r#"
domain: llm
descriptors:
  - key: tenant
    rate_limit: {unit: minute, requests_per_unit: 1000, debt: true}
  - key: capped
    rate_limit: {unit: minute, requests_per_unit: 1000, debt: true, max_debt: 100}
  - key: window
    rate_limit: {unit: minute, requests_per_unit: 1000, algorithm: fixed_window, debt: true}
  - key: plain
    rate_limit: {unit: minute, requests_per_unit: 1000}
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: log
    rate_limit: {unit: minute, requests_per_unit: 10000, algorithm: sliding_log}
"#;

/// A call on `descriptor` with its own `hits_addend` of `cost` (0: check only).
fn costing(domain: &str, entries: &[(&str, &str)], cost: u64) -> RateLimitRequest {
    let mut req = request(domain, vec![descriptor(entries)]);
    req.descriptors[0].hits_addend = Some(UInt64Value { value: cost });
    req
}

/// (overall code, remaining) of a call on `key=value` costing `cost` in `llm`.
async fn spend(s: &mut common::TestServer, key: &str, value: &str, cost: u64) -> (i32, u32) {
    let r = s.call(costing("llm", &[(key, value)], cost)).await;
    (r.overall_code, r.statuses[0].limit_remaining)
}

/// A request-path call reserving `estimate` for request `id` of `tenant`.
fn reserving(tenant: &str, id: &str, estimate: u64) -> RateLimitRequest {
    let estimate = estimate.to_string();
    let entries = [
        ("tenant", tenant),
        ("tollgate.request", id),
        ("tollgate.reserve", &estimate),
    ];
    costing("llm", &entries, 0)
}

/// A stream-done call settling request `id` of `tenant` at `usage`.
fn settling(tenant: &str, id: &str, usage: u64) -> RateLimitRequest {
    costing(
        "llm",
        &[("tenant", tenant), ("tollgate.request", id)],
        usage,
    )
}

async fn reservations_hold_estimates_so_concurrent_requests_cannot_overspend(store: Backend) {
    let mut s = store.start(TOKENS).await;
    let calls: Vec<_> = (0..20)
        .map(|n| {
            let mut client = s.client.clone();
            tokio::spawn(async move {
                let id = format!("req-{n}");
                let r = client.should_rate_limit(reserving("r", &id, 100)).await;
                (id, r.unwrap().into_inner().overall_code == OK)
            })
        })
        .collect();
    let mut admitted = Vec::new();
    for call in calls {
        let (id, ok) = call.await.unwrap();
        if ok {
            admitted.push(id);
        }
    }
    assert_eq!(admitted.len(), 10, "1 000 tokens hold ten estimates of 100");
    for id in &admitted {
        s.call(settling("r", id, 40)).await;
    }
    assert_eq!(spend(&mut s, "tenant", "r", 0).await, (OK, 600));
    let mut more = 0;
    for n in 0..10 {
        let r = s.call(reserving("r", &format!("more-{n}"), 100)).await;
        more += usize::from(r.overall_code == OK);
    }
    assert_eq!(more, 6, "what the settlements gave back fits six more");
    s.stop().await;
}

async fn a_settlement_gives_back_the_estimate_then_charges_the_usage(store: Backend) {
    let mut s = store.start(TOKENS).await;
    let r = s.call(reserving("s", "one", 500)).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 500));
    // Usage above the estimate: the estimate back, then 700 taken.
    s.call(settling("s", "one", 700)).await;
    assert_eq!(spend(&mut s, "tenant", "s", 0).await, (OK, 300));
    // Settled once: a second settlement finds nothing held and charges in full (debt).
    assert_eq!(s.call(settling("s", "one", 400)).await.overall_code, OVER);
    assert_eq!(spend(&mut s, "tenant", "s", 0).await.0, OVER, "100 in debt");
    // An estimate that does not fit is refused and holds nothing, whatever the debt. (1 100
    // deep: full again 66 s on.)
    s.advance(66 * SEC);
    let r = s.call(reserving("s", "big", 1001)).await;
    assert_eq!(
        (r.overall_code, r.statuses[0].limit_remaining),
        (OVER, 0),
        "over: nothing left to this request, as the reference reports it"
    );
    assert_eq!(s.call(settling("s", "big", 10)).await.overall_code, OK);
    assert_eq!(spend(&mut s, "tenant", "s", 0).await, (OK, 990));
    s.stop().await;
}

async fn a_large_reservation_on_a_sliding_log_is_given_back_whole(store: Backend) {
    let mut s = store.start(TOKENS).await;
    let reserve = [
        ("log", "l"),
        ("tollgate.request", "big"),
        ("tollgate.reserve", "9000"),
    ];
    let r = s.call(costing("llm", &reserve, 0)).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 1000));
    let r = s.call(costing("llm", &reserve[..2], 100)).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 9900));
    s.stop().await;
}

async fn debt_counts_a_charge_past_what_is_left_until_refills_repay_it(store: Backend) {
    let mut s = store.start(TOKENS).await;
    assert_eq!(spend(&mut s, "tenant", "a", 0).await, (OK, 1000));
    // 1 200 tokens against 1 000 left: taken, 200 in debt, and that call says OVER_LIMIT.
    assert_eq!(spend(&mut s, "tenant", "a", 1200).await, (OVER, 0));
    assert_eq!(
        spend(&mut s, "tenant", "a", 0).await.0,
        OVER,
        "in debt: over"
    );
    assert_eq!(
        spend(&mut s, "tenant", "b", 0).await,
        (OK, 1000),
        "others unaffected"
    );
    // 1 000 a minute refill 200 tokens in 12 s: then the bucket is exactly at its limit.
    s.advance(Duration::from_millis(11_900));
    assert_eq!(spend(&mut s, "tenant", "a", 0).await.0, OVER);
    s.advance(Duration::from_millis(100));
    assert_eq!(spend(&mut s, "tenant", "a", 0).await, (OK, 0));
    s.advance(6 * SEC);
    assert_eq!(spend(&mut s, "tenant", "a", 0).await, (OK, 100));
    s.stop().await;
}

async fn usage_learned_after_the_response_limits_the_next_request(store: Backend) {
    let mut s = store.start(TOKENS).await;
    // Envoy's token-quota pattern: a check on the request path, the usage after the
    // response. Four requests of 300 tokens pass (the fourth from 900: not over), the fifth
    // finds the bucket 200 in debt.
    for request in 1..=5 {
        let (code, _) = spend(&mut s, "tenant", "c", 0).await;
        if request < 5 {
            assert_eq!(code, OK, "request {request}");
            spend(&mut s, "tenant", "c", 300).await;
        } else {
            assert_eq!(code, OVER, "request {request}");
        }
    }
    s.stop().await;
}

async fn max_debt_bounds_the_debt(store: Backend) {
    let mut s = store.start(TOKENS).await;
    assert_eq!(spend(&mut s, "capped", "a", 5000).await, (OVER, 0));
    assert_eq!(spend(&mut s, "capped", "a", 5000).await, (OVER, 0));
    // 100 in debt at most: repaid in 6 s (60 ms a token), not 4 000 × 60 ms.
    s.advance(Duration::from_millis(5_900));
    assert_eq!(spend(&mut s, "capped", "a", 0).await.0, OVER);
    s.advance(Duration::from_millis(100));
    assert_eq!(spend(&mut s, "capped", "a", 0).await, (OK, 0));
    s.stop().await;
}

async fn a_fixed_window_in_debt_starts_afresh_next_window(store: Backend) {
    let mut s = store.start(TOKENS).await;
    assert_eq!(spend(&mut s, "window", "a", 900).await, (OK, 100));
    assert_eq!(spend(&mut s, "window", "a", 300).await, (OVER, 0));
    assert_eq!(spend(&mut s, "window", "a", 0).await.0, OVER);
    s.advance(60 * SEC);
    assert_eq!(spend(&mut s, "window", "a", 0).await, (OK, 1000));
    s.stop().await;
}

async fn a_debt_charge_stands_when_another_descriptor_denies(store: Backend) {
    let mut s = store.start(TOKENS).await;
    assert_eq!(spend(&mut s, "user", "u", 1).await, (OK, 0));
    for (key, left) in [("tenant", 950), ("plain", 1000)] {
        let mut both = request(
            "llm",
            vec![descriptor(&[("user", "u")]), descriptor(&[(key, "d")])],
        );
        both.descriptors[1].hits_addend = Some(UInt64Value { value: 50 });
        let r = s.call(both).await;
        assert_eq!(codes(&r), (OVER, vec![OVER, OK]), "{key}");
        // The usage happened: a limit with debt keeps its charge; one without gives it back.
        assert_eq!(spend(&mut s, key, "d", 0).await, (OK, left), "{key}");
    }
    s.stop().await;
}

async fn count_denied_counts_every_hit_on_limits_without_debt(store: Backend) {
    let setup = Setup {
        count_denied: true,
        ..Setup::default()
    };
    let mut s = store.start_with(TOKENS, setup).await;
    assert_eq!(spend(&mut s, "plain", "a", 1200).await, (OVER, 0));
    assert_eq!(spend(&mut s, "plain", "a", 0).await.0, OVER);
    assert_eq!(spend(&mut s, "plain", "b", 300).await, (OK, 700));
    // Limits Envoy sends in the request count every hit too.
    let mut sent = costing("llm", &[("anything", "x")], 7);
    sent.descriptors[0].limit = Some(RateLimitOverride {
        requests_per_unit: 5,
        unit: 2,
    });
    assert_eq!(s.call(sent.clone()).await.overall_code, OVER);
    sent.descriptors[0].hits_addend = Some(UInt64Value { value: 0 });
    assert_eq!(s.call(sent).await.overall_code, OVER, "in debt");
    s.stop().await;
}

async fn token_bucket_admits_the_limit_then_refills(store: Backend) {
    let mut s = store.start(CONFIG).await;
    for (remaining, reset) in [(2, 20.0), (1, 40.0), (0, 60.0)] {
        let r = s.call(request("test", one("user", "alice"))).await;
        assert_eq!(codes(&r), (OK, vec![OK]));
        let status = &r.statuses[0];
        assert_eq!(status.limit_remaining, remaining);
        assert_eq!(reset_secs(status), reset);
        let limit = status.current_limit.as_ref().unwrap();
        assert_eq!(
            (limit.name.as_str(), limit.requests_per_unit, limit.unit),
            ("per_user", 3, 2)
        );
    }
    let r = s.call(request("test", one("user", "alice"))).await;
    assert_eq!(codes(&r), (OVER, vec![OVER]));
    assert_eq!(r.statuses[0].limit_remaining, 0);
    assert_eq!(reset_secs(&r.statuses[0]), 60.0);
    // Other users have their own bucket.
    assert_eq!(
        codes(&s.call(request("test", one("user", "bob"))).await).0,
        OK
    );
    s.advance(20 * SEC);
    let r = s.call(request("test", one("user", "alice"))).await;
    assert_eq!(codes(&r), (OK, vec![OK]));
    assert_eq!(r.statuses[0].limit_remaining, 0);
    s.stop().await;
}

async fn fixed_window_resets_at_the_epoch_aligned_window_end(store: Backend) {
    let mut s = store.start(CONFIG).await;
    s.advance(30 * SEC);
    let r = s.call(request("test", one("window", "w"))).await;
    assert_eq!(
        (r.statuses[0].limit_remaining, reset_secs(&r.statuses[0])),
        (1, 30.0)
    );
    s.call(request("test", one("window", "w"))).await;
    assert_eq!(
        codes(&s.call(request("test", one("window", "w"))).await).0,
        OVER
    );
    s.advance(30 * SEC);
    let r = s.call(request("test", one("window", "w"))).await;
    assert_eq!(
        (
            r.overall_code,
            r.statuses[0].limit_remaining,
            reset_secs(&r.statuses[0])
        ),
        (OK, 1, 60.0)
    );
    s.stop().await;
}

async fn burst_sets_the_capacity_apart_from_the_rate(store: Backend) {
    let mut s = store.start(CONFIG).await;
    for _ in 0..3 {
        assert_eq!(
            s.call(request("test", one("bursty", "b")))
                .await
                .overall_code,
            OK
        );
    }
    assert_eq!(
        s.call(request("test", one("bursty", "b")))
            .await
            .overall_code,
        OVER
    );
    s.advance(SEC);
    assert_eq!(
        s.call(request("test", one("bursty", "b")))
            .await
            .overall_code,
        OK
    );
    s.stop().await;
}

async fn unlimited_no_match_unknown_domain_and_whitelist(store: Backend) {
    let mut s = store.start(CONFIG).await;
    let r = s.call(request("test", one("free", "x"))).await;
    assert_eq!(codes(&r), (OK, vec![OK]));
    assert_eq!(r.statuses[0].limit_remaining, u32::MAX);
    assert!(r.statuses[0].current_limit.is_none());
    assert!(r.statuses[0].duration_until_reset.is_none());

    for req in [
        request("test", one("nothing", "x")),
        request("test", vec![descriptor(&[("user", "a"), ("deeper", "b")])]),
        request("elsewhere", one("user", "a")),
    ] {
        let r = s.call(req).await;
        assert_eq!(codes(&r), (OK, vec![OK]));
        assert!(r.statuses[0].current_limit.is_none());
    }
    for _ in 0..5 {
        assert_eq!(
            s.call(request("test", one("ip", "10.0.0.1")))
                .await
                .overall_code,
            OK
        );
    }
    s.call(request("test", one("ip", "10.0.0.2"))).await;
    assert_eq!(
        s.call(request("test", one("ip", "10.0.0.2")))
            .await
            .overall_code,
        OVER
    );
    s.stop().await;
}

async fn zero_requests_per_unit_blocks_everything(store: Backend) {
    let mut s = store.start(CONFIG).await;
    let r = s.call(request("test", one("blocked", "x"))).await;
    assert_eq!(codes(&r), (OVER, vec![OVER]));
    assert_eq!(
        r.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        0
    );
    s.stop().await;
}

async fn hits_addend_descriptor_level_wins_and_zero_only_checks(store: Backend) {
    let mut s = store.start(CONFIG).await;
    let mut req = request("test", one("user", "h"));
    req.hits_addend = 2;
    assert_eq!(s.call(req.clone()).await.statuses[0].limit_remaining, 1);
    // Descriptor-level 0: check only, nothing consumed, even with a request-level addend.
    req.descriptors[0].hits_addend = Some(UInt64Value { value: 0 });
    let r = s.call(req.clone()).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 1));
    // Request-level 0 means 1.
    let r = s.call(request("test", one("user", "h"))).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 0));
    // Exactly at the limit a check is OK (not over), as the reference answers; a hit that
    // does not fit is denied and, without debt, counts nothing.
    assert_eq!(s.call(req.clone()).await.overall_code, OK);
    let r = s.call(request("test", one("user", "h"))).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OVER, 0));
    assert_eq!(s.call(req.clone()).await.overall_code, OK);
    // Absurd costs are denied, not overflowed.
    let mut huge = request("test", one("user", "other"));
    huge.descriptors[0].hits_addend = Some(UInt64Value { value: u64::MAX });
    let r = s.call(huge).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OVER, 0));
    let mut check = request("test", one("user", "other"));
    check.descriptors[0].hits_addend = Some(UInt64Value { value: 0 });
    let r = s.call(check).await;
    assert_eq!(
        (r.overall_code, r.statuses[0].limit_remaining),
        (OK, 3),
        "the denied cost took nothing"
    );
    s.stop().await;
}

async fn descriptor_limit_overrides_apply_in_known_domains(store: Backend) {
    let mut s = store.start(CONFIG).await;
    let mut req = request("test", one("anything", "x"));
    req.descriptors[0].limit = Some(RateLimitOverride {
        requests_per_unit: 2,
        unit: 1,
    });
    for _ in 0..2 {
        let r = s.call(req.clone()).await;
        assert_eq!(r.overall_code, OK);
        let limit = r.statuses[0].current_limit.as_ref().unwrap();
        assert_eq!((limit.requests_per_unit, limit.unit), (2, 1));
    }
    assert_eq!(s.call(req.clone()).await.overall_code, OVER);
    req.domain = "elsewhere".into();
    assert!(
        s.call(req.clone()).await.statuses[0]
            .current_limit
            .is_none()
    );
    req.domain = "test".into();
    req.descriptors[0].limit = Some(RateLimitOverride {
        requests_per_unit: 2,
        unit: 42,
    });
    let status = s.call_err(req).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("descriptors[0].limit: unknown unit 42"),
        "{}",
        status.message()
    );
    s.stop().await;
}

async fn replaced_limits_are_dropped(store: Backend) {
    let mut s = store.start(CONFIG).await;
    let req = request(
        "test",
        vec![
            descriptor(&[("general", "g")]),
            descriptor(&[("special", "s")]),
        ],
    );
    let r = s.call(req.clone()).await;
    assert_eq!(codes(&r), (OK, vec![OK, OK]));
    assert!(r.statuses[0].current_limit.is_none(), "general is replaced");
    assert_eq!(
        r.statuses[1].current_limit.as_ref().unwrap().name,
        "special"
    );
    assert_eq!(codes(&s.call(req).await), (OVER, vec![OK, OVER]));
    s.stop().await;
}

async fn shadow_mode_counts_but_never_denies(store: Backend) {
    let mut s = store.start(CONFIG).await;
    s.call(request("test", one("shadow", "x"))).await;
    let r = s.call(request("test", one("shadow", "x"))).await;
    assert_eq!(codes(&r), (OK, vec![OK]));
    assert_eq!(
        r.statuses[0].limit_remaining, 0,
        "the limit is still reported as used up"
    );
    s.stop().await;

    let mut s = store
        .start_with(
            CONFIG,
            Setup {
                shadow_mode: true,
                ..Setup::default()
            },
        )
        .await;
    for _ in 0..3 {
        assert_eq!(
            s.call(request("test", one("user", "u"))).await.overall_code,
            OK
        );
    }
    for _ in 0..2 {
        let r = s.call(request("test", one("user", "u"))).await;
        assert_eq!(
            (codes(&r), r.statuses[0].limit_remaining),
            ((OK, vec![OVER]), 0),
            "as in the reference: the descriptor says OVER_LIMIT, the request passes"
        );
    }
    assert_eq!(
        s.call(request("test", one("blocked", "u")))
            .await
            .overall_code,
        OK
    );
    s.stop().await;
}

async fn a_denied_request_consumes_nothing(store: Backend) {
    let mut s = store.start(CONFIG).await;
    let both = request(
        "test",
        vec![descriptor(&[("user", "a")]), descriptor(&[("window", "a")])],
    );
    for _ in 0..2 {
        assert_eq!(s.call(both.clone()).await.overall_code, OK);
    }
    let r = s.call(both).await;
    assert_eq!(codes(&r), (OVER, vec![OK, OVER]));
    assert_eq!(
        r.statuses[0].limit_remaining, 1,
        "user bucket untouched by the denied request"
    );
    let r = s.call(request("test", one("user", "a"))).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 0));
    s.stop().await;
}

async fn quota_mode_denies_only_when_every_quota_limit_is_over(store: Backend) {
    let mut s = store.start(CONFIG).await;
    let both = request(
        "test",
        vec![
            descriptor(&[("quota_a", "q")]),
            descriptor(&[("quota_b", "q")]),
        ],
    );
    assert_eq!(codes(&s.call(both.clone()).await), (OK, vec![OK, OK]));
    assert_eq!(codes(&s.call(both.clone()).await), (OK, vec![OVER, OK]));
    assert_eq!(codes(&s.call(both).await), (OVER, vec![OVER, OVER]));
    // A strict limit still denies on its own.
    let mixed = request(
        "test",
        vec![
            descriptor(&[("quota_a", "z")]),
            descriptor(&[("blocked", "z")]),
        ],
    );
    assert_eq!(codes(&s.call(mixed).await), (OVER, vec![OK, OVER]));
    s.stop().await;
}

async fn share_threshold_makes_wildcard_matches_share_one_bucket(store: Backend) {
    let mut s = store.start(CONFIG).await;
    assert_eq!(
        s.call(request("test", one("files", "a.pdf")))
            .await
            .overall_code,
        OK
    );
    assert_eq!(
        s.call(request("test", one("files", "b.pdf")))
            .await
            .overall_code,
        OK
    );
    assert_eq!(
        s.call(request("test", one("files", "c.pdf")))
            .await
            .overall_code,
        OVER
    );
    s.stop().await;
}

#[tokio::test]
async fn bad_requests_get_invalid_argument() {
    let mut s = start(CONFIG).await;
    let cases = [
        (
            request("", one("user", "a")),
            "rate limit domain must not be empty",
        ),
        (
            request("test", vec![]),
            "rate limit descriptor list must not be empty",
        ),
        (
            request("test", vec![descriptor(&[("user", "a")]); 10_000]),
            "too many rate limit descriptors: 10000",
        ),
    ];
    for (req, message) in cases {
        let status = s.call_err(req).await;
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains(message), "{}", status.message());
    }
    // A 1 MiB value is answered like any other (and costs no memory beyond its request).
    let big = "v".repeat(1 << 20);
    let r = s.call(request("test", one("user", &big))).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 2));
    s.stop().await;
}

async fn concurrent_callers_never_exceed_the_limit(store: Backend) {
    let s = store.start("domain: c\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 100}\n").await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let mut client = s.client.clone();
            tokio::spawn(async move {
                let mut admitted = 0;
                for _ in 0..10 {
                    let r = client
                        .should_rate_limit(request("c", one("k", "same")))
                        .await
                        .unwrap()
                        .into_inner();
                    admitted += usize::from(r.overall_code == OK);
                }
                admitted
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.unwrap();
    }
    assert_eq!(admitted, 100);
    s.stop().await;
}

#[tokio::test]
async fn at_the_bucket_cap_new_values_share_an_overflow_bucket() {
    let mut s = start_with(
        CONFIG,
        Setup {
            max_buckets: 2,
            ..Setup::default()
        },
    )
    .await;
    for user in ["u1", "u2"] {
        assert_eq!(
            s.call(request("test", one("user", user)))
                .await
                .overall_code,
            OK
        );
    }
    let admitted = {
        let mut n = 0;
        for i in 0..20 {
            n += usize::from(
                s.call(request("test", one("user", &format!("flood{i}"))))
                    .await
                    .overall_code
                    == OK,
            );
        }
        n
    };
    assert_eq!(
        admitted, 3,
        "the flood shares one bucket of the per_user limit"
    );
    // Tracked users keep their own budget.
    let r = s.call(request("test", one("user", "u1"))).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 1));
    s.stop().await;
}

#[tokio::test]
async fn grpc_health_reports_serving() {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let s = start(CONFIG).await;
    let mut health = s.health_client().await;
    for service in ["", "envoy.service.ratelimit.v3.RateLimitService"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service}");
    }
    s.stop().await;
}

#[tokio::test]
async fn stopping_ends_open_health_watch_streams() {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let s = start(CONFIG).await;
    let mut watch = s
        .health_client()
        .await
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let stopping = tokio::spawn(s.stop());
    let mut seen = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(update)) = watch.message().await {
            seen.push(update.status);
        }
    })
    .await;
    assert!(ended.is_ok(), "the watch stream stayed open: {seen:?}");
    assert!(
        seen.contains(&(ServingStatus::NotServing as i32)),
        "{seen:?}"
    );
    stopping.await.unwrap();
}

#[tokio::test]
async fn an_unsettled_reservation_expires_and_its_units_stay_spent() {
    let setup = Setup {
        reservation_ttl: Duration::from_secs(5),
        ..Setup::default()
    };
    let mut s = common::start_with(TOKENS, setup).await;
    let window = |entries: &[(&str, &str)], cost| costing("llm", entries, cost);
    let reserve = [
        ("window", "w"),
        ("tollgate.request", "x"),
        ("tollgate.reserve", "100"),
    ];
    assert_eq!(s.call(window(&reserve, 0)).await.overall_code, OK);
    s.advance(6 * SEC);
    // Expired: the settlement finds nothing held, and charges its 40 on top of the 100.
    let settle = [("window", "w"), ("tollgate.request", "x")];
    let r = s.call(window(&settle, 40)).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 860));
    let metrics = s.admin_get("/metrics").await.1;
    for result in ["reserved", "unmatched"] {
        let line = format!("tollgate_reservations_total{{domain=\"llm\",result=\"{result}\"}} 1");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
    s.stop().await;
}

#[tokio::test]
async fn bad_reservation_entries_get_invalid_argument() {
    let mut s = common::start(TOKENS).await;
    let bad = costing("llm", &[("tenant", "a"), ("tollgate.reserve", "many")], 0);
    let status = s.call_err(bad).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("tollgate.reserve needs tollgate.request"),
        "{}",
        status.message()
    );
    s.stop().await;
}
