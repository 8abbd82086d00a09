//! The blob index: which pack holds each blob, at which offset.
//!
//! # Files
//! An index file (sealed, magic `KURAIDX1`) lists packs and their blobs:
//! `pack_count u32 | { pack_id [32] | blob_count u32 | blob_count × entry }` where an entry is
//! the pack header entry (`type u8 | id [32] | offset u32 | length u32 | raw_length u32`).
//! Index files are written only after the packs they describe are durable, and a backup writes
//! one every [`crate::backup`]-configured number of packs, so an interrupted backup leaves
//! indexed, reusable packs behind. A pack may appear in several index files (two concurrent
//! backups adopting the same orphan); readers tolerate that.
//!
//! # Memory
//! In memory the index is one `Vec` of 48-byte entries sorted by blob id and looked up by
//! binary search, plus one 32-byte id per pack — no per-blob heap allocation and no hash map.
//! [`Index::heap_bytes`] reports the real figure; `docs/FORMAT.md` quotes the measurement
//! (48.1 bytes per blob with 1 MiB average chunks).

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::format::BlobType;
use crate::id::Id;
use crate::pack::{HEADER_ENTRY_LEN, PackBlob, Reader};

const TREE_BIT: u32 = 1 << 31;

/// One blob in the in-memory index (48 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct IndexEntry {
    pub id: Id,
    /// Index into [`Index::packs`]; the top bit marks tree blobs.
    pack: u32,
    pub offset: u32,
    pub length: u32,
    pub raw_length: u32,
}

impl IndexEntry {
    pub fn ty(&self) -> BlobType {
        if self.pack & TREE_BIT != 0 {
            BlobType::Tree
        } else {
            BlobType::Data
        }
    }

    fn pack_idx(&self) -> usize {
        (self.pack & !TREE_BIT) as usize
    }
}

/// Where one blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    pub pack: Id,
    pub ty: BlobType,
    pub id: Id,
    pub offset: u32,
    pub length: u32,
    pub raw_length: u32,
}

/// The in-memory index. Built once with [`IndexBuilder`], then read-only (shared between
/// pipeline threads without locks).
#[derive(Debug, Default)]
pub struct Index {
    packs: Vec<Id>,
    entries: Vec<IndexEntry>,
}

impl Index {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn pack_count(&self) -> usize {
        self.packs.len()
    }

    pub fn packs(&self) -> &[Id] {
        &self.packs
    }

    fn range(&self, id: &Id) -> &[IndexEntry] {
        let lo = self.entries.partition_point(|e| e.id < *id);
        let hi = lo + self.entries[lo..].partition_point(|e| e.id == *id);
        &self.entries[lo..hi]
    }

    pub fn contains(&self, id: &Id) -> bool {
        !self.range(id).is_empty()
    }

    fn location(&self, e: &IndexEntry) -> BlobLocation {
        BlobLocation {
            pack: self.packs[e.pack_idx()],
            ty: e.ty(),
            id: e.id,
            offset: e.offset,
            length: e.length,
            raw_length: e.raw_length,
        }
    }

    /// The first location of a blob.
    pub fn get(&self, id: &Id) -> Option<BlobLocation> {
        self.range(id).first().map(|e| self.location(e))
    }

    /// Every location of a blob (more than one when two backups stored it concurrently);
    /// readers fall back to the next copy when one is damaged.
    pub fn get_all(&self, id: &Id) -> Vec<BlobLocation> {
        self.range(id).iter().map(|e| self.location(e)).collect()
    }

    /// Every entry, sorted by blob id.
    pub fn iter(&self) -> impl Iterator<Item = BlobLocation> + '_ {
        self.entries.iter().map(|e| self.location(e))
    }

    /// For each pack holding tree blobs: the span from its first tree blob's offset to the end
    /// of its last (see `treecache`).
    pub fn tree_spans(&self) -> std::collections::HashMap<Id, (u32, u32)> {
        let mut spans: std::collections::HashMap<usize, (u32, u32)> = Default::default();
        for e in self.entries.iter().filter(|e| e.pack & TREE_BIT != 0) {
            let end = e.offset.saturating_add(e.length);
            let s = spans.entry(e.pack_idx()).or_insert((e.offset, end));
            s.0 = s.0.min(e.offset);
            s.1 = s.1.max(end);
        }
        spans
            .into_iter()
            .map(|(p, span)| (self.packs[p], span))
            .collect()
    }

    /// Heap bytes held (entries and pack ids, by capacity).
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<IndexEntry>()
            + self.packs.capacity() * std::mem::size_of::<Id>()
    }
}

/// Collects entries, then sorts once.
#[derive(Default)]
pub struct IndexBuilder {
    packs: Vec<Id>,
    pack_lookup: HashMap<Id, u32>,
    entries: Vec<IndexEntry>,
}

