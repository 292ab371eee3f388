//! Turns parsed files into the immutable configuration, checking everything first.
//!
//! Every problem is collected (not just the first) with its file, line and descriptor, so
//! `tollgate validate` can list them all. The checks are envoyproxy/ratelimit's, with its
//! messages, plus tollgate's own for its extensions.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use super::error::ConfigError;
use super::locate::{LazyLocator, Step};
use super::schema::{DescriptorSpec, FileSpec, RateLimitSpec};
use super::source::SourceFile;
use super::{Domain, Options, RateLimitConfig};
use crate::calendar::Zone;
use crate::matcher::{Level, Node, ValueMatch};
use crate::quota::{Algorithm, Quota, QuotaError, Unit};
use crate::rule::Consistency;
use crate::rule::{KeyPart, Policy, Rule};

/// Compiles `files` into a configuration, or returns every problem found.
pub fn compile(
    files: &[SourceFile],
    options: &Options,
) -> Result<RateLimitConfig, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut domains: HashMap<String, Domain> = HashMap::new();
    for file in files {
        let Some(domain) = compile_file(file, options, &mut errors) else {
            continue;
        };
        if let Some(first) = domains.get(&domain.name) {
            errors.push(ConfigError {
                line: LazyLocator::new(&file.text).line_of(&[Step::Key("domain")]),
                ..ConfigError::file(
                    &file.path,
                    format!(
                        "duplicate domain '{}' in config file (already defined in {})",
                        domain.name,
                        first.file.display()
                    ),
                )
            });
            continue;
        }
        domains.insert(domain.name.clone(), domain);
    }
    if errors.is_empty() {
        Ok(RateLimitConfig { domains })
    } else {
        Err(errors)
    }
}

fn compile_file(
    file: &SourceFile,
    options: &Options,
    errors: &mut Vec<ConfigError>,
) -> Option<Domain> {
    let spec = match parse(file) {
        Ok(spec) => spec,
        Err(error) => {
            errors.push(error);
            return None;
        }
    };
    if spec.domain.is_empty() {
        errors.push(ConfigError::file(
            &file.path,
            "config file cannot have empty domain",
        ));
        return None;
    }
    let before = errors.len();
    let locator = LazyLocator::new(&file.text);
    let mut builder = TreeBuilder {
        domain: &spec.domain,
        file,
        locator: &locator,
        options,
        errors,
    };
    let mut path = vec![Step::Key("descriptors")];
    let root = builder.level(&spec.descriptors, &spec.domain, &mut path, &[]);
    let authorization =
        spec.authorization
            .as_ref()
            .and_then(|section| match super::authz::compile(section) {
                Ok(compiled) => Some(Arc::new(compiled)),
                Err(problems) => {
                    let section = [Step::Key("authorization")];
                    for problem in problems {
                        let mut at = section.to_vec();
                        at.extend(problem.at);
                        // The section's line where the node cannot be found (YAML merge keys).
                        let line = locator.line_of(&at).or_else(|| locator.line_of(&section));
                        errors.push(ConfigError {
                            line,
                            ..ConfigError::file(
                                &file.path,
                                format!("authorization: {}", problem.message),
                            )
                        });
                    }
                    None
                }
            });
    (errors.len() == before).then(|| Domain {
        name: spec.domain,
        file: file.path.clone(),
        root,
        authorization,
    })
}

fn parse(file: &SourceFile) -> Result<FileSpec, ConfigError> {
    if file.text.trim().is_empty() || is_only_comments(&file.text) {
        return Err(ConfigError::file(
            &file.path,
            "config file cannot have empty domain",
        ));
    }
    serde_yaml::from_str(&file.text).map_err(|e| yaml_error(&file.path, &e))
}

fn is_only_comments(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|line| line.is_empty() || line.starts_with('#') || line == "---")
}

fn yaml_error(path: &Path, error: &serde_yaml::Error) -> ConfigError {
    let mut message = error.to_string();
    let line = error.location().map(|location| {
        let suffix = format!(" at line {} column {}", location.line(), location.column());
        if let Some(stripped) = message.strip_suffix(&suffix) {
            message = stripped.to_owned();
        }
        location.line()
    });
    ConfigError {
        line,
        message: format!("error loading config file: {}", in_config_words(&message)),
        ..ConfigError::file(path, "")
    }
}

