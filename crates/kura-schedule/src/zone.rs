//! Time zones: their names in schedule texts, and the one place where wall-clock times become
//! instants (the DST rule, see the crate docs).
//!
//! Calendar events and cron expressions only know how to find the next *wall-clock* time that
//! matches (a [`NaiveDateTime`] in the schedule's zone). [`next_run`] turns that into the next
//! *instant*, so both kinds of schedule share one DST behaviour:
//!
//! - each matching wall-clock time `L` runs at `R(L)`, the first instant whose wall-clock time
//!   is `L` or later. For a time that exists once this is that instant; for a time repeated
//!   after the clocks go back it is the first occurrence; for a time skipped when the clocks
//!   go forward it is the first instant after the gap (several skipped times run once there).
//! - `R` is monotone in `L`, so "the next run after `t`" is `R` of the first matching `L`
//!   with `R(L) > t`.

use chrono::{
    DateTime, Datelike, LocalResult, NaiveDateTime, Offset, TimeDelta, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;

/// Instants before this are treated as this (schedules run between the years 1 and 9999).
fn earliest() -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(-62_135_510_400, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// A trailing time zone token: `UTC` (any case) or an IANA name such as `Europe/Berlin`.
pub(crate) fn parse_zone(token: &str) -> Option<Tz> {
    if token.eq_ignore_ascii_case("utc") {
        return Some(Tz::UTC);
    }
    if token.contains(':') {
        return None;
    }
    token.parse::<Tz>().ok()
}

/// Is the text one token that looks like a (mistyped) zone name rather than a date or time?
pub(crate) fn looks_like_zone(token: &str) -> bool {
    token.contains('/')
        && !token.contains(char::is_whitespace)
        && token.starts_with(|c: char| c.is_ascii_alphabetic())
        && !token.contains(':')
}

pub(crate) const ZONE_SYNTAX: &str = "UTC or an IANA time zone name such as Europe/Berlin";

/// Splits a trailing time zone off `text`: (the rest, the zone if one was given).
/// A last token that looks like a zone but is none is an error.
pub(crate) fn split_zone<'a>(text: &'a str, input: &str) -> crate::Result<(&'a str, Option<Tz>)> {
    let trimmed = text.trim_end();
    let Some((rest, last)) = trimmed.rsplit_once(char::is_whitespace) else {
        return Ok((trimmed, None));
    };
    if let Some(tz) = parse_zone(last) {
        return Ok((rest.trim_end(), Some(tz)));
    }
    if looks_like_zone(last) {
        return Err(crate::Error::invalid("time zone", last, input, ZONE_SYNTAX));
    }
    Ok((trimmed, None))
}

fn offset_secs(tz: &Tz, secs: i64) -> Option<i64> {
    let utc = DateTime::<Utc>::from_timestamp(secs, 0)?.naive_utc();
    Some(i64::from(
        tz.offset_from_utc_datetime(&utc).fix().local_minus_utc(),
    ))
}

/// The wall-clock time at instant `secs`, in seconds since the epoch of local time.
fn local_secs(tz: &Tz, secs: i64) -> Option<i64> {
    Some(secs + offset_secs(tz, secs)?)
}

/// The wall-clock time of `t` in `tz`.
pub(crate) fn local_time(tz: &Tz, t: DateTime<Utc>) -> NaiveDateTime {
    t.with_timezone(tz).naive_local()
}

/// `R(L)`: the first instant whose wall-clock time in `tz` is `local` or later.
pub(crate) fn run_instant(tz: &Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
        LocalResult::None => gap_end(tz, local),
    }
}

/// Every instant whose wall-clock time is exactly `local` (none in a gap, two in a repeat).
pub(crate) fn instants(tz: &Tz, local: NaiveDateTime) -> Vec<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => vec![t.with_timezone(&Utc)],
        LocalResult::Ambiguous(a, b) => vec![a.with_timezone(&Utc), b.with_timezone(&Utc)],
        LocalResult::None => Vec::new(),
    }
}

/// The first instant whose wall-clock time is `local` or later, for a `local` that falls in a
/// gap (the clocks went forward over it): the instant the clocks jumped.
fn gap_end(tz: &Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    let target = local.and_utc().timestamp();
    let before = offset_secs(tz, target - 86_400)?;
    let after = offset_secs(tz, target + 86_400)?;
    let bracket_ok = |lo: i64, hi: i64| -> Option<bool> {
        Some(local_secs(tz, lo)? < target && local_secs(tz, hi)? >= target)
    };
    let (mut lo, mut hi) = (target - after, target - before);
    if after <= before || !bracket_ok(lo, hi)? {
        (lo, hi) = (target - 27 * 3600, target + 27 * 3600);
        if !bracket_ok(lo, hi)? {
            return None;
        }
    }
    // Invariant: local(lo) < target <= local(hi).
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if local_secs(tz, mid)? >= target {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::<Utc>::from_timestamp(hi, 0)
}

/// The first instant in `(from, to]` whose offset differs from `from`'s, if `to`'s does.
fn transition_between(tz: &Tz, from: i64, to: i64) -> Option<i64> {
    let first = offset_secs(tz, from)?;
    if offset_secs(tz, to)? == first {
        return None;
    }
    let (mut lo, mut hi) = (from, to);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if offset_secs(tz, mid)? == first {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(hi)
}

/// Every instant in `(from, to]` at which `tz`'s offset changes (sampled hourly, then
/// narrowed to the second).
pub(crate) fn transitions(tz: &Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let (mut a, end) = (from.timestamp(), to.timestamp());
    let mut found = Vec::new();
    while a < end {
        let b = (a + 3600).min(end);
        if let Some(t) = transition_between(tz, a, b).and_then(|s| DateTime::from_timestamp(s, 0)) {
            found.push(t);
        }
        a = b;
    }
    found
}

/// How many rounds [`next_run`] tries before giving up (only a zone whose clocks go back
/// again and again within a day could need more than two).
const MAX_ROUNDS: usize = 64;

/// The first run strictly after `t`, for a schedule whose wall-clock matches in `tz` are
/// found by `next_local` (the first matching whole-second wall-clock time at or after its
/// argument, `None` when there is none).
pub(crate) fn next_run(
    tz: &Tz,
    t: DateTime<Utc>,
    next_local: impl Fn(NaiveDateTime) -> Option<NaiveDateTime>,
) -> Option<DateTime<Utc>> {
    let t = t.max(earliest());
    if t.year() > 9999 {
        return None;
    }
    let second = TimeDelta::seconds(1);
    let local_t = local_time(tz, t);
    // Matches are whole seconds: the first one later than local_t is at or after this.
    let mut from = local_t.with_nanosecond(0)?.checked_add_signed(second)?;
    for _ in 0..MAX_ROUNDS {
        let local = next_local(from)?;
        let run = run_instant(tz, local)?;
        if run > t {
            return Some(run);
        }
        // `local` is later than t's wall-clock time, yet it first came before t: t lies in
        // the stretch the clocks repeat after going back, and `local` already ran in the
        // first pass. Go on from where the first pass ended.
        from = match transition_between(tz, run.timestamp(), t.timestamp()) {
            Some(jump) => {
                let old = offset_secs(tz, run.timestamp())?;
                let end = DateTime::<Utc>::from_timestamp(jump + old, 0)?.naive_utc();
                if end > local {
                    end
                } else {
                    local.checked_add_signed(second)?
                }
            }
            None => local.checked_add_signed(second)?,
        };
    }
    None
}
