use super::source::SourceFile;
use super::*;
use crate::quota::{Quota, Unit};

fn file(name: &str, text: &str) -> SourceFile {
    SourceFile {
        path: PathBuf::from(name),
        text: text.to_owned(),
    }
}

fn compile_one(text: &str) -> Result<RateLimitConfig, Vec<ConfigError>> {
    compile(&[file("limits.yaml", text)], &Options::default())
}

/// The single error `text` produces.
fn error_of(text: &str) -> ConfigError {
    let errors = compile_one(text).expect_err("config should be rejected");
    assert_eq!(errors.len(), 1, "{errors:?}");
    errors.into_iter().next().unwrap()
}

fn assert_error(text: &str, line: Option<usize>, descriptor: Option<&str>, message: &str) {
    let error = error_of(text);
    assert_eq!(error.file, PathBuf::from("limits.yaml"));
    assert!(error.message.contains(message), "{error}");
    assert_eq!(error.line, line, "{error}");
    assert_eq!(error.descriptor.as_deref(), descriptor, "{error}");
}

#[test]
fn a_reference_service_file_compiles() {
    let config = compile_one(
        r#"
domain: mongo_cps
descriptors:
  - key: database
    value: users
    rate_limit:
      unit: SECOND
      requests_per_unit: 500
      name: users
  - key: database
    rate_limit:
      unit: Second
      requests_per_unit: 50
      replaces:
        - name: users
  - key: status
    value: 200
    shadow_mode: true
    detailed_metric: true
    rate_limit: {unit: hour, requests_per_unit: 10}
  - key: path
    value: "/api/*"
    share_threshold: true
    value_to_metric: true
    quota_mode: true
    metadata: {team: core}
    rate_limit: {unit: day, requests_per_unit: 0}
  - key: bypass
    rate_limit: {unlimited: true}
"#,
    )
    .unwrap();
    let domain = config.domain("mongo_cps").unwrap();
    assert_eq!(domain.root.rules().len(), 5);
    let rule = config.find("mongo_cps", &[("status", "200")]).unwrap();
    assert_eq!(&*rule.id, "mongo_cps.status_200");
    assert!(rule.shadow_mode && rule.detailed_metric);
    assert_eq!(
        rule.policy,
        Policy::Limited(Quota::new(10, Unit::Hour, Algorithm::TokenBucket))
    );
    let users = config.find("mongo_cps", &[("database", "users")]).unwrap();
    assert_eq!(users.name.as_deref(), Some("users"));
    let path = config.find("mongo_cps", &[("path", "/api/x")]).unwrap();
    assert!(path.quota_mode && path.value_to_metric && path.metadata.is_some());
    assert_eq!(
        domain.summary(),
        "limits.yaml: domain 'mongo_cps': 5 limits (1 unlimited, 1 shadow mode)"
    );
}

#[test]
fn algorithm_and_burst_extensions_compile() {
    let config = compile_one(
        "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: minute, requests_per_unit: 60, burst: 5}\n  - key: b\n    rate_limit: {unit: minute, requests_per_unit: 60, algorithm: fixed_window}\n",
    )
    .unwrap();
    let a = config.find("d", &[("a", "x")]).unwrap();
    assert_eq!(
        a.policy,
        Policy::Limited(Quota::new(60, Unit::Minute, Algorithm::TokenBucket).with_burst(5))
    );
    let b = config.find("d", &[("b", "x")]).unwrap();
    assert_eq!(
        b.policy,
        Policy::Limited(Quota::new(60, Unit::Minute, Algorithm::FixedWindow))
    );
}

#[test]
fn the_default_algorithm_comes_from_options() {
    let options = Options {
        default_algorithm: Algorithm::FixedWindow,
        ..Options::default()
    };
    let config = compile(
        &[file("f.yaml", "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1}\n")],
        &options,
    )
    .unwrap();
    let rule = config.find("d", &[("a", "1")]).unwrap();
    assert_eq!(
        rule.policy,
        Policy::Limited(Quota::new(1, Unit::Second, Algorithm::FixedWindow))
    );
}

