//! Cron expressions, parsed and matched by the `croner` crate (MIT): 5 fields
//! (`minute hour day-of-month month day-of-week`) or 6 with seconds first, names (`MON`,
//! `JAN`), `L`, `W`, `#`, `@daily`-style nicknames; day-of-month and day-of-week both
//! restricted match either (Vixie cron). Instants come from [`crate::zone::next_run`], so a
//! cron expression follows the same DST rule as a calendar event.

use std::fmt;

use chrono::{DateTime, NaiveDateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use crate::error::{Error, Result};
use crate::zone;

/// A cron expression and the zone whose wall clock it follows.
///
/// Equality is by the normalized text (fields separated by single spaces) and the zone.
#[derive(Debug, Clone)]
pub struct CronExpr {
    text: String,
    cron: Cron,
    zone: Tz,
    zone_explicit: bool,
}

impl PartialEq for CronExpr {
    fn eq(&self, other: &Self) -> bool {
        (&self.text, self.zone, self.zone_explicit)
            == (&other.text, other.zone, other.zone_explicit)
    }
}

impl Eq for CronExpr {}

impl std::hash::Hash for CronExpr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (&self.text, self.zone, self.zone_explicit).hash(state);
    }
}

impl CronExpr {
    /// Parses a cron expression (without the `cron:` prefix), optionally followed by a time
    /// zone; `input` is the whole text, for messages.
    pub(crate) fn parse_in(text: &str, default_zone: Tz, input: &str) -> Result<CronExpr> {
        let (body, zone) = zone::split_zone(text.trim(), input)?;
        let text = body.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() {
            return Err(Error::Cron {
                input: input.to_string(),
                reason: "expected 5 fields (minute hour day month weekday) or 6 with seconds first"
                    .to_string(),
            });
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build();
        let cron = parser.parse(&text).map_err(|e| Error::Cron {
            input: input.to_string(),
            reason: e.to_string(),
        })?;
        Ok(CronExpr {
            text,
            cron,
            zone: zone.unwrap_or(default_zone),
            zone_explicit: zone.is_some(),
        })
    }

    /// Parses a cron expression (no `cron:` prefix, an optional trailing zone).
    pub fn parse(text: &str, default_zone: Tz) -> Result<CronExpr> {
        CronExpr::parse_in(text, default_zone, text)
    }

    /// The zone whose wall clock the expression follows.
    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// Was the zone written in the expression?
    pub fn zone_is_explicit(&self) -> bool {
        self.zone_explicit
    }

    /// The same expression, following `zone` unless it names its own.
    pub fn with_default_zone(mut self, zone: Tz) -> CronExpr {
        if !self.zone_explicit {
            self.zone = zone;
        }
        self
    }

    /// Does the wall-clock time `local` match?
    pub fn matches(&self, local: NaiveDateTime) -> bool {
        self.cron.is_time_matching(&local).unwrap_or(false)
    }

    /// The first run strictly after `t` (the crate's DST rule), `None` when there is none
    /// before the year 5000 (croner's limit).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        zone::next_run(&self.zone, t, |from| self.next_local(from))
    }

    fn next_local(&self, from: NaiveDateTime) -> Option<NaiveDateTime> {
        self.cron.find_next_occurrence(&from, true).ok()
    }
}

/// Is `text` (a whole schedule, no prefix) a bare 5-field cron expression, perhaps followed
/// by a time zone?
pub(crate) fn is_bare_cron(text: &str) -> bool {
    let fields: Vec<&str> = text.split_whitespace().collect();
    match fields.as_slice() {
        [_, _, _, _, _] => true,
        [_, _, _, _, _, last] => zone::parse_zone(last).is_some(),
        _ => false,
    }
}

impl fmt::Display for CronExpr {
    /// `cron:FIELDS[ zone]`, e.g. `cron:*/5 * * * * Europe/Berlin`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cron:{}", self.text)?;
        if self.zone_explicit {
            write!(f, " {}", self.zone.name())?;
        }
        Ok(())
    }
}
