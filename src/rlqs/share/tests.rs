use proptest::prelude::*;

use super::*;

fn known(demands: &[u64]) -> Vec<Demand> {
    demands.iter().map(|&d| Demand::Known(d)).collect()
}

#[test]
fn little_users_keep_what_they_need_and_the_busy_share_the_rest() {
    // 100 tokens: 10 fits, 50 and 80 are short and split the 90 left.
    assert_eq!(fair_shares(100, &known(&[10, 50, 80])), [10, 45, 45]);
    // 30 fits the equal third too: 70 left for the busy one.
    assert_eq!(fair_shares(100, &known(&[30, 200])), [30, 70]);
}

#[test]
fn spare_capacity_is_spread_over_everyone() {
    assert_eq!(fair_shares(100, &known(&[10, 20])), [45, 55]);
    assert_eq!(fair_shares(10, &known(&[0, 0, 0])), [4, 3, 3]);
}

#[test]
fn an_unknown_demand_takes_what_the_others_do_not_need() {
    assert_eq!(
        fair_shares(100, &[Demand::Known(5), Demand::Unknown]),
        [5, 95]
    );
    assert_eq!(fair_shares(9, &[Demand::Unknown, Demand::Unknown]), [5, 4]);
}

#[test]
fn no_capacity_gives_nothing_and_no_demands_give_no_shares() {
    assert_eq!(fair_shares(0, &known(&[3, 4])), [0, 0]);
    assert!(fair_shares(100, &[]).is_empty());
}

#[test]
fn more_envoys_than_tokens_leaves_some_without() {
    assert_eq!(fair_shares(2, &known(&[5, 5, 5])), [1, 1, 0]);
}

/// The water level, found independently by bisection: the largest `level` with
/// `Σ min(demand, level) <= capacity`.
fn water_level(capacity: u64, demands: &[u64]) -> u64 {
    let fill = |level: u64| -> u128 { demands.iter().map(|&d| u128::from(d.min(level))).sum() };
    let (mut low, mut high) = (0u64, u64::MAX);
    while low < high {
        let mid = low + (high - low).div_ceil(2);
        if fill(mid) <= u128::from(capacity) {
            low = mid;
        } else {
            high = mid - 1;
        }
    }
    low
}

fn demand() -> impl Strategy<Value = Demand> {
    prop_oneof![
        1 => Just(Demand::Unknown),
        6 => (0u64..2_000).prop_map(Demand::Known),
        1 => any::<u64>().prop_map(Demand::Known),
    ]
}

proptest! {
    #[test]
    fn the_shares_add_up_to_the_capacity_never_more(
        capacity in prop_oneof![0u64..5_000, any::<u64>()],
        demands in prop::collection::vec(demand(), 1..12),
    ) {
        let shares = fair_shares(capacity, &demands);
        let sum: u128 = shares.iter().map(|&s| u128::from(s)).sum();
        prop_assert_eq!(sum, u128::from(capacity));
    }

    #[test]
    fn nobody_gets_more_than_it_wants_while_another_is_short(
        capacity in 0u64..5_000,
        demands in prop::collection::vec(demand(), 1..12),
    ) {
        let shares = fair_shares(capacity, &demands);
        let wants: Vec<u64> = demands.iter().map(|d| d.tokens()).collect();
        let short: Vec<usize> = (0..shares.len()).filter(|&i| shares[i] < wants[i]).collect();
        if short.is_empty() {
            return Ok(());
        }
        for i in 0..shares.len() {
            prop_assert!(shares[i] <= wants[i], "{i} gets {} > {} while {short:?} are short", shares[i], wants[i]);
            for &s in &short {
                prop_assert!(shares[i] <= shares[s] + 1, "{i} gets {} while short {s} gets {}", shares[i], shares[s]);
            }
        }
    }

    #[test]
    fn the_shares_are_the_max_min_fair_water_level(
        capacity in 0u64..5_000,
        wants in prop::collection::vec(0u64..2_000, 1..12),
    ) {
        let shares = fair_shares(capacity, &known(&wants));
        let total: u64 = wants.iter().sum();
        if total <= capacity {
            for (share, want) in shares.iter().zip(&wants) {
                prop_assert!(share >= want);
            }
            return Ok(());
        }
        let level = water_level(capacity, &wants);
        for (share, want) in shares.iter().zip(&wants) {
            prop_assert!(*share >= (*want).min(level) && *share <= (*want).min(level + 1),
                "share {share}, demand {want}, level {level}");
        }
    }

    #[test]
    fn the_same_demands_give_the_same_shares(
        capacity in 0u64..5_000,
        demands in prop::collection::vec(demand(), 1..12),
    ) {
        prop_assert_eq!(fair_shares(capacity, &demands), fair_shares(capacity, &demands));
    }
}
