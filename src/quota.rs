//! What a limit allows: a rate, a time unit and the algorithm that enforces it.
//!
//! A [`Quota`] is validated once, when the configuration is compiled (or when a request's
//! override is read), so the hot path trusts it.

use std::fmt;

use crate::calendar::Zone;
use crate::clock::{NANOS_PER_SEC, Nanos};

/// The time unit of a limit, as in envoyproxy/ratelimit (month = 30 days, year = 365 days).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Unit {
    /// One second.
    Second,
    /// 60 seconds.
    Minute,
    /// 3 600 seconds.
    Hour,
    /// 86 400 seconds.
    Day,
    /// 7 days.
    Week,
    /// 30 days.
    Month,
    /// 365 days.
    Year,
}

impl Unit {
    /// Every unit, shortest first.
    pub const ALL: [Unit; 7] = [
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Week,
        Unit::Month,
        Unit::Year,
    ];

    /// The unit's length in seconds.
    pub const fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
            Unit::Week => 7 * 86_400,
            Unit::Month => 30 * 86_400,
            Unit::Year => 365 * 86_400,
        }
    }

    /// The unit's length in nanoseconds.
    pub const fn nanos(self) -> Nanos {
        self.seconds() * NANOS_PER_SEC
    }

    /// The lower-case name used in YAML.
    pub const fn name(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }

    /// Parses a unit name, case-insensitively.
    pub fn parse(name: &str) -> Option<Unit> {
        Unit::ALL
            .into_iter()
            .find(|unit| unit.name().eq_ignore_ascii_case(name))
    }

    /// The unit from Envoy's `type.v3.RateLimitUnit` number (SECOND 1 … YEAR 6, WEEK 7).
    pub const fn from_envoy(number: i32) -> Option<Unit> {
        match number {
            1 => Some(Unit::Second),
            2 => Some(Unit::Minute),
            3 => Some(Unit::Hour),
            4 => Some(Unit::Day),
            5 => Some(Unit::Month),
            6 => Some(Unit::Year),
            7 => Some(Unit::Week),
            _ => None,
        }
    }

    /// The same numbering, for `RateLimitResponse.RateLimit.Unit`.
    pub const fn to_envoy(self) -> i32 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 2,
            Unit::Hour => 3,
            Unit::Day => 4,
            Unit::Month => 5,
            Unit::Year => 6,
            Unit::Week => 7,
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a limit admits traffic over time.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[value(rename_all = "snake_case")]
pub enum Algorithm {
    /// Capacity `burst` (default `requests_per_unit`), refilled continuously at
    /// `requests_per_unit` per unit.
    #[default]
    #[value(alias = "gcra", alias = "leaky_bucket")]
    TokenBucket,
    /// envoyproxy/ratelimit's counter per epoch-aligned window of one unit.
    FixedWindow,
    /// The weighted two-window counter: the previous window's count, weighted by how much of
    /// it is still inside the last unit, plus the current window's.
    SlidingWindow,
    /// Exact: one timestamp per admitted hit over the last unit.
    SlidingLog,
}

