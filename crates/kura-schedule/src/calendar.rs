//! systemd-style calendar events (`systemd.time(7)`, the useful subset): the grammar is in the
//! crate docs.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Utc};
use chrono_tz::Tz;

use crate::error::{Error, Result};
use crate::field::{self, Field, Kind, Weekdays};
use crate::zone;

/// Calendar events never match after this year (nor do their year fields accept more).
const LAST_YEAR: i32 = 9999;

pub(crate) const EVENT_EXAMPLES: &str =
    "a calendar event such as \"daily\", \"mon..fri 02:00\", \"*-*-01 03:30\" or \"*:0/15\"";

const SHORTHANDS: [(&str, &str); 9] = [
    ("minutely", "*-*-* *:*:00"),
    ("hourly", "*-*-* *:00:00"),
    ("daily", "*-*-* 00:00:00"),
    ("weekly", "Mon *-*-* 00:00:00"),
    ("monthly", "*-*-01 00:00:00"),
    ("yearly", "*-01-01 00:00:00"),
    ("annually", "*-01-01 00:00:00"),
    ("quarterly", "*-01,04,07,10-01 00:00:00"),
    ("semiannually", "*-01,07-01 00:00:00"),
];

/// A calendar event: the wall-clock times it matches, and the zone whose wall clock that is.
///
/// Equality is by the normalized form (what [`Display`](fmt::Display) prints) and the zone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CalendarEvent {
    weekdays: Option<Weekdays>,
    year: Field,
    month: Field,
    /// Counted from the month's start, or from its end after `~`.
    day: Field,
    day_from_end: bool,
    hour: Field,
    minute: Field,
    second: Field,
    masks: Masks,
    zone: Tz,
    zone_explicit: bool,
}

/// The small fields as bit sets, for the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Masks {
    month: u64,
    day: u64,
    hour: u64,
    minute: u64,
    second: u64,
}

impl CalendarEvent {
    /// Parses a calendar event. Without a trailing zone, its wall clock is `default_zone`'s.
    pub fn parse(text: &str, default_zone: Tz) -> Result<CalendarEvent> {
        let input = text.trim();
        if input.is_empty() {
            return Err(Error::Empty {
                what: "calendar event",
                expected: EVENT_EXAMPLES,
            });
        }
        let (body, zone) = zone::split_zone(input, input)?;
        if zone::parse_zone(body).is_some() {
            return Err(Error::invalid(
                "calendar event",
                input,
                input,
                "a weekday, date or time before the time zone",
            ));
        }
        if zone::looks_like_zone(body) {
            return Err(Error::invalid("time zone", body, input, zone::ZONE_SYNTAX));
        }
        let expanded = SHORTHANDS
            .iter()
            .find(|(name, _)| body.eq_ignore_ascii_case(name))
            .map(|&(_, long)| long);
        let mut event = parse_body(expanded.unwrap_or(body), input)?;
        event.zone = zone.unwrap_or(default_zone);
        event.zone_explicit = zone.is_some();
        Ok(event)
    }

    /// The zone whose wall clock the event follows.
    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// Was the zone written in the event (rather than the default passed to `parse`)?
    pub fn zone_is_explicit(&self) -> bool {
        self.zone_explicit
    }

    /// The same event, following `zone` unless the event names its own zone.
    pub fn with_default_zone(mut self, zone: Tz) -> CalendarEvent {
        if !self.zone_explicit {
            self.zone = zone;
        }
        self
    }

    /// Does the wall-clock time `local` (in the event's zone) match? Fractions of a second
    /// are ignored.
    pub fn matches(&self, local: NaiveDateTime) -> bool {
        let date = local.date();
        let Ok(year) = u32::try_from(date.year()) else {
            return false;
        };
        self.year.contains(year)
            && bit(self.masks.month, date.month())
            && self.day_matches(date)
            && self.weekdays.is_none_or(|w| w.contains(date.weekday()))
            && bit(self.masks.hour, local.hour())
            && bit(self.masks.minute, local.minute())
            && bit(self.masks.second, local.second())
    }

