//! A repository in a local (or locally mounted) directory.
//!
//! Writes are atomic and durable: each file is written to a temporary name beginning with `.`
//! in its final directory, `fsync`ed, renamed into place, and the directory is `fsync`ed. A
//! crash leaves at worst a `.…tmp-…` file, which [`Backend::list`] never reports.
//!
//! Every call runs on the [`Executor`](crate::deadline::Executor) under the operation's
//! deadline, so a hung network mount is reported as `TimedOut` instead of hanging the caller,
//! and transient errors (`ETIMEDOUT`, `ESTALE`, …) are retried within that deadline.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::deadline::Executor;
use crate::retry::RetryPolicy;
use crate::{Backend, BackendError, ErrorKind, FileInfo, FileKind, Result};

/// A repository rooted at a directory on a local (or locally mounted) filesystem.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
    exec: Arc<Executor>,
    policy: RetryPolicy,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    location: String,
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self::with_policy(root, RetryPolicy::default())
    }

    pub fn with_policy(root: impl Into<PathBuf>, policy: RetryPolicy) -> Self {
        let root = root.into();
        let location = root.display().to_string();
        LocalBackend {
            inner: Arc::new(Inner { root, location }),
            exec: Executor::new(8, "kura-fs"),
            policy,
        }
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Run `f` on the executor under the deadline, with retries.
    fn call<T: Send + 'static>(
        &self,
        op: &'static str,
        object: String,
        f: impl Fn(&Inner) -> Result<T> + Clone + Send + 'static,
    ) -> Result<T> {
        self.policy.run(|left| {
            let inner = self.inner.clone();
            let f = f.clone();
            self.exec
                .run(left, move || f(&inner))
                .unwrap_or_else(|| Err(self.timed_out(op, &object, left)))
        })
    }

    fn timed_out(&self, op: &'static str, object: &str, after: Duration) -> BackendError {
        BackendError::new(
            ErrorKind::TimedOut,
            op,
            object,
            &self.inner.location,
            format!(
                "no answer from the file system within {:.1} s",
                after.as_secs_f64()
            ),
        )
    }
}

impl Inner {
    fn path(&self, kind: FileKind, name: &str) -> PathBuf {
        self.root.join(kind.relative_path(name))
    }

    fn err(&self, op: &'static str, kind: FileKind, name: &str, e: io::Error) -> BackendError {
        BackendError::io(op, kind.relative_path(name), &self.location, e)
    }

    fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let dir = path
            .parent()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
        let file_name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no name"))?;
        let mut rnd = [0u8; 6];
        getrandom::fill(&mut rnd).map_err(io::Error::other)?;
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            file_name.to_string_lossy(),
            hex::encode(rnd)
        ));
        let result = (|| {
            let mut f = match OpenOptions::new().write(true).create_new(true).open(&tmp) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Fan-out directory missing (created lazily, or removed by hand).
                    fs::create_dir_all(dir)?;
                    OpenOptions::new().write(true).create_new(true).open(&tmp)?
                }
                Err(e) => return Err(e),
            };
            f.write_all(data)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, path)?;
            sync_dir(dir)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn create(&self) -> Result<()> {
        let config = self.path(FileKind::Config, "config");
        if config.exists() {
            return Err(BackendError::repository_exists(&self.location));
        }
        let mk = |p: &Path| {
            fs::create_dir_all(p)
                .map_err(|e| BackendError::io("create", p.display().to_string(), &self.location, e))
        };
        mk(&self.root)?;
        for kind in FileKind::ALL {
            if kind != FileKind::Config {
                mk(&self.root.join(kind.dir()))?;
            }
        }
        for fan in 0..=255u8 {
            mk(&self.root.join("data").join(format!("{fan:02x}")))?;
        }
        sync_dir(&self.root).map_err(|e| BackendError::io("create", ".", &self.location, e))?;
        Ok(())
    }

    fn get_range_into(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let f = File::open(self.path(kind, name)).map_err(|e| self.err("get", kind, name, e))?;
        let len_usize = usize::try_from(len).map_err(|_| {
            BackendError::new(
                ErrorKind::Other,
                "get",
                kind.relative_path(name),
                &self.location,
                format!("range length {len} too large"),
            )
        })?;
        // Reuse the allocation; the bytes are overwritten by the read.
        buf.resize(len_usize, 0);
        buf.truncate(len_usize);
        f.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                BackendError::new(
                    ErrorKind::Corrupt,
                    "get",
                    kind.relative_path(name),
                    &self.location,
                    format!("file is shorter than {offset}+{len} bytes"),
                )
            } else {
                self.err("get", kind, name, e)
            }
        })
    }

    fn list(&self, kind: FileKind) -> Result<Vec<FileInfo>> {
        let mut out = Vec::new();
        let dir = self.root.join(kind.dir());
        let list_dir = |dir: &Path, out: &mut Vec<FileInfo>| -> io::Result<()> {
            let rd = match fs::read_dir(dir) {
                Ok(rd) => rd,
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        // Repositories made before catalog and condemned records existed
                        // have no such directory.
                        && matches!(
                            kind,
                            FileKind::Pack
                                | FileKind::Probe
                                | FileKind::Catalog
                                | FileKind::Condemned
                        ) =>
                {
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            for entry in rd {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if !visible(&name) {
                    continue;
                }
                let md = entry.metadata()?;
                if md.is_file() {
                    out.push(FileInfo {
                        name,
                        size: md.len(),
                    });
                }
            }
            Ok(())
        };
        let res = match kind {
            FileKind::Config => match fs::metadata(self.path(kind, "config")) {
                Ok(md) => {
                    out.push(FileInfo {
                        name: "config".into(),
                        size: md.len(),
                    });
                    Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            },
            FileKind::Pack => (|| {
                for entry in fs::read_dir(&dir)? {
                    let entry = entry?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if visible(&name) && entry.file_type()?.is_dir() {
                        list_dir(&entry.path(), &mut out)?;
                    }
                }
                Ok(())
            })(),
            _ => list_dir(&dir, &mut out),
        };
        res.map_err(|e| BackendError::io("list", kind.dir(), &self.location, e))?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn free_space(&self) -> Result<Option<u64>> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(self.root.as_os_str().as_bytes()).map_err(|_| {
            BackendError::new(
                ErrorKind::Other,
                "statvfs",
                ".",
                &self.location,
                "path contains NUL",
            )
        })?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: c is NUL-terminated; st is a valid out pointer.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(BackendError::io(
                "statvfs",
                ".",
                &self.location,
                io::Error::last_os_error(),
            ));
        }
        Ok(Some(st.f_bavail as u64 * st.f_frsize as u64))
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn visible(name: &str) -> bool {
    !name.starts_with('.')
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.inner.location.clone()
    }

    fn create(&self) -> Result<()> {
        self.call("create", ".".into(), |i| i.create())
    }

    fn put(&self, kind: FileKind, name: &str, data: Bytes) -> Result<()> {
        let name = name.to_string();
        self.call("put", kind.relative_path(&name), move |i| {
            let path = i.path(kind, &name);
            i.write_atomic(&path, &data)
                .map_err(|e| i.err("put", kind, &name, e))
        })
    }

    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        let name = name.to_string();
        self.call("get", kind.relative_path(&name), move |i| {
            fs::read(i.path(kind, &name)).map_err(|e| i.err("get", kind, &name, e))
        })
    }

    fn get_range_into(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        // The buffer travels to the worker and back (it is lost only if the call times out).
        let name = name.to_string();
        let slot = Arc::new(std::sync::Mutex::new(std::mem::take(buf)));
        let result = {
            let slot = slot.clone();
            self.call("get", kind.relative_path(&name), move |i| {
                let mut b = slot
                    .lock()
                    .map(|mut g| std::mem::take(&mut *g))
                    .unwrap_or_default();
                let r = i.get_range_into(kind, &name, offset, len, &mut b);
                if let Ok(mut g) = slot.lock() {
                    *g = b;
                }
                r
            })
        };
        if let Ok(mut g) = slot.lock() {
            *buf = std::mem::take(&mut *g);
        }
        result
    }

    fn list(&self, kind: FileKind) -> Result<Vec<FileInfo>> {
        self.call("list", kind.dir().to_string(), move |i| i.list(kind))
    }

    fn stat(&self, kind: FileKind, name: &str) -> Result<FileInfo> {
        let name = name.to_string();
        self.call("stat", kind.relative_path(&name), move |i| {
            let md =
                fs::metadata(i.path(kind, &name)).map_err(|e| i.err("stat", kind, &name, e))?;
            Ok(FileInfo {
                name: name.clone(),
                size: md.len(),
            })
        })
    }

    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        let name = name.to_string();
        self.call("delete", kind.relative_path(&name), move |i| {
            fs::remove_file(i.path(kind, &name)).map_err(|e| i.err("delete", kind, &name, e))
        })
    }

    fn free_space(&self) -> Result<Option<u64>> {
        self.call("statvfs", ".".into(), |i| i.free_space())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_list_delete_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path().join("repo"));
        b.create().unwrap();
        b.put(FileKind::Pack, "ab12", Bytes::from_static(b"hello world"))
            .unwrap();
        b.put(FileKind::Index, "i1", Bytes::from_static(b"idx"))
            .unwrap();
        assert_eq!(b.get(FileKind::Pack, "ab12").unwrap(), b"hello world");
        assert_eq!(b.get_range(FileKind::Pack, "ab12", 6, 5).unwrap(), b"world");
        let packs = b.list(FileKind::Pack).unwrap();
        assert_eq!(
            packs,
            vec![FileInfo {
                name: "ab12".into(),
                size: 11
            }]
        );
        assert!(b.exists(FileKind::Index, "i1").unwrap());
        b.delete(FileKind::Index, "i1").unwrap();
        assert!(!b.exists(FileKind::Index, "i1").unwrap());
        let e = b.get(FileKind::Index, "i1").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn range_past_end_is_corrupt_and_temp_files_are_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        b.create().unwrap();
        b.put(FileKind::Snapshot, "s", Bytes::from_static(b"abc"))
            .unwrap();
        let e = b.get_range(FileKind::Snapshot, "s", 2, 5).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        fs::write(dir.path().join("snapshots/.s.tmp-1234"), b"partial").unwrap();
        let names: Vec<_> = b
            .list(FileKind::Snapshot)
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, vec!["s".to_string()]);
    }

    #[test]
    fn create_refuses_existing_repository() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        b.create().unwrap();
        b.put(FileKind::Config, "config", Bytes::from_static(b"x"))
            .unwrap();
        assert_eq!(b.create().unwrap_err().kind(), ErrorKind::AlreadyExists);
    }
}
