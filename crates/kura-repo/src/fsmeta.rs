//! Between file system metadata and tree nodes: what backup reads (`lstat`, `llistxattr`) and
//! what restore sets (owner, mode, xattrs, times — in that order, because `chown` clears
//! setuid bits and anything that writes bumps mtime).

use std::ffi::OsStr;
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

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

/// Set owner (when `chown`), mode, xattrs and times of a restored entry by path (symlinks
/// themselves, not their targets). Returns the first error; the caller reports it as a
/// warning for that path.
pub fn apply_metadata(path: &Path, node: &Node, chown: bool) -> io::Result<()> {
    apply(Target::Path(path), node, chown)
}

/// As [`apply_metadata`], through an open file: no path lookups, and safe against the path
/// being swapped for a symlink meanwhile.
pub fn apply_metadata_fd(file: &std::fs::File, node: &Node, chown: bool) -> io::Result<()> {
    apply(Target::File(file), node, chown)
}

enum Target<'a> {
    Path(&'a Path),
    File(&'a std::fs::File),
}

fn apply(t: Target<'_>, node: &Node, chown: bool) -> io::Result<()> {
    use xattr::FileExt as _;
    let mut first_err: Option<io::Error> = None;
    let mut note = |r: io::Result<()>| {
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    };
    if chown {
        note(match t {
            Target::Path(p) => std::os::unix::fs::lchown(p, Some(node.uid), Some(node.gid)),
            Target::File(f) => std::os::unix::fs::fchown(f, Some(node.uid), Some(node.gid)),
        });
    }
    if node.kind != NodeKind::Symlink {
        let perm = std::fs::Permissions::from_mode(node.mode & 0o7777);
        note(match t {
            Target::Path(p) => std::fs::set_permissions(p, perm),
            Target::File(f) => f.set_permissions(perm),
        });
    }
    for x in &node.xattrs {
        let name = OsStr::from_bytes(&x.name);
        let r = match t {
            Target::Path(p) => xattr::set(p, name, &x.value),
            Target::File(f) => f.set_xattr(name, &x.value),
        };
        match r {
            Err(e) if is_unsupported(&e) => {}
            // Unprivileged users cannot set trusted.* / security.* attributes.
            Err(e) if !chown && e.raw_os_error() == Some(libc::EPERM) => {}
            other => note(other),
        }
    }
    let mtime = filetime::FileTime::from_unix_time(node.mtime.0, node.mtime.1);
    note(match t {
        Target::Path(p) => filetime::set_symlink_file_times(p, mtime, mtime),
        Target::File(f) => filetime::set_file_handle_times(f, Some(mtime), Some(mtime)),
    });
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
