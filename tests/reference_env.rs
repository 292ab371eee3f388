//! Reference mode through the real binary: started with no tollgate flag and no `TOLLGATE_*`
//! variable, or as `ratelimit` (Envoy Gateway runs `/bin/ratelimit`), tollgate reads the
//! environment of envoyproxy/ratelimit, counts as it does (fixed windows, every hit counted),
//! and refuses by name what it cannot serve.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::free_port;
use common::redis::RedisServer;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

const LIMITS: &str = "domain: api\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 2}\n";

/// The binary, reached as `name` (a symlink in `dir` when not `tollgate`), with exactly `env`.
fn command(dir: &std::path::Path, name: &str, env: &[(&str, String)]) -> Command {
    let program = if name == "tollgate" {
        std::path::PathBuf::from(BIN)
    } else {
        let link = dir.join(name);
        std::os::unix::fs::symlink(BIN, &link).unwrap();
        link
    };
    let mut command = Command::new(program);
    command.env_clear();
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

/// Waits for `GET /healthcheck` on `http` to answer 200, the child alive.
async fn healthy(child: &mut Child, http: u16) {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let answered = reqwest::get(format!("http://127.0.0.1:{http}/healthcheck"))
            .await
            .is_ok_and(|r| r.status().is_success());
        if answered {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "tollgate exited at start"
        );
        assert!(Instant::now() < end, "tollgate did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn decide(http: u16, user: &str) -> (u16, serde_json::Value) {
    let body = serde_json::json!({"domain": "api", "descriptors": [{"entries": [{"key": "user", "value": user}]}]});
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{http}/json"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn bin_ratelimit_serves_the_reference_runtime_layout_and_counts_as_it_does() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("redis.sock");
    let redis = RedisServer::start_with(&["--unixsocket", socket.to_str().unwrap()]);
    let config = dir.path().join("runtime/ratelimit/config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("api.yaml"), LIMITS).unwrap();
    std::fs::write(config.join("notes.txt"), "not a limit file").unwrap();
    let (grpc, http, prometheus) = (free_port(), free_port(), free_port());
    let env = [
        (
            "RUNTIME_ROOT",
            dir.path().join("runtime").display().to_string(),
        ),
        ("RUNTIME_SUBDIRECTORY", "ratelimit".to_owned()),
        ("RUNTIME_WATCH_ROOT", "false".to_owned()),
        ("GRPC_HOST", "127.0.0.1".to_owned()),
        ("GRPC_PORT", grpc.to_string()),
        ("HOST", "127.0.0.1".to_owned()),
        ("PORT", http.to_string()),
        ("USE_STATSD", "false".to_owned()),
        // The reference's defaults: REDIS_SOCKET_TYPE=unix, REDIS_TYPE=single.
        ("REDIS_URL", socket.display().to_string()),
        ("LIMIT_RESPONSE_HEADERS_ENABLED", "true".to_owned()),
        ("USE_PROMETHEUS", "true".to_owned()),
        ("PROMETHEUS_ADDR", format!("127.0.0.1:{prometheus}")),
        ("PROMETHEUS_PATH", "/stats/prometheus".to_owned()),
    ];
    let mut child = command(dir.path(), "ratelimit", &env)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    healthy(&mut child, http).await;

    for _ in 0..2 {
        assert_eq!(decide(http, "u").await.0, 200);
    }
    let (status, denied) = decide(http, "u").await;
    assert_eq!(status, 429);
    assert_eq!(denied["statuses"][0]["code"], "OVER_LIMIT");
    let rlconfig = reqwest::get(format!("http://127.0.0.1:{http}/rlconfig"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(rlconfig.contains("algorithm=fixed_window"), "{rlconfig}");
    assert!(
        !redis.keys("tollgate:*").is_empty(),
        "counted in the Redis at REDIS_URL's socket"
    );
    let metrics = reqwest::get(format!("http://127.0.0.1:{prometheus}/stats/prometheus"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tollgate_rate_limit_over_limit_hits_total{domain=\"api\""),
        "metrics on PROMETHEUS_ADDR at PROMETHEUS_PATH: {metrics}"
    );

    child.kill().unwrap();
    child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("reference mode"), "{stderr}");
    assert!(
        stderr.contains("notes.txt"),
        "an unread file is named: {stderr}"
    );
}

#[tokio::test]
async fn every_hit_counts_unless_stop_cache_key_increment_when_overlimit() {
    for (stop, remaining_after_denials) in [("false", 0), ("true", 1)] {
        let dir = tempfile::tempdir().unwrap();
        let redis = RedisServer::start();
        let config = dir.path().join("config");
        std::fs::create_dir_all(&config).unwrap();
        // A window of 3: two hits, then a request of 2 that does not fit.
        std::fs::write(config.join("api.yaml"), LIMITS.replace("2}", "3}")).unwrap();
        let http = free_port();
        let env = [
            ("RUNTIME_ROOT", dir.path().display().to_string()),
            ("GRPC_HOST", "127.0.0.1".to_owned()),
            ("GRPC_PORT", free_port().to_string()),
            ("HOST", "127.0.0.1".to_owned()),
            ("PORT", http.to_string()),
            ("REDIS_SOCKET_TYPE", "tcp".to_owned()),
            ("REDIS_URL", format!("127.0.0.1:{}", redis.port)),
            ("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", stop.to_owned()),
        ];
        let mut child = command(dir.path(), "tollgate", &env)
            .arg("serve")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        healthy(&mut child, http).await;
        decide(http, "u").await;
        decide(http, "u").await;
        let body = serde_json::json!({"domain": "api", "hitsAddend": 2, "descriptors": [{"entries": [{"key": "user", "value": "u"}]}]});
        let status = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{http}/json"))
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 429);
        let check = serde_json::json!({"domain": "api", "descriptors": [{"entries": [{"key": "user", "value": "u"}], "hitsAddend": 0}]});
        let answer: serde_json::Value = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{http}/json"))
            .body(check.to_string())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let remaining = answer["statuses"][0]["limitRemaining"]
            .as_u64()
            .unwrap_or(0);
        assert_eq!(
            remaining, remaining_after_denials,
            "STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT={stop}: {answer}"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

#[test]
fn what_cannot_be_served_stops_the_start_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    for (env, words) in [
        (
            vec![("REDIS_TYPE", "sentinel".to_owned())],
            vec!["REDIS_TYPE=sentinel needs REDIS_URL=<master name>,<sentinel host:port>"],
        ),
        (
            vec![
                ("BACKEND_TYPE", "memcache".to_owned()),
                ("GRPC_UDS", "/tmp/x.sock".to_owned()),
            ],
            vec!["BACKEND_TYPE=memcache", "GRPC_UDS"],
        ),
    ] {
        let out = command(dir.path(), "tollgate", &env)
            .arg("serve")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        for word in words {
            assert!(stderr.contains(word), "{stderr}");
        }
    }
    // One tollgate variable and the command line is tollgate's: --config is then required.
    let out = command(
        dir.path(),
        "tollgate",
        &[("TOLLGATE_LOG_FORMAT", "json".to_owned())],
    )
    .arg("serve")
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}
