//! Hot reload: every way a configuration changes, errors, state kept, and no failed call.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{
    Setup, TestServer, descriptor, eventually, request, start, start_at, start_in, start_with,
};
use serde_json::Value;
use tollgate::reload::Trigger;

const DEADLINE: Duration = Duration::from_secs(10);

fn limits(domain: &str, per_user: u32) -> String {
    format!(
        "domain: {domain}\ndescriptors:\n  - key: user\n    rate_limit: {{unit: minute, requests_per_unit: {per_user}}}\n  - key: window\n    rate_limit: {{unit: minute, requests_per_unit: 2, algorithm: fixed_window}}\n"
    )
}

fn watching() -> Setup {
    Setup {
        watch: true,
        ..Setup::default()
    }
}

/// The requests_per_unit the server applies to `user=u` in domain `d` now.
async fn user_limit(s: &mut TestServer) -> Option<u32> {
    let mut req = request("d", vec![descriptor(&[("user", "probe")])]);
    req.descriptors[0].hits_addend =
        Some(envoy_types::pb::google::protobuf::UInt64Value { value: 0 });
    let r = s.call(req).await;
    r.statuses[0]
        .current_limit
        .as_ref()
        .map(|l| l.requests_per_unit)
}

/// Waits until the version in force differs from `before`.
async fn wait_new_version(s: &TestServer, before: &str) {
    let reloader = s.reloader.clone();
    let changed = eventually(DEADLINE, || reloader.status().version != before).await;
    assert!(
        changed,
        "no reload within {DEADLINE:?}: {:?}",
        s.reloader.status()
    );
}

#[tokio::test]
async fn an_in_place_write_is_picked_up() {
    let mut s = start_with(&limits("d", 3), watching()).await;
    let before = s.reloader.status().version;
    fs::write(s.dir.join("limits.yaml"), limits("d", 10)).unwrap();
    wait_new_version(&s, &before).await;
    assert_eq!(user_limit(&mut s).await, Some(10));
    assert_eq!(s.reloader.status().loaded_by, "file change");
    s.stop().await;
}

