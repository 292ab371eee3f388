use proptest::prelude::*;

use super::*;
use crate::quota::{Algorithm, Unit};

/// Envoys sharing one budget, each with a true demand, holding what they were last sent.
struct Sim {
    capacity: Quota,
    seats: Vec<Seat>,
    wants: Vec<u64>,
}

impl Sim {
    fn new(rate: u32, wants: Vec<u64>) -> Self {
        let capacity = Quota::new(rate, Unit::Second, Algorithm::TokenBucket);
        let seats = wants
            .iter()
            .map(|_| Seat {
                demand: Demand::Unknown,
                holds: 0,
                current: None,
            })
            .collect();
        Self {
            capacity,
            seats,
            wants,
        }
    }

    /// Seat `i` reports: after its first report its demand is measured (allowed and denied
    /// requests together are its true demand). Returns how many messages went out.
    fn report(&mut self, i: usize, measured: bool) -> usize {
        if measured {
            self.seats[i].demand = Demand::Known(self.wants[i]);
        }
        let out = rebalance(&self.capacity, &self.seats, Trigger::Report(i));
        for &(j, assignment) in &out {
            self.seats[j].current = Some(assignment);
            self.seats[j].holds = assignment.tokens_per_period(&self.capacity);
        }
        out.len()
    }

    /// Another Envoy subscribes, wanting `want`.
    fn join(&mut self, want: u64) -> usize {
        self.wants.push(want);
        self.seats.push(Seat {
            demand: Demand::Unknown,
            holds: 0,
            current: None,
        });
        self.report(self.seats.len() - 1, false)
    }

    fn held(&self) -> u64 {
        self.seats.iter().map(|s| s.holds).sum()
    }

    fn fair(&self) -> Vec<u64> {
        let demands: Vec<Demand> = self.wants.iter().map(|&w| Demand::Known(w)).collect();
        fair_shares(u64::from(self.capacity.requests_per_unit()), &demands)
    }
}

#[test]
fn a_newcomer_takes_the_spare_of_the_others_at_once() {
    let mut sim = Sim::new(100, vec![10]);
    sim.report(0, false);
    sim.report(0, true);
    assert_eq!(sim.seats[0].holds, 100, "alone, it holds everything");
    // A second Envoy subscribes: the first is shrunk to its demand in the same instant.
    assert_eq!(sim.join(500), 2);
    assert_eq!((sim.seats[0].holds, sim.seats[1].holds), (10, 90));
}

#[test]
fn a_steady_budget_answers_only_the_reporter() {
    let mut sim = Sim::new(100, vec![30, 80, 5]);
    for round in 0..3 {
        for i in 0..3 {
            sim.report(i, round > 0);
        }
    }
    assert_eq!(sim.report(1, true), 1);
    assert_eq!(sim.held(), 100);
}

#[test]
fn seats_leaving_hand_their_share_to_the_rest() {
    let capacity = Quota::new(10, Unit::Second, Algorithm::TokenBucket);
    let seat = |holds| Seat {
        demand: Demand::Known(50),
        holds,
        current: Some(Assignment::of_share(holds, &capacity)),
    };
    // Two of four left: the two that stay grow from 2 and 3 to 5 each.
    let out = rebalance(&capacity, &[seat(2), seat(3)], Trigger::Change(None));
    assert_eq!(
        out,
        [
            (0, Assignment::of_share(5, &capacity)),
            (1, Assignment::of_share(5, &capacity))
        ]
    );
}

#[test]
fn a_budget_closed_and_opened_again_tells_every_seat_and_always_answers_the_reporter() {
    let capacity = Quota::new(10, Unit::Second, Algorithm::TokenBucket);
    let seat = |holds| Seat {
        demand: Demand::Known(50),
        holds,
        current: Some(Assignment::of_share(holds, &capacity)),
    };
    // Closed (a rate of 0): both are denied at once, whoever reported.
    let closed = capacity.cut_to(0);
    let out = rebalance(&closed, &[seat(5), seat(5)], Trigger::Change(Some(1)));
    assert_eq!(out, [(0, Assignment::DenyAll), (1, Assignment::DenyAll)]);
    // Still closed: only the reporter is answered.
    let denied = Seat {
        demand: Demand::Known(50),
        holds: 0,
        current: Some(Assignment::DenyAll),
    };
    let out = rebalance(&closed, &[denied, denied], Trigger::Change(Some(0)));
    assert_eq!(out, [(0, Assignment::DenyAll)]);
    // Open again: both get their share back.
    let out = rebalance(&capacity, &[denied, denied], Trigger::Change(None));
    assert_eq!(
        out,
        [
            (0, Assignment::of_share(5, &capacity)),
            (1, Assignment::of_share(5, &capacity))
        ]
    );
}

proptest! {
    /// Whatever order Envoys report in, what they hold never adds up to more than the
    /// capacity, and after every Envoy has reported twice with its demand measured, each holds
    /// exactly its max-min fair share (they converge) and stays there.
    #[test]
    fn shares_stay_within_the_capacity_and_converge(
        rate in 0u32..2_000,
        wants in prop::collection::vec(0u64..3_000, 1..8),
        orders in prop::collection::vec(prop::collection::vec(any::<prop::sample::Index>(), 0..24), 4),
        changed in prop::collection::vec(0u64..3_000, 8),
    ) {
        let n = wants.len();
        let mut sim = Sim::new(rate, wants);
        let mut reported = vec![0usize; n];
        // Random reports (subscriptions first, then measured ones) in a random order.
        for pick in &orders[0] {
            let i = pick.index(n);
            sim.report(i, reported[i] > 0);
            reported[i] += 1;
            prop_assert!(sim.held() <= u64::from(rate), "holds {} > {rate}", sim.held());
        }
        for round in &orders[1..3] {
            // A round: each Envoy reports once, in a random order.
            let mut order: Vec<usize> = (0..n).collect();
            for (k, pick) in round.iter().enumerate().take(n) {
                order.swap(k, k + pick.index(n - k));
            }
            for i in order {
                sim.report(i, true);
                prop_assert!(sim.held() <= u64::from(rate));
            }
        }
        let holds: Vec<u64> = sim.seats.iter().map(|s| s.holds).collect();
        prop_assert_eq!(&holds, &sim.fair(), "converged after two rounds");
        for i in 0..n {
            prop_assert_eq!(sim.report(i, true), 1, "a converged budget only answers");
        }
        // Demands change: the budget stays within its capacity and converges again.
        sim.wants = changed[..n].to_vec();
        for _ in 0..2 {
            for i in 0..n {
                sim.report(i, true);
                prop_assert!(sim.held() <= u64::from(rate));
            }
        }
        let holds: Vec<u64> = sim.seats.iter().map(|s| s.holds).collect();
        prop_assert_eq!(&holds, &sim.fair());
    }
}
