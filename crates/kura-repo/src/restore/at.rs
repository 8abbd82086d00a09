//! File-system operations relative to directory handles — how a restore touches the target.
//!
//! # Why
//! A restore runs with the restoring user's rights (often root) inside a directory that other
//! users may be able to write to while it runs. Anything done through a *path* can be
//! redirected between the check and the use: a directory swapped for a symlink sends every
//! later file outside the target; a name replaced by a hard link to a file elsewhere makes an
//! in-place write land in that file. So a restore never resolves a path below the target:
//!
//! - every directory is a [`Dir`] — an open descriptor reached from its parent's descriptor by
//!   one name with `O_NOFOLLOW | O_DIRECTORY` — and remembers its identity (device, inode);
//! - every entry is created with `*at` calls relative to its parent's descriptor, files with
//!   `O_CREAT | O_EXCL | O_NOFOLLOW`, so an existing name (symlink, hard link, FIFO) is never
//!   opened for writing; a file being written is reopened by name only with `O_NOFOLLOW` and
//!   checked to be the very inode created;
//! - existing entries are replaced by creating the new one under a temporary name and
//!   renaming it over the old one (the old inode is unlinked, never written), or removed with
//!   `unlinkat`, which never follows a symlink;
//! - metadata is set through descriptors (`fchown`, `fchmod`, `fsetxattr`, `futimens`) or,
//!   for symlinks and special files that cannot be opened, with `AT_SYMLINK_NOFOLLOW` calls
//!   and an `O_PATH` descriptor (see [`crate::fsmeta`]).
//!
//! Only the target directory itself is opened by path (the user named it; following
//! symlinks there is what the user asked for).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// (device, inode): what makes "the same directory" checkable after a reopen.
pub(crate) type Ident = (u64, u64);

/// An open directory of the restore target.
#[derive(Debug)]
pub(crate) struct Dir {
    fd: OwnedFd,
    ident: Ident,
}

/// What `fstatat(…, AT_SYMLINK_NOFOLLOW)` says of a name.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub kind: FileType,
    pub ident: Ident,
    pub size: u64,
    pub nlink: u64,
    pub mtime: (i64, u32),
    pub rdev: u64,
}

impl Entry {
    pub fn is_dir(&self) -> bool {
        self.kind == FileType::Directory
    }
}

