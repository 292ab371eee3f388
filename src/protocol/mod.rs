//! The wire: Envoy's gRPC `RateLimitService`, and the HTTP admin port (health, JSON).

pub mod admin;
pub mod json;
pub mod rls;
