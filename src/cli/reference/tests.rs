use super::*;
use crate::cli::Cli;
use clap::Parser;

fn env(vars: &[(&str, &str)]) -> Env {
    Env::new(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
}

/// The flags as `(flag, value)` pairs and lone flags, for lookups.
fn value<'a>(translation: &'a Translation, flag: &str) -> Vec<&'a str> {
    translation
        .flags
        .windows(2)
        .filter(|pair| pair[0] == flag)
        .map(|pair| pair[1].as_str())
        .collect()
}

fn has(translation: &Translation, flag: &str) -> bool {
    translation.flags.iter().any(|f| f == flag)
}

/// The command line tollgate would parse.
fn parses(translation: &Translation) {
    let mut args = vec!["tollgate".to_owned(), "serve".to_owned()];
    args.extend(translation.flags.iter().cloned());
    if let Err(error) = Cli::try_parse_from(&args) {
        panic!("{args:?} does not parse: {error}");
    }
}

/// Exactly what Envoy Gateway's ratelimit Deployment sets (its
/// internal/infrastructure/kubernetes/ratelimit/resource.go), with Redis, TLS to Redis and
/// Prometheus.
pub(crate) const ENVOY_GATEWAY: &[(&str, &str)] = &[
    ("RUNTIME_ROOT", "/data"),
    ("RUNTIME_SUBDIRECTORY", "ratelimit"),
    ("RUNTIME_IGNOREDOTFILES", "true"),
    ("RUNTIME_WATCH_ROOT", "false"),
    ("LOG_LEVEL", "info"),
    ("USE_STATSD", "false"),
    ("CONFIG_TYPE", "GRPC_XDS_SOTW"),
    ("CONFIG_GRPC_XDS_SERVER_URL", "envoy-gateway:18001"),
    ("CONFIG_GRPC_XDS_NODE_ID", "envoy-ratelimit"),
    ("GRPC_SERVER_USE_TLS", "true"),
    ("GRPC_SERVER_TLS_CERT", "/certs/tls.crt"),
    ("GRPC_SERVER_TLS_KEY", "/certs/tls.key"),
    ("GRPC_SERVER_TLS_CA_CERT", "/certs/ca.crt"),
    ("CONFIG_GRPC_XDS_SERVER_USE_TLS", "true"),
    ("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", "/certs/tls.crt"),
    ("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", "/certs/tls.key"),
    ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", "/certs/ca.crt"),
    ("FORCE_START_WITHOUT_INITIAL_CONFIG", "true"),
    ("REDIS_SOCKET_TYPE", "tcp"),
    ("REDIS_URL", "redis.redis-system.svc.cluster.local:6379"),
    ("REDIS_TLS", "true"),
    ("REDIS_TLS_CLIENT_CERT", "/redis-certs/tls.crt"),
    ("REDIS_TLS_CLIENT_KEY", "/redis-certs/tls.key"),
    ("USE_PROMETHEUS", "true"),
    ("PROMETHEUS_ADDR", ":19001"),
    ("PROMETHEUS_MAPPER_YAML", "/etc/statsd-exporter/conf.yaml"),
];

