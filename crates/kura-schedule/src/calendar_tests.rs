use chrono::{DateTime, Datelike, Utc};
use chrono_tz::Tz;

use super::*;

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn event(text: &str) -> CalendarEvent {
    CalendarEvent::parse(text, Tz::UTC).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

fn runs(text: &str, zone: Tz, from: &str, n: usize) -> Vec<String> {
    let e = CalendarEvent::parse(text, zone).unwrap();
    let mut t = utc(from);
    (0..n)
        .map(|_| {
            t = e.next_after(t).unwrap();
            t.to_rfc3339()
        })
        .collect()
}

#[test]
fn shorthands_expand() {
    for (short, long) in [
        ("minutely", "*-*-* *:*:00"),
        ("hourly", "*-*-* *:00:00"),
        ("Daily", "*-*-* 00:00:00"),
        ("weekly", "Mon *-*-* 00:00:00"),
        ("monthly", "*-*-01 00:00:00"),
        ("yearly", "*-01-01 00:00:00"),
        ("ANNUALLY", "*-01-01 00:00:00"),
        ("quarterly", "*-01,04,07,10-01 00:00:00"),
        ("semiannually", "*-01,07-01 00:00:00"),
        ("daily UTC", "*-*-* 00:00:00 UTC"),
        (
            "weekly Pacific/Auckland",
            "Mon *-*-* 00:00:00 Pacific/Auckland",
        ),
    ] {
        assert_eq!(event(short).to_string(), long, "{short}");
        assert_eq!(event(long), event(short));
    }
}

/// The normalized forms `systemd.time(7)` lists, for the syntax this crate accepts.
#[test]
fn normalized_forms() {
    for (text, normal) in [
        (
            "Sat,Thu,Mon..Wed,Sat..Sun",
            "Mon..Thu,Sat,Sun *-*-* 00:00:00",
        ),
        ("Wed *-1", "Wed *-*-01 00:00:00"),
        ("Wed..Wed,Wed *-1", "Wed *-*-01 00:00:00"),
        ("Wed, 17:48", "Wed *-*-* 17:48:00"),
        ("*-*-7 0:0:0", "*-*-07 00:00:00"),
        ("10-15", "*-10-15 00:00:00"),
        ("monday *-12-* 17:00", "Mon *-12-* 17:00:00"),
        ("Mon,Fri *-*-3,1,2 *:30:45", "Mon,Fri *-*-01,02,03 *:30:45"),
        ("12,14,13,12:20,10,30", "*-*-* 12,13,14:10,20,30:00"),
        ("12..14:10,20,30", "*-*-* 12..14:10,20,30:00"),
        ("mon,fri *-1/2-1,3 *:30:45", "Mon,Fri *-01/2-01,03 *:30:45"),
        ("03-05 08:05:40", "*-03-05 08:05:40"),
        ("05:40", "*-*-* 05:40:00"),
        ("Sat,Sun 12-05 08:05:40", "Sat,Sun *-12-05 08:05:40"),
        ("2003-03-05 05:40", "2003-03-05 05:40:00"),
        ("2003-02..04-05", "2003-02..04-05 00:00:00"),
        ("2003-03-05 05:40 UTC", "2003-03-05 05:40:00 UTC"),
        ("*:2/3", "*-*-* *:02/3:00"),
        ("mon..fri 8..18:00", "Mon..Fri *-*-* 08..18:00:00"),
        ("*-*~01", "*-*~01 00:00:00"),
        (
            "Mon *-05~07/1 03:00 Europe/Berlin",
            "Mon *-05~07/1 03:00:00 Europe/Berlin",
        ),
        ("  mon   02:00  ", "Mon *-*-* 02:00:00"),
    ] {
        let e = event(text);
        assert_eq!(e.to_string(), normal, "{text}");
        assert_eq!(
            CalendarEvent::parse(&e.to_string(), Tz::UTC).unwrap(),
            e,
            "{text}"
        );
    }
}

#[test]
fn zone_default_and_explicit() {
    let berlin: Tz = "Europe/Berlin".parse().unwrap();
    let e = CalendarEvent::parse("daily", berlin).unwrap();
    assert_eq!((e.zone(), e.zone_is_explicit()), (berlin, false));
    assert_eq!(e.to_string(), "*-*-* 00:00:00");
    assert_eq!(e.clone().with_default_zone(Tz::UTC).zone(), Tz::UTC);
    let e = CalendarEvent::parse("daily utc", berlin).unwrap();
    assert_eq!((e.zone(), e.zone_is_explicit()), (Tz::UTC, true));
    assert_eq!(e.clone().with_default_zone(berlin).zone(), Tz::UTC);
    let e = CalendarEvent::parse("02:00 America/New_York", Tz::UTC).unwrap();
    assert_eq!(
        e.next_after(utc("2025-01-01T00:00:00Z")).unwrap(),
        utc("2025-01-01T07:00:00Z")
    );
}

#[test]
fn next_runs_in_utc() {
    let z = Tz::UTC;
    assert_eq!(
        runs("daily", z, "2025-01-01T00:00:00Z", 2),
        ["2025-01-02T00:00:00+00:00", "2025-01-03T00:00:00+00:00"]
    );
    // 2025-01-03 is a Friday.
    assert_eq!(
        runs("mon..fri 02:00", z, "2025-01-03T02:00:00Z", 2),
        ["2025-01-06T02:00:00+00:00", "2025-01-07T02:00:00+00:00"]
    );
    assert_eq!(
        runs("*:0/15", z, "2025-01-01T00:07:30.5Z", 3),
        [
            "2025-01-01T00:15:00+00:00",
            "2025-01-01T00:30:00+00:00",
            "2025-01-01T00:45:00+00:00"
        ]
    );
    assert_eq!(
        runs("8..18:00", z, "2025-01-01T18:00:00Z", 2),
        ["2025-01-02T08:00:00+00:00", "2025-01-02T09:00:00+00:00"]
    );
    assert_eq!(
        runs("*-*-31", z, "2025-01-31T00:00:00Z", 3),
        [
            "2025-03-31T00:00:00+00:00",
            "2025-05-31T00:00:00+00:00",
            "2025-07-31T00:00:00+00:00"
        ]
    );
    assert_eq!(
        runs("*-02-29 12:00", z, "2024-03-01T00:00:00Z", 2),
        ["2028-02-29T12:00:00+00:00", "2032-02-29T12:00:00+00:00"]
    );
    assert_eq!(
        runs("*-*~01", z, "2024-01-31T00:00:00Z", 3),
        [
            "2024-02-29T00:00:00+00:00",
            "2024-03-31T00:00:00+00:00",
            "2024-04-30T00:00:00+00:00"
        ]
    );
    assert_eq!(
        runs("*-02~03", z, "2025-01-01T00:00:00Z", 2),
        ["2025-02-26T00:00:00+00:00", "2026-02-26T00:00:00+00:00"]
    );
    // The last Monday of May.
    assert_eq!(
        runs("Mon *-05~07/1", z, "2025-01-01T00:00:00Z", 2),
        ["2025-05-26T00:00:00+00:00", "2026-05-25T00:00:00+00:00"]
    );
    assert_eq!(
        runs("Fri *-*-13", z, "2025-01-01T00:00:00Z", 2),
        ["2025-06-13T00:00:00+00:00", "2026-02-13T00:00:00+00:00"]
    );
    assert_eq!(
        runs("2025-*-01/14 *:*:0/20", z, "2025-06-30T23:59:59Z", 2),
        ["2025-07-01T00:00:00+00:00", "2025-07-01T00:00:20+00:00"]
    );
    assert_eq!(
        runs("minutely", z, "2025-12-31T23:59:00Z", 1),
        ["2026-01-01T00:00:00+00:00"]
    );
}

#[test]
fn events_that_never_run_again() {
    let t = utc("2025-01-01T00:00:00Z");
    for text in [
        "*-02-30",
        "*-04-31",
        "2020-*-*",
        "Mon 2025-01-01",
        "Sat *-02~30",
        "9999-12-31 23:59:59",
    ] {
        let e = event(text);
        let started = std::time::Instant::now();
        let next = e.next_after(t);
        assert!(
            started.elapsed().as_secs() < 2,
            "{text} took {:?}",
            started.elapsed()
        );
        if text.starts_with("9999") {
            assert_eq!(next, Some(utc("9999-12-31T23:59:59Z")));
            assert_eq!(e.next_after(utc("9999-12-31T23:59:59Z")), None);
        } else {
            assert_eq!(next, None, "{text}");
        }
    }
    // Far-off extremes never panic.
    let e = event("minutely");
    assert_eq!(e.next_after(DateTime::<Utc>::MAX_UTC), None);
    assert!(
        e.next_after(DateTime::<Utc>::MIN_UTC)
            .is_some_and(|t| t.year() == 1)
    );
}

#[test]
fn matches_is_the_same_as_the_search() {
    let e = event("Mon,Fri *-*-3,1,2 *:30:45");
    let t = e.next_after(utc("2025-01-01T00:00:00Z")).unwrap();
    assert!(e.matches(t.naive_utc()));
    assert!(!e.matches(t.naive_utc() + chrono::TimeDelta::seconds(1)));
}

#[test]
fn errors_name_the_part_and_what_was_expected() {
    let msg = |text: &str| CalendarEvent::parse(text, Tz::UTC).unwrap_err().to_string();
    assert_eq!(
        msg("mon 25:00"),
        "invalid hour \"25\" in \"mon 25:00\": expected 0..23"
    );
    assert_eq!(
        msg("*-13-01"),
        "invalid month \"13\" in \"*-13-01\": expected 1..12"
    );
    assert_eq!(
        msg("*-*-32"),
        "invalid day \"32\" in \"*-*-32\": expected 1..31"
    );
    assert_eq!(
        msg("12:60"),
        "invalid minute \"60\" in \"12:60\": expected 0..59"
    );
    assert_eq!(
        msg("12-10-15"),
        "invalid year \"12\" in \"12-10-15\": expected 1970..9999"
    );
    assert!(msg("funday 02:00").starts_with("invalid weekday \"funday\" in \"funday 02:00\""));
    assert!(msg("daily Europe/Berlinn").starts_with("invalid time zone \"Europe/Berlinn\""));
    assert!(msg("Europe/Berlinn").starts_with("invalid time zone \"Europe/Berlinn\""));
    assert!(msg("UTC").starts_with("invalid calendar event \"UTC\""));
    assert!(msg("02:00 *-*-01").starts_with("invalid part \"*-*-01\""));
    assert!(msg("02:00 03:00").starts_with("invalid part \"03:00\""));
    assert!(msg("*-*-01 *-*-02").starts_with("invalid part \"*-*-02\""));
    assert!(msg("daily 02:00").starts_with("invalid weekday \"daily\""));
    assert!(msg("1:2:3:4").starts_with("invalid time \"1:2:3:4\""));
    assert!(msg("05:40:23.42").starts_with("invalid second \"23.42\""));
    assert!(msg("mon 12").starts_with("invalid part \"12\""));
    assert!(msg("*-*~1..3").contains("day before the month's end"));
    assert!(msg("   ").starts_with("empty calendar event"));
    assert!(msg("0 2 * * *").starts_with("invalid part \"0\""));
}
