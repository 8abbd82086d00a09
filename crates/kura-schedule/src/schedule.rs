//! [`Schedule`]: a calendar event or a cron expression, with what a scheduler asks of it —
//! the next run, the upcoming runs, and the runs missed while it was not running.

use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::calendar::CalendarEvent;
use crate::cron::{self, CronExpr};
use crate::error::{Error, Result};

/// When a job runs: a calendar event or a cron expression (see the crate docs for the
/// grammar and for how a text is told to be one or the other).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Schedule {
    /// A systemd-style calendar event.
    Calendar(CalendarEvent),
    /// A cron expression.
    Cron(CronExpr),
}

/// The runs a scheduler missed between its last run and now (see [`Schedule::missed`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Missed {
    /// The earliest missed runs, in order, at most the `limit` asked for.
    pub times: Vec<DateTime<Utc>>,
    /// More runs were missed than `times` holds.
    pub truncated: bool,
    /// The latest missed run (the one a `catch-up = one` policy would make up for).
    pub latest: Option<DateTime<Utc>>,
}

impl Missed {
    /// Was any run missed?
    pub fn any(&self) -> bool {
        self.latest.is_some()
    }
}

impl Schedule {
    /// Parses a schedule; wall-clock times are `default_zone`'s unless the text names a zone.
    ///
    /// `cron:` starts a cron expression. Any other text is a calendar event; if it is not a
    /// valid one but has exactly five fields (plus perhaps a time zone), it is taken as a
    /// cron expression. No calendar event has five fields, so nothing is ambiguous.
    pub fn parse(text: &str, default_zone: Tz) -> Result<Schedule> {
        let input = text.trim();
        if input.is_empty() {
            return Err(Error::Empty {
                what: "schedule",
                expected: "a calendar event such as \"daily\" or \"mon..fri 02:00\", or a cron expression such as \"cron:0 2 * * *\"",
            });
        }
        if let Some(rest) = strip_prefix_ignore_case(input, "cron:") {
            return CronExpr::parse_in(rest, default_zone, input).map(Schedule::Cron);
        }
        match CalendarEvent::parse(input, default_zone) {
            Ok(event) => Ok(Schedule::Calendar(event)),
            Err(_) if cron::is_bare_cron(input) => {
                CronExpr::parse_in(input, default_zone, input).map(Schedule::Cron)
            }
            Err(e) => Err(e),
        }
    }

    /// The zone whose wall clock the schedule follows.
    pub fn zone(&self) -> Tz {
        match self {
            Schedule::Calendar(e) => e.zone(),
            Schedule::Cron(c) => c.zone(),
        }
    }

    /// Was the zone written in the schedule's text?
    pub fn zone_is_explicit(&self) -> bool {
        match self {
            Schedule::Calendar(e) => e.zone_is_explicit(),
            Schedule::Cron(c) => c.zone_is_explicit(),
        }
    }

    /// The same schedule, following `zone` unless its text names a zone (what a daemon does
    /// after deserializing, which assumes UTC).
    pub fn with_default_zone(self, zone: Tz) -> Schedule {
        match self {
            Schedule::Calendar(e) => Schedule::Calendar(e.with_default_zone(zone)),
            Schedule::Cron(c) => Schedule::Cron(c.with_default_zone(zone)),
        }
    }

    /// The first run strictly after `t`, or `None` if the schedule never runs again.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Calendar(e) => e.next_after(t),
            Schedule::Cron(c) => c.next_after(t),
        }
    }

    /// The runs strictly after `t`, in order (ends when the schedule does).
    pub fn upcoming(&self, t: DateTime<Utc>) -> Upcoming<'_> {
        Upcoming {
            schedule: self,
            cursor: Some(t),
        }
    }

    /// The runs due in `(last_run, now]`: the earliest `limit` of them, whether there were
    /// more, and the latest. Bounded work whatever the gap; when the clock went back
    /// (`now <= last_run`) nothing is due.
    pub fn missed(&self, last_run: DateTime<Utc>, now: DateTime<Utc>, limit: usize) -> Missed {
        let mut missed = Missed::default();
        if now <= last_run {
            return missed;
        }
        let mut cursor = last_run;
        while let Some(next) = self.next_after(cursor).filter(|&n| n <= now) {
            if missed.times.len() == limit {
                missed.truncated = true;
                break;
            }
            missed.times.push(next);
            cursor = next;
        }
        missed.latest = if missed.truncated {
            self.latest_in(last_run, now)
        } else {
            missed.times.last().copied()
        };
        missed
    }

    /// The latest run in `(after, now]`, by bisection: `next_after` is monotone, so the
    /// instants whose next run is due by `now` form an interval starting at `after`, and the
    /// next run after its end is the latest. About 40 searches whatever the span.
    fn latest_in(&self, after: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let due = |x: DateTime<Utc>| self.next_after(x).filter(|&n| n <= now);
        due(after)?;
        // Invariant: a run after `lo` is due by `now`, none after `hi` is.
        let (mut lo, mut hi) = (after, now);
        while hi - lo > TimeDelta::seconds(1) {
            let mid = lo + (hi - lo) / 2;
            if due(mid).is_some() {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        // Runs fall on whole seconds, and every one due after `lo` lies in (lo, hi]: at
        // most one.
        due(lo)
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// The runs of a schedule after an instant: [`Schedule::upcoming`].
#[derive(Debug, Clone)]
pub struct Upcoming<'a> {
    schedule: &'a Schedule,
    cursor: Option<DateTime<Utc>>,
}

impl Iterator for Upcoming<'_> {
    type Item = DateTime<Utc>;

    fn next(&mut self) -> Option<DateTime<Utc>> {
        let next = self.schedule.next_after(self.cursor?);
        self.cursor = next;
        next
    }
}

impl fmt::Display for Schedule {
    /// The normalized text: a calendar event's normalized form, or `cron:` and the fields;
    /// the zone only when the text named one. `Schedule::parse` of it gives the same schedule
    /// back (with the same default zone).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Calendar(e) => e.fmt(f),
            Schedule::Cron(c) => c.fmt(f),
        }
    }
}

impl Serialize for Schedule {
    /// As its normalized text.
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Schedule {
    /// From its text; a text naming no zone follows UTC until
    /// [`with_default_zone`](Schedule::with_default_zone) says otherwise.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Schedule::parse(&text, Tz::UTC).map_err(serde::de::Error::custom)
    }
}
