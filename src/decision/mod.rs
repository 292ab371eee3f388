//! Deciding a request: match each descriptor to a limit, turn the limits into claims on
//! buckets, have the store settle them all or nothing, and report one status per descriptor.
//!
//! A request is admitted only if every descriptor that can deny conforms; when it is not,
//! nothing is consumed (the reference service, by contrast, counts denied hits). Shadow-mode
//! limits count but never deny; quota-mode limits deny only when all the request's quota-mode
//! limits are over, and a limit that runs debt keeps its charge whatever the answer. A
//! descriptor may reserve an estimate and settle it later ([`reservation`]). How a store keeps
//! these promises is its business (see [`crate::store`]).

mod outcome;
mod request;
pub mod reservation;

pub use outcome::{Code, Decision, DescriptorStatus, ReportedLimit, ReservationUse, Usage};
pub use request::{MAX_DESCRIPTORS, RequestError};

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use smallvec::SmallVec;

use crate::clock::Clock;
use crate::config::{self, RateLimitConfig};
use crate::quota::Quota;
use crate::store::{Claim, KeyBuilder, Outcome, Role, Settlement, Store, Ticket, When};
use request::Limit;
use reservation::{Read, Wanted};

/// Server-wide decision settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Global shadow mode: count, never deny. As in the reference, each over-limit
    /// descriptor still reports OVER_LIMIT; only the overall code stays OK.
    pub shadow_mode: bool,
    /// Global quota mode: every limit is a quota-mode limit (a request is denied only when
    /// all its limits are over).
    pub quota_mode: bool,
    /// How limits compile: those of the files, and those Envoy sends in `descriptor.limit`.
    pub compile: config::Options,
    /// How long a reservation is held unsettled (`--reservation-ttl`).
    pub reservation_ttl: Duration,
}

/// The rate limiter: the configuration in force, the store and the clock.
#[derive(Debug)]
pub struct Limiter {
    config: ArcSwap<RateLimitConfig>,
    store: Arc<dyn Store>,
    keys: KeyBuilder,
    clock: Arc<dyn Clock>,
    settings: Settings,
}

impl Limiter {
    /// A limiter serving `config` from `store`, naming buckets with `keys` and reading time
    /// from `clock`.
    pub fn new(
        config: RateLimitConfig,
        store: Arc<dyn Store>,
        keys: KeyBuilder,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> Self {
        Self {
            config: ArcSwap::from_pointee(config),
            store,
            keys,
            clock,
            settings,
        }
    }

    /// The server-wide settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<RateLimitConfig> {
        self.config.load_full()
    }

    /// Puts `config` in force for the next requests; requests already deciding finish on the
    /// old one. What the store keeps for rules that `config` no longer has is dropped; every
    /// other bucket is kept (see the README's reload rules).
    pub fn swap_config(&self, config: RateLimitConfig) {
        let kept = config.rule_tags();
        let old = self.config.swap(Arc::new(config));
        let removed = old.rule_tags().difference(&kept).copied().collect();
        self.store.forget(&removed);
    }

    /// The bucket store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// How bucket keys are named.
    pub fn keys(&self) -> &KeyBuilder {
        &self.keys
    }

    /// The clock decisions read.
    pub fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    /// Decides `request`: match → claims → settle → statuses.
    pub async fn decide(&self, request: &RateLimitRequest) -> Result<Decision, RequestError> {
        self.decide_within(request, None).await
    }

    /// Decides `request` for a caller that waits at most `budget` (Envoy's `grpc-timeout`):
    /// a store that waits on the network answers within it, by its failure policy if need be.
    pub async fn decide_within(
        &self,
        request: &RateLimitRequest,
        budget: Option<Duration>,
    ) -> Result<Decision, RequestError> {
        self.settle_within(request, budget, Charge::Decide).await
    }

    /// Records usage that already happened (the service API's `POST /v1/usage`): each
    /// descriptor's cost is charged whatever is left, every limit running at least one full
    /// capacity of debt (as `--count-denied` gives it), so the charge stands and the limit
    /// answers OVER_LIMIT until refills have repaid it.
    pub async fn record_within(
        &self,
        request: &RateLimitRequest,
        budget: Option<Duration>,
    ) -> Result<Decision, RequestError> {
        self.settle_within(request, budget, Charge::Usage).await
    }

