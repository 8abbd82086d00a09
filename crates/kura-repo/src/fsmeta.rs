//! Between file system metadata and tree nodes: what backup reads (`lstat`, `llistxattr`) and
//! what restore sets (owner, mode, xattrs, times — in that order, because `chown` clears
//! setuid bits and anything that writes bumps mtime).

use std::ffi::OsStr;
use std::fs::Metadata;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::{AtFlags, XattrFlags};

use crate::tree::{Node, NodeKind, Xattr};
use crate::util::Timestamp;

/// The node kind of a file type, or `None` for types kura does not know.
pub fn kind_of(md: &Metadata) -> Option<NodeKind> {
    use std::os::unix::fs::FileTypeExt;
    let ft = md.file_type();
    Some(if ft.is_file() {
        NodeKind::File
    } else if ft.is_dir() {
        NodeKind::Dir
    } else if ft.is_symlink() {
        NodeKind::Symlink
    } else if ft.is_block_device() {
        NodeKind::Blockdev
    } else if ft.is_char_device() {
        NodeKind::Chardev
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else if ft.is_socket() {
        NodeKind::Socket
    } else {
        return None;
    })
}

/// A node from `lstat` metadata (content, subtree, target and xattrs are filled in later).
pub fn node_from_metadata(name: &[u8], md: &Metadata) -> Option<Node> {
    let kind = kind_of(md)?;
    let mut n = Node::new(name.to_vec(), kind);
    n.mode = md.mode() & 0o7777;
    n.uid = md.uid();
    n.gid = md.gid();
    n.mtime = Timestamp(md.mtime(), md.mtime_nsec() as u32);
    n.ctime = Timestamp(md.ctime(), md.ctime_nsec() as u32);
    n.inode = md.ino();
    n.dev = md.dev();
    n.links = md.nlink();
    if kind == NodeKind::File {
        n.size = md.size();
    }
    if matches!(kind, NodeKind::Blockdev | NodeKind::Chardev) {
        n.rdev = md.rdev();
    }
    Some(n)
}

/// Extended attributes of `path` (not following symlinks). Filesystems without xattr support
/// give an empty list; other errors are returned for the caller to warn about.
pub fn read_xattrs(path: &Path) -> io::Result<Vec<Xattr>> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if is_unsupported(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        match xattr::get(path, &name) {
            Ok(Some(value)) => out.push(Xattr {
                name: name.as_bytes().to_vec(),
                value,
            }),
            Ok(None) => {}
            Err(e) if is_unsupported(&e) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ENODATA))
}

/// True when this process may set any owner (is root).
pub fn can_chown() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Set owner (when `chown`), mode, xattrs and times of a restored file or directory through
/// its open descriptor: no path lookup, so nothing can redirect it. Returns the first error;
/// the caller reports it as a warning for that entry.
pub fn apply_metadata_fd(fd: impl AsFd, node: &Node, chown: bool) -> io::Result<()> {
    let fd = fd.as_fd();
    let mut errs = FirstError::default();
    if chown {
        errs.note(
            rustix::fs::fchown(fd, Some(uid(node)), Some(gid(node))).map_err(io::Error::from),
        );
    }
    errs.note(rustix::fs::fchmod(fd, mode(node)).map_err(io::Error::from));
    for x in &node.xattrs {
        let r = rustix::fs::fsetxattr(
            fd,
            OsStr::from_bytes(&x.name),
            &x.value,
            XattrFlags::empty(),
        )
        .map_err(io::Error::from);
        errs.note_xattr(r, chown);
    }
    errs.note(rustix::fs::futimens(fd, &times(node)).map_err(io::Error::from));
    errs.finish()
}

/// Set the metadata of a symlink or special file `name` in the directory `dir`, which cannot
/// be opened for it: owner and times with `AT_SYMLINK_NOFOLLOW`; the mode of a FIFO or device
/// through an `O_PATH` descriptor checked to be the entry `expect` (never through a name a
/// symlink could have replaced); xattrs with `lsetxattr` on `/proc/self/fd/DIR/NAME`, which
/// resolves the directory by descriptor and does not follow the last component.
pub fn apply_metadata_at(
    dir: impl AsFd,
    name: &OsStr,
    expect: (u64, u64),
    node: &Node,
    chown: bool,
) -> io::Result<()> {
    let dir = dir.as_fd();
    let mut errs = FirstError::default();
    if chown {
        errs.note(
            rustix::fs::chownat(
                dir,
                name,
                Some(uid(node)),
                Some(gid(node)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(io::Error::from),
        );
    }
    if node.kind != NodeKind::Symlink {
        errs.note(chmod_nofollow(dir, name, expect, node));
    }
    if !node.xattrs.is_empty() {
        let path = proc_path(dir, name);
        for x in &node.xattrs {
            let r = rustix::fs::lsetxattr(
                path.as_path(),
                OsStr::from_bytes(&x.name),
                &x.value,
                XattrFlags::empty(),
            )
            .map_err(io::Error::from);
            errs.note_xattr(r, chown);
        }
    }
    errs.note(
        rustix::fs::utimensat(dir, name, &times(node), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io::Error::from),
    );
    errs.finish()
}

/// `chmod` of a non-symlink entry without following a symlink put in its place.
fn chmod_nofollow(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    expect: (u64, u64),
    node: &Node,
) -> io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if (st.st_dev, st.st_ino) != expect
        || rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink
    {
        return Err(io::Error::other("replaced while the restore ran"));
    }
    // An O_PATH descriptor cannot be fchmod-ed; its /proc link names the inode itself.
    let path = proc_path(fd.as_fd(), OsStr::new(""));
    rustix::fs::chmod(path.as_path(), mode(node)).map_err(io::Error::from)
}

/// `/proc/self/fd/FD/NAME` (or `/proc/self/fd/FD` for an empty name).
fn proc_path(fd: BorrowedFd<'_>, name: &OsStr) -> std::path::PathBuf {
    let mut p = std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    if !name.is_empty() {
        p.push(name);
    }
    p
}

fn uid(node: &Node) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(node.uid)
}

fn gid(node: &Node) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(node.gid)
}

fn mode(node: &Node) -> rustix::fs::Mode {
    rustix::fs::Mode::from_raw_mode(node.mode & 0o7777)
}

fn times(node: &Node) -> rustix::fs::Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: node.mtime.0,
        tv_nsec: node.mtime.1 as _,
    };
    rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// The first error of a series of metadata calls, with xattr errors that do not matter
/// filtered out.
#[derive(Default)]
struct FirstError(Option<io::Error>);

impl FirstError {
    fn note(&mut self, r: io::Result<()>) {
        if let Err(e) = r {
            self.0.get_or_insert(e);
        }
    }

    fn note_xattr(&mut self, r: io::Result<()>, privileged: bool) {
        match r {
            Err(e) if is_unsupported(&e) => {}
            // Unprivileged users cannot set trusted.* / security.* attributes.
            Err(e) if !privileged && e.raw_os_error() == Some(libc::EPERM) => {}
            other => self.note(other),
        }
    }

    fn finish(self) -> io::Result<()> {
        match self.0 {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
