//! Deciding requests in Redis: one `decide.lua` request per request, batched with concurrent
//! ones bound for the same slot ([`batch`](super::batch)).
//!
//! A request whose buckets share a slot (always, on a single node) is settled by its one script
//! request, all or nothing. On a Cluster a request whose buckets span slots is settled in two
//! phases: each slot takes, provisionally, what conforms there ([`wire::MODE_PROVISIONAL`]);
//! then the request is settled here as [`contract::denied`] says, and where it was denied each
//! slot gives back what it took ([`wire::MODE_UNDO`]). Between the phases (one round trip) a
//! concurrent request may see the provisional units as taken and be denied for them; nothing
//! is ever counted twice: an undo is sent once, and if it is lost the units stay taken (the
//! hit counted once, as if the request had been admitted).

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use smallvec::SmallVec;

use super::call::{self, CallFailure, Entry, InFlight, Request};
use super::health::Failure;
use super::reconcile::{self, Asked};
use super::wire::{self, Figures};
use super::{Failed, Group, RedisStore};
use crate::algorithm::Verdict;
use crate::store::contract::{self, Claim, Late, Settlement, Unavailable, When};

/// A decision: whether the request was denied, and each claim's figures.
pub(super) type Decided = (bool, SmallVec<[Figures; 4]>);

impl RedisStore {
    /// Decides and settles `claims` of one request. Claims with a `known` verdict (cached-mode
    /// leases) only take part in settling; once the request is admitted, up to `lease[i]` more
    /// units of claim `i`'s bucket are taken for a lease. Returns whether the request was
    /// denied and each claim's figures (`taken`: its cost plus what was leased). A call that
    /// times out comes back with [`Unavailable::late`] set (see [`reconcile`]).
    pub async fn decide(
        &self,
        claims: &[Claim],
        known: &[Option<bool>],
        lease: &[u64],
        when: When,
    ) -> Result<Decided, Unavailable> {
        let entries: SmallVec<[Entry; 4]> = claims
            .iter()
            .zip(known)
            .zip(lease)
            .map(|((claim, known), lease)| {
                let role = (wire::role(claim.role.denies, claim.role.quota_mode), *lease);
                match known {
                    None => Entry::of(&claim.hit, claim.hit.cost, Some(role), when.now)
                        .with_ticket(claim.ticket),
                    Some(allowed) => Entry::decided(*allowed, role),
                }
            })
            .collect();
        let groups = self.by_route(entries.iter().map(Entry::lane));
        match groups.as_slice() {
            [] => self.decide_in_one(claims, known, entries, 0, when).await,
            [(lane, _)] => {
                self.decide_in_one(claims, known, entries, *lane, when)
                    .await
            }
            _ => {
                self.decide_across(claims, known, &entries, &groups, when)
                    .await
            }
        }
    }

    /// A request whose buckets share `lane`'s slot: one script request settles it.
    async fn decide_in_one(
        &self,
        claims: &[Claim],
        known: &[Option<bool>],
        entries: SmallVec<[Entry; 4]>,
        lane: u64,
        when: When,
    ) -> Result<Decided, Unavailable> {
        let count = entries.len();
        let request = Request {
            now: when.now,
            mode: wire::MODE_SETTLE,
            entries,
        };
        let reply = match self.ask(lane, request, when.budget).await {
            Ok(reply) => reply,
            Err(Failed {
                mut error,
                in_flight,
            }) => {
                error.late = in_flight.map(|in_flight| {
                    let asked = Asked {
                        claims: claims.into(),
                        known: known.into(),
                        now: when.now,
                    };
                    reconcile::late(self.me.clone(), in_flight, asked)
                });
                return Err(error);
            }
        };
        call::decided(&reply, count).ok_or_else(|| self.malformed(lane, reply.len(), count))
    }

