//! Copy-before-write backup sessions (seed 003, embodiments 5–6; qemu's backup job with its
//! copy-before-write filter).
//!
//! A session freezes a served volume without stopping it. Every 64 KiB block gets a state:
//!
//! | state            | meaning                                                           |
//! |------------------|-------------------------------------------------------------------|
//! | not needed       | the backup does not read it (its 4 MiB granule is clean: the      |
//! |                  | incremental backup takes it from the parent)                      |
//! | needed, unsaved  | the backup will read it; the volume still holds the frozen data   |
//! | needed, saved    | the backup has read it; host writes go straight through           |
//! | copied           | a host write came first: the frozen data is in the working volume |
//!
//! A host write (or trim, or zeroing) to a "needed, unsaved" block first copies the block's
//! frozen data into the session's *working volume* — a volume with the `work` attribute,
//! taken from the pool of such volumes, same offsets, sparse — and only then changes the
//! volume. The backup reads each block from the volume or, once copied, from the working
//! volume ([`SessionSource`]). Host writes wait at most for one local copy, never for the
//! backup target.
//!
//! # Locking
//! One mutex over the block states, never held during I/O (the backup runs at the lowest
//! CPU priority; a lock it held while preempted would stall host writes).
//! - A host change marks the needed, unsaved blocks it touches *copying*, copies them
//!   without the lock, marks them *copied*, and only then writes the volume. A change that
//!   finds a block another change is copying waits for that copy (a condition variable).
//! - The backup reads the volume without the lock, then checks the states under it: a block
//!   still *unsaved* (or *copying*) cannot have been written yet — host writes reach the
//!   volume only after their block is *copied* — so what was read is the frozen data, and
//!   the block becomes *saved*; a block found *copied* is read again from the working volume.
//!
//! So every byte the backup gets is the byte at the freeze, and no host write waits for the
//! backup. The freeze itself happens under the export's exclusive change lock (no write in
//! flight), see [`crate::VolumeExport`].
//!
//! # Restarts
//! A session lives in the serving process's memory. If that process dies the session is
//! gone with it: the working volume returns to the pool when the volume is next served (it
//! holds nothing anyone needs), the backup it fed never commits a snapshot, and the volume's
//! dirty bitmap — untrusted after a crash — makes the next backup read everything. No host
//! write is lost: host writes always go to the volume itself.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use kura_nbd::{Export, FileExport};
use kura_repo::backup::ImageSource;

/// Copy-before-write granularity (qemu's default backup cluster size).
pub const BLOCK: u64 = 64 << 10;

const NOT_NEEDED: u8 = 0;
const UNSAVED: u8 = 1;
const SAVED: u8 = 2;
const COPIED: u8 = 3;
/// A host change is copying the block to the working volume (shown as copied).
const COPYING: u8 = 4;

/// One block state, by name (for status and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockState {
    NotNeeded,
    NeededUnsaved,
    NeededSaved,
    Copied,
}

/// Counts of block states, for status.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionStats {
    pub blocks: u64,
    pub not_needed: u64,
    pub unsaved: u64,
    pub saved: u64,
    pub copied: u64,
    /// Bytes host writes copied into the working volume before overwriting them.
    pub copied_bytes: u64,
}

/// A working volume held by a session: its raw file under an exclusive `flock` (the claim:
/// another session, in any process, skips it) and released — emptied and unlocked — on drop.
#[derive(Debug)]
pub struct WorkVolume {
    pub name: String,
    file: File,
}

impl WorkVolume {
    /// A claimed working volume: its raw file, held under an exclusive `flock`.
    pub(crate) fn new(name: String, file: File) -> WorkVolume {
        WorkVolume { name, file }
    }
}

impl Drop for WorkVolume {
    fn drop(&mut self) {
        // Back to the pool empty: punch out everything the session copied.
        let len = self.file.metadata().map(|m| m.len()).unwrap_or(0);
        // SAFETY: fallocate on a descriptor this struct owns; no memory is passed.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                len as libc::off_t,
            )
        };
        if r != 0 {
            tracing::warn!(
                "working volume {}: emptying it: {}",
                self.name,
                io::Error::last_os_error()
            );
        }
    }
}

/// A copy-before-write session over one served volume.
#[derive(Debug)]
pub struct Session {
    size: u64,
    work: WorkVolume,
    states: Mutex<Vec<u8>>,
    /// Signalled when copies finish.
    copied: Condvar,
    copied_bytes: AtomicU64,
}

impl Session {
    /// A session over a volume of `size` bytes. `needed`: the byte ranges the backup will
    /// read (whole volume when `None`); other blocks are "not needed".
    pub(crate) fn new(size: u64, work: WorkVolume, needed: Option<&[(u64, u64)]>) -> Session {
        let n = size.div_ceil(BLOCK) as usize;
        let states = match needed {
            None => vec![UNSAVED; n],
            Some(ranges) => {
                let mut s = vec![NOT_NEEDED; n];
                for &(off, len) in ranges {
                    let first = off / BLOCK;
                    let last = (off + len).div_ceil(BLOCK).min(n as u64);
                    for b in first..last {
                        s[b as usize] = UNSAVED;
                    }
                }
                s
            }
        };
        Session {
            size,
            work,
            states: Mutex::new(states),
            copied: Condvar::new(),
            copied_bytes: AtomicU64::new(0),
        }
    }

    pub fn work_volume(&self) -> &str {
        &self.work.name
    }