    /// The first run strictly after `t` (the DST rule of the crate docs), or `None` when the
    /// event never matches again.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        zone::next_run(&self.zone, t, |from| self.next_local(from))
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        let day = date.day();
        if self.day_from_end {
            let Some(dim) = days_in_month(date.year(), date.month()) else {
                return false;
            };
            bit(self.masks.day, dim + 1 - day)
        } else {
            bit(self.masks.day, day)
        }
    }

    /// The first matching wall-clock time at or after `from` (whole seconds).
    pub(crate) fn next_local(&self, from: NaiveDateTime) -> Option<NaiveDateTime> {
        let start = from.date();
        let start_secs = from.num_seconds_from_midnight();
        // Whether a date matches depends on its year only through leap years and the weekday
        // of 1 January, which repeat every 400 years: a year scanned in full without a match
        // rules out every year with the same remainder.
        let mut barren = [false; 400];
        let mut year = start.year();
        loop {
            year = self.next_year(year)?;
            let residue = usize::try_from(year.rem_euclid(400)).ok()?;
            let first = year == start.year();
            if !first && barren[residue] {
                year += 1;
                continue;
            }
            let (m0, d0) = if first {
                (start.month(), start.day())
            } else {
                (1, 1)
            };
            for month in m0..=12 {
                if !bit(self.masks.month, month) {
                    continue;
                }
                let dim = days_in_month(year, month)?;
                let day_start = if first && month == m0 { d0 } else { 1 };
                for day in day_start..=dim {
                    let Some(date) = NaiveDate::from_ymd_opt(year, month, day) else {
                        continue;
                    };
                    if !self.day_matches(date)
                        || self.weekdays.is_some_and(|w| !w.contains(date.weekday()))
                    {
                        continue;
                    }
                    let secs = if date == start { start_secs } else { 0 };
                    if let Some(time) = self.next_time(secs) {
                        return Some(date.and_time(time));
                    }
                }
            }
            if !first {
                barren[residue] = true;
            }
            year += 1;
        }
    }

    /// The first matching year at or after `year`, if not past [`LAST_YEAR`].
    fn next_year(&self, year: i32) -> Option<i32> {
        if year > LAST_YEAR {
            return None;
        }
        if self.year.is_any() {
            return Some(year);
        }
        let next = self
            .year
            .next_at_or_after(u32::try_from(year).unwrap_or(0))?;
        i32::try_from(next).ok().filter(|&y| y <= LAST_YEAR)
    }

    /// The first matching time of day at or after `secs` seconds past midnight.
    fn next_time(&self, secs: u32) -> Option<NaiveTime> {
        let (h0, m0, s0) = (secs / 3600, secs / 60 % 60, secs % 60);
        for h in bits_from(self.masks.hour, h0) {
            let m_from = if h == h0 { m0 } else { 0 };
            for m in bits_from(self.masks.minute, m_from) {
                let s_from = if h == h0 && m == m0 { s0 } else { 0 };
                if let Some(s) = bits_from(self.masks.second, s_from).next() {
                    return NaiveTime::from_hms_opt(h, m, s);
                }
            }
        }
        None
    }
}

fn bit(mask: u64, v: u32) -> bool {
    v < 64 && mask & (1u64 << v) != 0
}

/// The set bits of `mask` at or above `from`, in order.
fn bits_from(mask: u64, from: u32) -> impl Iterator<Item = u32> {
    let mut rest = if from >= 64 {
        0
    } else {
        mask & (u64::MAX << from)
    };
    std::iter::from_fn(move || {
        if rest == 0 {
            return None;
        }
        let b = rest.trailing_zeros();
        rest &= rest - 1;
        Some(b)
    })
}

pub(crate) fn days_in_month(year: i32, month: u32) -> Option<u32> {
    let first = NaiveDate::from_ymd_opt(year, month, 1)?;
    let next = if month == 12 {
        NaiveDate::from_ymd_opt(year.checked_add(1)?, 1, 1)?
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)?
    };
    u32::try_from(next.signed_duration_since(first).num_days()).ok()
}

