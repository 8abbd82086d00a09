//! [`Timeframe`]: recurring windows of the week (traffic control, backup windows), such as
//! `mon..fri 08:00-18:00`, `sat,sun` or `22:00-06:00`.
//!
//! # Grammar
//! ```text
//! timeframe := window { ";" window } [ zone ]
//! window    := weekdays | [ weekdays ] start "-" end
//! start/end := HH:MM or HH:MM:SS  (end may be 24:00)
//! ```
//! Weekdays are written as in calendar events (`mon`, `Sat,Sun`, `mon..fri`); without them a
//! window holds every day, without times the whole of each day. A window whose end is
//! earlier than its start crosses midnight: `fri 22:00-06:00` runs from Friday 22:00 to
//! Saturday 06:00. The zone, if any, ends the whole text and applies to every window.
//!
//! # Wall clock
//! Containment follows the wall clock of the zone: an instant is in the time frame when its
//! local time is. On the day the clocks go forward a window is shorter (its skipped local
//! times never happen), on the day they go back the repeated local hour is in the window both
//! times it occurs.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDateTime, TimeDelta, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::field::{self, Weekdays};
use crate::zone;

const DAY_SECS: u32 = 86_400;
const WINDOW_SYNTAX: &str =
    "a window such as \"mon..fri 08:00-18:00\", \"sat,sun\" or \"22:00-06:00\"";
const CLOCK_SYNTAX: &str = "HH:MM or HH:MM:SS from 00:00 to 24:00 (24:00 only as an end)";

/// A set of recurring windows of the week in one zone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Timeframe {
    windows: Vec<Window>,
    zone: Tz,
    zone_explicit: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Window {
    /// `None`: every day (no weekdays written).
    days: Option<Weekdays>,
    /// Seconds after midnight: start, end (end <= 86400; end < start crosses midnight).
    range: Option<(u32, u32)>,
}

impl Window {
    fn contains(&self, local: NaiveDateTime) -> bool {
        let days = self.days.unwrap_or(Weekdays::ALL);
        let day = local.date().weekday();
        let secs = local.num_seconds_from_midnight();
        match self.range {
            None => days.contains(day),
            Some((start, end)) if start < end => days.contains(day) && start <= secs && secs < end,
            Some((start, end)) => {
                (days.contains(day) && secs >= start) || (days.contains(day.pred()) && secs < end)
            }
        }
    }
}

impl Timeframe {
    /// Parses a time frame; its wall clock is `default_zone`'s unless the text ends with a
    /// zone.
    pub fn parse(text: &str, default_zone: Tz) -> Result<Timeframe> {
        let input = text.trim();
        if input.is_empty() {
            return Err(Error::Empty {
                what: "time frame",
                expected: WINDOW_SYNTAX,
            });
        }
        let (body, zone) = zone::split_zone(input, input)?;
        if zone::parse_zone(body).is_some() || zone::looks_like_zone(body) {
            return Err(Error::invalid("time frame", input, input, WINDOW_SYNTAX));
        }
        let windows = body
            .split(';')
            .map(|w| parse_window(w.trim(), input))
            .collect::<Result<Vec<_>>>()?;
        Ok(Timeframe {
            windows,
            zone: zone.unwrap_or(default_zone),
            zone_explicit: zone.is_some(),
        })
    }

    /// Parses several values (each a time frame text) as one time frame: what a config key
    /// holding a list gives. The values must name the same zone, or none.
    pub fn parse_list<I>(values: I, default_zone: Tz) -> Result<Timeframe>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut all: Option<Timeframe> = None;
        for value in values {
            let value = value.as_ref();
            let next = Timeframe::parse(value, default_zone)?;
            match &mut all {
                None => all = Some(next),
                Some(all) => {
                    if (all.zone, all.zone_explicit) != (next.zone, next.zone_explicit) {
                        return Err(Error::invalid(
                            "time zone",
                            next.zone.name(),
                            value,
                            format!("the zone of the other values ({})", all.zone.name()),
                        ));
                    }
                    all.windows.extend(next.windows);
                }
            }
        }
        all.ok_or(Error::Empty {
            what: "time frame",
            expected: WINDOW_SYNTAX,
        })
    }

    /// The zone whose wall clock the windows follow.
    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// Was the zone written in the text?
    pub fn zone_is_explicit(&self) -> bool {
        self.zone_explicit
    }

    /// The same time frame, following `zone` unless its text names a zone.
    pub fn with_default_zone(mut self, zone: Tz) -> Timeframe {
        if !self.zone_explicit {
            self.zone = zone;
        }
        self
    }

    /// Is the wall-clock time `local` (in the time frame's zone) inside a window?
    pub fn contains_local(&self, local: NaiveDateTime) -> bool {
        self.windows.iter().any(|w| w.contains(local))
    }

    /// Is the instant `t` inside a window (by its wall-clock time in the zone)?
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.contains_local(zone::local_time(&self.zone, t))
    }

    /// The first instant after `t` at which [`contains`](Timeframe::contains) gives the
    /// other answer, or `None` if it never does (a time frame holding all or none of the
    /// week).
    pub fn next_change_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let now = self.contains(t);
        // Containment is a function of the wall clock that changes only at the windows'
        // edges (and midnights), and the wall clock moves on smoothly except when the
        // clocks change: every change happens at an instant whose wall-clock time is an
        // edge, or at a clock change. The windows repeat weekly, so nine days hold one.
        let horizon = t.checked_add_signed(TimeDelta::days(10))?;
        let today = zone::local_time(&self.zone, t).date();
        let mut candidates = zone::transitions(&self.zone, t, horizon);
        for offset in -1..=9 {
            let Some(date) = today.checked_add_signed(TimeDelta::days(offset)) else {
                continue;
            };
            let midnight = date.and_hms_opt(0, 0, 0)?;
            for secs in self.edges() {
                let local = midnight.checked_add_signed(TimeDelta::seconds(i64::from(secs)))?;
                candidates.extend(zone::instants(&self.zone, local));
            }
        }
        candidates.retain(|&c| c > t);
        candidates.sort();
        candidates.dedup();
        candidates.into_iter().find(|&c| self.contains(c) != now)
    }

    /// Every window edge as seconds after midnight, midnight included.
    fn edges(&self) -> Vec<u32> {
        let mut edges = vec![0];
        for w in &self.windows {
            if let Some((start, end)) = w.range {
                edges.extend([start, end % DAY_SECS]);
            }
        }
        edges.sort_unstable();
        edges.dedup();
        edges
    }
}

