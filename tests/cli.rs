//! The `tollgate` binary as operators run it.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::free_port;
use common::redis::Certificates;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Waits for the child to exit, up to `deadline`.
fn wait_exit(child: &mut Child, deadline: Duration) -> Option<i32> {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

fn stderr_of(child: &mut Child) -> String {
    let mut out = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    out
}

#[test]
fn help_explains_every_command() {
    let top = text(&run(&["--help"]).stdout);
    for word in ["serve", "validate", "--log-format"] {
        assert!(top.contains(word), "{top}");
    }
    let serve = text(&run(&["serve", "--help"]).stdout);
    for word in [
        "TOLLGATE_CONFIG",
        "TOLLGATE_GRPC_ADDR",
        "127.0.0.1:8081",
        "127.0.0.1:8080",
        "--max-buckets",
        "--shadow-mode",
        "--no-watch",
        "SIGHUP",
        "SIGTERM",
    ] {
        assert!(serve.contains(word), "missing {word}: {serve}");
    }
    let validate = text(&run(&["validate", "--help"]).stdout);
    assert!(validate.contains("exits 1"), "{validate}");
}

#[test]
fn validate_summarises_valid_configs() {
    let out = run(&["validate", "examples/config"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    assert!(stdout.contains("domain 'api'"), "{stdout}");
}

#[test]
fn validate_lists_every_problem_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "domain: x\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n  - key: k\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("typo.yaml"), "domain: y\ndescriptor: []\n").unwrap();
    let out = run(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("bad.yaml:4: descriptor 'x.k': invalid rate limit unit 'fortnight'"),
        "{stderr}"
    );
    assert!(
        stderr.contains("bad.yaml:5: descriptor 'x.k': duplicate descriptor composite key 'x.k'"),
        "{stderr}"
    );
    assert!(
        stderr.contains("typo.yaml:2: error loading config file: unknown field `descriptor`"),
        "{stderr}"
    );
    assert!(stderr.contains("3 problem(s) found"), "{stderr}");
}

#[test]
fn serve_refuses_an_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.yaml"), "domain: ''\n").unwrap();
    let out = Command::new(BIN)
        .args([
            "serve",
            "--config",
            dir.path().to_str().unwrap(),
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("config file cannot have empty domain"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn redis_tls_files_are_checked_at_startup() {
    let certificates = Certificates::generate();
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("ca.crt");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let missing = dir.path().join("missing.crt");
    let path = |p: &std::path::Path| p.display().to_string();
    // `serve` with these flags must exit 1 at once; returns its stderr.
    let refused = |url: &str, tls: &[(&str, String)]| {
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--config", "examples/config", "--store", "redis"])
            .args(["--redis-url", url])
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"]);
        for (flag, value) in tls {
            command.args([flag, value.as_str()]);
        }
        let out = command.output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        text(&out.stderr)
    };
    let tls_url = "rediss://127.0.0.1:1";
    let ca = |p: String| vec![("--redis-ca-file", p)];

    let stderr = refused(tls_url, &ca(path(&missing)));
    assert!(
        stderr.contains(&format!("--redis-ca-file {}: ", path(&missing))),
        "{stderr}"
    );
    let stderr = refused("redis://user:secret@127.0.0.1:1", &ca(path(&garbage)));
    assert!(
        stderr.contains("--redis-ca-file needs rediss:// URLs, not redis://***@127.0.0.1:1"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("secret"),
        "the password was logged: {stderr}"
    );
    let stderr = refused(tls_url, &ca(path(&garbage)));
    assert!(
        stderr.contains(&format!(
            "--redis-ca-file {}: no PEM certificate in it",
            path(&garbage)
        )),
        "{stderr}"
    );
    // A client key that is not the certificate's.
    let wrong_key = [
        (
            "--redis-client-cert",
            path(&certificates.path("client.crt")),
        ),
        ("--redis-client-key", path(&certificates.path("server.key"))),
    ];
    let stderr = refused(tls_url, &wrong_key);
    assert!(
        stderr.contains(&format!(
            "--redis-client-key {}: ",
            path(&certificates.path("server.key"))
        )),
        "{stderr}"
    );
    let not_a_key = [
        (
            "--redis-client-cert",
            path(&certificates.path("client.crt")),
        ),
        ("--redis-client-key", path(&certificates.path("client.crt"))),
    ];
    let stderr = refused(tls_url, &not_a_key);
    assert!(stderr.contains("no PEM private key in it"), "{stderr}");

    let out = run(&["serve", "--redis-client-cert", "client.crt"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--redis-client-key"));
}

#[test]
fn a_taken_port_is_a_startup_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--config",
            "examples/config",
            "--grpc-addr",
            &format!("127.0.0.1:{port}"),
            "--http-addr",
            "127.0.0.1:0",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), Some(1));
    let stderr = stderr_of(&mut child);
    assert!(
        stderr.contains(&format!("cannot listen for gRPC on 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(stderr.contains("in use"), "{stderr}");
}

#[test]
fn serve_reads_flags_from_the_environment_and_exits_0_on_sigterm() {
    let (grpc, http) = (free_port(), free_port());
    let mut child = Command::new(BIN)
        .arg("serve")
        .env("TOLLGATE_CONFIG", "examples/config")
        .env("TOLLGATE_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
        .env("TOLLGATE_HTTP_ADDR", format!("127.0.0.1:{http}"))
        .env("TOLLGATE_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{http}/healthcheck");
    let end = Instant::now() + Duration::from_secs(20);
    let healthy = loop {
        let ok = std::net::TcpStream::connect(("127.0.0.1", http)).is_ok()
            && std::net::TcpStream::connect(("127.0.0.1", grpc)).is_ok();
        if ok || Instant::now() > end {
            break ok;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(healthy, "server did not start listening on {url}");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), Some(0));
    let stderr = stderr_of(&mut child);
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        serde_json::from_str::<serde_json::Value>(first).is_ok(),
        "JSON logs: {first}"
    );
    assert!(stderr.contains("draining"), "{stderr}");
}

/// GET `path` on the admin port, as JSON, if the server answers.
async fn get_json(http: u16, path: &str) -> Option<serde_json::Value> {
    let response = reqwest::get(format!("http://127.0.0.1:{http}{path}"))
        .await
        .ok()?;
    response.json().await.ok()
}

#[tokio::test]
async fn sighup_reloads_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("limits.yaml");
    std::fs::write(&file, "domain: d\n").unwrap();
    let (grpc, http) = (free_port(), free_port());
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--no-watch",
            "--config",
            dir.path().to_str().unwrap(),
        ])
        .args([
            "--grpc-addr",
            &format!("127.0.0.1:{grpc}"),
            "--http-addr",
            &format!("127.0.0.1:{http}"),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let Some(status) = get_json(http, "/config").await {
            break status;
        }
        assert!(Instant::now() < end, "server did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    std::fs::write(&file, "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n").unwrap();
    let kill = |signal: &str| {
        let ok = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal}");
    };
    kill("-HUP");
    let reloaded = loop {
        let status = get_json(http, "/config").await.unwrap();
        if status["version"] != first["version"] {
            break status;
        }
        assert!(Instant::now() < end, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(reloaded["loaded_by"], "SIGHUP");
    kill("-TERM");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), Some(0));
}

#[test]
fn redis_flags_without_the_redis_store_are_refused_by_name() {
    for (flag, value) in [
        ("--consistency", "cached"),
        ("--redis-failure", "deny"),
        ("--redis-timeout", "20ms"),
        ("--redis-prefix", "x:"),
    ] {
        let out = run(&["serve", "--config", "examples/config", flag, value]);
        assert_eq!(out.status.code(), Some(1), "{flag}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(flag) && stderr.contains("--store redis"),
            "{flag}: {stderr}"
        );
    }
    let out = Command::new(BIN)
        .args(["serve", "--config", "examples/config", "--store", "memory"])
        .env("TOLLGATE_REDIS_URL", "redis://127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("TOLLGATE_REDIS_URL"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_bad_redis_url_is_named_without_its_password() {
    let out = run(&[
        "serve",
        "--config",
        "examples/config",
        "--redis-url",
        "redis://user:secret@[bad:6379",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("--redis-url redis://***@"), "{stderr}");
    assert!(!stderr.contains("secret"), "{stderr}");
}

#[test]
fn durations_take_units_addresses_take_names_and_validate_reads_the_environment() {
    let out = run(&[
        "serve",
        "--config",
        "examples/config",
        "--drain-timeout",
        "soon",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--drain-timeout"));
    for (flag, value) in [
        ("--drain-timeout", "10s"),
        ("--drain-timeout", "10"),
        ("--sweep-interval", "500ms"),
        ("--grpc-addr", "localhost:0"),
        ("--rlqs-assignment-ttl", "20s"),
        ("--rlqs-idle-after", "2m"),
    ] {
        // Accepted: then `validate`-like failure comes from the config, not the flag.
        let out = run(&["serve", "--config", "/nonexistent", flag, value]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{flag} {value}: {}",
            text(&out.stderr)
        );
    }
    // Envoy reads an assignment's seconds only.
    let out = run(&[
        "serve",
        "--config",
        "examples/config",
        "--rlqs-assignment-ttl",
        "1500ms",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("whole seconds"),
        "{}",
        text(&out.stderr)
    );
    let out = Command::new(BIN)
        .arg("validate")
        .env("TOLLGATE_CONFIG", "examples/config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn help_never_shows_a_password_from_the_environment() {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .env("TOLLGATE_REDIS_URL", "redis://:hunter2@redis:6379")
        .output()
        .unwrap();
    let help = text(&out.stdout);
    assert!(help.contains("TOLLGATE_REDIS_URL"), "{help}");
    assert!(!help.contains("hunter2"), "{help}");
}

#[tokio::test]
async fn a_relative_config_directory_is_reloaded_on_an_edit() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("limits")).unwrap();
    let file = dir.path().join("limits/d.yaml");
    std::fs::write(&file, "domain: d\n").unwrap();
    let (grpc, http) = (free_port(), free_port());
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .args(["serve", "--config", "limits"])
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let Some(status) = get_json(http, "/config").await {
            break status;
        }
        assert!(Instant::now() < end, "server did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    std::fs::write(&file, "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n").unwrap();
    loop {
        let status = get_json(http, "/config").await.unwrap();
        if status["version"] != first["version"] {
            assert_eq!(status["loaded_by"], "file change");
            break;
        }
        assert!(Instant::now() < end, "the edit was never reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn service_api_flags_that_cannot_work_are_refused_at_startup() {
    let help = text(&run(&["serve", "--help"]).stdout);
    for flag in [
        "--api-addr",
        "TOLLGATE_API_ADDR",
        "--api-admin-token-file",
        "TOLLGATE_API_ADMIN_TOKEN_FILE",
        "--state-dir",
        "TOLLGATE_STATE_DIR",
    ] {
        assert!(help.contains(flag), "{flag} in --help");
    }
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "my-raw-admin-token\n").unwrap();
    let tokens = tokens.to_str().unwrap();
    let ports = ["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"];
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--config", "examples/config"];
        args.extend(ports);
        args.extend(extra);
        run(&args)
    };
    let cases: [(&[&str], &str); 3] = [
        (&["--api-admin-token-file", tokens], "needs --api-addr"),
        (
            &[
                "--api-addr",
                "127.0.0.1:0",
                "--api-admin-token-file",
                tokens,
            ],
            "line 1: not sha256:",
        ),
        (
            &[
                "--state-dir",
                tokens,
                "--store",
                "redis",
                "--redis-url",
                "redis://127.0.0.1:1",
            ],
            "--state-dir keeps runtime tenants in memory mode",
        ),
    ];
    for (extra, expected) in cases {
        let out = serve(extra);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {stderr}");
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
        assert!(!stderr.contains("my-raw-admin-token"), "{stderr}");
    }
}

/// Starts `tollgate serve` on examples/config with the service API on `api`, admin tokens from
/// `tokens` and runtime tenants in `state`, all given by environment; returns once it answers.
async fn serve_api(api: u16, tokens: &std::path::Path, state: &std::path::Path) -> Child {
    let child = Command::new(BIN)
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .env("TOLLGATE_CONFIG", "examples/config")
        .env("TOLLGATE_API_ADDR", format!("127.0.0.1:{api}"))
        .env("TOLLGATE_API_ADMIN_TOKEN_FILE", tokens)
        .env("TOLLGATE_STATE_DIR", state)
        .env("TOLLGATE_LOG_LEVEL", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("http://127.0.0.1:{api}/openapi.json"))
        .await
        .is_err()
    {
        assert!(Instant::now() < end, "the service API did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

#[tokio::test]
async fn runtime_tenants_outlive_the_process_under_a_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let admin = "cli-admin-token";
    std::fs::write(&tokens, tollgate::authz::hash_key(admin)).unwrap();
    let state = dir.path().join("state");
    let api = free_port();
    let base = format!("http://127.0.0.1:{api}/v1/domains/saas/tenants");
    let client = reqwest::Client::new();
    let mut first = serve_api(api, &tokens, &state).await;
    let created = client
        .post(&base)
        .bearer_auth(admin)
        .body(r#"{"id": "initech", "tier": "free"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let key = client
        .post(format!("{base}/initech/keys"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    let key: serde_json::Value = key.json().await.unwrap();
    let kill = |child: &Child| {
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
    };
    assert!(kill(&first).success());
    assert_eq!(wait_exit(&mut first, Duration::from_secs(20)), Some(0));
    let mut second = serve_api(api, &tokens, &state).await;
    let read: serde_json::Value = client
        .get(format!("{base}/initech"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["source"], "api");
    assert_eq!(read["keys"][0]["id"], key["id"]);
    assert!(kill(&second).success());
    assert_eq!(wait_exit(&mut second, Duration::from_secs(20)), Some(0));
}
