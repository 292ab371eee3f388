//! The YAML file format, as envoyproxy/ratelimit defines it plus tollgate's extensions.
//!
//! These types mirror the file one to one and reject unknown keys, so a typo is an error
//! instead of a silently disabled limit. Meaning is checked later, in `compile`.

use serde::{Deserialize, Deserializer};

/// One configuration file: one domain.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// The domain Envoy names in its requests.
    #[serde(default, deserialize_with = "scalar_string")]
    pub domain: String,
    /// Top-level descriptors.
    #[serde(default)]
    pub descriptors: Vec<DescriptorSpec>,
    /// tollgate: serve Envoy's ext_authz for this domain (API keys → tenants → tier limits).
    pub authorization: Option<AuthorizationSpec>,
}

/// A domain's `authorization:` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationSpec {
    /// The request header carrying the API key; `authorization` reads `Bearer <key>`.
    #[serde(default = "default_api_key_header")]
    pub api_key_header: String,
    /// Remove the API key header from the request sent upstream.
    #[serde(default)]
    pub strip_api_key: bool,
    /// Deny (403) a tenant whose request matches no limit, instead of allowing it.
    #[serde(default)]
    pub deny_unlimited: bool,
    /// Tier name → the descriptors a tenant of that tier sends.
    #[serde(default)]
    pub tiers: std::collections::BTreeMap<String, TierSpec>,
    /// The tenants and their keys.
    #[serde(default)]
    pub tenants: Vec<TenantSpec>,
    /// At most this many checks with a missing, unknown or revoked key per client address:
    /// past it, that address gets 429 without its key being looked at, until it refills.
    pub failed_keys: Option<FailedKeysSpec>,
}

/// The failed-key limit: `requests_per_unit` per `unit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailedKeysSpec {
    /// Failed checks allowed per unit.
    pub requests_per_unit: u32,
    /// second, minute, hour, day, week, month or year.
    pub unit: String,
}

fn default_api_key_header() -> String {
    "x-api-key".to_owned()
}

/// One tier: the descriptors counted for each request of its tenants.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSpec {
    /// Each descriptor: its entries, in order.
    pub descriptors: Vec<Vec<EntrySpec>>,
}

/// One entry of a tier descriptor: a fixed value, or one taken from the request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntrySpec {
    /// The entry key.
    pub key: String,
    /// A fixed value.
    pub value: Option<String>,
    /// Where the value comes from: `tenant`, `tier`, `method`, `path`, `host` or
    /// `header:NAME`.
    pub from: Option<String>,
}

/// One tenant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    /// The tenant id, sent upstream in `x-tenant-id` and used as a metric label.
    pub id: String,
    /// Its tier.
    pub tier: String,
    /// SHA-256 digests of its API keys (`sha256:<64 hex>`, from `tollgate hash-key`).
    #[serde(default)]
    pub api_keys: Vec<String>,
}

/// A node of the descriptor tree.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescriptorSpec {
    /// The entry key this node matches.
    #[serde(default, deserialize_with = "scalar_string")]
    pub key: String,
    /// The entry value: exact, a `*` wildcard pattern, or absent/empty for any value.
    #[serde(default, deserialize_with = "scalar_string")]
    pub value: String,
    /// The limit applied when a request ends at this node.
    pub rate_limit: Option<RateLimitSpec>,
    /// tollgate: several limits applied together when a request ends at this node (instead of
    /// `rate_limit`): a request passes only if every one does.
    pub rate_limits: Option<Vec<RateLimitSpec>>,
    /// Child nodes, matched against the request's next entry.
    #[serde(default)]
    pub descriptors: Vec<DescriptorSpec>,
    /// Count and report, but never deny.
    #[serde(default)]
    pub shadow_mode: bool,
    /// Metrics: name the series after the request's values (metrics issue).
    #[serde(default)]
    pub detailed_metric: bool,
    /// Metrics: put the matched value into the series name (metrics issue).
    #[serde(default)]
    pub value_to_metric: bool,
    /// On a wildcard node: every matching value shares one counter.
    #[serde(default)]
    pub share_threshold: bool,
    /// Over-limit here only denies when every quota-mode descriptor of the request is over.
    #[serde(default)]
    pub quota_mode: bool,
    /// Free-form data kept with the limit.
    #[serde(default)]
    pub metadata: Option<serde_yaml::Value>,
}

/// A node's `rate_limit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// second, minute, hour, day, week, month or year (any case).
    #[serde(default, deserialize_with = "optional_scalar_string")]
    pub unit: Option<String>,
    /// Requests allowed per unit; 0 blocks everything.
    pub requests_per_unit: Option<u32>,
    /// Always allow, reporting no limit.
    #[serde(default)]
    pub unlimited: bool,
    /// A name other limits can `replaces`; also reported to Envoy.
    #[serde(default, deserialize_with = "optional_scalar_string")]
    pub name: Option<String>,
    /// Limits that this one overrides when both match a request.
    #[serde(default)]
    pub replaces: Vec<ReplacesSpec>,
    /// tollgate: `token_bucket` or `fixed_window`.
    pub algorithm: Option<String>,
    /// tollgate: token-bucket capacity when it should differ from `requests_per_unit`.
    pub burst: Option<u32>,
    /// tollgate: `strict` or `cached`, overriding `--consistency` for this limit.
    pub consistency: Option<String>,
    /// tollgate: count and report this limit, never deny on it (as the node's `shadow_mode`).
    pub shadow_mode: Option<bool>,
    /// tollgate: the window (or refill period) is this many units: `unit: second` with
    /// `unit_multiplier: 30` counts over 30 seconds.
    pub unit_multiplier: Option<u32>,
    /// tollgate: day, week, month and year windows follow the calendar (a month is the
    /// calendar month, a week starts on Monday) instead of fixed lengths from the epoch.
    pub calendar: Option<bool>,
    /// tollgate, with `calendar: true`: the IANA time zone of the calendar (default UTC).
    pub timezone: Option<String>,
    /// tollgate: a hit larger than what is left is still counted, putting the limit in debt
    /// (as the reference service counts every hit); `false` opts out of `--count-denied`.
    pub debt: Option<bool>,
    /// tollgate: the most debt a limit runs, in units (default: one full capacity).
    pub max_debt: Option<u32>,
    /// tollgate, ext_authz: hold a request that would be denied for up to this long (e.g.
    /// `250ms`) until it conforms.
    pub max_delay: Option<String>,
}

/// One entry of `replaces`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplacesSpec {
    /// The replaced limit's `name`.
    #[serde(default, deserialize_with = "scalar_string")]
    pub name: String,
}

/// A YAML scalar of any type as a string, as the reference loader reads `value: 200`.
fn scalar_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(optional_scalar_string(deserializer)?.unwrap_or_default())
}

fn optional_scalar_string<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    struct ScalarVisitor;

    impl<'de> serde::de::Visitor<'de> for ScalarVisitor {
        type Value = Option<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string or a number")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }

        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }

    deserializer.deserialize_any(ScalarVisitor)
}