    /// A request whose buckets span Cluster slots: provisional takes in every slot, the
    /// settlement here, and undos where it was denied.
    async fn decide_across(
        &self,
        claims: &[Claim],
        known: &[Option<bool>],
        entries: &[Entry],
        groups: &[Group],
        when: When,
    ) -> Result<Decided, Unavailable> {
        let asks = groups.iter().map(|(lane, indices)| {
            let request = Request {
                now: when.now,
                mode: wire::MODE_PROVISIONAL,
                entries: indices.iter().map(|&i| entries[i]).collect(),
            };
            self.ask(*lane, request, when.budget)
        });
        let answers = join_all(asks).await;
        let mut figures: SmallVec<[Figures; 4]> = known
            .iter()
            .map(|known| decided_by_caller(known.unwrap_or(false)))
            .collect();
        let mut failed: Option<Unavailable> = None;
        // Per slot that may have taken something: its claims and its reply, or the call.
        let mut pending: Vec<(InFlight, &SmallVec<[usize; 4]>)> = Vec::new();
        for ((lane, indices), answer) in groups.iter().zip(answers) {
            match answer {
                Ok(reply) => match call::decided(&reply, indices.len()) {
                    Some((_, slot_figures)) => {
                        for (&i, f) in indices.iter().zip(slot_figures) {
                            figures[i] = f;
                        }
                        let ready: InFlight = Box::pin(async move { Ok(reply) });
                        pending.push((ready, indices));
                    }
                    None => {
                        let error = self.malformed(*lane, reply.len(), indices.len());
                        failed.get_or_insert(error);
                    }
                },
                Err(Failed { error, in_flight }) => {
                    failed.get_or_insert(error);
                    if let Some(in_flight) = in_flight {
                        pending.push((in_flight, indices));
                    }
                }
            }
        }
        if let Some(mut error) = failed {
            // What the slots took is made to agree with the answer given instead.
            error.late = (!pending.is_empty()).then(|| self.late_across(claims, pending, when));
            return Err(error);
        }
        let denied = contract::denied(
            claims
                .iter()
                .zip(&figures)
                .map(|(claim, f)| (claim.role, f.verdict.allowed)),
        );
        if denied {
            self.undo(claims, entries, groups, &mut figures, when).await;
        }
        Ok((denied, figures))
    }

    /// Gives back, in each slot, what a denied request's claims took provisionally (but what
    /// claims running debt took: their usage happened); their figures become checks.
    async fn undo(
        &self,
        claims: &[Claim],
        entries: &[Entry],
        groups: &[Group],
        figures: &mut [Figures],
        when: When,
    ) {
        let undone: SmallVec<[(u64, SmallVec<[usize; 4]>); 2]> = groups
            .iter()
            .map(|(lane, indices)| {
                let back = indices
                    .iter()
                    .copied()
                    .filter(|&i| figures[i].taken > 0 && !contract::keeps(&claims[i]))
                    .collect();
                (*lane, back)
            })
            .filter(|(_, back): &(u64, SmallVec<[usize; 4]>)| !back.is_empty())
            .collect();
        let asks = undone.iter().map(|(lane, back)| {
            let request = Request {
                now: when.now,
                mode: wire::MODE_UNDO,
                entries: back
                    .iter()
                    .map(|&i| Entry {
                        cost: figures[i].taken,
                        ..entries[i]
                    })
                    .collect(),
            };
            self.ask(*lane, request, when.budget)
        });
        let answers = join_all(asks).await;
        for ((_, back), answer) in undone.iter().zip(answers) {
            let checks = answer
                .ok()
                .and_then(|reply| call::decided(&reply, back.len()))
                .map(|(_, checks)| checks);
            let Some(checks) = checks else {
                let units: u64 = back.iter().map(|&i| figures[i].taken).sum();
                self.late
                    .unanswered_undo_units
                    .fetch_add(units, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    claims = back.len(),
                    units,
                    "an undo of a denied request went unanswered in redis: its units stay taken unless it ran"
                );
                continue;
            };
            for (&i, check) in back.iter().zip(checks) {
                figures[i] = Figures {
                    released: figures[i].released,
                    ..check
                };
            }
        }
    }

