//! ext_authz tenants: API keys → tenant → tier → the descriptors its requests count against.
//!
//! A domain's `authorization:` section names tenants, each with a tier and the SHA-256 digests
//! of its API keys (never the keys), and tiers, each a list of descriptor templates whose
//! values are fixed or taken from the request (tenant, tier, method, path, host, a header).
//! The limits themselves are the domain's ordinary descriptor tree, so they use every
//! algorithm and mode, a tenant can have its own override (a `tenant: acme` node), and a
//! budget is one budget whether Envoy's rate limit filter or its ext_authz filter asks.
//!
//! Everything here is pure: recognising keys and building descriptors from a request. The
//! section is compiled by [`crate::config::authz`].

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

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
pub(crate) enum Source {
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
pub(crate) struct Template {
    pub(crate) key: String,
    pub(crate) source: Source,
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
    pub(crate) tiers: HashMap<String, Vec<Vec<Template>>>,
    /// Key digest → tenant.
    pub(crate) keys: HashMap<[u8; 32], (Arc<Tenant>, [u8; 32])>,
    /// Every tenant of the section, by id.
    pub(crate) by_id: BTreeMap<String, Arc<Tenant>>,
    /// Failed checks allowed per client address: (requests per unit, unit).
    pub failed_keys: Option<(u32, crate::quota::Unit)>,
}

/// What a request carries, as ext_authz reports it.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// HTTP method, if known.
    pub method: Option<&'a str>,
    /// Path without the query string, if known.
    pub path: Option<&'a str>,
    /// Host (`:authority`), if known.
    pub host: Option<&'a str>,
    /// Headers, lower-case names.
    pub headers: &'a HashMap<String, String>,
}

/// The digest line `tollgate hash-key` prints for `key`: `sha256:<64 hex>`.
pub fn hash_key(key: &str) -> String {
    let mut text = String::with_capacity(71);
    text.push_str("sha256:");
    text.push_str(&hex(&key_digest(key)));
    text
}

/// The SHA-256 digest of `key`, as keys are looked up.
pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// `bytes` in lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(2 * bytes.len());
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

impl Authorization {
    /// How many tenants have API keys.
    pub fn tenants(&self) -> usize {
        let mut ids: Vec<&str> = self.keys.values().map(|(t, _)| t.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }

    /// How many tiers are defined.
    pub fn tiers(&self) -> usize {
        self.tiers.len()
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
        self.tenant_by_digest(&key_digest(key))
    }

    /// The tenant whose key has `digest` ([`key_digest`]), if any.
    pub fn tenant_by_digest(&self, digest: &[u8; 32]) -> Option<&Arc<Tenant>> {
        let (tenant, stored) = self.keys.get(digest)?;
        bool::from(stored.ct_eq(digest)).then_some(tenant)
    }

    /// The section's tenants, by id.
    pub fn tenants_by_id(&self) -> &BTreeMap<String, Arc<Tenant>> {
        &self.by_id
    }

    /// The digests of each tenant's keys, sorted, by tenant id (tenants without keys are
    /// left out): one pass over the keys.
    pub fn key_digests(&self) -> HashMap<&str, Vec<[u8; 32]>> {
        let mut digests: HashMap<&str, Vec<[u8; 32]>> = HashMap::new();
        for (digest, (tenant, _)) in &self.keys {
            digests.entry(tenant.id.as_str()).or_default().push(*digest);
        }
        for list in digests.values_mut() {
            list.sort_unstable();
        }
        digests
    }

    /// Whether tier `name` is defined.
    pub fn has_tier(&self, name: &str) -> bool {
        self.tiers.contains_key(name)
    }

    /// The names of the tiers, sorted.
    pub fn tier_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tiers.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The descriptors `tenant`'s request counts against. A template whose value is missing
    /// from the request (an absent header, say) is left out, as Envoy leaves out an action.
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
                            Source::Method => request.method,
                            Source::Path => request.path,
                            Source::Host => request.host,
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

#[cfg(test)]
mod tests;
