//! A repository in a local (or locally mounted) directory.
//!
//! Writes are atomic and durable: each file is written to a temporary name beginning with `.`
//! in its final directory, `fsync`ed, renamed into place, and the directory is `fsync`ed. A
//! crash leaves at worst a `.NAME.tmp-PID-RANDOM` file, which [`Backend::list`] never reports
//! and removes once it is older than [`STALE_TEMP_AGE`] (no write takes that long: a put that
//! did would fail its rename and be retried under a new name). Deletes `fsync` the directory
//! too, so a removal survives a crash as a write does.
//!
//! Everything written is private: files are created 0600 and directories 0700 (directories
//! that already exist are left as they are). Only [`Backend::create`] makes the repository
//! root and its folders: a put into a missing root (an unmounted NAS) fails with "repository
//! missing" instead of building an empty repository skeleton on the mount point; the only
//! folders made later are a missing `data/XX` fan-out folder, a kind's folder in a repository
//! whose config exists (older repositories lack `catalog/`), and `probe/` (with the target
//! directory itself if its parent exists: `target probe` of a new target before `init`).
//!
//! Every call runs on the [`Executor`](crate::deadline::Executor) under the operation's
//! deadline, so a hung network mount is reported as `TimedOut` instead of hanging the caller,
//! and transient errors (`ETIMEDOUT`, `ESTALE`, …) are retried within that deadline.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::deadline::Executor;
use crate::retry::RetryPolicy;
use crate::{Backend, BackendError, ErrorKind, FileInfo, FileKind, Result};

/// Temporary files of writes older than this were left by a killed process and are removed.
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

/// Mode of every file the backend creates.
const FILE_MODE: u32 = 0o600;
/// Mode of every directory the backend creates.
const DIR_MODE: u32 = 0o700;

/// Make one directory, private; an existing one is fine.
fn mkdir(p: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(DIR_MODE).create(p) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && p.is_dir() => Ok(()),
        r => r,
    }
}

/// Whether `name` is a temporary file of [`Inner::write_atomic`].
fn is_temp(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

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
        if e.get_ref().is_some_and(|r| r.is::<MissingRepository>()) {
            return BackendError::repository_missing(
                op,
                kind.relative_path(name),
                &self.location,
                e.to_string(),
            );
        }
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
            ".{}.tmp-{}-{}",
            file_name.to_string_lossy(),
            std::process::id(),
            hex::encode(rnd)
        ));
        let open = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&tmp)
        };
        let result = (|| {
            let mut f = match open() {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.make_missing_dir(dir)?;
                    open()?
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

    /// A directory a put needs is missing. Only a `data/XX` fan-out folder (when `data/`
    /// exists), a kind's folder of a repository whose config exists, or `probe/` in an
    /// existing directory (`target probe` before `init`) is made; anything else
    /// means the repository itself is gone (an unmounted NAS, a wrong path), and nothing is
    /// created where it should be.
    fn make_missing_dir(&self, dir: &Path) -> io::Result<()> {
        let parent = dir.parent().unwrap_or(dir);
        let probe = dir == self.root.join(FileKind::Probe.dir());
        // `target probe` of a new target (added before `init`) may make its directory, one
        // level below an existing one, as `init` would; nothing else may.
        if probe
            && !self.root.exists()
            && let Some(up) = self.root.parent().filter(|u| u.is_dir())
        {
            mkdir(&self.root)?;
            sync_dir(up)?;
        }
        let may = if parent == self.root {
            self.path(FileKind::Config, "config").is_file() || (probe && self.root.is_dir())
        } else {
            parent == self.root.join("data") && parent.is_dir()
        };
        if !may {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                MissingRepository(self.root.display().to_string()),
            ));
        }
        mkdir(dir)?;
        sync_dir(parent)
    }

    fn create(&self) -> Result<()> {
        let config = self.path(FileKind::Config, "config");
        if config.exists() {
            return Err(BackendError::repository_exists(&self.location));
        }
        let err =
            |p: &Path, e| BackendError::io("create", p.display().to_string(), &self.location, e);
        // The root and any missing ancestors, each new one private and made durable in its
        // parent.
        let mut missing = Vec::new();
        let mut p = self.root.as_path();
        while !p.as_os_str().is_empty() && !p.exists() {
            missing.push(p);
            match p.parent() {
                Some(q) => p = q,
                None => break,
            }
        }
        for d in missing.iter().rev() {
            mkdir(d).map_err(|e| err(d, e))?;
            if let Some(parent) = d.parent().filter(|q| !q.as_os_str().is_empty()) {
                sync_dir(parent).map_err(|e| err(parent, e))?;
            }
        }
        for kind in FileKind::ALL {
            if kind != FileKind::Config {
                let d = self.root.join(kind.dir());
                mkdir(&d).map_err(|e| err(&d, e))?;
            }
        }
        let data = self.root.join("data");
        for fan in 0..=255u8 {
            let d = data.join(format!("{fan:02x}"));
            mkdir(&d).map_err(|e| err(&d, e))?;
        }
        sync_dir(&data).map_err(|e| err(&data, e))?;
        sync_dir(&self.root).map_err(|e| err(&self.root, e))?;
        Ok(())
    }

    /// Remove temporary files of killed writes in `dir` (see the module docs).
    fn remove_stale_temp(&self, path: &Path, md: &fs::Metadata) {
        let old = md
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age > STALE_TEMP_AGE);
        if old && md.is_file() {
            match fs::remove_file(path) {
                Ok(()) => tracing::info!("removed {} left by a killed write", path.display()),
                Err(e) => tracing::debug!("cannot remove {}: {e}", path.display()),
            }
        }
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
                    if is_temp(&name)
                        && let Ok(md) = entry.metadata()
                    {
                        self.remove_stale_temp(&entry.path(), &md);
                    }
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

/// The detail of a put into a repository whose directory is gone.
#[derive(Debug)]
struct MissingRepository(String);

impl std::fmt::Display for MissingRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the repository directory {} is missing (not mounted?); nothing was created",
            self.0
        )
    }
}

