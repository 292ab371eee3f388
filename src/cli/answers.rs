//! `--response-*`: what rate limit answers carry beyond their statuses.

use clap::Args;

use crate::protocol::answers::{Answers, HeaderNames};

/// Extras of every rate limit answer, as the reference service can add them.
#[derive(Debug, Args)]
#[command(next_help_heading = "Answers like envoyproxy/ratelimit")]
pub(super) struct AnswerArgs {
    /// Add the limit closest to running out as response headers (RateLimit-Limit,
    /// RateLimit-Remaining, RateLimit-Reset in whole seconds) to what Envoy sends back.
    #[arg(long, env = "TOLLGATE_RESPONSE_HEADERS")]
    response_headers: bool,
    /// Name of the limit header of --response-headers.
    #[arg(
        long,
        env = "TOLLGATE_RESPONSE_HEADER_LIMIT",
        value_name = "NAME",
        default_value = "RateLimit-Limit",
        requires = "response_headers"
    )]
    response_header_limit: String,
    /// Name of the remaining header of --response-headers.
    #[arg(
        long,
        env = "TOLLGATE_RESPONSE_HEADER_REMAINING",
        value_name = "NAME",
        default_value = "RateLimit-Remaining",
        requires = "response_headers"
    )]
    response_header_remaining: String,
    /// Name of the reset header of --response-headers.
    #[arg(
        long,
        env = "TOLLGATE_RESPONSE_HEADER_RESET",
        value_name = "NAME",
        default_value = "RateLimit-Reset",
        requires = "response_headers"
    )]
    response_header_reset: String,
    /// Put the request (domain, descriptors, hits) and the `metadata` of the limits that
    /// matched and were not over into the answer's dynamic metadata, for Envoy to route or
    /// log by (namespace envoy.filters.http.ratelimit).
    #[arg(long, env = "TOLLGATE_RESPONSE_DYNAMIC_METADATA")]
    response_dynamic_metadata: bool,
}

impl AnswerArgs {
    /// The extras asked for.
    pub(super) fn answers(&self) -> Result<Answers, String> {
        let headers = if self.response_headers {
            let names = HeaderNames {
                limit: self.response_header_limit.clone(),
                remaining: self.response_header_remaining.clone(),
                reset: self.response_header_reset.clone(),
            };
            for (flag, name) in [
                ("--response-header-limit", &names.limit),
                ("--response-header-remaining", &names.remaining),
                ("--response-header-reset", &names.reset),
            ] {
                http::HeaderName::try_from(name.as_str())
                    .map_err(|_| format!("{flag} {name:?} is not a header name"))?;
            }
            Some(names)
        } else {
            None
        };
        Ok(Answers {
            headers,
            dynamic_metadata: self.response_dynamic_metadata,
        })
    }
}
