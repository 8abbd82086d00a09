//! The blob sink of a backup: dedup, encode, pack, upload, index.
//!
//! ```text
//!  callers ──save()──▶ [raw queue] ─▶ encoders (N threads: zstd + AEAD)
//!                                        │
//!                                        ▼
//!                                 [encoded queue] ─▶ packer (1 thread: one open pack per type)
//!                                                        │ full 16 MiB packs
//!                                                        ▼
//!                                                 [pack queue] ─▶ uploaders (M threads: put)
//!                                                                    │ durable packs
//!                                                                    ▼
//!                                                               index writer (every K packs)
//! ```
//! `save` runs in the caller's thread (file readers, the tree assembler): it hashes, checks the
//! index and the in-flight set, and queues new blobs. Raw bytes in flight are bounded by a
//! [`Budget`]; packs in flight by the queue capacities, so memory is bounded whatever the data
//! size. Index files are written only after the packs they list are durable; the snapshot only
//! after [`Saver::finish`] has written the last index file.
//!
//! On any error the first one is kept, the budget is aborted and the queues disconnect, so
//! every thread stops promptly and the caller sees the root cause, not "channel closed".

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use kura_backend::FileKind;

use crate::error::{Error, Result};
use crate::format::{BlobEncoder, BlobType};
use crate::id::Id;
use crate::index::IndexFile;
use crate::lock::{RepoLock, Shared};
use crate::pack::{PackBlob, PackWriter};
use crate::repo::IndexedRepo;

/// Write an index file at least every this many packs…
const INDEX_EVERY_PACKS: usize = 16;
/// …or this often.
const INDEX_EVERY: Duration = Duration::from_secs(300);

/// Counting semaphore over bytes, abortable.
pub(crate) struct Budget {
    limit: usize,
    state: Mutex<(usize, bool)>,
    cv: Condvar,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Budget {
        Budget {
            limit,
            state: Mutex::new((0, false)),
            cv: Condvar::new(),
        }
    }

    /// Wait until `n` bytes fit (a single request larger than the limit waits for an empty
    /// budget instead of deadlocking). Fails once aborted.
    pub(crate) fn acquire(&self, n: usize) -> Result<()> {
        let mut st = self.state.lock().map_err(|_| Error::Interrupted)?;
        loop {
            if st.1 {
                return Err(Error::Interrupted);
            }
            if st.0 == 0 || st.0 + n <= self.limit {
                st.0 += n;
                return Ok(());
            }
            st = self.cv.wait(st).map_err(|_| Error::Interrupted)?;
        }
    }

    pub(crate) fn release(&self, n: usize) {
        if let Ok(mut st) = self.state.lock() {
            st.0 = st.0.saturating_sub(n);
        }
        self.cv.notify_all();
    }

    pub(crate) fn abort(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.1 = true;
        }
        self.cv.notify_all();
    }
}

/// Keeps the first error of a pipeline and tells everyone to stop.
#[derive(Default)]
pub(crate) struct Failure {
    failed: AtomicBool,
    first: Mutex<Option<Error>>,
}

