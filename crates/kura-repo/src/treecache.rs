//! Tree-span cache: read the tree blobs of a pack with one request, not one per directory.
//!
//! Why: walking a snapshot (restore, ls, check, an incremental backup's parent) reads one
//! tree blob per directory, one after the other. On a local disk each read costs
//! microseconds; on an object store each is an HTTP round trip (about 1 ms on loopback,
//! 10–50 ms to a cloud region), so a tree of 10 000 directories would spend its time waiting.
//! Tree blobs live in packs of their own (the saver keeps one open pack per blob type), so
//! the byte span of a pack that holds trees — from its first tree blob to the end of its last —
//! is fetched once and serves every tree in it; walks visit trees in roughly the order they
//! were written, so a few cached spans cover a whole snapshot.
//!
//! Bounds: at most [`CACHE_BYTES`] of spans are kept (least recently used dropped first);
//! a span larger than [`MAX_SPAN`] is not fetched whole (its trees are read one by one).
//! Cached bytes are still encrypted: every blob is decrypted and verified when it is taken
//! out, exactly as a direct read would, so a damaged span fails per blob and the caller
//! falls back to another copy.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use crate::id::Id;
use crate::index::Index;

/// Total bytes of cached spans.
pub const CACHE_BYTES: usize = 32 << 20;
/// Largest span fetched whole.
pub const MAX_SPAN: u32 = 16 << 20;

/// Spans of the tree blobs in each pack, and a small LRU of fetched spans.
#[derive(Default)]
pub(crate) struct TreeCache {
    spans: OnceLock<HashMap<Id, (u32, u32)>>,
    lru: Mutex<Lru>,
}

#[derive(Default)]
struct Lru {
    /// Most recently used last.
    entries: VecDeque<(Id, Arc<Vec<u8>>)>,
    bytes: usize,
}

impl TreeCache {
    /// The span `(start, end)` of tree blobs in `pack`, when it is worth fetching whole.
    pub(crate) fn span(&self, index: &Index, pack: &Id) -> Option<(u32, u32)> {
        let spans = self.spans.get_or_init(|| index.tree_spans());
        spans
            .get(pack)
            .copied()
            .filter(|(s, e)| e.saturating_sub(*s) <= MAX_SPAN)
    }

    pub(crate) fn get(&self, pack: &Id) -> Option<Arc<Vec<u8>>> {
        let mut lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
        let pos = lru.entries.iter().position(|(p, _)| p == pack)?;
        let entry = lru.entries.remove(pos)?;
        let data = entry.1.clone();
        lru.entries.push_back(entry);
        Some(data)
    }

    pub(crate) fn insert(&self, pack: Id, data: Arc<Vec<u8>>) {
        let mut lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
        if lru.entries.iter().any(|(p, _)| *p == pack) {
            return;
        }
        lru.bytes += data.len();
        lru.entries.push_back((pack, data));
        while lru.bytes > CACHE_BYTES && lru.entries.len() > 1 {
            if let Some((_, old)) = lru.entries.pop_front() {
                lru.bytes -= old.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_stays_within_budget_and_keeps_recent_spans() {
        let c = TreeCache::default();
        let span = CACHE_BYTES / 4;
        for i in 0..8u8 {
            c.insert(Id([i; 32]), Arc::new(vec![i; span]));
            // Touch the first span each time: it must survive every eviction.
            assert!(c.get(&Id([0; 32])).is_some(), "span 0 evicted at {i}");
        }
        let lru = c.lru.lock().unwrap();
        assert!(lru.bytes <= CACHE_BYTES, "{} cached bytes", lru.bytes);
        assert_eq!(
            lru.bytes,
            lru.entries.iter().map(|(_, d)| d.len()).sum::<usize>()
        );
        drop(lru);
        assert!(c.get(&Id([7; 32])).is_some(), "newest span kept");
        assert!(c.get(&Id([1; 32])).is_none(), "old untouched span evicted");
    }
}
