//! Crash-recovery snapshots of the memory store, through the real binary: an exhausted key
//! stays exhausted across a crash (SIGKILL) or a graceful restart, a changed limit starts
//! fresh, a reservation is still held after a restart, and a corrupt or foreign snapshot is
//! ignored, never fatal.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::process::Tollgate;

const LIMITS: &str = "domain: d\ndescriptors:\n  - key: user\n    rate_limit: {unit: hour, requests_per_unit: 20}\n  - key: window\n    rate_limit: {unit: hour, requests_per_unit: 20, algorithm: fixed_window}\n  - key: log\n    rate_limit: {unit: hour, requests_per_unit: 20, algorithm: sliding_log}\n";

/// A config directory holding `yaml`, and where its snapshot goes.
fn setup(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("limits")).unwrap();
    std::fs::write(dir.path().join("limits/d.yaml"), yaml).unwrap();
    dir
}

async fn serve(dir: &Path) -> Tollgate {
    Tollgate::serve(&[
        "--config",
        dir.join("limits").to_str().unwrap(),
        "--snapshot-path",
        dir.join("buckets.snapshot").to_str().unwrap(),
        "--snapshot-interval",
        "100ms",
    ])
    .await
}

/// Waits until the snapshot file exists and is newer than `since`.
async fn snapshot_written(dir: &Path, since: std::time::SystemTime) {
    let path = dir.join("buckets.snapshot");
    let end = Instant::now() + Duration::from_secs(10);
    while !std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .is_ok_and(|modified| modified > since)
    {
        assert!(Instant::now() < end, "no snapshot written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_exhausted_key_stays_exhausted_across_a_crash() {
    let dir = setup(LIMITS);
    let first = serve(dir.path()).await;
    for key in ["user", "window", "log"] {
        assert_eq!(first.admitted("d", &[(key, "u")], 25).await, 20, "{key}");
    }
    let spent = std::time::SystemTime::now();
    snapshot_written(dir.path(), spent).await;
    // Past the next write too, so it has every hit above.
    snapshot_written(dir.path(), std::time::SystemTime::now()).await;
    first.crash();

    let second = serve(dir.path()).await;
    for key in ["user", "window", "log"] {
        assert_eq!(
            second.admitted("d", &[(key, "u")], 5).await,
            0,
            "{key}: spent before the crash, spent after it"
        );
    }
    assert_eq!(second.admitted("d", &[("user", "other")], 3).await, 3);
    second.stop();
}

#[tokio::test]
async fn a_graceful_stop_writes_the_last_hits() {
    let dir = setup(LIMITS);
    let first = Tollgate::serve(&[
        "--config",
        dir.path().join("limits").to_str().unwrap(),
        "--snapshot-path",
        dir.path().join("buckets.snapshot").to_str().unwrap(),
        "--snapshot-interval",
        "1h",
    ])
    .await;
    assert_eq!(first.admitted("d", &[("user", "u")], 25).await, 20);
    first.stop();
    let second = serve(dir.path()).await;
    assert_eq!(second.admitted("d", &[("user", "u")], 5).await, 0);
    second.stop();
}

#[tokio::test]
async fn a_reservation_held_across_a_restart_gives_back_what_was_not_used() {
    let dir = setup(
        "domain: llm\ndescriptors:\n  - key: tenant\n    rate_limit: {unit: hour, requests_per_unit: 1000}\n",
    );
    let first = serve(dir.path()).await;
    let reserve = [
        ("tenant", "t"),
        ("tollgate.request", "r1"),
        ("tollgate.reserve", "500"),
    ];
    assert_eq!(first.call("llm", &reserve, 0).await, (200, 500));
    first.stop();
    let second = serve(dir.path()).await;
    assert_eq!(second.remaining("llm", &[("tenant", "t")]).await, 500);
    // The stream ends after the restart, having used 40 of the 500 held.
    let settle = [("tenant", "t"), ("tollgate.request", "r1")];
    assert_eq!(second.call("llm", &settle, 40).await, (200, 960));
    second.stop();
}

#[tokio::test]
async fn a_changed_limit_starts_fresh_and_the_others_are_restored() {
    let dir = setup(LIMITS);
    let first = serve(dir.path()).await;
    for key in ["user", "window"] {
        assert_eq!(first.admitted("d", &[(key, "u")], 20).await, 20);
    }
    first.stop();
    let changed = LIMITS.replace(
        "key: user\n    rate_limit: {unit: hour, requests_per_unit: 20}",
        "key: user\n    rate_limit: {unit: hour, requests_per_unit: 30}",
    );
    std::fs::write(dir.path().join("limits/d.yaml"), changed).unwrap();
    let second = serve(dir.path()).await;
    assert_eq!(second.admitted("d", &[("user", "u")], 35).await, 30);
    assert_eq!(second.admitted("d", &[("window", "u")], 5).await, 0);
    second.stop();
}

#[tokio::test]
async fn a_corrupt_or_foreign_snapshot_is_ignored() {
    for garbage in [b"not a snapshot at all".to_vec(), {
        // A real header, then a damaged body.
        let mut bytes = b"tollgate memory snapshot\n\x01\x00\x00\x00".to_vec();
        bytes.extend([7u8; 64]);
        bytes
    }] {
        let dir = setup(LIMITS);
        std::fs::write(dir.path().join("buckets.snapshot"), garbage).unwrap();
        let server = serve(dir.path()).await;
        assert_eq!(server.admitted("d", &[("user", "u")], 21).await, 20);
        server.stop();
    }
}

#[tokio::test]
async fn snapshots_need_the_memory_store() {
    let dir = setup(LIMITS);
    let out = std::process::Command::new(common::process::BIN)
        .args(["serve", "--config", dir.path().to_str().unwrap()])
        .args(["--store", "redis", "--redis-url", "redis://127.0.0.1:1"])
        .args(["--snapshot-path", "x.snapshot"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--snapshot-path"), "{stderr}");
}
