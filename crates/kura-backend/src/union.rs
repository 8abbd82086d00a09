//! A read view over several targets of one repository group: the union of what they hold.
//!
//! A fail-over backup is *sectioned*: its extents lie on different targets (each section is
//! the packs one index file lists there), and no single target holds all of it. Restoring it,
//! healing it, or reading a mirrored backup whose copies each lost something, means reading
//! the group as one repository: listings are the union of the members' (a file is present if
//! any member has it), and each read goes to the members in the order given (the caller
//! puts the healthiest first) until one answers. Members share the master key, so the same
//! name means the same bytes everywhere.
//!
//! A member that fails (other than "not found"), or serves data a reader finds damaged
//! ([`Backend::damaged`]), is asked last from then on, so a dead target costs its deadline
//! once rather than on every read, and damaged copies are read only when nothing else has the
//! data. Both count as the member's failure for the caller's health records.
//!
//! The view writes only lock files (to every member, so a prune on any of them sees the
//! reader); other writes are refused. Listings skip a member that cannot list (with a
//! warning): what it alone held is then missing, and reading it fails with its name.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::members::{Members, Merge, Missed, fallback_order, merge};
use crate::{Backend, BackendError, ErrorKind, FileInfo, FileKind, Result};

pub struct UnionBackend {
    members: Members,
    /// Per member, its first failure other than "not found" (for the caller's health
    /// records: a target that failed a read while others served it still failed).
    failures: Mutex<Vec<Option<String>>>,
}

impl std::fmt::Debug for UnionBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnionBackend")
            .field("location", &self.location())
            .finish()
    }
}

impl UnionBackend {
    /// Members in the order reads try them.
    pub fn new(members: Vec<Arc<dyn Backend>>) -> UnionBackend {
        let n = members.len();
        UnionBackend {
            members: Members::new("union", members),
            failures: Mutex::new(vec![None; n]),
        }
    }

    pub fn members(&self) -> &[Arc<dyn Backend>] {
        self.members.all()
    }

    /// Members that failed an operation (other than "not found"), with the first error.
    pub fn failures(&self) -> Vec<(usize, String)> {
        let f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.iter()
            .enumerate()
            .filter_map(|(i, e)| e.clone().map(|e| (i, e)))
            .collect()
    }

    /// Members in the order given, except that those which already failed come last: a
    /// dead target costs its deadline once, not on every read.
    fn order(&self) -> Vec<usize> {
        let f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        fallback_order(self.members.len(), None, |i| f[i].is_some())
    }

    fn failed(&self, i: usize, e: &BackendError) {
        if e.kind() == ErrorKind::NotFound {
            return;
        }
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f[i].is_none() {
            f[i] = Some(e.to_string());
        }
    }

