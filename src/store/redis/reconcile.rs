//! Calls given up on are not forgotten. A decide call that outlasted its time may still run in
//! Redis after the failure policy answered the request; its late answer is awaited (up to
//! [`LATE_WAIT`]) and whatever it did that the answer given did not is corrected: units it took
//! for a request the policy denied, and the slice it leased for a lease nobody recorded, are
//! given back; units it did not take for a request the policy admitted are charged (as many as
//! remain). So a hit is counted once, whichever side answered.

use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use smallvec::SmallVec;

use super::RedisStore;
use super::call::{self, InFlight};
use crate::clock::Nanos;
use crate::store::contract::{self, Claim, Hit, Late, Settlement};
use crate::store::lease::Unspent;

/// The longest wait for a late answer; past it the call counts as lost (its effect, if any,
/// stands).
pub const LATE_WAIT: Duration = Duration::from_secs(10);

/// What late answers did.
#[derive(Debug, Default)]
pub(super) struct LateCounts {
    /// Late answers received and reconciled.
    pub(super) reconciled: AtomicU64,
    /// Calls whose answer never came: their effect is unknown.
    pub(super) lost: AtomicU64,
    /// Units given back or charged to make late answers agree with the answers given.
    pub(super) corrected_units: AtomicU64,
    /// Units a denied request across Cluster slots took provisionally whose undo went
    /// unanswered: they stay taken unless the undo ran all the same.
    pub(super) unanswered_undo_units: AtomicU64,
}

/// The request a decide call was for, as the call saw it.
pub(super) struct Asked {
    pub(super) claims: SmallVec<[Claim; 4]>,
    /// Claims decided by the caller (cached-mode leases): not the call's to reconcile.
    pub(super) known: SmallVec<[Option<bool>; 4]>,
    pub(super) now: Nanos,
}

/// The hook for whoever answers instead of a decide call given up on.
pub(super) fn late(store: Weak<RedisStore>, in_flight: InFlight, asked: Asked) -> Late {
    Late::new(move |instead: &Settlement| {
        // Each claim's units the request took in the answer given.
        let took: SmallVec<[u64; 4]> = asked
            .claims
            .iter()
            .zip(&instead.outcomes)
            .map(|(claim, outcome)| contract::charged(claim, outcome, instead.denied))
            .collect();
        tokio::spawn(async move {
            let answer = tokio::time::timeout(LATE_WAIT, in_flight).await;
            let Some(store) = store.upgrade() else { return };
            match answer {
                Ok(Ok(reply)) => store.reconcile(&asked, &took, &reply).await,
                _ => {
                    store.late.lost.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        "a redis call given up on never answered: its effect is unknown"
                    );
                }
            }
        });
    })
}

impl RedisStore {
    /// Makes the effect of a late `reply` to `asked` agree with what the request `took`.
    async fn reconcile(&self, asked: &Asked, took: &[u64], reply: &[i64]) {
        let Some((_, figures)) = call::decided(reply, asked.claims.len()) else {
            self.late.lost.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.late.reconciled.fetch_add(1, Ordering::Relaxed);
        let mut give_back: SmallVec<[Unspent; 4]> = SmallVec::new();
        let mut charge: SmallVec<[(Hit, u64); 4]> = SmallVec::new();
        for (((claim, known), figures), &took) in asked
            .claims
            .iter()
            .zip(&asked.known)
            .zip(&figures)
            .zip(took)
        {
            if known.is_some() {
                continue;
            }
            // A denied request's entries took nothing, but what debt kept (0 if they did not).
            let taken = figures.taken;
            // What it took beyond the request's own units was a lease nobody recorded.
            let back = taken.saturating_sub(took);
            if back > 0 {
                give_back.push(Unspent {
                    hit: claim.hit,
                    tokens: back,
                });
            }
            if took > taken {
                charge.push((claim.hit, took - taken));
            }
        }
        let units: u64 = give_back.iter().map(|u| u.tokens).sum::<u64>()
            + charge.iter().map(|(_, n)| n).sum::<u64>();
        if units == 0 {
            return;
        }
        self.late
            .corrected_units
            .fetch_add(units, Ordering::Relaxed);
        let fixed = async {
            if !give_back.is_empty() {
                self.give_back(&give_back, asked.now).await?;
            }
            if !charge.is_empty() {
                self.lease(&charge, asked.now).await?;
            }
            Ok::<_, crate::store::contract::Unavailable>(())
        };
        match fixed.await {
            Ok(()) => tracing::debug!(units, "reconciled a late redis answer"),
            Err(error) => {
                tracing::warn!(%error, units, "a late redis answer could not be reconciled")
            }
        }
    }
}