impl Algorithm {
    /// Every algorithm.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::TokenBucket,
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::SlidingLog,
    ];

    /// The snake_case name used in YAML and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::SlidingLog => "sliding_log",
        }
    }

    /// Parses a snake_case algorithm name. `gcra` and `leaky_bucket` name the token bucket:
    /// the generic cell rate algorithm is how it is computed, and a leaky bucket used as a
    /// meter (capacity `burst`, draining at `requests_per_unit` per unit) admits exactly the
    /// same requests (a test checks it against a leaky-bucket model).
    pub fn parse(name: &str) -> Option<Algorithm> {
        <Self as clap::ValueEnum>::from_str(name, false).ok()
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a quota cannot be built: its algorithm cannot enforce it exactly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// A token bucket faster than it counts exactly.
    #[error(
        "requests_per_unit {requests_per_unit} per {unit} is faster than a token bucket counts exactly (at most {max_per_second} per second); use algorithm: fixed_window or unlimited: true"
    )]
    TooFast {
        /// The rate asked for.
        requests_per_unit: u32,
        /// Its unit.
        unit: Unit,
        /// The fastest rate counted exactly.
        max_per_second: u64,
    },
    /// A token bucket whose timestamp would leave its range.
    #[error("burst {burst} at {requests_per_unit} per {unit} takes more than 100 years to refill")]
    RefillTooLong {
        /// The capacity.
        burst: u32,
        /// The rate.
        requests_per_unit: u32,
        /// Its unit.
        unit: Unit,
    },
    /// More than a sliding window counts.
    #[error(
        "requests_per_unit {requests_per_unit} is more than a sliding window counts (at most {max}); use a longer unit's share, token_bucket or fixed_window"
    )]
    SlidingWindowCount {
        /// The limit asked for.
        requests_per_unit: u32,
        /// The most a sliding window counts.
        max: u32,
    },
    /// A sliding window whose products would pass 2^53 in the Redis script.
    #[error(
        "requests_per_unit {requests_per_unit} per {unit} is too large for a sliding window (requests_per_unit × milliseconds per unit must stay below 2^53)"
    )]
    SlidingWindowSpan {
        /// The limit asked for.
        requests_per_unit: u32,
        /// Its unit.
        unit: Unit,
    },
    /// More than a sliding log keeps.
    #[error(
        "requests_per_unit {requests_per_unit} is more than a sliding log keeps (at most {max}, one timestamp per hit); use sliding_window"
    )]
    SlidingLogCount {
        /// The limit asked for.
        requests_per_unit: u32,
        /// The most a sliding log keeps.
        max: u32,
    },
    /// Debt past what the algorithm counts exactly.
    #[error(
        "max_debt {debt} on top of {capacity} is more than {algorithm} counts exactly ({max} in all); lower max_debt"
    )]
    DebtTooLarge {
        /// The debt asked for.
        debt: u32,
        /// The capacity it comes on top of.
        capacity: u32,
        /// The algorithm.
        algorithm: Algorithm,
        /// The most the algorithm counts, capacity and debt together.
        max: u64,
    },
    /// `calendar: true` on an algorithm without windows to align.
    #[error("calendar applies to algorithm fixed_window, not {algorithm}")]
    CalendarNeedsFixedWindow {
        /// The algorithm.
        algorithm: Algorithm,
    },
    /// `calendar: true` on a unit shorter than a day.
    #[error("calendar applies to units of a day or more (day, week, month, year), not {unit}")]
    CalendarUnit {
        /// The unit.
        unit: Unit,
    },
    /// `unit_multiplier: 0`.
    #[error("unit_multiplier must be at least 1")]
    ZeroMultiplier,
    /// A window or refill period too long to count.
    #[error("unit_multiplier {multiplier} {unit}s is longer than 100 years")]
    PeriodTooLong {
        /// The multiplier.
        multiplier: u32,
        /// Its unit.
        unit: Unit,
    },
    /// `debt: true` where the algorithm counts nothing past the capacity.
    #[error(
        "debt: true has no room: {algorithm} counts at most {max} in all, and the limit is {capacity}"
    )]
    NoRoomForDebt {
        /// The capacity.
        capacity: u32,
        /// The algorithm.
        algorithm: Algorithm,
        /// The most it counts.
        max: u64,
    },
    /// `burst` on a window algorithm.
    #[error("burst applies only to algorithm token_bucket")]
    BurstWithoutTokenBucket,
    /// `burst: 0` on a rate that is not zero.
    #[error("burst must be at least 1 (use requests_per_unit: 0 to block)")]
    ZeroBurst,
}

/// A validated limit: `requests_per_unit` per `unit`, enforced by `algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Quota {
    requests_per_unit: u32,
    unit: Unit,
    algorithm: Algorithm,
    burst: u32,
    /// Units a hit may take past what is left (`debt:`), repaid as the bucket refills.
    debt: u32,
    /// Units per window or refill period (`unit_multiplier:`): 30 seconds, 15 minutes.
    multiplier: u32,
    /// Windows follow this time zone's calendar (`calendar: true`; fixed windows of a day or
    /// more).
    calendar: Option<Zone>,
}

impl Quota {
    /// A quota its algorithm can enforce exactly, with a token-bucket capacity of `burst`
    /// (default `requests_per_unit`; token buckets only). `requests_per_unit == 0` denies every
    /// request. Configuration files and Envoy's overrides are checked here, once; a quota
    /// that runs debt is checked again with [`Quota::try_with_debt`].
    pub fn try_new(
        requests_per_unit: u32,
        unit: Unit,
        algorithm: Algorithm,
        burst: Option<u32>,
    ) -> Result<Self, QuotaError> {
        let mut quota = Self::new(requests_per_unit, unit, algorithm);
        match (algorithm, burst) {
            (Algorithm::TokenBucket, Some(0)) if requests_per_unit > 0 => {
                return Err(QuotaError::ZeroBurst);
            }
            (Algorithm::TokenBucket, Some(burst)) => quota = quota.with_burst(burst),
            (_, Some(_)) => return Err(QuotaError::BurstWithoutTokenBucket),
            (_, None) => {}
        }
        crate::algorithm::check(&quota)?;
        Ok(quota)
    }

