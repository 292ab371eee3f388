//! `ratelimit.config.ratelimit.v3.RateLimitConfig`, the resource Envoy Gateway and AI Gateway
//! push to the reference service over ADS, as prost messages written by hand: field numbers
//! and types mirror `proto/ratelimit/config/ratelimit/v3/rls_conf.proto` (envoyproxy/ratelimit),
//! which is not compiled, so building needs no protoc. The tests below decode bytes laid out as
//! that file says, field by field.

use envoy_types::pb::google::protobuf::Struct;

/// The type URL of the resource in `DiscoveryRequest`s and in each `Any` of a response.
pub const TYPE_URL: &str = "type.googleapis.com/ratelimit.config.ratelimit.v3.RateLimitConfig";

/// One domain's limits.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitConfig {
    /// The configuration's name, unique among the resources.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The domain Envoy names in its requests.
    #[prost(string, tag = "2")]
    pub domain: String,
    /// Top-level descriptors.
    #[prost(message, repeated, tag = "3")]
    pub descriptors: Vec<RateLimitDescriptor>,
}

/// A node of the descriptor tree.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitDescriptor {
    /// The entry key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// The entry value; empty for any value.
    #[prost(string, tag = "2")]
    pub value: String,
    /// The limit of requests that end here.
    #[prost(message, optional, tag = "3")]
    pub rate_limit: Option<RateLimitPolicy>,
    /// Child nodes.
    #[prost(message, repeated, tag = "4")]
    pub descriptors: Vec<RateLimitDescriptor>,
    /// Count and report, never deny.
    #[prost(bool, tag = "5")]
    pub shadow_mode: bool,
    /// Per-value metric series.
    #[prost(bool, tag = "6")]
    pub detailed_metric: bool,
    /// Deny only when every quota-mode descriptor of a request is over.
    #[prost(bool, tag = "7")]
    pub quota_mode: bool,
    /// Data returned in the answer's dynamic metadata when the limit matches.
    #[prost(message, optional, tag = "8")]
    pub metadata: Option<Struct>,
}

/// A node's limit.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitPolicy {
    /// The unit of time.
    #[prost(enumeration = "RateLimitUnit", tag = "1")]
    pub unit: i32,
    /// Requests allowed per unit.
    #[prost(uint32, tag = "2")]
    pub requests_per_unit: u32,
    /// Always allow.
    #[prost(bool, tag = "3")]
    pub unlimited: bool,
    /// The limit's name, reported to Envoy and the target of `replaces`.
    #[prost(string, tag = "4")]
    pub name: String,
    /// Limits this one replaces when both match.
    #[prost(message, repeated, tag = "5")]
    pub replaces: Vec<RateLimitReplace>,
}

/// One entry of `replaces`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitReplace {
    /// The replaced limit's name.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// The unit of a limit, numbered as in `rls_conf.proto` (WEEK is 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum RateLimitUnit {
    /// Not set.
    Unknown = 0,
    /// A second.
    Second = 1,
    /// A minute.
    Minute = 2,
    /// An hour.
    Hour = 3,
    /// A day.
    Day = 4,
    /// A month (30 days).
    Month = 5,
    /// A year (365 days).
    Year = 6,
    /// A week.
    Week = 7,
}