/// Parses `[weekdays] [date] [time]` (a shorthand already expanded, the zone split off).
fn parse_body(body: &str, input: &str) -> Result<CalendarEvent> {
    let mut tokens = body.split_whitespace().peekable();
    let mut weekdays = None;
    if let Some(first) = tokens.next_if(|t| t.starts_with(|c: char| c.is_ascii_alphabetic())) {
        weekdays = Some(Weekdays::parse(first, input)?);
    }
    let mut date = None;
    let mut time = None;
    for token in tokens {
        if time.is_some() {
            return Err(Error::invalid(
                "part",
                token,
                input,
                "nothing after the time but a time zone (UTC or an IANA name such as Europe/Berlin)",
            ));
        }
        if token.contains(':') {
            time = Some(parse_time(token, input)?);
        } else if date.is_none() && (token.contains('-') || token.contains('~')) {
            date = Some(parse_date(token, input)?);
        } else {
            return Err(Error::invalid(
                "part",
                token,
                input,
                "[weekdays] [date] [time] [zone]: a date such as *-*-01 or 2025-01-31 or a time such as 02:00 or *:0/15 here",
            ));
        }
    }
    let (year, month, day, day_from_end) = match date {
        Some(d) => d,
        None => (
            Field::any(field::YEAR),
            Field::any(field::MONTH),
            Field::any(field::DAY),
            false,
        ),
    };
    let zero = |kind: Kind| Field::parse("0", kind, input);
    let (hour, minute, second) = match time {
        Some(t) => t,
        None => (
            zero(field::HOUR)?,
            zero(field::MINUTE)?,
            zero(field::SECOND)?,
        ),
    };
    let masks = Masks {
        month: month.mask(),
        day: day.mask(),
        hour: hour.mask(),
        minute: minute.mask(),
        second: second.mask(),
    };
    Ok(CalendarEvent {
        weekdays,
        year,
        month,
        day,
        day_from_end,
        hour,
        minute,
        second,
        masks,
        zone: Tz::UTC,
        zone_explicit: false,
    })
}

/// `YYYY-MM-DD`, `MM-DD`, `YYYY-MM~DD`, `MM~DD`, each part a field.
fn parse_date(token: &str, input: &str) -> Result<(Field, Field, Field, bool)> {
    let (head, day, from_end) = match token.rsplit_once('~') {
        Some((head, day)) => (head, day, true),
        None => match token.rsplit_once('-') {
            Some((head, day)) => (head, day, false),
            None => return Err(Error::invalid("date", token, input, "YYYY-MM-DD or MM-DD")),
        },
    };
    let (year, month) = match head.split_once('-') {
        Some((year, month)) => (Field::parse(year, field::YEAR, input)?, month),
        None => (Field::any(field::YEAR), head),
    };
    let month = Field::parse(month, field::MONTH, input)?;
    let day = if from_end {
        Field::parse_from_end(day, input)?
    } else {
        Field::parse(day, field::DAY, input)?
    };
    Ok((year, month, day, from_end))
}

/// `HH:MM` or `HH:MM:SS`, each part a field.
fn parse_time(token: &str, input: &str) -> Result<(Field, Field, Field)> {
    let parts: Vec<&str> = token.split(':').collect();
    let (h, m, s) = match parts.as_slice() {
        [h, m] => (*h, *m, "00"),
        [h, m, s] => (*h, *m, *s),
        _ => return Err(Error::invalid("time", token, input, "HH:MM or HH:MM:SS")),
    };
    Ok((
        Field::parse(h, field::HOUR, input)?,
        Field::parse(m, field::MINUTE, input)?,
        Field::parse(s, field::SECOND, input)?,
    ))
}

impl fmt::Display for CalendarEvent {
    /// The normalized form: `[Weekdays ]YYYY-MM-DD HH:MM:SS[ zone]`, every part written out,
    /// e.g. `Mon..Fri *-*-* 02:00:00` or `*-*~01 00:00:00 Europe/Berlin`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(w) = self.weekdays {
            write!(f, "{w} ")?;
        }
        let sep = if self.day_from_end { '~' } else { '-' };
        write!(f, "{}-{}{sep}{} ", self.year, self.month, self.day)?;
        write!(f, "{}:{}:{}", self.hour, self.minute, self.second)?;
        if self.zone_explicit {
            write!(f, " {}", self.zone.name())?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "calendar_tests.rs"]
mod tests;
