use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;

use super::*;

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn tf(text: &str) -> Timeframe {
    Timeframe::parse(text, Tz::UTC).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// The first instant after `t` where containment flips, by a scan in one-minute steps.
fn scan_change(frame: &Timeframe, t: DateTime<Utc>, days: i64) -> Option<DateTime<Utc>> {
    let now = frame.contains(t);
    let mut u = t + TimeDelta::seconds(60 - t.timestamp().rem_euclid(60));
    let end = t + TimeDelta::days(days);
    while u <= end {
        if frame.contains(u) != now {
            return Some(u);
        }
        u += TimeDelta::minutes(1);
    }
    None
}

#[test]
fn office_hours() {
    // 2025-01-06 is a Monday.
    let f = tf("mon..fri 08:00-18:00");
    assert!(f.contains(utc("2025-01-06T08:00:00Z")));
    assert!(f.contains(utc("2025-01-06T17:59:59Z")));
    assert!(!f.contains(utc("2025-01-06T18:00:00Z")));
    assert!(!f.contains(utc("2025-01-06T07:59:59Z")));
    assert!(!f.contains(utc("2025-01-11T12:00:00Z")));
    assert_eq!(
        f.next_change_after(utc("2025-01-06T12:00:00Z")),
        Some(utc("2025-01-06T18:00:00Z"))
    );
    assert_eq!(
        f.next_change_after(utc("2025-01-10T18:00:00Z")),
        Some(utc("2025-01-13T08:00:00Z"))
    );
}

#[test]
fn weekends_and_midnight() {
    let f = tf("sat,sun");
    assert!(f.contains(utc("2025-01-11T00:00:00Z")));
    assert!(!f.contains(utc("2025-01-10T23:59:59Z")));
    assert_eq!(
        f.next_change_after(utc("2025-01-08T00:00:00Z")),
        Some(utc("2025-01-11T00:00:00Z"))
    );
    assert_eq!(
        f.next_change_after(utc("2025-01-11T00:00:00Z")),
        Some(utc("2025-01-13T00:00:00Z"))
    );

    let f = tf("22:00-06:00");
    assert!(f.contains(utc("2025-01-06T23:00:00Z")));
    assert!(f.contains(utc("2025-01-07T05:59:00Z")));
    assert!(!f.contains(utc("2025-01-07T06:00:00Z")));
    assert_eq!(
        f.next_change_after(utc("2025-01-07T01:00:00Z")),
        Some(utc("2025-01-07T06:00:00Z"))
    );

    // A Friday night window runs into Saturday morning, not into Friday morning.
    let f = tf("fri 22:00-06:00");
    assert!(f.contains(utc("2025-01-11T05:00:00Z")));
    assert!(!f.contains(utc("2025-01-10T05:00:00Z")));
}

#[test]
fn lists_and_round_trip() {
    let f = tf("mon..fri 08:00-18:00; sat 10:00-12:00:30;sun");
    assert_eq!(
        f.to_string(),
        "Mon..Fri 08:00-18:00; Sat 10:00-12:00:30; Sun"
    );
    assert_eq!(Timeframe::parse(&f.to_string(), Tz::UTC).unwrap(), f);
    assert!(f.contains(utc("2025-01-12T20:00:00Z")));
    let g = Timeframe::parse_list(["mon..fri 08:00-18:00", "sat 10:00-12:00:30; sun"], Tz::UTC)
        .unwrap();
    assert_eq!(g, f);
    let berlin = tf("0:00-24:00 Europe/Berlin");
    assert_eq!(berlin.to_string(), "00:00-24:00 Europe/Berlin");
    assert_eq!(berlin.next_change_after(utc("2025-01-01T00:00:00Z")), None);
    assert!(Timeframe::parse_list(["sat UTC", "sun Europe/Berlin"], Tz::UTC).is_err());
    assert!(Timeframe::parse_list(Vec::<String>::new(), Tz::UTC).is_err());
    let json = serde_json::to_string(&f).unwrap();
    assert_eq!(json, "\"Mon..Fri 08:00-18:00; Sat 10:00-12:00:30; Sun\"");
    assert_eq!(serde_json::from_str::<Timeframe>(&json).unwrap(), f);
}

#[test]
fn errors() {
    let msg = |text: &str| Timeframe::parse(text, Tz::UTC).unwrap_err().to_string();
    assert!(msg("").starts_with("empty time frame"));
    assert!(msg("mon 08:00-08:00").starts_with("invalid time range \"08:00-08:00\""));
    assert!(msg("25:00-26:00").starts_with("invalid time \"25:00\""));
    assert!(msg("24:00-06:00").starts_with("invalid time \"24:00\""));
    assert!(msg("08:00-24:01").starts_with("invalid time \"24:01\""));
    assert!(msg("08:00").starts_with("invalid time range \"08:00\""));
    assert!(msg("mon;;tue").starts_with("invalid time frame window \"\""));
    assert!(msg("mon 08:00-09:00 10:00-11:00").starts_with("invalid time frame window"));
    assert!(msg("funday").starts_with("invalid weekday \"funday\""));
    assert!(msg("UTC").starts_with("invalid time frame \"UTC\""));
    assert!(msg("sat Europe/Berlinn").starts_with("invalid time zone"));
}

#[test]
fn dst_follows_the_wall_clock() {
    let berlin: Tz = "Europe/Berlin".parse().unwrap();
    // 2025-03-30: 02:00 CET becomes 03:00 CEST. The window 01:00-02:30 ends at the jump.
    let f = Timeframe::parse("01:00-02:30", berlin).unwrap();
    assert!(f.contains(utc("2025-03-30T00:59:00Z")));
    assert_eq!(
        f.next_change_after(utc("2025-03-30T00:30:00Z")),
        Some(utc("2025-03-30T01:00:00Z"))
    );
    // 2025-10-26: 03:00 CEST becomes 02:00 CET; 02:00-02:30 happens twice.
    let f = Timeframe::parse("02:00-02:30", berlin).unwrap();
    assert!(f.contains(utc("2025-10-26T00:10:00Z")));
    assert!(f.contains(utc("2025-10-26T01:10:00Z")));
    assert_eq!(
        f.next_change_after(utc("2025-10-26T00:10:00Z")),
        Some(utc("2025-10-26T00:30:00Z"))
    );
    assert_eq!(
        f.next_change_after(utc("2025-10-26T00:30:00Z")),
        Some(utc("2025-10-26T01:00:00Z"))
    );
    assert_eq!(
        f.next_change_after(utc("2025-10-26T01:00:00Z")),
        Some(utc("2025-10-26T01:30:00Z"))
    );
}

#[test]
fn next_change_matches_a_minute_scan() {
    let zones = [
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "Australia/Lord_Howe",
    ];
    let frames = [
        "mon..fri 08:00-18:00",
        "sat,sun",
        "22:00-06:00",
        "fri 22:00-06:00; sun 01:30-03:00",
        "02:15-02:45",
        "mon..sun",
    ];
    // Around the clock changes of 2025 in these zones.
    let starts = [
        "2025-03-29T12:00:00Z",
        "2025-10-25T12:00:00Z",
        "2025-04-05T06:00:00Z",
        "2025-10-04T06:00:00Z",
        "2025-11-01T12:00:00Z",
        "2025-03-08T12:00:00Z",
    ];
    for zone in zones {
        let zone: Tz = zone.parse().unwrap();
        for text in frames {
            let f = Timeframe::parse(text, zone).unwrap();
            for start in starts {
                let mut t = utc(start);
                for _ in 0..6 {
                    let expected = scan_change(&f, t, 8);
                    assert_eq!(
                        f.next_change_after(t),
                        expected,
                        "{text} in {zone} after {t}"
                    );
                    match expected {
                        Some(e) => t = e,
                        None => break,
                    }
                }
            }
        }
    }
}
