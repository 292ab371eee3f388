//! ext_authz tenants: API keys → tenant → tier → the descriptors its requests count against.
//!
//! A domain's `authorization:` section names tenants, each with a tier and the SHA-256 digests
//! of its API keys (never the keys), and tiers, each a list of descriptor templates whose
//! values are fixed or taken from the request (tenant, tier, method, path, host, a header).
//! The limits themselves are the domain's ordinary descriptor tree, so they use every
//! algorithm and mode, a tenant can have its own override (a `tenant: acme` node), and a
//! budget is one budget whether Envoy's rate limit filter or its ext_authz filter asks.
//!
//! Everything here is pure: compiling the section and building descriptors from a request.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::locate::Step;
use crate::config::schema::{AuthorizationSpec, EntrySpec};

/// A tenant, as requests see it once their key is recognised.
#[derive(Debug, PartialEq, Eq)]
pub struct Tenant {
    /// The tenant id.
    pub id: String,
    /// Its tier's name.
    pub tier: String,
}

/// Where a descriptor entry's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Fixed(String),
    Tenant,
    Tier,
    Method,
    Path,
    Host,
    Header(String),
}

/// One entry of a tier's descriptor template.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template {
    key: String,
    source: Source,
}

/// A compiled `authorization:` section.
#[derive(Debug)]
pub struct Authorization {
    /// The header carrying the API key, lower case.
    pub api_key_header: String,
    /// Remove the key header from the upstream request.
    pub strip_api_key: bool,
    /// Deny tenants whose request matches no limit.
    pub deny_unlimited: bool,
    tiers: HashMap<String, Vec<Vec<Template>>>,
    /// Key digest → tenant.
    keys: HashMap<[u8; 32], (Arc<Tenant>, [u8; 32])>,
}

/// What a request carries, as ext_authz reports it.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Path without the query string.
    pub path: &'a str,
    /// Host (`:authority`).
    pub host: &'a str,
    /// Headers, lower-case names.
    pub headers: &'a HashMap<String, String>,
}

