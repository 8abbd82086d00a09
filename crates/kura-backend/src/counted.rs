//! [`Counted`]: a backend that counts the bytes put through it, for whoever watches a
//! run's uploads (the daemon's tasks report them, and predict from them).
//!
//! Every `put` and `put_index` adds its payload's length to a shared counter once the call
//! succeeded — what the target acknowledged, not what was tried; a retried upload counts
//! once. Everything else passes through untouched.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::{Backend, FileInfo, FileKind, Result};

/// A backend counting the bytes put through it into a shared counter.
#[derive(Debug)]
pub struct Counted {
    inner: Arc<dyn Backend>,
    put: Arc<AtomicU64>,
}

impl Counted {
    /// `inner`, its acknowledged uploads added to `put`.
    pub fn new(inner: Arc<dyn Backend>, put: Arc<AtomicU64>) -> Counted {
        Counted { inner, put }
    }

    fn count<T>(&self, r: Result<T>, n: usize) -> Result<T> {
        if r.is_ok() {
            self.put.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl Backend for Counted {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn create(&self) -> Result<()> {
        self.inner.create()
    }
    fn put(&self, kind: FileKind, name: &str, data: Bytes) -> Result<()> {
        let n = data.len();
        let r = self.inner.put(kind, name, data);
        self.count(r, n)
    }
    fn put_index(&self, name: &str, data: Bytes, packs: &[String]) -> Result<()> {
        let n = data.len();
        let r = self.inner.put_index(name, data, packs);
        self.count(r, n)
    }
    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        self.inner.get(kind, name)
    }
    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
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
        self.inner.pacing()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalBackend;

    #[test]
    fn acknowledged_puts_are_counted_once() {
        let d = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Backend> = Arc::new(LocalBackend::new(d.path()));
        inner.create().unwrap();
        let n = Arc::new(AtomicU64::new(0));
        let c = Counted::new(inner, Arc::clone(&n));
        c.put(
            FileKind::Pack,
            &"ab".repeat(32),
            Bytes::from(vec![0u8; 1000]),
        )
        .unwrap();
        c.put(
            FileKind::Snapshot,
            &"cd".repeat(32),
            Bytes::from(vec![1u8; 24]),
        )
        .unwrap();
        assert_eq!(c.get(FileKind::Pack, &"ab".repeat(32)).unwrap().len(), 1000);
        assert_eq!(n.load(Ordering::Relaxed), 1024);
    }
}
