//! The one duration grammar, in two readings that share its tokenizer:
//!
//! - [`Duration`] — an exact length of time (deadlines, timeouts, leases, grace periods):
//!   terms `NUMBER UNIT` with units `ms`, `s`, `m` (minutes; also `min`), `h`, `d` (24 h),
//!   `w` (7 d), largest first, each at most once: `500ms`, `30s`, `2m`, `1h30m`, `1.5h`, `2d`,
//!   `1w`. A number alone is seconds (`30` = `30s`). Precision is one millisecond.
//! - [`CalendarSpan`] — a span of the calendar, for retention (`forget --keep-within`, with
//!   restic's grammar and meaning): whole-number terms with units `y` (years), `m` (months),
//!   `w` (weeks), `d` (days), `h` (hours), largest first: `30d`, `1y6m`, `2w3d12h`.
//!   Subtracted from a point in time it moves by calendar months and years
//!   ([`CalendarSpan::before`]).
//!
//! `m` is minutes in a duration and months in a calendar span, as in restic and systemd
//! respectively; the two are never read in the same place. Units are not case-sensitive.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Days, Months, TimeDelta, TimeZone};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ParseError;
use crate::lex::{Inexact, Term, terms};

const EXPECTED: &str = "a number and a unit, largest first, e.g. 500ms, 30s, 2m, 1h30m, 2d, 1w \
                        (a number alone is seconds)";
const EXPECTED_SPAN: &str = "whole numbers with units, largest first, e.g. 30d, 1y6m, 2w3d12h \
                             (y year, m month, w week, d day, h hour)";

const MS: u128 = 1;
const SEC: u128 = 1000 * MS;
const MIN: u128 = 60 * SEC;
const HOUR: u128 = 60 * MIN;
const DAY: u128 = 24 * HOUR;
const WEEK: u128 = 7 * DAY;

/// Milliseconds per duration unit (rank = position: larger units first).
const DURATION_UNITS: [(&[&str], u128); 6] = [
    (&["w"], WEEK),
    (&["d"], DAY),
    (&["h"], HOUR),
    (&["m", "min"], MIN),
    (&["s"], SEC),
    (&["ms"], MS),
];

/// Calendar-span units, larger first.
const SPAN_UNITS: [&str; 5] = ["y", "m", "w", "d", "h"];

/// Find `unit` (case-insensitively) in a table of unit names; its rank.
fn rank(names: &[&[&str]], unit: &str) -> Option<usize> {
    let u = unit.to_ascii_lowercase();
    names.iter().position(|ns| ns.contains(&u.as_str()))
}

/// Check that ranks strictly increase (largest unit first, none twice).
fn in_order(ranks: &[usize], units: &[&str]) -> Result<(), String> {
    for (i, w) in ranks.windows(2).enumerate() {
        if w[1] == w[0] {
            return Err(format!("the unit {:?} is given twice", units[i + 1]));
        }
        if w[1] < w[0] {
            return Err(format!(
                "{:?} comes after {:?}: write the largest unit first",
                units[i + 1],
                units[i]
            ));
        }
    }
    Ok(())
}

/// A length of time, parsed from the duration grammar (module docs); at most
/// [`Duration::MAX`], in whole milliseconds. Serialized as its text (`"1h30m"`), deserialized
/// from a text or a number of seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

impl Duration {
    pub const ZERO: Duration = Duration(std::time::Duration::ZERO);
    /// 100 years: far beyond any deadline or lease, and safe to add to an `Instant`.
    pub const MAX: Duration = Duration(std::time::Duration::from_secs(36_500 * 86_400));

    pub const fn from_secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }
    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }
    pub const fn from_mins(m: u64) -> Self {
        Duration(std::time::Duration::from_secs(m * 60))
    }

    pub const fn std(self) -> std::time::Duration {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    /// Parse the duration grammar (module docs); zero is allowed.
    pub fn parse(text: &str) -> Result<Duration, ParseError> {
        let err = |why: String| ParseError {
            what: "duration",
            text: text.to_string(),
            why,
            expected: EXPECTED,
        };
        let ts = terms(text).map_err(err)?;
        let names: Vec<&[&str]> = DURATION_UNITS.iter().map(|(n, _)| *n).collect();
        if let [Term { number, unit: "" }] = ts.as_slice() {
            // A number alone: seconds.
            let ms = number.times(SEC).map_err(|e| err(millis(e)))?;
            return Self::bounded(ms).ok_or_else(|| err(too_long()));
        }
        let mut ranks = Vec::new();
        let mut total: u128 = 0;
        for t in &ts {
            if t.unit.is_empty() {
                return Err(err(
                    "a number without a unit is only allowed alone (seconds)".into(),
                ));
            }
            let r = rank(&names, t.unit).ok_or_else(|| {
                let hint = if rank(&[&SPAN_UNITS[..1]], t.unit).is_some() {
                    " (years are calendar units, not a duration)"
                } else {
                    ""
                };
                err(format!("unknown unit {:?}{hint}", t.unit))
            })?;
            ranks.push(r);
            let ms = t
                .number
                .times(DURATION_UNITS[r].1)
                .map_err(|e| err(millis(e)))?;
            total = total.checked_add(ms).ok_or_else(|| err(too_long()))?;
        }
        let units: Vec<&str> = ts.iter().map(|t| t.unit).collect();
        in_order(&ranks, &units).map_err(err)?;
        Self::bounded(total).ok_or_else(|| err(too_long()))
    }

    /// Parse, refusing zero (a deadline, a timeout, a lease).
    pub fn parse_positive(text: &str) -> Result<Duration, ParseError> {
        let d = Self::parse(text)?;
        if d.is_zero() {
            return Err(ParseError {
                what: "duration",
                text: text.to_string(),
                why: "it must be longer than zero".into(),
                expected: EXPECTED,
            });
        }
        Ok(d)
    }

    fn bounded(ms: u128) -> Option<Duration> {
        let ms = u64::try_from(ms).ok()?;
        let d = Duration::from_millis(ms);
        (d <= Duration::MAX).then_some(d)
    }
}