#[test]
fn debt_defaults_to_one_capacity_and_count_denied_gives_it_to_every_limit() {
    let yaml = "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: minute, requests_per_unit: 60, burst: 5, debt: true}\n  - key: b\n    rate_limit: {unit: minute, requests_per_unit: 60, debt: true, max_debt: 7}\n  - key: c\n    rate_limit: {unit: minute, requests_per_unit: 60}\n  - key: e\n    rate_limit: {unit: minute, requests_per_unit: 60, debt: false}\n";
    let debt_of = |options: &Options, key: &str| {
        let config = compile(&[file("f.yaml", yaml)], options).unwrap();
        match config.find("d", &[(key, "1")]).unwrap().policy {
            Policy::Limited(quota) => quota.debt(),
            Policy::Unlimited => panic!("limited"),
        }
    };
    let plain = Options::default();
    assert_eq!(
        debt_of(&plain, "a"),
        5,
        "a token bucket's capacity is its burst"
    );
    assert_eq!(debt_of(&plain, "b"), 7);
    assert_eq!(debt_of(&plain, "c"), 0);
    let counting = Options {
        count_denied: true,
        ..Options::default()
    };
    assert_eq!(debt_of(&counting, "c"), 60);
    assert_eq!(debt_of(&counting, "e"), 0, "debt: false opts out");
}

#[test]
fn burst_without_algorithm_means_token_bucket_whatever_the_default() {
    let options = Options {
        default_algorithm: Algorithm::FixedWindow,
        ..Options::default()
    };
    let config = compile(
        &[file("f.yaml", "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 2, burst: 5}\n")],
        &options,
    )
    .unwrap();
    let rule = config.find("d", &[("a", "1")]).unwrap();
    assert_eq!(
        rule.policy,
        Policy::Limited(Quota::new(2, Unit::Second, Algorithm::TokenBucket).with_burst(5))
    );
}

#[test]
fn unknown_keys_are_errors_with_their_line() {
    assert_error("domain: d\nfoo: 1\n", Some(2), None, "unknown field `foo`");
    assert_error(
        "domain: d\ndescriptors:\n  - key: a\n    rate_limt:\n      unit: second\n",
        Some(4),
        None,
        "descriptors[0]: unknown field `rate_limt`",
    );
    assert_error(
        "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      request_per_unit: 5\n",
        Some(6),
        None,
        "unknown field `request_per_unit`",
    );
}

#[test]
fn empty_domain_and_empty_files_are_errors() {
    assert_error(
        "descriptors: []\n",
        None,
        None,
        "config file cannot have empty domain",
    );
    assert_error(
        "domain: ''\n",
        None,
        None,
        "config file cannot have empty domain",
    );
    assert_error(
        "# only a comment\n",
        None,
        None,
        "config file cannot have empty domain",
    );
}

#[test]
fn duplicate_domains_across_files_are_errors() {
    let errors = compile(
        &[file("a.yaml", "domain: d\n"), file("b.yaml", "domain: d\n")],
        &Options::default(),
    )
    .unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].file, PathBuf::from("b.yaml"));
    assert_eq!(errors[0].line, Some(1));
    assert!(
        errors[0].message.contains("duplicate domain 'd'"),
        "{}",
        errors[0]
    );
    assert!(errors[0].message.contains("a.yaml"), "{}", errors[0]);
}

#[test]
fn descriptor_errors_name_line_and_descriptor() {
    assert_error(
        "domain: d\ndescriptors:\n  - value: x\n",
        Some(3),
        Some("d._x"),
        "descriptor has empty key",
    );
    assert_error(
        "domain: d\ndescriptors:\n  - key: a\n    descriptors:\n      - key: b\n        value: v\n      - key: b\n        value: v\n",
        Some(7),
        Some("d.a.b_v"),
        "duplicate descriptor composite key 'd.a.b_v'",
    );
    assert_error(
        "domain: d\ndescriptors:\n  - key: a\n  - key: a\n    value: ''\n",
        Some(4),
        Some("d.a"),
        "duplicate descriptor",
    );
}

#[test]
fn a_limit_may_choose_its_consistency() {
    let config = compile_one(
        "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: minute, requests_per_unit: 60, consistency: cached}\n  - key: b\n    rate_limit: {unit: minute, requests_per_unit: 60}\n",
    )
    .unwrap();
    let a = config.find("d", &[("a", "x")]).unwrap();
    assert_eq!(a.consistency, Some(crate::rule::Consistency::Cached));
    let b = config.find("d", &[("b", "x")]).unwrap();
    assert_eq!(b.consistency, None, "the server's --consistency applies");
}

