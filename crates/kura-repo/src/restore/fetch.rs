//! The restore engine: fetch blobs pack by pack and write them where they belong.
//!
//! Restores are planned as "blob → destinations (file, offset)". Blobs are grouped by pack
//! and each worker reads one pack's needed blobs in as few ranged reads as possible (adjacent
//! blobs, or blobs separated by small gaps, are read together), verifies each blob, and writes
//! it to every destination — a blob shared by many files is read once. When a blob fails
//! (pack missing, corrupt, truncated) the other copies the index knows are tried; if none
//! works, every destination file is reported damaged and the rest of the restore goes on.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use kura_backend::FileKind;

use crate::backup::CancelToken;
use crate::error::{Error, Result};
use crate::format::{BlobType, decode_blob_into};
use crate::id::Id;
use crate::index::BlobLocation;
use crate::progress::Progress;
use crate::repo::IndexedRepo;

/// Read blobs in one request when the gap between them is at most this.
const MAX_GAP: u64 = 256 * 1024;
/// Never read more than this in one request.
const MAX_RANGE: u64 = 8 * 1024 * 1024;

/// Granularity of holes left by [`write_sparse`]: file systems allocate in blocks, so only
/// whole aligned zero blocks are worth skipping.
const HOLE_BLOCK: u64 = 4096;

/// Write `data` at `offset` into a file that reads as zeros where nothing was written (freshly
/// created and sized), skipping aligned all-zero blocks so they stay holes. Content-defined
/// chunks often carry the edge of a zero region; this keeps sparse files sparse.
pub(crate) fn write_sparse(f: &std::fs::File, offset: u64, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let end = offset + data.len() as u64;
    let mut pos = offset;
    let mut run_start: Option<u64> = None;
    while pos < end {
        let block_end = ((pos / HOLE_BLOCK) + 1) * HOLE_BLOCK;
        let next = block_end.min(end);
        let slice = &data[(pos - offset) as usize..(next - offset) as usize];
        let full_block = pos.is_multiple_of(HOLE_BLOCK) && next == block_end;
        let hole = full_block && crate::chunker::is_zero(slice);
        match (hole, run_start) {
            (true, Some(s)) => {
                f.write_all_at(&data[(s - offset) as usize..(pos - offset) as usize], s)?;
                run_start = None;
            }
            (false, None) => run_start = Some(pos),
            _ => {}
        }
        pos = next;
    }
    if let Some(s) = run_start {
        f.write_all_at(&data[(s - offset) as usize..], s)?;
    }
    Ok(())
}

/// Where restored bytes go.
pub(crate) trait Sink: Sync {
    /// Write `data` to destination `dest` at `offset`.
    fn write(&self, dest: u32, offset: u64, data: &[u8]) -> std::io::Result<()>;
    /// Destination `dest` could not be restored completely.
    fn damaged(&self, dest: u32, reason: String);
}

/// Destinations of one blob: (destination, offset).
type Dests = Vec<(u32, u64)>;
/// A pack's needed blobs with their destinations.
type PackWork = Vec<(BlobLocation, Dests)>;

/// One blob and the places it goes.
pub(crate) struct BlobJob {
    pub id: Id,
    pub dests: Dests,
}

/// Fetch every blob in `jobs` and hand it to `sink`. Fatal errors (cancel, the repository
/// unreachable for everything) are returned; per-blob damage goes to the sink.
pub(crate) fn fetch_all(
    repo: &IndexedRepo,
    jobs: Vec<BlobJob>,
    sink: &dyn Sink,
    threads: usize,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<()> {
    let mut by_pack: HashMap<Id, PackWork> = HashMap::new();
    for job in jobs {
        match repo
            .index()
            .get_all(&job.id)
            .into_iter()
            .find(|l| l.ty == BlobType::Data)
        {
            Some(loc) => by_pack.entry(loc.pack).or_default().push((loc, job.dests)),
            None => {
                for (d, _) in job.dests {
                    sink.damaged(
                        d,
                        format!("data blob {} is in no index (pack lost?)", job.id.short()),
                    );
                }
            }
        }
    }
    let packs: Vec<(Id, PackWork)> = by_pack.into_iter().collect();
    let next = AtomicUsize::new(0);
    let fatal: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut bufs = Buffers::default();
                loop {
                    if cancel.is_cancelled() {
                        if let Ok(mut f) = fatal.lock() {
                            f.get_or_insert(Error::Interrupted);
                        }
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((pack, blobs)) = packs.get(i) else {
                        return;
                    };
                    restore_pack(repo, pack, blobs, sink, progress, &mut bufs);
                }
            });
        }
    });
    match fatal.into_inner().ok().flatten() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Buffers one fetch worker reuses across packs (ranged reads, decoded blobs).
