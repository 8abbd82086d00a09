//! [`Throttled`]: a target whose uploads and downloads are charged to shared rate limits
//! (traffic control; the limits and their semantics are in [`crate::throttle`]).
//!
//! What is charged:
//! - uploads: the bytes of every `put` (packs, index files, snapshots, keys, catalog
//!   records), before the call. Lock files are charged but never wait: a lock refresh
//!   queued behind packs at a low rate could make a backup lose its lock.
//! - downloads: the bytes of every ranged read, before the call; whole-file reads (`get`),
//!   whose size is not known before, after it (the caller's next request waits instead).
//! - listings, stats, deletes: nothing (no payload).
//!
//! A throttled backend may be given an *abort* check (the run's cancellation): a pack upload
//! still waiting for its turn when the check says so fails at once with
//! [`ErrorKind::Cancelled`](crate::ErrorKind::Cancelled), unsent — a cancelled run at a low
//! limit must not spend its window's end sending packs nobody will name.
//!
//! Bytes a backend sends again when it retries a failed attempt are not charged again.
//! Each limit is charged in turn; the tightest one governs. The wait happens before the
//! wrapped call, so it never counts against that call's deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use crate::throttle::Limiter;
use crate::{Backend, BackendError, ErrorKind, FileInfo, FileKind, Result};

/// Whether the caller has given up (see the module docs).
pub type Abort = Arc<dyn Fn() -> bool + Send + Sync>;

/// A backend charging its traffic to limits (see the module docs).
pub struct Throttled {
    inner: Arc<dyn Backend>,
    upload: Vec<Arc<Limiter>>,
    download: Vec<Arc<Limiter>>,
    /// Calls now waiting for a limit.
    waiting: AtomicUsize,
    abort: Option<Abort>,
}

impl std::fmt::Debug for Throttled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttled")
            .field("inner", &self.inner)
            .field("upload", &self.upload)
            .field("download", &self.download)
            .finish()
    }
}

impl Throttled {
    /// `inner` with its uploads charged to `upload` and its downloads to `download`.
    pub fn new(
        inner: Arc<dyn Backend>,
        upload: Vec<Arc<Limiter>>,
        download: Vec<Arc<Limiter>>,
    ) -> Throttled {
        Throttled {
            inner,
            upload,
            download,
            waiting: AtomicUsize::new(0),
            abort: None,
        }
    }

    /// [`wrap`](Self::wrap) with an abort check for its uploads (see the module docs).
    pub fn wrap_abortable(
        inner: Arc<dyn Backend>,
        upload: Vec<Arc<Limiter>>,
        download: Vec<Arc<Limiter>>,
        abort: Abort,
    ) -> Arc<dyn Backend> {
        if upload.is_empty() && download.is_empty() {
            return inner;
        }
        let mut t = Throttled::new(inner, upload, download);
        t.abort = Some(abort);
        Arc::new(t)
    }