#[test]
fn envoy_gateways_environment_becomes_these_flags() {
    let t = translate(&env(ENVOY_GATEWAY)).unwrap();
    assert_eq!(value(&t, "--xds-server"), ["https://envoy-gateway:18001"]);
    assert_eq!(value(&t, "--xds-node-id"), ["envoy-ratelimit"]);
    assert!(has(&t, "--xds-start-without-config"));
    assert!(!has(&t, "--xds-unhealthy-until-first-config"));
    let mut healthy_after_load = ENVOY_GATEWAY.to_vec();
    healthy_after_load.push(("HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED", "true"));
    let loaded = translate(&env(&healthy_after_load)).unwrap();
    assert!(has(&loaded, "--xds-unhealthy-until-first-config"));
    assert_eq!(loaded.warnings, t.warnings, "understood, not warned about");
    assert_eq!(value(&t, "--xds-ca-file"), ["/certs/ca.crt"]);
    assert_eq!(value(&t, "--xds-client-cert"), ["/certs/tls.crt"]);
    assert_eq!(value(&t, "--grpc-tls-cert"), ["/certs/tls.crt"]);
    assert_eq!(value(&t, "--grpc-tls-client-ca"), ["/certs/ca.crt"]);
    assert_eq!(value(&t, "--grpc-addr"), ["0.0.0.0:8081"]);
    assert_eq!(value(&t, "--http-addr"), ["0.0.0.0:8080"]);
    assert_eq!(value(&t, "--metrics-addr"), ["0.0.0.0:19001"]);
    assert_eq!(
        value(&t, "--redis-url"),
        ["rediss://redis.redis-system.svc.cluster.local:6379"]
    );
    assert_eq!(value(&t, "--redis-client-key"), ["/redis-certs/tls.key"]);
    assert_eq!(value(&t, "--log-level"), ["info"]);
    assert_eq!(value(&t, "--default-algorithm"), ["fixed_window"]);
    assert!(has(&t, "--count-denied"), "the reference counts every hit");
    assert!(!has(&t, "--config"));
    let warnings = t.warnings.join("\n");
    assert!(warnings.contains("GRPC_SERVER_TLS_CA_CERT"), "{warnings}");
    assert!(warnings.contains("PROMETHEUS_MAPPER_YAML"), "{warnings}");
    assert!(!warnings.contains("USE_STATSD"), "{warnings}");
    assert_eq!(t.warnings.len(), 2, "{warnings}");
}

#[test]
fn every_translation_is_a_command_line_tollgate_parses() {
    let files = [("CONFIG_TYPE", "FILE"), ("RUNTIME_ROOT", "/srv")];
    let headers = [
        ("LIMIT_RESPONSE_HEADERS_ENABLED", "true"),
        ("LIMIT_REMAINING_HEADER", "X-Left"),
        ("RESPONSE_DYNAMIC_METADATA", "true"),
        ("SHADOW_MODE", "true"),
        ("QUOTA_MODE", "true"),
        ("NEAR_LIMIT_RATIO", "0.9"),
        ("REDIS_SOCKET_TYPE", "tcp"),
        ("REDIS_TYPE", "cluster"),
        ("REDIS_URL", "a:6379,b:6379"),
        ("REDIS_TIMEOUT", "2s"),
        ("CACHE_KEY_PREFIX", "rl_"),
        ("CONFIG_GRPC_XDS_NODE_METADATA", "zone=a,bad"),
        (
            "CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS",
            "authorization:Bearer x",
        ),
    ];
    for vars in [&[][..], ENVOY_GATEWAY, &files, &headers] {
        parses(&translate(&env(vars)).unwrap());
    }
}

#[test]
fn the_reference_defaults_hold_where_nothing_is_set() {
    let t = translate(&env(&[])).unwrap();
    assert_eq!(value(&t, "--config"), ["/srv/runtime_data/current/config"]);
    assert_eq!(
        value(&t, "--redis-url"),
        ["redis+unix:///var/run/nutcracker/ratelimit.sock"]
    );
    assert_eq!(value(&t, "--log-level"), ["warn"]);
    assert_eq!(value(&t, "--log-format"), ["text"]);
    assert!(has(&t, "--count-denied"));
    assert!(
        t.warnings.iter().any(|w| w.starts_with("USE_STATSD=true")),
        "statsd is the reference's default and is not sent: {:?}",
        t.warnings
    );
    let files = translate(&env(&[
        ("RUNTIME_ROOT", "/data"),
        ("RUNTIME_SUBDIRECTORY", "ratelimit"),
        ("RUNTIME_APPDIRECTORY", "limits"),
        ("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", "true"),
    ]))
    .unwrap();
    assert_eq!(value(&files, "--config"), ["/data/ratelimit/limits"]);
    assert!(!has(&files, "--count-denied"));
}