/// serde's "field: invalid type: string "x", expected u32" in the config's own words:
/// "field must be a whole number (0 to 4294967295), not the string "x"".
pub(super) fn in_config_words(message: &str) -> String {
    let (field, rest) = match message.split_once(": invalid ") {
        Some((field, rest)) => (Some(field), rest),
        None => match message.strip_prefix("invalid ") {
            Some(rest) => (None, rest),
            None => return message.to_owned(),
        },
    };
    let Some((got, expected)) = rest
        .split_once(": ")
        .and_then(|(_, detail)| detail.rsplit_once(", expected "))
    else {
        return message.to_owned();
    };
    let wanted = match expected {
        "u32" => "a whole number from 0 to 4294967295",
        "u64" | "usize" => "a whole number, 0 or more",
        "a boolean" => "true or false",
        "a string" => "a string",
        "a sequence" => "a list (lines starting with -)",
        other if other.starts_with("struct ") || other == "a map" => "a mapping (key: value lines)",
        other => other,
    };
    let got = got
        .replace("integer `", "the number ")
        .replace("floating point `", "the number ")
        .replace('`', "");
    match field {
        Some(field) => format!("{field} must be {wanted}, not {got}"),
        None => format!("expected {wanted}, not {got}"),
    }
}

struct TreeBuilder<'a> {
    domain: &'a str,
    file: &'a SourceFile,
    locator: &'a LazyLocator<'a>,
    options: &'a Options,
    errors: &'a mut Vec<ConfigError>,
}

