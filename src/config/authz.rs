//! Compiling a domain's `authorization:` section (API keys → tenant → tier → descriptor
//! templates) into the pure [`Authorization`] that ext_authz checks read.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::authz::{Authorization, Source, Template, Tenant};
use crate::config::locate::Step;
use crate::config::schema::{AuthorizationSpec, EntrySpec};

/// Compiles a section, or lists its problems, each with the path of the offending node
/// inside the section.
pub fn compile(spec: &AuthorizationSpec) -> Result<Authorization, Vec<Problem<'_>>> {
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
    let mut by_id = BTreeMap::new();
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
        by_id.insert(tenant.id.clone(), shared.clone());
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
    let failed_keys = spec.failed_keys.as_ref().and_then(|limit| {
        let at = || vec![Step::Key("failed_keys")];
        let unit = crate::quota::Unit::parse(&limit.unit);
        if unit.is_none() {
            problem(
                at(),
                format!(
                    "failed_keys: invalid unit '{}' (expected one of second, minute, hour, day, week, month, year)",
                    limit.unit
                ),
            );
        }
        if limit.requests_per_unit == 0 {
            problem(
                at(),
                "failed_keys: requests_per_unit must be at least 1".to_owned(),
            );
        }
        unit.map(|unit| (limit.requests_per_unit, unit))
    });
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Authorization {
        api_key_header: spec.api_key_header.to_ascii_lowercase(),
        strip_api_key: spec.strip_api_key,
        deny_unlimited: spec.deny_unlimited,
        tiers,
        keys,
        by_id,
        failed_keys,
    })
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

/// The digest in `sha256:<64 hex digits>`, as `tollgate hash-key` prints it.
pub fn parse_digest(text: &str) -> Option<[u8; 32]> {
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