    /// `inner` itself when there is nothing to charge, else wrapped.
    pub fn wrap(
        inner: Arc<dyn Backend>,
        upload: Vec<Arc<Limiter>>,
        download: Vec<Arc<Limiter>>,
    ) -> Arc<dyn Backend> {
        if upload.is_empty() && download.is_empty() {
            inner
        } else {
            Arc::new(Throttled::new(inner, upload, download))
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }

    fn pay(&self, limits: &[Arc<Limiter>], bytes: u64) {
        let never = || false;
        self.pay_unless(limits, bytes, &never);
    }

    /// Pay for `bytes`; false when `abort` said to give up first.
    fn pay_unless(&self, limits: &[Arc<Limiter>], bytes: u64, abort: &dyn Fn() -> bool) -> bool {
        if limits.is_empty() || bytes == 0 {
            return true;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        for l in limits {
            let Some(waited) = l.acquire_unless(bytes, abort) else {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                return false;
            };
            if !waited.is_zero() {
                tracing::trace!(
                    "{}: waited {:?} for {} bytes to {}",
                    l.name(),
                    waited,
                    bytes,
                    self.inner.location()
                );
            }
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        true
    }

    fn pay_upload(&self, kind: FileKind, name: &str, bytes: u64) -> Result<()> {
        if kind == FileKind::Lock {
            for l in &self.upload {
                l.charge(bytes);
            }
            return Ok(());
        }
        // Only packs are given up: index files are small and make the packs already sent
        // reusable without adoption; snapshots are the caller's to withhold.
        let paid = match &self.abort {
            Some(abort) if kind == FileKind::Pack => {
                self.pay_unless(&self.upload, bytes, abort.as_ref())
            }
            _ => self.pay_unless(&self.upload, bytes, &|| false),
        };
        if paid {
            Ok(())
        } else {
            Err(BackendError::new(
                ErrorKind::Cancelled,
                "put",
                name,
                self.inner.location(),
                "cancelled while waiting for its traffic limit",
            ))
        }
    }
}

impl Backend for Throttled {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn create(&self) -> Result<()> {
        self.inner.create()
    }

    fn put(&self, kind: FileKind, name: &str, data: Bytes) -> Result<()> {
        self.pay_upload(kind, name, data.len() as u64)?;
        self.inner.put(kind, name, data)
    }

    fn put_index(&self, name: &str, data: Bytes, packs: &[String]) -> Result<()> {
        self.pay_upload(FileKind::Index, name, data.len() as u64)?;
        self.inner.put_index(name, data, packs)
    }

    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        let data = self.inner.get(kind, name)?;
        self.pay(&self.download, data.len() as u64);
        Ok(data)
    }

    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.pay(&self.download, len);
        self.inner.get_range(kind, name, offset, len)
    }

    fn get_range_into(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        self.pay(&self.download, len);
        self.inner.get_range_into(kind, name, offset, len, buf)
    }

    fn sources(&self) -> usize {
        self.inner.sources()
    }

    fn get_range_from(
        &self,
        source: usize,
        kind: FileKind,
        name: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        self.pay(&self.download, len);
        self.inner
            .get_range_from(source, kind, name, offset, len, buf)
    }

    fn damaged(&self, source: usize, kind: FileKind, name: &str, why: &str) {
        self.inner.damaged(source, kind, name, why)
    }

    fn list(&self, kind: FileKind) -> Result<Vec<FileInfo>> {
        self.inner.list(kind)
    }

    fn stat(&self, kind: FileKind, name: &str) -> Result<FileInfo> {
        self.inner.stat(kind, name)
    }

    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        self.inner.delete(kind, name)
    }

    fn free_space(&self) -> Result<Option<u64>> {
        self.inner.free_space()
    }

    fn exists(&self, kind: FileKind, name: &str) -> Result<bool> {
        self.inner.exists(kind, name)
    }

    fn pacing(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0 || self.inner.pacing()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalBackend;
    use std::time::{Duration, Instant};

    const MIB: u64 = 1 << 20;

    fn local() -> (tempfile::TempDir, Arc<dyn Backend>) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        std::fs::create_dir(&root).unwrap();
        let b: Arc<dyn Backend> = Arc::new(LocalBackend::new(&root));
        b.create().unwrap();
        (dir, b)
    }

