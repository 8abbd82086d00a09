//! Fixed indexes of images and block devices.
//!
//! An image of `size` bytes is cut into fixed 4 MiB chunks at aligned offsets; the fixed index
//! lists one 32-byte chunk id per chunk, with the all-zero id meaning "all zeros, not stored".
//! The list is split into pieces of at most [`PIECE_ENTRIES`] ids (256 GiB of image each), each
//! stored as a tree-type blob:
//!
//! ```text
//! "KURAFIX1" | size u64 | chunk_size u32 | first u64 | count u32 | count × id [32]
//! ```
//! (little endian). `first` is the chunk number of the piece's first entry.

use crate::error::{Error, Result};
use crate::id::Id;
use crate::pack::Reader;

pub const MAGIC_FIXED_INDEX: &[u8; 8] = b"KURAFIX1";
/// Entries per piece: 65 536 × 4 MiB = 256 GiB, a 2 MiB blob.
pub const PIECE_ENTRIES: usize = 65_536;

/// One piece of a fixed index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedIndexPiece {
    pub size: u64,
    pub chunk_size: u32,
    pub first: u64,
    pub ids: Vec<Id>,
}

impl FixedIndexPiece {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.ids.len() * 32);
        out.extend_from_slice(MAGIC_FIXED_INDEX);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&self.first.to_le_bytes());
        out.extend_from_slice(&(self.ids.len() as u32).to_le_bytes());
        for id in &self.ids {
            out.extend_from_slice(&id.0);
        }
        out
    }

    pub fn decode(b: &[u8], what: &str) -> Result<FixedIndexPiece> {
        if b.len() < 8 || &b[..8] != MAGIC_FIXED_INDEX {
            return Err(Error::corrupt(what, "not a fixed index piece"));
        }
        let mut r = Reader::new(&b[8..], what);
        let size = r.u64()?;
        let chunk_size = r.u32()?;
        let first = r.u64()?;
        let n = r.count(32)?;
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            ids.push(r.id()?);
        }
        if r.remaining() != 0 {
            return Err(Error::corrupt(what, "trailing bytes"));
        }
        if chunk_size == 0 {
            return Err(Error::corrupt(what, "chunk size 0"));
        }
        let chunks = size.div_ceil(chunk_size as u64);
        if first.checked_add(n as u64).is_none_or(|end| end > chunks) {
            return Err(Error::corrupt(what, "entries beyond the image size"));
        }
        Ok(FixedIndexPiece {
            size,
            chunk_size,
            first,
            ids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let p = FixedIndexPiece {
            size: 10 * 4 * 1024 * 1024 + 5,
            chunk_size: 4 * 1024 * 1024,
            first: 3,
            ids: vec![Id([1; 32]), Id::ZERO, Id([2; 32])],
        };
        assert_eq!(FixedIndexPiece::decode(&p.encode(), "p").unwrap(), p);
        let mut beyond = p.clone();
        beyond.first = 9;
        assert!(FixedIndexPiece::decode(&beyond.encode(), "p").is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..300), magic in any::<bool>()) {
            if magic && bytes.len() >= 8 { bytes[..8].copy_from_slice(MAGIC_FIXED_INDEX); }
            let _ = FixedIndexPiece::decode(&bytes, "fuzz");
        }
    }
}
