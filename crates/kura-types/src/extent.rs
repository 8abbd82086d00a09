//! [`Extent`]: a byte range, `length` bytes from `offset` — a split area of a volume, a
//! range of changed blocks, the part of a source a section holds.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// `length` bytes from `offset`. Its end is computed checked ([`Extent::end`]): an extent
/// reaching past `u64::MAX` has none, and is never treated as if it wrapped around.
///
/// Serialized as `{"offset": …, "length": …}`; also read from `[offset, length]` (how areas
/// were written before).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
}

impl Extent {
    pub const fn new(offset: u64, length: u64) -> Self {
        Extent { offset, length }
    }

    /// The first byte after it; `None` if that is past `u64::MAX`.
    pub const fn end(&self) -> Option<u64> {
        self.offset.checked_add(self.length)
    }

    pub const fn is_empty(&self) -> bool {
        self.length == 0
    }

    /// Whether it lies inside `[0, size)` (an extent without an end never does).
    pub fn fits(&self, size: u64) -> bool {
        self.end().is_some_and(|e| e <= size)
    }

    /// Whether `other` lies wholly inside it.
    pub fn contains(&self, other: &Extent) -> bool {
        match (self.end(), other.end()) {
            (Some(a), Some(b)) => self.offset <= other.offset && b <= a,
            _ => false,
        }
    }

    /// The bytes both hold; `None` when they share none. An extent without an end counts as
    /// reaching `u64::MAX`.
    pub fn overlap(&self, other: &Extent) -> Option<Extent> {
        let start = self.offset.max(other.offset);
        let end = self
            .end()
            .unwrap_or(u64::MAX)
            .min(other.end().unwrap_or(u64::MAX));
        (start < end).then(|| Extent::new(start, end - start))
    }
}

impl fmt::Display for Extent {
    /// `OFFSET:LENGTH` in bytes, as areas are written on the command line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.offset, self.length)
    }
}

impl<'de> Deserialize<'de> for Extent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Pair(u64, u64),
            Object { offset: u64, length: u64 },
        }
        Ok(match Repr::deserialize(d)? {
            Repr::Pair(offset, length) | Repr::Object { offset, length } => {
                Extent { offset, length }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_are_checked() {
        assert_eq!(Extent::new(10, 5).end(), Some(15));
        assert_eq!(Extent::new(u64::MAX, 1).end(), None);
        assert!(Extent::new(0, 64).fits(64));
        assert!(!Extent::new(1, 64).fits(64));
        assert!(!Extent::new(u64::MAX, 2).fits(u64::MAX));
    }

    #[test]
    fn overlaps_and_containment() {
        let a = Extent::new(0, 16);
        assert_eq!(a.overlap(&Extent::new(8, 16)), Some(Extent::new(8, 8)));
        assert_eq!(a.overlap(&Extent::new(16, 4)), None);
        assert_eq!(a.overlap(&Extent::new(4, 0)), None);
        assert!(a.contains(&Extent::new(4, 12)));
        assert!(!a.contains(&Extent::new(4, 13)));
        // Near the top of the range: no wrap-around.
        let top = Extent::new(u64::MAX - 4, 10);
        assert_eq!(
            top.overlap(&Extent::new(u64::MAX - 8, 6)),
            Some(Extent::new(u64::MAX - 4, 2))
        );
        assert!(!top.contains(&Extent::new(u64::MAX - 4, 1)));
    }

    #[test]
    fn serde_object_or_pair() {
        let e = Extent::new(4 << 20, 8 << 20);
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(text, r#"{"offset":4194304,"length":8388608}"#);
        assert_eq!(serde_json::from_str::<Extent>(&text).unwrap(), e);
        assert_eq!(
            serde_json::from_str::<Extent>("[4194304,8388608]").unwrap(),
            e
        );
        assert!(serde_json::from_str::<Extent>("[1]").is_err());
        assert_eq!(e.to_string(), "4194304:8388608");
    }

    proptest::proptest! {
        #[test]
        fn overlap_is_inside_both(a in proptest::prelude::any::<(u64, u64)>(), b in proptest::prelude::any::<(u64, u64)>()) {
            let (a, b) = (Extent::new(a.0, a.1), Extent::new(b.0, b.1));
            if let Some(o) = a.overlap(&b) {
                proptest::prop_assert!(!o.is_empty());
                proptest::prop_assert!(o.offset >= a.offset && o.offset >= b.offset);
                proptest::prop_assert_eq!(o.overlap(&a), Some(o));
                proptest::prop_assert_eq!(b.overlap(&a), Some(o));
            }
        }
    }
}
