//! Calendar windows: days, weeks (from Monday), months and years as a time zone's calendar
//! has them, for `calendar: true` limits (`timezone:`, default UTC).
//!
//! Windows of `N` units (`unit_multiplier`) are counted from 1970 in that calendar: with days,
//! from 1970-01-01; with weeks, from Monday 1969-12-29; with months, from January 1970; with
//! years, from 1970. So 3 months are the calendar quarters and 2 days start on even days since
//! 1970. A window starts at the first instant of its first day there (a day a DST change
//! shortens is shorter), so `duration_until_reset` is exact.
//!
//! Time zones come from the IANA database built into the binary (`jiff`), looked up once by
//! name when the configuration compiles; a quota names one by a digest of its name ([`Zone`]),
//! so it stays `Copy` and names the same zone after a restart.

use std::collections::HashMap;
use std::sync::{OnceLock, PoisonError, RwLock};

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

use crate::clock::{NANOS_PER_SEC, Nanos};
use crate::quota::Unit;

/// A time zone known to this process, by a digest of its IANA name (0: UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Zone(u32);

impl Zone {
    /// Coordinated Universal Time.
    pub const UTC: Zone = Zone(0);

    /// The zone named `name` (`Europe/Berlin`, `UTC`), registered for [`window`]; an error
    /// naming it when the database has no such zone.
    pub fn named(name: &str) -> Result<Self, String> {
        if name.eq_ignore_ascii_case("UTC") {
            return Ok(Self::UTC);
        }
        let tz = jiff::tz::db().get(name).map_err(|_| {
            format!("unknown timezone '{name}' (expected an IANA name such as Europe/Berlin)")
        })?;
        let zone = Self(digest(name).max(1));
        zones()
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(zone, tz);
        Ok(zone)
    }

    fn time_zone(self) -> TimeZone {
        if self == Self::UTC {
            return TimeZone::UTC;
        }
        zones()
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&self)
            .cloned()
            // A zone is registered before any quota names it; UTC is the safe reading else.
            .unwrap_or(TimeZone::UTC)
    }
}

fn zones() -> &'static RwLock<HashMap<Zone, TimeZone>> {
    static ZONES: OnceLock<RwLock<HashMap<Zone, TimeZone>>> = OnceLock::new();
    ZONES.get_or_init(Default::default)
}

/// A stable 32-bit digest of a zone name (FNV-1a): the same in every process.
fn digest(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Whether `unit` has calendar windows (a day or longer).
pub fn applies_to(unit: Unit) -> bool {
    matches!(unit, Unit::Day | Unit::Week | Unit::Month | Unit::Year)
}

/// The calendar window of `units` × `unit` in `zone` that holds `at`: its start and end, in
/// whole seconds since the epoch.
pub fn window(zone: Zone, unit: Unit, units: u32, at: Nanos) -> (u64, u64) {
    let tz = zone.time_zone();
    let seconds = i64::try_from(at / NANOS_PER_SEC).unwrap_or(i64::MAX);
    let today = Timestamp::from_second(seconds)
        .unwrap_or(Timestamp::MAX)
        .to_zoned(tz.clone())
        .date();
    let units = i64::from(units.max(1));
    let (start, end) = match unit {
        Unit::Month | Unit::Year => {
            let months_per = if unit == Unit::Year { 12 } else { 1 } * units;
            let month = (i64::from(today.year()) - 1970) * 12 + i64::from(today.month()) - 1;
            let first = month.div_euclid(months_per) * months_per;
            (month_start(first), month_start(first + months_per))
        }
        _ => {
            let (origin, days_per) = match unit {
                // The Monday before 1970-01-01, a Thursday.
                Unit::Week => (Date::constant(1969, 12, 29), 7 * units),
                _ => (Date::constant(1970, 1, 1), units),
            };
            let days = i64::from(today.since(origin).map_or(0, |span| span.get_days()));
            let first = days.div_euclid(days_per) * days_per;
            (add_days(origin, first), add_days(origin, first + days_per))
        }
    };
    (midnight(start, &tz), midnight(end, &tz))
}

/// The first day of month `month` counted from January 1970 (0).
fn month_start(month: i64) -> Date {
    let year = 1970 + month.div_euclid(12);
    let month = month.rem_euclid(12) + 1;
    Date::new(
        i16::try_from(year).unwrap_or(i16::MAX),
        i8::try_from(month).unwrap_or(1),
        1,
    )
    .unwrap_or(Date::MAX)
}

fn add_days(date: Date, days: i64) -> Date {
    date.checked_add(jiff::Span::new().days(days))
        .unwrap_or(Date::MAX)
}

/// The first instant of `date` in `tz`, in whole seconds since the epoch.
fn midnight(date: Date, tz: &TimeZone) -> u64 {
    date.to_zoned(tz.clone()).map_or(u64::MAX, |zoned: Zoned| {
        u64::try_from(zoned.timestamp().as_second()).unwrap_or(0)
    })
}

#[cfg(test)]
mod tests;
