//! The proto3-JSON form of `RateLimitRequest` / `RateLimitResponse`, for `POST /json`.
//!
//! Field names are accepted in lowerCamelCase and in their proto spelling, integers as JSON
//! numbers or strings, units by name or number, as protojson does; unknown fields are errors.
//! Responses omit default values, as the reference service's protojson output does.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::google::protobuf::UInt64Value;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};

use crate::clock::NANOS_PER_SEC;
use crate::decision::{Code, Decision, DescriptorStatus};
use crate::quota::Unit;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRequest {
    #[serde(default)]
    domain: String,
    #[serde(default)]
    descriptors: Vec<JsonDescriptor>,
    #[serde(
        default,
        rename = "hitsAddend",
        alias = "hits_addend",
        deserialize_with = "integer"
    )]
    hits_addend: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonDescriptor {
    #[serde(default)]
    entries: Vec<JsonEntry>,
    #[serde(default)]
    limit: Option<JsonOverride>,
    #[serde(
        default,
        rename = "hitsAddend",
        alias = "hits_addend",
        deserialize_with = "optional_integer"
    )]
    hits_addend: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEntry {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonOverride {
    #[serde(
        default,
        rename = "requestsPerUnit",
        alias = "requests_per_unit",
        deserialize_with = "integer"
    )]
    requests_per_unit: u64,
    #[serde(default)]
    unit: Option<Value>,
}

/// Parses a JSON body into the request message.
pub fn parse_request(body: &[u8]) -> Result<RateLimitRequest, String> {
    let request: JsonRequest =
        serde_json::from_slice(body).map_err(|e| format!("invalid RateLimitRequest JSON: {e}"))?;
    let hits_addend = u32::try_from(request.hits_addend)
        .map_err(|_| format!("hitsAddend {} does not fit in uint32", request.hits_addend))?;
    let descriptors = request
        .descriptors
        .into_iter()
        .enumerate()
        .map(|(index, d)| descriptor(index, d))
        .collect::<Result<_, _>>()?;
    Ok(RateLimitRequest {
        domain: request.domain,
        descriptors,
        hits_addend,
    })
}

fn descriptor(index: usize, d: JsonDescriptor) -> Result<RateLimitDescriptor, String> {
    let limit = d
        .limit
        .map(|limit| {
            let requests_per_unit = u32::try_from(limit.requests_per_unit).map_err(|_| {
                format!("descriptors[{index}].limit.requestsPerUnit does not fit in uint32")
            })?;
            let unit = unit_number(limit.unit.as_ref())
                .ok_or_else(|| format!("descriptors[{index}].limit.unit: unknown unit"))?;
            Ok::<_, String>(RateLimitOverride {
                requests_per_unit,
                unit,
            })
        })
        .transpose()?;
    Ok(RateLimitDescriptor {
        entries: d
            .entries
            .into_iter()
            .map(|e| Entry {
                key: e.key,
                value: e.value,
            })
            .collect(),
        limit,
        hits_addend: d.hits_addend.map(|value| UInt64Value { value }),
    })
}

/// A unit by name (`"MINUTE"`) or number (`2`); absent is UNKNOWN (0), which the limiter rejects.
fn unit_number(unit: Option<&Value>) -> Option<i32> {
    match unit {
        None => Some(0),
        Some(Value::Number(n)) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
        Some(Value::String(name)) if name == "UNKNOWN" => Some(0),
        Some(Value::String(name)) => Unit::parse(name).map(Unit::to_envoy),
        Some(_) => None,
    }
}

/// The decision in proto3-JSON form.
pub fn response(decision: &Decision) -> Value {
    json!({
        "overallCode": code(decision.overall),
        "statuses": decision.statuses.iter().map(status).collect::<Vec<_>>(),
    })
}

fn code(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::OverLimit => "OVER_LIMIT",
    }
}