    fn blocks(&self, offset: u64, len: u64) -> std::ops::Range<usize> {
        let end = (offset + len).min(self.size);
        (offset / BLOCK) as usize..end.div_ceil(BLOCK) as usize
    }

    /// Before a host change to `[offset, offset + len)` of `volume`: copy the frozen data of
    /// every needed, unsaved block in it into the working volume.
    pub(crate) fn before_change(
        &self,
        volume: &FileExport,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let range = self.blocks(offset, len);
        let mine: Vec<usize> = {
            let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
            // Another change is copying one of these blocks: the volume must not change
            // under its copy.
            while states[range.clone()].contains(&COPYING) {
                states = self.copied.wait(states).unwrap_or_else(|p| p.into_inner());
            }
            let mine: Vec<usize> = range.filter(|&b| states[b] == UNSAVED).collect();
            for &b in &mine {
                states[b] = COPYING;
            }
            mine
        };
        if mine.is_empty() {
            return Ok(());
        }
        let copied = self.copy_out(volume, &mine);
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        for &b in &mine {
            states[b] = if copied.is_ok() { COPIED } else { UNSAVED };
        }
        self.copied.notify_all();
        copied
    }

    /// Copy blocks (marked copying by the caller) into the working volume, in the kernel
    /// (`copy_file_range`: no round trip through user space; a reflink where the file
    /// system shares extents), runs of adjacent blocks at once.
    fn copy_out(&self, volume: &FileExport, blocks: &[usize]) -> io::Result<()> {
        let (src, dst) = (volume.file().as_raw_fd(), self.work.file.as_raw_fd());
        let mut i = 0;
        while i < blocks.len() {
            let mut j = i + 1;
            while j < blocks.len() && blocks[j] == blocks[j - 1] + 1 {
                j += 1;
            }
            let start = blocks[i] as u64 * BLOCK;
            let end = ((blocks[j - 1] as u64 + 1) * BLOCK).min(self.size);
            let mut at = start;
            while at < end {
                let (mut from, mut to) = (at as libc::off64_t, at as libc::off64_t);
                // SAFETY: both descriptors are open for the session's lifetime; the offsets
                // are valid pointers to locals.
                let n = unsafe {
                    libc::copy_file_range(src, &mut from, dst, &mut to, (end - at) as usize, 0)
                };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                if n == 0 {
                    return Err(io::Error::other(
                        "copy before write: unexpected end of volume",
                    ));
                }
                at += n as u64;
            }
            self.copied_bytes.fetch_add(end - start, Ordering::Relaxed);
            i = j;
        }
        Ok(())
    }

    /// The backup reads `[offset, offset + buf.len())` of the frozen image. Every block in it
    /// must be needed and not yet read (anything else is a bug in the reader).
    fn read_frozen(&self, volume: &dyn Export, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        // Optimistically from the volume, without the lock…
        volume.read_at(offset, buf)?;
        let end = offset + buf.len() as u64;
        let piece = |b: usize| {
            let s = (b as u64 * BLOCK).max(offset);
            let e = ((b as u64 + 1) * BLOCK).min(end);
            (s, e)
        };
        // …then the states say which blocks were frozen data when read.
        let mut again = Vec::new();
        {
            let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
            for b in self.blocks(offset, buf.len() as u64) {
                match states[b] {
                    // Not written since the freeze (writes follow "copied"): frozen data.
                    UNSAVED => states[b] = SAVED,
                    COPYING => {}
                    COPIED => again.push(b),
                    s => {
                        return Err(io::Error::other(format!(
                            "backup session: block at {} read in state {:?} (not frozen data)",
                            b as u64 * BLOCK,
                            name(s)
                        )));
                    }
                }
            }
        }
        // Copied (possibly while we read): the frozen data is in the working volume.
        for b in again {
            let (s, e) = piece(b);
            let dst = &mut buf[(s - offset) as usize..(e - offset) as usize];
            self.work.file.read_exact_at(dst, s)?;
        }
        Ok(())
    }

    pub fn state(&self, offset: u64) -> BlockState {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        name(states[(offset / BLOCK) as usize])
    }

    pub fn stats(&self) -> SessionStats {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = SessionStats {
            blocks: states.len() as u64,
            copied_bytes: self.copied_bytes.load(Ordering::Relaxed),
            ..SessionStats::default()
        };
        for &st in states.iter() {
            match st {
                NOT_NEEDED => s.not_needed += 1,
                UNSAVED => s.unsaved += 1,
                SAVED => s.saved += 1,
                _ => s.copied += 1,
            }
        }
        s
    }
}

fn name(s: u8) -> BlockState {
    match s {
        NOT_NEEDED => BlockState::NotNeeded,
        UNSAVED => BlockState::NeededUnsaved,
        SAVED => BlockState::NeededSaved,
        _ => BlockState::Copied, // COPIED, COPYING
    }
}

/// The frozen image of a session, as a backup reads it.
pub struct SessionSource {
    volume: Arc<dyn Export>,
    session: Arc<Session>,
}

impl SessionSource {
    /// The frozen image of `session` over `volume` (the served volume's export).
    pub fn new(volume: Arc<dyn Export>, session: Arc<Session>) -> SessionSource {
        SessionSource { volume, session }
    }
}

impl ImageSource for SessionSource {
    fn size(&self) -> u64 {
        self.session.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.session.read_frozen(self.volume.as_ref(), offset, buf)
    }
}
