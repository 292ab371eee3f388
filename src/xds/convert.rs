//! A pushed version's resources as configuration sources: each `RateLimitConfig` becomes the
//! YAML file it stands for, so it is checked and compiled by the same pipeline as files, with
//! the same errors (named `xds:<resource name>`, without line numbers: there is no file).

use std::collections::BTreeMap;
use std::path::PathBuf;

use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Any, Struct, Value};
use prost::Message;
use serde_yaml::{Mapping, Value as Yaml};

use super::resource::{
    RateLimitConfig, RateLimitDescriptor, RateLimitPolicy, RateLimitUnit, TYPE_URL,
};
use crate::config::{ConfigError, ConfigErrors, Options, source::SourceFile};
use crate::reload::{self, Loaded};

/// Decodes and compiles the resources of one pushed version.
pub fn compile(resources: &[Any], options: &Options) -> Result<Loaded, ConfigErrors> {
    let files = resources
        .iter()
        .enumerate()
        .map(|(index, resource)| source(index, resource))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| ConfigErrors(vec![error]))?;
    reload::compile(files, options).map_err(|ConfigErrors(errors)| {
        ConfigErrors(
            errors
                .into_iter()
                .map(|error| ConfigError {
                    line: None,
                    ..error
                })
                .collect(),
        )
    })
}

/// One resource as a configuration source.
fn source(index: usize, resource: &Any) -> Result<SourceFile, ConfigError> {
    let at = format!("xds:resources[{index}]");
    if resource.type_url != TYPE_URL {
        return Err(ConfigError::file(
            at,
            format!(
                "resource of type {:?}, expected {TYPE_URL}",
                resource.type_url
            ),
        ));
    }
    let config = RateLimitConfig::decode(resource.value.as_slice())
        .map_err(|e| ConfigError::file(&at, format!("cannot decode RateLimitConfig: {e}")))?;
    let name = if config.name.is_empty() {
        &config.domain
    } else {
        &config.name
    };
    Ok(SourceFile {
        path: PathBuf::from(format!("xds:{name}")),
        text: yaml(&config),
    })
}

/// The YAML file a `RateLimitConfig` stands for.
fn yaml(config: &RateLimitConfig) -> String {
    let mut file = Mapping::new();
    file.insert("domain".into(), config.domain.clone().into());
    file.insert("descriptors".into(), descriptors(&config.descriptors));
    // A mapping of strings, numbers and booleans always serializes.
    serde_yaml::to_string(&file).unwrap_or_default()
}

fn descriptors(nodes: &[RateLimitDescriptor]) -> Yaml {
    Yaml::Sequence(nodes.iter().map(descriptor).collect())
}

fn descriptor(node: &RateLimitDescriptor) -> Yaml {
    let mut out = Mapping::new();
    out.insert("key".into(), node.key.clone().into());
    if !node.value.is_empty() {
        out.insert("value".into(), node.value.clone().into());
    }
    if let Some(policy) = &node.rate_limit {
        out.insert("rate_limit".into(), rate_limit(policy));
    }
    if !node.descriptors.is_empty() {
        out.insert("descriptors".into(), descriptors(&node.descriptors));
    }
    for (flag, set) in [
        ("shadow_mode", node.shadow_mode),
        ("detailed_metric", node.detailed_metric),
        ("quota_mode", node.quota_mode),
    ] {
        if set {
            out.insert(flag.into(), true.into());
        }
    }
    if let Some(metadata) = &node.metadata {
        out.insert("metadata".into(), structure(metadata));
    }
    Yaml::Mapping(out)
}

/// A policy as the reference's loader reads it: an unset unit is `UNKNOWN` (an error unless
/// the limit is unlimited), an unset `requests_per_unit` is 0 (blocks everything).
fn rate_limit(policy: &RateLimitPolicy) -> Yaml {
    let mut out = Mapping::new();
    let unit = RateLimitUnit::try_from(policy.unit)
        .map_or_else(|_| policy.unit.to_string(), |u| u.name().to_owned());
    if !(policy.unlimited && policy.unit == RateLimitUnit::Unknown as i32) {
        out.insert("unit".into(), unit.into());
    }
    if !policy.unlimited || policy.requests_per_unit != 0 {
        out.insert(
            "requests_per_unit".into(),
            u64::from(policy.requests_per_unit).into(),
        );
    }
    if policy.unlimited {
        out.insert("unlimited".into(), true.into());
    }
    if !policy.name.is_empty() {
        out.insert("name".into(), policy.name.clone().into());
    }
    if !policy.replaces.is_empty() {
        let replaces = policy
            .replaces
            .iter()
            .map(|replace| {
                let mut entry = Mapping::new();
                entry.insert("name".into(), replace.name.clone().into());
                Yaml::Mapping(entry)
            })
            .collect();
        out.insert("replaces".into(), Yaml::Sequence(replaces));
    }
    Yaml::Mapping(out)
}

/// A `google.protobuf.Struct` as YAML, keys in order (so equal pushes compile to equal text).
fn structure(structure: &Struct) -> Yaml {
    let sorted: BTreeMap<_, _> = structure.fields.iter().collect();
    Yaml::Mapping(
        sorted
            .into_iter()
            .map(|(key, value)| (key.clone().into(), scalar(value)))
            .collect(),
    )
}

fn scalar(value: &Value) -> Yaml {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Yaml::Null,
        Some(Kind::BoolValue(b)) => (*b).into(),
        Some(Kind::StringValue(s)) => s.clone().into(),
        // Protobuf numbers are doubles; whole ones read back as integers.
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => (*n as i64).into(),
        Some(Kind::NumberValue(n)) => (*n).into(),
        Some(Kind::ListValue(list)) => Yaml::Sequence(list.values.iter().map(scalar).collect()),
        Some(Kind::StructValue(inner)) => structure(inner),
    }
}

#[cfg(test)]
mod tests;