fn parse_window(text: &str, input: &str) -> Result<Window> {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let (days, range) = match tokens.as_slice() {
        [one] if one.contains(':') => (None, Some(*one)),
        [one] => (Some(*one), None),
        [days, range] => (Some(*days), Some(*range)),
        _ => {
            return Err(Error::invalid(
                "time frame window",
                text,
                input,
                WINDOW_SYNTAX,
            ));
        }
    };
    let days = days.map(|d| Weekdays::parse(d, input)).transpose()?;
    let range = range.map(|r| parse_range(r, input)).transpose()?;
    Ok(Window { days, range })
}

fn parse_range(text: &str, input: &str) -> Result<(u32, u32)> {
    let Some((start, end)) = text.split_once('-') else {
        return Err(Error::invalid(
            "time range",
            text,
            input,
            "START-END such as 08:00-18:00",
        ));
    };
    let (start, end) = (
        parse_clock(start, false, input)?,
        parse_clock(end, true, input)?,
    );
    if start == end {
        return Err(Error::invalid(
            "time range",
            text,
            input,
            "a range of some length such as 08:00-18:00 (22:00-06:00 crosses midnight; 00:00-24:00 is the whole day)",
        ));
    }
    Ok((start, end))
}

/// `HH:MM[:SS]` as seconds after midnight; `24:00[:00]` only where `end` allows it.
fn parse_clock(text: &str, end: bool, input: &str) -> Result<u32> {
    let bad = || Error::invalid("time", text, input, CLOCK_SYNTAX);
    let parts: Vec<&str> = text.split(':').collect();
    let (h, m, s) = match parts.as_slice() {
        [h, m] => (*h, *m, "0"),
        [h, m, s] => (*h, *m, *s),
        _ => return Err(bad()),
    };
    let two = |p: &str| if p.len() <= 2 { field::number(p) } else { None };
    let (h, m, s) = (
        two(h).ok_or_else(bad)?,
        two(m).ok_or_else(bad)?,
        two(s).ok_or_else(bad)?,
    );
    if m > 59 || s > 59 || h > 24 || (h == 24 && (m, s, end) != (0, 0, true)) {
        return Err(bad());
    }
    Ok(h * 3600 + m * 60 + s)
}

fn write_clock(f: &mut fmt::Formatter<'_>, secs: u32) -> fmt::Result {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if s == 0 {
        write!(f, "{h:02}:{m:02}")
    } else {
        write!(f, "{h:02}:{m:02}:{s:02}")
    }
}

impl fmt::Display for Timeframe {
    /// The normalized text: windows separated by `; `, the zone last when the text named one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, w) in self.windows.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            if let Some(days) = w.days {
                write!(f, "{days}")?;
                if w.range.is_some() {
                    f.write_str(" ")?;
                }
            }
            if let Some((start, end)) = w.range {
                write_clock(f, start)?;
                f.write_str("-")?;
                write_clock(f, end)?;
            }
        }
        if self.zone_explicit {
            write!(f, " {}", self.zone.name())?;
        }
        Ok(())
    }
}

impl Serialize for Timeframe {
    /// As its normalized text.
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timeframe {
    /// From its text; a text naming no zone follows UTC until
    /// [`with_default_zone`](Timeframe::with_default_zone) says otherwise.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Timeframe::parse(&text, Tz::UTC).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[path = "timeframe_tests.rs"]
mod tests;