#[tokio::test]
async fn a_single_file_config_is_watched_too() {
    let setup = Setup {
        single_file: true,
        ..watching()
    };
    let mut s = start_with(&limits("d", 3), setup).await;
    let before = s.reloader.status().version;
    fs::write(s.dir.join("limits.yaml"), limits("d", 9)).unwrap();
    wait_new_version(&s, &before).await;
    assert_eq!(user_limit(&mut s).await, Some(9));
    assert_eq!(s.reloader.status().files.len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn a_rename_over_is_picked_up() {
    let mut s = start_with(&limits("d", 3), watching()).await;
    let before = s.reloader.status().version;
    let tmp = s.dir.join(".limits.yaml.swp");
    fs::write(&tmp, limits("d", 7)).unwrap();
    fs::rename(&tmp, s.dir.join("limits.yaml")).unwrap();
    wait_new_version(&s, &before).await;
    assert_eq!(user_limit(&mut s).await, Some(7));
    s.stop().await;
}

#[tokio::test]
async fn new_and_deleted_files_add_and_remove_domains() {
    let s = start_with(&limits("d", 3), watching()).await;
    fs::write(s.dir.join("other.yml"), limits("other", 1)).unwrap();
    let reloader = s.reloader.clone();
    assert!(eventually(DEADLINE, || reloader.status().domains == ["d", "other"]).await);
    fs::remove_file(s.dir.join("other.yml")).unwrap();
    assert!(eventually(DEADLINE, || reloader.status().domains == ["d"]).await);
    s.stop().await;
}

/// Lays out a directory the way the kubelet mounts a ConfigMap.
fn configmap(dir: &Path, generation: &str, yaml: &str) {
    let data = dir.join(generation);
    fs::create_dir(&data).unwrap();
    fs::write(data.join("limits.yaml"), yaml).unwrap();
    let tmp = dir.join("..data_tmp");
    symlink(generation, &tmp).unwrap();
    fs::rename(&tmp, dir.join("..data")).unwrap();
    if !dir.join("limits.yaml").exists() {
        symlink("..data/limits.yaml", dir.join("limits.yaml")).unwrap();
    }
}

#[tokio::test]
async fn a_configmap_symlink_swap_is_picked_up() {
    let tempdir = tempfile::tempdir().unwrap();
    configmap(tempdir.path(), "..2026_11_22_01", &limits("d", 3));
    let mut s = start_in(tempdir, watching()).await;
    assert_eq!(user_limit(&mut s).await, Some(3));
    let before = s.reloader.status().version;
    configmap(&s.dir, "..2026_11_22_02", &limits("d", 30));
    fs::remove_dir_all(s.dir.join("..2026_11_22_01")).unwrap();
    wait_new_version(&s, &before).await;
    assert_eq!(user_limit(&mut s).await, Some(30));
    s.stop().await;
}

#[tokio::test]
async fn a_retargeted_config_symlink_is_followed() {
    // --config root/current, a symlink to a directory, as deploy tools switch releases.
    let tempdir = tempfile::tempdir().unwrap();
    let root = tempdir.path().to_path_buf();
    for (version, limit) in [("v1", 3), ("v2", 4)] {
        fs::create_dir(root.join(version)).unwrap();
        fs::write(root.join(version).join("limits.yaml"), limits("d", limit)).unwrap();
    }
    symlink("v1", root.join("current")).unwrap();
    let mut s = start_at(tempdir, "current", watching()).await;
    assert_eq!(user_limit(&mut s).await, Some(3));

    let before = s.reloader.status().version;
    symlink("v2", root.join("current.tmp")).unwrap();
    fs::rename(root.join("current.tmp"), root.join("current")).unwrap();
    wait_new_version(&s, &before).await;
    assert_eq!(user_limit(&mut s).await, Some(4));

    // The watch follows the new target: an edit in v2 is picked up.
    let before = s.reloader.status().version;
    fs::write(root.join("v2").join("limits.yaml"), limits("d", 5)).unwrap();
    wait_new_version(&s, &before).await;
    assert_eq!(user_limit(&mut s).await, Some(5));
    s.stop().await;
}

#[tokio::test]
async fn an_invalid_change_keeps_the_last_good_config_until_a_valid_one() {
    let mut s = start_with(&limits("d", 3), watching()).await;
    let good = s.reloader.status().version;
    fs::write(s.dir.join("limits.yaml"), "domain: d\ndescriptors:\n  - key: user\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n").unwrap();
    let reloader = s.reloader.clone();
    assert!(eventually(DEADLINE, || reloader.status().last_error.is_some()).await);
    let status = s.reloader.status();
    assert_eq!(status.version, good);
    let error = &status.last_error.unwrap().errors[0];
    assert!(
        error.contains("limits.yaml:4: descriptor 'd.user': invalid rate limit unit 'fortnight'"),
        "{error}"
    );
    assert_eq!(
        user_limit(&mut s).await,
        Some(3),
        "the old limits still apply"
    );

    fs::write(s.dir.join("limits.yaml"), limits("d", 5)).unwrap();
    wait_new_version(&s, &good).await;
    assert!(s.reloader.status().last_error.is_none());
    assert_eq!(user_limit(&mut s).await, Some(5));
    s.stop().await;
}

/// POST `path` on the admin port, with the JSON answer.
async fn post(s: &TestServer, path: &str) -> (u16, Value) {
    let (status, body) = s.admin_post(path, "").await;
    (status, serde_json::from_str(&body).unwrap())
}

#[tokio::test]
async fn post_reload_get_config_and_rlconfig() {
    let s = start(&limits("d", 3)).await;
    let (status, body) = s.admin_get("/config").await;
    assert_eq!(status, 200);
    let config: Value = serde_json::from_str(&body).unwrap();
    let v1 = config["version"].as_str().unwrap().to_owned();
    assert!(v1.starts_with("sha256:") && v1.len() == 71, "{v1}");
    assert_eq!(config["loaded_by"], "startup");
    assert!(
        config["files"][0]
            .as_str()
            .unwrap()
            .ends_with("limits.yaml")
    );
    assert!(config["last_error"].is_null());

    fs::write(s.dir.join("limits.yaml"), limits("d", 4)).unwrap();
    assert_eq!(
        s.admin_get("/config").await.1,
        body,
        "without a watcher nothing changes by itself"
    );
    let (status, answer) = post(&s, "/reload").await;
    assert_eq!((status, answer["result"].as_str()), (200, Some("applied")));
    assert_ne!(answer["status"]["version"], v1.as_str());
    assert_eq!(answer["status"]["loaded_by"], "POST /reload");
    let (status, answer) = post(&s, "/reload").await;
    assert_eq!(
        (status, answer["result"].as_str()),
        (200, Some("unchanged"))
    );

    fs::write(s.dir.join("limits.yaml"), "domain: d\nbogus: 1\n").unwrap();
    let (status, answer) = post(&s, "/reload").await;
    assert_eq!(status, 422);
    assert!(
        answer["errors"][0]
            .as_str()
            .unwrap()
            .contains("limits.yaml:2: error loading config file: unknown field `bogus`"),
        "{answer}"
    );
    let (_, config) = s.admin_get("/config").await;
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["failures"], 1);
    assert_eq!(config["last_error"]["trigger"], "POST /reload");

    let (status, text) = s.admin_get("/rlconfig").await;
    assert_eq!(status, 200);
    assert_eq!(
        text,
        "d.user: unit=MINUTE requests_per_unit=4 algorithm=token_bucket burst=4, shadow_mode: false\nd.window: unit=MINUTE requests_per_unit=2 algorithm=fixed_window burst=2, shadow_mode: false\n"
    );
    s.stop().await;
}

#[tokio::test]
async fn buckets_survive_reloads_and_removed_limits_free_theirs() {
    let mut s = start(&limits("d", 10)).await;
    let user = || request("d", vec![descriptor(&[("user", "alice")])]);
    let window = || request("d", vec![descriptor(&[("window", "w")])]);
    for _ in 0..8 {
        s.call(user()).await;
    }
    s.call(window()).await;

    // Same limits, different bytes: everything kept exactly.
    fs::write(
        s.dir.join("limits.yaml"),
        format!("# a comment\n{}", limits("d", 10)),
    )
    .unwrap();
    s.reloader.reload(Trigger::Http).await.unwrap();
    assert_eq!(s.call(user()).await.statuses[0].limit_remaining, 1);
    assert_eq!(s.call(window()).await.statuses[0].limit_remaining, 0);

    // Raised limit: the 9 consumed stay consumed (not a fresh 20).
    fs::write(
        s.dir.join("limits.yaml"),
        limits("d", 20).replace("requests_per_unit: 2,", "requests_per_unit: 5,"),
    )
    .unwrap();
    s.reloader.reload(Trigger::Http).await.unwrap();
    assert_eq!(s.call(user()).await.statuses[0].limit_remaining, 10);
    assert_eq!(s.call(window()).await.statuses[0].limit_remaining, 2);

    // Removed limit: its buckets are freed at once.
    let live = s.store_parts(|p| p.memory.unwrap().live());
    fs::write(s.dir.join("limits.yaml"), "domain: d\ndescriptors:\n  - key: window\n    rate_limit: {unit: minute, requests_per_unit: 5, algorithm: fixed_window}\n").unwrap();
    s.reloader.reload(Trigger::Http).await.unwrap();
    assert_eq!(s.store_parts(|p| p.memory.unwrap().live()), live - 1);
    assert_eq!(s.call(window()).await.statuses[0].limit_remaining, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_fails_across_many_reloads() {
    let s = start(&limits("d", 1_000_000)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (calls, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let callers: Vec<_> = (0..4)
        .map(|i| {
            let (mut client, stop) = (s.client.clone(), stop.clone());
            let (calls, failures) = (calls.clone(), failures.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let req = request("d", vec![descriptor(&[("user", &format!("caller{i}"))])]);
                    match client.should_rate_limit(req).await {
                        Ok(r) if r.get_ref().statuses.len() == 1 => {
                            calls.fetch_add(1, Ordering::Relaxed)
                        }
                        _ => failures.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for round in 0..40 {
        let yaml = if round % 2 == 0 {
            limits("d", 999_999)
        } else {
            limits("d", 1_000_000)
        };
        fs::write(s.dir.join("limits.yaml"), yaml).unwrap();
        s.reloader.reload(Trigger::Http).await.unwrap();
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(calls.load(Ordering::Relaxed) > 0);
    assert_eq!(s.reloader.status().loads, 41);
    s.stop().await;
}