#[test]
fn rate_limit_errors() {
    let limit =
        |body: &str| format!("domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n{body}");
    let cases = [
        (
            "      unit: fortnight\n      requests_per_unit: 1\n",
            "invalid rate limit unit 'fortnight'",
        ),
        ("      requests_per_unit: 1\n", "invalid rate limit unit ''"),
        ("      unit: second\n", "requests_per_unit is required"),
        (
            "      unit: second\n      unlimited: true\n",
            "should not specify rate limit unit when unlimited",
        ),
        (
            "      unlimited: true\n      burst: 3\n",
            "should not specify burst when unlimited",
        ),
        (
            "      unit: second\n      requests_per_unit: 1\n      replaces:\n        - name: ''\n",
            "should not have an empty replaces entry",
        ),
        (
            "      unit: second\n      requests_per_unit: 1\n      name: me\n      replaces: [{name: me}]\n",
            "replaces should not contain name of same descriptor",
        ),
        (
            "      unit: second\n      requests_per_unit: 1\n      algorithm: leaky\n",
            "unknown algorithm 'leaky'",
        ),
        (
            "      unit: second\n      requests_per_unit: 1\n      algorithm: fixed_window\n      burst: 2\n",
            "burst applies only to algorithm token_bucket",
        ),
        (
            "      unit: second\n      requests_per_unit: 1\n      burst: 0\n",
            "burst must be at least 1",
        ),
        (
            "      unit: second\n      requests_per_unit: 1\n      max_debt: 5\n",
            "max_debt applies only with debt: true",
        ),
        (
            "      unit: second\n      requests_per_unit: 1\n      unit_multiplier: 0\n",
            "unit_multiplier must be at least 1",
        ),
        (
            "      unit: hour\n      requests_per_unit: 1\n      calendar: true\n",
            "calendar applies to units of a day or more (day, week, month, year), not hour",
        ),
        (
            "      unit: month\n      requests_per_unit: 1\n      calendar: true\n      algorithm: token_bucket\n",
            "calendar applies to algorithm fixed_window, not token_bucket",
        ),
        (
            "      unit: month\n      requests_per_unit: 1\n      calendar: true\n      timezone: Mars/Olympus\n",
            "unknown timezone 'Mars/Olympus'",
        ),
        (
            "      unit: month\n      requests_per_unit: 1\n      timezone: Europe/Berlin\n",
            "timezone applies only with calendar: true",
        ),
        (
            "      unit: year\n      requests_per_unit: 1\n      unit_multiplier: 101\n",
            "unit_multiplier 101 years is longer than 100 years",
        ),
        (
            "      unlimited: true\n      unit_multiplier: 2\n",
            "should not specify unit_multiplier when unlimited",
        ),
        (
            "      unit: second\n      requests_per_unit: 1\n      debt: true\n      max_debt: 0\n",
            "max_debt must be at least 1",
        ),
        (
            "      unit: minute\n      requests_per_unit: 10000\n      algorithm: sliding_log\n      debt: true\n",
            "debt: true has no room: sliding_log counts at most 10000 in all, and the limit is 10000",
        ),
        (
            "      unit: year\n      requests_per_unit: 1\n      burst: 1000\n",
            "more than 100 years to refill",
        ),
        (
            "      unit: second\n      requests_per_unit: 4000000\n",
            "faster than a token bucket counts exactly",
        ),
        (
            "      unit: second\n      requests_per_unit: 1\n      consistency: eventual\n",
            "unknown consistency 'eventual' (expected strict or cached)",
        ),
        (
            "      unlimited: true\n      consistency: cached\n",
            "should not specify consistency when unlimited",
        ),
        (
            "      unit: second\n      requests_per_unit: 1\n      max_delay: soon\n",
            "invalid max_delay 'soon'",
        ),
        (
            "      unit: second\n      requests_per_unit: 1\n      max_delay: 20s\n",
            "max_delay '20s' is longer than 10s",
        ),
    ];
    for (body, message) in cases {
        let error = error_of(&limit(body));
        assert!(error.message.contains(message), "{body}: {error}");
        assert_eq!(error.descriptor.as_deref(), Some("d.k"), "{error}");
        assert_eq!(error.line, Some(5), "{body}: {error}");
    }
}

#[test]
fn several_limits_on_one_node_compile_with_ids_by_name_or_position() {
    let config = compile_one(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limits:\n      - {name: burst, unit: second, requests_per_unit: 5}\n      - {unit: day, requests_per_unit: 1000, algorithm: fixed_window, shadow_mode: true}\n",
    )
    .unwrap();
    let rules = config.find_all("d", &[("k", "v")]).unwrap();
    let ids: Vec<&str> = rules.iter().map(|r| &*r.id).collect();
    assert_eq!(ids, ["d.k#burst", "d.k#1"]);
    assert_eq!((rules[0].shadow_mode, rules[1].shadow_mode), (false, true));
    assert_ne!(rules[0].tag, rules[1].tag);
}