fn status(status: &DescriptorStatus) -> Value {
    let mut out = Map::new();
    out.insert("code".into(), code(status.code).into());
    if let Some(limit) = &status.limit {
        let mut current = Map::new();
        if let Some(name) = &limit.name {
            current.insert("name".into(), name.to_string().into());
        }
        if limit.requests_per_unit != 0 {
            current.insert("requestsPerUnit".into(), limit.requests_per_unit.into());
        }
        current.insert("unit".into(), limit.unit.name().to_uppercase().into());
        out.insert("currentLimit".into(), current.into());
    }
    if status.remaining != 0 {
        out.insert("limitRemaining".into(), status.remaining.into());
    }
    if let Some(nanos) = status.reset_after {
        out.insert("durationUntilReset".into(), duration(nanos).into());
    }
    out.into()
}

/// A Duration as protojson writes it: seconds with 0, 3, 6 or 9 decimals and an `s`.
fn duration(nanos: u64) -> String {
    let (secs, frac) = (nanos / NANOS_PER_SEC, nanos % NANOS_PER_SEC);
    match frac {
        0 => format!("{secs}s"),
        f if f % 1_000_000 == 0 => format!("{secs}.{:03}s", f / 1_000_000),
        f if f % 1_000 == 0 => format!("{secs}.{:06}s", f / 1_000),
        f => format!("{secs}.{f:09}s"),
    }
}

/// An integer given as a JSON number or a decimal string.
fn integer<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    Ok(optional_integer(deserializer)?.unwrap_or_default())
}

fn optional_integer<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
            serde::de::Error::custom(format!("expected an unsigned integer, got {n}"))
        }),
        Some(Value::String(s)) => s.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!("expected an unsigned integer, got {s:?}"))
        }),
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected an unsigned integer, got {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::ReportedLimit;

    #[test]
    fn parses_camel_case_snake_case_and_string_integers() {
        let request = parse_request(
            br#"{"domain":"d","hits_addend":2,"descriptors":[{"entries":[{"key":"k","value":"v"}],"hitsAddend":"0","limit":{"requestsPerUnit":"5","unit":"MINUTE"}},{"entries":[{"key":"x"}],"limit":{"requests_per_unit":1,"unit":7}}]}"#,
        )
        .unwrap();
        assert_eq!(request.domain, "d");
        assert_eq!(request.hits_addend, 2);
        assert_eq!(
            request.descriptors[0].hits_addend,
            Some(UInt64Value { value: 0 })
        );
        assert_eq!(
            request.descriptors[0].limit,
            Some(RateLimitOverride {
                requests_per_unit: 5,
                unit: 2
            })
        );
        assert_eq!(request.descriptors[1].entries[0].value, "");
        assert_eq!(request.descriptors[1].limit.as_ref().unwrap().unit, 7);
    }

    #[test]
    fn rejects_what_protojson_rejects() {
        for body in [
            &br#"{"domain":"d","descriptorz":[]}"#[..],
            br#"{"domain":"d","hitsAddend":-1}"#,
            br#"{"domain":"d","hitsAddend":4294967296}"#,
            br#"{"domain":"d","descriptors":[{"limit":{"unit":"FORTNIGHT"}}]}"#,
            b"not json",
        ] {
            assert!(
                parse_request(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn responses_omit_defaults_like_protojson() {
        let decision = Decision {
            overall: Code::OverLimit,
            unknown_domain: false,
            statuses: smallvec::smallvec![
                DescriptorStatus {
                    code: Code::OverLimit,
                    limit: Some(ReportedLimit {
                        name: None,
                        requests_per_unit: 5,
                        unit: Unit::Minute,
                    }),
                    remaining: 0,
                    reset_after: Some(1_500_000_000),
                    retry_after: Some(1),
                    usage: None,
                    more_usage: Vec::new(),
                },
                DescriptorStatus::no_limit(),
            ],
        };
        assert_eq!(
            response(&decision),
            json!({"overallCode":"OVER_LIMIT","statuses":[
                {"code":"OVER_LIMIT","currentLimit":{"requestsPerUnit":5,"unit":"MINUTE"},"durationUntilReset":"1.500s"},
                {"code":"OK"}]})
        );
        assert_eq!(duration(1), "0.000000001s");
        assert_eq!(duration(2_000_001_000), "2.000001s");
    }
}
