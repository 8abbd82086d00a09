//! The one tokenizer behind sizes, durations and calendar spans: a text is a sequence of
//! `NUMBER[UNIT]` terms, `NUMBER` being digits with an optional decimal part (`1`, `1.5`),
//! `UNIT` a run of ASCII letters (possibly empty). Spaces may stand between any two parts.
//! What the units mean is the caller's: each grammar has its own table.

/// A decimal number as written: `int + frac / 10^frac_digits`, exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Number {
    pub int: u64,
    pub frac: u64,
    pub frac_digits: u32,
}

/// At most this many digits after the point (more cannot change a result kept in whole
/// bytes or milliseconds of a sane magnitude, and would overflow the arithmetic).
const MAX_FRAC_DIGITS: u32 = 12;

impl Number {
    pub fn is_whole(&self) -> bool {
        self.frac_digits == 0
    }

    /// `self × unit`, exactly, if that is a whole number.
    pub fn times(&self, unit: u128) -> Result<u128, Inexact> {
        let int = u128::from(self.int)
            .checked_mul(unit)
            .ok_or(Inexact::TooLarge)?;
        if self.frac == 0 {
            return Ok(int);
        }
        let scale = 10u128.pow(self.frac_digits);
        let frac = u128::from(self.frac)
            .checked_mul(unit)
            .ok_or(Inexact::TooLarge)?;
        if frac % scale != 0 {
            return Err(Inexact::TooFine);
        }
        int.checked_add(frac / scale).ok_or(Inexact::TooLarge)
    }
}

/// Why a number times a unit is not a whole number of the smallest unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inexact {
    TooLarge,
    /// A fraction of the smallest unit (half a byte, a microsecond).
    TooFine,
}

/// One `NUMBER[UNIT]` term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Term<'a> {
    pub number: Number,
    pub unit: &'a str,
}

/// Split `s` into terms; `Err` says what is wrong (the caller names the text).
pub(crate) fn terms(s: &str) -> Result<Vec<Term<'_>>, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let skip_spaces = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    skip_spaces(&mut i);
    if i == b.len() {
        return Err("it is empty".into());
    }
    while i < b.len() {
        let start = i;
        let mut int: u64 = 0;
        while i < b.len() && b[i].is_ascii_digit() {
            int = int
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(b[i] - b'0')))
                .ok_or("a number is too large")?;
            i += 1;
        }
        if i == start {
            return Err(match s[i..].chars().next() {
                Some(c) if c.is_ascii_alphabetic() || c == '.' => {
                    format!("a number must come before {:?}", &s[i..])
                }
                Some(c) => format!("unexpected character {c:?}"),
                None => "it ends early".into(),
            });
        }
        let (mut frac, mut frac_digits) = (0u64, 0u32);
        if i < b.len() && b[i] == b'.' {
            i += 1;
            let digits = i;
            while i < b.len() && b[i].is_ascii_digit() {
                if frac_digits == MAX_FRAC_DIGITS {
                    return Err(format!(
                        "more than {MAX_FRAC_DIGITS} digits after the decimal point"
                    ));
                }
                frac = frac * 10 + u64::from(b[i] - b'0');
                frac_digits += 1;
                i += 1;
            }
            if i == digits {
                return Err("a decimal point must be followed by digits".into());
            }
        }
        skip_spaces(&mut i);
        let unit_start = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &s[unit_start..i];
        skip_spaces(&mut i);
        if let Some(c) = s[i..].chars().next()
            && !c.is_ascii_digit()
        {
            return Err(format!("unexpected character {c:?}"));
        }
        out.push(Term {
            number: Number {
                int,
                frac,
                frac_digits,
            },
            unit,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(int: u64, frac: u64, frac_digits: u32) -> Number {
        Number {
            int,
            frac,
            frac_digits,
        }
    }

    #[test]
    fn splits_terms() {
        let t = terms(" 1h 30m").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].number, t[0].unit), (n(1, 0, 0), "h"));
        assert_eq!((t[1].number, t[1].unit), (n(30, 0, 0), "m"));
        let t = terms("1.25 GiB").unwrap();
        assert_eq!((t[0].number, t[0].unit), (n(1, 25, 2), "GiB"));
        assert_eq!(terms("42").unwrap()[0].unit, "");
        for bad in [
            "",
            "  ",
            "h",
            "1h-2m",
            "-1",
            "1.",
            ".5",
            "1,5",
            "1h!",
            "99999999999999999999",
        ] {
            assert!(terms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exact_products() {
        assert_eq!(n(1, 5, 1).times(1024), Ok(1536));
        assert_eq!(n(1, 5, 1).times(1), Err(Inexact::TooFine));
        assert!(n(u64::MAX, 0, 0).times(u128::from(u64::MAX)).is_ok());
        assert_eq!(n(0, 999_999_999_999, 12).times(1000), Err(Inexact::TooFine));
    }
}
