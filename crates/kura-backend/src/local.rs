//! A repository in a local directory.
//!
//! Writes are atomic and durable: each file is written to a temporary name beginning with `.`
//! in its final directory, `fsync`ed, renamed into place, and the directory is `fsync`ed. A
//! crash leaves at worst a `.…tmp-…` file, which [`Backend::list`] never reports.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::{Backend, BackendError, ErrorKind, FileInfo, FileKind, Result};

/// A repository rooted at a directory on a local (or locally mounted) filesystem.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: PathBuf,
    location: String,
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let location = root.display().to_string();
        LocalBackend { root, location }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

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
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn visible(name: &str) -> bool {
    !name.starts_with('.')
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn create(&self) -> Result<()> {
        let config = self.path(FileKind::Config, "config");
        if config.exists() {
            return Err(BackendError::new(
                ErrorKind::AlreadyExists,
                "create",
                "config",
                &self.location,
                "a repository already exists here",
            ));
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

    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        let path = self.path(kind, name);
        self.write_atomic(&path, data)
            .map_err(|e| self.err("put", kind, name, e))
    }

    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        fs::read(self.path(kind, name)).map_err(|e| self.err("get", kind, name, e))
    }

    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.get_range_into(kind, name, offset, len, &mut buf)?;
        Ok(buf)
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
                Err(e) if e.kind() == io::ErrorKind::NotFound && kind == FileKind::Pack => {
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

    fn stat(&self, kind: FileKind, name: &str) -> Result<FileInfo> {
        let md =
            fs::metadata(self.path(kind, name)).map_err(|e| self.err("stat", kind, name, e))?;
        Ok(FileInfo {
            name: name.to_string(),
            size: md.len(),
        })
    }

    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        fs::remove_file(self.path(kind, name)).map_err(|e| self.err("delete", kind, name, e))
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
        b.put(FileKind::Pack, "ab12", b"hello world").unwrap();
        b.put(FileKind::Index, "i1", b"idx").unwrap();
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
        b.put(FileKind::Snapshot, "s", b"abc").unwrap();
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
        b.put(FileKind::Config, "config", b"x").unwrap();
        assert_eq!(b.create().unwrap_err().kind(), ErrorKind::AlreadyExists);
    }
}
