//! Configuration: read files → parse → validate → compile to an immutable matcher.
//!
//! The result, [`RateLimitConfig`], is never changed once built; the server publishes it as a
//! snapshot that requests borrow.

pub mod authz;
mod compile;
pub mod error;
pub mod locate;
pub mod schema;
pub mod source;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use compile::{compile, dangling_replaces};
pub use error::{ConfigError, ConfigErrors};

use crate::matcher::{EntryView, Level};
use crate::quota::Algorithm;
use crate::rule::{Policy, Rule};

/// Server-wide settings that shape how files compile.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// The algorithm of limits that do not name one.
    pub default_algorithm: Algorithm,
    /// Every limit counts every hit, as if it said `debt: true` (`--count-denied`).
    pub count_denied: bool,
}

/// One domain's descriptor tree.
#[derive(Debug)]
pub struct Domain {
    /// The domain name.
    pub name: String,
    /// The file it came from.
    pub file: PathBuf,
    /// The top level of its descriptor tree.
    pub root: Level,
    /// Its ext_authz tenants, when the file has an `authorization:` section.
    pub authorization: Option<Arc<crate::authz::Authorization>>,
}

/// The compiled configuration: every domain's matcher.
#[derive(Debug, Default)]
pub struct RateLimitConfig {
    domains: HashMap<String, Domain>,
}

impl RateLimitConfig {
    /// A domain by name.
    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.domains.get(name)
    }

    /// All domains, by name.
    pub fn domains(&self) -> Vec<&Domain> {
        let mut domains: Vec<_> = self.domains.values().collect();
        domains.sort_by(|a, b| a.name.cmp(&b.name));
        domains
    }

    /// The tags of every rule, to tell which rules a reload removed.
    pub fn rule_tags(&self) -> std::collections::HashSet<u32> {
        self.domains
            .values()
            .flat_map(|domain| domain.root.rules())
            .map(|rule| rule.tag)
            .collect()
    }

    /// The quota of every counted rule, by tag (to tell which saved buckets still apply).
    pub fn quotas_by_tag(&self) -> HashMap<u32, crate::quota::Quota> {
        self.domains
            .values()
            .flat_map(|domain| domain.root.rules())
            .filter_map(|rule| match rule.policy {
                Policy::Limited(quota) => Some((rule.tag, quota)),
                Policy::Unlimited => None,
            })
            .collect()
    }

    /// The domains that serve ext_authz, by name.
    pub fn authorization_domains(&self) -> Vec<&Domain> {
        let mut domains: Vec<_> = self
            .domains
            .values()
            .filter(|d| d.authorization.is_some())
            .collect();
        domains.sort_by(|a, b| a.name.cmp(&b.name));
        domains
    }

    /// The rule a request descriptor matches in `domain`, if any (the first, for a node with
    /// `rate_limits`).
    pub fn find<E: EntryView>(&self, domain: &str, entries: &[E]) -> Option<&Arc<Rule>> {
        self.find_all(domain, entries)?.first()
    }

    /// Every rule a request descriptor matches in `domain`, if any.
    pub fn find_all<E: EntryView>(&self, domain: &str, entries: &[E]) -> Option<&[Arc<Rule>]> {
        self.domains.get(domain)?.root.find(entries)
    }
}

impl Domain {
    /// A one-line summary, as `tollgate validate` prints it.
    pub fn summary(&self) -> String {
        let rules = self.root.rules();
        let count = |pred: fn(&Rule) -> bool| rules.iter().filter(|r| pred(r)).count();
        format!(
            "{}: domain '{}': {} limits ({} unlimited, {} shadow mode)",
            self.file.display(),
            self.name,
            rules.len(),
            count(|r| r.policy == Policy::Unlimited),
            count(|r| r.shadow_mode),
        )
    }
}

/// Reads and compiles the configuration at `path` (a file or a directory).
pub fn load(path: &Path, options: &Options) -> Result<RateLimitConfig, ConfigErrors> {
    let files = source::read(path).map_err(|e| ConfigErrors(vec![e]))?;
    compile(&files, options).map_err(ConfigErrors)
}

#[cfg(test)]
mod tests;