    /// The hook for a request across slots that failed somewhere: each slot's call (answered
    /// or late) is reconciled with the answer given instead, for its own claims.
    fn late_across(
        &self,
        claims: &[Claim],
        pending: Vec<(InFlight, &SmallVec<[usize; 4]>)>,
        when: When,
    ) -> Late {
        let lates: Vec<(Late, SmallVec<[usize; 4]>)> = pending
            .into_iter()
            .map(|(in_flight, indices)| {
                let asked = Asked {
                    claims: indices.iter().map(|&i| claims[i]).collect(),
                    known: indices.iter().map(|_| None).collect(),
                    now: when.now,
                };
                (
                    reconcile::late(self.me.clone(), in_flight, asked),
                    indices.clone(),
                )
            })
            .collect();
        Late::new(move |instead: &Settlement| {
            for (late, indices) in &lates {
                let part = Settlement {
                    denied: instead.denied,
                    outcomes: indices.iter().map(|&i| instead.outcomes[i]).collect(),
                };
                late.answered(&part);
            }
        })
    }

    /// Sends `request` with the others bound for `lane`'s slot, waiting at most the call's
    /// time (see [`RedisStore::wait`]).
    pub(super) async fn ask(
        &self,
        lane: u64,
        request: Request,
        budget: Option<Duration>,
    ) -> Result<Vec<i64>, Failed> {
        if self.is_degraded() {
            return Err(Failed {
                error: Unavailable::new("degraded, waiting for redis to answer"),
                in_flight: None,
            });
        }
        let wait = self.wait(budget);
        let mut answer = self.batches.submit(&self.me, self.route(lane), request);
        match tokio::time::timeout(wait, &mut answer).await {
            Ok(Ok(Ok(reply))) => Ok(reply),
            Ok(Ok(Err(failure))) => Err(Failed {
                error: Unavailable::new(failure.message),
                in_flight: None,
            }),
            Ok(Err(_)) => Err(Failed {
                error: Unavailable::new("the call was dropped"),
                in_flight: None,
            }),
            Err(_) => Err(Failed {
                error: self.health.failed(
                    lane,
                    Failure::Timeout,
                    format!("no answer within {wait:?}"),
                ),
                in_flight: Some(Box::pin(async move {
                    answer.await.unwrap_or_else(|_| {
                        Err(CallFailure {
                            failure: Failure::Connection,
                            message: "the call was dropped".to_owned(),
                        })
                    })
                })),
            }),
        }
    }

    /// Sends one batch of requests (all for one slot on a Cluster) as one call; each
    /// request's reply, in order.
    pub(super) async fn send(&self, requests: &[Request]) -> Result<Vec<Vec<i64>>, CallFailure> {
        let lane = requests
            .iter()
            .flat_map(|request| &request.entries)
            .find_map(Entry::lane)
            .unwrap_or(0);
        let Some(conn) = self.link.conn() else {
            let failure = CallFailure {
                failure: Failure::Connection,
                message: "not connected".to_owned(),
            };
            self.health
                .failed(lane, failure.failure, failure.message.clone());
            return Err(failure);
        };
        let started = Instant::now();
        let answered = call::decide(conn, self.decide.clone(), &self.prefix, requests).await;
        let reply = self.answered(lane, answered, started)?;
        let sizes: SmallVec<[usize; 8]> = requests.iter().map(|r| r.entries.len()).collect();
        call::split(&reply, &sizes).ok_or_else(|| {
            let failure = CallFailure {
                failure: Failure::Server,
                message: format!(
                    "script answered {} values for {} requests",
                    reply.len(),
                    requests.len()
                ),
            };
            self.health
                .failed(lane, failure.failure, failure.message.clone());
            failure
        })
    }
}

/// Figures for a claim its caller decided (served from a lease): only its verdict counts.
fn decided_by_caller(allowed: bool) -> Figures {
    Figures {
        verdict: Verdict {
            allowed,
            state: 0,
            remaining: 0,
            reset_after: 0,
            retry_after: None,
        },
        refunded: false,
        taken: 0,
        released: 0,
    }
}
