//! The one exclusion between processes on a volume's files: a non-blocking `flock`. A server
//! holds its volumes' raw files shared and their tracking files exclusively; `resize`,
//! `delete`, restores and offline backups take them exclusively. Advisory: it keeps kura
//! processes apart, not other writers.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::error::{Error, Result, io};

/// Take `f`'s lock without waiting (`exclusive`, else shared); false when another process
/// holds it in a conflicting way.
pub(crate) fn try_lock(f: &File, exclusive: bool) -> bool {
    let how = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    // SAFETY: flock on a descriptor `f` owns for the whole call; no memory is involved.
    unsafe { libc::flock(f.as_raw_fd(), how | libc::LOCK_NB) == 0 }
}

/// Open (creating it, private) a file beside volume `NAME` — `path` is `DIR/NAME.EXT` — for
/// reading and writing, and hold it exclusively; held elsewhere: [`Error::served`]`(NAME)`.
pub(crate) fn open_held(path: &Path, what: &str) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io(what))?;
    if !try_lock(&file, true) {
        let name = path
            .file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        return Err(Error::served(&name));
    }
    Ok(file)
}
