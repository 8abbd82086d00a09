//! Opening a source file safely: the walker listed a regular file, but by the time a reader
//! opens it, it may be a FIFO (an open would block forever), a device (an open may have side
//! effects; a read may never end), a symlink (it would lead outside the tree) or another file.
//! The open never blocks and never follows a link, and the descriptor is checked against the
//! walker's `lstat` before one byte is read.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Open a source file without ever blocking or following a link: `O_NONBLOCK` (a FIFO or
/// device swapped in since the walk must not hang the open), `O_NOFOLLOW`, `O_NOCTTY`.
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
    let mut o = OpenOptions::new();
    o.read(true).custom_flags(flags | libc::O_NOATIME);
    match o.open(path) {
        // O_NOATIME is only allowed on files we own (or as root).
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            OpenOptions::new().read(true).custom_flags(flags).open(path)
        }
        r => r,
    }
}

/// Open the regular file the walker saw at `path`, or say why not. Whatever is there now is
/// opened without blocking and checked through its descriptor before one byte is read: a
/// file that became a FIFO, device, directory or symlink, or was replaced by another file,
/// is refused. Blocking mode is restored for the read.
pub(crate) fn open_source(path: &Path, dev: u64, ino: u64) -> std::result::Result<File, String> {
    let f = open_nonblocking(path).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => "became a symbolic link since it was listed; not read".to_string(),
        _ => e.to_string(),
    })?;
    let md = f.metadata().map_err(|e| e.to_string())?;
    if !md.is_file() {
        return Err(format!(
            "is no longer a regular file (now {}); not read",
            kind_name(&md)
        ));
    }
    if (md.dev(), md.ino()) != (dev, ino) {
        return Err("was replaced by another file since it was listed; not read".into());
    }
    set_blocking(&f).map_err(|e| format!("cannot clear O_NONBLOCK: {e}"))?;
    Ok(f)
}

/// Clear `O_NONBLOCK` on a descriptor opened with it, once it is known to be a regular file
/// or block device (reads then wait for the disk as usual).
pub(crate) fn set_blocking(f: &File) -> std::io::Result<()> {
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor `f` owns; F_GETFL/F_SETFL take and return plain ints.
    let ok = unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        fl >= 0 && libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// "a FIFO", "a directory", … for messages.
fn kind_name(md: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = md.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "something else"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;

    fn id(p: &Path) -> (u64, u64) {
        let md = std::fs::symlink_metadata(p).unwrap();
        (md.dev(), md.ino())
    }

    /// Whatever replaced a listed regular file, it is refused at once (never read, never
    /// waited on), with a message that says what it became.
    #[test]
    fn a_swapped_file_is_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"data").unwrap();
        let (dev, ino) = id(&p);
        let mut f = open_source(&p, dev, ino).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "data");
        let swap = |make: &dyn Fn(&Path)| {
            std::fs::remove_file(&p).ok();
            std::fs::remove_dir(&p).ok();
            make(&p);
            open_source(&p, dev, ino).unwrap_err()
        };
        let fifo = swap(&|p| {
            let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
            // SAFETY: c is a valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        });
        assert!(fifo.contains("now a FIFO"), "{fifo}");
        let dir = swap(&|p| std::fs::create_dir(p).unwrap());
        assert!(dir.contains("now a directory"), "{dir}");
        let link = swap(&|p| std::os::unix::fs::symlink("/etc/passwd", p).unwrap());
        assert!(link.contains("symbolic link"), "{link}");
        // Another regular file in its place (kept alive so its inode cannot be reused).
        let keep = d.path().join("keep");
        std::fs::write(&keep, b"x").unwrap();
        let (kdev, kino) = id(&keep);
        let other = open_source(&keep, kdev, kino + 1).unwrap_err();
        assert!(other.contains("replaced"), "{other}");
        let dev_null = open_source(Path::new("/dev/null"), dev, ino).unwrap_err();
        assert!(dev_null.contains("character device"), "{dev_null}");
    }
}
