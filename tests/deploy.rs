//! The deployment kit: Kubernetes manifests (`k8s/`), the Helm chart (`helm/tollgate/`) and the
//! docker-compose playground.
//!
//! - Manifests, and the chart rendered for several value sets, pass the Kubernetes schemas
//!   (offline, PyPI `kubernetes-validate`); the Prometheus Operator's ServiceMonitor, a CRD the
//!   tool cannot know, is checked by hand instead.
//! - The chart is linted and rendered by the real Helm library (Helm v4 through PyPI
//!   `helm-python-sdk`); its schema rejects typos; its README documents every value.
//! - The configs they embed are valid: Envoy bootstraps by `envoy --mode validate`, tollgate
//!   limits by tollgate's own loader, tollgate's arguments and environment by `tollgate serve`'s
//!   own parser; and the pieces fit together (names, ports, Secrets, selectors).
//! - The compose file passes the Compose specification's schema (PyPI `check-jsonschema`).
//!
//! Run with `scripts/test`, which installs the tools into `.venv`. The tests that need a tool
//! are `#[ignore]`d so that a plain `cargo test` runs without them.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{output_text, tool};
use serde::Deserialize;
use serde_json::json;
use serde_yaml::Value;
use tollgate::config::{self, Options};

const TOLLGATE: &str = env!("CARGO_BIN_EXE_tollgate");
const CHART: &str = "helm/tollgate";

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

/// Runs `kubernetes-validate --strict` on `files`; fails on any error or warning.
fn kubernetes_validate(files: &[PathBuf]) -> String {
    let validate = tool(
        "TOLLGATE_KUBERNETES_VALIDATE",
        ".venv/bin/kubernetes-validate",
    );
    let out = Command::new(validate)
        .arg("--strict")
        .args(files)
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("ERROR") && !text.contains("WARN"), "{text}");
    text
}

/// Every YAML document of a text, without the empty ones.
fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|document| Value::deserialize(document).unwrap())
        .filter(|document| !document.is_null())
        .collect()
}

fn kind(document: &Value) -> &str {
    document["kind"].as_str().unwrap_or_default()
}

fn name(document: &Value) -> &str {
    document["metadata"]["name"].as_str().unwrap_or_default()
}

fn string(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value:?}"))
}

fn list(value: &Value) -> &[Value] {
    value.as_sequence().map_or(&[], Vec::as_slice)
}

fn the<'a>(documents: &'a [Value], wanted: &str) -> &'a Value {
    let found: Vec<_> = documents.iter().filter(|d| kind(d) == wanted).collect();
    assert_eq!(found.len(), 1, "one {wanted} expected");
    found[0]
}

fn container<'a>(deployment: &'a Value, wanted: &str) -> &'a Value {
    list(&deployment["spec"]["template"]["spec"]["containers"])
        .iter()
        .find(|c| c["name"].as_str() == Some(wanted))
        .unwrap_or_else(|| panic!("{}: no container {wanted}", name(deployment)))
}

fn is_subset(labels: &Value, of: &Value) -> bool {
    let (Some(labels), Some(of)) = (labels.as_mapping(), of.as_mapping()) else {
        return false;
    };
    !labels.is_empty() && labels.iter().all(|(k, v)| of.get(k) == Some(v))
}

// ---------------------------------------------------------------------------------------------
// tollgate's command line, as `tollgate serve --help` lists it

struct ServeHelp {
    flags: BTreeSet<String>,
    /// Environment variable → its flag.
    env: BTreeMap<String, String>,
}

fn serve_help() -> ServeHelp {
    let out = Command::new(TOLLGATE)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let (mut flags, mut env, mut last) = (BTreeSet::new(), BTreeMap::new(), None);
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        // Definitions are indented 2 (`-h, --help`) or 6 (`--config <PATH>`); text 10.
        if indent <= 6 && trimmed.starts_with('-') {
            let flag = trimmed
                .split(", ")
                .last()
                .unwrap()
                .split([' ', '='])
                .next()
                .unwrap();
            flags.insert(flag.to_owned());
            last = Some(flag.to_owned());
        } else if let Some(rest) = trimmed.strip_prefix("[env: ") {
            let variable = rest.split(['=', ']']).next().unwrap().to_owned();
            env.insert(variable, last.clone().unwrap());
        }
    }
    assert!(flags.contains("--store") && flags.contains("--redis-url"));
    assert_eq!(env.get("TOLLGATE_REDIS_URL").unwrap(), "--redis-url");
    ServeHelp { flags, env }
}

/// An environment variable of a container: its literal value, or `None` when it comes from a
/// Secret or elsewhere.
type EnvVar = (String, Option<String>);

