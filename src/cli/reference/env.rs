//! The environment as the reference service reads it (kelseyhightower/envconfig): each value
//! typed as its setting is, defaults where unset, every error naming the variable.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

/// The process environment, by name.
#[derive(Debug, Clone, Default)]
pub(crate) struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// The variables of `vars`; those whose name or value is not UTF-8 are not the
    /// reference's and are left out.
    pub(crate) fn new(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            vars: vars.into_iter().collect(),
        }
    }

    /// The value of `name` when set and not empty (an empty value reads as unset).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Every set variable whose name starts with `prefix`.
    pub(crate) fn starting_with<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> {
        self.vars
            .iter()
            .filter(move |(name, value)| name.starts_with(prefix) && !value.is_empty())
            .map(|(name, _)| name.as_str())
    }

    /// A string setting.
    pub(crate) fn string(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_owned()
    }

    /// A boolean setting, spelt as Go's `strconv.ParseBool` reads it.
    pub(crate) fn flag(&self, name: &str, default: bool) -> Result<bool, String> {
        match self.get(name) {
            None => Ok(default),
            Some(text) => {
                parse_bool(text).ok_or_else(|| format!("{name}={text}: expected true or false"))
            }
        }
    }

    /// A number setting.
    pub(crate) fn number<T: FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|_| format!("{name}={text}: expected a number")),
        }
    }

    /// A duration setting (`10s`, `1m30s`, `300ms`), as Go's `time.ParseDuration` spells it.
    pub(crate) fn duration(&self, name: &str, default: Duration) -> Result<Duration, String> {
        match self.get(name) {
            None => Ok(default),
            Some(text) => humantime::parse_duration(text)
                .map_err(|e| format!("{name}={text}: expected a duration such as 10s: {e}")),
        }
    }

    /// Whether `name` is set to something other than `default` (`""`: unset), comparing
    /// booleans, numbers and durations by value (`TRUE` is `true`, `0.0` is `0`).
    pub(crate) fn differs(&self, name: &str, default: &str) -> bool {
        let Some(value) = self.get(name) else {
            return false;
        };
        if value == default {
            return false;
        }
        if let (Some(a), Some(b)) = (parse_bool(value), parse_bool(default)) {
            return a != b;
        }
        if let (Ok(a), Ok(b)) = (value.parse::<f64>(), default.parse::<f64>()) {
            return a != b;
        }
        if let (Ok(a), Ok(b)) = (
            humantime::parse_duration(value),
            humantime::parse_duration(default),
        ) {
            return a != b;
        }
        true
    }
}

/// `strconv.ParseBool`'s spellings.
fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}