impl RateLimitUnit {
    /// The name in `rls_conf.proto`, which the reference's loader reads as the unit.
    pub const fn name(self) -> &'static str {
        match self {
            RateLimitUnit::Unknown => "UNKNOWN",
            RateLimitUnit::Second => "SECOND",
            RateLimitUnit::Minute => "MINUTE",
            RateLimitUnit::Hour => "HOUR",
            RateLimitUnit::Day => "DAY",
            RateLimitUnit::Month => "MONTH",
            RateLimitUnit::Year => "YEAR",
            RateLimitUnit::Week => "WEEK",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::value::Kind;
    use prost::Message;

    /// A varint, as protobuf writes it.
    fn varint(mut n: u64, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }

    /// Field `number` as a varint (wire type 0).
    fn int(number: u64, value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        varint(number << 3, &mut out);
        varint(value, &mut out);
        out
    }

    /// Field `number` as length-delimited bytes (wire type 2): strings and messages.
    fn bytes(number: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint((number << 3) | 2, &mut out);
        varint(payload.len() as u64, &mut out);
        out.extend_from_slice(payload);
        out
    }

    /// Concatenated fields.
    fn message(fields: &[Vec<u8>]) -> Vec<u8> {
        fields.concat()
    }

    #[test]
    fn bytes_laid_out_as_rls_conf_proto_says_decode_field_by_field() {
        // RateLimitConfig{name=1, domain=2, descriptors=3}; RateLimitDescriptor{key=1, value=2,
        // rate_limit=3, descriptors=4, shadow_mode=5, detailed_metric=6, quota_mode=7,
        // metadata=8}; RateLimitPolicy{unit=1, requests_per_unit=2, unlimited=3, name=4,
        // replaces=5}; RateLimitReplace{name=1}; google.protobuf.Struct{fields=1 (map)};
        // Value{string_value=3}.
        let value = message(&[bytes(3, b"gold")]);
        let entry = message(&[bytes(1, b"tier"), bytes(2, &value)]);
        let metadata = message(&[bytes(1, &entry)]);
        let policy = message(&[
            int(1, 7),
            int(2, 42),
            bytes(4, b"per_user"),
            bytes(5, &message(&[bytes(1, b"general")])),
        ]);
        let child = message(&[bytes(1, b"path"), bytes(2, b"/api/*")]);
        let unlimited = message(&[int(3, 1)]);
        let grandchild_parent = message(&[
            bytes(1, b"user"),
            bytes(3, &policy),
            bytes(4, &child),
            int(5, 1),
            int(6, 1),
            int(7, 1),
            bytes(8, &metadata),
        ]);
        let free = message(&[bytes(1, b"free"), bytes(3, &unlimited)]);
        let wire = message(&[
            bytes(1, b"eg-ratelimit"),
            bytes(2, b"default/eg/http"),
            bytes(3, &grandchild_parent),
            bytes(3, &free),
        ]);

        let config = RateLimitConfig::decode(wire.as_slice()).unwrap();
        assert_eq!(config.name, "eg-ratelimit");
        assert_eq!(config.domain, "default/eg/http");
        let user = &config.descriptors[0];
        assert_eq!(user.key, "user");
        assert!(user.shadow_mode && user.detailed_metric && user.quota_mode);
        let policy = user.rate_limit.as_ref().unwrap();
        assert_eq!(policy.unit, RateLimitUnit::Week as i32);
        assert_eq!(policy.requests_per_unit, 42);
        assert!(!policy.unlimited);
        assert_eq!(policy.name, "per_user");
        assert_eq!(policy.replaces[0].name, "general");
        assert_eq!(user.descriptors[0].key, "path");
        assert_eq!(user.descriptors[0].value, "/api/*");
        let tier = &user.metadata.as_ref().unwrap().fields["tier"];
        assert_eq!(tier.kind, Some(Kind::StringValue("gold".into())));
        let free = &config.descriptors[1];
        assert!(free.rate_limit.as_ref().unwrap().unlimited);
        assert_eq!(
            free.rate_limit.as_ref().unwrap().unit,
            0,
            "UNKNOWN when unset"
        );
        // And back: the same bytes, as protobuf encodes fields in number order.
        assert_eq!(config.encode_to_vec(), wire);
    }

    #[test]
    fn units_are_numbered_as_the_reference_numbers_them() {
        let numbered = [
            (RateLimitUnit::Unknown, 0),
            (RateLimitUnit::Second, 1),
            (RateLimitUnit::Minute, 2),
            (RateLimitUnit::Hour, 3),
            (RateLimitUnit::Day, 4),
            (RateLimitUnit::Month, 5),
            (RateLimitUnit::Year, 6),
            (RateLimitUnit::Week, 7),
        ];
        for (unit, number) in numbered {
            assert_eq!(unit as i32, number);
            assert_eq!(RateLimitUnit::try_from(number), Ok(unit));
        }
    }
}
