//! Re-balancing one budget as reports arrive. Pure: seats in, assignments to send out.
//!
//! Each report re-computes the fair shares ([`super::share`]) from every seat's latest demand.
//! The reporter is told its share at once. The others are told only when the reporter's share
//! does not fit in what they leave free: then every seat holding more than its new share is
//! shrunk to it in the same instant. So the assignments sent never add up to more than the
//! capacity, and a steady budget costs one answer per report, not one message per Envoy per
//! report. A seat leaving (or a change of capacity, or a counted limit of the list that closes
//! or opens the budget) re-sends every share that changed.

use super::assignment::Assignment;
use super::share::{Demand, fair_shares};
use crate::quota::Quota;

/// One Envoy's bucket in a budget, as the re-balance sees it.
#[derive(Debug, Clone, Copy)]
pub struct Seat {
    /// What it wants, tokens per period.
    pub demand: Demand,
    /// What it holds now, tokens per period (nothing once expired).
    pub holds: u64,
    /// The assignment it was last sent.
    pub current: Option<Assignment>,
}

/// Why the budget is re-balanced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The seat at this position reported.
    Report(usize),
    /// Seats left, the capacity changed, or a counted limit closed or opened the budget: every
    /// changed share is sent, and the reporter's (the seat at this position, if one reported)
    /// in any case.
    Change(Option<usize>),
}

/// The assignments to send, by seat position, for `capacity` (this replica's part of the
/// limit) shared by `seats`.
pub fn rebalance(capacity: &Quota, seats: &[Seat], trigger: Trigger) -> Vec<(usize, Assignment)> {
    let rate = u64::from(capacity.requests_per_unit());
    let demands: Vec<Demand> = seats.iter().map(|seat| seat.demand).collect();
    let targets = fair_shares(rate, &demands);
    let assignment = |i: usize| Assignment::of_share(targets[i], capacity);
    let mut out = Vec::new();
    match trigger {
        Trigger::Report(reporter) => {
            let others = seats
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != reporter)
                .fold(0u64, |sum, (_, seat)| sum.saturating_add(seat.holds));
            let wants = targets.get(reporter).copied().unwrap_or(0);
            if wants.saturating_add(others) > rate {
                for (i, seat) in seats.iter().enumerate() {
                    if i != reporter && seat.holds > targets[i] {
                        out.push((i, assignment(i)));
                    }
                }
            }
            if reporter < seats.len() {
                out.push((reporter, assignment(reporter)));
            }
        }
        Trigger::Change(reporter) => {
            for (i, seat) in seats.iter().enumerate() {
                if seat.current != Some(assignment(i)) || reporter == Some(i) {
                    out.push((i, assignment(i)));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
