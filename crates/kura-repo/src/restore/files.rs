//! Regular files of a tree restore: the temporary name a file is written under, the sink the
//! fetch engine writes into, finishing a file (size, metadata, rename into place), and
//! comparing an existing file with the snapshot.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::at::{Dir, Entry, Ident};
use super::fetch::{self, Sink};
use crate::fsmeta::apply_metadata_fd;
use crate::repo::IndexedRepo;
use crate::tree::{ChunkRef, Node};

/// Suffix of the name a file is written under until it is whole.
pub(crate) const PARTIAL_SUFFIX: &[u8] = b".kura-partial";

/// The temporary name for `name` in a directory whose snapshot tree has the sorted names
/// `taken` (only needed when some name there looks like a temporary one): `NAME.kura-partial`,
/// unless the tree itself has that name or it would be too long for a file system.
pub(crate) fn partial_name(name: &[u8], taken: Option<&[Vec<u8>]>) -> OsString {
    const NAME_MAX: usize = 255;
    let base: Vec<u8> = if name.len() + PARTIAL_SUFFIX.len() + 4 <= NAME_MAX {
        [name, PARTIAL_SUFFIX].concat()
    } else {
        let h = blake3::hash(name);
        [
            b".kura-partial-".as_slice(),
            hex::encode(&h.as_bytes()[..8]).as_bytes(),
        ]
        .concat()
    };
    let is_taken =
        |n: &[u8]| taken.is_some_and(|t| t.binary_search_by(|x| x.as_slice().cmp(n)).is_ok());
    let mut candidate = base.clone();
    let mut i = 1u32;
    while is_taken(&candidate) {
        candidate = [base.as_slice(), format!("-{i}").as_bytes()].concat();
        i += 1;
    }
    OsString::from_vec(candidate)
}

/// How a planned file ended.
#[derive(Debug, Clone)]
pub(super) enum Finished {
    /// Whole, under its name. `meta_error`: its metadata could not all be set.
    Done { meta_error: Option<String> },
    /// Not whole: left under its temporary name.
    Partial { reason: String },
}

/// A file whose contents are being fetched, written under `tmp` in `dir`.
pub(super) struct PlannedFile {
    pub dir: Arc<Dir>,
    pub name: OsString,
    pub tmp: OsString,
    /// The inode created as `tmp`: every reopen must find it.
    pub ident: Ident,
    pub node: Node,
    /// Where it goes, relative to the target, for messages.
    pub display: String,
    /// Chunk writes still to come; the writer that brings it to zero finishes the file.
    pub remaining: AtomicU32,
    pub finished: OnceLock<Finished>,
}

impl PlannedFile {
    /// Finish the file: size, metadata, then rename into place; unless it is damaged, in
    /// which case it stays under its temporary name with the restrictive mode it was created
    /// with and the current time, so nothing mistakes it for the snapshot's file.
    pub fn finish(&self, file: Option<File>, damage: Option<String>, chown: bool) -> Finished {
        if let Some(reason) = damage {
            return Finished::Partial { reason };
        }
        let file = match file {
            Some(f) => Ok(f),
            None => self.dir.open_created(&self.tmp, self.ident),
        };
        let file = match file.and_then(|f| f.set_len(self.node.size).map(|()| f)) {
            Ok(f) => f,
            Err(e) => {
                return Finished::Partial {
                    reason: format!("set size: {e}"),
                };
            }
        };
        let meta_error = apply_metadata_fd(&file, &self.node, chown)
            .err()
            .map(|e| format!("metadata: {e}"));
        drop(file);
        match self.dir.rename(&self.tmp, &self.name) {
            Ok(()) => Finished::Done { meta_error },
            Err(e) => Finished::Partial {
                reason: format!("rename into place: {e}"),
            },
        }
    }
}

/// Where the fetch engine writes a batch of files.
pub(super) struct FileSink<'a> {
    pub files: &'a [PlannedFile],
    pub chown: bool,
    /// Files known damaged (before or during the fetch), by destination.
    pub damaged: Mutex<HashMap<u32, String>>,
}

impl FileSink<'_> {
    /// One chunk of `dest` is done (written or lost); the last one finishes the file.
    fn chunk_done(&self, dest: u32, file: Option<File>) {
        let Some(f) = self.files.get(dest as usize) else {
            return;
        };
        if f.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let damage = self.damaged.lock().ok().and_then(|d| d.get(&dest).cloned());
        let _ = f.finished.set(f.finish(file, damage, self.chown));
    }
}

impl Sink for FileSink<'_> {
    fn write(&self, dest: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        let f = self
            .files
            .get(dest as usize)
            .ok_or_else(|| io::Error::other("no such destination"))?;
        let file = f.dir.open_created(&f.tmp, f.ident)?;
        fetch::write_sparse(&file, offset, data)?;
        self.chunk_done(dest, Some(file));
        Ok(())
    }

    fn damaged(&self, dest: u32, reason: String) {
        if let Ok(mut d) = self.damaged.lock() {
            d.entry(dest).or_insert(reason);
        }
        self.chunk_done(dest, None);
    }
}

/// Does the existing regular file `name` (the entry `e`) hold exactly the snapshot's
/// content? Read chunk by chunk and compared by keyed hash; any doubt (unreadable, other
/// length, a chunk the index does not know) is "no". Only single-linked files are compared:
/// a file with other links is replaced, never kept, since keeping it means setting its
/// metadata, which would reach the other links too.
pub(super) fn content_matches(
    repo: &IndexedRepo,
    dir: &Dir,
    name: &OsStr,
    e: &Entry,
    node: &Node,
) -> bool {
    if e.nlink != 1 || e.size != node.size {
        return false;
    }
    let Ok(mut f) = dir.open_existing(name, e.ident) else {
        return false;
    };
    let mut buf = Vec::new();
    let mut total = 0u64;
    for c in node.content.iter().flatten() {
        match c {
            ChunkRef::Zero(n) => {
                // A zero run can be huge (a sparse disk image): read it in bounded pieces.
                let mut left = *n;
                while left > 0 {
                    let piece = left.min(1 << 20) as usize;
                    buf.resize(piece, 0);
                    if f.read_exact(&mut buf).is_err() || !crate::chunker::is_zero(&buf) {
                        return false;
                    }
                    left -= piece as u64;
                }
                total += n;
            }
            ChunkRef::Blob(id) => {
                let Some(loc) = repo.index().get(id) else {
                    return false;
                };
                buf.resize(loc.raw_length as usize, 0);
                if f.read_exact(&mut buf).is_err() || repo.key().chunk_id(&buf) != *id {
                    return false;
                }
                total += loc.raw_length as u64;
            }
        }
    }
    // Nothing beyond the snapshot's end.
    total == node.size && f.read(&mut [0u8; 1]).is_ok_and(|n| n == 0)
}

/// The name as a display string (lossy).
pub(super) fn lossy(name: &OsStr) -> String {
    String::from_utf8_lossy(name.as_bytes()).into_owned()
}
