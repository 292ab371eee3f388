//! tollgate: an Envoy rate limit service with hot in-memory buckets.
//!
//! The pipeline, one module per stage:
//! - [`config`]: read YAML files, validate, compile to an immutable [`matcher`] tree.
//! - [`decision`]: match request descriptors to [`rule`]s, run the [`algorithm`]s on the
//!   buckets of a [`store`], and decide all-or-nothing.
//! - [`authz`]: ext_authz tenants: API keys → tenant → tier → descriptors.
//! - [`protocol`]: Envoy's gRPC `RateLimitService` and `Authorization`, the HTTP admin
//!   endpoints and JSON.
//! - [`server`]: listeners, health, shutdown and background upkeep.

pub mod algorithm;
pub mod authz;
pub mod cli;
pub mod clock;
pub mod config;
pub mod decision;
pub mod matcher;
pub mod metrics;
pub mod protocol;
pub mod quota;
pub mod reload;
pub mod rule;
pub mod server;
pub mod store;
pub mod telemetry;
