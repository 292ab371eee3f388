//! The immutable descriptor tree and the walk that finds a request descriptor's limit.
//!
//! Matching follows envoyproxy/ratelimit level by level: at each level the request entry's
//! exact `key`+`value`, else the first wildcard value (in file order) that matches, else the
//! key-only default. A limit applies only if the request's last entry lands on a node with a
//! rule; a node with neither rule nor children is a whitelist that beats a sibling default.

pub mod wildcard;

use std::collections::HashMap;
use std::sync::Arc;

use crate::rule::Rule;
use wildcard::Pattern;

/// A request descriptor entry, as the matcher sees it.
pub trait EntryView {
    /// The entry's key.
    fn key(&self) -> &str;
    /// The entry's value.
    fn value(&self) -> &str;
}

impl EntryView for (&str, &str) {
    fn key(&self) -> &str {
        self.0
    }
    fn value(&self) -> &str {
        self.1
    }
}

/// One level of the tree: the nodes for each entry key.
#[derive(Debug, Default)]
pub struct Level {
    by_key: HashMap<String, Branch>,
}

/// The nodes of one level that share a key.
#[derive(Debug, Default)]
struct Branch {
    exact: HashMap<String, Node>,
    wildcards: Vec<(Pattern, Node)>,
    default: Option<Node>,
}

/// A tree node: its rules and the next level.
#[derive(Debug, Default)]
pub struct Node {
    /// The limits for requests that end here (`rate_limit`: one; `rate_limits`: several, all
    /// applied; none: no limit).
    pub rules: Vec<Arc<Rule>>,
    /// Nodes for the request's next entry.
    pub children: Level,
}

/// Where a value sits among its siblings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    /// The key-only default (no or empty `value`).
    Any,
    /// An exact value.
    Exact(String),
    /// A `*` pattern.
    Wildcard(Pattern),
}

impl ValueMatch {
    /// Classifies a configured value.
    pub fn parse(value: &str) -> ValueMatch {
        if value.is_empty() {
            ValueMatch::Any
        } else if let Some(pattern) = Pattern::new(value) {
            ValueMatch::Wildcard(pattern)
        } else {
            ValueMatch::Exact(value.to_owned())
        }
    }
}

impl Level {
    /// Whether the level has no nodes.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Whether a node for `key` and `value` exists already.
    pub fn contains(&self, key: &str, value: &ValueMatch) -> bool {
        let Some(branch) = self.by_key.get(key) else {
            return false;
        };
        match value {
            ValueMatch::Any => branch.default.is_some(),
            ValueMatch::Exact(v) => branch.exact.contains_key(v),
            ValueMatch::Wildcard(p) => branch.wildcards.iter().any(|(q, _)| q == p),
        }
    }

    /// Adds a node; the caller has checked with [`Level::contains`] that it is new.
    pub fn insert(&mut self, key: &str, value: ValueMatch, node: Node) {
        let branch = self.by_key.entry(key.to_owned()).or_default();
        match value {
            ValueMatch::Any => branch.default = Some(node),
            ValueMatch::Exact(v) => {
                branch.exact.insert(v, node);
            }
            ValueMatch::Wildcard(p) => branch.wildcards.push((p, node)),
        }
    }

    /// The rules for a request descriptor's entries, if its path ends on a node that has some.
    pub fn find<E: EntryView>(&self, entries: &[E]) -> Option<&[Arc<Rule>]> {
        let mut level = self;
        let last = entries.len().checked_sub(1)?;
        for (depth, entry) in entries.iter().enumerate() {
            let node = level.child(entry.key(), entry.value())?;
            if depth == last {
                return (!node.rules.is_empty()).then_some(node.rules.as_slice());
            }
            if node.children.is_empty() {
                return None;
            }
            level = &node.children;
        }
        None
    }

    /// The node one entry leads to at this level: its exact value, else the first wildcard
    /// that matches, else the key-only default.
    pub fn child(&self, key: &str, value: &str) -> Option<&Node> {
        let branch = self.by_key.get(key)?;
        branch
            .exact
            .get(value)
            .or_else(|| {
                branch
                    .wildcards
                    .iter()
                    .find(|(pattern, _)| pattern.matches(value))
                    .map(|(_, node)| node)
            })
            .or(branch.default.as_ref())
    }

    /// Every rule in the tree, depth first.
    pub fn rules(&self) -> Vec<&Arc<Rule>> {
        let mut out = Vec::new();
        self.collect_rules(&mut out);
        out
    }

    fn collect_rules<'a>(&'a self, out: &mut Vec<&'a Arc<Rule>>) {
        let mut keys: Vec<_> = self.by_key.iter().collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        for (_, branch) in keys {
            let mut exact: Vec<_> = branch.exact.iter().collect();
            exact.sort_by(|a, b| a.0.cmp(b.0));
            let nodes = exact
                .into_iter()
                .map(|(_, n)| n)
                .chain(branch.wildcards.iter().map(|(_, n)| n))
                .chain(branch.default.as_ref());
            for node in nodes {
                out.extend(&node.rules);
                node.children.collect_rules(out);
            }
        }
    }
}

#[cfg(test)]
mod tests;
