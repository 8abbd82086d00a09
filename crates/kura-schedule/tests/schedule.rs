//! `Schedule` as a scheduler uses it: which texts are cron, next runs across clock changes
//! (the DST rule of the crate docs, for calendar events and cron alike), missed runs,
//! upcoming runs and serde.

use chrono::{DateTime, TimeDelta, Utc};
use kura_schedule::{Error, Schedule, Tz};

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn zone(name: &str) -> Tz {
    name.parse().unwrap()
}

fn schedule(text: &str, zone: Tz) -> Schedule {
    Schedule::parse(text, zone).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// The first `n` runs after `from`, as RFC 3339 UTC.
fn runs(text: &str, zone_name: &str, from: &str, n: usize) -> Vec<String> {
    schedule(text, zone(zone_name))
        .upcoming(utc(from))
        .take(n)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .collect()
}

#[test]
fn which_texts_are_cron() {
    let is_cron = |text: &str| matches!(schedule(text, Tz::UTC), Schedule::Cron(_));
    assert!(!is_cron("daily"));
    assert!(!is_cron("mon..fri 02:00 Europe/Berlin"));
    assert!(is_cron("0 2 * * *"));
    assert!(is_cron("0 2 * * mon-fri Europe/Berlin"));
    assert!(is_cron("cron:0 0 2 * * *"));
    assert!(is_cron("CRON: @daily"));
    assert!(is_cron("cron:   */5  *  * * *   "));
    assert_eq!(
        schedule("cron:   */5  *  * * *   ", Tz::UTC).to_string(),
        "cron:*/5 * * * *"
    );
    assert_eq!(schedule("0 2 * * *", Tz::UTC).to_string(), "cron:0 2 * * *");
    assert_eq!(
        schedule("0 2 * * * UTC", zone("Europe/Berlin")).to_string(),
        "cron:0 2 * * * UTC"
    );
    // A bare 6-field expression is neither: it needs the prefix.
    assert!(Schedule::parse("0 0 2 * * *", Tz::UTC).is_err());
    assert!(matches!(
        Schedule::parse("cron:61 * * * *", Tz::UTC),
        Err(Error::Cron { .. })
    ));
    assert!(matches!(
        Schedule::parse("a b c d e", Tz::UTC),
        Err(Error::Cron { .. })
    ));
    assert!(matches!(
        Schedule::parse("cron:", Tz::UTC),
        Err(Error::Cron { .. })
    ));
    assert!(matches!(
        Schedule::parse(" ", Tz::UTC),
        Err(Error::Empty { .. })
    ));
    let e = Schedule::parse("mon 25:00", Tz::UTC).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid hour \"25\" in \"mon 25:00\": expected 0..23"
    );
}

#[test]
fn cron_runs() {
    assert_eq!(
        runs("*/20 9-10 * * 1-5", "UTC", "2025-01-03T10:30:00Z", 3),
        [
            "2025-01-03T10:40:00Z",
            "2025-01-06T09:00:00Z",
            "2025-01-06T09:20:00Z"
        ]
    );
    assert_eq!(
        runs("cron:30 0 0 1 * *", "UTC", "2025-01-15T00:00:00Z", 1),
        ["2025-02-01T00:00:30Z"]
    );
    assert_eq!(
        runs("cron:0 0 L * *", "UTC", "2024-02-01T00:00:00Z", 2),
        ["2024-02-29T00:00:00Z", "2024-03-31T00:00:00Z"]
    );
    assert_eq!(
        runs(
            "0 2 * * * America/New_York",
            "UTC",
            "2025-01-01T00:00:00Z",
            1
        ),
        ["2025-01-01T07:00:00Z"]
    );
    // Never again before croner's horizon: no run, no hang.
    assert_eq!(
        runs("cron:0 0 30 2 *", "UTC", "2025-01-01T00:00:00Z", 1),
        Vec::<String>::new()
    );
}

/// Europe/Berlin 2025: 30 March 02:00 CET → 03:00 CEST (01:00Z), 26 October 03:00 CEST →
/// 02:00 CET (01:00Z).
#[test]
fn berlin_spring_forward() {
    for text in ["02:30", "cron:0 30 2 * * *"] {
        assert_eq!(
            runs(text, "Europe/Berlin", "2025-03-29T12:00:00Z", 2),
            ["2025-03-30T01:00:00Z", "2025-03-31T00:30:00Z"],
            "{text}"
        );
    }
    // Every skipped quarter hour runs once, at the jump (which is also 03:00).
    for text in ["*:0/15", "*/15 * * * *"] {
        assert_eq!(
            runs(text, "Europe/Berlin", "2025-03-30T00:30:00Z", 3),
            [
                "2025-03-30T00:45:00Z",
                "2025-03-30T01:00:00Z",
                "2025-03-30T01:15:00Z"
            ],
            "{text}"
        );
    }
}

#[test]
fn berlin_fall_back() {
    for text in ["02:30", "30 2 * * *"] {
        assert_eq!(
            runs(text, "Europe/Berlin", "2025-10-25T12:00:00Z", 2),
            ["2025-10-26T00:30:00Z", "2025-10-27T01:30:00Z"],
            "{text}"
        );
        // From inside the repeated hour: 02:30 already ran in the first pass.
        assert_eq!(
            runs(text, "Europe/Berlin", "2025-10-26T01:00:00Z", 1),
            ["2025-10-27T01:30:00Z"]
        );
    }
    for text in ["*:0/15", "cron:0 */15 * * * *"] {
        assert_eq!(
            runs(text, "Europe/Berlin", "2025-10-26T00:20:00Z", 3),
            [
                "2025-10-26T00:30:00Z",
                "2025-10-26T00:45:00Z",
                "2025-10-26T02:00:00Z"
            ],
            "{text}"
        );
        assert_eq!(
            runs(text, "Europe/Berlin", "2025-10-26T01:10:00Z", 1),
            ["2025-10-26T02:00:00Z"]
        );
    }
}