impl TreeBuilder<'_> {
    fn level(
        &mut self,
        specs: &[DescriptorSpec],
        parent_id: &str,
        path: &mut Vec<Step>,
        parent_parts: &[KeyPart],
    ) -> Level {
        let mut level = Level::default();
        for (index, spec) in specs.iter().enumerate() {
            path.push(Step::Index(index));
            if let Some((value, node)) = self.node(spec, &level, parent_id, path, parent_parts) {
                level.insert(&spec.key, value, node);
            }
            path.pop();
        }
        level
    }

    fn node(
        &mut self,
        spec: &DescriptorSpec,
        siblings: &Level,
        parent_id: &str,
        path: &mut Vec<Step>,
        parent_parts: &[KeyPart],
    ) -> Option<(ValueMatch, Node)> {
        let id = if spec.value.is_empty() {
            format!("{parent_id}.{}", spec.key)
        } else {
            format!("{parent_id}.{}_{}", spec.key, spec.value)
        };
        if spec.key.is_empty() {
            self.error(path, &id, "descriptor has empty key".into());
            return None;
        }
        let value = ValueMatch::parse(&spec.value);
        if siblings.contains(&spec.key, &value) {
            self.error(
                path,
                &id,
                format!("duplicate descriptor composite key '{id}'"),
            );
            return None;
        }
        let part = match (&value, spec.share_threshold) {
            (ValueMatch::Wildcard(pattern), true) => KeyPart::Shared(pattern.as_str().into()),
            (_, true) => {
                self.error(
                    path,
                    &id,
                    format!(
                        "share_threshold can only be used with wildcard values (containing '*'), but found key '{}'",
                        id.rsplit('.').next().unwrap_or_default()
                    ),
                );
                return None;
            }
            (_, false) => KeyPart::Value,
        };
        let mut parts = parent_parts.to_vec();
        parts.push(part);
        // An invalid limit is reported and its node kept without it, so checks of the
        // siblings and children still run.
        let rules = self.rules(spec, path, &id, &parts);
        path.push(Step::Key("descriptors"));
        let children = self.level(&spec.descriptors, &id, path, &parts);
        path.pop();
        Some((value, Node { rules, children }))
    }

    /// The node's rules: its `rate_limit`, or each of its `rate_limits` (ids `<node>#<name>`,
    /// or `<node>#<position>` for an unnamed one, so a reload keeps each one's buckets).
    fn rules(
        &mut self,
        spec: &DescriptorSpec,
        path: &mut Vec<Step>,
        id: &str,
        parts: &[KeyPart],
    ) -> Vec<Arc<Rule>> {
        let limits: Vec<(&RateLimitSpec, String, Vec<Step>)> =
            match (&spec.rate_limit, &spec.rate_limits) {
                (Some(_), Some(_)) => {
                    self.error(
                        path,
                        id,
                        "should not specify both rate_limit and rate_limits".to_owned(),
                    );
                    return Vec::new();
                }
                (Some(limit), None) => vec![(limit, id.to_owned(), vec![Step::Key("rate_limit")])],
                (None, Some(list)) if list.is_empty() => {
                    path.push(Step::Key("rate_limits"));
                    self.error(
                        path,
                        id,
                        "rate_limits must not be empty (give at least one limit, or none)"
                            .to_owned(),
                    );
                    path.pop();
                    return Vec::new();
                }
                (None, Some(list)) => list
                    .iter()
                    .enumerate()
                    .map(|(index, limit)| {
                        let suffix = limit
                            .name
                            .clone()
                            .filter(|name| !name.is_empty())
                            .unwrap_or_else(|| index.to_string());
                        let at = vec![Step::Key("rate_limits"), Step::Index(index)];
                        (limit, format!("{id}#{suffix}"), at)
                    })
                    .collect(),
                (None, None) => return Vec::new(),
            };
        let mut rules = Vec::with_capacity(limits.len());
        let mut seen = HashSet::new();
        for (limit, rule_id, at) in limits {
            let depth = path.len();
            path.extend(at);
            if !seen.insert(rule_id.clone()) {
                self.error(
                    path,
                    id,
                    format!("duplicate limit '{rule_id}' in rate_limits (names must differ)"),
                );
            } else if let Some(settings) = self.limit(limit, path, id) {
                rules.push(Arc::new(Rule {
                    id: rule_id.as_str().into(),
                    name: limit
                        .name
                        .as_deref()
                        .filter(|n| !n.is_empty())
                        .map(Into::into),
                    policy: settings.policy,
                    shadow_mode: spec.shadow_mode || limit.shadow_mode.unwrap_or(false),
                    quota_mode: spec.quota_mode,
                    replaces: limit
                        .replaces
                        .iter()
                        .map(|r| r.name.as_str().into())
                        .collect(),
                    detailed_metric: spec.detailed_metric,
                    value_to_metric: spec.value_to_metric,
                    key_parts: parts.to_vec(),
                    metadata: spec.metadata.clone(),
                    consistency: settings.consistency,
                    max_delay: settings.max_delay,
                    tag: Rule::tag_of(self.domain, &rule_id),
                }));
            }
            path.truncate(depth);
        }
        rules
    }

    /// A `rate_limit`'s settings, each parsed once; `None` (with every problem reported) if
    /// any is invalid.
    fn limit(&mut self, spec: &RateLimitSpec, path: &[Step], id: &str) -> Option<LimitSettings> {
        let mut problems = Vec::new();
        for replaced in &spec.replaces {
            if replaced.name.is_empty() {
                problems.push("should not have an empty replaces entry".to_owned());
            } else if spec.name.as_deref() == Some(replaced.name.as_str()) {
                problems.push("replaces should not contain name of same descriptor".to_owned());
            }
        }
        let max_delay = match spec.max_delay.as_deref().map(parse_max_delay) {
            Some(Ok(delay)) => Some(delay),
            Some(Err(problem)) => {
                problems.push(problem);
                None
            }
            None => None,
        };
        let consistency = spec.consistency.as_deref().and_then(|name| {
            let parsed = Consistency::parse(name);
            if parsed.is_none() {
                problems.push(format!(
                    "unknown consistency '{name}' (expected strict or cached)"
                ));
            }
            parsed
        });
        let policy = if spec.unlimited {
            if spec.unit.as_deref().is_some_and(|u| !u.is_empty()) {
                problems.push("should not specify rate limit unit when unlimited".to_owned());
            }
            for (field, given) in [
                ("requests_per_unit", spec.requests_per_unit.is_some()),
                ("algorithm", spec.algorithm.is_some()),
                ("burst", spec.burst.is_some()),
                ("consistency", spec.consistency.is_some()),
                ("max_delay", spec.max_delay.is_some()),
                ("debt", spec.debt.is_some()),
                ("max_debt", spec.max_debt.is_some()),
                ("unit_multiplier", spec.unit_multiplier.is_some()),
                ("calendar", spec.calendar.is_some()),
                ("timezone", spec.timezone.is_some()),
            ] {
                if given {
                    problems.push(format!("should not specify {field} when unlimited"));
                }
            }
            Some(Policy::Unlimited)
        } else {
            self.quota(spec, &mut problems).map(Policy::Limited)
        };
        if problems.is_empty() {
            return policy.map(|policy| LimitSettings {
                policy,
                consistency,
                max_delay,
            });
        }
        for problem in problems {
            self.error(path, id, problem);
        }
        None
    }

    fn quota(&self, spec: &RateLimitSpec, problems: &mut Vec<String>) -> Option<Quota> {
        let unit_name = spec.unit.as_deref().unwrap_or_default();
        let unit = Unit::parse(unit_name);
        if unit.is_none() {
            problems.push(format!(
                "invalid rate limit unit '{unit_name}' (expected one of second, minute, hour, day, week, month, year)"
            ));
        }
        let algorithm = match spec.algorithm.as_deref() {
            // `burst` only means something to a token bucket, `calendar` to a fixed window: each
            // picks its algorithm.
            None if spec.burst.is_some() => Some(Algorithm::TokenBucket),
            None if spec.calendar == Some(true) => Some(Algorithm::FixedWindow),
            None => Some(self.options.default_algorithm),
            Some(name) => {
                let parsed = Algorithm::parse(name);
                if parsed.is_none() {
                    problems.push(format!(
                        "unknown algorithm '{name}' (expected token_bucket, fixed_window, sliding_window, sliding_log, gcra or leaky_bucket)"
                    ));
                }
                parsed
            }
        };
        let Some(rpu) = spec.requests_per_unit else {
            problems.push(
                "requests_per_unit is required (use 0 to block every request, or unlimited: true)"
                    .to_owned(),
            );
            return None;
        };
        let (unit, algorithm) = (unit?, algorithm?);
        let debt = self.debt(spec, problems);
        let calendar = Self::calendar(spec, problems);
        let quota = Quota::try_new(rpu, unit, algorithm, spec.burst)
            .and_then(|quota| match spec.unit_multiplier {
                Some(multiplier) => quota.try_with_multiplier(multiplier),
                None => Ok(quota),
            })
            .and_then(|quota| match calendar {
                Some(zone) => quota.try_with_calendar(zone),
                None => Ok(quota),
            })
            .and_then(|quota| match debt {
                // `debt: true` asked for room the algorithm does not have (`--count-denied`
                // asks too, but only for what there is).
                Some(None)
                    if spec.debt == Some(true)
                        && quota.default_debt() == 0
                        && quota.capacity() > 0 =>
                {
                    Err(QuotaError::NoRoomForDebt {
                        capacity: quota.capacity(),
                        algorithm: quota.algorithm(),
                        max: crate::algorithm::most_counted(&quota),
                    })
                }
                // One full capacity (or what the algorithm counts on top of it), unless
                // `max_debt` says otherwise.
                Some(max) => quota.try_with_debt(max.unwrap_or(quota.default_debt())),
                None => Ok(quota),
            });
        match quota {
            Ok(quota) => problems.is_empty().then_some(quota),
            Err(problem) => {
                problems.push(problem.to_string());
                None
            }
        }
    }

    /// The time zone of a `calendar: true` limit (UTC unless `timezone:` names one).
    fn calendar(spec: &RateLimitSpec, problems: &mut Vec<String>) -> Option<Zone> {
        match (spec.calendar, spec.timezone.as_deref()) {
            (Some(true), None) => Some(Zone::UTC),
            (Some(true), Some(name)) => Zone::named(name)
                .map_err(|problem| problems.push(problem))
                .ok(),
            (_, Some(_)) => {
                problems.push("timezone applies only with calendar: true".to_owned());
                None
            }
            (_, None) => None,
        }
    }

    /// Whether the limit runs debt (`debt:`, else `--count-denied`), and how much `max_debt`
    /// allows if it says.
    fn debt(&self, spec: &RateLimitSpec, problems: &mut Vec<String>) -> Option<Option<u32>> {
        let runs = spec.debt.unwrap_or(self.options.count_denied);
        match spec.max_debt {
            Some(_) if spec.debt != Some(true) => {
                problems.push("max_debt applies only with debt: true".to_owned());
                None
            }
            Some(0) => {
                problems.push(
                    "max_debt must be at least 1 (to count no debt, leave debt out)".to_owned(),
                );
                None
            }
            max => runs.then_some(max),
        }
    }

    fn error(&mut self, path: &[Step], id: &str, message: String) {
        self.errors.push(ConfigError {
            file: self.file.path.clone(),
            line: self.locator.line_of(path),
            descriptor: Some(id.to_owned()),
            message,
        });
    }
}