fn entry_of(st: &rustix::fs::Stat) -> Entry {
    Entry {
        kind: FileType::from_raw_mode(st.st_mode),
        ident: (st.st_dev, st.st_ino),
        size: st.st_size as u64,
        nlink: st.st_nlink,
        mtime: (st.st_mtime, st.st_mtime_nsec as u32),
        rdev: st.st_rdev,
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

fn io_err(e: rustix::io::Errno) -> io::Error {
    io::Error::from(e)
}

impl Dir {
    /// Open (creating it and its parents if needed) the directory the user named. Symlinks
    /// on the way are followed: this is the one path a restore resolves.
    pub fn open_target(path: &Path) -> io::Result<Dir> {
        std::fs::create_dir_all(path)?;
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err)?;
        Dir::from_fd(fd)
    }

    fn from_fd(fd: OwnedFd) -> io::Result<Dir> {
        let st = rustix::fs::fstat(&fd).map_err(io_err)?;
        Ok(Dir {
            fd,
            ident: (st.st_dev, st.st_ino),
        })
    }

    pub fn ident(&self) -> Ident {
        self.ident
    }

    /// The entry `name`, not following a symlink; `None` when there is none.
    pub fn entry(&self, name: &OsStr) -> io::Result<Option<Entry>> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(entry_of(&st))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(io_err(e)),
        }
    }

    /// Open the subdirectory `name`; a symlink or anything else that is not a directory is
    /// refused (`ELOOP` / `ENOTDIR`).
    pub fn open_dir(&self, name: &OsStr) -> io::Result<Dir> {
        let fd = rustix::fs::openat(&self.fd, name, DIR_FLAGS, Mode::empty()).map_err(io_err)?;
        Dir::from_fd(fd)
    }

    /// Open the subdirectory `name` and check it is the directory `expect`.
    pub fn reopen_dir(&self, name: &OsStr, expect: Ident) -> io::Result<Dir> {
        let d = self.open_dir(name)?;
        check_same(d.ident, expect, name)?;
        Ok(d)
    }

    /// The parent of this directory, checked to be `expect` (a directory moved elsewhere
    /// meanwhile has another parent, and is refused).
    pub fn parent(&self, expect: Ident) -> io::Result<Dir> {
        self.reopen_dir(OsStr::new(".."), expect)
    }

    /// Create the subdirectory `name` (mode 0700 until its metadata is applied).
    pub fn mkdir(&self, name: &OsStr) -> io::Result<()> {
        rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o700)).map_err(io_err)
    }

    /// Create the regular file `name`, which must not exist (mode 0600 until its metadata is
    /// applied). Never opens an existing entry.
    pub fn create_file(&self, name: &OsStr) -> io::Result<(File, Ident)> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(io_err)?;
        let st = rustix::fs::fstat(&fd).map_err(io_err)?;
        Ok((File::from(fd), (st.st_dev, st.st_ino)))
    }

    /// Reopen for writing the file this restore created as `name`: refused unless it is
    /// still that very inode.
    pub fn open_created(&self, name: &OsStr, expect: Ident) -> io::Result<File> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err)?;
        let st = rustix::fs::fstat(&fd).map_err(io_err)?;
        check_same((st.st_dev, st.st_ino), expect, name)?;
        Ok(File::from(fd))
    }

    /// Open an existing regular file for reading (to compare it with the snapshot) without
    /// following a symlink or blocking on a FIFO; refused unless it is the entry `expect`
    /// and a regular file.
    pub fn open_existing(&self, name: &OsStr, expect: Ident) -> io::Result<File> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err)?;
        let st = rustix::fs::fstat(&fd).map_err(io_err)?;
        check_same((st.st_dev, st.st_ino), expect, name)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(io::Error::other("not a regular file"));
        }
        Ok(File::from(fd))
    }

    /// Open the block device node `name` for writing, checked to be the entry `expect`.
    pub fn open_device(&self, name: &OsStr, expect: Ident) -> io::Result<File> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err)?;
        let st = rustix::fs::fstat(&fd).map_err(io_err)?;
        check_same((st.st_dev, st.st_ino), expect, name)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::BlockDevice {
            return Err(io::Error::other("not a block device"));
        }
        Ok(File::from(fd))
    }

    /// Rename `from` to `to` within this directory, replacing a non-directory `to`
    /// atomically (its inode is unlinked, never written).
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        rustix::fs::renameat(&self.fd, from, &self.fd, to).map_err(io_err)
    }

    /// Remove the non-directory `name`; a missing one is fine.
    pub fn unlink(&self, name: &OsStr) -> io::Result<()> {
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(io_err(e)),
        }
    }

    /// Remove `name` whatever it is: a directory with everything below it (through
    /// descriptors, never following a symlink), anything else with `unlinkat`.
    pub fn remove_all(&self, name: &OsStr) -> io::Result<()> {
        match self.entry(name)? {
            None => return Ok(()),
            Some(e) if !e.is_dir() => return self.unlink(name),
            Some(_) => {}
        }
        // Iterative, so a tree of any depth can be removed: a stack of open directories,
        // each emptied before it is removed from its parent.
        let mut stack: Vec<(Dir, OsString)> = vec![(self.open_dir(name)?, name.to_os_string())];
        while let Some((dir, _)) = stack.last() {
            let mut descend = None;
            for child in dir.names()? {
                match dir.entry(&child)? {
                    Some(e) if e.is_dir() => {
                        descend = Some((dir.open_dir(&child)?, child));
                        break;
                    }
                    Some(_) => dir.unlink(&child)?,
                    None => {}
                }
            }
            match descend {
                Some(next) => stack.push(next),
                None => {
                    let Some((_, done)) = stack.pop() else { break };
                    let parent = stack.last().map(|(d, _)| d).unwrap_or(self);
                    match rustix::fs::unlinkat(&parent.fd, &done, AtFlags::REMOVEDIR) {
                        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                        Err(e) => return Err(io_err(e)),
                    }
                }
            }
        }
        Ok(())
    }

    /// Every name in this directory but `.` and `..`.
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        let fd = rustix::fs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty()).map_err(io_err)?;
        let dir = rustix::fs::Dir::new(fd).map_err(io_err)?;
        let mut out = Vec::new();
        for e in dir {
            let e = e.map_err(io_err)?;
            let n = e.file_name().to_bytes();
            if n != b"." && n != b".." {
                out.push(OsStr::from_bytes(n).to_os_string());
            }
        }
        Ok(out)
    }

    pub fn symlink(&self, target: &[u8], name: &OsStr) -> io::Result<()> {
        rustix::fs::symlinkat(OsStr::from_bytes(target), &self.fd, name).map_err(io_err)
    }

    /// Create a FIFO or device node (mode 0600 until its metadata is applied).
    pub fn mknod(&self, name: &OsStr, kind: FileType, rdev: u64) -> io::Result<()> {
        rustix::fs::mknodat(&self.fd, name, kind, Mode::from_raw_mode(0o600), rdev).map_err(io_err)
    }

    /// Hard-link `src_name` in `src` as `name` here (a symlink at `src_name` is linked
    /// itself, never followed).
    pub fn link_from(&self, src: &Dir, src_name: &OsStr, name: &OsStr) -> io::Result<()> {
        rustix::fs::linkat(&src.fd, src_name, &self.fd, name, AtFlags::empty()).map_err(io_err)
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn check_same(got: Ident, expect: Ident, name: &OsStr) -> io::Result<()> {
    if got == expect {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{} was replaced while the restore ran; refusing to use it",
            Path::new(name).display()
        )))
    }
}

