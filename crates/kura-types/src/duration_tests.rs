use super::*;
use chrono::{FixedOffset, Utc};

fn d(s: &str) -> std::time::Duration {
    Duration::parse(s).unwrap_or_else(|e| panic!("{e}")).std()
}

fn secs(n: u64) -> std::time::Duration {
    std::time::Duration::from_secs(n)
}

#[test]
fn durations() {
    assert_eq!(d("30s"), secs(30));
    assert_eq!(d("1500ms"), std::time::Duration::from_millis(1500));
    assert_eq!(d("2m"), secs(120));
    assert_eq!(d("90min"), secs(5400));
    assert_eq!(d("1h30m"), secs(5400));
    assert_eq!(d("1h 30m"), secs(5400));
    assert_eq!(d("1.5h"), secs(5400));
    assert_eq!(d("0.5s"), std::time::Duration::from_millis(500));
    assert_eq!(d("2d"), secs(172_800));
    assert_eq!(d("1w"), secs(604_800));
    assert_eq!(
        d("1w2d3h4m5s6ms"),
        secs(604_800 + 172_800 + 3 * 3600 + 4 * 60 + 5) + std::time::Duration::from_millis(6)
    );
    assert_eq!(d("7"), secs(7));
    assert_eq!(d("2.5"), std::time::Duration::from_millis(2500));
    assert_eq!(d("0"), secs(0));
    assert_eq!(d("0s"), secs(0));
    assert_eq!(d("10M"), secs(600));
    assert_eq!(d("36500d"), Duration::MAX.std());
}

#[test]
fn duration_refusals_name_the_text_and_the_form() {
    for (bad, why) in [
        ("", "empty"),
        ("x", "a number must come before"),
        ("soon", "a number must come before"),
        ("5y", "years are calendar units"),
        ("3x", "unknown unit \"x\""),
        ("-1s", "unexpected character '-'"),
        ("1h30", "only allowed alone"),
        ("30m1h", "largest unit first"),
        ("1m1m", "given twice"),
        ("1m1min", "given twice"),
        ("0.0001s", "finer than a millisecond"),
        ("36501d", "longer than the longest allowed (36500d)"),
        ("99999999999999999999s", "too large"),
    ] {
        let msg = Duration::parse(bad).unwrap_err().to_string();
        assert!(msg.contains(why), "{bad}: {msg}");
        assert!(
            msg.starts_with(&format!("invalid duration {bad:?}")),
            "{msg}"
        );
        assert!(msg.contains("e.g. 500ms, 30s"), "{msg}");
    }
    let msg = Duration::parse_positive("0").unwrap_err().to_string();
    assert!(msg.contains("longer than zero"), "{msg}");
    assert_eq!(
        Duration::parse_positive("1ms").unwrap(),
        Duration::from_millis(1)
    );
}

#[test]
fn duration_display_parses_back() {
    for (ms, text) in [
        (0, "0s"),
        (1, "1ms"),
        (1500, "1s500ms"),
        (120_000, "2m"),
        (5_400_000, "1h30m"),
        (172_800_000, "2d"),
        (604_800_000, "7d"),
    ] {
        let v = Duration::from_millis(ms);
        assert_eq!(v.to_string(), text);
        assert_eq!(Duration::parse(text).unwrap(), v);
    }
}

#[test]
fn duration_serde_text_or_seconds() {
    let v: Duration = serde_json::from_str("\"1h30m\"").unwrap();
    assert_eq!(v, Duration::from_secs(5400));
    assert_eq!(serde_json::to_string(&v).unwrap(), "\"1h30m\"");
    let v: Duration = serde_json::from_str("45").unwrap();
    assert_eq!(v, Duration::from_secs(45));
    let e = serde_json::from_str::<Duration>("\"2 fortnights\"").unwrap_err();
    assert!(e.to_string().contains("invalid duration"), "{e}");
    assert!(serde_json::from_str::<Duration>("-3").is_err());
}

#[test]
fn spans() {
    let s = |t: &str| CalendarSpan::parse(t).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s("30d"), CalendarSpan::days(30));
    assert_eq!(
        s("1y2m1w3h"),
        CalendarSpan {
            years: 1,
            months: 2,
            days: 7,
            hours: 3
        }
    );
    assert_eq!(s("2w3d12h").to_string(), "17d12h");
    assert_eq!(s("1y6m").to_string(), "1y6m");
    assert_eq!(s("1Y").years, 1);
    for (bad, why) in [
        ("", "empty"),
        ("5", "needs a unit"),
        ("d", "a number must come before"),
        ("3x", "unknown unit \"x\""),
        ("1s", "unknown unit \"s\""),
        ("1.5d", "whole numbers"),
        ("0d", "zero"),
        ("1d1y", "largest unit first"),
        ("99999999999999999999y", "too large"),
        ("4294967296d", "too large"),
    ] {
        let msg = CalendarSpan::parse(bad).unwrap_err().to_string();
        assert!(msg.contains(why), "{bad}: {msg}");
        assert!(
            msg.starts_with(&format!("invalid duration {bad:?}")),
            "{msg}"
        );
        assert!(msg.contains("y year, m month"), "{msg}");
    }
}

#[test]
fn spans_move_by_the_calendar() {
    let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
    let span = |s: &str| CalendarSpan::parse(s).unwrap();
    assert_eq!(
        span("1y").before(&t("2024-02-29T12:00:00Z")),
        Some(t("2023-02-28T12:00:00Z"))
    );
    assert_eq!(
        span("1m").before(&t("2026-03-31T00:00:00Z")),
        Some(t("2026-02-28T00:00:00Z"))
    );
    assert_eq!(
        span("1m2d3h").before(&t("2026-03-10T10:00:00Z")),
        Some(t("2026-02-08T07:00:00Z"))
    );
    // In the time zone given: a month before local midnight of 1 March is local 1 February.
    let plus1 = FixedOffset::east_opt(3600).unwrap();
    let local = t("2026-02-28T23:30:00Z").with_timezone(&plus1);
    assert_eq!(
        span("1m").before(&local).map(|v| v.with_timezone(&Utc)),
        Some(t("2026-01-31T23:30:00Z"))
    );
    assert_eq!(span("4000000y").before(&t("2026-01-01T00:00:00Z")), None);
}

proptest::proptest! {
    #[test]
    fn never_panics(s in "[0-9a-zA-Z. ,-]{0,24}") {
        let _ = Duration::parse(&s);
        let _ = CalendarSpan::parse(&s);
    }

    #[test]
    fn duration_display_round_trips(ms in 0u64..=36_500 * 86_400_000) {
        let v = Duration::from_millis(ms);
        proptest::prop_assert_eq!(Duration::parse(&v.to_string()), Ok(v));
    }
}