/// A `rate_limit` compiled: what it allows and how it is enforced.
struct LimitSettings {
    policy: Policy,
    consistency: Option<Consistency>,
    max_delay: Option<std::time::Duration>,
}

/// The longest `max_delay`: a held request keeps a connection and a task.
const MAX_DELAY_CAP: std::time::Duration = std::time::Duration::from_secs(10);

/// Parses `max_delay` (`250ms`, `2s`), at most [`MAX_DELAY_CAP`].
fn parse_max_delay(text: &str) -> Result<std::time::Duration, String> {
    let delay = humantime::parse_duration(text)
        .map_err(|e| format!("invalid max_delay '{text}': {e} (e.g. 250ms, 2s)"))?;
    if delay > MAX_DELAY_CAP {
        return Err(format!(
            "max_delay '{text}' is longer than {}s: a held request keeps its connection",
            MAX_DELAY_CAP.as_secs()
        ));
    }
    Ok(delay)
}

/// Names of `replaces` targets that no rule in the configuration defines.
pub fn dangling_replaces(config: &RateLimitConfig) -> Vec<(String, String)> {
    let mut names = HashSet::new();
    let mut wanted = Vec::new();
    for domain in config.domains.values() {
        for rule in domain.root.rules() {
            names.extend(rule.name.clone());
            for replaced in &rule.replaces {
                wanted.push((rule.id.to_string(), replaced.to_string()));
            }
        }
    }
    wanted.retain(|(_, name)| !names.contains(name.as_str()));
    wanted.sort();
    wanted
}