    /// The same quota running up to `debt` units of debt, if its algorithm can count that far.
    pub fn try_with_debt(self, debt: u32) -> Result<Self, QuotaError> {
        let quota = self.with_debt(debt);
        crate::algorithm::check(&quota)?;
        Ok(quota)
    }

    /// The debt `debt: true` gives when `max_debt` does not say: one full capacity, or as much
    /// as the algorithm counts on top of the capacity when that is less (a sliding log of
    /// 10 000 has none).
    pub fn default_debt(&self) -> u32 {
        let room = crate::algorithm::most_counted(self).saturating_sub(u64::from(self.capacity()));
        u32::try_from(room).unwrap_or(u32::MAX).min(self.capacity())
    }

    /// What the bucket holds when full: `burst` for a token bucket, else the limit.
    pub const fn capacity(&self) -> u32 {
        match self.algorithm {
            Algorithm::TokenBucket => self.burst,
            _ => self.requests_per_unit,
        }
    }

    /// [`QuotaError::DebtTooLarge`] unless capacity plus debt stays within `max`.
    pub(crate) fn debt_within(&self, max: u64) -> Result<(), QuotaError> {
        let capacity = self.capacity();
        if u64::from(capacity) + u64::from(self.debt) <= max {
            return Ok(());
        }
        Err(QuotaError::DebtTooLarge {
            debt: self.debt,
            capacity,
            algorithm: self.algorithm,
            max,
        })
    }

    /// A quota whose token-bucket capacity equals `requests_per_unit`, unchecked: for values
    /// known to be enforceable (tests, and [`Quota::try_new`] itself).
    /// `requests_per_unit == 0` denies every request.
    pub const fn new(requests_per_unit: u32, unit: Unit, algorithm: Algorithm) -> Self {
        Self {
            requests_per_unit,
            unit,
            algorithm,
            burst: requests_per_unit,
            debt: 0,
            multiplier: 1,
            calendar: None,
        }
    }

    /// The same quota with windows that follow `zone`'s calendar (a month is the calendar
    /// month, a week starts on Monday), if it is a fixed window of a day or more.
    pub fn try_with_calendar(mut self, zone: Zone) -> Result<Self, QuotaError> {
        if self.algorithm != Algorithm::FixedWindow {
            return Err(QuotaError::CalendarNeedsFixedWindow {
                algorithm: self.algorithm,
            });
        }
        if !crate::calendar::applies_to(self.unit) {
            return Err(QuotaError::CalendarUnit { unit: self.unit });
        }
        self.calendar = Some(zone);
        Ok(self)
    }

    /// The time zone whose calendar the windows follow, if they do.
    pub const fn calendar(&self) -> Option<Zone> {
        self.calendar
    }

    /// The same quota counted over windows (or refilled over periods) of `multiplier` units,
    /// if its algorithm can (a period of at most 100 years).
    pub fn try_with_multiplier(mut self, multiplier: u32) -> Result<Self, QuotaError> {
        if multiplier == 0 {
            return Err(QuotaError::ZeroMultiplier);
        }
        self.multiplier = multiplier;
        if self.period_nanos() > crate::algorithm::token_bucket::MAX_REFILL {
            return Err(QuotaError::PeriodTooLong {
                multiplier,
                unit: self.unit,
            });
        }
        crate::algorithm::check(&self)?;
        Ok(self)
    }

    /// Units per window or refill period (1 unless `unit_multiplier:` says).
    pub const fn multiplier(&self) -> u32 {
        self.multiplier
    }

    /// The window (or refill period) in whole seconds: the unit times its multiplier.
    pub const fn period_secs(&self) -> u64 {
        self.unit.seconds() * self.multiplier as u64
    }

    /// The window (or refill period) in nanoseconds.
    pub const fn period_nanos(&self) -> Nanos {
        self.period_secs() * NANOS_PER_SEC
    }

    /// The same quota letting a hit that does not fit take up to `debt` units past what is
    /// left (`debt: true`, `max_debt`): the usage happened, so it is counted, and the limit
    /// answers OVER_LIMIT until refills have repaid it. Checked by [`Quota::try_new`]'s
    /// callers with [`crate::algorithm::check`].
    pub const fn with_debt(mut self, debt: u32) -> Self {
        self.debt = debt;
        self
    }