/// America/New_York 2025: 9 March 02:00 EST → 03:00 EDT (07:00Z), 2 November 02:00 EDT →
/// 01:00 EST (06:00Z).
#[test]
fn new_york() {
    assert_eq!(
        runs("02:30", "America/New_York", "2025-03-08T12:00:00Z", 2),
        ["2025-03-09T07:00:00Z", "2025-03-10T06:30:00Z"]
    );
    assert_eq!(
        runs("01:30", "America/New_York", "2025-11-01T12:00:00Z", 2),
        ["2025-11-02T05:30:00Z", "2025-11-03T06:30:00Z"]
    );
    assert_eq!(
        runs("30 1 * * *", "America/New_York", "2025-11-02T06:00:00Z", 1),
        ["2025-11-03T06:30:00Z"]
    );
}

/// Australia/Lord_Howe moves its clocks by half an hour: 5 October 2025 02:00 (+10:30) →
/// 02:30 (+11) at 15:30Z the day before; 6 April 2025 02:00 (+11) → 01:30 (+10:30) at 15:00Z.
#[test]
fn lord_howe_half_hour() {
    assert_eq!(
        runs("02:15", "Australia/Lord_Howe", "2025-10-04T00:00:00Z", 2),
        ["2025-10-04T15:30:00Z", "2025-10-05T15:15:00Z"]
    );
    assert_eq!(
        runs("01:45", "Australia/Lord_Howe", "2025-04-05T00:00:00Z", 2),
        ["2025-04-05T14:45:00Z", "2025-04-06T15:15:00Z"]
    );
}

#[test]
fn missed_runs() {
    let s = schedule("daily", Tz::UTC);
    let (last, now) = (utc("2025-01-01T00:00:00Z"), utc("2025-01-05T12:00:00Z"));
    let m = s.missed(last, now, 10);
    assert_eq!(m.times.len(), 4);
    assert_eq!(
        (m.truncated, m.latest),
        (false, Some(utc("2025-01-05T00:00:00Z")))
    );
    let m = s.missed(last, now, 1);
    assert_eq!(m.times, [utc("2025-01-02T00:00:00Z")]);
    assert_eq!(
        (m.truncated, m.latest),
        (true, Some(utc("2025-01-05T00:00:00Z")))
    );
    let m = s.missed(last, now, 0);
    assert!(m.times.is_empty() && m.truncated && m.any());
    // A run due exactly now is missed; one due at the last run is not.
    let m = s.missed(utc("2025-01-02T00:00:00Z"), utc("2025-01-03T00:00:00Z"), 5);
    assert_eq!(m.times, [utc("2025-01-03T00:00:00Z")]);
    // The clock went back, or did not move: nothing is due.
    assert_eq!(s.missed(now, last, 5), Default::default());
    assert!(!s.missed(now, now, 5).any());
    // A year of minutely runs: bounded, and the latest is found without walking them all.
    let s = schedule("minutely", Tz::UTC);
    let started = std::time::Instant::now();
    let m = s.missed(utc("2024-01-01T00:00:00Z"), utc("2025-01-01T00:00:30Z"), 3);
    assert_eq!(
        (m.times.len(), m.truncated, m.latest),
        (3, true, Some(utc("2025-01-01T00:00:00Z")))
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // Extremes do not panic.
    let m = s.missed(DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC, 2);
    assert!(m.truncated && m.latest.is_some());
    assert!(!schedule("*-02-30", Tz::UTC).missed(last, now, 5).any());
}

#[test]
fn upcoming_ends_with_the_schedule() {
    let s = schedule("2025-01-01..03 12:00", Tz::UTC);
    assert_eq!(s.upcoming(utc("2024-06-01T00:00:00Z")).count(), 3);
    let s = schedule("hourly", Tz::UTC);
    let mut it = s.upcoming(utc("2025-01-01T00:30:00Z"));
    assert_eq!(it.next(), Some(utc("2025-01-01T01:00:00Z")));
    assert_eq!(it.next(), Some(utc("2025-01-01T02:00:00Z")));
    assert!(
        s.upcoming(utc("2025-01-01T00:00:00Z"))
            .take(50)
            .zip(s.upcoming(utc("2025-01-01T00:00:00Z")).skip(1))
            .all(|(a, b)| b - a == TimeDelta::hours(1))
    );
}

#[test]
fn serde_as_text() {
    let berlin = zone("Europe/Berlin");
    for text in [
        "mon..fri 02:00",
        "*-*~01 Europe/Berlin",
        "cron:*/5 * * * *",
        "0 3 * * * UTC",
    ] {
        let s = schedule(text, berlin);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, format!("\"{s}\""));
        let back: Schedule = serde_json::from_str(&json).unwrap();
        assert_eq!(back.clone().with_default_zone(berlin), s, "{text}");
        assert_eq!(back.zone_is_explicit(), s.zone_is_explicit());
        if !s.zone_is_explicit() {
            assert_eq!(back.zone(), Tz::UTC);
        }
    }
    let err = serde_json::from_str::<Schedule>("\"mon 25:00\"").unwrap_err();
    assert!(err.to_string().contains("invalid hour \"25\""), "{err}");
}