    fn read<T: Send + 'static>(
        &self,
        op: &'static str,
        name: &str,
        f: impl Fn(&dyn Backend) -> Result<T> + Send + Sync + 'static,
    ) -> Result<T> {
        // No limit of its own: each member's calls keep their own deadlines.
        self.members
            .read_first(self.order(), None, op, name, f, |i, m| {
                self.failed(i, m.error())
            })
    }

    /// Lock files go to (and leave) every member, so a prune on any of them sees the
    /// reader. Done if any member did it; a member that failed is recorded and named.
    fn on_every_member(
        &self,
        op: &'static str,
        name: &str,
        f: impl Fn(&dyn Backend) -> Result<()> + Send + Sync + 'static,
    ) -> Result<()> {
        let all: Vec<usize> = (0..self.members.len()).collect();
        let mut last = None;
        let mut any = false;
        for (i, answer) in self.members.each(&all, None, op, name, f) {
            match answer.map_err(Missed::into_error) {
                Ok(()) => any = true,
                Err(e) if op == "delete" && e.kind() == ErrorKind::NotFound => any = true,
                Err(e) => {
                    tracing::warn!("{op} lock on {}: {e}", self.members.get(i).location());
                    self.failed(i, &e);
                    last = Some(e);
                }
            }
        }
        match (any, last) {
            (false, Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    fn read_only(&self, op: &'static str, kind: FileKind, name: &str) -> BackendError {
        BackendError::new(
            ErrorKind::Other,
            op,
            name,
            self.location(),
            format!("a union of targets is a read view; cannot write a {kind}"),
        )
    }
}

impl Backend for UnionBackend {
    fn location(&self) -> String {
        self.members.location()
    }

    fn create(&self) -> Result<()> {
        Err(self.read_only("create", FileKind::Config, "config"))
    }

    fn put(&self, kind: FileKind, name: &str, data: Bytes) -> Result<()> {
        if kind != FileKind::Lock {
            return Err(self.read_only("put", kind, name));
        }
        let n = name.to_string();
        self.on_every_member("put", name, move |b| b.put(kind, &n, data.clone()))
    }

    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        let n = name.to_string();
        self.read("get", name, move |b| b.get(kind, &n))
    }

    fn get_range_into(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let n = name.to_string();
        *buf = self.read("get", name, move |b| b.get_range(kind, &n, offset, len))?;
        Ok(())
    }

    fn sources(&self) -> usize {
        self.members.len()
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
        match self.members.all().get(source) {
            Some(m) => m.get_range_into(kind, name, offset, len, buf),
            None => Err(BackendError::new(
                ErrorKind::NotFound,
                "get",
                name,
                self.location(),
                format!("no source {source}"),
            )),
        }
    }

    fn damaged(&self, source: usize, kind: FileKind, name: &str, why: &str) {
        if let Some(m) = self.members.all().get(source) {
            let e = BackendError::new(ErrorKind::Corrupt, "get", name, m.location(), why);
            tracing::debug!("{} {name}: damaged on {}: {why}", kind.dir(), m.location());
            self.failed(source, &e);
        }
    }

    fn list(&self, kind: FileKind) -> Result<Vec<FileInfo>> {
        let all: Vec<usize> = (0..self.members.len()).collect();
        let mut lists = Vec::new();
        let mut last = None;
        for (i, answer) in self
            .members
            .each(&all, None, "list", kind.dir(), move |b| b.list(kind))
        {
            match answer.map_err(Missed::into_error) {
                Ok(files) => lists.push(files),
                Err(e) => {
                    self.failed(i, &e);
                    tracing::warn!(
                        "listing {} of {}: {e}",
                        kind.dir(),
                        self.members.get(i).location()
                    );
                    last = Some(e);
                }
            }
        }
        match (lists.len(), last) {
            (0, Some(e)) => Err(e),
            _ => Ok(merge(lists, Merge::Union)),
        }
    }

    fn stat(&self, kind: FileKind, name: &str) -> Result<FileInfo> {
        let n = name.to_string();
        self.read("stat", name, move |b| b.stat(kind, &n))
    }

    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        if kind != FileKind::Lock {
            return Err(self.read_only("delete", kind, name));
        }
        let n = name.to_string();
        self.on_every_member("delete", name, move |b| b.delete(kind, &n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalBackend;

    #[test]
    fn union_lists_everything_and_reads_from_whoever_has_it() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a: Arc<dyn Backend> = Arc::new(LocalBackend::new(d1.path()));
        let b: Arc<dyn Backend> = Arc::new(LocalBackend::new(d2.path()));
        a.create().unwrap();
        b.create().unwrap();
        a.put(FileKind::Pack, "aa01", Bytes::from_static(b"one"))
            .unwrap();
        b.put(FileKind::Pack, "bb02", Bytes::from_static(b"two"))
            .unwrap();
        b.put(FileKind::Pack, "aa01", Bytes::from_static(b"one"))
            .unwrap();
        let u = UnionBackend::new(vec![a.clone(), b.clone()]);
        let names: Vec<String> = u
            .list(FileKind::Pack)
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, ["aa01", "bb02"]);
        assert_eq!(u.get(FileKind::Pack, "bb02").unwrap(), b"two");
        assert_eq!(u.get_range(FileKind::Pack, "bb02", 1, 2).unwrap(), b"wo");
        let missing = u.get(FileKind::Pack, "cc03").unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::NotFound);
        // Writes other than locks are refused; locks reach every member.
        assert!(u.put(FileKind::Pack, "dd", Bytes::new()).is_err());
        u.put(FileKind::Lock, "l1", Bytes::from_static(b"x"))
            .unwrap();
        assert!(a.exists(FileKind::Lock, "l1").unwrap() && b.exists(FileKind::Lock, "l1").unwrap());
        // A member that fails (not "not found") is asked last from then on.
        let a_dir = d1.path().to_path_buf();
        std::fs::rename(&a_dir, a_dir.with_extension("gone")).unwrap();
        std::fs::write(&a_dir, b"not a directory").unwrap();
        assert_eq!(u.get(FileKind::Pack, "aa01").unwrap(), b"one");
        assert_eq!(u.failures().iter().map(|f| f.0).collect::<Vec<_>>(), [0]);
        assert_eq!(u.order(), [1, 0]);
        std::fs::remove_file(&a_dir).unwrap();
        std::fs::rename(a_dir.with_extension("gone"), &a_dir).unwrap();
        // A member that cannot list is skipped; the rest still answer.
        drop(d1);
        let names: Vec<String> = u
            .list(FileKind::Pack)
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert!(names.contains(&"bb02".to_string()));
    }
}