    #[test]
    fn uploads_and_downloads_are_charged_to_their_own_limits() {
        let (_d, inner) = local();
        let up = Arc::new(Limiter::fixed("up", Some(4 * MIB)));
        let down = Arc::new(Limiter::fixed("down", Some(8 * MIB)));
        let b = Throttled::wrap(inner, vec![up], vec![down]);
        let data = Bytes::from(vec![7u8; 6 * MIB as usize]);
        // 6 MiB at 4 MiB/s, 4 MiB of burst: half a second.
        let t = Instant::now();
        b.put(FileKind::Pack, "aa00", data.clone()).unwrap();
        let up_took = t.elapsed();
        assert!(up_took >= Duration::from_millis(450), "{up_took:?}");
        // Reads: 6 MiB whole, then 6 MiB in ranges at 8 MiB/s: (12 - 8) / 8 = 0.5 s.
        let t = Instant::now();
        assert_eq!(b.get(FileKind::Pack, "aa00").unwrap().len(), data.len());
        let mut buf = Vec::new();
        for i in 0..6 {
            b.get_range_into(FileKind::Pack, "aa00", i * MIB, MIB, &mut buf)
                .unwrap();
        }
        let down_took = t.elapsed();
        assert!(down_took >= Duration::from_millis(450), "{down_took:?}");
        assert!(down_took < Duration::from_secs(5), "{down_took:?}");
        // Metadata costs nothing.
        let t = Instant::now();
        for _ in 0..20 {
            b.list(FileKind::Pack).unwrap();
            b.stat(FileKind::Pack, "aa00").unwrap();
        }
        assert!(t.elapsed() < Duration::from_millis(400));
    }

    #[test]
    fn locks_never_wait_and_nothing_is_wrapped_without_limits() {
        let (_d, inner) = local();
        let up = Arc::new(Limiter::fixed("up", Some(1024)));
        let b = Throttled::wrap(Arc::clone(&inner), vec![up], vec![]);
        let t = Instant::now();
        for i in 0..4 {
            b.put(
                FileKind::Lock,
                &format!("l{i}"),
                Bytes::from(vec![0u8; 4096]),
            )
            .unwrap();
        }
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        assert!(!b.pacing());
        let same = Throttled::wrap(Arc::clone(&inner), vec![], vec![]);
        assert!(Arc::ptr_eq(&same, &inner));
    }

    #[test]
    fn a_cancelled_upload_stops_waiting_at_once_and_sends_nothing() {
        let (_d, inner) = local();
        let up = Arc::new(Limiter::fixed("up", Some(MIB)));
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = Arc::clone(&flag);
        let b = Throttled::wrap_abortable(
            Arc::clone(&inner),
            vec![up],
            vec![],
            Arc::new(move || f.load(Ordering::SeqCst)),
        );
        // The first second's worth goes at once; the next 8 MiB would wait 8 s.
        b.put(FileKind::Pack, "cc00", Bytes::from(vec![1u8; MIB as usize]))
            .unwrap();
        let b2 = Arc::clone(&b);
        let writer = std::thread::spawn(move || {
            b2.put(
                FileKind::Pack,
                "cc01",
                Bytes::from(vec![2u8; 8 * MIB as usize]),
            )
        });
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        flag.store(true, Ordering::SeqCst);
        let e = writer.join().unwrap().unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
        assert!(!inner.exists(FileKind::Pack, "cc01").unwrap());
        assert!(!b.pacing());
        // Lock files are never held back, cancelled or not; index files are not given up,
        // and the 8 MiB never sent do not hold them back: only what was sent counts.
        b.put(FileKind::Lock, "l0", Bytes::from(vec![0u8; 16]))
            .unwrap();
        let t = Instant::now();
        b.put(FileKind::Index, "ix", Bytes::from(vec![3u8; 64 << 10]))
            .unwrap();
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(inner.exists(FileKind::Index, "ix").unwrap());
    }

    #[test]
    fn a_waiting_call_shows_as_pacing() {
        let (_d, inner) = local();
        let up = Arc::new(Limiter::fixed("up", Some(MIB)));
        let b = Throttled::wrap(inner, vec![up], vec![]);
        let b2 = Arc::clone(&b);
        let writer = std::thread::spawn(move || {
            b2.put(
                FileKind::Pack,
                "bb00",
                Bytes::from(vec![1u8; 2 * MIB as usize]),
            )
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(b.pacing());
        writer.join().unwrap().unwrap();
        assert!(!b.pacing());
    }
}
