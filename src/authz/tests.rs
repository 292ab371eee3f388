use super::*;
use crate::config::locate::line_of;
use crate::config::schema::AuthorizationSpec;

/// The section in `yaml`, or its problems as `line N: message`.
fn compile(yaml: &str) -> Result<Authorization, Vec<String>> {
    let spec: AuthorizationSpec = serde_yaml::from_str(yaml).unwrap();
    crate::config::authz::compile(&spec).map_err(|problems| {
        problems
            .into_iter()
            .map(|p| format!("line {}: {}", line_of(yaml, &p.at).unwrap(), p.message))
            .collect()
    })
}

const SECTION: &str = r#"
tiers:
  free:
    descriptors:
      - [{key: tier, from: tier}, {key: tenant, from: tenant}]
      - [{key: tenant, from: tenant}, {key: method, from: method}, {key: path, from: path}]
      - [{key: tenant, from: tenant}, {key: client, from: "header:x-client"}]
      - [{key: plan, value: basic}]
tenants:
  - id: acme
    tier: free
    api_keys: ["sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"]
"#;

fn headers(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn hash_key_is_sha256_hex() {
    assert_eq!(
        hash_key("secret"),
        "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
    );
}

#[test]
fn keys_are_found_by_digest_only() {
    let authz = compile(SECTION).unwrap();
    assert_eq!(authz.tenant("secret").unwrap().id, "acme");
    assert!(authz.tenant("Secret").is_none());
    assert!(authz.tenant("").is_none());
}

#[test]
fn the_key_comes_from_the_header_or_a_bearer_token() {
    let authz = compile(SECTION).unwrap();
    assert_eq!(
        authz.presented_key(&headers(&[("x-api-key", " secret ")])),
        Some("secret")
    );
    assert_eq!(authz.presented_key(&headers(&[("x-api-key", "")])), None);
    assert_eq!(authz.presented_key(&headers(&[])), None);
    let bearer = compile(&format!("api_key_header: Authorization\n{SECTION}")).unwrap();
    let h = headers(&[("authorization", "Bearer secret")]);
    assert_eq!(bearer.presented_key(&h), Some("secret"));
    let h = headers(&[("authorization", "Basic c2VjcmV0")]);
    assert_eq!(bearer.presented_key(&h), None);
}

#[test]
fn tier_templates_take_their_values_from_the_request() {
    let authz = compile(SECTION).unwrap();
    let tenant = authz.tenant("secret").unwrap();
    let h = headers(&[("x-client", "cli")]);
    let request = Attributes {
        method: Some("GET"),
        path: Some("/v1/items"),
        host: Some("api.example.com"),
        headers: &h,
    };
    let entries: Vec<Vec<(String, String)>> = authz
        .descriptors(tenant, &request)
        .into_iter()
        .map(|d| d.entries.into_iter().map(|e| (e.key, e.value)).collect())
        .collect();
    let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    assert_eq!(
        entries,
        vec![
            vec![pair("tier", "free"), pair("tenant", "acme")],
            vec![
                pair("tenant", "acme"),
                pair("method", "GET"),
                pair("path", "/v1/items")
            ],
            vec![pair("tenant", "acme"), pair("client", "cli")],
            vec![pair("plan", "basic")],
        ]
    );
    // Without the header, its descriptor is left out.
    let none = HashMap::new();
    let request = Attributes {
        headers: &none,
        ..request
    };
    assert_eq!(authz.descriptors(tenant, &request).len(), 3);
    // Nor are those of a request whose path is unknown (a usage query that gives none).
    let request = Attributes {
        path: None,
        ..request
    };
    assert_eq!(authz.descriptors(tenant, &request).len(), 2);
}

#[test]
fn tenants_are_listed_by_id_with_their_key_digests() {
    let authz = compile(SECTION).unwrap();
    let ids: Vec<&String> = authz.tenants_by_id().keys().collect();
    assert_eq!(ids, ["acme"]);
    let digests = authz.key_digests();
    assert_eq!(digests["acme"], [key_digest("secret")]);
    assert!(!digests.contains_key("globex"));
    assert!(authz.has_tier("free") && !authz.has_tier("pro"));
    assert_eq!(authz.tier_names(), ["free"]);
}

#[test]
fn every_problem_is_reported() {
    let problems = compile(
        r#"
tiers:
  free:
    descriptors:
      - [{key: tenant, from: tenant, value: x}]
      - [{key: a, from: cookie}]
      - []
      - [{key: k, from: "header:X-Api-Key"}]
tenants:
  - {id: acme, tier: gold, api_keys: ["md5:abc"]}
  - {id: acme, tier: free}
  - id: other
    tier: free
    api_keys:
      - "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
      - "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
"#,
    )
    .unwrap_err();
    let all = problems.join("\n");
    for wanted in [
        "line 5: tier 'free': entry 'tenant' needs exactly one of value or from",
        "line 6: tier 'free': entry 'a': unknown from 'cookie'",
        "line 7: tier 'free' has an empty descriptor",
        "line 8: tier 'free': entry 'k' reads the API key header 'x-api-key'",
        "line 10: tenant 'acme' has unknown tier 'gold'",
        "line 10: tenant 'acme': api key #1 is not sha256:<64 hex digits>",
        "line 11: duplicate tenant 'acme'",
        "line 16: tenant 'other': api key sha256:",
    ] {
        assert!(all.contains(wanted), "{wanted} missing from:\n{all}");
    }
    assert_eq!(problems.len(), 8, "{all}");
}