    async fn settle_within(
        &self,
        request: &RateLimitRequest,
        budget: Option<Duration>,
        charge: Charge,
    ) -> Result<Decision, RequestError> {
        request::check(request)?;
        let config = self.config.load_full();
        let now = self.clock.now();
        let read = request
            .descriptors
            .iter()
            .enumerate()
            .map(|(index, descriptor)| reservation::read(index, descriptor))
            .collect::<Result<SmallVec<[Read<'_>; 4]>, _>>()?;
        let limits = self.limits(&config, request, &read)?;
        let mut claims: SmallVec<[Claim; 4]> = SmallVec::new();
        for (index, limit) in &limits {
            let (descriptor, read) = (&request.descriptors[*index], &read[*index]);
            let cost = match read.wanted {
                Some(Wanted::Reserve { estimate, .. }) => estimate,
                _ => request::cost(request, descriptor),
            };
            if let Some(mut hit) = limit.hit(&self.keys, &request.domain, &read.entries, cost) {
                if charge == Charge::Usage {
                    hit.quota = spent(hit.quota);
                }
                let ticket = read.wanted.map(|wanted| match wanted {
                    Wanted::Reserve { request, .. } => {
                        // A reservation is taken only where it fits: never into debt.
                        hit.quota = hit.quota.with_debt(0);
                        Ticket::Reserve {
                            id: self.keys.reservation(hit.key, request),
                            ttl: self.settings.reservation_ttl,
                        }
                    }
                    Wanted::Settle { request } => Ticket::Settle {
                        id: self.keys.reservation(hit.key, request),
                    },
                });
                claims.push(Claim {
                    hit,
                    role: self.role(limit),
                    consistency: limit.rule().and_then(|rule| rule.consistency),
                    ticket,
                });
            }
        }
        let settlement = if claims.is_empty() {
            Settlement::default()
        } else {
            self.store
                .settle(&claims, When::at(now).within(budget))
                .await
                .map_err(RequestError::Unavailable)?
        };
        let mut outcomes = claims.iter().zip(&settlement.outcomes);
        let mut statuses: SmallVec<[DescriptorStatus; 4]> = SmallVec::new();
        let mut limits = limits.iter().peekable();
        for index in 0..request.descriptors.len() {
            let mut own: SmallVec<[DescriptorStatus; 1]> = SmallVec::new();
            while let Some((_, limit)) = limits.next_if(|(of, _)| *of == index) {
                own.push(if limit.is_unlimited() {
                    DescriptorStatus::unlimited()
                } else if limit.quota().is_some() {
                    outcomes
                        .next()
                        .map_or_else(DescriptorStatus::no_limit, |(claim, outcome)| {
                            status(limit, claim, outcome, settlement.denied)
                        })
                } else {
                    DescriptorStatus::no_limit()
                });
            }
            statuses.push(DescriptorStatus::of_all(own));
        }
        Ok(Decision {
            overall: if settlement.denied {
                Code::OverLimit
            } else {
                Code::Ok
            },
            unknown_domain: config.domain(&request.domain).is_none(),
            statuses,
        })
    }

    /// Each descriptor's limits (one, or a node's `rate_limits`), with the descriptor's
    /// position, in descriptor order, after `replaces`.
    fn limits<'c>(
        &self,
        config: &'c RateLimitConfig,
        request: &RateLimitRequest,
        read: &[Read<'_>],
    ) -> Result<SmallVec<[(usize, Limit<'c>); 4]>, RequestError> {
        let mut limits: SmallVec<[(usize, Limit<'_>); 4]> = SmallVec::new();
        for (index, read) in read.iter().enumerate() {
            let found = request::limits(
                config,
                request,
                index,
                &read.entries,
                &self.settings.compile,
            )?;
            limits.extend(found.into_iter().map(|limit| (index, limit)));
        }
        drop_replaced(&mut limits);
        Ok(limits)
    }

    /// How a limit's claim takes part in the settlement.
    fn role(&self, limit: &Limit<'_>) -> Role {
        let rule = limit.rule();
        Role {
            denies: !self.settings.shadow_mode && !rule.is_some_and(|r| r.shadow_mode),
            quota_mode: self.settings.quota_mode || rule.is_some_and(|r| r.quota_mode),
        }
    }
}

/// Whether a request asks for a decision or records usage that already happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charge {
    Decide,
    Usage,
}

/// `quota` charging usage that already happened: with at least one full capacity of debt,
/// where its algorithm counts that far (else with its own).
fn spent(quota: Quota) -> Quota {
    quota
        .try_with_debt(quota.debt().max(quota.burst()))
        .unwrap_or(quota)
}

/// A counted descriptor's status from its claim's outcome.
fn status(limit: &Limit<'_>, claim: &Claim, outcome: &Outcome, denied: bool) -> DescriptorStatus {
    let Outcome {
        verdict,
        refunded,
        released,
    } = outcome;
    let hit = &claim.hit;
    let denies = !verdict.allowed && claim.role.denies;
    // Only a limit's own shadow mode hides its being over: global shadow mode keeps the code,
    // and spares the request by never denying it.
    let own_shadow = limit.rule().is_some_and(|rule| rule.shadow_mode);
    let code = if !verdict.allowed && !own_shadow {
        Code::OverLimit
    } else {
        Code::Ok
    };
    let capacity = hit.quota.burst();
    let mut used_after = u64::from(capacity).saturating_sub(verdict.remaining);
    if *refunded {
        used_after += hit.cost;
    }
    let usage = Usage {
        rule: limit.rule().cloned(),
        hits: hit.cost,
        capacity,
        used_after,
        over_limit: !verdict.allowed,
        shadowed: !verdict.allowed && !denies,
        reservation: claim.ticket.map(|ticket| match ticket {
            Ticket::Reserve { .. } if verdict.allowed && !denied => ReservationUse::Reserved,
            Ticket::Reserve { .. } => ReservationUse::Refused,
            Ticket::Settle { .. } if *released > 0 => ReservationUse::Settled {
                released: *released,
            },
            Ticket::Settle { .. } => ReservationUse::Unmatched,
        }),
    };
    DescriptorStatus::limited(code, limit.name(), &hit.quota, verdict, usage)
}

/// Drops limits whose `name` another matched limit `replaces`.
fn drop_replaced(limits: &mut [(usize, Limit<'_>)]) {
    let replaced: SmallVec<[Arc<str>; 4]> = limits
        .iter()
        .filter_map(|(_, l)| l.rule())
        .flat_map(|rule| rule.replaces.iter().cloned())
        .collect();
    if replaced.is_empty() {
        return;
    }
    for (_, limit) in limits {
        let name = limit.rule().and_then(|rule| rule.name.as_ref());
        if name.is_some_and(|n| replaced.contains(n)) {
            *limit = Limit::None;
        }
    }
}

#[cfg(test)]
mod tests;