impl std::error::Error for MissingRepository {}

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
            let path = i.path(kind, &name);
            fs::remove_file(&path).map_err(|e| i.err("delete", kind, &name, e))?;
            // The removal is durable only once the directory is.
            match path.parent() {
                Some(dir) => sync_dir(dir).map_err(|e| i.err("delete", kind, &name, e)),
                None => Ok(()),
            }
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

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn everything_created_is_private_and_existing_dirs_are_left_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // A root the user made (0755) keeps its mode; what kura makes is 0700/0600.
        let user_root = dir.path().join("mine");
        fs::create_dir(&user_root).unwrap();
        fs::set_permissions(&user_root, fs::Permissions::from_mode(0o755)).unwrap();
        let b = LocalBackend::new(&user_root);
        b.create().unwrap();
        assert_eq!(mode(&user_root), 0o755);
        let fresh = dir.path().join("a/b/repo");
        let b2 = LocalBackend::new(&fresh);
        b2.create().unwrap();
        for b in [&b, &b2] {
            let root = b.root().to_path_buf();
            for kind in FileKind::ALL {
                let name = if kind == FileKind::Config {
                    "config"
                } else {
                    "00ab"
                };
                b.put(kind, name, Bytes::from_static(b"secret")).unwrap();
                let p = root.join(kind.relative_path(name));
                assert_eq!(mode(&p), 0o600, "{}", p.display());
                if kind != FileKind::Config {
                    assert_eq!(mode(p.parent().unwrap()), 0o700, "{}", p.display());
                }
            }
        }
        for p in ["a", "a/b", "a/b/repo", "a/b/repo/data", "a/b/repo/data/ff"] {
            assert_eq!(mode(&dir.path().join(p)), 0o700, "{p}");
        }
    }

    #[test]
    fn a_missing_root_is_never_created_by_a_put() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("nas");
        let b = LocalBackend::new(&root);
        for kind in [FileKind::Lock, FileKind::Pack, FileKind::Snapshot] {
            let e = b.put(kind, "00ab", Bytes::from_static(b"x")).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
            assert!(e.is_repository_missing(), "{e}");
            assert!(e.to_string().contains("missing"), "{e}");
        }
        assert!(!root.exists());
        // An empty mount point: nothing appears in it either.
        fs::create_dir(&root).unwrap();
        assert!(
            b.put(FileKind::Lock, "l", Bytes::from_static(b"x"))
                .is_err()
        );
        assert_eq!(fs::read_dir(&root).unwrap().count(), 0);
        // In a real repository, a fan-out folder or kind folder removed by hand comes back.
        b.create().unwrap();
        b.put(FileKind::Config, "config", Bytes::from_static(b"c"))
            .unwrap();
        fs::remove_dir(root.join("data/ab")).unwrap();
        fs::remove_dir(root.join("snapshots")).unwrap();
        b.put(FileKind::Pack, "ab12", Bytes::from_static(b"p"))
            .unwrap();
        b.put(FileKind::Snapshot, "s", Bytes::from_static(b"s"))
            .unwrap();
    }

    #[test]
    fn stale_temp_files_are_removed_by_list_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        b.create().unwrap();
        let old = dir.path().join("data/ab/.ab12.tmp-999999-0011aabbccdd");
        let young = dir.path().join("index/.i.tmp-1-0011aabbccdd");
        let other = dir.path().join("index/.keep-me");
        for p in [&old, &young, &other] {
            fs::write(p, b"partial").unwrap();
        }
        let f = fs::File::options().write(true).open(&old).unwrap();
        f.set_modified(std::time::SystemTime::now() - STALE_TEMP_AGE * 2)
            .unwrap();
        drop(f);
        let f = fs::File::options().write(true).open(&other).unwrap();
        f.set_modified(std::time::SystemTime::now() - STALE_TEMP_AGE * 2)
            .unwrap();
        drop(f);
        assert!(b.list(FileKind::Pack).unwrap().is_empty());
        assert!(b.list(FileKind::Index).unwrap().is_empty());
        assert!(!old.exists(), "a stale temp file is removed");
        assert!(young.exists(), "a write that may be running is left alone");
        assert!(other.exists(), "only kura's temp files are touched");
    }
}
