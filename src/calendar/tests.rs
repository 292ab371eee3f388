use super::*;

/// Seconds since the epoch of `text` (RFC 3339, with its offset).
fn at(text: &str) -> u64 {
    u64::try_from(text.parse::<Timestamp>().unwrap().as_second()).unwrap()
}

fn nanos(text: &str) -> Nanos {
    at(text) * NANOS_PER_SEC
}

#[test]
fn months_follow_the_calendar_through_28_to_31_days_and_leap_years() {
    let utc = Zone::UTC;
    for (now, start, end) in [
        (
            "2027-01-31T23:59:59Z",
            "2027-01-01T00:00:00Z",
            "2027-02-01T00:00:00Z",
        ),
        (
            "2027-02-15T12:00:00Z",
            "2027-02-01T00:00:00Z",
            "2027-03-01T00:00:00Z",
        ),
        (
            "2028-02-29T08:00:00Z",
            "2028-02-01T00:00:00Z",
            "2028-03-01T00:00:00Z",
        ),
        (
            "2027-04-30T00:00:00Z",
            "2027-04-01T00:00:00Z",
            "2027-05-01T00:00:00Z",
        ),
        (
            "2027-12-31T23:00:00Z",
            "2027-12-01T00:00:00Z",
            "2028-01-01T00:00:00Z",
        ),
    ] {
        assert_eq!(
            window(utc, Unit::Month, 1, nanos(now)),
            (at(start), at(end)),
            "{now}"
        );
    }
    assert_eq!(
        window(utc, Unit::Year, 1, nanos("2028-06-01T00:00:00Z")),
        (at("2028-01-01T00:00:00Z"), at("2029-01-01T00:00:00Z"))
    );
}

#[test]
fn weeks_start_on_monday_and_multiples_count_from_1970() {
    let utc = Zone::UTC;
    // 2027-01-07 is a Thursday.
    assert_eq!(
        window(utc, Unit::Week, 1, nanos("2027-01-07T10:00:00Z")),
        (at("2027-01-04T00:00:00Z"), at("2027-01-11T00:00:00Z"))
    );
    // Quarters: three months from January 1970.
    assert_eq!(
        window(utc, Unit::Month, 3, nanos("2027-05-20T00:00:00Z")),
        (at("2027-04-01T00:00:00Z"), at("2027-07-01T00:00:00Z"))
    );
    assert_eq!(
        window(utc, Unit::Day, 1, nanos("2027-05-20T23:59:59Z")),
        (at("2027-05-20T00:00:00Z"), at("2027-05-21T00:00:00Z"))
    );
}

#[test]
fn a_time_zone_moves_the_boundaries_and_dst_shortens_a_day() {
    let berlin = Zone::named("Europe/Berlin").unwrap();
    // Midnight in Berlin is 23:00 UTC in winter.
    assert_eq!(
        window(berlin, Unit::Month, 1, nanos("2027-01-31T23:30:00Z")),
        (at("2027-01-31T23:00:00Z"), at("2027-02-28T23:00:00Z"))
    );
    // 2027-03-28: clocks go forward at 02:00, the day has 23 hours.
    let (start, end) = window(berlin, Unit::Day, 1, nanos("2027-03-28T12:00:00Z"));
    assert_eq!(
        (start, end),
        (at("2027-03-27T23:00:00Z"), at("2027-03-28T22:00:00Z"))
    );
    assert_eq!(end - start, 23 * 3600);
    assert!(
        Zone::named("Mars/Olympus")
            .unwrap_err()
            .contains("unknown timezone 'Mars/Olympus'")
    );
    assert_eq!(Zone::named("UTC").unwrap(), Zone::UTC);
}
