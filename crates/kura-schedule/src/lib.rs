//! kura's schedules: when the daemon runs jobs ([`Schedule`]: systemd-style calendar events
//! or cron expressions) and when traffic may flow ([`Timeframe`]: recurring windows of the
//! week), each in a time zone.
//!
//! This crate only computes times. It owns no clock, no timers and no state: the daemon asks
//! [`Schedule::next_after`] when to wake, [`Schedule::missed`] what it slept through, and
//! [`Timeframe::contains`] / [`Timeframe::next_change_after`] whether a window is open.
//!
//! # Calendar events
//! The useful subset of `systemd.time(7)`, written here: the only Rust implementation (in
//! Proxmox Backup Server) is AGPL, and none of it was copied.
//! ```text
//! event    := shorthand [zone] | [weekdays] [date] [time] [zone]   (at least one part)
//! weekdays := day { "," day } | day ".." day …  mon, Mon, monday (any case); sat,sun; mon..fri; mon,wed..fri
//! date     := [YEAR "-"] MONTH "-" DAY | [YEAR "-"] MONTH "~" DAY         (omitted: every day)
//! time     := HOUR ":" MINUTE [":" SECOND]                                  (omitted: 00:00:00)
//! field    := item { "," item }
//! item     := "*" | N | A ".." B | "*/" STEP | N "/" STEP | A ".." B "/" STEP
//! zone     := UTC | an IANA name such as Europe/Berlin                    (omitted: the default zone)
//! ```
//! - Shorthands (any case): `minutely` = `*-*-* *:*:00`, `hourly` = `*-*-* *:00:00`, `daily`
//!   = `*-*-* 00:00:00`, `weekly` = `Mon *-*-* 00:00:00`, `monthly` = `*-*-01 00:00:00`,
//!   `yearly` / `annually` = `*-01-01 00:00:00`, `quarterly` = `*-01,04,07,10-01 00:00:00`,
//!   `semiannually` = `*-01,07-01 00:00:00`.
//! - `N/STEP` matches N, N+STEP, N+2·STEP … up to the field's maximum; `A..B/STEP` stops at
//!   B; `*/STEP` starts at the field's minimum. Years are 1970..9999, months 1..12, days
//!   1..31, hours 0..23, minutes and seconds 0..59.
//! - A day that a month lacks never matches it: `*-*-31` runs only in 31-day months,
//!   `*-02-29` only in leap years.
//! - `~` counts days back from the month's end: `*-*~01` is the last day of every month,
//!   `*-02~03` the third-last day of February, and `Mon *-05~07/1` (the last seven days of
//!   May, on a Monday) the last Monday of May. After `~` only values, lists and repetitions
//!   are accepted (repetitions count towards the month's end).
//! - Weekdays and date must both match (`Fri *-*-13`: Friday the 13th).
//! - Not supported: fractional seconds, two-digit years, weekday ranges that wrap around
//!   the week (`sun..mon`: write `mon,sun`), time spans (`now`, `+5min`).
//! - [`Display`](std::fmt::Display) prints the normalized form (weekdays as `Mon..Fri`,
//!   every field written out and zero-padded, lists sorted): `mon..fri 2:00` →
//!   `Mon..Fri *-*-* 02:00:00`, `daily UTC` → `*-*-* 00:00:00 UTC`. Parsing it gives the
//!   same event back.
//!
//! # Cron expressions
//! Parsed and matched by the `croner` crate (MIT licence; well kept, and unlike the `cron`
//! crate it takes 5-field expressions and runs fixed-time jobs inside a DST gap instead of
//! skipping them): `minute hour day-of-month month day-of-week`, or 6 fields with seconds
//! first; names (`MON`, `JAN`), `L`, `W`, `#`, `@daily`-style nicknames; when both
//! day-of-month and day-of-week are restricted either matches (Vixie cron). A trailing zone
//! may follow the fields. Runs are searched up to the year 5000 (croner's limit).
//!
//! # Which is which
//! [`Schedule::parse`]: a text starting with `cron:` (any case) is a cron expression. Any
//! other text is a calendar event; if it is not a valid one but has exactly five fields
//! (perhaps followed by a zone), it is a cron expression. No calendar event has five
//! fields, so nothing is read both ways; 6-field cron expressions need the prefix.
//! Schedules print as their normalized text, cron expressions with the `cron:` prefix.
//!
//! # Time zones and the DST rule
//! Every schedule follows the wall clock of one zone: the one its text names, or the default
//! the caller passes to `parse` (the daemon passes its configured or the local zone).
//! Serde (de)serializes the normalized text; a deserialized text that names no zone follows
//! UTC until `with_default_zone` gives it the configured one.
//!
//! When the clocks change, each matching wall-clock time runs **once**:
//! - a time inside a spring-forward gap (02:30 on the night Europe/Berlin goes from 02:00
//!   to 03:00) runs at the first instant after the gap (03:00 CEST); several skipped times
//!   run once there together;
//! - a time repeated after a fall-back (02:30 on the night the clocks go from 03:00 back to
//!   02:00) runs at its first occurrence (02:30 CEST), not again an hour later. This holds
//!   for every matching time, so `*:0/15` has no runs during the repeated hour's second
//!   pass.
//!
//! The rule is applied in one place (`zone.rs`) to both kinds of schedule: croner is asked
//! only for wall-clock matches, never for instants (on its own it would run interval jobs in
//! both passes of a repeated hour). Put formally, a matching wall-clock time `L` runs at the
//! first instant whose wall-clock time is `L` or later; so runs never go backwards
//! (`next_after` is monotone) and none is skipped.
//!
//! Time frames are different: they follow the wall clock without this rule (see
//! [`timeframe`]).
//!
//! # Range
//! Runs fall between the years 1 and 9999 (cron: 5000); instants before the year 1 are taken
//! as the year 1. Searches are bounded: an event that can never match (`*-02-30`,
//! `2020-*-*` after 2020) gives `None` after scanning at most one 400-year cycle.

mod calendar;
mod cron;
mod error;
mod field;
mod schedule;
pub mod timeframe;
mod zone;

pub use calendar::CalendarEvent;
pub use chrono_tz::Tz;
pub use cron::CronExpr;
pub use error::{Error, Result};
pub use field::Weekdays;
pub use schedule::{Missed, Schedule, Upcoming};
pub use timeframe::Timeframe;