impl Failure {
    pub(crate) fn set(&self, e: Error) {
        if let Ok(mut f) = self.first.lock()
            && f.is_none()
        {
            *f = Some(e);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_set(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    pub(crate) fn take(&self) -> Option<Error> {
        self.first.lock().ok().and_then(|mut f| f.take())
    }
}

/// Idle large buffers for reuse. Chunk, encoded-blob and pack buffers are megabytes each and
/// allocated at a high rate; reusing a few spares the page faults and zeroing of fresh
/// allocations (a few percent of CPU) without holding much memory.
pub(crate) struct BufferPool {
    bufs: Mutex<Vec<Vec<u8>>>,
    max: usize,
}

impl BufferPool {
    const MIN_CAPACITY: usize = 1 << 20;

    pub(crate) fn new(max: usize) -> BufferPool {
        BufferPool {
            bufs: Mutex::new(Vec::new()),
            max,
        }
    }

    /// A buffer of length `len` (contents unspecified: callers overwrite it).
    pub(crate) fn get(&self, len: usize) -> Vec<u8> {
        let reused = self.bufs.lock().ok().and_then(|mut b| {
            let i = b.iter().position(|v| v.capacity() >= len)?;
            Some(b.swap_remove(i))
        });
        match reused {
            Some(mut v) => {
                if v.len() < len {
                    v.resize(len, 0);
                }
                v.truncate(len);
                v
            }
            None => vec![0u8; len],
        }
    }

    /// An empty buffer, recycled if one is idle.
    pub(crate) fn get_empty(&self) -> Vec<u8> {
        let mut v = self
            .bufs
            .lock()
            .ok()
            .and_then(|mut b| b.pop())
            .unwrap_or_default();
        v.clear();
        v
    }

    pub(crate) fn put(&self, v: Vec<u8>) {
        if v.capacity() < Self::MIN_CAPACITY {
            return;
        }
        if let Ok(mut b) = self.bufs.lock()
            && b.len() < self.max
        {
            b.push(v);
        }
    }
}

/// Counters of what the saver stored.
#[derive(Debug, Default)]
pub(crate) struct SaverStats {
    pub data_blobs_new: AtomicU64,
    pub tree_blobs_new: AtomicU64,
    pub bytes_added_raw: AtomicU64,
    pub bytes_added: AtomicU64,
    pub packs: AtomicU64,
}

struct RawBlob {
    ty: BlobType,
    id: Id,
    data: Vec<u8>,
}

struct EncodedBlob {
    ty: BlobType,
    id: Id,
    data: Vec<u8>,
    raw_len: usize,
}

/// Packs uploaded but not yet listed in an index file.
struct IndexState {
    file: IndexFile,
    since: Instant,
    /// Pack bytes in `file`.
    bytes: u64,
    extent_bytes: Option<u64>,
}

struct FinishedPack {
    id: Id,
    bytes: Vec<u8>,
    blobs: Vec<PackBlob>,
}

/// Tuning of the saver's threads and memory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SaverConfig {
    pub encoders: usize,
    pub uploaders: usize,
    /// Raw bytes queued for encoding at most.
    pub inflight_bytes: usize,
    pub compression: i32,
    /// Write an index file once this many pack bytes are unindexed (an extent).
    pub extent_bytes: Option<u64>,
}

/// The front of the sink, shared by reference with every producer thread.
pub(crate) struct Saver<'r> {
    repo: &'r IndexedRepo,
    tx: Mutex<Option<Sender<RawBlob>>>,
    inflight: Mutex<HashSet<(BlobType, Id)>>,
    budget: &'r Budget,
    failure: &'r Failure,
    pool: &'r BufferPool,
}

impl Saver<'_> {
    /// Recycled buffers for chunk data handed to [`save`](Self::save).
    pub(crate) fn pool(&self) -> &BufferPool {
        self.pool
    }

    fn sender(&self) -> Result<Sender<RawBlob>> {
        self.tx
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .ok_or(Error::Interrupted)
    }

    /// Whether the blob may be referenced without storing it (see [`IndexedRepo::has_live`]).
    pub(crate) fn has_live(&self, ty: BlobType, id: &Id) -> bool {
        self.repo.has_live(ty, id)
    }

    /// Store `data` as a blob unless the repository or this session already has it. Returns
    /// its id and whether it was new.
    pub(crate) fn save(&self, ty: BlobType, data: Vec<u8>) -> Result<(Id, bool)> {
        let id = self.repo.key().chunk_id(&data);
        if self.repo.has_live(ty, &id) {
            self.pool.put(data);
            return Ok((id, false));
        }
        {
            let mut set = self.inflight.lock().map_err(|_| Error::Interrupted)?;
            if !set.insert((ty, id)) {
                drop(set);
                self.pool.put(data);
                return Ok((id, false));
            }
        }
        if self.failure.is_set() {
            return Err(Error::Interrupted);
        }
        self.budget.acquire(data.len())?;
        let n = data.len();
        if self.sender()?.send(RawBlob { ty, id, data }).is_err() {
            self.budget.release(n);
            return Err(Error::Interrupted);
        }
        Ok((id, true))
    }

    /// Stop accepting blobs; the pipeline drains and [`run`] returns.
    pub(crate) fn close(&self) {
        if let Ok(mut g) = self.tx.lock() {
            g.take();
        }
    }
}