/// Raise this process's open-file limit to its hard limit: a restore keeps a descriptor per
/// directory level it is in and per directory with files in flight.
pub(crate) fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_dir_refuses_a_symlink_and_reopen_checks_identity() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("l")).unwrap();
        let root = Dir::open_target(t.path()).unwrap();
        let d = root.open_dir(OsStr::new("d")).unwrap();
        assert!(root.open_dir(OsStr::new("l")).is_err());
        // Same name, other directory: refused.
        std::fs::rename(t.path().join("d"), t.path().join("d2")).unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        assert!(root.reopen_dir(OsStr::new("d"), d.ident()).is_err());
        assert!(root.reopen_dir(OsStr::new("d2"), d.ident()).is_ok());
        assert_eq!(d.parent(root.ident()).unwrap().ident(), root.ident());
    }

    #[test]
    fn create_file_never_opens_an_existing_name() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::fs::hard_link(&victim, t.path().join("h")).unwrap();
        std::os::unix::fs::symlink(&victim, t.path().join("s")).unwrap();
        let root = Dir::open_target(t.path()).unwrap();
        assert!(root.create_file(OsStr::new("h")).is_err());
        assert!(root.create_file(OsStr::new("s")).is_err());
        let (_, id) = root.create_file(OsStr::new("new")).unwrap();
        assert!(root.open_created(OsStr::new("new"), id).is_ok());
        assert!(root.open_created(OsStr::new("h"), id).is_err());
        assert!(root.open_created(OsStr::new("s"), id).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }

    #[test]
    fn remove_all_stays_inside_and_handles_depth() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("f"), b"x").unwrap();
        let mut p = t.path().join("top");
        for _ in 0..300 {
            p.push("d");
        }
        std::fs::create_dir_all(&p).unwrap();
        std::os::unix::fs::symlink(outside.path(), p.join("link")).unwrap();
        std::fs::write(p.join("file"), b"y").unwrap();
        let root = Dir::open_target(t.path()).unwrap();
        root.remove_all(OsStr::new("top")).unwrap();
        assert!(!t.path().join("top").exists());
        assert!(outside.path().join("f").exists());
    }
}