/// The digest line `tollgate hash-key` prints for `key`: `sha256:<64 hex>`.
pub fn hash_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut text = String::with_capacity(71);
    text.push_str("sha256:");
    for byte in digest {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

fn parse_digest(text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(digest)
}

impl Authorization {
    /// Compiles a section, or lists its problems, each with the path of the offending node
    /// inside the section.
    pub fn compile(spec: &AuthorizationSpec) -> Result<Self, Vec<Problem<'_>>> {
        let mut problems = Vec::new();
        let mut problem = |at, message: String| {
            problems.push(Problem { at, message });
        };
        let mut tiers = HashMap::new();
        let key_header = spec.api_key_header.to_ascii_lowercase();
        for (name, tier) in &spec.tiers {
            let at_tier = || vec![Step::Key("tiers"), Step::Key(name)];
            if tier.descriptors.is_empty() {
                problem(at_tier(), format!("tier '{name}' has no descriptors"));
            }
            let mut templates = Vec::new();
            for (index, descriptor) in tier.descriptors.iter().enumerate() {
                let at_descriptor = || {
                    let mut at = at_tier();
                    at.extend([Step::Key("descriptors"), Step::Index(index)]);
                    at
                };
                if descriptor.is_empty() {
                    problem(
                        at_descriptor(),
                        format!("tier '{name}' has an empty descriptor"),
                    );
                }
                let mut entries = Vec::new();
                for (position, entry) in descriptor.iter().enumerate() {
                    match template(entry, &key_header) {
                        Ok(template) => entries.push(template),
                        Err(message) => {
                            let mut at = at_descriptor();
                            at.push(Step::Index(position));
                            problem(at, format!("tier '{name}': {message}"));
                        }
                    }
                }
                templates.push(entries);
            }
            tiers.insert(name.clone(), templates);
        }
        let mut keys = HashMap::new();
        let mut ids = std::collections::HashSet::new();
        for (index, tenant) in spec.tenants.iter().enumerate() {
            let at_tenant = |field: Option<&'static str>| {
                let mut at = vec![Step::Key("tenants"), Step::Index(index)];
                at.extend(field.map(Step::Key));
                at
            };
            if tenant.id.is_empty() {
                problem(at_tenant(None), "a tenant has an empty id".to_owned());
            }
            if !ids.insert(tenant.id.as_str()) {
                problem(at_tenant(None), format!("duplicate tenant '{}'", tenant.id));
            }
            if !spec.tiers.contains_key(&tenant.tier) {
                problem(
                    at_tenant(Some("tier")),
                    format!("tenant '{}' has unknown tier '{}'", tenant.id, tenant.tier),
                );
            }
            let shared = Arc::new(Tenant {
                id: tenant.id.clone(),
                tier: tenant.tier.clone(),
            });
            for (number, key) in tenant.api_keys.iter().enumerate() {
                let mut at = at_tenant(Some("api_keys"));
                at.push(Step::Index(number));
                let Some(digest) = parse_digest(key) else {
                    // Not echoed: it may be a raw key pasted by mistake.
                    problem(
                        at,
                        format!(
                            "tenant '{}': api key #{} is not sha256:<64 hex digits> (make one with `tollgate hash-key`)",
                            tenant.id,
                            number + 1
                        ),
                    );
                    continue;
                };
                if let Some((other, _)) = keys.insert(digest, (shared.clone(), digest)) {
                    problem(
                        at,
                        format!(
                            "tenant '{}': api key {key} is also tenant '{}''s",
                            tenant.id, other.id
                        ),
                    );
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            api_key_header: spec.api_key_header.to_ascii_lowercase(),
            strip_api_key: spec.strip_api_key,
            deny_unlimited: spec.deny_unlimited,
            tiers,
            keys,
        })
    }

    /// The API key a request presents, if any: the configured header's value, or for
    /// `authorization` the token after `Bearer `.
    pub fn presented_key<'a>(&self, headers: &'a HashMap<String, String>) -> Option<&'a str> {
        let value = headers.get(&self.api_key_header)?.trim();
        let key = if self.api_key_header == "authorization" {
            let (scheme, token) = value.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())?
        } else {
            value
        };
        (!key.is_empty()).then_some(key)
    }

    /// The tenant owning `key`: found by digest, confirmed by a constant-time comparison.
    pub fn tenant(&self, key: &str) -> Option<&Arc<Tenant>> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let (tenant, stored) = self.keys.get(&digest)?;
        bool::from(stored.ct_eq(&digest)).then_some(tenant)
    }

    /// The descriptors `tenant`'s request counts against. A template whose value is missing
    /// from the request (an absent header) is left out, as Envoy leaves out an action.
    pub fn descriptors(
        &self,
        tenant: &Tenant,
        request: &Attributes<'_>,
    ) -> Vec<RateLimitDescriptor> {
        let Some(templates) = self.tiers.get(&tenant.tier) else {
            return Vec::new();
        };
        templates
            .iter()
            .filter_map(|entries| {
                let entries = entries
                    .iter()
                    .map(|t| {
                        let value = match &t.source {
                            Source::Fixed(value) => Some(value.as_str()),
                            Source::Tenant => Some(tenant.id.as_str()),
                            Source::Tier => Some(tenant.tier.as_str()),
                            Source::Method => Some(request.method),
                            Source::Path => Some(request.path),
                            Source::Host => Some(request.host),
                            Source::Header(name) => request.headers.get(name).map(String::as_str),
                        }?;
                        Some(Entry {
                            key: t.key.clone(),
                            value: value.to_owned(),
                        })
                    })
                    .collect::<Option<Vec<_>>>()?;
                Some(RateLimitDescriptor {
                    entries,
                    ..Default::default()
                })
            })
            .collect()
    }
}

/// A problem in an `authorization:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem<'a> {
    /// Where it is: the path of the offending node inside the section.
    pub at: Vec<Step<'a>>,
    /// What is wrong.
    pub message: String,
}

fn template(entry: &EntrySpec, key_header: &str) -> Result<Template, String> {
    if entry.key.is_empty() {
        return Err("an entry has an empty key".to_owned());
    }
    let source = match (&entry.value, entry.from.as_deref()) {
        (Some(value), None) => Source::Fixed(value.clone()),
        (None, Some("tenant")) => Source::Tenant,
        (None, Some("tier")) => Source::Tier,
        (None, Some("method")) => Source::Method,
        (None, Some("path")) => Source::Path,
        (None, Some("host")) => Source::Host,
        (None, Some(from)) => match from.strip_prefix("header:") {
            Some(name) if name.eq_ignore_ascii_case(key_header) => {
                return Err(format!(
                    "entry '{}' reads the API key header '{key_header}': a key must never become a bucket or metric name",
                    entry.key
                ));
            }
            Some(name) if !name.is_empty() => Source::Header(name.to_ascii_lowercase()),
            _ => {
                return Err(format!(
                    "entry '{}': unknown from '{from}' (expected tenant, tier, method, path, host or header:NAME)",
                    entry.key
                ));
            }
        },
        _ => {
            return Err(format!(
                "entry '{}' needs exactly one of value or from",
                entry.key
            ));
        }
    };
    Ok(Template {
        key: entry.key.clone(),
        source,
    })
}

#[cfg(test)]
mod tests;
