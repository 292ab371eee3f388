//! The deployment kit: Kubernetes manifests pass the Kubernetes schemas (offline, PyPI
//! `kubernetes-validate`), and the configs they embed are valid: Envoy bootstraps by
//! `envoy --mode validate`, tollgate limits by tollgate's own loader.
//!
//! Run with `scripts/test`, which installs both tools into `.venv`.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize;
use tollgate::config::{self, Options};

fn tool(variable: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(variable).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.exists(),
        "no {} at {}: run scripts/test, which installs it",
        variable,
        path.display()
    );
    path
}

fn manifests() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in std::fs::read_dir("k8s").unwrap() {
        for file in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            files.push(file.unwrap().path());
        }
    }
    files.sort();
    assert!(!files.is_empty());
    files
}

#[test]
#[ignore = "needs kubernetes-validate: run scripts/test"]
fn manifests_pass_the_kubernetes_schemas() {
    let validate = tool(
        "TOLLGATE_KUBERNETES_VALIDATE",
        ".venv/bin/kubernetes-validate",
    );
    let out = Command::new(validate)
        .arg("--strict")
        .args(manifests())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("ERROR") && !text.contains("WARN"), "{text}");
}

#[derive(Deserialize)]
struct ConfigMap {
    kind: String,
    metadata: Metadata,
    #[serde(default)]
    data: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
}

#[test]
#[ignore = "needs a real Envoy: run scripts/test"]
fn configs_embedded_in_configmaps_are_valid() {
    let envoy = tool("TOLLGATE_ENVOY", ".venv/bin/envoy");
    let mut checked = Vec::new();
    for file in manifests() {
        let text = std::fs::read_to_string(&file).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let Ok(map) = ConfigMap::deserialize(document) else {
                continue;
            };
            if map.kind != "ConfigMap" {
                continue;
            }
            let dir = tempfile::tempdir().unwrap();
            for (name, content) in &map.data {
                std::fs::write(dir.path().join(name), content).unwrap();
            }
            if map.data.contains_key("envoy.yaml") {
                let out = Command::new(&envoy)
                    .args(["--mode", "validate", "--disable-hot-restart", "-c"])
                    .arg(dir.path().join("envoy.yaml"))
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}: {}",
                    map.metadata.name,
                    String::from_utf8_lossy(&out.stderr)
                );
            } else {
                config::load(dir.path(), &Options::default())
                    .unwrap_or_else(|e| panic!("{}: {e}", map.metadata.name));
            }
            checked.push(map.metadata.name);
        }
    }
    assert!(
        checked.contains(&"envoy-bootstrap".to_owned()),
        "{checked:?}"
    );
    assert!(
        checked.contains(&"tollgate-limits".to_owned()),
        "{checked:?}"
    );
}
