//! What a rate limit answer can carry beyond its statuses, as the reference service adds it:
//! response headers for the limit closest to running out (`LIMIT_RESPONSE_HEADERS_ENABLED`) and
//! dynamic metadata describing the request and the matched limits' `metadata`
//! (`RESPONSE_DYNAMIC_METADATA`). Both are off by default and cost nothing then.

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{ListValue, NullValue, Struct, Value};

use crate::clock::NANOS_PER_SEC;
use crate::decision::{Code, Decision, DescriptorStatus};

/// The extras of every rate limit answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answers {
    /// Add limit, remaining and reset headers to Envoy's response (`--response-headers`).
    pub headers: Option<HeaderNames>,
    /// Describe the request and its matched limits' `metadata` in the answer's
    /// `dynamic_metadata` (`--response-dynamic-metadata`).
    pub dynamic_metadata: bool,
}

/// The names of the response headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderNames {
    /// The limit's requests per unit.
    pub limit: String,
    /// What is left of it.
    pub remaining: String,
    /// Whole seconds until it is whole again.
    pub reset: String,
}

impl Default for HeaderNames {
    /// The reference's names: `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`.
    fn default() -> Self {
        Self {
            limit: "RateLimit-Limit".to_owned(),
            remaining: "RateLimit-Remaining".to_owned(),
            reset: "RateLimit-Reset".to_owned(),
        }
    }
}

impl HeaderNames {
    /// The three headers for the limit closest to running out (a denying one first), if any
    /// descriptor has a limit.
    pub fn headers(&self, decision: &Decision) -> Vec<HeaderValue> {
        let closest = decision
            .statuses
            .iter()
            .filter(|status| status.limit.is_some())
            .min_by_key(|status| (status.remaining, status.code != Code::OverLimit));
        let Some(
            status @ DescriptorStatus {
                limit: Some(limit), ..
            },
        ) = closest
        else {
            return Vec::new();
        };
        let reset = status
            .reset_after
            .unwrap_or_default()
            .div_ceil(NANOS_PER_SEC);
        let header = |key: &str, value: String| HeaderValue {
            key: key.to_owned(),
            value,
            ..Default::default()
        };
        vec![
            header(&self.limit, limit.requests_per_unit.to_string()),
            header(&self.remaining, status.remaining.to_string()),
            header(&self.reset, reset.to_string()),
        ]
    }
}

/// The reference's dynamic metadata: `domain`, each descriptor's `entries` (`key=value`), its
/// `limit` override and `hitsAddend` if sent, the request's `hitsAddend` if not 0, and the
/// `metadata` of the limits that matched and were not over, merged (the first value of a key
/// wins; mappings merge key by key).
pub fn dynamic_metadata(request: &RateLimitRequest, decision: &Decision) -> Struct {
    let mut fields = std::collections::HashMap::new();
    fields.insert("domain".to_owned(), string(&request.domain));
    let descriptors = request
        .descriptors
        .iter()
        .map(|descriptor| {
            let mut fields = std::collections::HashMap::new();
            let entries = descriptor
                .entries
                .iter()
                .map(|entry| string(&format!("{}={}", entry.key, entry.value)))
                .collect();
            fields.insert("entries".to_owned(), list(entries));
            if let Some(limit) = &descriptor.limit {
                let unit = crate::quota::Unit::from_envoy(limit.unit)
                    .map_or_else(|| limit.unit.to_string(), |u| u.name().to_uppercase());
                let text = format!("requests_per_unit:{} unit:{unit}", limit.requests_per_unit);
                fields.insert("limit".to_owned(), string(&text));
            }
            if let Some(hits) = &descriptor.hits_addend {
                fields.insert("hitsAddend".to_owned(), number(hits.value as f64));
            }
            structure(Struct { fields })
        })
        .collect();
    fields.insert("descriptors".to_owned(), list(descriptors));
    if request.hits_addend != 0 {
        fields.insert(
            "hitsAddend".to_owned(),
            number(f64::from(request.hits_addend)),
        );
    }
    let mut merged = Struct::default();
    for status in decision.statuses.iter().filter(|s| s.code == Code::Ok) {
        let metadata = status
            .usage
            .as_ref()
            .and_then(|usage| usage.rule.as_ref())
            .and_then(|rule| rule.metadata.as_ref());
        if let Some(Kind::StructValue(metadata)) = metadata.map(from_yaml).and_then(|v| v.kind) {
            merge(&mut merged, metadata);
        }
    }
    if !merged.fields.is_empty() {
        fields.insert("metadata".to_owned(), structure(merged));
    }
    Struct { fields }
}

/// Adds `from`'s keys that `into` lacks; keys both hold as mappings are merged in turn.
fn merge(into: &mut Struct, from: Struct) {
    for (key, value) in from.fields {
        match (into.fields.get_mut(&key), value.kind) {
            (None, kind) => {
                into.fields.insert(key, Value { kind });
            }
            (
                Some(Value {
                    kind: Some(Kind::StructValue(existing)),
                }),
                Some(Kind::StructValue(more)),
            ) => merge(existing, more),
            (Some(_), _) => {}
        }
    }
}

/// A YAML value (a limit's `metadata`) as a protobuf value.
pub fn from_yaml(value: &serde_yaml::Value) -> Value {
    use serde_yaml::Value as Yaml;
    let kind = match value {
        Yaml::Null => Kind::NullValue(NullValue::NullValue as i32),
        Yaml::Bool(b) => Kind::BoolValue(*b),
        Yaml::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Yaml::String(s) => Kind::StringValue(s.clone()),
        Yaml::Sequence(items) => Kind::ListValue(ListValue {
            values: items.iter().map(from_yaml).collect(),
        }),
        Yaml::Mapping(map) => Kind::StructValue(Struct {
            fields: map
                .iter()
                .map(|(key, value)| {
                    let key = match key {
                        Yaml::String(s) => s.clone(),
                        other => serde_yaml::to_string(other)
                            .unwrap_or_default()
                            .trim_end()
                            .to_owned(),
                    };
                    (key, from_yaml(value))
                })
                .collect(),
        }),
        Yaml::Tagged(tagged) => return from_yaml(&tagged.value),
    };
    Value { kind: Some(kind) }
}

fn string(text: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(text.to_owned())),
    }
}

fn number(n: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

fn list(values: Vec<Value>) -> Value {
    Value {
        kind: Some(Kind::ListValue(ListValue { values })),
    }
}

fn structure(fields: Struct) -> Value {
    Value {
        kind: Some(Kind::StructValue(fields)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> serde_yaml::Value {
        serde_yaml::from_str(text).unwrap()
    }

    fn fields(value: Value) -> Struct {
        match value.kind {
            Some(Kind::StructValue(s)) => s,
            other => panic!("not a struct: {other:?}"),
        }
    }

    #[test]
    fn merging_keeps_the_first_value_and_merges_mappings() {
        let mut into = fields(from_yaml(&yaml("{a: 1, nested: {x: first}}")));
        merge(
            &mut into,
            fields(from_yaml(&yaml(
                "{a: 2, b: true, nested: {x: second, y: [1, two]}}",
            ))),
        );
        assert_eq!(
            into,
            fields(from_yaml(&yaml(
                "{a: 1, b: true, nested: {x: first, y: [1, two]}}"
            )))
        );
    }
}