fn container_env(container: &Value) -> Vec<EnvVar> {
    list(&container["env"])
        .iter()
        .map(|e| {
            (
                string(&e["name"]).to_owned(),
                e["value"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// Checks tollgate's arguments and environment: `serve`, then only `--flag` or `--flag=value`
/// items, each flag one that `tollgate serve --help` lists, every `TOLLGATE_*` variable one it
/// reads; then lets `tollgate serve ARGS --help` parse them all (values included: an unknown
/// flag, a bad enum value or an unparsable duration exits 2). Returns flag → value.
fn check_serve_args(context: &str, args: &[String], env: &[EnvVar]) -> BTreeMap<String, String> {
    let help = serve_help();
    assert_eq!(
        args.first().map(String::as_str),
        Some("serve"),
        "{context}: {args:?}"
    );
    let mut parsed = BTreeMap::new();
    let mut all = args.to_vec();
    for arg in &args[1..] {
        assert!(
            arg.starts_with("--"),
            "{context}: {arg:?} is not --flag[=value]"
        );
        let (flag, value) = arg.split_once('=').unwrap_or((arg, ""));
        assert!(help.flags.contains(flag), "{context}: unknown flag {flag}");
        parsed.insert(flag.to_owned(), value.to_owned());
    }
    for (variable, value) in env {
        if !variable.starts_with("TOLLGATE_") {
            continue;
        }
        let flag = help
            .env
            .get(variable)
            .unwrap_or_else(|| panic!("{context}: tollgate reads no {variable}"));
        if let Some(value) = value {
            all.push(format!("{flag}={value}"));
        }
        parsed.insert(flag.clone(), value.clone().unwrap_or_default());
    }
    all.push("--help".to_owned());
    let out = Command::new(TOLLGATE).args(&all).output().unwrap();
    assert!(
        out.status.success(),
        "{context}: tollgate {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        parsed.contains_key("--config") != parsed.contains_key("--xds-server"),
        "{context}: limits from --config or --xds-server, one of them"
    );
    parsed
}

fn args_of(container: &Value) -> Vec<String> {
    list(&container["args"])
        .iter()
        .map(|a| string(a).to_owned())
        .collect()
}

/// Checks a tollgate container of a pod spec: its arguments and environment parse, `--config`
/// is where the limits volume is mounted (a directory: no subPath), and that volume is the
/// ConfigMap `limits_configmap`; with `--xds-server` instead, no ConfigMap is mounted at all.
/// Returns flag → value.
fn check_tollgate_pod(
    context: &str,
    deployment: &Value,
    limits_configmap: &str,
) -> BTreeMap<String, String> {
    let pod = &deployment["spec"]["template"]["spec"];
    let tollgate = container(deployment, "tollgate");
    let flags = check_serve_args(context, &args_of(tollgate), &container_env(tollgate));
    if flags.contains_key("--xds-server") {
        assert!(
            list(&pod["volumes"])
                .iter()
                .all(|v| v["configMap"].is_null()),
            "{context}: limits over xDS, yet a ConfigMap is mounted"
        );
    } else {
        check_limits_mount(context, pod, tollgate, &flags, limits_configmap);
    }
    // Non-root, read-only: the same hardening everywhere.
    let security = &tollgate["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    flags
}

fn check_limits_mount(
    context: &str,
    pod: &Value,
    tollgate: &Value,
    flags: &BTreeMap<String, String>,
    limits_configmap: &str,
) {
    let mount = list(&tollgate["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(&flags["--config"]))
        .unwrap_or_else(|| panic!("{context}: nothing mounted at --config"));
    assert!(
        mount["subPath"].is_null(),
        "{context}: a subPath never updates"
    );
    let volume = list(&pod["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(
        volume["configMap"]["name"].as_str(),
        Some(limits_configmap),
        "{context}"
    );
}

/// The Secret and key that tollgate's `TOLLGATE_REDIS_URL` comes from.
fn redis_url_secret(deployment: &Value) -> (String, String) {
    let tollgate = container(deployment, "tollgate");
    let variable = list(&tollgate["env"])
        .iter()
        .find(|e| e["name"].as_str() == Some("TOLLGATE_REDIS_URL"))
        .expect("TOLLGATE_REDIS_URL");
    let reference = &variable["valueFrom"]["secretKeyRef"];
    (
        string(&reference["name"]).to_owned(),
        string(&reference["key"]).to_owned(),
    )
}

fn secret_value<'a>(secret: &'a Value, key: &str) -> &'a str {
    string(&secret["stringData"][key])
}

/// Writes a ConfigMap's files to a directory (the way the kubelet mounts it) and returns it.
fn configmap_dir(map: &Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (file, content) in map["data"].as_mapping().unwrap() {
        std::fs::write(dir.path().join(string(file)), string(content)).unwrap();
    }
    dir
}

fn envoy_validate(bootstrap: &Path) {
    let envoy = tool("TOLLGATE_ENVOY", ".venv/bin/envoy");
    let out = Command::new(envoy)
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(bootstrap)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        bootstrap.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// From an Envoy bootstrap: the rate limit filters' domains and the address and port of the
/// cluster they call.
fn envoy_rate_limit_target(bootstrap: &Value) -> (BTreeSet<String>, String, u64) {
    let mut domains = BTreeSet::new();
    let mut cluster = None;
    for listener in list(&bootstrap["static_resources"]["listeners"]) {
        for chain in list(&listener["filter_chains"]) {
            for filter in list(&chain["filters"]) {
                for http in list(&filter["typed_config"]["http_filters"]) {
                    if http["name"].as_str() == Some("envoy.filters.http.ratelimit") {
                        let config = &http["typed_config"];
                        domains.insert(string(&config["domain"]).to_owned());
                        let service = &config["rate_limit_service"]["grpc_service"];
                        cluster = Some(string(&service["envoy_grpc"]["cluster_name"]).to_owned());
                    }
                }
            }
        }
    }
    let cluster = cluster.expect("a rate limit filter");
    let cluster = list(&bootstrap["static_resources"]["clusters"])
        .iter()
        .find(|c| c["name"].as_str() == Some(&cluster))
        .unwrap_or_else(|| panic!("no cluster {cluster}"));
    let endpoints = list(&cluster["load_assignment"]["endpoints"]);
    let address = &list(&endpoints[0]["lb_endpoints"])[0]["endpoint"]["address"]["socket_address"];
    (
        domains,
        string(&address["address"]).to_owned(),
        address["port_value"].as_u64().unwrap(),
    )
}

/// Whether an HPA scales this Deployment.
fn scales(hpa: &Value, deployment: &Value) -> bool {
    let target = &hpa["spec"]["scaleTargetRef"];
    target["apiVersion"] == "apps/v1"
        && target["kind"] == "Deployment"
        && target["name"] == deployment["metadata"]["name"]
}

fn port_of(address: &str) -> u64 {
    address.rsplit_once(':').unwrap().1.parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// k8s/

#[test]
#[ignore = "needs kubernetes-validate: run scripts/test"]
fn manifests_pass_the_kubernetes_schemas() {
    kubernetes_validate(&manifests());
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
            if map.data.contains_key("envoy-gateway.yaml") {
                // Envoy Gateway's own configuration: envoy_gateway_example_swaps_in_tollgate.
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
            checked.push(format!("{}:{}", file.display(), map.metadata.name));
        }
    }
    for wanted in [
        "k8s/sidecar/envoy.yaml:envoy-bootstrap",
        "k8s/sidecar/limits.yaml:tollgate-limits",
        "k8s/shared/envoy.yaml:front-envoy",
        "k8s/shared/limits.yaml:tollgate-limits",
    ] {
        assert!(checked.contains(&wanted.to_owned()), "{checked:?}");
    }
}

/// The Envoy Gateway example, with and without Helm, puts this version's image in Envoy
/// Gateway's rate limit Deployment and a Redis it can reach; its policy takes the tenant's limit
/// from the metadata tollgate's ext_authz writes.
#[test]
fn envoy_gateway_example_swaps_in_tollgate() {
    let image = format!("tollgate:{}", env!("CARGO_PKG_VERSION"));
    let documents = k8s_documents("k8s/envoy-gateway");
    let map = the(&documents, "ConfigMap");
    assert_eq!(
        (name(map), map["metadata"]["namespace"].as_str()),
        ("envoy-gateway-config", Some("envoy-gateway-system"))
    );
    let config: Value = serde_yaml::from_str(string(&map["data"]["envoy-gateway.yaml"])).unwrap();
    assert_eq!(config["kind"].as_str(), Some("EnvoyGateway"));
    let kubernetes = &config["provider"]["kubernetes"];
    assert_eq!(
        kubernetes["rateLimitDeployment"]["container"]["image"].as_str(),
        Some(image.as_str())
    );
    let redis = &config["rateLimit"]["backend"]["redis"]["url"];
    assert_eq!(
        port_of(string(redis)),
        6379,
        "host:port, as REDIS_URL takes it"
    );

    let text = std::fs::read_to_string("helm/envoy-gateway-values.yaml").unwrap();
    let values: Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(
        values["global"]["images"]["ratelimit"]["image"].as_str(),
        Some(image.as_str())
    );
    assert_eq!(
        &values["config"]["envoyGateway"]["rateLimit"], &config["rateLimit"],
        "the Helm values and the ConfigMap say the same"
    );

    let text =
        std::fs::read_to_string("examples/envoy-gateway/backend-traffic-policy.yaml").unwrap();
    let policies = yaml_documents(&text);
    assert!(policies.iter().all(|p| kind(p) == "BackendTrafficPolicy"));
    let from_metadata = policies
        .iter()
        .flat_map(|p| list(&p["spec"]["rateLimit"]["global"]["rules"]))
        .find_map(|rule| rule["limit"]["fromMetadata"].as_mapping())
        .expect("a rule with fromMetadata");
    assert_eq!(
        from_metadata.get("namespace").and_then(Value::as_str),
        Some("envoy.filters.http.ext_authz")
    );
    assert_eq!(
        from_metadata.get("key").and_then(Value::as_str),
        Some("total_limit")
    );
}

fn k8s_documents(dir: &str) -> Vec<Value> {
    let mut all = Vec::new();
    for file in manifests() {
        if file.starts_with(dir) {
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(
                text.starts_with("# "),
                "{}: no leading comment",
                file.display()
            );
            all.extend(yaml_documents(&text));
        }
    }
    all
}

#[test]
fn tollgate_args_in_manifests_parse() {
    for (dir, deployment) in [("k8s/sidecar", "web"), ("k8s/shared", "tollgate")] {
        let documents = k8s_documents(dir);
        let deployment = documents
            .iter()
            .find(|d| kind(d) == "Deployment" && name(d) == deployment)
            .unwrap();
        check_tollgate_pod(dir, deployment, "tollgate-limits");
    }
}

/// The shared topology's pieces agree: Envoy calls the tollgate Service by name on its gRPC
/// port, for a domain the limits define; tollgate counts in Redis with the URL of a Secret that
/// exists; the Service, PDB, HPA and NetworkPolicies select the right pods.
#[test]
fn the_chart_and_the_plain_manifests_ask_for_the_same_resources() {
    let documents = k8s_documents("k8s/shared");
    let deployment = documents
        .iter()
        .find(|d| kind(d) == "Deployment" && name(d) == "tollgate")
        .expect("the tollgate Deployment");
    let manifests = &container(deployment, "tollgate")["resources"];
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string("helm/tollgate/values.yaml").unwrap())
            .unwrap();
    assert_eq!(
        manifests, &values["resources"],
        "k8s/shared/tollgate.yaml and helm/tollgate/values.yaml disagree on resources"
    );
}

#[test]
fn shared_manifests_fit_together() {
    let documents = k8s_documents("k8s/shared");
    let find = |wanted_kind: &str, wanted_name: &str| {
        documents
            .iter()
            .find(|d| kind(d) == wanted_kind && name(d) == wanted_name)
            .unwrap_or_else(|| panic!("no {wanted_kind} {wanted_name}"))
    };
    let deployment = find("Deployment", "tollgate");
    let flags = check_tollgate_pod("k8s/shared", deployment, "tollgate-limits");
    assert_eq!(flags["--store"], "redis");
    assert_eq!(flags["--consistency"], "strict");
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(3));
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let tollgate = container(deployment, "tollgate");
    assert!(
        tollgate["resources"]["requests"].is_mapping()
            && tollgate["resources"]["limits"].is_mapping()
    );
    assert!(tollgate["readinessProbe"].is_mapping() && tollgate["livenessProbe"].is_mapping());
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));

    // The Redis URL: from a Secret that has it, naming the Redis Service.
    let (secret, key) = redis_url_secret(deployment);
    let url = secret_value(find("Secret", &secret), &key);
    let redis_service = find("Service", "tollgate-redis");
    let redis_port = list(&redis_service["spec"]["ports"])[0]["port"]
        .as_u64()
        .unwrap();
    assert!(
        url.contains(&format!("@tollgate-redis:{redis_port}/")),
        "{url}"
    );
    let redis = find("Deployment", "tollgate-redis");
    let redis_args = args_of(container(redis, "redis"));
    // Persistence: an append-only file synced every second, on a claim the manifests make.
    for wanted in [["--appendonly", "yes"], ["--appendfsync", "everysec"]] {
        assert!(redis_args.windows(2).any(|w| w == wanted), "{redis_args:?}");
    }
    let claim = list(&redis["spec"]["template"]["spec"]["volumes"])
        .iter()
        .find_map(|volume| volume["persistentVolumeClaim"]["claimName"].as_str())
        .expect("redis data on a PersistentVolumeClaim");
    find("PersistentVolumeClaim", claim);
    assert!(is_subset(
        &redis_service["spec"]["selector"],
        &redis["spec"]["template"]["metadata"]["labels"]
    ));

    // The Service: headless, gRPC with an HTTP/2 app protocol, admin; selects tollgate.
    let service = find("Service", "tollgate");
    assert_eq!(service["spec"]["clusterIP"].as_str(), Some("None"));
    assert!(is_subset(&service["spec"]["selector"], pod_labels));
    let ports = list(&service["spec"]["ports"]);
    let grpc = ports.iter().find(|p| p["name"] == "grpc").unwrap();
    assert_eq!(grpc["port"].as_u64(), Some(port_of(&flags["--grpc-addr"])));
    assert_eq!(grpc["appProtocol"].as_str(), Some("kubernetes.io/h2c"));
    let admin = ports.iter().find(|p| p["name"] == "admin").unwrap();
    assert_eq!(admin["port"].as_u64(), Some(port_of(&flags["--http-addr"])));

    // Envoy: calls that Service by its DNS name and port, for a domain of the limits.
    let envoy_map = find("ConfigMap", "front-envoy");
    let bootstrap: Value = serde_yaml::from_str(string(&envoy_map["data"]["envoy.yaml"])).unwrap();
    let (domains, address, port) = envoy_rate_limit_target(&bootstrap);
    assert_eq!(
        (address.as_str(), port),
        ("tollgate", grpc["port"].as_u64().unwrap())
    );
    let limits_dir = configmap_dir(find("ConfigMap", "tollgate-limits"));
    let limits = config::load(limits_dir.path(), &Options::default()).unwrap();
    for domain in &domains {
        assert!(
            limits.domain(domain).is_some(),
            "no limits for domain {domain}"
        );
    }
    let envoy = find("Deployment", "front-envoy");
    let envoy_labels = &envoy["spec"]["template"]["metadata"]["labels"];

    // PDB and HPA: this Deployment.
    let pdb = find("PodDisruptionBudget", "tollgate");
    assert!(is_subset(
        &pdb["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    let hpa = find("HorizontalPodAutoscaler", "tollgate");
    assert!(scales(hpa, deployment));
    assert_eq!(hpa["spec"]["minReplicas"].as_u64(), Some(3));

    // NetworkPolicies: gRPC from the Envoy pods, admin from monitoring, Redis from tollgate.
    let policy = find("NetworkPolicy", "tollgate");
    assert!(is_subset(
        &policy["spec"]["podSelector"]["matchLabels"],
        pod_labels
    ));
    let rules = list(&policy["spec"]["ingress"]);
    let rule_for = |port: u64| {
        rules
            .iter()
            .find(|r| {
                list(&r["ports"])
                    .iter()
                    .any(|p| p["port"].as_u64() == Some(port))
            })
            .unwrap_or_else(|| panic!("no rule for port {port}"))
    };
    let from_envoy = &list(&rule_for(8081)["from"])[0]["podSelector"]["matchLabels"];
    assert!(is_subset(from_envoy, envoy_labels));
    assert!(!list(&rule_for(8080)["from"])[0]["namespaceSelector"].is_null());
    let redis_policy = find("NetworkPolicy", "tollgate-redis");
    let from_tollgate = &list(&list(&redis_policy["spec"]["ingress"])[0]["from"])[0];
    assert!(is_subset(
        &from_tollgate["podSelector"]["matchLabels"],
        pod_labels
    ));
}

// ---------------------------------------------------------------------------------------------
// helm/tollgate

/// Lints and renders the chart with the Helm library (PyPI helm-python-sdk: Helm v4's Go SDK
/// behind a C ABI), as `helm lint --strict` and `helm template` would.
const HELM_DRIVER: &str = r#"
import json, sys
try:
    import helm_python as helm
except ImportError as error:
    sys.exit(f"no helm_python ({error}): run scripts/test, which installs helm-python-sdk")
chart, values, release, namespace = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
out = {"helm": helm.helm_sdk_version()}
try:
    with helm.Chart.load(chart) as loaded:
        out["manifests"] = loaded.render(values, name=release, namespace=namespace, is_install=True)
except helm.HelmError as error:
    out["error"] = str(error)
out["lint"] = helm.lint(chart, values, strict=True, namespace=namespace, kube_version="v1.37.0")
print(json.dumps(out))
"#;

#[derive(Deserialize)]
struct HelmOutput {
    helm: String,
    #[serde(default)]
    manifests: BTreeMap<String, String>,
    error: Option<String>,
    lint: Lint,
}

#[derive(Deserialize)]
struct Lint {
    messages: Vec<LintMessage>,
    errors: Vec<String>,
}

#[derive(Deserialize)]
struct LintMessage {
    /// 1 info, 2 warning, 3 error.
    severity: u8,
    path: String,
    error: String,
}

const RELEASE: &str = "edge";
const NAMESPACE: &str = "gateway";

fn helm(values: &serde_json::Value) -> HelmOutput {
    let python = tool("TOLLGATE_HELM_PYTHON", ".venv/bin/python");
    let out = Command::new(python)
        .args(["-c", HELM_DRIVER, CHART])
        .arg(values.to_string())
        .args([RELEASE, NAMESPACE])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let output: HelmOutput = serde_json::from_slice(&out.stdout).unwrap();
    assert!(output.helm.starts_with("v4."), "{}", output.helm);
    output
}

/// Renders the chart and checks what every value set must give: a clean strict lint, manifests
/// that pass the Kubernetes schemas (ServiceMonitor excepted, checked here by hand), limits that
/// load, tollgate arguments that parse, and objects that reference each other correctly.
/// Returns the documents and tollgate's flags.
fn render(context: &str, values: &serde_json::Value) -> (Vec<Value>, BTreeMap<String, String>) {
    let output = helm(values);
    if let Some(error) = &output.error {
        panic!("{context}: {error}");
    }
    let problems: Vec<_> = output
        .lint
        .messages
        .iter()
        .filter(|m| m.severity >= 2)
        .map(|m| format!("{}: {}", m.path, m.error))
        .collect();
    assert!(
        problems.is_empty() && output.lint.errors.is_empty(),
        "{context}: helm lint: {problems:?} {:?}",
        output.lint.errors
    );
    let mut documents = Vec::new();
    for (template, text) in &output.manifests {
        // As `helm template`: NOTES.txt is shown to people, not applied.
        if !template.ends_with("/NOTES.txt") {
            documents.extend(yaml_documents(text));
        }
    }

    // The Kubernetes schemas, for every kind kubernetes-validate knows: all but ServiceMonitor.
    let (monitors, known): (Vec<_>, Vec<_>) =
        documents.iter().partition(|d| kind(d) == "ServiceMonitor");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{context}.yaml"));
    let text: Vec<_> = known
        .iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect();
    std::fs::write(&file, text.join("---\n")).unwrap();
    let report = kubernetes_validate(&[file]);
    assert_eq!(
        report.matches(" passed for resource ").count(),
        known.len(),
        "{report}"
    );

    let deployment = the(&documents, "Deployment");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let existing = values["existingLimitsConfigMap"].as_str();
    let limits_name = existing.map_or_else(|| format!("{RELEASE}-tollgate-limits"), str::to_owned);
    let flags = check_tollgate_pod(context, deployment, &limits_name);
    if flags.contains_key("--xds-server") {
        assert!(
            !kinds(&documents).contains("ConfigMap"),
            "{context}: limits over xDS, yet a ConfigMap"
        );
    } else if existing.is_none() {
        let map = the(&documents, "ConfigMap");
        assert_eq!(name(map), limits_name);
        let dir = configmap_dir(map);
        config::load(dir.path(), &Options::default())
            .unwrap_or_else(|e| panic!("{context}: rendered limits: {e}"));
    }

    // Every mount is of a volume of the pod, and every path a flag names is under a mount
    // (the root filesystem is read-only and has none of those files).
    let tollgate = container(deployment, "tollgate");
    let pod = &deployment["spec"]["template"]["spec"];
    let mounts = list(&tollgate["volumeMounts"]);
    for mount in mounts {
        assert!(
            list(&pod["volumes"])
                .iter()
                .any(|v| v["name"] == mount["name"]),
            "{context}: no volume {:?}",
            mount["name"]
        );
        assert!(
            mount["subPath"].is_null(),
            "{context}: a subPath never updates"
        );
    }
    for (flag, value) in &flags {
        if value.starts_with('/') && flag != "--metrics-path" {
            assert!(
                mounts.iter().any(|m| {
                    let at = string(&m["mountPath"]);
                    value == at || value.starts_with(&format!("{at}/"))
                }),
                "{context}: {flag}={value} is on no volume"
            );
        }
    }

    // The Service selects the pods and has the admin port.
    let service = the(&documents, "Service");
    assert!(
        is_subset(&service["spec"]["selector"], pod_labels),
        "{context}"
    );
    let admin = list(&service["spec"]["ports"])
        .iter()
        .find(|p| p["name"] == "admin")
        .expect("an admin port");
    assert_eq!(admin["targetPort"].as_str(), Some("admin"));
    assert_eq!(port_of(&flags["--http-addr"]), 8080);

    // The ServiceMonitor: the CRD's apiVersion, scraping /metrics on that Service's admin port.
    for monitor in monitors {
        assert_eq!(
            monitor["apiVersion"].as_str(),
            Some("monitoring.coreos.com/v1")
        );
        let endpoint = &list(&monitor["spec"]["endpoints"])[0];
        assert_eq!(endpoint["port"].as_str(), Some("admin"));
        assert_eq!(endpoint["path"].as_str(), Some("/metrics"));
        let labels = &service["metadata"]["labels"];
        assert!(is_subset(
            &monitor["spec"]["selector"]["matchLabels"],
            labels
        ));
    }
    for selector in documents
        .iter()
        .filter(|d| matches!(kind(d), "PodDisruptionBudget" | "NetworkPolicy"))
        .map(|d| {
            let spec = &d["spec"];
            if kind(d) == "NetworkPolicy" {
                &spec["podSelector"]
            } else {
                &spec["selector"]
            }
        })
    {
        assert!(is_subset(&selector["matchLabels"], pod_labels), "{context}");
    }
    if let Some(hpa) = documents
        .iter()
        .find(|d| kind(d) == "HorizontalPodAutoscaler")
    {
        assert!(scales(hpa, deployment), "{context}");
        assert!(
            deployment["spec"]["replicas"].is_null(),
            "{context}: the HPA owns replicas"
        );
    }
    (documents, flags)
}

fn kinds(documents: &[Value]) -> BTreeSet<&str> {
    documents.iter().map(kind).collect()
}

#[test]
#[ignore = "needs the Helm library and kubernetes-validate: run scripts/test"]
fn helm_chart_renders_with_default_values() {
    let (documents, flags) = render("default", &json!({}));
    assert_eq!(
        kinds(&documents),
        BTreeSet::from(["ConfigMap", "Deployment", "PodDisruptionBudget", "Service"])
    );
    assert_eq!(flags["--store"], "memory");
    assert_eq!(flags["--grpc-addr"], "0.0.0.0:8081");
    let deployment = the(&documents, "Deployment");
    assert_eq!(name(deployment), "edge-tollgate");
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(1));
    let tollgate = container(deployment, "tollgate");
    assert_eq!(tollgate["image"].as_str(), Some("tollgate:0.1.0"));
    assert_eq!(
        tollgate["readinessProbe"]["grpc"]["port"].as_u64(),
        Some(8081)
    );
    assert_eq!(
        tollgate["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthcheck")
    );
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"].as_str(), Some("8080"));
    let service = the(&documents, "Service");
    assert_eq!(service["spec"]["clusterIP"].as_str(), Some("None"));
    let grpc = list(&service["spec"]["ports"])
        .iter()
        .find(|p| p["name"] == "grpc")
        .unwrap();
    assert_eq!(grpc["appProtocol"].as_str(), Some("kubernetes.io/h2c"));
    // The example limits a default install serves.
    let limits = the(&documents, "ConfigMap");
    assert!(limits["data"]["edge-proxy.yaml"].is_string());
}

#[test]
#[ignore = "needs the Helm library and kubernetes-validate: run scripts/test"]
fn helm_chart_renders_shared_with_redis_hpa_network_policy_and_service_monitor() {
    let api = std::fs::read_to_string("examples/config/api.yaml").unwrap();
    let values = json!({
        "mode": "shared",
        "store": "redis",
        "consistency": "cached",
        "redis": {
            "url": "rediss://:secret@redis.gateway:6379/0",
            "failure": "deny",
            "timeout": "10ms",
            "prefix": "team-a:",
            "tlsSecret": "redis-client-tls",
            "clientCertificate": true,
        },
        "limits": {
            "api.yaml": api,
            "internal.yml": {
                "domain": "internal",
                "descriptors": [
                    {"key": "tenant", "rate_limit": {"unit": "hour", "requests_per_unit": 1000}}
                ],
            },
        },
        "autoscaling": {"enabled": true, "minReplicas": 3, "maxReplicas": 12},
        "networkPolicy": {"enabled": true},
        "serviceMonitor": {"enabled": true, "labels": {"release": "prometheus"}},
        "extraArgs": ["--max-buckets=500000", "--shadow-mode"],
        "extraEnv": [{"name": "TOLLGATE_SWEEP_INTERVAL", "value": "30"}],
        "podAnnotations": {"team": "edge"},
        "image": {"repository": "registry.example/tollgate", "tag": "0.1.0-rc1"},
    });
    let (documents, flags) = render("shared-redis", &values);
    assert_eq!(
        kinds(&documents),
        BTreeSet::from([
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Secret",
            "Service",
            "ServiceMonitor",
        ])
    );
    for (flag, value) in [
        ("--store", "redis"),
        ("--consistency", "cached"),
        ("--redis-failure", "deny"),
        ("--redis-timeout", "10ms"),
        ("--redis-prefix", "team-a:"),
        ("--redis-ca-file", "/etc/tollgate-redis-tls/ca.crt"),
        ("--redis-client-cert", "/etc/tollgate-redis-tls/tls.crt"),
        ("--redis-client-key", "/etc/tollgate-redis-tls/tls.key"),
        ("--max-buckets", "500000"),
        ("--shadow-mode", ""),
        ("--sweep-interval", "30"),
    ] {
        assert_eq!(flags.get(flag).map(String::as_str), Some(value), "{flag}");
    }
    assert!(!flags.contains_key("--redis-cluster"));
    let deployment = the(&documents, "Deployment");
    let (secret, key) = redis_url_secret(deployment);
    let rendered = the(&documents, "Secret");
    assert_eq!(
        (name(rendered), key.as_str()),
        ("edge-tollgate-redis", "url")
    );
    assert_eq!(secret, name(rendered));
    assert_eq!(
        secret_value(rendered, &key),
        "rediss://:secret@redis.gateway:6379/0"
    );
    let tollgate = container(deployment, "tollgate");
    // The TLS Secret is mounted where the flags point.
    let volumes = list(&deployment["spec"]["template"]["spec"]["volumes"]);
    let tls = volumes.iter().find(|v| v["name"] == "redis-tls").unwrap();
    assert_eq!(
        tls["secret"]["secretName"].as_str(),
        Some("redis-client-tls")
    );
    let mounts = list(&tollgate["volumeMounts"]);
    let mount = mounts.iter().find(|m| m["name"] == "redis-tls").unwrap();
    assert_eq!(mount["mountPath"].as_str(), Some("/etc/tollgate-redis-tls"));
    assert_eq!(mount["readOnly"].as_bool(), Some(true));
    assert_eq!(
        tollgate["image"].as_str(),
        Some("registry.example/tollgate:0.1.0-rc1")
    );
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["team"].as_str(), Some("edge"));
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));

    // Both inline limit files, the string one verbatim, the map one as YAML.
    let limits = the(&documents, "ConfigMap");
    assert_eq!(limits["data"]["api.yaml"].as_str(), Some(api.as_str()));
    let dir = configmap_dir(limits);
    let loaded = config::load(dir.path(), &Options::default()).unwrap();
    assert!(loaded.domain("api").is_some() && loaded.domain("internal").is_some());

    let hpa = the(&documents, "HorizontalPodAutoscaler");
    assert_eq!(hpa["spec"]["maxReplicas"].as_u64(), Some(12));
    let monitor = the(&documents, "ServiceMonitor");
    assert_eq!(
        monitor["metadata"]["labels"]["release"].as_str(),
        Some("prometheus")
    );
    // gRPC from Envoy pods only, admin from the monitoring namespace only.
    let policy = the(&documents, "NetworkPolicy");
    let rules = list(&policy["spec"]["ingress"]);
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert_eq!(list(&rules[0]["ports"])[0]["port"].as_u64(), Some(8081));
    assert_eq!(
        list(&rules[0]["from"])[0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str(),
        Some("envoy")
    );
    assert_eq!(list(&rules[1]["ports"])[0]["port"].as_u64(), Some(8080));
    assert_eq!(
        list(&rules[1]["from"])[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            .as_str(),
        Some("monitoring")
    );
}

#[test]
#[ignore = "needs the Helm library and kubernetes-validate: run scripts/test"]
fn helm_chart_renders_with_an_existing_configmap_and_secret() {
    let values = json!({
        "existingLimitsConfigMap": "team-limits",
        "store": "redis",
        "redis": {"existingSecret": "redis-credentials", "existingSecretKey": "uri", "cluster": true},
        "replicas": 4,
        "podDisruptionBudget": {"maxUnavailable": "25%"},
    });
    let (documents, flags) = render("existing-configmap", &values);
    assert_eq!(
        kinds(&documents),
        BTreeSet::from(["Deployment", "PodDisruptionBudget", "Service"]),
        "no ConfigMap, no Secret: both are the user's"
    );
    assert_eq!(flags.get("--redis-cluster").map(String::as_str), Some(""));
    assert_eq!(flags["--consistency"], "strict");
    let deployment = the(&documents, "Deployment");
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(4));
    assert_eq!(
        redis_url_secret(deployment),
        ("redis-credentials".to_owned(), "uri".to_owned())
    );
    let pdb = the(&documents, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"].as_str(), Some("25%"));
}

#[test]
#[ignore = "needs the Helm library and kubernetes-validate: run scripts/test"]
fn helm_chart_renders_the_sidecar_mode() {
    let values = json!({
        "mode": "sidecar",
        "sidecar": {
            "containers": [
                {
                    "name": "envoy",
                    "image": "envoyproxy/envoy:v1.40.0",
                    "args": ["-c", "/etc/envoy/envoy.yaml"],
                    "ports": [{"name": "http", "containerPort": 10000}],
                    "volumeMounts": [{"name": "envoy-bootstrap", "mountPath": "/etc/envoy"}],
                },
                {"name": "app", "image": "hashicorp/http-echo:1.0"},
            ],
            "volumes": [{"name": "envoy-bootstrap", "configMap": {"name": "envoy-bootstrap"}}],
            "servicePorts": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
        "networkPolicy": {"enabled": true},
        "serviceMonitor": {"enabled": true},
    });
    let (documents, flags) = render("sidecar", &values);
    // Envoy in the pod calls tollgate on loopback.
    assert_eq!(flags["--grpc-addr"], "127.0.0.1:8081");
    let deployment = the(&documents, "Deployment");
    let containers: Vec<_> = list(&deployment["spec"]["template"]["spec"]["containers"])
        .iter()
        .map(|c| string(&c["name"]))
        .collect();
    assert_eq!(containers, ["tollgate", "envoy", "app"]);
    let tollgate = container(deployment, "tollgate");
    assert_eq!(
        tollgate["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthcheck"),
        "gRPC is on loopback: the kubelet cannot probe it"
    );
    let service = the(&documents, "Service");
    let ports: Vec<_> = list(&service["spec"]["ports"])
        .iter()
        .map(|p| string(&p["name"]))
        .collect();
    assert_eq!(ports, ["admin", "http"]);
    assert!(service["spec"]["clusterIP"].is_null());
    // The NetworkPolicy lets clients reach Envoy, and only monitoring reach the admin port.
    let policy = the(&documents, "NetworkPolicy");
    let rules = list(&policy["spec"]["ingress"]);
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert_eq!(list(&rules[0]["ports"])[0]["port"].as_str(), Some("http"));
    assert!(rules[0]["from"].is_null());
    assert_eq!(list(&rules[1]["ports"])[0]["port"].as_u64(), Some(8080));
}

/// The volume of the pod named `wanted`, and the tollgate container's mount of it.
fn volume_and_mount<'a>(deployment: &'a Value, wanted: &str) -> (&'a Value, &'a Value) {
    let volume = list(&deployment["spec"]["template"]["spec"]["volumes"])
        .iter()
        .find(|v| v["name"].as_str() == Some(wanted))
        .unwrap_or_else(|| panic!("no volume {wanted}"));
    let mount = list(&container(deployment, "tollgate")["volumeMounts"])
        .iter()
        .find(|m| m["name"].as_str() == Some(wanted))
        .unwrap_or_else(|| panic!("no mount of {wanted}"));
    (volume, mount)
}

fn volume_names(deployment: &Value) -> Vec<&str> {
    list(&deployment["spec"]["template"]["spec"]["volumes"])
        .iter()
        .map(|v| string(&v["name"]))
        .collect()
}

fn port_named<'a>(ports: &'a Value, wanted: &str) -> Option<&'a Value> {
    list(ports)
        .iter()
        .find(|p| p["name"].as_str() == Some(wanted))
}

/// The NOTES.txt Helm shows after an install with these values.
fn notes(values: &serde_json::Value) -> String {
    let output = helm(values);
    assert!(output.error.is_none(), "{:?}", output.error);
    output.manifests["tollgate/templates/NOTES.txt"].clone()
}

#[test]
#[ignore = "needs the Helm library and kubernetes-validate: run scripts/test"]
fn helm_chart_renders_limits_over_xds_with_tls() {
    let values = json!({
        "xds": {
            "enabled": true,
            "server": "https://control-plane.gateway.svc:18001",
            "nodeId": "envoy-ratelimit",
            "startWithoutConfig": true,
            "unhealthyUntilFirstConfig": true,
            "tlsSecret": "xds-client-tls",
            "clientCertificate": true,
            "serverName": "control-plane",
        },
    });
    let (documents, flags) = render("xds-tls", &values);
    assert_eq!(
        kinds(&documents),
        BTreeSet::from(["Deployment", "PodDisruptionBudget", "Service"]),
        "no limits ConfigMap with xDS"
    );
    assert!(!flags.contains_key("--config"), "{flags:?}");
    for (flag, value) in [
        ("--xds-server", "https://control-plane.gateway.svc:18001"),
        ("--xds-node-id", "envoy-ratelimit"),
        ("--xds-start-without-config", ""),
        ("--xds-unhealthy-until-first-config", ""),
        ("--xds-ca-file", "/etc/tollgate-xds-tls/ca.crt"),
        ("--xds-client-cert", "/etc/tollgate-xds-tls/tls.crt"),
        ("--xds-client-key", "/etc/tollgate-xds-tls/tls.key"),
        ("--xds-server-name", "control-plane"),
    ] {
        assert_eq!(flags.get(flag).map(String::as_str), Some(value), "{flag}");
    }
    let deployment = the(&documents, "Deployment");
    assert_eq!(volume_names(deployment), ["xds-tls"]);
    let (volume, mount) = volume_and_mount(deployment, "xds-tls");
    assert_eq!(
        volume["secret"]["secretName"].as_str(),
        Some("xds-client-tls")
    );
    assert_eq!(mount["mountPath"].as_str(), Some("/etc/tollgate-xds-tls"));
    assert_eq!(mount["readOnly"].as_bool(), Some(true));
    let tollgate = container(deployment, "tollgate");
    // Nothing answers before the first version: liveness must not restart the pod meanwhile.
    assert_eq!(
        tollgate["livenessProbe"]["tcpSocket"]["port"].as_str(),
        Some("admin")
    );
    assert!(tollgate["livenessProbe"]["httpGet"].is_null());
    // Clear-text gRPC here: readiness stays gRPC health (NOT_SERVING until the first version).
    assert_eq!(
        tollgate["readinessProbe"]["grpc"]["port"].as_u64(),
        Some(8081)
    );
    let notes = notes(&values);
    assert!(
        notes.contains("Limits come over xDS from https://control-plane.gateway.svc:18001 as node envoy-ratelimit"),
        "{notes}"
    );

    // Clear text (no scheme), without TLS settings: no TLS flags, no volume at all.
    let values = json!({
        "xds": {"enabled": true, "server": "control-plane:18000", "nodeId": "tollgate"},
    });
    let (documents, flags) = render("xds-plain", &values);
    assert_eq!(flags["--xds-server"], "control-plane:18000");
    assert!(
        !flags
            .keys()
            .any(|f| f.starts_with("--xds-")
                && !["--xds-server", "--xds-node-id"].contains(&f.as_str())),
        "{flags:?}"
    );
    assert!(volume_names(the(&documents, "Deployment")).is_empty());
}

#[test]
#[ignore = "needs the Helm library and kubernetes-validate: run scripts/test"]
fn helm_chart_renders_grpc_mutual_tls() {
    let values = json!({
        "grpcTls": {
            "secret": "tollgate-grpc-tls",
            "requireClientCertificate": true,
            "clientSan": "envoy.gateway.svc",
        },
        "networkPolicy": {"enabled": true},
    });
    let (documents, flags) = render("grpc-mtls", &values);
    for (flag, value) in [
        ("--grpc-tls-cert", "/etc/tollgate-grpc-tls/tls.crt"),
        ("--grpc-tls-key", "/etc/tollgate-grpc-tls/tls.key"),
        ("--grpc-tls-client-ca", "/etc/tollgate-grpc-tls/ca.crt"),
        ("--grpc-tls-client-san", "envoy.gateway.svc"),
        ("--grpc-addr", "0.0.0.0:8081"),
        ("--config", "/etc/tollgate"),
    ] {
        assert_eq!(flags.get(flag).map(String::as_str), Some(value), "{flag}");
    }
    let deployment = the(&documents, "Deployment");
    // The Secret as a read-only directory (no subPath): the kubelet swaps renewed files in and
    // tollgate re-reads them, so no checksum annotation restarts the pods.
    let (volume, mount) = volume_and_mount(deployment, "grpc-tls");
    assert_eq!(
        volume["secret"]["secretName"].as_str(),
        Some("tollgate-grpc-tls")
    );
    assert_eq!(mount["mountPath"].as_str(), Some("/etc/tollgate-grpc-tls"));
    assert_eq!(mount["readOnly"].as_bool(), Some(true));
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert!(
        annotations
            .as_mapping()
            .unwrap()
            .keys()
            .all(|k| !string(k).starts_with("checksum/")),
        "{annotations:?}"
    );
    // The kubelet's gRPC probe speaks clear text: readiness is /healthcheck with TLS.
    let tollgate = container(deployment, "tollgate");
    assert!(tollgate["readinessProbe"]["grpc"].is_null());
    assert_eq!(
        tollgate["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthcheck")
    );
    let service = the(&documents, "Service");
    let grpc = port_named(&service["spec"]["ports"], "grpc").unwrap();
    assert!(grpc["appProtocol"].is_null(), "h2c would say clear text");
    assert!(port_named(&service["spec"]["ports"], "api").is_none());
    // No API: the NetworkPolicy has only the gRPC and admin rules.
    let policy = the(&documents, "NetworkPolicy");
    assert_eq!(list(&policy["spec"]["ingress"]).len(), 2);

    // TLS without client certificates: no client CA.
    let (_, flags) = render(
        "grpc-tls",
        &json!({"grpcTls": {"secret": "tollgate-grpc-tls"}}),
    );
    assert!(flags.contains_key("--grpc-tls-cert"));
    assert!(!flags.contains_key("--grpc-tls-client-ca"));
}

/// `printf %s TOKEN | tollgate hash-key`.
fn hash_key(token: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(TOLLGATE)
        .arg("hash-key")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(token.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
#[ignore = "needs the Helm library and kubernetes-validate: run scripts/test"]
fn helm_chart_renders_the_service_api_with_a_state_dir() {
    let digests = [
        hash_key("first-admin-token"),
        hash_key("second-admin-token"),
    ];
    let values = json!({
        "api": {"enabled": true, "adminTokens": {"digests": digests}},
        "service": {"apiPort": 9082},
        "networkPolicy": {"enabled": true},
    });
    let (documents, flags) = render("api-memory", &values);
    for (flag, value) in [
        ("--api-addr", "0.0.0.0:8082"),
        ("--api-admin-token-file", "/etc/tollgate-api/admin-tokens"),
        ("--state-dir", "/var/lib/tollgate"),
        ("--store", "memory"),
    ] {
        assert_eq!(flags.get(flag).map(String::as_str), Some(value), "{flag}");
    }
    let deployment = the(&documents, "Deployment");
    // The digests, rendered into a Secret, one per line, as the token file takes them.
    let secret = the(&documents, "Secret");
    assert_eq!(name(secret), "edge-tollgate-api-admin-tokens");
    let lines: Vec<_> = secret_value(secret, "admin-tokens").lines().collect();
    assert_eq!(lines, digests);
    let (volume, mount) = volume_and_mount(deployment, "api-admin-tokens");
    assert_eq!(volume["secret"]["secretName"].as_str(), Some(name(secret)));
    assert_eq!(
        list(&volume["secret"]["items"]),
        [json_yaml(
            json!({"key": "admin-tokens", "path": "admin-tokens"})
        )]
    );
    assert_eq!(mount["mountPath"].as_str(), Some("/etc/tollgate-api"));
    assert_eq!(mount["readOnly"].as_bool(), Some(true));
    // Read at startup: new digests roll the pods.
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    let checksum = string(&annotations["checksum/api-admin-tokens"]).to_owned();
    // The state dir: an emptyDir, writable.
    let (volume, mount) = volume_and_mount(deployment, "state");
    assert!(volume["emptyDir"].is_mapping(), "{volume:?}");
    assert_eq!(mount["mountPath"].as_str(), Some("/var/lib/tollgate"));
    assert!(mount["readOnly"].is_null());
    assert!(
        deployment["spec"]["strategy"]["rollingUpdate"].is_mapping(),
        "each pod its own emptyDir: rolling is fine"
    );
    // Ports: the container's, the Service's, the NetworkPolicy's.
    let tollgate = container(deployment, "tollgate");
    let api = port_named(&tollgate["ports"], "api").unwrap();
    assert_eq!(
        api["containerPort"].as_u64(),
        Some(port_of(&flags["--api-addr"]))
    );
    let service = the(&documents, "Service");
    let api = port_named(&service["spec"]["ports"], "api").unwrap();
    assert_eq!(api["port"].as_u64(), Some(9082));
    assert_eq!(api["targetPort"].as_str(), Some("api"));
    let policy = the(&documents, "NetworkPolicy");
    let rules = list(&policy["spec"]["ingress"]);
    assert_eq!(rules.len(), 3, "{rules:?}");
    assert_eq!(list(&rules[2]["ports"])[0]["port"].as_u64(), Some(8082));
    assert_eq!(
        list(&rules[2]["from"]),
        [json_yaml(json!({"podSelector": {}}))],
        "the default: the release's namespace"
    );
    let text = notes(&values);
    assert!(
        text.contains("edge-tollgate.gateway.svc.cluster.local:9082"),
        "{text}"
    );
    assert!(text.contains("emptyDir"), "{text}");
    assert!(!text.contains("WARNING"), "{text}");

    // Other digests: another checksum.
    let values = json!({"api": {"enabled": true, "adminTokens": {"digests": [hash_key("third")]}}});
    let (documents, _) = render("api-memory-other-tokens", &values);
    let deployment = the(&documents, "Deployment");
    assert_ne!(
        string(
            &deployment["spec"]["template"]["metadata"]["annotations"]["checksum/api-admin-tokens"]
        ),
        checksum
    );

    // Several replicas in memory mode: each keeps its own tenants, which NOTES.txt says.
    let values = json!({"api": {"enabled": true}, "replicas": 3});
    let (documents, flags) = render("api-memory-replicas", &values);
    assert!(!flags.contains_key("--api-admin-token-file"));
    assert!(!kinds(&documents).contains("Secret"));
    let text = notes(&values);
    assert!(
        text.contains("WARNING: with store: memory and more than one replica, each replica keeps its own runtime"),
        "{text}"
    );
    assert!(
        text.contains("tenant management refuses every call"),
        "{text}"
    );

    // An existing claim: one replica, recreated rather than rolled (tollgate locks the dir).
    let values = json!({
        "api": {"enabled": true, "stateDir": {"existingClaim": "tollgate-state"}},
        "podSecurityContext": {"runAsNonRoot": true, "fsGroup": 65532},
    });
    let (documents, flags) = render("api-memory-claim", &values);
    assert_eq!(flags["--state-dir"], "/var/lib/tollgate");
    let deployment = the(&documents, "Deployment");
    let (volume, _) = volume_and_mount(deployment, "state");
    assert_eq!(
        volume["persistentVolumeClaim"]["claimName"].as_str(),
        Some("tollgate-state")
    );
    assert_eq!(
        deployment["spec"]["strategy"]["type"].as_str(),
        Some("Recreate")
    );
    assert!(deployment["spec"]["strategy"]["rollingUpdate"].is_null());

    // Without a state dir: runtime tenants live as long as the process.
    let values = json!({"api": {"enabled": true, "stateDir": {"enabled": false}}});
    let (documents, flags) = render("api-memory-no-state", &values);
    assert!(!flags.contains_key("--state-dir"));
    assert!(!volume_names(the(&documents, "Deployment")).contains(&"state"));
}

fn json_yaml(value: serde_json::Value) -> Value {
    serde_yaml::to_value(value).unwrap()
}

#[test]
#[ignore = "needs the Helm library and kubernetes-validate: run scripts/test"]
fn helm_chart_renders_the_service_api_on_redis_without_a_state_dir() {
    let values = json!({
        "store": "redis",
        "redis": {"url": "redis://redis.gateway:6379/0"},
        "replicas": 3,
        "api": {
            "enabled": true,
            "adminTokens": {"existingSecret": "platform-admin-tokens", "existingSecretKey": "digests"},
        },
    });
    let (documents, flags) = render("api-redis", &values);
    assert_eq!(flags["--api-addr"], "0.0.0.0:8082");
    assert_eq!(
        flags["--api-admin-token-file"],
        "/etc/tollgate-api/admin-tokens"
    );
    // Runtime tenants live in Redis: tollgate refuses --state-dir with --store redis.
    assert!(!flags.contains_key("--state-dir"), "{flags:?}");
    let deployment = the(&documents, "Deployment");
    assert_eq!(
        volume_names(deployment),
        ["tollgate-limits", "api-admin-tokens"]
    );
    let (volume, _) = volume_and_mount(deployment, "api-admin-tokens");
    assert_eq!(
        volume["secret"]["secretName"].as_str(),
        Some("platform-admin-tokens")
    );
    assert_eq!(
        list(&volume["secret"]["items"]),
        [json_yaml(json!({"key": "digests", "path": "admin-tokens"}))]
    );
    // Only the Redis URL's Secret is rendered; the digests are the user's.
    assert_eq!(name(the(&documents, "Secret")), "edge-tollgate-redis");
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert!(annotations["checksum/api-admin-tokens"].is_null());
    let service = the(&documents, "Service");
    assert_eq!(
        port_named(&service["spec"]["ports"], "api").unwrap()["port"].as_u64(),
        Some(8082)
    );
    let text = notes(&values);
    assert!(text.contains("Runtime tenants live in Redis"), "{text}");
    assert!(!text.contains("WARNING"), "{text}");
}

/// helm/tollgate-xds-values.yaml: tollgate run the way Envoy Gateway runs its rate limit
/// service, from this chart.
#[test]
#[ignore = "needs the Helm library and kubernetes-validate: run scripts/test"]
fn helm_chart_renders_the_xds_example_values() {
    let text = std::fs::read_to_string("helm/tollgate-xds-values.yaml").unwrap();
    assert!(text.starts_with("# "));
    let values: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let (documents, flags) = render("xds-example", &values);
    assert!(!kinds(&documents).contains("ConfigMap"));
    assert_eq!(flags["--xds-node-id"], "envoy-ratelimit");
    assert!(flags["--xds-server"].starts_with("https://"));
    assert_eq!(port_of(&flags["--xds-server"]), 18001);
    assert_eq!(flags["--store"], "redis");
    for flag in [
        "--xds-ca-file",
        "--xds-client-cert",
        "--xds-client-key",
        "--grpc-tls-cert",
        "--grpc-tls-key",
        "--grpc-tls-client-ca",
        "--xds-start-without-config",
        "--xds-unhealthy-until-first-config",
    ] {
        assert!(flags.contains_key(flag), "{flag}");
    }
    // One Secret for both, as Envoy Gateway's envoy-rate-limit.
    let deployment = the(&documents, "Deployment");
    let (xds, _) = volume_and_mount(deployment, "xds-tls");
    let (grpc, _) = volume_and_mount(deployment, "grpc-tls");
    assert_eq!(xds["secret"]["secretName"], grpc["secret"]["secretName"]);
    assert_eq!(
        xds["secret"]["secretName"].as_str(),
        Some("envoy-rate-limit")
    );
}

#[test]
#[ignore = "needs the Helm library: run scripts/test"]
fn helm_chart_rejects_bad_values() {
    const DIGEST: &str = "sha256:abababababababababababababababababababababababababababababababab";
    for (values, expected) in [
        // values.schema.json: a typo anywhere the chart defines the keys.
        (json!({"replica": 3}), "'replica' not allowed"),
        (
            json!({"redis": {"urll": "redis://r:6379"}}),
            "'urll' not allowed",
        ),
        (json!({"store": "redis-cluster"}), "/store"),
        (json!({"redis": {"timeout": "5"}}), "/redis/timeout"),
        (
            json!({"limits": {"api.json": "domain: api"}}),
            "'api.json' does not match",
        ),
        (json!({"extraArgs": ["max-buckets=5"]}), "/extraArgs/0"),
        // Combinations the templates check.
        (
            json!({"store": "redis"}),
            "redis.url or redis.existingSecret",
        ),
        (json!({"mode": "sidecar"}), "sidecar.containers"),
        (
            json!({"store": "redis", "redis": {"url": "rediss://r:6379", "clientCertificate": true}}),
            "redis.clientCertificate needs redis.tlsSecret",
        ),
        // Limits over xDS.
        (
            json!({"xds": {"enabled": true, "server": "cp:18000"}}),
            "xds.enabled needs xds.nodeId",
        ),
        (
            json!({"xds": {"enabled": true, "nodeId": "n"}}),
            "xds.enabled needs xds.server",
        ),
        (
            json!({"xds": {"server": "cp:18000", "nodeId": "n"}}),
            "xds.server needs xds.enabled",
        ),
        (
            json!({"xds": {"enabled": true, "server": "cp", "nodeId": "n"}}),
            "/xds/server",
        ),
        (
            json!({"xds": {"enabled": true, "server": "cp:1", "nodeId": "n"}, "limits": {"a.yaml": "domain: a"}}),
            "limits and existingLimitsConfigMap are not used with xds.enabled",
        ),
        (
            json!({"xds": {"enabled": true, "server": "http://cp:1", "nodeId": "n", "tlsSecret": "t"}}),
            "xds.tlsSecret and xds.serverName need an https:// xds.server",
        ),
        (
            json!({"xds": {"enabled": true, "server": "https://cp:1", "nodeId": "n", "clientCertificate": true}}),
            "xds.clientCertificate needs xds.tlsSecret",
        ),
        (
            json!({"xds": {"enabled": true, "server": "cp:1", "nodeId": "n", "unhealthyUntilFirstConfig": true}}),
            "xds.unhealthyUntilFirstConfig needs xds.startWithoutConfig",
        ),
        // TLS on the gRPC port.
        (
            json!({"grpcTls": {"requireClientCertificate": true}}),
            "grpcTls.requireClientCertificate and grpcTls.clientSan need grpcTls.secret",
        ),
        (
            json!({"grpcTls": {"secret": "s", "clientSan": "envoy"}}),
            "grpcTls.clientSan needs grpcTls.requireClientCertificate",
        ),
        // The service API.
        (
            json!({"api": {"adminTokens": {"digests": [DIGEST]}}}),
            "api.adminTokens needs api.enabled",
        ),
        (
            json!({"api": {"adminTokens": {"existingSecret": "tokens"}}}),
            "api.adminTokens needs api.enabled",
        ),
        (
            json!({"api": {"enabled": true, "adminTokens": {"digests": ["raw-admin-token"]}}}),
            "/api/adminTokens/digests/0",
        ),
        (
            json!({"api": {"enabled": true, "stateDir": {"existingClaim": "c"}}, "replicas": 2}),
            "api.stateDir.existingClaim holds one process's state",
        ),
        (
            json!({"api": {"enabled": true, "stateDir": {"existingClaim": "c"}}, "autoscaling": {"enabled": true}}),
            "api.stateDir.existingClaim holds one process's state",
        ),
        (
            json!({"api": {"enabled": true, "stateDir": {"existingClaim": "c"}}, "store": "redis", "redis": {"url": "redis://r:6379"}}),
            "api.stateDir.existingClaim is for store: memory",
        ),
        (
            json!({"api": {"stateDir": {"existingClaim": "c"}}}),
            "api.stateDir.existingClaim needs api.enabled",
        ),
        (json!({"api": {"enable": true}}), "'enable' not allowed"),
    ] {
        let output = helm(&values);
        let error = output.error.unwrap_or_else(|| panic!("{values} rendered"));
        assert!(error.contains(expected), "{values}: {error}");
    }
}

/// A table row of helm/tollgate/README.md's values table: name → (type, default).
fn readme_values() -> BTreeMap<String, (String, String)> {
    let readme = std::fs::read_to_string(format!("{CHART}/README.md")).unwrap();
    let mut rows = BTreeMap::new();
    let table = readme
        .split("## Values")
        .nth(1)
        .unwrap()
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2);
    for row in table {
        let cells: Vec<_> = row.trim_matches('|').split(" | ").map(str::trim).collect();
        assert_eq!(cells.len(), 4, "{row}");
        let unquote = |cell: &str| cell.trim_matches('`').to_owned();
        let previous = rows.insert(unquote(cells[0]), (cells[1].to_owned(), unquote(cells[2])));
        assert!(previous.is_none(), "twice: {row}");
    }
    rows
}

/// The values the schema names, down to objects without declared properties.
fn schema_leaves(
    schema: &serde_json::Value,
    prefix: &str,
    out: &mut BTreeMap<String, serde_json::Value>,
) {
    for (key, property) in schema["properties"].as_object().unwrap() {
        let path = format!("{prefix}{key}");
        if property["properties"].is_object() {
            assert_eq!(property["additionalProperties"], json!(false), "{path}");
            schema_leaves(property, &format!("{path}."), out);
        } else {
            out.insert(path, property.clone());
        }
    }
}

#[test]
fn helm_chart_readme_schema_and_values_agree() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{CHART}/values.schema.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        schema["$schema"],
        json!("http://json-schema.org/draft-07/schema#")
    );
    assert_eq!(
        schema["additionalProperties"],
        json!(false),
        "typos must fail"
    );
    let mut leaves = BTreeMap::new();
    schema_leaves(&schema, "", &mut leaves);
    let readme = readme_values();
    assert_eq!(
        readme.keys().collect::<Vec<_>>(),
        leaves.keys().collect::<Vec<_>>(),
        "README.md's table and values.schema.json name different values"
    );
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(format!("{CHART}/values.yaml")).unwrap())
            .unwrap();
    let top: BTreeSet<_> = values
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| string(k).to_owned())
        .collect();
    let schema_top: BTreeSet<_> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(top, schema_top, "values.yaml and values.schema.json");
    for (path, (kind, default)) in &readme {
        let mut value = &values;
        for part in path.split('.') {
            value = &value[part];
        }
        assert!(!value.is_null(), "{path}: no default in values.yaml");
        let documented: Value = serde_yaml::from_str(default).unwrap();
        assert_eq!(&documented, value, "{path}: README's default");
        let expected = match &value {
            Value::Bool(_) => "boolean",
            Value::Number(_) => "integer",
            Value::String(_) => "string",
            Value::Sequence(_) => "list",
            _ => "map",
        };
        assert!(
            kind.starts_with(expected),
            "{path}: {kind}, default {default}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// docker-compose.yaml

#[test]
#[ignore = "needs check-jsonschema and a real Envoy: run scripts/test"]
fn compose_playground_is_valid() {
    // The Compose specification's schema, as vendored by check-jsonschema.
    let check = tool("TOLLGATE_CHECK_JSONSCHEMA", ".venv/bin/check-jsonschema");
    let out = Command::new(check)
        .args([
            "--builtin-schema",
            "vendor.compose-spec",
            "docker-compose.yaml",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let text = std::fs::read_to_string("docker-compose.yaml").unwrap();
    assert!(text.starts_with("# What this shows:"));
    let compose: Value = serde_yaml::from_str(&text).unwrap();
    let services = &compose["services"];
    // Bind mounts: host path (relative to this file) → container path; every one exists.
    let mounts = |service: &str| -> BTreeMap<String, PathBuf> {
        list(&services[service]["volumes"])
            .iter()
            .map(|v| {
                let mut parts = string(v).split(':');
                let host = PathBuf::from(parts.next().unwrap());
                assert!(host.exists(), "{service}: {} is missing", host.display());
                (parts.next().unwrap().to_owned(), host)
            })
            .collect()
    };

    assert_eq!(services["redis"]["image"].as_str(), Some("redis:7"));
    assert!(
        string(&services["envoy"]["image"]).starts_with("envoyproxy/envoy:v1.40."),
        "Envoy 1.40"
    );
    let build = &services["tollgate"]["build"];
    assert!(
        Path::new(string(&build["context"]))
            .join(string(&build["dockerfile"]))
            .exists()
    );

    // tollgate: its command parses, counts in the redis service, serves the mounted limits.
    let command: Vec<_> = list(&services["tollgate"]["command"])
        .iter()
        .map(|a| string(a).to_owned())
        .collect();
    let flags = check_serve_args("docker-compose.yaml", &command, &[]);
    assert_eq!(flags["--store"], "redis");
    assert!(flags["--redis-url"].starts_with("redis://redis:6379"));
    let limits_dir = &mounts("tollgate")[&flags["--config"]];
    let limits = config::load(limits_dir, &Options::default()).unwrap();

    // Envoy: a valid bootstrap calling the tollgate service on its gRPC port, for a domain of
    // those limits.
    let envoy_mounts = mounts("envoy");
    let command: Vec<_> = list(&services["envoy"]["command"])
        .iter()
        .map(string)
        .collect();
    let bootstrap_path = command.windows(2).find(|w| w[0] == "-c").unwrap()[1];
    let bootstrap_file = &envoy_mounts[bootstrap_path];
    envoy_validate(bootstrap_file);
    let bootstrap: Value =
        serde_yaml::from_str(&std::fs::read_to_string(bootstrap_file).unwrap()).unwrap();
    let (domains, address, port) = envoy_rate_limit_target(&bootstrap);
    assert_eq!(address, "tollgate");
    assert!(services[address.as_str()].is_mapping());
    assert_eq!(port, port_of(&flags["--grpc-addr"]));
    for domain in &domains {
        assert!(
            limits.domain(domain).is_some(),
            "no limits for domain {domain}"
        );
    }
}