#[test]
fn rate_limits_errors_name_the_list() {
    assert_error(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n    rate_limits:\n      - {unit: second, requests_per_unit: 1}\n",
        Some(3),
        Some("d.k"),
        "should not specify both rate_limit and rate_limits",
    );
    assert_error(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limits: []\n",
        Some(4),
        Some("d.k"),
        "rate_limits must not be empty",
    );
    assert_error(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limits:\n      - {name: a, unit: second, requests_per_unit: 1}\n      - {name: a, unit: minute, requests_per_unit: 9}\n",
        Some(6),
        Some("d.k"),
        "duplicate limit 'd.k#a' in rate_limits",
    );
    assert_error(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limits:\n      - {unit: second, requests_per_unit: 1}\n      - {unit: fortnight, requests_per_unit: 9}\n",
        Some(6),
        Some("d.k"),
        "invalid rate limit unit 'fortnight'",
    );
}

#[test]
fn type_and_syntax_errors_keep_the_parser_line() {
    assert_error(
        "domain: d\ndescriptors:\n  - just-a-string\n",
        Some(3),
        None,
        "descriptors[0] must be a mapping (key: value lines), not string",
    );
    assert_error(
        "domain: d\ndescriptors:\n  - key: [a, b]\n",
        Some(3),
        None,
        "descriptors[0].key must be a string or a number, not sequence",
    );
    assert_error(
        "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: -1}\n",
        Some(4),
        None,
        "requests_per_unit",
    );
    assert_error(
        "domain: d\ndescriptors:\n  - key: a\n   bad: [\n",
        Some(4),
        None,
        "error loading config file",
    );
    assert_error("domain: d\n1: x\n", Some(2), None, "unknown field `1`");
}

#[test]
fn share_threshold_needs_a_wildcard() {
    assert_error(
        "domain: d\ndescriptors:\n  - key: k\n    value: exact\n    share_threshold: true\n",
        Some(3),
        Some("d.k_exact"),
        "share_threshold can only be used with wildcard values",
    );
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let errors = compile(
        &[
            file("a.yaml", "domain: a\ndescriptors:\n  - key: ''\n  - key: x\n    rate_limit: {unit: eon, requests_per_unit: 1}\n"),
            file("b.yaml", "domain: ''\n"),
        ],
        &Options::default(),
    )
    .unwrap_err();
    let lines: Vec<_> = errors
        .iter()
        .map(|e| (e.file.to_string_lossy().into_owned(), e.line))
        .collect();
    assert_eq!(
        lines,
        [
            ("a.yaml".to_owned(), Some(3)),
            ("a.yaml".to_owned(), Some(5)),
            ("b.yaml".to_owned(), None)
        ]
    );
    let text = ConfigErrors(errors).to_string();
    assert!(
        text.contains("a.yaml:5: descriptor 'a.x': invalid rate limit unit 'eon'"),
        "{text}"
    );
}

#[test]
fn dangling_replaces_are_listed() {
    let config = compile_one(
        "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1, replaces: [{name: ghost}]}\n",
    )
    .unwrap();
    assert_eq!(
        dangling_replaces(&config),
        [("d.a".to_owned(), "ghost".to_owned())]
    );
}

#[test]
fn load_reads_a_directory_of_domains() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), "domain: a\n").unwrap();
    std::fs::write(dir.path().join("b.yml"), "domain: b\n").unwrap();
    let config = load(dir.path(), &Options::default()).unwrap();
    let names: Vec<_> = config.domains().iter().map(|d| d.name.clone()).collect();
    assert_eq!(names, ["a", "b"]);
}

#[test]
fn serde_type_errors_read_in_the_configs_words() {
    use super::compile::in_config_words;
    assert_eq!(
        in_config_words(
            r#"descriptors[0].rate_limit.requests_per_unit: invalid type: string "5 - key", expected u32"#
        ),
        r#"descriptors[0].rate_limit.requests_per_unit must be a whole number from 0 to 4294967295, not string "5 - key""#
    );
    assert_eq!(
        in_config_words(
            "descriptors[0].rate_limit.requests_per_unit: invalid value: integer `-3`, expected u32"
        ),
        "descriptors[0].rate_limit.requests_per_unit must be a whole number from 0 to 4294967295, not the number -3"
    );
    assert_eq!(
        in_config_words(
            r#"descriptors[0].shadow_mode: invalid type: string "maybe", expected a boolean"#
        ),
        r#"descriptors[0].shadow_mode must be true or false, not string "maybe""#
    );
    assert_eq!(in_config_words("something else"), "something else");
}
