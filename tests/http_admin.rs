//! The HTTP admin port: health and the JSON form of ShouldRateLimit.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use common::start;
use serde_json::{Value, json};

const CONFIG: &str = "domain: web\ndescriptors:\n  - key: user\n    rate_limit: {name: per_user, unit: minute, requests_per_unit: 2}\n";

#[tokio::test]
async fn healthcheck_answers_ok() {
    let s = start(CONFIG).await;
    assert_eq!(s.admin_get("/healthcheck").await, (200, "OK".to_owned()));
    s.stop().await;
}

#[tokio::test]
async fn json_answers_200_then_429_like_the_reference_service() {
    let s = start(CONFIG).await;
    let body = r#"{"domain":"web","descriptors":[{"entries":[{"key":"user","value":"a"}]}]}"#;
    let (status, text) = s.admin_post("/json", body).await;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        answer,
        json!({"overallCode":"OK","statuses":[{"code":"OK","currentLimit":{"name":"per_user","requestsPerUnit":2,"unit":"MINUTE"},"limitRemaining":1,"durationUntilReset":"30s"}]})
    );
    s.admin_post("/json", body).await;
    let (status, text) = s.admin_post("/json", body).await;
    assert_eq!(status, 429);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["overallCode"],
        "OVER_LIMIT"
    );
    s.stop().await;
}

#[tokio::test]
async fn json_rejects_bad_input_with_400_and_a_message() {
    let s = start(CONFIG).await;
    for (body, message) in [
        ("{", "invalid RateLimitRequest JSON"),
        (
            r#"{"domain":"web","descriptors":[],"bogus":1}"#,
            "unknown field `bogus`",
        ),
        (
            r#"{"domain":"","descriptors":[{"entries":[]}]}"#,
            "rate limit domain must not be empty",
        ),
        (
            r#"{"domain":"web","descriptors":[]}"#,
            "descriptor list must not be empty",
        ),
    ] {
        let (status, text) = s.admin_post("/json", body).await;
        assert_eq!(status, 400, "{body}");
        assert!(text.contains(message), "{body}: {text}");
    }
    s.stop().await;
}