#[test]
fn what_cannot_be_served_is_refused_by_name() {
    let refused = |vars: &[(&str, &str)], words: &[&str]| {
        let errors = translate(&env(vars)).unwrap_err().join("\n");
        for word in words {
            assert!(errors.contains(word), "{vars:?}: {errors}");
        }
    };
    refused(
        &[
            ("REDIS_TYPE", "sentinel"),
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_URL", "10.0.0.1:26379"),
        ],
        &["REDIS_TYPE=sentinel needs REDIS_URL=<master name>,<sentinel host:port>"],
    );
    refused(&[("BACKEND_TYPE", "memcache")], &["BACKEND_TYPE=memcache"]);
    refused(&[("GRPC_UDS", "/tmp/rl.sock")], &["GRPC_UDS"]);
    refused(&[("MERGE_DOMAIN_CONFIG", "true")], &["MERGE_DOMAIN_CONFIG"]);
    refused(
        &[("SHADOW_MODE", "yes")],
        &["SHADOW_MODE=yes", "true or false"],
    );
    refused(&[("GRPC_PORT", "http")], &["GRPC_PORT=http"]);
    refused(
        &[("CONFIG_TYPE", "GRPC_XDS_DELTA")],
        &["CONFIG_TYPE=GRPC_XDS_DELTA"],
    );
    refused(
        &[("GRPC_SERVER_USE_TLS", "true")],
        &["GRPC_SERVER_TLS_CERT", "GRPC_SERVER_TLS_KEY"],
    );
    refused(
        &[
            ("REDIS_TLS_SKIP_HOSTNAME_VERIFICATION", "true"),
            ("REDIS_TLS", "true"),
            ("REDIS_SOCKET_TYPE", "tcp"),
        ],
        &["REDIS_TLS_SKIP_HOSTNAME_VERIFICATION"],
    );
    // Every problem at once.
    let errors = translate(&env(&[("GRPC_UDS", "x"), ("BACKEND_TYPE", "memcache")])).unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:?}");
}

#[test]
fn what_works_differently_is_named_in_a_warning() {
    let warned = |vars: &[(&str, &str)], word: &str| {
        let t = translate(&env(vars)).unwrap();
        assert!(
            t.warnings.iter().any(|w| w.contains(word)),
            "{vars:?}: {:?}",
            t.warnings
        );
    };
    warned(&[("DEBUG_PORT", "7070")], "DEBUG_PORT");
    warned(&[("REDIS_POOL_SIZE", "50")], "REDIS_POOL_SIZE");
    warned(
        &[("REDIS_PERSECOND", "true"), ("REDIS_PERSECOND_URL", "x:1")],
        "REDIS_PERSECOND_URL",
    );
    warned(&[("MEMCACHE_HOST_PORT", "m:11211")], "MEMCACHE_HOST_PORT");
    warned(
        &[("GRPC_SERVER_TLS_CERT", "/c")],
        "GRPC_SERVER_USE_TLS is not true",
    );
    // The reference's defaults, spelt differently, are not worth a warning.
    let t = translate(&env(&[
        ("DEBUG_PORT", "6070"),
        ("REDIS_POOL_SIZE", "10"),
        ("USE_STATSD", "FALSE"),
        ("STATS_FLUSH_INTERVAL", "10000ms"),
    ]))
    .unwrap();
    assert_eq!(t.warnings, Vec::<String>::new());
}

