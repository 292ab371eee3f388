//! The fair share: a limit's tokens split among the Envoys that report one budget.
//!
//! Pure: demands in, shares out; no clock, no I/O, no state. Shares are whole tokens per period
//! (the limit's unit), so the sum of the shares is exactly the capacity and can never pass it.
//!
//! The rule is max-min fairness (water filling), as Doorman's `FairShare` does it:
//!
//! 1. Visit the demands from the smallest up. Each is compared with an equal split of what is
//!    left among those not yet served; one that fits gets exactly its demand (an Envoy that uses
//!    little keeps what it needs).
//! 2. The first demand that does not fit, and every larger one, is *short*: those split what is
//!    left equally (the busy ones share the rest). Nobody gets more than its demand while anyone
//!    is short, and every short one gets at least as much as anyone else (±1 token of rounding).
//! 3. If every demand fits, the spare is spread equally over everyone, so an Envoy that was idle
//!    can admit its next requests before its next report.
//!
//! Leftover tokens of an integer division go one each to the earliest claimants in the order
//! given, so the same input always gives the same shares.

/// What one Envoy wants, in tokens per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demand {
    /// Not measured yet (a new subscription): it may want everything.
    Unknown,
    /// Measured from reports.
    Known(u64),
}

impl Demand {
    /// The demand as a number; unknown is unbounded.
    pub const fn tokens(self) -> u64 {
        match self {
            Demand::Unknown => u64::MAX,
            Demand::Known(tokens) => tokens,
        }
    }
}

/// The max-min fair shares of `capacity` among `demands`, in the same order. The shares add up
/// to exactly `capacity` when there is at least one demand.
pub fn fair_shares(capacity: u64, demands: &[Demand]) -> Vec<u64> {
    let n = demands.len();
    let mut shares = vec![0; n];
    if n == 0 {
        return shares;
    }
    let mut order: Vec<usize> = (0..n).collect();
    // Stable: equal demands keep the caller's order.
    order.sort_by_key(|&i| demands[i].tokens());
    let mut remaining = capacity;
    for (served, &i) in order.iter().enumerate() {
        let left = (n - served) as u64;
        let want = demands[i].tokens();
        if want <= remaining / left {
            shares[i] = want;
            remaining -= want;
            continue;
        }
        // This one and every larger demand are short: split what is left equally.
        let mut short: Vec<usize> = order[served..].to_vec();
        short.sort_unstable();
        spread(remaining, &short, &mut shares);
        return shares;
    }
    // Everyone fits: spread the spare over everyone.
    let everyone: Vec<usize> = (0..n).collect();
    spread(remaining, &everyone, &mut shares);
    shares
}

/// Adds an equal part of `tokens` to each of `who` (sorted), the remainder one each to the
/// first ones.
fn spread(tokens: u64, who: &[usize], shares: &mut [u64]) {
    let Some(count) = u64::try_from(who.len()).ok().filter(|&c| c > 0) else {
        return;
    };
    let (each, extra) = (tokens / count, tokens % count);
    for (rank, &i) in who.iter().enumerate() {
        let bonus = u64::from((rank as u64) < extra);
        shares[i] = shares[i].saturating_add(each + bonus);
    }
}

#[cfg(test)]
mod tests;