impl IndexBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a pack's blobs. Adding the same pack twice is harmless.
    pub fn add_pack(&mut self, pack: Id, blobs: &[PackBlob]) -> Result<()> {
        if self.pack_lookup.contains_key(&pack) {
            return Ok(());
        }
        let idx = u32::try_from(self.packs.len())
            .ok()
            .filter(|i| i & TREE_BIT == 0)
            .ok_or_else(|| Error::InvalidInput("more than 2^31 packs".into()))?;
        self.packs.push(pack);
        self.pack_lookup.insert(pack, idx);
        self.entries.extend(blobs.iter().map(|b| IndexEntry {
            id: b.id,
            pack: idx | if b.ty == BlobType::Tree { TREE_BIT } else { 0 },
            offset: b.offset,
            length: b.length,
            raw_length: b.raw_length,
        }));
        Ok(())
    }

    pub fn has_pack(&self, pack: &Id) -> bool {
        self.pack_lookup.contains_key(pack)
    }

    pub fn finish(mut self) -> Index {
        self.entries
            .sort_unstable_by(|a, b| a.id.cmp(&b.id).then(a.pack.cmp(&b.pack)));
        self.entries.shrink_to_fit();
        self.packs.shrink_to_fit();
        Index {
            packs: self.packs,
            entries: self.entries,
        }
    }
}

/// The body of one index file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexFile {
    pub packs: Vec<(Id, Vec<PackBlob>)>,
}

impl IndexFile {
    pub fn encode(&self) -> Vec<u8> {
        let blobs: usize = self.packs.iter().map(|(_, b)| b.len()).sum();
        let mut out = Vec::with_capacity(4 + self.packs.len() * 36 + blobs * HEADER_ENTRY_LEN);
        out.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for (id, blobs) in &self.packs {
            out.extend_from_slice(&id.0);
            out.extend_from_slice(&crate::pack::encode_header(blobs));
        }
        out
    }

    pub fn decode(body: &[u8], what: &str) -> Result<IndexFile> {
        let mut r = Reader::new(body, what);
        let n = r.count(36)?;
        let mut packs = Vec::with_capacity(n);
        for _ in 0..n {
            let id = r.id()?;
            let m = r.count(HEADER_ENTRY_LEN)?;
            let mut blobs = Vec::with_capacity(m);
            for _ in 0..m {
                blobs.push(r.blob_entry()?);
            }
            packs.push((id, blobs));
        }
        if r.remaining() != 0 {
            return Err(Error::corrupt(what, "trailing bytes"));
        }
        Ok(IndexFile { packs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn blob(i: u64, tree: bool) -> PackBlob {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&i.to_be_bytes());
        id[8] = 0xAA;
        PackBlob {
            ty: if tree { BlobType::Tree } else { BlobType::Data },
            id: Id(id),
            offset: 8 + i as u32,
            length: 100,
            raw_length: 200,
        }
    }

    #[test]
    fn lookup_types_and_duplicates() {
        let mut b = IndexBuilder::new();
        let p1 = Id([1; 32]);
        let p2 = Id([2; 32]);
        b.add_pack(p1, &[blob(5, false), blob(3, true)]).unwrap();
        b.add_pack(p2, &[blob(5, false)]).unwrap();
        b.add_pack(p1, &[blob(99, false)]).unwrap(); // ignored: pack already present
        let idx = b.finish();
        assert_eq!(idx.len(), 3);
        assert_eq!(idx.get(&blob(3, true).id).unwrap().ty, BlobType::Tree);
        assert_eq!(idx.get(&blob(3, true).id).unwrap().pack, p1);
        assert_eq!(idx.get_all(&blob(5, false).id).len(), 2);
        assert!(!idx.contains(&blob(99, false).id));
        assert!(!idx.contains(&blob(4, false).id));
    }

    #[test]
    fn memory_per_blob_is_at_most_64_bytes() {
        assert_eq!(std::mem::size_of::<IndexEntry>(), 48);
        let mut b = IndexBuilder::new();
        // 1 million blobs in packs of 16 (1 MiB chunks in 16 MiB packs).
        for p in 0..62_500u64 {
            let blobs: Vec<PackBlob> = (0..16).map(|j| blob(p * 16 + j, false)).collect();
            b.add_pack(Id::of_file(&p.to_le_bytes()), &blobs).unwrap();
        }
        let idx = b.finish();
        let per_blob = idx.heap_bytes() as f64 / idx.len() as f64;
        assert!(per_blob <= 64.0, "{per_blob} bytes per blob");
        assert!(per_blob >= 48.0);
        for i in [0u64, 1, 500_000, 999_999] {
            assert_eq!(idx.get(&blob(i, false).id).unwrap().offset, 8 + i as u32);
        }
    }

    proptest! {
        #[test]
        fn index_file_round_trip(packs in proptest::collection::vec(
            (any::<[u8; 32]>(), proptest::collection::vec((any::<[u8; 32]>(), any::<u32>(), any::<u32>(), any::<u32>(), any::<bool>()), 0..10)), 0..10)) {
            let f = IndexFile { packs: packs.into_iter().map(|(p, bs)| (Id(p), bs.into_iter().map(|(id, o, l, r, t)| PackBlob {
                ty: if t { BlobType::Tree } else { BlobType::Data }, id: Id(id), offset: o, length: l, raw_length: r }).collect())).collect() };
            prop_assert_eq!(IndexFile::decode(&f.encode(), "t").unwrap(), f);
        }

        #[test]
        fn index_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = IndexFile::decode(&bytes, "fuzz");
        }
    }
}
