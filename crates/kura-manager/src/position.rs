//! What an extent's `position` says, for the catalog's rows and the records on the targets
//! (specified in `docs/FORMAT.md`):
//! - `SNAPSHOT` (64 hex digits): a whole copy — the target holds the complete repository
//!   data of the backup and its snapshot manifest (mirror mode; healed targets).
//! - `SNAPSHOT:INDEX`: a section — the packs listed by index file `INDEX` on that target
//!   (fail-over mode), part of the backup whose manifest is `SNAPSHOT`. An empty `INDEX`
//!   marks a target that holds only the manifest.

use std::fmt;
use std::str::FromStr;

use kura_repo::id::Id;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    Copy(Id),
    Section { snapshot: Id, index: String },
}

impl Position {
    pub fn snapshot(&self) -> Id {
        match self {
            Position::Copy(s) | Position::Section { snapshot: s, .. } => *s,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Copy(s) => write!(f, "{}", s.to_hex()),
            Position::Section { snapshot, index } => write!(f, "{}:{index}", snapshot.to_hex()),
        }
    }
}

impl FromStr for Position {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Position> {
        let bad =
            || crate::Error::Invalid(format!("extent position {s:?} is not SNAPSHOT[:INDEX]"));
        let (snap, index) = match s.split_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let snapshot: Id = snap.parse().map_err(|_| bad())?;
        match index {
            None => Ok(Position::Copy(snapshot)),
            Some(i) if i.is_empty() || i.parse::<Id>().is_ok() => Ok(Position::Section {
                snapshot,
                index: i.to_string(),
            }),
            Some(_) => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn positions_round_trip(a in any::<[u8; 32]>(), b in any::<[u8; 32]>(), kind in 0..3u8) {
            let snapshot = Id(a);
            let p = match kind {
                0 => Position::Copy(snapshot),
                1 => Position::Section { snapshot, index: Id(b).to_hex() },
                _ => Position::Section { snapshot, index: String::new() },
            };
            let back: Position = p.to_string().parse().unwrap();
            prop_assert_eq!(back, p);
        }
    }

    #[test]
    fn bad_positions_are_errors() {
        for s in ["", "xyz", "ab:cd", &format!("{}:nothex", "0".repeat(64))] {
            assert!(s.parse::<Position>().is_err(), "{s}");
        }
    }
}