/// Run the sink: spawn its threads in `scope`, call `produce` with the [`Saver`], then drain,
/// write the final index file and return `produce`'s result. Nothing is durable-and-claimed
/// unless this returns `Ok`.
pub(crate) fn run<T>(
    repo: &IndexedRepo,
    lock: &RepoLock<Shared>,
    cfg: SaverConfig,
    stats: &SaverStats,
    progress: &dyn crate::progress::Progress,
    produce: impl FnOnce(&Saver<'_>) -> Result<T>,
) -> Result<T> {
    let budget = Budget::new(cfg.inflight_bytes.max(8 << 20));
    let failure = Failure::default();
    let pack_size = repo.config().pack_size as usize;
    let encoders = cfg.encoders.max(1);
    let uploaders = cfg.uploaders.max(1);
    let (raw_tx, raw_rx) = bounded::<RawBlob>(encoders * 2);
    let (enc_tx, enc_rx) = bounded::<EncodedBlob>(encoders * 2);
    let (pack_tx, pack_rx) = bounded::<FinishedPack>(1);
    let index_state = Mutex::new(IndexState {
        file: IndexFile::default(),
        since: Instant::now(),
        bytes: 0,
        extent_bytes: cfg.extent_bytes,
    });
    let pool = BufferPool::new(encoders + 2);

    let result = std::thread::scope(|s| {
        for i in 0..encoders {
            let raw_rx = raw_rx.clone();
            let enc_tx = enc_tx.clone();
            let failure = &failure;
            let budget = &budget;
            let pool = &pool;
            std::thread::Builder::new()
                .name(format!("kura-encode-{i}"))
                .spawn_scoped(s, move || {
                    if let Err(e) = encode_loop(repo, cfg.compression, pool, raw_rx, enc_tx) {
                        failure.set(e);
                        budget.abort();
                    }
                })
                .map_err(|e| Error::io("spawn encoder", e))?;
        }
        drop(raw_rx);
        drop(enc_tx);
        {
            let failure = &failure;
            let budget = &budget;
            let pool = &pool;
            std::thread::Builder::new()
                .name("kura-packer".into())
                .spawn_scoped(s, move || {
                    if let Err(e) = pack_loop(repo, pack_size, budget, pool, enc_rx, pack_tx) {
                        failure.set(e);
                        budget.abort();
                    }
                })
                .map_err(|e| Error::io("spawn packer", e))?;
        }
        let mut upload_handles = Vec::new();
        for i in 0..uploaders {
            let pack_rx = pack_rx.clone();
            let failure = &failure;
            let budget = &budget;
            let index_state = &index_state;
            upload_handles.push(
                std::thread::Builder::new()
                    .name(format!("kura-upload-{i}"))
                    .spawn_scoped(s, move || {
                        if let Err(e) =
                            upload_loop(repo, lock, stats, progress, failure, pack_rx, index_state)
                        {
                            failure.set(e);
                            budget.abort();
                        }
                    })
                    .map_err(|e| Error::io("spawn uploader", e))?,
            );
        }
        drop(pack_rx);

        let saver = Saver {
            repo,
            tx: Mutex::new(Some(raw_tx)),
            inflight: Mutex::new(HashSet::new()),
            budget: &budget,
            failure: &failure,
            pool: &pool,
        };
        let out = produce(&saver);
        saver.close();
        if out.is_err() {
            budget.abort();
        }
        // Uploaders end last; once they have, every pack is durable or the run failed.
        for h in upload_handles {
            let _ = h.join();
        }
        out
    });

    // Packs that became durable are indexed even when the run failed, so a rerun reuses
    // them without having to adopt them as orphans.
    let pending = index_state
        .into_inner()
        .map_err(|_| Error::Interrupted)?
        .file;
    // …unless the target itself stopped answering: that write would only wait out another
    // deadline, and the next backup adopts those packs anyway.
    let target_down = failure.is_set()
        && failure
            .first
            .lock()
            .ok()
            .is_some_and(|f| matches!(&*f, Some(Error::Backend(b)) if b.is_transient()));
    let index_result = if pending.packs.is_empty() || target_down {
        Ok(())
    } else {
        save_index_guarded(repo, lock, &pending)
    };
    if let Some(e) = failure.take() {
        return Err(e);
    }
    let out = result?;
    index_result?;
    Ok(out)
}

/// Write an index file only while the lock is kept, and take it back if the lock turns out
/// lost once it is written: a backup that lost its lock may have had packs condemned and
/// deleted by a prune that judged it gone, and an index file naming a deleted pack would let
/// later backups dedup against blobs that no longer exist.
fn save_index_guarded(repo: &IndexedRepo, lock: &RepoLock<Shared>, file: &IndexFile) -> Result<()> {
    lock.verify()?;
    let id = repo.save_index_file(file)?;
    if let Err(e) = lock.verify() {
        if let Err(d) = repo.backend().delete(FileKind::Index, &id.to_hex()) {
            tracing::warn!(
                "removing index file {} after losing the lock: {d}",
                id.short()
            );
        }
        return Err(e);
    }
    Ok(())
}

fn encode_loop(
    repo: &IndexedRepo,
    level: i32,
    pool: &BufferPool,
    rx: Receiver<RawBlob>,
    tx: Sender<EncodedBlob>,
) -> Result<()> {
    let mut enc = BlobEncoder::new(level)?;
    for b in rx {
        let data = enc.encode_into(repo.key(), b.ty, &b.id, &b.data, pool.get_empty())?;
        let raw_len = b.data.len();
        pool.put(b.data);
        if tx
            .send(EncodedBlob {
                ty: b.ty,
                id: b.id,
                data,
                raw_len,
            })
            .is_err()
        {
            return Ok(()); // downstream failed; its error is recorded
        }
    }
    Ok(())
}

fn pack_loop(
    repo: &IndexedRepo,
    pack_size: usize,
    budget: &Budget,
    pool: &BufferPool,
    rx: Receiver<EncodedBlob>,
    tx: Sender<FinishedPack>,
) -> Result<()> {
    // One open pack per blob type keeps trees together (cheap to read for ls/restore/check).
    let mut open: [Option<PackWriter>; 2] = [None, None];
    let finish = |w: PackWriter, tx: &Sender<FinishedPack>| -> Result<bool> {
        let (id, bytes, blobs) = w.finish(repo.key())?;
        Ok(tx.send(FinishedPack { id, bytes, blobs }).is_ok())
    };
    for b in rx {
        let slot = &mut open[b.ty as usize];
        let w = slot.get_or_insert_with(|| PackWriter::new(pack_size + pack_size / 8));
        let r = w.add(b.ty, b.id, &b.data, b.raw_len as u32);
        pool.put(b.data);
        budget.release(b.raw_len);
        r?;
        if w.len() >= pack_size
            && let Some(w) = slot.take()
            && !finish(w, &tx)?
        {
            return Ok(());
        }
    }
    for w in open.into_iter().flatten() {
        if !finish(w, &tx)? {
            return Ok(());
        }
    }
    Ok(())
}

fn upload_loop(
    repo: &IndexedRepo,
    lock: &RepoLock<Shared>,
    stats: &SaverStats,
    progress: &dyn crate::progress::Progress,
    failure: &Failure,
    rx: Receiver<FinishedPack>,
    index_state: &Mutex<IndexState>,
) -> Result<()> {
    for p in rx {
        if failure.is_set() {
            return Ok(());
        }
        let pack_len = p.bytes.len() as u64;
        repo.backend()
            .put(FileKind::Pack, &p.id.to_hex(), p.bytes.into())?;
        for b in &p.blobs {
            let counter = match b.ty {
                BlobType::Data => &stats.data_blobs_new,
                BlobType::Tree => &stats.tree_blobs_new,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            stats
                .bytes_added_raw
                .fetch_add(b.raw_length as u64, Ordering::Relaxed);
            stats
                .bytes_added
                .fetch_add(b.length as u64, Ordering::Relaxed);
        }
        stats.packs.fetch_add(1, Ordering::Relaxed);
        progress.stored(
            p.blobs
                .iter()
                .filter(|b| b.ty == BlobType::Data)
                .map(|b| b.raw_length as u64)
                .sum(),
        );
        // The pack is durable: list it in the next index file, and write that file when due.
        let due = {
            let mut st = index_state.lock().map_err(|_| Error::Interrupted)?;
            st.file.packs.push((p.id, p.blobs));
            st.bytes += pack_len;
            let extent_full = st.extent_bytes.is_some_and(|e| st.bytes >= e);
            if extent_full
                || st.file.packs.len() >= INDEX_EVERY_PACKS
                || st.since.elapsed() >= INDEX_EVERY
            {
                st.since = Instant::now();
                st.bytes = 0;
                Some(std::mem::take(&mut st.file))
            } else {
                None
            }
        };
        if let Some(file) = due {
            save_index_guarded(repo, lock, &file)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn budget_blocks_until_released_and_aborts() {
        let b = Arc::new(Budget::new(100));
        b.acquire(60).unwrap();
        b.acquire(40).unwrap();
        let b2 = b.clone();
        let h = std::thread::spawn(move || b2.acquire(10));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!h.is_finished(), "must wait while the budget is full");
        b.release(60);
        h.join().unwrap().unwrap();
        // An oversized request proceeds when nothing else is held.
        let c = Budget::new(10);
        c.acquire(1000).unwrap();
        c.abort();
        assert!(c.acquire(1).is_err());
    }
}