#[derive(Default)]
struct Buffers {
    range: Vec<u8>,
    blob: Vec<u8>,
}

fn restore_pack(
    repo: &IndexedRepo,
    pack: &Id,
    blobs: &[(BlobLocation, Dests)],
    sink: &dyn Sink,
    progress: &dyn Progress,
    bufs: &mut Buffers,
) {
    let mut order: Vec<usize> = (0..blobs.len()).collect();
    order.sort_by_key(|&i| blobs[i].0.offset);
    let name = pack.to_hex();
    let mut i = 0;
    while i < order.len() {
        // Extend the range while the next blob is close and the range stays bounded.
        let start = blobs[order[i]].0.offset as u64;
        let mut end = start + blobs[order[i]].0.length as u64;
        let mut j = i + 1;
        while j < order.len() {
            let l = &blobs[order[j]].0;
            let (o, e) = (l.offset as u64, l.offset as u64 + l.length as u64);
            if o > end + MAX_GAP || e - start > MAX_RANGE {
                break;
            }
            end = end.max(e);
            j += 1;
        }
        let range = repo.backend().get_range_into(
            FileKind::Pack,
            &name,
            start,
            end - start,
            &mut bufs.range,
        );
        // A range of several blobs that came back short or damaged (a truncated pack) is
        // read again blob by blob. Not when the pack is gone or the store is unreachable:
        // single reads would only repeat the failure (and its timeout) once per blob.
        let read_alone = j - i > 1
            && range
                .as_ref()
                .is_err_and(|e| e.kind() == kura_backend::ErrorKind::Corrupt);
        let range = range.map_err(|e| e.to_string());
        for &k in &order[i..j] {
            let (loc, dests) = &blobs[k];
            let decoded = range.clone().and_then(|()| {
                let a = (loc.offset as u64 - start) as usize;
                let stored = &mut bufs.range[a..a + loc.length as usize];
                decode_blob_into(
                    repo.key(),
                    loc.ty,
                    &loc.id,
                    stored,
                    loc.raw_length,
                    &mut bufs.blob,
                )
                .map_err(|e| e.to_string())
            });
            let data = decoded.map(|()| std::mem::take(&mut bufs.blob));
            // A ranged read of several blobs fails as a whole (a truncated pack, a short
            // read) though most of its blobs may be intact: read this blob alone (which also
            // tries the backend's other sources — the other targets of a backup). Otherwise
            // the bytes this blob would get alone were read already: go straight to the other
            // sources. Then try any other copy of the blob. Only blobs damaged everywhere are
            // lost.
            let data = data.or_else(|first| {
                if read_alone {
                    repo.read_blob_at(loc).map_err(|_| first)
                } else {
                    repo.read_blob_from_sources(loc).ok_or(first)
                }
            });
            let data = data.or_else(|first| {
                repo.index()
                    .get_all(&loc.id)
                    .into_iter()
                    .filter(|l| l.pack != loc.pack && l.ty == loc.ty)
                    .find_map(|l| repo.read_blob_at(&l).ok())
                    .ok_or(first)
            });
            match data {
                Ok(d) => {
                    for &(dest, off) in dests {
                        if let Err(e) = sink.write(dest, off, &d) {
                            sink.damaged(dest, format!("write at offset {off}: {e}"));
                        }
                    }
                    progress.advance(d.len() as u64 * dests.len() as u64, 0);
                    bufs.blob = d; // keep the allocation for the next blob
                }
                Err(e) => {
                    for &(dest, off) in dests {
                        sink.damaged(
                            dest,
                            format!("bytes at offset {off} (blob {}): {e}", loc.id.short()),
                        );
                    }
                }
            }
        }
        i = j;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn sparse_writes_read_back_identically(
            offset in 0u64..20_000,
            pieces in proptest::collection::vec((0usize..9000, any::<bool>()), 1..6),
        ) {
            let mut data = Vec::new();
            for (len, zero) in pieces {
                let byte = if zero { 0 } else { 0xA5 };
                data.extend(std::iter::repeat_n(byte, len));
            }
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("f");
            let f = std::fs::File::create(&p).unwrap();
            f.set_len(offset + data.len() as u64).unwrap();
            write_sparse(&f, offset, &data).unwrap();
            let back = std::fs::read(&p).unwrap();
            prop_assert!(back[..offset as usize].iter().all(|&b| b == 0));
            prop_assert_eq!(&back[offset as usize..], &data[..]);
        }
    }
}
