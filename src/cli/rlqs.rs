//! `--rlqs-*`: the Rate Limit Quota Service's timing.

use std::time::Duration;

use clap::Args;

use super::values::parse_interval;
use crate::rlqs::RlqsOptions;

/// How long RLQS assignments live and when quiet buckets are let go.
#[derive(Debug, Args)]
#[command(next_help_heading = "Rate Limit Quota Service (RLQS)")]
pub(super) struct RlqsArgs {
    /// How long an assignment lives at Envoy, in whole seconds: each report (every 5 s)
    /// renews it, so it runs out only when tollgate stops answering, and Envoy then falls back
    /// to its own configured behaviour. Keep it above a few report periods.
    #[arg(long, env = "TOLLGATE_RLQS_ASSIGNMENT_TTL", value_name = "DURATION",
          default_value = "15s", value_parser = parse_whole_seconds)]
    rlqs_assignment_ttl: Duration,
    /// A bucket reported with no requests for this long is abandoned: Envoy forgets it and
    /// subscribes again on its next request.
    #[arg(long, env = "TOLLGATE_RLQS_IDLE_AFTER", value_name = "DURATION",
          default_value = "60s", value_parser = parse_interval)]
    rlqs_idle_after: Duration,
    /// A bucket not reported for this long is forgotten (its Envoy no longer has it) and its
    /// share freed for the others.
    #[arg(long, env = "TOLLGATE_RLQS_STALE_AFTER", value_name = "DURATION",
          default_value = "30s", value_parser = parse_interval)]
    rlqs_stale_after: Duration,
}

impl RlqsArgs {
    /// The options.
    pub(super) fn options(&self) -> RlqsOptions {
        RlqsOptions {
            assignment_ttl: self.rlqs_assignment_ttl,
            idle_after: self.rlqs_idle_after,
            stale_after: self.rlqs_stale_after,
            ..RlqsOptions::default()
        }
    }
}

/// A duration of at least a second, in whole seconds (Envoy reads an assignment's seconds only).
fn parse_whole_seconds(text: &str) -> Result<Duration, String> {
    let duration = parse_interval(text)?;
    if duration.subsec_nanos() != 0 || duration.as_secs() == 0 {
        return Err("must be whole seconds, at least 1s (Envoy reads the seconds only)".to_owned());
    }
    Ok(duration)
}
