//! The pieces calendar events and time frames are made of: numeric fields (`*`, `5`, `1,15`,
//! `1..5`, `*/2`, `1/3`, `8..18/2`) and weekday sets (`mon`, `Sat,Sun`, `mon..fri`).

use std::fmt;

use chrono::Weekday;

use crate::error::{Error, Result};

/// One numeric field's place: its name in messages, its bounds and its printed width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Kind {
    pub name: &'static str,
    pub min: u32,
    pub max: u32,
    pub width: usize,
}

pub(crate) const YEAR: Kind = Kind {
    name: "year",
    min: 1970,
    max: 9999,
    width: 4,
};
pub(crate) const MONTH: Kind = Kind {
    name: "month",
    min: 1,
    max: 12,
    width: 2,
};
pub(crate) const DAY: Kind = Kind {
    name: "day",
    min: 1,
    max: 31,
    width: 2,
};
/// Days counted back from the month's end after `~` (`~01` is the last day).
pub(crate) const DAY_FROM_END: Kind = Kind {
    name: "day before the month's end",
    min: 1,
    max: 31,
    width: 2,
};
pub(crate) const HOUR: Kind = Kind {
    name: "hour",
    min: 0,
    max: 23,
    width: 2,
};
pub(crate) const MINUTE: Kind = Kind {
    name: "minute",
    min: 0,
    max: 59,
    width: 2,
};
pub(crate) const SECOND: Kind = Kind {
    name: "second",
    min: 0,
    max: 59,
    width: 2,
};

const FIELD_SYNTAX: &str =
    "a number, *, a list such as 1,15, a range such as 1..5 or a repetition such as */2 or 1/3";
const FROM_END_SYNTAX: &str = "a number of days back from the month's end (~01 is the last day), a list such as ~01,02 or a repetition towards the end such as ~07/1";

/// One comma-separated item of a numeric field.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Part {
    /// `*`
    Any,
    /// `N`
    Value(u32),
    /// `A..B`
    Range(u32, u32),
    /// `*/STEP` (no start), `S/STEP`, `A..B/STEP`.
    Repeat {
        start: Option<u32>,
        end: Option<u32>,
        step: u32,
    },
}

impl Part {
    fn first(&self, kind: Kind) -> u32 {
        match *self {
            Part::Any | Part::Repeat { start: None, .. } => kind.min,
            Part::Value(v) | Part::Range(v, _) => v,
            Part::Repeat { start: Some(s), .. } => s,
        }
    }

    /// The smallest value `>= v` this part matches, counting upwards.
    fn next_at_or_after(&self, kind: Kind, v: u32) -> Option<u32> {
        match *self {
            Part::Any => (v <= kind.max).then_some(v),
            Part::Value(n) => (n >= v).then_some(n),
            Part::Range(a, b) => {
                let c = v.max(a);
                (c <= b).then_some(c)
            }
            Part::Repeat { start, end, step } => {
                let s = start.unwrap_or(kind.min);
                let e = end.unwrap_or(kind.max);
                let c = if v <= s {
                    s
                } else {
                    s + (v - s).div_ceil(step) * step
                };
                (c <= e).then_some(c)
            }
        }
    }
}

/// A numeric field: its parts sorted and without duplicates (`[Any]` when `*` is among them).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Field {
    parts: Vec<Part>,
    kind: Kind,
    /// For `DAY_FROM_END`: repetitions count towards the month's end (downwards).
    from_end: bool,
}

impl Field {
    pub fn any(kind: Kind) -> Field {
        Field {
            parts: vec![Part::Any],
            kind,
            from_end: false,
        }
    }

    pub fn is_any(&self) -> bool {
        self.parts == [Part::Any]
    }

    /// Parses a field; `input` is the whole text, for messages.
    pub fn parse(text: &str, kind: Kind, input: &str) -> Result<Field> {
        let mut parts = Vec::new();
        if text.is_empty() {
            return Err(Error::invalid(kind.name, text, input, FIELD_SYNTAX));
        }
        for item in text.split(',') {
            parts.push(parse_part(item, kind, input)?);
        }
        Ok(Field::normalized(parts, kind, false))
    }

    /// Parses the day field after `~`: values, lists and repetitions counted back from the
    /// month's end.
    pub fn parse_from_end(text: &str, input: &str) -> Result<Field> {
        let kind = DAY_FROM_END;
        let mut parts = Vec::new();
        for item in text.split(',') {
            let part = parse_part(item, kind, input)?;
            match part {
                Part::Value(_)
                | Part::Repeat {
                    start: Some(_),
                    end: None,
                    ..
                } => parts.push(part),
                _ => return Err(Error::invalid(kind.name, item, input, FROM_END_SYNTAX)),
            }
        }
        Ok(Field::normalized(parts, kind, true))
    }

    fn normalized(mut parts: Vec<Part>, kind: Kind, from_end: bool) -> Field {
        if parts.contains(&Part::Any) {
            parts = vec![Part::Any];
        }
        parts.sort_by(|a, b| (a.first(kind), a).cmp(&(b.first(kind), b)));
        parts.dedup();
        Field {
            parts,
            kind,
            from_end,
        }
    }

