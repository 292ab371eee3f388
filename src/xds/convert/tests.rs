use super::*;
use crate::config::Options;
use crate::xds::resource::{RateLimitReplace, RateLimitUnit};

fn any(config: &RateLimitConfig) -> Any {
    Any {
        type_url: TYPE_URL.to_owned(),
        value: config.encode_to_vec(),
    }
}

fn limit(unit: RateLimitUnit, requests_per_unit: u32) -> Option<RateLimitPolicy> {
    Some(RateLimitPolicy {
        unit: unit as i32,
        requests_per_unit,
        ..Default::default()
    })
}

fn node(key: &str, value: &str, rate_limit: Option<RateLimitPolicy>) -> RateLimitDescriptor {
    RateLimitDescriptor {
        key: key.to_owned(),
        value: value.to_owned(),
        rate_limit,
        ..Default::default()
    }
}

fn config(name: &str, domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitConfig {
    RateLimitConfig {
        name: name.to_owned(),
        domain: domain.to_owned(),
        descriptors,
    }
}

/// `GET /rlconfig`'s lines for a compiled configuration.
fn limits(loaded: &Loaded) -> Vec<String> {
    let mut lines = Vec::new();
    for domain in loaded.config.domains() {
        for rule in domain.root.rules() {
            lines.push(format!(
                "{} {:?} shadow={} quota={} name={:?} replaces={:?} metadata={:?}",
                rule.id,
                rule.policy,
                rule.shadow_mode,
                rule.quota_mode,
                rule.name,
                rule.replaces,
                rule.metadata
            ));
        }
    }
    lines.sort();
    lines
}

#[test]
fn a_pushed_config_compiles_as_the_file_it_stands_for() {
    let mut user = node("user", "", limit(RateLimitUnit::Minute, 10));
    user.shadow_mode = true;
    user.quota_mode = true;
    user.rate_limit.as_mut().unwrap().name = "per_user".to_owned();
    user.rate_limit.as_mut().unwrap().replaces = vec![RateLimitReplace {
        name: "general".to_owned(),
    }];
    user.metadata = Some(Struct {
        fields: [
            (
                "tier".to_owned(),
                Value {
                    kind: Some(Kind::StringValue("gold".into())),
                },
            ),
            (
                "weight".to_owned(),
                Value {
                    kind: Some(Kind::NumberValue(3.0)),
                },
            ),
        ]
        .into(),
    });
    let mut route = node("route", "/api/*", None);
    route.descriptors = vec![node("method", "GET", limit(RateLimitUnit::Week, 5))];
    let free = node(
        "free",
        "",
        Some(RateLimitPolicy {
            unlimited: true,
            ..Default::default()
        }),
    );
    let pushed = config("eg", "api", vec![user, route, free]);
    let from_xds = compile(&[any(&pushed)], &Options::default()).unwrap();

    let yaml = r#"
domain: api
descriptors:
  - key: user
    shadow_mode: true
    quota_mode: true
    metadata: {tier: gold, weight: 3}
    rate_limit: {unit: minute, requests_per_unit: 10, name: per_user, replaces: [{name: general}]}
  - key: route
    value: /api/*
    descriptors:
      - key: method
        value: GET
        rate_limit: {unit: week, requests_per_unit: 5}
  - key: free
    rate_limit: {unlimited: true}
"#;
    let file = SourceFile {
        path: "api.yaml".into(),
        text: yaml.to_owned(),
    };
    let from_file = reload::compile(vec![file], &Options::default()).unwrap();
    assert_eq!(limits(&from_xds), limits(&from_file));
    assert_eq!(from_xds.files, [PathBuf::from("xds:eg")]);
}

#[test]
fn errors_are_the_files_errors_named_by_resource_without_lines() {
    let bad = config(
        "eg",
        "api",
        vec![
            node("user", "", limit(RateLimitUnit::Unknown, 10)),
            node("user", "", limit(RateLimitUnit::Second, 1)),
        ],
    );
    let errors = compile(&[any(&bad)], &Options::default()).unwrap_err();
    let messages: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "xds:eg: descriptor 'api.user': invalid rate limit unit 'UNKNOWN' (expected one of second, minute, hour, day, week, month, year)",
            "xds:eg: descriptor 'api.user': duplicate descriptor composite key 'api.user'",
        ]
    );
}

#[test]
fn two_resources_of_one_domain_are_refused_as_two_files_are() {
    let one = config(
        "a",
        "api",
        vec![node("k", "", limit(RateLimitUnit::Second, 1))],
    );
    let two = config(
        "b",
        "api",
        vec![node("k", "", limit(RateLimitUnit::Second, 1))],
    );
    let errors = compile(&[any(&one), any(&two)], &Options::default()).unwrap_err();
    assert!(
        errors.0[0]
            .to_string()
            .starts_with("xds:b: duplicate domain 'api'"),
        "{errors}"
    );
}

#[test]
fn a_resource_of_another_type_or_undecodable_is_named() {
    let wrong = Any {
        type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".to_owned(),
        value: Vec::new(),
    };
    let error = compile(&[wrong], &Options::default()).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("xds:resources[0]: resource of type"),
        "{error}"
    );
    let garbage = Any {
        type_url: TYPE_URL.to_owned(),
        value: vec![0xff, 0xff, 0xff],
    };
    let error = compile(&[garbage], &Options::default()).unwrap_err();
    assert!(
        error.to_string().contains("cannot decode RateLimitConfig"),
        "{error}"
    );
}

#[test]
fn equal_pushes_are_equal_versions_whatever_the_metadata_order() {
    let with = |pairs: &[(&str, f64)]| {
        let mut user = node("user", "", limit(RateLimitUnit::Second, 1));
        user.metadata = Some(Struct {
            fields: pairs
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        Value {
                            kind: Some(Kind::NumberValue(*v)),
                        },
                    )
                })
                .collect(),
        });
        compile(
            &[any(&config("eg", "api", vec![user]))],
            &Options::default(),
        )
        .unwrap()
        .version
    };
    let many: Vec<(String, f64)> = (0..20).map(|i| (format!("k{i}"), f64::from(i))).collect();
    let forward: Vec<(&str, f64)> = many.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let backward: Vec<(&str, f64)> = forward.iter().rev().copied().collect();
    assert_eq!(with(&forward), with(&backward));
}
