//! [`ByteSize`]: the one size grammar.
//!
//! A size is one number, whole or decimal, with an optional unit (spaces allowed between
//! them; units are not case-sensitive):
//!
//! | unit | means |
//! |---|---|
//! | none, `B` | bytes |
//! | `K`, `KiB` · `M`, `MiB` · `G`, `GiB` · `T`, `TiB` · `P`, `PiB` | 1024, 1024², … (binary, as restic, qemu-img and PBS read them) |
//! | `KB` · `MB` · `GB` · `TB` · `PB` | 1000, 1000², … (decimal SI, as disk vendors and borg mean them) |
//!
//! So `64M` = `64MiB` = 67 108 864 bytes, while `64MB` = 64 000 000 bytes: write the `i`
//! (or no `B`) for binary units. A decimal must come out as whole bytes (`1.5KiB` = 1536,
//! `0.5B` is refused). Whatever a caller needs beyond that (at least 1 MiB, a multiple of
//! 512) it checks itself, with its own message.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ParseError;
use crate::lex::{Inexact, terms};

const EXPECTED: &str = "a number of bytes with an optional unit, e.g. 4096, 512K, 64MiB, 1.5GiB, \
                        10GB (K/KiB = 1024, KB = 1000)";

/// A number of bytes, parsed from the size grammar (module docs). Serialized as a number;
/// deserialized from a number or a text in the grammar. Displayed in the largest binary unit
/// that divides it (`64MiB`, `1536B`), which parses back to the same value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn b(n: u64) -> Self {
        ByteSize(n)
    }
    pub const fn kib(n: u64) -> Self {
        ByteSize(n << 10)
    }
    pub const fn mib(n: u64) -> Self {
        ByteSize(n << 20)
    }
    pub const fn gib(n: u64) -> Self {
        ByteSize(n << 30)
    }

    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// Parse the size grammar (module docs).
    pub fn parse(text: &str) -> Result<ByteSize, ParseError> {
        let err = |why: String| ParseError {
            what: "size",
            text: text.to_string(),
            why,
            expected: EXPECTED,
        };
        let ts = terms(text).map_err(err)?;
        let [t] = ts.as_slice() else {
            return Err(err("give one number and one unit".into()));
        };
        let unit = unit_bytes(t.unit).ok_or_else(|| err(format!("unknown unit {:?}", t.unit)))?;
        let n = t.number.times(u128::from(unit)).map_err(|e| {
            err(match e {
                Inexact::TooLarge => "too large".into(),
                Inexact::TooFine => "not a whole number of bytes".into(),
            })
        })?;
        u64::try_from(n)
            .map(ByteSize)
            .map_err(|_| err("too large".into()))
    }
}

/// Bytes per unit; `None` for an unknown unit.
fn unit_bytes(unit: &str) -> Option<u64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "p" | "pib" => 1 << 50,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "pb" => 1_000_000_000_000_000,
        _ => return None,
    })
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u32); 5] = [
            ("PiB", 50),
            ("TiB", 40),
            ("GiB", 30),
            ("MiB", 20),
            ("KiB", 10),
        ];
        let n = self.0;
        for (name, shift) in UNITS {
            if n != 0 && n.trailing_zeros() >= shift {
                return write!(f, "{}{name}", n >> shift);
            }
        }
        write!(f, "{n}B")
    }
}

impl FromStr for ByteSize {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        ByteSize::parse(s)
    }
}

impl From<ByteSize> for u64 {
    fn from(s: ByteSize) -> u64 {
        s.0
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a number of bytes or a size such as \"64MiB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("a size cannot be negative ({v})")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> u64 {
        ByteSize::parse(s).unwrap_or_else(|e| panic!("{e}")).0
    }

    #[test]
    fn the_grammar() {
        assert_eq!(p("8388608"), 8 << 20);
        assert_eq!(p("512"), 512);
        assert_eq!(p("512B"), 512);
        for k in ["512K", "512k", "512KiB", "512kib", "512 KiB"] {
            assert_eq!(p(k), 512 << 10, "{k}");
        }
        assert_eq!(p("64M"), 64 << 20);
        assert_eq!(p("64MiB"), 64 << 20);
        assert_eq!(p("10G"), 10 << 30);
        assert_eq!(p("1TiB"), 1 << 40);
        assert_eq!(p("2P"), 2 << 50);
        assert_eq!(p("1.5GiB"), 3 << 29);
        assert_eq!(p("0.5K"), 512);
        assert_eq!(p("1KB"), 1000);
        assert_eq!(p("64MB"), 64_000_000);
        assert_eq!(p("10GB"), 10_000_000_000);
        assert_eq!(p("1.5kb"), 1500);
        assert_eq!(p("0"), 0);
        assert_eq!(p(" 7 "), 7);
    }

    #[test]
    fn refusals_name_the_text_and_the_form() {
        for (bad, why) in [
            ("", "empty"),
            ("M", "a number must come before"),
            ("8 X", "unknown unit \"X\""),
            ("12parsecs", "unknown unit"),
            ("-1", "unexpected character '-'"),
            ("0.5", "not a whole number of bytes"),
            ("1.0000001K", "not a whole number of bytes"),
            ("99999999999999999999G", "too large"),
            ("16384P", "too large"),
            ("1G2M", "one number and one unit"),
            ("1,5G", "unexpected character ','"),
        ] {
            let e = ByteSize::parse(bad).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(why), "{bad}: {msg}");
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
            assert!(msg.contains("e.g. 4096"), "{msg}");
        }
    }

    #[test]
    fn display_parses_back() {
        for n in [
            0,
            1,
            512,
            1000,
            1024,
            1536,
            64 << 20,
            3 << 29,
            1 << 40,
            5 << 50,
            u64::MAX,
        ] {
            let s = ByteSize(n).to_string();
            assert_eq!(p(&s), n, "{s}");
        }
        assert_eq!(ByteSize::mib(64).to_string(), "64MiB");
        assert_eq!(ByteSize(1536).to_string(), "1536B");
    }

    #[test]
    fn serde_number_or_text() {
        let v: ByteSize = serde_json::from_str("67108864").unwrap();
        assert_eq!(v, ByteSize::mib(64));
        let v: ByteSize = serde_json::from_str("\"64MiB\"").unwrap();
        assert_eq!(v, ByteSize::mib(64));
        assert_eq!(serde_json::to_string(&v).unwrap(), "67108864");
        let e = serde_json::from_str::<ByteSize>("\"64 furlongs\"").unwrap_err();
        assert!(e.to_string().contains("invalid size"), "{e}");
        assert!(serde_json::from_str::<ByteSize>("-5").is_err());
        assert!(serde_json::from_str::<ByteSize>("1.5").is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "[0-9a-zA-Z. ,-]{0,24}") {
            let _ = ByteSize::parse(&s);
        }

        #[test]
        fn display_round_trips(n in proptest::prelude::any::<u64>()) {
            proptest::prop_assert_eq!(ByteSize::parse(&ByteSize(n).to_string()), Ok(ByteSize(n)));
        }
    }
}
