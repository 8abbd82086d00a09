//! Property tests: next runs are later and monotone, none is skipped (against a brute-force
//! minute scan of the wall clock, across DST transitions in Europe/Berlin, America/New_York
//! and Australia/Lord_Howe), month ends, the parse/display round trip, and garbage never
//! panics (`KURA_FUZZ_CASES` cases; `scripts/fuzz.sh` runs it long).

use chrono::{
    DateTime, Datelike, NaiveDateTime, Offset, TimeDelta, TimeZone, Timelike, Utc, Weekday,
};
use kura_schedule::{Schedule, Timeframe, Tz};
use proptest::prelude::*;

const ZONES: [&str; 4] = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
];

fn zone(name: &str) -> Tz {
    name.parse().unwrap()
}

fn fuzz_cases() -> u32 {
    std::env::var("KURA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// One numeric field, as text and as the set of values it matches (computed here, not by
/// the crate).
#[derive(Debug, Clone)]
struct FieldSpec {
    text: String,
    /// Cron syntax for the same set (`a-b`, `*/s`, `a-max/s`).
    cron: String,
    set: Vec<bool>,
    any: bool,
}

/// A field of values `min..=max`: `*` (most often) or a list of values, ranges and
/// repetitions.
fn field(min: u32, max: u32, star_weight: u32) -> impl Strategy<Value = FieldSpec> {
    let item = prop_oneof![
        (min..=max).prop_map(move |v| (format!("{v}"), format!("{v}"), vec![v])),
        (min..=max, min..=max).prop_map(move |(a, b)| {
            let (a, b) = (a.min(b), a.max(b));
            (format!("{a}..{b}"), format!("{a}-{b}"), (a..=b).collect())
        }),
        (min..=max, 1..=(max - min + 1)).prop_map(move |(a, s)| {
            (
                format!("{a}/{s}"),
                format!("{a}-{max}/{s}"),
                (a..=max).step_by(s as usize).collect(),
            )
        }),
        (1..=(max - min + 1)).prop_map(move |s| {
            (
                format!("*/{s}"),
                format!("*/{s}"),
                (min..=max).step_by(s as usize).collect(),
            )
        }),
    ];
    prop_oneof![
        star_weight => Just(FieldSpec { text: "*".into(), cron: "*".into(), set: vec![true; 64], any: true }),
        1 => prop::collection::vec(item, 1..4).prop_map(|items| {
            let mut set = vec![false; 64];
            for (_, _, values) in &items {
                for &v in values {
                    set[v as usize] = true;
                }
            }
            let text = items.iter().map(|i| i.0.clone()).collect::<Vec<_>>().join(",");
            let cron = items.iter().map(|i| i.1.clone()).collect::<Vec<_>>().join(",");
            FieldSpec { text, cron, set, any: false }
        }),
    ]
}

/// A minute-granularity calendar event with its own matching predicate.
#[derive(Debug, Clone)]
struct EventSpec {
    weekdays: Option<Vec<bool>>,
    month: FieldSpec,
    day: FieldSpec,
    /// `~` days: a set over days back from the end (1 = last).
    from_end: Option<(String, Vec<bool>)>,
    hour: FieldSpec,
    minute: FieldSpec,
}

const DAY_NAMES: [&str; 7] = ["mon", "Tue", "WED", "thursday", "Fri", "sat", "Sunday"];

fn event_spec() -> impl Strategy<Value = EventSpec> {
    let weekdays = prop_oneof![
        3 => Just(None),
        1 => prop::collection::vec(any::<bool>(), 7)
            .prop_filter("some day", |d| d.iter().any(|&b| b))
            .prop_map(Some),
    ];
    let from_end = prop_oneof![
        6 => Just(None),
        1 => (1u32..=7, prop::option::of(1u32..=3)).prop_map(|(k, step)| {
            let mut set = vec![false; 32];
            match step {
                None => set[k as usize] = true,
                Some(s) => (1..=k).rev().step_by(s as usize).for_each(|v| set[v as usize] = true),
            }
            let text = match step {
                None => format!("{k:02}"),
                Some(s) => format!("{k:02}/{s}"),
            };
            Some((text, set))
        }),
    ];
    (
        weekdays,
        field(1, 12, 4),
        field(1, 31, 3),
        from_end,
        field(0, 23, 2),
        field(0, 59, 2),
    )
        .prop_map(|(weekdays, month, day, from_end, hour, minute)| EventSpec {
            weekdays,
            month,
            day,
            from_end,
            hour,
            minute,
        })
}

impl EventSpec {
    fn text(&self) -> String {
        let mut out = String::new();
        if let Some(days) = &self.weekdays {
            let names: Vec<&str> = (0..7).filter(|&i| days[i]).map(|i| DAY_NAMES[i]).collect();
            out = names.join(",") + " ";
        }
        match &self.from_end {
            Some((k, _)) => out += &format!("*-{}~{k}", self.month.text),
            None => out += &format!("*-{}-{}", self.month.text, self.day.text),
        }
        out + &format!(" {}:{}", self.hour.text, self.minute.text)
    }

    /// The same schedule as cron, when cron can say it (no `~`, at most one of the day
    /// fields restricted: cron ORs them).
    fn cron(&self) -> Option<String> {
        if self.from_end.is_some() || (self.weekdays.is_some() && !self.day.any) {
            return None;
        }
        let dow = match &self.weekdays {
            None => "*".to_string(),
            // cron counts Sunday as 0.
            Some(days) => (0..7)
                .filter(|&i| days[i])
                .map(|i| ((i + 1) % 7).to_string())
                .collect::<Vec<_>>()
                .join(","),
        };
        Some(format!(
            "{} {} {} {} {dow}",
            self.minute.cron, self.hour.cron, self.day.cron, self.month.cron
        ))
    }

    fn matches(&self, local: NaiveDateTime) -> bool {
        let date = local.date();
        let day_ok = match &self.from_end {
            Some((_, set)) => {
                let dim = days_in_month(date.year(), date.month());
                set[(dim + 1 - date.day()) as usize]
            }
            None => self.day.set[date.day() as usize],
        };
        let weekday_ok = self
            .weekdays
            .as_ref()
            .is_none_or(|d| d[date.weekday().num_days_from_monday() as usize]);
        day_ok
            && weekday_ok
            && self.month.set[date.month() as usize]
            && self.hour.set[local.hour() as usize]
            && self.minute.set[local.minute() as usize]
            && local.second() == 0
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    (28..=31)
        .rev()
        .find(|&d| chrono::NaiveDate::from_ymd_opt(year, month, d).is_some())
        .unwrap()
}

fn local(tz: Tz, t: DateTime<Utc>) -> NaiveDateTime {
    t.with_timezone(&tz).naive_local()
}

/// The runs in `(from, to]` by brute force over whole UTC minutes: a matching wall-clock
/// minute `L` runs at the first instant whose wall-clock time is `L` or later, i.e. at the
/// minute `u` where `L` lies in (max wall clock seen before `u`, wall clock at `u`].
fn oracle(spec: &EventSpec, tz: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let minute = TimeDelta::minutes(1);
    let start = (from - TimeDelta::days(1)).timestamp();
    let mut u = DateTime::from_timestamp(start - start.rem_euclid(60), 0).unwrap();
    let mut seen_max = local(tz, u);
    let mut runs = Vec::new();
    while u <= to {
        u += minute;
        let now = local(tz, u);
        if u > from && u <= to {
            let mut l = seen_max + minute;
            while l <= now {
                if spec.matches(l) {
                    runs.push(u);
                    break;
                }
                l += minute;
            }
        }
        seen_max = seen_max.max(now);
    }
    runs
}

/// The instants in `year` at which `tz`'s offset changes (to the minute).
fn transitions(tz: Tz, year: i32) -> Vec<DateTime<Utc>> {
    let offset = |t: DateTime<Utc>| tz.offset_from_utc_datetime(&t.naive_utc()).fix();
    let mut found = Vec::new();
    let mut day = Utc.with_ymd_and_hms(year, 1, 1, 0, 0, 0).unwrap();
    while day.year() == year {
        let next = day + TimeDelta::days(1);
        if offset(day) != offset(next) {
            // Whole minutes since the epoch.
            let at = |m: i64| DateTime::from_timestamp(m * 60, 0).unwrap();
            let (mut lo, mut hi) = (day.timestamp() / 60, next.timestamp() / 60);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if offset(at(mid)) == offset(at(lo)) {
                    lo = mid
                } else {
                    hi = mid
                }
            }
            found.push(at(hi));
        }
        day = next;
    }
    found
}

/// A window of two days around one of the zone's clock changes in a random year (or any
/// two days in UTC).
fn window(tz: Tz, year: i32, pick: usize, shift_min: i64) -> (DateTime<Utc>, DateTime<Utc>) {
    let changes = transitions(tz, year);
    let center = if changes.is_empty() {
        Utc.with_ymd_and_hms(year, 3, 1, 0, 0, 0).unwrap() + TimeDelta::days(pick as i64 % 300)
    } else {
        changes[pick % changes.len()]
    };
    let from = center - TimeDelta::minutes(shift_min) + TimeDelta::seconds(17);
    (from, from + TimeDelta::days(2))
}

fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    // 1990..2040, to the second, with some fractions.
    (
        631_152_000i64..2_208_988_800,
        prop_oneof![Just(0u32), 0u32..1_000_000_000],
    )
        .prop_map(|(s, n)| DateTime::from_timestamp(s, n).unwrap())
}

fn schedule_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => event_spec().prop_map(|s| s.text()),
        1 => event_spec().prop_filter_map("cron", |s| s.cron().map(|c| format!("cron:{c}"))),
        1 => prop::sample::select(vec!["daily", "hourly", "weekly", "*-02-29 12:00", "*-*-31", "*-*~01 23:59:59", "Fri *-*-13 13:13"]).prop_map(String::from),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn next_is_later_and_monotone(text in schedule_text(), zone_name in prop::sample::select(&ZONES[..]), t1 in instant(), gap in 0i64..3_000_000) {
        let s = Schedule::parse(&text, zone(zone_name)).unwrap();
        let t2 = t1 + TimeDelta::seconds(gap);
        let (n1, n2) = (s.next_after(t1), s.next_after(t2));
        if let Some(n1) = n1 {
            prop_assert!(n1 > t1);
            // None means "never": later than anything.
            prop_assert!(n2.is_none_or(|n2| n1 <= n2), "{text}: {t1} → {n1}, {t2} → {n2:?}");
        }
        if let Some(n2) = n2 {
            prop_assert!(n2 > t2);
            prop_assert!(n1.is_some());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn no_run_is_skipped_across_clock_changes(
        spec in event_spec(),
        zone_name in prop::sample::select(&ZONES[1..]),
        year in 2000i32..2037,
        pick in 0usize..8,
        shift in 0i64..(36 * 60),
    ) {
        let tz = zone(zone_name);
        let (from, to) = window(tz, year, pick, shift);
        let expected = oracle(&spec, tz, from, to);
        let mut texts = vec![spec.text()];
        texts.extend(spec.cron().map(|c| format!("cron:{c}")));
        for text in texts {
            let s = Schedule::parse(&text, tz).unwrap();
            let got: Vec<_> = s.upcoming(from).take_while(|&t| t <= to).collect();
            let first_difference = got.iter().zip(&expected).position(|(a, b)| a != b);
            prop_assert!(
                got == expected,
                "{} in {} from {}: {} runs, expected {}; first difference at {:?}: {:?} vs {:?}",
                text, zone_name, from, got.len(), expected.len(), first_difference,
                first_difference.map(|i| got[i]), first_difference.map(|i| expected[i])
            );
        }
    }

    #[test]
    fn month_ends(zone_name in prop::sample::select(&ZONES[..3]), t in instant()) {
        let tz = zone(zone_name);
        let check = |text: &str, ok: &dyn Fn(NaiveDateTime) -> bool| {
            let s = Schedule::parse(text, tz).unwrap();
            for run in s.upcoming(t).take(14) {
                let l = local(tz, run);
                assert!(ok(l), "{text} ran at {l} ({run})");
            }
        };
        check("*-*-31", &|l| l.day() == 31 && days_in_month(l.year(), l.month()) == 31);
        check("*-02-29 06:00", &|l| (l.month(), l.day()) == (2, 29) && chrono::NaiveDate::from_ymd_opt(l.year(), 2, 29).is_some());
        check("*-*~01 12:00", &|l| (l + TimeDelta::days(1)).day() == 1);
        check("Mon *-05~07/1", &|l| l.weekday() == Weekday::Mon && l.month() == 5 && l.day() > 24);
        // No 31st is skipped: two 31sts are never more than 62 days apart.
        let s = Schedule::parse("*-*-31", tz).unwrap();
        let mut last = t;
        for run in s.upcoming(t).take(14) {
            prop_assert!(run - last <= TimeDelta::days(62), "{} → {}", last, run);
            last = run;
        }
    }

    #[test]
    fn display_round_trips(spec in event_spec(), zone_name in prop::sample::select(&ZONES[..]), explicit in any::<bool>()) {
        let mut text = spec.text();
        if explicit {
            text = format!("{text} {zone_name}");
        }
        let default = zone("Europe/Berlin");
        let first = Schedule::parse(&text, default).unwrap();
        let shown = first.to_string();
        let again = Schedule::parse(&shown, default).unwrap();
        prop_assert_eq!(&again, &first, "{} → {}", text, shown);
        prop_assert_eq!(again.to_string(), shown);
        if let Some(cron) = spec.cron() {
            let c = Schedule::parse(&cron, default).unwrap();
            prop_assert_eq!(Schedule::parse(&c.to_string(), default).unwrap(), c);
        }
    }
}

/// Valid and nearly valid pieces of schedules and time frames, for `token_soup_never_panics`.
const FRAGMENTS: [&str; 48] = [
    "mon",
    "Sat,sun",
    "mon..fri",
    "sunday..monday",
    "*",
    "*-*-*",
    "2025-02-29",
    "*-*~01",
    "*-02~07/1",
    "*-*-31",
    "12-25",
    "02:00",
    "*:0/15",
    "8..18:00:30",
    "23:59:59",
    "*:*:*",
    "UTC",
    "Europe/Berlin",
    "Australia/Lord_Howe",
    "America/New_York",
    "cron:",
    "0",
    "*/5",
    "1-5",
    "L",
    "7W",
    "5#2",
    "5L",
    "@daily",
    "@yearly",
    "22:00-06:00",
    "08:00-18:00",
    "00:00-24:00",
    "daily",
    "quarterly",
    "minutely",
    "9999-12-31",
    "1970-01-01",
    "*/1",
    "59",
    "31",
    "2",
    "feb",
    "MON-FRI",
    "?",
    "0 0 29 2 *",
    "*-*-* 02:30",
    "~",
];

fn check_garbage(text: &str) {
    let t = Utc.with_ymd_and_hms(2025, 3, 30, 0, 30, 0).unwrap();
    for tz in [Tz::UTC, zone("Europe/Berlin")] {
        if let Ok(s) = Schedule::parse(text, tz) {
            let next = s.next_after(t);
            assert!(next.is_none_or(|n| n > t));
            let _ = s.missed(t - TimeDelta::days(3), t, 2);
            assert_eq!(Schedule::parse(&s.to_string(), tz).unwrap(), s, "{text:?}");
        }
        if let Ok(f) = Timeframe::parse(text, tz) {
            let _ = f.next_change_after(t);
            assert_eq!(Timeframe::parse(&f.to_string(), tz).unwrap(), f, "{text:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: fuzz_cases(), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        check_garbage(&text);
    }

    #[test]
    fn grammar_like_text_never_panics(text in "[0-9*,./~:;a-zA-Z_ -]{0,32}") {
        check_garbage(&text);
    }

    #[test]
    fn cron_like_text_never_panics(text in "(cron:)?[0-9*,/?LW#@a-zA-Z -]{0,40}") {
        check_garbage(&text);
    }

    #[test]
    fn token_soup_never_panics(tokens in prop::collection::vec((prop::sample::select(&FRAGMENTS[..]), prop::sample::select(&[" ", " ", "", ",", ";"][..])), 1..7)) {
        let text: String = tokens.iter().flat_map(|(t, j)| [*t, *j]).collect();
        check_garbage(&text);
    }

    #[test]
    fn mutated_schedules_never_panic(spec in event_spec(), at in 0usize..40, with in "[0-9*,./~: -]{0,3}") {
        let text = spec.text();
        let at = at.min(text.len());
        check_garbage(&format!("{}{}{}", &text[..at], with, &text[at..]));
        check_garbage(&format!("mon..fri 08:00-18:00; {}{}", &text[..at], with));
    }
}
