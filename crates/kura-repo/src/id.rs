//! 256-bit identifiers: chunk ids (keyed BLAKE3 of the plaintext) and file ids (BLAKE3 of the
//! stored bytes of a pack, index file, snapshot or key file).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 256-bit id. Displayed as 64 lower-case hex digits; the short form is the first 8.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Id(pub [u8; 32]);

impl Id {
    pub const LEN: usize = 32;
    /// The all-zero id. Never the id of stored data; used as the zero-chunk marker in fixed
    /// indexes.
    pub const ZERO: Id = Id([0u8; 32]);

    /// Unkeyed BLAKE3 of `data`: the name of a stored file.
    pub fn of_file(data: &[u8]) -> Id {
        Id(*blake3::hash(data).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// First 8 hex digits, as shown in listings.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0u8; 32]
    }

    pub fn from_slice(b: &[u8]) -> Option<Id> {
        <[u8; 32]>::try_from(b).ok().map(Id)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

/// Parsing a full 64-digit hex id failed.
#[derive(Debug, thiserror::Error)]
#[error("not a 64-digit hex id: {0:?}")]
pub struct ParseIdError(pub String);

impl FromStr for Id {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| ParseIdError(s.to_string()))?;
        Ok(Id(out))
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a 32-byte id")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Id, E> {
                Id::from_slice(v).ok_or_else(|| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_bytes(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = Id::of_file(b"x");
        assert_eq!(id.to_hex().parse::<Id>().unwrap(), id);
        assert_eq!(id.short(), id.to_hex()[..8]);
        assert!("zz".parse::<Id>().is_err());
    }
}