fn millis(e: Inexact) -> String {
    match e {
        Inexact::TooLarge => too_long(),
        Inexact::TooFine => "finer than a millisecond".into(),
    }
}

fn too_long() -> String {
    format!("longer than the longest allowed ({})", Duration::MAX)
}

impl fmt::Display for Duration {
    /// Largest units first, e.g. `1h30m`, `2d`, `1s500ms`; `0s` for zero. Parses back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return write!(f, "0s");
        }
        for (unit, len) in [("d", DAY), ("h", HOUR), ("m", MIN), ("s", SEC), ("ms", MS)] {
            if ms >= len {
                write!(f, "{}{unit}", ms / len)?;
                ms %= len;
            }
        }
        Ok(())
    }
}

impl FromStr for Duration {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        Duration::parse(s)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> std::time::Duration {
        d.0
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "a duration such as \"30s\" or \"1h30m\", or a number of seconds"
                )
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
                Duration::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
                Duration::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                Duration::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A span of the calendar: years, months, days and hours (weeks are read as 7 days), parsed
/// from the calendar-span grammar (module docs). Never zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CalendarSpan {
    pub years: u32,
    pub months: u32,
    pub days: u32,
    pub hours: u32,
}

impl CalendarSpan {
    pub const fn days(days: u32) -> Self {
        CalendarSpan {
            years: 0,
            months: 0,
            days,
            hours: 0,
        }
    }

    /// Parse the calendar-span grammar (module docs).
    pub fn parse(text: &str) -> Result<CalendarSpan, ParseError> {
        let err = |why: String| ParseError {
            what: "duration",
            text: text.to_string(),
            why,
            expected: EXPECTED_SPAN,
        };
        let ts = terms(text).map_err(err)?;
        let names: Vec<&[&str]> = SPAN_UNITS.iter().map(std::slice::from_ref).collect();
        let mut span = CalendarSpan::default();
        let mut ranks = Vec::new();
        for t in &ts {
            if t.unit.is_empty() {
                return Err(err(format!("{} needs a unit", t.number.int)));
            }
            let r =
                rank(&names, t.unit).ok_or_else(|| err(format!("unknown unit {:?}", t.unit)))?;
            ranks.push(r);
            if !t.number.is_whole() {
                return Err(err("only whole numbers of calendar units".into()));
            }
            let n = u32::try_from(t.number.int).map_err(|_| err("too large".into()))?;
            let slot = match SPAN_UNITS[r] {
                "y" => &mut span.years,
                "m" => &mut span.months,
                "h" => &mut span.hours,
                "w" => {
                    let d = n.checked_mul(7).ok_or_else(|| err("too large".into()))?;
                    span.days = span
                        .days
                        .checked_add(d)
                        .ok_or_else(|| err("too large".into()))?;
                    continue;
                }
                _ => &mut span.days,
            };
            *slot = slot.checked_add(n).ok_or_else(|| err("too large".into()))?;
        }
        let units: Vec<&str> = ts.iter().map(|t| t.unit).collect();
        in_order(&ranks, &units).map_err(err)?;
        if span == CalendarSpan::default() {
            return Err(err("it is zero".into()));
        }
        Ok(span)
    }

    /// The point in time this span before `t`, on the calendar of `t`'s time zone: years and
    /// months move the date (the 31st of a month into a shorter one lands on its last day),
    /// then days, then hours. `None` where that is not a time (out of range; or a local time
    /// skipped by a clock change).
    pub fn before<Tz: TimeZone>(&self, t: &DateTime<Tz>) -> Option<DateTime<Tz>> {
        let months = self.years.checked_mul(12)?.checked_add(self.months)?;
        t.clone()
            .checked_sub_months(Months::new(months))?
            .checked_sub_days(Days::new(u64::from(self.days)))?
            .checked_sub_signed(TimeDelta::try_hours(i64::from(self.hours))?)
    }
}

impl fmt::Display for CalendarSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [
            (self.years, "y"),
            (self.months, "m"),
            (self.days, "d"),
            (self.hours, "h"),
        ];
        let mut any = false;
        for (n, unit) in parts {
            if n > 0 {
                write!(f, "{n}{unit}")?;
                any = true;
            }
        }
        if !any {
            write!(f, "0d")?;
        }
        Ok(())
    }
}

impl FromStr for CalendarSpan {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        CalendarSpan::parse(s)
    }
}

impl Serialize for CalendarSpan {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CalendarSpan {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CalendarSpan::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[path = "duration_tests.rs"]
mod tests;
