//! Service-level metrics: calls by method and result, decision latency, unknown domains.

use std::fmt;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// An enum of label values, each spelt once.
macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),*
        }

        impl $name {
            /// Every value.
            pub const ALL: &[Self] = &[$(Self::$variant),*];

            /// The label value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),*
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
                fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

label_values!(
    /// The RPC or HTTP endpoint a call came through.
    Method {
        /// `RateLimitService/ShouldRateLimit`.
        ShouldRateLimit => "ShouldRateLimit",
        /// `Authorization/Check` (ext_authz).
        Check => "Check",
        /// `POST /json`.
        Json => "json",
        /// The service API's checks: `GET /allow`, `POST /v1/check`, `GET /v1/usage` and a
        /// tenant's usage.
        ApiCheck => "api_check",
        /// The service API's `POST /v1/usage` (usage recorded).
        ApiUsage => "api_usage",
    }
);

label_values!(
    /// A call's result, as its gRPC status code name.
    CallCode {
        /// Answered (allowed or over the limit).
        Ok => "OK",
        /// A request that cannot be decided.
        InvalidArgument => "INVALID_ARGUMENT",
        /// No store answered.
        Unavailable => "UNAVAILABLE",
        /// An ext_authz check that names no domain among several.
        FailedPrecondition => "FAILED_PRECONDITION",
    }
);

label_values!(
    /// What a call decided.
    CallResult {
        /// Allowed.
        Ok => "ok",
        /// Over a limit.
        OverLimit => "over_limit",
        /// Refused for another reason (ext_authz: no key, unknown key, no limit covers it).
        Denied => "denied",
        /// Not decided (a bad request, no store answered).
        Error => "error",
    }
);

label_values!(
    /// What an ext_authz check answered.
    AuthzResult {
        /// Allowed.
        Ok => "ok",
        /// Over a limit: 429.
        OverLimit => "over_limit",
        /// No key, or an unknown or revoked one: 401.
        Unauthorized => "unauthorized",
        /// No limit covers the request and `deny_unlimited` is set: 403.
        Forbidden => "forbidden",
        /// The client address is past its failed-key limit: 429, no key looked at.
        TooManyFailedKeys => "too_many_failed_keys",
    }
);

/// Labels of a call: the RPC (or HTTP endpoint), its gRPC code and what it decided.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CallLabels {
    /// The RPC or endpoint.
    pub method: Method,
    /// `OK` or the gRPC error code name (an over-limit decision is a gRPC `OK`).
    pub code: CallCode,
    /// What was decided.
    pub result: CallResult,
}

/// Labels of an ext_authz check. Tenant ids come from the configuration, never from requests
/// (an unknown key is counted with an empty tenant), so the series are bounded; the API key
/// itself is never a label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AuthzLabels {
    /// The domain that served the check.
    pub domain: String,
    /// The tenant id, empty when the key was missing or unknown.
    pub tenant: String,
    /// The tenant's tier.
    pub tier: String,
    /// What the check answered.
    pub result: AuthzResult,
}

/// Calls, latency and unknown domains.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    /// Calls by method and result code.
    pub calls: Family<CallLabels, Counter>,
    /// Time to decide a request (matching, buckets), without transport.
    pub decision_seconds: Histogram,
    /// Descriptors sent for a domain the configuration does not have.
    pub unknown_domain: Counter,
    /// ext_authz checks by tenant and result.
    pub authz_checks: Family<AuthzLabels, Counter>,
    /// ext_authz requests held by `max_delay` right now.
    pub authz_held: Gauge,
    /// When the runtime tenants were last read from their state (Unix seconds).
    pub tenants_read: Gauge,
}

impl ServiceMetrics {
    /// Registers the service metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            calls: Family::default(),
            // 1 µs … ~16 ms, doubling.
            decision_seconds: Histogram::new(exponential_buckets(1e-6, 2.0, 15)),
            unknown_domain: Counter::default(),
            authz_checks: Family::default(),
            authz_held: Gauge::default(),
            tenants_read: Gauge::default(),
        };
        registry.register(
            "calls",
            "Rate limit calls by method and result code",
            metrics.calls.clone(),
        );
        registry.register_with_unit(
            "decision_duration",
            "Time to decide one request, without transport",
            Unit::Seconds,
            metrics.decision_seconds.clone(),
        );
        registry.register(
            "unknown_domain_requests",
            "Requests for a domain that no configuration file defines",
            metrics.unknown_domain.clone(),
        );
        registry.register(
            "authz_checks",
            "ext_authz checks by domain, tenant, tier and result",
            metrics.authz_checks.clone(),
        );
        registry.register(
            "authz_held_requests",
            "ext_authz requests held by max_delay until they conform, right now",
            metrics.authz_held.clone(),
        );
        registry.register_with_unit(
            "tenants_read_timestamp",
            "When runtime tenants (the service API's) were last read from their state, Unix time; 0 until then. Keys deleted since are still accepted: alert when it falls behind",
            Unit::Seconds,
            metrics.tenants_read.clone(),
        );
        metrics
    }

    /// Drops the ext_authz series of tenant `tenant` of `domain` at `tier` (a runtime tenant
    /// deleted, or moved to another tier), so tenant churn does not grow them for ever.
    pub fn forget_tenant(&self, domain: &str, tenant: &str, tier: &str) {
        for &result in AuthzResult::ALL {
            self.authz_checks.remove(&AuthzLabels {
                domain: domain.to_owned(),
                tenant: tenant.to_owned(),
                tier: tier.to_owned(),
                result,
            });
        }
    }
}