    /// Units a hit may take past what is left (0: none; a hit that does not fit takes nothing).
    pub const fn debt(&self) -> u32 {
        self.debt
    }

    /// The same quota with a token-bucket capacity of `burst`.
    pub const fn with_burst(mut self, burst: u32) -> Self {
        self.burst = burst;
        self
    }

    /// One of `parts` equal shares of this quota: the rate and the capacity divided, rounded
    /// down, so the shares never add up to more than the whole.
    pub const fn share(&self, parts: u32) -> Self {
        let parts = if parts == 0 { 1 } else { parts };
        Self {
            requests_per_unit: self.requests_per_unit / parts,
            burst: self.burst / parts,
            ..*self
        }
    }

    /// The same quota at `requests_per_unit` (no more than its own), its token-bucket capacity
    /// cut in the same proportion, rounded down (at least 1 while the rate is not 0): what an
    /// RLQS budget hands out near the end of another limit of its list.
    pub fn cut_to(&self, requests_per_unit: u32) -> Self {
        let rate = requests_per_unit.min(self.requests_per_unit);
        let burst = match rate {
            0 => 0,
            _ if rate == self.requests_per_unit => self.burst,
            _ => {
                let cut = u64::from(self.burst) * u64::from(rate)
                    / u64::from(self.requests_per_unit.max(1));
                u32::try_from(cut).unwrap_or(u32::MAX).max(1)
            }
        };
        Self {
            requests_per_unit: rate,
            burst,
            ..*self
        }
    }

    /// Requests allowed per unit.
    pub const fn requests_per_unit(&self) -> u32 {
        self.requests_per_unit
    }

    /// The time unit.
    pub const fn unit(&self) -> Unit {
        self.unit
    }

    /// The algorithm.
    pub const fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The token-bucket capacity (equal to `requests_per_unit` for the window algorithms).
    pub const fn burst(&self) -> u32 {
        match self.algorithm {
            Algorithm::TokenBucket => self.burst,
            Algorithm::FixedWindow | Algorithm::SlidingWindow | Algorithm::SlidingLog => {
                self.requests_per_unit
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_parse_case_insensitively_and_round_trip_envoy_numbers() {
        for unit in Unit::ALL {
            assert_eq!(Unit::parse(&unit.name().to_uppercase()), Some(unit));
            assert_eq!(Unit::from_envoy(unit.to_envoy()), Some(unit));
        }
        assert_eq!(Unit::parse("fortnight"), None);
        assert_eq!(Unit::from_envoy(0), None);
        assert_eq!(Unit::Month.seconds(), 30 * 86_400);
    }

    #[test]
    fn algorithm_names_are_the_command_line_names() {
        for algorithm in Algorithm::ALL {
            let value = clap::ValueEnum::to_possible_value(&algorithm).unwrap();
            assert_eq!(value.get_name(), algorithm.name());
            assert_eq!(Algorithm::parse(algorithm.name()), Some(algorithm));
        }
        assert_eq!(Algorithm::parse("gcra"), Some(Algorithm::TokenBucket));
        assert_eq!(
            Algorithm::parse("leaky_bucket"),
            Some(Algorithm::TokenBucket)
        );
        assert_eq!(Algorithm::parse("TokenBucket"), None);
    }

    #[test]
    fn only_enforceable_quotas_can_be_built() {
        let ok = Quota::try_new(60, Unit::Minute, Algorithm::TokenBucket, Some(5));
        assert_eq!(ok.map(|q| q.burst()), Ok(5));
        assert_eq!(
            Quota::try_new(60, Unit::Minute, Algorithm::FixedWindow, Some(5)),
            Err(QuotaError::BurstWithoutTokenBucket)
        );
        assert_eq!(
            Quota::try_new(60, Unit::Minute, Algorithm::TokenBucket, Some(0)),
            Err(QuotaError::ZeroBurst)
        );
        assert!(Quota::try_new(0, Unit::Minute, Algorithm::TokenBucket, Some(0)).is_ok());
        assert!(matches!(
            Quota::try_new(2_000_000, Unit::Second, Algorithm::TokenBucket, None),
            Err(QuotaError::TooFast { .. })
        ));
    }

    #[test]
    fn burst_only_shapes_token_buckets() {
        let tb = Quota::new(10, Unit::Second, Algorithm::TokenBucket).with_burst(3);
        assert_eq!(tb.burst(), 3);
        let fw = Quota::new(10, Unit::Second, Algorithm::FixedWindow).with_burst(3);
        assert_eq!(fw.burst(), 10);
    }
}