#[test]
fn redis_urls_carry_the_password_encoded_and_cluster_seeds() {
    let t = translate(&env(&[
        ("REDIS_SOCKET_TYPE", "tcp"),
        ("REDIS_URL", "10.0.0.1:6379"),
        ("REDIS_AUTH", "user:p@ss/w:rd"),
    ]))
    .unwrap();
    assert_eq!(
        value(&t, "--redis-url"),
        ["redis://user:p%40ss%2Fw%3Ard@10.0.0.1:6379"]
    );
    let t = translate(&env(&[("REDIS_AUTH", "secret")])).unwrap();
    assert_eq!(
        value(&t, "--redis-url"),
        ["redis+unix:///var/run/nutcracker/ratelimit.sock?pass=secret"]
    );
    let t = translate(&env(&[
        ("REDIS_SOCKET_TYPE", "tcp"),
        ("REDIS_TYPE", "CLUSTER"),
        ("REDIS_URL", "a:7000, b:7001"),
    ]))
    .unwrap();
    assert_eq!(
        value(&t, "--redis-url"),
        ["redis://a:7000", "redis://b:7001"]
    );
    assert!(has(&t, "--redis-cluster"));
    let t = translate(&env(&[
        ("REDIS_SOCKET_TYPE", "tcp"),
        ("REDIS_TYPE", "sentinel"),
        ("REDIS_URL", "mymaster,s1:26379, s2:26379"),
        ("REDIS_AUTH", "secret"),
    ]))
    .unwrap();
    assert_eq!(value(&t, "--redis-sentinel"), ["mymaster"]);
    assert_eq!(
        value(&t, "--redis-sentinel-auth"),
        [""],
        "Sentinels without a password"
    );
    assert_eq!(
        value(&t, "--redis-url"),
        ["redis://:secret@s1:26379", "redis://:secret@s2:26379"]
    );
    let t = translate(&env(&[
        ("REDIS_SOCKET_TYPE", "tcp"),
        ("REDIS_TYPE", "sentinel"),
        ("REDIS_URL", "mymaster,s1:26379"),
        ("REDIS_SENTINEL_AUTH", "sentinel-secret"),
    ]))
    .unwrap();
    assert_eq!(value(&t, "--redis-sentinel-auth"), ["sentinel-secret"]);
    assert_eq!(value(&t, "--redis-url"), ["redis://s1:26379"]);
}

#[test]
fn reference_mode_is_serve_alone_with_no_tollgate_variable() {
    let args = |list: &[&str]| list.iter().map(OsString::from).collect::<Vec<_>>();
    let tollgate = ["TOLLGATE_CONFIG".to_owned()];
    let none = env(&[]);
    let it = invocation(args(&["/usr/bin/tollgate", "serve"]), &none, &tollgate).unwrap();
    assert!(it.reference.is_some());
    let it = invocation(args(&["/bin/ratelimit"]), &none, &tollgate).unwrap();
    assert!(it.reference.is_some(), "/bin/ratelimit is `tollgate serve`");
    assert_eq!(it.args[1], "serve");
    let it = invocation(
        args(&["/bin/ratelimit", "serve", "--config", "x"]),
        &none,
        &tollgate,
    )
    .unwrap();
    assert_eq!(it.args, args(&["/bin/ratelimit", "serve", "--config", "x"]));
    assert!(
        it.reference.is_none(),
        "with arguments, tollgate's command line"
    );
    let it = invocation(
        args(&["tollgate", "serve", "--config", "x"]),
        &none,
        &tollgate,
    )
    .unwrap();
    assert!(it.reference.is_none());
    let configured = env(&[("TOLLGATE_CONFIG", "x")]);
    let it = invocation(args(&["tollgate", "serve"]), &configured, &tollgate).unwrap();
    assert!(it.reference.is_none());
    // A variable no flag reads (scripts/test exports TOLLGATE_ENVOY) is not tollgate's.
    let other = env(&[("TOLLGATE_ENVOY", ".venv/bin/envoy")]);
    let it = invocation(args(&["tollgate", "serve"]), &other, &tollgate).unwrap();
    assert!(it.reference.is_some());
    let it = invocation(args(&["tollgate", "validate", "x"]), &none, &tollgate).unwrap();
    assert!(it.reference.is_none());
}
