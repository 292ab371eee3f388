//! tollgate: an Envoy rate limit service with hot in-memory buckets.
//!
//! The pipeline, one module per stage:
//! - [`config`]: read YAML files, validate, compile to an immutable [`matcher`] tree.
//! - [`decision`]: match request descriptors to [`rule`]s and turn them into claims that a
//!   [`store`] settles all or nothing with the [`algorithm`]s.
//! - [`store`]: one contract ([`store::Store`]); memory, Redis, cached-mode leases and the
//!   failure policy implement it.
//! - [`authz`]: ext_authz tenants: API keys → tenant → tier → descriptors.
//! - [`protocol`]: Envoy's gRPC `RateLimitService`, `Authorization` and
//!   `RateLimitQuotaService`, the HTTP admin endpoints and JSON; [`rlqs`]: quota assignments
//!   shared fairly among the Envoys of the Rate Limit Quota Service.
//! - [`server`]: listeners, health, shutdown and background upkeep; [`snapshot`]: the memory
//!   store saved and restored across restarts; [`tls`]: the gRPC port's TLS.
//! - [`xds`]: limits pushed over xDS (ADS), as Envoy Gateway pushes them to the reference
//!   service.
//! - [`app`]: the composition root: settings in, a service out.

pub mod algorithm;
pub mod api;
pub mod app;
pub mod atomic_file;
pub mod authz;
pub mod calendar;
pub mod cli;
pub mod clock;
pub mod config;
pub mod decision;
pub mod matcher;
pub mod metrics;
pub mod percent;
pub mod protocol;
pub mod quota;
pub mod reload;
pub mod rlqs;
pub mod rule;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod telemetry;
pub mod tenants;
pub mod tls;
pub mod xds;