    /// Does the field match `v`? (For `~` fields, `v` counts back from the end: 1 = last.)
    pub fn contains(&self, v: u32) -> bool {
        if self.from_end {
            return self.parts.iter().any(|p| match *p {
                Part::Value(n) => n == v,
                Part::Repeat {
                    start: Some(s),
                    step,
                    ..
                } => v <= s && (s - v).is_multiple_of(step),
                _ => false,
            });
        }
        self.parts
            .iter()
            .any(|p| p.next_at_or_after(self.kind, v) == Some(v))
    }

    /// The smallest matched value `>= v` (not for `~` fields).
    pub fn next_at_or_after(&self, v: u32) -> Option<u32> {
        self.parts
            .iter()
            .filter_map(|p| p.next_at_or_after(self.kind, v))
            .min()
    }

    /// The matched values as bits (fields whose maximum is below 64).
    pub fn mask(&self) -> u64 {
        (self.kind.min..=self.kind.max.min(63))
            .filter(|&v| self.contains(v))
            .fold(0, |m, v| m | (1u64 << v))
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.kind.width;
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match *part {
                Part::Any => f.write_str("*")?,
                Part::Value(v) => write!(f, "{v:0w$}")?,
                Part::Range(a, b) => write!(f, "{a:0w$}..{b:0w$}")?,
                Part::Repeat {
                    start: None, step, ..
                } => write!(f, "*/{step}")?,
                Part::Repeat {
                    start: Some(s),
                    end: None,
                    step,
                } => write!(f, "{s:0w$}/{step}")?,
                Part::Repeat {
                    start: Some(s),
                    end: Some(e),
                    step,
                } => write!(f, "{s:0w$}..{e:0w$}/{step}")?,
            }
        }
        Ok(())
    }
}

fn parse_part(item: &str, kind: Kind, input: &str) -> Result<Part> {
    let syntax = || Error::invalid(kind.name, item, input, FIELD_SYNTAX);
    let (base, step) = match item.split_once('/') {
        Some((base, step)) => (base, Some(step)),
        None => (item, None),
    };
    let step = match step {
        None => None,
        Some(s) => {
            let span = kind.max - kind.min + 1;
            let n = number(s).ok_or_else(syntax)?;
            if n == 0 || n > span {
                return Err(Error::invalid(
                    kind.name,
                    item,
                    input,
                    format!("a repetition between 1 and {span} after \"/\""),
                ));
            }
            Some(n)
        }
    };
    let value = |text: &str| -> Result<u32> {
        let v = number(text).ok_or_else(syntax)?;
        if v < kind.min || v > kind.max {
            return Err(Error::invalid(
                kind.name,
                text,
                input,
                format!("{}..{}", kind.min, kind.max),
            ));
        }
        Ok(v)
    };
    if base == "*" {
        return Ok(match step {
            None => Part::Any,
            Some(step) => Part::Repeat {
                start: None,
                end: None,
                step,
            },
        });
    }
    if let Some((a, b)) = base.split_once("..") {
        let (a, b) = (value(a)?, value(b)?);
        if a > b {
            return Err(Error::invalid(
                kind.name,
                item,
                input,
                "a range whose start is not after its end, such as 1..5",
            ));
        }
        return Ok(match step {
            None => Part::Range(a, b),
            Some(step) => Part::Repeat {
                start: Some(a),
                end: Some(b),
                step,
            },
        });
    }
    let v = value(base)?;
    Ok(match step {
        None => Part::Value(v),
        Some(step) => Part::Repeat {
            start: Some(v),
            end: None,
            step,
        },
    })
}

/// A plain decimal number of at most 9 digits (no sign, no spaces).
pub(crate) fn number(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 9 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A set of weekdays (bit 0 Monday … bit 6 Sunday).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Weekdays(u8);

const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const LONG_NAMES: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];
const WEEKDAY_SYNTAX: &str =
    "weekday names (mon or monday, any case), a list such as sat,sun or a range such as mon..fri";

impl Weekdays {
    /// Every day of the week.
    pub const ALL: Weekdays = Weekdays(0x7f);

    /// Does the set hold `day`?
    pub fn contains(self, day: Weekday) -> bool {
        self.0 & (1 << day.num_days_from_monday()) != 0
    }

    /// Parses `mon`, `Monday`, `sat,sun`, `mon..fri`, `mon,wed..fri` (a trailing comma is
    /// allowed, as systemd does); `input` is the whole text, for messages.
    pub(crate) fn parse(text: &str, input: &str) -> Result<Weekdays> {
        let text = text.strip_suffix(',').unwrap_or(text);
        let mut bits = 0u8;
        for item in text.split(',') {
            let day = |name: &str| {
                weekday_index(name)
                    .ok_or_else(|| Error::invalid("weekday", name, input, WEEKDAY_SYNTAX))
            };
            match item.split_once("..") {
                Some((a, b)) => {
                    let (a, b) = (day(a)?, day(b)?);
                    if a > b {
                        return Err(Error::invalid(
                            "weekday range",
                            item,
                            input,
                            "a range running forward within one week from Monday to Sunday, such as fri..sun",
                        ));
                    }
                    for d in a..=b {
                        bits |= 1 << d;
                    }
                }
                None => bits |= 1 << day(item)?,
            }
        }
        Ok(Weekdays(bits))
    }
}

fn weekday_index(name: &str) -> Option<u8> {
    let lower = name.to_ascii_lowercase();
    (0..7u8).find(|&i| {
        let i = usize::from(i);
        lower == LONG_NAMES[i] || lower == DAY_NAMES[i].to_ascii_lowercase()
    })
}

impl fmt::Display for Weekdays {
    /// Runs of three or more days as ranges, others as a list: `Mon..Thu,Sat,Sun`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut d = 0usize;
        while d < 7 {
            if self.0 & (1 << d) == 0 {
                d += 1;
                continue;
            }
            let mut e = d;
            while e + 1 < 7 && self.0 & (1 << (e + 1)) != 0 {
                e += 1;
            }
            let mut item = |s: String| -> fmt::Result {
                if !first {
                    f.write_str(",")?;
                }
                first = false;
                f.write_str(&s)
            };
            if e - d >= 2 {
                item(format!("{}..{}", DAY_NAMES[d], DAY_NAMES[e]))?;
            } else {
                for name in &DAY_NAMES[d..=e] {
                    item(name.to_string())?;
                }
            }
            d = e + 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(text: &str, kind: Kind) -> Result<Field> {
        Field::parse(text, kind, text)
    }

    #[test]
    fn values_lists_ranges_repetitions() {
        let f = field("1,15", DAY).unwrap();
        assert!(f.contains(1) && f.contains(15) && !f.contains(2));
        let f = field("1..5", DAY).unwrap();
        assert!((1..=5).all(|d| f.contains(d)) && !f.contains(6));
        let f = field("*/2", HOUR).unwrap();
        assert_eq!(f.mask(), (0..24).step_by(2).fold(0, |m, h| m | 1 << h));
        let f = field("1/3", MONTH).unwrap();
        assert!([1, 4, 7, 10].iter().all(|&m| f.contains(m)) && !f.contains(2));
        let f = field("8..18/5", HOUR).unwrap();
        assert_eq!(
            (0..24).filter(|&h| f.contains(h)).collect::<Vec<_>>(),
            [8, 13, 18]
        );
        assert_eq!(f.next_at_or_after(9), Some(13));
        assert_eq!(f.next_at_or_after(19), None);
        let f = field("2000/4", YEAR).unwrap();
        assert!(f.contains(2024) && !f.contains(2025));
        assert_eq!(f.next_at_or_after(2025), Some(2028));
    }

    #[test]
    fn normalized_display() {
        assert_eq!(field("3,1,2", DAY).unwrap().to_string(), "01,02,03");
        assert_eq!(field("5,*", MINUTE).unwrap().to_string(), "*");
        assert_eq!(field("2/3", MINUTE).unwrap().to_string(), "02/3");
        assert_eq!(
            field("*/15,1..4", MINUTE).unwrap().to_string(),
            "*/15,01..04"
        );
        assert_eq!(field("2024", YEAR).unwrap().to_string(), "2024");
    }

    #[test]
    fn field_errors_name_the_part() {
        let e = Field::parse("25", HOUR, "mon 25:00").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid hour \"25\" in \"mon 25:00\": expected 0..23"
        );
        for bad in [
            "", "a", "1..", "..2", "5..1", "*/0", "1/61", "-1", "+1", "1.5", "1,,2",
        ] {
            assert!(field(bad, MINUTE).is_err(), "{bad:?} accepted");
        }
        assert!(field("1969", YEAR).is_err());
        assert!(Field::parse_from_end("1..3", "x").is_err());
        assert!(Field::parse_from_end("*", "x").is_err());
    }

    #[test]
    fn from_end_counts_towards_the_end() {
        let f = Field::parse_from_end("07/1", "x").unwrap();
        assert!((1..=7).all(|k| f.contains(k)) && !f.contains(8));
        let f = Field::parse_from_end("05/2", "x").unwrap();
        assert_eq!(
            (1..=31).filter(|&k| f.contains(k)).collect::<Vec<_>>(),
            [1, 3, 5]
        );
    }

    #[test]
    fn weekdays() {
        let w = Weekdays::parse("mon,wed..fri", "x").unwrap();
        assert_eq!(w.to_string(), "Mon,Wed..Fri");
        assert_eq!(
            Weekdays::parse("Sat,Thu,Mon..Wed,Sat..Sun", "x")
                .unwrap()
                .to_string(),
            "Mon..Thu,Sat,Sun"
        );
        assert_eq!(
            Weekdays::parse("MONDAY,tuesday,", "x").unwrap().to_string(),
            "Mon,Tue"
        );
        assert!(Weekdays::parse("sun..mon", "x").is_err());
        assert!(Weekdays::parse("funday", "x").is_err());
        assert!(Weekdays::parse("mon,,tue", "x").is_err());
        let e = Weekdays::parse("mon..fry", "mon..fry 02:00").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid weekday \"fry\" in \"mon..fry 02:00\"")
        );
    }
}
